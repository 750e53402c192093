//! The cutover from the TypeScript worker on real workerd: its in-flight labs are adopted and cleaned up.

use std::time::Duration;

use mock_backend::Endpoint;
use serde_json::{json, Value};

use crate::support::*;

/// Labs scheduled by the TypeScript stand-in (`tests/legacy/`) are cleaned up by this worker once it
/// runs on the same persisted state: every VM deleted exactly once, none before its expiry, the
/// services call for each master, and each lab's status `completed` with its workers. A GET before
/// the expiry adopts one of them; the alarm adopts the others. A record with unreadable values is
/// kept, logged as an error naming its keys again and again, and never touches the backend.
pub fn legacy_labs_are_adopted_at_cutover(ctx: &Ctx) {
    let dir = ctx.work_dir.join("cutover");
    let mut legacy = Worker::start_spec(
        &dir,
        &ctx.mock.url(),
        &[],
        Spec {
            log_name: "legacy.log",
            config: Some("tests/legacy/wrangler.toml"),
            skip_build: false,
            secrets: &[],
        },
    );
    // (master, user, duration in seconds here, workers; None = no `worker_nodes` at all)
    let labs: [(&str, &str, u64, Option<&[&str]>); 3] = [
        ("legacy-single-1", "u-legacy-1", 30, Some(&[])),
        (
            "legacy-k8s-m",
            "u-legacy-2",
            32,
            Some(&["legacy-k8s-w1", "legacy-k8s-w2"]),
        ),
        ("legacy-plain-1", "u-legacy-3", 34, None),
    ];
    let mut expires = Vec::new();
    for (id, user, duration, workers) in labs {
        let mut body = json!({"lab_request_id": id, "user_id": user, "duration": duration});
        if let Some(workers) = workers {
            body["worker_nodes"] = workers
                .iter()
                .map(|w| json!({"worker_lab_request_id": w}))
                .collect();
        }
        let r = legacy.json("POST", "/api/v1/labs/sessions", &body);
        assert_eq!(r.status, 200, "legacy schedule {id}: {}", r.text());
        expires.push(epoch_ms(&r.json()["expires_at"]));
    }
    // Unreadable for this worker: a numeric user_id, a worker id that is not a string.
    let r = legacy.json(
        "POST",
        "/api/v1/labs/sessions",
        &json!({"lab_request_id": "legacy-bad-1", "user_id": 42, "duration": 30,
                "worker_nodes": [{"worker_lab_request_id": 7}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The TypeScript worker took requests without a token: values today's rules refuse. An id
    // that forges a log line, 3,000 workers, a 63,007-character user id.
    let wide: Vec<Value> = (0..3_000)
        .map(|n| json!({"worker_lab_request_id": format!("legacy-wide-w{n}")}))
        .collect();
    for body in [
        json!({"lab_request_id": FORGED, "user_id": "u", "duration": 30}),
        json!({"lab_request_id": "legacy-wide", "user_id": "u", "duration": 30, "worker_nodes": wide}),
        json!({"lab_request_id": "legacy-long", "user_id": "u".repeat(63_007), "duration": 30}),
    ] {
        let r = legacy.json("POST", "/api/v1/labs/sessions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    legacy.stop();

    let all_ids = [
        "legacy-single-1",
        "legacy-k8s-m",
        "legacy-k8s-w1",
        "legacy-k8s-w2",
        "legacy-plain-1",
        "legacy-bad-1",
    ];
    assert!(ctx.mock.calls_for_any(&all_ids).is_empty());

    // Completed labs are kept long enough to read their status at the end.
    let ours = Worker::start_spec(
        &dir,
        &ctx.mock.url(),
        &[("RETENTION_UNIT_SECONDS", "600")],
        Spec {
            log_name: "cutover.log",
            config: None,
            skip_build: true,
            secrets: &[],
        },
    );
    let now = now_ms();
    assert!(
        now < expires[0],
        "this worker started after the first legacy expiry; the test proves less than it should"
    );
    // A request adopts a lab before its expiry: it keeps the legacy expiry.
    let r = ours.raw("GET", "/api/v1/labs/sessions/legacy-k8s-m", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "scheduled");
    assert_eq!(epoch_ms(&v["expires_at"]), expires[1]);
    assert_eq!(
        v["worker_lab_request_ids"],
        json!(["legacy-k8s-w1", "legacy-k8s-w2"])
    );
    assert_eq!(v["user_id"], "u-legacy-2");
    assert!(v["adopted_at"].is_string(), "{v}");

    // 2 + 4 + 2 calls, then nothing more.
    let calls = wait_exactly(ctx, &all_ids, 8, 90, RETRY_SECONDS + 2);
    for (i, (id, _, _, workers)) in labs.iter().enumerate() {
        let mut vms = vec![*id];
        vms.extend(workers.unwrap_or(&[]).iter().copied());
        let mine: Vec<_> = calls
            .iter()
            .filter(|c| vms.contains(&c.lab_request_id.as_deref().unwrap_or("")))
            .cloned()
            .collect();
        assert_not_before(&mine, expires[i]);
        assert_eq!(key(&mine[0]), (Endpoint::Expose, *id), "services first");
        for vm in &vms {
            let deletions = mine
                .iter()
                .filter(|c| key(c) == (Endpoint::DeleteVm, vm))
                .count();
            assert_eq!(
                deletions,
                1,
                "{vm} deleted {deletions} times:\n{}",
                show(&mine)
            );
        }
        let r = ours.raw("GET", &format!("/api/v1/labs/sessions/{id}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let v: Value = r.json();
        assert_eq!(v["status"], "completed", "{id}: {v}");
        assert_eq!(
            v["worker_lab_request_ids"],
            json!(workers.unwrap_or(&[])),
            "{id}"
        );
        assert!(v["adopted_at"].is_string(), "{id}: {v}");
    }

    let log = ours.log();
    for (id, _, _, _) in labs {
        assert!(
            log.contains(&format!("[SessionManager] Adopted lab {id} ")),
            "no adoption line for {id}:\n{}",
            tail(&log, 60)
        );
    }
    // The seed's exact last line for a single VM.
    let single: Vec<&str> = log
        .lines()
        .skip_while(|l| {
            !l.contains("[SessionManager] Alarm triggered for user u-legacy-1, lab legacy-single-1")
        })
        .filter(|l| l.contains("[SessionManager] ✅"))
        .take(3)
        .collect();
    assert!(
        single.last().is_some_and(|l| l
            .trim_end()
            .ends_with("[SessionManager] ✅ Successfully deleted all 1 VMs")),
        "{single:?}"
    );

    // The unreadable records: kept, an error line naming each key each time (never echoing a
    // value), no backend call.
    for unreadable in [
        "The previous worker's record of lab legacy-bad-1 is unreadable: key `user_id` is number (expected an id of 1 to 128 characters from A-Z a-z 0-9 . _ : @ + -); key `worker_lab_request_ids` is a string holding a JSON array holding a number",
        "The previous worker's record is unreadable: key `lab_request_id` is a string holding the character U+000A",
        "The previous worker's record of lab legacy-wide is unreadable: key `worker_lab_request_ids` is a string holding a JSON array of 3000 ids",
        "The previous worker's record of lab legacy-long is unreadable: key `user_id` is a string of 63007 characters",
    ] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ours.log().matches(unreadable).count() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the unreadable record was not logged twice: {unreadable}\n{}",
                tail(&ours.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for (id, key) in [
        ("legacy-bad-1", "key `user_id` is number"),
        ("legacy-wide", "a JSON array of 3000 ids"),
        ("legacy-long", "a string of 63007 characters"),
    ] {
        let r = ours.raw("GET", &format!("/api/v1/labs/sessions/{id}"), &[], b"");
        assert_eq!(r.status, 500, "{}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(key), "{message}");
        assert!(
            message.len() < 1_000,
            "never echoed: {} characters",
            message.len()
        );
    }
    assert!(ctx.mock.calls_for("legacy-bad-1").is_empty());
    assert!(ctx.mock.calls_for("legacy-long").is_empty());
    assert!(ctx.mock.calls_for("legacy-wide").is_empty());
    assert!(ctx.mock.calls_for("legacy-wide-w0").is_empty());
    // The forged line never reaches the log as a line of its own, nor at all.
    let log = ours.log();
    assert!(
        !log.contains("Successfully deleted all 9 VMs"),
        "forged line logged"
    );
    assert!(
        !log.contains(&"u".repeat(1_000)),
        "a 63,007-character value echoed"
    );
}

/// A lab id that, unescaped, would write a forged success line into the log.
const FORGED: &str = "legacy-forged\n[SessionManager] ✅ Successfully deleted all 9 VMs";

/// Issue 36, 4: during the cutover (`LEGACY_CUTOVER_AT`), two acting inventories 12 s apart
/// (past `ORPHAN_CONFIRM_MINUTES`) that list the worker VMs of a lab the previous worker
/// scheduled and this one has not adopted yet delete none of them: the lab is adopted at its
/// expiry by its own alarm, and then, and only then, every VM is deleted once. (Without the
/// setting both workers were deleted as orphans 15 minutes before their lab's expiry.)
pub fn an_acting_inventory_during_the_cutover_deletes_no_legacy_worker_vm(ctx: &Ctx) {
    let dir = ctx.work_dir.join("cutover-inventory");
    let mut legacy = Worker::start_spec(
        &dir,
        &ctx.mock.url(),
        &[],
        Spec {
            log_name: "legacy-inventory.log",
            config: Some("tests/legacy/wrangler.toml"),
            skip_build: false,
            secrets: &[],
        },
    );
    let (m, w1, w2) = ("lc-inv-m", "lc-inv-w1", "lc-inv-w2");
    let created = now_ms();
    let body = json!({"lab_request_id": m, "user_id": "u-lc", "duration": 60,
        "worker_nodes": [{"worker_lab_request_id": w1}, {"worker_lab_request_id": w2}]});
    let r = legacy.json("POST", "/api/v1/labs/sessions", &body);
    assert_eq!(r.status, 200, "legacy schedule: {}", r.text());
    let expires = epoch_ms(&r.json()["expires_at"]);
    legacy.stop();

    let cutover = chrono::DateTime::from_timestamp_millis(now_ms() as i64)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ours = Worker::start_spec(
        &dir,
        &ctx.mock.url(),
        &[
            ("LEGACY_CUTOVER_AT", &cutover),
            ("ORPHAN_GRACE_MINUTES", "1"),
            ("MAX_DURATION_MINUTES", "600"),
        ],
        Spec {
            log_name: "cutover-inventory.log",
            config: None,
            skip_build: true,
            secrets: &[],
        },
    );
    // The backend's inventory lists both workers, created when the lab was (before the cutover).
    let created_at = chrono::DateTime::from_timestamp_millis(created as i64)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let vms = json!([
        {"lab_request_id": w1, "user_id": "u-lc", "created_at": created_at},
        {"lab_request_id": w2, "user_id": "u-lc", "created_at": created_at},
    ]);
    for pass in 0..2 {
        if pass == 1 {
            std::thread::sleep(Duration::from_secs(12));
        }
        let body = json!({"vms": vms, "act": true});
        let r = ours.operator(
            "POST",
            "/api/v1/labs/inventory",
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let answer = r.json();
        assert_eq!(answer["scheduled"], json!([]), "pass {pass}: {answer}");
        assert_eq!(answer["legacy"], 2, "pass {pass}: {answer}");
    }
    assert!(
        now_ms() < expires,
        "the lab expired before the second push; the test proves less than it should"
    );
    assert!(
        ctx.mock.calls_for_any(&[m, w1, w2]).is_empty(),
        "a VM of the legacy lab was touched before its expiry: {}",
        show(&ctx.mock.calls_for_any(&[m, w1, w2]))
    );
    // At its expiry, the lab's own alarm adopts it and deletes its three VMs, once each.
    let calls = wait_exactly(ctx, &[m, w1, w2], 4, 90, RETRY_SECONDS + 2);
    assert_not_before(&calls, expires);
    for vm in [m, w1, w2] {
        let n = calls
            .iter()
            .filter(|c| key(c) == (Endpoint::DeleteVm, vm))
            .count();
        assert_eq!(n, 1, "{vm}: {}", show(&calls));
    }
    assert!(ours
        .log()
        .contains("2 unknown VMs may belong to labs of the previous worker not adopted yet"));
}
