//! The record as stored: one flat JSON object, the sub-records' fields side by side in the order every version wrote them.
//!
//! The same JSON as `#[serde(flatten)]` would give, written through a plain struct (flatten
//! buffers every value before it reads it: about 5 KB more wasm and a slower load) and read
//! field by field from the parsed value (`Session::decode`: derived readers of the record's
//! types were about 8 KB more of the gzipped wasm). The fixtures
//! in `fixtures/` were written by the version before the sub-records; they load and serialize
//! back byte for byte (`tests::records_of_the_previous_version_round_trip`).

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::lab::session::outbox::SnapshotOutcome;
use crate::lab::session::{
    Adoption, By, Cleanup, DeletionError, EndReason, Event, Idle, IndexSync, Kind, Labels, Notices,
    OutboxEvent, Outcome, Session, Snapshot, Status, Stop, Sync, Timeline,
};

#[derive(Serialize)]
struct Flat<'a> {
    lab_request_id: &'a str,
    user_id: &'a str,
    vm_name: &'a Option<String>,
    worker_lab_request_ids: &'a [String],
    duration: u64,
    created_at_ms: i64,
    expires_at_ms: i64,
    status: Status,
    attempts: u32,
    deleted: &'a [String],
    already_gone: &'a [String],
    services_answered_404: bool,
    refused_last_attempt: bool,
    start_delay_ms: i64,
    next_attempt_at_ms: Option<i64>,
    last_outcome: &'a Option<Outcome>,
    completed_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "is_zero")]
    timeout_streak: u32,
    #[serde(skip_serializing_if = "is_false")]
    failing: bool,
    extended_minutes: u64,
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    adopted_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inventory_at_ms: Option<i64>,
    revision: u64,
    index: &'a IndexSync,
    #[serde(skip_serializing_if = "Option::is_none")]
    warned_for_expiry_ms: Option<i64>,
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    warned_stages: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_warned_for_ms: Option<i64>,
    stuck_notified: bool,
    #[serde(skip_serializing_if = "<[OutboxEvent]>::is_empty")]
    outbox: &'a [OutboxEvent],
    #[serde(skip_serializing_if = "Option::is_none")]
    end_reason: Option<EndReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_activity_ms: Option<i64>,
    #[serde(skip_serializing_if = "<[Event]>::is_empty")]
    timeline: &'a [Event],
    #[serde(skip_serializing_if = "is_zero_u64")]
    timeline_truncated: u64,
    #[serde(skip_serializing_if = "Labels::is_empty")]
    labels: &'a Labels,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    jobs: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_stopped_minutes: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    stop_attempts: u32,
    #[serde(skip_serializing_if = "<[u16]>::is_empty")]
    stopped: &'a [u16],
    #[serde(skip_serializing_if = "Option::is_none")]
    delete_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_until_ms: Option<i64>,
    #[serde(skip_serializing_if = "is_false")]
    stop_over: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed_at_ms: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Serialize for Session {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = &self.cleanup;
        Flat {
            lab_request_id: &self.lab_request_id,
            user_id: &self.user_id,
            vm_name: &self.vm_name,
            worker_lab_request_ids: &self.worker_lab_request_ids,
            duration: self.duration,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            status: c.status,
            attempts: c.attempts,
            deleted: &c.deleted,
            already_gone: &c.already_gone,
            services_answered_404: c.services_answered_404,
            refused_last_attempt: c.refused_last_attempt,
            start_delay_ms: c.start_delay_ms,
            next_attempt_at_ms: c.next_attempt_at_ms,
            last_outcome: &c.last_outcome,
            completed_at_ms: c.completed_at_ms,
            timeout_streak: c.timeout_streak,
            failing: c.failing,
            extended_minutes: self.extended_minutes,
            dry_run: self.dry_run,
            adopted_at_ms: self.adoption.adopted_at_ms,
            inventory_at_ms: self.adoption.inventory_at_ms,
            revision: self.sync.revision,
            index: &self.sync.index,
            warned_for_expiry_ms: self.notices.warned_for_expiry_ms,
            warned_stages: &self.notices.warned_stages,
            idle_warned_for_ms: self.notices.idle_warned_for_ms,
            stuck_notified: self.notices.stuck_notified,
            outbox: &self.notices.outbox,
            end_reason: self.end_reason,
            idle_timeout: self.idle.timeout_minutes,
            idle_timeout_ms: self.idle.timeout_ms,
            last_activity_ms: self.idle.last_activity_ms,
            timeline: &self.timeline.events,
            timeline_truncated: self.timeline.truncated,
            labels: &self.labels,
            jobs: &self.jobs,
            keep_stopped_minutes: self.stop.keep_minutes,
            stop_attempts: self.stop.attempts,
            stopped: &self.stop.stopped,
            delete_at_ms: self.stop.delete_at_ms,
            hold_until_ms: self.stop.hold_until_ms,
            stop_over: self.stop.over,
            resumed_at_ms: self.stop.resumed_at_ms,
        }
        .serialize(serializer)
    }
}

