//! The lab's ports on workerd: its storage, the fleet index, the webhook receiver, the lab backend, the fleet's budget, the clock and the console, for one invocation of its object, with what it used counted.

use crate::lab::error::ServiceError;
use std::cell::Cell;
use std::rc::Rc;

use worker::Env;

use crate::lab::config::{Config, Webhooks};
use crate::lab::fleet::budget::{Asker, CallOutcome};
use crate::lab::index::{IndexRow, VmRow};
use crate::lab::invocation::{Exceeded, Meter};
use crate::lab::ports::{
    Allowance, BackendError, BackendReply, Budget, Delivery, FleetIndex, LabBackend, Labs, Level,
    Logger, Permit, Power, RecordStore, Runtime, StoreError, Stored, WebhookSender,
};
use crate::platform::backend::{DryRunBackend, HttpLabBackend};
use crate::platform::runtime::{ConsoleLogger, WorkersRuntime};
use crate::platform::store::Store;
use crate::platform::usage::{add, Usage};
use crate::platform::{budget, fleet_db, webhook_sender};

/// The lab's ports on workerd, for one request, alarm or background task.
pub struct Workerd {
    /// Whether this invocation said already that the budget could not be reached.
    budget_warned: Cell<bool>,
    usage: Rc<Usage>,
    memory: Memory,
    permits: budget::Permits,
    store: Store,
    env: Env,
    config: Rc<Config>,
}

impl Workerd {
    pub fn new(
        storage: &worker::worker_sys::DurableObjectStorage,
        raw: &worker::worker_sys::DurableObjectState,
        env: &Env,
        config: Rc<Config>,
        memory: &Memory,
        usage: Rc<Usage>,
    ) -> Workerd {
        Workerd {
            budget_warned: Cell::new(false),
            store: Store::new(storage, usage.clone()),
            permits: budget::Permits::new(env, raw, &config, usage.clone()),
            usage,
            memory: memory.clone(),
            env: env.clone(),
            config,
        }
    }

    fn count_d1(&self, rows: fleet_db::Rows) {
        add(&self.usage.d1_rows_read, rows.read);
        add(&self.usage.d1_rows_written, rows.written);
    }
}

/// What a lab's object keeps in memory between its invocations.
#[derive(Default, Clone)]
pub struct Memory {
    /// The latest activity noted and not yet written (see `RecordStore::noted_activity`).
    pub activity: Rc<Cell<Option<i64>>>,
    /// The worker VMs a create is claiming (see `RecordStore::claiming`).
    pub claiming: Rc<std::cell::RefCell<Vec<String>>>,
    /// Webhook events queued with their hold and not sent yet (see
    /// `RecordStore::queued_events`).
    pub queued: Rc<Cell<bool>>,
    /// The newest index revision written and not yet saved as written (see
    /// `RecordStore::index_written`).
    pub index_written: Rc<Cell<u64>>,
}

/// Logs what the invocation used: its structured `invocation` line (`kind`), and the debug
/// line of `LOG_STORAGE_OPS` (`what`).
pub fn report(usage: &Usage, config: &Config, kind: &str, what: &str) {
    usage.record(kind);
    if config.log_storage_ops {
        usage.report(what);
    }
}

/// A charge refused by the plan (`ENFORCE_PLAN_LIMITS`), as the port's error says it.
fn refused(e: Exceeded) -> String {
    e.to_string()
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
    async fn save_claim(
        &self,
        claim: &str,
        at: Option<i64>,
    ) -> std::result::Result<(), StoreError> {
        self.store.save_claim(claim, at).await
    }
    async fn put(&self, record: &str) -> std::result::Result<(), StoreError> {
        self.store.put(record).await
    }
    fn claiming(&self) -> Vec<String> {
        self.memory.claiming.borrow().clone()
    }
    fn set_claiming(&self, vm_ids: Vec<String>) {
        *self.memory.claiming.borrow_mut() = vm_ids;
    }
    fn noted_activity(&self) -> Option<i64> {
        self.memory.activity.get()
    }
    fn note_activity(&self, at_ms: i64) {
        self.memory.activity.set(Some(at_ms));
    }
    fn queued_events(&self) -> bool {
        self.memory.queued.get()
    }
    fn set_queued_events(&self, queued: bool) {
        self.memory.queued.set(queued);
    }
    fn index_written(&self) -> u64 {
        self.memory.index_written.get()
    }
    fn set_index_written(&self, revision: u64) {
        self.memory.index_written.set(revision);
    }
}

