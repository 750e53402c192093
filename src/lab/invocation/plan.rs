//! The Workers plans' limits on one invocation, each constant citing the page it comes from.

/// Which Workers plan the account is on (`PLAN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Free,
    Paid,
}

impl Plan {
    pub fn name(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Paid => "paid",
        }
    }

    pub fn parse(name: &str) -> Option<Plan> {
        [Plan::Free, Plan::Paid]
            .into_iter()
            .find(|p| p.name() == name.trim())
    }

    /// The plan's limits (`SUBREQUEST_LIMIT` may set another external one on Paid).
    pub fn limits(self) -> Limits {
        match self {
            Plan::Free => FREE,
            Plan::Paid => PAID,
        }
    }
}

crate::lab::named_enum!(Plan, Plan::parse);

/// What one invocation (a request, an alarm, a Cron Trigger run) may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Subrequests to the Internet (`fetch`): the lab backend, the webhook receiver.
    pub external: u64,
    /// Subrequests to Cloudflare services: calls to Durable Objects, D1 calls (a batch is one).
    pub services: u64,
    /// D1 queries (each statement of a batch is one).
    pub d1_queries: u64,
    /// CPU time, in ms.
    pub cpu_ms: u64,
    /// Wall time of an alarm or a Cron Trigger run, in ms.
    pub wall_ms: i64,
}

impl Limits {
    /// The last moment a call that may take `timeout_ms` can start in an alarm or a Cron
    /// Trigger run that started at `started_ms`, and still end within its wall time with
    /// `WALL_MARGIN_MS` to spare (an attempt's last backend call, a delivery).
    pub fn last_start_ms(&self, started_ms: i64, timeout_ms: i64) -> i64 {
        started_ms
            .saturating_add(self.wall_ms)
            .saturating_sub(WALL_MARGIN_MS)
            .saturating_sub(timeout_ms)
    }
}

/// Subrequests per invocation: 50 on Workers Free, 10,000 by default on Workers Paid
/// (<https://developers.cloudflare.com/workers/platform/limits/#subrequests>).
pub const FREE_EXTERNAL: u64 = 50;
pub const PAID_EXTERNAL: u64 = 10_000;
/// Subrequests to Cloudflare's own services (Durable Objects, D1, KV) per invocation: 1,000
/// (<https://developers.cloudflare.com/workers/platform/limits/#subrequests>).
pub const SERVICES: u64 = 1_000;
/// D1 queries per Worker invocation: 50 on Workers Free, 1,000 on Workers Paid
/// (<https://developers.cloudflare.com/d1/platform/limits/>).
pub const FREE_D1_QUERIES: u64 = 50;
pub const PAID_D1_QUERIES: u64 = 1_000;
/// CPU time per invocation: 10 ms on Workers Free; 30 s by default on Workers Paid
/// (<https://developers.cloudflare.com/workers/platform/limits/#cpu-time>).
pub const FREE_CPU_MS: u64 = 10;
pub const PAID_CPU_MS: u64 = 30_000;
/// Wall time of a Durable Object alarm or a Cron Trigger invocation: 15 minutes
/// (<https://developers.cloudflare.com/workers/platform/limits/#duration>,
/// <https://developers.cloudflare.com/durable-objects/api/alarms/>).
pub const WALL_MS: i64 = 15 * 60 * 1_000;

pub const FREE: Limits = Limits {
    external: FREE_EXTERNAL,
    services: SERVICES,
    d1_queries: FREE_D1_QUERIES,
    cpu_ms: FREE_CPU_MS,
    wall_ms: WALL_MS,
};

pub const PAID: Limits = Limits {
    external: PAID_EXTERNAL,
    services: SERVICES,
    d1_queries: PAID_D1_QUERIES,
    cpu_ms: PAID_CPU_MS,
    wall_ms: WALL_MS,
};

/// Time kept free at the end of an alarm's or a run's wall time: what an invocation does after
/// its last call (saving, logging) has this much at least.
pub const WALL_MARGIN_MS: i64 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_starts_only_while_it_can_end_within_the_wall_time() {
        // Started at 1,000,000: 15 minutes of wall time, 30 s kept, a 15 s call.
        assert_eq!(FREE.last_start_ms(1_000_000, 15_000), 1_000_000 + 855_000);
        assert_eq!(PAID.last_start_ms(0, 0), 870_000);
        assert_eq!(FREE.last_start_ms(i64::MAX, 0), i64::MAX - 30_000);
    }
}
