//! Test support: starts the mock backend and the real worker (`wrangler dev` on workerd), and helpers to talk to them.

use std::fs;
use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mock_backend::http::{self, Response};
use mock_backend::{Call, Endpoint, MockBackend, Options};
use serde_json::{json, Value};

/// Seconds in one `duration` unit for the tests: a `duration: 2` lab expires in 2 s.
pub const DURATION_UNIT_SECONDS: u64 = 1;
/// Seconds between cleanup attempts in the tests.
pub const RETRY_SECONDS: u64 = 2;
/// Timeout of one backend call in the tests.
pub const BACKEND_TIMEOUT_SECONDS: u64 = 2;
/// Completed sessions are kept `RETENTION_DAYS` units of `RETENTION_UNIT_SECONDS` in the tests.
pub const RETENTION_DAYS: u64 = 1;
pub const RETENTION_UNIT_SECONDS: u64 = 4;
/// The backend token the worker is given (as a secret) and the mock expects.
pub const BACKEND_TOKEN: &str = "itest-backend-token-5f1c";
/// The API token the worker is given (as a secret) and the tests present.
pub const API_TOKEN: &str = "itest-api-token-9d27e4";
/// The operator token the worker is given (as a secret): the fleet-wide routes.
pub const OPERATOR_TOKEN: &str = "itest-operator-token-31b8aa";
/// Longest wait for `wrangler dev` to build and start.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `command` to its end; fails with what it printed unless it succeeded (`what` names it).
fn run_ok(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        output_text(&out)
    );
}

/// What a finished process printed: its standard output, then its standard error.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether this process has built the project's worker already (`build/`).
static BUILT: AtomicBool = AtomicBool::new(false);

/// The project's `wrangler.toml` without its `[build]` table, written once per process beside it
/// (the paths in it are relative to its folder; `.gitignore` lists it). The harness builds the
/// worker itself, once: with a custom build, wrangler builds it again and reloads it when its file
/// watcher is ready, and under load that reload came while the first runtime was still starting,
/// which then failed to bind its port ("Address already in use").
pub fn project_config() -> PathBuf {
    static WRITTEN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    WRITTEN
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let text = fs::read_to_string(root.join("wrangler.toml")).expect("wrangler.toml");
            let mut kept = String::new();
            let mut in_build = false;
            for line in text.lines() {
                let trimmed = line.trim();
                if trimmed.starts_with('[') {
                    in_build = trimmed == "[build]";
                }
                if !in_build {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            assert!(kept.contains("main = "), "wrangler.toml has no main");
            let path = root.join(".wrangler.integration.toml");
            let part = root.join(format!(".wrangler.integration.toml.{}", std::process::id()));
            fs::write(&part, kept).expect("write the test configuration");
            fs::rename(&part, &path).expect("write the test configuration");
            path
        })
        .clone()
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// `wrangler dev` running the worker, in its own process group so it can be stopped whole.
pub struct Worker {
    child: Option<Child>,
    pub addr: String,
    pub log_path: PathBuf,
    pub state_dir: PathBuf,
    env_file: PathBuf,
    port: u16,
    backend_url: String,
    extra_vars: Vec<(String, String)>,
    secrets: Vec<(String, String)>,
    /// `wrangler.toml` to run (the project's when `None`).
    config: Option<PathBuf>,
    /// Skip the worker build (`build/` is already there): for a second worker started while
    /// the first one runs, which must not have its files rewritten under it.
    skip_build: bool,
    /// Whether the D1 migrations were applied to the state directory.
    migrated: bool,
    /// The inspector's port (the Chrome DevTools protocol: the benchmark samples CPU with it).
    pub inspector_port: u16,
}

/// How to start a `wrangler dev` other than the shared one.
pub struct Spec<'a> {
    /// Log file name in the work dir.
    pub log_name: &'a str,
    /// `wrangler.toml` to run, relative to the project root (the project's when `None`).
    pub config: Option<&'a str>,
    /// Reuse `build/` instead of building the worker again.
    pub skip_build: bool,
    /// Secrets besides the tokens every worker gets.
    pub secrets: &'a [(&'a str, &'a str)],
}

