//! Reconciling an inventory of running VMs with what the labs list: tracked, overdue, finished or unknown; with `act`, old unknown VMs become labs of their own and finished ones are deleted again.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::lab::config::Config;
pub use crate::lab::fleet::report::*;
use crate::lab::fleet::{FleetStore, Labs};
use crate::lab::ports::{Level, Logger};
use crate::lab::procedures::Request;
use crate::lab::status::Status;
use crate::lab::text::{rfc3339, safe};

/// Most labs one reconciliation acts on (an orphan scheduled, a VM deleted again): each is a
/// call to a lab's object, and an invocation has 1,000 subrequests to Cloudflare's services on
/// the Free plan. What is left is acted on when the same VMs are reported again.
pub const MAX_ACTIONS_PER_CALL: usize = 100;
/// Calls to labs' objects in flight at once.
const LAB_CALLS_AT_ONCE: usize = 6;

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
    /// Actions called for beyond `MAX_ACTIONS_PER_CALL`: taken when the VMs are reported again.
    pub deferred: usize,
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

/// Reconciles `vms` (distinct ids) at `now_ms`. Without `act` nothing changes anywhere (a dry
/// run); with it, each unknown VM older than `ORPHAN_GRACE_MINUTES` (from its `created_at`, or
/// from the first report that named it) becomes a lab of its own, cleaned up now, and each
/// finished VM is deleted again by its lab, with an error line. A VM of a lab that is tracked is
/// never touched. Acting twice on the same VM schedules nothing twice: the lab's object answers
/// that it has it already.
pub async fn reconcile<F: FleetStore + Labs + Logger>(
    fleet: &F,
    config: &Config,
    vms: &[ReportedVm],
    act: bool,
    now_ms: i64,
) -> Result<Answer, String> {
    let ids: Vec<String> = vms.iter().map(|v| v.lab_request_id.clone()).collect();
    let known: HashMap<String, KnownVm> = fleet
        .lookup(&ids)
        .await?
        .into_iter()
        .map(|k| (k.vm_id.clone(), k))
        .collect();
    let mut answer = Answer {
        act,
        checked_at: rfc3339(now_ms),
        ..Answer::default()
    };
    let mut unknown: Vec<&ReportedVm> = Vec::new();
    let mut actions: Vec<Action> = Vec::new();
    for vm in vms {
        let k = known.get(&vm.lab_request_id);
        let entry = Entry {
            lab_request_id: vm.lab_request_id.clone(),
            lab: k.map(|k| k.lab_request_id.clone()),
        };
        match classify(k, now_ms) {
            Class::Tracked => answer.tracked.push(entry),
            Class::Overdue => answer.overdue.push(entry),
            Class::Finished => {
                if let Some(k) = k {
                    actions.push(Action::DeleteAgain {
                        lab: k.lab_request_id.clone(),
                        vm: vm.lab_request_id.clone(),
                    });
                }
                answer.finished.push(entry);
            }
            Class::Unknown => {
                unknown.push(vm);
                answer.unknown.push(entry);
            }
        }
    }
    // The grace of a VM reported without `created_at` counts from the first report that named
    // it (remembered only by reconciliations that act).
    let undated: Vec<String> = unknown
        .iter()
        .filter(|v| v.created_at_ms.is_none())
        .map(|v| v.lab_request_id.clone())
        .collect();
    let seen: HashMap<String, i64> = if undated.is_empty() {
        HashMap::new()
    } else {
        fleet
            .first_seen(&undated, now_ms, act)
            .await?
            .into_iter()
            .collect()
    };
    let grace_ms = config.duration_ms(config.orphan_grace_minutes);
    for vm in unknown {
        let since = vm
            .created_at_ms
            .or_else(|| seen.get(&vm.lab_request_id).copied())
            .unwrap_or(now_ms);
        if now_ms.saturating_sub(since) >= grace_ms {
            actions.push(Action::Orphan(vm.clone()));
        }
    }
    if act {
        answer.deferred = actions.len().saturating_sub(MAX_ACTIONS_PER_CALL);
        actions.truncate(MAX_ACTIONS_PER_CALL);
        let done: Vec<Option<Scheduled>> = stream::iter(actions)
            .map(|action| perform(fleet, action, now_ms))
            .buffer_unordered(LAB_CALLS_AT_ONCE)
            .collect()
            .await;
        answer.scheduled = done.into_iter().flatten().collect();
        answer
            .scheduled
            .sort_by(|a, b| a.lab_request_id.cmp(&b.lab_request_id));
    }
    Ok(answer)
}

/// `POST /api/v1/labs/inventory`: reconciles the pushed VMs and records the counts.
pub async fn push<F: FleetStore + Labs + Logger>(
    fleet: &F,
    config: &Config,
    vms: &[ReportedVm],
    act: bool,
    now_ms: i64,
) -> Result<Answer, String> {
    let answer = reconcile(fleet, config, vms, act, now_ms).await?;
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
        // 201: a new orphan lab; 202: a VM scheduled again.
        Ok((201, _)) | Ok((202, _)) => Some(Scheduled {
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
                    safe(&e, 200)
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
