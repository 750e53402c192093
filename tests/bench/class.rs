//! The class scenario: M labs (1 master + 2 workers) expiring within one second, against a backend that serves C calls at once and refuses the rest.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use mock_backend::{Capacity, Endpoint, MockBackend};
use serde_json::json;

use crate::env_or;
use crate::plot::{line_chart, Series};
use crate::support::{epoch_ms, Worker};

/// One run of the scenario.
pub struct Scenario<'a> {
    pub name: &'a str,
    /// `RETRY_POLICY`.
    pub policy: &'a str,
    /// `EXPIRY_SPREAD_SECONDS` (only read by the adaptive policy).
    pub spread_seconds: u64,
    /// The refusal: status and `Retry-After`.
    pub refuse_status: u16,
    pub retry_after: Option<&'a str>,
    pub labs: usize,
    pub capacity: usize,
    pub latency_ms: u64,
    pub retry_seconds: u64,
    /// `BACKEND_MAX_CONCURRENCY` (`None`: no fleet-wide budget).
    pub budget: Option<u32>,
    /// A backend that slows down instead of refusing (see the mock's `Capacity::slow`).
    pub slow: bool,
    /// `BACKEND_TIMEOUT_SECONDS`.
    pub timeout_seconds: u64,
}

/// What a run measured.
pub struct Measured {
    /// Seconds from the first expiry until the last VM was deleted.
    pub seconds: f64,
    /// The physical limit: every call at full capacity, `calls x L / C`.
    pub limit: f64,
    pub calls: usize,
    pub refused: u64,
    pub peak_in_flight: usize,
    /// Seconds over which the labs' first backend calls came.
    pub first_attempt_spread: f64,
    /// Seconds from the first expiry to each VM's deletion, in order: the plot's curve.
    pub deletions: Vec<f64>,
    /// Deletions the backend carried out (2xx) per VM: above 1, VMs deleted more than once.
    pub successes_per_vm: f64,
    /// Backend calls per VM (services calls included).
    pub calls_per_vm: f64,
}

impl Measured {
    pub fn refused_share(&self) -> f64 {
        self.refused as f64 / self.calls.max(1) as f64
    }
}

