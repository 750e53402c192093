//! The cleanup engine: one attempt at deleting a lab's exposed services and its undeleted VMs.
//!
//! It knows nothing of the Workers runtime: the lab backend, the log sink and the runtime (clock,
//! randomness, sleeping) come in as traits, so the same code runs on workerd and in native unit
//! tests.

use std::cell::Cell;

use futures::stream::{self, StreamExt};

use crate::lab::fleet::budget::{Asker, CallOutcome};
pub use crate::lab::ports::{
    BackendError, BackendReply, Budget, LabBackend, Level, Logger, Permit, Power, Runtime,
};
use crate::lab::retry::{self, Policy};
use crate::lab::session::{
    AttemptResult, Deletion, DeletionError, Ending, LabType, Outcome, Role, Session, Vm,
};
use crate::lab::text::rfc3339;

/// Prefix of every log line, so the lines of this object are easy to filter in the dashboard.
pub const LOG_PREFIX: &str = "[SessionManager]";
/// How much of a backend's error body goes into a log line or a stored error.
const MAX_BODY_SNIPPET: usize = 200;

/// Where an attempt reports each VM confirmed gone, as it happens: the lab's procedure saves
/// them every few seconds, so that an attempt cut short repeats none it had saved.
#[allow(async_fn_in_trait)]
pub trait Progress {
    /// `vm` is gone: deleted (2xx), or already gone (404).
    async fn confirmed(&self, vm: &str, already_gone: bool);
}

/// Progress kept nowhere but in the attempt's result.
pub struct NoProgress;

impl Progress for NoProgress {
    async fn confirmed(&self, _: &str, _: bool) {}
}

/// What an attempt does to the lab's VMs: delete them, or (the grace stage, `lab::session::stage`) stop
/// them. A stop attempt makes its calls as a deletion does: the same permits, concurrency,
/// limits, refusals and reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delete,
    Stop,
}

impl Action {
    fn ing(self) -> &'static str {
        match self {
            Action::Delete => "Deleting",
            Action::Stop => "Stopping",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Stop => "stop",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Action::Delete => "deleted",
            Action::Stop => "stopped",
        }
    }

    /// The attempt's number, as its lines say it.
    fn attempt(self, session: &Session) -> String {
        match self {
            Action::Delete => format!("attempt {}", session.cleanup.attempts),
            Action::Stop => format!("stop attempt {}", session.stop.attempts),
        }
    }
}

/// How an attempt is to be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptPlan {
    pub action: Action,
    pub policy: Policy,
    /// VM deletions in flight at once.
    pub concurrency: usize,
    /// Backend calls this attempt may make beyond one per planned call (the reconnects), within
    /// the invocation's subrequest limit.
    pub spare_calls: usize,
    /// Backend calls this attempt may make in all: what the invocation's plan leaves
    /// (`lab::invocation`); the VMs beyond are tried by the next attempt, a moment later.
    pub max_calls: usize,
    /// No call starts at or after this time (`ATTEMPT_DEADLINE_SECONDS`, and the alarm's wall
    /// time): the attempt then ends with what it has, saved, and the next one goes on.
    pub deadline_ms: i64,
}

/// Classifies a deletion call's result: 2xx and 404 are done; 429 and 503 are refusals (with
/// their `Retry-After`, read at `now_ms`); all else failed. A 3xx is a failure: redirects are not
/// followed.
pub fn classify_deletion(result: Result<BackendReply, BackendError>, now_ms: i64) -> Deletion {
    match result {
        Ok(reply) if (200..300).contains(&reply.status) => Deletion::Deleted,
        Ok(reply) if reply.status == 404 => Deletion::AlreadyGone,
        Ok(reply) if reply.status == 429 || reply.status == 503 => {
            let retry_after_ms = reply
                .retry_after
                .as_deref()
                .and_then(|v| retry::parse_retry_after(v, now_ms));
            let mut error = describe_reply(&reply);
            if let Some(ra) = &reply.retry_after {
                let ra: String = ra.chars().filter(|c| !c.is_control()).take(40).collect();
                error.push_str(&format!(" (Retry-After: {ra})"));
            }
            Deletion::Refused {
                retry_after_ms,
                error,
            }
        }
        Ok(reply) => Deletion::Failed(describe_reply(&reply)),
        Err(e) => Deletion::Failed(e.to_string()),
    }
}

/// `backend answered 500: <first 200 characters of the body, on one line>`.
fn describe_reply(reply: &BackendReply) -> String {
    let snippet: String = reply
        .body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_BODY_SNIPPET)
        .collect();
    let snippet = snippet.trim();
    if snippet.is_empty() {
        format!("backend answered {}", reply.status)
    } else {
        format!("backend answered {}: {snippet}", reply.status)
    }
}

/// One attempt in progress: the backend calls it made, the reconnects it may still make, and
/// whether the backend has refused (no further call then).
struct Calls<'a, B: LabBackend, R: Runtime, G: Budget> {
    backend: &'a B,
    runtime: &'a R,
    budget: &'a G,
    plan: AttemptPlan,
    /// The lab as the budget knows it, and its place in the budget's queue (`budget_priority`):
    /// both change when a call of this attempt fails.
    lab: &'a str,
    failing: Cell<bool>,
    priority: Cell<i64>,
    made: Cell<usize>,
    spare: Cell<usize>,
    refused: Cell<bool>,
    /// Calls granted so far (`max_calls` caps them), and whether the cap or the deadline kept a
    /// call from starting.
    granted: Cell<usize>,
    capped: Cell<bool>,
    /// The budget's word when it had no permit: come back after this many ms.
    budget_wait: Cell<Option<i64>>,
    timeouts: Cell<usize>,
    /// VM deletions not started yet (what the attempt may still want permits for).
    vms_left: Cell<usize>,
}

