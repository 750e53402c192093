//! The soak after a pause: thousands of labs of mixed sizes falling due over a few minutes, random backend faults, and two restarts of the local runtime while labs fall due, with the fleet-wide budget on.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mock_backend::{Action, Endpoint, Fault, MockBackend};
use serde_json::json;

use crate::env_or;
use crate::support::{now_ms, Worker};

/// A small deterministic generator (xorshift64*), so a rerun draws the same labs and faults.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One status request of the prober: when it was sent (epoch ms) and how long it took to be
/// answered (`Err`: why not: a 5xx, or the error).
type Probe = (u64, Result<u64, String>);

/// Asks for a lab's status every 250 ms, one at a time, until `stop`: the API must answer
/// throughout the soak, whatever the cleanups do.
fn probe(addr: String, labs: Vec<String>, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<Probe>>>) {
    let bearer = format!("Bearer {}", crate::support::API_TOKEN);
    let mut draw = Draw(0x0b5e_55ed);
    while !stop.load(Ordering::Relaxed) {
        let lab = &labs[draw.below(labs.len() as u64) as usize];
        let sent = now_ms();
        let t = Instant::now();
        let answered = match mock_backend::http::request(
            &addr,
            "GET",
            &format!("/api/v1/labs/sessions/{lab}"),
            &[("Authorization", bearer.as_str())],
            b"",
            Duration::from_secs(10),
        ) {
            // Any answer but a failure: a lab purged after its retention answers 404.
            Ok(r) if r.status < 500 => Ok(t.elapsed().as_millis() as u64),
            Ok(r) => Err(format!("{} {}", r.status, r.text())),
            Err(e) => Err(e.kind().to_string()),
        };
        out.lock().unwrap().push((sent, answered));
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The fault drawn for one VM's deletion, if any, and its name in the report.
fn fault_for(draw: &mut Draw, timeout_ms: u64) -> Option<(&'static str, Action)> {
    match draw.below(100) {
        0..=3 => Some(("500", Action::Status { status: 500 })),
        4..=6 => Some((
            "503",
            Action::Refuse {
                status: 503,
                retry_after: None,
            },
        )),
        7..=8 => Some((
            "hang",
            Action::Hang {
                ms: timeout_ms + 1_000,
            },
        )),
        9..=10 => Some(("reset", Action::Reset)),
        // Carried out, but answered after the worker gave up: the retry deletes it again.
        11..=12 => Some((
            "late 200",
            Action::Delay {
                ms: timeout_ms + 500,
            },
        )),
        _ => None,
    }
}

/// Runs the soak; returns the markdown of its results.
pub fn section(work_dir: &Path, mock: &MockBackend) -> String {
    let labs: usize = env_or("BENCH_SOAK_LABS", 3000);
    let budget: u32 = env_or("BENCH_SOAK_BUDGET", 50);
    let window: u64 = env_or("BENCH_SOAK_WINDOW_SECONDS", 120);
    let down: u64 = env_or("BENCH_SOAK_DOWN_SECONDS", 15);
    let latency_ms: u64 = 20;
    let timeout_s: u64 = 2;
    let retry_s: u64 = 2;
    let budget_s = budget.to_string();
    let mut worker = Worker::start(
        &work_dir.join("soak"),
        &mock.url(),
        &[
            ("BACKEND_MAX_CONCURRENCY", &budget_s),
            ("BACKEND_TIMEOUT_SECONDS", &timeout_s.to_string()),
            ("CLEANUP_RETRY_SECONDS", &retry_s.to_string()),
        ],
    );
    mock.reset();
    mock.set_capacity(None);
    mock.set_latency(Duration::from_millis(latency_ms));

    // The labs: 0 to 4 workers each; a fault on about one deletion in eight.
    let mut draw = Draw(0x5eed_1ab5);
    let mut plan: Vec<(String, Vec<String>)> = Vec::with_capacity(labs);
    let mut faults: HashMap<&'static str, usize> = HashMap::new();
    for i in 0..labs {
        let master = format!("soak-{i}");
        let workers: Vec<String> = (0..draw.below(5))
            .map(|w| format!("soak-{i}-w{w}"))
            .collect();
        for vm in std::iter::once(&master).chain(&workers) {
            if let Some((name, action)) = fault_for(&mut draw, timeout_s * 1000) {
                *faults.entry(name).or_default() += 1;
                mock.add_fault(Fault::on(vm, Endpoint::DeleteVm, action).times(1));
            }
        }
        plan.push((master, workers));
    }
    let vm_count: usize = plan.iter().map(|(_, w)| 1 + w.len()).sum();

    // Every lab falls due within `window` seconds after a common start that leaves time for the
    // creates; lab i at start + (i mod window).
    let started = Instant::now();
    let start_secs = 10 + (labs as u64).div_ceil(30);
    let expiries: Vec<(usize, u64)> = crate::class::create_all(&worker, &plan, |i, (m, ws)| {
        let due = start_secs + (i as u64 % window);
        let duration = due.saturating_sub(started.elapsed().as_secs()).max(1);
        let nodes: Vec<_> = ws
            .iter()
            .map(|w| json!({"worker_lab_request_id": w}))
            .collect();
        json!({"lab_request_id": m, "user_id": "soak-user",
            "duration": duration, "worker_nodes": nodes})
    })
    .into_iter()
    .enumerate()
    .collect();
    let created_in = started.elapsed().as_secs_f64();
    let expiry_of: HashMap<&str, u64> = expiries
        .iter()
        .flat_map(|&(i, at)| {
            let (m, ws) = &plan[i];
            std::iter::once(m.as_str())
                .chain(ws.iter().map(String::as_str))
                .map(move |vm| (vm, at))
        })
        .collect();
    let first_expiry = expiries.iter().map(|e| e.1).min().unwrap();
    let last_expiry = expiries.iter().map(|e| e.1).max().unwrap();
    eprintln!(
        "soak: {labs} labs ({vm_count} VMs) created in {created_in:.0} s, due over {:.0} s",
        (last_expiry - first_expiry) as f64 / 1000.0
    );

    // Two restarts while labs fall due: the runtime is down for `down` seconds each time, and
    // every lab that fell due meanwhile fires when it comes back.
    let stop_probes = Arc::new(AtomicBool::new(false));
    let probes: Arc<Mutex<Vec<Probe>>> = Arc::default();
    let prober = {
        let (addr, stop, out) = (worker.addr.clone(), stop_probes.clone(), probes.clone());
        let labs: Vec<String> = plan.iter().map(|(m, _)| m.clone()).collect();
        std::thread::spawn(move || probe(addr, labs, stop, out))
    };
    // While the runtime is down (and the first 5 s back), a status cannot be answered.
    let mut down_windows: Vec<(u64, u64)> = Vec::new();
    let mut restarts = Vec::new();
    for at in [window / 4, window * 5 / 8] {
        let when = first_expiry + at * 1000;
        let now = now_ms();
        if when > now {
            std::thread::sleep(Duration::from_millis(when - now));
        }
        let t = Instant::now();
        let stopped = now_ms();
        worker.stop();
        std::thread::sleep(Duration::from_secs(down));
        worker.start_again();
        down_windows.push((stopped.saturating_sub(10_000), now_ms() + 5_000));
        restarts.push(format!(
            "{:.0} s after the first expiry, back after {:.0} s",
            (when - first_expiry) as f64 / 1000.0,
            t.elapsed().as_secs_f64()
        ));
        eprintln!("soak: restarted ({})", restarts.last().unwrap());
    }

    // Wait until every VM has been deleted once (a 2xx from the backend), at most 20 minutes.
    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut calls;
    loop {
        calls = mock.calls();
        let deleted: HashSet<&str> = calls
            .iter()
            .filter(|c| {
                c.endpoint == Some(Endpoint::DeleteVm)
                    && c.status.is_some_and(|s| (200..300).contains(&s))
            })
            .filter_map(|c| c.lab_request_id.as_deref())
            .collect();
        if deleted.len() >= vm_count || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // Let calls still in flight or about to be retried finish before counting.
    std::thread::sleep(Duration::from_secs(timeout_s + retry_s * 3));
    calls = mock.calls();
    stop_probes.store(true, Ordering::Relaxed);
    prober.join().expect("the status prober");
    let log = worker.log();
    worker.stop();
    let up: Vec<Probe> = probes
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| !down_windows.iter().any(|(a, b)| at >= a && at <= b))
        .cloned()
        .collect();
    let mut why: HashMap<String, usize> = HashMap::new();
    for (_, answer) in &up {
        if let Err(reason) = answer {
            *why.entry(reason.chars().take(120).collect()).or_default() += 1;
        }
    }
    for (reason, n) in &why {
        eprintln!("soak: status unanswered {n} times: {reason}");
    }
    let unanswered = up.iter().filter(|(_, answer)| answer.is_err()).count();
    let mut latencies: Vec<u64> = up
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().ok().copied())
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let (p50, p99, slowest) = (pct(0.5), pct(0.99), latencies.last().copied().unwrap_or(0));
    mock.set_latency(Duration::ZERO);

    let mut deletions: HashMap<&str, usize> = HashMap::new();
    let mut early = 0;
    let mut last_deleted = 0;
    let ours: Vec<_> = calls
        .iter()
        .filter(|c| {
            c.lab_request_id
                .as_deref()
                .is_some_and(|id| expiry_of.contains_key(id))
        })
        .collect();
    for c in &ours {
        let id = c.lab_request_id.as_deref().unwrap();
        if c.at_ms < expiry_of[id] {
            early += 1;
        }
        if c.endpoint == Some(Endpoint::DeleteVm)
            && c.status.is_some_and(|s| (200..300).contains(&s))
        {
            *deletions.entry(id).or_default() += 1;
            last_deleted = last_deleted.max(c.done_ms);
        }
    }
    // The VMs deleted most often, with their calls, for the reader of a bad run; and the
    // runtime's log beside the report.
    let mut worst: Vec<(&str, usize)> = deletions.iter().map(|(k, v)| (*k, *v)).collect();
    worst.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (vm, n) in worst.iter().take(3).filter(|(_, n)| *n > 2) {
        let times: Vec<String> = ours
            .iter()
            .filter(|c| c.lab_request_id.as_deref() == Some(*vm))
            .map(|c| {
                format!(
                    "{}+{}ms:{:?}",
                    c.at_ms.saturating_sub(expiry_of[vm]),
                    c.done_ms.saturating_sub(c.at_ms),
                    c.status
                )
            })
            .collect();
        eprintln!("soak: {vm} deleted {n} times: {}", times.join(" "));
    }
    let _ = std::fs::write(work_dir.join("..").join("soak-last.log"), &log);
    let deleted = deletions.len();
    let twice = deletions.values().filter(|n| **n >= 2).count();
    let most = deletions.values().copied().max().unwrap_or(0);
    let peak = mock.stats().peak_in_flight;
    let fd_errors = log.matches("Too many open files").count();
    let mut fault_list: Vec<String> = faults.iter().map(|(k, n)| format!("{n} {k}")).collect();
    fault_list.sort();
    eprintln!(
        "soak: {deleted}/{vm_count} deleted, {early} early calls, {twice} more than once (most {most}), {} calls, peak {peak}",
        ours.len()
    );
    format!(
        "{labs} labs of 1 master + 0 to 4 workers ({vm_count} VMs), falling due over {:.0} s; the mock backend answers in {latency_ms} ms, without a capacity limit, and fails one deletion of about one VM in eight once ({}; a hang lasts past the timeout, a late 200 is carried out but answered after it); `BACKEND_MAX_CONCURRENCY={budget}`, `BACKEND_TIMEOUT_SECONDS={timeout_s}`, `CLEANUP_RETRY_SECONDS={retry_s}`. The local runtime was stopped twice while labs fell due, each time for {down} s ({}). A late attempt is put off by up to a minute (spread), and the budget's coordinator holds at most 200 requests waiting (the rest ask again after 2-10 s). Meanwhile a lab's status was asked every 250 ms, one request at a time, with a 10 s timeout (not counted: the runtime's down time, from 10 s before to 5 s after). Targets: every VM deleted, none early, at most 5 % of VMs deleted more than once and none more than twice, no \"Too many open files\", every status answered.\n\n| VMs deleted | calls before a lab's expiry | backend calls | calls a VM | peak in flight | VMs deleted more than once | most deletions of one VM | last deletion after the last expiry | \"Too many open files\" in the runtime's log |\n|---|---|---|---|---|---|---|---|---|\n| {deleted} of {vm_count} | {early} | {} | {:.2} | {peak} | {twice} (**{:.1} %**) | {most} | {:.0} s | {fd_errors} |\n\n| status requests | unanswered | p50 | p99 | slowest |\n|---|---|---|---|---|\n| {} | {unanswered} | {p50} ms | {p99} ms | {slowest} ms |\n",
        (last_expiry - first_expiry) as f64 / 1000.0,
        fault_list.join(", "),
        restarts.join("; "),
        ours.len(),
        ours.len() as f64 / vm_count as f64,
        100.0 * twice as f64 / vm_count as f64,
        last_deleted.saturating_sub(last_expiry) as f64 / 1000.0,
        up.len(),
    )
}
