//! Claims between objects: a create claims its worker VMs before it answers, an orphan cleanup asks the lab a claim names, and a create and an acting inventory interleaved in every order never delete a lab's VM early.

use std::rc::Rc;

use futures::executor::block_on;

use super::*;
use crate::lab::fleet::report::ReportedVm;
use crate::lab::refusal::Refusal;
use crate::lab::session::claim::Claim;
use crate::lab::session::Origin;
use crate::lab::text::rfc3339;

const HOUR: i64 = 60 * MINUTE;

fn orphan(id: &str) -> Request {
    Request::Orphan(ReportedVm {
        lab_request_id: id.into(),
        user_id: "someone".into(),
        created_at_ms: Some(T0 - 10 * HOUR),
    })
}

fn refusal(reply: Result<Reply, StoreError>) -> Refusal {
    match reply.expect("no storage error") {
        Reply::Refused(refusal) => refusal,
        other => panic!("not refused: {other:?}"),
    }
}

fn status_of(reply: &Result<Reply, StoreError>) -> u16 {
    wire(reply.as_ref().expect("no storage error")).0
}

/// Backend deletions of `vm` by any object of the fleet, with when.
fn deletions(world: &World, vm: &str) -> Vec<i64> {
    let peers: Vec<Rc<World>> = world.peers.borrow().values().cloned().collect();
    let mut at: Vec<i64> = std::iter::once(world)
        .chain(peers.iter().map(|p| p.as_ref()))
        .flat_map(|w| w.vm_calls(vm))
        .map(|c| c.at)
        .collect();
    at.sort();
    at.dedup();
    at
}

#[test]
fn a_create_claims_its_workers_and_their_objects_refuse_an_orphan() {
    let m = World::named(config(&[]), "m1");
    let created = m.create(lab("m1", &["w1", "w2"], 60));
    assert_eq!(created.status(), Status::Scheduled);
    for w in ["w1", "w2"] {
        let claim = Claim::decode(m.peer(w).claim.borrow().as_deref().unwrap()).unwrap();
        assert_eq!((claim.lab.as_str(), claim.vm.as_str()), ("m1", w));
        // Its alarm: when to ask whether the lab still lists it (after the lab's longest life
        // and its retention).
        let check = m.peer(w).alarm.get().expect("a claim's release check");
        assert!(check > T0 + 7 * 24 * HOUR, "{check}");
    }
    // The index knows nothing (down): the worker's object still knows whose VM it is.
    let w1 = m.peer("w1");
    w1.index_down.set(true);
    match refusal(w1.request(orphan("w1"))) {
        Refusal::Conflict(message) => {
            assert_eq!(message, "VM w1 is a worker VM of lab m1: not an orphan")
        }
        other => panic!("{other:?}"),
    }
    w1.run(T0 + 10 * HOUR);
    assert!(w1.calls.borrow().is_empty(), "nothing deleted");
    assert!(w1.record.borrow().is_none());
    // A single-VM lab claims nothing.
    let single = World::named(config(&[]), "solo");
    single.create(lab("solo", &[], 60));
    assert!(single.sent.borrow().is_empty());
}

#[test]
fn an_orphan_cleanup_not_started_gives_way_to_the_create_of_its_master() {
    let m = World::named(config(&[]), "m1");
    assert_eq!(status_of(&m.request(orphan("m1"))), 201);
    assert_eq!(m.alarm.get(), Some(T0), "its cleanup is due now");
    // The create arrives before the alarm ran.
    let created = m.create(lab("m1", &[], 60));
    assert_eq!(created.origin(), Origin::Api);
    assert!(m.log_has(
        "The orphan cleanup of VM m1 was cancelled before it started: lab m1 was created for it"
    ));
    m.run(T0 + 60 * MINUTE - 1);
    assert!(m.vm_calls("m1").is_empty(), "nothing before the expiry");
    m.run(T0 + 2 * HOUR);
    assert_eq!(deletions(&m, "m1"), vec![T0 + 60 * MINUTE]);
    // Its index row is the lab's (the revisions went on from the orphan's).
    assert_eq!(m.rows.borrow()["m1"].origin, Origin::Api);
}