impl Session {
    /// Reads a record as `serialize` writes it, and as every earlier version wrote it (fields
    /// added since are optional). Read from a parsed JSON value field by field rather than
    /// derived: the derived readers of the record's types were about 8 KB of the gzipped wasm.
    pub fn decode(text: &str) -> Result<Session, RecordError> {
        let v: Value = serde_json::from_str(text).map_err(|e| RecordError(e.to_string()))?;
        let o = Fields::of(&v, "the record")?;
        let cleanup = Cleanup {
            status: o.req("status", status)?,
            attempts: o.req("attempts", u32_of)?,
            deleted: o.req("deleted", strings)?,
            already_gone: o.or_default("already_gone", strings)?,
            services_answered_404: o.or_default("services_answered_404", boolean)?,
            refused_last_attempt: o.or_default("refused_last_attempt", boolean)?,
            start_delay_ms: o.or_default("start_delay_ms", i64_of)?,
            next_attempt_at_ms: o.opt("next_attempt_at_ms", i64_of)?,
            last_outcome: o.opt("last_outcome", outcome)?,
            completed_at_ms: o.opt("completed_at_ms", i64_of)?,
            timeout_streak: o.or_default("timeout_streak", u32_of)?,
            failing: o.or_default("failing", boolean)?,
        };
        Ok(Session {
            lab_request_id: o.req("lab_request_id", string)?,
            user_id: o.req("user_id", string)?,
            vm_name: o.opt("vm_name", string)?,
            worker_lab_request_ids: o.req("worker_lab_request_ids", strings)?,
            duration: o.req("duration", u64_of)?,
            created_at_ms: o.req("created_at_ms", i64_of)?,
            expires_at_ms: o.req("expires_at_ms", i64_of)?,
            cleanup,
            extended_minutes: o.or_default("extended_minutes", u64_of)?,
            dry_run: o.or_default("dry_run", boolean)?,
            adoption: Adoption {
                adopted_at_ms: o.opt("adopted_at_ms", i64_of)?,
                inventory_at_ms: o.opt("inventory_at_ms", i64_of)?,
            },
            sync: Sync {
                revision: o.or_default("revision", u64_of)?,
                index: o.or_default("index", index_sync)?,
            },
            notices: Notices {
                warned_for_expiry_ms: o.opt("warned_for_expiry_ms", i64_of)?,
                warned_stages: o.or_default("warned_stages", u64s)?,
                idle_warned_for_ms: o.opt("idle_warned_for_ms", i64_of)?,
                stuck_notified: o.or_default("stuck_notified", boolean)?,
                outbox: o.or_default("outbox", outbox_events)?,
            },
            end_reason: o.opt("end_reason", end_reason)?,
            idle: Idle {
                timeout_minutes: o.opt("idle_timeout", u64_of)?,
                timeout_ms: o.opt("idle_timeout_ms", i64_of)?,
                last_activity_ms: o.opt("last_activity_ms", i64_of)?,
            },
            timeline: Timeline {
                events: o.or_default("timeline", events)?,
                truncated: o.or_default("timeline_truncated", u64_of)?,
            },
            labels: o.or_default("labels", labels)?,
            jobs: o.or_default("jobs", strings)?,
            stop: Stop {
                keep_minutes: o.opt("keep_stopped_minutes", u64_of)?,
                attempts: o.or_default("stop_attempts", u32_of)?,
                stopped: o.or_default("stopped", u16s)?,
                delete_at_ms: o.opt("delete_at_ms", i64_of)?,
                hold_until_ms: o.opt("hold_until_ms", i64_of)?,
                over: o.or_default("stop_over", boolean)?,
                resumed_at_ms: o.opt("resumed_at_ms", i64_of)?,
            },
        })
    }
}

