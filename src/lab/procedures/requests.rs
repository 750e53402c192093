//! The requests a lab's object answers: create, status, events, end now, extend, retry now, resume, activity, and the fleet's (orphan, delete again, poke).

use crate::lab::cleanup;
use crate::lab::config::Webhooks;
use crate::lab::fleet::report::ReportedVm;
use crate::lab::ports::StoreError;
use crate::lab::ports::{Level, Power};
use crate::lab::procedures::claims::{orphan_started, Claiming, Owner};
use crate::lab::procedures::record::{Found, Held};
use crate::lab::procedures::Request;
use crate::lab::procedures::{Lab, Platform, Reply};
use crate::lab::refusal::Refusal;
use crate::lab::retry;
use crate::lab::session::timeline::EventsPage;
use crate::lab::session::{
    By, Deletion, EndReason, Event, Kind, LabType, NewSession, Origin, Session, Status,
};
use crate::lab::text::rfc3339;
use crate::lab::webhook::EventType;

/// How often a create looks again when its object changed while it claimed its workers.
const CREATE_TRIES: usize = 3;

impl<P: Platform> Lab<'_, P> {
    /// Answers `request` with its procedure.
    pub async fn answer(&self, request: Request) -> Result<Reply, StoreError> {
        match request {
            Request::Create(new) => self.create(new).await,
            Request::Status => self.status().await,
            Request::Events(page) => self.events(&page).await,
            Request::End { by, job } => self.end(by, job).await,
            Request::Extend { minutes, by, job } => self.extend(minutes, by, job).await,
            Request::Retry { job } => self.retry(job).await,
            Request::Resume { minutes, by, job } => self.resume(minutes, by, job).await,
            Request::Activity => self.activity().await,
            Request::Orphan(vm) => self.orphan(vm).await,
            Request::DeleteAgain { vm } => self.delete_again(&vm).await,
            Request::Poke => self.poke().await,
            Request::Claim { lab, vm } => self.claim(&lab, &vm).await,
            Request::Owns { vm } => self.owns(&vm).await,
            Request::Link { link, apply } => self.link(link, apply).await,
        }
    }

    /// The lab a request is about, or the refusal when there is none.
    async fn lab(&self) -> Result<Result<Session, Refusal>, StoreError> {
        Ok(match self.find().await? {
            Found::Session(session) => Ok(*session),
            Found::Nothing | Found::Claimed(..) => Err(Refusal::NotFound),
            Found::Unreadable(problems) => Err(Refusal::Unreadable(problems)),
        })
    }

    /// A change of the record: saved (with its alarm), answered with the lab's status view, and
    /// `line` logged after the answer.
    async fn changed(
        &self,
        session: Session,
        status: u16,
        line: String,
    ) -> Result<Reply, StoreError> {
        self.changed_at(session, status, Level::Info, line).await
    }

    /// `changed`, with the line at `level`.
    async fn changed_at(
        &self,
        mut session: Session,
        status: u16,
        level: Level,
        line: String,
    ) -> Result<Reply, StoreError> {
        // The index row is written right after the answer (`Reply::Lab` with its line).
        self.persist_answered(&mut session).await?;
        Ok(Reply::Lab {
            status,
            session: Box::new(session),
            line: Some((level, line)),
        })
    }

    fn unchanged(status: u16, session: Session) -> Reply {
        Reply::Lab {
            status,
            session: Box::new(session),
            line: None,
        }
    }

    /// `POST /api/v1/labs/sessions`: schedules the lab (201); a retried POST of the same lab
    /// answers its current state unchanged (200); anything else about an existing lab is a 409.
    /// A multi-node lab claims each worker VM in the VM's object first (`claims`): a VM that is
    /// another lab's, or whose orphan cleanup started, refuses the create (409); an orphan
    /// cleanup not started yet is cancelled, for the master VM as for a worker.
    pub async fn create(&self, new: NewSession) -> Result<Reply, StoreError> {
        // A create that waited on other objects (its claims) writes only over what it read; if
        // something changed meanwhile (an orphan cleanup of its VM arrived, say), it looks again.
        for _ in 0..CREATE_TRIES {
            if let Some(reply) = self.try_create(new.clone()).await? {
                return Ok(reply);
            }
        }
        Ok(Reply::Refused(Refusal::Unavailable(format!(
            "lab {} kept changing while it was being created; nothing was scheduled, try again",
            new.lab_request_id
        ))))
    }

    /// One try of `create`; `None` when the object changed while it waited on other objects.
    async fn try_create(&self, new: NewSession) -> Result<Option<Reply>, StoreError> {
        self.after_other_creates().await;
        let (found, held) = self.find_held().await?;
        let there = match self.what_is_there(found, &new).await {
            Ok(there) => there,
            Err(refusal) => return Ok(Some(Reply::Refused(refusal))),
        };
        match there.existing {
            Some(existing) => Ok(Some(Self::again(
                existing,
                &new,
                self.config.idle_timeout_minutes,
            ))),
            None => {
                self.schedule_new(new, &held, there.waited, there.replaces)
                    .await
            }
        }
    }

    /// What the object holds for a create of `new`: a lab already (the same create again, or
    /// another), an orphan cleanup that has not started (the lab replaces it), nothing, or a
    /// claim of another lab that may no longer hold. `Err`: the create is refused.
    async fn what_is_there(&self, found: Found, new: &NewSession) -> Result<There, Refusal> {
        let mut there = There {
            existing: None,
            replaces: None,
            waited: false,
        };
        match found {
            Found::Session(orphan)
                if orphan.origin() == Origin::Inventory && orphan.cleanup.attempts == 0 =>
            {
                there.replaces = Some(*orphan);
            }
            Found::Session(orphan) if orphan.origin() == Origin::Inventory => {
                return Err(Refusal::Conflict(orphan_started(&orphan)))
            }
            Found::Session(existing) => there.existing = Some(*existing),
            Found::Nothing => {}
            Found::Claimed(_, claim) => {
                there.waited = true;
                match self.owner(&claim.lab, &new.lab_request_id).await {
                    Owner::Lists => return Err(Refusal::Conflict(format!(
                        "VM {} is a worker VM of lab {}; it cannot be the master VM of another lab",
                        new.lab_request_id, claim.lab
                    ))),
                    Owner::Unreachable(e) => return Err(Refusal::Unavailable(format!(
                        "lab {}, which claimed VM {} as a worker VM, did not answer whether it still does ({e}); nothing was changed, try again",
                        claim.lab, new.lab_request_id
                    ))),
                    Owner::DoesNot => {}
                }
            }
            Found::Unreadable(problems) => return Err(Refusal::Unreadable(problems)),
        }
        Ok(there)
    }

    /// Schedules the new lab: its workers claimed first, then written only over what was read
    /// (`None`: the object changed meanwhile; the create runs again).
    async fn schedule_new(
        &self,
        new: NewSession,
        held: &Held,
        mut waited: bool,
        replaces: Option<Session>,
    ) -> Result<Option<Reply>, StoreError> {
        let mut session = self.scheduled(new);
        let _claiming = Claiming::start(self.platform, &session.worker_lab_request_ids);
        if !session.worker_lab_request_ids.is_empty() {
            waited = true;
            if let Err(refusal) = self.claim_workers(&session).await {
                return Ok(Some(Reply::Refused(refusal)));
            }
        }
        // Waiting on other objects let other requests in: write only over what was read.
        if waited && !self.still(held).await? {
            return Ok(None);
        }
        if let Some(orphan) = replaces {
            // Its index row is this lab's from now on: the revisions go on from its.
            session.sync.revision = orphan.sync.revision;
            self.warn(format!(
                "The orphan cleanup of VM {} was cancelled before it started: lab {} was created for it",
                orphan.lab_request_id, session.lab_request_id
            ));
        }
        let line = format!(
            "Scheduled cleanup of {} lab {} for user {} ({} VM{}) at {}",
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
        self.changed(session, 201, line).await.map(Some)
    }

    /// A create of a lab the object has already.
    fn again(existing: Session, new: &NewSession, default_idle: Option<u64>) -> Reply {
        match existing.status() {
            // A retried POST of the same lab: answer with the current state, change nothing (in
            // particular, do not push the expiry back).
            Status::Scheduled if existing.same_request(new, default_idle) => {
                Self::unchanged(200, existing)
            }
            Status::Scheduled => Reply::Refused(Refusal::Conflict(format!(
                "lab {} is already scheduled with a different user_id, worker_nodes, duration, labels, idle_timeout or keep_stopped_minutes",
                existing.lab_request_id
            ))),
            status => Reply::Refused(Refusal::Conflict(format!(
                "lab {} is {}; it cannot be scheduled again",
                existing.lab_request_id,
                status.describe()
            ))),
        }
    }

    /// The session a create schedules now, not saved yet.
    fn scheduled(&self, new: NewSession) -> Session {
        let config = self.config;
        let lifetime = config.duration_ms(new.duration);
        let idle = new.idle_timeout.or(config.idle_timeout_minutes);
        let now = self.platform.now_ms();
        let mut session = Session::schedule(new, now, lifetime);
        session.idle.timeout_minutes = idle;
        session.idle.timeout_ms = idle.map(|m| config.duration_ms(m));
        session.record(Kind::Created, now);
        session.cleanup.start_delay_ms = retry::first_attempt_delay(
            config.retry_policy,
            config.expiry_spread_ms(),
            self.platform.random(),
        );
        session
    }

    /// `GET .../{id}`: the lab's status view.
    pub async fn status(&self) -> Result<Reply, StoreError> {
        Ok(match self.lab().await? {
            Ok(session) => Self::unchanged(200, session),
            Err(refusal) => Reply::Refused(refusal),
        })
    }

    /// `GET .../{id}/events`: the lab's timeline.
    pub async fn events(&self, page: &EventsPage) -> Result<Reply, StoreError> {
        Ok(match self.lab().await? {
            Ok(session) => Reply::Events(session.timeline.view(&session.vm_ids(), page)),
            Err(refusal) => Reply::Refused(refusal),
        })
    }

    /// `DELETE .../{id}`: the cleanup starts now (202); a completed lab answers 200 as it is.
    /// The end reason says who asked: `ended` (the API token) or `operator`.
    pub async fn end(&self, by: By, job: Option<String>) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        if session.applied(job.as_deref()) {
            return Ok(Self::unchanged(202, session));
        }
        if session.status() == Status::Completed {
            return Ok(Self::unchanged(200, session));
        }
        let now = self.platform.now_ms();
        if !session.end_now(now) {
            return Ok(Self::unchanged(202, session));
        }
        let reason = match by {
            By::Api | By::Link => EndReason::Ended,
            By::Operator => EndReason::Operator,
        };
        session.mark_ended(reason, now);
        session.remember_job(job);
        let line = format!(
            "Lab {} ended by request ({}); cleanup starts now",
            session.lab_request_id,
            match by {
                By::Api => "the API token",
                By::Operator => "the operator token",
                By::Link => "a signed link",
            }
        );
        self.changed(session, 202, line).await
    }

    /// `POST .../{id}/activity`: the student is active. Noted in the object's memory at once;
    /// written to the record at most once per `ACTIVITY_WRITE_SECONDS` (the record alone: the
    /// idle deadline only moves later, so the alarm stays as it is). 204; 409 once the lab has
    /// ended.
    pub async fn activity(&self) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        if session.status() != Status::Scheduled {
            return Ok(Reply::Refused(Refusal::Conflict(format!(
                "lab {} has ended ({}); activity no longer counts",
                session.lab_request_id,
                session.status().describe()
            ))));
        }
        let now = self.platform.now_ms();
        self.platform.note_activity(now);
        let written = session
            .idle
            .last_activity_ms
            .unwrap_or(session.created_at_ms);
        if now.saturating_sub(written) >= self.config.activity_write_ms() {
            session.idle.last_activity_ms = Some(now);
            session.record(Kind::Activity, now);
            let (text, _) = crate::lab::session::bound::encode(&mut session);
            self.platform.put(&text).await?;
        }
        Ok(Reply::Noted)
    }

    /// `POST .../{id}/retry`: the next attempt of a retrying lab now (202).
    pub async fn retry(&self, job: Option<String>) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        if session.applied(job.as_deref()) {
            return Ok(Self::unchanged(202, session));
        }
        let now = self.platform.now_ms();
        match session.retry_now(now) {
            Ok(false) => Ok(Self::unchanged(202, session)),
            Ok(true) => {
                session.record(Kind::RetryNow, now);
                session.remember_job(job);
                let line = format!(
                    "Retry of lab {} requested by an operator; attempt {} starts now",
                    session.lab_request_id,
                    session.cleanup.attempts.saturating_add(1)
                );
                self.changed(session, 202, line).await
            }
            Err(refusal) => Ok(Reply::Refused(refusal)),
        }
    }

    /// `POST .../{id}/extend`: the expiry `minutes` later, while the lab is scheduled (200).
    pub async fn extend(
        &self,
        minutes: u64,
        by: By,
        job: Option<String>,
    ) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        if session.applied(job.as_deref()) {
            return Ok(Self::unchanged(200, session));
        }
        let config = self.config;
        let from = session.expires_at_ms;
        match session.extend(
            minutes,
            config.duration_unit_ms(),
            config.max_duration_minutes,
        ) {
            Ok(()) => {
                session.timeline.push(Event {
                    from: Some(from),
                    to: Some(session.expires_at_ms),
                    by: Some(by),
                    ..Event::new(Kind::Extended, self.platform.now_ms())
                });
                session.remember_job(job);
                let line = format!(
                    "Lab {} extended by {}; now expires at {}",
                    session.lab_request_id,
                    crate::lab::text::duration_units(minutes, self.config.duration_unit_ms()),
                    rfc3339(session.expires_at_ms)
                );
                self.changed(session, 200, line).await
            }
            Err(refusal) => Ok(Reply::Refused(refusal)),
        }
    }

    /// `POST .../{id}/resume`: a stopped lab's VMs started again (`START_PATH`, every VM at
    /// once up to `CLEANUP_CONCURRENCY`), then the lab scheduled to expire `minutes` from now,
    /// within the lifetime cap an extend has (200). While the calls run the lab is held: no
    /// deletion starts. A VM that does not start leaves the lab stopped, its deletion at its
    /// `delete_at` (503: resume again). A lab a resume already made active answers 200
    /// unchanged; any other lab is refused (409).
    pub async fn resume(
        &self,
        minutes: u64,
        by: By,
        job: Option<String>,
    ) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        if session.applied(job.as_deref()) {
            return Ok(Self::unchanged(200, session));
        }
        let (p, config) = (self.platform, self.config);
        if let Err(refusal) =
            session.lifetime_within(minutes, config.max_duration_minutes, "resuming for")
        {
            return Ok(Reply::Refused(refusal));
        }
        if let Some(answer) = self.resume_under_way(&mut session).await? {
            return Ok(answer);
        }
        let concurrency = config.cleanup_concurrency.max(1);
        let rounds = session.vm_count().div_ceil(concurrency) as i64 + 1;
        let hold = p
            .now_ms()
            .saturating_add(config.backend_timeout().as_millis() as i64 * rounds);
        match session.begin_resume(hold) {
            Ok(true) => {}
            Ok(false) => return Ok(Self::unchanged(200, session)),
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        }
        self.save(&mut session).await?;
        let failed = self.start_all(&session, concurrency).await;
        let Some(mut latest) = self.load().await? else {
            return Ok(Reply::Refused(Refusal::NotFound));
        };
        let now = p.now_ms();
        if failed.is_empty()
            && latest.status() == Status::Scheduled
            && latest.stop.resumed_at_ms.is_some()
        {
            // Another resume of the same lab finished while these starts ran: as a repeat.
            return Ok(Self::unchanged(200, latest));
        }
        if !failed.is_empty() || latest.status() != Status::Stopped || latest.stop.over {
            latest.resume_failed();
            self.save(&mut latest).await?;
            if failed.is_empty() {
                return Ok(Reply::Refused(Refusal::Conflict(format!(
                    "lab {} was ended while it was being resumed; its VMs are deleted",
                    latest.lab_request_id
                ))));
            }
            self.warn(format!(
                "Lab {} could not be resumed: {} VM{} did not start: {}; it stays stopped, deleted at {}",
                latest.lab_request_id,
                failed.len(),
                if failed.len() == 1 { "" } else { "s" },
                failed.join(", "),
                latest.delete_due_at().map(rfc3339).unwrap_or_default()
            ));
            return Ok(Reply::Refused(Refusal::Unavailable(format!(
                "lab {} could not be resumed: {} of its VMs did not start; it stays stopped until its delete_at, resume it again",
                latest.lab_request_id,
                failed.len()
            ))));
        }
        latest.finish_resume(now, minutes, config.duration_unit_ms(), by);
        latest.remember_job(job);
        if matches!(config.webhooks, Webhooks::On(_)) {
            self.queue(&mut latest, EventType::Resumed, now);
        }
        let line = format!(
            "▶ Lab {} resumed: its {} VM{} started again; now expires at {}",
            latest.lab_request_id,
            latest.vm_count(),
            if latest.vm_count() == 1 { "" } else { "s" },
            rfc3339(latest.expires_at_ms)
        );
        self.changed(latest, 200, line).await
    }

    /// Another resume of this lab is starting its VMs (its hold is ahead): this one waits for
    /// it, at most until its hold ends, and answers as it did (200 resumed; 503 if its VMs did
    /// not all start), with no start call of its own. `None`: no resume under way (or the other
    /// one's invocation is gone and its hold over): this one resumes, `session` as it is now.
    async fn resume_under_way(&self, session: &mut Session) -> Result<Option<Reply>, StoreError> {
        let p = self.platform;
        let held = |s: &Session| {
            s.status() == Status::Stopped && s.stop.hold_until_ms.is_some_and(|h| h > p.now_ms())
        };
        if !held(session) {
            return Ok(None);
        }
        for _ in 0..RESUME_WAIT_STEPS {
            p.sleep(RESUME_WAIT_STEP_MS).await;
            let Some(latest) = self.load().await? else {
                return Ok(Some(Reply::Refused(Refusal::NotFound)));
            };
            if latest.status() == Status::Scheduled && latest.stop.resumed_at_ms.is_some() {
                return Ok(Some(Self::unchanged(200, latest)));
            }
            if latest.status() != Status::Stopped {
                return Ok(Some(Reply::Refused(Refusal::Conflict(format!(
                    "lab {} was ended while it was being resumed; its VMs are deleted",
                    latest.lab_request_id
                )))));
            }
            if latest.stop.hold_until_ms.is_none() {
                return Ok(Some(Reply::Refused(Refusal::Unavailable(format!(
                    "lab {} could not be resumed: some of its VMs did not start; it stays stopped until its delete_at, resume it again",
                    latest.lab_request_id
                )))));
            }
            let over = !held(&latest);
            *session = latest;
            if over {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Starts every VM of `session` (`START_PATH`), `concurrency` at once: the VMs that did not
    /// start, each with why (a 404 included: a VM gone cannot be resumed).
    async fn start_all(&self, session: &Session, concurrency: usize) -> Vec<String> {
        use futures::stream::{self, StreamExt};
        let p = self.platform;
        stream::iter(session.vm_ids())
            .map(|id| async move {
                let answer = p.power(Power::Start, id).await;
                match cleanup::classify_deletion(answer, p.now_ms()) {
                    Deletion::Deleted => None,
                    Deletion::AlreadyGone => {
                        Some(format!("{id} (backend answered 404: the VM is gone)"))
                    }
                    Deletion::Refused { error, .. } | Deletion::Failed(error) => {
                        Some(format!("{id} ({error})"))
                    }
                }
            })
            .buffer_unordered(concurrency)
            .filter_map(|f| async move { f })
            .collect()
            .await
    }

    /// An orphan VM (an inventory reported it, no lab lists it): a lab of its own, expired now,
    /// cleaned up at once by the alarm (201). Reported again, it answers 200 and changes nothing;
    /// a lab of the same id that is not an orphan is never touched (409), nor a worker VM that
    /// the lab its claim names still lists (409: asked right now, not the index).
    pub async fn orphan(&self, vm: ReportedVm) -> Result<Reply, StoreError> {
        if !self.platform.claiming().is_empty() {
            return Ok(Reply::Refused(Refusal::Conflict(format!(
                "lab {} is being created",
                vm.lab_request_id
            ))));
        }
        let (found, held) = self.find_held().await?;
        let mut revision = 0;
        match found {
            Found::Session(existing) => {
                return Ok(if existing.origin() == Origin::Inventory {
                    Self::unchanged(200, *existing)
                } else {
                    Reply::Refused(Refusal::Conflict(format!(
                        "lab {} exists and is not an orphan",
                        existing.lab_request_id
                    )))
                });
            }
            Found::Unreadable(problems) => {
                return Ok(Reply::Refused(Refusal::Unreadable(problems)))
            }
            Found::Nothing => {}
            Found::Claimed(_, claim) => {
                match self.owner(&claim.lab, &vm.lab_request_id).await {
                    Owner::Lists => {
                        return Ok(Reply::Refused(Refusal::Conflict(format!(
                            "VM {} is a worker VM of lab {}: not an orphan",
                            vm.lab_request_id, claim.lab
                        ))))
                    }
                    Owner::Unreachable(e) => {
                        return Ok(Reply::Refused(Refusal::Unavailable(format!(
                            "lab {}, which claimed VM {}, did not answer whether it still lists it ({e}); the VM is left alone",
                            claim.lab, vm.lab_request_id
                        ))))
                    }
                    Owner::DoesNot if self.still(&held).await? => {
                        revision = claim.stale_row.unwrap_or(0);
                    }
                    Owner::DoesNot => {
                        return Ok(Reply::Refused(Refusal::Conflict(format!(
                            "VM {} was claimed by a lab meanwhile: not an orphan",
                            vm.lab_request_id
                        ))))
                    }
                }
            }
        }
        let now = self.platform.now_ms();
        let created = vm.created_at_ms.unwrap_or(now).min(now);
        let mut session = Session::schedule(
            NewSession {
                lab_request_id: vm.lab_request_id,
                user_id: vm.user_id,
                worker_lab_request_ids: Vec::new(),
                duration: 0,
                vm_name: None,
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            },
            created,
            now.saturating_sub(created),
        );
        session.sync.revision = revision;
        session.adoption.inventory_at_ms = Some(now);
        // Expired already: no `lab.expiring` for it.
        session.notices.warned_for_expiry_ms = Some(session.expires_at_ms);
        session.record(Kind::Reconciled, now);
        session.mark_ended(EndReason::Orphan, now);
        let line = format!(
            "Orphan VM {} of user {} (created {}) is listed by no lab: cleaning it up now, as a lab of its own",
            session.lab_request_id,
            session.user_id,
            rfc3339(created)
        );
        self.changed_at(session, 201, Level::Warn, line).await
    }

    /// A VM this lab counted deleted (or already gone) that an inventory still reports: pending
    /// again, and the next attempt now (202), with an error line. Already pending: 200.
    pub async fn delete_again(&self, vm: &str) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        if session.position(vm).is_none() {
            return Ok(Reply::Refused(Refusal::Conflict(format!(
                "lab {} has no VM {vm}",
                session.lab_request_id
            ))));
        }
        if !session.is_done(vm) {
            return Ok(Self::unchanged(200, session));
        }
        let now = self.platform.now_ms();
        let was = if session.cleanup.deleted.iter().any(|d| d == vm) {
            "deleted"
        } else {
            "already gone"
        };
        session.reopen(vm, now);
        session.timeline.push(Event {
            vm: session.position(vm).and_then(|p| u16::try_from(p).ok()),
            ..Event::new(Kind::Reconciled, now)
        });
        let line = format!(
            "❌ VM {vm} of lab {} was counted {was}, yet the backend's inventory still lists it: deleting it again (attempt {} now)",
            session.lab_request_id,
            session.cleanup.attempts.saturating_add(1)
        );
        self.changed_at(session, 202, Level::Error, line).await
    }

    /// The sweep's poke: a lab with work left and no alarm (or one later than its work is due)
    /// gets its alarm back, at the due time or now. Answers whether it had to.
    pub async fn poke(&self) -> Result<Reply, StoreError> {
        let session = match self.find().await? {
            Found::Session(session) => *session,
            // The sweep found an index row for this VM as a lab: the row of an orphan cleanup
            // its claim cancelled, still there. It goes now.
            Found::Claimed(text, claim) => {
                let claim = crate::lab::session::claim::Claim {
                    stale_row: Some(u64::try_from(i64::MAX).unwrap_or(0)),
                    ..claim
                };
                self.claim_alarm(text, claim).await?;
                return Ok(Reply::Poked { revived: false });
            }
            Found::Nothing => return Ok(Reply::Refused(Refusal::NotFound)),
            Found::Unreadable(problems) => {
                return Ok(Reply::Refused(Refusal::Unreadable(problems)))
            }
        };
        let Some(want) = self.alarm_at(&session) else {
            return Ok(Reply::Poked { revived: false });
        };
        let now = self.platform.now_ms();
        let at = want.max(now);
        let current = self.platform.alarm().await?;
        // An alarm whose time passed long ago is not going to fire (the runtime ran it and
        // gave up on it, or lost it): no alarm at all.
        let lost = current.is_some_and(|c| c < now.saturating_sub(LOST_ALARM_AFTER_MS));
        if !lost && current.is_some_and(|current| current <= at) {
            return Ok(Reply::Poked { revived: false });
        }
        self.platform.set_alarm(at).await?;
        self.warn(format!(
            "Lab {} had {} while work was due at {}: alarm set for {} (the sweep)",
            session.lab_request_id,
            current.map_or("no alarm".to_string(), |c| format!(
                "its alarm at {}{}",
                rfc3339(c),
                if lost {
                    ", long past and not run (lost)"
                } else {
                    ""
                }
            )),
            rfc3339(want),
            rfc3339(at)
        ));
        Ok(Reply::Poked { revived: true })
    }
}

/// How often, and how many times at most, a resume looks whether another resume of the same
/// lab has finished (its hold bounds the wait: its calls' timeouts).
const RESUME_WAIT_STEP_MS: u64 = 50;
const RESUME_WAIT_STEPS: u32 = 20_000;

/// How long past its time a stored alarm is taken for lost by the sweep's poke: the platform
/// runs an alarm at its time and retries a failed one at most six times, from 2 s doubling
/// (2 + 4 + ... + 64 = 126 s; `../shared/TOOLCHAIN.md`, workers-rs API traps, and
/// <https://developers.cloudflare.com/durable-objects/api/alarms/>), so an alarm still stored
/// this long after its time will not fire by itself.
pub const LOST_ALARM_AFTER_MS: i64 = 150_000;

/// What a create found in the object (`Lab::what_is_there`).
struct There {
    existing: Option<Session>,
    replaces: Option<Session>,
    /// The answer waited on another object (the object may have changed meanwhile).
    waited: bool,
}
