//! Glue to the Workers runtime: the `SessionManager` Durable Object, its storage, the D1 fleet index, the lab backend and webhook clients, and the console.

pub mod backend;
pub mod env;
pub mod index;
pub mod runtime;
pub mod session_manager;
pub mod store;
pub mod webhooks;
