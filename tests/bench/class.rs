//! The class scenario: M labs (1 master + 2 workers) expiring within one second, against a backend that serves C calls at once and refuses the rest.

use std::path::Path;
use std::time::Duration;

use mock_backend::{Capacity, Endpoint, MockBackend};
use serde_json::json;

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
    /// Seconds from each refused call to the next call of the same id: how labs come back.
    pub first_attempt_spread: f64,
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
    }
}