impl<B: LabBackend, R: Runtime, G: Budget> Calls<'_, B, R, G> {
    /// Makes one call (`call` is the request) and classifies the answer. Under the adaptive
    /// policy a connection that failed before any answer is tried once more after a short random
    /// pause (a deletion is idempotent: a 404 then counts as done), within the spare calls; and a
    /// refusal stops the attempt.
    /// The permit goes back with how the call went (an overload: a timeout or a refusal).
    async fn make<F, Fut>(&self, permit: Permit, call: F) -> Deletion
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<BackendReply, BackendError>>,
    {
        let adaptive = self.plan.policy == Policy::Adaptive;
        self.made.set(self.made.get() + 1);
        let mut result = call().await;
        if adaptive
            && matches!(result, Err(BackendError::Network(_)))
            && self.spare.get() > 0
            && self.granted.get() < self.plan.max_calls
            && self.runtime.now_ms() < self.plan.deadline_ms
        {
            self.spare.set(self.spare.get() - 1);
            self.granted.set(self.granted.get() + 1);
            self.made.set(self.made.get() + 1);
            self.runtime
                .sleep(retry::reconnect_pause_ms(self.runtime.random()))
                .await;
            result = call().await;
        }
        let timed_out = matches!(result, Err(BackendError::Timeout(_)));
        if timed_out {
            self.timeouts.set(self.timeouts.get() + 1);
        }
        let deletion = classify_deletion(result, self.runtime.now_ms());
        let refused = matches!(deletion, Deletion::Refused { .. });
        if matches!(deletion, Deletion::Failed(_)) && !self.failing.replace(true) {
            // This lab's calls fail: its next permits come after the labs that did not fail.
            self.priority
                .set(self.priority.get().max(self.runtime.now_ms()));
        }
        if adaptive && refused {
            self.refused.set(true);
        }
        self.budget.release(
            permit,
            if timed_out || refused {
                CallOutcome::Overloaded
            } else {
                CallOutcome::Answered
            },
        );
        deletion
    }

    /// A permit from the fleet-wide budget for the next call, `wanted` the calls that could
    /// start now; `None` when the budget is taken (no call then, and no further call in this
    /// attempt: it comes back when the budget says).
    async fn permit(&self, wanted: usize) -> Option<Permit> {
        if self.refused.get() {
            return None;
        }
        if self.granted.get() >= self.plan.max_calls
            || self.runtime.now_ms() >= self.plan.deadline_ms
        {
            self.capped.set(true);
            return None;
        }
        self.granted.set(self.granted.get() + 1);
        match self
            .budget
            .acquire(
                Asker {
                    lab: self.lab,
                    failing: self.failing.get(),
                },
                self.priority.get(),
                wanted.max(1),
            )
            .await
        {
            Permit::Wait(ms) => {
                self.budget_wait.set(Some(ms));
                self.refused.set(true);
                None
            }
            permit => Some(permit),
        }
    }
}

/// A lab's place in the fleet's budget queue for an attempt starting at `now_ms`: its expiry
/// (older first); after an attempt in which a deletion failed (an answer that was an error, or
/// none), the attempt's start. A lab whose calls keep failing then waits behind every lab that
/// expired before it retried, instead of going first for ever (its expiry being the oldest).
pub fn budget_priority(session: &Session, now_ms: i64) -> i64 {
    if failed_last_time(session) {
        now_ms.max(session.expires_at_ms)
    } else {
        session.expires_at_ms
    }
}

/// Whether a deletion failed in the lab's last attempt that made calls (an error answer, or
/// none in time).
fn failed_last_time(session: &Session) -> bool {
    session.cleanup.failing
}

/// Runs one cleanup attempt for `session`, which `Session::begin_attempt` has just marked.
///
/// 1. While the master VM is undeleted: delete its exposed services, best effort (a failure is
///    logged and never by itself causes a retry).
/// 2. Then delete every undeleted VM, at most `plan.concurrency` at once.
///
/// Under the adaptive policy, a `429` or `503` answer means the backend is overloaded: the
/// attempt starts no further call (those in flight finish); a refused services call stops it
/// before any VM deletion. VMs not tried stay pending and are not counted as failed.
///
/// Never fails: every backend fault is reported in the result and the log.
pub async fn run_attempt(
    session: &Session,
    backend: &impl LabBackend,
    runtime: &impl Runtime,
    log: &impl Logger,
    budget: &impl Budget,
    plan: AttemptPlan,
    progress: &impl Progress,
) -> AttemptResult {
    let pending = match plan.action {
        Action::Delete => session.pending(),
        Action::Stop => session.to_stop(),
    };
    let calls = Calls {
        backend,
        runtime,
        budget,
        plan,
        lab: &session.lab_request_id,
        failing: Cell::new(failed_last_time(session)),
        priority: Cell::new(budget_priority(session, runtime.now_ms())),
        made: Cell::new(0),
        spare: Cell::new(plan.spare_calls),
        refused: Cell::new(false),
        granted: Cell::new(0),
        capped: Cell::new(false),
        budget_wait: Cell::new(None),
        timeouts: Cell::new(0),
        vms_left: Cell::new(pending.len()),
    };
    announce(session, pending.len(), plan.action, log);
    let services = if pending.iter().any(|vm| vm.role == Role::Master) {
        delete_services(&session.lab_request_id, &calls, log).await
    } else {
        None
    };
    let refusal = match &services {
        Some(Deletion::Refused { retry_after_ms, .. }) => Some(*retry_after_ms),
        _ => None,
    };
    let results = delete_vms(session, &pending, &calls, log, progress).await;
    let mut tally = Tally::of(results, refusal);
    if plan.policy == Policy::Fixed {
        tally.refusal = None;
    }
    // The budget had no permit: like a refusal with its word on when to come back, whatever
    // the retry policy (the budget is the fleet's, not one lab's guess).
    if let Some(wait) = calls.budget_wait.get() {
        tally.refusal = Some(Some(
            tally.refusal.flatten().map_or(wait, |ra| ra.max(wait)),
        ));
    }
    let ending = tally.ending(pending.len(), calls.capped.get());
    report(session, &pending, &tally, &calls, ending, log);
    AttemptResult {
        refused: tally.refused,
        outcome: Outcome {
            successful_deletions: tally.deleted.len() + tally.already_gone.len(),
            failed_deletions: tally.errors.len(),
            errors: tally.errors,
            not_tried: tally.not_tried,
        },
        deleted: tally.deleted,
        already_gone: tally.already_gone,
        services,
        ending,
        calls: calls.made.get(),
        timeouts: calls.timeouts.get(),
    }
}

/// The attempt's opening lines: which lab, what kind, how many VMs (the seed's words).
fn announce(session: &Session, pending: usize, action: Action, log: &impl Logger) {
    let info = |m: String| log.log(Level::Info, &m);
    let total = session.vm_count();
    info(format!(
        "Alarm triggered for user {}, lab {}",
        session.user_id, session.lab_request_id
    ));
    match session.lab_type() {
        LabType::MultiNode => {
            let workers = session.worker_lab_request_ids.len();
            info(format!(
                "Worker nodes detected: {workers} worker{}",
                plural(workers)
            ));
            info(match action {
                Action::Delete => "Cleaning up multi-node Kubernetes lab".into(),
                Action::Stop => "Stopping multi-node Kubernetes lab (deleted later)".into(),
            });
        }
        LabType::SingleVm => info(match action {
            Action::Delete => "Cleaning up single VM lab".into(),
            Action::Stop => "Stopping single VM lab (deleted later)".into(),
        }),
    }
    let verb = action.verb();
    info(format!("Total VMs to {verb}: {total}"));
    let n = match action {
        Action::Delete => session.cleanup.attempts,
        Action::Stop => session.stop.attempts,
    };
    if n > 1 {
        let mut attempt = action.attempt(session);
        attempt[..1].make_ascii_uppercase();
        info(format!(
            "{attempt}: {pending} of {total} VM{} still to {verb}",
            plural(total)
        ));
    }
}

