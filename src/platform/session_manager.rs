//! The `SessionManager` Durable Object: one per lab, it stores the session and runs the cleanup from its alarm.
//!
//! Thin glue: state transitions live in `session`, the cleanup in `cleanup`, HTTP in `backend`.

use std::cell::Cell;

use chrono::{DateTime, Utc};
use worker::{
    console_debug, console_error, console_log, console_warn, durable_object, DurableObject, Env,
    Method, Request, Response, Result, State, Storage,
};

use crate::api::error::ApiError;
use crate::api::respond;
use crate::config::{Config, DEFAULT_CLEANUP_RETRY_SECONDS};
use crate::lab::cleanup::{self, Level, Logger, LOG_PREFIX};
use crate::lab::session::NewSession;
use crate::lab::session::{rfc3339, AlarmAction, LabType, Refusal, Session, Status};
use crate::platform::backend::{DryRunBackend, HttpLabBackend};

/// Storage key of the session record (one JSON string, written in one operation).
const SESSION_KEY: &str = "session";
/// Internal paths the router forwards validated requests to.
pub const CREATE_PATH: &str = "/create";
pub const STATUS_PATH: &str = "/status";
pub const END_PATH: &str = "/end";
pub const EXTEND_PATH: &str = "/extend";

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
    fn config(&self) -> std::result::Result<Config, ApiError> {
        Ok(Config::from_env(&self.env)?)
    }

    async fn create(&self, store: &Store, new: NewSession) -> Result<Response> {
        let config = match self.config() {
            Ok(config) => config,
            Err(e) => return respond::error(&e),
        };
        match store.load().await? {
            None => {
                let lifetime = config.duration_ms(new.duration);
                let session = Session::schedule(new, now_ms(), lifetime);
                store.save(&session, config.retention_ms()).await?;
                console_log!(
                    "{LOG_PREFIX} Scheduled cleanup of {} lab {} for user {} ({} VM{}) at {}",
                    match session.lab_type() {
                        LabType::SingleVm => "single VM",
                        LabType::MultiNode => "multi-node",
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
                    "lab {} is {}; it cannot be scheduled again",
                    existing.lab_request_id,
                    existing.status.describe()
                )))
            }
            Some(existing) => respond::error(&ApiError::Conflict(format!(
                "lab {} is already scheduled with a different user_id, worker_nodes or duration",
                existing.lab_request_id
            ))),
        }
    }

    async fn status(&self, store: &Store) -> Result<Response> {
        match store.load().await? {
            Some(session) => respond::json(200, &session.view()),
            None => not_found(),
        }
    }

    async fn end(&self, store: &Store) -> Result<Response> {
        let Some(mut session) = store.load().await? else {
            return not_found();
        };
        if session.status == Status::Completed {
            return respond::json(200, &session.view());
        }
        if session.end_now(now_ms()) {
            let config = match self.config() {
                Ok(config) => config,
                Err(e) => return respond::error(&e),
            };
            store.save(&session, config.retention_ms()).await?;
            console_log!(
                "{LOG_PREFIX} Lab {} ended by request; cleanup starts now",
                session.lab_request_id
            );
        }
        respond::json(202, &session.view())
    }

    async fn extend(&self, store: &Store, minutes: u64) -> Result<Response> {
        let config = match self.config() {
            Ok(config) => config,
            Err(e) => return respond::error(&e),
        };
        let Some(mut session) = store.load().await? else {
            return not_found();
        };
        match session.extend(
            minutes,
            config.duration_unit_ms(),
            config.max_duration_minutes,
        ) {
            Ok(()) => {
                store.save(&session, config.retention_ms()).await?;
                console_log!(
                    "{LOG_PREFIX} Lab {} extended by {minutes} minutes; now expires at {}",
                    session.lab_request_id,
                    rfc3339(session.expires_at_ms)
                );
                respond::json(200, &session.view())
            }
            Err(Refusal::Conflict(message)) => respond::error(&ApiError::Conflict(message)),
            Err(Refusal::Invalid(message)) => respond::error(&ApiError::InvalidRequest(message)),
        }
    }

    async fn run_alarm(&self, store: &Store) -> Result<&'static str> {
        let now = now_ms();
        let Some(mut session) = store.load().await? else {
            console_warn!("{LOG_PREFIX} Alarm fired for an object with no session; nothing to do");
            return Ok("no session");
        };
        let config = match Config::from_env(&self.env) {
            Ok(config) => config,
            Err(e) => {
                // Never give up on a lab: say what is wrong and look again later.
                let retry_at = now + (DEFAULT_CLEANUP_RETRY_SECONDS * 1000) as i64;
                console_error!(
                    "{LOG_PREFIX} Alarm for lab {}: configuration error: {e}; looking again at {}",
                    session.lab_request_id,
                    rfc3339(retry_at)
                );
                return store
                    .set_alarm(retry_at)
                    .await
                    .map(|()| "configuration error");
            }
        };
        match session.on_alarm(now, config.retention_ms()) {
            AlarmAction::Attempt => {}
            AlarmAction::Early { at_ms } => {
                console_warn!(
                    "{LOG_PREFIX} Alarm for lab {} fired before {}; nothing deleted, re-armed",
                    session.lab_request_id,
                    rfc3339(at_ms)
                );
                return store.set_alarm(at_ms).await.map(|()| "early, re-armed");
            }
            AlarmAction::AwaitPurge { at_ms } => {
                return store
                    .set_alarm(at_ms)
                    .await
                    .map(|()| "completed, re-armed for purge");
            }
            AlarmAction::Purge => {
                console_log!(
                    "{LOG_PREFIX} Retention over for lab {} (completed {}); record deleted",
                    session.lab_request_id,
                    session.completed_at_ms.map(rfc3339).unwrap_or_default()
                );
                return store.delete_all().await.map(|()| "retention purge");
            }
        }

        // Plan the next attempt before doing anything, so an attempt cut short (eviction, crash)
        // is resumed by that alarm; a finished attempt replaces it below.
        session.begin_attempt(now, config.retry_ms());
        store.save(&session, config.retention_ms()).await?;

        let concurrency = config.cleanup_concurrency;
        let result = if config.dry_run {
            session.dry_run = true;
            let backend = DryRunBackend::new(&config.backend_url, &ConsoleLogger);
            cleanup::run_attempt(&session, &backend, &ConsoleLogger, concurrency).await
        } else {
            let backend = HttpLabBackend::new(&config);
            cleanup::run_attempt(&session, &backend, &ConsoleLogger, concurrency).await
        };
        session.finish_attempt(&result.deleted, result.outcome, now_ms(), config.retry_ms());
        if session.status == Status::Retrying {
            ConsoleLogger.log(
                Level::Warn,
                &cleanup::retry_line(&session, config.cleanup_retry_seconds),
            );
        }
        store
            .save(&session, config.retention_ms())
            .await
            .map(|()| "cleanup attempt")
    }
}

