//! A lab's timeline: what happened to it and when, kept in its record within the record's one size bound.
//!
//! Events are stored compactly (VMs by their position, failures by status code or error class)
//! and turned into the API's form (`GET .../events`) by `Timeline::view`. Bounded twice: by
//! count as they are added (of the attempts, the first and the last `KEEP_ATTEMPTS`; of the
//! other events, the first and the last `KEEP_OTHERS`; only the latest `activity`), and by
//! bytes when the record is saved (`bound::encode` drops the oldest events after the first
//! ones before anything else). Whatever is dropped is counted in `truncated`.

use serde::Serialize;

use crate::lab::text::rfc3339;

/// Attempts kept in full at each end of a long cleanup (100 in all).
pub const KEEP_ATTEMPTS: usize = 50;
/// Other events kept at each end (100 in all).
pub const KEEP_OTHERS: usize = 50;
/// Events the byte bound never drops: the start of the lab's story (`created`, or `adopted`, or
/// an orphan's `reconciled`).
pub const KEEP_FIRST: usize = 1;

/// Most events a page of the timeline holds, and how many by default.
pub const MAX_EVENTS_PAGE: usize = 200;
pub const DEFAULT_EVENTS_PAGE: usize = 100;

/// Where a page of the timeline starts: after the `skip` events at time `at` (events are in
/// time order; several may share a millisecond). Shown as `"<at>.<skip>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EventsCursor {
    pub at: i64,
    pub skip: u32,
}

impl std::fmt::Display for EventsCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.at, self.skip)
    }
}

impl EventsCursor {
    /// A cursor as `Display` shows it; `None` for anything else.
    pub fn parse(text: &str) -> Option<EventsCursor> {
        let (at, skip) = text.split_once('.')?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(at) || !digits(skip) {
            return None;
        }
        Some(EventsCursor {
            at: at.parse().ok()?,
            skip: skip.parse().ok()?,
        })
    }
}

/// Which page of the timeline is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EventsPage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<EventsCursor>,
    pub limit: usize,
}

impl EventsPage {
    /// A page as `Serialize` writes it (the router's forward), read from its JSON value.
    pub fn from_value(v: &serde_json::Value) -> Option<EventsPage> {
        let after = match &v["after"] {
            serde_json::Value::Null => None,
            a => Some(EventsCursor {
                at: a["at"].as_i64()?,
                skip: u32::try_from(a["skip"].as_u64()?).ok()?,
            }),
        };
        Some(EventsPage {
            after,
            limit: usize::try_from(v["limit"].as_u64()?).ok()?,
        })
    }
}

impl Default for EventsPage {
    fn default() -> Self {
        EventsPage {
            after: None,
            limit: DEFAULT_EVENTS_PAGE,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Extended,
    Warned,
    IdleWarned,
    Activity,
    Ended,
    Attempt,
    Stuck,
    Completed,
    RetryNow,
    Adopted,
    Reconciled,
    /// The grace stage: every VM stopped (`to`: when they are deleted).
    Stopped,
    /// The grace stage: `n` stop attempts did not stop every VM (`not_tried`: how many were
    /// left); the lab is deleted now.
    StopFailed,
    /// A stopped lab started again (`to`: its new expiry).
    Resumed,
}

/// Why a lab ended (its cleanup started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its time was up.
    Expired,
    /// No activity for its idle timeout.
    Idle,
    /// Ended through the API (`DELETE`) with the API token.
    Ended,
    /// Ended with the operator token.
    Operator,
    /// An orphan VM an inventory reported, cleaned up as a lab of its own.
    Orphan,
}

impl EndReason {
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Idle => "idle",
            EndReason::Ended => "ended",
            EndReason::Operator => "operator",
            EndReason::Orphan => "orphan",
        }
    }

    pub const ALL: [EndReason; 5] = [
        EndReason::Expired,
        EndReason::Idle,
        EndReason::Ended,
        EndReason::Operator,
        EndReason::Orphan,
    ];

    pub fn parse(name: &str) -> Option<EndReason> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Which token asked for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Api,
    Operator,
    /// A signed link of a warning (`lab::link`), clicked by the student.
    Link,
}

