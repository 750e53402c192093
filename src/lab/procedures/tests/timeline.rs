//! Why a lab ended: its timeline through a whole life, end reasons, staged warnings, idle ends kept off by activity, and the bound of 30 days of failures.

use super::*;
use crate::lab::session::bound::{utf16_bytes, MAX_RECORD_BYTES};
use crate::lab::session::{By, EndReason, Kind};

fn types(world: &World) -> Vec<Kind> {
    world
        .session()
        .unwrap()
        .timeline
        .events
        .iter()
        .map(|e| e.kind)
        .collect()
}

fn idle_lab(id: &str, idle: u64, duration: u64) -> NewSession {
    NewSession {
        idle_timeout: Some(idle),
        ..lab(id, &[], duration)
    }
}

/// Every delivery: its type, its id and the minutes left it tells (warnings only).
fn delivered(world: &World) -> Vec<(String, String, Option<u64>)> {
    world
        .deliveries
        .borrow()
        .iter()
        .map(|d| {
            let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            let kind = v["type"].as_str().unwrap().to_string();
            (kind, d.id.clone(), v["data"]["minutes_left"].as_u64())
        })
        .collect()
}

fn warnings(world: &World) -> Vec<(String, u64)> {
    delivered(world)
        .into_iter()
        .filter_map(|(kind, _, left)| Some((kind, left?)))
        .collect()
}

#[test]
fn a_whole_life_on_the_timeline() {
    let world = World::new(config(&[("WARN_BEFORE_MINUTES", "30,5")]));
    world.create(lab("m", &["w1", "w2"], 60));
    world.now.set(T0 + 10 * MINUTE);
    world
        .request(Request::Extend {
            minutes: 20,
            by: By::Operator,
            job: None,
        })
        .unwrap();
    // w1 fails its first deletion.
    world.script("w1", &[500]);
    world.run(T0 + 81 * MINUTE);
    assert_eq!(status(&world), Some(Status::Retrying));
    world.now.set(T0 + 82 * MINUTE);
    world.request(Request::Retry { job: None }).unwrap();
    world.run(T0 + 90 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    assert_eq!(
        types(&world),
        vec![
            Kind::Created,
            Kind::Extended,
            Kind::Warned,
            Kind::Warned,
            Kind::Ended,
            Kind::Attempt,
            Kind::RetryNow,
            Kind::Attempt,
            Kind::Completed,
        ]
    );
    let s = world.session().unwrap();
    assert_eq!(s.end_reason, Some(EndReason::Expired));
    let view = s.timeline.view(&s.vm_ids(), &Default::default());
    let events = view["events"].as_array().unwrap();
    assert_eq!(events[1]["by"], "operator");
    assert_eq!(events[1]["to"], rfc(T0 + 80 * MINUTE));
    assert_eq!(events[2]["minutes_left"], 30);
    assert_eq!(events[3]["minutes_left"], 5);
    assert_eq!(events[4]["reason"], "expired");
    assert_eq!(
        events[5]["vms"],
        serde_json::json!([
            {"id": "m", "result": "deleted"},
            {"id": "w2", "result": "deleted"},
            {"id": "w1", "result": "failed", "status": 500},
        ])
    );
    assert_eq!(
        events[7]["vms"],
        serde_json::json!([{"id": "w1", "result": "deleted"}])
    );
    assert_eq!(view["truncated"], 0);
    // Each stage once, in order, with the minutes left in the webhook's data.
    assert_eq!(
        warnings(&world),
        vec![("lab.expiring".into(), 30), ("lab.expiring".into(), 5)]
    );
    // The completed event says why the lab ended.
    let completed = world
        .deliveries
        .borrow()
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(&d.body).unwrap())
        .find(|v| v["type"] == "lab.cleanup_completed")
        .unwrap();
    assert_eq!(completed["data"]["end_reason"], "expired");
    // So do the index row and the attempt's log record.
    assert_eq!(
        world.rows.borrow()["m"].end_reason,
        Some(EndReason::Expired)
    );
}

fn rfc(ms: i64) -> String {
    crate::lab::text::rfc3339(ms)
}

