//! The reference the simulation checks the fleet against: what was asked of each lab, and from that, the earliest moment any of its VMs may be stopped or deleted.
//!
//! The model knows only what a user of the API knows: what was created, extended, ended, kept
//! active or resumed, and what each answer said. It never reads the record to decide what is
//! allowed, so a record that is wrong cannot make a wrong deletion look right.

use std::collections::BTreeMap;

/// One lab as asked of the fleet (the latest lab of that id).
#[derive(Debug, Clone)]
pub struct ModelLab {
    pub workers: Vec<String>,
    pub created_at: i64,
    /// The expiry the latest answer gave (a create, an extend, a resume).
    pub expires_at: i64,
    /// The idle timeout, in ms, and the latest activity the fleet took (a create, an activity
    /// answered, a resume).
    pub idle_ms: Option<i64>,
    pub last_activity: i64,
    /// How long its VMs are kept stopped after its time is up (0: the stage is off for it).
    pub keep_ms: i64,
    /// Ended by a request (`DELETE`) at this time: deleted from then on, no stage.
    pub ended_by_request: Option<i64>,
    /// A stop call of its current end failed for a reason other than a refusal, or an
    /// invocation of its object was cut short while its time was up: the stage may give up.
    pub stage_may_give_up: bool,
}

impl ModelLab {
    /// Every VM of the lab, the master first.
    pub fn vms(&self, id: &str) -> Vec<String> {
        std::iter::once(id.to_string())
            .chain(self.workers.iter().cloned())
            .collect()
    }

    pub fn lists(&self, id: &str, vm: &str) -> bool {
        id == vm || self.workers.iter().any(|w| w == vm)
    }

    /// The earliest its time can be up: its expiry, or its idle deadline (the latest activity
    /// less the window an activity may wait in memory before it is written, lost if the object
    /// is evicted meanwhile: `ACTIVITY_WRITE_SECONDS`), or the end asked for.
    pub fn due(&self, activity_window_ms: i64) -> i64 {
        if let Some(at) = self.ended_by_request {
            return at;
        }
        let idle = self.idle_ms.map(|ms| {
            self.created_at
                .max(self.last_activity.saturating_sub(activity_window_ms))
                .saturating_add(ms)
        });
        idle.map_or(self.expires_at, |idle| idle.min(self.expires_at))
    }

    /// The earliest any of its VMs may be deleted: its time up, plus the time its VMs are kept
    /// stopped when the stage applies (its time ran out, no end asked for, and no stop failed
    /// otherwise than by a refusal).
    pub fn delete_from(&self, activity_window_ms: i64) -> i64 {
        let due = self.due(activity_window_ms);
        if self.ended_by_request.is_some() || self.stage_may_give_up || self.keep_ms == 0 {
            due
        } else {
            due.saturating_add(self.keep_ms)
        }
    }
}

/// Every lab asked of the fleet, by id.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub labs: BTreeMap<String, ModelLab>,
    /// VMs the backend runs that no lab lists (orphans for the inventory).
    pub strays: Vec<String>,
}

impl Model {
    /// The labs other than `except` that list `vm` and whose time is not up at `at`.
    pub fn live_listing(&self, vm: &str, except: &str, at: i64, window: i64) -> Vec<String> {
        self.labs
            .iter()
            .filter(|(id, lab)| id.as_str() != except && lab.lists(id, vm) && at < lab.due(window))
            .map(|(id, _)| id.clone())
            .collect()
    }
}