impl By {
    pub fn name(self) -> &'static str {
        match self {
            By::Api => "api",
            By::Operator => "operator",
            By::Link => "link",
        }
    }

    pub fn parse(name: &str) -> Option<By> {
        [By::Api, By::Operator, By::Link]
            .into_iter()
            .find(|b| b.name() == name)
    }
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::Created,
        Kind::Extended,
        Kind::Warned,
        Kind::IdleWarned,
        Kind::Activity,
        Kind::Ended,
        Kind::Attempt,
        Kind::Stuck,
        Kind::Completed,
        Kind::RetryNow,
        Kind::Adopted,
        Kind::Reconciled,
        Kind::Stopped,
        Kind::StopFailed,
        Kind::Resumed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Extended => "extended",
            Kind::Warned => "warned",
            Kind::IdleWarned => "idle_warned",
            Kind::Activity => "activity",
            Kind::Ended => "ended",
            Kind::Attempt => "attempt",
            Kind::Stuck => "stuck",
            Kind::Completed => "completed",
            Kind::RetryNow => "retry_now",
            Kind::Adopted => "adopted",
            Kind::Reconciled => "reconciled",
            Kind::Stopped => "stopped",
            Kind::StopFailed => "stop_failed",
            Kind::Resumed => "resumed",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

crate::lab::named_enum!(Kind, Kind::parse);
crate::lab::named_enum!(By, By::parse);
crate::lab::named_enum!(EndReason, EndReason::parse);

/// One event as stored: its time, its kind, and the fields of its kind (the others absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Event {
    pub at: i64,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// `extended`: the expiry before and after, and who asked; `activity` by a signed link: the
    /// idle deadline before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<By>,
    /// `warned`, `idle_warned`: minutes (`duration` units) left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left: Option<u64>,
    /// `ended`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    /// `attempt`: its number; `stuck`: the attempts so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `attempt`: how long it took, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<i64>,
    /// `attempt`: the VMs (by position) deleted, already gone, failed (with the status code or
    /// the error's class), and how many were not tried (the backend was overloaded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<(u16, String)>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_tried: u32,
    /// `reconciled`: the VM (by position) an inventory still listed, deleted again; absent for
    /// an orphan (the lab's own VM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<u16>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Event {
    /// An event of `kind` at `at`, with no field of its own yet.
    pub fn new(kind: Kind, at: i64) -> Event {
        Event {
            at,
            kind,
            from: None,
            to: None,
            by: None,
            left: None,
            reason: None,
            n: None,
            ms: None,
            deleted: Vec::new(),
            gone: Vec::new(),
            failed: Vec::new(),
            not_tried: 0,
            vm: None,
        }
    }
}

/// The lab's events in order, and how many were dropped to keep it bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Timeline {
    #[serde(rename = "timeline", default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    #[serde(
        rename = "timeline_truncated",
        default,
        skip_serializing_if = "is_zero_u64"
    )]
    pub truncated: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Timeline {
    /// Adds `event`. Only the latest `activity` is kept; of a long run of attempts or of other
    /// events, the first and the last ones (the middle is counted in `truncated`).
    pub fn push(&mut self, event: Event) {
        if event.kind == Kind::Activity {
            self.events.retain(|e| e.kind != Kind::Activity);
        }
        let attempt = event.kind == Kind::Attempt;
        // In time order (an activity noted in memory is written later than it happened): the
        // pages of `view` rely on it.
        let at = self.events.partition_point(|e| e.at <= event.at);
        self.events.insert(at, event);
        let keep = if attempt { KEEP_ATTEMPTS } else { KEEP_OTHERS };
        let same: Vec<usize> = (0..self.events.len())
            .filter(|&i| (self.events[i].kind == Kind::Attempt) == attempt)
            .collect();
        if same.len() > 2 * keep {
            // The oldest of the last ones: the first past the head.
            self.events.remove(same[keep]);
            self.truncated = self.truncated.saturating_add(1);
        }
    }

    /// Drops the oldest event after the first `KEEP_FIRST` (the byte bound's way); `false`
    /// when there is none left to drop.
    pub fn drop_one(&mut self) -> bool {
        if self.events.len() <= KEEP_FIRST {
            return false;
        }
        self.events.remove(KEEP_FIRST);
        self.truncated = self.truncated.saturating_add(1);
        true
    }

    /// The events as the API answers them, VM positions turned back into `vms`' ids, a page at
    /// a time: those after `page.after`, at most `page.limit`, and the cursor of the next page
    /// (`null` on the last).
    pub fn view(&self, vms: &[&str], page: &EventsPage) -> serde_json::Value {
        let start = match page.after {
            None => 0,
            // Events before the cursor's time, and the cursor's count of those at its time: a
            // page stays where it was when older events are dropped meanwhile.
            Some(after) => {
                let before = self.events.partition_point(|e| e.at < after.at);
                let same = self.events[before..]
                    .iter()
                    .take_while(|e| e.at == after.at)
                    .count();
                before + same.min(after.skip as usize)
            }
        };
        let end = start
            .saturating_add(page.limit.max(1))
            .min(self.events.len());
        let events: Vec<serde_json::Value> = self.events[start..end]
            .iter()
            .map(|e| e.view(vms))
            .collect();
        let next = (end < self.events.len()).then(|| {
            let at = self.events[end - 1].at;
            let skip = self.events[..end]
                .iter()
                .rev()
                .take_while(|e| e.at == at)
                .count();
            EventsCursor {
                at,
                skip: u32::try_from(skip).unwrap_or(u32::MAX),
            }
            .to_string()
        });
        serde_json::json!({ "events": events, "truncated": self.truncated, "next_cursor": next })
    }
}

