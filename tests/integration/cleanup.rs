//! The core flow on real workerd: scheduling, the exact backend calls at expiry, retries, logs.

use mock_backend::{Action, Endpoint, Fault};
use serde_json::{json, Value};

use crate::support::*;

fn lab(id: &str, user: &str, duration: u64, workers: &[&str]) -> Value {
    let nodes: Vec<Value> = workers
        .iter()
        .map(|w| json!({ "worker_lab_request_id": w }))
        .collect();
    json!({
        "lab_request_id": id,
        "user_id": user,
        "duration": duration,
        "vm": { "name": format!("{id}-vm") },
        "worker_nodes": nodes,
    })
}

/// Creates a lab and checks the 201 answer; returns its `expires_at` in epoch ms.
fn create_ok(ctx: &Ctx, body: &Value) -> u64 {
    let r = ctx.worker.create(body);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "scheduled");
    assert_eq!(v["lab_request_id"], body["lab_request_id"]);
    assert_eq!(v["user_id"], body["user_id"]);
    let created = epoch_ms(&v["created_at"]);
    let expires = epoch_ms(&v["expires_at"]);
    let duration_ms = body["duration"].as_u64().unwrap() * DURATION_UNIT_SECONDS * 1000;
    assert_eq!(
        expires - created,
        duration_ms,
        "expires_at = created_at + duration"
    );
    expires
}

/// The log lines of one lab's cleanup, from its "Alarm triggered" line on, without the prefix.
fn cleanup_log(ctx: &Ctx, user: &str, id: &str, lines: usize) -> Vec<String> {
    let log = ctx.worker.log();
    let start = format!("[SessionManager] Alarm triggered for user {user}, lab {id}");
    let found: Vec<String> = log
        .lines()
        .skip_while(|l| !l.contains(&start))
        .filter_map(|l| {
            l.split_once("[SessionManager] ")
                .map(|(_, m)| m.trim().to_string())
        })
        .take(lines)
        .collect();
    assert!(
        !found.is_empty(),
        "no cleanup log for {id}:\n{}",
        tail(&log, 40)
    );
    found
}

/// The seed's single-VM example: 2 calls (services, then the VM), the documented log lines.
pub fn single_vm_example(ctx: &Ctx) {
    let id = "single-vm-lab-001";
    let expires = create_ok(ctx, &lab(id, "user-123", 2, &[]));
    let calls = wait_exactly(ctx, &[id], 2, 15, RETRY_SECONDS + 1);
    assert_eq!(
        calls.iter().map(key).collect::<Vec<_>>(),
        vec![(Endpoint::Expose, id), (Endpoint::DeleteVm, id)]
    );
    assert_eq!(calls[1].user_id.as_deref(), Some("user-123"));
    assert!(
        calls[1].at_ms >= calls[0].done_ms,
        "VM deletion started before services finished"
    );
    assert_not_before(&calls, expires);
    assert_authorized(&calls);
    assert_eq!(
        cleanup_log(ctx, "user-123", id, 8),
        vec![
            format!("Alarm triggered for user user-123, lab {id}"),
            "Cleaning up single VM lab".into(),
            "Total VMs to delete: 1".into(),
            format!("Deleting exposed services for master lab {id}"),
            "✅ Exposed services deleted".into(),
            format!("Deleting master VM for lab {id}"),
            format!("✅ master VM deleted successfully ({id})"),
            "✅ Successfully deleted all 1 VMs".into(),
        ]
    );
}