#[test]
fn an_orphan_cleanup_not_started_gives_way_to_the_claim_of_a_worker() {
    let m = World::named(config(&[]), "m1");
    let w1 = m.peer("w1");
    assert_eq!(status_of(&w1.request(orphan("w1"))), 201);
    assert!(w1.rows.borrow().contains_key("w1"), "the orphan's row");
    let created = m.create(lab("m1", &["w1"], 60));
    assert_eq!(created.status(), Status::Scheduled);
    assert!(m.log_has("Lab m1: worker VM w1 was pending as an orphan; its cleanup is cancelled"));
    assert!(w1.log_has("The orphan cleanup of VM w1 was cancelled before it started"));
    assert!(w1.record.borrow().is_none(), "the orphan is gone");
    // The claim's alarm deletes the orphan's index row, and nothing at the backend.
    w1.run(T0 + 10 * HOUR);
    assert!(!w1.rows.borrow().contains_key("w1"));
    assert!(w1.calls.borrow().is_empty());
    assert!(
        w1.alarm.get().is_some_and(|at| at > T0 + 7 * 24 * HOUR),
        "then the release check"
    );
    m.run(T0 + 2 * HOUR);
    assert_eq!(
        deletions(&m, "w1"),
        vec![T0 + 60 * MINUTE],
        "by its lab, once"
    );
}

