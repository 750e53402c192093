//! The object's alarm: what is due (the planner in `lab::wake` says), then the warning, the cleanup attempt, the index repair or the purge.

use crate::lab::cleanup::{self, Action, AttemptPlan};
use crate::lab::config::{ConfigError, Webhooks};
use crate::lab::index;
use crate::lab::invocation::Meter;
use crate::lab::link;
use crate::lab::ports::StoreError;
use crate::lab::procedures::record::{Found, Held};
use crate::lab::procedures::{Lab, Platform};
use crate::lab::retry;
use crate::lab::session::{
    AttemptResult, EndReason, Ending, Event, Kind, Session, Status, StopEnd,
};
use crate::lab::text::rfc3339;
use crate::lab::wake;
use crate::lab::webhook::{self, EventType};

/// How long an alarm waits for a create that is claiming its workers in the same object.
const CLAIMING_PAUSE_MS: i64 = 1_000;

/// What an alarm did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A cleanup attempt ran (after the warning, if that was due too).
    Attempt,
    /// `lab.expiring` or `lab.idle_warning` was queued.
    Warned,
    /// Activity noted in memory moved the idle deadline: written, nothing else was due.
    ActivityWritten,
    /// The index row was written again.
    IndexRepaired,
    /// Only deliveries were due (they run after the alarm, see `AlarmDone::deliver`).
    Deliveries,
    /// The end of retention: the record and its index row are gone.
    Purged,
    /// The end of retention, held: the index row could not be deleted.
    PurgeHeld,
    /// Nothing was due yet: the alarm is set again.
    NothingDue,
    /// The attempt fired late (a pause of the runtime): put off a little, spread with the
    /// others that fell due meanwhile.
    PutOff,
    /// Nothing is left to do.
    NothingLeft,
    /// The settings are broken: nothing done, the alarm set again.
    ConfigError,
    /// The object holds nothing.
    NoSession,
    /// The previous worker's record is unreadable; it is kept.
    Unreadable,
    /// The object holds a claim: the row of the orphan cleanup it cancelled was looked after.
    Claim,
}

impl Woke {
    /// In words, for the storage report.
    pub fn describe(self) -> &'static str {
        match self {
            Woke::Attempt => "cleanup attempt",
            Woke::Warned => "warning queued",
            Woke::ActivityWritten => "activity written, idle end moved",
            Woke::IndexRepaired => "index row written",
            Woke::Deliveries => "deliveries due",
            Woke::Purged => "retention purge",
            Woke::PurgeHeld => "purge held: index row delete failed",
            Woke::NothingDue => "nothing due, re-armed",
            Woke::PutOff => "late attempt put off, spread",
            Woke::NothingLeft => "nothing left to do",
            Woke::ConfigError => "configuration error",
            Woke::NoSession => "no session",
            Woke::Unreadable => "unreadable legacy record, kept",
            Woke::Claim => "claimed VM: index row of a cancelled orphan cleanup",
        }
    }
}

/// What an alarm did, and whether the webhook deliveries are to run after it
/// (`Lab::deliver_due`, in the background: a receiver never holds a cleanup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmDone {
    pub woke: Woke,
    pub deliver: bool,
}

impl AlarmDone {
    fn only(woke: Woke) -> AlarmDone {
        AlarmDone {
            woke,
            deliver: false,
        }
    }
}

