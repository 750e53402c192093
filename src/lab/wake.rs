//! The object's one alarm: what is due at a given moment, and when the alarm must fire next.
//!
//! A lab's object wakes for several reasons (its warnings, its idle end, its cleanup attempt,
//! an index repair, a delivery, the end of retention); it has one alarm, so every path that
//! saves the record sets the alarm to `next_wake`, and the alarm handler asks `due` what to do.
//! Both come from the same per-reason times, so they cannot disagree.

use crate::lab::index;
use crate::lab::session::{Session, Status};

pub use crate::lab::config::Timing;

/// What is due when the alarm fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Due {
    /// A cleanup attempt (never before the lab's expiry).
    pub attempt: bool,
    /// The end of retention: forget the lab (and delete its index row).
    pub purge: bool,
    /// The index row is behind the record: write it.
    pub index: bool,
    /// `lab.expiring` is due (a stage of `WARN_BEFORE_MINUTES`).
    pub warn: bool,
    /// An event of the outbox is due for delivery.
    pub deliver: bool,
    /// `lab.idle_warning` is due.
    pub idle_warn: bool,
    /// The idle timeout has passed with no activity: the lab ends (reason `idle`).
    pub idle_end: bool,
}

impl Due {
    pub fn any(&self) -> bool {
        self.attempt
            || self.purge
            || self.index
            || self.warn
            || self.deliver
            || self.idle_warn
            || self.idle_end
    }
}

/// The stages of `lab.expiring` not yet sent for the lab's current expiry, with when each is
/// due: `stage` units before the expiry, for a lab scheduled and longer than the stage.
pub fn stages_ahead(session: &Session, timing: &Timing) -> Vec<(u64, i64)> {
    if !timing.webhooks || session.status() != Status::Scheduled {
        return Vec::new();
    }
    let lifetime = session.expires_at_ms.saturating_sub(session.created_at_ms);
    let n = &session.notices;
    let for_this_expiry = n.warned_for_expiry_ms == Some(session.expires_at_ms);
    timing
        .warn_stages
        .iter()
        .map(|&stage| {
            let before = i64::try_from(stage)
                .unwrap_or(i64::MAX)
                .saturating_mul(timing.unit_ms);
            (stage, before)
        })
        .filter(|&(stage, before)| {
            // A record of the version before stages warned once per expiry, with no list.
            let warned =
                for_this_expiry && (n.warned_stages.is_empty() || n.warned_stages.contains(&stage));
            lifetime > before && !warned
        })
        .map(|(stage, before)| (stage, session.expires_at_ms.saturating_sub(before)))
        .collect()
}

/// When the next `lab.expiring` is due (webhooks on).
pub fn warn_at(session: &Session, timing: &Timing) -> Option<i64> {
    stages_ahead(session, timing)
        .into_iter()
        .map(|(_, at)| at)
        .min()
}

/// When the lab ends for want of activity (see `Session::idle_deadline`).
pub fn idle_at(session: &Session) -> Option<i64> {
    session.idle_deadline(None)
}

/// When `lab.idle_warning` is due: `IDLE_WARN_MINUTES` before the idle deadline, once per
/// deadline (activity moves it), when the idle timeout is longer than the warning.
pub fn idle_warn_at(session: &Session, timing: &Timing) -> Option<i64> {
    if !timing.webhooks {
        return None;
    }
    let deadline = idle_at(session)?;
    let timeout = session.idle.timeout_ms?;
    (timeout > timing.idle_warn_ms && session.notices.idle_warned_for_ms != Some(deadline))
        .then(|| deadline.saturating_sub(timing.idle_warn_ms))
}

/// When the next outbox event is due for delivery (webhooks on).
pub fn deliver_at(session: &Session, timing: &Timing) -> Option<i64> {
    if !timing.webhooks {
        return None;
    }
    session.notices.outbox.iter().map(|e| e.next_at_ms).min()
}

/// When the next cleanup attempt is due: the expiry (plus the lab's start delay) while
/// scheduled; the planned attempt while cleaning up or retrying, never before the expiry.
pub fn attempt_at(session: &Session) -> Option<i64> {
    let c = &session.cleanup;
    match c.status {
        Status::Scheduled => Some(
            session
                .expires_at_ms
                .saturating_add(c.start_delay_ms.max(0)),
        ),
        Status::CleaningUp | Status::Retrying => {
            c.next_attempt_at_ms.map(|at| at.max(session.expires_at_ms))
        }
        // Its VMs stopped: deleted at `delete_at` (a resume's hold, or a late alarm put off,
        // puts that off).
        Status::Stopped => session
            .delete_due_at()
            .map(|at| at.max(c.next_attempt_at_ms.unwrap_or(i64::MIN))),
        Status::Completed => None,
    }
}

/// When a completed lab's record is forgotten: the end of retention, or later if deleting its
/// index row failed and is to be tried again. Never while an event waits to be delivered (an
/// event is dropped after its own maximum age, much shorter than the retention).
pub fn purge_at(session: &Session, timing: &Timing) -> Option<i64> {
    if deliver_at(session, timing).is_some() {
        return None;
    }
    let end = session
        .cleanup
        .completed_at_ms
        .map(|done| done.saturating_add(timing.retention_ms))?;
    Some(end.max(session.sync.index.delete_retry_at_ms.unwrap_or(i64::MIN)))
}

