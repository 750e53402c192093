//! A lab's invocations within the plan's limits, by construction: the worst cases on the Free and Paid plans with every limit enforced as the platform enforces it, and attempts cut short that repeat nothing they saved.

use super::*;
use crate::lab::invocation::plan::{FREE, PAID, WALL_MS};

/// The Free (or Paid) plan, enforced, with the webhooks, the index and the fleet's budget on.
fn enforced(plan: &str, extra: &[(&str, &str)]) -> World {
    let mut pairs = vec![
        ("PLAN", plan),
        ("ENFORCE_PLAN_LIMITS", "true"),
        ("BACKEND_MAX_CONCURRENCY", "10"),
        ("MAX_WORKER_NODES", "48"),
    ];
    pairs.extend_from_slice(extra);
    let world = World::new(config(&pairs));
    *world.budget.borrow_mut() = Some(crate::lab::fleet::budget::Allocator::new(
        10, 17_000, 15_000,
    ));
    world
}

fn workers(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("w{i:02}")).collect()
}

/// Every invocation so far stayed within `limits`, and within what `invocation::worst` computes
/// for the kinds the test ran (`kinds`, by `worst::all`'s names).
fn within(world: &World, limits: crate::lab::invocation::Limits, kinds: &[&str], case: &str) {
    assert_eq!(
        world.exceeded.get(),
        0,
        "{case}: a call past the plan's limit"
    );
    let peak = world.peak();
    assert!(peak.external <= limits.external, "{case}: {peak:?}");
    assert!(peak.services <= limits.services, "{case}: {peak:?}");
    assert!(peak.d1 <= limits.d1_queries, "{case}: {peak:?}");
    // What the code made stays within what `invocation::worst` computes for these settings
    // (the largest of the kinds run, per meter): a call the computation forgets fails here.
    let worst: Vec<_> = crate::lab::invocation::worst::all(&world.config)
        .into_iter()
        .filter(|(kind, _)| kinds.contains(kind))
        .collect();
    assert_eq!(worst.len(), kinds.len(), "{case}: kinds {kinds:?}");
    let most = |of: fn(&crate::lab::invocation::worst::Worst) -> u64| {
        worst.iter().map(|(_, w)| of(w)).max().unwrap_or(0)
    };
    assert!(
        peak.external <= most(|w| w.external),
        "{case}: {peak:?} {worst:?}"
    );
    assert!(
        peak.services <= most(|w| w.services),
        "{case}: {peak:?} {worst:?}"
    );
    assert!(peak.d1 <= most(|w| w.d1), "{case}: {peak:?} {worst:?}");
}

#[test]
fn the_largest_lab_stays_within_each_plan_clean_or_failing() {
    for (plan, limits) in [("free", FREE), ("paid", PAID)] {
        for failing in [false, true] {
            let case = format!("{plan}, failing {failing}");
            let world = enforced(plan, &[]);
            let ids = workers(48);
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            world.create(lab("m", &refs, 30));
            if failing {
                // Every VM fails three attempts (and its reconnects), then goes.
                for id in std::iter::once("m").chain(refs.iter().copied()) {
                    world.script(id, &[500, 500, 500]);
                }
            }
            world.run(T0 + 6 * 60 * MINUTE);
            let s = world.session().expect("kept for its retention");
            assert_eq!(s.status(), Status::Completed, "{case}");
            for id in std::iter::once("m").chain(refs.iter().copied()) {
                let deletions = world
                    .vm_calls(id)
                    .iter()
                    .filter(|c| (200..300).contains(&c.status))
                    .count();
                assert_eq!(deletions, 1, "{case}: {id}");
            }
            // Both webhooks arrive (a warning, the completion), each once.
            let mut types = world.delivered_types();
            types.sort();
            types.dedup();
            assert!(
                types.contains(&"lab.expiring".to_string())
                    && types.contains(&"lab.cleanup_completed".to_string()),
                "{case}: {types:?}"
            );
            // The completion goes out at once, from an invocation of its own where the
            // attempt's used up its subrequests, not at the end of its hold.
            let completed_at = s.cleanup.completed_at_ms.expect("completed");
            let sent_at = world
                .deliveries
                .borrow()
                .iter()
                .find(|d| d.body.contains("\"lab.cleanup_completed\""))
                .map(|d| d.timestamp * 1000)
                .expect("the completion");
            assert!(
                sent_at - completed_at <= 5_000,
                "{case}: sent {} ms after the completion",
                sent_at - completed_at
            );
            within(&world, limits, LAB, &case);
        }
    }
}

/// What a lab's life runs: its create, its alarms, its changes and reads.
const LAB: &[&str] = &["create", "change", "read", "alarm"];