impl Event {
    /// `{"at": RFC 3339, "type": ..., ...}` with VM ids.
    pub fn view(&self, vms: &[&str]) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let id = |p: u16| vms.get(usize::from(p)).copied().unwrap_or("?");
        let mut out = Map::new();
        out.insert("at".into(), json!(rfc3339(self.at)));
        out.insert("type".into(), json!(self.kind));
        let mut put = |k: &str, v: Value| {
            out.insert(k.into(), v);
        };
        match self.kind {
            Kind::Extended => {
                put("from", json!(self.from.map(rfc3339)));
                put("to", json!(self.to.map(rfc3339)));
                put("by", json!(self.by));
            }
            Kind::Warned | Kind::IdleWarned => put("minutes_left", json!(self.left)),
            // Activity by a signed link: the idle deadline before and after it.
            Kind::Activity if self.by.is_some() => {
                put("from", json!(self.from.map(rfc3339)));
                put("to", json!(self.to.map(rfc3339)));
                put("by", json!(self.by));
            }
            Kind::Ended => put("reason", json!(self.reason)),
            Kind::Stuck => put("attempts", json!(self.n)),
            Kind::Stopped => put("delete_at", json!(self.to.map(rfc3339))),
            Kind::StopFailed => {
                put("attempts", json!(self.n));
                put("not_stopped", json!(self.not_tried));
            }
            Kind::Resumed => put("expires_at", json!(self.to.map(rfc3339))),
            Kind::Attempt => {
                put("number", json!(self.n));
                put("duration_ms", json!(self.ms));
                let mut vm_results: Vec<Value> = Vec::new();
                vm_results.extend(
                    self.deleted
                        .iter()
                        .map(|p| json!({"id": id(*p), "result": "deleted"})),
                );
                vm_results.extend(
                    self.gone
                        .iter()
                        .map(|p| json!({"id": id(*p), "result": "already_gone"})),
                );
                vm_results.extend(
                    self.failed
                        .iter()
                        .map(|(p, code)| match code.parse::<u16>() {
                            Ok(status) => {
                                json!({"id": id(*p), "result": "failed", "status": status})
                            }
                            Err(_) => json!({"id": id(*p), "result": "failed", "error": code}),
                        }),
                );
                put("vms", Value::Array(vm_results));
                put("not_tried", json!(self.not_tried));
            }
            Kind::Reconciled => match self.vm {
                Some(p) => {
                    put("vm", json!(id(p)));
                    put("action", json!("deleted_again"));
                }
                None => put("action", json!("orphan_cleaned_up")),
            },
            Kind::Created | Kind::Activity | Kind::Completed | Kind::RetryNow | Kind::Adopted => {}
        }
        Value::Object(out)
    }
}

