//! Webhooks: which events a lab emits and when, their fixed bodies, their Standard Webhooks signature, and their delivery schedule.
//!
//! Pure: the clock, the event ids and the delivery results come in as values. The events wait in
//! the lab's record (its outbox) until delivered, so they survive restarts and deploys; the
//! platform side (`platform::webhooks`) only sends them.

use hmac::{Hmac, Mac};

use sha2::Sha256;

use crate::lab::base64::base64_encode;
pub use crate::lab::config::Schedule;
use crate::lab::session::bound::MAX_DELIVERY_ERROR_CHARS;
use crate::lab::session::{OutboxEvent, Session, Status};
use crate::lab::status::is_stuck;
use crate::lab::text;

/// What a lab tells the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `WARN_BEFORE_MINUTES` before the expiry.
    Expiring,
    /// Every VM is deleted.
    CleanupCompleted,
    /// `STUCK_AFTER_ATTEMPTS` attempts and VMs still pending (once).
    CleanupStuck,
    /// `IDLE_WARN_MINUTES` before an idle end (once per idle deadline).
    IdleWarning,
    /// The grace stage: every VM stopped, deleted at `delete_at`.
    Stopped,
    /// A stopped lab started again.
    Resumed,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::Expiring => "lab.expiring",
            EventType::CleanupCompleted => "lab.cleanup_completed",
            EventType::CleanupStuck => "lab.cleanup_stuck",
            EventType::IdleWarning => "lab.idle_warning",
            EventType::Stopped => "lab.stopped",
            EventType::Resumed => "lab.resumed",
        }
    }
}

/// A new event of `kind` for `session` at `now_ms`, due now: its body (`type`, `timestamp`, and
/// the lab's status view as `data`) is fixed now, so every redelivery carries the same bytes.
pub fn new_event(kind: EventType, session: &Session, now_ms: i64, id: String) -> OutboxEvent {
    OutboxEvent::new(kind.name(), session, now_ms, id)
}

/// A fresh `webhook-id` from four random numbers in `[0, 1)`: `msg_` and 32 hex digits (128
/// random bits), unique per event and the same on every redelivery of it.
pub fn event_id(random: [f64; 4]) -> String {
    let word = |r: f64| (r.clamp(0.0, 1.0) * 4_294_967_295.0) as u32;
    format!(
        "msg_{:08x}{:08x}{:08x}{:08x}",
        word(random[0]),
        word(random[1]),
        word(random[2]),
        word(random[3])
    )
}

