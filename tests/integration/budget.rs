//! The fleet-wide budget of backend calls on real workerd: the cap never exceeded, every VM deleted once, permits back after the work and after a restart, and a coordinator that cannot be reached never stopping a cleanup.

use std::time::Duration;

use mock_backend::Endpoint;
use serde_json::json;

use crate::support::*;

fn budget(ctx: &Ctx) -> serde_json::Value {
    let r = ctx.worker.operator("GET", "/api/v1/labs/budget", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Eight labs of three VMs expire together against a backend that takes 300 ms a call, with
/// `BACKEND_MAX_CONCURRENCY=3`: never more than 3 calls in flight at the backend, every VM deleted
/// exactly once, and every permit back once it is over (and after a restart of everything).
pub fn budget_caps_the_fleet_and_loses_no_permit(ctx: &mut Ctx) {
    ctx.worker
        .restart_with(&[("BACKEND_MAX_CONCURRENCY", "3")], &[]);
    ctx.mock.reset();
    ctx.mock.set_latency(Duration::from_millis(300));
    let labs: Vec<(String, String, String)> = (0..8)
        .map(|i| {
            (
                format!("budget-m{i}"),
                format!("budget-m{i}-w1"),
                format!("budget-m{i}-w2"),
            )
        })
        .collect();
    for (m, w1, w2) in &labs {
        create_lab(ctx, m, "budget-user", 2, &[w1, w2]);
    }
    for (m, _, _) in &labs {
        poll_status(ctx, m, 60, |v| v["status"] == "completed");
    }
    let stats = ctx.mock.stats();
    assert!(
        stats.peak_in_flight <= 3,
        "{} calls in flight at once at the backend",
        stats.peak_in_flight
    );
    assert!(stats.peak_in_flight >= 2, "the budget was used: {stats:?}");
    for (m, w1, w2) in &labs {
        let calls = ctx.mock.calls_for_any(&[m, w1, w2]);
        for vm in [m, w1, w2] {
            let n = calls
                .iter()
                .filter(|c| key(c) == (Endpoint::DeleteVm, vm.as_str()))
                .count();
            assert_eq!(n, 1, "{vm}:\n{}", show(&calls));
        }
    }
    // Every permit comes back (a release is sent after each call, in the background).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let b = budget(ctx);
        assert_eq!(b["max"], 3);
        if b["in_flight"] == 0 && b["waiting"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "permits still out: {b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A restart mid-call (every holder and the coordinator with it): nothing is held after it.
    ctx.mock.set_latency(Duration::from_millis(1_500));
    create_lab(ctx, "budget-restart", "budget-user", 1, &[]);
    std::thread::sleep(Duration::from_millis(1_800));
    ctx.worker.restart();
    ctx.mock.set_latency(Duration::ZERO);
    poll_status(ctx, "budget-restart", 30, |v| v["status"] == "completed");
    let b = budget(ctx);
    assert_eq!(b["in_flight"], 0, "{b}");
    ctx.worker
        .restart_with(&[("BACKEND_MAX_CONCURRENCY", "")], &[]);
    assert_eq!(
        budget(ctx),
        json!({"limit": null, "in_flight": 0, "waiting": 0, "max": null})
    );
}

/// `BACKEND_MAX_CONCURRENCY` set, but the coordinator cannot be reached (here: not bound): each
/// lab calls without a permit, as before, with a warning; the cleanup never waits for it.
pub fn budget_unreachable_falls_back_to_no_budget(ctx: &Ctx) {
    let dir = ctx.work_dir.join("no-budget");
    let worker = Worker::start_spec(
        &dir,
        &ctx.mock.url(),
        &[("BACKEND_MAX_CONCURRENCY", "2"), ("FLEET_INDEX", "off")],
        Spec {
            log_name: "no-budget.log",
            config: Some("tests/budget/wrangler.toml"),
            skip_build: true,
            secrets: &[],
        },
    );
    let r = worker.create(&lab("nobudget-m", "nobudget-user", 1, &["nobudget-w"]));
    assert_eq!(r.status, 201, "{}", r.text());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = worker
            .raw("GET", "/api/v1/labs/sessions/nobudget-m", &[], b"")
            .json();
        if v["status"] == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for vm in ["nobudget-m", "nobudget-w"] {
        let n = ctx
            .mock
            .calls_for(vm)
            .iter()
            .filter(|c| c.endpoint == Some(Endpoint::DeleteVm))
            .count();
        assert_eq!(n, 1, "{vm}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !worker
        .log()
        .contains("The fleet's budget of backend calls could not be reached")
    {
        assert!(std::time::Instant::now() < deadline, "no warning");
        std::thread::sleep(Duration::from_millis(200));
    }
    let warnings = worker
        .log()
        .matches("could not be reached (Binding `BACKEND_BUDGET` is undefined.)")
        .count();
    assert_eq!(warnings, 1, "one warning an attempt");
}
