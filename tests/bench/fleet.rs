//! The fleet view under 10,000 indexed labs: the list route's latency for the queries an operator makes.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use mock_backend::MockBackend;

use crate::env_or;
use crate::support::Worker;

/// The labs seeded in the index: spread over expiries, users and states like a real fleet.
fn seed_sql(n: usize) -> String {
    let base = 1_900_000_000_000i64;
    let mut sql = String::new();
    let ids: Vec<usize> = (0..n).collect();
    for chunk in ids.chunks(500) {
        sql.push_str("INSERT INTO sessions (lab_request_id, user_id, lab_type, vm_count, status, created_at, expires_at, attempts, next_attempt_at, pending_count, already_gone_count, last_error, completed_at, updated_at, revision) VALUES\n");
        let rows: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let (status, attempts, pending, error) = match i % 20 {
                    0 => ("retrying", 5, 1, "'w: backend answered 500'"),
                    1 => ("retrying", 1, 2, "'w: backend answered 503'"),
                    2..=9 => ("completed", 1, 0, "NULL"),
                    _ => ("scheduled", 0, 3, "NULL"),
                };
                format!(
                    "('lab-{i:05}', 'user-{}', 'multi_node', 3, '{status}', {}, {}, {attempts}, NULL, {pending}, 0, {error}, NULL, {base}, 1)",
                    i % 500,
                    base - 3_600_000,
                    base + (i as i64 % 3600) * 1000
                )
            })
            .collect();
        sql.push_str(&rows.join(",\n"));
        sql.push_str(";\n");
    }
    sql
}

/// p50 and p90 of `n` calls of GET `path` with the operator token, in ms.
fn time_get(worker: &Worker, path: &str, n: usize) -> (f64, f64) {
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let r = worker.operator("GET", path, b"");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[n / 2], times[n * 9 / 10])
}

pub fn section(work_dir: &Path, mock: &MockBackend) -> String {
    let labs: usize = env_or("BENCH_FLEET_LABS", 10_000);
    let requests: usize = env_or("BENCH_FLEET_REQUESTS", 200);
    let worker = Worker::start(&work_dir.join("fleet"), &mock.url(), &[]);
    let seed = work_dir.join("fleet-seed.sql");
    std::fs::write(&seed, seed_sql(labs)).unwrap();
    let started = Instant::now();
    worker.d1(&seed);
    eprintln!(
        "fleet: {labs} rows seeded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The deep page: the cursor of the last page of 50.
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let path = if cursor.is_empty() {
            "/api/v1/labs/sessions?limit=200".to_string()
        } else {
            format!("/api/v1/labs/sessions?limit=200&cursor={cursor}")
        };
        let page = worker.operator("GET", &path, b"").json();
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) if pages < labs / 200 - 1 => cursor = c.to_string(),
            _ => break,
        }
    }
    let queries = [
        ("first page, no filter", "/api/v1/labs/sessions".to_string()),
        ("200 per page", "/api/v1/labs/sessions?limit=200".to_string()),
        ("stuck labs", "/api/v1/labs/sessions?stuck=true".to_string()),
        ("one status", "/api/v1/labs/sessions?status=retrying".to_string()),
        ("one user", "/api/v1/labs/sessions?user_id=user-42".to_string()),
        (
            "expiry window",
            "/api/v1/labs/sessions?expires_after=2030-03-17T17:50:00Z&expires_before=2030-03-17T18:10:00Z".to_string(),
        ),
        (
            "a deep page (cursor near the end)",
            format!("/api/v1/labs/sessions?cursor={cursor}"),
        ),
        ("stats", "/api/v1/labs/stats".to_string()),
    ];
    let mut md = format!(
        "{labs} labs seeded in the local D1 index (1 in 10 retrying, half of those stuck; 4 in 10 completed; 500 users; expiries over an hour), then {requests} requests of each query, one at a time, with the operator token; `wrangler dev` on this machine. Target: p50 ≤ 50 ms. Indexes: `migrations/0001_sessions.sql`.\n\n| query | p50 | p90 |\n|---|---|---|\n"
    );
    for (name, path) in queries {
        let (p50, p90) = time_get(&worker, &path, requests);
        eprintln!("fleet: {name}: p50 {p50:.1} ms, p90 {p90:.1} ms");
        let _ = writeln!(md, "| {name} | {p50:.1} ms | {p90:.1} ms |");
    }
    std::thread::sleep(Duration::from_millis(100));
    md
}
