//! The cleanup's service levels: how long VMs outlive their labs (the lag), per hour over the last 24 hours, the backlog, and the Prometheus text of it all.
//!
//! Pure: the index hands over the labs completed in the window and the labs past their expiry
//! and not completed (`lab::index::{completions, backlog}`), the clock comes in as an argument.

/// The window the service levels look back over.
pub const WINDOW_MS: i64 = 24 * 3_600_000;
const HOUR_MS: i64 = 3_600_000;

/// A lab completed in the window (a row of `index::completions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Completion {
    pub completed_at: i64,
    /// The expiry, or the end time of a lab ended early (an end sets it).
    pub expires_at: i64,
    pub vm_count: u32,
    pub already_gone_count: u32,
}

impl Completion {
    /// How long the lab's VMs outlived it, in ms (never below 0).
    pub fn lag_ms(&self) -> i64 {
        self.completed_at.saturating_sub(self.expires_at).max(0)
    }
}

/// A lab past its expiry and not completed (a row of `index::backlog`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Overdue {
    pub expires_at: i64,
    pub pending_count: u32,
}

/// Lag percentiles, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub p50: i64,
    pub p95: i64,
    pub p99: i64,
    pub max: i64,
}

/// One hour of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hour {
    /// Its start.
    pub start: i64,
    /// Labs completed in it, and the p95 of their lag (ms; `None` without any).
    pub completed: u64,
    pub p95_lag_ms: Option<i64>,
    /// VMs of labs past their expiry and not completed, at the end of the hour (now for the
    /// last one): the backlog.
    pub vms_pending: u64,
}

/// The service levels over the window ending at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    pub completed_24h: u64,
    pub lag: Option<Lag>,
    /// VMs of labs past their expiry still pending now.
    pub overdue_vms: u64,
    /// VMs the backend confirmed deleting for the labs completed in the window (404s aside).
    pub vms_deleted_24h: u64,
    /// Oldest first; 24 of them.
    pub hours: Vec<Hour>,
    /// Every lag, in ms, sorted (for the histogram).
    pub lags_ms: Vec<i64>,
}

/// The value at quantile `q` of `sorted` (nearest rank: the smallest value with at least `q` of
/// them at or below it).
pub fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn lag_of(sorted: &[i64]) -> Option<Lag> {
    Some(Lag {
        p50: quantile(sorted, 0.50)?,
        p95: quantile(sorted, 0.95)?,
        p99: quantile(sorted, 0.99)?,
        max: *sorted.last()?,
    })
}

/// The service levels at `now` from the labs completed since `now - WINDOW_MS` and the labs
/// overdue now.
pub fn levels(now: i64, completions: &[Completion], overdue: &[Overdue]) -> Levels {
    let since = now.saturating_sub(WINDOW_MS);
    let window: Vec<&Completion> = completions
        .iter()
        .filter(|c| c.completed_at >= since && c.completed_at <= now)
        .collect();
    let mut lags_ms: Vec<i64> = window.iter().map(|c| c.lag_ms()).collect();
    lags_ms.sort_unstable();
    let hours = (0..24)
        .map(|i| {
            let start = since.saturating_add(i * HOUR_MS);
            let end = start.saturating_add(HOUR_MS).min(now);
            let mut in_hour: Vec<i64> = window
                .iter()
                .filter(|c| c.completed_at >= start && c.completed_at < end.max(start + 1))
                .map(|c| c.lag_ms())
                .collect();
            in_hour.sort_unstable();
            // Past the expiry and not yet completed at the hour's end.
            let finished_later: u64 = window
                .iter()
                .filter(|c| c.expires_at <= end && c.completed_at > end)
                .map(|c| u64::from(c.vm_count))
                .sum();
            let still_overdue: u64 = overdue
                .iter()
                .filter(|o| o.expires_at <= end)
                .map(|o| u64::from(o.pending_count))
                .sum();
            Hour {
                start,
                completed: in_hour.len() as u64,
                p95_lag_ms: quantile(&in_hour, 0.95),
                vms_pending: finished_later + still_overdue,
            }
        })
        .collect();
    Levels {
        completed_24h: window.len() as u64,
        lag: lag_of(&lags_ms),
        overdue_vms: overdue.iter().map(|o| u64::from(o.pending_count)).sum(),
        vms_deleted_24h: window
            .iter()
            .map(|c| u64::from(c.vm_count.saturating_sub(c.already_gone_count)))
            .sum(),
        hours,
        lags_ms,
    }
}

/// The lag histogram's bucket bounds, in seconds (Prometheus `le`).
pub const LAG_BUCKETS_SECONDS: [i64; 12] =
    [1, 5, 10, 30, 60, 120, 300, 600, 1_800, 3_600, 7_200, 21_600];

/// Milliseconds as seconds with three decimals, without float formatting: `1234` → `1.234`.
pub fn seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}", ms / 1000, ms % 1000)
}

