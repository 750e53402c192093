//! The fleet's ports in the simulation: the one index every object writes (the union of their rows, read as the index's queries read D1), the first reports, the backend's inventory, and calls to the objects.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::lab::error::ServiceError;
use crate::lab::fleet::inventory::{KnownVm, Page, Reconciliation};
use crate::lab::fleet::report::{PageError, ReportedVm};
use crate::lab::fleet::{FleetStore, InventorySource};
use crate::lab::index::IndexRow;
use crate::lab::invocation::Meter;
use crate::lab::ports::{Allowance, Labs, Level, Logger};
use crate::lab::procedures::tests::World;
use crate::lab::protocol::{Answer, Request};
use crate::lab::status::Status;

/// The fleet-wide procedures' view of the simulated fleet, for one invocation (a push, a run).
pub struct SimFleet<'a> {
    /// The object the fleet's calls go out from (its ledger is the invocation's).
    pub hub: &'a World,
    /// Every object, by name.
    pub objects: Vec<(String, Rc<World>)>,
    pub seen: &'a RefCell<BTreeMap<String, i64>>,
    pub state: &'a RefCell<BTreeMap<String, String>>,
    /// What the backend runs now, as its inventory lists it.
    pub running: Vec<ReportedVm>,
    /// When the invocation started, on the simulation's clock.
    pub started: i64,
    /// How long a page of the inventory takes to come, and a call to a lab's object (the
    /// clock moves by it: a slow backend, busy objects).
    pub page_ms: i64,
    pub call_ms: i64,
}

/// VMs a page of the backend's inventory lists (a run reads several).
pub const PAGE_SIZE: usize = 10;
/// Calls to labs' objects a fleet-wide run makes at once (the reconciliation's and the
/// sweep's), and so how much of a call's time each adds to the one clock.
const CALLS_AT_ONCE: i64 = 6;

impl SimFleet<'_> {
    /// Every lab's row in the index (each object writes its own).
    fn rows(&self) -> BTreeMap<String, IndexRow> {
        let mut all = BTreeMap::new();
        for (_, world) in &self.objects {
            for (id, row) in world.rows.borrow().iter() {
                all.insert(id.clone(), row.clone());
            }
        }
        all
    }

    fn vm_rows(&self) -> BTreeMap<String, (String, u64)> {
        let mut all: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for (_, world) in &self.objects {
            for (vm, (lab, revision)) in world.vm_rows.borrow().iter() {
                if all.get(vm).is_none_or(|(_, r)| r < revision) {
                    all.insert(vm.clone(), (lab.clone(), *revision));
                }
            }
        }
        all
    }

    fn charge(&self, queries: u64) -> Result<(), ServiceError> {
        let mut ledger = self.hub.ledger.borrow_mut();
        ledger.charge(Meter::Service, 1)?;
        ledger.charge(Meter::D1Query, queries)?;
        Ok(())
    }
}

/// A VM's state in a lab's row: `vms_done`'s (a multi-VM lab), or from the counts (one VM).
fn state_in(row: &IndexRow, vm: &str) -> String {
    if row.vm_count != 1 {
        return row
            .vms_done
            .as_deref()
            .and_then(|done| serde_json::from_str::<BTreeMap<String, String>>(done).ok())
            .and_then(|done| done.get(vm).cloned())
            .unwrap_or_else(|| "pending".into());
    }
    if row.pending_count > 0 {
        "pending".into()
    } else if row.already_gone_count > 0 {
        "already_gone".into()
    } else {
        "deleted".into()
    }
}

fn known(vm: &str, lab: &str, row: &IndexRow) -> Option<KnownVm> {
    crate::lab::rows::Lookup {
        vm_id: vm.to_string(),
        lab_request_id: lab.to_string(),
        state: state_in(row, vm),
        status: row.status,
        expires_at: row.expires_at,
        updated_at: row.completed_at.unwrap_or(row.updated_at),
    }
    .known()
}

