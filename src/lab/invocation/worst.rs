//! Each invocation kind's worst case, computed from the settings and the same constants and SQL builders the code uses; checked against the plan's limits natively, on both plans.
//!
//! What the code caps by construction (an attempt's calls, a pull's pages, a batch's labs) is
//! the cap here; the rest is counted from the largest input the settings allow (the largest lab,
//! every label).

use crate::lab::config::Config;
use crate::lab::fleet::{bulk, inventory, sweep};
use crate::lab::index;
use crate::lab::invocation::plan::WALL_MARGIN_MS;
use crate::lab::invocation::Limits;
use crate::lab::limits::{MAX_ID_LEN, MAX_LABELS};
use crate::lab::procedures::deliver::MAX_DELIVERIES_PER_WAKE;
use crate::lab::session::{NewSession, Session};

/// What an invocation kind may use at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Worst {
    /// Fetches to the Internet.
    pub external: u64,
    /// Calls to Durable Objects and D1 batches.
    pub services: u64,
    /// D1 queries.
    pub d1: u64,
    /// Wall time, in ms, where the plan limits it (alarms and Cron Trigger runs).
    pub wall_ms: Option<i64>,
}

impl Worst {
    fn plus(self, other: Worst) -> Worst {
        Worst {
            external: self.external + other.external,
            services: self.services + other.services,
            d1: self.d1 + other.d1,
            wall_ms: self.wall_ms.or(other.wall_ms),
        }
    }

    /// What of it is past `limits`, in words (`None`: it fits).
    pub fn over(&self, limits: &Limits) -> Option<String> {
        let mut past = Vec::new();
        if self.external > limits.external {
            past.push(format!(
                "{} subrequests (of {})",
                self.external, limits.external
            ));
        }
        if self.services > limits.services {
            past.push(format!(
                "{} calls to services (of {})",
                self.services, limits.services
            ));
        }
        if self.d1 > limits.d1_queries {
            past.push(format!("{} D1 queries (of {})", self.d1, limits.d1_queries));
        }
        if self.wall_ms.is_some_and(|w| w > limits.wall_ms) {
            past.push(format!("{} ms of wall time", self.wall_ms.unwrap_or(0)));
        }
        (!past.is_empty()).then(|| past.join(", "))
    }
}

/// A D1 batch of `queries` statements.
fn d1(queries: usize) -> Worst {
    Worst {
        services: 1,
        d1: queries as u64,
        ..Worst::default()
    }
}

/// The largest lab the settings allow: every worker, every label, the longest ids.
fn largest_lab(config: &Config) -> Session {
    let id = |c: char, n: usize| format!("{}{n:03}", c.to_string().repeat(MAX_ID_LEN - 3));
    let labels = (0..MAX_LABELS)
        .map(|n| (format!("label-{n}"), "v".repeat(128)))
        .collect();
    Session::schedule(
        NewSession {
            lab_request_id: id('m', 0),
            user_id: id('u', 0),
            worker_lab_request_ids: (0..config.max_worker_nodes).map(|n| id('w', n)).collect(),
            duration: 1,
            vm_name: None,
            idle_timeout: None,
            labels,
            keep_stopped_minutes: Some(crate::lab::config::MAX_KEEP_STOPPED_MINUTES),
        },
        0,
        60_000,
    )
}

/// Writing the largest lab's index row (after any change of its record).
fn index_write(config: &Config) -> Worst {
    if !config.fleet_index {
        return Worst::default();
    }
    let lab = largest_lab(config);
    d1(index::upsert_all(&index::row(&lab, 0), &index::vm_rows(&lab)).len())
}

/// A legacy lab adopted on the first read: its workers claimed.
fn adoption(config: &Config) -> Worst {
    Worst {
        services: config.max_worker_nodes as u64,
        ..Worst::default()
    }
}

/// A create: its workers claimed (a claim held by another lab asked about once), the row.
pub fn create(config: &Config) -> Worst {
    Worst {
        services: config.max_worker_nodes as u64 + 1,
        ..Worst::default()
    }
    .plus(adoption(config))
    .plus(index_write(config))
}

