//! Bulk actions over a class of labs: end, extend, retry or resume every lab a selector matches, after a preview, as a job that works through them in batches.
//!
//! Pure: the labs are found in the fleet index (`Candidates`), in lab id order so that a lab is
//! visited once however the action changes it, and each is changed through its own object
//! (`Labs`), exactly as the single-lab route would. A batch stays within one invocation's
//! calls to services (`batch`); the job (its own Durable Object, `platform::bulk`) saves
//! its place after each batch, and a lab remembers the jobs that changed it, so a batch run
//! again after a crash changes no lab twice.

use serde_json::{json, Value};

use crate::lab::error::ServiceError;
use crate::lab::fleet::Labs;
use crate::lab::protocol::{Answer, Request};
use crate::lab::session::By;
use crate::lab::status::Status;
use crate::lab::text::rfc3339;

/// Most labs one job may act on (a selector matching more is refused: narrow it).
pub const MAX_BULK_LABS: u64 = 10_000;
/// Refusals a job keeps with their reason (the rest are counted).
pub const KEEP_REFUSALS: usize = 100;
/// Labs a dry run or a count reads from the index per query.
pub const PAGE: u32 = 500;
/// Most labs one batch (an alarm of the job) sends its action to: each is a call to a lab's
/// object, well within the 1,000 calls to services an invocation may make on either plan.
pub const MAX_BATCH: u32 = 100;

/// The labs the next batch may take within what its invocation has left of its calls to
/// services (one of them is the batch's query of the index).
pub fn batch(allowance: &impl crate::lab::ports::Allowance) -> u32 {
    let left = allowance
        .left(crate::lab::invocation::Meter::Service)
        .saturating_sub(1);
    u32::try_from(left).unwrap_or(u32::MAX).min(MAX_BATCH)
}

/// What to do to each lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    End,
    Extend {
        minutes: u64,
    },
    Retry,
    /// The grace stage: a stopped lab's VMs started, the lab active `minutes` more.
    Resume {
        minutes: u64,
    },
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::End => "end",
            Action::Extend { .. } => "extend",
            Action::Retry => "retry",
            Action::Resume { .. } => "resume",
        }
    }

    /// The request a lab's object gets for this action from job `job`.
    pub fn request(self, job: &str) -> Request {
        let job = Some(job.to_string());
        match self {
            Action::End => Request::End {
                by: By::Operator,
                job,
            },
            Action::Extend { minutes } => Request::Extend {
                minutes,
                by: By::Operator,
                job,
            },
            Action::Retry => Request::Retry { job },
            Action::Resume { minutes } => Request::Resume {
                minutes,
                by: By::Operator,
                job,
            },
        }
    }
}

pub use crate::lab::fleet::selector::Selector;

/// A job's whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub selector: Selector,
    pub action: Action,
}

impl Plan {
    /// The plan in one line, the same for the same request (its fingerprint's input).
    pub fn canonical(&self) -> String {
        let minutes = match self.action {
            Action::Extend { minutes } | Action::Resume { minutes } => minutes.to_string(),
            _ => String::new(),
        };
        let s = &self.selector;
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let statuses: Vec<&str> = s.statuses.iter().map(|s| s.name()).collect();
        serde_json::json!([self.action.name(), minutes, labels, statuses, s.user_id]).to_string()
    }
}

/// A lab the selector matches, as the index has it (a row of `index::bulk_page`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Candidate {
    pub lab_request_id: String,
    pub status: Status,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A dry run: what `plan` would do to each lab it matches, `{"lab_request_id", "would"}` in lab
/// id order, read from the index `PAGE` labs at a time, at most `MAX_BULK_LABS`. Changes nothing.
pub async fn preview(
    index: &impl Candidates,
    plan: &Plan,
    unit_ms: i64,
    max_minutes: u64,
) -> Result<Vec<Value>, ServiceError> {
    let mut labs = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = index.page(&plan.selector, after.as_deref(), PAGE).await?;
        for c in &page {
            let would = would(c, plan.action, unit_ms, max_minutes)
                .unwrap_or_else(|why| format!("refused: {why}"));
            labs.push(json!({"lab_request_id": c.lab_request_id, "would": would}));
        }
        after = page.last().map(|c| c.lab_request_id.clone());
        if (page.len() as u32) < PAGE || labs.len() as u64 >= MAX_BULK_LABS {
            return Ok(labs);
        }
    }
}