#[test]
fn an_attempt_past_its_deadline_starts_no_call_and_the_next_goes_on() {
    // The longest backend timeout: every call hangs for all of it; an attempt may start calls
    // for 270 s only, so that each ends within the alarm's 15 minutes.
    let world = enforced("free", &[("BACKEND_TIMEOUT_SECONDS", "600")]);
    assert_eq!(world.config.attempt_deadline_seconds, 270);
    world.timeout_ms.set(600_000);
    let ids = workers(5);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    world.create(lab("m", &refs, 1));
    for id in std::iter::once("m").chain(refs.iter().copied()) {
        world.script(id, &[World::TIMEOUT; 3]);
    }
    // Each alarm: its calls start within the deadline and end within the wall time.
    let mut last = 0;
    for _ in 0..200 {
        let Some(at) = world.alarm.get() else { break };
        world.run(at);
        let calls = world.calls.borrow();
        for call in calls[last..].iter().filter(|c| c.status == World::TIMEOUT) {
            let started = call.at - 600_000;
            assert!(
                started < world.ledger.borrow().started_ms() + 270_000 + 1,
                "a call started past the deadline"
            );
        }
        last = calls.len();
        drop(calls);
        let wall = world.now.get() - world.ledger.borrow().started_ms();
        assert!(wall <= WALL_MS, "an alarm of {wall} ms");
        if world.session().map(|s| s.status()) == Some(Status::Completed) {
            break;
        }
    }
    let s = world.session().unwrap();
    assert_eq!(s.status(), Status::Completed);
    assert!(world.log_has("reached the invocation's limits"));
    within(&world, FREE, LAB, "timeouts");
}

#[test]
fn an_attempt_cut_short_repeats_no_deletion_it_had_saved() {
    // A slow backend (2 s a call): an attempt of 49 VMs saves what it deleted every 3 s.
    let config = config(&[("MAX_WORKER_NODES", "48")]);
    let clean = World::new(config.clone());
    let ids = workers(48);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    clean.call_ms.set(2_000);
    clean.create(lab("m", &refs, 1));
    let after_create = clean.ops.get();
    clean.run(T0 + 30 * 86_400_000);
    let total = clean.ops.get();
    assert!(
        total > after_create + 10,
        "progress saves during the attempt: {total}"
    );
    let mut worst = 0;
    for step in after_create + 1..=total {
        for mode in [Crash::Before, Crash::After] {
            let world = World::new(config.clone());
            world.call_ms.set(2_000);
            world.create(lab("m", &refs, 1));
            world.crash_at.set(Some((step, mode)));
            world.run(T0 + 30 * 86_400_000);
            // Every VM deleted; one repeated only if its deletion had not been saved yet:
            // at most the calls of one save interval (3 s, 2 s a call) and the one under way.
            let mut repeated = 0;
            for id in std::iter::once("m").chain(refs.iter().copied()) {
                let calls = world.vm_calls(id).len();
                assert!(calls >= 1, "{id} never deleted ({mode:?} {step})");
                repeated += calls - 1;
            }
            assert!(repeated <= 3, "{repeated} repeated ({mode:?} op {step})");
            worst = worst.max(repeated);
        }
    }
    assert!(
        worst >= 1,
        "some crash falls between a deletion and its save"
    );
}

#[test]
fn the_largest_lab_stops_resumes_and_deletes_within_each_plan() {
    let stage = [
        ("STOP_PATH", "/api/v1/labs/stop"),
        ("START_PATH", "/api/v1/labs/start"),
        ("KEEP_STOPPED_MINUTES", "60"),
    ];
    for (plan, limits) in [("free", FREE), ("paid", PAID)] {
        for failing in [false, true] {
            let case = format!("{plan}, stops failing {failing}");
            let world = enforced(plan, &stage);
            let ids = workers(48);
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            world.create(lab("m", &refs, 30));
            if failing {
                // Every VM's stop fails until the stage gives up: deleted as without it.
                for id in std::iter::once("m").chain(refs.iter().copied()) {
                    world
                        .power_scripts
                        .borrow_mut()
                        .insert(id.into(), [500, 500, 500].into_iter().collect());
                }
            } else {
                world.run(T0 + 40 * MINUTE);
                assert_eq!(status(&world), Some(Status::Stopped), "{case}");
                // A resume starts all 49 VMs in one request, within the plan.
                world.now.set(T0 + 45 * MINUTE);
                let reply = world.request(Request::Resume {
                    minutes: 30,
                    by: crate::lab::session::By::Api,
                    job: None,
                });
                assert!(
                    matches!(reply, Ok(Reply::Lab { status: 200, .. })),
                    "{case}: {reply:?}"
                );
                let with_resume = [LAB, &["resume"]].concat();
                within(&world, limits, &with_resume, &format!("{case}, resume"));
            }
            world.run(T0 + 12 * 60 * MINUTE);
            let s = world.session().expect("kept for its retention");
            assert_eq!(s.status(), Status::Completed, "{case}");
            assert_eq!(world.deleted().len(), 49, "{case}");
            let with_resume = [LAB, &["resume"]].concat();
            within(&world, limits, &with_resume, &case);
        }
    }
}
