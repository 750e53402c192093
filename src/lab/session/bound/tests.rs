//! The record's bound, proven: the worst case computed from every limit, and a record filled to it.

use super::*;
use crate::lab::limits::{MAX_ID_LEN, MAX_VM_NAME_LEN};
use crate::lab::session::outbox::SnapshotOutcome;
use crate::lab::session::{
    Cleanup, IndexSync, NewSession, Notices, OutboxEvent, Outcome, Snapshot, Status, Sync,
};
use crate::lab::webhook::EventType;

/// The longest value of every number a record holds.
const BIG_I64: i64 = -i64::MAX;
const BIG_U64: u64 = u64::MAX;

/// An id of `MAX_ID_LEN` characters, distinct per `n`.
fn id(n: usize) -> String {
    let tag = format!("-{n}");
    format!("{}{tag}", "x".repeat(MAX_ID_LEN - tag.len()))
}

/// A text of `n` characters that costs the most stored as JSON in UTF-16: each character two
/// code units (a quote is written `\"`; a character outside the BMP is a surrogate pair).
fn costly(n: usize) -> String {
    "\"".repeat(n)
}

/// The largest record valid input can produce with `workers` workers, of which `failing` failed
/// in the last attempt (the others are deleted), and an outbox with one event of every type.
fn worst_case(workers: usize, failing: usize) -> Session {
    let mut s = Session::schedule(
        NewSession {
            lab_request_id: id(0),
            user_id: id(999),
            worker_lab_request_ids: (1..=workers).map(id).collect(),
            duration: 525_600,
            vm_name: Some("😀".repeat(MAX_VM_NAME_LEN)),
            idle_timeout: None,
            labels: Default::default(),
            keep_stopped_minutes: None,
        },
        BIG_I64,
        0,
    );
    s.expires_at_ms = BIG_I64;
    let vms: Vec<String> = s.vms().map(|vm| vm.id.to_string()).collect();
    let (failed, done) = vms.split_at(failing);
    let errors: Vec<DeletionError> = failed
        .iter()
        .map(|vm| DeletionError {
            lab_request_id: vm.clone(),
            error: costly(10_000),
        })
        .collect();
    let outcome = Outcome {
        successful_deletions: usize::MAX,
        failed_deletions: usize::MAX,
        errors: bounded_errors(&errors),
        not_tried: usize::MAX,
    };
    s.cleanup = Cleanup {
        status: Status::CleaningUp,
        attempts: u32::MAX,
        deleted: done.to_vec(),
        already_gone: Vec::new(),
        services_answered_404: false,
        refused_last_attempt: false,
        start_delay_ms: BIG_I64,
        next_attempt_at_ms: Some(BIG_I64),
        last_outcome: Some(outcome),
        completed_at_ms: Some(BIG_I64),
        timeout_streak: u32::MAX,
        failing: true,
    };
    fill_state(&mut s, workers);
    fill_outbox(&mut s, workers);
    s
}

