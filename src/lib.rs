//! labs-cleanup: the worker's entry points (a request, the Cron Trigger, the start), wired to the router (`platform::router`) and the fleet's scheduled run; every lab's cleanup lives in its own `SessionManager`.
//!
//! Layers (docs/ARCHITECTURE.md): `api` (what a request may be) -> `platform` (adapters to the
//! runtime: the router, the Durable Objects, D1, HTTP) -> `lab` (the pure core: records,
//! cleanup, procedures, fleet procedures, over ports).

pub mod api;
pub mod lab;
pub mod platform;

#[cfg(test)]
mod arch_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod sim;

use worker::{event, web_sys, Context, Env, Request};

use crate::api::error::ApiError;
use crate::api::respond;
use crate::lab::ports::Level;
use crate::platform::runtime::console;

pub use crate::platform::budget::BackendBudget;
pub use crate::platform::session_manager::SessionManager;

/// A panic is logged as one error line, escaped like every other line: its message may quote
/// the data that caused it (a request's bytes), so it never goes to the console as it is.
#[event(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        console(Level::Error, &format!("[panic] {info}"));
    }));
}

/// Answers with a raw `web_sys::Response`: a lab object's answer is passed through as it came,
/// instead of being re-wrapped around its body stream (which costs a pipe through JavaScript).
#[event(fetch)]
async fn fetch(request: Request, env: Env, _ctx: Context) -> worker::Result<web_sys::Response> {
    match platform::router::handle(request, &env).await {
        Ok(response) => Ok(response),
        Err(e) => {
            // A configuration error was logged with its detail where it was met.
            if e.status() >= 500 && !matches!(e, ApiError::NotConfigured(_)) {
                console(Level::Error, &format!("[router] {e}"));
            }
            respond::error(&e).map(Into::into)
        }
    }
}

/// The Cron Trigger (`[triggers] crons` in `wrangler.toml`): the inventory pull (with
/// `INVENTORY_PATH`) and the safety-net sweep (`lab::fleet::sweep`).
#[event(scheduled)]
async fn scheduled(_event: worker::ScheduledEvent, env: Env, _ctx: worker::ScheduleContext) {
    let config = match platform::env::config(&env) {
        Ok(config) => config,
        Err(e) => {
            console(
                Level::Error,
                &format!(
                    "[fleet] the scheduled run did nothing: configuration error: {}",
                    e.detail()
                ),
            );
            return;
        }
    };
    if !config.fleet_index {
        return;
    }
    let usage = platform::usage::Usage::start(&config);
    let fleet = platform::fleet::WorkerdFleet::new(&env, &config, &usage);
    lab::fleet::sweep::run(&fleet, &config, platform::runtime::now_ms()).await;
    usage.record("cron");
}
