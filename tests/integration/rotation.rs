//! Rotating every secret without a failed request, on real workerd: each role's previous token
//! still accepted while its `_PREVIOUS` secret is set, deliveries signed with both webhook
//! secrets (verified by the official Standard Webhooks library), the rotation shown until it is
//! finished, and no token value in the log.

use mock_backend::http::Response;
use serde_json::{json, Value};

use crate::support::*;

const API_NEXT: &str = "itest-api-token-next-64c1f0";
const OPERATOR_NEXT: &str = "itest-operator-token-next-d93a27";
const SESSIONS: &str = "/api/v1/labs/sessions";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn get(ctx: &Ctx, path: &str, token: &str) -> Response {
    let auth = bearer(token);
    ctx.worker
        .unauthenticated("GET", path, &[("Authorization", &auth)], b"")
}

fn create_with(ctx: &Ctx, token: &str, id: &str, duration: u64) -> Response {
    let auth = bearer(token);
    ctx.worker.unauthenticated(
        "POST",
        SESSIONS,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        lab(id, "rotation-user", duration, &[])
            .to_string()
            .as_bytes(),
    )
}

/// The settings named in a `rotations` list.
fn settings(rotations: &Value) -> Vec<String> {
    rotations
        .as_array()
        .unwrap_or_else(|| panic!("rotations is a list: {rotations}"))
        .iter()
        .map(|r| r["setting"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The route ledger lines logged after `mark` bytes of the log: (kind, token slot).
fn slots(ctx: &Ctx, mark: usize) -> Vec<(String, String)> {
    let log = ctx.worker.log();
    invocation_records(&log[mark.min(log.len())..])
        .iter()
        .filter_map(|r| {
            let kind = record_field(r, "kind")?;
            kind.starts_with("route ")
                .then(|| (kind, record_field(r, "token").unwrap_or_default()))
        })
        .collect()
}

/// `tests/browser/rotation.mjs` logs in to the dashboard with `token` and checks that its banner
/// names exactly `expected`. Skips without a browser, unless `REQUIRE_BROWSER=1` (CI).
fn dashboard_banner(ctx: &Ctx, token: &str, expected: &[&str], screenshot: Option<&str>) {
    let Some(chromium) = browser("rotation") else {
        return;
    };
    let mut env = vec![
        ("WORKER_URL", format!("http://{}", ctx.worker.addr)),
        ("OPERATOR_TOKEN", token.to_string()),
        ("EXPECT", expected.join(",")),
    ];
    if let Some(file) = screenshot {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("docs/screenshots").join(file);
        env.push(("SCREENSHOT", path.display().to_string()));
    }
    run_browser("rotation.mjs", &chromium, &env);
}

/// The whole rotation as an operator runs it (docs/OPERATIONS.md, "Rotating secrets"): the new
/// values set as current and the old ones as previous; both work, the API token still only on
/// the per-lab routes; webhooks carry both signatures; readiness, stats and `/metrics` say a
/// rotation is under way. Then the previous values removed: the old ones are refused, nothing
/// says rotation any more, deliveries carry the new signature alone.
pub fn rotation_every_secret_without_a_failed_request(ctx: &mut Ctx) {
    // Step 1: the new values become current, the old ones previous.
    ctx.worker.restart_with_secrets(
        &[
            ("API_TOKEN", API_NEXT),
            ("API_TOKEN_PREVIOUS", API_TOKEN),
            ("OPERATOR_TOKEN", OPERATOR_NEXT),
            ("OPERATOR_TOKEN_PREVIOUS", OPERATOR_TOKEN),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET_NEXT),
            ("WEBHOOK_SECRET_PREVIOUS", WEBHOOK_SECRET),
        ],
        &[],
    );
    let mark = ctx.worker.log().len();

    // The per-lab routes take either API token, and either operator token.
    let (old_lab, new_lab) = ("rotation-old-token", "rotation-new-token");
    let r = create_with(ctx, API_TOKEN, old_lab, 4);
    assert_eq!(r.status, 201, "the previous API token: {}", r.text());
    let r = create_with(ctx, API_NEXT, new_lab, 4);
    assert_eq!(r.status, 201, "the new API token: {}", r.text());
    for token in [API_TOKEN, API_NEXT, OPERATOR_TOKEN, OPERATOR_NEXT] {
        let r = get(ctx, &format!("{SESSIONS}/{old_lab}"), token);
        assert_eq!(r.status, 200, "status with a token of a role: {}", r.text());
    }
    // The fleet routes take either operator token; an API token, old or new, is a 403.
    for token in [OPERATOR_TOKEN, OPERATOR_NEXT] {
        let stats = get(ctx, "/api/v1/labs/stats", token);
        assert_eq!(stats.status, 200, "{}", stats.text());
        assert_eq!(
            settings(&stats.json()["rotations"]),
            [
                "API_TOKEN_PREVIOUS",
                "OPERATOR_TOKEN_PREVIOUS",
                "WEBHOOK_SECRET_PREVIOUS"
            ]
        );
    }
    for token in [API_TOKEN, API_NEXT] {
        let r = get(ctx, "/api/v1/labs/stats", token);
        assert_eq!(r.status, 403, "{}", r.text());
    }
    for wrong in [
        "itest-api-token-9d27e",
        "itest-api-token-next-64c1f0x",
        "itest-operator-token",
    ] {
        assert_eq!(
            get(ctx, &format!("{SESSIONS}/{old_lab}"), wrong).status,
            401
        );
    }

    // Readiness: the operator is told; anyone else gets the plain answer.
    let health = get(ctx, "/healthz", OPERATOR_TOKEN).json();
    assert_eq!(health["status"], "ok");
    assert_eq!(settings(&health["rotations"]).len(), 3, "{health}");
    assert!(
        health["rotations"][0]["notice"]
            .as_str()
            .is_some_and(|n| n.starts_with("a previous API token is still accepted")),
        "{health}"
    );
    for token in [API_NEXT, "not-a-token"] {
        assert_eq!(get(ctx, "/healthz", token).json(), json!({"status": "ok"}));
    }
    assert_eq!(
        ctx.worker
            .unauthenticated("GET", "/healthz", &[], b"")
            .json(),
        json!({"status": "ok"})
    );
    // The dashboard, logged in with the previous operator token, shows the three.
    dashboard_banner(
        ctx,
        OPERATOR_TOKEN,
        &[
            "API_TOKEN_PREVIOUS",
            "OPERATOR_TOKEN_PREVIOUS",
            "WEBHOOK_SECRET_PREVIOUS",
        ],
        Some("dashboard-rotation.png"),
    );
    let metrics = get(ctx, "/metrics", OPERATOR_NEXT).text();
    for secret in ["API_TOKEN", "OPERATOR_TOKEN", "WEBHOOK_SECRET"] {
        let line = format!("labs_cleanup_previous_secret_set{{secret=\"{secret}\"}} 1\n");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }

    // Webhooks: every delivery carries both signatures, and each secret verifies it, by
    // Python's hmac and by the official library (index 0: the old secret, 1: the new one).
    let got = ctx.receiver.wait(old_lab, 30, |d| {
        d.iter().any(|d| d["type"] == "lab.cleanup_completed")
    });
    for d in &got {
        assert_eq!(d["verified_by"], json!([0, 1]), "{d}");
        assert_eq!(
            d["official_by"],
            json!([0, 1]),
            "the official Standard Webhooks library (scripts/setup.sh installs it in .tools/venv): {d}"
        );
        assert_eq!(d["signature"].as_str().unwrap().matches("v1,").count(), 2);
    }

    // The ledger line of each route names the token's slot, never its value.
    let seen = slots(ctx, mark);
    assert!(
        seen.contains(&("route create".into(), "previous".into()))
            && seen.contains(&("route create".into(), "current".into()))
            && seen.contains(&("route stats".into(), "previous".into()))
            && seen.contains(&("route stats".into(), "current".into())),
        "{seen:?}"
    );

    // Step 2: the callers switched; the previous values removed.
    ctx.worker.restart_with_secrets(
        &[],
        &[
            "API_TOKEN_PREVIOUS",
            "OPERATOR_TOKEN_PREVIOUS",
            "WEBHOOK_SECRET_PREVIOUS",
        ],
    );
    for token in [API_TOKEN, OPERATOR_TOKEN] {
        let r = get(ctx, &format!("{SESSIONS}/{old_lab}"), token);
        assert_eq!(
            r.status,
            401,
            "a previous value after the rotation: {}",
            r.text()
        );
    }
    assert_eq!(
        get(ctx, &format!("{SESSIONS}/{new_lab}"), API_NEXT).status,
        200
    );
    let stats = get(ctx, "/api/v1/labs/stats", OPERATOR_NEXT).json();
    assert_eq!(stats["rotations"], json!([]));
    assert_eq!(
        get(ctx, "/healthz", OPERATOR_NEXT).json(),
        json!({"status": "ok", "rotations": []})
    );
    let metrics = get(ctx, "/metrics", OPERATOR_NEXT).text();
    assert!(metrics.contains("labs_cleanup_previous_secret_set{secret=\"API_TOKEN\"} 0\n"));
    dashboard_banner(ctx, OPERATOR_NEXT, &[], None);
    let after = "rotation-after";
    assert_eq!(create_with(ctx, API_NEXT, after, 3).status, 201);
    let got = ctx.receiver.wait(after, 30, |d| {
        d.iter().any(|d| d["type"] == "lab.cleanup_completed")
    });
    for d in &got {
        assert_eq!(d["verified_by"], json!([1]), "{d}");
        assert_eq!(d["official_by"], json!([1]), "{d}");
    }

    // No value of any token in anything the worker printed.
    let log = ctx.worker.log();
    for value in [API_TOKEN, API_NEXT, OPERATOR_TOKEN, OPERATOR_NEXT] {
        assert!(!log.contains(value), "a token value in the worker's output");
    }

    // Back to the harness's values for the tests after this one.
    ctx.worker.restart_with_secrets(
        &[
            ("API_TOKEN", API_TOKEN),
            ("OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
        &[],
    );
}
