//! CPU time per invocation kind at its worst case, sampled on workerd through the inspector (the DevTools protocol's profiler) against the Free plan's 10 ms.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mock_backend::{MockBackend, RunningVm};
use serde_json::{json, Value};

use crate::env_or;
use crate::support::{Spec, Worker, WEBHOOK_SECRET};

/// Samples the isolate's CPU while `work` runs: the time it ran code, in µs.
fn busy_us(worker: &Worker, work: impl FnOnce()) -> u64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut profiler = Command::new("node")
        .arg("--experimental-websocket")
        .arg(root.join("tests/bench/cpu.mjs"))
        .arg(worker.inspector_port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node tests/bench/cpu.mjs");
    let mut out = BufReader::new(profiler.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the profiler did not start");
    work();
    // What the work left running (an answer's background work) ends within this.
    std::thread::sleep(Duration::from_millis(500));
    writeln!(profiler.stdin.as_mut().unwrap(), "stop").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = profiler.wait();
    let v: Value = serde_json::from_str(line.trim()).expect("a profile summary");
    // Where the time went, for the log (not the table): the functions that ran longest.
    for f in v["top"].as_array().into_iter().flatten() {
        println!(
            "cpu:   {:>9.2} ms  {}",
            f[1].as_f64().unwrap_or(0.0) / 1000.0,
            f[0].as_str().unwrap_or("?")
        );
    }
    v["busy_us"].as_u64().unwrap_or(0)
}

fn lab_body(id: &str, workers: usize, seconds: u64) -> Value {
    let nodes: Vec<Value> = (0..workers)
        .map(|w| json!({"worker_lab_request_id": format!("{id}-w{w:02}")}))
        .collect();
    json!({"lab_request_id": id, "user_id": "cpu-user", "duration": seconds, "worker_nodes": nodes, "labels": {"class": "cpu"}})
}

/// CPU per operation, in ms, for each kind at its worst case (every invocation of it counted:
/// the router's, the lab's object's, the claims' objects'): a table against Free's 10 ms.
pub fn section(work_dir: &Path, mock: &MockBackend) -> String {
    let n: usize = env_or("BENCH_CPU_REPS", 20);
    mock.reset();
    mock.set_latency(Duration::ZERO);
    mock.set_capacity(None);
    let mut worker = Worker::start_spec(
        &work_dir.join("cpu"),
        &mock.url(),
        &[
            ("WEBHOOK_URL", &format!("{}/hooks", mock.url())),
            ("BACKEND_MAX_CONCURRENCY", "10"),
            ("INVENTORY_PATH", "/api/v1/labs/inventory"),
            ("RECONCILE_ACT", "true"),
        ],
        Spec {
            log_name: "cpu.log",
            config: None,
            skip_build: false,
            secrets: &[("WEBHOOK_SECRET", WEBHOOK_SECRET)],
        },
    );
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut measure = |what: &str, per: usize, busy: u64| {
        // Closes the lines `busy_us` printed of where its time went.
        println!(
            "cpu: ^ {what}: {:.2} ms in all, {per} operation(s)",
            busy as f64 / 1000.0
        );
        rows.push((what.to_string(), busy as f64 / 1000.0 / per.max(1) as f64));
    };
    // Warm the isolate (its first request compiles and instantiates the module).
    worker.create(&lab_body("cpu-warm", 1, 600));

    for (what, workers) in [
        ("create, 1 VM (router, object, index row)", 0),
        ("create, 1 + 2 VMs (router, object, 2 claims, index row)", 2),
        (
            "create, 1 + 48 VMs (router, object, 48 claims, index row)",
            48,
        ),
    ] {
        let busy = busy_us(&worker, || {
            for i in 0..n {
                let r = worker.create(&lab_body(
                    &format!("cpu-create-{workers}-{i}"),
                    workers,
                    600,
                ));
                assert_eq!(r.status, 201, "{}", r.text());
            }
        });
        measure(what, n, busy);
    }
    let busy = busy_us(&worker, || {});
    measure(
        "nothing (the profiler's own floor over the same pause)",
        1,
        busy,
    );

    let busy = busy_us(&worker, || {
        for i in 0..n {
            let r = worker.raw(
                "GET",
                &format!("/api/v1/labs/sessions/cpu-create-48-{i}"),
                &[],
                b"",
            );
            assert_eq!(r.status, 200);
        }
    });
    measure("status", n, busy);

    // Cleanups: labs created before the profile, cleaned up during it.
    let labs = n.min(10);
    for i in 0..labs {
        worker.create(&lab_body(&format!("cpu-clean-{i}"), 48, 3));
    }
    std::thread::sleep(Duration::from_millis(500));
    let busy = busy_us(&worker, || {
        let deadline = Instant::now() + Duration::from_secs(120);
        for i in 0..labs {
            loop {
                let v = worker
                    .raw(
                        "GET",
                        &format!("/api/v1/labs/sessions/cpu-clean-{i}"),
                        &[],
                        b"",
                    )
                    .json();
                if v["status"] == "completed" {
                    break;
                }
                assert!(Instant::now() < deadline, "cpu-clean-{i}: {v}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    measure(
        "cleanup, 1 + 48 VMs (the attempt's alarm with its permits, the index row, the webhooks; and the status polls)",
        labs,
        busy,
    );

    // A Cron Trigger run over a page of 1,000 VMs no lab knows.
    for v in 0..1_000 {
        mock.run_vm(RunningVm {
            lab_request_id: format!("cpu-inv-{v:04}"),
            user_id: "cpu-user".into(),
            created_at: Some("2026-01-01T00:00:00Z".into()),
            sticky: false,
        });
    }
    mock.set_page_size(1_000);
    let runs = 3;
    let busy = busy_us(&worker, || {
        for _ in 0..runs {
            let r = worker.unauthenticated("GET", "/__scheduled?cron=*/15+*+*+*+*", &[], b"");
            assert_eq!(r.status, 200);
        }
    });
    measure("cron run, a page of 1,000 unknown VMs", runs, busy);
    mock.set_page_size(0);

    for (what, path) in [
        ("list (50 labs)", "/api/v1/labs/sessions?limit=50"),
        ("stats", "/api/v1/labs/stats"),
    ] {
        let busy = busy_us(&worker, || {
            for _ in 0..n {
                let r = worker.operator("GET", path, b"");
                assert_eq!(r.status, 200, "{}", r.text());
            }
        });
        measure(what, n, busy);
    }
    worker.stop();
    // The floor: the same create of a single VM by the minimal JavaScript worker of the create's
    // comparison (a Durable Object that reads and writes the lab's record), profiled alike.
    let mut js = Worker::start_spec(
        &work_dir.join("cpu-js"),
        &mock.url(),
        &[],
        Spec {
            log_name: "cpu-js.log",
            config: Some("tests/bench/js/wrangler.toml"),
            skip_build: true,
            secrets: &[],
        },
    );
    js.create(&lab_body("cpu-js-warm", 0, 600));
    let busy = busy_us(&js, || {
        for i in 0..n {
            let r = js.create(&lab_body(&format!("cpu-js-{i}"), 0, 600));
            assert_eq!(r.status, 201, "{}", r.text());
        }
    });
    measure(
        "the floor: the same single-VM create by a minimal JavaScript worker",
        n,
        busy,
    );
    js.stop();

    let floor = rows.last().map(|(_, ms)| *ms).unwrap_or(1.0).max(0.001);
    let startup = startup_ms();
    let mut md = String::from(
        "CPU time the worker's isolate ran code, sampled by the inspector's profiler (100 µs) on `wrangler dev` while the benchmark drove it, divided by the operations; every invocation of an operation counted (the router's, the lab's object's, the objects its claims reach, the background work after the answer). The local runtime does work of its own in the same isolate (its proxy, local D1): a minimal JavaScript worker's create of a single VM through a Durable Object, the last row, is the floor here, and well under 1 ms on the platform, where most requests take less than a millisecond of CPU. So read the last column: each operation in multiples of that floor.\n\n| operation | CPU here (ms) | × the floor |\n|---|---|---|\n",
    );
    for (what, ms) in &rows {
        md.push_str(&format!("| {what} | {ms:.2} | {:.1} |\n", ms / floor));
    }
    md.push_str(&format!(
        "\nStartup: `wrangler check startup` profiles the module's evaluation at **{startup:.1} ms** here, against the platform's limit of 1 s (1,000 ms).\n"
    ));
    md
}

/// The startup phase's length, from `wrangler check startup`'s CPU profile (its span), in ms.
fn startup_ms() -> f64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!(
        "labs-cleanup-startup-{}.cpuprofile",
        std::process::id()
    ));
    let status = Command::new(root.join("node_modules/.bin/wrangler"))
        .current_dir(root)
        .args(["check", "startup", "--outfile"])
        .arg(&out)
        .env("CI", "true")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("LABS_CLEANUP_SKIP_BUILD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("wrangler check startup");
    assert!(status.success(), "wrangler check startup failed");
    let profile: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default())
        .unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let span =
        profile["endTime"].as_f64().unwrap_or(0.0) - profile["startTime"].as_f64().unwrap_or(0.0);
    span / 1000.0
}
