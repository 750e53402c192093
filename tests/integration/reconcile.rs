//! Reconciliation that never deletes a live lab's VM, on real workerd: creates racing acting inventories (pushed and pulled) hundreds of times, a backend whose inventory misbehaves, and operator bodies with typos.

use std::time::{Duration, Instant};

use mock_backend::{Endpoint, RunningVm};
use serde_json::{json, Value};

use crate::support::*;

const INVENTORY: &str = "/api/v1/labs/inventory";
/// `ORPHAN_CONFIRM_MINUTES` at its default: 10 units, 10 s in the tests.
const CONFIRM: Duration = Duration::from_secs(11);
/// How long the racing labs live: long enough to look at them, short enough to be cleaned up
/// before the suite ends.
const RACE_LAB_SECONDS: u64 = 25;

/// An RFC 3339 time two hours ago: past `ORPHAN_GRACE_MINUTES` (60 s here).
fn long_ago() -> String {
    let ms = now_ms() - 7_200_000;
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .to_rfc3339()
}

fn reported(id: &str) -> Value {
    json!({"lab_request_id": id, "user_id": "race-user", "created_at": long_ago()})
}

fn push(ctx: &Ctx, vms: &[Value]) -> Value {
    let body = json!({"vms": vms, "act": true});
    let r = ctx
        .worker
        .operator("POST", INVENTORY, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// How each race ended: the lab was created (and none of its VMs may be deleted before its
/// expiry), or refused because the orphan cleanup of one of its VMs had started (which the
/// answer must say).
#[derive(Default, Debug)]
struct Outcomes {
    created: Vec<(String, String, u64)>,
    refused: Vec<(String, String, String)>,
}

/// Creates lab `m` with worker `w` (after `delay_ms`), racing `other`; its status and body.
fn create_racing(ctx: &Ctx, m: &str, w: &str, delay_ms: u64) -> (u16, Value) {
    std::thread::sleep(Duration::from_millis(delay_ms));
    let r = ctx
        .worker
        .create(&lab(m, "race-user", RACE_LAB_SECONDS, &[w]));
    (r.status, r.json())
}

/// Checks the invariant on every race: a created lab's VMs get no deletion before its expiry;
/// a refused create says plainly that a VM's deletion had started, and it had.
fn check(ctx: &Ctx, outcomes: &Outcomes) {
    for (m, w, expires_at) in &outcomes.created {
        for vm in [m, w] {
            let early: Vec<_> = ctx
                .mock
                .calls_for(vm)
                .into_iter()
                .filter(|c| c.endpoint == Some(Endpoint::DeleteVm) && c.at_ms < *expires_at)
                .collect();
            assert!(
                early.is_empty(),
                "VM {vm} of lab {m}, created (201), deleted before its expiry: {}",
                show(&early)
            );
        }
    }
    for (m, w, message) in &outcomes.refused {
        assert!(
            message.contains("its deletion has started"),
            "lab {m} refused without saying why plainly: {message}"
        );
        let deleted = [m, w].iter().any(|vm| {
            ctx.mock
                .calls_for(vm)
                .iter()
                .any(|c| c.endpoint == Some(Endpoint::DeleteVm))
        });
        assert!(deleted, "lab {m} refused, yet none of its VMs was deleted");
    }
}

fn record(outcomes: &mut Outcomes, m: &str, w: &str, (status, body): (u16, Value)) {
    match status {
        201 => outcomes
            .created
            .push((m.into(), w.into(), epoch_ms(&body["expires_at"]))),
        409 => outcomes.refused.push((
            m.into(),
            w.into(),
            body["error"]["message"].as_str().unwrap_or("").to_string(),
        )),
        other => panic!("create of {m}: {other} {body}"),
    }
}

/// 200 creates, each racing an acting push that reports its master and worker VMs as orphans
/// that were first reported long enough ago to be confirmed: no VM of a lab answered 201 is
/// deleted early, whatever the index says (its row is written after the answer).
pub fn creates_racing_acting_pushes_never_lose_a_vm(ctx: &Ctx) {
    const N: usize = 200;
    let pairs: Vec<(String, String)> = (0..N)
        .map(|i| (format!("race-push-m{i:03}"), format!("race-push-w{i:03}")))
        .collect();
    let all: Vec<Value> = pairs
        .iter()
        .flat_map(|(m, w)| [reported(m), reported(w)])
        .collect();
    // The first report of every VM: remembered, nothing done (none is confirmed yet).
    let first = push(ctx, &all);
    assert_eq!(first["scheduled"], json!([]), "{first}");
    assert_eq!(first["unconfirmed"], json!(2 * N));
    std::thread::sleep(CONFIRM);
    let mut outcomes = Outcomes::default();
    for (batch, chunk) in pairs.chunks(10).enumerate() {
        let results: Vec<(String, String, (u16, Value))> = std::thread::scope(|scope| {
            let creates: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, (m, w))| {
                    // Creates start a little before, with, or after the push.
                    let delay = ((batch * 7 + i * 13) % 40) as u64;
                    scope.spawn(move || (m.clone(), w.clone(), create_racing(ctx, m, w, delay)))
                })
                .collect();
            let pushes: Vec<_> = chunk
                .iter()
                .map(|(m, w)| {
                    let vms = vec![reported(m), reported(w)];
                    scope.spawn(move || push(ctx, &vms))
                })
                .collect();
            for p in pushes {
                p.join().expect("push");
            }
            creates
                .into_iter()
                .map(|c| c.join().expect("create"))
                .collect()
        });
        for (m, w, answer) in results {
            record(&mut outcomes, &m, &w, answer);
        }
    }
    // The orphan cleanups the pushes scheduled run now: give them time, then look.
    std::thread::sleep(Duration::from_secs(3));
    eprintln!(
        "push races: {} created, {} refused (deletion already started)",
        outcomes.created.len(),
        outcomes.refused.len()
    );
    assert_eq!(outcomes.created.len() + outcomes.refused.len(), N);
    check(ctx, &outcomes);
    // The same inventory once more touches no VM of a created lab: they are tracked.
    let again = push(ctx, &all);
    let created: Vec<&str> = outcomes
        .created
        .iter()
        .flat_map(|(m, w, _)| [m.as_str(), w.as_str()])
        .collect();
    for s in again["scheduled"].as_array().unwrap() {
        let vm = s["lab_request_id"].as_str().unwrap();
        assert!(
            !created.contains(&vm),
            "{vm} of a created lab scheduled: {s}"
        );
    }
}

