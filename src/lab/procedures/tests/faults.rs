//! Faults injected into every port: a storage write that fails, a crash after each step of an attempt, the index down, a receiver down, a delivery racing an attempt.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::lab::procedures::alarm::Woke;
use crate::lab::session::OutboxEvent;

/// A 1+2 lab whose second worker fails once: its attempt, retry, events and purge.
fn scenario(world: &World) -> i64 {
    world.script("w2", &[500]);
    let s = world.create(lab("m", &["w1", "w2"], 30));
    s.expires_at_ms
}

/// What must hold whatever failed on the way: every VM deleted, none before its expiry, no
/// stored event lost, the record purged in the end.
fn assert_nothing_lost(world: &World, expires_at: i64, what: &str) {
    let deleted = world.deleted();
    for vm in ["m", "w1", "w2"] {
        assert!(deleted.contains_key(vm), "{what}: {vm} never deleted");
        for call in world.vm_calls(vm) {
            assert!(
                call.at >= expires_at,
                "{what}: {vm} deleted at {} before its expiry {expires_at}",
                call.at
            );
        }
    }
    assert_no_event_lost(world, what);
    assert!(
        world.session().is_none(),
        "{what}: the record was never purged"
    );
}

/// Every event that was ever stored was delivered, or a newer event of its type replaced it.
pub fn assert_no_event_lost(world: &World, what: &str) {
    let delivered: HashSet<String> = world
        .deliveries
        .borrow()
        .iter()
        .map(|d| d.id.clone())
        .collect();
    let mut stored: Vec<(String, String)> = Vec::new();
    for text in world.saved.borrow().iter() {
        let s = Session::decode(text).unwrap();
        for e in &s.notices.outbox {
            if !stored.iter().any(|(id, _)| *id == e.id) {
                stored.push((e.id.clone(), e.event_type.clone()));
            }
        }
    }
    for (i, (id, kind)) in stored.iter().enumerate() {
        let replaced = stored[i + 1..].iter().any(|(_, k)| k == kind);
        assert!(
            delivered.contains(id) || replaced,
            "{what}: event {kind} ({id}) was stored, never delivered nor replaced"
        );
    }
}

#[test]
fn a_clean_run_deletes_each_vm_once_and_delivers_every_event() {
    let world = World::new(config(&[]));
    let expires = scenario(&world);
    world.run(T0 + 30 * 86_400_000);
    assert_nothing_lost(&world, expires, "clean run");
    for vm in ["m", "w1"] {
        assert_eq!(world.vm_calls(vm).len(), 1, "{vm}");
    }
    assert_eq!(world.vm_calls("w2").len(), 2, "w2 failed once");
    assert_eq!(
        world.delivered_types(),
        vec!["lab.expiring", "lab.cleanup_completed"]
    );
    assert!(world.log_has("✅ Successfully deleted all 3 VMs"));
    assert!(
        world.rows.borrow().is_empty(),
        "the index row is purged too"
    );
}

#[test]
fn a_crash_after_any_step_loses_nothing() {
    // The storage operations of a clean run, from the create on.
    let clean = World::new(config(&[]));
    scenario(&clean);
    let after_create = clean.ops.get();
    clean.run(T0 + 30 * 86_400_000);
    let total = clean.ops.get();
    assert!(total > after_create + 10, "{total}");
    // The clean run cleans up in a few attempts: a run that never does (a wrong line in the
    // cleanup) fails here, instead of crashing each of its thousands of operations in turn.
    assert!(
        total < after_create + 200,
        "a clean run took {} storage operations",
        total - after_create
    );
    for step in after_create + 1..=total {
        for mode in [Crash::Before, Crash::After] {
            let world = World::new(config(&[]));
            let expires = scenario(&world);
            world.crash_at.set(Some((step, mode)));
            world.run(T0 + 30 * 86_400_000);
            assert_nothing_lost(&world, expires, &format!("crash {mode:?} op {step}"));
        }
    }
}