/// Deletes the pending VMs, `plan.concurrency` at once; each with its result (`None`: not
/// tried, after a refusal or past the invocation's limits).
async fn delete_vms<'s, B: LabBackend, R: Runtime, G: Budget>(
    session: &'s Session,
    pending: &[Vm<'s>],
    calls: &Calls<'_, B, R, G>,
    log: &impl Logger,
    progress: &impl Progress,
) -> Vec<(Vm<'s>, Option<Deletion>)> {
    stream::iter(pending.iter().copied())
        .map(|vm| async move {
            // After a refusal the backend is overloaded: start no further call.
            if calls.refused.get() {
                return (vm, None);
            }
            let left = calls.vms_left.get();
            calls.vms_left.set(left.saturating_sub(1));
            let Some(permit) = calls.permit(left.min(calls.plan.concurrency)).await else {
                return (vm, None);
            };
            (
                vm,
                Some(delete_one(session, vm, permit, calls, log, progress).await),
            )
        })
        .buffer_unordered(calls.plan.concurrency.max(1))
        .collect()
        .await
}

/// One VM's deletion with its permit, logged; a VM confirmed gone is reported to `progress`.
async fn delete_one<B: LabBackend, R: Runtime, G: Budget>(
    session: &Session,
    vm: Vm<'_>,
    permit: Permit,
    calls: &Calls<'_, B, R, G>,
    log: &impl Logger,
    progress: &impl Progress,
) -> Deletion {
    let role = vm.role.as_str();
    let action = calls.plan.action;
    log.log(
        Level::Info,
        &format!("{} {role} VM for lab {}", action.ing(), vm.id),
    );
    let result = calls
        .make(permit, || async move {
            match action {
                Action::Delete => calls.backend.delete_vm(vm.id, &session.user_id).await,
                Action::Stop => calls.backend.power(Power::Stop, vm.id).await,
            }
        })
        .await;
    let done = action.done();
    match &result {
        Deletion::Deleted => {
            log.log(
                Level::Info,
                &format!("✅ {role} VM {done} successfully ({})", vm.id),
            );
            // A stop is saved with the attempt's end, not as it happens: repeated, it is
            // harmless.
            if action == Action::Delete {
                progress.confirmed(vm.id, false).await;
            }
        }
        Deletion::AlreadyGone => {
            log.log(
                Level::Info,
                &match action {
                    Action::Delete => format!(
                        "✅ {role} VM already deleted, backend answered 404 ({})",
                        vm.id
                    ),
                    Action::Stop => format!(
                        "✅ {role} VM already gone, backend answered 404 ({}); nothing to stop",
                        vm.id
                    ),
                },
            );
            if action == Action::Delete {
                progress.confirmed(vm.id, true).await;
            }
        }
        Deletion::Refused { error, .. } | Deletion::Failed(error) => log.log(
            Level::Error,
            &format!(
                "❌ Failed to {} {role} VM {} ({}): {error}",
                action.verb(),
                vm.id,
                action.attempt(session)
            ),
        ),
    }
    result
}

/// The VMs' results, sorted: deleted, already gone, failed (with their errors), not tried; and
/// the refusal, if any (`Some(retry_after)`: the longest wait a refusal asked for).
struct Tally {
    deleted: Vec<String>,
    already_gone: Vec<String>,
    errors: Vec<DeletionError>,
    not_tried: usize,
    refusal: Option<Option<i64>>,
    /// Calls refused (429, 503).
    refused: usize,
}