impl<P: Platform> Lab<'_, P> {
    /// The alarm. Backend faults are handled inside the attempt; only storage errors are
    /// returned, so that the platform runs the alarm again.
    pub async fn alarm(&self) -> Result<AlarmDone, StoreError> {
        let now = self.platform.now_ms();
        let (mut session, held) = match self.found_for_alarm().await? {
            Ok(found) => found,
            Err(done) => return Ok(done),
        };
        // A create is claiming its workers in this object (it is replacing an orphan cleanup
        // that has not started): the cleanup waits for the create's answer.
        if !self.platform.claiming().is_empty() {
            self.platform
                .set_alarm(now.saturating_add(CLAIMING_PAUSE_MS))
                .await?;
            return Ok(AlarmDone::only(Woke::NothingDue));
        }
        if let Webhooks::Broken(e) = &self.config.webhooks {
            self.error(format!(
                "Webhooks are misconfigured: {}; no event is sent for lab {}, its cleanup goes on",
                e.detail(),
                session.lab_request_id
            ));
        }
        // The index row this object wrote since the last save, known from its memory alone: not
        // owed (the next save records it).
        index::confirmed(&mut session, self.platform.index_written());
        let timing = self.config.timing();
        if self.activity_first(&mut session, now, &timing).await? {
            return Ok(AlarmDone::only(Woke::ActivityWritten));
        }
        let due = wake::due(&session, now, &timing);
        if due.purge {
            return self.purge(session).await.map(AlarmDone::only);
        }
        if !due.any() {
            return self.rearm(&session).await;
        }
        if self.warns_first(due, now) {
            return self.warned_first(session, &held, due, now, &timing).await;
        }
        self.run_due(session, due, now, &timing).await
    }

    /// Whether warnings are all that is due at `now`, with webhooks on and room for their
    /// deliveries: then they are sent before the one save that records them (`warned_first`).
    fn warns_first(&self, due: wake::Due, now: i64) -> bool {
        let only_warnings = wake::Due {
            warn: due.warn,
            idle_warn: due.idle_warn,
            ..wake::Due::default()
        };
        matches!(self.config.webhooks, Webhooks::On(_))
            && only_warnings.any()
            && due == only_warnings
            && self.delivery_room(now) >= 2
    }

    /// Warnings alone: sent before the one save that records them, rather than queued in a save
    /// and their delivery recorded in another (2 storage rows a warning instead of 4;
    /// docs/PERFORMANCE.md, "Rows written per lab"). The alarm is set first for the wake-up
    /// after them: an invocation cut short while they are sent finds them due again there, and
    /// sends them with the same ids (`webhook::warning_id`). A request answered meanwhile (an
    /// extend, an end) saved the record: it is kept as that request left it, and a warning
    /// still due there is sent again by the alarm that request set, with its id.
    async fn warned_first(
        &self,
        mut session: Session,
        held: &Held,
        due: wake::Due,
        now: i64,
        timing: &wake::Timing,
    ) -> Result<AlarmDone, StoreError> {
        let Webhooks::On(hooks) = &self.config.webhooks else {
            return Ok(AlarmDone::only(Woke::Warned));
        };
        let p = self.platform;
        let queued = self.warn_due(&mut session, due, now, timing);
        p.set_queued_events(false);
        // The events this warning queued, out while the next wake-up is chosen as if they were
        // delivered.
        let (new, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut session.notices.outbox)
            .into_iter()
            .partition(|e| queued.contains(&e.id));
        session.notices.outbox = kept;
        if let Some(wake_at) = self.alarm_at(&session) {
            p.set_alarm(wake_at).await?;
        }
        let results = self.send_all(&session, &new, hooks, now).await;
        if !self.still(held).await? {
            return Ok(AlarmDone::only(Woke::Warned));
        }
        session.notices.outbox.extend(new);
        let done_at = p.now_ms();
        for (id, result) in results {
            self.after_delivery(&mut session, &id, result, done_at, &hooks.schedule);
        }
        self.save(&mut session).await?;
        Ok(AlarmDone::only(Woke::Warned))
    }

    /// Activity noted in memory and not written yet moves the idle deadline: it counts before
    /// anything is decided, and is written now if it matters. `true`: written, and then
    /// nothing else is due.
    async fn activity_first(
        &self,
        session: &mut Session,
        now: i64,
        timing: &wake::Timing,
    ) -> Result<bool, StoreError> {
        let noted = self.platform.noted_activity();
        let written = session.idle.last_activity_ms.unwrap_or(i64::MIN);
        let Some(noted) = noted.filter(|&n| n > written) else {
            return Ok(false);
        };
        let before = wake::due(session, now, timing);
        if !(before.idle_end || before.idle_warn) || session.status() != Status::Scheduled {
            return Ok(false);
        }
        session.idle.last_activity_ms = Some(noted);
        session.record(Kind::Activity, noted);
        if wake::due(session, now, timing).any() {
            return Ok(false);
        }
        self.save(session).await?;
        Ok(true)
    }

    /// Nothing is due yet (the alarm fired early, or a second time): set again for when
    /// something is.
    async fn rearm(&self, session: &Session) -> Result<AlarmDone, StoreError> {
        let Some(at_ms) = self.alarm_at(session) else {
            return Ok(AlarmDone::only(Woke::NothingLeft));
        };
        if session.status() != Status::Completed {
            self.warn(format!(
                "Alarm for lab {} fired before anything was due; nothing deleted, re-armed for {}",
                session.lab_request_id,
                rfc3339(at_ms)
            ));
        }
        self.platform.set_alarm(at_ms).await?;
        Ok(AlarmDone::only(Woke::NothingDue))
    }

    /// What is due, in order: the warnings, an idle end, the attempt (put off when it fires
    /// late) or the index row, and the deliveries.
    async fn run_due(
        &self,
        mut session: Session,
        mut due: wake::Due,
        now: i64,
        timing: &wake::Timing,
    ) -> Result<AlarmDone, StoreError> {
        let mut woke = Woke::Deliveries;
        if due.warn || due.idle_warn {
            self.warn_due(&mut session, due, now, timing);
            self.save(&mut session).await?;
            woke = Woke::Warned;
        }
        if due.idle_end {
            self.end_idle(&mut session, now).await?;
            due.attempt = true;
        } else if due.attempt {
            let late = wake::attempt_at(&session).map_or(0, |at| now.saturating_sub(at));
            let random = self.platform.random();
            if let Some(delay) = retry::late_start_delay(self.config.retry_policy, late, random) {
                if self.put_off(&mut session, now, late, delay).await? {
                    return Ok(AlarmDone {
                        woke: Woke::PutOff,
                        deliver: due.deliver || due.warn || due.idle_warn,
                    });
                }
            }
        }
        if due.attempt {
            self.attempt(session, now).await?;
            woke = Woke::Attempt;
        } else if due.index {
            self.sync_index().await?;
            if woke == Woke::Deliveries {
                woke = Woke::IndexRepaired;
            }
        }
        if woke == Woke::Deliveries {
            // Nothing else was due, and nothing was written: the deliveries run within the alarm,
            // not after it, so that a failure runs the alarm again (nothing else would: the
            // alarm is spent, and no save set another).
            self.deliver_due().await?;
            return Ok(AlarmDone::only(Woke::Deliveries));
        }
        Ok(AlarmDone {
            woke,
            deliver: due.deliver || due.warn || due.idle_warn || due.attempt,
        })
    }

    /// The lab saw no activity for its idle timeout: it ends now, and its cleanup starts.
    async fn end_idle(&self, session: &mut Session, now: i64) -> Result<(), StoreError> {
        let idle_for = session
            .idle
            .timeout_minutes
            .map(|m| crate::lab::text::duration_units(m, self.config.duration_unit_ms()))
            .unwrap_or_default();
        session.end_now(now);
        session.mark_ended(EndReason::Idle, now);
        self.info(format!(
            "Lab {} ended: no activity for {idle_for} (idle timeout); cleanup starts now",
            session.lab_request_id
        ));
        self.persist(session).await
    }

    /// Puts off an attempt that fired `late` ms past its time by `delay` (see
    /// `retry::late_start_delay`): the labs that fell due during a pause of the runtime start
    /// spread out, not in one burst. Whatever the lab's status, the planner's due time moves to
    /// the new time (`Session::put_off_attempt`); `false` when it could not (nothing saved):
    /// the attempt then runs now, so a late alarm is never put off in a loop.
    async fn put_off(
        &self,
        session: &mut Session,
        now: i64,
        late: i64,
        delay: i64,
    ) -> Result<bool, StoreError> {
        let at = now.saturating_add(delay);
        let mut later = session.clone();
        later.put_off_attempt(at);
        if wake::attempt_at(&later) != Some(at) {
            self.error(format!(
                "Cleanup of lab {} was due {} s ago and could not be put off (the lab is {}); it starts now",
                session.lab_request_id,
                late / 1000,
                session.status().describe()
            ));
            return Ok(false);
        }
        *session = later;
        self.info(format!(
            "⏸ Cleanup of lab {} was due {} s ago (the runtime was paused): it starts at {}, spread with the labs that fell due meanwhile",
            session.lab_request_id,
            late / 1000,
            rfc3339(at)
        ));
        self.save(session).await?;
        Ok(true)
    }

    /// The warnings `due` says: `lab.expiring`'s stages, `lab.idle_warning`.
    /// The ids of the events queued.
    fn warn_due(
        &self,
        session: &mut Session,
        due: wake::Due,
        now: i64,
        timing: &wake::Timing,
    ) -> Vec<String> {
        let mut queued = Vec::new();
        if due.warn {
            queued.extend(self.warn_stages(session, now, timing));
        }
        if due.idle_warn {
            queued.extend(self.warn_idle(session, now, timing));
        }
        queued
    }

    /// The stages of `lab.expiring` due now: all marked sent for this expiry, and one event
    /// queued (several due at once, after a pause or an extend, say the same thing: the most
    /// urgent counts), with the minutes left.
    fn warn_stages(
        &self,
        session: &mut Session,
        now: i64,
        timing: &wake::Timing,
    ) -> Option<String> {
        let due: Vec<u64> = wake::stages_ahead(session, timing)
            .into_iter()
            .filter(|&(_, at)| now >= at)
            .map(|(stage, _)| stage)
            .collect();
        if due.is_empty() {
            return None;
        }
        let n = &mut session.notices;
        if n.warned_for_expiry_ms != Some(session.expires_at_ms) {
            n.warned_for_expiry_ms = Some(session.expires_at_ms);
            n.warned_stages.clear();
        }
        n.warned_stages.extend(due.iter().copied());
        let left = minutes_left(session.expires_at_ms, now, timing.unit_ms);
        session.timeline.push(Event {
            left: Some(left),
            ..Event::new(Kind::Warned, now)
        });
        // The most urgent stage due names the warning.
        let stage = due.iter().copied().min().unwrap_or(0);
        let id = webhook::warning_id(
            &session.lab_request_id,
            EventType::Expiring,
            session.expires_at_ms,
            stage,
        );
        let links = self.links().map(|config| {
            let minutes = link::extend_minutes(config, session, self.config.max_duration_minutes);
            (session.expires_at_ms, minutes)
        });
        Some(self.queue_with(
            session,
            EventType::Expiring,
            now,
            Some(Warning { left, id, links }),
        ))
    }

    /// `lab.idle_warning` for the idle deadline now ahead, once.
    fn warn_idle(&self, session: &mut Session, now: i64, timing: &wake::Timing) -> Option<String> {
        let deadline = wake::idle_at(session)?;
        session.notices.idle_warned_for_ms = Some(deadline);
        let left = minutes_left(deadline, now, timing.unit_ms);
        session.timeline.push(Event {
            left: Some(left),
            ..Event::new(Kind::IdleWarned, now)
        });
        let id = webhook::warning_id(&session.lab_request_id, EventType::IdleWarning, deadline, 0);
        let links = self.links().map(|_| (deadline, Vec::new()));
        Some(self.queue_with(
            session,
            EventType::IdleWarning,
            now,
            Some(Warning { left, id, links }),
        ))
    }

    /// The links' settings, when the warnings carry signed links.
    fn links(&self) -> Option<&link::LinkConfig> {
        match &self.config.webhooks {
            crate::lab::config::Webhooks::On(hooks) => hooks.links.as_ref(),
            _ => None,
        }
    }

    /// The alarm when the settings are broken (`self.config` is then the defaults): a legacy
    /// record is still adopted, nothing else is done, and the object looks again
    /// `CLEANUP_RETRY_SECONDS` (by default) later. It never drops a lab.
    pub async fn alarm_misconfigured(&self, error: &ConfigError) -> Result<AlarmDone, StoreError> {
        let session = match self.found_for_alarm().await? {
            Ok((session, _)) => session,
            Err(done) => return Ok(done),
        };
        let retry_at = self
            .platform
            .now_ms()
            .saturating_add(self.config.retry_ms());
        self.error(format!(
            "Alarm for lab {}: configuration error: {}; looking again at {}",
            session.lab_request_id,
            error.detail(),
            rfc3339(retry_at)
        ));
        self.platform.set_alarm(retry_at).await?;
        Ok(AlarmDone::only(Woke::ConfigError))
    }

    /// The session the alarm is for, with what the object held (to see, after a wait on the
    /// outside world, whether a request changed it meanwhile).
    async fn found_for_alarm(&self) -> Result<Result<(Session, Held), AlarmDone>, StoreError> {
        let (found, held) = self.find_held().await?;
        Ok(match found {
            Found::Session(session) => Ok((*session, held)),
            Found::Unreadable(_) => Err(AlarmDone::only(Woke::Unreadable)),
            Found::Claimed(text, claim) => {
                self.claim_alarm(text, claim).await?;
                Err(AlarmDone::only(Woke::Claim))
            }
            Found::Nothing => {
                self.error(
                    "❌ Alarm fired for an object that holds no session and no legacy record; nothing to clean up".into(),
                );
                Err(AlarmDone::only(Woke::NoSession))
            }
        })
    }

    /// One cleanup attempt, from the mark that plans its successor to the index row that
    /// reports it, and the events it calls for.
    async fn attempt(&self, mut session: Session, now: i64) -> Result<(), StoreError> {
        let config = self.config;
        if session.stop_due(config.stop.as_ref(), config.duration_unit_ms()) {
            return self.stop_attempt(session, now).await;
        }
        let plan = self.begin(&mut session, now, Action::Delete).await?;
        let p = self.platform;
        let saver = Saver {
            lab: self,
            attempts: session.cleanup.attempts,
            saved_at: std::cell::Cell::new(now),
            confirmed: std::cell::RefCell::new(Vec::new()),
            saving: std::cell::Cell::new(false),
        };
        let result = {
            // The attempt, and beside it a save of what it confirmed every `PROGRESS_SAVE_MS`
            // while it waits (for a permit, a slow answer): a confirmation is never left unsaved
            // for longer, whatever comes after it.
            let attempt = std::pin::pin!(cleanup::run_attempt(&session, p, p, p, p, plan, &saver));
            let flusher = std::pin::pin!(saver.every_few_seconds());
            match futures::future::select(attempt, flusher).await {
                futures::future::Either::Left((result, _)) => result,
                futures::future::Either::Right((never, _)) => match never {},
            }
        };
        let done_at = p.now_ms();
        let planned = session.cleanup.next_attempt_at_ms;
        let (next, streak) = self.next_attempt(&session, &result, done_at);
        // While the backend answered, a webhook delivery or an index write may have saved the
        // record: their results stay, the attempt's are added to them.
        let mut latest = match self.load().await? {
            Some(latest) if latest.cleanup.attempts == session.cleanup.attempts => latest,
            _ => session,
        };
        latest.finish_attempt(&result, done_at, next.unwrap_or(done_at));
        latest.cleanup.timeout_streak = streak;
        latest.record_attempt(&result, now, done_at, config.stuck_after_attempts);
        let record = cleanup::attempt_record(&latest, &result, done_at.saturating_sub(now));
        p.record(&record);
        if latest.every_call_answered_404() {
            self.error(cleanup::all_404_line(&latest));
        }
        if latest.status() == Status::Retrying {
            self.warn(cleanup::retry_line(&latest, done_at, result.ending));
        }
        if matches!(config.webhooks, Webhooks::On(_)) {
            let kinds = webhook::after_attempt(&mut latest, config.stuck_after_attempts);
            let queued: Vec<String> = kinds
                .into_iter()
                .map(|kind| self.queue(&mut latest, kind, done_at))
                .collect();
            // Held until the alarm the attempt's first save set (its successor's time), when
            // that is later than the hold: the outcome's save then leaves that alarm as it is (a
            // row fewer); an object evicted before the delivery sends them at that alarm.
            if let Some(set) = planned {
                for event in latest.notices.outbox.iter_mut() {
                    if queued.contains(&event.id) {
                        event.next_at_ms = event.next_at_ms.max(set);
                    }
                }
            }
        }
        self.persist(&mut latest).await?;
        // The row after the deletions, never before them: the index never holds up a cleanup.
        self.sync_index().await
    }

    /// The grace stage (`lab::session::stage`): one attempt at stopping the lab's VMs instead of deleting
    /// them, its calls made as a deletion's are. Every VM stopped: the lab is `stopped` until
    /// its `delete_at`; otherwise the next stop attempt, or after `STOP_ATTEMPTS` the deletion
    /// at once.
    async fn stop_attempt(&self, mut session: Session, now: i64) -> Result<(), StoreError> {
        let config = self.config;
        let Some(stage) = config.stop.as_ref() else {
            return Ok(());
        };
        let plan = self.begin(&mut session, now, Action::Stop).await?;
        let p = self.platform;
        let result = cleanup::run_attempt(&session, p, p, p, p, plan, &cleanup::NoProgress).await;
        let done_at = p.now_ms();
        let (next, _) = self.next_attempt(&session, &result, done_at);
        let mut latest = match self.load().await? {
            Some(latest) if latest.stop.attempts == session.stop.attempts => latest,
            _ => session,
        };
        let keep = latest.keep_stopped_ms(stage, config.duration_unit_ms());
        let end = latest.finish_stop(
            &result,
            done_at,
            keep,
            next.unwrap_or(done_at),
            stage.stop_attempts,
        );
        let id = latest.lab_request_id.clone();
        let left = latest.to_stop().len();
        match end {
            StopEnd::Stopped => {
                self.info(format!(
                    "⏸ Lab {id} stopped: its {} kept until {}, then deleted",
                    match latest.vm_count() {
                        1 => "1 VM is".to_string(),
                        n => format!("{n} VMs are"),
                    },
                    latest.delete_due_at().map(rfc3339).unwrap_or_default()
                ));
                if matches!(config.webhooks, Webhooks::On(_)) {
                    self.queue(&mut latest, EventType::Stopped, done_at);
                }
            }
            StopEnd::Again => self.warn(format!(
                "Lab {id}: {left} VM{} not stopped after stop attempt {} of {}; next stop attempt at {}",
                if left == 1 { "" } else { "s" },
                latest.stop.attempts,
                stage.stop_attempts,
                latest
                    .cleanup
                    .next_attempt_at_ms
                    .map(rfc3339)
                    .unwrap_or_default()
            )),
            StopEnd::Ended => self.info(format!(
                "Lab {id} was ended while its VMs were being stopped; deleting them now"
            )),
            StopEnd::GaveUp => self.warn(format!(
                "Lab {id}: its VMs did not all stop in {} stop attempts; deleting them now, as without the stage",
                latest.stop.attempts
            )),
            StopEnd::OutOfTime => self.warn(format!(
                "Lab {id}: the backend refused to stop its VMs for as long as they would have been kept stopped; deleting them now, as without the stage"
            )),
        }
        self.persist(&mut latest).await?;
        self.sync_index().await
    }

    /// How the attempt starting at `now` runs: its concurrency (one at a time after a refusal:
    /// the backend is behind), its reconnects, and its calls and deadline within the plan.
    /// How an attempt of either kind opens: the next attempt planned before anything is done,
    /// so that one cut short (an eviction, a crash) is resumed by that alarm (a finished attempt
    /// replaces it); a lab nobody ended marked ended by its expiry (its time was up); a dry run
    /// noted; all of it saved; then the attempt's calls planned.
    async fn begin(
        &self,
        session: &mut Session,
        now: i64,
        action: Action,
    ) -> Result<AttemptPlan, StoreError> {
        let retry_ms = self.config.retry_ms();
        match action {
            Action::Delete => session.begin_attempt(now, retry_ms),
            Action::Stop => session.begin_stop(now, retry_ms),
        }
        session.mark_ended(EndReason::Expired, session.expires_at_ms.min(now));
        if self.config.dry_run {
            session.dry_run = true;
        }
        self.persist(session).await?;
        Ok(self.attempt_plan(session, now, action))
    }

    fn attempt_plan(&self, session: &Session, now: i64, action: Action) -> AttemptPlan {
        let config = self.config;
        let adaptive = config.retry_policy == retry::Policy::Adaptive;
        let external_left = self.platform.left(Meter::External);
        AttemptPlan {
            action,
            policy: config.retry_policy,
            concurrency: if session.cleanup.refused_last_attempt && adaptive {
                1
            } else {
                config.cleanup_concurrency
            },
            spare_calls: spare_calls(session, external_left),
            max_calls: usize::try_from(external_left).unwrap_or(usize::MAX),
            deadline_ms: self.attempt_deadline(now),
        }
    }

    /// When the attempt after `result` (ended at `done_at`) starts, if one is needed, and the
    /// streak of attempts whose calls timed out: with the fleet's budget on, a lab whose calls
    /// keep timing out waits longer (timeouts are overload too, and a backend that slows down
    /// sends no Retry-After).
    fn next_attempt(
        &self,
        session: &Session,
        result: &AttemptResult,
        done_at: i64,
    ) -> (Option<i64>, u32) {
        let (config, p) = (self.config, self.platform);
        let next = retry::next_attempt_at(
            config.retry_policy,
            result.ending,
            done_at,
            config.retry_ms(),
            p.random(),
        );
        let streak = if result.timeouts > 0 && result.ending == Ending::Failed {
            session.cleanup.timeout_streak.saturating_add(1)
        } else {
            0
        };
        if config.backend_max_concurrency.is_none() || streak == 0 {
            return (next, streak);
        }
        let backoff = retry::timeout_backoff_ms(config.retry_ms(), streak, p.random());
        (
            next.map(|at| at.max(done_at.saturating_add(backoff))),
            streak,
        )
    }

    /// When an attempt starting at `now` starts its last call: `ATTEMPT_DEADLINE_SECONDS` after
    /// `now`, and no later than a call can start and still end within the alarm's wall time.
    fn attempt_deadline(&self, now: i64) -> i64 {
        let timeout = (self.config.backend_timeout_seconds * 1000) as i64;
        let last_start = self
            .config
            .limits()
            .last_start_ms(self.platform.invocation_started_ms(), timeout);
        now.saturating_add(self.config.attempt_deadline_ms())
            .min(last_start)
    }

    /// The end of retention: the lab's index row is deleted, then everything the object holds.
    /// A failed row delete keeps the record and tries again `CLEANUP_RETRY_SECONDS` later, so the
    /// index never keeps a row for a lab the object has forgotten.
    async fn purge(&self, mut session: Session) -> Result<Woke, StoreError> {
        let completed = session
            .cleanup
            .completed_at_ms
            .map(rfc3339)
            .unwrap_or_default();
        if !self.config.fleet_index {
            self.info(format!(
                "Retention over for lab {} (completed {completed}); record deleted",
                session.lab_request_id
            ));
            self.platform.delete_all().await?;
            return Ok(Woke::Purged);
        }
        match self
            .platform
            .delete(
                &session.lab_request_id,
                &session.vm_ids(),
                session.sync.revision,
            )
            .await
        {
            Ok(()) => {
                self.info(format!(
                    "Retention over for lab {} (completed {completed}); record and index row deleted",
                    session.lab_request_id
                ));
                self.platform.delete_all().await?;
                Ok(Woke::Purged)
            }
            Err(e) => {
                let again = self
                    .platform
                    .now_ms()
                    .saturating_add(self.config.retry_ms());
                self.warn(format!(
                    "Retention over for lab {}, but its index row could not be deleted ({e}); record kept, trying again at {}",
                    session.lab_request_id,
                    rfc3339(again)
                ));
                session.sync.index.delete_retry_at_ms = Some(again);
                self.save(&mut session).await?;
                Ok(Woke::PurgeHeld)
            }
        }
    }

    /// Writes the lab's index row if the index is behind the record, and records how that went:
    /// a success is kept in the object's memory (the next save records it: a confirmed row
    /// costs no save of its own, only the alarm when it moves); a failure is logged, saved, and
    /// tried again by the alarm within `CLEANUP_RETRY_SECONDS`. Only storage errors are
    /// returned: the index never fails a cleanup or an answer.
    pub async fn sync_index(&self) -> Result<(), StoreError> {
        if !self.config.fleet_index {
            return Ok(());
        }
        let Some(mut session) = self.load().await? else {
            return Ok(());
        };
        let p = self.platform;
        index::confirmed(&mut session, p.index_written());
        if index::owed(&session) {
            let row = index::row(&session, p.now_ms());
            let written = p.upsert(&row, &index::vm_rows(&session)).await;
            // Read again: a request may have changed the record while the row was written.
            let Some(latest) = self.load().await? else {
                return Ok(());
            };
            session = latest;
            if let Err(e) = written {
                let now = p.now_ms();
                let again = now.saturating_add(self.config.retry_ms());
                self.warn(format!(
                    "The index row of lab {} could not be written ({e}); the lab is unaffected, trying again at {}",
                    session.lab_request_id,
                    rfc3339(again)
                ));
                index::write_failed(&mut session, now, self.config.retry_ms());
                return self.save(&mut session).await;
            }
            p.set_index_written(p.index_written().max(row.revision));
            index::confirmed(&mut session, p.index_written());
        }
        // The alarm the record calls for with what the object's memory knows (not saved: the
        // stored record keeps saying the row is owed until its next save; its own wake-ups are
        // unchanged, only the index's retry goes). The store writes it only where it moves, or
        // where the alarm that fired is spent. A record always has its purge ahead.
        match self.alarm_at(&session) {
            Some(at) => p.set_alarm(at).await,
            None => Ok(()),
        }
    }

    /// Adds a new event of `kind` to the lab's outbox, due now; its body is fixed now. An
    /// undelivered event of the same kind gives way to it.
    /// The event's id.
    pub(crate) fn queue(&self, session: &mut Session, kind: EventType, now: i64) -> String {
        self.queue_with(session, kind, now, None)
    }

    /// `queue`, for a warning: with the minutes left it tells (`data.minutes_left`), its id
    /// (`webhook::warning_id`), and with links on, the deadline its links name and the minutes
    /// of its extend links (`data.links`).
    fn queue_with(
        &self,
        session: &mut Session,
        kind: EventType,
        now: i64,
        warning: Option<Warning>,
    ) -> String {
        let p = self.platform;
        let (minutes_left, id, links) = match warning {
            Some(Warning { left, id, links }) => (Some(left), id, links),
            None => (
                None,
                webhook::event_id([p.random(), p.random(), p.random(), p.random()]),
                None,
            ),
        };
        self.info(format!(
            "Event {} ({id}) for lab {} queued for delivery",
            kind.name(),
            session.lab_request_id
        ));
        let mut event = webhook::new_event(kind, session, now, id.clone());
        if let Some(snapshot) = event.snapshot.as_mut() {
            snapshot.minutes_left = minutes_left;
            if let Some((until, minutes)) = links {
                snapshot.link_until_ms = Some(until);
                snapshot.link_minutes = minutes;
            }
        }
        // Held from the start, by the save that queues it: this invocation delivers it right
        // after (no save of its own to hold it); an object evicted first leaves it to the
        // alarm at the hold's end.
        event.next_at_ms = now
            .saturating_add(self.config.webhook_timeout_ms())
            .saturating_add(crate::lab::procedures::deliver::QUEUED_HOLD_SLACK_MS);
        p.set_queued_events(true);
        for replaced in session.queue_event(event) {
            self.warn(format!(
                "Event {} ({replaced}) for lab {} was not delivered yet; {id} replaces it",
                kind.name(),
                session.lab_request_id
            ));
        }
        id
    }
}