#[test]
fn a_refused_save_keeps_the_progress_and_repeats_no_deletion() {
    // A store that refuses values over a size: the record with its undelivered events is too
    // large, without them it fits.
    let world = World::new(config(&[]));
    let workers: Vec<String> = (1..=48)
        .map(|n| format!("{}-{n:02}", "w".repeat(120)))
        .collect();
    let workers: Vec<&str> = workers.iter().map(String::as_str).collect();
    world.receiver_down.set(true);
    world.create(lab(&"m".repeat(128), &workers, 30));
    world.run(T0 + 40 * MINUTE);
    let stored = world.record.borrow().clone().unwrap();
    let s = world.session().unwrap();
    assert_eq!(s.status(), Status::Completed);
    assert!(!s.notices.outbox.is_empty());
    // From now on the storage refuses anything as large as the record with its outbox.
    let without: usize = {
        let mut bare = s.clone();
        bare.notices.outbox.clear();
        serde_json::to_string(&bare).unwrap().encode_utf16().count() * 2
    };
    let with = stored.encode_utf16().count() * 2;
    assert!(with > without);
    world.max_value_bytes.set(Some(without + 10));
    // A retry of the completed lab is refused; an extend too: nothing runs twice.
    let calls_before = world.calls.borrow().len();
    world.run(T0 + 30 * 86_400_000);
    assert_eq!(
        world.calls.borrow().len(),
        calls_before,
        "no deletion again"
    );
    assert!(world.log_has("saving its cleanup's progress without what can be spared"));
    assert!(world.log_has("dropped undelivered event"));
}

#[test]
fn a_record_too_large_for_the_store_mid_cleanup_deletes_nothing_twice() {
    // The reported loop: the record outgrew the store; every save failed; the VMs were deleted
    // again on every retry. An earlier version's record with whole copies of the view.
    let world = World::new(config(&[]));
    world.receiver_down.set(true);
    let s = world.create(lab("m", &["w1", "w2"], 30));
    let mut old = world.session().unwrap();
    for n in 0..73 {
        // 73 events as the old version kept them: a newer lab.expiring replaces the old ones;
        // the others are shed, oldest first, to fit the bound.
        let kind = if n % 2 == 0 {
            "lab.expiring"
        } else {
            "lab.cleanup_stuck"
        };
        let mut event = OutboxEvent::new(kind, &old, T0 + n, format!("msg_old_{n:02}"));
        event.snapshot = None;
        event.body = Some(format!("{{\"pad\":\"{}\"}}", "x".repeat(30_000)));
        old.notices.outbox.push(event);
    }
    *world.record.borrow_mut() = Some(serde_json::to_string(&old).unwrap());
    world.max_value_bytes.set(Some(2 * 1024 * 1024));
    world.run(T0 + 30 * 86_400_000);
    for vm in ["m", "w1", "w2"] {
        assert_eq!(world.vm_calls(vm).len(), 1, "{vm} deleted once");
    }
    assert!(world.deleted().len() == 3 && s.expires_at_ms <= world.vm_calls("m")[0].at);
    assert!(world.log_has("Event lab.expiring (msg_old_00) for lab m was not delivered yet"));
    assert!(world.log_has("dropped undelivered event lab.cleanup_stuck (msg_old_01)"));
    for text in world.saved.borrow().iter() {
        assert!(text.encode_utf16().count() * 2 <= crate::lab::session::bound::MAX_RECORD_BYTES);
    }
}

