//! The deploy pipeline's guards, run for real: wrangler's own reading of wrangler.toml, the checker, the build guard.

use std::path::Path;
use std::process::Command;

use crate::support::output_text;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `node scripts/deploy-config.mjs <env> <file>` then `deploy-check`; returns (exit code, output).
fn check(env: &str, toml: &Path, secrets: &str) -> (i32, String) {
    let dir = tempdir(env);
    let config = Command::new("node")
        .current_dir(root())
        .args(["scripts/deploy-config.mjs", env])
        .arg(toml)
        .env("WRANGLER_SEND_METRICS", "false")
        .output()
        .expect("node");
    assert!(
        config.status.success(),
        "deploy-config: {}",
        String::from_utf8_lossy(&config.stderr)
    );
    std::fs::write(dir.join("config.json"), &config.stdout).unwrap();
    std::fs::write(dir.join("secrets.json"), secrets).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-check"))
        .arg(dir.join("config.json"))
        .arg(dir.join("secrets.json"))
        .output()
        .expect("deploy-check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SECRETS: &str = r#"[{"name":"API_TOKEN","type":"secret_text"},{"name":"BACKEND_API_TOKEN","type":"secret_text"},{"name":"OPERATOR_TOKEN","type":"secret_text"}]"#;

/// The shipped `wrangler.toml` cannot be deployed until `BACKEND_URL` is filled in; once it is,
/// the check passes; a missing `API_TOKEN` stops it too. And a bare `wrangler deploy` (which
/// skips these checks) is refused by the build.
pub fn deploy_checks_refuse_a_configuration_that_would_not_work(_ctx: &crate::support::Ctx) {
    let shipped = root().join("wrangler.toml");
    for env in ["production", "staging"] {
        let (code, out) = check(env, &shipped, SECRETS);
        assert_eq!(code, 1, "{env}: {out}");
        assert!(
            out.contains(&format!(
                "✘ BACKEND_URL is not set (set it in [env.{env}.vars] of wrangler.toml)"
            )),
            "{out}"
        );
        assert!(out.contains("has no real database_id"), "{out}");
    }

    let text = std::fs::read_to_string(&shipped).unwrap();
    let filled = text
        .replacen(
            "BACKEND_URL = \"\"",
            "BACKEND_URL = \"https://labs-api.example.com\"",
            1,
        )
        .replacen(
            "REPLACE-WITH-THE-ID-OF-npx-wrangler-d1-create-labs-cleanup\"",
            "6d1f3a52-2c4e-4b8f-9a7d-1e2f3a4b5c6d\"",
            1,
        );
    assert_ne!(filled, text, "the production BACKEND_URL placeholder moved");
    let dir = tempdir("filled");
    let toml = dir.join("wrangler.toml");
    std::fs::write(&toml, filled).unwrap();
    let (code, out) = check("production", &toml, SECRETS);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("BACKEND_URL = https://labs-api.example.com"),
        "{out}"
    );
    let (code, out) = check("production", &toml, "[]");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("✘ secret API_TOKEN is not set"), "{out}");

    // A bare deploy is refused by the build, before anything is uploaded. (A dry run is let
    // through: it uploads nothing, and `wrangler check startup` builds through one.)
    let bare = Command::new(root().join("node_modules/.bin/wrangler"))
        .current_dir(root())
        .args(["deploy", "--env", "production"])
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "true")
        .env_remove("LABS_CLEANUP_DEPLOY_CHECKED")
        .output()
        .expect("wrangler");
    let all = output_text(&bare);
    assert!(
        !bare.status.success(),
        "a bare wrangler deploy went through:\n{all}"
    );
    assert!(
        all.contains("deploy with 'bash scripts/deploy.sh production'"),
        "{all}"
    );
}

/// The migrations on a database the previous schema wrote (`tests/migrations/upgrade.py`, with
/// SQLite, the engine of D1): the newest keeps every row, and the counts its triggers keep equal
/// the rows' before it, right after it and after more writes.
pub fn migrations_upgrade_a_written_database(_ctx: &crate::support::Ctx) {
    let out = Command::new("python3")
        .arg(root().join("tests/migrations/upgrade.py"))
        .arg(root().join("migrations"))
        .output()
        .expect("python3 tests/migrations/upgrade.py");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    println!("migrations: {}", text.trim());
}
