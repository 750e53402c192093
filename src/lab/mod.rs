//! The lab's pure logic: the session record, the cleanup engine and its timing rules. No `worker::*` here; the clock, the randomness and the backend come in as values and traits.

pub mod cleanup;
pub mod index;
pub mod legacy;
pub mod limits;
pub mod retry;
pub mod session;
pub mod text;
pub mod wake;
pub mod webhook;
