//! Hardening on real workerd: authentication, hostile inputs, backend down, dry run, secrets in output.

use std::time::Duration;

use mock_backend::{Endpoint, MockBackend, Options};
use serde_json::{json, Value};

use crate::support::*;

/// One hostile request and the answer it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    authorization: Option<String>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

const SESSIONS: &str = "/api/v1/labs/sessions";

fn create_case(what: &'static str, body: Value, status: u16, code: &'static str) -> Case {
    Case {
        what,
        method: "POST",
        path: SESSIONS.into(),
        content_type: Some("application/json"),
        authorization: None,
        body: body.to_string().into_bytes(),
        status,
        code,
    }
}

fn bad(what: &'static str, body: Value) -> Case {
    create_case(what, body, 400, "invalid_request")
}

fn raw_case(
    what: &'static str,
    method: &'static str,
    path: &str,
    body: &[u8],
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        content_type: Some("application/json"),
        authorization: None,
        body: body.to_vec(),
        status,
        code,
    }
}

/// A valid create body for `id`, to be spoiled by one field.
fn lab(id: &str) -> Value {
    json!({"lab_request_id": id, "user_id": "user-h", "duration": 5})
}

fn with(id: &str, key: &str, value: Value) -> Value {
    let mut v = lab(id);
    v[key] = value;
    v
}

fn workers(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"worker_lab_request_id": format!("hostile-w{i}")}))
            .collect(),
    )
}