/// The webhook secret the shared worker signs with and the test receiver verifies with (the
/// Standard Webhooks specification's example secret).
pub const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The secret that replaces it in the rotation test; the receiver knows it too (its index 1 in
/// `verified_by` and `official_by`).
pub const WEBHOOK_SECRET_NEXT: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// `lab.expiring` comes this many `duration` units (seconds here) before the expiry.
pub const WARN_BEFORE: u64 = 3;

/// The webhook receiver of the tests (`tests/webhooks/receiver.py`): verifies every signature
/// with Python's own hmac and with the official Standard Webhooks library (run by the Python of
/// `.tools/venv`, where `scripts/setup.sh` installs it), records every delivery, answers as told
/// per lab.
pub struct Receiver {
    child: Child,
    pub url: String,
    addr: String,
}

impl Receiver {
    pub fn start() -> Receiver {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let venv = root.join(".tools/venv/bin/python3");
        let python = if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        };
        let mut child = Command::new(python)
            .arg(root.join("tests/webhooks/receiver.py"))
            .args([WEBHOOK_SECRET, WEBHOOK_SECRET_NEXT])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 tests/webhooks/receiver.py");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("receiver stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("receiver port");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening on http://...")
            .to_string();
        let addr = url.trim_start_matches("http://").to_string();
        Receiver { child, url, addr }
    }

    /// Every delivery received so far for `lab` (the receiver filters: the whole list of a long
    /// run outgrows a response the client reads).
    fn deliveries_of(&self, lab: &str) -> Vec<Value> {
        let r = http::request(
            &self.addr,
            "GET",
            &format!("/__receiver/deliveries?lab={}", percent(lab)),
            &[],
            b"",
            Duration::from_secs(10),
        )
        .expect("receiver");
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// The deliveries for one lab.
    pub fn deliveries_for(&self, lab: &str) -> Vec<Value> {
        self.deliveries_of(lab)
            .into_iter()
            .filter(|d| d["lab_request_id"] == lab)
            .collect()
    }

    /// Tells the receiver how to answer for `lab`: `{"fail": n}`, `{"hang": true}` or `{}`.
    pub fn mode(&self, lab: &str, mode: Value) {
        let mut body = mode;
        body["lab_request_id"] = Value::String(lab.into());
        http::request(
            &self.addr,
            "POST",
            "/__receiver/mode",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
            Duration::from_secs(10),
        )
        .expect("receiver mode");
    }

    /// Waits until the deliveries for `lab` satisfy `done`; returns them.
    pub fn wait(&self, lab: &str, secs: u64, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let mine = self.deliveries_for(lab);
            if done(&mine) {
                return mine;
            }
            assert!(
                Instant::now() < deadline,
                "webhook deliveries for {lab} never reached the state; got:\n{}",
                serde_json::to_string_pretty(&mine).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    /// Starts `wrangler dev` on a free port, talking to `backend_url`, with state in `work_dir`.
    #[allow(dead_code)] // the benchmark's
    pub fn start(work_dir: &Path, backend_url: &str, extra_vars: &[(&str, &str)]) -> Worker {
        Worker::start_spec(
            work_dir,
            backend_url,
            extra_vars,
            Spec {
                log_name: "wrangler.log",
                config: None,
                skip_build: false,
                secrets: &[],
            },
        )
    }

    /// `start`, with the options of `spec`.
    pub fn start_spec(
        work_dir: &Path,
        backend_url: &str,
        extra_vars: &[(&str, &str)],
        spec: Spec,
    ) -> Worker {
        fs::create_dir_all(work_dir).expect("work dir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let env_file = work_dir.join(format!("{}.env", spec.log_name));
        let mut worker = Worker {
            child: None,
            addr: String::new(),
            log_path: work_dir.join(spec.log_name),
            state_dir: work_dir.join("state"),
            env_file,
            port: free_port(),
            backend_url: backend_url.to_string(),
            extra_vars: extra_vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            secrets: vec![
                ("BACKEND_API_TOKEN".into(), BACKEND_TOKEN.into()),
                ("API_TOKEN".into(), API_TOKEN.into()),
                ("OPERATOR_TOKEN".into(), OPERATOR_TOKEN.into()),
            ],
            config: spec.config.map(|c| root.join(c)),
            skip_build: spec.skip_build,
            migrated: false,
            inspector_port: 0,
        };
        worker.secrets.extend(
            spec.secrets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        worker.spawn();
        worker
    }

    /// Applies the D1 migrations (`migrations/`) to this worker's local state, as the run
    /// command does; only for the project's own configuration.
    fn migrate(&mut self) {
        if self.migrated || self.config.is_some() {
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        run_ok(
            Command::new(root.join("node_modules/.bin/wrangler"))
                .current_dir(root)
                .args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"])
                .arg(&self.state_dir)
                .env("CI", "true")
                .env("WRANGLER_SEND_METRICS", "false"),
            "applying the D1 migrations",
        );
        self.migrated = true;
    }

    /// Runs SQL on this worker's local D1 index (`wrangler d1 execute --local`), as an operator
    /// would; returns wrangler's output. The running worker shares the SQLite file: a moment
    /// when it holds the write lock fails the command with `SQLITE_BUSY` (nothing applied), so
    /// that failure is tried again a few times.
    pub fn d1(&self, sql_file: &Path) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut tries = 0;
        loop {
            tries += 1;
            let out = Command::new(root.join("node_modules/.bin/wrangler"))
                .current_dir(root)
                .args(["d1", "execute", "DB", "--local", "--persist-to"])
                .arg(&self.state_dir)
                .arg("--file")
                .arg(sql_file)
                .env("CI", "true")
                .env("WRANGLER_SEND_METRICS", "false")
                .output()
                .expect("wrangler d1 execute");
            let text = output_text(&out);
            if out.status.success() {
                return text;
            }
            assert!(
                text.contains("SQLITE_BUSY") && tries < 5,
                "wrangler d1 execute failed (try {tries}):\n{text}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn spawn(&mut self) {
        self.migrate();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let secrets: String = self
            .secrets
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        fs::write(&self.env_file, secrets).expect("env file");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut vars = vec![
            ("BACKEND_URL".to_string(), self.backend_url.clone()),
            (
                "DURATION_UNIT_SECONDS".to_string(),
                DURATION_UNIT_SECONDS.to_string(),
            ),
            (
                "CLEANUP_RETRY_SECONDS".to_string(),
                RETRY_SECONDS.to_string(),
            ),
            (
                "BACKEND_TIMEOUT_SECONDS".to_string(),
                BACKEND_TIMEOUT_SECONDS.to_string(),
            ),
            ("RETENTION_DAYS".to_string(), RETENTION_DAYS.to_string()),
            // No spread of first attempts: tests wait for a cleanup right after the expiry (the
            // spread is measured by the benchmark and unit-tested in `lab::retry`).
            ("EXPIRY_SPREAD_SECONDS".to_string(), "0".to_string()),
            // The grace stage on, keeping no VM unless a create asks (`stage`'s tests): every
            // other lab is deleted at once, as without it.
            ("STOP_PATH".to_string(), mock_backend::STOP_PATH.to_string()),
            (
                "START_PATH".to_string(),
                mock_backend::START_PATH.to_string(),
            ),
            ("KEEP_STOPPED_MINUTES".to_string(), "0".to_string()),
            (
                "RETENTION_UNIT_SECONDS".to_string(),
                RETENTION_UNIT_SECONDS.to_string(),
            ),
        ];
        vars.extend(self.extra_vars.iter().cloned());
        // The local runtime keeps the SQLite files of every Durable Object it has touched open
        // (three descriptors each): thousands of labs, each with an object per worker VM (its
        // claim), pass a limit of 20,000 descriptors that the platform, which spreads objects
        // over machines, does not have. Raised for the runtime where the system allows it.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("ulimit -n 262144 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"")
            .arg(root.join("node_modules/.bin/wrangler"));
        // The project's worker is built once per process, here rather than by wrangler (it runs
        // `project_config`, which has no custom build): the code does not change under the tests.
        if self.config.is_none() && !self.skip_build && !BUILT.load(Ordering::Relaxed) {
            run_ok(
                Command::new("bash")
                    .current_dir(root)
                    .arg("scripts/build-worker.sh"),
                "the build",
            );
            BUILT.store(true, Ordering::Relaxed);
        }
        // A configuration of the spec's with a custom build reuses `build/`.
        if self.skip_build {
            command.env("LABS_CLEANUP_SKIP_BUILD", "1");
        }
        command
            .current_dir(root)
            .args(["dev", "--ip", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--inspector-port")
            .arg({
                self.inspector_port = free_port();
                self.inspector_port.to_string()
            })
            .arg("--persist-to")
            .arg(&self.state_dir)
            .arg("--env-file")
            .arg(&self.env_file)
            .arg("--show-interactive-dev-session=false")
            // `GET /__scheduled` runs the Cron Trigger's handler once (the inventory tests).
            .arg("--test-scheduled")
            .env("CI", "true")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("FORCE_COLOR", "0")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .process_group(0);
        for (k, v) in &vars {
            command.arg("--var").arg(format!("{k}:{v}"));
        }
        command.arg("--config").arg(self.config_path());
        let log_from = self.log().len();
        let child = command
            .spawn()
            .expect("cannot start wrangler dev; run scripts/setup.sh");
        self.addr = format!("127.0.0.1:{}", self.port);
        self.child = Some(child);
        self.wait_ready(log_from);
    }

    /// The configuration `wrangler dev` runs: the spec's, or for the project's worker its
    /// `wrangler.toml` without the custom build (`project_config`).
    fn config_path(&self) -> PathBuf {
        match &self.config {
            Some(config) => config.clone(),
            None => project_config(),
        }
    }

    /// Waits until the worker answers, and, for a configuration with a custom build, until the
    /// rebuild its file watcher starts once it has scanned the watched folder has reloaded it:
    /// wrangler runs the build again on the watcher's `ready` event, which can come after the
    /// server first answers (a slow first scan), and the reload then cuts short every request
    /// in flight ("Your worker restarted mid-request").
    fn wait_ready(&mut self, log_from: usize) {
        let started = Instant::now();
        let custom_build = fs::read_to_string(self.config_path())
            .map(|text| text.lines().any(|l| l.trim() == "[build]"))
            .unwrap_or(false);
        let reloaded = |log: &str| {
            let log = log.get(log_from..).unwrap_or("");
            log.find("changed, restarting build...")
                .is_some_and(|at| log[at..].contains("Ready on "))
        };
        loop {
            if let Ok(r) = http::request(&self.addr, "GET", "/", &[], b"", Duration::from_secs(5)) {
                if r.status == 404 && (!custom_build || reloaded(&self.log())) {
                    eprintln!(
                        "worker ready on {} after {:.1} s",
                        self.addr,
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "wrangler dev exited ({status}) before it was ready:\n{}",
                    tail(&self.log(), 60)
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                self.stop();
                panic!(
                    "wrangler dev not ready after {READY_TIMEOUT:?}:\n{}",
                    tail(&self.log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the whole process group (wrangler, workerd, esbuild): TERM, then KILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever is left of the group (workerd may outlive its parent briefly).
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = child.wait();
    }

    /// Stops the worker and starts it again on the same persisted state and port (and the same
    /// build: the code has not changed).
    pub fn restart(&mut self) {
        self.stop();
        self.skip_build = true;
        self.spawn();
    }

    /// Another worker with this one's settings and secrets, on a state of its own in `work_dir`
    /// (a test whose thousands of objects the shared runtime should not carry: the local runtime
    /// keeps each object's files open).
    #[allow(dead_code)] // the integration tests'
    pub fn fresh(&self, work_dir: &Path) -> Worker {
        self.fresh_with(work_dir, &[], &[])
    }

    /// `fresh`, with `vars` and `secrets` added (or replaced); `{addr}` in a value stands for
    /// the new worker's own address (`PUBLIC_URL`).
    pub fn fresh_with(
        &self,
        work_dir: &Path,
        vars: &[(&str, &str)],
        secrets: &[(&str, &str)],
    ) -> Worker {
        fs::create_dir_all(work_dir).expect("work dir");
        let port = free_port();
        let own = |list: &[(String, String)], more: &[(&str, &str)]| {
            let mut list: Vec<(String, String)> = list
                .iter()
                .filter(|(k, _)| !more.iter().any(|(m, _)| m == k))
                .cloned()
                .collect();
            list.extend(more.iter().map(|(k, v)| {
                (
                    k.to_string(),
                    v.replace("{addr}", &format!("127.0.0.1:{port}")),
                )
            }));
            list
        };
        let mut worker = Worker {
            child: None,
            addr: String::new(),
            log_path: work_dir.join("wrangler.log"),
            state_dir: work_dir.join("state"),
            env_file: work_dir.join("wrangler.log.env"),
            port,
            backend_url: self.backend_url.clone(),
            extra_vars: own(&self.extra_vars, vars),
            secrets: own(&self.secrets, secrets),
            config: self.config.clone(),
            skip_build: true,
            migrated: false,
            inspector_port: 0,
        };
        worker.spawn();
        worker
    }

    /// Starts the worker again after `stop`, on the same persisted state, port and build.
    #[allow(dead_code)] // the benchmark's
    pub fn start_again(&mut self) {
        self.skip_build = true;
        self.spawn();
    }

    /// Restarts with each secret of `set` set to its value and those named in `drop` removed.
    #[allow(dead_code)] // the integration tests'
    pub fn restart_with_secrets(&mut self, set: &[(&str, &str)], drop: &[&str]) {
        for (name, value) in set {
            self.secrets.retain(|(n, _)| n != name);
            self.secrets.push((name.to_string(), value.to_string()));
        }
        self.secrets.retain(|(n, _)| !drop.contains(&n.as_str()));
        self.restart();
    }

    /// Restarts with the secret `name` set to `value`.
    pub fn restart_with_secret(&mut self, name: &str, value: &str) {
        self.secrets.retain(|(n, _)| n != name);
        self.secrets.push((name.to_string(), value.to_string()));
        self.restart();
    }

    /// Restarts with `vars` unless it runs with them already (a test that needs a setting an
    /// earlier test may have set, and must pass alone too).
    pub fn ensure_vars(&mut self, vars: &[(&str, &str)]) {
        let set = |(k, v): &(&str, &str)| {
            self.extra_vars
                .iter()
                .any(|(name, value)| name == k && value == v)
        };
        if !vars.iter().all(set) {
            self.restart_with(vars, &[]);
        }
    }

    /// Restarts with `vars` added (or replaced) and the secrets named in `drop_secrets` removed.
    pub fn restart_with(&mut self, vars: &[(&str, &str)], drop_secrets: &[&str]) {
        for (k, v) in vars {
            self.extra_vars.retain(|(name, _)| name != k);
            self.extra_vars.push((k.to_string(), v.to_string()));
        }
        self.secrets
            .retain(|(name, _)| !drop_secrets.contains(&name.as_str()));
        self.restart();
    }

    /// The worker's output so far (ANSI colour codes removed).
    /// Waits until lab `id`'s record is purged (its status answers 404), at most `secs`.
    #[allow(dead_code)] // the benchmark's and the cost test's
    pub fn wait_purged(&self, id: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.json("GET", &format!("/api/v1/labs/sessions/{id}"), &json!({}));
            if r.status == 404 {
                return;
            }
            assert!(Instant::now() < deadline, "{id} never purged: {}", r.text());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        strip_ansi(&text)
    }

    /// Sends a JSON request to the worker, with the API token.
    pub fn json(&self, method: &str, path: &str, body: &Value) -> Response {
        self.raw(
            method,
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Sends a request with the operator token.
    pub fn operator(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let bearer = format!("Bearer {OPERATOR_TOKEN}");
        self.unauthenticated(
            method,
            path,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    /// Sends a raw request to the worker, with the API token unless `headers` has an
    /// `Authorization` of its own.
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let bearer = format!("Bearer {API_TOKEN}");
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("Authorization"))
        {
            all.push(("Authorization", &bearer));
        }
        self.unauthenticated(method, path, &all, body)
    }

    /// Sends exactly these headers (no API token added).
    pub fn unauthenticated(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        // A connect the local machine refuses at once (EAGAIN: its ephemeral ports or the
        // listener's queue taken by a test's thousands of connections) is tried again: the
        // request was never sent. (A read that times out says EAGAIN too, after the timeout: that
        // one fails the test.)
        for attempt in 0.. {
            let started = std::time::Instant::now();
            match http::request(
                &self.addr,
                method,
                path,
                headers,
                body,
                Duration::from_secs(30),
            ) {
                Ok(r) => return r,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && started.elapsed() < Duration::from_secs(1)
                        && attempt < 20 =>
                {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("{method} {path} failed: {e}"),
            }
        }
        unreachable!()
    }

    /// Runs the Cron Trigger's handler (`GET /__scheduled`, wrangler's `--test-scheduled`) and
    /// returns its answer. A run takes under 2 s here, with the machine's two cores busy
    /// besides too; one not answered in 120 s was lost by the local proxy, not by the worker:
    /// wrangler's `ProxyWorker` puts a forward that failed (the runtime's connection dropped,
    /// seen only under load) back in its retry queue whenever the request's URL has a path
    /// (it compares the whole URL with the runtime's origin), and only the next request takes
    /// it out again, answering `500 Cannot reconstruct a Request with a used body`. Both are
    /// sent again (at most three times): the platform's next tick would run again too, and a
    /// run cut short goes on where it stopped. (wrangler 4.86.0's `ProxyWorker.ts`; later
    /// versions retry the forward themselves, cloudflare/workers-sdk#15252.)
    pub fn cron(&self) -> Response {
        const USED_BODY: &str = "Cannot reconstruct a Request with a used body";
        let mut lost = Vec::new();
        for _ in 0..4 {
            match http::request(
                &self.addr,
                "GET",
                "/__scheduled?cron=*/15+*+*+*+*",
                &[],
                b"",
                Duration::from_secs(120),
            ) {
                Ok(r) if r.status == 500 && r.text().contains(USED_BODY) => {
                    lost.push(format!("500 {USED_BODY}"))
                }
                Ok(r) => {
                    if !lost.is_empty() {
                        eprintln!("the local proxy lost a scheduled run: {lost:?}; sent again");
                    }
                    return r;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    lost.push(format!("no answer in 120 s ({e})"))
                }
                Err(e) => panic!("the scheduled run failed: {e}"),
            }
        }
        panic!("the scheduled run was never answered: {lost:?}")
    }

    /// `POST /api/v1/labs/sessions`.
    pub fn create(&self, body: &Value) -> Response {
        self.json("POST", "/api/v1/labs/sessions", body)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The numbers of one usage line (`LOG_STORAGE_OPS`): `storage ops for {what}: R read(s), W
/// write(s); usage: MS ms wall, RR storage row(s) read, RW written, B D1 batch(es), DR D1 row(s)
/// read, DW written, C backend call(s), H webhook call(s), P budget call(s), O object call(s)`.
/// `None` for other lines.
#[allow(dead_code)] // the benchmark's and the cost test's
pub fn usage_line(line: &str) -> Option<(String, Vec<f64>)> {
    let (_, rest) = line.split_once("storage ops for ")?;
    let (what, rest) = rest.split_once(": ")?;
    let (_, usage) = rest.split_once("; usage: ")?;
    let numbers: Vec<f64> = usage
        .split(", ")
        .filter_map(|part| part.split(' ').next()?.parse().ok())
        .collect();
    (numbers.len() >= 9).then(|| (what.to_string(), numbers))
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A create request's body: lab `id` of `user`, `duration` minutes (in the test's unit), one
/// `worker_nodes` entry per id of `workers`.
pub fn lab(id: &str, user: &str, duration: u64, workers: &[&str]) -> Value {
    let nodes: Vec<Value> = workers
        .iter()
        .map(|w| json!({ "worker_lab_request_id": w }))
        .collect();
    json!({"lab_request_id": id, "user_id": user, "duration": duration, "worker_nodes": nodes})
}

/// Creates the lab (`lab`'s body), asserts the `201`, and returns the answer's JSON.
pub fn create_lab(ctx: &Ctx, id: &str, user: &str, duration: u64, workers: &[&str]) -> Value {
    let r = ctx.worker.create(&lab(id, user, duration, workers));
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// What every test gets: the mock backend, the webhook receiver, and the worker wired to both.
pub struct Ctx {
    pub mock: MockBackend,
    pub receiver: Receiver,
    pub worker: Worker,
    pub work_dir: PathBuf,
}

impl Ctx {
    pub fn start() -> Ctx {
        let work_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("integration-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work_dir);
        let mock = MockBackend::start(
            "127.0.0.1:0",
            Options {
                expected_token: Some(BACKEND_TOKEN.into()),
                ..Options::default()
            },
        )
        .expect("mock backend");
        let receiver = Receiver::start();
        let warn = WARN_BEFORE.to_string();
        let worker = Worker::start_spec(
            &work_dir,
            &mock.url(),
            &[
                ("WEBHOOK_URL", &receiver.url),
                ("WARN_BEFORE_MINUTES", &warn),
                ("WEBHOOK_RETRY_SCHEDULE_SECONDS", "1"),
            ],
            Spec {
                log_name: "wrangler.log",
                config: None,
                skip_build: false,
                secrets: &[("WEBHOOK_SECRET", WEBHOOK_SECRET)],
            },
        );
        Ctx {
            mock,
            receiver,
            worker,
            work_dir,
        }
    }
}

impl Ctx {
    /// Runs `test` with `ctx.worker` a worker of its own (`Worker::fresh`, its state in `dir`
    /// under the work dir), then stops it and puts the shared worker back, whatever the test did.
    pub fn on_a_worker_of_its_own(&mut self, dir: &str, test: impl FnOnce(&mut Ctx)) {
        self.on_a_worker_with(dir, &[], &[], test)
    }

    /// `on_a_worker_of_its_own`, the worker started with `vars` and `secrets` added
    /// (`Worker::fresh_with`).
    pub fn on_a_worker_with(
        &mut self,
        dir: &str,
        vars: &[(&str, &str)],
        secrets: &[(&str, &str)],
        test: impl FnOnce(&mut Ctx),
    ) {
        let fresh = self
            .worker
            .fresh_with(&self.work_dir.join(dir), vars, secrets);
        let shared = std::mem::replace(&mut self.worker, fresh);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(self)));
        let mut fresh = std::mem::replace(&mut self.worker, shared);
        fresh.stop();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Waits until the calls naming `ids` satisfy `done`, or fails with what was seen.
pub fn wait_calls(ctx: &Ctx, ids: &[&str], secs: u64, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
    let (calls, ok) = ctx.mock.wait_for(ids, Duration::from_secs(secs), done);
    assert!(
        ok,
        "backend calls for {ids:?} did not reach the expected state in {secs} s; saw:\n{}",
        show(&calls)
    );
    calls
}

/// Waits until exactly `n` calls name `ids`, then `settle` more seconds, and checks no more came.
pub fn wait_exactly(ctx: &Ctx, ids: &[&str], n: usize, secs: u64, settle: u64) -> Vec<Call> {
    wait_calls(ctx, ids, secs, |c| {
        c.len() >= n && c.iter().all(|c| c.done_ms > 0)
    });
    std::thread::sleep(Duration::from_secs(settle));
    let calls = ctx.mock.calls_for_any(ids);
    assert_eq!(
        calls.len(),
        n,
        "expected exactly {n} calls for {ids:?}, saw:\n{}",
        show(&calls)
    );
    calls
}

/// Waits until the worker's log contains `needle`.
pub fn wait_log(ctx: &Ctx, needle: &str, secs: u64) {
    wait_log_until(ctx, &format!("log line {needle:?}"), secs, |log| {
        log.contains(needle)
    });
}

/// Waits until `done` holds for the worker's log (`what` names it in the failure); the log.
pub fn wait_log_until(ctx: &Ctx, what: &str, secs: u64, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = ctx.worker.log();
        if done(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not come in {secs} s:\n{}",
            tail(&log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One line per call, for failure messages.
pub fn show(calls: &[Call]) -> String {
    calls
        .iter()
        .map(|c| {
            format!(
                "  #{} {} {} id={} user={} -> {:?} (at {} done {})",
                c.seq,
                c.method,
                c.path,
                c.lab_request_id.as_deref().unwrap_or("-"),
                c.user_id.as_deref().unwrap_or("-"),
                c.status,
                c.at_ms,
                c.done_ms
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `(endpoint, lab_request_id)` of a call, for compact assertions.
pub fn key(call: &Call) -> (Endpoint, &str) {
    (
        call.endpoint.expect("backend call"),
        call.lab_request_id.as_deref().unwrap_or(""),
    )
}

/// Milliseconds since the epoch of an RFC 3339 time from the API.
pub fn epoch_ms(rfc3339: &Value) -> u64 {
    let text = rfc3339.as_str().expect("time string");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad time {text}: {e}"))
        .timestamp_millis() as u64
}

/// Asserts no call reached the backend before the lab's `expires_at`.
pub fn assert_not_before(calls: &[Call], expires_at_ms: u64) {
    for c in calls {
        assert!(
            c.at_ms >= expires_at_ms,
            "call #{} came {} ms before the lab expired:\n{}",
            c.seq,
            expires_at_ms - c.at_ms,
            show(calls)
        );
    }
}

/// Asserts every call carried the backend token.
pub fn assert_authorized(calls: &[Call]) {
    let expected = format!("Bearer {BACKEND_TOKEN}");
    for c in calls {
        assert_eq!(
            c.authorization.as_deref(),
            Some(expected.as_str()),
            "call #{}",
            c.seq
        );
    }
}

/// The lab's timeline (`GET .../events`): `{"events": [...], "truncated": n}`.
pub fn lab_events(ctx: &Ctx, id: &str) -> Value {
    let r = ctx.worker.raw(
        "GET",
        &format!("/api/v1/labs/sessions/{id}/events"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The types of a timeline's events, in order.
pub fn event_types(timeline: &Value) -> Vec<String> {
    timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `GET /api/v1/labs/sessions/{id}` until `done(body)` holds; returns that body.
pub fn poll_status(ctx: &Ctx, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = ctx
            .worker
            .raw("GET", &format!("/api/v1/labs/sessions/{id}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "session {id} never reached the state; last: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Milliseconds since the Unix epoch, on this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `text` as a URL query value: unreserved characters as they are, every other byte `%XX`.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `invocation` records of the worker's log (a logged object, printed over several lines:
/// `{`, `event: 'invocation',`, `kind: 'cron',`, ..., `}`), as (kind, external, services, d1).
pub fn invocations(log: &str) -> Vec<(String, u64, u64, u64)> {
    invocation_records(log)
        .iter()
        .filter_map(|record| {
            Some((
                record_field(record, "kind")?,
                record_field(record, "external")?.parse().ok()?,
                record_field(record, "services")?.parse().ok()?,
                record_field(record, "d1")?.parse().ok()?,
            ))
        })
        .collect()
}

/// Each `invocation` record of the worker's log as one line of text.
pub fn invocation_records(log: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        if !line.contains("event: 'invocation'") {
            continue;
        }
        // The record's fields, up to its closing brace (or on this one line).
        let mut record = line.to_string();
        if !line.contains('}') {
            for next in lines.by_ref() {
                record.push(' ');
                record.push_str(next.trim());
                if next.trim_start().starts_with('}') {
                    break;
                }
            }
        }
        found.push(record);
    }
    found
}

/// One field of a record of `invocation_records`: a string without its quotes, or a number.
pub fn record_field(record: &str, name: &str) -> Option<String> {
    let at = record.find(&format!(" {name}: "))? + name.len() + 3;
    let rest = &record[at..];
    // A string is quoted (and may hold spaces); a number ends at a separator.
    if let Some(quoted) = rest.strip_prefix('\'') {
        return Some(quoted[..quoted.find('\'')?].to_string());
    }
    let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// Chromium's path when a browser test can run (Debian's `chromium` and playwright-core, both
/// installed by scripts/setup.sh); `None` after saying that `test` skips its browser part, which
/// `REQUIRE_BROWSER=1` (CI) makes a failure instead.
pub fn browser(test: &str) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if Path::new(&chromium).exists() && root.join("node_modules/playwright-core").exists() {
        return Some(chromium);
    }
    let why = format!(
        "no Chromium at {chromium} or no playwright-core in node_modules; run scripts/setup.sh (it installs Debian's chromium and chromium-driver where apt-get is available)"
    );
    assert!(
        std::env::var("REQUIRE_BROWSER").as_deref() != Ok("1"),
        "REQUIRE_BROWSER=1 but the browser test cannot run: {why}"
    );
    println!("{test}: SKIPPED the browser: {why}");
    None
}

/// Runs the browser script `script` (under tests/browser/) with `chromium` and `env`, prints what
/// it says, and fails the test if it fails.
pub fn run_browser(script: &str, chromium: &str, env: &[(&str, String)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .current_dir(root)
        .arg(Path::new("tests/browser").join(script))
        .env("CHROMIUM", chromium)
        .env("SCREENSHOTS", root.join("docs/screenshots"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node");
    let text = output_text(&out);
    println!("{}", text.trim_end());
    assert!(out.status.success(), "{script} failed:\n{text}");
}
