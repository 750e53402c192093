//! Every invocation's ledger line on real workerd: the router's own line for each route, counting its call to a lab's object, a job's object or the budget's coordinator, beside that object's line (issue 36, 6).

use serde_json::json;

use crate::support::*;

/// The ledger lines logged since `from`, as (kind, external, services, d1).
fn lines_since(ctx: &Ctx, from: usize) -> Vec<(String, u64, u64, u64)> {
    let log = ctx.worker.log();
    invocations(&log[from.min(log.len())..])
}

/// Waits until a line of `kind` is logged since `from` (the log file lags the runtime).
fn wait_kind(ctx: &Ctx, from: usize, kind: &str) -> (String, u64, u64, u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(line) = lines_since(ctx, from).into_iter().find(|(k, ..)| k == kind) {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ledger line of kind {kind:?}: {:?}",
            lines_since(ctx, from)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs alone (it reads the log as a whole): each route logs its own line, and its call to
/// another object is counted there (`services`).
pub fn every_route_logs_its_ledger_line(ctx: &Ctx) {
    let m = "ledger-lab";
    let at = ctx.worker.log().len();
    create_lab(ctx, m, "ledger-user", 600, &[]);
    let (_, external, services, d1) = wait_kind(ctx, at, "route create");
    assert_eq!(
        (external, services, d1),
        (0, 1, 0),
        "the call to the lab's object"
    );
    // The object's own line is there too.
    wait_kind(ctx, at, "create");

    for (method, path, kind) in [
        ("GET", format!("/api/v1/labs/sessions/{m}"), "route status"),
        (
            "GET",
            format!("/api/v1/labs/sessions/{m}/events"),
            "route events",
        ),
    ] {
        let at = ctx.worker.log().len();
        let r = ctx.worker.raw(method, &path, &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let (_, _, services, _) = wait_kind(ctx, at, kind);
        assert_eq!(services, 1, "{kind}");
    }

    // The bulk routes: a dry run (the index), a real job (the index and the job's object, whose
    // own fetch logs a line), its progress (the job's object), and the budget.
    let selector = json!({"user_id": "ledger-user"});
    let at = ctx.worker.log().len();
    let dry = json!({"selector": selector, "action": "extend", "minutes": 5, "dry_run": true});
    let r = ctx
        .worker
        .operator("POST", "/api/v1/labs/bulk", dry.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, _, services, d1) = wait_kind(ctx, at, "route bulk");
    assert!(services >= 1 && d1 >= 1, "the index read: {services} {d1}");

    let at = ctx.worker.log().len();
    let real = json!({"selector": selector, "action": "extend", "minutes": 5});
    let r = ctx
        .worker
        .operator("POST", "/api/v1/labs/bulk", real.to_string().as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json()["job_id"].as_str().unwrap().to_string();
    let (_, _, services, _) = wait_kind(ctx, at, "route bulk");
    assert!(services >= 2, "the index and the job's object: {services}");
    wait_kind(ctx, at, "bulk start");

    let at = ctx.worker.log().len();
    let r = ctx
        .worker
        .operator("GET", &format!("/api/v1/labs/bulk/{job}"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, _, services, _) = wait_kind(ctx, at, "route bulk job");
    assert_eq!(services, 1);
    wait_kind(ctx, at, "bulk status");

    let at = ctx.worker.log().len();
    let r = ctx.worker.operator("GET", "/api/v1/labs/budget", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_kind(ctx, at, "route budget");
    // No token value in any ledger line.
    let log = ctx.worker.log();
    assert!(!log.contains(API_TOKEN) && !log.contains(OPERATOR_TOKEN));
}
