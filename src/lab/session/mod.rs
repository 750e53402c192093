//! The session record of one lab: what was asked, its cleanup's progress, its index sync, its notifications; and its state transitions.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller: nothing here reads a
//! clock. The record is one JSON value in the lab's storage; its parts are sub-records
//! flattened into it (the stored JSON has one level), and it has one size bound (`bound`).

pub mod bound;
pub mod claim;
pub mod outbox;
pub mod outcome;
pub mod stage;
mod stored;
pub mod timeline;
pub mod view;

use serde::{Deserialize, Serialize};

use crate::lab::refusal::Refusal;
pub use crate::lab::status::{LabType, Role, Status};
pub use crate::lab::text::rfc3339;
pub use outbox::{OutboxEvent, Snapshot};
pub use outcome::{AttemptResult, Deletion, DeletionError, Ending, Outcome};
pub use stage::{Stop, StopEnd};
pub use timeline::{By, EndReason, Event, Kind, Timeline};
pub use view::SessionView;

/// A validated request to schedule a lab's cleanup: what the router forwards to the
/// `SessionManager` object named by `lab_request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewSession {
    pub lab_request_id: String,
    pub user_id: String,
    /// Worker VM ids of a multi-node lab, in request order; empty for a single-VM lab.
    pub worker_lab_request_ids: Vec<String>,
    /// Lifetime in whole minutes (one unit of `DURATION_UNIT_SECONDS`).
    pub duration: u64,
    pub vm_name: Option<String>,
    /// Minutes (`duration` units) without activity after which the lab ends early; `None`:
    /// `IDLE_TIMEOUT_MINUTES` if set, else never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    /// Labels (`{"class": "cka-2026-11-30"}`), at most `limits::MAX_LABELS`; part of the create's
    /// identity.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Minutes (`duration` units) its VMs stay stopped after its end, with the grace stage on
    /// (`STOP_PATH`); 0: deleted at once; `None`: `KEEP_STOPPED_MINUTES`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_stopped_minutes: Option<u64>,
}

/// A lab's labels, sorted by key.
pub type Labels = std::collections::BTreeMap<String, String>;

impl NewSession {
    /// A create as `Serialize` writes it (the router's forward to the lab's object), read from
    /// its JSON value: a derived deserializer costs the wasm more than these fields. `None`:
    /// not one.
    pub fn from_value(v: &serde_json::Value) -> Option<NewSession> {
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let optional = |k: &str| match &v[k] {
            serde_json::Value::Null => Some(None),
            other => other.as_str().map(|s| Some(s.to_string())),
        };
        Some(NewSession {
            lab_request_id: text("lab_request_id")?,
            user_id: text("user_id")?,
            worker_lab_request_ids: v["worker_lab_request_ids"]
                .as_array()?
                .iter()
                .map(|w| w.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()?,
            duration: v["duration"].as_u64()?,
            vm_name: optional("vm_name")?,
            idle_timeout: match &v["idle_timeout"] {
                serde_json::Value::Null => None,
                n => Some(n.as_u64()?),
            },
            keep_stopped_minutes: match &v["keep_stopped_minutes"] {
                serde_json::Value::Null => None,
                n => Some(n.as_u64()?),
            },
            labels: match &v["labels"] {
                serde_json::Value::Null => Labels::new(),
                serde_json::Value::Object(map) => {
                    // One by one: collecting into a map sorts first, with code of its own.
                    let mut labels = Labels::new();
                    for (k, v) in map {
                        labels.insert(k.clone(), v.as_str()?.to_string());
                    }
                    labels
                }
                _ => return None,
            },
        })
    }
}

/// One VM to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vm<'a> {
    pub id: &'a str,
    pub role: Role,
}