/// Pulled by the Cron Trigger: 100 creates racing scheduled runs that act; then a backend whose
/// inventory misbehaves (a cursor that leads back, a cursor it refuses, a 50 MB page) cannot
/// make a run read a page twice, stop for good, or read a page whole.
pub fn the_pull_races_no_create_and_survives_a_hostile_backend(ctx: &mut Ctx) {
    const N: usize = 100;
    // On the Paid plan a run reads several pages (a loop within a run needs two).
    ctx.worker.restart_with(
        &[
            ("INVENTORY_PATH", "/api/v1/labs/inventory"),
            ("RECONCILE_ACT", "true"),
            ("PLAN", "paid"),
        ],
        &[],
    );
    let pairs: Vec<(String, String)> = (0..N)
        .map(|i| (format!("race-pull-m{i:03}"), format!("race-pull-w{i:03}")))
        .collect();
    for (m, w) in &pairs {
        for id in [m, w] {
            ctx.mock.run_vm(RunningVm {
                lab_request_id: id.clone(),
                user_id: "race-user".into(),
                created_at: Some(long_ago()),
                sticky: false,
            });
        }
    }
    let scheduled = |ctx: &Ctx| {
        let r = ctx.worker.cron();
        assert_eq!(r.status, 200, "{}", r.text());
    };
    // The first run reports every VM for the first time: nothing is done.
    scheduled(ctx);
    std::thread::sleep(Duration::from_secs(1));
    assert!(ctx
        .mock
        .calls()
        .iter()
        .all(|c| c.endpoint != Some(Endpoint::DeleteVm)
            || !c
                .lab_request_id
                .as_deref()
                .unwrap_or("")
                .starts_with("race-pull")));
    std::thread::sleep(CONFIRM);
    let mut outcomes = Outcomes::default();
    let shared: &Ctx = ctx;
    for (batch, chunk) in pairs.chunks(10).enumerate() {
        let results: Vec<(String, String, (u16, Value))> = std::thread::scope(|scope| {
            let run = scope.spawn(move || scheduled(shared));
            let creates: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, (m, w))| {
                    let delay = ((batch * 11 + i * 17) % 300) as u64;
                    scope.spawn(move || (m.clone(), w.clone(), create_racing(shared, m, w, delay)))
                })
                .collect();
            run.join().expect("scheduled run");
            creates
                .into_iter()
                .map(|c| c.join().expect("create"))
                .collect()
        });
        for (m, w, answer) in results {
            record(&mut outcomes, &m, &w, answer);
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    eprintln!(
        "pull races: {} created, {} refused (deletion already started)",
        outcomes.created.len(),
        outcomes.refused.len()
    );
    assert_eq!(outcomes.created.len() + outcomes.refused.len(), N);
    check(ctx, &outcomes);

    // A backend whose inventory misbehaves. Runs started above may still be under way: let them
    // end, and start from the first page.
    std::thread::sleep(Duration::from_secs(5));
    let sql = ctx.work_dir.join("no-cursor.sql");
    std::fs::write(
        &sql,
        "DELETE FROM fleet_state WHERE key = 'inventory_cursor';",
    )
    .unwrap();
    ctx.worker.d1(&sql);
    let inventory_calls = |ctx: &Ctx| -> Vec<String> {
        ctx.mock
            .calls()
            .iter()
            .filter(|c| c.path.starts_with(INVENTORY))
            .map(|c| c.path.clone())
            .collect()
    };
    let page = |ids: &[&str], next: Option<&str>| -> String {
        let vms: Vec<Value> = ids.iter().map(|id| reported(id)).collect();
        json!({"vms": vms, "next_cursor": next}).to_string()
    };
    // 1. A next_cursor that leads back to its own page: each page read once in a run.
    ctx.mock.script_inventory(Some(vec![
        ("", 200, page(&["loop-a"], Some("p1"))),
        ("p1", 200, page(&["loop-b"], Some("p1"))),
    ]));
    let before = inventory_calls(ctx).len();
    scheduled(ctx);
    wait_log(ctx, "leads back to a page this run read already", 20);
    let calls = inventory_calls(ctx)[before..].to_vec();
    assert_eq!(
        calls,
        vec![INVENTORY.to_string(), format!("{INVENTORY}?cursor=p1")],
        "each page once"
    );
    // 2. A stored cursor the backend no longer accepts (400): the run starts again from the
    //    first page, and so does every later one.
    let sql = ctx.work_dir.join("expired-cursor.sql");
    std::fs::write(
        &sql,
        "INSERT OR REPLACE INTO fleet_state (key, value) VALUES ('inventory_cursor', 'expired');",
    )
    .unwrap();
    ctx.worker.d1(&sql);
    ctx.mock
        .script_inventory(Some(vec![("", 200, page(&["fresh-a"], None))]));
    let before = inventory_calls(ctx).len();
    scheduled(ctx);
    wait_log(
        ctx,
        "the backend refused the cursor \"expired\" (400); starting again from the first page",
        20,
    );
    let calls = inventory_calls(ctx)[before..].to_vec();
    assert_eq!(
        calls,
        vec![format!("{INVENTORY}?cursor=expired"), INVENTORY.to_string()]
    );
    // 3. A page of 50 MB: refused, not read beyond 512 KiB; the worker answers as before.
    let huge = format!(
        "{{\"vms\": [], \"padding\": \"{}\"}}",
        "x".repeat(50 * 1024 * 1024)
    );
    ctx.mock.script_inventory(Some(vec![("", 200, huge)]));
    let started = Instant::now();
    scheduled(ctx);
    wait_log(
        ctx,
        "a page of the backend's inventory is over 524288 bytes; it was not read further",
        30,
    );
    eprintln!(
        "the 50 MB page was refused after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let health = ctx.worker.unauthenticated("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    ctx.mock.script_inventory(None);
    // Back to the shared settings.
    ctx.worker.restart_with(
        &[
            ("INVENTORY_PATH", ""),
            ("RECONCILE_ACT", "false"),
            ("PLAN", ""),
        ],
        &[],
    );
}

/// An operator's typo changes nothing: unknown fields of operator bodies are refused naming
/// the field, a near-miss of a create's field too; labels of only white space are refused.
pub fn typos_are_refused_and_change_nothing(ctx: &Ctx) {
    let refused = |r: mock_backend::http::Response, needle: &str| {
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(needle), "{needle}: {}", r.text());
    };
    // `dryRun` for `dry_run`: the job that would have ended a whole class is not started.
    create_lab(ctx, "typo-class-1", "typo-user", 600, &[]);
    let bulk = json!({"selector": {"labels": {"class": "typo"}}, "action": "end", "dryRun": true});
    refused(
        ctx.worker
            .operator("POST", "/api/v1/labs/bulk", bulk.to_string().as_bytes()),
        r#"unknown field \"dryRun\"; did you mean dry_run?"#,
    );
    let selector =
        json!({"selector": {"label": {"class": "typo"}}, "action": "end", "dry_run": true});
    refused(
        ctx.worker
            .operator("POST", "/api/v1/labs/bulk", selector.to_string().as_bytes()),
        r#"unknown field selector.\"label\"; did you mean selector.labels?"#,
    );
    refused(
        ctx.worker.operator(
            "POST",
            INVENTORY,
            json!({"vms": [], "acts": true}).to_string().as_bytes(),
        ),
        r#"unknown field \"acts\"; did you mean act?"#,
    );
    refused(
        ctx.worker.json(
            "POST",
            "/api/v1/labs/sessions/typo-class-1/extend",
            &json!({"minutes": 5, "minuts": 5}),
        ),
        r#"unknown field \"minuts\""#,
    );
    refused(
        ctx.worker.operator(
            "POST",
            "/api/v1/labs/sessions/typo-class-1/retry",
            br#"{"now": true}"#,
        ),
        "this request takes no fields",
    );
    refused(
        ctx.worker.json(
            "POST",
            "/api/v1/labs/sessions/typo-class-1/activity",
            &json!({"at": 1}),
        ),
        "this request takes no fields",
    );
    let status = ctx
        .worker
        .raw("GET", "/api/v1/labs/sessions/typo-class-1", &[], b"")
        .json();
    assert_eq!(status["status"], "scheduled");
    assert_eq!(status["extended_minutes"].as_u64().unwrap_or(0), 0);
    // The create keeps the frontend's own fields, and refuses a near-miss of its own.
    for (body, needle) in [
        (
            json!({"lab_request_id": "typo-2", "user_id": "typo-user", "duration": 60, "idle_timeot": 5}),
            r#"\"idle_timeot\" is not a field; did you mean idle_timeout?"#,
        ),
        (
            json!({"lab_request_id": "typo-3", "user_id": "typo-user", "duration": 60, "worker_node": [{"worker_lab_request_id": "w"}]}),
            "did you mean worker_nodes?",
        ),
        (
            json!({"lab_request_id": "typo-4", "user_id": "typo-user", "duration": 60, "labels": {"class": "   "}}),
            "label class must not be only white space",
        ),
    ] {
        refused(ctx.worker.create(&body), needle);
        let id = body["lab_request_id"].as_str().unwrap();
        let r = ctx
            .worker
            .raw("GET", &format!("/api/v1/labs/sessions/{id}"), &[], b"");
        assert_eq!(r.status, 404, "{id} stored nothing");
    }
    let with_extras = json!({"lab_request_id": "typo-5", "user_id": "typo-user", "duration": 60, "course_id": "k8s-101", "template": "cka"});
    assert_eq!(ctx.worker.create(&with_extras).status, 201);
}

