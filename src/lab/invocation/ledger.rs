//! What one invocation used against what its plan allows: every fetch to the Internet, call to Cloudflare's services and D1 query is charged here as it is made, and the procedures ask what is left before they plan their calls.

use serde::Serialize;

use crate::lab::invocation::plan::Limits;

/// What a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    /// A fetch to the Internet (the lab backend, the webhook receiver).
    External,
    /// A call to a Durable Object, or a D1 call (a batch is one).
    Service,
    /// A D1 query (each statement of a batch).
    D1Query,
}

/// A call past the plan's limit, failed as the platform fails it (its own words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("Too many subrequests by single Worker invocation.")]
    Subrequests,
    #[error("D1_ERROR: Too many API requests by single worker invocation.")]
    D1Queries,
}

/// What an invocation used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Used {
    pub external: u64,
    pub services: u64,
    pub d1: u64,
}

/// One invocation's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    limits: Limits,
    /// `ENFORCE_PLAN_LIMITS`: a call past a limit fails as on the platform (dev and tests).
    enforce: bool,
    started_ms: i64,
    used: Used,
}

impl Ledger {
    pub fn new(limits: Limits, enforce: bool, started_ms: i64) -> Ledger {
        Ledger {
            limits,
            enforce,
            started_ms,
            used: Used::default(),
        }
    }

    /// Charges `n` of `meter`. With enforcement on, a charge past the limit fails as the
    /// platform fails the call (nothing is charged then); off, it is counted anyway (the
    /// invocation record shows it).
    pub fn charge(&mut self, meter: Meter, n: u64) -> Result<(), Exceeded> {
        let (used, limit, exceeded) = match meter {
            Meter::External => (
                &mut self.used.external,
                self.limits.external,
                Exceeded::Subrequests,
            ),
            Meter::Service => (
                &mut self.used.services,
                self.limits.services,
                Exceeded::Subrequests,
            ),
            Meter::D1Query => (
                &mut self.used.d1,
                self.limits.d1_queries,
                Exceeded::D1Queries,
            ),
        };
        if self.enforce && used.saturating_add(n) > limit {
            return Err(exceeded);
        }
        *used = used.saturating_add(n);
        Ok(())
    }

    /// What is left of `meter`.
    pub fn left(&self, meter: Meter) -> u64 {
        match meter {
            Meter::External => self.limits.external.saturating_sub(self.used.external),
            Meter::Service => self.limits.services.saturating_sub(self.used.services),
            Meter::D1Query => self.limits.d1_queries.saturating_sub(self.used.d1),
        }
    }

    pub fn used(&self) -> Used {
        self.used
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }
}

/// The one structured line an invocation logs about what it used (`event: invocation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvocationRecord {
    pub event: &'static str,
    /// What ran: `create`, `status`, `alarm`, `cron`, `bulk`, `inventory`, ...
    pub kind: String,
    pub external: u64,
    pub services: u64,
    pub d1: u64,
    pub wall_ms: i64,
    pub storage_rows_written: u64,
    pub d1_rows_written: u64,
    pub plan: &'static str,
    /// An API route's: which value of its role's token the caller presented (`current`, or
    /// `previous` during a rotation); never the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<&'static str>,
}

impl InvocationRecord {
    pub fn new(
        kind: &str,
        ledger: &Ledger,
        plan: &'static str,
        now_ms: i64,
        storage_rows_written: u64,
        d1_rows_written: u64,
    ) -> InvocationRecord {
        let used = ledger.used();
        InvocationRecord {
            event: "invocation",
            kind: kind.to_string(),
            external: used.external,
            services: used.services,
            d1: used.d1,
            wall_ms: now_ms.saturating_sub(ledger.started_ms()).max(0),
            storage_rows_written,
            d1_rows_written,
            plan,
            token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::invocation::plan::FREE;

    #[test]
    fn a_call_past_the_limit_fails_as_the_platform_fails_it_only_when_enforced() {
        let mut enforced = Ledger::new(FREE, true, 0);
        for _ in 0..50 {
            enforced.charge(Meter::External, 1).unwrap();
        }
        assert_eq!(enforced.left(Meter::External), 0);
        assert_eq!(
            enforced.charge(Meter::External, 1),
            Err(Exceeded::Subrequests)
        );
        assert_eq!(
            enforced.used().external,
            50,
            "a refused call is not counted"
        );
        assert_eq!(
            enforced.charge(Meter::D1Query, 51).unwrap_err().to_string(),
            "D1_ERROR: Too many API requests by single worker invocation."
        );
        enforced.charge(Meter::Service, 1_000).unwrap();
        assert!(enforced.charge(Meter::Service, 1).is_err());
        let mut counted = Ledger::new(FREE, false, 0);
        counted.charge(Meter::External, 60).unwrap();
        assert_eq!(counted.used().external, 60);
        assert_eq!(counted.left(Meter::External), 0);
    }
}