/// The hostile inputs the tests try; `docs/SECURITY.md` lists them with their answers
/// (`PRINT_HOSTILE_TABLE=1 bash scripts/test.sh hostile` prints that table).
fn cases() -> Vec<Case> {
    let h = "hostile-lab";
    let mut cases = vec![
        raw_case(
            "body is not JSON",
            "POST",
            SESSIONS,
            b"hello",
            400,
            "invalid_request",
        ),
        raw_case("empty body", "POST", SESSIONS, b"", 400, "invalid_request"),
        raw_case(
            "truncated JSON",
            "POST",
            SESSIONS,
            br#"{"lab_request_id": "hostile-lab""#,
            400,
            "invalid_request",
        ),
        raw_case(
            "JSON nested 10000 deep",
            "POST",
            SESSIONS,
            "[".repeat(10_000).as_bytes(),
            400,
            "invalid_request",
        ),
        raw_case(
            "invalid UTF-8 in body",
            "POST",
            SESSIONS,
            b"{\"lab_request_id\": \"\xff\xfe\"}",
            400,
            "invalid_request",
        ),
        bad("JSON array instead of object", json!([lab(h)])),
        bad("JSON null body", Value::Null),
        create_case(
            "body over 64 KiB",
            with(h, "pad", json!("x".repeat(70_000))),
            413,
            "payload_too_large",
        ),
        Case {
            content_type: Some("text/html"),
            ..create_case(
                "Content-Type text/html",
                lab(h),
                415,
                "unsupported_media_type",
            )
        },
        Case {
            content_type: Some("application/xml"),
            ..create_case(
                "Content-Type application/xml",
                lab(h),
                415,
                "unsupported_media_type",
            )
        },
        raw_case(
            "a repeated key (user_id twice)",
            "POST",
            SESSIONS,
            br#"{"lab_request_id":"hostile-lab","user_id":"user-h","duration":5,"user_id":"admin"}"#,
            400,
            "invalid_request",
        ),
        raw_case(
            "a repeated key inside worker_nodes",
            "POST",
            SESSIONS,
            br#"{"lab_request_id":"hostile-lab","user_id":"user-h","duration":5,"worker_nodes":[{"worker_lab_request_id":"hw","worker_lab_request_id":"hostile-lab"}]}"#,
            400,
            "invalid_request",
        ),
        Case {
            content_type: Some("application/x-www-form-urlencoded"),
            ..create_case(
                "form-encoded Content-Type",
                lab(h),
                415,
                "unsupported_media_type",
            )
        },
        bad("lab_request_id with a space", lab("hostile lab")),
        bad(
            "lab_request_id path traversal ../../etc/passwd",
            lab("../../etc/passwd"),
        ),
        bad("lab_request_id with NUL", lab("hostile\u{0}lab")),
        bad(
            "lab_request_id with newline (log injection)",
            lab("x\n[SessionManager] ✅ Successfully deleted all 3 VMs"),
        ),
        bad(
            "lab_request_id with RTL override U+202E",
            lab("\u{202e}bal-elitsoh"),
        ),
        bad(
            "lab_request_id in fullwidth letters (homoglyphs)",
            lab("ｈｏｓｔｉｌｅ"),
        ),
        bad(
            "lab_request_id with zero-width space",
            lab("hostile\u{200b}lab"),
        ),
        bad("lab_request_id of 129 characters", lab(&"h".repeat(129))),
        bad(
            "lab_request_id of 10000 characters",
            lab(&"h".repeat(10_000)),
        ),
        bad("lab_request_id empty", lab("")),
        bad(
            "lab_request_id a number",
            with(h, "lab_request_id", json!(123)),
        ),
        bad(
            "lab_request_id an object",
            with(h, "lab_request_id", json!({"$ne": null})),
        ),
        bad("lab_request_id with percent escapes", lab("hostile%2Flab")),
        bad(
            "user_id with <script>",
            with(h, "user_id", json!("<script>alert(1)</script>")),
        ),
        bad(
            "user_id with SQL injection",
            with(h, "user_id", json!("' OR 1=1 --")),
        ),
        bad("user_id empty", with(h, "user_id", json!(""))),
        bad(
            "user_id missing",
            json!({"lab_request_id": h, "duration": 5}),
        ),
        bad("duration fractional 1.5", with(h, "duration", json!(1.5))),
        bad("duration float 60.0", with(h, "duration", json!(60.0))),
        bad("duration a string \"60\"", with(h, "duration", json!("60"))),
        bad("duration a boolean", with(h, "duration", json!(true))),
        bad("duration negative", with(h, "duration", json!(-60))),
        bad("duration zero", with(h, "duration", json!(0))),
        bad("duration 1e30", with(h, "duration", json!(1e30))),
        bad("duration u64::MAX", with(h, "duration", json!(u64::MAX))),
        bad(
            "duration 10081 (over the cap)",
            with(h, "duration", json!(10_081)),
        ),
        bad("duration null", with(h, "duration", Value::Null)),
        bad(
            "49 worker nodes (over the cap)",
            with(h, "worker_nodes", workers(49)),
        ),
        bad(
            "duplicate worker ids",
            with(
                h,
                "worker_nodes",
                json!([{"worker_lab_request_id": "hw"}, {"worker_lab_request_id": "hw"}]),
            ),
        ),
        bad(
            "worker id equal to the master's",
            with(h, "worker_nodes", json!([{"worker_lab_request_id": h}])),
        ),
        bad(
            "worker entry a bare string",
            with(h, "worker_nodes", json!(["hostile-w"])),
        ),
        bad(
            "worker_nodes an object",
            with(h, "worker_nodes", json!({"worker_lab_request_id": "hw"})),
        ),
        bad(
            "worker id with a slash",
            with(h, "worker_nodes", json!([{"worker_lab_request_id": "a/b"}])),
        ),
        bad(
            "vm.name of 1000 characters",
            with(h, "vm", json!({"name": "n".repeat(1000)})),
        ),
        bad(
            "vm.name with control characters",
            with(h, "vm", json!({"name": "a\u{1b}[31mred"})),
        ),
        bad("vm an array", with(h, "vm", json!(["k8s"]))),
        raw_case(
            "GET id ../ (encoded)",
            "GET",
            &format!("{SESSIONS}/%2e%2e%2f"),
            b"",
            400,
            "invalid_request",
        ),
        raw_case(
            "GET id with NUL (encoded)",
            "GET",
            &format!("{SESSIONS}/a%00b"),
            b"",
            400,
            "invalid_request",
        ),
        raw_case(
            "GET id of 200 characters",
            "GET",
            &format!("{SESSIONS}/{}", "g".repeat(200)),
            b"",
            400,
            "invalid_request",
        ),
        raw_case(
            "GET id with malformed escape %ZZ",
            "GET",
            &format!("{SESSIONS}/%ZZ"),
            b"",
            404,
            "not_found",
        ),
        raw_case(
            "GET extra path segment",
            "GET",
            &format!("{SESSIONS}/a/b"),
            b"",
            404,
            "not_found",
        ),
        raw_case(
            "DELETE id with a space (encoded)",
            "DELETE",
            &format!("{SESSIONS}/bad%20id"),
            b"",
            400,
            "invalid_request",
        ),
        raw_case(
            "extend minutes 0",
            "POST",
            &format!("{SESSIONS}/{h}/extend"),
            br#"{"minutes": 0}"#,
            400,
            "invalid_request",
        ),
        raw_case(
            "extend minutes negative",
            "POST",
            &format!("{SESSIONS}/{h}/extend"),
            br#"{"minutes": -1}"#,
            400,
            "invalid_request",
        ),
        raw_case(
            "extend minutes a string",
            "POST",
            &format!("{SESSIONS}/{h}/extend"),
            br#"{"minutes": "5"}"#,
            400,
            "invalid_request",
        ),
        raw_case(
            "extend minutes 1e9",
            "POST",
            &format!("{SESSIONS}/{h}/extend"),
            br#"{"minutes": 1000000000}"#,
            400,
            "invalid_request",
        ),
        raw_case(
            "extend body not JSON",
            "POST",
            &format!("{SESSIONS}/{h}/extend"),
            b"5",
            400,
            "invalid_request",
        ),
        Case {
            content_type: Some("text/html"),
            ..raw_case(
                "extend as text/html",
                "POST",
                &format!("{SESSIONS}/{h}/extend"),
                br#"{"minutes": 5}"#,
                415,
                "unsupported_media_type",
            )
        },
        raw_case(
            "extend an unknown lab",
            "POST",
            &format!("{SESSIONS}/{h}/extend"),
            br#"{"minutes": 5}"#,
            404,
            "not_found",
        ),
        raw_case(
            "PUT on the collection",
            "PUT",
            SESSIONS,
            b"{}",
            405,
            "method_not_allowed",
        ),
        raw_case(
            "PATCH on a session",
            "PATCH",
            &format!("{SESSIONS}/{h}"),
            b"{}",
            405,
            "method_not_allowed",
        ),
        raw_case(
            "GET on extend",
            "GET",
            &format!("{SESSIONS}/{h}/extend"),
            b"",
            405,
            "method_not_allowed",
        ),
        raw_case(
            "unknown method QUERY (Request::method() would read it as GET)",
            "QUERY",
            &format!("{SESSIONS}/{h}"),
            b"",
            405,
            "method_not_allowed",
        ),
    ];
    let unauthorized = |what: &'static str, authorization: Option<String>| Case {
        authorization,
        ..create_case(what, lab(h), 401, "unauthorized")
    };
    cases.extend([
        unauthorized("no Authorization header", Some(String::new())),
        unauthorized("wrong bearer token", Some("Bearer not-the-token".into())),
        unauthorized(
            "right token with a suffix",
            Some(format!("Bearer {API_TOKEN}x")),
        ),
        unauthorized(
            "right token, one byte short",
            Some(format!("Bearer {}", &API_TOKEN[..API_TOKEN.len() - 1])),
        ),
        unauthorized(
            "right token in upper case",
            Some(format!("Bearer {}", API_TOKEN.to_uppercase())),
        ),
        unauthorized(
            "Basic scheme with the token",
            Some(format!("Basic {API_TOKEN}")),
        ),
        unauthorized("token without a scheme", Some(API_TOKEN.into())),
        unauthorized(
            "8 KB of garbage as the token",
            Some(format!("Bearer {}", "z".repeat(8_192))),
        ),
        Case {
            path: format!("{SESSIONS}?token={API_TOKEN}"),
            ..unauthorized("token in the query string instead", Some(String::new()))
        },
    ]);
    cases
}

