//! The fair budget: labs whose deletions hang for a whole timeout, retried for ever, and healthy labs expiring meanwhile, with the fleet-wide budget on.

use std::path::Path;
use std::time::{Duration, Instant};

use mock_backend::{Action, Endpoint, Fault, MockBackend};
use serde_json::{json, Value};

use crate::env_or;
use crate::support::{epoch_ms, Worker};

/// Creates lab `id` (1 master + `workers`), expiring in `seconds`.
fn create(worker: &Worker, id: &str, workers: usize, seconds: u64) {
    let nodes: Vec<Value> = (0..workers)
        .map(|w| json!({"worker_lab_request_id": format!("{id}-w{w}")}))
        .collect();
    let r = worker.create(&json!({"lab_request_id": id, "user_id": "fair-user", "duration": seconds, "worker_nodes": nodes}));
    assert_eq!(r.status, 201, "{}", r.text());
}

fn status(worker: &Worker, id: &str) -> Value {
    worker
        .raw("GET", &format!("/api/v1/labs/sessions/{id}"), &[], b"")
        .json()
}

/// Seconds from each healthy lab's expiry to its completion.
fn cleaned_in(worker: &Worker, ids: &[String]) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    ids.iter()
        .map(|id| loop {
            let v = status(worker, id);
            if v["status"] == "completed" {
                let lag = epoch_ms(&v["completed_at"]).saturating_sub(epoch_ms(&v["expires_at"]));
                break lag as f64 / 1000.0;
            }
            assert!(Instant::now() < deadline, "{id} never completed: {v}");
            std::thread::sleep(Duration::from_millis(100));
        })
        .collect()
}

/// `hanging` labs of 1 + 12 VMs whose deletions hang past the timeout (retried for ever), then,
/// once each of them failed an attempt, `healthy` labs of 1 + 3 VMs: how long each healthy lab
/// took from its expiry to its completion; and the same healthy labs on a clean machine.
pub fn section(work_dir: &Path, mock: &MockBackend) -> String {
    let hanging: usize = env_or("BENCH_FAIR_HANGING", 8);
    let healthy: usize = env_or("BENCH_FAIR_HEALTHY", 3);
    let budget: u32 = env_or("BENCH_FAIR_BUDGET", 10);
    let budget_var = budget.to_string();
    let vars = [
        ("BACKEND_MAX_CONCURRENCY", budget_var.as_str()),
        ("EXPIRY_SPREAD_SECONDS", "0"),
        ("FLEET_INDEX", "off"),
    ];
    mock.reset();
    mock.set_latency(Duration::from_millis(100));
    mock.set_capacity(None);
    // A clean machine: the healthy labs alone.
    let mut worker = Worker::start(&work_dir.join("fair-clean"), &mock.url(), &vars);
    let clean_ids: Vec<String> = (0..healthy).map(|i| format!("fair-clean-{i}")).collect();
    for id in &clean_ids {
        create(&worker, id, 3, 2);
    }
    let clean = cleaned_in(&worker, &clean_ids);
    worker.stop();
    // The same with labs whose deletions hang.
    let mut worker = Worker::start(&work_dir.join("fair-busy"), &mock.url(), &vars);
    let hang_ids: Vec<String> = (0..hanging).map(|i| format!("fair-hang-{i}")).collect();
    for id in &hang_ids {
        for vm in std::iter::once(id.clone()).chain((0..12).map(|w| format!("{id}-w{w}"))) {
            mock.add_fault(Fault::on(
                &vm,
                Endpoint::DeleteVm,
                Action::Hang { ms: 60_000 },
            ));
        }
        create(&worker, id, 12, 1);
    }
    // Until every hanging lab failed an attempt (its calls timed out) and retries.
    let started = Instant::now();
    for id in &hang_ids {
        loop {
            let v = status(&worker, id);
            if v["last_outcome"]["failed_deletions"].as_u64().unwrap_or(0) > 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "{id} never retried: {v}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let failing_after = started.elapsed().as_secs_f64();
    let budget_then = worker.operator("GET", "/api/v1/labs/budget", b"").text();
    eprintln!("fair: the budget when the healthy labs are created: {budget_then}");
    let busy_ids: Vec<String> = (0..healthy).map(|i| format!("fair-busy-{i}")).collect();
    for id in &busy_ids {
        create(&worker, id, 3, 2);
    }
    let busy = cleaned_in(&worker, &busy_ids);
    for id in &hang_ids {
        for vm in std::iter::once(id.clone()).chain((0..12).map(|w| format!("{id}-w{w}"))) {
            mock.clear_faults(&vm);
        }
    }
    worker.stop();
    mock.set_latency(Duration::ZERO);
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let ratio = max(&busy) / max(&clean).max(0.001);
    format!(
        "{hanging} labs of 1 + 12 VMs whose deletions hang past the 2 s timeout, retried for ever, and {healthy} healthy labs of 1 + 3 VMs expiring once every hanging lab has failed an attempt ({failing_after:.0} s after they expired), `BACKEND_MAX_CONCURRENCY={budget}`, the backend answering in 100 ms. From each healthy lab's expiry to its completion: **{:.2} s** at most with the hanging labs, against **{:.2} s** on a clean machine (the same labs alone): **{ratio:.2}x** (target: at most 2x).\n\n| healthy lab | clean machine (s) | beside the hanging labs (s) |\n|---|---|---|\n{}",
        max(&busy),
        max(&clean),
        clean
            .iter()
            .zip(&busy)
            .enumerate()
            .map(|(i, (c, b))| format!("| {i} | {c:.2} | {b:.2} |\n"))
            .collect::<String>()
    )
}
