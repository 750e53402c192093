//! The `SessionManager` Durable Object: one per lab, it stores the session and runs the cleanup from its alarm.
//!
//! Thin glue: state transitions live in `lab::session`, the cleanup in `lab::cleanup`, the
//! timing in `lab::retry` and `lab::wake`, the index row in `lab::index`; storage in `store`,
//! D1 in `index`, HTTP in `backend`.

use std::rc::Rc;

use futures::stream::{self, StreamExt};

use worker::{durable_object, DurableObject, Env, Method, Request, Response, Result, State};

use crate::api::error::ApiError;
use crate::api::respond;
use crate::config::{Config, Webhooks, DEFAULT_CLEANUP_RETRY_SECONDS};
use crate::lab::cleanup::{self, AttemptPlan, Level, Logger, LOG_PREFIX};
use crate::lab::index;
use crate::lab::legacy::LegacyProblem;
use crate::lab::retry;
use crate::lab::session::NewSession;
use crate::lab::session::{rfc3339, LabType, Refusal, Session, Status};
use crate::lab::wake;
use crate::lab::webhook::{self, AfterDelivery, EventType};
use crate::platform::backend::{DryRunBackend, HttpLabBackend};
use crate::platform::index as fleet_index;
use crate::platform::runtime::{
    console, log_object, now_ms, random, ConsoleLogger, WorkersRuntime,
};
use crate::platform::store::{Store, Stored};
use crate::platform::webhooks;

/// Internal paths the router forwards validated requests to.
pub const CREATE_PATH: &str = "/create";
pub const STATUS_PATH: &str = "/status";
pub const END_PATH: &str = "/end";
pub const EXTEND_PATH: &str = "/extend";
pub const RETRY_PATH: &str = "/retry";

#[durable_object]
pub struct SessionManager {
    state: State,
    /// The runtime's storage API, which `Store` calls directly.
    storage: worker::worker_sys::DurableObjectStorage,
    env: Env,
}

/// What a request or an alarm finds in the object, once a legacy record has been adopted.
enum Found {
    Session(Box<Session>),
    /// The TypeScript worker's keys, unreadable; kept as they are (see `lab::legacy`).
    Unreadable(Vec<LegacyProblem>),
    Nothing,
}

impl SessionManager {
    /// Saves a change of the record: a new revision (its index row is owed from now on) and the
    /// alarm at the object's next wake-up, in one batch.
    async fn persist(&self, store: &Store, session: &mut Session, config: &Config) -> Result<()> {
        if config.fleet_index {
            index::touch(session, now_ms(), config.retry_ms());
        }
        store.save(session, alarm_at(session, config)).await
    }

    /// A request's change of the record: saved (with its alarm), answered with the lab's status
    /// view, and `line` logged after the answer.
    async fn save_and_answer(
        &self,
        store: &Store,
        mut session: Session,
        config: Rc<Config>,
        status: u16,
        line: String,
    ) -> Result<Response> {
        self.persist(store, &mut session, &config).await?;
        let answer = respond::json(status, &session.view());
        self.after_answer(line, config);
        answer
    }

    /// After the answer: logs `line` and brings the index row up to date. The answer never waits
    /// for either (a console line costs about as much as a create, and the index is a copy); a
    /// failed row write is remembered and repaired by the alarm.
    fn after_answer(&self, line: String, config: Rc<Config>) {
        let store = Store::new(&self.storage);
        let env = self.env.clone();
        self.state.wait_until(async move {
            worker::Delay::from(std::time::Duration::ZERO).await;
            console(Level::Info, &line);
            if let Err(e) = sync_index(&store, &env, &config).await {
                ConsoleLogger.log(
                    Level::Error,
                    &format!("writing the index row failed on storage: {e}"),
                );
            }
        });
    }

    fn config(&self) -> std::result::Result<Rc<Config>, ApiError> {
        crate::platform::env::config(&self.env).map_err(|e| {
            console(Level::Error, &format!("[config] {}", e.detail()));
            ApiError::from(e)
        })
    }

