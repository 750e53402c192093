//! The `SessionManager` Durable Object: one per lab, it stores the session and runs the cleanup from its alarm.
//!
//! Thin glue: state transitions live in `session`, the cleanup in `cleanup`, HTTP in `backend`.

use chrono::{DateTime, Utc};
use worker::{
    console_error, console_log, console_warn, durable_object, DurableObject, Env, Request,
    Response, Result, State, Storage,
};

use crate::backend::HttpLabBackend;
use crate::cleanup::{self, Level, Logger, LOG_PREFIX};
use crate::config::{Config, DEFAULT_CLEANUP_RETRY_SECONDS};
use crate::error::ApiError;
use crate::respond;
use crate::session::{rfc3339, Session, Status};
use crate::validation::NewSession;

/// Storage key of the session record (one JSON string, written in one operation).
const SESSION_KEY: &str = "session";
/// Internal path the router forwards a validated create request to.
pub const CREATE_PATH: &str = "/create";

#[durable_object]
pub struct SessionManager {
    state: State,
    env: Env,
}

/// Log sink for the Workers console (dashboard, `wrangler tail`, `wrangler dev`).
struct ConsoleLogger;

impl Logger for ConsoleLogger {
    fn log(&self, level: Level, message: &str) {
        match level {
            Level::Info => console_log!("{LOG_PREFIX} {message}"),
            Level::Warn => console_warn!("{LOG_PREFIX} {message}"),
            Level::Error => console_error!("{LOG_PREFIX} {message}"),
        }
    }
}

fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

