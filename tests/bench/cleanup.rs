//! Cleanup wall time against the number of workers: bounded-concurrent (6) against one by one (1) and the physical limit.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use mock_backend::MockBackend;
use serde_json::json;

use crate::plot::{line_chart, Series};
use crate::support::Worker;
use crate::{env_or, median};

/// One measured cleanup: seconds from the first backend call's arrival to the last answer.
fn cleanup_seconds(worker: &Worker, mock: &MockBackend, id: &str, workers: usize) -> f64 {
    let worker_ids: Vec<String> = (0..workers).map(|i| format!("{id}-w{i}")).collect();
    let nodes: Vec<_> = worker_ids
        .iter()
        .map(|w| json!({ "worker_lab_request_id": w }))
        .collect();
    let r = worker.create(&json!({
        "lab_request_id": id, "user_id": "bench-user", "duration": 1, "worker_nodes": nodes,
    }));
    assert_eq!(r.status, 201, "{}", r.text());
    let mut ids: Vec<&str> = worker_ids.iter().map(String::as_str).collect();
    ids.push(id);
    let expected = workers + 2;
    let (calls, ok) = mock.wait_for(&ids, Duration::from_secs(120), |c| {
        c.len() >= expected && c.iter().all(|c| c.done_ms > 0)
    });
    assert!(ok, "lab {id}: {} of {expected} calls", calls.len());
    let first = calls.iter().map(|c| c.at_ms).min().unwrap();
    let last = calls.iter().map(|c| c.done_ms).max().unwrap();
    (last - first) as f64 / 1000.0
}

/// The services call, then ceil((N + 1) / connections) waves of VM deletions, each L long.
fn physical_limit(workers: usize, latency: f64, connections: usize) -> f64 {
    latency * (1 + (workers + 1).div_ceil(connections)) as f64
}

/// Runs the section; `after` is called with the bounded-concurrent worker before it stops (the
/// load and storage measurements reuse it). Writes the plot to `plot_path`.
pub fn section(
    work_dir: &Path,
    mock: &MockBackend,
    plot_path: &Path,
    mut after: impl FnMut(&Worker),
) -> String {
    let latency_ms: u64 = env_or("BENCH_LATENCY_MS", 200);
    let reps: usize = env_or("BENCH_REPS", 5);
    let sizes: Vec<usize> = std::env::var("BENCH_WORKERS")
        .unwrap_or_else(|_| "0,1,5,20,48".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let latency = latency_ms as f64 / 1000.0;
    mock.set_latency(Duration::from_millis(latency_ms));
    let mut medians: Vec<Vec<f64>> = Vec::new();
    for concurrency in [6usize, 1] {
        let mut worker = Worker::start(
            &work_dir.join(format!("c{concurrency}")),
            &mock.url(),
            &[
                ("CLEANUP_CONCURRENCY", &concurrency.to_string()),
                ("LOG_STORAGE_OPS", "true"),
                // Measured from the first backend call; no need to wait for a spread start.
                ("EXPIRY_SPREAD_SECONDS", "0"),
            ],
        );
        let mut row = Vec::new();
        for &n in &sizes {
            let times: Vec<f64> = (0..reps)
                .map(|rep| {
                    cleanup_seconds(
                        &worker,
                        mock,
                        &format!("bench-c{concurrency}-n{n}-r{rep}"),
                        n,
                    )
                })
                .collect();
            let m = median(times.clone());
            eprintln!("concurrency {concurrency}, {n} workers: median {m:.3} s of {times:?}");
            row.push(m);
        }
        medians.push(row);
        if concurrency == 6 {
            after(&worker);
        }
        worker.stop();
    }

    let mut md = format!(
        "Backend latency L = {latency_ms} ms per call, median of {reps} runs; from the first backend call to the last answer.\n\n| workers N | VMs | concurrent (6) | one by one (1) | limit, 6 connections | limit, unbounded (2L) | concurrent / one by one | concurrent / limit (6) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for (i, &n) in sizes.iter().enumerate() {
        let (concurrent, sequential) = (medians[0][i], medians[1][i]);
        let limit6 = physical_limit(n, latency, 6);
        let _ = writeln!(
            md,
            "| {n} | {} | {concurrent:.3} s | {sequential:.3} s | {limit6:.3} s | {:.3} s | {:.2}x | {:.2}x |",
            n + 1,
            2.0 * latency,
            concurrent / sequential,
            concurrent / limit6
        );
    }
    let points = |f: &dyn Fn(usize, usize) -> f64| {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (n as f64, f(i, n)))
            .collect()
    };
    let svg = line_chart(
        &format!("Cleanup wall time against worker nodes (L = {latency_ms} ms)"),
        "worker nodes N",
        "seconds",
        &[
            Series {
                name: "one by one (1)".into(),
                color: "#d62728",
                dash: "",
                points: points(&|i, _| medians[1][i]),
            },
            Series {
                name: "concurrent (6)".into(),
                color: "#1f77b4",
                dash: "",
                points: points(&|i, _| medians[0][i]),
            },
            Series {
                name: "limit, 6 connections".into(),
                color: "#2ca02c",
                dash: "6,4",
                points: points(&|_, n| physical_limit(n, latency, 6)),
            },
            Series {
                name: "limit, unbounded".into(),
                color: "#7f7f7f",
                dash: "2,4",
                points: points(&|_, _| 2.0 * latency),
            },
        ],
    );
    std::fs::write(plot_path, svg).unwrap();
    let _ = writeln!(md, "\n![cleanup time against N](perf/cleanup.svg)");
    md
}
