//! The grace stage (`STOP_PATH`): expiry, then stops, then `delete_at`, then deletions; stops that keep failing fall back to the deletion; resume, end and extend from `stopped`; restarts at every step.

use super::*;
use crate::lab::refusal::Refusal;
use crate::lab::session::{By, EndReason, Kind};
use crate::lab::text::rfc3339;

fn rfc(ms: i64) -> serde_json::Value {
    serde_json::Value::String(rfc3339(ms))
}

/// The stage on: VMs kept 60 minutes (of 60 s), three stop attempts, starts allowed.
fn staged(extra: &[(&str, &str)]) -> Config {
    let mut pairs = vec![
        ("STOP_PATH", "/api/v1/labs/stop"),
        ("START_PATH", "/api/v1/labs/start"),
        ("KEEP_STOPPED_MINUTES", "60"),
    ];
    pairs.extend_from_slice(extra);
    config(&pairs)
}

/// Lab `m` of one worker VM, 10 minutes, stopped by the stage at its expiry (at 15 minutes).
fn stopped() -> World {
    let world = World::new(staged(&[]));
    world.create(lab("m", &["w1"], 10));
    world.run(T0 + 15 * MINUTE);
    world
}

fn powers(world: &World, power: Power) -> Vec<String> {
    world
        .powers
        .borrow()
        .iter()
        .filter(|(p, ..)| *p == power)
        .map(|(_, id, ..)| id.clone())
        .collect()
}

fn kinds(world: &World) -> Vec<Kind> {
    let s = world.session().unwrap();
    s.timeline.events.iter().map(|e| e.kind).collect()
}

fn resume(world: &World, minutes: u64) -> Result<Reply, StoreError> {
    world.request(Request::Resume {
        minutes,
        by: By::Api,
        job: None,
    })
}

#[test]
fn without_the_stage_nothing_changes() {
    let world = World::new(config(&[]));
    world.create(lab("m", &["w1"], 10));
    world.run(T0 + 11 * MINUTE);
    assert!(world.powers.borrow().is_empty());
    assert_eq!(world.deleted().len(), 2);
    assert_eq!(status(&world), Some(Status::Completed));
}

#[test]
fn expiry_stops_every_vm_then_deletes_them_at_delete_at() {
    let world = World::new(staged(&[]));
    world.create(lab("m", &["w1", "w2"], 10));
    world.run(T0 + 20 * MINUTE);
    // Services first (best effort, as at a deletion), then every VM stopped, none deleted.
    assert_eq!(powers(&world, Power::Stop), vec!["m", "w1", "w2"]);
    let services: Vec<Call> = world
        .calls
        .borrow()
        .iter()
        .filter(|c| c.services)
        .cloned()
        .collect();
    assert_eq!(services.len(), 1);
    assert!(services[0].at <= world.powers.borrow()[0].2);
    assert!(
        world.deleted().is_empty(),
        "nothing deleted before delete_at"
    );
    let s = world.session().unwrap();
    assert_eq!(s.status(), Status::Stopped);
    assert_eq!(s.end_reason, Some(EndReason::Expired));
    let delete_at = s.stop.delete_at_ms.unwrap();
    assert!(
        (T0 + 70 * MINUTE..T0 + 71 * MINUTE).contains(&delete_at),
        "{delete_at}"
    );
    assert_eq!(world.alarm.get(), Some(delete_at));
    let (_, view) = wire(&world.request(Request::Status).unwrap());
    assert_eq!(view["status"], "stopped");
    assert_eq!(view["delete_at"], rfc(delete_at));
    assert!(world.log_has("⏸ Lab m stopped: its 3 VMs are kept until"));
    // The index lists it stopped, its next step its deletion at delete_at (the sweep reads it).
    let row = world.rows.borrow().get("m").cloned().unwrap();
    assert_eq!(row.status, Status::Stopped);
    assert_eq!(row.next_attempt_at, Some(delete_at));
    // A minute before delete_at, still nothing deleted; at delete_at, the seed's deletion.
    world.run(delete_at - MINUTE);
    assert!(world.deleted().is_empty());
    world.run(delete_at + MINUTE);
    assert_eq!(world.deleted().len(), 3);
    assert!(world.deleted().values().all(|&at| at >= delete_at));
    assert!(world.log_has("✅ Successfully deleted all 3 VMs"));
    let s = world.session().unwrap();
    assert_eq!(s.status(), Status::Completed);
    assert_eq!(
        s.end_reason,
        Some(EndReason::Expired),
        "ended expired, as without the stage"
    );
    assert_eq!(
        kinds(&world),
        vec![
            Kind::Created,
            Kind::Ended,
            Kind::Stopped,
            Kind::Attempt,
            Kind::Completed
        ]
    );
    let delivered = world.delivered_types();
    assert!(
        delivered.contains(&"lab.stopped".to_string()),
        "{delivered:?}"
    );
    let body = world
        .deliveries
        .borrow()
        .iter()
        .find(|d| d.body.contains("lab.stopped"))
        .map(|d| d.body.clone())
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["data"]["status"], "stopped");
    assert_eq!(body["data"]["delete_at"], rfc(delete_at));
}

