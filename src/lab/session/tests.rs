//! Unit tests of the session record's transitions and view.

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
        idle_timeout: None,
        labels: Default::default(),
        keep_stopped_minutes: None,
    }
}

#[test]
fn schedule_sets_expiry_from_duration() {
    let s = Session::schedule(new_session(&[]), T0, 3_600_000);
    assert_eq!(s.expires_at_ms, T0 + 3_600_000);
    assert_eq!(s.cleanup.status, Status::Scheduled);
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
    assert_eq!(s.cleanup.status, Status::CleaningUp);
    assert_eq!(s.cleanup.attempts, 1);
    assert_eq!(s.cleanup.next_attempt_at_ms, Some(T0 + 300_010));
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
    assert_eq!(s.cleanup.status, Status::Retrying);
    assert_eq!(s.cleanup.next_attempt_at_ms, Some(T0 + 300_020));
    assert_eq!(
        s.pending().iter().map(|v| v.id).collect::<Vec<_>>(),
        vec!["w1"]
    );
    assert_eq!(s.cleanup.last_outcome, Some(outcome));

    s.begin_attempt(T0 + 300_010, 300_000);
    s.finish_attempt(&deleted(&["w1"]), T0 + 300_020, T0 + 600_020);
    assert_eq!(s.cleanup.status, Status::Completed);
    assert_eq!(s.cleanup.attempts, 2);
    assert_eq!(s.cleanup.completed_at_ms, Some(T0 + 300_020));
    assert_eq!(s.cleanup.next_attempt_at_ms, None);
    assert_eq!(s.cleanup.deleted, vec!["m", "w2", "w1"]);
}

#[test]
fn finish_ignores_unknown_and_repeated_ids() {
    let mut s = Session::schedule(new_session(&["w1"]), T0, 1);
    s.begin_attempt(T0, 1);
    s.finish_attempt(&deleted(&["m", "m", "zzz"]), T0, T0 + 1);
    assert_eq!(s.cleanup.deleted, vec!["m"]);
    assert_eq!(s.cleanup.status, Status::Retrying);
}

#[test]
fn same_request_compares_what_matters() {
    let s = Session::schedule(new_session(&["w1"]), T0, 1);
    assert!(s.same_request(&new_session(&["w1"]), None));
    let mut renamed = new_session(&["w1"]);
    renamed.vm_name = None;
    assert!(s.same_request(&renamed, None));
    assert!(!s.same_request(&new_session(&["w2"]), None));
    let mut longer = new_session(&["w1"]);
    longer.duration = 61;
    assert!(!s.same_request(&longer, None));
    // The grace stage's and the idle end's settings are part of the request (issue 36, 9).
    let kept = NewSession {
        keep_stopped_minutes: Some(30),
        ..new_session(&["w1"])
    };
    assert!(!s.same_request(&kept, None));
    let idle = NewSession {
        idle_timeout: Some(15),
        ..new_session(&["w1"])
    };
    assert!(!s.same_request(&idle, None));
    // A lab that took the default idle timeout: the same create without one is the same.
    let mut defaulted = Session::schedule(new_session(&["w1"]), T0, 1);
    defaulted.idle.timeout_minutes = Some(15);
    assert!(defaulted.same_request(&new_session(&["w1"]), Some(15)));
    assert!(defaulted.same_request(&idle, Some(15)));
    assert!(!defaulted.same_request(&new_session(&["w1"]), None));
}