/// A request that changes the record (end, extend, retry now, activity, a signed link clicked,
/// an orphan, a VM deleted again): its row written after the answer.
pub fn change(config: &Config) -> Worst {
    adoption(config).plus(index_write(config))
}

/// A resume (the grace stage): every VM started, then as a change; the deliveries after the
/// answer take what the plan leaves (`deliver`), so the starts cap it.
pub fn resume(config: &Config) -> Worst {
    let starts = config.max_worker_nodes as u64 + 1;
    Worst {
        external: (starts + MAX_DELIVERIES_PER_WAKE as u64).min(config.limits().external),
        ..Worst::default()
    }
    .plus(change(config))
}

/// A request that reads only (status, events, a signed link opened) or asks (owns, claim: one
/// lab asked).
pub fn read(config: &Config) -> Worst {
    adoption(config).plus(Worst {
        services: 1,
        ..Worst::default()
    })
}

/// An alarm: an attempt (every VM and the services call, each with one reconnect at most, a
/// permit asked and returned for each), its deliveries, the row; or a purge (the row deleted).
/// Capped by construction at what the plan leaves (`cleanup::AttemptPlan::max_calls`).
pub fn alarm(config: &Config) -> Worst {
    let calls = 2 * (config.max_worker_nodes as u64 + 2);
    let external = (calls + MAX_DELIVERIES_PER_WAKE as u64).min(config.limits().external);
    let permits = if config.backend_max_concurrency.is_some() {
        2 * external
    } else {
        0
    };
    let timeout = (config.backend_timeout_seconds * 1_000) as i64;
    Worst {
        external,
        services: permits,
        d1: 0,
        wall_ms: Some(
            config
                .attempt_deadline_ms()
                .saturating_add(timeout)
                .saturating_add(WALL_MARGIN_MS),
        ),
    }
    .plus(adoption(config))
    .plus(index_write(config))
    .plus(d1(index::delete("m", &[], 0).len()))
}

/// A Cron Trigger run: its pages (each a fetch and its queries), its actions, its end (the
/// counts, the first reports' tidying), the sweep; capped by construction at what the plan
/// leaves (`sweep::pull` reads a page only while one fits). Its wall time is kept by
/// `fleet::clock`: a page, an action or a poke starts only while it can end in its part of the
/// run, on the runtime's clock (tested with a slow backend in `fleet::inventory::tests`).
pub fn cron(config: &Config) -> Worst {
    let limits = config.limits();
    let per_page = sweep::PAGE_D1_QUERIES;
    let reserved = sweep::RESERVED_D1_QUERIES;
    let pages = (sweep::pages_per_run(config) as u64)
        .min(limits.d1_queries.saturating_sub(reserved + 1) / per_page)
        .min(limits.external);
    Worst {
        external: pages,
        services: 1
            + pages * per_page
            + inventory::MAX_ACTIONS_PER_RUN as u64
            + sweep::RESERVED_SERVICES,
        d1: 1 + pages * per_page + reserved,
        wall_ms: Some(limits.wall_ms - WALL_MARGIN_MS),
    }
}

/// A pushed inventory: one page's queries, its actions, the counts saved.
pub fn push(_: &Config) -> Worst {
    Worst {
        services: inventory::SERVICES_BESIDES_ACTIONS + inventory::MAX_ACTIONS_PER_RUN as u64 + 1,
        d1: sweep::PAGE_D1_QUERIES + 2 + 2,
        ..Worst::default()
    }
}

/// A bulk job's alarm: a page of the index, and a request to each lab of its batch.
pub fn bulk_step(_: &Config) -> Worst {
    Worst {
        services: 1 + u64::from(bulk::MAX_BATCH),
        d1: 1,
        ..Worst::default()
    }
}