/// The seed's multi-node example: services for the master only, then 3 VM deletions.
pub fn multi_node_example(ctx: &Ctx) {
    let (m, w1, w2) = (
        "k8s-master-abc-123",
        "k8s-worker-1-def-456",
        "k8s-worker-2-ghi-789",
    );
    let r = ctx.worker.create(&lab(m, "user-456", 2, &[w1, w2]));
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["lab_type"], "multi_node");
    assert_eq!(v["worker_lab_request_ids"], json!([w1, w2]));
    let expires = epoch_ms(&v["expires_at"]);

    let calls = wait_exactly(ctx, &[m, w1, w2], 4, 15, RETRY_SECONDS + 1);
    assert_eq!(key(&calls[0]), (Endpoint::Expose, m));
    let mut deletes: Vec<_> = calls[1..].iter().map(key).collect();
    deletes.sort();
    assert_eq!(
        deletes,
        vec![
            (Endpoint::DeleteVm, m),
            (Endpoint::DeleteVm, w1),
            (Endpoint::DeleteVm, w2)
        ]
    );
    for c in &calls[1..] {
        assert!(
            c.at_ms >= calls[0].done_ms,
            "a VM deletion started before services finished"
        );
        assert_eq!(c.user_id.as_deref(), Some("user-456"));
    }
    assert_not_before(&calls, expires);
    assert_authorized(&calls);

    let log = cleanup_log(ctx, "user-456", m, 13);
    assert_eq!(
        log[..6],
        [
            format!("Alarm triggered for user user-456, lab {m}"),
            "Worker nodes detected: 2 workers".into(),
            "Cleaning up multi-node Kubernetes lab".into(),
            "Total VMs to delete: 3".into(),
            format!("Deleting exposed services for master lab {m}"),
            "✅ Exposed services deleted".into(),
        ]
    );
    // Per-VM lines come in start/completion order; each must be there.
    for expected in [
        format!("Deleting master VM for lab {m}"),
        format!("✅ master VM deleted successfully ({m})"),
        format!("Deleting worker VM for lab {w1}"),
        format!("✅ worker VM deleted successfully ({w1})"),
        format!("Deleting worker VM for lab {w2}"),
        format!("✅ worker VM deleted successfully ({w2})"),
    ] {
        assert!(
            log[6..12].contains(&expected),
            "missing {expected:?} in {log:#?}"
        );
    }
    assert_eq!(log[12], "✅ Successfully deleted all 3 VMs");
}

/// `worker_nodes` missing, `null` and `[]` all behave as a single-VM lab.
pub fn worker_nodes_missing_null_or_empty(ctx: &Ctx) {
    let bodies = [
        (
            "compat-missing",
            json!({"lab_request_id": "compat-missing", "user_id": "u-1", "duration": 2}),
        ),
        (
            "compat-null",
            json!({"lab_request_id": "compat-null", "user_id": "u-1", "duration": 2, "worker_nodes": null}),
        ),
        (
            "compat-empty",
            json!({"lab_request_id": "compat-empty", "user_id": "u-1", "duration": 2, "worker_nodes": [], "vm": {"name": "ubuntu"}}),
        ),
    ];
    let mut expiries = Vec::new();
    for (id, body) in &bodies {
        let r = ctx.worker.create(body);
        assert_eq!(r.status, 201, "{id}: {}", r.text());
        let v = r.json();
        assert_eq!(v["lab_type"], "single_vm", "{id}");
        assert_eq!(v["worker_lab_request_ids"], json!([]), "{id}");
        expiries.push(epoch_ms(&v["expires_at"]));
    }
    for ((id, _), expires) in bodies.iter().zip(expiries) {
        let calls = wait_exactly(ctx, &[id], 2, 15, 0);
        assert_eq!(
            calls.iter().map(key).collect::<Vec<_>>(),
            vec![(Endpoint::Expose, *id), (Endpoint::DeleteVm, *id)]
        );
        assert_not_before(&calls, expires);
    }
    std::thread::sleep(std::time::Duration::from_secs(RETRY_SECONDS + 1));
    assert_eq!(
        ctx.mock.calls_for_any(&bodies.map(|(id, _)| id)).len(),
        6,
        "no call after completion"
    );
}

