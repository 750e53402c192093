//! Why a lab ended, on real workerd: the timeline of a whole life, an idle end, a lab kept alive by activity until its hard expiry, and what a minute of heartbeats from 200 labs costs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mock_backend::{Action, Endpoint, Fault};
use serde_json::{json, Value};

use crate::support::*;

/// `POST .../activity`: its status. The local runtime's proxy sometimes answers a POST it lost
/// to a restart of its own with a 503 that asks to send it again; so does this (at most thrice),
/// as a real client would.
fn activity_on(worker: &Worker, id: &str) -> u16 {
    for _ in 0..3 {
        let r = worker.raw(
            "POST",
            &format!("/api/v1/labs/sessions/{id}/activity"),
            &[],
            b"",
        );
        if !(r.status == 503 && r.text().contains("restarted mid-request")) {
            return r.status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    503
}

fn activity(ctx: &Ctx, id: &str) -> u16 {
    activity_on(&ctx.worker, id)
}

/// Everything of issue 20 that needs its own settings (warning stages, the storage counter),
/// on the shared worker restarted with them, then put back: the events of a lab through create,
/// extend, two warnings, a failed attempt, retry now and completion; an idle lab ending early
/// (services first, nothing before its idle timeout); a lab kept alive by activity until its
/// hard expiry; 409 after the end.
pub fn timeline_idle_ends_and_activity(ctx: &mut Ctx) {
    ctx.worker
        .restart_with(&[("WARN_BEFORE_MINUTES", "6,3")], &[]);

    // A whole life. w1's first deletion is refused for a minute: the lab waits, an operator
    // retries it now.
    let (m, w1, w2) = ("tl-life", "tl-life-w1", "tl-life-w2");
    ctx.mock.add_fault(
        Fault::on(
            w1,
            Endpoint::DeleteVm,
            Action::Refuse {
                status: 503,
                retry_after: Some("60".into()),
            },
        )
        .times(1),
    );
    let created = create_lab(ctx, m, "tl-user", 10, &[w1, w2]);
    let r = ctx.worker.operator(
        "POST",
        &format!("/api/v1/labs/sessions/{m}/extend"),
        br#"{"minutes": 4}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let expires_at = epoch_ms(&r.json()["expires_at"]);
    assert_eq!(expires_at, epoch_ms(&created["expires_at"]) + 4_000);
    let v = poll_status(ctx, m, 30, |v| v["status"] == "retrying");
    assert_eq!(v["end_reason"], "expired");
    let r = ctx
        .worker
        .operator("POST", &format!("/api/v1/labs/sessions/{m}/retry"), b"");
    assert_eq!(r.status, 202, "{}", r.text());
    poll_status(ctx, m, 15, |v| v["status"] == "completed");
    let timeline = lab_events(ctx, m);
    assert_eq!(
        event_types(&timeline),
        [
            "created",
            "extended",
            "warned",
            "warned",
            "ended",
            "attempt",
            "retry_now",
            "attempt",
            "completed"
        ],
        "{timeline}"
    );
    let e = timeline["events"].as_array().unwrap();
    assert_eq!(e[1]["by"], "operator");
    assert_eq!(epoch_ms(&e[1]["to"]), expires_at);
    assert_eq!(e[2]["minutes_left"], 6);
    assert_eq!(e[3]["minutes_left"], 3);
    assert_eq!(e[4]["reason"], "expired");
    assert_eq!(e[5]["number"], 1);
    let first: Vec<(String, String)> = e[5]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(first.contains(&(w1.into(), "failed".into())), "{first:?}");
    assert!(first.contains(&(m.into(), "deleted".into())), "{first:?}");
    let failed = e[5]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == w1)
        .unwrap();
    assert_eq!(failed["status"], 503);
    assert_eq!(e[7]["vms"], json!([{"id": w1, "result": "deleted"}]));
    assert_eq!(timeline["truncated"], 0);
    // Nothing before the extended expiry; the two warnings' webhooks said the minutes left.
    assert_not_before(&ctx.mock.calls_for_any(&[m, w1, w2]), expires_at);
    let warned: Vec<u64> = ctx
        .receiver
        .deliveries_for(m)
        .iter()
        .filter(|d| d["type"] == "lab.expiring")
        .filter_map(|d| {
            let body: Value = serde_json::from_str(d["body"].as_str()?).ok()?;
            body["data"]["minutes_left"].as_u64()
        })
        .collect();
    assert_eq!(warned, [6, 3], "{:?}", ctx.receiver.deliveries_for(m));
    // The index row and the list filter know why it ended.
    let r = ctx.worker.operator(
        "GET",
        "/api/v1/labs/sessions?user_id=tl-user&end_reason=expired",
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(m), "{}", r.text());
    // Ended: activity no longer counts.
    assert_eq!(activity(ctx, m), 409);
    assert_eq!(activity(ctx, "tl-never-created"), 404);

    // An idle lab: 4 s without activity ends it (services first), never before.
    let idle = "tl-idle";
    let r = ctx.worker.create(&json!({
        "lab_request_id": idle, "user_id": "tl-user", "duration": 60, "idle_timeout": 4,
    }));
    assert_eq!(r.status, 201, "{}", r.text());
    let created_at = epoch_ms(&r.json()["created_at"]);
    let v = poll_status(ctx, idle, 20, |v| v["status"] == "completed");
    assert_eq!(v["end_reason"], "idle");
    assert_eq!(v["idle_timeout"], 4);
    let calls = ctx.mock.calls_for(idle);
    assert_eq!(calls[0].endpoint, Some(Endpoint::Expose), "services first");
    assert_not_before(&calls, created_at + 4_000);
    assert_eq!(
        event_types(&lab_events(ctx, idle))[..3],
        ["created", "ended", "attempt"]
    );

    // A lab kept alive by activity (idle timeout 6 s, a heartbeat every half second) until its
    // hard expiry (14 s).
    let alive = "tl-alive";
    let r = ctx.worker.create(&json!({
        "lab_request_id": alive, "user_id": "tl-user", "duration": 14, "idle_timeout": 6,
    }));
    assert_eq!(r.status, 201, "{}", r.text());
    let expires_at = epoch_ms(&r.json()["expires_at"]);
    while now_ms() + 300 < expires_at {
        assert_eq!(activity(ctx, alive), 204);
        std::thread::sleep(Duration::from_millis(500));
    }
    let v = poll_status(ctx, alive, 15, |v| v["status"] == "completed");
    assert_eq!(v["end_reason"], "expired", "{v}");
    assert_not_before(&ctx.mock.calls_for(alive), expires_at);
    assert_eq!(activity(ctx, alive), 409);

    ctx.worker
        .restart_with(&[("WARN_BEFORE_MINUTES", &WARN_BEFORE.to_string())], &[]);
}

/// Heartbeats from 200 labs, each once a second for a minute, on a worker counting its storage
/// operations (`LOG_STORAGE_OPS`): each lab writes its activity at most once per
/// `ACTIVITY_WRITE_SECONDS` (60), counted from the object's own `storage ops` lines.
pub fn heartbeats_write_once_per_interval(ctx: &mut Ctx) {
    ctx.worker.restart_with(&[("LOG_STORAGE_OPS", "true")], &[]);
    let labs: Vec<String> = (0..200).map(|i| format!("hb-{i:03}")).collect();
    let first_created = Instant::now();
    for id in &labs {
        let r = ctx.worker.create(&json!({
            "lab_request_id": id, "user_id": "hb-user", "duration": 600, "idle_timeout": 300,
        }));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let start = ctx.worker.log().len();
    let sent = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let seconds = 60;
    std::thread::scope(|scope| {
        for chunk in labs.chunks(labs.len() / 10) {
            let sent = sent.clone();
            let worker = &ctx.worker;
            scope.spawn(move || {
                for second in 0..seconds {
                    let tick = began + Duration::from_secs(second);
                    if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    for id in chunk {
                        assert_eq!(activity_on(worker, id), 204, "{id}");
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let elapsed = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let log = ctx.worker.log();
    let lines: Vec<&str> = log[start..]
        .lines()
        .filter(|l| l.contains("storage ops for /activity: "))
        .collect();
    let writes: usize = lines
        .iter()
        .filter_map(|l| {
            let rest = l.split("storage ops for /activity: ").nth(1)?;
            rest.split(", ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "heartbeats: {sent} from {} labs in {elapsed:.1} s ({:.0}/s), {} counted, {writes} writes",
        labs.len(),
        sent as f64 / elapsed,
        lines.len()
    );
    // One storage line per heartbeat the object answered (a retried one may have two).
    assert!(
        lines.len() >= sent,
        "{} lines for {sent} heartbeats",
        lines.len()
    );
    // One write per 60 s at most, counted from each lab's creation: over a minute of
    // heartbeats (plus the time the creates took), at most two or three per lab, never one a
    // heartbeat.
    let intervals = (first_created.elapsed().as_secs_f64() / 60.0).ceil() as usize;
    assert!(
        writes <= labs.len() * intervals,
        "{writes} writes for {} labs over {elapsed:.0} s",
        labs.len()
    );
    ctx.worker
        .restart_with(&[("LOG_STORAGE_OPS", "false")], &[]);
}
