//! A signed link of a warning, at the lab's object: what it would do (a GET), or done once (a POST), exactly as extend or activity do it.

use crate::lab::link::{self, Action, Answer, Link};
use crate::lab::ports::{Level, StoreError};
use crate::lab::procedures::record::Found;
use crate::lab::procedures::{Lab, Platform, Reply};
use crate::lab::session::{By, Event, Kind};
use crate::lab::text::rfc3339;

impl<P: Platform> Lab<'_, P> {
    /// `link` (checked by the route: its signature is this service's): `apply` false (a GET,
    /// which never changes anything) answers what a click would do; `apply` true does it, once:
    /// the lab's deadline moves, so the same link, or any other of the same warning, then no
    /// longer applies (`link::decide`), and it answers what it did.
    pub async fn link(&self, link: Link, apply: bool) -> Result<Reply, StoreError> {
        let mut session = match self.find().await? {
            Found::Session(session) if session.lab_request_id == link.lab => *session,
            _ => return Ok(answer(Answer::Unknown)),
        };
        let (p, config) = (self.platform, self.config);
        let now = p.now_ms();
        let unit = config.duration_unit_ms();
        let until = match link::decide(&session, &link, now, config.max_duration_minutes, unit) {
            Ok(until) => until,
            Err(refused) => return Ok(answer(refused)),
        };
        if !apply {
            return Ok(answer(Answer::Offer {
                ends_at_ms: link.until_ms,
                new_ends_at_ms: until,
            }));
        }
        let line = match link.action {
            Action::Extend => {
                let from = session.expires_at_ms;
                if let Err(refusal) =
                    session.extend(link.minutes, unit, config.max_duration_minutes)
                {
                    // `decide` checked the status and the cap: not expected, and nothing done.
                    return Ok(Reply::Refused(refusal));
                }
                session.timeline.push(Event {
                    from: Some(from),
                    to: Some(session.expires_at_ms),
                    by: Some(By::Link),
                    ..Event::new(Kind::Extended, now)
                });
                format!(
                    "Lab {} extended by {} with a signed link of warning {}; now expires at {}",
                    session.lab_request_id,
                    crate::lab::text::duration_units(link.minutes, unit),
                    link.warning,
                    rfc3339(session.expires_at_ms)
                )
            }
            Action::KeepActive => {
                // Activity, written at once (a link is clicked rarely; the answer must hold).
                p.note_activity(now);
                session.idle.last_activity_ms = Some(now);
                session.timeline.push(Event {
                    from: Some(link.until_ms),
                    to: Some(until),
                    by: Some(By::Link),
                    ..Event::new(Kind::Activity, now)
                });
                format!(
                    "Lab {} kept active with a signed link of warning {}; it goes idle at {} at the earliest",
                    session.lab_request_id,
                    link.warning,
                    rfc3339(until)
                )
            }
        };
        self.persist_answered(&mut session).await?;
        Ok(Reply::Link {
            answer: Answer::Applied { ends_at_ms: until },
            line: Some((Level::Info, line)),
        })
    }
}

/// An answer that changed nothing.
fn answer(answer: Answer) -> Reply {
    Reply::Link { answer, line: None }
}