/// A worker failing twice then succeeding: only it is retried, each retry after the pause.
pub fn failing_worker_is_retried_alone(ctx: &Ctx) {
    let (m, w1, w2) = ("retry-master", "retry-worker-1", "retry-worker-2");
    ctx.mock
        .add_fault(Fault::on(w1, Endpoint::DeleteVm, Action::Status { status: 500 }).times(2));
    let expires = create_ok(ctx, &lab(m, "user-r", 2, &[w1, w2]));
    // 1st attempt: 4 calls; 2nd and 3rd: only w1.
    let calls = wait_exactly(ctx, &[m, w1, w2], 6, 30, RETRY_SECONDS + 1);
    assert_not_before(&calls, expires);
    let count = |ep: Endpoint, id: &str| calls.iter().filter(|c| key(c) == (ep, id)).count();
    assert_eq!(
        count(Endpoint::Expose, m),
        1,
        "services only while the master is undeleted"
    );
    assert_eq!(count(Endpoint::DeleteVm, m), 1);
    assert_eq!(count(Endpoint::DeleteVm, w2), 1);
    let w1_calls: Vec<_> = calls
        .iter()
        .filter(|c| key(c) == (Endpoint::DeleteVm, w1))
        .collect();
    assert_eq!(
        w1_calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![Some(500), Some(500), Some(200)]
    );
    for pair in w1_calls.windows(2) {
        let gap = pair[1].at_ms - pair[0].done_ms;
        // The pause is CLEANUP_RETRY_SECONDS ± 20 % (jitter, docs/AUTOMATIC_CLEANUP.md), and
        // workerd's clock is coarse inside a request: allow a little slack below the shortest.
        assert!(
            gap + 250 >= RETRY_SECONDS * 1000 * 8 / 10,
            "retry came {gap} ms after the failure"
        );
    }
    let log = ctx.worker.log();
    assert!(
        log.contains(&format!(
            "❌ Failed to delete worker VM {w1} (attempt 1): backend answered 500"
        )),
        "{}",
        tail(&log, 40)
    );
    assert!(log.contains(&format!("⚠️ 1 of 3 VMs not deleted after attempt 2 ({w1})")));
    assert!(log.contains(&format!("🔁 Retry scheduled for lab {m}: attempt 3 at ")));
    assert!(log.contains("Attempt 3: 1 of 3 VMs still to delete"));
}

/// A services failure is logged and never by itself causes a retry.
pub fn services_failure_alone_causes_no_retry(ctx: &Ctx) {
    let (m, w) = ("svc-fail-master", "svc-fail-worker");
    ctx.mock.add_fault(Fault::on(
        m,
        Endpoint::Expose,
        Action::Status { status: 500 },
    ));
    let expires = create_ok(ctx, &lab(m, "user-s", 2, &[w]));
    let calls = wait_exactly(ctx, &[m, w], 3, 15, RETRY_SECONDS + 2);
    assert_eq!(key(&calls[0]), (Endpoint::Expose, m));
    assert_eq!(calls[0].status, Some(500));
    assert!(calls[1..].iter().all(|c| c.status == Some(200)));
    assert_not_before(&calls, expires);
    let log = ctx.worker.log();
    assert!(log.contains(&format!(
        "⚠️ Could not delete exposed services for master lab {m}: backend answered 500"
    )));
}

/// A 404 from the VM deletion means already gone: counted as deleted, not retried.
pub fn not_found_counts_as_deleted(ctx: &Ctx) {
    let (m, w) = ("gone-master", "gone-worker");
    ctx.mock.add_fault(Fault::on(
        w,
        Endpoint::DeleteVm,
        Action::Status { status: 404 },
    ));
    create_ok(ctx, &lab(m, "user-g", 2, &[w]));
    // The status lists the 404 apart from the deletions.
    let v = poll_status(ctx, m, 15, |v| v["status"] == "completed");
    assert_eq!(v["deleted"], json!([m]));
    assert_eq!(v["already_gone"], json!([w]));
    assert_eq!(v["pending"], json!([]));
    let calls = wait_exactly(ctx, &[m, w], 3, 15, RETRY_SECONDS + 2);
    assert!(calls
        .iter()
        .any(|c| key(c) == (Endpoint::DeleteVm, w) && c.status == Some(404)));
    let log = ctx.worker.log();
    assert!(log.contains(&format!(
        "✅ worker VM already deleted, backend answered 404 ({w})"
    )));
    // Not every call answered 404: no misconfiguration error for this lab.
    assert!(!log.contains(&format!("Every backend call for lab {m} answered 404")));
}

