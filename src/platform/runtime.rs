//! The core's surroundings on workerd: the clock, randomness, sleeping, a timeout for any future, and the console.

use std::future::Future;
use std::time::Duration;

use futures::future::{select, Either};
use worker::{console_error, console_log, console_warn};

use crate::lab::cleanup::LOG_PREFIX;
use crate::lab::ports::{Level, Logger, Runtime};
use crate::lab::text::escape;

/// The Workers runtime, as the core sees it.
pub struct WorkersRuntime;

impl Runtime for WorkersRuntime {
    fn now_ms(&self) -> i64 {
        now_ms()
    }

    fn random(&self) -> f64 {
        random()
    }

    async fn sleep(&self, ms: u64) {
        worker::Delay::from(Duration::from_millis(ms)).await
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// A random number in `[0, 1)` (`Math.random()`: jitter and event ids, not secrets).
pub fn random() -> f64 {
    worker::js_sys::Math::random()
}

/// Runs `work`, or gives up after `timeout` (`None`): the one timeout of every call to the
/// outside world (the backend, the webhook receiver, the index). What gave up is dropped; a
/// fetch is aborted by its caller.
pub async fn within<T>(timeout: Duration, work: impl Future<Output = T>) -> Option<T> {
    futures::pin_mut!(work);
    match select(work, worker::Delay::from(timeout)).await {
        Either::Left((result, _)) => Some(result),
        Either::Right(_) => None,
    }
}

/// Writes one line to the console (dashboard, `wrangler tail`, `wrangler dev`): the only way a
/// line reaches the log, so that no control, format or line-separator character from outside
/// gets there unescaped (see `lab::text`).
pub fn console(level: Level, line: &str) {
    let line = escape(line);
    match level {
        Level::Info => console_log!("{line}"),
        Level::Warn => console_warn!("{line}"),
        Level::Error => console_error!("{line}"),
    }
}

/// Logs `record` as a JavaScript object (not a string): Workers Logs indexes its fields, so a
/// query can filter on them (`event = "cleanup_attempt" AND status = "retrying"`).
pub fn log_object<T: serde::Serialize>(record: &T) {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    match record.serialize(&serializer) {
        Ok(object) => worker::web_sys::console::log_1(&object),
        Err(e) => console(
            Level::Error,
            &format!("{LOG_PREFIX} a structured log record could not be built: {e}"),
        ),
    }
}

/// Log sink for the Workers console: every line with `LOG_PREFIX`.
pub struct ConsoleLogger;

impl Logger for ConsoleLogger {
    fn log(&self, level: Level, message: &str) {
        console(level, &format!("{LOG_PREFIX} {message}"));
    }

    fn record<T: serde::Serialize>(&self, record: &T) {
        log_object(record);
    }
}