/// How often an attempt saves the VMs it confirmed gone so far (besides at its end): an attempt
/// cut short (an eviction, the platform's limits) repeats at most this much of its work.
pub const PROGRESS_SAVE_MS: i64 = 3_000;

/// Saves an attempt's confirmed deletions as it goes, every `PROGRESS_SAVE_MS` at most, into
/// the record as it is then (its revision unchanged: the index row follows the attempt's end).
struct Saver<'l, 'a, P: Platform> {
    lab: &'l Lab<'a, P>,
    attempts: u32,
    saved_at: std::cell::Cell<i64>,
    confirmed: std::cell::RefCell<Vec<(String, bool)>>,
    /// A save is under way (the two callers never save over each other).
    saving: std::cell::Cell<bool>,
}

impl<P: Platform> Saver<'_, '_, P> {
    /// Saves what was confirmed and not saved yet, if `PROGRESS_SAVE_MS` has passed since the
    /// last save. The attempt's end saves everything anyway: a failure here loses nothing.
    async fn flush(&self) {
        let now = self.lab.platform.now_ms();
        if self.saving.get()
            || self.confirmed.borrow().is_empty()
            || now.saturating_sub(self.saved_at.get()) < PROGRESS_SAVE_MS
        {
            return;
        }
        self.saving.set(true);
        self.saved_at.set(now);
        let confirmed = self.confirmed.take();
        if let Ok(Some(mut latest)) = self.lab.load().await {
            if latest.cleanup.attempts == self.attempts && latest.add_confirmed(&confirmed) {
                let _ = self.lab.save(&mut latest).await;
            }
        }
        self.saving.set(false);
    }