#[test]
fn stops_that_keep_failing_fall_back_to_the_deletion() {
    let world = World::new(staged(&[("STOP_ATTEMPTS", "3")]));
    world.create(lab("m", &["w1"], 10));
    world
        .power_scripts
        .borrow_mut()
        .insert("w1".into(), [500, 500, 500, 500].into_iter().collect());
    world.run(T0 + 60 * MINUTE);
    // m stopped at the first attempt; w1 tried three times, then both deleted at once.
    assert_eq!(powers(&world, Power::Stop), vec!["m", "w1", "w1", "w1"]);
    assert_eq!(world.deleted().len(), 2);
    let s = world.session().unwrap();
    assert_eq!(s.status(), Status::Completed);
    assert!(kinds(&world).contains(&Kind::StopFailed));
    assert!(world.log_has("its VMs did not all stop in 3 stop attempts; deleting them now"));
    let last_stop = world.powers.borrow().last().unwrap().2;
    assert!(world.deleted().values().all(|&at| at >= last_stop));
    let view = s.timeline.view(&s.vm_ids(), &Default::default());
    let failed = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "stop_failed")
        .cloned()
        .unwrap();
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["not_stopped"], 1);
}

#[test]
fn a_resumed_lab_runs_again_and_is_not_deleted_at_the_old_delete_at() {
    let world = stopped();
    let delete_at = world.session().unwrap().stop.delete_at_ms.unwrap();
    world.now.set(T0 + 20 * MINUTE);
    let (code, view) = wire(&resume(&world, 120).unwrap());
    assert_eq!(code, 200);
    assert_eq!(view["status"], "scheduled");
    assert_eq!(view["expires_at"], rfc(world.now.get() + 120 * MINUTE));
    assert!(view.get("delete_at").is_none());
    assert_eq!(powers(&world, Power::Start), vec!["m", "w1"]);
    // Idempotent: a repeated resume changes nothing and calls nothing.
    let (code, again) = wire(&resume(&world, 120).unwrap());
    assert_eq!(code, 200);
    assert_eq!(again["expires_at"], view["expires_at"]);
    assert_eq!(powers(&world, Power::Start).len(), 2);
    // The old delete_at passes: nothing deleted.
    world.run(delete_at + 5 * MINUTE);
    assert!(world.deleted().is_empty());
    assert_eq!(status(&world), Some(Status::Scheduled));
    // Its new expiry stops it again, and later deletes it.
    world.run(T0 + 600 * MINUTE);
    assert_eq!(powers(&world, Power::Stop).len(), 4);
    assert_eq!(world.deleted().len(), 2);
    let k = kinds(&world);
    assert_eq!(k.iter().filter(|k| **k == Kind::Stopped).count(), 2);
    assert!(k.contains(&Kind::Resumed));
    assert!(world.delivered_types().contains(&"lab.resumed".to_string()));
}

#[test]
fn a_resume_whose_vm_does_not_start_leaves_the_lab_stopped() {
    let world = stopped();
    let delete_at = world.session().unwrap().stop.delete_at_ms.unwrap();
    world
        .power_scripts
        .borrow_mut()
        .insert("w1".into(), [502].into_iter().collect());
    let reply = resume(&world, 30).unwrap();
    assert!(
        matches!(reply, Reply::Refused(Refusal::Unavailable(_))),
        "{reply:?}"
    );
    let s = world.session().unwrap();
    assert_eq!(s.status(), Status::Stopped);
    assert_eq!(s.stop.hold_until_ms, None);
    assert_eq!(world.alarm.get(), Some(delete_at));
    world.run(delete_at + MINUTE);
    assert_eq!(world.deleted().len(), 2, "deleted at its delete_at");
}