/// A backend that answers 404 to everything (e.g. `BACKEND_URL` with a wrong base path): the VMs
/// count as already gone, and an error line says the backend may be misconfigured.
pub fn all_404_is_flagged_as_a_possible_misconfiguration(ctx: &Ctx) {
    let (m, w) = ("all404-master", "all404-worker");
    for id in [m, w] {
        ctx.mock.add_fault(Fault {
            lab_request_id: id.into(),
            endpoint: None,
            action: Action::Status { status: 404 },
            times: None,
        });
    }
    create_ok(ctx, &lab(m, "user-404", 2, &[w]));
    let v = poll_status(ctx, m, 15, |v| v["status"] == "completed");
    assert_eq!(v["deleted"], json!([]));
    let mut gone: Vec<String> = serde_json::from_value(v["already_gone"].clone()).unwrap();
    gone.sort();
    assert_eq!(gone, vec![m.to_string(), w.to_string()]);
    wait_log(
        ctx,
        &format!(
            "❌ Every backend call for lab {m} answered 404 (the services call and all 2 VMs)"
        ),
        5,
    );
    assert!(ctx
        .worker
        .log()
        .lines()
        .any(|l| l.contains("[ERROR]") && l.contains(&format!("Every backend call for lab {m}"))));
}

/// A 3xx is an answer, not a success: the redirect is not followed, the VM counts as failed and is
/// retried (a redirect to a page that answers 200 must never count as deleted).
pub fn redirects_are_not_followed_and_count_as_failed(ctx: &Ctx) {
    let (m, w) = ("redirect-master", "redirect-worker");
    for status in [302, 307] {
        ctx.mock.add_fault(
            Fault::on(
                w,
                Endpoint::DeleteVm,
                Action::Redirect {
                    status,
                    location: mock_backend::LANDING_PATH.into(),
                },
            )
            .times(1),
        );
    }
    create_ok(ctx, &lab(m, "user-r", 2, &[w]));
    let v = poll_status(ctx, m, 15, |v| v["attempts"].as_u64() >= Some(2));
    assert!(
        v["last_outcome"]["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("backend answered 30")),
        "{v}"
    );
    poll_status(ctx, m, 20, |v| v["status"] == "completed");
    let calls = wait_exactly(ctx, &[m, w], 5, 20, RETRY_SECONDS + 1);
    let statuses: Vec<_> = calls
        .iter()
        .filter(|c| key(c) == (Endpoint::DeleteVm, w))
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, vec![Some(302), Some(307), Some(200)]);
    assert!(
        ctx.mock
            .calls()
            .iter()
            .all(|c| c.path != mock_backend::LANDING_PATH),
        "a redirect was followed"
    );
}

/// Several VM failures at once (500, 503, 429, timeout, reset): each retried until deleted,
/// each deleted exactly once with a success answer.
pub fn mixed_faults_all_end_deleted(ctx: &Ctx) {
    let m = "mixed-master";
    let workers = [
        "mixed-500",
        "mixed-503",
        "mixed-429",
        "mixed-hang",
        "mixed-reset",
        "mixed-slow",
    ];
    let actions = [
        Action::Status { status: 500 },
        Action::Status { status: 503 },
        Action::Status { status: 429 },
        Action::Hang {
            ms: (BACKEND_TIMEOUT_SECONDS + 2) * 1000,
        },
        Action::Reset,
        Action::Delay { ms: 800 },
    ];
    for (w, action) in workers.iter().zip(actions) {
        ctx.mock
            .add_fault(Fault::on(w, Endpoint::DeleteVm, action).times(1));
    }
    let expires = create_ok(ctx, &lab(m, "user-x", 2, &workers));
    let mut ids = vec![m];
    ids.extend(workers);
    // Attempt 1: services + 7 VMs (5 fail); attempt 2: the 5 failed ones.
    let calls = wait_exactly(ctx, &ids, 1 + 7 + 5, 40, RETRY_SECONDS + 1);
    assert_not_before(&calls, expires);
    for id in &ids {
        let successes = calls
            .iter()
            .filter(|c| key(c) == (Endpoint::DeleteVm, id) && c.status == Some(200))
            .count();
        assert_eq!(
            successes,
            1,
            "{id} deleted with success exactly once:\n{}",
            show(&calls)
        );
    }
    let log = ctx.worker.log();
    assert!(log.contains(
        "❌ Failed to delete worker VM mixed-hang (attempt 1): no answer within 2 s (timed out)"
    ));
    assert!(
        log.contains("❌ Failed to delete worker VM mixed-429 (attempt 1): backend answered 429")
    );
    assert!(
        log.contains("❌ Failed to delete worker VM mixed-reset (attempt 1): network error: answer 200 cut short"),
        "{}",
        tail(&log, 60)
    );
}

