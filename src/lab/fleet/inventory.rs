//! Reconciling an inventory of running VMs with what the labs list: tracked, overdue, finished or unknown; with `act`, old unknown VMs become labs of their own and finished ones are deleted again.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::lab::config::Config;
use crate::lab::error::ServiceError;
pub use crate::lab::fleet::report::*;
use crate::lab::fleet::{FleetStore, Labs};
use crate::lab::invocation::Meter;
use crate::lab::ports::{Allowance, Level, Logger};
use crate::lab::protocol::{Answer as LabAnswer, Request};
use crate::lab::status::Status;
use crate::lab::text::{rfc3339, safe};

/// Most labs one reconciliation acts on, a push or a whole scheduled pull (an orphan scheduled,
/// a VM deleted again): each is a call to a lab's object, and an invocation has 1,000
/// subrequests to Cloudflare's services on the Free plan. What is left is acted on when the same
/// VMs are reported again.
pub const MAX_ACTIONS_PER_RUN: usize = 100;
/// Calls to labs' objects in flight at once.
const LAB_CALLS_AT_ONCE: usize = 6;

/// What one run (a push, or a scheduled pull over several pages) has done so far: each VM is
/// acted on at most once in it, and it takes at most `MAX_ACTIONS_PER_RUN` actions.
#[derive(Debug, Clone, Default)]
pub struct Run {
    acted: std::collections::HashSet<String>,
    actions: usize,
    /// First reports this run may still remember (`None`: not counted yet).
    seen_room: Option<u64>,
    /// Calls to services the invocation keeps for what follows this reconciliation (the
    /// sweep's pokes, the counts' save): actions never use them.
    reserve_services: u64,
}

impl Run {
    /// A run that keeps `reserve_services` calls to services for what follows it.
    pub fn keeping(reserve_services: u64) -> Run {
        Run {
            reserve_services,
            ..Run::default()
        }
    }
}

/// Calls to services one reconciliation makes besides its actions: its D1 batches (lookup,
/// first reports, remembering, tidying).
pub const SERVICES_BESIDES_ACTIONS: u64 = 4;

/// The four answers about a reported VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The master or a worker of a lab that has not expired yet.
    Tracked,
    /// Of an expired lab whose cleanup has not deleted it yet.
    Overdue,
    /// Counted deleted or already gone, yet it still runs: the backend's delete did not take.
    Finished,
    /// No lab this worker knows (or knew, within its retention) lists it.
    Unknown,
}

/// The class of a reported VM at `now_ms`, from what the index knows of it.
pub fn classify(known: Option<&KnownVm>, now_ms: i64) -> Class {
    match known {
        None => Class::Unknown,
        Some(k) if k.state != VmState::Pending => Class::Finished,
        Some(k) if k.lab_status == Status::Scheduled && now_ms < k.expires_at_ms => Class::Tracked,
        // Stopped and kept until its `delete_at` (the grace stage): on purpose.
        Some(k) if k.lab_status == Status::Stopped => Class::Tracked,
        Some(_) => Class::Overdue,
    }
}

/// A VM in an answer's list: its id, and its lab when one lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub lab_request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lab: Option<String>,
}

/// What a reconciliation scheduled for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scheduled {
    pub lab_request_id: String,
    /// `orphan`: a lab of its own, cleaned up now; `delete_again`: its lab deletes it again.
    pub action: &'static str,
    pub lab: String,
}

/// A reconciliation's answer: every reported VM in exactly one of the four lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub tracked: Vec<Entry>,
    pub overdue: Vec<Entry>,
    pub finished: Vec<Entry>,
    pub unknown: Vec<Entry>,
    pub scheduled: Vec<Scheduled>,
    /// Unknown VMs past their grace whose first report is younger than
    /// `ORPHAN_CONFIRM_MINUTES` (or this is their first), and finished VMs whose lab changed
    /// more recently than that: acted on when reported again after it.
    pub unconfirmed: usize,
    /// Actions called for beyond `MAX_ACTIONS_PER_RUN`: taken when the VMs are reported again.
    pub deferred: usize,
    /// Unknown VMs past their grace that may belong to a lab of the previous worker not adopted
    /// yet (`LEGACY_CUTOVER_AT`): left alone until every such lab has expired.
    pub legacy: usize,
    pub act: bool,
    pub checked_at: String,
}

