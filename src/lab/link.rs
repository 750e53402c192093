//! Signed links in the warnings: what a link names, its HMAC-SHA256 signature, its URL, and what it may do to a lab.
//!
//! `lab.expiring` carries one link per `EXTEND_LINK_MINUTES` value ("give it 30 more minutes"),
//! `lab.idle_warning` one that counts as activity ("keep it active"). A link names one lab, one
//! action, its minutes, the warning it came with and the deadline that warning was for (the
//! lab's expiry or idle deadline then); all five are signed under `LINK_SECRET`, so a change to
//! any of them fails the check. The deadline does three things: the link expires with it; it
//! works only while the lab's deadline is still the one the warning named (a link of an older
//! warning, or of a lab that moved on, changes nothing); and, since using it moves the deadline,
//! it works once, for all the links of its warning. A used link answers what it did, read from
//! the lab's timeline (`extended`, or `activity`, by `link`, from that deadline): nothing more
//! is stored for it, and the record's bound holds as before.
//!
//! Pure: the routes (`api::links`) parse and check a link here, and the lab's object decides
//! with `decide` what it does.

use serde::{Deserialize, Serialize};

use crate::lab::session::{By, Kind, Session, Status};
use crate::lab::time::units_ms;

pub mod signed;

pub use signed::{
    links, parse, signature, url, verify, Action, ExtendLink, KeepActiveLink, Link, LinkConfig,
    Links, Refused, LINKS_PATH, MAX_EXTEND_LINKS, MAX_PUBLIC_URL_CHARS, SIGNATURE_CHARS,
};

/// The extend minutes a `lab.expiring` of `session` offers now: those of `config` the
/// lifetime cap `max_minutes` still allows.
pub fn extend_minutes(config: &LinkConfig, session: &Session, max_minutes: u64) -> Vec<u64> {
    config
        .extend_minutes
        .iter()
        .copied()
        .filter(|m| {
            session
                .lifetime_within(*m, max_minutes, "extending by")
                .is_ok()
        })
        .collect()
}

/// What a link does to a lab, or why it does nothing; the lab's object answers it as JSON and
/// the route renders it as a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Answer {
    /// A GET: what a click would do. `ends_at_ms`: the deadline now; `new_ends_at_ms`: after.
    Offer {
        ends_at_ms: i64,
        new_ends_at_ms: i64,
    },
    /// Done now: the lab's deadline is `ends_at_ms`.
    Applied { ends_at_ms: i64 },
    /// This link, or another of its warning, was used at `at_ms`: the deadline it set then
    /// (nothing done now). `same`: this very link.
    Used {
        at_ms: i64,
        ends_at_ms: i64,
        same: bool,
    },
    /// The lab's deadline is no longer the one the link's warning named (an extend, activity or
    /// a newer link moved it): nothing done. `ends_at_ms`: the deadline now, if any.
    Outdated { ends_at_ms: Option<i64> },
    /// Past the deadline the link named: nothing done.
    Expired { until_ms: i64 },
    /// The lab is not running any more (`status`: its status's name): nothing done.
    Over { status: String },
    /// The extension would pass the lifetime cap: nothing done.
    Capped { max_minutes: u64 },
    /// No such lab (or its record has gone at the end of retention).
    Unknown,
}

/// What `link` does to `session` at `now_ms`: `Ok(new deadline)` when a click applies it
/// (`Answer::Offer` is built from it on a GET), or the answer that changes nothing.
/// `max_minutes`: the lifetime cap; `unit_ms`: one `duration` unit.
pub fn decide(
    session: &Session,
    link: &Link,
    now_ms: i64,
    max_minutes: u64,
    unit_ms: i64,
) -> Result<i64, Answer> {
    if let Some(used) = used(session, link, unit_ms) {
        return Err(used);
    }
    let status = session.status();
    if status != Status::Scheduled {
        return Err(Answer::Over {
            status: status.name().to_string(),
        });
    }
    if now_ms >= link.until_ms {
        return Err(Answer::Expired {
            until_ms: link.until_ms,
        });
    }
    match link.action {
        Action::Extend => {
            if session.expires_at_ms != link.until_ms {
                return Err(Answer::Outdated {
                    ends_at_ms: Some(session.expires_at_ms),
                });
            }
            if session
                .lifetime_within(link.minutes, max_minutes, "extending by")
                .is_err()
            {
                return Err(Answer::Capped { max_minutes });
            }
            Ok(session
                .expires_at_ms
                .saturating_add(units_ms(link.minutes, unit_ms)))
        }
        Action::KeepActive => {
            let deadline = session.idle_deadline(None);
            if deadline != Some(link.until_ms) {
                return Err(Answer::Outdated {
                    ends_at_ms: deadline,
                });
            }
            // Activity now: the idle deadline a whole timeout from now, the expiry at the latest.
            let timeout = session.idle.timeout_ms.unwrap_or(0);
            Ok(now_ms.saturating_add(timeout).min(session.expires_at_ms))
        }
    }
}

/// The timeline's word that a link of `link`'s warning was used: the last `extended` (for an
/// extend link) or `activity` (keep-active) by a link from the deadline the link names.
fn used(session: &Session, link: &Link, unit_ms: i64) -> Option<Answer> {
    let kind = match link.action {
        Action::Extend => Kind::Extended,
        Action::KeepActive => Kind::Activity,
    };
    let event = session
        .timeline
        .events
        .iter()
        .rev()
        .find(|e| e.kind == kind && e.by == Some(By::Link) && e.from == Some(link.until_ms))?;
    let to = event.to?;
    let moved = units_ms(link.minutes, unit_ms);
    Some(Answer::Used {
        at_ms: event.at,
        ends_at_ms: to,
        same: link.action == Action::KeepActive || to == link.until_ms.saturating_add(moved),
    })
}

#[cfg(test)]
mod tests;