/// Why an action would be refused, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WouldRefuse(pub String);

impl std::ops::Deref for WouldRefuse {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// What a bulk request begins: a dry run's preview, or the job to start.
#[derive(Debug, Clone, PartialEq)]
pub enum Begun {
    /// The labs the selector matches and what each would get (`preview`).
    Preview(Vec<Value>),
    /// The job, ready for its object (`Job::to_value`).
    Start(Box<Job>),
}

/// Why a bulk request begins nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotBegun {
    #[error(
        "the selector matches {0} labs; a bulk action takes at most {MAX_BULK_LABS}: narrow it"
    )]
    TooMany(u64),
    #[error(transparent)]
    Index(#[from] ServiceError),
}

/// A bulk request (`POST /api/v1/labs/bulk`) at `now_ms`: the labs `plan` matches counted in the
/// index (at most `MAX_BULK_LABS`), then the dry run's preview, or the job `job_id` to start
/// (its `fingerprint` says which request it was, for `Idempotency-Key`).
pub async fn begin(
    index: &impl Candidates,
    plan: Plan,
    dry_run: bool,
    (job_id, fingerprint): (String, String),
    (unit_ms, max_minutes): (i64, u64),
    now_ms: i64,
) -> Result<Begun, NotBegun> {
    let matched = index.count(&plan.selector).await?;
    if matched > MAX_BULK_LABS {
        return Err(NotBegun::TooMany(matched));
    }
    if dry_run {
        return Ok(Begun::Preview(
            preview(index, &plan, unit_ms, max_minutes).await?,
        ));
    }
    Ok(Begun::Start(Box::new(Job::new(
        job_id,
        plan,
        fingerprint,
        matched,
        now_ms,
    ))))
}

/// Whether `minutes` more keep `c`'s lifetime (its expiry less its creation, in `duration`
/// units, as the index knows them) within `max_minutes`, the cap an extend and a resume share
/// (`Session::lifetime_within` decides for real).
fn lifetime_fits(
    c: &Candidate,
    minutes: u64,
    unit_ms: i64,
    max_minutes: u64,
) -> Result<(), WouldRefuse> {
    let lifetime = (c.expires_at.saturating_sub(c.created_at).max(0) / unit_ms.max(1)) as u64;
    match lifetime.checked_add(minutes) {
        Some(total) if total <= max_minutes => Ok(()),
        _ => Err(WouldRefuse(format!(
            "its lifetime would pass {max_minutes} minutes (MAX_DURATION_MINUTES)"
        ))),
    }
}

/// What the action would do to `c`, from the index's copy of it (a dry run: the lab's object
/// decides for real, under the same rules). `Err`: why it would be refused.
pub fn would(
    c: &Candidate,
    action: Action,
    unit_ms: i64,
    max_minutes: u64,
) -> Result<String, WouldRefuse> {
    let status = c.status.describe();
    match (action, c.status) {
        (Action::End, Status::Scheduled) => Ok("end now".into()),
        (Action::End, Status::Retrying) => Ok("retry now (its cleanup has started)".into()),
        (Action::End, Status::Stopped) => Ok("delete its stopped VMs now".into()),
        (Action::End, _) => Ok(format!("nothing: it is {status}")),
        (Action::Extend { minutes }, Status::Scheduled) => {
            lifetime_fits(c, minutes, unit_ms, max_minutes)?;
            let to = c
                .expires_at
                .saturating_add((minutes as i64).saturating_mul(unit_ms.max(1)));
            Ok(format!("extend to {}", rfc3339(to)))
        }
        (Action::Extend { .. }, _) => Err(WouldRefuse(format!(
            "it is {status}; only a scheduled lab can be extended"
        ))),
        (Action::Retry, Status::Retrying) => Ok("retry now".into()),
        (Action::Retry, Status::CleaningUp) => Ok("nothing: an attempt is under way".into()),
        (Action::Retry, _) => Err(WouldRefuse(format!(
            "it is {status}; only a retrying lab can be retried"
        ))),
        (Action::Resume { minutes }, Status::Stopped) => {
            lifetime_fits(c, minutes, unit_ms, max_minutes)?;
            Ok(format!("start its VMs, then {minutes} minutes more"))
        }
        (Action::Resume { .. }, _) => Err(WouldRefuse(format!(
            "it is {status}; only a stopped lab can be resumed"
        ))),
    }
}

