//! Glue to the Workers runtime: the `SessionManager` Durable Object, its storage, and the lab backend client.

pub mod backend;
pub mod runtime;
pub mod session_manager;
pub mod store;