/// The durable record of one lab, stored as one JSON value by its `SessionManager`.
///
/// The lab itself (what the create asked, its lifetime) is at the top; the rest is in
/// sub-records: `cleanup` (the cleanup's progress), `sync` (the index's copy), `notices` (the
/// webhooks), `adoption` (where it came from). Stored, they are one flat JSON object
/// (`stored`: the sub-records flattened, in this order); a field missing in a record of an
/// earlier version takes its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub lab_request_id: String,
    pub user_id: String,
    pub vm_name: Option<String>,
    pub worker_lab_request_ids: Vec<String>,
    /// As requested, in `duration` units (minutes).
    pub duration: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    #[serde(flatten)]
    pub cleanup: Cleanup,
    /// Minutes added by `extend` (the lifetime is `duration + extended_minutes`).
    #[serde(default)]
    pub extended_minutes: u64,
    /// Whether a cleanup attempt ran with `DRY_RUN` (no backend call was made).
    #[serde(default)]
    pub dry_run: bool,
    #[serde(flatten)]
    pub adoption: Adoption,
    #[serde(flatten)]
    pub sync: Sync,
    #[serde(flatten)]
    pub notices: Notices,
    /// Why the lab ended (its cleanup started); `None` while it is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    #[serde(flatten)]
    pub idle: Idle,
    #[serde(flatten)]
    pub timeline: Timeline,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The bulk jobs that changed this lab, latest last (at most `MAX_JOBS_KEPT`): a job asking
    /// again (a retried batch) changes nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// The grace stage (`lab::session::stage`): its VMs stopped before they are deleted.
    #[serde(flatten)]
    pub stop: Stop,
}

/// Bulk jobs a lab remembers (a job retries a lab within minutes; eight is plenty).
pub const MAX_JOBS_KEPT: usize = 8;

/// The lab's idle end (`idle_timeout`), when it has one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idle {
    /// How long without activity ends the lab, in `duration` units as asked, and in ms; `None`:
    /// never.
    #[serde(
        rename = "idle_timeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_minutes: Option<u64>,
    #[serde(
        rename = "idle_timeout_ms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_ms: Option<i64>,
    /// The latest activity written to the record (`ACTIVITY_WRITE_SECONDS` apart at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_ms: Option<i64>,
}

/// The cleanup's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    pub status: Status,
    /// Cleanup attempts started so far.
    pub attempts: u32,
    /// VM ids the backend confirmed deleting (2xx), never deleted again.
    pub deleted: Vec<String>,
    /// VM ids the backend answered 404 for: already gone, never asked again. Kept apart from
    /// `deleted` because a backend at the wrong base path answers 404 to everything.
    #[serde(default)]
    pub already_gone: Vec<String>,
    /// Whether the last services call answered 404 (with every VM gone too: a misconfigured
    /// backend, most likely).
    #[serde(default)]
    pub services_answered_404: bool,
    /// Whether the backend refused a call (429/503) in the last attempt: the next one deletes
    /// one VM at a time.
    #[serde(default)]
    pub refused_last_attempt: bool,
    /// How long after `expires_at` the first attempt starts (the spread of a class expiring
    /// together; 0 under the fixed policy or once ended by request).
    #[serde(default)]
    pub start_delay_ms: i64,
    pub next_attempt_at_ms: Option<i64>,
    pub last_outcome: Option<Outcome>,
    pub completed_at_ms: Option<i64>,
    /// Attempts in a row whose calls timed out (the budget's backoff, see `lab::retry`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_streak: u32,
    /// The last attempt that made calls had a deletion fail: the fleet's budget serves this lab
    /// after the labs that did not fail (`lab::cleanup::budget_priority`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub failing: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where the lab came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    /// When this session was adopted from the TypeScript worker's storage keys (see `legacy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_at_ms: Option<i64>,
    /// When an inventory reported this VM, known to no lab, and it was scheduled for cleanup as
    /// a lab of its own (see `lab::fleet::inventory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_at_ms: Option<i64>,
}

/// Where a lab came from, as the status view and the index name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Scheduled by `POST /api/v1/labs/sessions`.
    Api,
    /// Adopted from the TypeScript worker's storage.
    Legacy,
    /// An orphan VM an inventory reported (`POST /api/v1/labs/inventory`, or the scheduled pull).
    Inventory,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Legacy => "legacy",
            Origin::Inventory => "inventory",
        }
    }

    pub const ALL: [Origin; 3] = [Origin::Api, Origin::Legacy, Origin::Inventory];

    pub fn parse(name: &str) -> Option<Origin> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }
}

crate::lab::named_enum!(Origin, Origin::parse);

/// How far the fleet index has caught up with the record (see `lab::index`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// Bumped on every change of the record.
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub index: IndexSync,
}

