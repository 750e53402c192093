//! The record as stored: one flat JSON object, the sub-records' fields side by side in the order every version wrote them.
//!
//! The same JSON as `#[serde(flatten)]` would give, through two plain structs instead (flatten
//! buffers every value before it reads it: about 5 KB more wasm and a slower load). The fixtures
//! in `fixtures/` were written by the version before the sub-records; they load and serialize
//! back byte for byte (`tests::records_of_the_previous_version_round_trip`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::lab::session::{
    Adoption, Cleanup, EndReason, Event, Idle, IndexSync, Labels, Notices, OutboxEvent, Outcome,
    Session, Status, Sync, Timeline,
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
}

#[derive(Deserialize)]
struct Owned {
    lab_request_id: String,
    user_id: String,
    vm_name: Option<String>,
    worker_lab_request_ids: Vec<String>,
    duration: u64,
    created_at_ms: i64,
    expires_at_ms: i64,
    status: Status,
    attempts: u32,
    deleted: Vec<String>,
    #[serde(default)]
    already_gone: Vec<String>,
    #[serde(default)]
    services_answered_404: bool,
    #[serde(default)]
    refused_last_attempt: bool,
    #[serde(default)]
    start_delay_ms: i64,
    next_attempt_at_ms: Option<i64>,
    last_outcome: Option<Outcome>,
    completed_at_ms: Option<i64>,
    #[serde(default)]
    timeout_streak: u32,
    #[serde(default)]
    failing: bool,
    #[serde(default)]
    extended_minutes: u64,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    adopted_at_ms: Option<i64>,
    #[serde(default)]
    inventory_at_ms: Option<i64>,
    #[serde(default)]
    revision: u64,
    #[serde(default)]
    index: IndexSync,
    #[serde(default)]
    warned_for_expiry_ms: Option<i64>,
    #[serde(default)]
    warned_stages: Vec<u64>,
    #[serde(default)]
    idle_warned_for_ms: Option<i64>,
    #[serde(default)]
    stuck_notified: bool,
    #[serde(default)]
    outbox: Vec<OutboxEvent>,
    #[serde(default)]
    end_reason: Option<EndReason>,
    #[serde(default)]
    idle_timeout: Option<u64>,
    #[serde(default)]
    idle_timeout_ms: Option<i64>,
    #[serde(default)]
    last_activity_ms: Option<i64>,
    #[serde(default)]
    timeline: Vec<Event>,
    #[serde(default)]
    timeline_truncated: u64,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    jobs: Vec<String>,
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
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Session {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let o = Owned::deserialize(deserializer)?;
        Ok(Session {
            lab_request_id: o.lab_request_id,
            user_id: o.user_id,
            vm_name: o.vm_name,
            worker_lab_request_ids: o.worker_lab_request_ids,
            duration: o.duration,
            created_at_ms: o.created_at_ms,
            expires_at_ms: o.expires_at_ms,
            cleanup: Cleanup {
                status: o.status,
                attempts: o.attempts,
                deleted: o.deleted,
                already_gone: o.already_gone,
                services_answered_404: o.services_answered_404,
                refused_last_attempt: o.refused_last_attempt,
                start_delay_ms: o.start_delay_ms,
                next_attempt_at_ms: o.next_attempt_at_ms,
                last_outcome: o.last_outcome,
                completed_at_ms: o.completed_at_ms,
                timeout_streak: o.timeout_streak,
                failing: o.failing,
            },
            extended_minutes: o.extended_minutes,
            dry_run: o.dry_run,
            adoption: Adoption {
                adopted_at_ms: o.adopted_at_ms,
                inventory_at_ms: o.inventory_at_ms,
            },
            sync: Sync {
                revision: o.revision,
                index: o.index,
            },
            notices: Notices {
                warned_for_expiry_ms: o.warned_for_expiry_ms,
                warned_stages: o.warned_stages,
                idle_warned_for_ms: o.idle_warned_for_ms,
                stuck_notified: o.stuck_notified,
                outbox: o.outbox,
            },
            end_reason: o.end_reason,
            idle: Idle {
                timeout_minutes: o.idle_timeout,
                timeout_ms: o.idle_timeout_ms,
                last_activity_ms: o.last_activity_ms,
            },
            timeline: Timeline {
                events: o.timeline,
                truncated: o.timeline_truncated,
            },
            labels: o.labels,
            jobs: o.jobs,
        })
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
