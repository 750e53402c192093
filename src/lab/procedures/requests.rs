//! The requests a lab's object answers: create, status, end now, extend, retry now.

use crate::lab::ports::StoreError;
use crate::lab::procedures::record::Found;
use crate::lab::procedures::{Lab, Platform, Reply};
use crate::lab::retry;
use crate::lab::session::{LabType, NewSession, Refusal, Session, Status};
use crate::lab::text::rfc3339;

/// Every request a lab's object understands: one type, which the router sends and the object
/// reads (`encode` / `decode`), so a new operation is one variant and its procedure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Create(NewSession),
    Status,
    End,
    Extend { minutes: u64 },
    Retry,
}

/// The body of an internal extend request.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExtendBy {
    minutes: u64,
}

impl Request {
    /// The internal request's method, path and JSON body.
    pub fn encode(&self) -> (&'static str, &'static str, Option<String>) {
        match self {
            Request::Create(new) => ("POST", "/create", serde_json::to_string(new).ok()),
            Request::Status => ("GET", "/status", None),
            Request::End => ("POST", "/end", None),
            Request::Extend { minutes } => (
                "POST",
                "/extend",
                serde_json::to_string(&ExtendBy { minutes: *minutes }).ok(),
            ),
            Request::Retry => ("POST", "/retry", None),
        }
    }

    /// The request `encode` made, from its method, path and body; a reason when it is not one.
    pub fn decode(method: &str, path: &str, body: &str) -> Result<Request, String> {
        let json = |what: &str| format!("unreadable internal request {what}");
        Ok(match (method, path) {
            ("POST", "/create") => Request::Create(
                serde_json::from_str(body).map_err(|e| format!("{}: {e}", json(path)))?,
            ),
            ("GET", "/status") => Request::Status,
            ("POST", "/end") => Request::End,
            ("POST", "/extend") => {
                let by: ExtendBy =
                    serde_json::from_str(body).map_err(|e| format!("{}: {e}", json(path)))?;
                Request::Extend {
                    minutes: by.minutes,
                }
            }
            ("POST", "/retry") => Request::Retry,
            _ => return Err(format!("no internal route for {method} {path}")),
        })
    }
}

impl<P: Platform> Lab<'_, P> {
    /// Answers `request` with its procedure.
    pub async fn answer(&self, request: Request) -> Result<Reply, StoreError> {
        match request {
            Request::Create(new) => self.create(new).await,
            Request::Status => self.status().await,
            Request::End => self.end().await,
            Request::Extend { minutes } => self.extend(minutes).await,
            Request::Retry => self.retry().await,
        }
    }

    /// The lab a request is about, or the refusal when there is none.
    async fn lab(&self) -> Result<Result<Session, Refusal>, StoreError> {
        Ok(match self.find().await? {
            Found::Session(session) => Ok(*session),
            Found::Nothing => Err(Refusal::NotFound),
            Found::Unreadable(problems) => Err(Refusal::Unreadable(problems)),
        })
    }

    /// A change of the record: saved (with its alarm), answered with the lab's status view, and
    /// `line` logged after the answer.
    async fn changed(
        &self,
        mut session: Session,
        status: u16,
        line: String,
    ) -> Result<Reply, StoreError> {
        self.persist(&mut session).await?;
        Ok(Reply::Lab {
            status,
            session: Box::new(session),
            line: Some(line),
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
    pub async fn create(&self, new: NewSession) -> Result<Reply, StoreError> {
        let existing = match self.find().await? {
            Found::Session(existing) => Some(*existing),
            Found::Nothing => None,
            Found::Unreadable(problems) => {
                return Ok(Reply::Refused(Refusal::Unreadable(problems)))
            }
        };
        let Some(existing) = existing else {
            let config = self.config;
            let lifetime = config.duration_ms(new.duration);
            let mut session = Session::schedule(new, self.platform.now_ms(), lifetime);
            session.cleanup.start_delay_ms = retry::first_attempt_delay(
                config.retry_policy,
                config.expiry_spread_ms(),
                self.platform.random(),
            );
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
            return self.changed(session, 201, line).await;
        };
        Ok(match existing.status() {
            // A retried POST of the same lab: answer with the current state, change nothing (in
            // particular, do not push the expiry back).
            Status::Scheduled if existing.same_request(&new) => Self::unchanged(200, existing),
            Status::Scheduled => Reply::Refused(Refusal::Conflict(format!(
                "lab {} is already scheduled with a different user_id, worker_nodes or duration",
                existing.lab_request_id
            ))),
            status => Reply::Refused(Refusal::Conflict(format!(
                "lab {} is {}; it cannot be scheduled again",
                existing.lab_request_id,
                status.describe()
            ))),
        })
    }

    /// `GET .../{id}`: the lab's status view.
    pub async fn status(&self) -> Result<Reply, StoreError> {
        Ok(match self.lab().await? {
            Ok(session) => Self::unchanged(200, session),
            Err(refusal) => Reply::Refused(refusal),
        })
    }

    /// `DELETE .../{id}`: the cleanup starts now (202); a completed lab answers 200 as it is.
    pub async fn end(&self) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        if session.status() == Status::Completed {
            return Ok(Self::unchanged(200, session));
        }
        if !session.end_now(self.platform.now_ms()) {
            return Ok(Self::unchanged(202, session));
        }
        let line = format!(
            "Lab {} ended by request; cleanup starts now",
            session.lab_request_id
        );
        self.changed(session, 202, line).await
    }

    /// `POST .../{id}/retry`: the next attempt of a retrying lab now (202).
    pub async fn retry(&self) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        match session.retry_now(self.platform.now_ms()) {
            Ok(false) => Ok(Self::unchanged(202, session)),
            Ok(true) => {
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
    pub async fn extend(&self, minutes: u64) -> Result<Reply, StoreError> {
        let mut session = match self.lab().await? {
            Ok(session) => session,
            Err(refusal) => return Ok(Reply::Refused(refusal)),
        };
        let config = self.config;
        match session.extend(
            minutes,
            config.duration_unit_ms(),
            config.max_duration_minutes,
        ) {
            Ok(()) => {
                let line = format!(
                    "Lab {} extended by {minutes} minutes; now expires at {}",
                    session.lab_request_id,
                    rfc3339(session.expires_at_ms)
                );
                self.changed(session, 200, line).await
            }
            Err(refusal) => Ok(Reply::Refused(refusal)),
        }
    }
}