/// The index's side of `Sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSync {
    /// The record's revision the index last confirmed (0: never written).
    #[serde(default)]
    pub written: u64,
    /// When to write the row again if it is still owed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<i64>,
    /// When to try deleting the row again, after a failed delete at the end of retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_retry_at_ms: Option<i64>,
}

/// The webhooks' side of the record (see `lab::webhook`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notices {
    /// The expiry `lab.expiring` was created for (a new expiry after an extend warns again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warned_for_expiry_ms: Option<i64>,
    /// The stages of `WARN_BEFORE_MINUTES` (minutes before the expiry) already warned for the
    /// expiry `warned_for_expiry_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warned_stages: Vec<u64>,
    /// The idle deadline `lab.idle_warning` was created for (activity moves the deadline, and a
    /// new one warns again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_warned_for_ms: Option<i64>,
    /// Whether `lab.cleanup_stuck` was created (it is sent once).
    #[serde(default)]
    pub stuck_notified: bool,
    /// Webhook events not yet delivered: at most one per event type (`bound`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<OutboxEvent>,
}

impl Session {
    /// A newly scheduled session expiring `lifetime_ms` after `now_ms`.
    pub fn schedule(new: NewSession, now_ms: i64, lifetime_ms: i64) -> Session {
        Session {
            lab_request_id: new.lab_request_id,
            user_id: new.user_id,
            vm_name: new.vm_name,
            worker_lab_request_ids: new.worker_lab_request_ids,
            duration: new.duration,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(lifetime_ms),
            cleanup: Cleanup {
                status: Status::Scheduled,
                attempts: 0,
                deleted: Vec::new(),
                already_gone: Vec::new(),
                services_answered_404: false,
                refused_last_attempt: false,
                start_delay_ms: 0,
                next_attempt_at_ms: None,
                last_outcome: None,
                completed_at_ms: None,
                timeout_streak: 0,
                failing: false,
            },
            extended_minutes: 0,
            dry_run: false,
            adoption: Adoption::default(),
            sync: Sync::default(),
            notices: Notices::default(),
            end_reason: None,
            idle: Idle::default(),
            timeline: Timeline::default(),
            labels: new.labels,
            jobs: Vec::new(),
            stop: Stop {
                keep_minutes: new.keep_stopped_minutes,
                ..Stop::default()
            },
        }
    }

    /// Whether the bulk job `job` already changed this lab.
    pub fn applied(&self, job: Option<&str>) -> bool {
        job.is_some_and(|job| self.jobs.iter().any(|j| j == job))
    }

    /// Remembers that the bulk job `job` (if any) changed this lab.
    pub fn remember_job(&mut self, job: Option<String>) {
        if let Some(job) = job {
            self.jobs.push(job);
            if self.jobs.len() > MAX_JOBS_KEPT {
                self.jobs.remove(0);
            }
        }
    }

    /// The idle timeout as asked, in `duration` units.
    pub fn idle_timeout_units(&self) -> Option<u64> {
        self.idle.timeout_minutes
    }

    /// Adds an event of `kind` at `at` to the timeline.
    pub fn record(&mut self, kind: Kind, at: i64) {
        self.timeline.push(Event::new(kind, at));
    }

    /// The lab's VM ids by position (the timeline's and the snapshots' references).
    pub fn vm_ids(&self) -> Vec<&str> {
        self.vms().map(|vm| vm.id).collect()
    }

    /// When the lab ends for want of activity: its idle timeout after the later of its creation
    /// and its latest activity (`noted_ms`: one not yet written, if later). `None` without an
    /// idle timeout, once it has ended, or when that is not before its expiry (the hard limit
    /// comes first).
    pub fn idle_deadline(&self, noted_ms: Option<i64>) -> Option<i64> {
        let timeout = self.idle.timeout_ms?;
        if self.cleanup.status != Status::Scheduled {
            return None;
        }
        let since = [
            Some(self.created_at_ms),
            self.idle.last_activity_ms,
            noted_ms,
        ]
        .into_iter()
        .flatten()
        .max()?;
        let at = since.saturating_add(timeout);
        (at < self.expires_at_ms).then_some(at)
    }