/// Why a stored record could not be read: where, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

type Read<T> = Result<T, RecordError>;

/// The fields of one JSON object of the record. A field that is absent is an error where it is
/// required (`req`), its type's default (`or_default`) or `None` (`opt`, which also reads
/// `null` as `None`); a field of the wrong type is an error everywhere, as the derived readers
/// had it.
struct Fields<'a>(&'a serde_json::Map<String, Value>);

impl<'a> Fields<'a> {
    fn of(v: &'a Value, what: &str) -> Read<Fields<'a>> {
        v.as_object()
            .map(Fields)
            .ok_or_else(|| RecordError(format!("{what} is not an object")))
    }

    fn get<T>(&self, key: &str, read: fn(&Value) -> Read<T>) -> Read<Option<T>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => read(v)
                .map(Some)
                .map_err(|e| RecordError(format!("{key}: {e}"))),
        }
    }

    fn req<T>(&self, key: &str, read: fn(&Value) -> Read<T>) -> Read<T> {
        self.get(key, read)?
            .ok_or_else(|| RecordError(format!("missing field {key}")))
    }

    fn or_default<T: Default>(&self, key: &str, read: fn(&Value) -> Read<T>) -> Read<T> {
        Ok(self.get(key, read)?.unwrap_or_default())
    }

    fn opt<T>(&self, key: &str, read: fn(&Value) -> Read<T>) -> Read<Option<T>> {
        match self.0.get(key) {
            Some(Value::Null) => Ok(None),
            _ => self.get(key, read),
        }
    }
}

fn wrong(expected: &str) -> RecordError {
    RecordError(format!("expected {expected}"))
}

fn string(v: &Value) -> Read<String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| wrong("a string"))
}

fn boolean(v: &Value) -> Read<bool> {
    v.as_bool().ok_or_else(|| wrong("true or false"))
}

fn u64_of(v: &Value) -> Read<u64> {
    v.as_u64().ok_or_else(|| wrong("a whole number from 0"))
}

fn i64_of(v: &Value) -> Read<i64> {
    v.as_i64().ok_or_else(|| wrong("a whole number"))
}

fn u32_of(v: &Value) -> Read<u32> {
    u32::try_from(u64_of(v)?).map_err(|_| wrong("a whole number below 2^32"))
}

fn u16_of(v: &Value) -> Read<u16> {
    u16::try_from(u64_of(v)?).map_err(|_| wrong("a VM position below 2^16"))
}

fn usize_of(v: &Value) -> Read<usize> {
    usize::try_from(u64_of(v)?).map_err(|_| wrong("a count"))
}

fn list<T>(v: &Value, read: fn(&Value) -> Read<T>) -> Read<Vec<T>> {
    v.as_array()
        .ok_or_else(|| wrong("an array"))?
        .iter()
        .map(read)
        .collect()
}

fn strings(v: &Value) -> Read<Vec<String>> {
    list(v, string)
}

fn u64s(v: &Value) -> Read<Vec<u64>> {
    list(v, u64_of)
}

fn u16s(v: &Value) -> Read<Vec<u16>> {
    list(v, u16_of)
}

fn position_errors(v: &Value) -> Read<Vec<(u16, String)>> {
    list(v, position_error)
}

fn outbox_events(v: &Value) -> Read<Vec<OutboxEvent>> {
    list(v, outbox_event)
}

fn events(v: &Value) -> Read<Vec<Event>> {
    list(v, event)
}

fn named<T>(v: &Value, parse: fn(&str) -> Option<T>) -> Read<T> {
    let name = v.as_str().ok_or_else(|| wrong("a name"))?;
    parse(name).ok_or_else(|| {
        RecordError(format!(
            "unknown name {:?}",
            crate::lab::text::safe(name, 40)
        ))
    })
}

fn status(v: &Value) -> Read<Status> {
    named(v, Status::from_name)
}

fn end_reason(v: &Value) -> Read<EndReason> {
    named(v, EndReason::parse)
}

fn kind(v: &Value) -> Read<Kind> {
    named(v, Kind::parse)
}