impl Answer {
    pub fn counts(&self) -> Counts {
        Counts {
            tracked: self.tracked.len(),
            overdue: self.overdue.len(),
            finished: self.finished.len(),
            unknown: self.unknown.len(),
            scheduled: self.scheduled.len(),
        }
    }
}

/// An action a reconciliation calls for.
enum Action {
    Orphan(ReportedVm),
    DeleteAgain { lab: String, vm: String },
}

impl Action {
    /// The VM it is about.
    fn vm(&self) -> &str {
        match self {
            Action::Orphan(vm) => &vm.lab_request_id,
            Action::DeleteAgain { vm, .. } => vm,
        }
    }
}

/// Reconciles `vms` (distinct ids) at `now_ms`, as a run of its own (a push).
pub async fn reconcile<F: FleetStore + Labs + Allowance + Logger>(
    fleet: &F,
    config: &Config,
    vms: &[ReportedVm],
    act: bool,
    now_ms: i64,
) -> Result<Answer, ServiceError> {
    reconcile_in(fleet, config, vms, act, now_ms, &mut Run::default()).await
}

/// Reconciles `vms` (distinct ids) at `now_ms` within `run`. Without `act` nothing changes
/// anywhere (a dry run); with it:
/// - an unknown VM older than `ORPHAN_GRACE_MINUTES` (from its `created_at`, or from its first
///   report when it has none or one in the future) becomes a lab of its own, cleaned up now, once
///   it is confirmed: reported unknown at least `ORPHAN_CONFIRM_MINUTES` after its first report.
///   Its own object asks the lab that claimed it, if any, right before (`Request::Orphan`);
/// - a finished VM is deleted again by its lab, with an error line, once its lab's row is
///   `ORPHAN_CONFIRM_MINUTES` old (an inventory lags behind the deletions it lists).
///
/// A VM of a tracked lab is never touched; a VM is acted on once per run, and a run takes at
/// most `MAX_ACTIONS_PER_RUN` actions. Acting twice on the same VM schedules nothing twice: the
/// lab's object answers that it has it already.
pub async fn reconcile_in<F: FleetStore + Labs + Allowance + Logger>(
    fleet: &F,
    config: &Config,
    vms: &[ReportedVm],
    act: bool,
    now_ms: i64,
    run: &mut Run,
) -> Result<Answer, ServiceError> {
    let ids: Vec<String> = vms.iter().map(|v| v.lab_request_id.clone()).collect();
    let known = by_vm(fleet.lookup(&ids).await?);
    let mut answer = Answer {
        act,
        checked_at: rfc3339(now_ms),
        ..Answer::default()
    };
    let confirm_ms = config.duration_ms(config.orphan_confirm_minutes);
    let (unknown, mut actions) = sort_out(vms, &known, confirm_ms, now_ms, &mut answer);
    let seen = sightings(fleet, &unknown, act, now_ms, run).await?;
    let grace_ms = config.duration_ms(config.orphan_grace_minutes);
    let mut held_until = i64::MIN;
    for vm in unknown {
        let first = seen.get(&vm.lab_request_id).copied();
        // A creation time ahead of now says nothing: the first report counts instead.
        let created = vm.created_at_ms.filter(|&at| at <= now_ms);
        let since = created.or(first).unwrap_or(now_ms);
        if now_ms.saturating_sub(since) < grace_ms {
            continue;
        }
        if let Some(until) = legacy_until(config, vm, now_ms) {
            // Possibly a VM of a lab the previous worker scheduled and this one has not adopted
            // yet (nothing knows it but that lab's object): left alone until that lab expired.
            answer.legacy += 1;
            held_until = held_until.max(until);
            continue;
        }
        match first {
            Some(first) if now_ms.saturating_sub(first) >= confirm_ms && first < now_ms => {
                actions.push(Action::Orphan(vm.clone()))
            }
            _ => answer.unconfirmed += 1,
        }
    }
    if answer.legacy > 0 {
        fleet.log(
            Level::Info,
            &format!(
                "Reconciliation: {} unknown VM{} may belong to labs of the previous worker not adopted yet (LEGACY_CUTOVER_AT); left alone until {} at the latest",
                answer.legacy,
                if answer.legacy == 1 { "" } else { "s" },
                rfc3339(held_until)
            ),
        );
    }
    if act {
        act_within(fleet, config, actions, now_ms, run, &mut answer).await;
    }
    Ok(answer)
}

