//! What the core needs from the outside world, as small traits: the lab backend, the record's storage, the fleet index, the webhook receiver, the clock and the log.
//!
//! The platform implements them with the Workers runtime (`platform/`); the native tests with
//! in-memory fakes that can fail on purpose. Single-threaded wasm: no `Send` bounds.
#![allow(async_fn_in_trait)]

use thiserror::Error;

use crate::lab::legacy::LegacyRecord;

/// An HTTP answer from the lab backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendReply {
    pub status: u16,
    pub body: String,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<String>,
}

/// A backend call that got no complete HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendError {
    #[error("no answer within {0} s (timed out)")]
    Timeout(u64),
    /// The connection failed before any answer (refused, reset, DNS, TLS): the request may never
    /// have reached the backend.
    #[error("network error: {0}")]
    Network(String),
    /// An answer began (its status is known) and was cut off: no trustworthy answer.
    #[error("network error: answer {status} cut short: {error}")]
    CutShort { status: u16, error: String },
}

pub use crate::lab::error::ServiceError;

/// A VM's power, for the grace stage (`lab::session::stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// `POST {STOP_PATH}`: at a lab's end, before its deletion.
    Stop,
    /// `POST {START_PATH}`: a stopped lab resumed.
    Start,
}

impl Power {
    pub fn name(self) -> &'static str {
        match self {
            Power::Stop => "stop",
            Power::Start => "start",
        }
    }
}

/// The calls the cleanup makes on the lab backend.
pub trait LabBackend {
    /// `DELETE /api/v1/expose/` with `{"lab_request_id": master_id}`.
    async fn delete_exposed_services(&self, master_id: &str) -> Result<BackendReply, BackendError>;
    /// `POST /api/v1/labs/delete` with `{"lab_request_id": ..., "user_id": ...}`.
    async fn delete_vm(
        &self,
        lab_request_id: &str,
        user_id: &str,
    ) -> Result<BackendReply, BackendError>;
    /// `POST {STOP_PATH}` or `POST {START_PATH}` with `{"lab_request_id": ...}`.
    async fn power(&self, power: Power, lab_request_id: &str)
        -> Result<BackendReply, BackendError>;
}

/// A permit for one backend call, from the fleet-wide budget (`BACKEND_MAX_CONCURRENCY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// This lease: return it after the call.
    Granted(u64),
    /// No budget (unset), or its coordinator could not be reached in time: call as before.
    Unlimited,
    /// The fleet's budget is taken: make no call now; come back after this many ms.
    Wait(i64),
}

/// The fleet-wide budget of backend calls: a permit before each call, returned after it with
/// how the call went.
pub trait Budget {
    /// A permit for one call of lab `asker` at `priority_ms` (its expiry; after a failed attempt,
    /// the attempt's start: labs that did not fail go first). `wanted`: the calls the attempt
    /// can start now, this one included; an adapter may ask for that many in one round trip and
    /// keep the others for the attempt's next calls.
    async fn acquire(
        &self,
        asker: crate::lab::fleet::budget::Asker<'_>,
        priority_ms: i64,
        wanted: usize,
    ) -> Permit;
    /// Returns `permit` (not awaited: the attempt never waits for the return).
    fn release(&self, permit: Permit, outcome: crate::lab::fleet::budget::CallOutcome);
}

/// No budget: every call goes ahead.
pub struct NoBudget;

impl Budget for NoBudget {
    async fn acquire(&self, _: crate::lab::fleet::budget::Asker<'_>, _: i64, _: usize) -> Permit {
        Permit::Unlimited
    }
    fn release(&self, _: Permit, _: crate::lab::fleet::budget::CallOutcome) {}
}

/// What the invocation may still use within its plan (`lab::invocation`): the ports charge each
/// call to the invocation's ledger as they make it; the procedures ask before they plan.
pub trait Allowance {
    fn left(&self, meter: crate::lab::invocation::Meter) -> u64;
    /// When the invocation started.
    fn invocation_started_ms(&self) -> i64;
    /// How long the invocation has run so far, by the runtime's clock now (not a time fixed at
    /// its start: a slow page or call shows here).
    fn elapsed_ms(&self) -> i64;
}

/// The clock, randomness and sleeping.
pub trait Runtime {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// A random number in `[0, 1)`.
    fn random(&self) -> f64;
    async fn sleep(&self, ms: u64);
}

/// Severity of a log line (maps to `console.log` / `console.warn` / `console.error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Where log lines go. Lines are passed without `LOG_PREFIX`; implementations add it, and
/// escape what must not reach a log as it is (`lab::text::escape`).
pub trait Logger {
    fn log(&self, level: Level, message: &str);
    /// A structured record (serialized as an object), for Workers Logs to index field by field.
    /// Its fields are ids this worker validated, its own names, numbers and times.
    fn record<T: serde::Serialize>(&self, record: &T);
}