fn by(v: &Value) -> Read<By> {
    named(v, By::parse)
}

/// `[position, "error"]`.
fn position_error(v: &Value) -> Read<(u16, String)> {
    match v.as_array().map(Vec::as_slice) {
        Some([p, e]) => Ok((u16_of(p)?, string(e)?)),
        _ => Err(wrong("[position, error]")),
    }
}

fn labels(v: &Value) -> Read<Labels> {
    v.as_object()
        .ok_or_else(|| wrong("an object"))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), string(v)?)))
        .collect()
}

fn index_sync(v: &Value) -> Read<IndexSync> {
    let o = Fields::of(v, "index")?;
    Ok(IndexSync {
        written: o.or_default("written", u64_of)?,
        retry_at_ms: o.opt("retry_at_ms", i64_of)?,
        delete_retry_at_ms: o.opt("delete_retry_at_ms", i64_of)?,
    })
}

fn outcome(v: &Value) -> Read<Outcome> {
    let o = Fields::of(v, "last_outcome")?;
    Ok(Outcome {
        successful_deletions: o.req("successful_deletions", usize_of)?,
        failed_deletions: o.req("failed_deletions", usize_of)?,
        errors: o.req("errors", |v| list(v, deletion_error))?,
        not_tried: o.or_default("not_tried", usize_of)?,
    })
}

fn deletion_error(v: &Value) -> Read<DeletionError> {
    let e = Fields::of(v, "an error")?;
    Ok(DeletionError {
        lab_request_id: e.req("lab_request_id", string)?,
        error: e.req("error", string)?,
    })
}

fn outbox_event(v: &Value) -> Read<OutboxEvent> {
    let o = Fields::of(v, "an event")?;
    Ok(OutboxEvent {
        id: o.req("id", string)?,
        event_type: o.req("type", string)?,
        body: o.opt("body", string)?,
        snapshot: o.opt("snapshot", snapshot)?,
        created_at_ms: o.req("created_at_ms", i64_of)?,
        attempts: o.req("attempts", u32_of)?,
        next_at_ms: o.req("next_at_ms", i64_of)?,
        last_error: o.opt("last_error", string)?,
    })
}

fn snapshot(v: &Value) -> Read<Snapshot> {
    let o = Fields::of(v, "snapshot")?;
    Ok(Snapshot {
        status: o.req("status", status)?,
        expires_at_ms: o.req("expires_at_ms", i64_of)?,
        attempts: o.req("attempts", u32_of)?,
        next_attempt_at_ms: o.opt("next_attempt_at_ms", i64_of)?,
        deleted: o.or_default("deleted", u16s)?,
        already_gone: o.or_default("already_gone", u16s)?,
        outcome: o.opt("outcome", snapshot_outcome)?,
        completed_at_ms: o.opt("completed_at_ms", i64_of)?,
        dry_run: o.or_default("dry_run", boolean)?,
        end_reason: o.opt("end_reason", end_reason)?,
        minutes_left: o.opt("minutes_left", u64_of)?,
        delete_at_ms: o.opt("delete_at_ms", i64_of)?,
    })
}

fn snapshot_outcome(v: &Value) -> Read<SnapshotOutcome> {
    let r = Fields::of(v, "outcome")?;
    Ok(SnapshotOutcome {
        successful: r.req("successful", usize_of)?,
        failed: r.req("failed", usize_of)?,
        not_tried: r.req("not_tried", usize_of)?,
        errors: r.or_default("errors", position_errors)?,
    })
}

pub(crate) fn event(v: &Value) -> Read<Event> {
    let o = Fields::of(v, "a timeline event")?;
    Ok(Event {
        at: o.req("at", i64_of)?,
        kind: o.req("type", kind)?,
        from: o.opt("from", i64_of)?,
        to: o.opt("to", i64_of)?,
        by: o.opt("by", by)?,
        left: o.opt("left", u64_of)?,
        reason: o.opt("reason", end_reason)?,
        n: o.opt("n", u32_of)?,
        ms: o.opt("ms", i64_of)?,
        deleted: o.or_default("deleted", u16s)?,
        gone: o.or_default("gone", u16s)?,
        failed: o.or_default("failed", position_errors)?,
        not_tried: o.or_default("not_tried", u32_of)?,
        vm: o.opt("vm", u16_of)?,
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}
