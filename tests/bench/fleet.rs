//! The fleet view under 10,000 indexed labs: the list route's latency for the queries an operator makes.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use mock_backend::MockBackend;

use labs_cleanup::lab::index::{Bind, Cursor, ListQuery};

use crate::env_or;
use crate::support::Worker;

/// The labs seeded in the index, in one statement (a recursive CTE): a fleet a month into
/// retention, most labs completed (9 in 10), 1 in 20 scheduled, 1 in 40 retrying (half of those
/// stuck), 1 in 40 being cleaned up; 5,000 users; expiries over 30 days.
fn seed_sql(n: usize) -> String {
    let base = 1_900_000_000_000i64;
    format!(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {last})
INSERT INTO sessions (lab_request_id, user_id, lab_type, vm_count, status, created_at, expires_at, attempts, next_attempt_at, pending_count, already_gone_count, last_error, completed_at, updated_at, revision, origin)
SELECT printf('lab-%07d', i), 'user-' || (i % 5000), 'multi_node', 3,
  CASE WHEN i % 40 = 0 THEN 'retrying' WHEN i % 40 = 1 THEN 'cleaning_up' WHEN i % 20 = 2 THEN 'scheduled' ELSE 'completed' END,
  {base} - 3600000 + (i % 2592000) * 1000, {base} + (i % 2592000) * 1000,
  CASE WHEN i % 40 = 0 THEN CASE WHEN i % 80 = 0 THEN 5 ELSE 1 END WHEN i % 40 = 1 THEN 1 WHEN i % 20 = 2 THEN 0 ELSE 1 END,
  NULL,
  CASE WHEN i % 40 IN (0, 1) THEN 1 WHEN i % 20 = 2 THEN 3 ELSE 0 END,
  i % 7 = 0,
  CASE WHEN i % 40 = 0 THEN 'w: backend answered 500' ELSE NULL END,
  NULL, {base}, 1, 'api'
FROM seq;",
        last = n.saturating_sub(1)
    )
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

/// One SQL statement as `wrangler d1 execute --command` takes it: the binds written in.
fn inline(sql: &str, binds: &[Bind]) -> String {
    let mut out = String::new();
    let mut binds = binds.iter();
    for c in sql.chars() {
        if c == '?' {
            match binds.next() {
                Some(Bind::Text(t)) => out.push_str(&format!("'{}'", t.replace('\'', "''"))),
                Some(Bind::Int(n)) => out.push_str(&n.to_string()),
                Some(Bind::Null) | None => out.push_str("NULL"),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The rows D1 reports read for `sql` (`meta.rows_read`), and its query plan, on the worker's
/// local index.
fn rows_and_plan(worker: &Worker, sql: &str) -> (u64, String) {
    let run = |command: &str| -> serde_json::Value {
        let out = worker.d1_command(command);
        let start = out.find('[').unwrap_or(0);
        serde_json::from_str(&out[start..]).unwrap_or_else(|_| panic!("{out}"))
    };
    let result = run(sql);
    let rows_read = result[0]["meta"]["rows_read"].as_u64().unwrap_or(0);
    let plan = run(&format!("EXPLAIN QUERY PLAN {sql}"));
    let steps: Vec<String> = plan[0]["results"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["detail"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (rows_read, steps.join("; "))
}

pub fn section(work_dir: &Path, mock: &MockBackend) -> String {
    let labs: usize = env_or("BENCH_FLEET_LABS", 1_000_000);
    let requests: usize = env_or("BENCH_FLEET_REQUESTS", 100);
    let worker = Worker::start(&work_dir.join("fleet"), &mock.url(), &[]);
    let seed = work_dir.join("fleet-seed.sql");
    std::fs::write(&seed, seed_sql(labs)).unwrap();
    let started = Instant::now();
    worker.d1(&seed);
    eprintln!(
        "fleet: {labs} rows seeded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A deep page: the cursor of a lab near the end of the order.
    let near_end = Cursor {
        expires_at: 1_900_000_000_000 + 2_592_000_000 - 60_000,
        lab_request_id: "lab-0000000".into(),
    };
    let stuck_after = 3;
    let query = |q: &str| labs_cleanup::api::fleet::parse(q).unwrap();
    let queries: Vec<(&str, String, ListQuery)> = vec![
        ("first page, no filter", "".into(), query("")),
        ("200 per page", "limit=200".into(), query("limit=200")),
        ("stuck labs", "stuck=true".into(), query("stuck=true")),
        (
            "one status",
            "status=retrying".into(),
            query("status=retrying"),
        ),
        (
            "one user",
            "user_id=user-42".into(),
            query("user_id=user-42"),
        ),
        (
            "orphans (origin)",
            "origin=inventory".into(),
            query("origin=inventory"),
        ),
        (
            "expiry window",
            "expires_after=2030-03-17T17:50:00Z&expires_before=2030-03-17T18:10:00Z".into(),
            query("expires_after=2030-03-17T17:50:00Z&expires_before=2030-03-17T18:10:00Z"),
        ),
        (
            "a deep page (cursor near the end)",
            format!("cursor={}", near_end.encode()),
            query(&format!("cursor={}", near_end.encode())),
        ),
    ];
    let mut md = format!(
        "{labs} labs seeded in the local D1 index (a month into retention: 9 in 10 completed, 1 in 20 scheduled, 1 in 40 retrying, half of those stuck; 5,000 users; expiries over 30 days), then {requests} requests of each query, one at a time, with the operator token; `wrangler dev` on this machine. Target: p50 ≤ 50 ms. Rows read: what D1 reports (`meta.rows_read`) for the same SQL, run with `wrangler d1 execute --local`; the plan: SQLite's `EXPLAIN QUERY PLAN`. Indexes: `migrations/`.\n\n| query | p50 | p90 | rows read | plan |\n|---|---|---|---|---|\n"
    );
    for (name, params, q) in &queries {
        let path = format!("/api/v1/labs/sessions?{params}");
        let (p50, p90) = time_get(&worker, &path, requests);
        let (sql, binds) = labs_cleanup::lab::index::list(q, stuck_after);
        let (rows, plan) = rows_and_plan(&worker, &inline(&sql, &binds));
        eprintln!("fleet: {name}: p50 {p50:.1} ms, p90 {p90:.1} ms, {rows} rows read: {plan}");
        let _ = writeln!(
            md,
            "| {name} | {p50:.1} ms | {p90:.1} ms | {rows} | {plan} |"
        );
    }
    let (p50, p90) = time_get(&worker, "/api/v1/labs/stats", requests);
    let mut rows = 0;
    let mut plans = Vec::new();
    for (sql, binds) in labs_cleanup::lab::index::stats(stuck_after) {
        let (r, plan) = rows_and_plan(&worker, &inline(&sql, &binds));
        rows += r;
        plans.push(plan);
    }
    eprintln!("fleet: stats: p50 {p50:.1} ms, p90 {p90:.1} ms, {rows} rows read");
    let _ = writeln!(
        md,
        "| stats (4 statements, one batch) | {p50:.1} ms | {p90:.1} ms | {rows} | {} |",
        plans.join(" / ")
    );
    std::thread::sleep(Duration::from_millis(100));
    md
}
