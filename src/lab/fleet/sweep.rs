//! The safety net: labs whose due time passed long ago are poked, and an object that lost its alarm gets it back; and the scheduled run that pulls the backend's inventory page by page.

use futures::stream::{self, StreamExt};

use crate::lab::config::Config;
use std::collections::HashSet;

use crate::lab::error::ServiceError;
use crate::lab::fleet::clock::Clock;
use crate::lab::fleet::inventory::{self, Counts, Reconciliation, Run, Source};
use crate::lab::fleet::report::{Page, PageError, ReportedVm, MAX_CURSOR_BYTES};
use crate::lab::fleet::{FleetStore, InventorySource, Labs, RunRecord};
use crate::lab::invocation::Meter;
use crate::lab::ports::{Allowance, Level, Logger};
use crate::lab::protocol::{Answer, Request};
use crate::lab::text::safe;

/// Most labs one run pokes (each a call to its object).
pub const MAX_POKES_PER_RUN: u32 = 200;
/// Most inventory pages one run reads (fewer when its invocation's limits say so).
pub const MAX_PAGES_PER_RUN: usize = 20;

/// Pages a run reads on `config`'s plan: one on the Free plan, whose 10 ms of CPU a page of
/// 1,000 VMs already strains (docs/PERFORMANCE.md, "CPU time per invocation kind"); else
/// `MAX_PAGES_PER_RUN`, within the run's other limits.
pub fn pages_per_run(config: &Config) -> usize {
    if config.limits().cpu_ms < 1_000 {
        1
    } else {
        MAX_PAGES_PER_RUN
    }
}
/// Where the pull stopped, in `fleet_state`.
pub const CURSOR_KEY: &str = "inventory_cursor";
/// Calls to labs' objects in flight at once.
const POKES_AT_ONCE: usize = 6;

/// Pokes every lab not completed whose due time (its next attempt, else its expiry) passed more
/// than `SWEEP_GRACE_SECONDS` before `now_ms`: its object runs what is due and sets its alarm
/// again if it had none. Returns (overdue, revived).
pub async fn sweep<F: FleetStore + Labs + Allowance + Logger>(
    fleet: &F,
    config: &Config,
    now_ms: i64,
) -> Result<(usize, usize), ServiceError> {
    let before = now_ms.saturating_sub((config.sweep_grace_seconds * 1000) as i64);
    // Within what the run has left of its calls to services (the query is one of them).
    let pokes = u64::from(MAX_POKES_PER_RUN).min(fleet.left(Meter::Service).saturating_sub(1));
    if pokes == 0 || fleet.left(Meter::D1Query) == 0 {
        return Ok((0, 0));
    }
    let overdue = fleet.overdue(before, pokes as u32).await?;
    let clock = Clock::of(config);
    let revived: Vec<bool> = stream::iter(overdue.iter())
        .map(|lab| async move {
            // Past the run's time for pokes: the next run pokes it (it is still overdue).
            if !clock.call_fits(fleet.elapsed_ms(), clock.sweep_ends_ms) {
                return false;
            }
            match fleet.call(lab, Request::Poke).await {
                Ok(Answer::Poked { revived }) => revived,
                Ok(_) => false,
                Err(e) => {
                    fleet.log(
                        Level::Error,
                        &format!(
                            "Sweep: lab {lab} did not answer its poke: {}",
                            safe(&e.to_string(), 200)
                        ),
                    );
                    false
                }
            }
        })
        .buffer_unordered(POKES_AT_ONCE)
        .collect()
        .await;
    Ok((overdue.len(), revived.iter().filter(|r| **r).count()))
}