    /// Loads the session. A lab the TypeScript worker scheduled (its keys, no `session` record)
    /// is adopted first: written in this worker's format with its alarm, legacy keys removed, in
    /// one batch. Unreadable legacy keys are logged as an error, never dropped, and the alarm is
    /// kept (set `retry_ms` ahead if there is none) so the object looks again.
    async fn find(&self, store: &Store, config: Option<&Config>) -> Result<Found> {
        let record = match store.load().await? {
            Stored::Session(session) => return Ok(Found::Session(session)),
            Stored::Empty => return Ok(Found::Nothing),
            Stored::Legacy(record) => record,
        };
        let now = now_ms();
        let alarm = store.alarm().await?;
        // Broken settings never stop an adoption: the defaults apply.
        let defaults;
        let config = match config {
            Some(config) => config,
            None => {
                defaults = Config::defaults();
                &defaults
            }
        };
        let retry_ms = config.retry_ms();
        match record.adopt(alarm, now, &config.adoption_rules()) {
            Ok(mut session) => {
                index::touch(&mut session, now, retry_ms);
                let timing = config.timing();
                store
                    .adopt(&session, wake::next_wake(&session, &timing).unwrap_or(now))
                    .await?;
                ConsoleLogger.log(Level::Info, &format!(
                    "Adopted lab {} of user {} ({} VM{}) from the previous worker's storage; expires at {}",
                    session.lab_request_id,
                    session.user_id,
                    session.vm_count(),
                    if session.vm_count() == 1 { "" } else { "s" },
                    rfc3339(session.expires_at_ms)
                ));
                Ok(Found::Session(Box::new(session)))
            }
            Err(problems) => {
                let retry_at = match alarm {
                    Some(at) => at,
                    None => {
                        let at = now.saturating_add(retry_ms);
                        store.set_alarm(at).await?;
                        at
                    }
                };
                let named: Vec<String> = problems.iter().map(ToString::to_string).collect();
                let lab = record.label();
                ConsoleLogger.log(Level::Error, &format!(
                    "❌ The previous worker's record{lab} is unreadable: {}; it is kept as it is, looking again at {}",
                    named.join("; "),
                    rfc3339(retry_at)
                ));
                Ok(Found::Unreadable(problems))
            }
        }
    }

    /// `find` for a request: a session, or the answer to give when there is none.
    async fn find_for_request(
        &self,
        store: &Store,
        config: Option<&Config>,
    ) -> Result<std::result::Result<Option<Session>, Response>> {
        Ok(match self.find(store, config).await? {
            Found::Session(session) => Ok(Some(*session)),
            Found::Nothing => Ok(None),
            Found::Unreadable(problems) => Err(unreadable(&problems)?),
        })
    }

    /// The settings and the lab a request is about, or the answer when there is none (a
    /// configuration error, no such lab, an unreadable legacy record).
    async fn lab(
        &self,
        store: &Store,
    ) -> Result<std::result::Result<(Rc<Config>, Session), Response>> {
        let config = match self.config() {
            Ok(config) => config,
            Err(e) => return Ok(Err(respond::error(&e)?)),
        };
        Ok(match self.find_for_request(store, Some(&config)).await? {
            Ok(Some(session)) => Ok((config, session)),
            Ok(None) => Err(not_found()?),
            Err(answer) => Err(answer),
        })
    }

