//! The bulk actions' jobs on workerd: the `BulkJob` Durable Object (one per job, named by the job's id) that works through its labs a batch per alarm, and the router's calls to it.

use crate::lab::error::ServiceError;
use std::time::Duration;

use worker::{durable_object, web_sys, DurableObject, Env, Request, Response, Result, State};

use crate::api::error::ApiError;
use crate::api::respond;
use crate::lab::fleet::bulk::{self, Job, Next};
use crate::lab::ports::Level;
use crate::platform::fleet::WorkerdFleet;
use crate::platform::runtime::{console, now_ms};
use crate::platform::usage::Usage;
use crate::platform::{env, objects};

/// Name of the jobs' binding in `wrangler.toml`.
pub const BULK_BINDING: &str = "BULK_JOBS";
/// Storage key of the job.
const JOB_KEY: &str = "job";

#[durable_object]
pub struct BulkJob {
    state: State,
    env: Env,
}

impl BulkJob {
    async fn job(&self) -> Result<Option<Job>> {
        let text: Option<String> = self.state.storage().get(JOB_KEY).await?;
        Ok(text
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| Job::from_value(&v)))
    }

    async fn save(&self, job: &Job) -> Result<()> {
        let text = serde_json::to_string(&job.to_value())
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.state.storage().put(JOB_KEY, text).await
    }

    /// Starts `job` (its first batch at once), or answers the job already started under this
    /// id: the same request runs once; another one under the same `Idempotency-Key` is a 409.
    async fn start(&self, job: Job) -> Result<Response> {
        if let Some(existing) = self.job().await? {
            if existing.fingerprint != job.fingerprint {
                return respond::error(&ApiError::Conflict(
                    "this Idempotency-Key was used for another bulk request".into(),
                ));
            }
            return respond::json(202, &existing.view());
        }
        self.save(&job).await?;
        self.state
            .storage()
            .set_alarm(Duration::from_millis(0))
            .await?;
        console(
            Level::Info,
            &format!(
                "[bulk] Job {} started: {} over {} labs",
                job.id,
                job.plan.action.name(),
                job.matched
            ),
        );
        respond::json(202, &job.view())
    }

    /// Starts the job, or answers its progress.
    async fn answer(&self, mut request: Request) -> Result<Response> {
        match (request.method(), request.path().as_str()) {
            (worker::Method::Post, "/start") => {
                let body = request.text().await.unwrap_or_default();
                match serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| Job::from_value(&v))
                {
                    Some(job) => self.start(job).await,
                    None => respond::error(&ApiError::Internal("an unreadable job".into())),
                }
            }
            (worker::Method::Get, "/status") => match self.job().await? {
                Some(job) => respond::json(200, &job.view()),
                None => respond::error(&ApiError::NotFound("no bulk job with that id".into())),
            },
            _ => respond::error(&ApiError::NotFound("no such job route".into())),
        }
    }
}

impl DurableObject for BulkJob {
    fn new(state: State, env: Env) -> Self {
        BulkJob { state, env }
    }

    /// A request from the router (start a job, its progress), with its own ledger line
    /// (`kind: "bulk start"`, `"bulk status"`).
    async fn fetch(&self, request: Request) -> Result<Response> {
        let kind = match request.path().as_str() {
            "/start" => "bulk start",
            "/status" => "bulk status",
            _ => "bulk fetch",
        };
        let usage = env::config(&self.env).ok().map(|c| Usage::start(&c));
        let answer = self.answer(request).await;
        if let Some(usage) = usage {
            usage.record(kind);
        }
        answer
    }

    /// One batch, then the next alarm (at once, or after a pause when something did not
    /// answer). Only storage errors are returned (the platform runs the alarm again).
    async fn alarm(&self) -> Result<Response> {
        let Some(mut job) = self.job().await? else {
            return Response::empty();
        };
        let config = match env::config(&self.env) {
            Ok(config) => config,
            Err(e) => {
                console(
                    Level::Error,
                    &format!(
                        "[bulk] Job {}: configuration error: {}; looking again in a minute",
                        job.id,
                        e.detail()
                    ),
                );
                self.state
                    .storage()
                    .set_alarm(Duration::from_secs(60))
                    .await?;
                return Response::empty();
            }
        };
        let usage = Usage::start(&config);
        let fleet = WorkerdFleet::new(&self.env, &config, &usage);
        // The index query and the labs' requests within one invocation's calls to services.
        let batch = bulk::batch(&fleet);
        let now = now_ms();
        let next = bulk::step(&fleet, &fleet, &mut job, batch, now).await;
        usage.record("bulk");
        self.save(&job).await?;
        match next {
            Next::At(at) => {
                let wait = at.saturating_sub(now_ms()).max(0) as u64;
                self.state
                    .storage()
                    .set_alarm(Duration::from_millis(wait))
                    .await?;
                if let Some(fault) = job.last_fault.as_ref().filter(|_| job.faults > 0) {
                    console(
                        Level::Warn,
                        &format!("[bulk] Job {}: {fault} (pausing {} ms)", job.id, wait),
                    );
                }
            }
            Next::Done => console(
                Level::Info,
                &format!(
                    "[bulk] Job {} done: {} over {} labs, {} applied, {} refused",
                    job.id,
                    job.plan.action.name(),
                    job.visited,
                    job.applied,
                    job.refused_count
                ),
            ),
        }
        Response::empty()
    }
}

/// One request to the job `job_id`'s object: its status and JSON answer.
pub async fn call(
    env: &Env,
    job_id: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> std::result::Result<web_sys::Response, ServiceError> {
    let call = objects::Call {
        method,
        path,
        body,
        timeout_ms: None,
    };
    objects::fetch(env, BULK_BINDING, job_id, "bulk-job", call).await
}