#[test]
fn only_a_stopped_lab_resumes_and_a_stopped_lab_refuses_extend_and_retry() {
    let world = World::new(staged(&[]));
    world.create(lab("m", &[], 10));
    let reply = resume(&world, 30).unwrap();
    assert!(
        matches!(reply, Reply::Refused(Refusal::Conflict(_))),
        "{reply:?}"
    );
    world.run(T0 + 15 * MINUTE);
    let extend = world.request(Request::Extend {
        minutes: 5,
        by: By::Api,
        job: None,
    });
    assert!(matches!(extend, Ok(Reply::Refused(Refusal::Conflict(_)))));
    let retry = world.request(Request::Retry { job: None });
    assert!(matches!(retry, Ok(Reply::Refused(Refusal::Conflict(_)))));
    // The lifetime cap an extend has: 10 minutes lived, at most 10,080 in all.
    let reply = resume(&world, 10_080).unwrap();
    assert!(
        matches!(reply, Reply::Refused(Refusal::Invalid(_))),
        "{reply:?}"
    );
    assert_eq!(status(&world), Some(Status::Stopped));
}

#[test]
fn ending_a_stopped_lab_deletes_it_at_once() {
    let world = stopped();
    world.now.set(T0 + 16 * MINUTE);
    let (code, _) = wire(
        &world
            .request(Request::End {
                by: By::Api,
                job: None,
            })
            .unwrap(),
    );
    assert_eq!(code, 202);
    world.run(T0 + 17 * MINUTE);
    assert_eq!(world.deleted().len(), 2);
    assert_eq!(status(&world), Some(Status::Completed));
    assert_eq!(
        world.session().unwrap().end_reason,
        Some(EndReason::Expired)
    );
}

#[test]
fn a_lab_ended_by_request_or_kept_zero_minutes_is_deleted_at_once() {
    let world = World::new(staged(&[]));
    world.create(lab("m", &[], 10));
    world.now.set(T0 + MINUTE);
    world
        .request(Request::End {
            by: By::Api,
            job: None,
        })
        .unwrap();
    world.run(T0 + 5 * MINUTE);
    assert!(world.powers.borrow().is_empty());
    assert_eq!(world.deleted().len(), 1);

    let world = World::new(staged(&[]));
    world.create(NewSession {
        keep_stopped_minutes: Some(0),
        ..lab("m", &[], 10)
    });
    world.run(T0 + 15 * MINUTE);
    assert!(world.powers.borrow().is_empty());
    assert_eq!(world.deleted().len(), 1);
}

#[test]
fn an_idle_end_stops_the_lab_too() {
    let world = World::new(staged(&[]));
    world.create(NewSession {
        idle_timeout: Some(5),
        ..lab("m", &[], 60)
    });
    world.run(T0 + 10 * MINUTE);
    assert_eq!(powers(&world, Power::Stop), vec!["m"]);
    assert_eq!(status(&world), Some(Status::Stopped));
    assert_eq!(world.session().unwrap().end_reason, Some(EndReason::Idle));
    assert!(world.deleted().is_empty());
}

#[test]
fn a_crash_at_any_step_of_the_stage_deletes_nothing_early_and_leaks_nothing() {
    let clean = World::new(staged(&[]));
    clean.create(lab("m", &["w1", "w2"], 10));
    let after_create = clean.ops.get();
    clean.run(T0 + 30 * 86_400_000);
    let total = clean.ops.get();
    assert!(total > after_create + 5, "{total}");
    for step in after_create + 1..=total {
        for mode in [Crash::Before, Crash::After] {
            let world = World::new(staged(&[]));
            world.create(lab("m", &["w1", "w2"], 10));
            world.crash_at.set(Some((step, mode)));
            world.run(T0 + 30 * 86_400_000);
            let what = format!("crash {mode:?} op {step}");
            let deleted = world.deleted();
            assert_eq!(deleted.len(), 3, "{what}: every VM deleted");
            // No VM deleted before every VM was stopped and kept its 60 minutes.
            let stopped_by = world
                .powers
                .borrow()
                .iter()
                .filter(|(p, ..)| *p == Power::Stop)
                .map(|(_, _, at, _)| *at)
                .max()
                .unwrap();
            assert!(
                deleted.values().all(|&at| at >= stopped_by + 60 * MINUTE),
                "{what}: a deletion before delete_at"
            );
        }
    }
}

#[test]
fn an_undelivered_stopped_gives_way_to_resumed() {
    let world = World::new(staged(&[]));
    world.receiver_down.set(true);
    world.create(lab("m", &[], 10));
    world.run(T0 + 15 * MINUTE);
    world.now.set(T0 + 16 * MINUTE);
    resume(&world, 30).unwrap();
    let s = world.session().unwrap();
    let types: Vec<&str> = s
        .notices
        .outbox
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert!(types.contains(&"lab.resumed"), "{types:?}");
    assert!(!types.contains(&"lab.stopped"), "{types:?}");
}