/// The fleet's reads: a page of the list, the stats' and the metrics' counts.
pub fn fleet_read(config: &Config) -> Worst {
    d1(index::stats(config.stuck_after_attempts, 0).len())
}

/// Every invocation kind, by name, with its worst case.
pub fn all(config: &Config) -> Vec<(&'static str, Worst)> {
    vec![
        ("create", create(config)),
        ("change", change(config)),
        ("resume", resume(config)),
        ("read", read(config)),
        ("alarm", alarm(config)),
        ("cron", cron(config)),
        ("inventory", push(config)),
        ("bulk", bulk_step(config)),
        ("fleet read", fleet_read(config)),
    ]
}

/// The settings checked against the plan: an invocation kind whose worst case they put past
/// it is a configuration error naming `PLAN` (at startup and in `deploy-check`).
pub fn check(config: &Config) -> Result<(), crate::lab::config::ConfigError> {
    match past_the_plan(config) {
        None => Ok(()),
        Some(past) => Err(crate::lab::config::ConfigError::Invalid {
            name: "PLAN",
            expected: format!(
                "a plan whose limits the settings keep every invocation within: on PLAN={}, {past}",
                config.plan.name()
            ),
            value: Some(config.plan.name().to_string()),
        }),
    }
}

/// The first invocation kind whose worst case the settings put past the plan, in words.
pub fn past_the_plan(config: &Config) -> Option<String> {
    let limits = config.limits();
    all(config).into_iter().find_map(|(kind, worst)| {
        worst
            .over(&limits)
            .map(|past| format!("a {kind} invocation may make {past}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_lookup(|name| {
            if name == "BACKEND_URL" {
                return Some("https://backend.test".into());
            }
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn every_invocation_kind_fits_each_plan_at_the_settings_extremes() {
        for plan in ["free", "paid"] {
            for workers in ["0", "1", "48"] {
                for budget in [None, Some("10000")] {
                    for timeout in ["1", "15", "600"] {
                        let mut pairs = vec![
                            ("PLAN", plan),
                            ("MAX_WORKER_NODES", workers),
                            ("BACKEND_TIMEOUT_SECONDS", timeout),
                        ];
                        if let Some(b) = budget {
                            pairs.push(("BACKEND_MAX_CONCURRENCY", b));
                        }
                        let config = config(&pairs);
                        assert_eq!(past_the_plan(&config), None, "{pairs:?}");
                    }
                }
            }
        }
        // On Paid with a raised SUBREQUEST_LIMIT, still within the 1,000 calls to services.
        let raised = config(&[
            ("PLAN", "paid"),
            ("SUBREQUEST_LIMIT", "10000000"),
            ("BACKEND_MAX_CONCURRENCY", "10000"),
        ]);
        assert_eq!(past_the_plan(&raised), None);
    }

    #[test]
    fn the_worst_cases_are_what_the_code_makes() {
        let free = config(&[("BACKEND_MAX_CONCURRENCY", "10")]);
        // The largest lab's first row: the row and its fixed columns, its labels, the VMs that
        // move, its 48 workers' rows in one statement.
        assert_eq!(index_write(&free), d1(5));
        // A 48-worker attempt: 50 calls, each reconnected at most once: capped at Free's 50.
        assert_eq!(alarm(&free).external, 50);
        // A 48-worker resume: 49 starts, its deliveries in what is left.
        assert_eq!(resume(&free).external, 50);
        assert_eq!(
            alarm(&free).wall_ms,
            Some(600_000 + 15_000 + WALL_MARGIN_MS)
        );
        // A Free cron run: one page (its CPU); on Paid as many as its D1 queries allow.
        let cron = cron(&free);
        assert_eq!(cron.external, 1);
        assert_eq!(super::cron(&config(&[("PLAN", "paid")])).external, 20);
        assert!(cron.d1 <= 50, "{cron:?}");
        assert_eq!(
            Worst {
                external: 51,
                ..Worst::default()
            }
            .over(&free.limits()),
            Some("51 subrequests (of 50)".into())
        );
    }
}
