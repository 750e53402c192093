//! The `SessionManager` Durable Object, one per lab: an adapter that reads a request, calls the lab's procedure (`lab::procedures`) on workerd's ports, and writes the answer.

use std::rc::Rc;

use wasm_bindgen::JsCast;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::api::error::ApiError;
use crate::api::respond;
use crate::lab::config::{Config, Webhooks};
use crate::lab::fleet::budget::CallOutcome;
use crate::lab::index::{IndexRow, VmRow};
use crate::lab::ports::{
    BackendError, BackendReply, Budget, Delivery, FleetIndex, LabBackend, Level, Logger, Permit,
    RecordStore, Runtime, StoreError, Stored, WebhookSender,
};
use crate::lab::procedures::{self, Lab, Reply};
use crate::platform::backend::{DryRunBackend, HttpLabBackend};
use crate::platform::runtime::{ConsoleLogger, WorkersRuntime};
use crate::platform::store::Store;
use crate::platform::usage::{add, Usage};
use crate::platform::{budget, env, fleet_db, webhook_sender};

#[durable_object]
pub struct SessionManager {
    state: State,
    /// The runtime's object state and storage APIs, which `Store` and the budget call directly.
    raw: worker::worker_sys::DurableObjectState,
    storage: worker::worker_sys::DurableObjectStorage,
    env: Env,
    /// The latest activity noted and not yet written (see `RecordStore::noted_activity`).
    activity: Rc<std::cell::Cell<Option<i64>>>,
}

/// The lab's ports on workerd, for one request, alarm or background task.
struct Workerd {
    /// Whether this invocation said already that the budget could not be reached.
    budget_warned: std::cell::Cell<bool>,
    usage: Rc<Usage>,
    activity: Rc<std::cell::Cell<Option<i64>>>,
    permits: budget::Permits,
    store: Store,
    env: Env,
    config: Rc<Config>,
}

impl SessionManager {
    fn ports(&self, config: Rc<Config>) -> Workerd {
        let usage = Rc::new(Usage::start());
        Workerd {
            budget_warned: std::cell::Cell::new(false),
            store: Store::new(&self.storage, usage.clone()),
            permits: budget::Permits::new(&self.env, &self.raw, &config, usage.clone()),
            usage,
            activity: self.activity.clone(),
            env: self.env.clone(),
            config,
        }
    }

    /// Runs `task` (a procedure on fresh ports) after the answer or the alarm, `what` naming it
    /// in the usage line: the answer never waits for a log line, an index row or a webhook
    /// receiver.
    fn later<F>(
        &self,
        config: Rc<Config>,
        what: String,
        task: impl FnOnce(Rc<Workerd>, Rc<Config>) -> F + 'static,
    ) where
        F: std::future::Future<Output = std::result::Result<(), StoreError>> + 'static,
    {
        let ports = Rc::new(self.ports(config.clone()));
        self.state.wait_until(async move {
            worker::Delay::from(std::time::Duration::ZERO).await;
            if let Err(e) = task(ports.clone(), config).await {
                ConsoleLogger.log(Level::Error, &format!("background work stopped: {e}"));
            }
            report(&ports, &format!("{what}, after the answer"));
        });
    }
}

/// Logs what the invocation used, when `LOG_STORAGE_OPS` is on.
fn report(ports: &Workerd, what: &str) {
    if ports.config.log_storage_ops {
        ports.usage.report(what);
    }
}

impl DurableObject for SessionManager {
    fn new(state: State, env: Env) -> Self {
        let raw = state._inner();
        let storage = raw.storage().expect("a Durable Object always has storage");
        Self {
            raw: raw.clone().unchecked_into(),
            state: State::from(raw),
            storage,
            env,
            activity: Rc::new(std::cell::Cell::new(None)),
        }
    }

    async fn fetch(&self, mut request: Request) -> Result<Response> {
        let config = match env::config(&self.env) {
            Ok(config) => config,
            Err(e) => return respond::error(&ApiError::from(e)),
        };
        let path = request.path();
        // The raw method: `Request::method()` maps the ones it does not know to GET.
        let method = request.inner().method();
        let body = request.text().await.unwrap_or_default();
        let lab_request = match procedures::Request::decode(&method, &path, &body) {
            Ok(lab_request) => lab_request,
            Err(e) => return respond::error(&ApiError::InvalidRequest(e)),
        };
        let ports = self.ports(config.clone());
        let reply = Lab::new(&ports, &config).answer(lab_request).await;
        report(&ports, &path);
        match reply.map_err(|e| worker::Error::RustError(e.to_string()))? {
            Reply::Refused(refusal) => respond::error(&ApiError::from(refusal)),
            Reply::Events(events) => respond::json(200, &events),
            Reply::Noted => Response::empty().map(|r| r.with_status(204)),
            Reply::Poked { revived } => {
                respond::json(200, &serde_json::json!({ "revived": revived }))
            }
            Reply::Lab {
                status,
                session,
                line,
            } => {
                let answer = respond::json(status, &session.view());
                if let Some((level, line)) = line {
                    self.later(config, path, move |ports, config| async move {
                        ports.log(level, &line);
                        Lab::new(&*ports, &config).sync_index().await
                    });
                }
                answer
            }
        }
    }

