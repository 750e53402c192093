//! The HTTP API on real workerd: bad inputs get clear JSON errors and store nothing.

use serde_json::{json, Value};

use crate::support::*;

fn assert_error(r: &mock_backend::http::Response, status: u16, code: &str, context: &str) {
    assert_eq!(r.status, status, "{context}: {}", r.text());
    assert!(
        r.header("Content-Type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{context}: error is JSON"
    );
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{context}: {v}");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "{context}: error has a message");
}

/// Every malformed create request is a 400 `invalid_request` naming the problem, and nothing is
/// stored: no backend call ever comes for those ids, and a later valid request for each is new.
pub fn bad_inputs_are_rejected_and_store_nothing(ctx: &Ctx) {
    let id = |n: usize| format!("bad-input-{n}");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"user_id": "u", "duration": 1, "x": id(0)}),
            "lab_request_id is required",
        ),
        (
            json!({"lab_request_id": id(1), "duration": 1}),
            "user_id is required",
        ),
        (
            json!({"lab_request_id": id(2), "user_id": "u"}),
            "duration is required",
        ),
        (
            json!({"lab_request_id": id(3), "user_id": "u", "duration": 0}),
            "duration must be at least 1 minute",
        ),
        (
            json!({"lab_request_id": id(4), "user_id": "u", "duration": -5}),
            "duration must be at least 1 minute",
        ),
        (
            json!({"lab_request_id": id(5), "user_id": "u", "duration": 1.5}),
            "duration must be a whole number of minutes, got 1.5",
        ),
        (
            json!({"lab_request_id": id(6), "user_id": "u", "duration": "60"}),
            "duration must be a whole number of minutes, got a string",
        ),
        (
            json!({"lab_request_id": id(7), "user_id": "", "duration": 1}),
            "user_id must not be empty",
        ),
        (
            json!({"lab_request_id": "", "user_id": "u", "duration": 1}),
            "lab_request_id must not be empty",
        ),
        (
            json!({"lab_request_id": 42, "user_id": "u", "duration": 1}),
            "lab_request_id must be a string, got a number",
        ),
        (
            json!({"lab_request_id": id(10), "user_id": "u", "duration": 1, "worker_nodes": [{}]}),
            "worker_nodes[0].worker_lab_request_id is required",
        ),
        (
            json!({"lab_request_id": id(11), "user_id": "u", "duration": 1, "worker_nodes": [{"worker_lab_request_id": "ok-w"}, {"worker_lab_request_id": ""}]}),
            "worker_nodes[1].worker_lab_request_id must not be empty",
        ),
        (
            json!({"lab_request_id": id(12), "user_id": "u", "duration": 1, "worker_nodes": "w1"}),
            "worker_nodes must be an array, got a string",
        ),
        (
            json!({"lab_request_id": id(13), "user_id": "u", "duration": 1, "vm": "x"}),
            "vm must be an object, got a string",
        ),
        (
            json!({"lab_request_id": id(14), "user_id": "u", "duration": 10081}),
            "duration must be at most 10080 minutes",
        ),
        (json!([id(15)]), "request body must be a JSON object"),
        (
            json!({"lab_request_id": id(20), "user_id": "u", "duration": 1, "labels": {"Class": "x"}}),
            "label key \"Class\" has the character 'C'; keys are a-z 0-9 _ . -",
        ),
        (
            json!({"lab_request_id": id(21), "user_id": "u", "duration": 1, "labels": (0..11).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<String, Value>>()}),
            "labels may hold at most 10 entries, got 11",
        ),
        (
            json!({"lab_request_id": id(22), "user_id": "u", "duration": 1, "labels": {"class": "v".repeat(129)}}),
            "label class must be 1 to 128 characters, got 129",
        ),
        (
            json!({"lab_request_id": id(23), "user_id": "u", "duration": 1, "idle_timeout": 0}),
            "idle_timeout must be at least 1 minute",
        ),
    ];
    for (body, message) in &cases {
        let r = ctx.worker.create(body);
        assert_error(&r, 400, "invalid_request", &body.to_string());
        assert_eq!(r.json()["error"]["message"], *message, "{body}");
    }

    let r = ctx.worker.raw(
        "POST",
        "/api/v1/labs/sessions",
        &[("Content-Type", "application/json")],
        br#"{"lab_request_id": "bad-input-16", "user_id": "u", "#,
    );
    assert_error(&r, 400, "invalid_request", "truncated JSON");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("request body is not valid JSON"));

    let valid = |n: usize| json!({"lab_request_id": id(n), "user_id": "u", "duration": 1});
    let r = ctx.worker.raw(
        "POST",
        "/api/v1/labs/sessions",
        &[("Content-Type", "text/html")],
        valid(17).to_string().as_bytes(),
    );
    assert_error(&r, 415, "unsupported_media_type", "text/html");
    let r = ctx.worker.raw(
        "POST",
        "/api/v1/labs/sessions",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        valid(18).to_string().as_bytes(),
    );
    assert_error(&r, 415, "unsupported_media_type", "form-encoded");
    let big =
        json!({"lab_request_id": id(19), "user_id": "u", "duration": 1, "pad": "x".repeat(70_000)});
    assert_error(
        &ctx.worker.create(&big),
        413,
        "payload_too_large",
        "70 KB body",
    );

    // Nothing was stored: past every would-be expiry no backend call came for these ids, and
    // each id can now be created afresh (201, not the 200/409 of an existing session).
    std::thread::sleep(std::time::Duration::from_secs(
        2 * DURATION_UNIT_SECONDS + 1,
    ));
    let ids: Vec<String> = (0..24).map(id).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(
        ctx.mock.calls_for_any(&refs).is_empty(),
        "{}",
        show(&ctx.mock.calls_for_any(&refs))
    );
    for n in [1, 2, 3, 5, 10, 14, 16, 17, 18, 19, 20, 23] {
        let r = ctx
            .worker
            .create(&json!({"lab_request_id": id(n), "user_id": "u", "duration": 60}));
        assert_eq!(r.status, 201, "{}: {}", id(n), r.text());
    }
}

