//! The record's outbox: webhook events waiting for delivery, each kept as a snapshot of the view it carries, not a copy.
//!
//! An event's body is `{"type", "timestamp", "data": <the lab's status view when it was created>}`,
//! fixed at creation. Of that view only the cleanup's progress, the expiry and the dry-run mark
//! change over a lab's life; the event keeps those (VMs by their position, a few hundred bytes
//! for 48 workers where a copy of the view is 30 KB) and the body is rebuilt from them and the
//! lab's fixed fields, the same bytes on every delivery.

use serde::Serialize;

use crate::lab::link::signed::{self as link, LinkConfig};
use crate::lab::session::{Cleanup, DeletionError, EndReason, Outcome, Session, Status};
use crate::lab::text::rfc3339;

/// An event waiting in the lab's outbox until its receiver accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OutboxEvent {
    /// `webhook-id`: unique per event, the same on every redelivery.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The body as an earlier version stored it (a whole copy); new events have a `snapshot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// What the status view said when the event was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    pub created_at_ms: i64,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// When to deliver (again).
    pub next_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The changing part of a lab's status view at one moment; VMs by their position in the lab's
/// VM list (the master is 0, the workers follow in request order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub status: Status,
    pub expires_at_ms: i64,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub already_gone: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<SnapshotOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<i64>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// A warning's minutes (`duration` units) left, in its `data.minutes_left`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minutes_left: Option<u64>,
    /// A stopped lab's `delete_at`, in its `data.delete_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_at_ms: Option<i64>,
    /// A warning with signed links (`lab::link`): the deadline they name. The links themselves
    /// are built at each delivery (`data.links`), not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_until_ms: Option<i64>,
    /// `lab.expiring`'s extend links: their minutes (those the lifetime cap allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_minutes: Vec<u64>,
}

/// `last_outcome` at the moment, its errors by VM position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SnapshotOutcome {
    pub successful: usize,
    pub failed: usize,
    pub not_tried: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<(u16, String)>,
}

impl Snapshot {
    /// The changing part of `session`'s view now.
    pub fn of(session: &Session) -> Snapshot {
        let c = &session.cleanup;
        let positions = |ids: &[String]| -> Vec<u16> {
            ids.iter()
                .filter_map(|id| session.position(id))
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        };
        Snapshot {
            status: c.status,
            expires_at_ms: session.expires_at_ms,
            attempts: c.attempts,
            next_attempt_at_ms: c.next_attempt_at_ms,
            deleted: positions(&c.deleted),
            already_gone: positions(&c.already_gone),
            outcome: c.last_outcome.as_ref().map(|o| SnapshotOutcome {
                successful: o.successful_deletions,
                failed: o.failed_deletions,
                not_tried: o.not_tried,
                errors: o
                    .errors
                    .iter()
                    .filter_map(|e| {
                        let p = u16::try_from(session.position(&e.lab_request_id)?).ok()?;
                        Some((p, e.error.clone()))
                    })
                    .collect(),
            }),
            completed_at_ms: c.completed_at_ms,
            dry_run: session.dry_run,
            end_reason: session.end_reason,
            minutes_left: None,
            delete_at_ms: session.stopped_until(),
            link_until_ms: None,
            link_minutes: Vec::new(),
        }
    }

    /// The cleanup's progress as it was, in `session`'s terms (positions back to ids).
    fn cleanup(&self, session: &Session) -> Cleanup {
        let vms: Vec<&str> = session.vms().map(|vm| vm.id).collect();
        let id = |p: &u16| vms.get(usize::from(*p)).map(|id| id.to_string());
        Cleanup {
            status: self.status,
            attempts: self.attempts,
            deleted: self.deleted.iter().filter_map(id).collect(),
            already_gone: self.already_gone.iter().filter_map(id).collect(),
            services_answered_404: false,
            refused_last_attempt: false,
            start_delay_ms: 0,
            next_attempt_at_ms: self.next_attempt_at_ms,
            last_outcome: self.outcome.as_ref().map(|o| Outcome {
                successful_deletions: o.successful,
                failed_deletions: o.failed,
                errors: o
                    .errors
                    .iter()
                    .filter_map(|(p, error)| {
                        Some(DeletionError {
                            lab_request_id: id(p)?,
                            error: error.clone(),
                        })
                    })
                    .collect(),
                not_tried: o.not_tried,
            }),
            completed_at_ms: self.completed_at_ms,
            timeout_streak: 0,
            failing: false,
        }
    }
}

impl OutboxEvent {
    /// A new event named `event_type` for `session` at `now_ms`, due now.
    pub fn new(event_type: &str, session: &Session, now_ms: i64, id: String) -> OutboxEvent {
        OutboxEvent {
            id,
            event_type: event_type.into(),
            body: None,
            snapshot: Some(Snapshot::of(session)),
            created_at_ms: now_ms,
            attempts: 0,
            next_at_ms: now_ms,
            last_error: None,
        }
    }

    /// The exact bytes sent: `{"data", "timestamp", "type"}` with the lab's status view as it
    /// was when the event was created; the same on every delivery (a warning's `data.links`
    /// signed with the current `LINK_SECRET` of `links`, and left out when links are off).
    pub fn body(&self, session: &Session, links: Option<&LinkConfig>) -> String {
        if let Some(body) = &self.body {
            return body.clone();
        }
        let data = match &self.snapshot {
            Some(snapshot) => {
                let cleanup = snapshot.cleanup(session);
                let mut data = serde_json::to_value(session.view_at(
                    &cleanup,
                    snapshot.expires_at_ms,
                    snapshot.dry_run,
                    snapshot.end_reason,
                ))
                .unwrap_or_default();
                if let Some(map) = data.as_object_mut() {
                    if let Some(left) = snapshot.minutes_left {
                        map.insert("minutes_left".into(), left.into());
                    }
                    if let Some(at) = snapshot.delete_at_ms {
                        map.insert("delete_at".into(), rfc3339(at).into());
                    }
                    if let (Some(until), Some(config)) = (snapshot.link_until_ms, links) {
                        let links = link::links(
                            config,
                            &session.lab_request_id,
                            &self.event_type,
                            &self.id,
                            until,
                            &snapshot.link_minutes,
                        );
                        map.insert(
                            "links".into(),
                            serde_json::to_value(links).unwrap_or_default(),
                        );
                    }
                }
                data
            }
            None => serde_json::to_value(session.view()).unwrap_or_default(),
        };
        serde_json::json!({
            "type": self.event_type,
            "timestamp": rfc3339(self.created_at_ms),
            "data": data,
        })
        .to_string()
    }
}

impl Session {
    /// Queues `event` in the outbox. An undelivered event of the same type is replaced (a newer
    /// `lab.expiring` says all an older one did), and so are the grace stage's two events each
    /// other (`lab.resumed` says the lab runs again, whatever `lab.stopped` said): the outbox
    /// holds at most one event per slot, which is what bounds it. Returns the ids of the events
    /// replaced.
    pub fn queue_event(&mut self, event: OutboxEvent) -> Vec<String> {
        let outbox = &mut self.notices.outbox;
        let slot = slot(&event.event_type);
        let replaced: Vec<String> = outbox
            .iter()
            .filter(|e| self::slot(&e.event_type) == slot)
            .map(|e| e.id.clone())
            .collect();
        outbox.retain(|e| self::slot(&e.event_type) != slot);
        outbox.push(event);
        replaced
    }
}

/// The outbox slot of an event type: its own, but one for the grace stage's two.
fn slot(event_type: &str) -> &str {
    match event_type {
        "lab.resumed" => "lab.stopped",
        other => other,
    }
}
