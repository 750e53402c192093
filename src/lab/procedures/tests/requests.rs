//! The requests' procedures: their answers, their refusals, and what they store.

use super::*;
use crate::lab::session::Refusal;

fn status_of(reply: Reply) -> u16 {
    match reply {
        Reply::Lab { status, .. } => status,
        Reply::Refused(r) => panic!("refused: {r:?}"),
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
        Request::End,
        Request::Retry,
        Request::Extend { minutes: 1 },
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
        status_of(world.request(Request::Extend { minutes: 5 }).unwrap()),
        200
    );
    assert!(matches!(
        refusal(world.request(Request::Extend { minutes: 100_000 }).unwrap()),
        Refusal::Invalid(m) if m.contains("maximum")
    ));
    assert!(matches!(
        refusal(world.request(Request::Retry).unwrap()),
        Refusal::Conflict(m) if m.contains("scheduled")
    ));
    assert_eq!(status_of(world.request(Request::End).unwrap()), 202);
    world.run(world.now.get());
    assert_eq!(status(&world), Some(Status::Retrying));
    assert!(world.deleted().contains_key("m"));
    assert!(matches!(
        refusal(world.request(Request::Extend { minutes: 1 }).unwrap()),
        Refusal::Conflict(_)
    ));
    assert_eq!(status_of(world.request(Request::Retry).unwrap()), 202);
    world.run(world.now.get());
    assert_eq!(status(&world), Some(Status::Completed));
    assert_eq!(status_of(world.request(Request::End).unwrap()), 200);
    assert!(matches!(
        refusal(world.request(Request::Retry).unwrap()),
        Refusal::Conflict(m) if m.contains("already cleaned up")
    ));
}

#[test]
fn internal_requests_round_trip() {
    for request in [
        Request::Create(lab("m", &["w"], 60)),
        Request::Status,
        Request::End,
        Request::Extend { minutes: 7 },
        Request::Retry,
    ] {
        let (method, path, body) = request.encode();
        assert_eq!(
            Request::decode(method, path, body.as_deref().unwrap_or("")),
            Ok(request)
        );
    }
    assert!(Request::decode("POST", "/create", "{").is_err());
    assert!(Request::decode("PUT", "/end", "").is_err());
}