/// The `webhook-id` of a warning: the same for the same lab, event, deadline and stage (`msg_`
/// and 32 hex digits of an HMAC-SHA256 keyed with the lab's id), so that a warning sent again
/// (an invocation cut short after sending it, before the save that records it) keeps its id,
/// and a receiver that deduplicates by id, as Standard Webhooks asks, takes it once.
pub fn warning_id(lab: &str, kind: EventType, deadline_ms: i64, stage: u64) -> String {
    // The signature's HMAC-SHA256 (its code is there already), keyed with the lab's id.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(lab.as_bytes()).expect("any key length");
    for part in [kind.name(), &deadline_ms.to_string(), &stage.to_string()] {
        mac.update(part.as_bytes());
        mac.update(b"/");
    }
    let digest = mac.finalize().into_bytes();
    let mut id = String::from("msg_");
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The events an attempt that `finish_attempt` has just recorded calls for: completed when
/// every VM is gone; stuck, once, when `stuck_after` attempts have left VMs pending. Marks the
/// stuck one sent on the session.
pub fn after_attempt(session: &mut Session, stuck_after: u32) -> Vec<EventType> {
    let status = session.status();
    if status == Status::Completed {
        vec![EventType::CleanupCompleted]
    } else if is_stuck(status, session.cleanup.attempts, stuck_after)
        && !session.notices.stuck_notified
    {
        session.notices.stuck_notified = true;
        vec![EventType::CleanupStuck]
    } else {
        Vec::new()
    }
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterDelivery {
    /// 2xx: off the outbox.
    Delivered,
    /// Try again at this time.
    RetryAt(i64),
    /// Too old: dropped (and logged as an error by the caller).
    Dropped,
}

/// The next step for `event` after a delivery at `now_ms` that got `status` (`None`: no answer)
/// or failed with `error`. Pauses grow along the schedule; past `max_age_ms` after its creation
/// the event is dropped.
pub fn after_delivery(
    event: &mut OutboxEvent,
    result: Result<u16, crate::lab::error::ServiceError>,
    now_ms: i64,
    schedule: &Schedule,
) -> AfterDelivery {
    event.attempts = event.attempts.saturating_add(1);
    let error = match result {
        Ok(status) if (200..300).contains(&status) => return AfterDelivery::Delivered,
        Ok(status) => format!("the receiver answered {status}"),
        Err(e) => e.to_string(),
    };
    event.last_error = Some(text::safe(&error, MAX_DELIVERY_ERROR_CHARS));
    let index = (event.attempts as usize - 1).min(schedule.pauses_ms.len().saturating_sub(1));
    let pause = schedule.pauses_ms.get(index).copied().unwrap_or(3_600_000);
    let next = now_ms.saturating_add(pause);
    if next > event.created_at_ms.saturating_add(schedule.max_age_ms) {
        AfterDelivery::Dropped
    } else {
        event.next_at_ms = next;
        AfterDelivery::RetryAt(next)
    }
}

/// The Standard Webhooks signature of a delivery: `v1,` and the base64 of the HMAC-SHA256 of
/// `{id}.{timestamp}.{body}`, keyed with the secret's bytes (the base64 after `whsec_`).
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", base64_encode(&mac.finalize().into_bytes()))
}

/// The `webhook-signature` header of a delivery: its signature with `WEBHOOK_SECRET`, and
/// during a rotation a second one with `WEBHOOK_SECRET_PREVIOUS`, space-delimited as the
/// Standard Webhooks specification allows: a receiver verifying with either secret accepts it.
pub fn signatures(
    hooks: &crate::lab::config::WebhookConfig,
    id: &str,
    timestamp: i64,
    body: &str,
) -> String {
    let current = sign(&hooks.secret, id, timestamp, body);
    match &hooks.previous_secret {
        Some(previous) => format!("{current} {}", sign(previous, id, timestamp, body)),
        None => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::config::{parse_secret, DEFAULT_MAX_AGE_SECONDS, DEFAULT_PAUSES_SECONDS};
    use crate::lab::session::{AttemptResult, NewSession};
    use crate::lab::text::rfc3339;

    const T0: i64 = 1_795_000_000_000;
    const MINUTE: i64 = 60_000;

    #[test]
    fn a_warning_keeps_its_id_and_another_warning_has_another() {
        let id = warning_id("lab-1", EventType::Expiring, T0, 10);
        assert_eq!(id, warning_id("lab-1", EventType::Expiring, T0, 10));
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
        assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()));
        for other in [
            warning_id("lab-2", EventType::Expiring, T0, 10),
            warning_id("lab-1", EventType::IdleWarning, T0, 10),
            warning_id("lab-1", EventType::Expiring, T0 + 1, 10),
            warning_id("lab-1", EventType::Expiring, T0, 5),
            // The parts are kept apart: no two splits of the same text meet.
            warning_id("lab-11", EventType::Expiring, 0, 10),
        ] {
            assert_ne!(id, other);
        }
    }

    fn session(duration_minutes: i64) -> Session {
        Session::schedule(
            NewSession {
                lab_request_id: "m".into(),
                user_id: "u".into(),
                worker_lab_request_ids: vec!["w1".into()],
                duration: duration_minutes as u64,
                vm_name: None,
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            },
            T0,
            duration_minutes * MINUTE,
        )
    }

    #[test]
    fn the_signer_matches_the_specifications_test_vector() {
        // https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
        let secret = parse_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            sign(
                &secret,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                r#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets_are_whsec_base64_of_24_to_64_bytes() {
        assert_eq!(
            parse_secret(&format!("whsec_{}", base64_encode(&[7; 24]))),
            Some(vec![7; 24])
        );
        assert_eq!(
            parse_secret(&format!("whsec_{}", base64_encode(&[7; 64]))).map(|k| k.len()),
            Some(64)
        );
        for bad in [
            format!("whsec_{}", base64_encode(&[7; 23])),
            format!("whsec_{}", base64_encode(&[7; 65])),
            base64_encode(&[7; 32]),
            "whsec_not base64!".to_string(),
            String::new(),
        ] {
            assert_eq!(parse_secret(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_body_is_fixed_at_creation() {
        let mut s = session(60);
        let e = new_event(EventType::Expiring, &s, T0 + 50 * MINUTE, "msg_1".into());
        let at_creation = serde_json::to_value(s.view()).unwrap();
        let body = e.body(&s, None);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "lab.expiring");
        assert_eq!(v["timestamp"], rfc3339(T0 + 50 * MINUTE));
        assert_eq!(v["data"], at_creation);
        assert_eq!(e.next_at_ms, T0 + 50 * MINUTE);
        assert_eq!(e.attempts, 0);
        // The lab moves on; the event's body does not.
        s.extend(5, MINUTE, 1_000).unwrap();
        s.begin_attempt(T0 + 70 * MINUTE, 1_000);
        s.finish_attempt(
            &AttemptResult {
                deleted: vec!["m".into()],
                outcome: crate::lab::session::Outcome {
                    successful_deletions: 1,
                    failed_deletions: 1,
                    errors: vec![crate::lab::session::DeletionError {
                        lab_request_id: "w1".into(),
                        error: "backend answered 500".into(),
                    }],
                    not_tried: 0,
                },
                ..AttemptResult::default()
            },
            T0 + 70 * MINUTE,
            T0 + 75 * MINUTE,
        );
        assert_eq!(e.body(&s, None), body);
        // A stuck event made now carries this moment, errors included, and keeps it.
        let stuck = new_event(
            EventType::CleanupStuck,
            &s,
            T0 + 70 * MINUTE,
            "msg_2".into(),
        );
        let now = serde_json::to_value(s.view()).unwrap();
        let stuck_body = stuck.body(&s, None);
        let v: serde_json::Value = serde_json::from_str(&stuck_body).unwrap();
        assert_eq!(v["data"], now);
        assert_eq!(
            v["data"]["last_outcome"]["errors"][0]["lab_request_id"],
            "w1"
        );
        s.begin_attempt(T0 + 75 * MINUTE, 1_000);
        s.finish_attempt(
            &AttemptResult {
                deleted: vec!["w1".into()],
                ..AttemptResult::default()
            },
            T0 + 76 * MINUTE,
            T0 + 80 * MINUTE,
        );
        assert_eq!(stuck.body(&s, None), stuck_body);
        assert_eq!(e.body(&s, None), body);
        // An event of an earlier version keeps the body it stored.
        let mut old = e.clone();
        old.snapshot = None;
        old.body = Some("{\"stored\":true}".into());
        assert_eq!(old.body(&s, None), "{\"stored\":true}");
    }

    #[test]
    fn event_ids_are_msg_and_32_hex_digits() {
        assert_eq!(
            event_id([0.0, 0.5, 1.0, 7.0]),
            "msg_000000007fffffffffffffffffffffff"
        );
        let id = event_id([0.1, 0.2, 0.3, 0.4]);
        assert_eq!(id.len(), 36);
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn stuck_once_then_completed() {
        let mut s = session(1);
        s.begin_attempt(T0 + MINUTE, 1_000);
        s.finish_attempt(&AttemptResult::default(), T0 + MINUTE, T0 + MINUTE + 1_000);
        assert!(after_attempt(&mut s, 2).is_empty());
        s.begin_attempt(T0 + MINUTE, 1_000);
        s.finish_attempt(&AttemptResult::default(), T0 + MINUTE, T0 + MINUTE + 1_000);
        assert_eq!(after_attempt(&mut s, 2), vec![EventType::CleanupStuck]);
        s.begin_attempt(T0 + MINUTE, 1_000);
        s.finish_attempt(&AttemptResult::default(), T0 + MINUTE, T0 + MINUTE + 1_000);
        assert!(after_attempt(&mut s, 2).is_empty(), "stuck is sent once");
        s.begin_attempt(T0 + MINUTE, 1_000);
        s.finish_attempt(
            &AttemptResult {
                deleted: vec!["m".into(), "w1".into()],
                ..AttemptResult::default()
            },
            T0 + MINUTE,
            T0 + MINUTE + 1_000,
        );
        assert_eq!(after_attempt(&mut s, 2), vec![EventType::CleanupCompleted]);
    }

    #[test]
    fn deliveries_back_off_then_drop_after_the_max_age() {
        let schedule = Schedule {
            pauses_ms: DEFAULT_PAUSES_SECONDS
                .iter()
                .map(|s| *s as i64 * 1000)
                .collect(),
            max_age_ms: DEFAULT_MAX_AGE_SECONDS as i64 * 1000,
        };
        let mut e = new_event(EventType::CleanupCompleted, &session(1), T0, "msg_2".into());
        let mut now = T0;
        let mut pauses = Vec::new();
        loop {
            match after_delivery(&mut e, Ok(503), now, &schedule) {
                AfterDelivery::RetryAt(at) => {
                    pauses.push((at - now) / 1000);
                    now = at;
                }
                AfterDelivery::Dropped => break,
                AfterDelivery::Delivered => unreachable!(),
            }
        }
        assert_eq!(pauses[..7], [5, 30, 120, 600, 1800, 3600, 3600]);
        assert!(now <= T0 + 86_400_000 && now + 3_600_000 > T0 + 86_400_000);
        assert_eq!(e.last_error.as_deref(), Some("the receiver answered 503"));

        let mut e = new_event(EventType::CleanupCompleted, &session(1), T0, "msg_3".into());
        assert_eq!(
            after_delivery(&mut e, Err("no answer within 15 s".into()), T0, &schedule),
            AfterDelivery::RetryAt(T0 + 5_000)
        );
        assert_eq!(
            after_delivery(&mut e, Ok(204), T0 + 5_000, &schedule),
            AfterDelivery::Delivered
        );
        assert_eq!(e.attempts, 2);
    }

    #[test]
    fn during_a_rotation_a_delivery_carries_a_signature_per_secret() {
        use crate::lab::config::{Schedule, WebhookConfig};
        let current = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let previous = parse_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let mut hooks = WebhookConfig {
            url: "https://h".into(),
            secret: current.clone(),
            previous_secret: None,
            links: None,
            warn_stages: vec![10],
            idle_warn_minutes: 5,
            schedule: Schedule {
                pauses_ms: vec![1_000],
                max_age_ms: 60_000,
            },
        };
        let (id, ts, body) = (
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
        );
        let one = sign(&current, id, ts, body);
        assert_eq!(signatures(&hooks, id, ts, body), one);
        hooks.previous_secret = Some(previous.clone());
        // The specification's test vector is the previous secret's signature here.
        assert_eq!(
            signatures(&hooks, id, ts, body),
            format!("{one} v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=")
        );
    }
}