fn alarm_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl SessionManager {
    fn storage(&self) -> Storage {
        self.state.storage()
    }

    async fn load(&self) -> Result<Option<Session>> {
        match self.storage().get::<String>(SESSION_KEY).await? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                worker::Error::RustError(format!("stored session is unreadable: {e}"))
            }),
        }
    }

    /// Writes the record and sets the alarm in one batch: both calls are issued in the same
    /// turn, so the runtime coalesces them into one atomic write.
    async fn save_with_alarm(&self, session: &Session, alarm_at_ms: i64) -> Result<()> {
        let text = serde_json::to_string(session)?;
        let storage = self.storage();
        let (put, alarm) = futures::join!(
            storage.put(SESSION_KEY, text),
            storage.set_alarm(alarm_time(alarm_at_ms))
        );
        put.and(alarm)
    }

    /// Writes the record and removes the alarm in one batch.
    async fn save_without_alarm(&self, session: &Session) -> Result<()> {
        let text = serde_json::to_string(session)?;
        let storage = self.storage();
        let (put, alarm) = futures::join!(storage.put(SESSION_KEY, text), storage.delete_alarm());
        put.and(alarm)
    }

    async fn create(&self, mut request: Request) -> Result<Response> {
        let new: NewSession = match request.json().await {
            Ok(new) => new,
            Err(e) => {
                return respond::error(&ApiError::InvalidRequest(format!(
                    "unreadable session request: {e}"
                )))
            }
        };
        let config = match Config::from_env(&self.env) {
            Ok(config) => config,
            Err(e) => return respond::error(&ApiError::NotConfigured(e.to_string())),
        };
        match self.load().await? {
            None => {
                let lifetime = config.duration_ms(new.duration);
                let session = Session::schedule(new, now_ms(), lifetime);
                self.save_with_alarm(&session, session.expires_at_ms)
                    .await?;
                console_log!(
                    "{LOG_PREFIX} Scheduled cleanup of {} lab {} for user {} ({} VM{}) at {}",
                    match session.lab_type() {
                        crate::session::LabType::SingleVm => "single VM",
                        crate::session::LabType::MultiNode => "multi-node",
                    },
                    session.lab_request_id,
                    session.user_id,
                    session.vm_count(),
                    if session.vm_count() == 1 { "" } else { "s" },
                    rfc3339(session.expires_at_ms)
                );
                respond::json(201, &session.view())
            }
            // A retried POST of the same lab: answer with the current state, change nothing
            // (in particular, do not push the expiry back).
            Some(existing)
                if existing.status == Status::Scheduled && existing.same_request(&new) =>
            {
                respond::json(200, &existing.view())
            }
            Some(existing) if existing.status != Status::Scheduled => {
                respond::error(&ApiError::Conflict(format!(
                    "lab {} is already {}; it cannot be scheduled again",
                    existing.lab_request_id,
                    status_text(existing.status)
                )))
            }
            Some(existing) => respond::error(&ApiError::Conflict(format!(
                "lab {} is already scheduled with a different user_id, worker_nodes or duration",
                existing.lab_request_id
            ))),
        }
    }

    async fn run_alarm(&self) -> Result<()> {
        let now = now_ms();
        let Some(mut session) = self.load().await? else {
            console_warn!("{LOG_PREFIX} Alarm fired for an object with no session; nothing to do");
            return Ok(());
        };
        if session.status == Status::Completed {
            // At-least-once delivery: a repeated alarm must not delete anything again.
            console_log!(
                "{LOG_PREFIX} Alarm for lab {}: cleanup already completed, nothing to do",
                session.lab_request_id
            );
            return Ok(());
        }
        if !session.is_expired(now) {
            // Never delete before the lab's time is up: put the alarm back at the expiry.
            console_warn!(
                "{LOG_PREFIX} Alarm for lab {} fired before its expiry {}; re-armed",
                session.lab_request_id,
                rfc3339(session.expires_at_ms)
            );
            return self
                .storage()
                .set_alarm(alarm_time(session.expires_at_ms))
                .await;
        }
        let config = match Config::from_env(&self.env) {
            Ok(config) => config,
            Err(e) => {
                // Never give up on a lab: say what is wrong and look again later.
                let retry_at = now + (DEFAULT_CLEANUP_RETRY_SECONDS * 1000) as i64;
                console_error!(
                    "{LOG_PREFIX} Cannot clean up lab {}: configuration error: {e}; trying again at {}",
                    session.lab_request_id,
                    rfc3339(retry_at)
                );
                return self.storage().set_alarm(alarm_time(retry_at)).await;
            }
        };

        // Plan the next attempt before doing anything, so an attempt cut short is resumed.
        session.begin_attempt(now, config.retry_ms());
        let next_attempt = session
            .next_attempt_at_ms
            .unwrap_or(now + config.retry_ms());
        self.save_with_alarm(&session, next_attempt).await?;

        let backend = HttpLabBackend::new(&config);
        let result = cleanup::run_attempt(
            &session,
            &backend,
            &ConsoleLogger,
            config.cleanup_concurrency,
        )
        .await;
        session.finish_attempt(&result.deleted, result.outcome, now_ms(), config.retry_ms());

        match session.next_attempt_at_ms {
            Some(next) if session.status == Status::Retrying => {
                ConsoleLogger.log(
                    Level::Warn,
                    &cleanup::retry_line(&session, config.cleanup_retry_seconds),
                );
                self.save_with_alarm(&session, next).await
            }
            _ => self.save_without_alarm(&session).await,
        }
    }
}

fn status_text(status: Status) -> &'static str {
    match status {
        Status::Scheduled => "scheduled",
        Status::CleaningUp => "being cleaned up",
        Status::Retrying => "being cleaned up (retrying)",
        Status::Completed => "cleaned up",
    }
}

impl DurableObject for SessionManager {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, request: Request) -> Result<Response> {
        let path = request.path();
        match (request.method(), path.as_str()) {
            (worker::Method::Post, CREATE_PATH) => self.create(request).await,
            _ => respond::error(&ApiError::NotFound(format!("no internal route for {path}"))),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        // Backend faults are handled inside the attempt; only storage errors reach here, and
        // returning them lets the platform retry the alarm.
        self.run_alarm().await?;
        Response::empty()
    }
}