    /// Adds the attempt that `finish_attempt` has just recorded to the timeline: its number, how
    /// long it took, and each VM it tried by position (failures by status code or error class);
    /// then `stuck` when it is the attempt that makes the lab stuck, or `completed`.
    pub fn record_attempt(
        &mut self,
        result: &AttemptResult,
        started_ms: i64,
        done_ms: i64,
        stuck_after: u32,
    ) {
        let position = |id: &str| -> Option<u16> { u16::try_from(self.position(id)?).ok() };
        let event = Event {
            n: Some(self.cleanup.attempts),
            ms: Some(done_ms.saturating_sub(started_ms)),
            deleted: result
                .deleted
                .iter()
                .filter_map(|id| position(id))
                .collect(),
            gone: result
                .already_gone
                .iter()
                .filter_map(|id| position(id))
                .collect(),
            failed: result
                .outcome
                .errors
                .iter()
                .filter_map(|e| {
                    Some((
                        position(&e.lab_request_id)?,
                        timeline::failure_code(&e.error),
                    ))
                })
                .collect(),
            not_tried: u32::try_from(result.outcome.not_tried).unwrap_or(u32::MAX),
            ..Event::new(Kind::Attempt, done_ms)
        };
        self.timeline.push(event);
        match self.cleanup.status {
            Status::Completed => self.record(Kind::Completed, done_ms),
            Status::Retrying if self.cleanup.attempts == stuck_after => {
                self.timeline.push(Event {
                    n: Some(self.cleanup.attempts),
                    ..Event::new(Kind::Stuck, done_ms)
                });
            }
            _ => {}
        }
    }

    /// Marks the lab ended for `reason` at `at` (the first reason only), on its timeline.
    pub fn mark_ended(&mut self, reason: EndReason, at: i64) {
        if self.end_reason.is_some() {
            return;
        }
        self.end_reason = Some(reason);
        self.timeline.push(Event {
            reason: Some(reason),
            ..Event::new(Kind::Ended, at)
        });
    }

    pub fn status(&self) -> Status {
        self.cleanup.status
    }

    pub fn origin(&self) -> Origin {
        if self.adoption.inventory_at_ms.is_some() {
            Origin::Inventory
        } else if self.adoption.adopted_at_ms.is_some() {
            Origin::Legacy
        } else {
            Origin::Api
        }
    }

    pub fn lab_type(&self) -> LabType {
        if self.worker_lab_request_ids.is_empty() {
            LabType::SingleVm
        } else {
            LabType::MultiNode
        }
    }