/// A failed deletion's error, as the timeline keeps it: the backend's status code, or the
/// class of the failure (`timeout`, `network`, `cut_short`, `refused`, `error`). The texts come
/// from this worker's own classification (`lab::cleanup`), not from the backend.
pub fn failure_code(error: &str) -> String {
    if let Some(rest) = error.strip_prefix("backend answered ") {
        let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !code.is_empty() {
            return code;
        }
    }
    let class = if error.starts_with("no answer within") {
        "timeout"
    } else if error.starts_with("network error: answer") {
        "cut_short"
    } else if error.starts_with("network error") {
        "network"
    } else {
        "error"
    };
    class.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> Event {
        Event {
            n: Some(n),
            ms: Some(400),
            failed: vec![(1, "500".into()), (2, "timeout".into())],
            ..Event::new(Kind::Attempt, i64::from(n) * 300_000)
        }
    }

    #[test]
    fn a_long_cleanup_keeps_its_first_and_last_attempts() {
        let mut t = Timeline::default();
        t.push(Event::new(Kind::Created, 0));
        for n in 1..=8_640 {
            t.push(attempt(n));
        }
        let numbers: Vec<u32> = t.events.iter().filter_map(|e| e.n).collect();
        assert_eq!(numbers.len(), 2 * KEEP_ATTEMPTS);
        assert_eq!(numbers[..3], [1, 2, 3]);
        assert_eq!(numbers[KEEP_ATTEMPTS - 1], 50);
        assert_eq!(numbers[KEEP_ATTEMPTS], 8_640 - 49);
        assert_eq!(*numbers.last().unwrap(), 8_640);
        assert_eq!(t.truncated, 8_640 - 100);
        assert_eq!(t.events[0].kind, Kind::Created, "other events stay");
    }

    #[test]
    fn only_the_latest_activity_is_kept() {
        let mut t = Timeline::default();
        t.push(Event::new(Kind::Created, 0));
        for at in 1..=500 {
            t.push(Event::new(Kind::Activity, at));
        }
        assert_eq!(t.events.len(), 2);
        assert_eq!(t.events[1].at, 500);
        assert_eq!(t.truncated, 0, "an activity replaced is not an event lost");
    }

    #[test]
    fn other_events_are_bounded_too() {
        let mut t = Timeline::default();
        for at in 0..1_000 {
            t.push(Event {
                from: Some(at),
                to: Some(at + 1),
                by: Some(By::Api),
                ..Event::new(Kind::Extended, at)
            });
        }
        assert_eq!(t.events.len(), 2 * KEEP_OTHERS);
        assert_eq!(t.truncated, 900);
        assert_eq!(t.events[49].at, 49);
        assert_eq!(t.events[50].at, 950);
    }

    #[test]
    fn the_byte_bound_drops_after_the_first_events() {
        let mut t = Timeline::default();
        for at in 0..10 {
            t.push(Event::new(Kind::Warned, at));
        }
        assert!(t.drop_one());
        assert_eq!(t.events[KEEP_FIRST].at, KEEP_FIRST as i64 + 1);
        while t.drop_one() {}
        assert_eq!(t.events.len(), KEEP_FIRST);
        assert_eq!(t.truncated, 10 - KEEP_FIRST as u64);
    }

    #[test]
    fn the_view_names_vms_and_failures() {
        let v = attempt(3).view(&["m", "w1", "w2"]);
        assert_eq!(v["type"], "attempt");
        assert_eq!(v["number"], 3);
        assert_eq!(v["at"], "1970-01-01T00:15:00.000Z");
        assert_eq!(
            v["vms"],
            serde_json::json!([
                {"id": "w1", "result": "failed", "status": 500},
                {"id": "w2", "result": "failed", "error": "timeout"},
            ])
        );
        let ended = Event {
            reason: Some(EndReason::Idle),
            ..Event::new(Kind::Ended, 0)
        };
        assert_eq!(ended.view(&["m"])["reason"], "idle");
    }

    #[test]
    fn failures_are_classified_by_this_workers_own_words() {
        assert_eq!(failure_code("backend answered 500: oops"), "500");
        assert_eq!(failure_code("backend answered 429 (Retry-After: 2)"), "429");
        assert_eq!(failure_code("no answer within 15 s (timed out)"), "timeout");
        assert_eq!(
            failure_code("network error: answer 200 cut short: reset"),
            "cut_short"
        );
        assert_eq!(failure_code("network error: refused"), "network");
        assert_eq!(failure_code("backend answered x"), "error");
    }

    #[test]
    fn events_round_trip_compactly() {
        let e = attempt(7);
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"at":2100000,"type":"attempt","n":7,"ms":400,"failed":[[1,"500"],[2,"timeout"]]}"#
        );
        let read: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(read, e);
    }
}
