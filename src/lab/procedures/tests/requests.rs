//! The requests' procedures: their answers, their refusals, and what they store.

use super::*;
use crate::lab::refusal::Refusal;

fn status_of(reply: Reply) -> u16 {
    match reply {
        Reply::Lab { status, .. } => status,
        other => panic!("not a lab: {other:?}"),
    }
}

fn refusal(reply: Reply) -> Refusal {
    match reply {
        Reply::Refused(r) => r,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn create_is_idempotent_and_conflicts_are_refused() {
    let world = World::new(config(&[]));
    assert_eq!(
        status_of(
            world
                .request(Request::Create(lab("m", &["w"], 60)))
                .unwrap()
        ),
        201
    );
    assert_eq!(
        status_of(
            world
                .request(Request::Create(lab("m", &["w"], 60)))
                .unwrap()
        ),
        200
    );
    assert!(matches!(
        refusal(world.request(Request::Create(lab("m", &["x"], 60))).unwrap()),
        Refusal::Conflict(m) if m.contains("different")
    ));
    assert!(world.alarm.get().is_some());
    assert!(
        world.rows.borrow().contains_key("m"),
        "the row after the answer"
    );
}

#[test]
fn unknown_labs_are_refused_and_nothing_is_stored() {
    let world = World::new(config(&[]));
    for request in [
        Request::Status,
        Request::End {
            by: crate::lab::session::By::Api,
            job: None,
        },
        Request::Retry { job: None },
        Request::Extend {
            minutes: 1,
            by: crate::lab::session::By::Api,
            job: None,
        },
    ] {
        assert_eq!(refusal(world.request(request).unwrap()), Refusal::NotFound);
    }
    assert!(world.record.borrow().is_none() && world.alarm.get().is_none());
}

#[test]
fn end_extend_and_retry_follow_the_lab_state() {
    let world = World::new(config(&[]));
    world.script("w", &[500]);
    world.create(lab("m", &["w"], 60));
    assert_eq!(
        status_of(
            world
                .request(Request::Extend {
                    minutes: 5,
                    by: crate::lab::session::By::Api,
                    job: None,
                })
                .unwrap()
        ),
        200
    );
    assert!(matches!(
        refusal(world.request(Request::Extend {
            minutes: 100_000,
            by: crate::lab::session::By::Api,
            job: None,
        }).unwrap()),
        Refusal::Invalid(m) if m.contains("maximum")
    ));
    assert!(matches!(
        refusal(world.request(Request::Retry { job: None }).unwrap()),
        Refusal::Conflict(m) if m.contains("scheduled")
    ));
    assert_eq!(
        status_of(
            world
                .request(Request::End {
                    by: crate::lab::session::By::Api,
                    job: None,
                })
                .unwrap()
        ),
        202
    );
    world.run(world.now.get());
    assert_eq!(status(&world), Some(Status::Retrying));
    assert!(world.deleted().contains_key("m"));
    assert!(matches!(
        refusal(
            world
                .request(Request::Extend {
                    minutes: 1,
                    by: crate::lab::session::By::Api,
                    job: None,
                })
                .unwrap()
        ),
        Refusal::Conflict(_)
    ));
    assert_eq!(
        status_of(world.request(Request::Retry { job: None }).unwrap()),
        202
    );
    world.run(world.now.get());
    assert_eq!(status(&world), Some(Status::Completed));
    assert_eq!(
        status_of(
            world
                .request(Request::End {
                    by: crate::lab::session::By::Api,
                    job: None,
                })
                .unwrap()
        ),
        200
    );
    assert!(matches!(
        refusal(world.request(Request::Retry { job: None }).unwrap()),
        Refusal::Conflict(m) if m.contains("already cleaned up")
    ));
}

#[test]
fn internal_requests_round_trip() {
    for request in [
        Request::Create(lab("m", &["w"], 60)),
        Request::Status,
        Request::End {
            by: crate::lab::session::By::Api,
            job: None,
        },
        Request::Extend {
            minutes: 7,
            by: crate::lab::session::By::Api,
            job: None,
        },
        Request::Retry { job: None },
    ] {
        let (method, path, body) = request.encode();
        assert_eq!(
            Request::decode(method, path, body.as_deref().unwrap_or("")),
            Ok(request)
        );
    }
    assert!(Request::decode("POST", "/create", "not json").is_err());
    assert!(Request::decode("PUT", "/end", "").is_err());
}

#[test]
fn an_orphan_is_a_lab_of_its_own_cleaned_up_now_once() {
    use crate::lab::fleet::report::ReportedVm;
    use crate::lab::session::Origin;
    let world = World::new(config(&[]));
    let vm = ReportedVm {
        lab_request_id: "stray-vm".into(),
        user_id: "u-9".into(),
        created_at_ms: Some(T0 - 90 * MINUTE),
    };
    assert_eq!(
        status_of(world.request(Request::Orphan(vm.clone())).unwrap()),
        201
    );
    let s = world.session().unwrap();
    assert_eq!(s.origin(), Origin::Inventory);
    assert_eq!(s.created_at_ms, T0 - 90 * MINUTE);
    assert_eq!(s.expires_at_ms, T0);
    assert_eq!(world.alarm.get(), Some(T0), "cleaned up at once");
    assert_eq!(status_of(world.request(Request::Orphan(vm)).unwrap()), 200);
    world.run(T0 + MINUTE);
    assert_eq!(world.vm_calls("stray-vm").len(), 1);
    assert!(world
        .calls
        .borrow()
        .iter()
        .any(|c| c.services && c.id == "stray-vm"));
    assert_eq!(status(&world), Some(Status::Completed));
    assert!(world.log_has("Orphan VM stray-vm of user u-9"));
    // A lab that is not an orphan is never touched.
    let world = World::new(config(&[]));
    world.create(lab("real", &[], 60));
    let stray = ReportedVm {
        lab_request_id: "real".into(),
        user_id: "u".into(),
        created_at_ms: None,
    };
    assert!(matches!(
        refusal(world.request(Request::Orphan(stray)).unwrap()),
        Refusal::Conflict(_)
    ));
    assert_eq!(status(&world), Some(Status::Scheduled));
}

#[test]
fn a_finished_vm_still_running_is_deleted_again() {
    let world = World::new(config(&[]));
    world.create(lab("m", &["w"], 1));
    world.run(T0 + 2 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    assert_eq!(
        status_of(
            world
                .request(Request::DeleteAgain { vm: "w".into() })
                .unwrap()
        ),
        202
    );
    assert_eq!(status(&world), Some(Status::Retrying));
    assert_eq!(
        status_of(
            world
                .request(Request::DeleteAgain { vm: "w".into() })
                .unwrap()
        ),
        200,
        "already pending: nothing twice"
    );
    assert!(world.log_has(
        "❌ VM w of lab m was counted deleted, yet the backend's inventory still lists it"
    ));
    world.gone.borrow_mut().remove("w");
    world.run(world.now.get() + MINUTE);
    assert_eq!(world.vm_calls("w").len(), 2);
    assert_eq!(world.vm_calls("m").len(), 1, "only that VM");
    assert_eq!(status(&world), Some(Status::Completed));
    assert!(matches!(
        refusal(
            world
                .request(Request::DeleteAgain { vm: "x".into() })
                .unwrap()
        ),
        Refusal::Conflict(_)
    ));
}

#[test]
fn a_poke_gives_a_lab_its_alarm_back() {
    let world = World::new(config(&[]));
    world.create(lab("m", &[], 1));
    let due = world.alarm.get().unwrap();
    assert!(matches!(
        world.request(Request::Poke).unwrap(),
        Reply::Poked { revived: false }
    ));
    // The alarm is lost (as a storage fault could lose it): the poke sets it again.
    world.alarm.set(None);
    world.now.set(due + 10 * MINUTE);
    assert!(matches!(
        world.request(Request::Poke).unwrap(),
        Reply::Poked { revived: true }
    ));
    assert_eq!(
        world.alarm.get(),
        Some(due + 10 * MINUTE),
        "due long ago: now"
    );
    world.run(world.now.get() + MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    assert!(world.log_has("had no alarm while work was due"));
}

/// Issue 36, 1: an alarm stored long in the past and never run (the runtime gave up on it)
/// counts as no alarm for the sweep's poke; one only a little past does not.
#[test]
fn a_poke_revives_an_alarm_long_past() {
    let world = World::new(config(&[]));
    world.create(lab("m", &[], 1));
    let due = world.alarm.get().unwrap();
    world.now.set(due + 60 * SECOND);
    assert!(matches!(
        world.request(Request::Poke).unwrap(),
        Reply::Poked { revived: false }
    ));
    world.now.set(due + 10 * MINUTE);
    assert!(matches!(
        world.request(Request::Poke).unwrap(),
        Reply::Poked { revived: true }
    ));
    assert_eq!(world.alarm.get(), Some(due + 10 * MINUTE));
    assert!(world.log_has("long past and not run (lost)"));
    world.run(world.now.get() + MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
}