#[test]
fn an_end_during_a_stop_attempt_deletes_right_after_it() {
    let world = World::new(staged(&[]));
    world.create(lab("m", &["w1"], 10));
    // The student ends the lab while its VMs are being stopped.
    *world.request_during_power.borrow_mut() = Some(Request::End {
        by: By::Api,
        job: None,
    });
    world.run(T0 + 11 * MINUTE);
    assert_eq!(powers(&world, Power::Stop), vec!["m", "w1"]);
    assert_eq!(
        world.deleted().len(),
        2,
        "deleted right after the stop attempt"
    );
    assert_eq!(status(&world), Some(Status::Completed));
    assert!(world.log_has("was ended while its VMs were being stopped; deleting them now"));
    assert!(!kinds(&world).contains(&Kind::Stopped));
}

#[test]
fn two_resumes_at_once_both_answer_the_resumed_lab() {
    let world = stopped();
    world.now.set(T0 + 16 * MINUTE);
    // A second resume arrives while the first one's starts run (and finishes first).
    *world.request_during_power.borrow_mut() = Some(Request::Resume {
        minutes: 30,
        by: By::Api,
        job: None,
    });
    let (code, view) = wire(&resume(&world, 30).unwrap());
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["status"], "scheduled");
    assert_eq!(status(&world), Some(Status::Scheduled));
    let resumed = kinds(&world)
        .iter()
        .filter(|k| **k == Kind::Resumed)
        .count();
    assert_eq!(resumed, 1, "resumed once");
}

/// Issue 36, 1: the runtime is down across a stopped lab's `delete_at` and back 48 s after
/// it. The late alarm is put off a little (spread with the others), then deletes: a few alarms,
/// never a loop, and within a minute or two of the restart.
#[test]
fn a_stopped_lab_whose_alarm_fires_late_is_deleted_soon_after() {
    for (seed, late) in [(1, 48 * SECOND), (2, 10 * MINUTE), (3, 3 * 86_400_000)] {
        let world = stopped();
        world.seed.set(seed);
        let delete_at = world.session().unwrap().stop.delete_at_ms.unwrap();
        let back = delete_at + late;
        world.now.set(back);
        let alarms = world.run(back + 5 * MINUTE);
        let what = format!("back {late} ms after delete_at");
        assert_eq!(world.deleted().len(), 2, "{what}: every VM deleted");
        assert!(alarms <= 4, "{what}: {alarms} alarms");
        assert!(
            world
                .deleted()
                .values()
                .all(|&at| at >= back && at < back + 2 * MINUTE),
            "{what}: {:?}",
            world.deleted()
        );
        assert_eq!(status(&world), Some(Status::Completed), "{what}");
    }
}

/// A late alarm's put-off moves the due time of every status that has an attempt (the planner
/// and the put-off agree), so no late alarm is ever put off twice in a row.
#[test]
fn a_put_off_moves_the_due_time_of_every_status() {
    use crate::lab::wake;
    let world = stopped();
    let stopped_lab = world.session().unwrap();
    let world = World::new(config(&[]));
    let scheduled = world.create(lab("x", &["y"], 10));
    let mut retrying = scheduled.clone();
    retrying.begin_attempt(T0 + 10 * MINUTE, 5 * MINUTE);
    retrying.cleanup.status = Status::Retrying;
    let mut cleaning = scheduled.clone();
    cleaning.begin_attempt(T0 + 10 * MINUTE, 5 * MINUTE);
    for mut lab in [stopped_lab, scheduled, retrying, cleaning] {
        let due = wake::attempt_at(&lab).unwrap();
        let later = due + 3 * 86_400_000;
        lab.put_off_attempt(later);
        assert_eq!(
            wake::attempt_at(&lab),
            Some(later),
            "{:?}: the planner sees the put-off",
            lab.status()
        );
    }
}