/// Unknown paths are 404 and wrong methods 405 (with `Allow`), both in the JSON error shape.
pub fn unknown_paths_and_wrong_methods(ctx: &Ctx) {
    for path in ["/", "/api/v1/labs", "/api/v1/labs/sessionz", "/nope"] {
        let r = ctx.worker.json("POST", path, &json!({}));
        assert_error(&r, 404, "not_found", path);
    }
    for method in ["PUT", "PATCH", "DELETE"] {
        let r = ctx.worker.raw(method, "/api/v1/labs/sessions", &[], b"");
        assert_error(&r, 405, "method_not_allowed", method);
        assert_eq!(r.header("Allow"), Some("GET, POST"), "{method}");
    }
}

/// A retried identical create answers 200 with the same expiry; a different one is a 409.
pub fn repeated_create_is_idempotent(ctx: &Ctx) {
    let body = json!({"lab_request_id": "idem-lab", "user_id": "u-i", "duration": 30,
                      "worker_nodes": [{"worker_lab_request_id": "idem-worker"}]});
    let first = ctx.worker.create(&body);
    assert_eq!(first.status, 201, "{}", first.text());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = ctx.worker.create(&body);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.json()["expires_at"],
        first.json()["expires_at"],
        "a retried POST must not extend the lab"
    );
    let mut other = body.clone();
    other["duration"] = json!(31);
    assert_error(
        &ctx.worker.create(&other),
        409,
        "conflict",
        "different duration",
    );
    let mut other = body.clone();
    other["worker_nodes"] = json!([]);
    assert_error(
        &ctx.worker.create(&other),
        409,
        "conflict",
        "different workers",
    );
}

/// What a browser's `fetch(url, {method: "POST", body: JSON.stringify(x)})` sends
/// (`text/plain;charset=UTF-8`), and a body with no `Content-Type`, are read as JSON, as the
/// TypeScript worker read them; a repeated key is refused naming it, and stores nothing.
pub fn browser_bodies_are_read_as_json_and_repeated_keys_refused(ctx: &Ctx) {
    let body = |id: &str| json!({"lab_request_id": id, "user_id": "u-b", "duration": 600});
    for (id, headers) in [
        (
            "browser-text-plain",
            &[("Content-Type", "text/plain;charset=UTF-8")][..],
        ),
        ("browser-no-content-type", &[][..]),
    ] {
        let r = ctx.worker.raw(
            "POST",
            "/api/v1/labs/sessions",
            headers,
            body(id).to_string().as_bytes(),
        );
        assert_eq!(r.status, 201, "{id}: {}", r.text());
        assert_eq!(r.json()["lab_request_id"], id);
        let r = ctx.worker.raw(
            "POST",
            &format!("/api/v1/labs/sessions/{id}/extend"),
            headers,
            br#"{"minutes": 5}"#,
        );
        assert_eq!(r.status, 200, "extend {id}: {}", r.text());
    }

    for (raw, key) in [
        (
            r#"{"lab_request_id":"browser-dup-1","user_id":"u","duration":1,"user_id":"admin"}"#,
            "\"user_id\"",
        ),
        (
            r#"{"lab_request_id":"browser-dup-2","user_id":"u","duration":1,"worker_nodes":[{"worker_lab_request_id":"browser-dup-w","worker_lab_request_id":"browser-dup-2"}]}"#,
            "\"worker_lab_request_id\"",
        ),
    ] {
        let r = ctx.worker.raw(
            "POST",
            "/api/v1/labs/sessions",
            &[("Content-Type", "application/json")],
            raw.as_bytes(),
        );
        assert_error(&r, 400, "invalid_request", raw);
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.starts_with(&format!("request body repeats the key {key}")),
            "{message}"
        );
    }
    std::thread::sleep(std::time::Duration::from_secs(
        2 * DURATION_UNIT_SECONDS + 1,
    ));
    for id in ["browser-dup-1", "browser-dup-2"] {
        let r = ctx
            .worker
            .raw("GET", &format!("/api/v1/labs/sessions/{id}"), &[], b"");
        assert_eq!(r.status, 404, "{id} was stored: {}", r.text());
    }
    assert!(ctx
        .mock
        .calls_for_any(&["browser-dup-1", "browser-dup-2", "browser-dup-w"])
        .is_empty());
}
