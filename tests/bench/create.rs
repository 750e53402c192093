//! The create side by side: this worker against a minimal JavaScript worker doing the same create, requests alternating between the two.

use std::path::Path;
use std::time::Instant;

use mock_backend::MockBackend;
use serde_json::json;

use crate::env_or;
use crate::support::{Spec, Worker};

/// Latencies of one worker's creates, in milliseconds, sorted.
pub struct Latencies(Vec<f64>);

impl Latencies {
    pub fn percentile(&self, p: f64) -> f64 {
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i.min(self.0.len() - 1)]
    }
}

fn create(worker: &Worker, id: &str) -> f64 {
    let body = json!({
        "lab_request_id": id, "user_id": "bench-user", "duration": 10080,
        "vm": {"name": "k8s-master-1"},
        "worker_nodes": [{"worker_lab_request_id": format!("{id}-w1")},
                         {"worker_lab_request_id": format!("{id}-w2")}],
    });
    let started = Instant::now();
    let r = worker.create(&body);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(r.status, 201, "{}", r.text());
    ms
}

/// `n` creates on each worker (after `warmup` each), one at a time, alternating which goes first,
/// so that both see the same machine at the same moments.
pub fn side_by_side(
    ours: &Worker,
    js: &Worker,
    tag: &str,
    n: usize,
    warmup: usize,
) -> (Latencies, Latencies) {
    for i in 0..warmup {
        create(ours, &format!("{tag}-warm-rs-{i}"));
        create(js, &format!("{tag}-warm-js-{i}"));
    }
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if i % 2 == 0 {
            a.push(create(ours, &format!("{tag}-rs-{i}")));
            b.push(create(js, &format!("{tag}-js-{i}")));
        } else {
            b.push(create(js, &format!("{tag}-js-{i}")));
            a.push(create(ours, &format!("{tag}-rs-{i}")));
        }
    }
    a.sort_by(|x, y| x.partial_cmp(y).unwrap());
    b.sort_by(|x, y| x.partial_cmp(y).unwrap());
    (Latencies(a), Latencies(b))
}

/// The create, side by side with the JavaScript worker of `tests/bench/js/`, on two workers of
/// their own (`extra_vars` for ours, e.g. the D1 index). Returns the markdown and the ratio of
/// the p50s.
pub fn section(
    work_dir: &Path,
    mock: &MockBackend,
    label: &str,
    extra_vars: &[(&str, &str)],
) -> (String, f64) {
    let n: usize = env_or("BENCH_CREATE_REQUESTS", 1000);
    let ours = Worker::start(
        &work_dir.join(format!("create-rs-{label}")),
        &mock.url(),
        extra_vars,
    );
    let js = Worker::start_spec(
        &work_dir.join(format!("create-js-{label}")),
        &mock.url(),
        &[],
        Spec {
            log_name: "js.log",
            config: Some("tests/bench/js/wrangler.toml"),
            skip_build: true,
            secrets: &[],
        },
    );
    let tag: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let (rs, jv) = side_by_side(&ours, &js, &tag, n, 100);
    let row = |name: &str, l: &Latencies| {
        format!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            l.percentile(0.5),
            l.percentile(0.9),
            l.percentile(0.99)
        )
    };
    let ratio = rs.percentile(0.5) / jv.percentile(0.5);
    let md = format!(
        "{n} creates on each ({label}), one at a time, alternating between the two workers, after 100 each to warm up; each request its own lab (1 master + 2 workers); both on `wrangler dev` on this machine at the same moments.\n\n| worker | p50 | p90 | p99 |\n|---|---|---|---|\n{}{}\nOurs / JavaScript at p50: **{ratio:.2}x**.\n",
        row("labs-cleanup (Rust, wasm)", &rs),
        row("minimal JavaScript worker (`tests/bench/js/`)", &jv),
    );
    (md, ratio)
}
