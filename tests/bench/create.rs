//! The create side by side: this worker against a minimal JavaScript worker and a minimal workers-rs worker doing the same create, requests in turn.

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

/// `n` creates on each worker (after `warmup` each), one at a time, in turn, the order rotating
/// every round, so that all see the same machine at the same moments.
pub fn side_by_side(
    workers: &[(&str, &Worker)],
    tag: &str,
    n: usize,
    warmup: usize,
) -> Vec<Latencies> {
    for i in 0..warmup {
        for (name, worker) in workers {
            create(worker, &format!("{tag}-warm-{name}-{i}"));
        }
    }
    let mut all: Vec<Vec<f64>> = workers.iter().map(|_| Vec::with_capacity(n)).collect();
    for i in 0..n {
        for k in 0..workers.len() {
            let w = (i + k) % workers.len();
            let (name, worker) = workers[w];
            all[w].push(create(worker, &format!("{tag}-{name}-{i}")));
        }
    }
    all.into_iter()
        .map(|mut v| {
            v.sort_by(|x, y| x.partial_cmp(y).unwrap());
            Latencies(v)
        })
        .collect()
}

/// The create, side by side with the JavaScript worker of `tests/bench/js/` and the minimal
/// workers-rs worker of `tests/bench/rs/`, each on a `wrangler dev` of its own (`extra_vars` for
/// ours, e.g. the D1 index). Returns the markdown and the ratio of our p50 to JavaScript's.
pub fn section(
    work_dir: &Path,
    mock: &MockBackend,
    label: &str,
    extra_vars: &[(&str, &str)],
) -> (String, f64) {
    let n: usize = env_or("BENCH_CREATE_REQUESTS", 1000);
    let ours = Worker::start(
        &work_dir.join(format!("create-ours-{label}")),
        &mock.url(),
        extra_vars,
    );
    let other = |name: &str, config: &'static str, skip_build: bool| {
        Worker::start_spec(
            &work_dir.join(format!("create-{name}-{label}")),
            &mock.url(),
            &[],
            Spec {
                log_name: "other.log",
                config: Some(config),
                skip_build,
                secrets: &[],
            },
        )
    };
    let js = other("js", "tests/bench/js/wrangler.toml", true);
    let minimal = other("rs", "tests/bench/rs/wrangler.toml", false);
    let tag: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let l = side_by_side(
        &[("ours", &ours), ("js", &js), ("rs", &minimal)],
        &tag,
        n,
        100,
    );
    let row = |name: &str, l: &Latencies| {
        format!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            l.percentile(0.5),
            l.percentile(0.9),
            l.percentile(0.99)
        )
    };
    let p50 = |i: usize| l[i].percentile(0.5);
    let ratio = p50(0) / p50(1);
    let md = format!(
        "{n} creates on each ({label}), one at a time, in turn, after 100 each to warm up; each request its own lab (1 master + 2 workers); all three on `wrangler dev` on this machine at the same moments.\n\n| worker | p50 | p90 | p99 |\n|---|---|---|---|\n{}{}{}\nAt p50: ours / JavaScript **{ratio:.2}x**; the minimal workers-rs worker / JavaScript **{:.2}x**; ours / the minimal workers-rs worker **{:.2}x**.\n",
        row("labs-cleanup (Rust, wasm)", &l[0]),
        row("minimal JavaScript worker (`tests/bench/js/`)", &l[1]),
        row("minimal workers-rs worker (`tests/bench/rs/`)", &l[2]),
        p50(2) / p50(1),
        p50(0) / p50(2),
    );
    (md, ratio)
}