/// What `/metrics` shows besides the service levels (the stats route's counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub by_status: Vec<(&'static str, u64)>,
    pub stuck: u64,
    pub vms_pending: u64,
    /// VMs of stopped labs (the grace stage), kept until their `delete_at`; the earliest
    /// expiry among those labs (ms).
    pub vms_stopped: u64,
    pub oldest_stopped_expiry_ms: Option<i64>,
    pub vms_already_gone: u64,
    /// The last reconciliation: when (ms), and its counts by class.
    pub reconciliation: Option<(i64, Vec<(&'static str, u64)>)>,
    /// Per rotated secret, 1 while its `_PREVIOUS` value is set (a rotation under way).
    pub previous_secrets: Vec<(&'static str, u64)>,
}

/// The Prometheus text exposition format (version 0.0.4) of `gauges` and `levels`. Label values
/// are only this worker's own words (statuses, classes), never text from outside.
pub fn prometheus(gauges: &Gauges, levels: &Levels) -> String {
    let mut out = String::new();
    let labs = "Labs in the fleet index, by status.";
    let by_status = labelled("status", &gauges.by_status);
    family(&mut out, "labs", "gauge", labs, &by_status);
    for (name, help, n) in single_gauges(gauges, levels) {
        family(
            &mut out,
            name,
            "gauge",
            help,
            &[(String::new(), n.to_string())],
        );
    }
    family(
        &mut out,
        "cleanup_lag_seconds",
        "histogram",
        "How long VMs outlived their labs (completed_at - expires_at), labs completed in the last 24 hours.",
        &lag_histogram(&levels.lags_ms),
    );
    let previous = labelled("secret", &gauges.previous_secrets);
    let help = "1 while a secret's previous value is still accepted or signed with (its _PREVIOUS setting is set): a rotation not finished.";
    family(&mut out, "previous_secret_set", "gauge", help, &previous);
    if let Some(at) = gauges.oldest_stopped_expiry_ms {
        family(
            &mut out,
            "oldest_stopped_expiry_timestamp_seconds",
            "gauge",
            "The earliest expiry among the stopped labs (the grace stage; Unix seconds).",
            &[(String::new(), seconds(at))],
        );
    }
    if let Some((at, counts)) = &gauges.reconciliation {
        let samples = labelled("class", counts);
        let vms = "The last inventory reconciliation's VMs, by class.";
        family(&mut out, "reconciliation_vms", "gauge", vms, &samples);
        family(
            &mut out,
            "reconciliation_timestamp_seconds",
            "gauge",
            "When the last inventory reconciliation ran (Unix seconds).",
            &[(String::new(), seconds(*at))],
        );
    }
    out
}

/// Samples with one label each: `{label="value"}` and the count.
fn labelled(label: &str, counts: &[(&'static str, u64)]) -> Vec<(String, String)> {
    counts
        .iter()
        .map(|(value, n)| (format!("{{{label}=\"{value}\"}}"), n.to_string()))
        .collect()
}

/// One metric family: its help and type lines, then its samples (labels or suffix, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    out.push_str(&format!("# HELP labs_cleanup_{name} {help}\n"));
    out.push_str(&format!("# TYPE labs_cleanup_{name} {kind}\n"));
    for (labels_and_suffix, value) in samples {
        out.push_str(&format!("labs_cleanup_{name}{labels_and_suffix} {value}\n"));
    }
}

/// The gauges of one sample each: name, help, value.
fn single_gauges(gauges: &Gauges, levels: &Levels) -> [(&'static str, &'static str, u64); 7] {
    [
        (
            "stuck_labs",
            "Labs not completed after STUCK_AFTER_ATTEMPTS attempts.",
            gauges.stuck,
        ),
        (
            "vms_pending",
            "VMs of labs being cleaned up, not yet deleted.",
            gauges.vms_pending,
        ),
        (
            "vms_stopped",
            "VMs of stopped labs (the grace stage), kept until their delete_at.",
            gauges.vms_stopped,
        ),
        (
            "overdue_vms",
            "VMs of labs past their expiry, still pending now.",
            levels.overdue_vms,
        ),
        (
            "vms_already_gone",
            "VMs the backend answered 404 for, over the labs in the index.",
            gauges.vms_already_gone,
        ),
        (
            "vms_deleted_24h",
            "VMs the backend confirmed deleting, for the labs completed in the last 24 hours.",
            levels.vms_deleted_24h,
        ),
        (
            "labs_completed_24h",
            "Labs completed in the last 24 hours.",
            levels.completed_24h,
        ),
    ]
}

/// The histogram of the last 24 hours' lags: a window, not a running total (read its buckets
/// with histogram_quantile as they are; rate() does not apply).
fn lag_histogram(lags_ms: &[i64]) -> Vec<(String, String)> {
    let mut buckets: Vec<(String, String)> = LAG_BUCKETS_SECONDS
        .iter()
        .map(|le| {
            let n = lags_ms.iter().filter(|l| **l <= le * 1000).count();
            (format!("_bucket{{le=\"{le}\"}}"), n.to_string())
        })
        .collect();
    buckets.push(("_bucket{le=\"+Inf\"}".into(), lags_ms.len().to_string()));
    buckets.push(("_count".into(), lags_ms.len().to_string()));
    let sum = lags_ms.iter().copied().fold(0i64, i64::saturating_add);
    buckets.push(("_sum".into(), seconds(sum)));
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_083_200_000;
    const S: i64 = 1_000;

    fn done(ago_ms: i64, lag_ms: i64, vms: u32) -> Completion {
        Completion {
            completed_at: NOW - ago_ms,
            expires_at: NOW - ago_ms - lag_ms,
            vm_count: vms,
            already_gone_count: 0,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.50), Some(50));
        assert_eq!(quantile(&v, 0.95), Some(95));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_lag_of_known_labs() {
        // 100 labs an hour ago: lags 1 s .. 100 s; one more outside the window.
        let mut c: Vec<Completion> = (1..=100).map(|i| done(3_600 * S, i * S, 3)).collect();
        c.push(done(25 * 3_600 * S, 9_999 * S, 3));
        let overdue = [Overdue {
            expires_at: NOW - 600 * S,
            pending_count: 2,
        }];
        let l = levels(NOW, &c, &overdue);
        assert_eq!(l.completed_24h, 100);
        assert_eq!(
            l.lag,
            Some(Lag {
                p50: 50 * S,
                p95: 95 * S,
                p99: 99 * S,
                max: 100 * S
            })
        );
        assert_eq!(l.overdue_vms, 2);
        assert_eq!(l.vms_deleted_24h, 300);
        assert_eq!(l.hours.len(), 24);
        let total: u64 = l.hours.iter().map(|h| h.completed).sum();
        assert_eq!(total, 100);
        // The overdue lab weighs on the last hour only (it expired 10 minutes ago).
        assert_eq!(l.hours[23].vms_pending, 2);
        assert_eq!(l.hours[0].vms_pending, 0);
    }

    #[test]
    fn the_backlog_counts_labs_between_their_expiry_and_their_completion() {
        // Expired 10 hours ago, completed 2 hours ago: pending through the hours between.
        let c = [done(2 * 3_600 * S, 8 * 3_600 * S, 4)];
        let l = levels(NOW, &c, &[]);
        let pending: Vec<u64> = l.hours.iter().map(|h| h.vms_pending).collect();
        // Hour i ends 24 - i - 1 hours ago: the lab is in the backlog at the ends of hours 13
        // (10 hours ago, its expiry) to 20 (3 hours ago), out of it at 21 (its completion).
        assert_eq!(pending[12], 0, "before its expiry");
        assert!(pending[13..=20].iter().all(|n| *n == 4), "{pending:?}");
        assert_eq!(pending[21], 0, "at its completion");
    }

    #[test]
    fn the_text_format_is_prometheus() {
        let c: Vec<Completion> = (1..=3).map(|i| done(60 * S, i * 20 * S, 1)).collect();
        let gauges = Gauges {
            by_status: vec![("scheduled", 2), ("completed", 3)],
            stuck: 1,
            vms_pending: 4,
            vms_stopped: 6,
            oldest_stopped_expiry_ms: Some(NOW),
            vms_already_gone: 0,
            reconciliation: Some((NOW, vec![("tracked", 5), ("unknown", 1)])),
            previous_secrets: vec![("API_TOKEN", 1), ("WEBHOOK_SECRET", 0)],
        };
        let text = prometheus(&gauges, &levels(NOW, &c, &[]));
        assert!(text.contains("labs_cleanup_vms_stopped 6\n"));
        assert!(text.contains("labs_cleanup_previous_secret_set{secret=\"API_TOKEN\"} 1\n"));
        assert!(text.contains("labs_cleanup_previous_secret_set{secret=\"WEBHOOK_SECRET\"} 0\n"));
        assert!(
            text.contains("labs_cleanup_oldest_stopped_expiry_timestamp_seconds 1796083200.000\n")
        );
        assert!(text.contains("labs_cleanup_labs{status=\"scheduled\"} 2\n"));
        assert!(text.contains("labs_cleanup_cleanup_lag_seconds_bucket{le=\"30\"} 1\n"));
        assert!(text.contains("labs_cleanup_cleanup_lag_seconds_bucket{le=\"60\"} 3\n"));
        assert!(text.contains("labs_cleanup_cleanup_lag_seconds_sum 120.000\n"));
        assert!(text.contains("labs_cleanup_cleanup_lag_seconds_count 3\n"));
        assert!(text.contains("labs_cleanup_reconciliation_timestamp_seconds 1796083200.000\n"));
        assert_eq!(seconds(1234), "1.234");
        assert_eq!(seconds(-5), "-0.005");
    }
}
