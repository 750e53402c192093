//! `deploy-check`: refuses a deployment whose settings would not work, with the worker's own configuration rules.
//!
//! Usage: `deploy-check CONFIG.json SECRETS.json`, where CONFIG.json is what
//! `node scripts/deploy-config.mjs <env>` prints (wrangler's own resolution of that environment)
//! and SECRETS.json what `npx wrangler secret list --env <env>` prints. `scripts/deploy.sh` runs
//! it before every deploy; it exits 1 when anything is wrong, saying what and how to fix it.

use std::collections::BTreeMap;

use labs_cleanup::lab::config::{Config, Webhooks};
use serde::Deserialize;

/// One environment of `wrangler.toml`, as `scripts/deploy-config.mjs` prints it.
#[derive(Debug, Deserialize)]
struct Deployment {
    environment: String,
    name: String,
    #[serde(default)]
    vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    durable_objects: Vec<DurableObjectBinding>,
    #[serde(default)]
    d1_databases: Vec<D1Binding>,
}

#[derive(Debug, Deserialize)]
struct D1Binding {
    binding: String,
    #[serde(default)]
    database_id: Option<String>,
    #[serde(default)]
    database_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DurableObjectBinding {
    name: String,
    class_name: String,
}

/// One secret as `wrangler secret list` prints it (values are never shown).
#[derive(Debug, Deserialize)]
struct SecretName {
    name: String,
}

/// Settings that are secrets: never in `[vars]`, only set with `wrangler secret put`.
const SECRETS: &[&str] = &[
    "API_TOKEN",
    "BACKEND_API_TOKEN",
    "OPERATOR_TOKEN",
    "WEBHOOK_SECRET",
    "API_TOKEN_PREVIOUS",
    "OPERATOR_TOKEN_PREVIOUS",
    "WEBHOOK_SECRET_PREVIOUS",
    "LINK_SECRET",
    "LINK_SECRET_PREVIOUS",
];

/// Stands in for a secret whose value cannot be read back: the right form, so that the rules
/// about the other settings can be checked; a different value for each secret (whether two
/// tokens are equal cannot be known from here: the deployed worker's `/healthz`, which
/// `scripts/deploy.sh` calls, answers 503 then).
fn stand_in(name: &str) -> String {
    match name {
        "WEBHOOK_SECRET" => "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        "WEBHOOK_SECRET_PREVIOUS" => "whsec_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into(),
        // 32 characters or more, as the worker requires of a link secret.
        "LINK_SECRET" | "LINK_SECRET_PREVIOUS" => format!("set-as-a-secret-{name}-0123456789"),
        _ => format!("set-as-a-secret-{name}"),
    }
}

/// What the check found: errors stop the deploy, warnings do not.
#[derive(Debug, Default, PartialEq, Eq)]
struct Report {
    ok: Vec<String>,
    warnings: Vec<String>,
    errors: Vec<String>,
}

fn check(deployment: &Deployment, secrets: &[String]) -> Report {
    let mut report = Report::default();
    let env = &deployment.environment;
    report.ok.push(format!(
        "environment {env} deploys the worker {}",
        deployment.name
    ));

    match deployment
        .durable_objects
        .iter()
        .find(|b| b.name == "SESSION_MANAGER")
    {
        Some(b) if b.class_name == "SessionManager" => report
            .ok
            .push("binding SESSION_MANAGER -> class SessionManager".into()),
        _ => report.errors.push(format!(
            "[env.{env}] needs [[env.{env}.durable_objects.bindings]] name = \"SESSION_MANAGER\", class_name = \"SessionManager\" (bindings are not inherited from the top level)"
        )),
    }

    // The fleet-wide budget's coordinator: without it a budget falls back to no budget.
    match deployment
        .durable_objects
        .iter()
        .find(|b| b.name == "BACKEND_BUDGET")
    {
        Some(b) if b.class_name == "BackendBudget" => report
            .ok
            .push("binding BACKEND_BUDGET -> class BackendBudget".into()),
        _ => report.errors.push(format!(
            "[env.{env}] needs [[env.{env}.durable_objects.bindings]] name = \"BACKEND_BUDGET\", class_name = \"BackendBudget\" (the fleet-wide budget's coordinator; bindings are not inherited from the top level)"
        )),
    }

    // The bulk jobs' objects: without them `POST /api/v1/labs/bulk` cannot start a job.
    match deployment
        .durable_objects
        .iter()
        .find(|b| b.name == "BULK_JOBS")
    {
        Some(b) if b.class_name == "BulkJob" => report
            .ok
            .push("binding BULK_JOBS -> class BulkJob".into()),
        _ => report.errors.push(format!(
            "[env.{env}] needs [[env.{env}.durable_objects.bindings]] name = \"BULK_JOBS\", class_name = \"BulkJob\" (the bulk actions' jobs; bindings are not inherited from the top level)"
        )),
    }

    match deployment.d1_databases.iter().find(|d| d.binding == "DB") {
        Some(db) => match db.database_id.as_deref() {
            Some(id) if looks_like_a_database_id(id) => report.ok.push(format!(
                "binding DB -> D1 database {} ({id})",
                db.database_name.as_deref().unwrap_or("?")
            )),
            _ => report.errors.push(format!(
                "[[env.{env}.d1_databases]] DB has no real database_id: run `npx wrangler d1 create {}` and put the id it prints in wrangler.toml",
                db.database_name.as_deref().unwrap_or("labs-cleanup")
            )),
        },
        None => report.errors.push(format!(
            "[env.{env}] needs [[env.{env}.d1_databases]] binding = \"DB\" (the fleet index; bindings are not inherited from the top level)"
        )),
    }

    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &deployment.vars {
        if SECRETS.contains(&name.as_str()) {
            report.errors.push(format!(
                "{name} is in [env.{env}.vars], in plain text: remove it there and run `npx wrangler secret put {name} --env {env}`"
            ));
            continue;
        }
        match value {
            serde_json::Value::String(text) => {
                vars.insert(name.clone(), text.clone());
            }
            other => report.errors.push(format!(
                "{name} in [env.{env}.vars] must be a string (got {other})"
            )),
        }
    }

    // Secret values cannot be read back; a stand-in lets the rules about the rest be checked.
    let lookup = |name: &str| {
        vars.get(name)
            .cloned()
            .or_else(|| secrets.iter().any(|s| s == name).then(|| stand_in(name)))
    };
    match Config::from_lookup(lookup)
        .and_then(|c| labs_cleanup::lab::invocation::worst::check(&c).map(|()| c))
    {
        Ok(config) => {
            report.ok.push(format!(
                "settings are valid; BACKEND_URL = {}",
                config.backend_url
            ));
            if config.dry_run && env == "production" {
                report.warnings.push(
                    "DRY_RUN is \"true\" in production: every cleanup is only logged and no VM is deleted".into(),
                );
            }
            if !config.dry_run && env == "staging" {
                report
                    .warnings
                    .push("DRY_RUN is not \"true\" in staging: this copy deletes real VMs".into());
            }
            // A rotation left half done is not an error, but it is not to be forgotten.
            for previous in config.rotations() {
                report.warnings.push(format!(
                    "{}; when it is done: `npx wrangler secret delete {} --env {env}`",
                    previous.notice(),
                    previous.setting()
                ));
            }
            match &config.webhooks {
                Webhooks::Off => report.ok.push("webhooks off (no WEBHOOK_URL)".into()),
                Webhooks::On(w) => report.ok.push(format!("webhooks to {}", w.url)),
                Webhooks::Broken(e) => report.errors.push(format!(
                    "{} (WEBHOOK_URL is set: the API would refuse every call; set it right, or remove WEBHOOK_URL)",
                    e.detail()
                )),
            }
        }
        Err(e) => report.errors.push(format!(
            "{} (set it in [env.{env}.vars] of wrangler.toml)",
            e.detail()
        )),
    }

    if secrets.iter().any(|s| s == "API_TOKEN") {
        report.ok.push("secret API_TOKEN is set".into());
    } else {
        report.errors.push(format!(
            "secret API_TOKEN is not set: the API would refuse every call. Run `npx wrangler secret put API_TOKEN --env {env}`"
        ));
    }
    if secrets.iter().any(|s| s == "BACKEND_API_TOKEN") {
        report.ok.push("secret BACKEND_API_TOKEN is set".into());
    } else {
        report.warnings.push(format!(
            "secret BACKEND_API_TOKEN is not set: backend calls carry no Authorization header (`npx wrangler secret put BACKEND_API_TOKEN --env {env}` if the backend wants one)"
        ));
    }
    if secrets.iter().any(|s| s == "OPERATOR_TOKEN") {
        report.ok.push("secret OPERATOR_TOKEN is set".into());
    } else {
        report.warnings.push(format!(
            "secret OPERATOR_TOKEN is not set: the list, stats and retry routes and the dashboard answer 503 (`npx wrangler secret put OPERATOR_TOKEN --env {env}`)"
        ));
    }
    report
}

/// A D1 database id as `wrangler d1 create` prints it: a UUID (not the shipped placeholder, and
/// not the all-zero id the local configuration uses).
fn looks_like_a_database_id(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        && id.chars().any(|c| c != '0' && c != '-')
}

fn read<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("deploy-check: cannot read {path}: {e}");
        std::process::exit(2)
    });
    serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("deploy-check: {path} is not what was expected: {e}");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config_path, secrets_path] = args.as_slice() else {
        eprintln!("usage: deploy-check CONFIG.json SECRETS.json");
        std::process::exit(2)
    };
    let deployment: Deployment = read(config_path);
    let secrets: Vec<SecretName> = read(secrets_path);
    let secrets: Vec<String> = secrets.into_iter().map(|s| s.name).collect();
    let report = check(&deployment, &secrets);
    for line in &report.ok {
        println!("  ✔ {line}");
    }
    for line in &report.warnings {
        println!("  ! {line}");
    }
    for line in &report.errors {
        println!("  ✘ {line}");
    }
    if !report.errors.is_empty() {
        println!(
            "\ndeploy-check: {} problem(s); nothing was deployed",
            report.errors.len()
        );
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(env: &str, vars: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "environment": env,
            "name": "labs-cleanup",
            "vars": vars,
            "durable_objects": [{"name": "SESSION_MANAGER", "class_name": "SessionManager"}, {"name": "BACKEND_BUDGET", "class_name": "BackendBudget"}, {"name": "BULK_JOBS", "class_name": "BulkJob"}],
            "d1_databases": [{"binding": "DB", "database_name": "labs-cleanup", "database_id": "3f1c2d6e-8a4b-4c1d-9e2f-0a1b2c3d4e5f"}],
        }))
        .unwrap()
    }

    fn secrets(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_complete_production_passes() {
        let d = deployment(
            "production",
            json!({"BACKEND_URL": "https://labs.example.com", "SUBREQUEST_LIMIT": "50"}),
        );
        let r = check(
            &d,
            &secrets(&["API_TOKEN", "BACKEND_API_TOKEN", "OPERATOR_TOKEN"]),
        );
        assert!(r.errors.is_empty(), "{r:?}");
        assert!(r.warnings.is_empty(), "{r:?}");
    }

    #[test]
    fn a_link_secret_without_a_public_url_stops_the_deploy() {
        let d = deployment(
            "production",
            json!({"BACKEND_URL": "https://labs.example.com", "WEBHOOK_URL": "https://hooks.example.com"}),
        );
        let r = check(
            &d,
            &secrets(&[
                "API_TOKEN",
                "OPERATOR_TOKEN",
                "WEBHOOK_SECRET",
                "LINK_SECRET",
            ]),
        );
        assert!(
            r.errors
                .iter()
                .any(|e| e.starts_with("PUBLIC_URL must be set whenever LINK_SECRET is")),
            "{r:?}"
        );
    }

    #[test]
    fn a_rotation_is_checked_by_the_workers_rules_and_left_as_a_warning() {
        let d = deployment(
            "production",
            json!({
                "BACKEND_URL": "https://labs.example.com",
                "WEBHOOK_URL": "https://hooks.example.com",
                "PUBLIC_URL": "https://labs-cleanup.example.com",
            }),
        );
        // Every secret set, the four previous values included.
        let r = check(&d, &secrets(SECRETS));
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.warnings.len(), 4, "{r:?}");
        let previous = SECRETS.iter().filter(|s| s.ends_with("_PREVIOUS"));
        for (w, setting) in r.warnings.iter().zip(previous) {
            assert!(
                w.contains(&format!(
                    "npx wrangler secret delete {setting} --env production"
                )),
                "{w}"
            );
        }
        // A previous value without the new one: the worker's own rule stops the deploy.
        let r = check(
            &d,
            &secrets(&["API_TOKEN_PREVIOUS", "OPERATOR_TOKEN", "WEBHOOK_SECRET"]),
        );
        assert!(
            r.errors
                .iter()
                .any(|e| e.starts_with("API_TOKEN_PREVIOUS must be set only during a rotation")),
            "{r:?}"
        );
        // In plain text, a previous value is as wrong as a current one.
        let d = deployment(
            "production",
            json!({"BACKEND_URL": "https://labs.example.com", "OPERATOR_TOKEN_PREVIOUS": "oops"}),
        );
        let r = check(&d, &secrets(&["API_TOKEN", "OPERATOR_TOKEN"]));
        assert!(
            r.errors
                .iter()
                .any(|e| e.starts_with("OPERATOR_TOKEN_PREVIOUS is in [env.production.vars]")),
            "{r:?}"
        );
    }

    #[test]
    fn an_empty_backend_url_fails_loudly() {
        let d = deployment("production", json!({"BACKEND_URL": ""}));
        let r = check(&d, &secrets(&["API_TOKEN"]));
        assert_eq!(
            r.errors,
            vec!["BACKEND_URL is not set (set it in [env.production.vars] of wrangler.toml)"]
        );
    }

    #[test]
    fn a_missing_api_token_and_a_bad_value_are_errors() {
        let d = deployment(
            "production",
            json!({"BACKEND_URL": "https://labs.example.com", "MAX_WORKER_NODES": "60"}),
        );
        let r = check(&d, &[]);
        assert_eq!(r.errors.len(), 2, "{r:?}");
        assert!(
            r.errors[0].starts_with("MAX_WORKER_NODES must be a whole number from 0 to 48"),
            "{r:?}"
        );
        assert!(r.errors[0].contains("(got \"60\")"));
        assert!(r.errors[1].starts_with("secret API_TOKEN is not set"));
        assert_eq!(
            r.warnings.len(),
            2,
            "BACKEND_API_TOKEN and OPERATOR_TOKEN: {r:?}"
        );
    }

    #[test]
    fn secrets_in_vars_and_missing_bindings_are_errors() {
        let mut d = deployment(
            "staging",
            json!({"BACKEND_URL": "https://labs.example.com", "API_TOKEN": "oops", "DRY_RUN": "true"}),
        );
        d.durable_objects.clear();
        let r = check(&d, &secrets(&["BACKEND_API_TOKEN"]));
        assert!(r
            .errors
            .iter()
            .any(|e| e.starts_with("[env.staging] needs")));
        assert!(r
            .errors
            .iter()
            .any(|e| e.starts_with("API_TOKEN is in [env.staging.vars], in plain text")));
        assert!(!r.errors.iter().any(|e| e.contains("oops")));
    }

    #[test]
    fn dry_run_mismatches_are_warnings() {
        let d = deployment(
            "production",
            json!({"BACKEND_URL": "https://labs.example.com", "DRY_RUN": "true"}),
        );
        let all = secrets(&["API_TOKEN", "BACKEND_API_TOKEN", "OPERATOR_TOKEN"]);
        let r = check(&d, &all);
        assert!(r.errors.is_empty());
        assert_eq!(r.warnings.len(), 1);
        let d = deployment(
            "staging",
            json!({"BACKEND_URL": "https://labs.example.com"}),
        );
        let r = check(&d, &all);
        assert!(r.warnings[0].contains("deletes real VMs"));
    }

    #[test]
    fn webhooks_need_their_secret() {
        let d = deployment(
            "production",
            json!({"BACKEND_URL": "https://labs.example.com", "WEBHOOK_URL": "https://hooks.example.com"}),
        );
        let r = check(
            &d,
            &secrets(&["API_TOKEN", "BACKEND_API_TOKEN", "OPERATOR_TOKEN"]),
        );
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(
            r.errors[0].starts_with("WEBHOOK_SECRET must be set"),
            "{r:?}"
        );
        let r = check(
            &d,
            &secrets(&[
                "API_TOKEN",
                "BACKEND_API_TOKEN",
                "OPERATOR_TOKEN",
                "WEBHOOK_SECRET",
            ]),
        );
        assert!(r.errors.is_empty(), "{r:?}");
        assert!(r
            .ok
            .iter()
            .any(|l| l == "webhooks to https://hooks.example.com"));
    }

    #[test]
    fn the_index_database_must_be_a_real_one() {
        for id in [
            "REPLACE-WITH-THE-ID-OF-npx-wrangler-d1-create-labs-cleanup",
            "00000000-0000-0000-0000-000000000000",
            "",
        ] {
            let mut d = deployment(
                "production",
                json!({"BACKEND_URL": "https://labs.example.com"}),
            );
            d.d1_databases[0].database_id = Some(id.into());
            let r = check(&d, &secrets(&["API_TOKEN"]));
            assert!(
                r.errors[0].contains("npx wrangler d1 create labs-cleanup"),
                "{id}: {r:?}"
            );
        }
        let mut d = deployment(
            "production",
            json!({"BACKEND_URL": "https://labs.example.com"}),
        );
        d.d1_databases.clear();
        let r = check(&d, &secrets(&["API_TOKEN"]));
        assert!(r.errors[0].contains("d1_databases"), "{r:?}");
    }

    #[test]
    fn the_shipped_wrangler_toml_is_refused_until_filled_in() {
        // What scripts/deploy-config.mjs prints for the shipped [env.production] (checked in
        // scripts/deploy.sh against the real file): BACKEND_URL is empty on purpose.
        let d = deployment(
            "production",
            json!({"BACKEND_URL": "", "CLEANUP_RETRY_SECONDS": "300", "SUBREQUEST_LIMIT": "50", "MAX_WORKER_NODES": "48"}),
        );
        let r = check(&d, &secrets(&["API_TOKEN"]));
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].starts_with("BACKEND_URL is not set"));
    }
}
