//! The pure core: the lab's record, its cleanup, its timing and its procedures, over small traits for the outside world. No `worker::*` here (`scripts/lint.sh` checks); the clock, the randomness, the storage, the backend, the index and the webhook receiver come in as values and traits (`ports`).

pub mod cleanup;
pub mod config;
pub mod fleet;
pub mod index;
pub mod legacy;
pub mod limits;
pub mod ports;
pub mod procedures;
pub mod retry;
pub mod session;
pub mod status;
pub mod text;
pub mod wake;
pub mod webhook;