/// The fleet index, as a job reads it.
#[allow(async_fn_in_trait)]
pub trait Candidates {
    /// Up to `limit` labs `selector` matches with an id after `after`, in id order.
    async fn page(
        &self,
        selector: &Selector,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Candidate>, ServiceError>;
    /// How many labs `selector` matches now.
    async fn count(&self, selector: &Selector) -> Result<u64, ServiceError>;
}

/// A lab the job could not change, and why (the lab's own answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub lab_request_id: String,
    pub error: String,
}

/// A bulk job, as its object keeps it (bounded: its place, counts, the first refusals). Stored
/// as JSON through `serde_json::Value` (`to_value`, `from_value`): derived (de)serializers of
/// these types would add their own code to the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub plan: Plan,
    /// The request's fingerprint: the same `Idempotency-Key` with another request is refused.
    pub fingerprint: String,
    pub created_at_ms: i64,
    /// Labs the selector matched when the job started.
    pub matched: u64,
    /// The last lab handled (labs are handled in id order).
    pub cursor: Option<String>,
    pub visited: u64,
    pub applied: u64,
    pub refused: Vec<Refused>,
    pub refused_count: u64,
    pub done: bool,
    pub finished_at_ms: Option<i64>,
    /// Batches in a row that met a fault (the index or a lab's object did not answer).
    pub faults: u32,
    pub last_fault: Option<String>,
}

impl Job {
    pub fn new(id: String, plan: Plan, fingerprint: String, matched: u64, now_ms: i64) -> Job {
        Job {
            id,
            plan,
            fingerprint,
            created_at_ms: now_ms,
            matched,
            cursor: None,
            visited: 0,
            applied: 0,
            refused: Vec::new(),
            refused_count: 0,
            done: false,
            finished_at_ms: None,
            faults: 0,
            last_fault: None,
        }
    }

    fn refused_json(&self) -> Vec<Value> {
        self.refused
            .iter()
            .map(|r| json!({"lab_request_id": r.lab_request_id, "error": r.error}))
            .collect()
    }

    /// The job as `GET /api/v1/labs/bulk/{job_id}` answers it.
    pub fn view(&self) -> Value {
        json!({
            "job_id": self.id,
            "action": self.plan.action.name(),
            "matched": self.matched,
            "visited": self.visited,
            "applied": self.applied,
            "refused": self.refused_json(),
            "refused_count": self.refused_count,
            "done": self.done,
            "created_at": rfc3339(self.created_at_ms),
            "finished_at": self.finished_at_ms.map(rfc3339),
            "last_fault": self.last_fault,
        })
    }

    /// The job as stored (and as the router hands it to its object).
    pub fn to_value(&self) -> Value {
        let minutes = match self.plan.action {
            Action::Extend { minutes } | Action::Resume { minutes } => Some(minutes),
            _ => None,
        };
        let selector = &self.plan.selector;
        json!({
            "id": self.id,
            "action": self.plan.action.name(),
            "minutes": minutes,
            "labels": selector.labels.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "statuses": selector.statuses.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "user_id": selector.user_id,
            "fingerprint": self.fingerprint,
            "created_at_ms": self.created_at_ms,
            "matched": self.matched,
            "cursor": self.cursor,
            "visited": self.visited,
            "applied": self.applied,
            "refused": self.refused_json(),
            "refused_count": self.refused_count,
            "done": self.done,
            "finished_at_ms": self.finished_at_ms,
            "faults": self.faults,
            "last_fault": self.last_fault,
        })
    }