/// When the index row is to be written again (while it is behind the record).
pub fn index_at(session: &Session) -> Option<i64> {
    if index::owed(session) {
        session.sync.index.retry_at_ms
    } else {
        None
    }
}

/// When the object's alarm must fire next: the earliest of every reason's time (`None`: nothing
/// left to do).
pub fn next_wake(session: &Session, timing: &Timing) -> Option<i64> {
    [
        attempt_at(session),
        purge_at(session, timing),
        index_at(session),
        warn_at(session, timing),
        deliver_at(session, timing),
        idle_at(session),
        idle_warn_at(session, timing),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// What is due at `now_ms`. An attempt never before the lab's expiry, whatever the alarm says;
/// never a second cleanup of a completed lab (alarms are delivered at least once).
pub fn due(session: &Session, now_ms: i64, timing: &Timing) -> Due {
    Due {
        attempt: session.is_expired(now_ms) && attempt_at(session).is_some_and(|at| now_ms >= at),
        purge: purge_at(session, timing).is_some_and(|at| now_ms >= at),
        // Owed with no wake-up of its own (`index::answered`): at any wake-up.
        index: index_at(session).is_some_and(|at| now_ms >= at)
            || (index::owed(session) && session.sync.index.retry_at_ms.is_none()),
        warn: warn_at(session, timing).is_some_and(|at| now_ms >= at),
        deliver: deliver_at(session, timing).is_some_and(|at| now_ms >= at),
        idle_warn: idle_warn_at(session, timing).is_some_and(|at| now_ms >= at),
        idle_end: idle_at(session).is_some_and(|at| now_ms >= at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::session::{AttemptResult, NewSession};

    const T0: i64 = 1_795_000_000_000;
    const TIMING: Timing = Timing {
        retention_ms: 1_000,
        webhooks: false,
        warn_stages: Vec::new(),
        unit_ms: 1_000,
        idle_warn_ms: 0,
    };

    /// Webhooks on; one stage, 20 units (20 s) before the expiry; idle warnings 5 s ahead.
    fn with_webhooks() -> Timing {
        Timing {
            webhooks: true,
            warn_stages: vec![20],
            idle_warn_ms: 5_000,
            ..TIMING
        }
    }

    fn session(workers: &[&str]) -> Session {
        Session::schedule(
            NewSession {
                lab_request_id: "m".into(),
                user_id: "u".into(),
                worker_lab_request_ids: workers.iter().map(|w| w.to_string()).collect(),
                duration: 1,
                vm_name: None,
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            },
            T0,
            60_000,
        )
    }

    fn deleted(ids: &[&str]) -> AttemptResult {
        AttemptResult {
            deleted: ids.iter().map(|id| id.to_string()).collect(),
            ..AttemptResult::default()
        }
    }

    const NOTHING: Due = Due {
        attempt: false,
        purge: false,
        index: false,
        warn: false,
        deliver: false,
        idle_warn: false,
        idle_end: false,
    };
    const ATTEMPT: Due = Due {
        attempt: true,
        ..NOTHING
    };
    const PURGE: Due = Due {
        purge: true,
        ..NOTHING
    };

    #[test]
    fn a_lab_wakes_for_its_attempts_then_its_purge() {
        let mut s = session(&["w1"]);
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 60_000));
        assert_eq!(due(&s, T0 + 59_999, &TIMING), NOTHING);
        assert_eq!(due(&s, T0 + 60_000, &TIMING), ATTEMPT);

        s.begin_attempt(T0 + 60_000, 5_000);
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 65_000));
        assert_eq!(
            due(&s, T0 + 60_001, &TIMING),
            NOTHING,
            "the attempt is running; its safety alarm is later"
        );
        assert_eq!(
            due(&s, T0 + 65_000, &TIMING),
            ATTEMPT,
            "resume a cut-short attempt"
        );
        s.finish_attempt(&deleted(&["m"]), T0 + 61_000, T0 + 66_000);
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 66_000));
        assert_eq!(due(&s, T0 + 62_000, &TIMING), NOTHING);
        assert_eq!(due(&s, T0 + 66_000, &TIMING), ATTEMPT);

        s.begin_attempt(T0 + 66_000, 5_000);
        s.finish_attempt(&deleted(&["w1"]), T0 + 67_000, T0 + 72_000);
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 68_000));
        assert_eq!(due(&s, T0 + 67_500, &TIMING), NOTHING);
        assert_eq!(
            due(&s, T0 + 68_000, &TIMING),
            PURGE,
            "a completed lab is never cleaned again"
        );
    }

    #[test]
    fn the_start_delay_comes_after_the_expiry() {
        let mut s = session(&[]);
        s.cleanup.start_delay_ms = 3_000;
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 63_000));
        assert_eq!(due(&s, T0 + 62_999, &TIMING), NOTHING);
        assert_eq!(due(&s, T0 + 63_000, &TIMING), ATTEMPT);
        // Ending the lab now skips the spread: the student asked.
        assert!(s.end_now(T0 + 10_000));
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 10_000));
        assert_eq!(due(&s, T0 + 10_000, &TIMING), ATTEMPT);
    }

    #[test]
    fn no_attempt_before_the_expiry_whatever_the_record_says() {
        let mut s = session(&[]);
        s.cleanup.status = Status::Retrying;
        s.cleanup.next_attempt_at_ms = Some(T0 + 1_000);
        assert_eq!(attempt_at(&s), Some(T0 + 60_000));
        assert_eq!(due(&s, T0 + 1_000, &TIMING), NOTHING);
        s.cleanup.start_delay_ms = -5_000;
        s.cleanup.status = Status::Scheduled;
        assert_eq!(
            attempt_at(&s),
            Some(T0 + 60_000),
            "a negative delay is none"
        );
    }

    #[test]
    fn an_extended_lab_is_never_cleaned_at_its_old_expiry() {
        let mut s = session(&[]);
        s.extend(2, 60_000, 1_000).unwrap();
        assert_eq!(due(&s, T0 + 60_000, &TIMING), NOTHING);
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 180_000));
    }

    #[test]
    fn an_owed_index_row_wakes_the_object_within_the_retry_pause() {
        let mut s = session(&[]);
        index::touch(&mut s, T0, 2_000);
        assert_eq!(
            next_wake(&s, &TIMING),
            Some(T0 + 2_000),
            "before the expiry"
        );
        assert_eq!(
            due(&s, T0 + 2_000, &TIMING),
            Due {
                index: true,
                ..NOTHING
            }
        );
        let revision = s.sync.revision;
        index::confirmed(&mut s, revision);
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 60_000));
        assert_eq!(due(&s, T0 + 2_000, &TIMING), NOTHING);
    }

    #[test]
    fn a_failed_row_delete_holds_the_purge_until_its_retry() {
        let mut s = session(&[]);
        s.begin_attempt(T0 + 60_000, 5_000);
        s.finish_attempt(&deleted(&["m"]), T0 + 61_000, T0 + 66_000);
        assert_eq!(purge_at(&s, &TIMING), Some(T0 + 62_000));
        s.sync.index.delete_retry_at_ms = Some(T0 + 70_000);
        assert_eq!(purge_at(&s, &TIMING), Some(T0 + 70_000));
        assert_eq!(due(&s, T0 + 65_000, &TIMING), NOTHING);
        assert_eq!(due(&s, T0 + 70_000, &TIMING), PURGE);
    }

    #[test]
    fn the_warning_and_the_deliveries_share_the_one_alarm() {
        use crate::lab::webhook::{new_event, EventType};
        let mut s = session(&[]);
        // Webhooks off: no warning.
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 60_000));
        // On: 20 s before the expiry.
        assert_eq!(next_wake(&s, &with_webhooks()), Some(T0 + 40_000));
        assert_eq!(
            due(&s, T0 + 40_000, &with_webhooks()),
            Due {
                warn: true,
                ..NOTHING
            }
        );
        s.notices.warned_for_expiry_ms = Some(s.expires_at_ms);
        let mut event = new_event(EventType::Expiring, &s, T0 + 40_000, "msg_x".into());
        event.next_at_ms = T0 + 45_000;
        s.queue_event(event);
        assert_eq!(next_wake(&s, &with_webhooks()), Some(T0 + 45_000));
        assert_eq!(
            due(&s, T0 + 45_000, &with_webhooks()),
            Due {
                deliver: true,
                ..NOTHING
            }
        );
        // A pending delivery holds the purge of a completed lab.
        s.begin_attempt(T0 + 60_000, 5_000);
        s.finish_attempt(&deleted(&["m"]), T0 + 61_000, T0 + 66_000);
        assert_eq!(purge_at(&s, &with_webhooks()), None);
        assert_eq!(
            purge_at(&s, &TIMING),
            Some(T0 + 62_000),
            "webhooks off: ignored"
        );
        s.notices.outbox.clear();
        assert_eq!(purge_at(&s, &with_webhooks()), Some(T0 + 62_000));
    }

    #[test]
    fn end_now_and_retrying() {
        let mut s = session(&["w1"]);
        assert!(s.end_now(T0 + 10));
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 10));
        s.begin_attempt(T0 + 10, 300_000);
        s.finish_attempt(&deleted(&["m"]), T0 + 30, T0 + 300_030);
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 300_030));
        assert!(s.end_now(T0 + 40), "ending a retrying lab retries now");
        assert_eq!(next_wake(&s, &TIMING), Some(T0 + 40));
        s.begin_attempt(T0 + 40, 300_000);
        s.finish_attempt(&deleted(&["w1"]), T0 + 50, T0 + 300_050);
        assert_eq!(
            next_wake(&s, &TIMING),
            Some(T0 + 1_050),
            "purge after retention"
        );
    }
}