/// Until when an unknown VM may belong to a lab of the previous worker that this one has not
/// adopted yet (`None`: it cannot, or no longer). A lab the previous worker scheduled expires
/// `MAX_DURATION_MINUTES` after its creation at the latest, and its object adopts it then (its
/// alarm) and claims its worker VMs; a retry pause more covers an adoption that had to wait. A
/// VM created before the cutover is held until its own creation plus that; one of unknown age
/// until the cutover plus that; one created after the cutover is not the previous worker's.
pub fn legacy_until(config: &Config, vm: &ReportedVm, now_ms: i64) -> Option<i64> {
    let cutover = config.legacy_cutover_at_ms?;
    let created = vm.created_at_ms.filter(|&at| at <= now_ms);
    if created.is_some_and(|at| at > cutover) {
        return None;
    }
    let until = created
        .unwrap_or(cutover)
        .min(cutover)
        .saturating_add(config.duration_ms(config.max_duration_minutes))
        .saturating_add(config.retry_ms());
    (now_ms < until).then_some(until)
}

/// What the index knows of each VM, one answer a VM. An id several labs list (a lab in its
/// retention that listed it, and the lab that lists it now) is read as the lab that still
/// needs the VM: one that counts it pending first, then the one that changed last. A VM that any
/// lab counts pending is never deleted again for another lab that counts it deleted.
fn by_vm(rows: Vec<KnownVm>) -> HashMap<String, KnownVm> {
    let rank = |k: &KnownVm| (k.state == VmState::Pending, k.changed_at_ms);
    let mut known: HashMap<String, KnownVm> = HashMap::new();
    for k in rows {
        if known.get(&k.vm_id).is_none_or(|held| rank(&k) > rank(held)) {
            known.insert(k.vm_id.clone(), k);
        }
    }
    known
}

/// Each reported VM into its class in `answer`; the unknown ones (to be confirmed against
/// their first reports), and the finished ones to delete again (their lab unchanged for
/// `confirm_ms`).
fn sort_out<'v>(
    vms: &'v [ReportedVm],
    known: &HashMap<String, KnownVm>,
    confirm_ms: i64,
    now_ms: i64,
    answer: &mut Answer,
) -> (Vec<&'v ReportedVm>, Vec<Action>) {
    let mut unknown = Vec::new();
    let mut actions = Vec::new();
    for vm in vms {
        let k = known.get(&vm.lab_request_id);
        let entry = Entry {
            lab_request_id: vm.lab_request_id.clone(),
            lab: k.map(|k| k.lab_request_id.clone()),
        };
        match (classify(k, now_ms), k) {
            (Class::Tracked, _) => answer.tracked.push(entry),
            (Class::Overdue, _) => answer.overdue.push(entry),
            (Class::Finished, Some(k)) => {
                if now_ms.saturating_sub(k.changed_at_ms) >= confirm_ms {
                    actions.push(Action::DeleteAgain {
                        lab: k.lab_request_id.clone(),
                        vm: vm.lab_request_id.clone(),
                    });
                } else {
                    answer.unconfirmed += 1;
                }
                answer.finished.push(entry);
            }
            (Class::Finished, None) | (Class::Unknown, _) => {
                unknown.push(vm);
                answer.unknown.push(entry);
            }
        }
    }
    (unknown, actions)
}