    /// The job `to_value` wrote; `None` for anything else.
    pub fn from_value(v: &Value) -> Option<Job> {
        let text = |name: &str| v[name].as_str().map(str::to_string);
        let action = match v["action"].as_str()? {
            "end" => Action::End,
            "retry" => Action::Retry,
            "extend" => Action::Extend {
                minutes: v["minutes"].as_u64()?,
            },
            "resume" => Action::Resume {
                minutes: v["minutes"].as_u64()?,
            },
            _ => return None,
        };
        let labels = v["labels"]
            .as_array()?
            .iter()
            .map(|pair| Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string())))
            .collect::<Option<Vec<_>>>()?;
        let statuses = v["statuses"]
            .as_array()?
            .iter()
            .map(|s| Status::from_name(s.as_str()?))
            .collect::<Option<Vec<_>>>()?;
        let refused = v["refused"]
            .as_array()?
            .iter()
            .map(|r| {
                Some(Refused {
                    lab_request_id: r["lab_request_id"].as_str()?.to_string(),
                    error: r["error"].as_str()?.to_string(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Job {
            id: text("id")?,
            plan: Plan {
                selector: Selector {
                    labels,
                    statuses,
                    user_id: text("user_id"),
                },
                action,
            },
            fingerprint: text("fingerprint")?,
            created_at_ms: v["created_at_ms"].as_i64()?,
            matched: v["matched"].as_u64()?,
            cursor: text("cursor"),
            visited: v["visited"].as_u64()?,
            applied: v["applied"].as_u64()?,
            refused,
            refused_count: v["refused_count"].as_u64()?,
            done: v["done"].as_bool()?,
            finished_at_ms: v["finished_at_ms"].as_i64(),
            faults: v["faults"].as_u64()? as u32,
            last_fault: text("last_fault"),
        })
    }
}

/// What the job does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Another batch at this time.
    At(i64),
    Done,
}

/// How long a job waits after a fault: 2 s, doubling, at most a minute.
fn fault_pause_ms(faults: u32) -> i64 {
    (2_000i64 << faults.min(5)).min(60_000)
}

/// One batch: up to `batch` labs after the job's place, each sent its action; the job's place
/// and counts move past each lab that answered. A lab whose object did not answer (or answered
/// 5xx) stops the batch before it: the next batch starts with it again.
pub async fn step(
    index: &impl Candidates,
    labs: &impl Labs,
    job: &mut Job,
    batch: u32,
    now_ms: i64,
) -> Next {
    if job.done {
        return Next::Done;
    }
    let page = match index
        .page(&job.plan.selector, job.cursor.as_deref(), batch.max(1))
        .await
    {
        Ok(page) => page,
        Err(e) => {
            job.faults = job.faults.saturating_add(1);
            job.last_fault = Some(format!("the index did not answer: {e}"));
            return Next::At(now_ms.saturating_add(fault_pause_ms(job.faults)));
        }
    };
    let full = page.len() as u32 >= batch.max(1);
    for c in &page {
        match labs
            .call(&c.lab_request_id, job.plan.action.request(&job.id))
            .await
        {
            Ok(Answer::Refused { message, .. }) => {
                job.refused_count += 1;
                if job.refused.len() < KEEP_REFUSALS {
                    job.refused.push(Refused {
                        lab_request_id: c.lab_request_id.clone(),
                        error: crate::lab::text::shorten(&message, 300),
                    });
                }
            }
            Ok(_) => job.applied += 1,
            Err(ServiceError::Answered(status)) => {
                job.faults = job.faults.saturating_add(1);
                job.last_fault = Some(format!(
                    "lab {} answered {status}; trying it again",
                    c.lab_request_id
                ));
                return Next::At(now_ms.saturating_add(fault_pause_ms(job.faults)));
            }
            Err(e) => {
                job.faults = job.faults.saturating_add(1);
                job.last_fault = Some(format!(
                    "lab {} did not answer ({e}); trying it again",
                    c.lab_request_id
                ));
                return Next::At(now_ms.saturating_add(fault_pause_ms(job.faults)));
            }
        }
        job.visited += 1;
        job.cursor = Some(c.lab_request_id.clone());
    }
    job.faults = 0;
    if full {
        Next::At(now_ms)
    } else {
        job.done = true;
        job.finished_at_ms = Some(now_ms);
        Next::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use futures::executor::block_on;

    /// An index and the labs' objects in memory: each lab's status, and every request it got.
    #[derive(Default)]
    struct Fleet {
        labs: RefCell<BTreeMap<String, Status>>,
        got: RefCell<Vec<(String, Request)>>,
        /// The lab whose object fails the next time it is asked.
        failing: RefCell<Option<String>>,
        index_down: std::cell::Cell<bool>,
        /// Jobs each lab has applied (the object's own memory).
        applied: RefCell<BTreeMap<String, Vec<String>>>,
        /// The invocation's ledger (a job's alarm), enforced; `None`: no limit.
        ledger: RefCell<Option<crate::lab::invocation::Ledger>>,
    }

    impl Fleet {
        fn charge(&self) -> Result<(), ServiceError> {
            match self.ledger.borrow_mut().as_mut() {
                Some(l) => l
                    .charge(crate::lab::invocation::Meter::Service, 1)
                    .map_err(ServiceError::from),
                None => Ok(()),
            }
        }
    }

    impl crate::lab::ports::Allowance for Fleet {
        fn left(&self, meter: crate::lab::invocation::Meter) -> u64 {
            self.ledger
                .borrow()
                .as_ref()
                .map_or(u64::MAX, |l| l.left(meter))
        }
        fn invocation_started_ms(&self) -> i64 {
            0
        }
        fn elapsed_ms(&self) -> i64 {
            0
        }
    }

    impl Candidates for Fleet {
        async fn page(
            &self,
            selector: &Selector,
            after: Option<&str>,
            limit: u32,
        ) -> Result<Vec<Candidate>, ServiceError> {
            self.charge()?;
            if self.index_down.get() {
                return Err("down".into());
            }
            Ok(self
                .labs
                .borrow()
                .iter()
                .filter(|(id, _)| after.is_none_or(|a| id.as_str() > a))
                .filter(|(_, s)| selector.statuses.is_empty() || selector.statuses.contains(s))
                .take(limit as usize)
                .map(|(id, s)| Candidate {
                    lab_request_id: id.clone(),
                    status: *s,
                    created_at: 0,
                    expires_at: 3_600_000,
                })
                .collect())
        }
        async fn count(&self, _: &Selector) -> Result<u64, ServiceError> {
            Ok(self.labs.borrow().len() as u64)
        }
    }

    impl Labs for Fleet {
        async fn call(
            &self,
            id: &str,
            request: Request,
        ) -> Result<crate::lab::protocol::Answer, ServiceError> {
            let sent = request.clone();
            let (status, body) = self.call_wire(id, request).await?;
            crate::lab::protocol::Answer::read(&sent, status, &body.to_string())
        }
    }

    impl Fleet {
        async fn call_wire(
            &self,
            id: &str,
            request: Request,
        ) -> Result<(u16, serde_json::Value), ServiceError> {
            self.charge()?;
            if self.failing.borrow().as_deref() == Some(id) {
                *self.failing.borrow_mut() = None;
                return Err("connection reset".into());
            }
            self.got.borrow_mut().push((id.into(), request.clone()));
            let job = match &request {
                Request::Extend { job, .. } | Request::End { job, .. } | Request::Retry { job } => {
                    job.clone().unwrap()
                }
                _ => unreachable!(),
            };
            let mut applied = self.applied.borrow_mut();
            let mine = applied.entry(id.into()).or_default();
            if mine.contains(&job) {
                return Ok((200, serde_json::json!({})));
            }
            let status = self.labs.borrow()[id];
            match (&request, status) {
                (Request::Extend { .. }, Status::Scheduled) => {
                    mine.push(job);
                    Ok((200, serde_json::json!({})))
                }
                (Request::Extend { .. }, _) => Ok((
                    409,
                    serde_json::json!({"error": {"code": "conflict", "message": "only a scheduled lab can be extended"}}),
                )),
                _ => {
                    mine.push(job);
                    Ok((202, serde_json::json!({})))
                }
            }
        }
    }

    fn fleet(n: usize) -> Fleet {
        let f = Fleet::default();
        for i in 0..n {
            let status = if i % 10 == 0 {
                Status::CleaningUp
            } else {
                Status::Scheduled
            };
            f.labs.borrow_mut().insert(format!("lab-{i:04}"), status);
        }
        f
    }

    fn job(action: Action) -> Job {
        let plan = Plan {
            selector: Selector {
                labels: vec![("class".into(), "c1".into())],
                ..Selector::default()
            },
            action,
        };
        Job::new("j1".into(), plan, "f".into(), 300, 0)
    }

    fn run(f: &Fleet, job: &mut Job, batch: u32) -> usize {
        let mut batches = 0;
        while let Next::At(_) = block_on(step(f, f, job, batch, 0)) {
            batches += 1;
            assert!(batches < 10_000);
        }
        batches + 1
    }

    #[test]
    fn every_lab_once_in_batches_within_the_subrequests() {
        let f = fleet(300);
        let mut j = job(Action::Extend { minutes: 30 });
        let batches = run(&f, &mut j, 48);
        assert_eq!(batches, 7, "300 labs, 48 a batch");
        assert!(j.done);
        assert_eq!(j.visited, 300);
        assert_eq!(j.applied, 270);
        assert_eq!(j.refused_count, 30, "the labs being cleaned up");
        assert_eq!(j.refused[0].lab_request_id, "lab-0000");
        assert!(j.refused[0].error.contains("only a scheduled lab"));
        let got = f.got.borrow();
        assert_eq!(got.len(), 300, "one request per lab");
        let mut ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 300);
    }

    #[test]
    fn a_class_of_two_thousand_on_the_free_plan() {
        // 50 subrequests an invocation: a batch of 48 labs (one page read, one write back).
        let f = fleet(2000);
        let mut j = job(Action::Extend { minutes: 30 });
        j.matched = 2000;
        let mut batches = 0;
        loop {
            let before = f.got.borrow().len();
            let next = block_on(step(&f, &f, &mut j, 48, 0));
            let sent = f.got.borrow().len() - before;
            assert!(sent <= 48, "batch {batches} sent {sent}");
            batches += 1;
            if !matches!(next, Next::At(_)) {
                break;
            }
        }
        assert_eq!(batches, 42, "2,000 labs, 48 a batch");
        assert!(j.done);
        // Every tenth lab is being cleaned up: refused with its own reason.
        assert_eq!((j.visited, j.applied, j.refused_count), (2000, 1800, 200));
        let got = f.got.borrow();
        let ids: std::collections::BTreeSet<&String> = got.iter().map(|(id, _)| id).collect();
        assert_eq!((got.len(), ids.len()), (2000, 2000), "each lab asked once");
    }

    #[test]
    fn a_job_over_ten_thousand_labs_stays_within_each_alarms_calls() {
        use crate::lab::invocation::plan::{FREE, PAID};
        for limits in [FREE, PAID] {
            let f = fleet(10_000);
            let mut j = job(Action::End);
            j.matched = 10_000;
            let mut batches = 0;
            loop {
                // Each batch is an alarm of the job's object: an invocation of its own.
                *f.ledger.borrow_mut() = Some(crate::lab::invocation::Ledger::new(limits, true, 0));
                let next = block_on(step(&f, &f, &mut j, batch(&f), 0));
                let used = f.ledger.borrow().as_ref().unwrap().used();
                assert!(used.services <= limits.services, "{used:?}");
                batches += 1;
                if !matches!(next, Next::At(_)) {
                    break;
                }
            }
            assert!(
                j.done && j.visited == 10_000 && j.applied == 10_000,
                "{j:?}"
            );
            // 100 labs a batch; the last batch finds none after a full one.
            assert_eq!(batches, 101, "{} labs a batch", MAX_BATCH);
            let got = f.got.borrow();
            let ids: std::collections::BTreeSet<&String> = got.iter().map(|(id, _)| id).collect();
            assert_eq!(
                (got.len(), ids.len()),
                (10_000, 10_000),
                "each lab asked once"
            );
        }
    }

    #[test]
    fn a_lab_that_does_not_answer_is_asked_again_and_changed_once() {
        let f = fleet(100);
        *f.failing.borrow_mut() = Some("lab-0050".into());
        let mut j = job(Action::End);
        let next = block_on(step(&f, &f, &mut j, 48, 0));
        assert_eq!(next, Next::At(0));
        let next = block_on(step(&f, &f, &mut j, 48, 0));
        assert_eq!(next, Next::At(4_000), "a fault pauses the job");
        assert_eq!(j.cursor.as_deref(), Some("lab-0049"));
        run(&f, &mut j, 48);
        assert_eq!(j.visited, 100);
        assert_eq!(j.applied, 100);
        // A batch run again (its place lost in a crash) changes no lab twice: the labs remember.
        j.cursor = None;
        j.done = false;
        run(&f, &mut j, 48);
        let applied = f.applied.borrow();
        assert!(applied.values().all(|jobs| jobs.len() == 1));
    }

    #[test]
    fn a_fault_of_the_index_backs_off_and_changes_nothing() {
        let f = fleet(10);
        f.index_down.set(true);
        let mut j = job(Action::End);
        assert_eq!(block_on(step(&f, &f, &mut j, 48, 0)), Next::At(4_000));
        assert_eq!(block_on(step(&f, &f, &mut j, 48, 0)), Next::At(8_000));
        assert!(f.got.borrow().is_empty());
        assert!(j.last_fault.as_deref().unwrap().contains("index"));
        f.index_down.set(false);
        run(&f, &mut j, 48);
        assert_eq!(j.applied, 10);
        assert_eq!(j.faults, 0);
    }

    #[test]
    fn a_preview_reads_every_page_and_changes_nothing() {
        let f = fleet(1_200);
        let plan = job(Action::Extend { minutes: 30 }).plan;
        let labs = block_on(preview(&f, &plan, 60_000, 10_000)).unwrap();
        assert_eq!(labs.len(), 1_200, "three pages of {PAGE}");
        assert_eq!(labs[0]["lab_request_id"], "lab-0000");
        let refused = labs[0]["would"].as_str().unwrap();
        assert!(
            refused.starts_with("refused: it is ") && refused.contains("only a scheduled lab"),
            "{refused}"
        );
        assert!(labs[1]["would"].as_str().unwrap().starts_with("extend to"));
        assert_eq!(labs[1_199]["lab_request_id"], "lab-1199");
        assert!(f.got.borrow().is_empty(), "no lab was asked anything");
        f.index_down.set(true);
        assert_eq!(
            block_on(preview(&f, &plan, 60_000, 10_000)),
            Err("down".into())
        );
    }

    #[test]
    fn the_dry_run_says_what_each_lab_would_get() {
        let c = |status| Candidate {
            lab_request_id: "l".into(),
            status,
            created_at: 0,
            expires_at: 60 * 60_000,
        };
        let unit = 60_000;
        assert_eq!(
            would(
                &c(Status::Scheduled),
                Action::Extend { minutes: 30 },
                unit,
                10_080
            ),
            Ok("extend to 1970-01-01T01:30:00.000Z".into())
        );
        assert!(would(
            &c(Status::Scheduled),
            Action::Extend { minutes: 30 },
            unit,
            80
        )
        .unwrap_err()
        .contains("MAX_DURATION_MINUTES"));
        assert!(would(
            &c(Status::Retrying),
            Action::Extend { minutes: 1 },
            unit,
            80
        )
        .is_err());
        assert_eq!(
            would(&c(Status::Scheduled), Action::End, unit, 80),
            Ok("end now".into())
        );
        assert!(would(&c(Status::Completed), Action::End, unit, 80)
            .unwrap()
            .starts_with("nothing"));
        assert!(would(&c(Status::Scheduled), Action::Retry, unit, 80).is_err());
        assert_eq!(
            would(&c(Status::Retrying), Action::Retry, unit, 80),
            Ok("retry now".into())
        );
        // The grace stage: a stopped lab is resumed, or ended (its VMs deleted at once).
        let resume = Action::Resume { minutes: 30 };
        assert_eq!(
            would(&c(Status::Stopped), resume, unit, 10_080),
            Ok("start its VMs, then 30 minutes more".into())
        );
        // Within the lifetime cap, as the lab's object checks it (issue 36, 9: the preview
        // promised what the job then refused).
        assert!(would(&c(Status::Stopped), resume, unit, 80)
            .unwrap_err()
            .0
            .contains("MAX_DURATION_MINUTES"));
        assert!(would(&c(Status::Scheduled), resume, unit, 80)
            .unwrap_err()
            .0
            .contains("only a stopped lab"));
        assert_eq!(
            would(&c(Status::Stopped), Action::End, unit, 80),
            Ok("delete its stopped VMs now".into())
        );
        let mut j = job(resume);
        j.id = "job-resume".into();
        assert_eq!(Job::from_value(&j.to_value()), Some(j.clone()));
        assert_eq!(
            resume.request("job-resume"),
            Request::Resume {
                minutes: 30,
                by: By::Operator,
                job: Some("job-resume".into())
            }
        );
    }

    #[test]
    fn a_request_begins_a_preview_a_job_or_nothing() {
        let f = fleet(30);
        let plan = job(Action::End).plan;
        let ids = || ("job-1".to_string(), "print".to_string());
        let preview = block_on(begin(&f, plan.clone(), true, ids(), (60_000, 600), 5)).unwrap();
        let Begun::Preview(labs) = preview else {
            panic!("a dry run previews")
        };
        assert_eq!(labs.len(), 30);
        assert_eq!(labs[0]["would"], "nothing: it is being cleaned up");
        assert_eq!(labs[1]["would"], "end now");
        assert!(f.got.borrow().is_empty(), "a dry run changes nothing");
        let Begun::Start(job) =
            block_on(begin(&f, plan.clone(), false, ids(), (60_000, 600), 5)).unwrap()
        else {
            panic!("a real run starts a job")
        };
        assert_eq!(
            (job.id.as_str(), job.matched, job.visited),
            ("job-1", 30, 0)
        );
        assert_eq!(job.fingerprint, "print");
        let big = fleet(MAX_BULK_LABS as usize + 1);
        assert_eq!(
            block_on(begin(&big, plan, true, ids(), (60_000, 600), 5)),
            Err(NotBegun::TooMany(MAX_BULK_LABS + 1))
        );
    }

    #[test]
    fn a_job_round_trips_as_its_object_stores_it() {
        let mut j = job(Action::Extend { minutes: 30 });
        j.plan.selector.statuses = vec![Status::Scheduled, Status::Retrying];
        j.plan.selector.user_id = Some("u".into());
        j.cursor = Some("lab-0047".into());
        j.refused.push(Refused {
            lab_request_id: "lab-0001".into(),
            error: "only a scheduled lab can be extended".into(),
        });
        j.finished_at_ms = Some(9);
        j.last_fault = Some("x".into());
        let text = serde_json::to_string(&j.to_value()).unwrap();
        let back = Job::from_value(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, j);
        let end = job(Action::End);
        assert_eq!(Job::from_value(&end.to_value()), Some(end));
        assert_eq!(Job::from_value(&json!({"action": "nuke"})), None);
    }
}