/// The whole `wrangler dev` process group is killed while a lab waits for its retry; started
/// again on the same persisted state, the cleanup resumes and completes.
pub fn restart_resumes_a_pending_retry(ctx: &mut Ctx) {
    let (m, w) = ("restart-master", "restart-worker");
    ctx.mock
        .add_fault(Fault::on(w, Endpoint::DeleteVm, Action::Status { status: 503 }).times(1));
    create_ok(ctx, &lab(m, "user-restart", 2, &[w]));
    // First attempt: services, master deleted, worker failed; then its outcome is stored
    // (the retry line is logged right before the write) and the lab waits for its retry.
    wait_calls(ctx, &[m, w], 15, |c| {
        c.len() == 3 && c.iter().all(|c| c.done_ms > 0)
    });
    wait_log(
        ctx,
        &format!("🔁 Retry scheduled for lab {m}: attempt 2"),
        10,
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    ctx.worker.restart();
    let calls = wait_exactly(ctx, &[m, w], 4, 60, RETRY_SECONDS + 1);
    let last = &calls[3];
    assert_eq!(key(last), (Endpoint::DeleteVm, w));
    assert_eq!(last.status, Some(200));
    assert_eq!(
        calls
            .iter()
            .filter(|c| key(c) == (Endpoint::DeleteVm, m))
            .count(),
        1,
        "the master is not deleted again after the restart"
    );
}

/// The backend's word on when to come back is honored: a `429` with `Retry-After: 1` is retried
/// about 1 s later, not `CLEANUP_RETRY_SECONDS` (30 s here) later; and a refused services call
/// (`503`, `Retry-After: 1`) defers every VM deletion of the lab to the next attempt, which repeats
/// the services call first.
pub fn retry_after_is_honored_and_overload_defers(ctx: &mut Ctx) {
    ctx.worker
        .restart_with(&[("CLEANUP_RETRY_SECONDS", "30")], &[]);

    let (m, w) = ("ra-master", "ra-worker");
    ctx.mock.add_fault(
        Fault::on(
            w,
            Endpoint::DeleteVm,
            Action::Refuse {
                status: 429,
                retry_after: Some("1".into()),
            },
        )
        .times(1),
    );
    let (sm, s1, s2) = ("ov-master", "ov-worker-1", "ov-worker-2");
    ctx.mock.add_fault(
        Fault::on(
            sm,
            Endpoint::Expose,
            Action::Refuse {
                status: 503,
                retry_after: Some("1".into()),
            },
        )
        .times(1),
    );
    create_ok(ctx, &lab(m, "user-ra", 1, &[w]));
    create_ok(ctx, &lab(sm, "user-ov", 1, &[s1, s2]));

    let calls = wait_exactly(ctx, &[m, w], 4, 20, 2);
    let mine: Vec<_> = calls.iter().filter(|c| key(c).1 == w).collect();
    assert_eq!(mine.len(), 2, "{}", show(&calls));
    assert_eq!(mine[0].status, Some(429));
    assert_eq!(mine[1].status, Some(200));
    let waited = mine[1].at_ms - mine[0].done_ms;
    assert!(
        (1_000..5_000).contains(&waited),
        "retried {waited} ms after the 429 with Retry-After: 1 (CLEANUP_RETRY_SECONDS is 30 s)"
    );

    let calls = wait_exactly(ctx, &[sm, s1, s2], 5, 20, 2);
    assert_eq!(key(&calls[0]), (Endpoint::Expose, sm));
    assert_eq!(calls[0].status, Some(503));
    assert_eq!(
        key(&calls[1]),
        (Endpoint::Expose, sm),
        "no VM deletion after the refused services call; the next attempt repeats it first:\n{}",
        show(&calls)
    );
    assert!(
        calls[1].at_ms >= calls[0].done_ms + 1_000,
        "{}",
        show(&calls)
    );
    assert!(calls[2..]
        .iter()
        .all(|c| key(c).0 == Endpoint::DeleteVm && c.status == Some(200)));
    let log = ctx.worker.log();
    assert!(log.contains(
        "(the backend is overloaded: no VM deletion in this attempt; the services call is retried with the VMs)"
    ));
    assert!(log.contains("the backend asked for 1 s)"));

    ctx.worker.restart_with(
        &[("CLEANUP_RETRY_SECONDS", &RETRY_SECONDS.to_string())],
        &[],
    );
}