#[test]
fn an_orphan_whose_deletion_started_makes_the_create_say_so() {
    let m = World::named(config(&[]), "m1");
    let w1 = m.peer("w1");
    w1.request(orphan("w1")).unwrap();
    w1.run(T0);
    assert_eq!(deletions(&m, "w1"), vec![T0]);
    match refusal(m.request(Request::Create(lab("m1", &["w1"], 60)))) {
        Refusal::Conflict(message) => assert!(
            message.starts_with(&format!("lab m1 is not scheduled: VM w1 was found running with no lab (an orphan VM the backend's inventory reported) at {}, and its deletion has started", rfc3339(T0))),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(m.record.borrow().is_none(), "nothing stored");
    assert!(m.alarm.get().is_none());
    // The master id likewise.
    let m2 = World::named(config(&[]), "m2");
    m2.request(orphan("m2")).unwrap();
    m2.run(T0);
    match refusal(m2.request(Request::Create(lab("m2", &[], 60)))) {
        Refusal::Conflict(message) => assert!(
            message.starts_with("VM m2 was found running with no lab"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_vm_of_a_live_lab_joins_no_other_and_a_stale_claim_is_replaced() {
    let m = World::named(config(&[]), "m1");
    m.create(lab("m1", &["w1"], 60));
    let m2 = m.peer("m2");
    match refusal(m2.request(Request::Create(lab("m2", &["w9", "w1"], 60)))) {
        Refusal::Conflict(message) => {
            assert_eq!(
                message,
                "lab m2 is not scheduled: VM w1 is a worker VM of lab m1"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(m2.record.borrow().is_none());
    // A worker VM as another lab's master, and a master as another lab's worker.
    let w1 = m.peer("w1");
    match refusal(w1.request(Request::Create(lab("w1", &[], 60)))) {
        Refusal::Conflict(message) => assert_eq!(
            message,
            "VM w1 is a worker VM of lab m1; it cannot be the master VM of another lab"
        ),
        other => panic!("{other:?}"),
    }
    match refusal(m2.request(Request::Create(lab("m2", &["m1"], 60)))) {
        Refusal::Conflict(message) => {
            assert_eq!(
                message,
                "lab m2 is not scheduled: VM m1 is the master VM of lab m1"
            )
        }
        other => panic!("{other:?}"),
    }
    // A claim whose lab never came to be (its create failed) is stale: replaced.
    let w9 = m.peer("w9");
    assert_eq!(
        Claim::decode(w9.claim.borrow().as_deref().unwrap())
            .unwrap()
            .lab,
        "m2"
    );
    let m3 = m.peer("m3");
    assert_eq!(
        status_of(&m3.request(Request::Create(lab("m3", &["w9"], 60)))),
        201
    );
    assert_eq!(
        Claim::decode(w9.claim.borrow().as_deref().unwrap())
            .unwrap()
            .lab,
        "m3"
    );
    // So is one whose lab was purged after its retention: the VM is an orphan again.
    m.run(T0 + 30 * 24 * HOUR);
    assert!(m.record.borrow().is_none(), "purged");
    assert_eq!(status_of(&w1.request(orphan("w1"))), 201);
}

#[test]
fn an_owner_that_does_not_answer_keeps_the_vm_and_refuses_the_create() {
    let m = World::named(config(&[]), "m1");
    m.create(lab("m1", &["w1"], 60));
    let w1 = m.peer("w1");
    w1.peers_down.set(true);
    assert!(matches!(
        refusal(w1.request(orphan("w1"))),
        Refusal::Unavailable(m) if m.contains("the VM is left alone")
    ));
    assert!(w1.record.borrow().is_none());
    let m2 = m.peer("m2");
    m2.peers_down.set(true);
    assert!(matches!(
        refusal(m2.request(Request::Create(lab("m2", &["w2"], 60)))),
        Refusal::Unavailable(m) if m.contains("try again")
    ));
    assert!(m2.record.borrow().is_none());
}

/// Where, in the create of m1 (workers w1, w2), the inventory's orphan of one of its VMs lands.
#[derive(Debug, Clone, Copy)]
enum At {
    /// Before the create.
    Before,
    /// While the create's n-th claim waits for its answer.
    During(usize),
    /// After the create answered.
    After,
}

/// How far the orphan cleanup got when it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Scheduled only.
    Requested,
    /// Its alarm ran too: the deletion was sent (when the orphan was accepted).
    Deleting,
}

/// Runs the orphan request of `vm` (and its alarm, for `Deleting`) in `world`'s fleet.
async fn land(world: Rc<World>, vm: &'static str, stage: Stage) {
    let target = world.peer(vm);
    let _ = target.lab().answer(orphan(vm)).await;
    if stage == Stage::Deleting && target.alarm.get().is_some() {
        let _ = target.lab().alarm().await;
    }
}

#[test]
fn creates_and_orphans_in_every_order_never_delete_a_vm_early() {
    let mut cases = 0;
    for vm in ["m1", "w1", "w2"] {
        for at in [At::Before, At::During(1), At::During(2), At::After] {
            for stage in [Stage::Requested, Stage::Deleting] {
                for index_down in [false, true] {
                    cases += 1;
                    let m = World::named(config(&[]), "m1");
                    m.index_down.set(index_down);
                    match at {
                        At::Before => block_on(land(m.clone(), vm, stage)),
                        At::During(n) => {
                            let fleet = m.clone();
                            *m.during_send.borrow_mut() =
                                Some((n, Box::new(move || Box::pin(land(fleet, vm, stage)))));
                        }
                        At::After => {}
                    }
                    let answer = m.request(Request::Create(lab("m1", &["w1", "w2"], 60)));
                    if let At::After = at {
                        block_on(land(m.clone(), vm, stage));
                    }
                    let early: Vec<(&str, Vec<i64>)> = ["m1", "w1", "w2"]
                        .into_iter()
                        .map(|v| (v, deletions(&m, v)))
                        .filter(|(_, d)| !d.is_empty())
                        .collect();
                    let case = format!("{vm} {at:?} {stage:?} index down {index_down}");
                    match status_of(&answer) {
                        201 => {
                            assert!(early.is_empty(), "{case}: deleted early {early:?}");
                            // Run the whole fleet past the expiry: each VM deleted once, by its
                            // lab, at the expiry.
                            m.index_down.set(false);
                            let peers: Vec<Rc<World>> =
                                m.peers.borrow().values().cloned().collect();
                            for p in &peers {
                                p.index_down.set(false);
                                p.run(T0 + 3 * HOUR);
                            }
                            for v in ["m1", "w1", "w2"] {
                                assert_eq!(deletions(&m, v), vec![T0 + 60 * MINUTE], "{case}: {v}");
                            }
                        }
                        409 => {
                            // Only when the orphan's deletion had been sent, and said plainly.
                            let Refusal::Conflict(message) = refusal(answer) else {
                                unreachable!()
                            };
                            assert_eq!(stage, Stage::Deleting, "{case}: {message}");
                            assert!(
                                message.contains("its deletion has started"),
                                "{case}: {message}"
                            );
                            assert_eq!(early, vec![(vm, vec![T0])], "{case}");
                            // m1 holds nothing, or the orphan cleanup of its own VM.
                            assert!(
                                m.session().is_none_or(|s| s.origin() == Origin::Inventory),
                                "{case}"
                            );
                        }
                        other => panic!("{case}: {other} {answer:?}"),
                    }
                }
            }
        }
    }
    assert_eq!(cases, 48);
}

#[test]
fn an_adopted_legacy_lab_claims_its_workers() {
    use crate::lab::legacy::{LegacyRecord, LegacyValue};
    let m = World::named(config(&[]), "old-m");
    *m.legacy.borrow_mut() = Some(LegacyRecord {
        lab_request_id: LegacyValue::Text("old-m".into()),
        user_id: LegacyValue::Text("old-u".into()),
        worker_lab_request_ids: LegacyValue::Text(r#"["old-w1","old-w2"]"#.into()),
        duration: LegacyValue::Number(60.0),
    });
    m.alarm.set(Some(T0 + HOUR));
    // Any first request adopts it; its workers' objects then know whose VMs they are.
    assert_eq!(status_of(&m.request(Request::Status)), 200);
    for w in ["old-w1", "old-w2"] {
        let claim = Claim::decode(m.peer(w).claim.borrow().as_deref().unwrap()).unwrap();
        assert_eq!(claim.lab, "old-m");
        assert!(matches!(
            refusal(m.peer(w).request(orphan(w))),
            Refusal::Conflict(message) if message.contains("is a worker VM of lab old-m")
        ));
    }
}

#[test]
fn an_orphan_cleanup_waits_while_a_create_of_its_vm_claims_workers() {
    let m = World::named(config(&[]), "m1");
    assert_eq!(status_of(&m.request(orphan("m1"))), 201);
    // Its alarm fires while the create claims the lab's worker VMs.
    let fleet = m.clone();
    *m.during_send.borrow_mut() = Some((
        1,
        Box::new(move || {
            Box::pin(async move {
                let done = fleet.lab().alarm().await.expect("the alarm");
                assert_eq!(done.woke, crate::lab::procedures::Woke::NothingDue);
            })
        }),
    ));
    let created = m.create(lab("m1", &["w1"], 60));
    assert_eq!(created.origin(), Origin::Api);
    assert!(deletions(&m, "m1").is_empty(), "the cleanup waited");
    m.run(T0 + 2 * HOUR);
    assert_eq!(deletions(&m, "m1"), vec![T0 + 60 * MINUTE]);
}

/// Issue 36, 8: a claim is released once its lab no longer lists the VM (purged after its
/// retention): the worker's object then holds nothing. A lab still listing it keeps it (asked
/// again later); a claim another create wrote meanwhile is never deleted by the old one's check.
#[test]
fn a_claim_is_released_after_its_labs_purge_and_never_another_labs() {
    let m = World::named(config(&[("RETENTION_DAYS", "1")]), "m1");
    m.create(lab("m1", &["w1"], 60));
    let w1 = m.peer("w1");
    let check = w1.alarm.get().unwrap();
    // The lab runs its course and is purged at the end of its retention.
    m.run(T0 + 3 * 24 * HOUR);
    assert!(m.record.borrow().is_none(), "the lab was purged");
    assert!(w1.claim.borrow().is_some(), "the claim is still there");
    // The claim's check: the lab no longer lists it; released.
    w1.now.set(check);
    w1.run(check);
    assert!(w1.claim.borrow().is_none(), "released");
    assert!(w1.alarm.get().is_none());
    assert!(w1.log_has("The claim of VM w1 by lab m1 is released: the lab no longer lists it"));

    // A lab that still lists its VM at the check (its object holds it still): kept, asked
    // again later.
    let m = World::named(config(&[("RETENTION_DAYS", "1")]), "m2");
    m.create(lab("m2", &["w2"], 60));
    let w2 = m.peer("w2");
    let check = w2.alarm.get().unwrap();
    w2.now.set(check);
    w2.run(check);
    assert!(w2.claim.borrow().is_some(), "kept while its lab lists it");
    assert!(w2.alarm.get().unwrap() > check, "asked again later");

    // The old claim's check asks its lab (purged: it does not list the VM), and while it waits
    // for the answer another lab's create claims the VM: the new claim stays.
    let m = World::named(config(&[("RETENTION_DAYS", "1")]), "m3");
    m.create(lab("m3", &["w3"], 60));
    m.run(T0 + 3 * 24 * HOUR);
    let w3 = m.peer("w3");
    let check = w3.alarm.get().unwrap();
    let other = m.peer("other");
    *w3.during_send.borrow_mut() = Some((
        1,
        Box::new(move || {
            Box::pin(async move {
                other.now.set(check);
                other.invocation();
                let reply = other
                    .lab()
                    .answer(Request::Create(lab("other", &["w3"], 60)))
                    .await
                    .expect("the other create");
                assert_eq!(wire(&reply).0, 201);
            })
        }),
    ));
    w3.now.set(check);
    w3.invocation();
    block_on(w3.lab().alarm()).unwrap();
    let claim = Claim::decode(w3.claim.borrow().as_deref().expect("a claim")).unwrap();
    assert_eq!(claim.lab, "other", "the other lab's claim stays");
}