#[test]
fn end_now_makes_the_cleanup_due_at_once() {
    let mut s = Session::schedule(new_session(&["w1"]), T0, 60_000);
    assert!(s.end_now(T0 + 10));
    assert!(s.is_expired(T0 + 10));
    assert_eq!(s.expires_at_ms, T0 + 10);
    assert_eq!(s.cleanup.next_attempt_at_ms, Some(T0 + 10));
    assert_eq!(s.cleanup.status, Status::CleaningUp);
    assert!(matches!(
        s.extend(1, 60_000, 1_000),
        Err(Refusal::Conflict(_))
    ));
    assert!(!s.end_now(T0 + 15), "a cleanup already due is left alone");

    s.begin_attempt(T0 + 10, 300_000);
    assert!(!s.end_now(T0 + 20), "a running cleanup is left alone");
    s.finish_attempt(&deleted(&["m"]), T0 + 30, T0 + 30 + 300_000);
    assert_eq!(s.cleanup.next_attempt_at_ms, Some(T0 + 300_030));
    assert!(s.end_now(T0 + 40), "ending a retrying lab retries now");
    assert_eq!(s.cleanup.next_attempt_at_ms, Some(T0 + 40));
    s.begin_attempt(T0 + 40, 300_000);
    s.finish_attempt(&deleted(&["w1"]), T0 + 50, T0 + 50 + 300_000);
    assert!(!s.end_now(T0 + 60));
    assert_eq!(s.cleanup.completed_at_ms, Some(T0 + 50));
}

#[test]
fn retry_now_only_for_a_retrying_lab() {
    let mut s = Session::schedule(new_session(&["w1"]), T0, 60_000);
    assert!(matches!(s.retry_now(T0), Err(Refusal::Conflict(m)) if m.contains("DELETE")));
    s.begin_attempt(T0 + 60_000, 300_000);
    assert_eq!(s.retry_now(T0 + 60_001), Ok(false), "already under way");
    assert_eq!(s.cleanup.next_attempt_at_ms, Some(T0 + 360_000));
    s.finish_attempt(&deleted(&["m"]), T0 + 61_000, T0 + 361_000);
    assert_eq!(s.retry_now(T0 + 70_000), Ok(true));
    assert_eq!(s.cleanup.next_attempt_at_ms, Some(T0 + 70_000));
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
    s.cleanup.attempts = u32::MAX;
    s.begin_attempt(T0, 1);
    assert_eq!(s.cleanup.attempts, u32::MAX);
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
            "adopted_at": null,
            "origin": "api",
            "end_reason": null,
            "idle_timeout": null,
            "last_activity_at": null,
            "labels": {}
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
    assert_eq!(Session::decode(&text).unwrap(), s);
}

#[test]
fn records_of_the_previous_version_round_trip() {
    // Written by the version before the sub-records (a retrying lab with an event in its
    // outbox stored whole, and an adopted one): they load and serialize back byte for byte.
    for fixture in [
        include_str!("fixtures/retrying.json"),
        include_str!("fixtures/adopted.json"),
    ] {
        let s = Session::decode(fixture).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), fixture.trim_end());
    }
    let s = Session::decode(include_str!("fixtures/retrying.json")).unwrap();
    assert_eq!(s.status(), Status::Retrying);
    assert_eq!(s.cleanup.already_gone, vec!["k8s-worker-2-ghi-789"]);
    assert!(s.notices.stuck_notified);
    let event = &s.notices.outbox[0];
    assert!(event.snapshot.is_none() && event.body.is_some());
    assert_eq!(
        event.body(&s, None),
        *event.body.as_ref().unwrap(),
        "sent as it was stored"
    );
    let adopted = Session::decode(include_str!("fixtures/adopted.json")).unwrap();
    assert_eq!(adopted.adoption.adopted_at_ms, Some(1_796_083_200_010));
    assert_eq!(
        adopted.sync.index.delete_retry_at_ms,
        Some(1_796_083_200_099)
    );
}

#[test]
fn a_record_of_the_first_version_loads_with_defaults() {
    // Before `already_gone`, the index, the webhooks and adoption existed.
    let first = r#"{"lab_request_id":"m","user_id":"u","vm_name":null,"worker_lab_request_ids":["w"],"duration":1,"created_at_ms":0,"expires_at_ms":60000,"status":"retrying","attempts":2,"deleted":["m"],"next_attempt_at_ms":400000,"last_outcome":null,"completed_at_ms":null}"#;
    let s = Session::decode(first).unwrap();
    assert_eq!(
        s.pending().iter().map(|v| v.id).collect::<Vec<_>>(),
        vec!["w"]
    );
    assert_eq!(s.sync, Sync::default());
    assert_eq!(s.notices, Notices::default());
}