#[test]
fn end_reasons_say_who_ended_the_lab() {
    for (by, reason) in [(By::Api, "ended"), (By::Operator, "operator")] {
        let world = World::new(config(&[]));
        world.create(lab("m", &[], 60));
        world.now.set(T0 + MINUTE);
        world.request(Request::End { by, job: None }).unwrap();
        world.run(T0 + 10 * MINUTE);
        let s = world.session().unwrap();
        assert_eq!(s.end_reason.map(|r| r.name()), Some(reason));
        assert_eq!(
            serde_json::to_value(s.view()).unwrap()["end_reason"],
            reason
        );
        // Ended once: a second end changes no reason.
        world
            .request(Request::End {
                by: By::Api,
                job: None,
            })
            .unwrap();
        assert_eq!(
            world.session().unwrap().end_reason.map(|r| r.name()),
            Some(reason)
        );
    }
}

#[test]
fn after_an_extend_the_stages_still_ahead_warn_again() {
    let world = World::new(config(&[("WARN_BEFORE_MINUTES", "30,5")]));
    world.create(lab("m", &[], 60));
    world.run(T0 + 56 * MINUTE);
    assert_eq!(warnings(&world).len(), 2, "30 and 5");
    // 4 minutes left; 20 more: the 5-minute stage is ahead of the new expiry again, the 30-minute
    // one is past (one warning at once for it: 24 minutes left).
    world.now.set(T0 + 56 * MINUTE);
    world
        .request(Request::Extend {
            minutes: 20,
            by: By::Api,
            job: None,
        })
        .unwrap();
    world.run(T0 + 79 * MINUTE);
    assert_eq!(
        warnings(&world),
        vec![
            ("lab.expiring".into(), 30),
            ("lab.expiring".into(), 5),
            ("lab.expiring".into(), 24),
            ("lab.expiring".into(), 5),
        ]
    );
    // A lab shorter than a stage skips it.
    let short = World::new(config(&[("WARN_BEFORE_MINUTES", "30,5")]));
    short.create(lab("m", &[], 20));
    short.run(T0 + 21 * MINUTE);
    assert_eq!(warnings(&short), vec![("lab.expiring".into(), 5)]);
}

#[test]
fn an_idle_lab_ends_early_services_first_and_never_before_its_idle_timeout() {
    let world = World::new(config(&[]));
    world.create(idle_lab("m", 15, 60));
    world.run(T0 + 60 * MINUTE);
    let s = world.session().unwrap();
    assert_eq!(s.end_reason, Some(EndReason::Idle));
    assert_eq!(s.status(), Status::Completed);
    let calls = world.calls.borrow().clone();
    assert!(calls[0].services, "the services first: {calls:?}");
    assert_eq!(
        calls[0].at,
        T0 + 15 * MINUTE,
        "at the idle deadline, not before"
    );
    assert!(calls.iter().all(|c| c.at >= T0 + 15 * MINUTE));
    // Warned first (IDLE_WARN_MINUTES, 5), then ended.
    assert_eq!(warnings(&world), vec![("lab.idle_warning".into(), 5)]);
    let kinds = types(&world);
    assert_eq!(
        kinds[..4],
        [Kind::Created, Kind::IdleWarned, Kind::Ended, Kind::Attempt]
    );
}

#[test]
fn activity_keeps_a_lab_alive_until_its_hard_expiry_with_few_writes() {
    let world = World::new(config(&[("WARN_BEFORE_MINUTES", "5")]));
    world.create(idle_lab("m", 10, 60));
    let writes_before = world.puts.get();
    // A heartbeat every 10 seconds for the whole hour.
    let mut t = T0;
    while t < T0 + 60 * MINUTE {
        t += 10 * SECOND;
        world.run(t - 1);
        world.now.set(t);
        if t < T0 + 60 * MINUTE {
            match world.request(Request::Activity).unwrap() {
                Reply::Noted => {}
                other => panic!("{other:?}"),
            }
        }
    }
    world.run(T0 + 70 * MINUTE);
    let s = world.session().unwrap();
    assert_eq!(s.end_reason, Some(EndReason::Expired), "the hard limit");
    assert!(world
        .calls
        .borrow()
        .iter()
        .all(|c| c.at >= T0 + 60 * MINUTE));
    // 359 heartbeats, one write a minute at most (ACTIVITY_WRITE_SECONDS = 60).
    let writes = world.puts.get() - writes_before;
    assert!((55..=60).contains(&writes), "{writes} activity writes");
    assert!(warnings(&world)
        .iter()
        .all(|(kind, _)| kind == "lab.expiring"));
    // Only the latest activity is on the timeline.
    assert_eq!(
        types(&world)
            .iter()
            .filter(|k| **k == Kind::Activity)
            .count(),
        1
    );
    // Ended: activity is refused.
    assert!(matches!(
        world.request(Request::Activity).unwrap(),
        Reply::Refused(crate::lab::refusal::Refusal::Conflict(_))
    ));
}