/// Every other part of the record at its largest: the sync and notices state, the end reason,
/// the idle state, the timeline's kept events, the jobs, the labels.
fn fill_state(s: &mut Session, workers: usize) {
    s.extended_minutes = 525_600;
    s.adoption.adopted_at_ms = Some(BIG_I64);
    s.sync = Sync {
        revision: BIG_U64,
        index: IndexSync {
            written: BIG_U64,
            retry_at_ms: Some(BIG_I64),
            delete_retry_at_ms: Some(BIG_I64),
        },
    };
    s.notices = Notices {
        warned_for_expiry_ms: Some(BIG_I64),
        warned_stages: vec![525_600; crate::lab::config::MAX_WARN_STAGES],
        idle_warned_for_ms: Some(BIG_I64),
        stuck_notified: false,
        outbox: Vec::new(),
    };
    s.end_reason = Some(crate::lab::session::EndReason::Operator);
    s.idle = crate::lab::session::Idle {
        timeout_minutes: Some(BIG_U64),
        timeout_ms: Some(BIG_I64),
        last_activity_ms: Some(BIG_I64),
    };
    // The events the byte bound never drops, each at its largest: an attempt where every VM
    // failed with the longest code.
    for _ in 0..crate::lab::session::timeline::KEEP_FIRST {
        s.timeline.events.push(crate::lab::session::Event {
            n: Some(u32::MAX),
            ms: Some(BIG_I64),
            failed: (0..=workers as u16)
                .map(|p| (p, "cut_short".into()))
                .collect(),
            not_tried: u32::MAX,
            ..crate::lab::session::Event::new(crate::lab::session::Kind::Attempt, BIG_I64)
        });
    }
    s.timeline.truncated = BIG_U64;
    // The bulk jobs remembered, each id at its longest (32 hex digits).
    s.jobs = (0..crate::lab::session::MAX_JOBS_KEPT)
        .map(|n| format!("{n:032x}"))
        .collect();
    // The grace stage at its largest: every VM stopped (ids listed), every time set.
    s.stop = crate::lab::session::Stop {
        keep_minutes: Some(crate::lab::config::MAX_KEEP_STOPPED_MINUTES),
        attempts: u32::MAX,
        stopped: (0..=workers as u16).collect(),
        delete_at_ms: Some(BIG_I64),
        hold_until_ms: Some(BIG_I64),
        over: true,
        resumed_at_ms: Some(BIG_I64),
    };
    // Every label at its longest, each value costing two UTF-16 units a character.
    use crate::lab::limits::{MAX_LABELS, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN};
    s.labels = (0..MAX_LABELS)
        .map(|n| {
            let key = format!("{n}{}", "k".repeat(MAX_LABEL_KEY_LEN - 1));
            (key, costly(MAX_LABEL_VALUE_LEN))
        })
        .collect();
}

/// One event of every type in the outbox, each with its largest snapshot.
fn fill_outbox(s: &mut Session, workers: usize) {
    // One event of every type, each with the snapshot its type can have at its largest:
    // `lab.expiring` is created while the lab is scheduled (no attempt, no outcome);
    // `lab.cleanup_completed` when every VM is done (no error left: errors are kept for pending
    // VMs only); `lab.cleanup_stuck` mid-cleanup, with the errors.
    let stuck = Snapshot::of(s);
    let scheduled = Snapshot {
        status: Status::Scheduled,
        attempts: 0,
        next_attempt_at_ms: None,
        deleted: Vec::new(),
        already_gone: Vec::new(),
        outcome: None,
        completed_at_ms: None,
        ..stuck.clone()
    };
    let completed = Snapshot {
        status: Status::Completed,
        deleted: (0..=workers as u16).collect(),
        outcome: stuck.outcome.clone().map(|o| SnapshotOutcome {
            errors: Vec::new(),
            ..o
        }),
        ..stuck.clone()
    };
    let warning = Snapshot {
        minutes_left: Some(BIG_U64),
        // The links' deadline and the most extend links, each of the most minutes.
        link_until_ms: Some(BIG_I64),
        link_minutes: vec![525_600; crate::lab::link::MAX_EXTEND_LINKS],
        ..scheduled.clone()
    };
    // The grace stage's: `lab.stopped` with its `delete_at` (`lab.resumed` takes its slot).
    let stopped = Snapshot {
        status: Status::Stopped,
        delete_at_ms: Some(BIG_I64),
        ..scheduled.clone()
    };
    for (kind, snapshot) in [
        (EventType::Expiring, warning.clone()),
        (EventType::IdleWarning, warning),
        (EventType::Stopped, stopped),
        (EventType::CleanupCompleted, completed),
        (EventType::CleanupStuck, stuck),
    ] {
        let mut event =
            OutboxEvent::new(kind.name(), s, BIG_I64, format!("msg_{}", "f".repeat(32)));
        event.attempts = u32::MAX;
        event.next_at_ms = BIG_I64;
        event.last_error = Some(costly(MAX_DELIVERY_ERROR_CHARS));
        event.snapshot = Some(snapshot);
        s.queue_event(event);
    }
}

fn size(s: &Session) -> usize {
    utf16_bytes(&serde_json::to_string(s).unwrap())
}

/// The largest record over every split of failing and deleted VMs.
fn largest(workers: usize) -> (usize, usize) {
    (0..=workers + 1)
        .map(|failing| (size(&worst_case(workers, failing)), failing))
        .max()
        .unwrap()
}

