//! Reading and writing the lab's record: adoption of a legacy record on the first read, and every save within the record's bound, with its alarm.

use crate::lab::index;
use crate::lab::legacy::LegacyProblem;
use crate::lab::ports::{Level, StoreError, Stored};
use crate::lab::procedures::{Lab, Platform};
use crate::lab::session::bound::{self, Dropped};
use crate::lab::session::claim::Claim;
use crate::lab::session::Session;
use crate::lab::text::rfc3339;
use crate::lab::wake;

/// What the object held when a procedure read it, to see before it writes that nothing changed
/// while it waited on another object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Held {
    Nothing,
    Text(String),
}

impl Held {
    pub(crate) fn of(stored: &Stored) -> Held {
        match stored {
            Stored::Record(text) | Stored::Claim(text) => Held::Text(text.clone()),
            Stored::Legacy(_) | Stored::Empty => Held::Nothing,
        }
    }
}

/// What a request or an alarm finds in the object, once a legacy record has been adopted.
pub(crate) enum Found {
    Session(Box<Session>),
    /// The TypeScript worker's keys, unreadable; kept as they are (see `lab::legacy`).
    Unreadable(Vec<LegacyProblem>),
    /// No lab: this object's VM is a worker VM a lab claimed (the claim as stored, and read).
    Claimed(String, Claim),
    Nothing,
}

fn decode(text: &str) -> Result<Session, StoreError> {
    Session::decode(text).map_err(|e| StoreError(format!("stored session is unreadable: {e}")))
}

