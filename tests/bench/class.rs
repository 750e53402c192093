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
}

impl Measured {
    pub fn refused_share(&self) -> f64 {
        self.refused as f64 / self.calls.max(1) as f64
    }
}

/// Runs `s` on a worker of its own (state in `dir`) against `mock`; the mock's capacity is set
/// for the run and lifted after.
pub fn run(dir: &Path, mock: &MockBackend, s: &Scenario) -> Measured {
    let spread = s.spread_seconds.to_string();
    let retry = s.retry_seconds.to_string();
    let mut worker = Worker::start(
        dir,
        &mock.url(),
        &[
            ("RETRY_POLICY", s.policy),
            ("EXPIRY_SPREAD_SECONDS", &spread),
            ("CLEANUP_RETRY_SECONDS", &retry),
            ("BACKEND_TIMEOUT_SECONDS", "15"),
        ],
    );
    mock.reset();
    mock.set_latency(Duration::from_millis(s.latency_ms));
    mock.set_capacity(Some(Capacity {
        max_in_flight: s.capacity,
        status: s.refuse_status,
        retry_after: s.retry_after.map(str::to_string),
    }));

    // Create every lab within about a second (8 threads), each expiring `duration` s later.
    let duration = 6;
    let ids: Vec<(String, String, String)> = (0..s.labs)
        .map(|i| {
            (
                format!("{}-m{i}", s.name),
                format!("{}-m{i}-w1", s.name),
                format!("{}-m{i}-w2", s.name),
            )
        })
        .collect();
    let expiries: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(s.labs.div_ceil(8))
            .map(|chunk| {
                let worker = &worker;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(m, w1, w2)| {
                            let r = worker.create(&json!({
                                "lab_request_id": m, "user_id": "class-user", "duration": duration,
                                "worker_nodes": [{"worker_lab_request_id": w1}, {"worker_lab_request_id": w2}],
                            }));
                            assert_eq!(r.status, 201, "{}", r.text());
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
    Measured {
        seconds: (last_deletion - first_expiry) as f64 / 1000.0,
        limit: total_calls as f64 * s.latency_ms as f64 / 1000.0 / s.capacity as f64,
        calls: calls_now.len(),
        refused: stats.refused,
        peak_in_flight: stats.peak_in_flight,
        first_attempt_spread: spread,
        deletions,
    }
}

/// The adaptive policy against the original one, with and without `Retry-After`; then the
/// adaptive policy at other spreads of first attempts (how the default was chosen). Writes the
/// plot of VMs deleted over time to `plot_path`; returns the markdown.
pub fn section(work_dir: &Path, mock: &MockBackend, plot_path: &Path) -> String {
    let labs: usize = env_or("BENCH_CLASS_LABS", 100);
    let default_spread = labs_cleanup::lab::config::DEFAULT_EXPIRY_SPREAD_SECONDS;
    let spreads: Vec<u64> = std::env::var("BENCH_CLASS_SPREADS")
        .unwrap_or_else(|_| "0,2,10".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|s| *s != default_spread)
        .collect();
    // (name, policy, spread, refusal status, Retry-After, plot colour or "" for none)
    type Run = (
        String,
        &'static str,
        u64,
        u16,
        Option<&'static str>,
        &'static str,
    );
    let mut runs: Vec<Run> = vec![
        (
            "adaptive (default)".into(),
            "adaptive",
            default_spread,
            429,
            Some("2"),
            "#1f77b4",
        ),
        (
            "original (fixed)".into(),
            "fixed",
            0,
            429,
            Some("2"),
            "#d62728",
        ),
        (
            "adaptive".into(),
            "adaptive",
            default_spread,
            503,
            None,
            "#17becf",
        ),
        ("original (fixed)".into(), "fixed", 0, 503, None, "#ff7f0e"),
    ];
    for spread in spreads {
        runs.push((
            format!("adaptive, spread {spread} s"),
            "adaptive",
            spread,
            429,
            Some("2"),
            "",
        ));
    }
    let mut rows = String::new();
    let mut series = Vec::new();
    let mut limit = 0.0;
    for (i, (name, policy, spread, status, retry_after, color)) in runs.iter().enumerate() {
        let tag = format!("class{i}");
        let scenario = Scenario {
            name: &tag,
            policy,
            spread_seconds: *spread,
            refuse_status: *status,
            retry_after: *retry_after,
            labs,
            capacity: 20,
            latency_ms: 200,
            retry_seconds: 10,
        };
        let m = run(&work_dir.join(&tag), mock, &scenario);
        limit = m.limit;
        let refusal = match retry_after {
            Some(ra) => format!("{status}, Retry-After: {ra}"),
            None => format!("{status}, no Retry-After"),
        };
        eprintln!(
            "{name} ({refusal}): {:.1} s ({:.2}x), {} calls, {} refused ({:.0} %), peak {}",
            m.seconds,
            m.seconds / m.limit,
            m.calls,
            m.refused,
            100.0 * m.refused_share(),
            m.peak_in_flight
        );
        let _ = writeln!(
            rows,
            "| {name} | {} s ({:.1} s) | {refusal} | {:.1} s | **{:.2}x** | {} | {} (**{:.0} %**) | {} |",
            if *policy == "fixed" { 0 } else { *spread },
            m.first_attempt_spread,
            m.seconds,
            m.seconds / m.limit,
            m.calls,
            m.refused,
            100.0 * m.refused_share(),
            m.peak_in_flight
        );
        if !color.is_empty() {
            let mut points = vec![(0.0, 0.0)];
            points.extend(
                m.deletions
                    .iter()
                    .enumerate()
                    .map(|(k, t)| (*t, (k + 1) as f64)),
            );
            series.push(Series {
                name: format!("{name}, {refusal}"),
                color,
                dash: if *status == 503 { "6,3" } else { "" },
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
        "{labs} labs of 1 master + 2 workers expiring within one second; the mock backend serves 20 calls at once at 200 ms each and refuses the rest at once; `CLEANUP_RETRY_SECONDS=10`. The physical limit is {} calls x 0.2 s / 20 = **{limit:.1} s**. Time is from the first expiry until the last VM is deleted; every call that reached the backend counts, refused or not. Targets: within 3x the limit, at most 30 % refused; without `Retry-After`, fewer refused calls than the original policy.\n\n| policy | spread (first calls came over) | refusal | time | / limit | calls | refused | peak in flight |\n|---|---|---|---|---|---|---|---|\n{rows}\n![VMs deleted over time](perf/class.svg)\n",
        labs * 4,
    )
}