/// Issue 36, 2: a resumed lab with an idle timeout runs its whole timeout again (it was
/// stopped again at once: its last activity was before the stop).
#[test]
fn a_resumed_lab_with_an_idle_timeout_runs_its_whole_timeout_again() {
    let world = World::new(staged(&[]));
    world.create(NewSession {
        idle_timeout: Some(5),
        ..lab("m", &["w1"], 60)
    });
    world.run(T0 + 10 * MINUTE);
    assert_eq!(status(&world), Some(Status::Stopped));
    let resumed_at = T0 + 20 * MINUTE;
    world.now.set(resumed_at);
    let (code, view) = wire(&resume(&world, 30).unwrap());
    assert_eq!(code, 200, "{view}");
    let stops = powers(&world, Power::Stop).len();
    world.run(resumed_at + 5 * MINUTE - SECOND);
    assert_eq!(
        status(&world),
        Some(Status::Scheduled),
        "not stopped again at once"
    );
    assert_eq!(powers(&world, Power::Stop).len(), stops, "no stop call");
    // Idle for its whole timeout after the resume: stopped again, then.
    world.run(resumed_at + 6 * MINUTE);
    assert_eq!(status(&world), Some(Status::Stopped));
    let again = world
        .powers
        .borrow()
        .iter()
        .filter(|(p, ..)| *p == Power::Stop)
        .map(|(_, _, at, _)| *at)
        .max()
        .unwrap();
    assert!(again >= resumed_at + 5 * MINUTE, "{again}");
    assert_eq!(world.session().unwrap().end_reason, Some(EndReason::Idle));
}

/// Issue 36, 3: stop calls the backend refuses (429, 503) do not use up the grace: once the
/// backend takes them, the lab is stopped and kept its whole time, not deleted.
#[test]
fn refused_stops_do_not_use_up_the_grace() {
    let world = World::new(staged(&[("STOP_ATTEMPTS", "3")]));
    world.create(lab("m", &["w1"], 10));
    // Ten stop attempts refused (more than STOP_ATTEMPTS), then the backend takes them.
    world.power_scripts.borrow_mut().insert(
        "m".into(),
        [429, 503, 429, 429, 503, 429, 429, 429, 503, 429].into(),
    );
    world.run(T0 + 100 * MINUTE);
    assert_eq!(status(&world), Some(Status::Stopped), "stopped at last");
    assert!(
        world.deleted().is_empty(),
        "nothing deleted: the grace is whole"
    );
    assert!(!kinds(&world).contains(&Kind::StopFailed));
    // Stops that fail otherwise (500) still count: three of them and the lab is deleted.
    let world = World::new(staged(&[("STOP_ATTEMPTS", "3")]));
    world.create(lab("m", &[], 10));
    world
        .power_scripts
        .borrow_mut()
        .insert("m".into(), [500, 500, 500].into());
    world.run(T0 + 200 * MINUTE);
    assert_eq!(world.deleted().len(), 1);
    assert!(kinds(&world).contains(&Kind::StopFailed));
    assert_eq!(powers(&world, Power::Stop).len(), 3);
}

/// Refused stops for as long as the VMs would have been kept: deleted then, as without the
/// stage; never earlier than the end plus `keep_stopped_minutes`.
#[test]
fn stops_refused_for_the_whole_keep_time_end_in_the_deletion_then() {
    let world = World::new(staged(&[("STOP_ATTEMPTS", "3")]));
    world.create(lab("m", &[], 10));
    world
        .power_scripts
        .borrow_mut()
        .insert("m".into(), std::iter::repeat_n(429, 1_000).collect());
    world.run(T0 + 300 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    let deleted = world.deleted()["m"];
    assert!(deleted >= T0 + 10 * MINUTE + 60 * MINUTE, "{deleted}");
    assert!(
        deleted < T0 + 10 * MINUTE + 60 * MINUTE + 6 * MINUTE,
        "{deleted}"
    );
    assert!(
        world.log_has("refused to stop its VMs for as long as they would have been kept stopped")
    );
}

/// Issue 36, 9: two resumes of a stopped lab at once (as workerd interleaves them while the
/// first one's start calls are in flight): one set of start calls, both answered 200 with the
/// resumed lab.
#[test]
fn two_resumes_at_once_start_each_vm_once() {
    let world = stopped();
    world.now.set(T0 + 16 * MINUTE);
    world.power_yields.set(true);
    world.invocation();
    let lab = world.lab();
    let resume = || {
        lab.answer(Request::Resume {
            minutes: 30,
            by: By::Api,
            job: None,
        })
    };
    let (a, b) = block_on(futures::future::join(resume(), resume()));
    for reply in [a.unwrap(), b.unwrap()] {
        let (code, view) = wire(&reply);
        assert_eq!(code, 200, "{view}");
        assert_eq!(view["status"], "scheduled");
    }
    assert_eq!(
        powers(&world, Power::Start),
        vec!["m", "w1"],
        "each VM started once"
    );
}
