//! Adapters to the Workers runtime: the `SessionManager` Durable Object, its storage, the D1 fleet index, outbound HTTP (the lab backend, the webhook receiver), the settings and the console.

pub mod backend;
pub mod budget;
pub mod bulk;
pub mod env;
pub mod fleet;
pub mod fleet_db;
pub mod http;
pub mod lab_ports;
pub mod objects;
pub mod router;
pub mod runtime;
pub mod session_manager;
pub mod store;
pub mod usage;
pub mod webhook_sender;
