//! The safety net: labs whose due time passed long ago are poked, and an object that lost its alarm gets it back; and the scheduled run that pulls the backend's inventory page by page.

use futures::stream::{self, StreamExt};

use crate::lab::config::Config;
use std::collections::HashSet;

use crate::lab::error::ServiceError;
use crate::lab::fleet::inventory::{self, Counts, Reconciliation, Run, Source};
use crate::lab::fleet::report::{PageError, ReportedVm, MAX_CURSOR_BYTES};
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
    let revived: Vec<bool> = stream::iter(overdue.iter())
        .map(|lab| async move {
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
    let mut cursor = match fleet.state(CURSOR_KEY).await? {
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
    };
    let mut run = Run::keeping(RESERVED_SERVICES);
    let mut counts = Counts::default();
    let mut asked: HashSet<Option<String>> = HashSet::new();
    let mut contents: HashSet<u64> = HashSet::new();
    let mut restarted = false;
    let mut read = 0;
    let mut failure = None;
    while read < pages.max(1) {
        if !page_fits(fleet, config, now_ms) {
            fleet.log(
                Level::Info,
                &format!(
                    "Inventory: the run read {read} page{} within its invocation's limits; the next run goes on from here",
                    if read == 1 { "" } else { "s" }
                ),
            );
            break;
        }
        if !asked.insert(cursor.clone()) {
            fleet.log(
                Level::Warn,
                &format!(
                    "Inventory: the backend's next_cursor {} leads back to a page this run read already; the pass ends here",
                    quoted(cursor.as_deref())
                ),
            );
            cursor = None;
            break;
        }
        let page = match fleet.page(cursor.as_deref()).await {
            Ok(page) => page,
            Err(PageError::Refused(status)) if cursor.is_some() && !restarted => {
                fleet.log(
                    Level::Warn,
                    &format!(
                        "Inventory: the backend refused the cursor {} ({status}); starting again from the first page",
                        quoted(cursor.as_deref())
                    ),
                );
                restarted = true;
                cursor = None;
                continue;
            }
            Err(e) => {
                failure = Some(ServiceError::Failed(e.to_string()));
                break;
            }
        };
        read += 1;
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
        vms.sort_by(|a, b| a.lab_request_id.cmp(&b.lab_request_id));
        vms.dedup_by(|a, b| a.lab_request_id == b.lab_request_id);
        if !vms.is_empty() && !contents.insert(fingerprint(&vms)) {
            fleet.log(
                Level::Warn,
                "Inventory: a page holds the same VMs as a page this run read already; the pass ends here",
            );
            cursor = None;
            break;
        }
        match inventory::reconcile_in(fleet, config, &vms, config.reconcile_act, now_ms, &mut run)
            .await
        {
            Ok(answer) => counts.add(&answer.counts()),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        cursor = page.next_cursor;
        if let Err(e) = fleet.set_state(CURSOR_KEY, cursor.as_deref()).await {
            failure = Some(e);
            break;
        }
        if cursor.is_none() {
            break;
        }
    }
    if failure.is_none() && cursor.is_none() {
        // The pass ended (or looped): the next run starts from the first page.
        if let Err(e) = fleet.set_state(CURSOR_KEY, None).await {
            failure = Some(e);
        }
    }
    if read > 0 {
        let saved = fleet
            .save_reconciliation(&Reconciliation {
                at_ms: now_ms,
                source: Source::Pull,
                act: config.reconcile_act,
                counts,
            })
            .await;
        if let (Err(e), None) = (saved, &failure) {
            failure = Some(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(counts),
    }
}

/// What a page of a pull may use at most besides its actions: one fetch; its D1 queries, each
/// a batch of its own (lookup, first reports, remembering them, the cursor).
pub const PAGE_D1_QUERIES: u64 = 4;
/// What a run keeps for its end: the counts' save (a batch of 2 queries), the first reports'
/// tidying (2, once), the sweep's query (1) and its pokes (calls to services).
pub const RESERVED_D1_QUERIES: u64 = 5;
pub const RESERVED_SERVICES: u64 = 3 + MAX_POKES_PER_RUN as u64;

/// Whether the invocation has what one more page needs, and time for it within the wall time
/// of a Cron Trigger run.
fn page_fits<F: Allowance>(fleet: &F, config: &Config, now_ms: i64) -> bool {
    let last_start = fleet
        .invocation_started_ms()
        .saturating_add(config.limits().wall_ms)
        .saturating_sub(crate::lab::invocation::plan::WALL_MARGIN_MS)
        .saturating_sub((config.backend_timeout_seconds * 1000) as i64);
    fleet.left(Meter::External) >= 1
        && fleet.left(Meter::D1Query) >= PAGE_D1_QUERIES + RESERVED_D1_QUERIES
        && fleet.left(Meter::Service)
            >= PAGE_D1_QUERIES + inventory::SERVICES_BESIDES_ACTIONS + RESERVED_SERVICES
        && now_ms <= last_start
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
