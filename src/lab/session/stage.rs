//! The grace stage (`STOP_PATH`): at its end a lab's VMs are stopped, kept `keep_stopped_minutes`, then deleted; what the record keeps of it and its transitions.
//!
//! A stop is a courtesy, the deletion is the promise: a lab whose VMs do not all stop within
//! `STOP_ATTEMPTS` attempts is deleted as without the stage, and nothing here ever deletes a VM
//! earlier than the lab without the stage would (the stage only puts the deletion later).
//! Times are milliseconds since the Unix epoch, passed in by the caller.

use crate::lab::config::StopStage;
use crate::lab::refusal::Refusal;
use crate::lab::session::{AttemptResult, By, EndReason, Event, Kind, Session, Status};

/// The stage's part of the record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stop {
    /// `keep_stopped_minutes` as the create asked (`None`: `KEEP_STOPPED_MINUTES` at the end).
    #[serde(
        rename = "keep_stopped_minutes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_minutes: Option<u64>,
    /// Stop attempts started for the lab's current end.
    #[serde(rename = "stop_attempts", default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// VMs (by position: the master is 0, the workers follow in request order, as the
    /// timeline keeps them) the backend confirmed stopped (2xx), or gone (404: not running
    /// either).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<u16>,
    /// When a stopped lab's VMs are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_at_ms: Option<i64>,
    /// A resume's start calls are in flight: no deletion starts before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until_ms: Option<i64>,
    /// The stage is over for the lab's current end: skipped (ended by request), given up (its
    /// stops failed), or ended early from `stopped`; what is left is the deletion.
    #[serde(rename = "stop_over", default, skip_serializing_if = "is_false")]
    pub over: bool,
    /// When the lab was last resumed (a repeated resume answers as the first did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at_ms: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How a stop attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEnd {
    /// Every VM is stopped: the lab is `stopped` until `delete_at`.
    Stopped,
    /// Some VM did not stop: the next stop attempt is planned.
    Again,
    /// `STOP_ATTEMPTS` attempts did not stop every VM: the lab is deleted now, as without the
    /// stage.
    GaveUp,
    /// The backend refused the stops (attempts that do not count) until the lab's VMs would
    /// have been deleted anyway (its end plus `keep_stopped_minutes`): deleted now.
    OutOfTime,
    /// The lab was ended (by request) while its VMs were being stopped: deleted now.
    Ended,
}

/// `minutes` of `unit_ms` each, in ms (saturating).
fn minutes_ms(minutes: u64, unit_ms: i64) -> i64 {
    i64::try_from(minutes)
        .unwrap_or(i64::MAX)
        .saturating_mul(unit_ms)
}

impl Session {
    /// How long this lab's VMs stay stopped, in ms.
    pub fn keep_stopped_ms(&self, stage: &StopStage, unit_ms: i64) -> i64 {
        let minutes = self.stop.keep_minutes.unwrap_or(stage.keep_stopped_minutes);
        minutes_ms(minutes, unit_ms)
    }

    /// Whether the lab's next attempt stops its VMs rather than deleting them: the stage is on
    /// and keeps VMs, the lab's time ran out (expired or idle, not ended by a request), no
    /// deletion has started, and the stage is neither done nor given up.
    pub fn stop_due(&self, stage: Option<&StopStage>, unit_ms: i64) -> bool {
        let Some(stage) = stage else {
            return false;
        };
        let time_ran_out = matches!(
            self.end_reason,
            None | Some(EndReason::Expired) | Some(EndReason::Idle)
        );
        time_ran_out
            && !self.stop.over
            && self.stop.delete_at_ms.is_none()
            && self.cleanup.attempts == 0
            && self.stop.attempts < stage.stop_attempts
            && self.keep_stopped_ms(stage, unit_ms) > 0
            && !matches!(self.status(), Status::Stopped | Status::Completed)
    }