    /// Every VM of the lab: the master first, then the workers in request order.
    pub fn vms(&self) -> impl Iterator<Item = Vm<'_>> {
        std::iter::once(Vm {
            id: self.lab_request_id.as_str(),
            role: Role::Master,
        })
        .chain(self.worker_lab_request_ids.iter().map(|id| Vm {
            id: id.as_str(),
            role: Role::Worker,
        }))
    }

    pub fn vm_count(&self) -> usize {
        1 + self.worker_lab_request_ids.len()
    }

    /// The position of VM `id` in `vms()` (the master is 0).
    pub fn position(&self, id: &str) -> Option<usize> {
        self.vms().position(|vm| vm.id == id)
    }

    /// Whether the VM `id` is confirmed deleted or already gone.
    pub fn is_done(&self, id: &str) -> bool {
        self.cleanup.is_done(id)
    }

    /// The VMs not yet confirmed deleted or gone, master first.
    pub fn pending(&self) -> Vec<Vm<'_>> {
        self.vms().filter(|vm| !self.is_done(vm.id)).collect()
    }

    /// Whether every call of a completed lab answered 404: the services call and every VM. A
    /// backend at the wrong base path answers exactly that, so it deserves an error line.
    pub fn every_call_answered_404(&self) -> bool {
        let c = &self.cleanup;
        c.status == Status::Completed && c.deleted.is_empty() && c.services_answered_404
    }

    /// Whether the lab's time is up at `now_ms`: no VM may be deleted before this.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// Puts the lab's next attempt off to `at_ms` (a late alarm spread out, see
    /// `retry::late_start_delay`), in the field the planner (`wake::attempt_at`) reads for the
    /// lab's status: the start delay while scheduled, the planned attempt otherwise (a stopped
    /// lab's deletion never before it). A completed lab has no attempt to put off.
    pub fn put_off_attempt(&mut self, at_ms: i64) {
        let c = &mut self.cleanup;
        match c.status {
            Status::Scheduled => {
                c.start_delay_ms = at_ms.saturating_sub(self.expires_at_ms).max(0);
            }
            Status::CleaningUp | Status::Retrying | Status::Stopped => {
                c.next_attempt_at_ms = Some(at_ms);
            }
            Status::Completed => {}
        }
    }

    /// Marks the start of a cleanup attempt. The next attempt is planned `retry_ms` later right
    /// away, so that an attempt cut short (eviction, crash) is resumed by that alarm.
    pub fn begin_attempt(&mut self, now_ms: i64, retry_ms: i64) {
        let c = &mut self.cleanup;
        c.status = Status::CleaningUp;
        c.attempts = c.attempts.saturating_add(1);
        c.next_attempt_at_ms = Some(now_ms.saturating_add(retry_ms));
    }

    /// Records what an attempt deleted and how it went, and moves to `Completed` when no VM is
    /// left, or to `Retrying` with the next attempt at `next_attempt_at_ms` (the retry policy
    /// decides when; see `lab::retry`). The stored errors are bounded (`bound::bounded_errors`).
    /// Adds VMs an attempt confirmed gone (`true`: already gone) before its end; whether any was
    /// new.
    pub fn add_confirmed(&mut self, confirmed: &[(String, bool)]) -> bool {
        let mut added = false;
        for (id, gone) in confirmed {
            if !self.is_done(id) && self.position(id).is_some() {
                let list = if *gone {
                    &mut self.cleanup.already_gone
                } else {
                    &mut self.cleanup.deleted
                };
                list.push(id.clone());
                added = true;
            }
        }
        added
    }

    pub fn finish_attempt(&mut self, result: &AttemptResult, now_ms: i64, next_attempt_at_ms: i64) {
        for id in &result.deleted {
            if !self.is_done(id) && self.position(id).is_some() {
                self.cleanup.deleted.push(id.clone());
            }
        }
        for id in &result.already_gone {
            if !self.is_done(id) && self.position(id).is_some() {
                self.cleanup.already_gone.push(id.clone());
            }
        }
        // Errors are kept for the VMs still pending only (so a completed lab keeps none).
        let errors: Vec<DeletionError> = result
            .outcome
            .errors
            .iter()
            .filter(|e| {
                self.position(&e.lab_request_id).is_some() && !self.is_done(&e.lab_request_id)
            })
            .cloned()
            .collect();
        let nothing_left = self.pending().is_empty();
        let c = &mut self.cleanup;
        if let Some(services) = &result.services {
            c.services_answered_404 = *services == Deletion::AlreadyGone;
        }
        c.refused_last_attempt = matches!(result.ending, Ending::Refused { .. });
        // An attempt that made no VM call (the budget or the backend deferred it) says nothing.
        let o = &result.outcome;
        if o.failed_deletions > 0 {
            c.failing = true;
        } else if o.successful_deletions > 0 {
            c.failing = false;
        }
        c.last_outcome = Some(Outcome {
            errors: bound::bounded_errors(&errors),
            ..result.outcome.clone()
        });
        if nothing_left {
            c.status = Status::Completed;
            c.completed_at_ms = Some(now_ms);
            c.next_attempt_at_ms = None;
        } else {
            c.status = Status::Retrying;
            c.next_attempt_at_ms = Some(next_attempt_at_ms);
        }
    }

    /// Ends the lab now (a student's "End Lab"): the cleanup is due at once, under the same rules
    /// as at expiry. Returns whether anything changed (false once the cleanup is running or done).
    pub fn end_now(&mut self, now_ms: i64) -> bool {
        match self.cleanup.status {
            Status::Scheduled => {
                // From here on the lab counts as expired and its cleanup as started.
                self.expires_at_ms = self.expires_at_ms.min(now_ms);
                self.cleanup.status = Status::CleaningUp;
                self.cleanup.next_attempt_at_ms = Some(now_ms);
                true
            }
            Status::Retrying => {
                // A lab being stopped is deleted at once instead.
                self.end_stage(now_ms);
                self.cleanup.next_attempt_at_ms = Some(now_ms);
                true
            }
            Status::Stopped => self.end_stage(now_ms),
            // A stop attempt in flight: the deletion follows it at once.
            Status::CleaningUp if self.stop_in_flight() => {
                self.stop.over = true;
                true
            }
            Status::CleaningUp | Status::Completed => false,
        }
    }

    /// An operator's "retry now": a `Retrying` lab gets its next attempt at `now_ms` (true). A
    /// lab being cleaned up already is left as it is (false). A scheduled lab is ended with
    /// `end_now`, not retried; a completed one has nothing left to retry.
    pub fn retry_now(&mut self, now_ms: i64) -> Result<bool, Refusal> {
        match self.cleanup.status {
            Status::Retrying => {
                self.cleanup.next_attempt_at_ms = Some(now_ms);
                Ok(true)
            }
            Status::CleaningUp => Ok(false),
            Status::Stopped => Err(Refusal::Conflict(format!(
                "lab {} is stopped; its VMs are deleted at {} (end it with DELETE to delete them now, or resume it)",
                self.lab_request_id,
                self.delete_due_at().map(rfc3339).unwrap_or_default()
            ))),
            Status::Scheduled => Err(Refusal::Conflict(format!(
                "lab {} is scheduled; its cleanup has not started (end it with DELETE)",
                self.lab_request_id
            ))),
            Status::Completed => Err(Refusal::Conflict(format!(
                "lab {} is already cleaned up; nothing to retry",
                self.lab_request_id
            ))),
        }
    }

    /// Moves the expiry `minutes` (each `unit_ms` long) later, while the lab is still scheduled and
    /// its whole lifetime stays within `max_minutes`.
    pub fn extend(&mut self, minutes: u64, unit_ms: i64, max_minutes: u64) -> Result<(), Refusal> {
        if self.cleanup.status != Status::Scheduled {
            return Err(Refusal::Conflict(format!(
                "lab {} is {}; only a scheduled lab can be extended",
                self.lab_request_id,
                self.cleanup.status.describe()
            )));
        }
        self.lifetime_within(minutes, max_minutes, "extending by")?;
        self.extended_minutes = self.extended_minutes.saturating_add(minutes);
        self.expires_at_ms = self
            .expires_at_ms
            .saturating_add(crate::lab::time::units_ms(minutes, unit_ms));
        Ok(())
    }

    /// Whether `minutes` more (`doing`: "extending by", "resuming for") keep the lab's whole
    /// lifetime (`duration` plus every extension) within `max_minutes`.
    pub fn lifetime_within(
        &self,
        minutes: u64,
        max_minutes: u64,
        doing: &str,
    ) -> Result<(), Refusal> {
        // Checked: an adopted record may hold any duration.
        let lifetime = self
            .duration
            .checked_add(self.extended_minutes)
            .and_then(|sum| sum.checked_add(minutes));
        match lifetime {
            Some(lifetime) if lifetime <= max_minutes => Ok(()),
            _ => Err(Refusal::Invalid(format!(
                "{doing} {minutes} minutes would make the lab's lifetime {} minutes; \
                 the maximum is {max_minutes}",
                lifetime.map_or("more than 2^64".into(), |l| l.to_string())
            ))),
        }
    }

    /// Takes VM `id` back from deleted (or already gone) to pending, its next attempt at `now_ms`:
    /// an inventory says it still runs. A completed lab is being cleaned up again.
    pub fn reopen(&mut self, id: &str, now_ms: i64) {
        let c = &mut self.cleanup;
        c.deleted.retain(|d| d != id);
        c.already_gone.retain(|d| d != id);
        if c.status == Status::Completed {
            c.status = Status::Retrying;
            c.completed_at_ms = None;
        }
        if c.status == Status::Retrying {
            c.next_attempt_at_ms = Some(now_ms);
        }
    }

    /// Whether `new` asks for exactly this session (a retried create), ignoring the VM name.
    pub fn same_request(&self, new: &NewSession, default_idle: Option<u64>) -> bool {
        self.lab_request_id == new.lab_request_id
            && self.user_id == new.user_id
            && self.worker_lab_request_ids == new.worker_lab_request_ids
            && self.duration == new.duration
            && self.labels == new.labels
            && self.idle.timeout_minutes == new.idle_timeout.or(default_idle)
            && self.stop.keep_minutes == new.keep_stopped_minutes
    }
}

impl Cleanup {
    /// Whether the VM `id` is confirmed deleted or already gone.
    pub fn is_done(&self, id: &str) -> bool {
        self.deleted
            .iter()
            .chain(&self.already_gone)
            .any(|d| d == id)
    }
}

#[cfg(test)]
mod tests;
