//! A Cron Trigger run's wall time, shared out between the inventory's pull and the sweep, read on the runtime's clock.

use crate::lab::config::Config;

/// A Cron Trigger run's wall time, shared out (ms from its start): the pull, then the sweep,
/// then `WALL_MARGIN_MS` for the counts, the record and the log. Each call is started only
/// while it can end in its part (a page's fetch within the backend's timeout, a call to a
/// lab's object within `Config::lab_call_timeout_ms`), so the run ends within its wall time
/// however slow the backend or the objects are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// When the pull's last call ends at the latest (a page or an action).
    pub pull_ends_ms: i64,
    /// When the sweep's last poke ends at the latest.
    pub sweep_ends_ms: i64,
    /// How long one call to a lab's object may take.
    pub lab_call_ms: i64,
}

impl Clock {
    pub fn of(config: &Config) -> Clock {
        let lab_call_ms = i64::from(config.lab_call_timeout_ms());
        let sweep_ends_ms = config
            .limits()
            .wall_ms
            .saturating_sub(crate::lab::invocation::plan::WALL_MARGIN_MS);
        Clock {
            // The sweep keeps time for a round of pokes and `SWEEP_MIN_MS` more.
            pull_ends_ms: sweep_ends_ms
                .saturating_sub(lab_call_ms)
                .saturating_sub(SWEEP_MIN_MS),
            sweep_ends_ms,
            lab_call_ms,
        }
    }

    /// Whether a call to a lab's object started `elapsed_ms` into the run ends by `ends_ms`.
    pub fn call_fits(&self, elapsed_ms: i64, ends_ms: i64) -> bool {
        elapsed_ms <= ends_ms.saturating_sub(self.lab_call_ms)
    }
}

/// Time a run keeps for the sweep beyond one round of pokes, however long the pull took.
pub const SWEEP_MIN_MS: i64 = 30_000;