    async fn create(&self, store: &Store, new: NewSession) -> Result<Response> {
        let config = match self.config() {
            Ok(config) => config,
            Err(e) => return respond::error(&e),
        };
        let existing = match self.find_for_request(store, Some(&config)).await? {
            Ok(existing) => existing,
            Err(answer) => return Ok(answer),
        };
        match existing {
            None => {
                let lifetime = config.duration_ms(new.duration);
                let mut session = Session::schedule(new, now_ms(), lifetime);
                session.start_delay_ms = retry::first_attempt_delay(
                    config.retry_policy,
                    config.expiry_spread_ms(),
                    random(),
                );
                let line = format!(
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
                self.save_and_answer(store, session, config, 201, line)
                    .await
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
        let config = self.config().ok();
        match self.find_for_request(store, config.as_deref()).await? {
            Ok(Some(session)) => respond::json(200, &session.view()),
            Ok(None) => not_found(),
            Err(answer) => Ok(answer),
        }
    }

    async fn end(&self, store: &Store) -> Result<Response> {
        let (config, mut session) = match self.lab(store).await? {
            Ok(found) => found,
            Err(answer) => return Ok(answer),
        };
        if session.status == Status::Completed {
            return respond::json(200, &session.view());
        }
        if !session.end_now(now_ms()) {
            return respond::json(202, &session.view());
        }
        let line = format!(
            "{LOG_PREFIX} Lab {} ended by request; cleanup starts now",
            session.lab_request_id
        );
        self.save_and_answer(store, session, config, 202, line)
            .await
    }

    async fn retry(&self, store: &Store) -> Result<Response> {
        let (config, mut session) = match self.lab(store).await? {
            Ok(found) => found,
            Err(answer) => return Ok(answer),
        };
        match session.retry_now(now_ms()) {
            Ok(false) => respond::json(202, &session.view()),
            Ok(true) => {
                let line = format!(
                    "{LOG_PREFIX} Retry of lab {} requested by an operator; attempt {} starts now",
                    session.lab_request_id,
                    session.attempts + 1
                );
                self.save_and_answer(store, session, config, 202, line)
                    .await
            }
            Err(Refusal::Conflict(message)) | Err(Refusal::Invalid(message)) => {
                respond::error(&ApiError::Conflict(message))
            }
        }
    }

    async fn extend(&self, store: &Store, minutes: u64) -> Result<Response> {
        let (config, mut session) = match self.lab(store).await? {
            Ok(found) => found,
            Err(answer) => return Ok(answer),
        };
        match session.extend(
            minutes,
            config.duration_unit_ms(),
            config.max_duration_minutes,
        ) {
            Ok(()) => {
                let line = format!(
                    "{LOG_PREFIX} Lab {} extended by {minutes} minutes; now expires at {}",
                    session.lab_request_id,
                    rfc3339(session.expires_at_ms)
                );
                self.save_and_answer(store, session, config, 200, line)
                    .await
            }
            Err(Refusal::Conflict(message)) => respond::error(&ApiError::Conflict(message)),
            Err(Refusal::Invalid(message)) => respond::error(&ApiError::InvalidRequest(message)),
        }
    }

    async fn run_alarm(&self, store: &Store) -> Result<&'static str> {
        let now = now_ms();
        let config = crate::platform::env::config(&self.env);
        let mut session = match self.find(store, config.as_deref().ok()).await? {
            Found::Session(session) => *session,
            Found::Unreadable(_) => return Ok("unreadable legacy record, kept"),
            Found::Nothing => {
                ConsoleLogger.log(
                    Level::Error,
                    "❌ Alarm fired for an object that holds no session and no legacy record; nothing to clean up",
                );
                return Ok("no session");
            }
        };
        let config = match config {
            Ok(config) => config,
            Err(e) => {
                // Never give up on a lab: say what is wrong and look again later.
                let retry_at = now + (DEFAULT_CLEANUP_RETRY_SECONDS * 1000) as i64;
                ConsoleLogger.log(
                    Level::Error,
                    &format!(
                        "Alarm for lab {}: configuration error: {}; looking again at {}",
                        session.lab_request_id,
                        e.detail(),
                        rfc3339(retry_at)
                    ),
                );
                return store
                    .set_alarm(retry_at)
                    .await
                    .map(|()| "configuration error");
            }
        };
        if let Webhooks::Broken(e) = &config.webhooks {
            ConsoleLogger.log(
                Level::Error,
                &format!(
                "Webhooks are misconfigured: {}; no event is sent for lab {}, its cleanup goes on",
                e.detail(),
                session.lab_request_id
            ),
            );
        }
        let timing = config.timing();
        let due = wake::due(&session, now, &timing);
        if due.purge {
            return self.purge(store, session, &config).await;
        }
        if !due.any() {
            let Some(at_ms) = alarm_at(&session, &config) else {
                return Ok("nothing left to do");
            };
            if session.status != Status::Completed {
                ConsoleLogger.log(Level::Warn, &format!(
                    "Alarm for lab {} fired before anything was due; nothing deleted, re-armed for {}",
                    session.lab_request_id,
                    rfc3339(at_ms)
                ));
            }
            return store
                .set_alarm(at_ms)
                .await
                .map(|()| "nothing due, re-armed");
        }
        let mut done = "index row written";
        if due.warn {
            session.warned_for_expiry_ms = Some(session.expires_at_ms);
            queue_event(&mut session, EventType::Expiring, now);
            store.save(&session, alarm_at(&session, &config)).await?;
            done = "lab.expiring queued";
        }
        if due.attempt {
            self.attempt(store, session, &config, now).await?;
            done = "cleanup attempt";
        } else if due.index {
            sync_index(store, &self.env, &config).await?;
        }
        if due.deliver || due.warn || due.attempt {
            self.deliver_in_background(config.clone());
        }
        Ok(done)
    }

    /// One cleanup attempt, from the mark that plans its successor to the index row that
    /// reports it, and the events it calls for.
    async fn attempt(
        &self,
        store: &Store,
        mut session: Session,
        config: &Config,
        now: i64,
    ) -> Result<()> {
        // Plan the next attempt before doing anything, so an attempt cut short (eviction, crash)
        // is resumed by that alarm; a finished attempt replaces it below.
        session.begin_attempt(now, config.retry_ms());
        self.persist(store, &mut session, config).await?;

        let plan = AttemptPlan {
            policy: config.retry_policy,
            // After a refusal, one deletion at a time: the backend is behind.
            concurrency: if session.refused_last_attempt
                && config.retry_policy == retry::Policy::Adaptive
            {
                1
            } else {
                config.cleanup_concurrency
            },
            spare_calls: spare_calls(&session, config),
        };
        let result = if config.dry_run {
            session.dry_run = true;
            let backend = DryRunBackend::new(&config.backend_url, &ConsoleLogger);
            cleanup::run_attempt(&session, &backend, &WorkersRuntime, &ConsoleLogger, plan).await
        } else {
            let backend = HttpLabBackend::new(config);
            cleanup::run_attempt(&session, &backend, &WorkersRuntime, &ConsoleLogger, plan).await
        };
        let done_at = now_ms();
        let next = retry::next_attempt_at(
            config.retry_policy,
            result.ending,
            done_at,
            config.retry_ms(),
            random(),
        );
        session.finish_attempt(&result, done_at, next.unwrap_or(done_at));
        log_object(&cleanup::attempt_record(&session, &result, done_at - now));
        if session.every_call_answered_404() {
            ConsoleLogger.log(Level::Error, &cleanup::all_404_line(&session));
        }
        if session.status == Status::Retrying {
            ConsoleLogger.log(
                Level::Warn,
                &cleanup::retry_line(&session, done_at, result.ending),
            );
        }
        if matches!(config.webhooks, Webhooks::On(_)) {
            for kind in webhook::after_attempt(&mut session, config.stuck_after_attempts) {
                queue_event(&mut session, kind, done_at);
            }
        }
        self.persist(store, &mut session, config).await?;
        // The row after the deletions, never before them: the index never holds up a cleanup.
        sync_index(store, &self.env, config).await
    }

    /// Delivers the due webhook events after the alarm's own work, in the background: a receiver
    /// that is slow or down never holds a cleanup, its retries, or the next alarm.
    fn deliver_in_background(&self, config: Rc<Config>) {
        if !matches!(config.webhooks, Webhooks::On(_)) {
            return;
        }
        let store = Store::new(&self.storage);
        self.state.wait_until(async move {
            if let Err(e) = deliver_due(&store, &config).await {
                ConsoleLogger.log(
                    Level::Error,
                    &format!("webhook deliveries stopped on a storage error: {e}"),
                );
            }
        });
    }

    /// The end of retention: the lab's index row is deleted, then everything the object holds.
    /// A failed row delete keeps the record and tries again `CLEANUP_RETRY_SECONDS` later, so the
    /// index never keeps a row for a lab the object has forgotten.
    async fn purge(
        &self,
        store: &Store,
        mut session: Session,
        config: &Config,
    ) -> Result<&'static str> {
        if !config.fleet_index {
            ConsoleLogger.log(
                Level::Info,
                &format!(
                    "Retention over for lab {} (completed {}); record deleted",
                    session.lab_request_id,
                    session.completed_at_ms.map(rfc3339).unwrap_or_default()
                ),
            );
            return store.delete_all().await.map(|()| "retention purge");
        }
        match fleet_index::delete(
            &self.env,
            &session.lab_request_id,
            session.revision,
            index_timeout(config),
        )
        .await
        {
            Ok(()) => {
                ConsoleLogger.log(
                    Level::Info,
                    &format!(
                        "Retention over for lab {} (completed {}); record and index row deleted",
                        session.lab_request_id,
                        session.completed_at_ms.map(rfc3339).unwrap_or_default()
                    ),
                );
                store.delete_all().await.map(|()| "retention purge")
            }
            Err(e) => {
                let again = now_ms().saturating_add(config.retry_ms());
                ConsoleLogger.log(Level::Warn, &format!(
                    "Retention over for lab {}, but its index row could not be deleted ({e}); record kept, trying again at {}",
                    session.lab_request_id,
                    rfc3339(again)
                ));
                session.index.delete_retry_at_ms = Some(again);
                store
                    .save(&session, alarm_at(&session, config))
                    .await
                    .map(|()| "purge held: index row delete failed")
            }
        }
    }
}

/// Most deliveries one wake-up starts (the rest wait for the next one, a moment later).
const MAX_DELIVERIES_PER_WAKE: usize = 10;
/// Deliveries in flight at once: the platform's limit on simultaneous outbound connections.
const DELIVERY_CONCURRENCY: usize = crate::config::MAX_CONCURRENT_CONNECTIONS;

/// Adds a new event of `kind` to the lab's outbox, due now; its body is fixed now.
fn queue_event(session: &mut Session, kind: EventType, now: i64) {
    // 128 random bits: unique per event, the same on every redelivery of it.
    let id = format!(
        "msg_{:08x}{:08x}{:08x}{:08x}",
        (random() * 4_294_967_296.0) as u32,
        (random() * 4_294_967_296.0) as u32,
        (random() * 4_294_967_296.0) as u32,
        (random() * 4_294_967_296.0) as u32
    );
    let event = webhook::new_event(kind, session, now, id);
    ConsoleLogger.log(
        Level::Info,
        &format!(
            "Event {} ({}) for lab {} queued for delivery",
            event.event_type, event.id, session.lab_request_id
        ),
    );
    session.outbox.push(event);
}

/// Delivers the outbox events that are due, and records how each went: delivered (off the
/// outbox), to be tried again later, or dropped after the maximum age (an error line naming it).
/// Events being delivered are held back first, so a wake-up meanwhile does not send them again.
async fn deliver_due(store: &Store, config: &Config) -> Result<()> {
    let Webhooks::On(hooks) = &config.webhooks else {
        return Ok(());
    };
    let Stored::Session(mut session) = store.load().await? else {
        return Ok(());
    };
    let now = now_ms();
    let due: Vec<webhook::OutboxEvent> = session
        .outbox
        .iter()
        .filter(|e| e.next_at_ms <= now)
        .take(MAX_DELIVERIES_PER_WAKE)
        .cloned()
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let timeout = index_timeout(config);
    let held_until = now.saturating_add(timeout.as_millis() as i64 + 1_000);
    for event in session.outbox.iter_mut() {
        if due.iter().any(|d| d.id == event.id) {
            event.next_at_ms = held_until;
        }
    }
    store.save(&session, alarm_at(&session, config)).await?;

    let now_secs = now / 1000;
    let results: Vec<(String, std::result::Result<u16, String>)> = stream::iter(due.iter())
        .map(|event| async move {
            (
                event.id.clone(),
                webhooks::deliver(hooks, event, now_secs, timeout).await,
            )
        })
        .buffer_unordered(DELIVERY_CONCURRENCY)
        .collect()
        .await;

    let Stored::Session(mut session) = store.load().await? else {
        return Ok(());
    };
    let at = now_ms();
    for (id, result) in results {
        let Some(position) = session.outbox.iter().position(|e| e.id == id) else {
            continue;
        };
        let event = &mut session.outbox[position];
        match webhook::after_delivery(event, result, at, &hooks.schedule) {
            AfterDelivery::Delivered => {
                ConsoleLogger.log(
                    Level::Info,
                    &format!(
                        "Event {} ({id}) for lab {} delivered (delivery {})",
                        event.event_type, session.lab_request_id, event.attempts
                    ),
                );
                session.outbox.remove(position);
            }
            AfterDelivery::RetryAt(next) => ConsoleLogger.log(
                Level::Warn,
                &format!(
                    "Event {} ({id}) for lab {} not delivered ({}); delivery {} at {}",
                    event.event_type,
                    session.lab_request_id,
                    event.last_error.as_deref().unwrap_or("?"),
                    event.attempts + 1,
                    rfc3339(next)
                ),
            ),
            AfterDelivery::Dropped => {
                ConsoleLogger.log(Level::Error, &format!(
                    "❌ Event {} ({id}) for lab {} dropped: not delivered in {} attempts over {} s (last: {})",
                    event.event_type,
                    session.lab_request_id,
                    event.attempts,
                    hooks.schedule.max_age_ms / 1000,
                    event.last_error.as_deref().unwrap_or("?")
                ));
                session.outbox.remove(position);
            }
        }
    }
    store.save(&session, alarm_at(&session, config)).await
}

/// How long the object waits for the index before counting the write as failed.
fn index_timeout(config: &Config) -> std::time::Duration {
    std::time::Duration::from_secs(config.backend_timeout_seconds)
}

/// Writes the lab's index row if the index is behind the record, and records how that went: a
/// success marks the revision written; a failure is logged and tried again by the alarm within
/// `CLEANUP_RETRY_SECONDS`. Only storage errors are returned: the index never fails a cleanup or
/// an answer.
async fn sync_index(store: &Store, env: &Env, config: &Config) -> Result<()> {
    if !config.fleet_index {
        return Ok(());
    }
    let Stored::Session(session) = store.load().await? else {
        return Ok(());
    };
    if !index::owed(&session) {
        return Ok(());
    }
    let row = index::row(&session, now_ms());
    let written = fleet_index::upsert(env, &row, index_timeout(config)).await;
    // Read again: a request may have changed the record while the row was being written.
    let Stored::Session(mut latest) = store.load().await? else {
        return Ok(());
    };
    match written {
        Ok(()) => index::confirmed(&mut latest, row.revision),
        Err(e) => {
            let again = now_ms().saturating_add(config.retry_ms());
            ConsoleLogger.log(Level::Warn, &format!(
                "The index row of lab {} could not be written ({e}); the lab is unaffected, trying again at {}",
                latest.lab_request_id,
                rfc3339(again)
            ));
            index::write_failed(&mut latest, now_ms(), config.retry_ms());
        }
    }
    store.save(&latest, alarm_at(&latest, config)).await
}

/// Backend calls an attempt may make beyond one per planned call (the reconnects of calls whose
/// connection failed), within the invocation's subrequest limit.
fn spare_calls(session: &Session, config: &Config) -> usize {
    let planned = session.pending().len() as u64 + 1;
    config.subrequest_limit.saturating_sub(planned) as usize
}

/// When the object's alarm must fire for `session` (`None`: nothing left to do).
fn alarm_at(session: &Session, config: &Config) -> Option<i64> {
    wake::next_wake(session, &config.timing())
}

/// The answer to a request that meets an unreadable legacy record.
fn unreadable(problems: &[LegacyProblem]) -> Result<Response> {
    let named: Vec<String> = problems.iter().map(ToString::to_string).collect();
    respond::error(&ApiError::Internal(format!(
        "this lab's record from the previous worker is unreadable ({}); it is kept and looked at again; see the worker's logs",
        named.join("; ")
    )))
}

fn not_found() -> Result<Response> {
    respond::error(&ApiError::NotFound(
        "no session with this lab_request_id".into(),
    ))
}

/// Reads a JSON body sent by the router; a bad one is the router's bug, answered as a 400. Read
/// as text and parsed by serde_json: cheaper in wasm than `Request::json` (a JavaScript parse,
/// then a conversion of every value across the boundary).
async fn body<T: serde::de::DeserializeOwned>(
    mut request: Request,
) -> std::result::Result<T, Result<Response>> {
    let unreadable = |e: String| {
        respond::error(&ApiError::InvalidRequest(format!(
            "unreadable internal request: {e}"
        )))
    };
    let text = request
        .text()
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))
}

/// The body of an internal extend request.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ExtendBy {
    pub minutes: u64,
}

impl DurableObject for SessionManager {
    fn new(state: State, env: Env) -> Self {
        let raw = state._inner();
        let storage = raw.storage().expect("a Durable Object always has storage");
        Self {
            state: State::from(raw),
            storage,
            env,
        }
    }

    async fn fetch(&self, request: Request) -> Result<Response> {
        let path = request.path();
        let store = Store::new(&self.storage);
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
            (Method::Post, RETRY_PATH) => self.retry(&store).await,
            _ => respond::error(&ApiError::NotFound(format!("no internal route for {path}"))),
        };
        if self.config().is_ok_and(|c| c.log_storage_ops) {
            store.report(&path);
        }
        answer
    }

    async fn alarm(&self) -> Result<Response> {
        // Backend faults are handled inside the attempt; only storage errors reach here, and
        // returning them lets the platform retry the alarm.
        let store = Store::new(&self.storage);
        let done = self.run_alarm(&store).await;
        if self.config().is_ok_and(|c| c.log_storage_ops) {
            store.report(&format!(
                "alarm ({})",
                done.as_ref().map_or("storage error", |what| *what)
            ));
        }
        done?;
        Response::empty()
    }
}