impl<P: Platform> Lab<'_, P> {
    /// Whether the object still holds what `held` says (read again, right before a write).
    pub(crate) async fn still(&self, held: &Held) -> Result<bool, StoreError> {
        Ok(Held::of(&self.platform.load().await?) == *held)
    }

    pub(crate) fn info(&self, line: String) {
        self.platform.log(Level::Info, &line);
    }

    pub(crate) fn warn(&self, line: String) {
        self.platform.log(Level::Warn, &line);
    }

    pub(crate) fn error(&self, line: String) {
        self.platform.log(Level::Error, &line);
    }

    /// The record as stored now, if there is one in this worker's format (a re-read after
    /// waiting on the outside world, which may have let another event change it).
    pub(crate) async fn load(&self) -> Result<Option<Session>, StoreError> {
        match self.platform.load().await? {
            Stored::Record(text) => decode(&text).map(Some),
            Stored::Legacy(_) | Stored::Claim(_) | Stored::Empty => Ok(None),
        }
    }

    /// Loads the session. A lab the TypeScript worker scheduled (its keys, no record) is adopted
    /// first: written in this worker's format with its alarm, legacy keys removed, in one batch.
    /// Unreadable legacy keys are logged as an error, never dropped, and the alarm is kept (set
    /// `CLEANUP_RETRY_SECONDS` ahead if there is none) so the object looks again.
    pub(crate) async fn find(&self) -> Result<Found, StoreError> {
        Ok(self.find_held().await?.0)
    }

    /// `find`, and what the object held (as `Held` compares it), to check before a write that
    /// follows a wait on another object that nothing changed meanwhile.
    pub(crate) async fn find_held(&self) -> Result<(Found, Held), StoreError> {
        let stored = self.platform.load().await?;
        let held = Held::of(&stored);
        let record = match stored {
            Stored::Record(text) => {
                return decode(&text).map(|s| (Found::Session(Box::new(s)), held))
            }
            Stored::Empty => return Ok((Found::Nothing, held)),
            Stored::Claim(text) => {
                return Ok((
                    match Claim::decode(&text) {
                        Some(claim) => Found::Claimed(text, claim),
                        // Unreadable: as good as none (the next create rewrites it).
                        None => Found::Nothing,
                    },
                    held,
                ));
            }
            Stored::Legacy(record) => record,
        };
        let now = self.platform.now_ms();
        let alarm = self.platform.alarm().await?;
        let retry_ms = self.config.retry_ms();
        match record.adopt(alarm, now, &crate::lab::legacy::Rules::of(self.config)) {
            Ok(mut session) => {
                session.record(crate::lab::session::Kind::Adopted, now);
                index::touch(&mut session, now, retry_ms);
                let at = wake::next_wake(&session, &self.config.timing()).unwrap_or(now);
                let (text, _) = bound::encode(&mut session);
                self.platform.adopt(&text, at).await?;
                let held = Held::Text(text);
                self.info(format!(
                    "Adopted lab {} of user {} ({} VM{}) from the previous worker's storage; expires at {}",
                    session.lab_request_id,
                    session.user_id,
                    session.vm_count(),
                    if session.vm_count() == 1 { "" } else { "s" },
                    rfc3339(session.expires_at_ms)
                ));
                // Its worker VMs' objects learn whose VMs they are, as a create's would (best
                // effort: the lab is live already, whatever they answer).
                let (refused, unavailable) = self.claim_all(&session).await;
                if !refused.is_empty() || !unavailable.is_empty() {
                    self.warn(format!(
                        "Adopted lab {}: not every worker VM could be claimed ({}); an inventory that acts may take an unclaimed one for an orphan while the index does not list it",
                        session.lab_request_id,
                        [refused, unavailable].concat().join("; ")
                    ));
                }
                Ok((Found::Session(Box::new(session)), held))
            }
            Err(problems) => {
                let retry_at = match alarm {
                    Some(at) => at,
                    None => {
                        let at = now.saturating_add(retry_ms);
                        self.platform.set_alarm(at).await?;
                        at
                    }
                };
                let named: Vec<String> = problems.iter().map(ToString::to_string).collect();
                self.error(format!(
                    "❌ The previous worker's record{} is unreadable: {}; it is kept as it is, looking again at {}",
                    record.label(),
                    named.join("; "),
                    rfc3339(retry_at)
                ));
                Ok((Found::Unreadable(problems), Held::Nothing))
            }
        }
    }

    /// When the object's alarm must fire for `session` (`None`: nothing left to do).
    pub(crate) fn alarm_at(&self, session: &Session) -> Option<i64> {
        wake::next_wake(session, &self.config.timing())
    }

    /// Saves a change of the record: a new revision (its index row is owed from now on) and the
    /// alarm at the object's next wake-up, in one batch.
    pub(crate) async fn persist(&self, session: &mut Session) -> Result<(), StoreError> {
        if self.config.fleet_index {
            index::touch(session, self.platform.now_ms(), self.config.retry_ms());
        }
        self.save(session).await
    }

    /// `persist` for a request whose answer is followed by the index row's write
    /// (`index::answered`: no wake-up of the row's own while the lab is live).
    pub(crate) async fn persist_answered(&self, session: &mut Session) -> Result<(), StoreError> {
        if self.config.fleet_index {
            index::answered(session, self.platform.now_ms(), self.config.retry_ms());
        }
        self.save(session).await
    }

    /// Writes the record with its alarm, within the record's bound (`session::bound`). A save
    /// that fails is tried once more as it is, then without what is expendable (undelivered
    /// events, the texts of the last errors), with an error line: the cleanup's progress is never
    /// lost to a record that grew too large, so no deletion runs twice because of it.
    pub(crate) async fn save(&self, session: &mut Session) -> Result<(), StoreError> {
        // The index row this object wrote since the last save, known from its memory alone.
        index::confirmed(session, self.platform.index_written());
        let (text, dropped) = bound::encode(session);
        self.dropped(session, &dropped, "to stay within the record's size bound");
        let alarm = self.alarm_at(session);
        let Err(e) = self.platform.save(&text, alarm).await else {
            return Ok(());
        };
        // Once more as it is (a passing fault), then without what can be spared.
        match self.platform.save(&text, alarm).await {
            Ok(()) => Ok(()),
            Err(_) => {
                let dropped = bound::shed(session);
                if dropped.is_empty() {
                    return Err(e);
                }
                self.error(format!(
                    "❌ Saving the record of lab {} failed ({e}); saving its cleanup's progress without what can be spared",
                    session.lab_request_id
                ));
                self.dropped(session, &dropped, "so that the record could be saved");
                let (text, _) = bound::encode(session);
                self.platform.save(&text, self.alarm_at(session)).await
            }
        }
    }

    fn dropped(&self, session: &Session, dropped: &[Dropped], why: &str) {
        for d in dropped.iter().filter(|d| **d != Dropped::TimelineEvent) {
            self.error(format!(
                "❌ Lab {}: dropped {d} {why}",
                session.lab_request_id
            ));
        }
    }
}
