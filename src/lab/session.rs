//! The stored session record of one lab, its state transitions and its JSON status view.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller: nothing here reads a clock.

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::lab::cleanup::{AttemptResult, Deletion};
use crate::lab::index::IndexSync;
use crate::lab::retry::Ending;
use crate::lab::webhook::OutboxEvent;

/// A validated request to schedule a lab's cleanup: what the router forwards to the
/// `SessionManager` object named by `lab_request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSession {
    pub lab_request_id: String,
    pub user_id: String,
    /// Worker VM ids of a multi-node lab, in request order; empty for a single-VM lab.
    pub worker_lab_request_ids: Vec<String>,
    /// Lifetime in whole minutes (one unit of `DURATION_UNIT_SECONDS`).
    pub duration: u64,
    pub vm_name: Option<String>,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the lab to expire.
    Scheduled,
    /// A cleanup attempt is running (or was interrupted and will be resumed by the alarm).
    CleaningUp,
    /// An attempt left VMs undeleted; the next attempt is scheduled.
    Retrying,
    /// Every VM is deleted.
    Completed,
}

impl Status {
    /// The status in words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::CleaningUp => "being cleaned up",
            Status::Retrying => "being cleaned up (retrying)",
            Status::Completed => "already cleaned up",
        }
    }
}

/// A single-VM lab, or a multi-node Kubernetes lab (a master and its workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabType {
    SingleVm,
    MultiNode,
}

/// Whether a VM is the lab's master (the `lab_request_id`) or one of its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

/// One VM to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vm<'a> {
    pub id: &'a str,
    pub role: Role,
}

/// One VM that failed to delete in an attempt, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionError {
    pub lab_request_id: String,
    pub error: String,
}

/// What one cleanup attempt achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub successful_deletions: usize,
    pub failed_deletions: usize,
    pub errors: Vec<DeletionError>,
    /// VMs not tried in the attempt because the backend was overloaded (still pending; not
    /// failures).
    #[serde(default)]
    pub not_tried: usize,
}

/// The durable record of one lab's cleanup, stored as one JSON value by its `SessionManager`.
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
    /// Minutes added by `extend` (the lifetime is `duration + extended_minutes`).
    #[serde(default)]
    pub extended_minutes: u64,
    /// Whether a cleanup attempt ran with `DRY_RUN` (no backend call was made).
    #[serde(default)]
    pub dry_run: bool,
    /// When this session was adopted from the TypeScript worker's storage keys (see `legacy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_at_ms: Option<i64>,
    /// Bumped on every change of the record (see `lab::index`).
    #[serde(default)]
    pub revision: u64,
    /// How far the fleet index has caught up with this record.
    #[serde(default)]
    pub index: IndexSync,
    /// The expiry `lab.expiring` was created for (a new expiry after an extend warns again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warned_for_expiry_ms: Option<i64>,
    /// Whether `lab.cleanup_stuck` was created (it is sent once).
    #[serde(default)]
    pub stuck_notified: bool,
    /// Webhook events not yet delivered (see `lab::webhook`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<OutboxEvent>,
}