    /// Flushes every `PROGRESS_SAVE_MS` for as long as the attempt runs (it never ends by
    /// itself: the attempt's end drops it).
    async fn every_few_seconds(&self) -> std::convert::Infallible {
        loop {
            self.lab.platform.sleep(PROGRESS_SAVE_MS as u64).await;
            self.flush().await;
        }
    }
}

impl<P: Platform> cleanup::Progress for Saver<'_, '_, P> {
    async fn confirmed(&self, vm: &str, already_gone: bool) {
        self.confirmed
            .borrow_mut()
            .push((vm.to_string(), already_gone));
        self.flush().await;
    }
}

/// Whole `duration` units from `now` to `at`, rounded up (a warning on time says its stage).
fn minutes_left(at: i64, now: i64, unit_ms: i64) -> u64 {
    let ms = at.saturating_sub(now).max(0);
    u64::try_from(ms.saturating_add(unit_ms.max(1) - 1) / unit_ms.max(1)).unwrap_or(0)
}

/// Backend calls an attempt may make beyond one per planned call (the reconnects of calls whose
/// connection failed), within what the invocation has left of its subrequests.
fn spare_calls(session: &Session, external_left: u64) -> usize {
    let planned = session.pending().len() as u64 + 1;
    external_left.saturating_sub(planned) as usize
}

/// A warning's own parts: the minutes left it tells, its id, and with links on, the deadline its
/// links name and the minutes of its extend links.
struct Warning {
    left: u64,
    id: String,
    links: Option<(i64, Vec<u64>)>,
}
