//! The record's one size bound, and what gives way when a save could break it.
//!
//! A lab's record is one storage value. The TypeScript worker's class (adopted at cutover) keeps
//! key-value storage, where one value holds at most 128 KiB, and a string is stored as UTF-16 in
//! the worst case (two bytes per code unit, e.g. with one character outside Latin-1). The record
//! stays under half of that whatever valid input it meets: every part is bounded (ids and names
//! by validation, workers by `MAX_WORKERS`, errors by `bounded_errors`, the outbox by one event
//! per type). `bound::tests` computes the worst case from these limits and fills a record to it.

use crate::lab::session::{timeline, DeletionError, Session};
use crate::lab::text;

/// Largest value of Durable Object key-value storage
/// (<https://developers.cloudflare.com/durable-objects/platform/limits/>: 128 KiB).
pub const STORAGE_VALUE_LIMIT_BYTES: usize = 128 * 1024;
/// The record's bound: half the storage limit, counted as UTF-16.
pub const MAX_RECORD_BYTES: usize = STORAGE_VALUE_LIMIT_BYTES / 2;
/// Most workers a lab may have (`lab::limits`): what fits the bound (`tests::the_worst_case_fits`).
pub use crate::lab::limits::MAX_WORKERS;
/// Longest stored error of one VM, in characters (after escaping, see `lab::text`).
pub const MAX_ERROR_CHARS: usize = 200;
/// All error texts of one attempt together, in characters: a lab with many failing VMs keeps a
/// shorter error for each (at least `MIN_ERROR_CHARS`).
pub const ERROR_BUDGET_CHARS: usize = 2_000;
pub const MIN_ERROR_CHARS: usize = 40;
/// Longest stored error of a webhook delivery, in characters.
pub const MAX_DELIVERY_ERROR_CHARS: usize = 120;

/// Bytes of `text` stored as UTF-16.
pub fn utf16_bytes(text: &str) -> usize {
    text.encode_utf16().count() * 2
}

/// The errors of one attempt as the record keeps them: escaped (they come from the backend), each
/// at most `MAX_ERROR_CHARS` and all together at most `ERROR_BUDGET_CHARS` characters.
pub fn bounded_errors(errors: &[DeletionError]) -> Vec<DeletionError> {
    let each = (ERROR_BUDGET_CHARS / errors.len().max(1)).clamp(MIN_ERROR_CHARS, MAX_ERROR_CHARS);
    errors
        .iter()
        .map(|e| DeletionError {
            lab_request_id: e.lab_request_id.clone(),
            error: text::safe(&e.error, each),
        })
        .collect()
}

/// Something the record let go of to stay within its bound or to be saved at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// An undelivered webhook event.
    Event { id: String, event_type: String },
    /// The texts of the last attempt's errors (this many), replaced by a short note.
    ErrorTexts(usize),
    /// An event of the timeline (counted in its `truncated`; not worth an error line).
    TimelineEvent,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dropped::Event { id, event_type } => {
                write!(f, "undelivered event {event_type} ({id})")
            }
            Dropped::ErrorTexts(n) => write!(f, "the texts of {n} errors of the last attempt"),
            Dropped::TimelineEvent => write!(f, "an event of the timeline"),
        }
    }
}

/// The record as stored (JSON), within `MAX_RECORD_BYTES`. Of a record of this version only
/// the timeline can outgrow the bound (everything else fits at its largest: `tests`), and then
/// its oldest events after the first ones go; a record written by an earlier version may not fit
/// (its outbox events held whole copies of the view), and then what is expendable goes, oldest
/// first: the timeline's events, undelivered events, then the texts of the last attempt's
/// errors. Never the cleanup's progress.
pub fn encode(session: &mut Session) -> (String, Vec<Dropped>) {
    let mut dropped = Vec::new();
    loop {
        let text = serde_json::to_string(session).unwrap_or_default();
        let bytes = utf16_bytes(&text);
        if bytes <= MAX_RECORD_BYTES {
            return (text, dropped);
        }
        // Many timeline events at once when they are what is over (one serialization, not one
        // per event): each costs at least its own bytes.
        let mut over = bytes - MAX_RECORD_BYTES;
        while over > 0 && session.timeline.events.len() > timeline::KEEP_FIRST {
            let event = &session.timeline.events[timeline::KEEP_FIRST];
            let cost = utf16_bytes(&serde_json::to_string(event).unwrap_or_default()) + 2;
            session.timeline.drop_one();
            dropped.push(Dropped::TimelineEvent);
            over = over.saturating_sub(cost);
        }
        if over == 0 {
            continue;
        }
        match shed_one(session) {
            Some(d) => dropped.push(d),
            // Nothing left to drop: the progress is saved as it is (the storage decides).
            None => return (text, dropped),
        }
    }
}

/// Everything expendable at once, for a save that failed: the outbox and the errors' texts.
pub fn shed(session: &mut Session) -> Vec<Dropped> {
    let mut dropped = Vec::new();
    while let Some(d) = shed_one(session) {
        dropped.push(d);
    }
    dropped
}

fn shed_one(session: &mut Session) -> Option<Dropped> {
    // The timeline first: its oldest events after the first ones (counted in `truncated`).
    if session.timeline.drop_one() {
        return Some(Dropped::TimelineEvent);
    }
    let outbox = &mut session.notices.outbox;
    if let Some(oldest) = (0..outbox.len()).min_by_key(|&i| outbox[i].created_at_ms) {
        let event = outbox.remove(oldest);
        return Some(Dropped::Event {
            id: event.id,
            event_type: event.event_type,
        });
    }
    let outcome = session.cleanup.last_outcome.as_mut()?;
    const NOTE: &str = "(error text dropped: the record was too large to save)";
    let n = outcome.errors.iter().filter(|e| e.error != NOTE).count();
    if n == 0 {
        return None;
    }
    for e in &mut outcome.errors {
        e.error = NOTE.into();
    }
    Some(Dropped::ErrorTexts(n))
}

#[cfg(test)]
mod tests;
