//! The lab's row in the fleet index: what it holds, and whether the index is behind the record.
//!
//! The object is the source of truth; the index (a D1 table, written by `platform::index`) is a
//! copy for listing the fleet. Every change of the record bumps its `revision`; the row carries
//! the revision it was written from, so an older write never overwrites a newer row. Until the
//! index confirms the current revision, the row is owed: the object's alarm comes back for it
//! within `CLEANUP_RETRY_SECONDS` at the latest (see `lab::wake`).

use serde::{Deserialize, Serialize};

use crate::lab::session::{LabType, Session, Status};
use crate::lab::text;

/// How far the index has caught up with the record.
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

/// Marks a change of the record: a new revision, and the row owed, at the latest by
/// `now_ms + retry_ms`. Revisions grow with time (microseconds of the clock, at least one more
/// than the last), so a lab forgotten and created again still gets revisions above its old row.
pub fn touch(session: &mut Session, now_ms: i64, retry_ms: i64) {
    let by_clock = (now_ms.max(0) as u64).saturating_mul(1000);
    session.revision = session.revision.saturating_add(1).max(by_clock);
    session.index.retry_at_ms = Some(now_ms.saturating_add(retry_ms));
}

/// Whether the index is behind the record.
pub fn owed(session: &Session) -> bool {
    session.index.written < session.revision
}

/// Records that the index confirmed `revision`; nothing more is owed once it is the current one.
pub fn confirmed(session: &mut Session, revision: u64) {
    session.index.written = session.index.written.max(revision);
    if !owed(session) {
        session.index.retry_at_ms = None;
    }
}

/// Records a failed row write: try again at `now_ms + retry_ms`.
pub fn write_failed(session: &mut Session, now_ms: i64, retry_ms: i64) {
    session.index.retry_at_ms = Some(now_ms.saturating_add(retry_ms));
}

/// The lab's row, as the index stores it (times in epoch milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRow {
    pub lab_request_id: String,
    pub user_id: String,
    pub lab_type: String,
    pub vm_count: u32,
    pub status: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub pending_count: u32,
    pub already_gone_count: u32,
    /// The first error of the last attempt, short.
    pub last_error: Option<String>,
    pub completed_at: Option<i64>,
    pub updated_at: i64,
    pub revision: u64,
}

/// Longest `last_error` in a row.
pub const MAX_LAST_ERROR: usize = 160;

/// The row of `session` as of `now_ms`.
pub fn row(session: &Session, now_ms: i64) -> IndexRow {
    IndexRow {
        lab_request_id: session.lab_request_id.clone(),
        user_id: session.user_id.clone(),
        lab_type: match session.lab_type() {
            LabType::SingleVm => "single_vm",
            LabType::MultiNode => "multi_node",
        }
        .into(),
        vm_count: session.vm_count() as u32,
        status: status_name(session.status).into(),
        created_at: session.created_at_ms,
        expires_at: session.expires_at_ms,
        attempts: session.attempts,
        next_attempt_at: session.next_attempt_at_ms,
        pending_count: session.pending().len() as u32,
        already_gone_count: session.already_gone.len() as u32,
        last_error: last_error(session),
        completed_at: session.completed_at_ms,
        updated_at: now_ms,
        revision: session.revision,
    }
}

/// The first error of the last attempt, on one line, its control and format characters escaped
/// (it came from the backend), and at most `MAX_LAST_ERROR` characters.
pub fn last_error(session: &Session) -> Option<String> {
    let outcome = session.last_outcome.as_ref()?;
    let first = outcome.errors.first()?;
    Some(text::safe(
        &format!("{}: {}", first.lab_request_id, first.error),
        MAX_LAST_ERROR,
    ))
}

/// The status as the API and the index name it.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Scheduled => "scheduled",
        Status::CleaningUp => "cleaning_up",
        Status::Retrying => "retrying",
        Status::Completed => "completed",
    }
}