impl Tally {
    fn of(results: Vec<(Vm<'_>, Option<Deletion>)>, refusal: Option<Option<i64>>) -> Tally {
        let mut t = Tally {
            deleted: Vec::new(),
            already_gone: Vec::new(),
            errors: Vec::new(),
            not_tried: 0,
            refusal,
            refused: 0,
        };
        for (vm, result) in results {
            let id = vm.id.to_string();
            match result {
                None => t.not_tried += 1,
                Some(Deletion::Deleted) => t.deleted.push(id),
                Some(Deletion::AlreadyGone) => t.already_gone.push(id),
                Some(Deletion::Refused {
                    retry_after_ms,
                    error,
                }) => {
                    // The longest wait any refusal asked for; one without counts as none.
                    t.refusal = Some(match t.refusal {
                        Some(Some(a)) => Some(retry_after_ms.map_or(a, |b| a.max(b))),
                        Some(None) | None => retry_after_ms,
                    });
                    t.refused += 1;
                    t.errors.push(DeletionError {
                        lab_request_id: id,
                        error,
                    })
                }
                Some(Deletion::Failed(error)) => t.errors.push(DeletionError {
                    lab_request_id: id,
                    error,
                }),
            }
        }
        t
    }

    /// VMs of the `pending` still undeleted.
    fn left(&self, pending: usize) -> usize {
        pending - self.deleted.len() - self.already_gone.len()
    }

    /// How the attempt ended; `capped`: the invocation's limits kept a call from starting.
    fn ending(&self, pending: usize, capped: bool) -> Ending {
        match (self.left(pending), self.refusal) {
            (0, _) => Ending::Done,
            (_, Some(retry_after_ms)) => Ending::Refused { retry_after_ms },
            (_, None) if capped && self.not_tried > 0 => Ending::Continued,
            (_, None) => Ending::Failed,
        }
    }
}

/// The attempt's closing lines: why calls stopped (the budget, a refusal, the limits), and
/// what is deleted or left (the seed's words).
fn report<B: LabBackend, R: Runtime, G: Budget>(
    session: &Session,
    pending: &[Vm<'_>],
    tally: &Tally,
    calls: &Calls<'_, B, R, G>,
    ending: Ending,
    log: &impl Logger,
) {
    let action = calls.plan.action;
    let (attempt, not_tried, total) =
        (action.attempt(session), tally.not_tried, session.vm_count());
    if let Some(wait) = calls.budget_wait.get() {
        log.log(
            Level::Warn,
            &format!(
                "⏸ The fleet's budget of backend calls is taken: no further call in {attempt}; {not_tried} VM{} not tried, back in {}",
                plural(not_tried),
                seconds(wait)
            ),
        );
    } else if let Some(retry_after_ms) = tally.refusal {
        log.log(
            Level::Warn,
            &format!(
                "⏸ The backend is overloaded (429/503{}): no further call in {attempt}; {not_tried} VM{} not tried",
                retry_after_ms
                    .map(|ms| format!(", Retry-After {}", seconds(ms)))
                    .unwrap_or_default(),
                plural(not_tried)
            ),
        );
    }
    let left = tally.left(pending.len());
    if left == 0 {
        // The seed's exact line, "all 1 VMs" included: dashboards and alerts match on it.
        log.log(
            Level::Info,
            &format!("✅ Successfully {} all {total} VMs", action.done()),
        );
    } else {
        // In the lab's order: the master first, then the workers as the create listed them.
        let done: Vec<&String> = tally.deleted.iter().chain(&tally.already_gone).collect();
        let still: Vec<&str> = pending
            .iter()
            .map(|vm| vm.id)
            .filter(|id| !done.iter().any(|d| d == id))
            .collect();
        log.log(
            Level::Warn,
            &format!(
                "⚠️ {left} of {total} VM{} not {} after {attempt} ({})",
                plural(total),
                action.done(),
                still.join(", "),
            ),
        );
    }
    if ending == Ending::Continued {
        let mut attempt = attempt;
        attempt[..1].make_ascii_uppercase();
        log.log(
            Level::Info,
            &format!(
                "⏩ {attempt} reached the invocation's limits ({} backend call{}, or its deadline); {not_tried} VM{} go on in the next attempt, in {}",
                calls.granted.get(),
                plural(calls.granted.get()),
                plural(not_tried),
                seconds(retry::CONTINUE_MS)
            ),
        );
    }
}

/// The services call; `None` when the fleet's budget had no permit for it.
async fn delete_services<B: LabBackend, R: Runtime, G: Budget>(
    master: &str,
    calls: &Calls<'_, B, R, G>,
    log: &impl Logger,
) -> Option<Deletion> {
    let permit = calls.permit(1).await?;
    log.log(
        Level::Info,
        &format!("Deleting exposed services for master lab {master}"),
    );
    let result = calls
        .make(permit, || calls.backend.delete_exposed_services(master))
        .await;
    match &result {
        Deletion::Deleted => log.log(Level::Info, "✅ Exposed services deleted"),
        Deletion::AlreadyGone => log.log(
            Level::Info,
            "✅ Exposed services deleted (backend answered 404: none were exposed)",
        ),
        Deletion::Refused { error, .. } if calls.plan.policy == Policy::Adaptive => log.log(
            Level::Warn,
            &format!(
                "⚠️ Could not delete exposed services for master lab {master}: {error} (the backend is overloaded: no VM deletion in this attempt; the services call is retried with the VMs)"
            ),
        ),
        Deletion::Refused { error, .. } | Deletion::Failed(error) => log.log(
            Level::Warn,
            &format!(
                "⚠️ Could not delete exposed services for master lab {master}: {error} (best effort, VM deletion goes on)"
            ),
        ),
    }
    Some(result)
}

/// The structured record of one attempt, logged as an object so that Workers Logs indexes its
/// fields (`event = "cleanup_attempt"`), beside the human lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRecord<'a> {
    pub event: &'static str,
    pub lab_request_id: &'a str,
    pub user_id: &'a str,
    pub attempt: u32,
    /// The lab's status after the attempt.
    pub status: &'static str,
    /// VMs confirmed gone in this attempt (2xx or 404).
    pub deleted: usize,
    pub already_gone: usize,
    pub failed: usize,
    pub not_tried: usize,
    /// VMs left after the attempt.
    pub pending: usize,
    pub duration_ms: i64,
    pub next_attempt_at: Option<String>,
    pub dry_run: bool,
    /// Why the lab ended: `expired`, `idle`, `ended`, `operator` or `orphan`.
    pub end_reason: Option<&'static str>,
}

/// The record of the attempt `result`, for `session` as `finish_attempt` left it.
pub fn attempt_record<'a>(
    session: &'a Session,
    result: &AttemptResult,
    duration_ms: i64,
) -> AttemptRecord<'a> {
    AttemptRecord {
        event: "cleanup_attempt",
        lab_request_id: &session.lab_request_id,
        user_id: &session.user_id,
        attempt: session.cleanup.attempts,
        status: session.status().name(),
        deleted: result.deleted.len() + result.already_gone.len(),
        already_gone: result.already_gone.len(),
        failed: result.outcome.failed_deletions,
        not_tried: result.outcome.not_tried,
        pending: session.pending().len(),
        duration_ms,
        next_attempt_at: session.cleanup.next_attempt_at_ms.map(rfc3339),
        dry_run: session.dry_run,
        end_reason: session.end_reason.map(|r| r.name()),
    }
}

/// The error line for a completed lab whose every call answered 404 (see
/// `Session::every_call_answered_404`): the VMs count as deleted, but the backend may be
/// misconfigured.
pub fn all_404_line(session: &Session) -> String {
    format!(
        "❌ Every backend call for lab {} answered 404 (the services call and all {} VM{}); they count as already deleted, but the backend may be misconfigured: check that BACKEND_URL points at the lab backend's base path",
        session.lab_request_id,
        session.vm_count(),
        plural(session.vm_count())
    )
}

/// A wait in seconds for a log line: `2 s`, `2.5 s`.
fn seconds(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        // Integer arithmetic: formatting a float would add float printing to the worker (~14 KB).
        format!("{}.{} s", ms / 1000, (ms % 1000) / 100)
    }
}