#[test]
fn activity_after_the_idle_warning_cancels_the_end() {
    let world = World::new(config(&[]));
    world.create(idle_lab("m", 15, 60));
    world.run(T0 + 11 * MINUTE);
    assert_eq!(warnings(&world), vec![("lab.idle_warning".into(), 5)]);
    // Activity 20 s after the last write would be too soon to write: noted in memory only.
    world.now.set(T0 + 12 * MINUTE);
    world.request(Request::Activity).unwrap();
    world.run(T0 + 26 * MINUTE);
    let s = world.session().unwrap();
    assert_eq!(
        s.status(),
        Status::Scheduled,
        "not ended at the old deadline"
    );
    // Warned again before the new deadline (12 + 15 = 27 minutes), then ended there.
    world.run(T0 + 40 * MINUTE);
    let s = world.session().unwrap();
    assert_eq!(s.end_reason, Some(EndReason::Idle));
    let first = world.calls.borrow()[0].at;
    assert_eq!(first, T0 + 27 * MINUTE);
    assert_eq!(
        warnings(&world),
        vec![
            ("lab.idle_warning".into(), 5),
            ("lab.idle_warning".into(), 5)
        ]
    );
}

#[test]
fn an_evicted_object_forgets_unwritten_activity_and_ends_at_most_that_much_early() {
    let world = World::new(config(&[("ACTIVITY_WRITE_SECONDS", "60")]));
    world.create(idle_lab("m", 10, 60));
    world.now.set(T0 + 2 * MINUTE);
    world.request(Request::Activity).unwrap(); // written (2 minutes since the creation)
    world.now.set(T0 + 2 * MINUTE + 30 * SECOND);
    world.request(Request::Activity).unwrap(); // noted only
    world.evict();
    world.run(T0 + 60 * MINUTE);
    let first = world.calls.borrow()[0].at;
    assert_eq!(first, T0 + 12 * MINUTE, "from the activity written");
    assert!(first >= T0 + 2 * MINUTE + 30 * SECOND + 10 * MINUTE - MINUTE);
}

#[test]
fn idle_timeout_defaults_to_the_setting_and_activity_needs_a_lab() {
    let world = World::new(config(&[("IDLE_TIMEOUT_MINUTES", "20")]));
    let s = world.create(lab("m", &[], 60));
    assert_eq!(s.idle.timeout_minutes, Some(20));
    assert_eq!(s.idle.timeout_ms, Some(20 * MINUTE));
    let empty = World::new(config(&[]));
    assert!(matches!(
        empty.request(Request::Activity).unwrap(),
        Reply::Refused(crate::lab::refusal::Refusal::NotFound)
    ));
    assert!(matches!(
        empty.request(Request::Events(Default::default())).unwrap(),
        Reply::Refused(crate::lab::refusal::Refusal::NotFound)
    ));
}