impl FleetStore for SimFleet<'_> {
    async fn lookup(&self, vm_ids: &[String]) -> Result<Vec<KnownVm>, ServiceError> {
        self.charge(1)?;
        let (rows, vm_rows) = (self.rows(), self.vm_rows());
        let mut found = Vec::new();
        for vm in vm_ids {
            // As a worker of the lab its row in `vms` names (a lab of several VMs).
            if let Some((lab, _)) = vm_rows.get(vm).filter(|(lab, _)| lab != vm) {
                if let Some(row) = rows.get(lab).filter(|r| r.vm_count != 1) {
                    found.extend(known(vm, lab, row));
                }
            }
            // As a lab's own VM (its master, or a single VM).
            if let Some(row) = rows.get(vm) {
                found.extend(known(vm, vm, row));
            }
        }
        Ok(found)
    }

    async fn first_seen(&self, vm_ids: &[String]) -> Result<Vec<(String, i64)>, ServiceError> {
        self.charge(1)?;
        let seen = self.seen.borrow();
        Ok(vm_ids
            .iter()
            .filter_map(|id| seen.get(id).map(|at| (id.clone(), *at)))
            .collect())
    }

    async fn remember_seen(&self, vm_ids: &[String], now_ms: i64) -> Result<(), ServiceError> {
        self.charge(1)?;
        let mut seen = self.seen.borrow_mut();
        for id in vm_ids {
            seen.entry(id.clone()).or_insert(now_ms);
        }
        Ok(())
    }

    async fn tidy_seen(&self, _now_ms: i64) -> Result<u64, ServiceError> {
        self.charge(2)?;
        Ok(self.seen.borrow().len() as u64)
    }

    async fn save_reconciliation(&self, _: &Reconciliation) -> Result<(), ServiceError> {
        self.charge(2)
    }

    async fn overdue(&self, before_ms: i64, limit: u32) -> Result<Vec<String>, ServiceError> {
        self.charge(1)?;
        let mut late: Vec<(i64, String)> = self
            .rows()
            .into_values()
            .filter(|r| {
                r.status != Status::Completed
                    && r.next_attempt_at.unwrap_or(r.expires_at) < before_ms
            })
            .map(|r| (r.expires_at, r.lab_request_id))
            .collect();
        late.sort();
        Ok(late
            .into_iter()
            .take(limit as usize)
            .map(|(_, id)| id)
            .collect())
    }

    async fn state(&self, key: &str) -> Result<Option<String>, ServiceError> {
        self.charge(1)?;
        Ok(self.state.borrow().get(key).cloned())
    }

    async fn set_state(&self, key: &str, value: Option<&str>) -> Result<(), ServiceError> {
        self.charge(1)?;
        let mut state = self.state.borrow_mut();
        match value {
            Some(v) => state.insert(key.to_string(), v.to_string()),
            None => state.remove(key),
        };
        Ok(())
    }
}

impl InventorySource for SimFleet<'_> {
    async fn page(&self, cursor: Option<&str>) -> Result<Page, PageError> {
        self.hub
            .ledger
            .borrow_mut()
            .charge(Meter::External, 1)
            .map_err(|e| PageError::Failed(e.to_string()))?;
        self.hub.now.set(self.hub.now.get() + self.page_ms);
        let from: usize = match cursor {
            None => 0,
            Some(c) => c
                .strip_prefix('p')
                .and_then(|n| n.parse().ok())
                .ok_or(PageError::Refused(400))?,
        };
        let vms: Vec<ReportedVm> = self
            .running
            .iter()
            .skip(from)
            .take(PAGE_SIZE)
            .cloned()
            .collect();
        let next = from + PAGE_SIZE;
        Ok(Page {
            vms,
            next_cursor: (next < self.running.len()).then(|| format!("p{next}")),
            skipped: 0,
            bad_cursor: false,
        })
    }
}

impl Labs for SimFleet<'_> {
    async fn call(&self, lab_request_id: &str, request: Request) -> Result<Answer, ServiceError> {
        // The runs make these calls `CALLS_AT_ONCE` at a time, and the one clock moves with
        // each: a share of the call's time each, so a round of them takes one call's time.
        self.hub
            .now
            .set(self.hub.now.get() + self.call_ms / CALLS_AT_ONCE);
        self.hub.call(lab_request_id, request).await
    }
}

impl Allowance for SimFleet<'_> {
    fn left(&self, meter: Meter) -> u64 {
        self.hub.left(meter)
    }
    fn invocation_started_ms(&self) -> i64 {
        self.started
    }
    fn elapsed_ms(&self) -> i64 {
        self.hub.now.get().saturating_sub(self.started)
    }
}

impl Logger for SimFleet<'_> {
    fn log(&self, level: Level, message: &str) {
        self.hub.log(level, message);
    }
    fn record<T: serde::Serialize>(&self, record: &T) {
        self.hub.record(record);
    }
}
