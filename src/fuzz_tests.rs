//! Fuzzing: every parser of a path, query string, header, body, setting or stored value gets arbitrary Unicode and arbitrary JSON, and must answer, never panic.
//!
//! A panic in the worker takes the whole wasm instance down, with other labs' cleanups in it
//! (`GET /api/v1/labs/sessions?cursor=a%C3%A9b` once did). proptest generates the inputs; each
//! property is "returns", plus what must hold of the answer.

use proptest::prelude::*;
use serde_json::Value;

use crate::api::validation::{self, Limits};
use crate::api::{auth, fleet, percent, routes};
use crate::lab::cleanup::classify_deletion;
use crate::lab::config::Config;
use crate::lab::index::Cursor;
use crate::lab::legacy::{LegacyRecord, LegacyValue, Rules};
use crate::lab::ports::BackendReply;
use crate::lab::procedures::Request;
use crate::lab::session::Session;
use crate::lab::{retry, text};

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    }
}

/// Any text, with the characters that break naive parsers over-represented: multi-byte ones,
/// `%`, `&`, `=`, `:`, control and bidi characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z%&=:+,./ éü日😀\u{202e}\u{2028}\n\t\\\\\"-]{0,40}",
        "([0-9a-fA-F]{2}|%[0-9a-fA-F]{2}|%[^0-9a-fA-F]|é|😀){0,20}",
    ]
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    text(),
                    Just("lab_request_id".to_string()),
                    Just("user_id".to_string()),
                    Just("duration".to_string()),
                    Just("worker_nodes".to_string()),
                    Just("worker_lab_request_id".to_string()),
                    Just("vm".to_string()),
                    Just("name".to_string()),
                    Just("minutes".to_string()),
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const LIMITS: Limits = Limits {
    max_duration_minutes: 10_080,
    max_worker_nodes: 48,
};

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn routes_answer_any_method_and_path(method in text(), path in text()) {
        let _ = routes::route(&method, &path);
        let _ = routes::route("GET", &format!("/api/v1/labs/sessions/{path}"));
        let _ = routes::route("POST", &format!("/api/v1/labs/sessions/{path}/extend"));
    }

    #[test]
    fn the_events_query_answers_any_query_string(query in text(), cursor in text()) {
        let _ = validation::parse_events_query(&query);
        let _ = validation::parse_events_query(&format!("cursor={cursor}&limit=5"));
        if let Some(c) = crate::lab::session::timeline::EventsCursor::parse(&cursor) {
            prop_assert_eq!(
                crate::lab::session::timeline::EventsCursor::parse(&c.to_string()),
                Some(c)
            );
        }
    }

    #[test]
    fn a_link_answers_any_action_and_query(action in text(), query in text(), value in text()) {
        let config = crate::lab::link::LinkConfig {
            secret: vec![1; 32],
            previous_secret: Some(vec![2; 32]),
            public_url: "https://c.example".into(),
            extend_minutes: vec![30],
        };
        for q in [
            query.clone(),
            format!("lab={value}&minutes={value}&warning={value}&until={value}&sig={value}"),
            format!("lab=a&minutes=30&warning=w&until=1&sig={query}"),
        ] {
            for a in [action.as_str(), "extend", "keep_active"] {
                // Refused, never read: only this service's signature passes.
                prop_assert!(crate::api::links::check(&config, a, &q).is_err());
            }
        }
        // A link made of any values reads back as made, and verifies.
        let link = crate::lab::link::Link {
            lab: value.clone(),
            action: crate::lab::link::Action::Extend,
            minutes: 30,
            warning: query.clone(),
            until_ms: 7,
        };
        let url = crate::lab::link::url(&config, &link);
        let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        if !value.is_empty() && !query.is_empty() {
            prop_assert_eq!(crate::api::links::check(&config, "extend", q), Ok(link));
        }
        let _ = crate::api::links::action(&action);
    }

    #[test]
    fn operator_bodies_answer_any_json(body in json()) {
        let text = body.to_string();
        let _ = validation::parse_inventory(text.as_bytes());
        let _ = validation::parse_extend(text.as_bytes(), 100);
        let _ = validation::parse_empty(text.as_bytes());
        let _ = crate::api::bulk::parse(text.as_bytes(), 100);
    }

    #[test]
    fn the_list_query_answers_any_query_string(query in text(), cursor in text()) {
        let _ = fleet::parse(&query);
        let _ = fleet::parse(&format!("cursor={cursor}&limit=5"));
        let _ = fleet::parse(&format!("status={cursor}&user_id={query}&expires_before={cursor}"));
        if let Some(c) = Cursor::decode(&cursor) {
            prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
    }

    #[test]
    fn percent_decoding_answers_anything(segment in text(), plus in any::<bool>()) {
        let _ = percent::decode(&segment, plus);
    }

    #[test]
    fn create_bodies_answer_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = validation::parse_new_session(&bytes, LIMITS);
        let _ = validation::parse_extend(&bytes, 10_080);
    }

    #[test]
    fn create_bodies_answer_any_json(body in json()) {
        let bytes = body.to_string().into_bytes();
        if let Ok(new) = validation::parse_new_session(&bytes, LIMITS) {
            // What passes is what the record's bound assumes.
            prop_assert!(validation::check_id(&new.lab_request_id, "id").is_ok());
            prop_assert!(new.worker_lab_request_ids.len() <= LIMITS.max_worker_nodes);
            prop_assert!((1..=LIMITS.max_duration_minutes).contains(&new.duration));
        }
        let _ = validation::parse_extend(&bytes, 10_080);
    }

    #[test]
    fn headers_answer_anything(content_type in text(), authorization in text()) {
        let _ = validation::check_content_type(Some(&content_type));
        let tokens = auth::Tokens {
            api: Some("front-1"),
            api_previous: Some("front-0"),
            operator: Some("ops-2"),
            operator_previous: Some("ops-1"),
        };
        let caller = auth::authenticate(&tokens, Some(&authorization));
        prop_assert!(
            caller.is_err()
                || ["front-1", "front-0", "ops-2", "ops-1"].iter().any(|t| authorization.contains(t))
        );
        let _ = auth::authenticate(&auth::Tokens::default(), Some(&authorization));
    }

    #[test]
    fn backend_answers_are_classified_whatever_they_hold(
        status in any::<u16>(),
        body in text(),
        retry_after in proptest::option::of(text()),
        now in any::<i64>(),
    ) {
        let _ = retry::parse_retry_after(retry_after.as_deref().unwrap_or(""), now);
        let _ = classify_deletion(Ok(BackendReply { status, body, retry_after }), now);
    }

    #[test]
    fn secrets_and_base64_answer_anything(value in text()) {
        let _ = crate::lab::config::parse_secret(&value);
        if let Some(bytes) = crate::lab::base64::base64_decode(&value) {
            prop_assert_eq!(crate::lab::base64::base64_decode(&crate::lab::base64::base64_encode(&bytes)), Some(bytes));
        }
    }

    #[test]
    fn settings_answer_any_values(value in text(), name in 0usize..14) {
        const NAMES: [&str; 14] = [
            "BACKEND_URL", "CLEANUP_RETRY_SECONDS", "DURATION_UNIT_SECONDS", "MAX_WORKER_NODES",
            "SUBREQUEST_LIMIT", "WEBHOOK_URL", "WEBHOOK_SECRET", "WEBHOOK_RETRY_SCHEDULE_SECONDS",
            "RETRY_POLICY", "DRY_RUN", "FLEET_INDEX", "WARN_BEFORE_MINUTES", "API_TOKEN",
            "OPERATOR_TOKEN",
        ];
        let _ = Config::from_lookup(|n| {
            if n == NAMES[name] {
                Some(value.clone())
            } else if n == "BACKEND_URL" || n == "WEBHOOK_URL" {
                Some("https://x.test".into())
            } else {
                None
            }
        });
    }

    #[test]
    fn legacy_values_are_adopted_or_refused_never_half_way(
        id in text(), user in text(), workers in text(), duration in any::<f64>(), alarm in proptest::option::of(any::<i64>()),
        now in any::<i64>(),
    ) {
        let record = LegacyRecord {
            lab_request_id: LegacyValue::Text(id),
            user_id: LegacyValue::Text(user),
            worker_lab_request_ids: LegacyValue::Text(workers),
            duration: LegacyValue::Number(duration),
        };
        let rules = Rules { unit_ms: 60_000, max_workers: 48, max_duration_minutes: 10_080 };
        match record.adopt(alarm, now, &rules) {
            Ok(s) => {
                prop_assert!(validation::check_id(&s.lab_request_id, "id").is_ok());
                prop_assert!(validation::check_id(&s.user_id, "id").is_ok());
                prop_assert!(s.worker_lab_request_ids.len() <= 48);
            }
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for p in problems {
                    prop_assert!(!p.to_string().chars().any(text::is_unsafe), "{}", p);
                }
            }
        }
        let _ = record.label();
    }

    #[test]
    fn stored_and_internal_values_answer_anything(value in text(), body in json()) {
        let _ = Session::decode(&value);
        let _ = Session::decode(&body.to_string());
        for (method, path) in [("POST", "/create"), ("POST", "/extend"), ("GET", "/status"), ("POST", value.as_str())] {
            let _ = Request::decode(method, path, &body.to_string());
            let _ = Request::decode(method, path, &value);
        }
    }

    #[test]
    fn a_record_with_any_field_replaced_is_read_or_refused_with_a_safe_reason(
        key in 0usize..64, nested in 0usize..8, body in json(),
    ) {
        // A record with every part (a retry, an outbox event, a timeline), one field at the top
        // or in a part replaced by anything: read, or refused with a reason free of control
        // characters (it reaches a log line).
        let mut v: serde_json::Value =
            serde_json::from_str(include_str!("lab/session/fixtures/retrying.json")).unwrap();
        let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        let top = &keys[key % keys.len()];
        match v[top.as_str()].as_object_mut() {
            Some(part) if nested > 0 && !part.is_empty() => {
                let inner: Vec<String> = part.keys().cloned().collect();
                part.insert(inner[nested % inner.len()].clone(), body);
            }
            _ => v[top.as_str()] = body,
        }
        if let Err(e) = Session::decode(&v.to_string()) {
            prop_assert!(!e.to_string().chars().any(text::is_unsafe), "{}", e);
        }
    }

    #[test]
    fn escaped_text_holds_nothing_unsafe(value in text(), max in 0usize..300) {
        prop_assert!(!text::escape(&value).chars().any(text::is_unsafe));
        let safe = text::safe(&value, max);
        prop_assert!(safe.chars().count() <= max);
        prop_assert!(!safe.chars().any(text::is_unsafe));
    }
}