/// The line that says when the next attempt is, for a session that `finish_attempt` has just
/// moved to `Retrying`.
/// `end_ms` is when the attempt ended and `ending` how; the line says why the wait is what it is
/// when the backend asked for it.
pub fn retry_line(session: &Session, end_ms: i64, ending: Ending) -> String {
    let pending: Vec<&str> = session.pending().iter().map(|vm| vm.id).collect();
    let wait = session
        .cleanup
        .next_attempt_at_ms
        .map(|at| seconds(at.saturating_sub(end_ms)))
        .unwrap_or_else(|| "?".into());
    let why = match ending {
        Ending::Refused {
            retry_after_ms: Some(ra),
        } => format!("; the backend asked for {}", seconds(ra)),
        _ => String::new(),
    };
    format!(
        "🔁 Retry scheduled for lab {}: attempt {} at {} (in {wait}{why}); {} VM{} pending: {}",
        session.lab_request_id,
        session.cleanup.attempts.saturating_add(1),
        session
            .cleanup
            .next_attempt_at_ms
            .map(rfc3339)
            .unwrap_or_else(|| "the next alarm".into()),
        pending.len(),
        plural(pending.len()),
        pending.join(", ")
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::session::NewSession;
    use futures::executor::block_on;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// An in-memory backend: records calls in order, answers from per-id scripts.
    #[derive(Default)]
    struct FakeBackend {
        calls: RefCell<Vec<String>>,
        services: RefCell<Vec<Result<BackendReply, BackendError>>>,
        vm_scripts: RefCell<HashMap<String, Vec<Result<BackendReply, BackendError>>>>,
        in_flight: Cell<usize>,
        max_in_flight: Cell<usize>,
    }

    fn reply(status: u16) -> Result<BackendReply, BackendError> {
        Ok(BackendReply {
            status,
            body: format!("{{\"status\":{status}}}"),
            retry_after: None,
        })
    }

    fn refused(status: u16, retry_after: Option<&str>) -> Result<BackendReply, BackendError> {
        Ok(BackendReply {
            status,
            body: String::new(),
            retry_after: retry_after.map(str::to_string),
        })
    }

    /// A fixed clock, a fixed "random" number, and sleeps that only record their length.
    struct FakeRuntime {
        random: f64,
        sleeps: RefCell<Vec<u64>>,
    }

    impl Default for FakeRuntime {
        fn default() -> Self {
            FakeRuntime {
                random: 0.5,
                sleeps: RefCell::new(Vec::new()),
            }
        }
    }

    impl Runtime for FakeRuntime {
        fn now_ms(&self) -> i64 {
            60_000
        }
        fn random(&self) -> f64 {
            self.random
        }
        async fn sleep(&self, ms: u64) {
            self.sleeps.borrow_mut().push(ms);
        }
    }

    fn plan(policy: Policy, concurrency: usize) -> AttemptPlan {
        AttemptPlan {
            action: Action::Delete,
            policy,
            concurrency,
            spare_calls: 10,
            max_calls: 1_000,
            deadline_ms: i64::MAX,
        }
    }

    /// One attempt under the adaptive policy with `concurrency`.
    fn run(s: &Session, backend: &FakeBackend, log: &Lines, concurrency: usize) -> AttemptResult {
        block_on(run_attempt(
            s,
            backend,
            &FakeRuntime::default(),
            log,
            &crate::lab::ports::NoBudget,
            plan(Policy::Adaptive, concurrency),
            &NoProgress,
        ))
    }

    impl FakeBackend {
        fn script(&self, id: &str, answers: Vec<Result<BackendReply, BackendError>>) {
            self.vm_scripts.borrow_mut().insert(id.into(), answers);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    /// Yields once to the executor so concurrently started deletions overlap.
    async fn yield_now() {
        let mut yielded = false;
        futures::future::poll_fn(|cx| {
            if yielded {
                std::task::Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await
    }

    impl LabBackend for FakeBackend {
        async fn power(&self, power: Power, id: &str) -> Result<BackendReply, BackendError> {
            self.calls
                .borrow_mut()
                .push(format!("{} {id}", power.name()));
            let mut scripts = self.vm_scripts.borrow_mut();
            match scripts.get_mut(id) {
                Some(script) if !script.is_empty() => script.remove(0),
                _ => reply(200),
            }
        }
        async fn delete_exposed_services(
            &self,
            master: &str,
        ) -> Result<BackendReply, BackendError> {
            self.calls.borrow_mut().push(format!("expose {master}"));
            let mut s = self.services.borrow_mut();
            if s.is_empty() {
                reply(200)
            } else {
                s.remove(0)
            }
        }
        async fn delete_vm(&self, id: &str, user: &str) -> Result<BackendReply, BackendError> {
            self.calls.borrow_mut().push(format!("delete {id} {user}"));
            self.in_flight.set(self.in_flight.get() + 1);
            self.max_in_flight
                .set(self.max_in_flight.get().max(self.in_flight.get()));
            yield_now().await;
            self.in_flight.set(self.in_flight.get() - 1);
            let mut scripts = self.vm_scripts.borrow_mut();
            match scripts.get_mut(id) {
                Some(answers) if !answers.is_empty() => answers.remove(0),
                _ => reply(200),
            }
        }
    }

    #[derive(Default)]
    struct Lines(RefCell<Vec<(Level, String)>>);

    impl Logger for Lines {
        fn record<T: serde::Serialize>(&self, _: &T) {}
        fn log(&self, level: Level, message: &str) {
            self.0.borrow_mut().push((level, message.to_string()));
        }
    }

    impl Lines {
        fn texts(&self) -> Vec<String> {
            self.0.borrow().iter().map(|(_, m)| m.clone()).collect()
        }
    }

    fn deleted(ids: &[&str]) -> AttemptResult {
        AttemptResult {
            deleted: ids.iter().map(|id| id.to_string()).collect(),
            ..AttemptResult::default()
        }
    }

    fn session(workers: &[&str]) -> Session {
        let mut s = Session::schedule(
            NewSession {
                lab_request_id: "k8s-master-abc-123".into(),
                user_id: "user-456".into(),
                worker_lab_request_ids: workers.iter().map(|w| w.to_string()).collect(),
                duration: 60,
                vm_name: None,
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            },
            0,
            60_000,
        );
        s.begin_attempt(60_000, 300_000);
        s
    }

    #[test]
    fn a_lab_whose_deletions_failed_queues_behind_the_labs_due_before_its_retry() {
        // Expired at 60 s; the next attempt at 400 s.
        let mut s = session(&[]);
        assert_eq!(
            budget_priority(&s, 400_000),
            60_000,
            "its expiry, by default"
        );
        s.cleanup.failing = true;
        assert_eq!(budget_priority(&s, 400_000), 400_000, "the attempt's start");
        // An attempt before the expiry (an end by request) keeps the expiry.
        assert_eq!(budget_priority(&s, 30_000), 60_000);
    }

    #[test]
    fn multi_node_lab_makes_four_calls_and_the_documented_logs() {
        let s = session(&["k8s-worker-1-def-456", "k8s-worker-2-ghi-789"]);
        let backend = FakeBackend::default();
        let log = Lines::default();
        let r = run(&s, &backend, &log, 1);
        assert_eq!(
            backend.calls(),
            vec![
                "expose k8s-master-abc-123",
                "delete k8s-master-abc-123 user-456",
                "delete k8s-worker-1-def-456 user-456",
                "delete k8s-worker-2-ghi-789 user-456",
            ]
        );
        assert_eq!(r.outcome.successful_deletions, 3);
        assert_eq!(r.outcome.failed_deletions, 0);
        assert_eq!(
            log.texts(),
            vec![
                "Alarm triggered for user user-456, lab k8s-master-abc-123",
                "Worker nodes detected: 2 workers",
                "Cleaning up multi-node Kubernetes lab",
                "Total VMs to delete: 3",
                "Deleting exposed services for master lab k8s-master-abc-123",
                "✅ Exposed services deleted",
                "Deleting master VM for lab k8s-master-abc-123",
                "✅ master VM deleted successfully (k8s-master-abc-123)",
                "Deleting worker VM for lab k8s-worker-1-def-456",
                "✅ worker VM deleted successfully (k8s-worker-1-def-456)",
                "Deleting worker VM for lab k8s-worker-2-ghi-789",
                "✅ worker VM deleted successfully (k8s-worker-2-ghi-789)",
                "✅ Successfully deleted all 3 VMs",
            ]
        );
    }

    #[test]
    fn single_vm_lab_makes_two_calls() {
        let s = session(&[]);
        let backend = FakeBackend::default();
        let log = Lines::default();
        let r = run(&s, &backend, &log, 6);
        assert_eq!(
            backend.calls(),
            vec![
                "expose k8s-master-abc-123",
                "delete k8s-master-abc-123 user-456"
            ]
        );
        assert_eq!(r.deleted, vec!["k8s-master-abc-123"]);
        let texts = log.texts();
        assert!(texts.contains(&"Cleaning up single VM lab".to_string()));
        assert!(!texts.iter().any(|l| l.starts_with("Worker nodes detected")));
        assert_eq!(texts.last().unwrap(), "✅ Successfully deleted all 1 VMs");
    }

    #[test]
    fn concurrency_is_bounded() {
        let workers: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
        let refs: Vec<&str> = workers.iter().map(String::as_str).collect();
        let s = session(&refs);
        for limit in [1, 3, 6] {
            let backend = FakeBackend::default();
            run(&s, &backend, &Lines::default(), limit);
            assert_eq!(backend.calls().len(), 22);
            assert_eq!(backend.max_in_flight.get(), limit, "limit {limit}");
        }
    }

    #[test]
    fn services_come_before_any_vm_and_their_failure_is_not_a_vm_failure() {
        let s = session(&["w1"]);
        let backend = FakeBackend::default();
        backend.services.borrow_mut().push(reply(500));
        let log = Lines::default();
        let r = run(&s, &backend, &log, 6);
        assert_eq!(backend.calls()[0], "expose k8s-master-abc-123");
        assert_eq!(r.outcome.failed_deletions, 0);
        assert_eq!(r.deleted.len(), 2);
        assert!(log.0.borrow().iter().any(|(level, m)| *level == Level::Warn
            && m.starts_with("⚠️ Could not delete exposed services for master lab k8s-master-abc-123: backend answered 500")));
    }

    #[test]
    fn failures_are_reported_with_reasons_and_404_counts_as_deleted() {
        let s = session(&["w1", "w2", "w3"]);
        let backend = FakeBackend::default();
        backend.script("w1", vec![reply(500)]);
        backend.script("w2", vec![Err(BackendError::Timeout(15))]);
        backend.script("w3", vec![reply(404)]);
        // Refused twice: the one reconnect fails too.
        backend.script(
            "k8s-master-abc-123",
            vec![
                Err(BackendError::Network("connection refused".into())),
                Err(BackendError::Network("connection refused".into())),
            ],
        );
        let log = Lines::default();
        let r = run(&s, &backend, &log, 6);
        assert!(r.deleted.is_empty());
        assert_eq!(r.already_gone, vec!["w3"]);
        assert_eq!(r.services, Some(Deletion::Deleted));
        assert_eq!(r.outcome.successful_deletions, 1);
        assert_eq!(r.outcome.failed_deletions, 3);
        let mut errors: Vec<_> = r
            .outcome
            .errors
            .iter()
            .map(|e| (e.lab_request_id.as_str(), e.error.as_str()))
            .collect();
        errors.sort();
        assert_eq!(
            errors,
            vec![
                ("k8s-master-abc-123", "network error: connection refused"),
                ("w1", "backend answered 500: {\"status\":500}"),
                ("w2", "no answer within 15 s (timed out)"),
            ]
        );
        let texts = log.texts();
        assert!(texts.contains(&"✅ worker VM already deleted, backend answered 404 (w3)".into()));
        assert!(texts.contains(
            &"❌ Failed to delete worker VM w2 (attempt 1): no answer within 15 s (timed out)"
                .into()
        ));
        assert_eq!(
            texts.last().unwrap(),
            "⚠️ 3 of 4 VMs not deleted after attempt 1 (k8s-master-abc-123, w1, w2)"
        );
    }

    #[test]
    fn a_retry_touches_only_undeleted_vms_and_skips_services_once_master_is_gone() {
        let mut s = session(&["w1", "w2"]);
        s.finish_attempt(&deleted(&["k8s-master-abc-123", "w2"]), 60_001, 360_001);
        s.begin_attempt(360_000, 300_000);
        let backend = FakeBackend::default();
        let log = Lines::default();
        let r = run(&s, &backend, &log, 6);
        assert_eq!(r.services, None, "no services call once the master is gone");
        assert_eq!(backend.calls(), vec!["delete w1 user-456"]);
        assert_eq!(r.deleted, vec!["w1"]);
        assert!(log
            .texts()
            .contains(&"Attempt 2: 1 of 3 VMs still to delete".to_string()));
    }

    #[test]
    fn a_retry_with_the_master_pending_repeats_the_services_call() {
        let mut s = session(&["w1"]);
        s.finish_attempt(&deleted(&["w1"]), 60_001, 360_001);
        s.begin_attempt(360_000, 300_000);
        let backend = FakeBackend::default();
        run(&s, &backend, &Lines::default(), 6);
        assert_eq!(
            backend.calls(),
            vec![
                "expose k8s-master-abc-123",
                "delete k8s-master-abc-123 user-456"
            ]
        );
    }

    #[test]
    fn the_attempt_record_has_the_indexed_fields() {
        let mut s = session(&["w1", "w2"]);
        let backend = FakeBackend::default();
        backend.script("w1", vec![reply(500)]);
        backend.script("w2", vec![reply(404)]);
        let r = run(&s, &backend, &Lines::default(), 6);
        s.finish_attempt(&r, 61_000, 361_000);
        let v = serde_json::to_value(attempt_record(&s, &r, 1_234)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "event": "cleanup_attempt",
                "lab_request_id": "k8s-master-abc-123",
                "user_id": "user-456",
                "attempt": 1,
                "status": "retrying",
                "deleted": 2,
                "already_gone": 1,
                "failed": 1,
                "not_tried": 0,
                "pending": 1,
                "duration_ms": 1234,
                "next_attempt_at": "1970-01-01T00:06:01.000Z",
                "dry_run": false,
                "end_reason": null
            })
        );
    }

    #[test]
    fn retry_line_names_time_attempt_and_pending_vms() {
        let mut s = session(&["w1", "w2"]);
        s.finish_attempt(&deleted(&["k8s-master-abc-123"]), 61_000, 361_000);
        assert_eq!(
            retry_line(&s, 61_000, Ending::Failed),
            "🔁 Retry scheduled for lab k8s-master-abc-123: attempt 2 at 1970-01-01T00:06:01.000Z (in 300 s); 2 VMs pending: w1, w2"
        );
        s.cleanup.next_attempt_at_ms = Some(63_500);
        assert_eq!(
            retry_line(
                &s,
                61_000,
                Ending::Refused {
                    retry_after_ms: Some(2_000)
                }
            ),
            "🔁 Retry scheduled for lab k8s-master-abc-123: attempt 2 at 1970-01-01T00:01:03.500Z (in 2.5 s; the backend asked for 2 s); 2 VMs pending: w1, w2"
        );
    }

    #[test]
    fn a_lab_answered_404_everywhere_is_flagged() {
        let mut s = session(&["w1"]);
        let backend = FakeBackend::default();
        backend.services.borrow_mut().push(reply(404));
        backend.script("k8s-master-abc-123", vec![reply(404)]);
        backend.script("w1", vec![reply(404)]);
        let r = run(&s, &backend, &Lines::default(), 6);
        assert_eq!(r.services, Some(Deletion::AlreadyGone));
        s.finish_attempt(&r, 61_000, 361_000);
        assert_eq!(s.status(), crate::lab::session::Status::Completed);
        assert!(s.cleanup.deleted.is_empty());
        assert_eq!(s.cleanup.already_gone.len(), 2);
        assert!(s.every_call_answered_404());
        assert_eq!(
            all_404_line(&s),
            "❌ Every backend call for lab k8s-master-abc-123 answered 404 (the services call and all 2 VMs); they count as already deleted, but the backend may be misconfigured: check that BACKEND_URL points at the lab backend's base path"
        );

        // One VM answered 2xx: the backend is there; 404 for the rest is believable.
        let mut s = session(&["w1"]);
        let backend = FakeBackend::default();
        backend.services.borrow_mut().push(reply(404));
        backend.script("w1", vec![reply(404)]);
        let r = run(&s, &backend, &Lines::default(), 6);
        s.finish_attempt(&r, 61_000, 361_000);
        assert_eq!(s.status(), crate::lab::session::Status::Completed);
        assert!(!s.every_call_answered_404());
    }

    #[test]
    fn classification_of_answers() {
        let now = 60_000;
        assert_eq!(classify_deletion(reply(200), now), Deletion::Deleted);
        assert_eq!(classify_deletion(reply(204), now), Deletion::Deleted);
        assert_eq!(classify_deletion(reply(404), now), Deletion::AlreadyGone);
        for status in [301, 302, 307, 400, 401, 409, 500, 502] {
            assert!(
                matches!(classify_deletion(reply(status), now), Deletion::Failed(_)),
                "{status}"
            );
        }
        assert_eq!(
            classify_deletion(refused(429, Some("2")), now),
            Deletion::Refused {
                retry_after_ms: Some(2_000),
                error: "backend answered 429 (Retry-After: 2)".into()
            }
        );
        assert_eq!(
            classify_deletion(refused(503, None), now),
            Deletion::Refused {
                retry_after_ms: None,
                error: "backend answered 503".into()
            }
        );
        assert!(matches!(
            classify_deletion(refused(503, Some("whenever")), now),
            Deletion::Refused {
                retry_after_ms: None,
                ..
            }
        ));
        let long = BackendReply {
            status: 502,
            body: format!("line1\nline2{}", "x".repeat(500)),
            retry_after: None,
        };
        let Deletion::Failed(text) = classify_deletion(Ok(long), now) else {
            panic!()
        };
        assert!(text.starts_with("backend answered 502: line1 line2x"));
        assert!(!text.contains('\n'));
        assert!(text.len() < 260);
        let empty = BackendReply {
            status: 500,
            body: "  ".into(),
            retry_after: None,
        };
        assert_eq!(
            classify_deletion(Ok(empty), now),
            Deletion::Failed("backend answered 500".into())
        );
    }

    #[test]
    fn a_refusal_stops_the_attempt_and_untried_vms_are_not_failures() {
        let s = session(&["w1", "w2", "w3"]);
        let backend = FakeBackend::default();
        backend.script("k8s-master-abc-123", vec![refused(429, Some("2"))]);
        let log = Lines::default();
        let r = run(&s, &backend, &log, 1);
        assert_eq!(
            backend.calls(),
            vec![
                "expose k8s-master-abc-123",
                "delete k8s-master-abc-123 user-456"
            ],
            "no call after the refusal"
        );
        assert_eq!(r.outcome.failed_deletions, 1);
        assert_eq!(r.outcome.not_tried, 3);
        assert_eq!(
            r.ending,
            Ending::Refused {
                retry_after_ms: Some(2_000)
            }
        );
        assert_eq!(r.calls, 2);
        let texts = log.texts();
        assert!(texts.contains(
            &"⏸ The backend is overloaded (429/503, Retry-After 2 s): no further call in attempt 1; 3 VMs not tried".to_string()
        ));
        assert_eq!(
            texts.last().unwrap(),
            "⚠️ 4 of 4 VMs not deleted after attempt 1 (k8s-master-abc-123, w1, w2, w3)"
        );
    }

    #[test]
    fn calls_in_flight_at_a_refusal_finish() {
        let s = session(&["w1", "w2", "w3", "w4", "w5"]);
        let backend = FakeBackend::default();
        backend.script("k8s-master-abc-123", vec![refused(503, None)]);
        let r = run(&s, &backend, &Lines::default(), 3);
        // The master and w1, w2 started together; w1 and w2 finish; nothing starts after.
        assert_eq!(backend.calls().len(), 4);
        assert_eq!(r.deleted, vec!["w1", "w2"]);
        assert_eq!(r.outcome.not_tried, 3);
        assert_eq!(
            r.ending,
            Ending::Refused {
                retry_after_ms: None
            }
        );
    }

    #[test]
    fn a_refused_services_call_defers_every_vm() {
        let s = session(&["w1"]);
        let backend = FakeBackend::default();
        backend.services.borrow_mut().push(refused(429, Some("7")));
        let log = Lines::default();
        let r = run(&s, &backend, &log, 6);
        assert_eq!(backend.calls(), vec!["expose k8s-master-abc-123"]);
        assert!(matches!(r.services, Some(Deletion::Refused { .. })));
        assert_eq!(
            r.outcome.failed_deletions, 0,
            "untried VMs are not failures"
        );
        assert_eq!(r.outcome.not_tried, 2);
        assert_eq!(
            r.ending,
            Ending::Refused {
                retry_after_ms: Some(7_000)
            }
        );
        assert!(log.texts().iter().any(|l| l.ends_with(
            "(the backend is overloaded: no VM deletion in this attempt; the services call is retried with the VMs)"
        )));
    }

    #[test]
    fn the_longest_retry_after_wins() {
        let s = session(&["w1", "w2"]);
        let backend = FakeBackend::default();
        backend.script("k8s-master-abc-123", vec![refused(429, Some("2"))]);
        backend.script("w1", vec![refused(429, Some("9"))]);
        backend.script("w2", vec![refused(503, None)]);
        let r = run(&s, &backend, &Lines::default(), 3);
        assert_eq!(
            r.ending,
            Ending::Refused {
                retry_after_ms: Some(9_000)
            }
        );
    }

    #[test]
    fn the_fixed_policy_neither_stops_nor_reconnects() {
        let s = session(&["w1", "w2"]);
        let backend = FakeBackend::default();
        backend.services.borrow_mut().push(refused(429, Some("2")));
        backend.script("k8s-master-abc-123", vec![refused(429, Some("2"))]);
        backend.script("w1", vec![Err(BackendError::Network("reset".into()))]);
        let runtime = FakeRuntime::default();
        let r = block_on(run_attempt(
            &s,
            &backend,
            &runtime,
            &Lines::default(),
            &crate::lab::ports::NoBudget,
            plan(Policy::Fixed, 1),
            &NoProgress,
        ));
        assert_eq!(backend.calls().len(), 4, "services + every VM, once each");
        assert_eq!(r.deleted, vec!["w2"]);
        assert_eq!(r.outcome.failed_deletions, 2);
        assert_eq!(r.ending, Ending::Failed);
        assert!(runtime.sleeps.borrow().is_empty());
    }

    #[test]
    fn a_connection_that_fails_before_any_answer_is_tried_once_more() {
        let s = session(&["w1"]);
        let backend = FakeBackend::default();
        backend.script(
            "w1",
            vec![
                Err(BackendError::Network("connection refused".into())),
                reply(404),
            ],
        );
        let runtime = FakeRuntime {
            random: 0.0,
            ..FakeRuntime::default()
        };
        let r = block_on(run_attempt(
            &s,
            &backend,
            &runtime,
            &Lines::default(),
            &crate::lab::ports::NoBudget,
            plan(Policy::Adaptive, 6),
            &NoProgress,
        ));
        assert_eq!(r.already_gone, vec!["w1"], "the retry's 404 counts as done");
        assert_eq!(r.ending, Ending::Done);
        assert_eq!(r.calls, 4);
        assert_eq!(*runtime.sleeps.borrow(), vec![100]);

        // Twice in a row: tried once more only, then failed for this attempt.
        let backend = FakeBackend::default();
        backend.script(
            "w1",
            vec![
                Err(BackendError::Network("a".into())),
                Err(BackendError::Network("b".into())),
            ],
        );
        let r = run(&s, &backend, &Lines::default(), 6);
        assert_eq!(r.outcome.failed_deletions, 1);
        assert_eq!(r.ending, Ending::Failed);
    }

    #[test]
    fn reconnects_stay_within_the_spare_calls_and_the_attempts_calls() {
        // Every call is reset before any answer: each may be made once more, while spare calls
        // are left and the attempt's cap allows; never a call past either.
        let s = session(&["w1", "w2", "w3"]);
        let base = 5; // the services call and four VMs
        for spare in 0..=5 {
            for max in 1..=12 {
                let backend = FakeBackend::default();
                let resets = || {
                    (0..3)
                        .map(|_| Err(BackendError::Network("reset".into())))
                        .collect::<Vec<_>>()
                };
                *backend.services.borrow_mut() = resets();
                for vm in ["k8s-master-abc-123", "w1", "w2", "w3"] {
                    backend.script(vm, resets());
                }
                let r = block_on(run_attempt(
                    &s,
                    &backend,
                    &FakeRuntime::default(),
                    &Lines::default(),
                    &crate::lab::ports::NoBudget,
                    AttemptPlan {
                        spare_calls: spare,
                        max_calls: max,
                        ..plan(Policy::Adaptive, 1)
                    },
                    &NoProgress,
                ));
                let calls = backend.calls().len();
                assert_eq!(r.calls, calls, "spare {spare}, max {max}");
                assert_eq!(
                    calls,
                    max.min(base + spare),
                    "spare {spare}, max {max}: {:?}",
                    backend.calls()
                );
            }
        }
    }

    #[test]
    fn no_reconnect_after_an_answer_began_or_a_timeout_or_without_spare_calls() {
        let s = session(&["w1", "w2"]);
        let backend = FakeBackend::default();
        backend.script(
            "w1",
            vec![Err(BackendError::CutShort {
                status: 200,
                error: "reset".into(),
            })],
        );
        backend.script("w2", vec![Err(BackendError::Timeout(15))]);
        let r = run(&s, &backend, &Lines::default(), 6);
        assert_eq!(r.calls, 4);
        assert_eq!(r.outcome.failed_deletions, 2);

        let backend = FakeBackend::default();
        backend.script("w1", vec![Err(BackendError::Network("refused".into()))]);
        let runtime = FakeRuntime::default();
        let r = block_on(run_attempt(
            &s,
            &backend,
            &runtime,
            &Lines::default(),
            &crate::lab::ports::NoBudget,
            AttemptPlan {
                spare_calls: 0,
                ..plan(Policy::Adaptive, 6)
            },
            &NoProgress,
        ));
        assert_eq!(r.calls, 4, "no spare subrequest: no reconnect");
        assert_eq!(r.outcome.failed_deletions, 1);
    }
}