/// Why a lifecycle change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The session is past the state where the change makes sense.
    Conflict(String),
    /// The change itself is out of bounds.
    Invalid(String),
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
            extended_minutes: 0,
            dry_run: false,
            adopted_at_ms: None,
            revision: 0,
            index: IndexSync::default(),
            warned_for_expiry_ms: None,
            stuck_notified: false,
            outbox: Vec::new(),
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

    /// Whether the VM `id` is confirmed deleted or already gone.
    pub fn is_done(&self, id: &str) -> bool {
        self.deleted
            .iter()
            .chain(&self.already_gone)
            .any(|d| d == id)
    }

    /// The VMs not yet confirmed deleted or gone, master first.
    pub fn pending(&self) -> Vec<Vm<'_>> {
        self.vms().filter(|vm| !self.is_done(vm.id)).collect()
    }

    /// Whether every call of a completed lab answered 404: the services call and every VM. A
    /// backend at the wrong base path answers exactly that, so it deserves an error line.
    pub fn every_call_answered_404(&self) -> bool {
        self.status == Status::Completed && self.deleted.is_empty() && self.services_answered_404
    }

    /// Whether the lab's time is up at `now_ms`: no VM may be deleted before this.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// Marks the start of a cleanup attempt. The next attempt is planned `retry_ms` later right
    /// away, so that an attempt cut short (eviction, crash) is resumed by that alarm.
    pub fn begin_attempt(&mut self, now_ms: i64, retry_ms: i64) {
        self.status = Status::CleaningUp;
        self.attempts = self.attempts.saturating_add(1);
        self.next_attempt_at_ms = Some(now_ms.saturating_add(retry_ms));
    }

    /// Records what an attempt deleted and how it went, and moves to `Completed` when no VM is
    /// left, or to `Retrying` with the next attempt at `next_attempt_at_ms` (the retry policy
    /// decides when; see `lab::retry`).
    pub fn finish_attempt(&mut self, result: &AttemptResult, now_ms: i64, next_attempt_at_ms: i64) {
        for id in &result.deleted {
            if !self.is_done(id) && self.vms().any(|vm| vm.id == id) {
                self.deleted.push(id.clone());
            }
        }
        for id in &result.already_gone {
            if !self.is_done(id) && self.vms().any(|vm| vm.id == id) {
                self.already_gone.push(id.clone());
            }
        }
        if let Some(services) = &result.services {
            self.services_answered_404 = *services == Deletion::AlreadyGone;
        }
        self.refused_last_attempt = matches!(result.ending, Ending::Refused { .. });
        self.last_outcome = Some(result.outcome.clone());
        if self.pending().is_empty() {
            self.status = Status::Completed;
            self.completed_at_ms = Some(now_ms);
            self.next_attempt_at_ms = None;
        } else {
            self.status = Status::Retrying;
            self.next_attempt_at_ms = Some(next_attempt_at_ms);
        }
    }

    /// Ends the lab now (a student's "End Lab"): the cleanup is due at once, under the same rules
    /// as at expiry. Returns whether anything changed (false once the cleanup is running or done).
    pub fn end_now(&mut self, now_ms: i64) -> bool {
        match self.status {
            Status::Scheduled => {
                // From here on the lab counts as expired and its cleanup as started.
                self.expires_at_ms = self.expires_at_ms.min(now_ms);
                self.status = Status::CleaningUp;
                self.next_attempt_at_ms = Some(now_ms);
                true
            }
            Status::Retrying => {
                self.next_attempt_at_ms = Some(now_ms);
                true
            }
            Status::CleaningUp | Status::Completed => false,
        }
    }

    /// An operator's "retry now": a `Retrying` lab gets its next attempt at `now_ms` (true). A
    /// lab being cleaned up already is left as it is (false). A scheduled lab is ended with
    /// `end_now`, not retried; a completed one has nothing left to retry.
    pub fn retry_now(&mut self, now_ms: i64) -> Result<bool, Refusal> {
        match self.status {
            Status::Retrying => {
                self.next_attempt_at_ms = Some(now_ms);
                Ok(true)
            }
            Status::CleaningUp => Ok(false),
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
        if self.status != Status::Scheduled {
            return Err(Refusal::Conflict(format!(
                "lab {} is {}; only a scheduled lab can be extended",
                self.lab_request_id,
                self.status.describe()
            )));
        }
        // Checked: an adopted record may hold any duration.
        let lifetime = self
            .duration
            .checked_add(self.extended_minutes)
            .and_then(|sum| sum.checked_add(minutes));
        match lifetime {
            Some(lifetime) if lifetime <= max_minutes => {}
            _ => {
                return Err(Refusal::Invalid(format!(
                    "extending by {minutes} minutes would make the lab's lifetime {} minutes; \
                     the maximum is {max_minutes}",
                    lifetime.map_or("more than 2^64".into(), |l| l.to_string())
                )))
            }
        }
        self.extended_minutes = self.extended_minutes.saturating_add(minutes);
        self.expires_at_ms = self.expires_at_ms.saturating_add(
            i64::try_from(minutes)
                .unwrap_or(i64::MAX)
                .saturating_mul(unit_ms),
        );
        Ok(())
    }

    /// Whether `new` asks for exactly this session (a retried create), ignoring the VM name.
    pub fn same_request(&self, new: &NewSession) -> bool {
        self.lab_request_id == new.lab_request_id
            && self.user_id == new.user_id
            && self.worker_lab_request_ids == new.worker_lab_request_ids
            && self.duration == new.duration
    }

    /// The JSON status body the API answers with.
    pub fn view(&self) -> SessionView<'_> {
        let pending = self.pending().into_iter().map(|vm| vm.id).collect();
        SessionView {
            lab_request_id: &self.lab_request_id,
            user_id: &self.user_id,
            vm_name: self.vm_name.as_deref(),
            lab_type: self.lab_type(),
            worker_lab_request_ids: &self.worker_lab_request_ids,
            status: self.status,
            created_at: rfc3339(self.created_at_ms),
            expires_at: rfc3339(self.expires_at_ms),
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at_ms.map(rfc3339),
            deleted: &self.deleted,
            already_gone: &self.already_gone,
            pending,
            last_outcome: self.last_outcome.as_ref(),
            completed_at: self.completed_at_ms.map(rfc3339),
            dry_run: self.dry_run,
            adopted_at: self.adopted_at_ms.map(rfc3339),
        }
    }
}