    /// The VMs a stop attempt calls: those neither stopped nor deleted, master first.
    pub fn to_stop(&self) -> Vec<crate::lab::session::Vm<'_>> {
        self.vms()
            .enumerate()
            .filter(|(p, vm)| {
                !self.is_done(vm.id) && !self.stop.stopped.iter().any(|s| usize::from(*s) == *p)
            })
            .map(|(_, vm)| vm)
            .collect()
    }

    /// Whether a stop attempt is under way (or was cut short): the lab is being cleaned up, its
    /// VMs stopped, none deleted yet.
    pub fn stop_in_flight(&self) -> bool {
        self.status() == Status::CleaningUp
            && self.stop.attempts > 0
            && self.cleanup.attempts == 0
            && !self.stop.over
    }

    /// Marks the start of a stop attempt; like `begin_attempt`, the next one is planned
    /// `retry_ms` later right away, so that an attempt cut short is resumed by that alarm.
    pub fn begin_stop(&mut self, now_ms: i64, retry_ms: i64) {
        self.stop.attempts = self.stop.attempts.saturating_add(1);
        self.cleanup.status = Status::CleaningUp;
        self.cleanup.next_attempt_at_ms = Some(now_ms.saturating_add(retry_ms));
    }

    /// Records what a stop attempt stopped, and moves to `Stopped` (its VMs deleted `keep_ms`
    /// after `now_ms`) once every VM is, to the next stop attempt at `next_attempt_at_ms`, or,
    /// after `max_attempts` counted (a refused attempt is not), or once the lab's end is
    /// `keep_ms` past, to the deletion at once.
    pub fn finish_stop(
        &mut self,
        result: &AttemptResult,
        now_ms: i64,
        keep_ms: i64,
        next_attempt_at_ms: i64,
        max_attempts: u32,
    ) -> StopEnd {
        for id in result.deleted.iter().chain(&result.already_gone) {
            let position = self.position(id).and_then(|p| u16::try_from(p).ok());
            if let Some(p) = position.filter(|p| !self.stop.stopped.contains(p)) {
                self.stop.stopped.push(p);
            }
        }
        let left = self.to_stop().len();
        // An attempt that left VMs running and in which no stop call failed but by a refusal
        // ("not now": a 429 or 503, or the fleet's budget said wait, or the invocation's limits
        // left calls untried) does not count toward `max_attempts`: the backend did not say
        // the VMs cannot stop. Counted at its start (an attempt cut short by a crash counts),
        // given back here.
        if left > 0 && !result.failed_otherwise() {
            self.stop.attempts = self.stop.attempts.saturating_sub(1);
        }
        let attempt = self.stop.attempts;
        if self.stop.over {
            // Ended while it was being stopped: no stage any more, the deletion at once.
            self.cleanup.status = Status::Retrying;
            self.cleanup.next_attempt_at_ms = Some(now_ms);
            return StopEnd::Ended;
        }
        if left == 0 {
            let c = &mut self.cleanup;
            c.status = Status::Stopped;
            c.next_attempt_at_ms = None;
            self.stop.delete_at_ms = Some(now_ms.saturating_add(keep_ms));
            self.timeline.push(Event {
                to: self.stop.delete_at_ms,
                ..Event::new(Kind::Stopped, now_ms)
            });
            return StopEnd::Stopped;
        }
        // Stops refused for as long as the VMs would have been kept stopped: deleting them now
        // is no earlier than a lab stopped at its end and deleted at its `delete_at`.
        let out_of_time = now_ms >= self.expires_at_ms.saturating_add(keep_ms);
        let c = &mut self.cleanup;
        c.status = Status::Retrying;
        if attempt >= max_attempts || out_of_time {
            c.next_attempt_at_ms = Some(now_ms);
            self.stop.over = true;
            self.timeline.push(Event {
                n: Some(attempt),
                not_tried: u32::try_from(left).unwrap_or(u32::MAX),
                ..Event::new(Kind::StopFailed, now_ms)
            });
            return if attempt >= max_attempts {
                StopEnd::GaveUp
            } else {
                StopEnd::OutOfTime
            };
        }
        c.next_attempt_at_ms = Some(next_attempt_at_ms);
        StopEnd::Again
    }

    /// A stopped lab's `delete_at` (`None` for a lab not stopped).
    pub fn stopped_until(&self) -> Option<i64> {
        self.stop
            .delete_at_ms
            .filter(|_| self.status() == Status::Stopped)
    }

    /// When a stopped lab's deletion is due: its `delete_at`, or the end of a resume's hold.
    pub fn delete_due_at(&self) -> Option<i64> {
        let at = self.stop.delete_at_ms?;
        Some(at.max(self.stop.hold_until_ms.unwrap_or(i64::MIN)))
    }

    /// A resume's first step: a stopped lab is held (no deletion starts) until `hold_until_ms`
    /// while its VMs are started (`Ok(true)`). A lab a resume already made active answers as
    /// then (`Ok(false)`: nothing to do); any other lab is refused.
    pub fn begin_resume(&mut self, hold_until_ms: i64) -> Result<bool, Refusal> {
        match self.status() {
            Status::Stopped => {
                self.stop.hold_until_ms = Some(hold_until_ms);
                Ok(true)
            }
            Status::Scheduled if self.stop.resumed_at_ms.is_some() => Ok(false),
            status => Err(Refusal::Conflict(format!(
                "lab {} is {}; only a stopped lab can be resumed",
                self.lab_request_id,
                status.describe()
            ))),
        }
    }

    /// Every VM started again (asked `by`): the lab is scheduled, expiring `minutes` after
    /// `now_ms` (counted as extended), its idle timeout counted from `now_ms`, its stage and end
    /// forgotten (its next end stops it again).
    pub fn finish_resume(&mut self, now_ms: i64, minutes: u64, unit_ms: i64, by: By) {
        self.extended_minutes = self.extended_minutes.saturating_add(minutes);
        self.expires_at_ms = now_ms.saturating_add(minutes_ms(minutes, unit_ms));
        self.stop = Stop {
            keep_minutes: self.stop.keep_minutes,
            resumed_at_ms: Some(now_ms),
            ..Stop::default()
        };
        self.end_reason = None;
        // A resume is the student's activity: the idle timeout runs whole again from now (the
        // deadline before the stop is long past; `/activity` is refused while stopped).
        if self.idle.timeout_ms.is_some() {
            self.idle.last_activity_ms = Some(now_ms);
        }
        let c = &mut self.cleanup;
        c.status = Status::Scheduled;
        c.next_attempt_at_ms = None;
        c.start_delay_ms = 0;
        c.last_outcome = None;
        self.timeline.push(Event {
            to: Some(self.expires_at_ms),
            by: Some(by),
            ..Event::new(Kind::Resumed, now_ms)
        });
    }

    /// A resume whose start calls did not all succeed: the lab stays stopped, its deletion at
    /// its `delete_at` again.
    pub fn resume_failed(&mut self) {
        self.stop.hold_until_ms = None;
    }

    /// Ends the stage early: a stopped lab's VMs are deleted at `now_ms` (an "End Lab" on it);
    /// a lab still being stopped is deleted at its next attempt.
    pub fn end_stage(&mut self, now_ms: i64) -> bool {
        match self.status() {
            Status::Stopped => {
                self.stop.delete_at_ms = Some(now_ms);
                // Ended now: not later, whatever a late alarm had put off.
                self.cleanup.next_attempt_at_ms = None;
                self.stop.over = true;
                true
            }
            _ => {
                self.stop.over = true;
                false
            }
        }
    }
}