fn send(ctx: &Ctx, case: &Case) -> mock_backend::http::Response {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(ct) = case.content_type {
        headers.push(("Content-Type", ct));
    }
    match &case.authorization {
        None => ctx
            .worker
            .raw(case.method, &case.path, &headers, &case.body),
        Some(a) => {
            if !a.is_empty() {
                headers.push(("Authorization", a));
            }
            ctx.worker
                .unauthenticated(case.method, &case.path, &headers, &case.body)
        }
    }
}

/// Every hostile input gets its 4xx JSON error, and none of them stores anything.
pub fn hostile_inputs_are_refused(ctx: &Ctx) {
    let cases = cases();
    assert!(cases.len() >= 40, "at least 40 hostile inputs");
    let mut table = String::from("| # | hostile input | request | answer |\n|---|---|---|---|\n");
    for (i, case) in cases.iter().enumerate() {
        let r = send(ctx, case);
        assert_eq!(r.status, case.status, "{}: {}", case.what, r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], case.code, "{}: {v}", case.what);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            case.what
        );
        assert!(!r.text().contains(API_TOKEN), "{}: token echoed", case.what);
        if case.status == 401 {
            assert!(
                r.header("WWW-Authenticate")
                    .is_some_and(|h| h.starts_with("Bearer")),
                "{}: WWW-Authenticate",
                case.what
            );
        }
        let path = case.path.split('?').next().unwrap_or("");
        let path = if path.len() > 60 {
            format!("{}…", &path[..60])
        } else {
            path.to_string()
        };
        table.push_str(&format!(
            "| {} | {} | `{} {}` | {} `{}` |\n",
            i + 1,
            case.what,
            case.method,
            path,
            case.status,
            case.code
        ));
    }
    if std::env::var_os("PRINT_HOSTILE_TABLE").is_some() {
        println!("{table}");
    }
    // Nothing was stored and nothing reached the backend.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        ctx.worker
            .raw("GET", &format!("{SESSIONS}/hostile-lab"), &[], b"")
            .status,
        404
    );
    assert!(ctx
        .mock
        .calls_for_any(&["hostile-lab", "hw", "hostile-w"])
        .is_empty());
}

