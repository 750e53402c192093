//! The fleet view over a million indexed labs: the list route's latency for the queries an operator makes, the stats route's, their query plans and the rows D1 reads for each.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use mock_backend::MockBackend;

use labs_cleanup::lab::index::{Bind, Cursor, ListQuery};

use crate::env_or;
use crate::support::Worker;

/// The labs seeded in the index, in one statement (a recursive CTE): a fleet a month into
/// retention, most labs completed (9 in 10), 1 in 20 scheduled, 1 in 40 retrying (half of those
/// stuck), 1 in 40 being cleaned up; 1 in 1,000 an orphan found in the inventory; 5,000 users;
/// one expiry a second from `base` on.
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
  NULL, {base}, 1, CASE WHEN i % 1000 = 3 THEN 'inventory' ELSE 'api' END
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

/// SQLite's `EXPLAIN QUERY PLAN` for `sql` with its `binds` bound (not written in: a literal can
/// change the plan), on the worker's local D1 file, through Python's sqlite3 (read only).
fn plan(worker: &Worker, sql: &str, binds: &[Bind]) -> String {
    let file = std::fs::read_dir(worker.state_dir.join("v3/d1/miniflare-D1DatabaseObject"))
        .expect("the local D1 directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "sqlite") && !p.ends_with("metadata.sqlite"))
        .expect("the local D1 file");
    let binds: Vec<serde_json::Value> = binds
        .iter()
        .map(|b| match b {
            Bind::Text(t) => serde_json::Value::from(t.as_str()),
            Bind::Int(n) => serde_json::Value::from(*n),
            Bind::Null => serde_json::Value::Null,
        })
        .collect();
    let script = "import json, sqlite3, sys\n\
db = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
rows = db.execute('EXPLAIN QUERY PLAN ' + sys.argv[2], json.loads(sys.argv[3])).fetchall()\n\
print('; '.join(r[3] for r in rows))\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .arg(sql)
        .arg(serde_json::Value::from(binds).to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "EXPLAIN QUERY PLAN failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The rows D1 read for the last call of `route` (`list` or `stats`), as the worker logged it
/// (`LOG_STORAGE_OPS`: D1's `meta.rows_read`).
fn rows_read(worker: &Worker, route: &str) -> u64 {
    let needle = format!("D1 rows for {route}: ");
    worker
        .log()
        .lines()
        .rev()
        .find_map(|l| l.split_once(&needle))
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no \"{needle}\" line in the log"))
}

pub fn section(work_dir: &Path, mock: &MockBackend) -> String {
    let labs: usize = env_or("BENCH_FLEET_LABS", 1_000_000);
    let requests: usize = env_or("BENCH_FLEET_REQUESTS", 100);
    let worker = Worker::start(
        &work_dir.join("fleet"),
        &mock.url(),
        &[("LOG_STORAGE_OPS", "true")],
    );
    let seed = work_dir.join("fleet-seed.sql");
    std::fs::write(&seed, seed_sql(labs)).unwrap();
    let started = Instant::now();
    worker.d1(&seed);
    eprintln!(
        "fleet: {labs} rows seeded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A deep page: the cursor nine tenths of the way through the order.
    let deep = (labs * 9 / 10) as i64;
    let near_end = Cursor {
        expires_at: 1_900_000_000_000 + deep * 1000,
        lab_request_id: format!("lab-{deep:07}"),
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
            "a deep page (cursor 9/10 of the way)",
            format!("cursor={}", near_end.encode()),
            query(&format!("cursor={}", near_end.encode())),
        ),
    ];
    let mut md = format!(
        "{labs} labs seeded in the local D1 index (a month into retention: 9 in 10 completed, 1 in 20 scheduled, 1 in 40 retrying, half of those stuck; 1 in 1,000 an orphan; 5,000 users; one expiry a second), then {requests} requests of each query, one at a time, with the operator token; `wrangler dev` on this machine. Target: p50 ≤ 50 ms. Rows read: what D1 reported (`meta.rows_read`) to the worker for the last request (logged with `LOG_STORAGE_OPS`); the plan: SQLite's `EXPLAIN QUERY PLAN` for the same statement with the same values bound, on the same database file. Indexes: `migrations/`.\n\n| query | p50 | p90 | rows read | plan |\n|---|---|---|---|---|\n"
    );
    for (name, params, q) in &queries {
        let path = format!("/api/v1/labs/sessions?{params}");
        let (p50, p90) = time_get(&worker, &path, requests);
        std::thread::sleep(Duration::from_millis(200));
        let rows = rows_read(&worker, "list");
        let (sql, binds) = labs_cleanup::lab::index::list(q, stuck_after);
        let plan = plan(&worker, &sql, &binds);
        eprintln!("fleet: {name}: p50 {p50:.1} ms, p90 {p90:.1} ms, {rows} rows read: {plan}");
        let _ = writeln!(
            md,
            "| {name} | {p50:.1} ms | {p90:.1} ms | {rows} | {plan} |"
        );
    }
    let (p50, p90) = time_get(&worker, "/api/v1/labs/stats", requests);
    std::thread::sleep(Duration::from_millis(200));
    let rows = rows_read(&worker, "stats");
    let plans: Vec<String> =
        labs_cleanup::lab::index::stats(stuck_after, 1_900_000_000_000 + labs as i64 * 1000)
            .iter()
            .map(|(sql, binds)| plan(&worker, sql, binds))
            .collect();
    eprintln!("fleet: stats: p50 {p50:.1} ms, p90 {p90:.1} ms, {rows} rows read");
    let _ = writeln!(
        md,
        "| stats (4 statements, one batch) | {p50:.1} ms | {p90:.1} ms | {rows} | {} |",
        plans.join(" / ")
    );
    std::thread::sleep(Duration::from_millis(100));
    md
}
