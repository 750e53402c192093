//! The safety net: labs whose due time passed long ago are poked, and an object that lost its alarm gets it back; and the scheduled run that pulls the backend's inventory page by page.

use futures::stream::{self, StreamExt};

use crate::lab::config::Config;
use crate::lab::fleet::inventory::{self, Counts, Reconciliation, Source};
use crate::lab::fleet::{FleetStore, InventorySource, Labs, RunRecord};
use crate::lab::ports::{Level, Logger};
use crate::lab::procedures::Request;
use crate::lab::text::safe;

/// Most labs one run pokes (each a call to its object).
pub const MAX_POKES_PER_RUN: u32 = 200;
/// Where the pull stopped, in `fleet_state`.
pub const CURSOR_KEY: &str = "inventory_cursor";
/// Calls to labs' objects in flight at once.
const POKES_AT_ONCE: usize = 6;

/// Pokes every lab not completed whose due time (its next attempt, else its expiry) passed more
/// than `SWEEP_GRACE_SECONDS` before `now_ms`: its object runs what is due and sets its alarm
/// again if it had none. Returns (overdue, revived).
pub async fn sweep<F: FleetStore + Labs + Logger>(
    fleet: &F,
    config: &Config,
    now_ms: i64,
) -> Result<(usize, usize), String> {
    let before = now_ms.saturating_sub((config.sweep_grace_seconds * 1000) as i64);
    let overdue = fleet.overdue(before, MAX_POKES_PER_RUN).await?;
    let revived: Vec<bool> = stream::iter(overdue.iter())
        .map(|lab| async move {
            match fleet.call(lab, Request::Poke).await {
                Ok((_, body)) => body["revived"].as_bool().unwrap_or(false),
                Err(e) => {
                    fleet.log(
                        Level::Error,
                        &format!(
                            "Sweep: lab {lab} did not answer its poke: {}",
                            safe(&e, 200)
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
/// reconciles each (acting when `RECONCILE_ACT` is on). The cursor is kept after every page, so
/// the next run goes on from there; a full pass starts again from the first page.
pub async fn pull<F: FleetStore + Labs + InventorySource + Logger>(
    fleet: &F,
    config: &Config,
    pages: usize,
    now_ms: i64,
) -> Result<Counts, String> {
    let mut cursor = fleet.state(CURSOR_KEY).await?;
    let mut counts = Counts::default();
    for _ in 0..pages.max(1) {
        let page = fleet.page(cursor.as_deref()).await?;
        if page.skipped > 0 {
            fleet.log(
                Level::Error,
                &format!(
                    "Inventory: {} entries of a page are not VMs as the contract says (lab_request_id, user_id, created_at); skipped",
                    page.skipped
                ),
            );
        }
        let mut vms = page.vms;
        vms.sort_by(|a, b| a.lab_request_id.cmp(&b.lab_request_id));
        vms.dedup_by(|a, b| a.lab_request_id == b.lab_request_id);
        let answer =
            inventory::reconcile(fleet, config, &vms, config.reconcile_act, now_ms).await?;
        counts.add(&answer.counts());
        cursor = page.next_cursor;
        fleet.set_state(CURSOR_KEY, cursor.as_deref()).await?;
        if cursor.is_none() {
            break;
        }
    }
    fleet
        .save_reconciliation(&Reconciliation {
            at_ms: now_ms,
            source: Source::Pull,
            act: config.reconcile_act,
            counts,
        })
        .await?;
    Ok(counts)
}

/// One scheduled run: the inventory (with `INVENTORY_PATH`), then the sweep; one structured
/// record says what it did. A failing part is logged and never stops the other.
pub async fn run<F: FleetStore + Labs + InventorySource + Logger>(
    fleet: &F,
    config: &Config,
    now_ms: i64,
) -> RunRecord {
    let mut record = RunRecord {
        event: "sweep",
        ..RunRecord::default()
    };
    if config.inventory_path.is_some() {
        let pages = (config.subrequest_limit.saturating_sub(2) as usize).min(20);
        match pull(fleet, config, pages, now_ms).await {
            Ok(counts) => record.inventory = Some(counts),
            Err(e) => fleet.log(
                Level::Error,
                &format!(
                    "Inventory: the pull stopped: {}; the next run goes on from where it stopped",
                    safe(&e, 300)
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
            &format!("Sweep: the index did not answer: {}", safe(&e, 300)),
        ),
    }
    fleet.record(&record);
    record
}