/// Every API route demands the token; `/healthz` does not and says nothing; no CORS.
pub fn api_requires_the_bearer_token(ctx: &Ctx) {
    let id = "auth-lab";
    let routes = [
        ("POST", SESSIONS.to_string(), lab(id).to_string()),
        ("GET", format!("{SESSIONS}/{id}"), String::new()),
        ("DELETE", format!("{SESSIONS}/{id}"), String::new()),
        (
            "POST",
            format!("{SESSIONS}/{id}/extend"),
            r#"{"minutes": 5}"#.to_string(),
        ),
        ("GET", "/api/v1/unknown".to_string(), String::new()),
    ];
    for (method, path, body) in &routes {
        for auth in [None, Some("Bearer wrong")] {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let r = ctx
                .worker
                .unauthenticated(method, path, &headers, body.as_bytes());
            assert_eq!(r.status, 401, "{method} {path} {auth:?}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "unauthorized");
            assert_eq!(
                r.header("WWW-Authenticate"),
                Some("Bearer realm=\"labs-cleanup\"")
            );
        }
    }
    // The refused create stored nothing.
    assert_eq!(
        ctx.worker
            .raw("GET", &format!("{SESSIONS}/{id}"), &[], b"")
            .status,
        404
    );

    let health = ctx.worker.unauthenticated("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));

    // Server-to-server API: no CORS, not even for a preflight.
    let preflight = ctx.worker.unauthenticated(
        "OPTIONS",
        SESSIONS,
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert!(
        preflight.status >= 400,
        "preflight answered {}",
        preflight.status
    );
    let r = ctx.worker.raw(
        "GET",
        "/healthz",
        &[("Origin", "https://evil.example")],
        b"",
    );
    for r in [&preflight, &r] {
        assert!(r.header("Access-Control-Allow-Origin").is_none());
    }
}

/// The backend is down (connection refused), then comes back: the cleanup retries and completes.
pub fn backend_down_then_back(ctx: &mut Ctx) {
    let (m, w) = ("down-master", "down-worker");
    let addr = ctx.mock.addr().to_string();
    ctx.mock.stop();
    let r = ctx.worker.create(
        &json!({"lab_request_id": m, "user_id": "u-d", "duration": 1,
        "worker_nodes": [{"worker_lab_request_id": w}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    wait_log(
        ctx,
        &format!("⚠️ 2 of 2 VMs not deleted after attempt 1 ({m}, {w})"),
        20,
    );
    assert!(ctx.worker.log().contains(&format!(
        "❌ Failed to delete master VM {m} (attempt 1): network error"
    )));
    ctx.mock = MockBackend::start(
        &addr,
        Options {
            expected_token: Some(BACKEND_TOKEN.into()),
            ..Options::default()
        },
    )
    .expect("mock back on its port");
    let calls = wait_exactly(ctx, &[m, w], 3, 30, RETRY_SECONDS + 1);
    assert_eq!(key(&calls[0]), (Endpoint::Expose, m));
    assert!(calls.iter().all(|c| c.status == Some(200)));
}

/// `DRY_RUN=true`: the cleanup logs every call it would make, makes none, and says so.
pub fn dry_run_makes_no_call(ctx: &mut Ctx) {
    ctx.worker.restart_with(&[("DRY_RUN", "true")], &[]);
    let (m, w) = ("dry-master", "dry-worker");
    let r = ctx.worker.create(
        &json!({"lab_request_id": m, "user_id": "u-dry", "duration": 1,
        "worker_nodes": [{"worker_lab_request_id": w}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    wait_log(ctx, &format!("[dry run] would call POST {}/api/v1/labs/delete {{\"lab_request_id\":\"{w}\",\"user_id\":\"u-dry\"}}", ctx.mock.url()), 20);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = ctx
            .worker
            .raw("GET", &format!("{SESSIONS}/{m}"), &[], b"")
            .json();
        if v["status"] == "completed" || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["dry_run"], true);
    assert!(ctx.worker.log().contains(&format!(
        "[dry run] would call DELETE {}/api/v1/expose/ {{\"lab_request_id\":\"{m}\"}}",
        ctx.mock.url()
    )));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        ctx.mock.calls_for_any(&[m, w]).is_empty(),
        "a dry run called the backend"
    );
}

/// No `API_TOKEN`: every API call is refused with 503 (fail closed); `/healthz` still answers.
pub fn missing_api_token_fails_closed(ctx: &mut Ctx) {
    ctx.worker
        .restart_with(&[("DRY_RUN", "false")], &["API_TOKEN"]);
    // Authentication first: a token that is not configured is no valid token (401), and such a
    // caller learns nothing of the configuration.
    let r = ctx.worker.create(&lab("closed-lab"));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = ctx
        .worker
        .raw("GET", &format!("{SESSIONS}/closed-lab"), &[], b"");
    assert_eq!(r.status, 401);
    // The operator is told what is missing.
    let r = ctx
        .worker
        .operator("GET", &format!("{SESSIONS}/closed-lab"), b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "not_configured");
    assert!(r.text().contains("API_TOKEN"));
    // Not ready: a load balancer or a smoke test catches it.
    let health = ctx.worker.unauthenticated("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 503);
    assert_eq!(health.json(), json!({"status": "not_configured"}));
}

/// A mistyped setting: `/healthz` answers 503 naming nothing, the API's 503 names the setting but
/// never its value (the caller may be anyone), and the value is in the worker's log only.
pub fn a_broken_setting_is_not_ready_and_never_echoed(ctx: &mut Ctx) {
    ctx.worker
        .restart_with(&[("CLEANUP_RETRY_SECONDS", "five-ish")], &[]);
    let health = ctx.worker.unauthenticated("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json(), json!({"status": "not_configured"}));
    // A caller without a valid token learns nothing of it: 401, whatever the settings' state.
    for headers in [&[][..], &[("Authorization", "Bearer not-a-token")][..]] {
        let r = ctx
            .worker
            .unauthenticated("GET", &format!("{SESSIONS}/x"), headers, b"");
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(!r.text().contains("CLEANUP_RETRY_SECONDS"), "{}", r.text());
    }
    for r in [
        ctx.worker.raw("GET", &format!("{SESSIONS}/x"), &[], b""),
        ctx.worker.create(&lab("broken-setting-lab")),
        ctx.worker.operator("GET", "/api/v1/labs/stats", b""),
    ] {
        assert_eq!(r.status, 503, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "not_configured");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("CLEANUP_RETRY_SECONDS"), "{message}");
        assert!(!message.contains("five-ish"), "value echoed: {message}");
    }
    wait_log(
        ctx,
        "[config] CLEANUP_RETRY_SECONDS must be a whole number from 1 to 86400 (got \"five-ish\")",
        10,
    );
    // Back to a working configuration for the tests that follow.
    ctx.worker.restart_with(
        &[("CLEANUP_RETRY_SECONDS", &RETRY_SECONDS.to_string())],
        &[],
    );
    assert_eq!(
        ctx.worker
            .unauthenticated("GET", "/healthz", &[], b"")
            .status,
        200
    );
}

/// `API_TOKEN` equal to `OPERATOR_TOKEN` would hand the frontend every fleet route: a
/// configuration error, for both tokens and `/healthz`; a caller without a token still gets 401.
pub fn equal_tokens_are_a_configuration_error(ctx: &mut Ctx) {
    ctx.worker.restart_with_secret("OPERATOR_TOKEN", API_TOKEN);
    let health = ctx.worker.unauthenticated("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json(), json!({"status": "not_configured"}));
    for r in [
        ctx.worker.create(&lab("equal-tokens-lab")),
        ctx.worker.raw("GET", "/api/v1/labs/stats", &[], b""),
    ] {
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "not_configured");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains("OPERATOR_TOKEN") && message.contains("API_TOKEN"),
            "{message}"
        );
        assert!(!message.contains(API_TOKEN), "{message}");
    }
    let r = ctx
        .worker
        .unauthenticated("GET", "/api/v1/labs/stats", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!ctx.worker.log().contains(API_TOKEN));
    ctx.worker
        .restart_with_secret("OPERATOR_TOKEN", OPERATOR_TOKEN);
    assert_eq!(
        ctx.worker
            .unauthenticated("GET", "/healthz", &[], b"")
            .status,
        200
    );
    // Nothing was scheduled while refused.
    let r = ctx
        .worker
        .raw("GET", &format!("{SESSIONS}/equal-tokens-lab"), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
}

/// Neither token ever appears in anything the worker printed.
pub fn secrets_never_in_output(ctx: &mut Ctx) {
    let log = ctx.worker.log();
    assert!(log.len() > 1000, "the log was captured");
    for secret in [API_TOKEN, BACKEND_TOKEN] {
        assert!(
            !log.contains(secret),
            "a token appears in the worker's output"
        );
    }
}

/// Schemathesis fuzzes every operation of `docs/openapi.yaml` against the worker with the operator
/// token: no 5xx, and every answer conforms to the spec (status, content type, headers, body).
pub fn schemathesis_fuzz(ctx: &mut Ctx) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = std::env::var_os("SCHEMATHESIS_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/venv/bin/st"));
    assert!(
        st.exists(),
        "schemathesis not found at {}; run scripts/setup.sh",
        st.display()
    );
    let seed = std::env::var("FUZZ_SEED").unwrap_or_else(|_| "20261126".into());
    let examples = std::env::var("FUZZ_EXAMPLES").unwrap_or_else(|_| "100".into());
    let output = std::process::Command::new(st)
        .current_dir(root)
        .args([
            "--no-color",
            "--config-file",
            "tests/fuzz/schemathesis.toml",
            "run",
        ])
        .arg("docs/openapi.yaml")
        .args(["--url", &format!("http://{}", ctx.worker.addr)])
        // The operator token opens every route, the fleet-wide ones included.
        .args(["-H", &format!("Authorization: Bearer {OPERATOR_TOKEN}")])
        .args(["--checks", "all", "--exclude-checks", "use_after_free"])
        .args([
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--workers",
            "1",
        ])
        .output()
        .expect("run schemathesis");
    let text = output_text(&output);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("generated"))
        .unwrap_or("");
    println!("schemathesis (seed {seed}): {}", summary.trim());
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{}",
        tail(&text, 80)
    );
    assert!(
        summary.contains("passed"),
        "no test case ran:\n{}",
        tail(&text, 40)
    );
}