/// Runs `s` on a worker of its own (state in `dir`) against `mock`; the mock's capacity is set
/// for the run and lifted after.
/// A create that tries again when the local machine refuses the connection for a moment (a
/// thousand creates while a thousand cleanups run can fill the local runtime's accept queue: the
/// connect fails with EAGAIN). A repeated create of the same lab answers 200 with the lab.
pub(crate) fn create_retrying(
    worker: &Worker,
    body: &serde_json::Value,
) -> mock_backend::http::Response {
    let bearer = format!("Bearer {}", crate::support::API_TOKEN);
    for attempt in 0..10 {
        match mock_backend::http::request(
            &worker.addr,
            "POST",
            "/api/v1/labs/sessions",
            &[
                ("Authorization", bearer.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
            Duration::from_secs(30),
        ) {
            Ok(r) => return r,
            Err(e) if attempt < 9 => {
                eprintln!("create: {e}; trying again");
                std::thread::sleep(Duration::from_millis(200 << attempt.min(4)));
            }
            Err(e) => panic!("create failed 10 times: {e}"),
        }
    }
    unreachable!()
}

/// Creates a lab for each of `items` on eight threads, the body of item i from `body(i, item)`
/// (built when its create is sent); the labs' expiries (epoch ms), in the order of `items`.
pub(crate) fn create_all<T: Sync>(
    worker: &Worker,
    items: &[T],
    body: impl Fn(usize, &T) -> serde_json::Value + Sync,
) -> Vec<u64> {
    let per_thread = items.len().div_ceil(8).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .enumerate()
            .map(|(c, chunk)| {
                let body = &body;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(k, item)| {
                            let r = create_retrying(worker, &body(c * per_thread + k, item));
                            assert!(matches!(r.status, 200 | 201), "{}", r.text());
                            epoch_ms(&r.json()["expires_at"])
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

pub fn run(dir: &Path, mock: &MockBackend, s: &Scenario) -> Measured {
    let spread = s.spread_seconds.to_string();
    let retry = s.retry_seconds.to_string();
    let timeout = s.timeout_seconds.to_string();
    let budget = s.budget.map(|b| b.to_string()).unwrap_or_default();
    let mut worker = Worker::start(
        dir,
        &mock.url(),
        &[
            ("RETRY_POLICY", s.policy),
            ("EXPIRY_SPREAD_SECONDS", &spread),
            ("CLEANUP_RETRY_SECONDS", &retry),
            ("BACKEND_TIMEOUT_SECONDS", &timeout),
            ("BACKEND_MAX_CONCURRENCY", &budget),
        ],
    );
    // Calls of the previous run the worker gave up on may still be held by the mock (a slow
    // backend serves them for as long as their load said); they would count in this run's load.
    let drained = std::time::Instant::now() + Duration::from_secs(300);
    while mock.stats().in_flight > 0 && std::time::Instant::now() < drained {
        std::thread::sleep(Duration::from_millis(200));
    }
    mock.reset();
    mock.set_latency(Duration::from_millis(s.latency_ms));
    mock.set_capacity(Some(Capacity {
        max_in_flight: s.capacity,
        status: s.refuse_status,
        retry_after: s.retry_after.map(str::to_string),
        slow: s.slow,
    }));

    // Every lab expires at about the same second, however long the creates take: each asks for
    // the whole seconds left until a common expiry (`duration` units are seconds here), so a
    // class of 1,000 created over many seconds still expires within about a second.
    let started = std::time::Instant::now();
    let target_secs = 6 + (s.labs as u64).div_ceil(40);
    let ids: Vec<(String, String, String)> = (0..s.labs)
        .map(|i| {
            (
                format!("{}-m{i}", s.name),
                format!("{}-m{i}-w1", s.name),
                format!("{}-m{i}-w2", s.name),
            )
        })
        .collect();
    let expiries = create_all(&worker, &ids, |_, (m, w1, w2)| {
        let duration = target_secs
            .saturating_sub(started.elapsed().as_secs())
            .max(1);
        json!({
            "lab_request_id": m, "user_id": "class-user", "duration": duration,
            "worker_nodes": [{"worker_lab_request_id": w1}, {"worker_lab_request_id": w2}],
        })
    });
    let first_expiry = *expiries.iter().min().unwrap();
    let last_expiry = *expiries.iter().max().unwrap();
    eprintln!(
        "{}: {} labs expire within {:.2} s",
        s.name,
        s.labs,
        (last_expiry - first_expiry) as f64 / 1000.0
    );

    let vms: Vec<&str> = ids
        .iter()
        .flat_map(|(m, w1, w2)| [m.as_str(), w1.as_str(), w2.as_str()])
        .collect();
    let (calls, ok) = mock.wait_for(&vms, Duration::from_secs(600), |calls| {
        let mut deleted: Vec<&str> = calls
            .iter()
            .filter(|c| {
                c.endpoint == Some(Endpoint::DeleteVm) && c.status == Some(200) && c.done_ms > 0
            })
            .filter_map(|c| c.lab_request_id.as_deref())
            .collect();
        deleted.sort_unstable();
        deleted.dedup();
        deleted.len() == vms.len()
    });
    assert!(ok, "{}: not every VM was deleted in 10 minutes", s.name);
    // Let calls still in flight finish before counting.
    std::thread::sleep(Duration::from_millis(s.latency_ms + 500));
    let calls_now = mock.calls_for_any(&vms);
    let stats = mock.stats();
    let last_deletion = calls
        .iter()
        .filter(|c| c.endpoint == Some(Endpoint::DeleteVm) && c.status == Some(200))
        .map(|c| c.done_ms)
        .max()
        .unwrap();
    let first_calls: Vec<u64> = ids
        .iter()
        .filter_map(|(m, _, _)| {
            calls_now
                .iter()
                .find(|c| c.lab_request_id.as_deref() == Some(m.as_str()))
                .map(|c| c.at_ms)
        })
        .collect();
    let spread =
        (first_calls.iter().max().unwrap() - first_calls.iter().min().unwrap()) as f64 / 1000.0;
    let mut deletions: Vec<f64> = calls_now
        .iter()
        .filter(|c| c.endpoint == Some(Endpoint::DeleteVm) && c.status == Some(200))
        .map(|c| c.done_ms.saturating_sub(first_expiry) as f64 / 1000.0)
        .collect();
    deletions.sort_by(|a, b| a.partial_cmp(b).unwrap());
    mock.set_capacity(None);
    worker.stop();
    let total_calls = s.labs * 4;
    let successes = calls_now
        .iter()
        .filter(|c| {
            c.endpoint == Some(Endpoint::DeleteVm)
                && c.status.is_some_and(|s| (200..300).contains(&s))
        })
        .count();
    Measured {
        successes_per_vm: successes as f64 / vms.len() as f64,
        calls_per_vm: calls_now.len() as f64 / vms.len() as f64,
        seconds: (last_deletion - first_expiry) as f64 / 1000.0,
        limit: total_calls as f64 * s.latency_ms as f64 / 1000.0 / s.capacity as f64,
        calls: calls_now.len(),
        refused: stats.refused,
        peak_in_flight: stats.peak_in_flight,
        first_attempt_spread: spread,
        deletions,
    }
}

/// One run of the section.
struct Run {
    name: String,
    policy: &'static str,
    spread: u64,
    status: u16,
    retry_after: Option<&'static str>,
    /// Plot colour, or "" for none.
    color: &'static str,
    budget: Option<u32>,
    slow: bool,
    labs: usize,
    timeout: u64,
}

impl Run {
    fn new(
        name: &str,
        policy: &'static str,
        status: u16,
        retry_after: Option<&'static str>,
    ) -> Run {
        Run {
            name: name.into(),
            policy,
            spread: if policy == "fixed" {
                0
            } else {
                labs_cleanup::lab::config::DEFAULT_EXPIRY_SPREAD_SECONDS
            },
            status,
            retry_after,
            color: "",
            budget: None,
            slow: false,
            labs: env_or("BENCH_CLASS_LABS", 100),
            timeout: 15,
        }
    }
}

/// The adaptive policy against the original one, with and without `Retry-After`; the adaptive
/// policy at other spreads of first attempts (how the default was chosen); then the fleet-wide
/// budget: the same class, a budget above the backend's capacity, a class of 1,000 labs, and a
/// backend that slows down instead of refusing. Writes the plot of VMs deleted over time to
/// `plot_path`; returns the markdown.
pub fn section(work_dir: &Path, mock: &MockBackend, plot_path: &Path) -> String {
    let labs: usize = env_or("BENCH_CLASS_LABS", 100);
    let big: usize = env_or("BENCH_CLASS_BIG_LABS", 1000);
    let default_spread = labs_cleanup::lab::config::DEFAULT_EXPIRY_SPREAD_SECONDS;
    let spreads: Vec<u64> = std::env::var("BENCH_CLASS_SPREADS")
        .unwrap_or_else(|_| "0,2,10".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|s| *s != default_spread)
        .collect();
    let mut runs: Vec<Run> = vec![
        Run {
            color: "#1f77b4",
            ..Run::new("adaptive (default)", "adaptive", 429, Some("2"))
        },
        Run {
            color: "#d62728",
            ..Run::new("original (fixed)", "fixed", 429, Some("2"))
        },
        Run {
            color: "#17becf",
            ..Run::new("adaptive", "adaptive", 503, None)
        },
        Run {
            color: "#ff7f0e",
            ..Run::new("original (fixed)", "fixed", 503, None)
        },
    ];
    for spread in spreads {
        runs.push(Run {
            spread,
            ..Run::new(
                &format!("adaptive, spread {spread} s"),
                "adaptive",
                429,
                Some("2"),
            )
        });
    }
    let budget_runs: Vec<Run> = vec![
        Run {
            color: "#2ca02c",
            budget: Some(20),
            spread: 0,
            ..Run::new("budget 20", "adaptive", 429, Some("2"))
        },
        Run {
            color: "#98df8a",
            budget: Some(20),
            spread: 0,
            ..Run::new("budget 20", "adaptive", 503, None)
        },
        Run {
            budget: Some(40),
            spread: 0,
            ..Run::new("budget 40 (above the capacity)", "adaptive", 429, Some("2"))
        },
        Run {
            budget: Some(20),
            spread: 0,
            labs: big,
            ..Run::new(
                &format!("budget 20, {big} labs"),
                "adaptive",
                429,
                Some("2"),
            )
        },
        Run {
            labs: big,
            ..Run::new(&format!("adaptive, {big} labs"), "adaptive", 429, Some("2"))
        },
        // A slow backend bites with many labs: 100 labs keep about 30 calls in flight (300 ms
        // each, far from the 2 s timeout); a thousand keep hundreds.
        Run {
            slow: true,
            timeout: 2,
            labs: big,
            ..Run::new(
                &format!("adaptive, slow backend, {big} labs"),
                "adaptive",
                429,
                None,
            )
        },
        Run {
            slow: true,
            timeout: 2,
            budget: Some(20),
            spread: 0,
            labs: big,
            ..Run::new(
                &format!("budget 20, slow backend, {big} labs"),
                "adaptive",
                429,
                None,
            )
        },
    ];
    // `BENCH_CLASS_RUNS`: only the runs whose name holds one of these (comma-separated).
    let only: Vec<String> = std::env::var("BENCH_CLASS_RUNS")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let chosen = |r: &Run| only.is_empty() || only.iter().any(|o| r.name.contains(o.as_str()));
    let runs: Vec<Run> = runs.into_iter().filter(|r| chosen(r)).collect();
    let budget_runs: Vec<Run> = budget_runs.into_iter().filter(|r| chosen(r)).collect();
    let mut rows = String::new();
    let mut budget_rows = String::new();
    let mut series = Vec::new();
    let mut limit = 0.0;
    let all = runs
        .iter()
        .map(|r| (r, false))
        .chain(budget_runs.iter().map(|r| (r, true)));
    for (i, (r, is_budget)) in all.enumerate() {
        let tag = format!("class{i}");
        let scenario = Scenario {
            name: &tag,
            policy: r.policy,
            spread_seconds: r.spread,
            refuse_status: r.status,
            retry_after: r.retry_after,
            labs: r.labs,
            capacity: 20,
            latency_ms: 200,
            retry_seconds: 10,
            budget: r.budget,
            slow: r.slow,
            timeout_seconds: r.timeout,
        };
        let m = run(&work_dir.join(&tag), mock, &scenario);
        if r.labs == labs && !r.slow {
            limit = m.limit;
        }
        let refusal = match (r.slow, r.retry_after) {
            (true, _) => "none: slows down (timeout 2 s)".to_string(),
            (false, Some(ra)) => format!("{}, Retry-After: {ra}", r.status),
            (false, None) => format!("{}, no Retry-After", r.status),
        };
        eprintln!(
            "{} ({refusal}): {:.1} s ({:.2}x), {} calls, {} refused ({:.0} %), peak {}, {:.2} deletions a VM",
            r.name,
            m.seconds,
            m.seconds / m.limit,
            m.calls,
            m.refused,
            100.0 * m.refused_share(),
            m.peak_in_flight,
            m.successes_per_vm
        );
        if is_budget {
            let _ = writeln!(
                budget_rows,
                "| {} | {} | {refusal} | {:.1} s | **{:.2}x** | {} (**{:.0} %**) | {} | {:.2} | {:.2} |",
                r.name,
                r.labs,
                m.seconds,
                m.seconds / m.limit,
                m.refused,
                100.0 * m.refused_share(),
                m.peak_in_flight,
                m.successes_per_vm,
                m.calls_per_vm
            );
        } else {
            let _ = writeln!(
                rows,
                "| {} | {} s ({:.1} s) | {refusal} | {:.1} s | **{:.2}x** | {} | {} (**{:.0} %**) | {} |",
                r.name,
                r.spread,
                m.first_attempt_spread,
                m.seconds,
                m.seconds / m.limit,
                m.calls,
                m.refused,
                100.0 * m.refused_share(),
                m.peak_in_flight
            );
        }
        if !r.color.is_empty() {
            let mut points = vec![(0.0, 0.0)];
            points.extend(
                m.deletions
                    .iter()
                    .enumerate()
                    .map(|(k, t)| (*t, (k + 1) as f64)),
            );
            series.push(Series {
                name: format!("{}, {refusal}", r.name),
                color: r.color,
                dash: if r.status == 503 { "6,3" } else { "" },
                points,
            });
        }
    }
    std::fs::write(
        plot_path,
        line_chart(
            &format!("{labs} labs expiring together: VMs deleted over time"),
            "seconds since the first expiry",
            "VMs deleted",
            &series,
        ),
    )
    .unwrap();
    format!(
        "{labs} labs of 1 master + 2 workers expiring within one second; the mock backend serves 20 calls at once at 200 ms each and refuses the rest at once; `CLEANUP_RETRY_SECONDS=10`. The physical limit is {} calls x 0.2 s / 20 = **{limit:.1} s**. Time is from the first expiry until the last VM is deleted; every call that reached the backend counts, refused or not. Targets: within 3x the limit, at most 30 % refused; without `Retry-After`, fewer refused calls than the original policy.\n\n| policy | spread (first calls came over) | refusal | time | / limit | calls | refused | peak in flight |\n|---|---|---|---|---|---|---|---|\n{rows}\n![VMs deleted over time](perf/class.svg)\n\n#### With the fleet-wide budget (`BACKEND_MAX_CONCURRENCY`)\n\nThe same backend (20 calls at once, 200 ms each, the rest refused at once; or, for the slow backend, every call served but taking 200 ms x calls in flight / 20, with `BACKEND_TIMEOUT_SECONDS=2`). The limit is the VMs' calls x 0.2 s / 20 for each run's number of labs. Deletions a VM: the backend's 2xx answers per VM (above 1: a VM deleted more than once, e.g. a call the worker gave up on that the backend still carried out). Targets: at most 1.3x the limit and 1 % refused with the budget; above the capacity, no worse than the adaptive policy alone; the slow backend: at most 1.1 deletions a VM and 1.5 calls a VM.\n\n| run | labs | refusal | time | / limit | refused | peak in flight | deletions a VM | calls a VM |\n|---|---|---|---|---|---|---|---|---|\n{budget_rows}",
        labs * 4,
    )
}

/// What a permit costs a call: labs of 48 workers on an idle backend (no latency, no
/// contention), cleaned up with and without the budget; the added time per call is the
/// difference of the attempts' wall times, per call, at the p50 over the labs.
pub fn permit_cost(work_dir: &Path, mock: &MockBackend) -> String {
    let labs: usize = env_or("BENCH_PERMIT_LABS", 10);
    let mut walls = Vec::new();
    for (tag, budget) in [("permit-off", ""), ("permit-on", "1000")] {
        let mut worker = Worker::start(
            &work_dir.join(tag),
            &mock.url(),
            &[
                ("BACKEND_MAX_CONCURRENCY", budget),
                ("EXPIRY_SPREAD_SECONDS", "0"),
            ],
        );
        mock.reset();
        mock.set_latency(Duration::ZERO);
        mock.set_capacity(None);
        let mut per_lab = Vec::new();
        for i in 0..labs {
            let master = format!("{tag}-m{i}");
            let workers: Vec<serde_json::Value> = (0..48)
                .map(|w| json!({"worker_lab_request_id": format!("{tag}-m{i}-w{w}")}))
                .collect();
            let r = worker.create(&json!({"lab_request_id": master, "user_id": "permit-user", "duration": 1, "worker_nodes": workers}));
            assert_eq!(r.status, 201, "{}", r.text());
            let ids: Vec<String> = std::iter::once(master.clone())
                .chain((0..48).map(|w| format!("{tag}-m{i}-w{w}")))
                .collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let (calls, ok) = mock.wait_for(&refs, Duration::from_secs(60), |c| {
                c.iter()
                    .filter(|c| c.endpoint == Some(Endpoint::DeleteVm) && c.done_ms > 0)
                    .count()
                    == 49
            });
            assert!(ok, "{tag}: lab {i} not cleaned up");
            let first = calls.iter().map(|c| c.at_ms).min().unwrap();
            let last = calls.iter().map(|c| c.done_ms).max().unwrap();
            per_lab.push((last - first) as f64 / calls.len() as f64);
        }
        worker.stop();
        walls.push(crate::median(per_lab));
    }
    format!(
        "A permit's cost: {labs} labs of 1 + 48 VMs each on an idle backend (no latency), one at a time, without the budget and with `BACKEND_MAX_CONCURRENCY=1000` (never contended): **{:.2} ms** added per backend call at the p50 ({:.2} ms a call without, {:.2} ms with; the attempt's wall time over its calls, 6 in flight). Target: at most 5 ms.\n",
        (walls[1] - walls[0]) * 6.0,
        walls[0] * 6.0,
        walls[1] * 6.0
    )
}
