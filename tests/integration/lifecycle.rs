//! Session lifecycle on real workerd: status, end now, extend, idempotent create, retention, races.

use std::thread;
use std::time::{Duration, Instant};

use mock_backend::{Action, Endpoint, Fault};
use serde_json::{json, Value};

use crate::support::*;

fn path(id: &str) -> String {
    format!("/api/v1/labs/sessions/{id}")
}

fn get(ctx: &Ctx, id: &str) -> mock_backend::http::Response {
    ctx.worker.raw("GET", &path(id), &[], b"")
}

fn extend(ctx: &Ctx, id: &str, minutes: Value) -> mock_backend::http::Response {
    ctx.worker.json(
        "POST",
        &format!("{}/extend", path(id)),
        &json!({ "minutes": minutes }),
    )
}

fn create(ctx: &Ctx, id: &str, duration: u64, workers: &[&str]) -> Value {
    create_lab(ctx, id, "user-l", duration, workers)
}

fn poll(ctx: &Ctx, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    poll_status(ctx, id, secs, done)
}

/// scheduled -> retrying -> completed, with the right counts at each step.
pub fn status_follows_scheduled_retrying_completed(ctx: &Ctx) {
    let (m, w) = ("status-master", "status-worker");
    ctx.mock
        .add_fault(Fault::on(w, Endpoint::DeleteVm, Action::Status { status: 500 }).times(1));
    create(ctx, m, 3, &[w]);
    let v = get(ctx, m).json();
    assert_eq!(v["status"], "scheduled");
    assert_eq!(v["attempts"], 0);
    assert_eq!(v["pending"], json!([m, w]));
    assert_eq!(v["deleted"], json!([]));
    assert_eq!(v["last_outcome"], Value::Null);
    assert_eq!(v["next_attempt_at"], Value::Null);

    let v = poll(ctx, m, 15, |v| v["status"] == "retrying");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["deleted"], json!([m]));
    assert_eq!(v["pending"], json!([w]));
    assert_eq!(v["last_outcome"]["successful_deletions"], 1);
    assert_eq!(v["last_outcome"]["failed_deletions"], 1);
    assert_eq!(v["last_outcome"]["errors"][0]["lab_request_id"], w);
    assert!(v["last_outcome"]["errors"][0]["error"]
        .as_str()
        .unwrap()
        .starts_with("backend answered 500"));
    assert!(epoch_ms(&v["next_attempt_at"]) > epoch_ms(&v["expires_at"]));

    let v = poll(ctx, m, 15, |v| v["status"] == "completed");
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["deleted"], json!([m, w]));
    assert_eq!(v["pending"], json!([]));
    assert_eq!(v["next_attempt_at"], Value::Null);
    assert_eq!(
        v["last_outcome"],
        json!({"successful_deletions": 1, "failed_deletions": 0, "errors": [], "not_tried": 0})
    );
    assert!(epoch_ms(&v["completed_at"]) >= epoch_ms(&v["expires_at"]));
}

/// DELETE before expiry starts the cleanup at once; on a completed lab it makes no call.
pub fn end_now_cleans_up_at_once(ctx: &Ctx) {
    let (m, w) = ("end-now-master", "end-now-worker");
    create(ctx, m, 600, &[w]);
    let asked = Instant::now();
    let r = ctx.worker.raw("DELETE", &path(m), &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["status"], "cleaning_up");
    let calls = wait_calls(ctx, &[m, w], 10, |c| {
        c.len() == 3 && c.iter().all(|c| c.done_ms > 0)
    });
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "cleanup did not start at once"
    );
    assert_eq!(key(&calls[0]), (Endpoint::Expose, m));
    let v = poll(ctx, m, 10, |v| v["status"] == "completed");
    assert!(epoch_ms(&v["expires_at"]) <= epoch_ms(&v["completed_at"]));

    let again = ctx.worker.raw("DELETE", &path(m), &[], b"");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["status"], "completed");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        ctx.mock.calls_for_any(&[m, w]).len(),
        3,
        "no call for a completed lab"
    );
    assert_eq!(
        ctx.worker
            .raw("DELETE", &path("end-now-unknown"), &[], b"")
            .status,
        404
    );
}

/// Extending moves the cleanup to the new expiry, not the old one.
pub fn extend_moves_the_expiry(ctx: &Ctx) {
    let id = "extend-lab";
    let created = create(ctx, id, 3, &[]);
    let old = epoch_ms(&created["expires_at"]);
    let r = extend(ctx, id, json!(4));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let new = epoch_ms(&v["expires_at"]);
    assert_eq!(new - old, 4 * DURATION_UNIT_SECONDS * 1000);
    assert_eq!(v["status"], "scheduled");
    let calls = wait_exactly(ctx, &[id], 2, 20, 1);
    assert_not_before(&calls, new);
}