/// Pulls the backend's inventory from where the last run stopped, at most `pages` pages, and
/// reconciles each (acting when `RECONCILE_ACT` is on) within one `Run`: a VM is acted on once,
/// and the run takes at most `MAX_ACTIONS_PER_RUN` actions. The cursor is kept after every page,
/// so the next run goes on from there; a full pass starts again from the first page. A backend
/// that misbehaves cannot hold the pull in one place: a cursor it refuses (4xx) or one longer
/// than `MAX_CURSOR_BYTES` starts again from the first page, and a cursor or a page met twice in
/// one run ends the pass. The counts of the pages read are saved even when a later one fails.
pub async fn pull<F: FleetStore + Labs + InventorySource + Allowance + Logger>(
    fleet: &F,
    config: &Config,
    pages: usize,
    now_ms: i64,
) -> Result<Counts, ServiceError> {
    let mut pull = Pull {
        cursor: stored_cursor(fleet).await?,
        run: Run::keeping(RESERVED_SERVICES),
        counts: Counts::default(),
        asked: HashSet::new(),
        contents: HashSet::new(),
        restarted: false,
        read: 0,
    };
    let mut failure = None;
    while pull.read < pages.max(1) {
        match pull.next_page(fleet, config, now_ms).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() && pull.cursor.is_none() {
        // The pass ended (or looped): the next run starts from the first page.
        if let Err(e) = fleet.set_state(CURSOR_KEY, None).await {
            failure = Some(e);
        }
    }
    if pull.read > 0 {
        let saved = fleet
            .save_reconciliation(&Reconciliation {
                at_ms: now_ms,
                source: Source::Pull,
                act: config.reconcile_act,
                counts: pull.counts,
            })
            .await;
        if let (Err(e), None) = (saved, &failure) {
            failure = Some(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(pull.counts),
    }
}

/// Where the last run stopped, unless it is longer than any cursor this worker sends back.
async fn stored_cursor<F: FleetStore + Logger>(fleet: &F) -> Result<Option<String>, ServiceError> {
    Ok(match fleet.state(CURSOR_KEY).await? {
        Some(stored) if stored.len() > MAX_CURSOR_BYTES => {
            fleet.log(
                Level::Warn,
                &format!(
                    "Inventory: the stored cursor is over {MAX_CURSOR_BYTES} bytes; starting again from the first page"
                ),
            );
            None
        }
        stored => stored,
    })
}

/// A pull in progress: where it is, what it read and counted, and what it has seen (each
/// cursor and each page's VMs once in a run).
struct Pull {
    cursor: Option<String>,
    run: Run,
    counts: Counts,
    asked: HashSet<Option<String>>,
    contents: HashSet<u64>,
    restarted: bool,
    read: usize,
}

impl Pull {
    /// Reads and reconciles the next page and keeps the place after it. `Ok(false)`: the run
    /// stops here (its limits, the pass's end, a loop).
    async fn next_page<F: FleetStore + Labs + InventorySource + Allowance + Logger>(
        &mut self,
        fleet: &F,
        config: &Config,
        now_ms: i64,
    ) -> Result<bool, ServiceError> {
        if !page_fits(fleet, config) {
            fleet.log(
                Level::Info,
                &format!(
                    "Inventory: the run read {} page{} within its invocation's limits; the next run goes on from here",
                    self.read,
                    if self.read == 1 { "" } else { "s" }
                ),
            );
            return Ok(false);
        }
        if !self.asked.insert(self.cursor.clone()) {
            fleet.log(
                Level::Warn,
                &format!(
                    "Inventory: the backend's next_cursor {} leads back to a page this run read already; the pass ends here",
                    quoted(self.cursor.as_deref())
                ),
            );
            self.cursor = None;
            return Ok(false);
        }
        let page = match fleet.page(self.cursor.as_deref()).await {
            Ok(page) => page,
            Err(PageError::Refused(status)) if self.cursor.is_some() && !self.restarted => {
                fleet.log(
                    Level::Warn,
                    &format!(
                        "Inventory: the backend refused the cursor {} ({status}); starting again from the first page",
                        quoted(self.cursor.as_deref())
                    ),
                );
                self.restarted = true;
                self.cursor = None;
                return Ok(true);
            }
            Err(e) => return Err(ServiceError::Failed(e.to_string())),
        };
        self.read += 1;
        let next = page.next_cursor.clone();
        let Some(vms) = self.distinct_vms(fleet, page) else {
            self.cursor = None;
            return Ok(false);
        };
        let act = config.reconcile_act;
        let answer = inventory::reconcile_in(fleet, config, &vms, act, now_ms, &mut self.run);
        self.counts.add(&answer.await?.counts());
        self.cursor = next;
        fleet.set_state(CURSOR_KEY, self.cursor.as_deref()).await?;
        Ok(self.cursor.is_some())
    }

    /// The page's VMs, each once, in id order, with a line for what is wrong with the page;
    /// `None` when a page of this run held the same VMs already (the pass ends).
    fn distinct_vms<F: Logger>(&mut self, fleet: &F, page: Page) -> Option<Vec<ReportedVm>> {
        if page.skipped > 0 {
            fleet.log(
                Level::Error,
                &format!(
                    "Inventory: {} entries of a page are not VMs as the contract says (lab_request_id, user_id, created_at); skipped",
                    page.skipped
                ),
            );
        }
        if page.bad_cursor {
            fleet.log(
                Level::Warn,
                &format!(
                    "Inventory: a page's next_cursor is over {MAX_CURSOR_BYTES} bytes; the pass ends with this page"
                ),
            );
        }
        let mut vms = page.vms;
        // Unstable: the same page sorts the same way, and the stable sort's code is larger.
        vms.sort_unstable_by(|a, b| a.lab_request_id.cmp(&b.lab_request_id));
        vms.dedup_by(|a, b| a.lab_request_id == b.lab_request_id);
        if !vms.is_empty() && !self.contents.insert(fingerprint(&vms)) {
            fleet.log(
                Level::Warn,
                "Inventory: a page holds the same VMs as a page this run read already; the pass ends here",
            );
            return None;
        }
        Some(vms)
    }
}

/// What a page of a pull may use at most besides its actions: one fetch; its D1 queries, each
/// a batch of its own (lookup, first reports, remembering them, the cursor).
pub const PAGE_D1_QUERIES: u64 = 4;
/// What a run keeps for its end: the counts' save (a batch of 2 queries), the first reports'
/// tidying (2, once), the sweep's query (1) and its pokes (calls to services).
pub const RESERVED_D1_QUERIES: u64 = 5;
pub const RESERVED_SERVICES: u64 = 3 + MAX_POKES_PER_RUN as u64;

/// Whether the invocation has what one more page needs, and time for it: its fetch (one
/// backend timeout at most) must end by the time the pull stops (`Clock::pull_ends_ms`), read
/// on the runtime's clock now.
fn page_fits<F: Allowance>(fleet: &F, config: &Config) -> bool {
    let timeout =
        i64::try_from(config.backend_timeout_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let clock = Clock::of(config);
    fleet.left(Meter::External) >= 1
        && fleet.left(Meter::D1Query) >= PAGE_D1_QUERIES + RESERVED_D1_QUERIES
        && fleet.left(Meter::Service)
            >= PAGE_D1_QUERIES + inventory::SERVICES_BESIDES_ACTIONS + RESERVED_SERVICES
        && fleet.elapsed_ms() <= clock.pull_ends_ms.saturating_sub(timeout)
}

/// A cursor as a log line shows it: quoted, escaped and shortened.
fn quoted(cursor: Option<&str>) -> String {
    match cursor {
        Some(c) => format!("{:?}", safe(c, 80)),
        None => "(the first page)".into(),
    }
}

/// What a page holds, as a number: two pages with the same VMs have the same.
fn fingerprint(vms: &[ReportedVm]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for vm in vms {
        vm.lab_request_id.hash(&mut hasher);
    }
    hasher.finish()
}

/// One scheduled run: the inventory (with `INVENTORY_PATH`), then the sweep; one structured
/// record says what it did. A failing part is logged and never stops the other.
pub async fn run<F: FleetStore + Labs + InventorySource + Allowance + Logger>(
    fleet: &F,
    config: &Config,
    now_ms: i64,
) -> RunRecord {
    let mut record = RunRecord {
        event: "sweep",
        ..RunRecord::default()
    };
    if config.inventory_path.is_some() {
        let pages = pages_per_run(config);
        match pull(fleet, config, pages, now_ms).await {
            Ok(counts) => record.inventory = Some(counts),
            Err(e) => fleet.log(
                Level::Error,
                &format!(
                    "Inventory: the pull stopped: {}; the next run goes on from where it stopped",
                    safe(&e.to_string(), 300)
                ),
            ),
        }
    }
    match sweep(fleet, config, now_ms).await {
        Ok((overdue, revived)) => {
            record.overdue = overdue;
            record.revived = revived;
        }
        Err(e) => fleet.log(
            Level::Error,
            &format!(
                "Sweep: the index did not answer: {}",
                safe(&e.to_string(), 300)
            ),
        ),
    }
    fleet.record(&record);
    record
}
