//! The fleet-wide procedures' ports on workerd: the D1 index, the labs' objects (by name), the backend's inventory over HTTP, the console.

use crate::lab::error::ServiceError;
use std::time::Duration;

use worker::wasm_bindgen_futures::JsFuture;
use worker::{web_sys, Env};

use crate::lab::config::Config;
use crate::lab::fleet::report::{
    parse_page, KnownVm, Page, PageError, Reconciliation, MAX_REPORT_BYTES,
};
use crate::lab::fleet::{FleetStore, InventorySource, Labs};
use crate::lab::invocation::Meter;
use crate::lab::ports::{Allowance, Level, Logger};
use crate::lab::protocol::{Answer, Request};
use crate::platform::http::{self, Failure};
use crate::platform::runtime::ConsoleLogger;
use crate::platform::usage::{add, Usage};
use crate::platform::{fleet_db, objects, runtime};

/// Name of the Durable Object binding in `wrangler.toml`.
pub const SESSION_MANAGER_BINDING: &str = "SESSION_MANAGER";

/// Sends `request` to the `SessionManager` object named `lab_request_id`; its answer as is.
pub async fn call_lab(
    env: &Env,
    lab_request_id: &str,
    request: &Request,
    timeout_ms: Option<u32>,
) -> Result<web_sys::Response, ServiceError> {
    let (method, path, body) = request.encode();
    let call = objects::Call {
        method,
        path,
        body,
        timeout_ms,
    };
    objects::fetch(
        env,
        SESSION_MANAGER_BINDING,
        lab_request_id,
        "session-manager",
        call,
    )
    .await
}

/// The fleet's ports for one request or scheduled run, charging what it uses to the
/// invocation's ledger (`lab::invocation`).
pub struct WorkerdFleet<'a> {
    env: &'a Env,
    config: &'a Config,
    usage: &'a Usage,
}

impl<'a> WorkerdFleet<'a> {
    /// The ports, charging `usage` (the invocation's: a route's, a job's alarm, a run's).
    pub fn new(env: &'a Env, config: &'a Config, usage: &'a Usage) -> Self {
        WorkerdFleet { env, config, usage }
    }

    fn timeout(&self) -> Duration {
        self.config.index_timeout()
    }

    /// One D1 batch of `statements` statements: a call to a service, a query each.
    fn d1(&self, statements: usize) -> Result<(), ServiceError> {
        self.usage
            .charge(Meter::Service, 1)
            .and_then(|()| self.usage.charge(Meter::D1Query, statements as u64))
            .map_err(|e| ServiceError::Failed(e.to_string()))?;
        add(&self.usage.d1_batches, 1);
        Ok(())
    }

    /// A page of the list route.
    pub async fn list(
        &self,
        query: &crate::lab::index::ListQuery,
    ) -> Result<(Vec<crate::lab::index::IndexRow>, fleet_db::Rows), ServiceError> {
        self.d1(1)?;
        fleet_db::list(
            self.env,
            query,
            self.config.stuck_after_attempts,
            self.timeout(),
        )
        .await
    }

    /// The stats' and the metrics' counts.
    pub async fn counts(
        &self,
        now_ms: i64,
    ) -> Result<(crate::lab::index::Counts, fleet_db::Rows), ServiceError> {
        self.d1(crate::lab::index::stats(self.config.stuck_after_attempts, now_ms).len())?;
        fleet_db::counts(
            self.env,
            self.config.stuck_after_attempts,
            now_ms,
            self.timeout(),
        )
        .await
    }
}

impl FleetStore for WorkerdFleet<'_> {
    async fn lookup(&self, vm_ids: &[String]) -> Result<Vec<KnownVm>, ServiceError> {
        self.d1(crate::lab::index::lookup(vm_ids).len())?;
        fleet_db::lookup(self.env, vm_ids, self.timeout()).await
    }

    async fn first_seen(&self, vm_ids: &[String]) -> Result<Vec<(String, i64)>, ServiceError> {
        self.d1(crate::lab::index::first_seen(vm_ids).len())?;
        fleet_db::first_seen(self.env, vm_ids, self.timeout()).await
    }

    async fn remember_seen(&self, vm_ids: &[String], now_ms: i64) -> Result<(), ServiceError> {
        if vm_ids.is_empty() {
            return Ok(());
        }
        self.d1(crate::lab::index::record_seen(vm_ids, now_ms).len())?;
        fleet_db::remember_seen(self.env, vm_ids, now_ms, self.timeout()).await
    }

    async fn tidy_seen(&self, now_ms: i64) -> Result<u64, ServiceError> {
        self.d1(crate::lab::index::tidy_seen(now_ms).len())?;
        fleet_db::tidy_seen(self.env, now_ms, self.timeout()).await
    }

    async fn save_reconciliation(&self, r: &Reconciliation) -> Result<(), ServiceError> {
        self.d1(crate::lab::index::save_reconciliation(r).len())?;
        fleet_db::save_reconciliation(self.env, r, self.timeout()).await
    }

    async fn overdue(&self, before_ms: i64, limit: u32) -> Result<Vec<String>, ServiceError> {
        self.d1(1)?;
        fleet_db::overdue(self.env, before_ms, limit, self.timeout()).await
    }

    async fn state(&self, key: &str) -> Result<Option<String>, ServiceError> {
        self.d1(1)?;
        fleet_db::state(self.env, key, self.timeout()).await
    }

    async fn set_state(&self, key: &str, value: Option<&str>) -> Result<(), ServiceError> {
        self.d1(1)?;
        fleet_db::set_state(self.env, key, value, self.timeout()).await
    }
}

