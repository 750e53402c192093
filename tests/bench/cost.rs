//! What a lab costs: every invocation of its object counted by the object itself (the usage line
//! `LOG_STORAGE_OPS` turns on), from the create until the lab's record is purged, with the fleet
//! index and webhooks on; priced with Cloudflare's published Workers Paid prices.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use mock_backend::{Action, Endpoint, Fault, MockBackend};
use serde_json::json;

use crate::env_or;
use crate::support::{usage_line, Receiver, Spec, Worker, WEBHOOK_SECRET};

/// Totals of the usage lines of one scenario's labs.
#[derive(Default, Clone, Copy)]
struct Totals {
    worker_requests: f64,
    object_requests: f64,
    wall_ms: f64,
    storage_rows_read: f64,
    storage_rows_written: f64,
    d1_batches: f64,
    d1_rows_read: f64,
    d1_rows_written: f64,
    backend_calls: f64,
    webhook_calls: f64,
}

impl Totals {
    fn per_lab(self, labs: f64) -> Totals {
        Totals {
            worker_requests: self.worker_requests / labs,
            object_requests: self.object_requests / labs,
            wall_ms: self.wall_ms / labs,
            storage_rows_read: self.storage_rows_read / labs,
            storage_rows_written: self.storage_rows_written / labs,
            d1_batches: self.d1_batches / labs,
            d1_rows_read: self.d1_rows_read / labs,
            d1_rows_written: self.d1_rows_written / labs,
            backend_calls: self.backend_calls / labs,
            webhook_calls: self.webhook_calls / labs,
        }
    }
}

/// Adds up the usage lines of `log`, leaving out the status reads the benchmark itself makes.
fn total(log: &str, creates: usize) -> Totals {
    let mut t = Totals {
        worker_requests: creates as f64,
        ..Totals::default()
    };
    for (what, n) in log.lines().filter_map(usage_line) {
        if what.starts_with("/status") {
            continue;
        }
        // One line per invocation: its answer's, or after the answer its background work's.
        t.object_requests += 1.0;
        t.wall_ms += n[0];
        t.storage_rows_read += n[1];
        t.storage_rows_written += n[2];
        t.d1_batches += n[3];
        t.d1_rows_read += n[4];
        t.d1_rows_written += n[5];
        t.backend_calls += n[6];
        t.webhook_calls += n[7];
    }
    t
}

/// Where the rows written go: per invocation (`what`, the lab's id left out), how many there
/// were, and the storage and D1 rows they wrote, for the benchmark's log.
fn breakdown(log: &str, ids: &[String]) -> String {
    let mut by: std::collections::BTreeMap<String, (u32, f64, f64)> = Default::default();
    for (what, n) in log.lines().filter_map(usage_line) {
        if what.starts_with("/status") {
            continue;
        }
        let mut name = what.clone();
        for id in ids.iter().rev() {
            name = name.replace(id.as_str(), "{id}");
        }
        let e = by.entry(name).or_default();
        e.0 += 1;
        e.1 += n[2];
        e.2 += n[5];
    }
    by.iter()
        .map(|(what, (n, storage, d1))| {
            format!("    {n} x {what}: {storage} storage rows, {d1} D1 rows written\n")
        })
        .collect()
}