#[test]
fn the_index_down_holds_up_nothing_and_is_repaired() {
    let world = World::new(config(&[]));
    world.index_down.set(true);
    let expires = scenario(&world);
    world.run(expires + 20 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    assert_eq!(world.deleted().len(), 3);
    assert!(world.rows.borrow().is_empty());
    assert!(world.log_has("could not be written"));
    world.index_down.set(false);
    world.run(world.now.get() + 10 * MINUTE);
    let rows = world.rows.borrow();
    let row = rows.get("m").expect("the row is repaired");
    assert_eq!(row.status, Status::Completed);
    drop(rows);
    // The purge waits for the row's delete: the index never keeps a row the object forgot.
    world.index_down.set(true);
    world.run(T0 + 8 * 86_400_000);
    assert!(world.session().is_some(), "purge held");
    assert!(world.log_has("record kept, trying again"));
    world.index_down.set(false);
    world.run(T0 + 30 * 86_400_000);
    assert!(world.session().is_none() && world.rows.borrow().is_empty());
}

#[test]
fn a_receiver_down_gets_every_event_once_it_is_back() {
    let world = World::new(config(&[]));
    world.receiver_down.set(true);
    let expires = scenario(&world);
    world.run(expires + 30 * MINUTE);
    assert!(world.deliveries.borrow().is_empty());
    assert_eq!(world.deleted().len(), 3, "the cleanup never waited");
    world.receiver_down.set(false);
    world.run(T0 + 30 * 86_400_000);
    assert_nothing_lost(&world, expires, "receiver back");
    assert_eq!(
        world.delivered_types(),
        vec!["lab.expiring", "lab.cleanup_completed"]
    );
}

#[test]
fn an_event_undelivered_for_its_max_age_is_dropped_with_an_error_line() {
    let world = World::new(config(&[("WEBHOOK_MAX_AGE_SECONDS", "600")]));
    world.receiver_down.set(true);
    scenario(&world);
    world.run(T0 + 30 * 86_400_000);
    assert!(world.deliveries.borrow().is_empty());
    assert!(world.log_has("dropped: not delivered in"));
    assert!(world.session().is_none(), "purged once nothing waits");
}

#[test]
fn a_delivery_during_an_attempt_is_not_sent_again() {
    // One redelivery 10 minutes after the warning: due exactly at the expiry.
    let world = World::new(config(&[("WEBHOOK_RETRY_SCHEDULE_SECONDS", "600")]));
    // The warning fails; its redelivery falls due during the cleanup attempt.
    world.receiver_down.set(true);
    let s = world.create(lab("m", &["w1"], 11));
    world.run(s.expires_at_ms - 1);
    assert!(world.log_has("lab.expiring"));
    world.receiver_down.set(false);
    world.deliver_during_delete.set(true);
    world.run(T0 + 30 * 86_400_000);
    let expiring = world
        .delivered_types()
        .iter()
        .filter(|t| *t == "lab.expiring")
        .count();
    assert_eq!(expiring, 1, "an acknowledged event is never sent again");
    assert_eq!(world.deleted().len(), 2);
}

#[test]
fn every_delivery_is_signed_and_its_body_fixed() {
    let world = World::new(config(&[]));
    world.receiver_down.set(true);
    let expires = scenario(&world);
    world.run(expires + 10 * MINUTE);
    world.receiver_down.set(false);
    world.run(T0 + 30 * 86_400_000);
    let secret =
        crate::lab::config::parse_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let mut bodies: HashMap<String, String> = HashMap::new();
    for d in world.deliveries.borrow().iter() {
        assert_eq!(
            d.signature,
            crate::lab::webhook::sign(&secret, &d.id, d.timestamp, &d.body)
        );
        if let Some(first) = bodies.insert(d.id.clone(), d.body.clone()) {
            assert_eq!(first, d.body, "a redelivery carries the same bytes");
        }
    }
    let expiring: serde_json::Value = world
        .deliveries
        .borrow()
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(&d.body).unwrap())
        .find(|v| v["type"] == "lab.expiring")
        .unwrap();
    assert_eq!(expiring["data"]["status"], "scheduled");
    assert_eq!(expiring["data"]["attempts"], 0);
}

