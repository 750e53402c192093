//! Fleet-wide procedures, over many labs at once: reconciling the backend's inventory with what the labs list, and the safety-net sweep of labs whose object stopped waking up.

pub mod budget;
pub mod bulk;
pub mod clock;
pub mod inventory;
pub mod levels;
pub mod report;
pub mod selector;
pub mod sweep;

use serde::Serialize;

use crate::lab::ports::ServiceError;

/// What a scheduled run (the Cron Trigger) did, logged as one structured record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    pub event: &'static str,
    /// Labs whose due time had passed by more than `SWEEP_GRACE_SECONDS`.
    pub overdue: usize,
    /// Of those, the ones whose alarm was missing or late, and was set again.
    pub revived: usize,
    /// The inventory pulled in this run (absent without `INVENTORY_PATH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<inventory::Counts>,
}

/// The fleet index, as the fleet-wide procedures use it. Whatever goes wrong is a `ServiceError`.
#[allow(async_fn_in_trait)]
pub trait FleetStore {
    /// What the index knows of these VMs (those it lists).
    async fn lookup(&self, vm_ids: &[String]) -> Result<Vec<inventory::KnownVm>, ServiceError>;
    /// When each of these VMs was first reported unknown (those seen before).
    async fn first_seen(&self, vm_ids: &[String]) -> Result<Vec<(String, i64)>, ServiceError>;
    /// Remembers `now_ms` as the first report of these VMs.
    async fn remember_seen(&self, vm_ids: &[String], now_ms: i64) -> Result<(), ServiceError>;
    /// Forgets first reports older than `index::SEEN_KEPT_MS`; how many are left (counted up to
    /// `index::MAX_SEEN_ROWS` and one).
    async fn tidy_seen(&self, now_ms: i64) -> Result<u64, ServiceError>;
    async fn save_reconciliation(&self, r: &inventory::Reconciliation) -> Result<(), ServiceError>;
    /// Labs not completed whose due time passed before `before_ms`, oldest first.
    async fn overdue(&self, before_ms: i64, limit: u32) -> Result<Vec<String>, ServiceError>;
    async fn state(&self, key: &str) -> Result<Option<String>, ServiceError>;
    /// Sets (or, with `None`, removes) a piece of the fleet jobs' state.
    async fn set_state(&self, key: &str, value: Option<&str>) -> Result<(), ServiceError>;
}

pub use crate::lab::ports::Labs;

/// The backend's inventory (`GET {BACKEND_URL}{INVENTORY_PATH}`), one page at a time.
#[allow(async_fn_in_trait)]
pub trait InventorySource {
    async fn page(&self, cursor: Option<&str>) -> Result<inventory::Page, report::PageError>;
}
