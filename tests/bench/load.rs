//! The worker as a whole: POST throughput under load with `wrk`, storage operations per invocation, the release wasm's size, the machine.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::env_or;
use crate::support::{Worker, API_TOKEN};

/// Storage operations of one create and one cleanup attempt, from the object's own counters.
pub fn storage_ops(worker: &Worker) -> String {
    let line = |needle: &str| {
        worker
            .log()
            .lines()
            .rev()
            .find_map(|l| l.split_once(&format!("{needle}: ")))
            .map(|(_, counts)| {
                counts
                    .split(';')
                    .next()
                    .unwrap_or(counts)
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|| "not found in the log".into())
    };
    format!(
        "Counted by the object itself (debug log line `storage ops for …`); writes issued in the same turn are committed as one atomic batch.\n\n| invocation | operations |\n|---|---|\n| POST create | {} |\n| cleanup attempt (alarm) | {} |\n",
        line("storage ops for /create"),
        line("storage ops for alarm (cleanup attempt)")
    )
}

/// POST throughput on a worker of its own with the default settings, fleet index on (as
/// deployed) and off (the cost of the index's write after each answer).
pub fn section(work_dir: &Path, backend_url: &str) -> String {
    let seconds: u64 = env_or("BENCH_LOAD_SECONDS", 10);
    let connections: usize = env_or("BENCH_LOAD_CONNECTIONS", 16);
    let mut rows = String::new();
    for (label, vars) in [
        ("fleet index on (the default)", &[][..]),
        ("fleet index off", &[("FLEET_INDEX", "off")][..]),
    ] {
        let tag = if vars.is_empty() { "on" } else { "off" };
        let worker = Worker::start(&work_dir.join(format!("load-{tag}")), backend_url, vars);
        rows.push_str(&post_load(&worker, label, seconds, connections));
    }
    format!(
        "`wrk -t 2 -c {connections} -d {seconds}s --latency` with a Lua script that gives every request its own lab id, on a worker with the default settings.\n\n| worker | requests | requests/s | p50 | p99 | non-2xx answers | socket errors |\n|---|---|---|---|---|---|---|\n{rows}"
    )
}

/// `wrk` against POST /api/v1/labs/sessions with distinct lab ids: one table row.
fn post_load(worker: &Worker, label: &str, seconds: u64, connections: usize) -> String {
    let script = std::env::temp_dir().join(format!("labs-cleanup-post-{}.lua", std::process::id()));
    fs::write(
        &script,
        format!(
            r#"local counter = 0
local thread_id = 0
setup = function(thread)
  thread:set("tid", thread_id)
  thread_id = thread_id + 1
end
request = function()
  counter = counter + 1
  local body = string.format('{{"lab_request_id":"load-%d-%d-%d","user_id":"load-user","duration":10080}}', tid or 0, counter, math.random(1, 1000000000))
  return wrk.format("POST", "/api/v1/labs/sessions", {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {API_TOKEN}"}}, body)
end
local non_201 = 0
response = function(status, headers, body)
  if status ~= 201 then non_201 = non_201 + 1 end
end
"#
        ),
    )
    .unwrap();
    let out = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{}", worker.addr))
        .output();
    let _ = fs::remove_file(&script);
    let out = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => {
            let why = format!("wrk could not run ({e}); install it (`apt-get install wrk`)");
            return format!("| {label} | {why} | | | | | |\n");
        }
    };
    eprintln!("{out}");
    let find = |prefix: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    };
    let value = |prefix: &str| {
        find(prefix)
            .split_whitespace()
            .last()
            .unwrap_or("?")
            .to_string()
    };
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string();
    let non_2xx = find("Non-2xx or 3xx responses:");
    let socket = find("Socket errors:");
    format!(
        "| {label} | {requests} | {} | {} | {} | {} | {} |\n",
        value("Requests/sec:"),
        value("50%"),
        value("99%"),
        if non_2xx.is_empty() {
            "0".to_string()
        } else {
            non_2xx.split_whitespace().last().unwrap_or("?").to_string()
        },
        if socket.is_empty() {
            "none".to_string()
        } else {
            socket.trim_start_matches("Socket errors: ").to_string()
        },
    )
}

pub fn machine() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn wasm_size(root: &Path) -> (u64, u64) {
    let wasm = root.join("build/index_bg.wasm");
    let raw = fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    let gz = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -9 -c '{}' | wc -c", wasm.display()))
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0);
    (raw, gz)
}