#[test]
fn legacy_records_are_adopted_or_kept() {
    use crate::lab::legacy::LegacyValue;
    let world = World::new(config(&[]));
    *world.legacy.borrow_mut() = Some(LegacyRecord {
        lab_request_id: LegacyValue::Text("old-m".into()),
        user_id: LegacyValue::Text("old-u".into()),
        worker_lab_request_ids: LegacyValue::Text(r#"["old-w"]"#.into()),
        duration: LegacyValue::Number(60.0),
    });
    world.alarm.set(Some(T0 + MINUTE));
    world.run(T0 + 30 * 86_400_000);
    assert!(world.deleted().contains_key("old-m") && world.deleted().contains_key("old-w"));
    assert!(world.log_has("Adopted lab old-m of user old-u (2 VMs)"));

    // A forged id is kept as it is, never adopted half-way, and never echoed.
    let world = World::new(config(&[]));
    *world.legacy.borrow_mut() = Some(LegacyRecord {
        lab_request_id: LegacyValue::Text(
            "m\n[SessionManager] ✅ Successfully deleted all 9 VMs".into(),
        ),
        user_id: LegacyValue::Text("u".into()),
        worker_lab_request_ids: LegacyValue::Text("[]".into()),
        duration: LegacyValue::Number(60.0),
    });
    world.alarm.set(Some(T0 + MINUTE));
    world.run(T0 + 20 * MINUTE);
    assert!(world.calls.borrow().is_empty());
    assert!(world.legacy.borrow().is_some(), "kept as it is");
    assert!(world.alarm.get().is_some(), "looked at again");
    assert!(!world.log_has("Successfully deleted all 9"));
    assert!(world
        .log_has("is unreadable: key `lab_request_id` is a string holding the character U+000A"));
    match world.request(Request::Status).unwrap() {
        Reply::Refused(crate::lab::refusal::Refusal::Unreadable(problems)) => {
            assert_eq!(problems.len(), 1)
        }
        other => panic!("{other:?}"),
    }
}

/// A pause of the runtime (an outage, a deploy): the alarm of a lab that fell due meanwhile
/// fires late, at once with every other such lab. Its attempt is put off by a random part of
/// how late it is (at most a minute), then runs; never before the expiry, nothing lost.
#[test]
fn an_attempt_late_after_a_pause_is_spread_then_runs() {
    for (seed, pause) in [(1, 5 * MINUTE), (2, 40 * SECOND), (3, 3 * 60 * MINUTE)] {
        let world = World::new(config(&[]));
        world.seed.set(seed);
        let expires = scenario(&world);
        // The runtime is down from the expiry on, for `pause`.
        let back = expires + pause;
        world.now.set(back);
        world.invocation();
        let done = block_on(world.lab().alarm()).unwrap();
        assert_eq!(done.woke, Woke::PutOff, "pause {pause}");
        assert!(
            world.calls.borrow().is_empty(),
            "no call when it fires late"
        );
        assert!(world.log_has("(the runtime was paused): it starts at"));
        world.run(T0 + 30 * 86_400_000);
        assert_nothing_lost(&world, expires, "after a pause");
        let first = world.vm_calls("m")[0].at;
        let spread = pause.min(crate::lab::retry::LATE_SPREAD_MAX_MS);
        assert!(
            first >= back && first < back + spread,
            "{first} within the spread"
        );
        let put_off = world
            .lines
            .borrow()
            .iter()
            .filter(|(_, l)| l.contains("the runtime was paused"))
            .count();
        assert_eq!(put_off, 1, "put off once, then on time");
    }
    // A retry that falls in a pause is spread too; one only a little late is not.
    let world = World::new(config(&[]));
    let expires = scenario(&world);
    world.run(expires + SECOND);
    let retry_at = world.alarm.get().unwrap();
    assert_eq!(status(&world), Some(Status::Retrying));
    world.now.set(retry_at + 10 * MINUTE);
    world.invocation();
    assert_eq!(block_on(world.lab().alarm()).unwrap().woke, Woke::PutOff);
    world.now.set(world.alarm.get().unwrap() + 20 * SECOND);
    world.invocation();
    assert_eq!(block_on(world.lab().alarm()).unwrap().woke, Woke::Attempt);
    assert_eq!(status(&world), Some(Status::Completed));
}

/// A VM confirmed gone, then a long wait in the same attempt (a slow answer, a permit): the
/// confirmation is saved within `PROGRESS_SAVE_MS` anyway, so an attempt cut short during the
/// wait deletes it no second time.
#[test]
fn a_confirmation_before_a_long_wait_is_saved_within_seconds() {
    use std::future::Future;
    use std::task::Context;
    let world = World::new(config(&[("CLEANUP_CONCURRENCY", "1")]));
    let s = world.create(lab("m", &["w1", "w2"], 30));
    // w1's answer takes a minute; m (deleted first) is confirmed just before.
    world
        .answer_at
        .borrow_mut()
        .insert("w1".into(), s.expires_at_ms + 60 * SECOND);
    world.now.set(s.expires_at_ms);
    world.alarm.set(None);
    world.invocation();
    {
        let lab = world.lab();
        let mut alarm = std::pin::pin!(lab.alarm());
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        // The runtime stops 10 s into the wait: the invocation is gone, unfinished. (Nothing
        // but the attempt's own saving moves the clock while it waits.)
        for _ in 0..10_000 {
            if world.now.get() >= s.expires_at_ms + 10 * SECOND {
                break;
            }
            assert!(alarm.as_mut().poll(&mut cx).is_pending(), "still waiting");
        }
    }
    assert_eq!(world.vm_calls("m").len(), 1);
    let saved = world.session().unwrap();
    assert!(
        saved.cleanup.deleted.iter().any(|d| d == "m"),
        "m was saved while the attempt waited: {:?}",
        saved.cleanup.deleted
    );
    // The next attempt (the alarm the attempt's start set) does not delete m again.
    world.answer_at.borrow_mut().clear();
    world.alarm.set(Some(world.now.get()));
    world.run(T0 + 30 * 86_400_000);
    assert_eq!(world.vm_calls("m").len(), 1, "m deleted once");
    assert!(world.deleted().contains_key("w1") && world.deleted().contains_key("w2"));
}