#[test]
fn thirty_days_of_failures_keep_the_record_under_64_kib() {
    // The largest lab fills its record long before 30 days: a day of it shows the bound at work.
    for (workers, days) in [(2, 30), (48, 1)] {
        let world = World::new(config(&[
            ("MAX_WORKER_NODES", "48"),
            ("STUCK_AFTER_ATTEMPTS", "3"),
        ]));
        let ids: Vec<String> = (1..=workers).map(|i| format!("w{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        world.create(lab("m", &refs, 1));
        // Every worker fails every attempt (a 500 each time) for 30 days, every 5 minutes.
        for id in &ids {
            world.script(id, &[500; 10_000]);
        }
        world.run(T0 + MINUTE + days * 24 * 60 * MINUTE + 60 * MINUTE);
        let text = world.record.borrow().clone().unwrap();
        let s = world.session().unwrap();
        assert!(
            i64::from(s.cleanup.attempts) >= days * 24 * 12,
            "{}",
            s.cleanup.attempts
        );
        assert!(
            utf16_bytes(&text) <= MAX_RECORD_BYTES,
            "{workers} workers: {} bytes",
            utf16_bytes(&text)
        );
        let attempts: Vec<u32> = s
            .timeline
            .events
            .iter()
            .filter(|e| e.kind == Kind::Attempt)
            .filter_map(|e| e.n)
            .collect();
        let last = *attempts.last().unwrap();
        assert_eq!(last, s.cleanup.attempts, "the latest attempt is kept");
        if workers == 2 {
            // The first and the last 50 attempts, in full.
            assert_eq!(attempts.len(), 100);
            assert_eq!(attempts[..50], (1..=50).collect::<Vec<u32>>()[..]);
            assert_eq!(attempts[50], last - 49);
        } else {
            // The largest lab keeps fewer to stay within the bound; none of the rest is lost
            // silently.
            assert!(attempts.len() >= 10, "{}", attempts.len());
        }
        assert_eq!(
            s.timeline.truncated as usize + s.timeline.events.len(),
            // created, ended, stuck, and every attempt
            3 + s.cleanup.attempts as usize
        );
        println!(
            "{workers} workers: {} attempts, {} bytes, {} attempts kept",
            s.cleanup.attempts,
            utf16_bytes(&text),
            attempts.len()
        );
    }
}

#[test]
fn the_timeline_pages_through_every_kept_event_once_while_it_grows() {
    use crate::lab::session::timeline::EventsPage;
    let world = World::new(config(&[("STUCK_AFTER_ATTEMPTS", "3")]));
    world.create(lab("m", &["w1"], 1));
    world.script("w1", &[500; 10_000]);
    // A day of failures: the timeline is at its count bound.
    world.run(T0 + MINUTE + 24 * 60 * MINUTE);
    let page = |after: Option<String>| -> serde_json::Value {
        let after = after.map(|c| {
            crate::lab::session::timeline::EventsCursor::parse(&c).expect("a cursor it made")
        });
        match world
            .request(Request::Events(EventsPage { after, limit: 37 }))
            .unwrap()
        {
            Reply::Events(v) => v,
            other => panic!("{other:?}"),
        }
    };
    let all = match world.request(Request::Events(EventsPage {
        after: None,
        limit: 200,
    })) {
        Ok(Reply::Events(v)) => v["events"].as_array().unwrap().clone(),
        other => panic!("{other:?}"),
    };
    assert!(all.len() > 100, "{}", all.len());
    // Page through, while attempts go on between pages (older events are dropped meanwhile).
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let v = page(cursor.clone());
        let events = v["events"].as_array().unwrap();
        assert!(events.len() <= 37);
        seen.extend(events.iter().cloned());
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        let now = world.now.get();
        world.run(now + 5 * MINUTE);
    }
    assert!(pages >= 3, "{pages}");
    // In time order, no event twice, and every event of the first answer that is still kept
    // was seen.
    let at = |e: &serde_json::Value| e["at"].as_str().unwrap().to_string();
    for pair in seen.windows(2) {
        assert!(at(&pair[0]) <= at(&pair[1]));
    }
    let text: Vec<String> = seen.iter().map(|e| e.to_string()).collect();
    let mut unique = text.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), text.len(), "no event twice");
    let last_seen = at(seen.last().unwrap());
    let kept_now = match world.request(Request::Events(EventsPage {
        after: None,
        limit: 200,
    })) {
        Ok(Reply::Events(v)) => v["events"].as_array().unwrap().clone(),
        other => panic!("{other:?}"),
    };
    for e in kept_now.iter().filter(|e| at(e) <= last_seen) {
        assert!(text.contains(&e.to_string()), "missed {e}");
    }
}

