//! A class at a time, on real workerd: labels on the create and in the list, a bulk extend and a bulk end over 300 labs with `SUBREQUEST_LIMIT=50` (each lab acted on exactly once, the dry run changing nothing, refusals per lab), and the `Idempotency-Key`.

use std::time::{Duration, Instant};

use mock_backend::Endpoint;
use serde_json::{json, Value};

use crate::support::*;

const CLASS: &str = "bulk-class-1";
const LABS: usize = 300;

fn bulk(ctx: &Ctx, body: &Value, key: Option<&str>) -> mock_backend::http::Response {
    let bearer = format!("Bearer {OPERATOR_TOKEN}");
    let mut headers = vec![
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    ctx.worker.unauthenticated(
        "POST",
        "/api/v1/labs/bulk",
        &headers,
        body.to_string().as_bytes(),
    )
}

/// Polls the job until it is done; its last view.
fn wait_job(ctx: &Ctx, job_id: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = ctx
            .worker
            .operator("GET", &format!("/api/v1/labs/bulk/{job_id}"), b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if v["done"] == true {
            return v;
        }
        assert!(Instant::now() < deadline, "job {job_id} not done: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn bulk_actions_over_a_class(ctx: &mut Ctx) {
    // The shared worker runs with the Free plan's subrequests (`SUBREQUEST_LIMIT` unset: 50): a
    // job's batch is 48 labs.
    let ids: Vec<String> = (0..LABS).map(|i| format!("bulk-{i:03}")).collect();
    for id in &ids {
        let r = ctx.worker.create(&json!({
            "lab_request_id": id, "user_id": "bulk-user", "duration": 6000,
            "labels": {"class": CLASS, "course": "cka"},
        }));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Labels are part of the create's identity.
    let r = ctx.worker.create(&json!({
        "lab_request_id": ids[0], "user_id": "bulk-user", "duration": 6000,
        "labels": {"class": "another"},
    }));
    assert_eq!(r.status, 409, "{}", r.text());
    // 20 labs ended now: an extend refuses them.
    for id in &ids[..20] {
        let r = ctx
            .worker
            .raw("DELETE", &format!("/api/v1/labs/sessions/{id}"), &[], b"");
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let selector = json!({"labels": {"class": CLASS}});
    // The index catches up within a moment.
    let deadline = Instant::now() + Duration::from_secs(60);
    let preview = loop {
        let r = bulk(
            ctx,
            &json!({"selector": selector, "action": "extend", "minutes": 30, "dry_run": true}),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let refused = v["labs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["would"].as_str().unwrap().starts_with("refused"))
            .count();
        if v["matched"] == LABS && refused == 20 {
            break v;
        }
        assert!(Instant::now() < deadline, "the index never caught up: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(preview["labs"][25]["would"]
        .as_str()
        .unwrap()
        .starts_with("extend to "));
    // The list filters by label (all must match).
    let r = ctx.worker.operator(
        "GET",
        &format!("/api/v1/labs/sessions?label=class:{CLASS}&label=course:cka&limit=200"),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 200);
    assert_eq!(
        listed[0]["labels"],
        json!({"class": CLASS, "course": "cka"})
    );
    let r = ctx.worker.operator(
        "GET",
        &format!("/api/v1/labs/sessions?label=class:{CLASS}&label=course:other"),
        b"",
    );
    assert_eq!(r.json()["sessions"], json!([]));
    // The dry run changed nothing.
    let before = poll_status(ctx, &ids[100], 5, |_| true);
    assert_eq!(event_types(&lab_events(ctx, &ids[100])), ["created"]);

    // The extend, for real.
    let extend = json!({"selector": selector, "action": "extend", "minutes": 30});
    let r = bulk(ctx, &extend, Some("class-1-extend"));
    assert_eq!(r.status, 202, "{}", r.text());
    let job_id = r.json()["job_id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["matched"], LABS);
    let done = wait_job(ctx, &job_id, 180);
    assert_eq!(done["visited"], LABS, "{done}");
    assert_eq!(done["applied"], LABS - 20, "{done}");
    assert_eq!(done["refused_count"], 20, "{done}");
    let refusal = done["refused"][0]["error"].as_str().unwrap();
    assert!(refusal.contains("only a scheduled lab"), "{refusal}");
    // The same key: the same job, nothing run again; another request under it: 409.
    let again = bulk(ctx, &extend, Some("class-1-extend"));
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(again.json()["job_id"], job_id.as_str());
    let other = bulk(
        ctx,
        &json!({"selector": selector, "action": "extend", "minutes": 31}),
        Some("class-1-extend"),
    );
    assert_eq!(other.status, 409, "{}", other.text());
    std::thread::sleep(Duration::from_secs(2));
    // Every scheduled lab extended exactly once, as the single-lab route would.
    for id in &ids[20..] {
        let extended = event_types(&lab_events(ctx, id))
            .iter()
            .filter(|k| *k == "extended")
            .count();
        assert_eq!(extended, 1, "{id}");
    }
    let after = poll_status(ctx, &ids[100], 5, |_| true);
    assert_eq!(
        epoch_ms(&after["expires_at"]),
        epoch_ms(&before["expires_at"]) + 30_000
    );
    let log = ctx.worker.log();
    assert!(
        log.contains(&format!(
            "[bulk] Job {job_id} done: extend over {LABS} labs"
        )),
        "{}",
        tail(&log, 30)
    );

    // The end, for the labs still scheduled.
    let end =
        json!({"selector": {"labels": {"class": CLASS}, "status": ["scheduled"]}, "action": "end"});
    let r = bulk(ctx, &end, None);
    assert_eq!(r.status, 202, "{}", r.text());
    let job_id = r.json()["job_id"].as_str().unwrap().to_string();
    let done = wait_job(ctx, &job_id, 180);
    assert_eq!(done["applied"], LABS - 20, "{done}");
    assert_eq!(done["refused_count"], 0);
    // Every VM of the class deleted exactly once, services first.
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let calls = wait_calls(ctx, &refs, 180, |c| {
        c.iter()
            .filter(|c| c.endpoint == Some(Endpoint::DeleteVm) && c.status == Some(200))
            .count()
            >= LABS
    });
    for id in &ids {
        let deletions = calls
            .iter()
            .filter(|c| {
                c.endpoint == Some(Endpoint::DeleteVm) && c.lab_request_id.as_deref() == Some(id)
            })
            .count();
        assert_eq!(deletions, 1, "{id}");
    }
    let v = poll_status(ctx, &ids[200], 30, |v| v["status"] == "completed");
    assert_eq!(v["end_reason"], "operator");

    // A selector must name a label or a user; a job id is 32 hex digits.
    let r = bulk(
        ctx,
        &json!({"selector": {"status": ["scheduled"]}, "action": "end"}),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = ctx
        .worker
        .operator("GET", "/api/v1/labs/bulk/not-a-job", b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = ctx.worker.raw(
        "POST",
        "/api/v1/labs/bulk",
        &[("Content-Type", "application/json")],
        end.to_string().as_bytes(),
    );
    assert_eq!(
        r.status,
        403,
        "the API token cannot act on a class: {}",
        r.text()
    );
}