/// The object's storage as one request or alarm uses it: the only code that reads or writes it,
/// counting its operations (reported at debug level, and measured by the benchmark).
struct Store {
    storage: Storage,
    reads: Cell<u32>,
    writes: Cell<u32>,
}

impl Store {
    fn new(state: &State) -> Self {
        Self {
            storage: state.storage(),
            reads: Cell::new(0),
            writes: Cell::new(0),
        }
    }

    fn count(cell: &Cell<u32>, n: u32) {
        cell.set(cell.get() + n);
    }

    async fn load(&self) -> Result<Option<Session>> {
        Self::count(&self.reads, 1);
        match self.storage.get::<String>(SESSION_KEY).await? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                worker::Error::RustError(format!("stored session is unreadable: {e}"))
            }),
        }
    }

    /// Writes the record and the alarm its state calls for in one batch: both calls are issued
    /// in the same turn, so the runtime coalesces them into one atomic write.
    async fn save(&self, session: &Session, retention_ms: i64) -> Result<()> {
        let alarm_at = session.alarm_at_ms(retention_ms).unwrap_or_else(now_ms);
        let text = serde_json::to_string(session)?;
        Self::count(&self.writes, 2);
        let (put, alarm) = futures::join!(
            self.storage.put(SESSION_KEY, text),
            self.storage.set_alarm(alarm_time(alarm_at))
        );
        put.and(alarm)
    }

    async fn set_alarm(&self, at_ms: i64) -> Result<()> {
        Self::count(&self.writes, 1);
        self.storage.set_alarm(alarm_time(at_ms)).await
    }

    /// Forgets everything, alarm included (`deleteAll()` removes the alarm too for compatibility
    /// dates from 2026-02-24).
    async fn delete_all(&self) -> Result<()> {
        Self::count(&self.writes, 1);
        self.storage.delete_all().await
    }

    fn report(&self, what: &str) {
        console_debug!(
            "{LOG_PREFIX} storage ops for {what}: {} read(s), {} write(s)",
            self.reads.get(),
            self.writes.get()
        );
    }
}

fn not_found() -> Result<Response> {
    respond::error(&ApiError::NotFound(
        "no session with this lab_request_id".into(),
    ))
}

/// Reads a JSON body sent by the router; a bad one is the router's bug, answered as a 400.
async fn body<T: serde::de::DeserializeOwned>(
    mut request: Request,
) -> std::result::Result<T, Result<Response>> {
    request.json().await.map_err(|e| {
        respond::error(&ApiError::InvalidRequest(format!(
            "unreadable internal request: {e}"
        )))
    })
}

/// The body of an internal extend request.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ExtendBy {
    pub minutes: u64,
}

impl DurableObject for SessionManager {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, request: Request) -> Result<Response> {
        let path = request.path();
        let store = Store::new(&self.state);
        let answer = match (request.method(), path.as_str()) {
            (Method::Post, CREATE_PATH) => match body::<NewSession>(request).await {
                Ok(new) => self.create(&store, new).await,
                Err(answer) => answer,
            },
            (Method::Get, STATUS_PATH) => self.status(&store).await,
            (Method::Post, END_PATH) => self.end(&store).await,
            (Method::Post, EXTEND_PATH) => match body::<ExtendBy>(request).await {
                Ok(by) => self.extend(&store, by.minutes).await,
                Err(answer) => answer,
            },
            _ => respond::error(&ApiError::NotFound(format!("no internal route for {path}"))),
        };
        store.report(&path);
        answer
    }

    async fn alarm(&self) -> Result<Response> {
        // Backend faults are handled inside the attempt; only storage errors reach here, and
        // returning them lets the platform retry the alarm.
        let store = Store::new(&self.state);
        let done = self.run_alarm(&store).await;
        store.report(&format!(
            "alarm ({})",
            done.as_ref().map_or("storage error", |what| *what)
        ));
        done?;
        Response::empty()
    }
}