impl Workerd {
    /// One D1 batch: a call to a service, and a query per statement.
    async fn d1(
        &self,
        statements: Vec<(String, Vec<crate::lab::index::Bind>)>,
    ) -> std::result::Result<(), ServiceError> {
        self.usage
            .charge(Meter::Service, 1)
            .map_err(ServiceError::from)?;
        self.usage
            .charge(Meter::D1Query, statements.len() as u64)
            .map_err(ServiceError::from)?;
        add(&self.usage.d1_batches, 1);
        let rows = fleet_db::write(&self.env, statements, self.config.index_timeout()).await?;
        self.count_d1(rows);
        Ok(())
    }
}

impl FleetIndex for Workerd {
    async fn upsert(&self, row: &IndexRow, vms: &[VmRow]) -> std::result::Result<(), ServiceError> {
        self.d1(crate::lab::index::upsert_all(row, vms)).await
    }
    async fn delete(
        &self,
        id: &str,
        vm_ids: &[&str],
        revision: u64,
    ) -> std::result::Result<(), ServiceError> {
        self.d1(crate::lab::index::delete(id, vm_ids, revision))
            .await
    }
}

impl WebhookSender for Workerd {
    async fn send(&self, delivery: &Delivery) -> std::result::Result<u16, ServiceError> {
        let Webhooks::On(hooks) = &self.config.webhooks else {
            return Err(ServiceError::Failed("webhooks are off".to_string()));
        };
        let timeout = std::time::Duration::from_millis(self.config.webhook_timeout_ms() as u64);
        self.usage
            .charge(Meter::External, 1)
            .map_err(ServiceError::from)?;
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
        self.usage
            .charge(Meter::External, 1)
            .map_err(|e| BackendError::Network(refused(e)))?;
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
        self.usage
            .charge(Meter::External, 1)
            .map_err(|e| BackendError::Network(refused(e)))?;
        add(&self.usage.backend_calls, 1);
        HttpLabBackend::new(&self.config).delete_vm(id, user).await
    }
    async fn power(
        &self,
        power: Power,
        id: &str,
    ) -> std::result::Result<BackendReply, BackendError> {
        if self.config.dry_run {
            let dry = DryRunBackend::with(&self.config, &ConsoleLogger);
            return dry.power(power, id).await;
        }
        self.usage
            .charge(Meter::External, 1)
            .map_err(|e| BackendError::Network(refused(e)))?;
        add(&self.usage.backend_calls, 1);
        HttpLabBackend::new(&self.config).power(power, id).await
    }
}

impl Budget for Workerd {
    async fn acquire(&self, asker: Asker<'_>, priority_ms: i64, wanted: usize) -> Permit {
        match self.permits.acquire(asker, priority_ms, wanted).await {
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

impl Labs for Workerd {
    async fn call(
        &self,
        lab_request_id: &str,
        request: crate::lab::protocol::Request,
    ) -> std::result::Result<crate::lab::protocol::Answer, ServiceError> {
        self.usage
            .charge(Meter::Service, 1)
            .map_err(ServiceError::from)?;
        add(&self.usage.object_calls, 1);
        let timeout_ms = self.config.lab_call_timeout_ms();
        crate::platform::fleet::send(&self.env, lab_request_id, &request, Some(timeout_ms)).await
    }
}

impl Allowance for Workerd {
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
