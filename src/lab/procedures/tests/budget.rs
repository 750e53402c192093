//! The fleet-wide budget seen from a lab: a permit before each call, a taken budget that defers (never fails) an attempt, and the backoff of a lab whose calls keep timing out.

use super::*;
use crate::lab::fleet::budget::Allocator;

fn with_budget(max: u32) -> World {
    let world = World::new(config(&[("BACKEND_MAX_CONCURRENCY", &max.to_string())]));
    *world.budget.borrow_mut() = Some(Allocator::new(max, 17_000, 15_000));
    world
}

#[test]
fn a_permit_before_each_call_and_every_vm_deleted_once() {
    let world = with_budget(2);
    world.create(lab("m", &["w1", "w2", "w3"], 1));
    world.run(T0 + 10 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    for vm in ["m", "w1", "w2", "w3"] {
        assert_eq!(world.vm_calls(vm).len(), 1, "{vm}");
    }
    assert!(world.permits_peak.get() <= 2);
    let b = world.budget.borrow();
    assert_eq!(b.as_ref().unwrap().in_flight(), 0, "every permit came back");
}

#[test]
fn each_call_says_how_many_calls_could_start_with_it() {
    let world = with_budget(20);
    let workers: Vec<String> = (1..=8).map(|i| format!("w{i}")).collect();
    let ids: Vec<&str> = workers.iter().map(String::as_str).collect();
    world.create(lab("m", &ids, 1));
    world.run(T0 + 10 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    // The services call alone, then the 9 VMs, 6 at once (`CLEANUP_CONCURRENCY`): never more
    // than could start, never more than the VMs left.
    assert_eq!(
        *world.permits_wanted.borrow(),
        vec![1, 6, 6, 6, 6, 5, 4, 3, 2, 1]
    );
}

#[test]
fn a_budget_taken_by_others_defers_the_attempt_and_never_fails_it() {
    let world = with_budget(1);
    // Leases that last an hour: the other lab's permit stays out until it returns it.
    *world.budget.borrow_mut() = Some(Allocator::new(1, 3_600_000, 15_000));
    // Another lab holds the only permit.
    let held = {
        let mut b = world.budget.borrow_mut();
        let a = b.as_mut().unwrap();
        let other = crate::lab::fleet::budget::Asker {
            lab: "other",
            failing: false,
        };
        a.request(other, 0, T0 + 3_600_000, 1);
        a.grant(T0)[0].1[0]
    };
    world.create(lab("m", &["w"], 1));
    world.run(T0 + MINUTE + 5 * SECOND);
    assert!(world.calls.borrow().is_empty(), "no call without a permit");
    let s = world.session().unwrap();
    assert_eq!(s.status(), Status::Retrying);
    let outcome = s.cleanup.last_outcome.unwrap();
    assert_eq!(outcome.failed_deletions, 0, "deferred, not failed");
    assert_eq!(outcome.not_tried, 2);
    assert!(world.log_has("The fleet's budget of backend calls is taken"));
    // The other lab's permit comes back: this lab goes on.
    world.budget.borrow_mut().as_mut().unwrap().release(
        held.id,
        crate::lab::fleet::budget::CallOutcome::Answered,
        T0,
    );
    world.run(T0 + 10 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    assert_eq!(world.vm_calls("m").len(), 1);
    assert_eq!(world.vm_calls("w").len(), 1);
}

#[test]
fn a_lab_whose_calls_keep_timing_out_waits_longer_each_time() {
    let world = with_budget(4);
    world.script("w", &[World::TIMEOUT; 6]);
    world.create(lab("m", &["w"], 1));
    world.run(T0 + 24 * 60 * MINUTE);
    assert_eq!(status(&world), Some(Status::Completed));
    let calls: Vec<i64> = world.vm_calls("w").iter().map(|c| c.at).collect();
    assert_eq!(calls.len(), 7);
    let gaps: Vec<i64> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    let retry = 300_000;
    for (i, gap) in gaps.iter().enumerate() {
        let factor = 1i64 << (i.min(3));
        assert!(
            *gap >= retry * factor && *gap <= retry * factor * 6 / 5 + 1,
            "gap {i}: {gap} ms (expected {}x the retry pause, plus jitter)",
            factor
        );
    }
    assert_eq!(world.session().unwrap().cleanup.timeout_streak, 0);
}

#[test]
fn without_a_budget_timeouts_keep_the_pause() {
    let world = World::new(config(&[]));
    world.script("w", &[World::TIMEOUT; 3]);
    world.create(lab("m", &["w"], 1));
    world.run(T0 + 24 * 60 * MINUTE);
    let calls: Vec<i64> = world.vm_calls("w").iter().map(|c| c.at).collect();
    for gap in calls.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap <= 300_000 * 6 / 5 + 1, "{gap}");
    }
}