    async fn alarm(&self) -> Result<Response> {
        let done = match env::config(&self.env) {
            Ok(config) => {
                let ports = self.ports(config.clone());
                let done = Lab::new(&ports, &config).alarm().await;
                let what = format!("alarm ({})", describe(&done));
                if matches!(done, Ok(d) if d.deliver) {
                    self.later(config, what.clone(), |ports, config| async move {
                        Lab::new(&*ports, &config).deliver_due().await
                    });
                }
                report(&ports, &what);
                done
            }
            Err(e) => {
                let defaults = Rc::new(Config::defaults());
                let ports = self.ports(defaults.clone());
                Lab::new(&ports, &defaults).alarm_misconfigured(&e).await
            }
        };
        // Only storage errors reach here: returned, the platform runs the alarm again.
        done.map_err(|e| worker::Error::RustError(e.to_string()))?;
        Response::empty()
    }
}

fn describe(done: &std::result::Result<procedures::AlarmDone, StoreError>) -> &'static str {
    done.as_ref().map_or("storage error", |d| d.woke.describe())
}

impl RecordStore for Workerd {
    async fn load(&self) -> std::result::Result<Stored, StoreError> {
        self.store.load().await
    }
    async fn alarm(&self) -> std::result::Result<Option<i64>, StoreError> {
        self.store.alarm().await
    }
    async fn save(&self, record: &str, at: Option<i64>) -> std::result::Result<(), StoreError> {
        self.store.save(record, at).await
    }
    async fn adopt(&self, record: &str, at: i64) -> std::result::Result<(), StoreError> {
        self.store.adopt(record, at).await
    }
    async fn set_alarm(&self, at: i64) -> std::result::Result<(), StoreError> {
        self.store.set_alarm(at).await
    }
    async fn delete_all(&self) -> std::result::Result<(), StoreError> {
        self.store.delete_all().await
    }
    async fn put(&self, record: &str) -> std::result::Result<(), StoreError> {
        self.store.put(record).await
    }
    fn noted_activity(&self) -> Option<i64> {
        self.activity.get()
    }
    fn note_activity(&self, at_ms: i64) {
        self.activity.set(Some(at_ms));
    }
}

impl Workerd {
    fn count_d1(&self, rows: fleet_db::Rows) {
        add(&self.usage.d1_rows_read, rows.read);
        add(&self.usage.d1_rows_written, rows.written);
    }
}

impl FleetIndex for Workerd {
    async fn upsert(&self, row: &IndexRow, vms: &[VmRow]) -> std::result::Result<(), String> {
        add(&self.usage.d1_batches, 1);
        let rows = fleet_db::upsert(&self.env, row, vms, self.config.index_timeout()).await?;
        self.count_d1(rows);
        Ok(())
    }
    async fn delete(&self, id: &str, revision: u64) -> std::result::Result<(), String> {
        add(&self.usage.d1_batches, 1);
        let rows = fleet_db::delete(&self.env, id, revision, self.config.index_timeout()).await?;
        self.count_d1(rows);
        Ok(())
    }
}

impl WebhookSender for Workerd {
    async fn send(&self, delivery: &Delivery) -> std::result::Result<u16, String> {
        let Webhooks::On(hooks) = &self.config.webhooks else {
            return Err("webhooks are off".into());
        };
        let timeout = std::time::Duration::from_millis(self.config.webhook_timeout_ms() as u64);
        add(&self.usage.webhook_calls, 1);
        webhook_sender::send(&hooks.url, delivery, timeout).await
    }
}

impl LabBackend for Workerd {
    async fn delete_exposed_services(
        &self,
        master: &str,
    ) -> std::result::Result<BackendReply, BackendError> {
        if self.config.dry_run {
            let dry = DryRunBackend::new(&self.config.backend_url, &ConsoleLogger);
            return dry.delete_exposed_services(master).await;
        }
        add(&self.usage.backend_calls, 1);
        HttpLabBackend::new(&self.config)
            .delete_exposed_services(master)
            .await
    }
    async fn delete_vm(
        &self,
        id: &str,
        user: &str,
    ) -> std::result::Result<BackendReply, BackendError> {
        if self.config.dry_run {
            let dry = DryRunBackend::new(&self.config.backend_url, &ConsoleLogger);
            return dry.delete_vm(id, user).await;
        }
        add(&self.usage.backend_calls, 1);
        HttpLabBackend::new(&self.config).delete_vm(id, user).await
    }
}

impl Budget for Workerd {
    async fn acquire(&self, priority_ms: i64, wanted: usize) -> Permit {
        match self.permits.acquire(priority_ms, wanted).await {
            Ok(permit) => permit,
            Err(why) => {
                if !self.budget_warned.replace(true) {
                    self.log(
                        Level::Warn,
                        &format!(
                            "The fleet's budget of backend calls could not be reached ({why}); calling without permits"
                        ),
                    );
                }
                Permit::Unlimited
            }
        }
    }
    fn release(&self, permit: Permit, outcome: CallOutcome) {
        self.permits.release(permit, outcome);
    }
}

impl Runtime for Workerd {
    fn now_ms(&self) -> i64 {
        WorkersRuntime.now_ms()
    }
    fn random(&self) -> f64 {
        WorkersRuntime.random()
    }
    async fn sleep(&self, ms: u64) {
        WorkersRuntime.sleep(ms).await
    }
}

impl Logger for Workerd {
    fn log(&self, level: Level, message: &str) {
        ConsoleLogger.log(level, message)
    }
    fn record<T: serde::Serialize>(&self, record: &T) {
        ConsoleLogger.record(record)
    }
}