/// What the lab's storage holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// The session record, as the JSON text it was saved as.
    Record(String),
    /// No session record, but the TypeScript worker's keys (see `lab::legacy`).
    Legacy(LegacyRecord),
    /// No session record: this object's VM is a worker VM a lab claimed (`lab::session::claim`),
    /// as the JSON text it was saved as.
    Claim(String),
    /// Nothing at all.
    Empty,
}

/// A storage operation that failed (the runtime's words). The alarm returns it, so that the
/// platform runs the alarm again.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// The lab's storage: one record and one alarm. Every write of the record goes with the alarm,
/// in one atomic batch.
pub trait RecordStore {
    async fn load(&self) -> Result<Stored, StoreError>;
    /// The time the alarm is set for, if any.
    async fn alarm(&self) -> Result<Option<i64>, StoreError>;
    /// Writes the record and its alarm (`None`: no alarm) in one batch; a claim the object held
    /// is removed in the same batch (a lab's record replaces it).
    async fn save(&self, record: &str, alarm_at_ms: Option<i64>) -> Result<(), StoreError>;
    /// Writes a claim and its alarm (`None`: no alarm) in one batch; a record the object held is
    /// removed in the same batch (an orphan cleanup a claim cancels).
    async fn save_claim(&self, claim: &str, alarm_at_ms: Option<i64>) -> Result<(), StoreError>;
    /// Writes an adopted record with its alarm and removes the legacy keys, in one batch: the
    /// lab is never in both formats, or in none.
    async fn adopt(&self, record: &str, alarm_at_ms: i64) -> Result<(), StoreError>;
    /// Sets the alarm. An alarm set for that time already is not written again (a row fewer);
    /// the alarm that fired, while its handler runs, is set no more (written again).
    async fn set_alarm(&self, at_ms: i64) -> Result<(), StoreError>;
    /// Forgets everything, the alarm included.
    async fn delete_all(&self) -> Result<(), StoreError>;
    /// Writes the record alone, its alarm as it is (a change that moves no wake-up earlier:
    /// the latest activity).
    async fn put(&self, record: &str) -> Result<(), StoreError>;
    /// The latest activity this object noted in memory and has not written yet (lost when the
    /// object is evicted: an idle lab may then end up to `ACTIVITY_WRITE_SECONDS` early).
    fn noted_activity(&self) -> Option<i64>;
    fn note_activity(&self, at_ms: i64);
    /// The worker VMs a create in this object is claiming now (memory only: a create cut short
    /// takes its list with it, and answered nobody).
    fn claiming(&self) -> Vec<String>;
    fn set_claiming(&self, vm_ids: Vec<String>);
    /// Whether this object queued webhook events, with their hold written in the same save, and
    /// has not started to send them yet (memory only: an object evicted meanwhile leaves them
    /// to the hold's end, when the alarm delivers them). Their delivery needs no hold of its
    /// own.
    fn queued_events(&self) -> bool;
    fn set_queued_events(&self, queued: bool);
    /// The newest revision this object wrote to the fleet index and has not saved as written
    /// yet (memory only): the next save records it, so a confirmed row costs no save of its
    /// own. An object evicted meanwhile writes the row again at the next wake-up (the same
    /// revision: the index keeps it as it is).
    fn index_written(&self) -> u64;
    fn set_index_written(&self, revision: u64);
}

/// Other labs' objects, reached by name: one request of the protocol, and its answer as
/// `protocol::Answer::read` decodes it; a failure after `Config::lab_call_timeout_ms` (an
/// object that does not answer holds no run and no create).
pub trait Labs {
    async fn call(
        &self,
        lab_request_id: &str,
        request: crate::lab::protocol::Request,
    ) -> Result<crate::lab::protocol::Answer, ServiceError>;
}

/// The fleet index (a copy of every lab's row, for listing the fleet). Whatever goes wrong is
/// told in words: it is logged, retried, and never fails a cleanup.
pub trait FleetIndex {
    /// Writes a lab's row and its VMs' rows, in one batch.
    async fn upsert(
        &self,
        row: &crate::lab::index::IndexRow,
        vms: &[crate::lab::index::VmRow],
    ) -> Result<(), ServiceError>;
    /// Deletes a lab's rows: its own, and its VMs' (`vm_ids`).
    async fn delete(
        &self,
        lab_request_id: &str,
        vm_ids: &[&str],
        revision: u64,
    ) -> Result<(), ServiceError>;
}

/// One signed webhook delivery, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`: Unix seconds of this delivery.
    pub timestamp: i64,
    /// `webhook-signature`.
    pub signature: String,
    pub body: String,
}

/// The webhook receiver: the status it answered, or why there was none.
pub trait WebhookSender {
    async fn send(&self, delivery: &Delivery) -> Result<u16, ServiceError>;
}