impl Labs for WorkerdFleet<'_> {
    async fn call(&self, lab_request_id: &str, request: Request) -> Result<Answer, ServiceError> {
        self.usage
            .charge(Meter::Service, 1)
            .map_err(|e| ServiceError::Failed(e.to_string()))?;
        add(&self.usage.object_calls, 1);
        let timeout_ms = self.config.lab_call_timeout_ms();
        send(self.env, lab_request_id, &request, Some(timeout_ms)).await
    }
}

impl Allowance for WorkerdFleet<'_> {
    fn left(&self, meter: Meter) -> u64 {
        self.usage.left(meter)
    }
    fn invocation_started_ms(&self) -> i64 {
        self.usage.started_ms()
    }
    fn elapsed_ms(&self) -> i64 {
        crate::platform::runtime::now_ms()
            .saturating_sub(self.usage.started_ms())
            .max(0)
    }
}

/// Sends `request` to the `SessionManager` named `lab_request_id`: its answer, as
/// `protocol::Answer::read` decodes it.
pub async fn send(
    env: &Env,
    lab_request_id: &str,
    request: &Request,
    timeout_ms: Option<u32>,
) -> Result<Answer, ServiceError> {
    let (status, text) = read(call_lab(env, lab_request_id, request, timeout_ms).await?).await;
    Answer::read(request, status, &text)
}

/// An object's answer: its status and its body's text (empty when it cannot be read).
async fn read(answer: web_sys::Response) -> (u16, String) {
    let text = match answer.text() {
        Ok(promise) => JsFuture::from(promise)
            .await
            .ok()
            .and_then(|t| t.as_string())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    (answer.status(), text)
}

/// Sends a signed link (`Request::Link`) to its lab's object: what the link did or would do.
pub async fn link(
    env: &Env,
    link: crate::lab::link::Link,
    apply: bool,
) -> Result<crate::lab::link::Answer, ServiceError> {
    let lab = link.lab.clone();
    let (status, text) =
        read(call_lab(env, &lab, &Request::Link { link, apply }, None).await?).await;
    if status != 200 {
        return Err(ServiceError::Answered(status));
    }
    serde_json::from_str(&text).map_err(|e| ServiceError::Failed(e.to_string()))
}

impl crate::lab::fleet::bulk::Candidates for WorkerdFleet<'_> {
    async fn page(
        &self,
        selector: &crate::lab::fleet::bulk::Selector,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::lab::fleet::bulk::Candidate>, ServiceError> {
        self.d1(1)?;
        fleet_db::bulk_page(self.env, selector, after, limit, self.timeout()).await
    }

    async fn count(
        &self,
        selector: &crate::lab::fleet::bulk::Selector,
    ) -> Result<u64, ServiceError> {
        self.d1(1)?;
        fleet_db::bulk_count(self.env, selector, self.timeout()).await
    }
}

impl InventorySource for WorkerdFleet<'_> {
    async fn page(&self, cursor: Option<&str>) -> Result<Page, PageError> {
        let path = self.config.inventory_path.as_deref().unwrap_or("/");
        let mut url = format!("{}{path}", self.config.backend_url);
        if let Some(cursor) = cursor {
            let separator = if url.contains('?') { '&' } else { '?' };
            url.push(separator);
            url.push_str("cursor=");
            url.push_str(&encode_query(cursor));
        }
        let bearer = self
            .config
            .backend_api_token
            .as_ref()
            .map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Accept", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer));
        }
        let timeout = self.config.backend_timeout();
        let failed = |why: String| Err(PageError::Failed(why));
        if let Err(e) = self.usage.charge(Meter::External, 1) {
            return failed(e.to_string());
        }
        match http::exchange("GET", &url, &headers, None, timeout, MAX_REPORT_BYTES).await {
            Ok(answer) if answer.truncated => failed(format!(
                "a page of the backend's inventory is over {MAX_REPORT_BYTES} bytes; it was not read further"
            )),
            Ok(answer) if (200..300).contains(&answer.status) => {
                parse_page(&answer.body).map_err(|e| PageError::Failed(e.0))
            }
            Ok(answer) if (400..500).contains(&answer.status) => {
                Err(PageError::Refused(answer.status))
            }
            Ok(answer) => failed(format!(
                "the backend's inventory answered {}",
                answer.status
            )),
            Err(Failure::Timeout) => failed(format!(
                "the backend's inventory did not answer within {} s",
                timeout.as_secs()
            )),
            Err(Failure::Network(e)) | Err(Failure::CutShort { error: e, .. }) => {
                failed(format!("network error: {e}"))
            }
        }
    }
}

impl Logger for WorkerdFleet<'_> {
    fn log(&self, level: Level, message: &str) {
        runtime::console(level, &format!("[fleet] {message}"));
    }

    fn record<T: serde::Serialize>(&self, record: &T) {
        ConsoleLogger.record(record);
    }
}

/// A cursor as a query parameter: every byte but unreserved ones percent-encoded.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
