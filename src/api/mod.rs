//! The HTTP API surface: routes, request validation, authentication, typed errors and JSON responses.

pub mod auth;
pub mod bulk;
pub mod error;
pub mod fleet;
pub mod links;
pub mod percent;
pub mod respond;
pub mod routes;
pub mod validation;

#[cfg(test)]
mod spec_tests;