/// The status body of a session, as answered by the API.
#[derive(Debug, Serialize)]
pub struct SessionView<'a> {
    pub lab_request_id: &'a str,
    pub user_id: &'a str,
    pub vm_name: Option<&'a str>,
    pub lab_type: LabType,
    pub worker_lab_request_ids: &'a [String],
    pub status: Status,
    pub created_at: String,
    pub expires_at: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    /// VMs the backend confirmed deleting (2xx).
    pub deleted: &'a [String],
    /// VMs the backend answered 404 for (already gone; not asked again).
    pub already_gone: &'a [String],
    pub pending: Vec<&'a str>,
    pub last_outcome: Option<&'a Outcome>,
    pub completed_at: Option<String>,
    /// True once a cleanup attempt ran with `DRY_RUN`: its "deleted" VMs were only logged.
    pub dry_run: bool,
    /// When the lab was taken over from the TypeScript worker's storage; `null` for labs
    /// scheduled by this worker.
    pub adopted_at: Option<String>,
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision, e.g.
/// `2026-11-26T12:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("invalid-time({ms})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: i64 = 1_795_000_000_000; // 2026-11-18T...Z

    fn deleted(ids: &[&str]) -> AttemptResult {
        AttemptResult {
            deleted: ids.iter().map(|id| id.to_string()).collect(),
            ..AttemptResult::default()
        }
    }

    fn new_session(workers: &[&str]) -> NewSession {
        NewSession {
            lab_request_id: "m".into(),
            user_id: "u".into(),
            worker_lab_request_ids: workers.iter().map(|w| w.to_string()).collect(),
            duration: 60,
            vm_name: Some("k8s-master-1".into()),
        }
    }

    #[test]
    fn schedule_sets_expiry_from_duration() {
        let s = Session::schedule(new_session(&[]), T0, 3_600_000);
        assert_eq!(s.expires_at_ms, T0 + 3_600_000);
        assert_eq!(s.status, Status::Scheduled);
        assert_eq!(s.lab_type(), LabType::SingleVm);
        assert!(!s.is_expired(T0 + 3_599_999));
        assert!(s.is_expired(T0 + 3_600_000));
    }

    #[test]
    fn vms_are_master_first_then_workers() {
        let s = Session::schedule(new_session(&["w1", "w2"]), T0, 1);
        let vms: Vec<_> = s.vms().map(|v| (v.id, v.role)).collect();
        assert_eq!(
            vms,
            vec![
                ("m", Role::Master),
                ("w1", Role::Worker),
                ("w2", Role::Worker)
            ]
        );
        assert_eq!(s.lab_type(), LabType::MultiNode);
        assert_eq!(s.vm_count(), 3);
    }

    #[test]
    fn failed_attempt_retries_only_what_is_left() {
        let mut s = Session::schedule(new_session(&["w1", "w2"]), T0, 1);
        s.begin_attempt(T0 + 10, 300_000);
        assert_eq!(s.status, Status::CleaningUp);
        assert_eq!(s.attempts, 1);
        assert_eq!(s.next_attempt_at_ms, Some(T0 + 300_010));
        let outcome = Outcome {
            successful_deletions: 2,
            failed_deletions: 1,
            errors: vec![DeletionError {
                lab_request_id: "w1".into(),
                error: "backend answered 500".into(),
            }],
            not_tried: 0,
        };
        s.finish_attempt(
            &AttemptResult {
                outcome: outcome.clone(),
                ..deleted(&["m", "w2"])
            },
            T0 + 20,
            T0 + 300_020,
        );
        assert_eq!(s.status, Status::Retrying);
        assert_eq!(s.next_attempt_at_ms, Some(T0 + 300_020));
        assert_eq!(
            s.pending().iter().map(|v| v.id).collect::<Vec<_>>(),
            vec!["w1"]
        );
        assert_eq!(s.last_outcome, Some(outcome));

        s.begin_attempt(T0 + 300_010, 300_000);
        s.finish_attempt(&deleted(&["w1"]), T0 + 300_020, T0 + 600_020);
        assert_eq!(s.status, Status::Completed);
        assert_eq!(s.attempts, 2);
        assert_eq!(s.completed_at_ms, Some(T0 + 300_020));
        assert_eq!(s.next_attempt_at_ms, None);
        assert_eq!(s.deleted, vec!["m", "w2", "w1"]);
    }

    #[test]
    fn finish_ignores_unknown_and_repeated_ids() {
        let mut s = Session::schedule(new_session(&["w1"]), T0, 1);
        s.begin_attempt(T0, 1);
        s.finish_attempt(&deleted(&["m", "m", "zzz"]), T0, T0 + 1);
        assert_eq!(s.deleted, vec!["m"]);
        assert_eq!(s.status, Status::Retrying);
    }

    #[test]
    fn same_request_compares_what_matters() {
        let s = Session::schedule(new_session(&["w1"]), T0, 1);
        assert!(s.same_request(&new_session(&["w1"])));
        let mut renamed = new_session(&["w1"]);
        renamed.vm_name = None;
        assert!(s.same_request(&renamed));
        assert!(!s.same_request(&new_session(&["w2"])));
        let mut longer = new_session(&["w1"]);
        longer.duration = 61;
        assert!(!s.same_request(&longer));
    }

    #[test]
    fn end_now_makes_the_cleanup_due_at_once() {
        let mut s = Session::schedule(new_session(&["w1"]), T0, 60_000);
        assert!(s.end_now(T0 + 10));
        assert!(s.is_expired(T0 + 10));
        assert_eq!(s.expires_at_ms, T0 + 10);
        assert_eq!(s.next_attempt_at_ms, Some(T0 + 10));
        assert_eq!(s.status, Status::CleaningUp);
        assert!(matches!(
            s.extend(1, 60_000, 1_000),
            Err(Refusal::Conflict(_))
        ));
        assert!(!s.end_now(T0 + 15), "a cleanup already due is left alone");

        s.begin_attempt(T0 + 10, 300_000);
        assert!(!s.end_now(T0 + 20), "a running cleanup is left alone");
        s.finish_attempt(&deleted(&["m"]), T0 + 30, T0 + 30 + 300_000);
        assert_eq!(s.next_attempt_at_ms, Some(T0 + 300_030));
        assert!(s.end_now(T0 + 40), "ending a retrying lab retries now");
        assert_eq!(s.next_attempt_at_ms, Some(T0 + 40));
        s.begin_attempt(T0 + 40, 300_000);
        s.finish_attempt(&deleted(&["w1"]), T0 + 50, T0 + 50 + 300_000);
        assert!(!s.end_now(T0 + 60));
        assert_eq!(s.completed_at_ms, Some(T0 + 50));
    }

    #[test]
    fn retry_now_only_for_a_retrying_lab() {
        let mut s = Session::schedule(new_session(&["w1"]), T0, 60_000);
        assert!(matches!(s.retry_now(T0), Err(Refusal::Conflict(m)) if m.contains("DELETE")));
        s.begin_attempt(T0 + 60_000, 300_000);
        assert_eq!(s.retry_now(T0 + 60_001), Ok(false), "already under way");
        assert_eq!(s.next_attempt_at_ms, Some(T0 + 360_000));
        s.finish_attempt(&deleted(&["m"]), T0 + 61_000, T0 + 361_000);
        assert_eq!(s.retry_now(T0 + 70_000), Ok(true));
        assert_eq!(s.next_attempt_at_ms, Some(T0 + 70_000));
        s.begin_attempt(T0 + 70_000, 300_000);
        s.finish_attempt(&deleted(&["w1"]), T0 + 71_000, T0 + 371_000);
        assert!(matches!(
            s.retry_now(T0 + 72_000),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn end_now_never_moves_the_expiry_later() {
        let mut s = Session::schedule(new_session(&[]), T0, 60_000);
        s.expires_at_ms = T0 - 5;
        assert!(s.end_now(T0));
        assert_eq!(s.expires_at_ms, T0 - 5);
    }

    #[test]
    fn the_lifetime_sum_cannot_wrap() {
        let mut s = Session::schedule(new_session(&[]), T0, 60_000);
        s.duration = u64::MAX - 1;
        let e = s.extend(5, 60_000, 10_080).unwrap_err();
        assert!(matches!(e, Refusal::Invalid(m) if m.contains("more than 2^64")));
        assert_eq!(s.extended_minutes, 0);
        assert_eq!(s.expires_at_ms, T0 + 60_000);
        s.duration = 10_000;
        s.extended_minutes = u64::MAX;
        assert!(s.extend(1, 60_000, 10_080).is_err());
        s.attempts = u32::MAX;
        s.begin_attempt(T0, 1);
        assert_eq!(s.attempts, u32::MAX);
    }

    #[test]
    fn extend_moves_expiry_within_the_cap_while_scheduled() {
        let mut s = Session::schedule(new_session(&[]), T0, 60 * 60_000);
        s.extend(30, 60_000, 100).unwrap();
        assert_eq!(s.expires_at_ms, T0 + 90 * 60_000);
        assert_eq!(s.extended_minutes, 30);
        assert!(
            matches!(s.extend(11, 60_000, 100), Err(Refusal::Invalid(m)) if m.contains("lifetime 101 minutes"))
        );
        s.extend(10, 60_000, 100).unwrap();
        assert_eq!(s.expires_at_ms, T0 + 100 * 60_000);
        s.begin_attempt(T0 + 100 * 60_000, 1);
        assert!(matches!(
            s.extend(1, 60_000, 1_000),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn view_is_the_documented_json() {
        let mut s = Session::schedule(new_session(&["w1"]), 0, 60_000);
        let v = serde_json::to_value(s.view()).unwrap();
        assert_eq!(
            v,
            json!({
                "lab_request_id": "m",
                "user_id": "u",
                "vm_name": "k8s-master-1",
                "lab_type": "multi_node",
                "worker_lab_request_ids": ["w1"],
                "status": "scheduled",
                "created_at": "1970-01-01T00:00:00.000Z",
                "expires_at": "1970-01-01T00:01:00.000Z",
                "attempts": 0,
                "next_attempt_at": null,
                "deleted": [],
                "already_gone": [],
                "pending": ["m", "w1"],
                "last_outcome": null,
                "completed_at": null,
                "dry_run": false,
                "adopted_at": null
            })
        );
        s.begin_attempt(60_000, 1_000);
        let v = serde_json::to_value(s.view()).unwrap();
        assert_eq!(v["status"], "cleaning_up");
        assert_eq!(v["next_attempt_at"], "1970-01-01T00:01:01.000Z");
    }

    #[test]
    fn record_round_trips_through_json() {
        let mut s = Session::schedule(new_session(&["w1"]), T0, 1);
        s.begin_attempt(T0, 5);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Session>(&text).unwrap(), s);
    }
}