#[test]
fn the_worst_case_fits() {
    let (bytes, failing) = largest(MAX_WORKERS);
    println!(
        "worst case with {MAX_WORKERS} workers: {bytes} bytes as UTF-16 ({failing} VMs failing), bound {MAX_RECORD_BYTES}"
    );
    assert!(
        bytes <= MAX_RECORD_BYTES,
        "{bytes} bytes > {MAX_RECORD_BYTES}"
    );
    // The worst case is a real record: it round-trips.
    let s = worst_case(MAX_WORKERS, failing);
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(Session::decode(&text).unwrap(), s);
}

#[test]
fn errors_share_one_budget() {
    let error = |n: usize| DeletionError {
        lab_request_id: id(n),
        error: "é".repeat(5_000),
    };
    let one = bounded_errors(&[error(1)]);
    assert_eq!(one[0].error.chars().count(), MAX_ERROR_CHARS);
    assert!(one[0].error.ends_with('…'));
    let many: Vec<DeletionError> = (0..49).map(error).collect();
    let bounded = bounded_errors(&many);
    let total: usize = bounded.iter().map(|e| e.error.chars().count()).sum();
    assert!(
        total <= ERROR_BUDGET_CHARS.max(49 * MIN_ERROR_CHARS),
        "{total}"
    );
    assert!(bounded
        .iter()
        .all(|e| e.error.chars().count() >= MIN_ERROR_CHARS));
    // Escaped before it is measured: a bidi override cannot hide in a short error.
    let tricky = bounded_errors(&[DeletionError {
        lab_request_id: "w".into(),
        error: "a\u{202e}b\nc".into(),
    }]);
    assert_eq!(tricky[0].error, "a\\u{202e}b\\u{a}c");
}

#[test]
fn an_old_record_too_large_sheds_its_events_oldest_first() {
    let mut s = worst_case(MAX_WORKERS, 3);
    // Events as an earlier version stored them: whole copies of the view.
    for (n, event) in s.notices.outbox.iter_mut().enumerate() {
        event.snapshot = None;
        event.body = Some(costly(12_000 + n));
        event.created_at_ms = 1_000 - n as i64;
    }
    let oldest = s.notices.outbox[2].id.clone();
    assert!(size(&s) > MAX_RECORD_BYTES);
    let progress = s.cleanup.clone();
    let (text, dropped) = encode(&mut s);
    assert!(utf16_bytes(&text) <= MAX_RECORD_BYTES);
    assert!(!dropped.is_empty());
    assert!(matches!(&dropped[0], Dropped::Event { id, .. } if *id == oldest));
    assert_eq!(
        s.cleanup, progress,
        "the cleanup's progress is never dropped"
    );
    // A record of this version is never touched.
    let mut fits = worst_case(MAX_WORKERS, 3);
    let before = fits.clone();
    let (_, dropped) = encode(&mut fits);
    assert!(dropped.is_empty());
    assert_eq!(fits, before);
}

#[test]
fn a_failed_save_sheds_everything_expendable() {
    let mut s = worst_case(MAX_WORKERS, 5);
    let dropped = shed(&mut s);
    // One event of each of the five slots, then the errors' texts.
    assert_eq!(dropped.len(), 6, "{dropped:?}");
    assert!(s.notices.outbox.is_empty());
    let outcome = s.cleanup.last_outcome.as_ref().unwrap();
    assert_eq!(outcome.errors.len(), 5, "which VMs failed is kept");
    assert!(shed(&mut s).is_empty(), "nothing left to shed");
}

/// The time to read the largest record (48 workers, 5 failing, as `encode` stores it), natively:
/// a measurement, not a check; `cargo test --release --lib decode_speed -- --ignored --nocapture`
/// prints it (docs/PERFORMANCE.md).
#[test]
#[ignore]
fn decode_speed() {
    let mut s = worst_case(MAX_WORKERS, 5);
    let (text, _) = encode(&mut s);
    let runs = 2_000;
    let started = std::time::Instant::now();
    for _ in 0..runs {
        std::hint::black_box(Session::decode(std::hint::black_box(&text)).unwrap());
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(runs);
    println!("decode of a {} KB record: {per:.1} µs", text.len() / 1000);
}
