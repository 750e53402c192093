//! The Free plan's limits enforced on workerd (`ENFORCE_PLAN_LIMITS`): the largest lab with both webhooks, the index and the budget on, and an inventory of 5,000 unknown VMs over Cron Trigger runs, each invocation within the plan as its own ledger line says.

use std::time::{Duration, Instant};

use mock_backend::{Endpoint, RunningVm};

use crate::support::*;

/// Every invocation line since `from` within the Free plan; how many there were of `kind`.
fn within_free(log: &str, from: usize, kind: &str) -> usize {
    let lines = invocations(&log[from..]);
    for (k, external, services, d1) in &lines {
        assert!(
            *external <= 50 && *services <= 1_000 && *d1 <= 50,
            "{k}: {external} subrequests, {services} calls to services, {d1} D1 queries"
        );
    }
    lines.iter().filter(|(k, ..)| k == kind).count()
}

/// On a worker of its own: its 5,000 orphans' objects are not the shared runtime's to carry.
pub fn free_plan_enforced_largest_lab_and_a_large_inventory(ctx: &mut Ctx) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.on_a_worker_of_its_own("free-plan", largest_lab_and_inventory)
    }));
    ctx.mock.set_page_size(0);
    ctx.mock.stop_vms_starting_with("free-inv-");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn largest_lab_and_inventory(ctx: &mut Ctx) {
    ctx.worker.restart_with(
        &[
            ("PLAN", "free"),
            ("ENFORCE_PLAN_LIMITS", "true"),
            ("BACKEND_MAX_CONCURRENCY", "10"),
            ("INVENTORY_PATH", "/api/v1/labs/inventory"),
            ("RECONCILE_ACT", "true"),
        ],
        &[],
    );
    let log_from = ctx.worker.log().len();
    // 1. The largest lab: 1 master + 48 workers, both webhooks (the warning, the completion).
    let workers: Vec<String> = (0..48).map(|w| format!("free-big-w{w:02}")).collect();
    let refs: Vec<&str> = workers.iter().map(String::as_str).collect();
    create_lab(ctx, "free-big", "free-user", WARN_BEFORE + 3, &refs);
    let done = poll_status(ctx, "free-big", 60, |v| v["status"] == "completed");
    assert_eq!(done["deleted"].as_array().unwrap().len(), 49, "{done}");
    let mut ids = refs.clone();
    ids.push("free-big");
    for id in &ids {
        let deletions = ctx
            .mock
            .calls_for(id)
            .iter()
            .filter(|c| c.endpoint == Some(Endpoint::DeleteVm) && c.status == Some(200))
            .count();
        assert_eq!(deletions, 1, "{id}");
    }
    ctx.receiver.wait("free-big", 30, |d| {
        d.iter().any(|e| e["type"] == "lab.expiring")
            && d.iter().any(|e| e["type"] == "lab.cleanup_completed")
    });
    // The alarms' ledger lines reach the log file after the calls and the deliveries they
    // made (wrangler writes the runtime's output as it comes): wait for both, the warning's and
    // the attempt's.
    let log = wait_log_until(ctx, "two alarms' ledger lines", 30, |log| {
        within_free(log, log_from, "alarm") >= 2
    });
    assert!(!log[log_from..].contains("Too many subrequests"));

    // 2. An inventory of 5,000 VMs no lab knows, long past their grace: read and confirmed
    //    over runs, then acted on at most 100 a run, each run within the plan.
    ctx.mock.set_page_size(1_000);
    for n in 0..5_000 {
        ctx.mock.run_vm(RunningVm {
            lab_request_id: format!("free-inv-{n:04}"),
            user_id: "free-user-9".into(),
            created_at: Some("2026-01-01T00:00:00Z".into()),
            sticky: false,
        });
    }
    let from = ctx.worker.log().len();
    let scheduled = |ctx: &Ctx| {
        let r = ctx.worker.cron();
        assert_eq!(r.status, 200, "{}", r.text());
    };
    scheduled(ctx);
    wait_log(ctx, "event: 'sweep'", 30);
    std::thread::sleep(Duration::from_secs(11));
    let orphans = |ctx: &Ctx| {
        // A cron run the local proxy lost is answered to the next request, this one, with its
        // `500 Cannot reconstruct a Request with a used body` (see `Worker::cron`): ask again.
        for _ in 0..3 {
            let r = ctx.worker.operator(
                "GET",
                "/api/v1/labs/sessions?origin=inventory&user_id=free-user-9&limit=1",
                b"",
            );
            if !(r.status == 500 && r.text().contains("with a used body")) {
                return r.json();
            }
        }
        panic!("the local proxy answered every list with its lost request's 500")
    };
    let started = Instant::now();
    let mut runs = 1;
    loop {
        scheduled(ctx);
        runs += 1;
        // A run every 3 s, twenty times the Cron Trigger's fastest pace: the local runtime keeps
        // each object it touched open for a while (three descriptors each), and 100 orphans'
        // objects a run at a faster pace pass its 20,000 descriptors.
        std::thread::sleep(Duration::from_secs(3));
        // The orphans the runs scheduled are the VMs no longer running.
        let left = ctx
            .mock
            .running()
            .iter()
            .filter(|v| v.lab_request_id.starts_with("free-inv-"))
            .count();
        if left == 0 {
            break;
        }
        // A guard against a run that never ends, not a speed claim: about 3 minutes on an idle
        // machine, more than 9 with both cores busy besides.
        assert!(
            started.elapsed() < Duration::from_secs(1_800),
            "{left} VMs still run after {runs} runs"
        );
    }
    let log = ctx.worker.log();
    let crons = within_free(&log, from, "cron");
    eprintln!(
        "5,000 orphans over {runs} cron runs, {crons} ledger lines, each within the Free plan"
    );
    assert!(runs >= 50, "100 actions a run at most: {runs} runs");
    assert!(!orphans(ctx)["sessions"].as_array().unwrap().is_empty());
    assert!(!log[from..].contains("Too many subrequests"));
}