/// Runs `labs` labs of `workers` workers from the create until their records are purged; with
/// `retry`, one VM of each lab fails its first deletion. Returns the totals per lab.
fn scenario(
    worker: &Worker,
    mock: &MockBackend,
    receiver: &Receiver,
    tag: &str,
    workers: usize,
    retry: bool,
    labs: usize,
) -> Totals {
    let start = worker.log().len();
    let ids: Vec<String> = (0..labs).map(|i| format!("cost-{tag}-{i}")).collect();
    for id in &ids {
        let worker_ids: Vec<String> = (0..workers).map(|w| format!("{id}-w{w}")).collect();
        if retry {
            let failing = worker_ids.last().unwrap_or(id);
            mock.add_fault(
                Fault::on(failing, Endpoint::DeleteVm, Action::Status { status: 500 }).times(1),
            );
        }
        let nodes: Vec<_> = worker_ids
            .iter()
            .map(|w| json!({ "worker_lab_request_id": w }))
            .collect();
        let r = worker.create(&json!({
            "lab_request_id": id, "user_id": "cost-user", "duration": 4, "worker_nodes": nodes,
        }));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Purged: the status answers 404 once the retention is over.
    for id in &ids {
        worker.wait_purged(id, 120);
        let delivered = receiver.deliveries_for(id).len();
        assert!(delivered >= 2, "{id}: {delivered} webhook deliveries");
    }
    // The work after the purge's answer (the index row's delete) logs its line a moment later.
    std::thread::sleep(Duration::from_secs(3));
    let log = worker.log();
    eprint!("cost {tag}, every lab:\n{}", breakdown(&log[start..], &ids));
    total(&log[start..], labs).per_lab(labs as f64)
}

/// Workers Paid prices (developers.cloudflare.com/workers/platform/pricing/,
/// /durable-objects/platform/pricing/ and /d1/platform/pricing/, read 2026-11-30), in US
/// dollars per unit, with the monthly allowances the $5 subscription includes.
struct Price {
    what: &'static str,
    per_unit: f64,
    included: f64,
}

const PRICES: [Price; 6] = [
    Price {
        what: "Workers requests",
        per_unit: 0.30 / 1e6,
        included: 10e6,
    },
    Price {
        what: "Durable Objects requests",
        per_unit: 0.15 / 1e6,
        included: 1e6,
    },
    Price {
        what: "Durable Objects duration (GB-s)",
        per_unit: 12.50 / 1e6,
        included: 400_000.0,
    },
    Price {
        what: "rows read (Durable Objects storage and D1, separate allowances)",
        per_unit: 0.001 / 1e6,
        included: 25e9,
    },
    Price {
        what: "Durable Objects storage rows written",
        per_unit: 1.00 / 1e6,
        included: 50e6,
    },
    Price {
        what: "D1 rows written",
        per_unit: 1.00 / 1e6,
        included: 50e6,
    },
];

/// The units one lab uses of each price, in `PRICES` order. Duration bills 128 MB for the
/// object's wall time.
fn units(t: &Totals) -> [f64; 6] {
    [
        t.worker_requests,
        t.object_requests,
        t.wall_ms / 1000.0 * 0.125,
        t.storage_rows_read + t.d1_rows_read,
        t.storage_rows_written,
        t.d1_rows_written,
    ]
}

/// The usage price of `labs` labs a month: at list price (no allowance), and beyond the
/// allowances of the subscription.
fn priced(t: &Totals, labs: f64) -> (f64, f64) {
    let used = units(t);
    let mut list = 0.0;
    let mut beyond = 0.0;
    for (price, per_lab) in PRICES.iter().zip(used) {
        let n = per_lab * labs;
        list += n * price.per_unit;
        beyond += (n - price.included).max(0.0) * price.per_unit;
    }
    (list, beyond)
}

pub fn section(work_dir: &Path, mock: &MockBackend) -> String {
    let labs: usize = env_or("BENCH_COST_LABS", 5);
    let latency_ms: u64 = env_or("BENCH_LATENCY_MS", 200);
    mock.reset();
    mock.set_capacity(None);
    mock.set_latency(Duration::from_millis(latency_ms));
    let receiver = Receiver::start();
    // The clean labs at the default retry pause, 300 s (they never wait for it; the test
    // workers' 2 s would make the index row's retry the earliest wake-up after each save, and
    // its confirmation an alarm written more), the labs with a retry at 2 s, so that it comes
    // within the benchmark.
    let start = |dir: &str, retry_seconds: &str, skip_build: bool| {
        let vars = vec![
            ("LOG_STORAGE_OPS", "true"),
            ("WEBHOOK_URL", receiver.url.as_str()),
            ("WARN_BEFORE_MINUTES", "2"),
            ("DURATION_UNIT_SECONDS", "1"),
            ("EXPIRY_SPREAD_SECONDS", "0"),
            ("RETENTION_DAYS", "1"),
            ("RETENTION_UNIT_SECONDS", "6"),
            ("CLEANUP_RETRY_SECONDS", retry_seconds),
        ];
        Worker::start_spec(
            &work_dir.join(dir),
            &mock.url(),
            &vars,
            Spec {
                log_name: "wrangler.log",
                config: None,
                skip_build,
                secrets: &[("WEBHOOK_SECRET", WEBHOOK_SECRET)],
            },
        )
    };
    let at_defaults = start("cost", "300", false);
    let quick_retry = start("cost-retry", "2", true);
    let mut rows = String::new();
    let mut prices = String::new();
    let mut worst = (Totals::default(), 0.0);
    for (name, tag, workers, retry) in [
        ("single VM, clean", "single", 0, false),
        ("single VM, one retry", "single-retry", 0, true),
        ("1 + 2 workers, clean", "three", 2, false),
        ("1 + 2 workers, one retry", "three-retry", 2, true),
    ] {
        let worker = if retry { &quick_retry } else { &at_defaults };
        let t = scenario(worker, mock, &receiver, tag, workers, retry, labs);
        eprintln!(
            "cost {name}: {} object requests, {:.0} ms, {} / {} storage rows, {} / {} D1 rows",
            t.object_requests,
            t.wall_ms,
            t.storage_rows_read,
            t.storage_rows_written,
            t.d1_rows_read,
            t.d1_rows_written
        );
        let _ = writeln!(
            rows,
            "| {name} | {:.0} | {:.1} | {:.0} ms | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} + {:.1} + {:.1} |",
            t.worker_requests,
            t.object_requests,
            t.wall_ms,
            t.storage_rows_read,
            t.storage_rows_written,
            t.d1_rows_read,
            t.d1_rows_written,
            t.backend_calls,
            t.webhook_calls,
            t.d1_batches,
        );
        let (list_10k, beyond_10k) = priced(&t, 10_000.0);
        let (list_1m, beyond_1m) = priced(&t, 1_000_000.0);
        let _ = writeln!(
            prices,
            "| {name} | ${list_10k:.3} | ${beyond_10k:.2} | ${list_1m:.2} | ${beyond_1m:.2} |"
        );
        if list_1m > worst.1 {
            worst = (t, list_1m);
        }
    }
    let per_unit = PRICES
        .iter()
        .zip(units(&worst.0))
        .map(|(p, u)| {
            format!(
                "| {} | {:.3} | ${:.2} | ${:.2} |",
                p.what,
                u,
                u * 10_000.0 * p.per_unit,
                u * 1e6 * p.per_unit
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "{labs} labs per row, each from its create to the purge of its record (`RETENTION_DAYS` shortened), on one worker with the fleet index and webhooks on (`lab.expiring`, `lab.cleanup_completed`), the backend answering in {latency_ms} ms; \"one retry\": one VM's first deletion answers 500. Counted by the object itself, per invocation (the `LOG_STORAGE_OPS` usage line): wall time from the invocation's start to its end, and of the work after its answer; storage rows as the pricing page counts them (a key read or written is a row, each alarm set or deleted a row written, deletes are writes; reads count the keys asked); D1 rows as D1 reports them (`meta.rows_read`, `meta.rows_written`, the counting triggers of `migrations/0003` included). Per lab:\n\n| lab | Worker requests | object requests | object wall time | storage rows read | storage rows written | D1 rows read | D1 rows written | subrequests (backend + webhooks + D1 batches) |\n|---|---|---|---|---|---|---|---|---|\n{rows}\nPriced per month with the Workers Paid prices as published on [Workers pricing](https://developers.cloudflare.com/workers/platform/pricing/), [Durable Objects pricing](https://developers.cloudflare.com/durable-objects/platform/pricing/) and [D1 pricing](https://developers.cloudflare.com/d1/platform/pricing/) (read 2026-11-30) ($5 a month with allowances; beyond them Workers requests $0.30/M, Durable Objects requests $0.15/M, duration $12.50/M GB-s at 128 MB, rows read $0.001/M, rows written $1.00/M, for Durable Objects storage and D1 alike): \"list\" prices every unit, \"beyond\" only what exceeds the allowances (the labs alone using the account).\n\n| lab | 10,000 labs, list | 10,000 labs, beyond | 1,000,000 labs, list | 1,000,000 labs, beyond |\n|---|---|---|---|---|\n{prices}\nWhere the money goes, for the dearest row:\n\n| unit | per lab | 10,000 labs | 1,000,000 labs |\n|---|---|---|---|\n{per_unit}\n"
    )
}