/// Takes `actions` not taken already in this run, within the run's cap and what the invocation
/// has left of its calls to services; what they scheduled goes into `answer`.
async fn act_within<F: Labs + Allowance + Logger>(
    fleet: &F,
    config: &Config,
    mut actions: Vec<Action>,
    now_ms: i64,
    run: &mut Run,
    answer: &mut Answer,
) {
    actions.retain(|a| !run.acted.contains(a.vm()));
    let services = fleet
        .left(Meter::Service)
        .saturating_sub(run.reserve_services);
    let room = MAX_ACTIONS_PER_RUN
        .saturating_sub(run.actions)
        .min(usize::try_from(services).unwrap_or(usize::MAX));
    answer.deferred = actions.len().saturating_sub(room);
    actions.truncate(room);
    run.actions += actions.len();
    run.acted.extend(actions.iter().map(|a| a.vm().to_string()));
    // Each started only while it can end within the run's time for the pull (a Cron Trigger
    // run's wall time: `fleet::clock`); the rest is deferred, taken when reported again.
    let clock = crate::lab::fleet::clock::Clock::of(config);
    let late = std::cell::Cell::new(0usize);
    let done: Vec<Option<Scheduled>> = stream::iter(actions)
        .map(|action| {
            let late = &late;
            async move {
                if !clock.call_fits(fleet.elapsed_ms(), clock.pull_ends_ms) {
                    late.set(late.get() + 1);
                    return None;
                }
                perform(fleet, action, now_ms).await
            }
        })
        .buffer_unordered(LAB_CALLS_AT_ONCE)
        .collect()
        .await;
    answer.deferred += late.get();
    answer.scheduled = done.into_iter().flatten().collect();
    answer
        .scheduled
        .sort_unstable_by(|a, b| a.lab_request_id.cmp(&b.lab_request_id));
}

/// When each unknown VM was first reported; an acting run remembers now for those reported for
/// the first time, while the table has room (`index::MAX_SEEN_ROWS`).
async fn sightings<F: FleetStore>(
    fleet: &F,
    unknown: &[&ReportedVm],
    act: bool,
    now_ms: i64,
    run: &mut Run,
) -> Result<HashMap<String, i64>, ServiceError> {
    if unknown.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = unknown.iter().map(|v| v.lab_request_id.clone()).collect();
    // Old first reports are forgotten before they are read (once a run).
    let room = match (act, run.seen_room) {
        (false, _) => 0,
        (true, Some(room)) => room,
        (true, None) => {
            crate::lab::index::MAX_SEEN_ROWS.saturating_sub(fleet.tidy_seen(now_ms).await?)
        }
    };
    let seen: HashMap<String, i64> = fleet.first_seen(&ids).await?.into_iter().collect();
    if act {
        let new: Vec<String> = ids
            .into_iter()
            .filter(|id| !seen.contains_key(id))
            .take(usize::try_from(room).unwrap_or(usize::MAX))
            .collect();
        fleet.remember_seen(&new, now_ms).await?;
        run.seen_room = Some(room.saturating_sub(new.len() as u64));
    }
    Ok(seen)
}

/// `POST /api/v1/labs/inventory`: reconciles the pushed VMs and records the counts.
pub async fn push<F: FleetStore + Labs + Allowance + Logger>(
    fleet: &F,
    config: &Config,
    vms: &[ReportedVm],
    act: bool,
    now_ms: i64,
) -> Result<Answer, ServiceError> {
    // The counts' save follows.
    let mut run = Run::keeping(1);
    let answer = reconcile_in(fleet, config, vms, act, now_ms, &mut run).await?;
    fleet
        .save_reconciliation(&Reconciliation {
            at_ms: now_ms,
            source: Source::Push,
            act,
            counts: answer.counts(),
        })
        .await?;
    Ok(answer)
}

/// Takes one action through the lab's object; what it scheduled, if anything (`None`: the lab
/// had it already, or refused, which is logged).
async fn perform<F: Labs + Logger>(fleet: &F, action: Action, now_ms: i64) -> Option<Scheduled> {
    let (lab, vm, request, what) = match action {
        Action::Orphan(reported) => (
            reported.lab_request_id.clone(),
            reported.lab_request_id.clone(),
            Request::Orphan(reported),
            "orphan",
        ),
        Action::DeleteAgain { lab, vm } => {
            (lab, vm.clone(), Request::DeleteAgain { vm }, "delete_again")
        }
    };
    match fleet.call(&lab, request).await {
        Ok(LabAnswer::Created) | Ok(LabAnswer::Scheduled) => Some(Scheduled {
            lab_request_id: vm,
            action: what,
            lab,
        }),
        Ok(_) => None,
        Err(e) => {
            fleet.log(
                Level::Error,
                &format!(
                    "Reconciliation at {}: {what} of VM {vm} (lab {lab}) failed: {}; it is taken again when the VM is reported again",
                    rfc3339(now_ms),
                    safe(&e.to_string(), 200)
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