/// The ids and minutes left of the `lab.expiring` deliveries.
fn expiring(world: &World) -> Vec<(String, u64)> {
    delivered(world)
        .into_iter()
        .filter(|(kind, _, _)| kind == "lab.expiring")
        .map(|(_, id, left)| (id, left.expect("lab.expiring tells the minutes left")))
        .collect()
}

#[test]
fn a_warning_is_sent_before_the_one_save_that_records_it() {
    let world = World::new(config(&[("WARN_BEFORE_MINUTES", "10")]));
    world.create(lab("m", &[], 60));
    let before = world.storage_rows.get();
    world.run(T0 + 55 * MINUTE);
    let id = crate::lab::webhook::warning_id(
        "m",
        crate::lab::webhook::EventType::Expiring,
        T0 + 60 * MINUTE,
        10,
    );
    assert_eq!(expiring(&world), vec![(id, 10)]);
    let s = world.session().unwrap();
    assert!(s.notices.outbox.is_empty(), "delivered, off the outbox");
    assert_eq!(world.alarm.get(), Some(T0 + 60 * MINUTE), "the expiry next");
    // The create's index confirmation moved its alarm (1 row); the warning: its alarm set
    // before the send, the record after it.
    assert!(
        world.storage_rows.get() - before <= 3,
        "{}",
        world.storage_rows.get() - before
    );
}

#[test]
fn a_warning_cut_short_after_its_send_is_sent_again_with_its_id() {
    let world = World::new(config(&[("WARN_BEFORE_MINUTES", "10")]));
    world.create(lab("m", &[], 60));
    world.die_after_send.set(true);
    world.run(T0 + 55 * MINUTE);
    // Sent, not recorded: the alarm set before the send is the expiry's.
    assert_eq!(expiring(&world).len(), 1);
    assert_eq!(world.alarm.get(), Some(T0 + 60 * MINUTE));
    world.run(T0 + 70 * MINUTE);
    let sent = expiring(&world);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[0].0, sent[1].0,
        "the same id: a receiver takes it once"
    );
    assert_eq!(status(&world), Some(Status::Completed));
    assert_eq!(world.deleted().len(), 1);
}

#[test]
fn a_request_answered_while_a_warning_is_sent_is_kept() {
    let world = World::new(config(&[("WARN_BEFORE_MINUTES", "10")]));
    world.create(lab("m", &[], 60));
    *world.request_during_send.borrow_mut() = Some(Request::Extend {
        minutes: 30,
        by: By::Api,
        job: None,
    });
    world.run(T0 + 55 * MINUTE);
    let s = world.session().unwrap();
    assert_eq!(s.expires_at_ms, T0 + 90 * MINUTE, "the extend stays");
    assert!(s.notices.outbox.is_empty());
    assert_eq!(expiring(&world).len(), 1);
    // The stage is ahead of the new expiry: it warns again then, with another id.
    world.run(T0 + 100 * MINUTE);
    let sent = expiring(&world);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_ne!(sent[0].0, sent[1].0);
    assert_eq!(status(&world), Some(Status::Completed));
}

#[test]
fn a_warning_sent_first_replaces_an_older_one_still_waiting() {
    // The 30-minute warning is not delivered (the receiver is down) and waits for its next
    // delivery when the 5-minute one falls due: that one replaces it, and is sent first.
    let world = World::new(config(&[("WARN_BEFORE_MINUTES", "30,5")]));
    world.create(lab("m", &[], 60));
    world.receiver_down.set(true);
    world.run(T0 + 50 * MINUTE);
    assert!(expiring(&world).is_empty());
    assert_eq!(world.session().unwrap().notices.outbox.len(), 1);
    world.receiver_down.set(false);
    let rows = world.storage_rows.get();
    world.run(T0 + 56 * MINUTE);
    let sent = expiring(&world);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(world
        .lines
        .borrow()
        .iter()
        .any(|(_, l)| l.contains("was not delivered yet;") && l.contains("replaces it")));
    // Sent first: the alarm and the record, nothing more.
    assert_eq!(world.storage_rows.get() - rows, 2);
    assert_eq!(sent[0].1, 5);
    assert!(world.session().unwrap().notices.outbox.is_empty());
    world.run(T0 + 70 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
}
