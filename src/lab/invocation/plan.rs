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
    /// Startup time (the module's evaluation), in ms.
    pub startup_ms: u64,
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
/// Worker startup time: 1 second
/// (<https://developers.cloudflare.com/workers/platform/limits/#worker-startup-time>).
pub const STARTUP_MS: u64 = 1_000;

pub const FREE: Limits = Limits {
    external: FREE_EXTERNAL,
    services: SERVICES,
    d1_queries: FREE_D1_QUERIES,
    cpu_ms: FREE_CPU_MS,
    wall_ms: WALL_MS,
    startup_ms: STARTUP_MS,
};

pub const PAID: Limits = Limits {
    external: PAID_EXTERNAL,
    services: SERVICES,
    d1_queries: PAID_D1_QUERIES,
    cpu_ms: PAID_CPU_MS,
    wall_ms: WALL_MS,
    startup_ms: STARTUP_MS,
};

/// Time kept free at the end of an alarm's or a run's wall time: what an invocation does after
/// its last call (saving, logging) has this much at least.
pub const WALL_MARGIN_MS: i64 = 30_000;