/// Extend is refused once the cleanup started (409), beyond the lifetime cap (400), with a bad
/// body (400), and for an unknown lab (404).
pub fn extend_is_refused_when_it_must_be(ctx: &Ctx) {
    let (m, w) = ("extend-late-master", "extend-late-worker");
    ctx.mock
        .add_fault(Fault::on(w, Endpoint::DeleteVm, Action::Status { status: 503 }).times(1));
    create(ctx, m, 1, &[w]);
    poll(ctx, m, 15, |v| v["status"] != "scheduled");
    let r = extend(ctx, m, json!(5));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "conflict");

    let long = "extend-cap-lab";
    create(ctx, long, 10_000, &[]);
    let r = extend(ctx, long, json!(81));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum is 10080"));
    assert_eq!(extend(ctx, long, json!(80)).status, 200);
    for bad in [json!(0), json!(1.5), json!("5"), Value::Null] {
        let r = extend(ctx, long, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(extend(ctx, "extend-unknown", json!(5)).status, 404);
    // The refused requests changed nothing.
    let v = get(ctx, long).json();
    assert_eq!(v["status"], "scheduled");
    assert_eq!(
        epoch_ms(&v["expires_at"]) - epoch_ms(&v["created_at"]),
        10_080 * DURATION_UNIT_SECONDS * 1000
    );
    ctx.worker.raw("DELETE", &path(long), &[], b"");
}

/// GET of an unknown id is a 404 and creates nothing; a bad id in the path is a 400.
pub fn get_unknown_creates_nothing(ctx: &Ctx) {
    let id = "never-created-lab";
    let r = get(ctx, id);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "not_found");
    assert_eq!(get(ctx, id).status, 404, "still unknown after asking");
    // Creating it afterwards is a fresh create (201), so asking stored nothing.
    create(ctx, id, 600, &[]);
    let r = get(ctx, "bad%20id");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "invalid_request");
    ctx.worker.raw("DELETE", &path(id), &[], b"");
}

/// A completed session is kept for the retention period, then forgotten (404, id reusable).
pub fn retention_forgets_completed_sessions(ctx: &Ctx) {
    let id = "retention-lab";
    create(ctx, id, 1, &[]);
    let v = poll(ctx, id, 15, |v| v["status"] == "completed");
    let completed = epoch_ms(&v["completed_at"]);
    let retention_ms = RETENTION_DAYS * RETENTION_UNIT_SECONDS * 1000;
    let deadline = Instant::now() + Duration::from_millis(retention_ms + 10_000);
    loop {
        let r = get(ctx, id);
        if r.status == 404 {
            break;
        }
        assert_eq!(r.json()["status"], "completed");
        assert!(
            Instant::now() < deadline,
            "record still there long after retention"
        );
        thread::sleep(Duration::from_millis(250));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now >= completed + retention_ms,
        "forgotten before the retention ended"
    );
    wait_log(ctx, &format!("Retention over for lab {id}"), 5);
    // The id is free again.
    create(ctx, id, 600, &[]);
    ctx.worker.raw("DELETE", &path(id), &[], b"");
}

/// Two identical POSTs at once: one 201 and one 200; two different ones: one 201 and one 409.
/// An extend racing the expiry: either it wins (and the cleanup waits for the new expiry) or it
/// gets a 409 (and the cleanup ran at the old one). Never a mix.
pub fn concurrent_requests_stay_consistent(ctx: &Ctx) {
    let same = json!({"lab_request_id": "race-same", "user_id": "u", "duration": 600});
    let statuses = race(ctx, &same, &same);
    assert_eq!(statuses, vec![200, 201]);
    let a = json!({"lab_request_id": "race-diff", "user_id": "u", "duration": 600});
    let b = json!({"lab_request_id": "race-diff", "user_id": "u2", "duration": 600});
    assert_eq!(race(ctx, &a, &b), vec![201, 409]);
    for id in ["race-same", "race-diff"] {
        ctx.worker.raw("DELETE", &path(id), &[], b"");
    }

    let id = "race-extend";
    let created = create(ctx, id, 2, &[]);
    let expires = epoch_ms(&created["expires_at"]);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    thread::sleep(Duration::from_millis(expires.saturating_sub(now() + 30)));
    let r = extend(ctx, id, json!(3));
    let calls = wait_exactly(ctx, &[id], 2, 20, 1);
    match r.status {
        200 => assert_not_before(&calls, epoch_ms(&r.json()["expires_at"])),
        409 => assert_not_before(&calls, expires),
        other => panic!("extend answered {other}: {}", r.text()),
    }
}

fn race(ctx: &Ctx, a: &Value, b: &Value) -> Vec<u16> {
    let mut statuses: Vec<u16> = thread::scope(|s| {
        let ha = s.spawn(|| ctx.worker.create(a).status);
        let hb = s.spawn(|| ctx.worker.create(b).status);
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    statuses.sort();
    statuses
}