/// The timeline a page at a time: the pages put together are the whole timeline.
pub fn the_timeline_pages(ctx: &Ctx) {
    create_lab(ctx, "pages-lab", "pages-user", 600, &["pages-w1"]);
    let r = ctx.worker.json(
        "POST",
        "/api/v1/labs/sessions/pages-lab/extend",
        &json!({"minutes": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = ctx
        .worker
        .raw("DELETE", "/api/v1/labs/sessions/pages-lab", &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    poll_status(ctx, "pages-lab", 20, |v| v["status"] == "completed");
    let whole = lab_events(ctx, "pages-lab");
    let whole = whole["events"].as_array().unwrap().clone();
    assert!(whole.len() >= 4, "{whole:?}");
    assert_eq!(lab_events(ctx, "pages-lab")["next_cursor"], Value::Null);
    let mut paged: Vec<Value> = Vec::new();
    let mut path = "/api/v1/labs/sessions/pages-lab/events?limit=1".to_string();
    loop {
        let r = ctx.worker.raw("GET", &path, &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["events"].as_array().unwrap().len(), 1);
        paged.extend(v["events"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(next) => {
                path = format!("/api/v1/labs/sessions/pages-lab/events?limit=1&cursor={next}")
            }
            None => break,
        }
    }
    assert_eq!(paged, whole);
    for bad in [
        "limit=0",
        "limit=201",
        "cursor=abc",
        "cursor=1.2&cursor=1.2",
        "page=2",
    ] {
        let r = ctx.worker.raw(
            "GET",
            &format!("/api/v1/labs/sessions/pages-lab/events?{bad}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
}