/// Whether a lab counts as stuck: not completed after `stuck_after` attempts or more.
pub fn is_stuck(status: &str, attempts: u32, stuck_after: u32) -> bool {
    status != "completed" && attempts >= stuck_after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::cleanup::AttemptResult;
    use crate::lab::session::{DeletionError, NewSession, Outcome};

    const T0: i64 = 1_795_000_000_000;

    fn session() -> Session {
        Session::schedule(
            NewSession {
                lab_request_id: "m".into(),
                user_id: "u".into(),
                worker_lab_request_ids: vec!["w1".into(), "w2".into()],
                duration: 60,
                vm_name: None,
            },
            T0,
            60_000,
        )
    }

    #[test]
    fn every_change_is_a_newer_revision_even_within_a_millisecond() {
        let mut s = session();
        touch(&mut s, T0, 2_000);
        let first = s.revision;
        assert_eq!(first, T0 as u64 * 1000);
        touch(&mut s, T0, 2_000);
        assert_eq!(s.revision, first + 1, "two changes in one millisecond");
        touch(&mut s, T0 + 5, 2_000);
        assert_eq!(s.revision, (T0 as u64 + 5) * 1000);
        // A clock that went back never lowers the revision.
        touch(&mut s, T0 - 1_000, 2_000);
        assert_eq!(s.revision, (T0 as u64 + 5) * 1000 + 1);
    }

    #[test]
    fn a_row_is_owed_until_the_current_revision_is_confirmed() {
        let mut s = session();
        touch(&mut s, T0, 2_000);
        assert!(owed(&s));
        assert_eq!(s.index.retry_at_ms, Some(T0 + 2_000));
        let written = s.revision;
        touch(&mut s, T0 + 1, 2_000);
        // The write of the older revision lands: still behind.
        confirmed(&mut s, written);
        assert!(owed(&s));
        assert_eq!(s.index.retry_at_ms, Some(T0 + 2_001));
        write_failed(&mut s, T0 + 10, 2_000);
        assert_eq!(s.index.retry_at_ms, Some(T0 + 2_010));
        let current = s.revision;
        confirmed(&mut s, current);
        assert!(!owed(&s));
        assert_eq!(s.index.retry_at_ms, None);
        // A late confirmation of an older revision changes nothing.
        confirmed(&mut s, written);
        assert_eq!(s.index.written, current);
    }

    #[test]
    fn the_row_holds_what_the_fleet_view_lists() {
        let mut s = session();
        touch(&mut s, T0, 2_000);
        s.begin_attempt(T0 + 60_000, 5_000);
        s.finish_attempt(
            &AttemptResult {
                deleted: vec!["m".into()],
                already_gone: vec!["w2".into()],
                outcome: Outcome {
                    successful_deletions: 2,
                    failed_deletions: 1,
                    errors: vec![DeletionError {
                        lab_request_id: "w1".into(),
                        error: format!("backend answered 500: {}", "x".repeat(300)),
                    }],
                    not_tried: 0,
                },
                ..AttemptResult::default()
            },
            T0 + 61_000,
            T0 + 66_000,
        );
        let r = row(&s, T0 + 61_001);
        assert_eq!(r.lab_type, "multi_node");
        assert_eq!(r.vm_count, 3);
        assert_eq!(r.status, "retrying");
        assert_eq!(r.attempts, 1);
        assert_eq!(r.pending_count, 1);
        assert_eq!(r.already_gone_count, 1);
        assert_eq!(r.next_attempt_at, Some(T0 + 66_000));
        assert_eq!(r.updated_at, T0 + 61_001);
        assert_eq!(r.revision, s.revision);
        let error = r.last_error.unwrap();
        assert!(error.starts_with("w1: backend answered 500: xxx"));
        assert_eq!(error.chars().count(), MAX_LAST_ERROR);
        assert!(error.ends_with('…'));
    }

    #[test]
    fn stuck_means_not_completed_after_enough_attempts() {
        assert!(!is_stuck("retrying", 2, 3));
        assert!(is_stuck("retrying", 3, 3));
        assert!(is_stuck("cleaning_up", 7, 3));
        assert!(!is_stuck("completed", 9, 3));
        assert!(!is_stuck("scheduled", 0, 3));
    }
}
