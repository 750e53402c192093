//! What a bulk request may be: `POST /api/v1/labs/bulk`'s body, its `Idempotency-Key`, and a job's id.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;
use crate::api::validation;
use crate::lab::fleet::bulk::{Action, Plan, Selector};
use crate::lab::limits::{label_problem, MAX_LABELS};
use crate::lab::status::Status;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(message.into())
}

/// The body: `{"selector": {"labels": {...}, "status": [...], "user_id": ...}, "action":
/// "end" | "extend" | "retry" | "resume", "minutes": N (extend and resume only), "dry_run": bool}`. The selector must
/// name at least a label or a user. Returns the plan and whether it is a dry run.
pub fn parse(body: &[u8], max_minutes: u64) -> Result<(Plan, bool), ApiError> {
    let obj = validation::json_object(body)?;
    validation::only_fields(&obj, &["selector", "action", "minutes", "dry_run"], "")?;
    let selector = match obj.get("selector") {
        Some(Value::Object(s)) => selector(s)?,
        Some(_) => return Err(invalid("selector must be an object")),
        None => return Err(invalid("selector is required")),
    };
    if selector.labels.is_empty() && selector.user_id.is_none() {
        return Err(invalid(
            "the selector must name at least a label or a user_id (a bulk action never acts on the whole fleet)",
        ));
    }
    let minutes = obj.get("minutes").filter(|v| !v.is_null());
    let action = match obj.get("action").and_then(Value::as_str) {
        Some("end") | Some("retry") if minutes.is_some() => {
            return Err(invalid(
                "minutes goes with the extend and resume actions only",
            ))
        }
        Some("end") => Action::End,
        Some("retry") => Action::Retry,
        Some("extend") => Action::Extend {
            minutes: validation::duration(minutes, "minutes", max_minutes)?,
        },
        Some("resume") => Action::Resume {
            minutes: validation::duration(minutes, "minutes", max_minutes)?,
        },
        _ => return Err(invalid("action must be end, extend, retry or resume")),
    };
    let dry_run = match obj.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("dry_run must be true or false")),
    };
    Ok((Plan { selector, action }, dry_run))
}

fn selector(s: &serde_json::Map<String, Value>) -> Result<Selector, ApiError> {
    validation::only_fields(s, &["labels", "status", "user_id"], "selector.")?;
    let mut selector = Selector::default();
    match s.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            if labels.len() > MAX_LABELS {
                return Err(invalid(format!(
                    "selector.labels may hold at most {MAX_LABELS} entries"
                )));
            }
            for (key, value) in labels {
                let Value::String(value) = value else {
                    return Err(invalid("selector.labels values must be strings"));
                };
                if let Some(problem) = label_problem(key, value) {
                    return Err(invalid(crate::lab::text::shorten(&problem, 200)));
                }
                selector.labels.push((key.clone(), value.clone()));
            }
        }
        Some(_) => return Err(invalid("selector.labels must be an object")),
    }
    match s.get("status") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => {
            for name in names {
                let status = name.as_str().and_then(Status::from_name).ok_or_else(|| {
                    let names: Vec<&str> = Status::ALL.iter().map(|s| s.name()).collect();
                    invalid(format!(
                        "selector.status must list statuses among {}",
                        names.join(", ")
                    ))
                })?;
                if !selector.statuses.contains(&status) {
                    selector.statuses.push(status);
                }
            }
        }
        Some(_) => return Err(invalid("selector.status must be an array of statuses")),
    }
    match s.get("user_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(user)) => {
            validation::check_id(user, "selector.user_id")?;
            selector.user_id = Some(user.clone());
        }
        Some(_) => return Err(invalid("selector.user_id must be a string")),
    }
    Ok(selector)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request's fingerprint: the same `Idempotency-Key` with another request is a 409.
pub fn fingerprint(plan: &Plan) -> String {
    hex(&Sha256::digest(plan.canonical().as_bytes()))
}

/// The job id for `Idempotency-Key: key` (the same key, the same job): 32 hex digits. A key is
/// 1 to 255 printable ASCII characters.
pub fn job_id_for_key(key: &str) -> Result<String, ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(hex(&Sha256::digest(format!("bulk:{key}").as_bytes()))[..32].to_string())
}

/// Whether `id` is a job id (32 lowercase hex digits).
pub fn is_job_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(v: Value) -> Result<(Plan, bool), String> {
        parse(v.to_string().as_bytes(), 10_080).map_err(|e| match e {
            ApiError::InvalidRequest(m) => m,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn the_documented_body_parses() {
        let (plan, dry) = parse_json(serde_json::json!({
            "selector": {"labels": {"class": "cka-2026-11-30"}, "status": ["scheduled"], "user_id": null},
            "action": "extend", "minutes": 30, "dry_run": true
        }))
        .unwrap();
        assert!(dry);
        assert_eq!(plan.action, Action::Extend { minutes: 30 });
        assert_eq!(
            plan.selector.labels,
            vec![("class".into(), "cka-2026-11-30".into())]
        );
        assert_eq!(plan.selector.statuses, vec![Status::Scheduled]);
    }

    #[test]
    fn bad_bodies_are_named() {
        use serde_json::json;
        let cases = [
            (json!({"action": "end"}), "selector is required"),
            (
                json!({"selector": {}, "action": "end"}),
                "at least a label or a user_id",
            ),
            (
                json!({"selector": {"user_id": "u"}, "action": "nuke"}),
                "action must be",
            ),
            (
                json!({"selector": {"user_id": "u"}, "action": "extend"}),
                "minutes is required",
            ),
            (
                json!({"selector": {"user_id": "u"}, "action": "extend", "minutes": 0}),
                "at least 1",
            ),
            (
                json!({"selector": {"user_id": "u"}, "action": "end", "minutes": 5}),
                "extend and resume actions only",
            ),
            (
                json!({"selector": {"user_id": "u"}, "action": "resume"}),
                "minutes is required",
            ),
            (
                json!({"selector": {"labels": {"Bad": "x"}}, "action": "end"}),
                "a-z 0-9",
            ),
            (
                json!({"selector": {"user_id": "u", "status": ["done"]}, "action": "end"}),
                "selector.status must list statuses among scheduled, stopped, cleaning_up, retrying, completed",
            ),
            (
                json!({"selector": {"user_id": "a/b"}, "action": "end"}),
                "selector.user_id",
            ),
            (
                json!({"selector": {"user_id": "u"}, "action": "end", "dry_run": "yes"}),
                "dry_run",
            ),
        ];
        for (body, expected) in cases {
            let e = parse_json(body.clone()).unwrap_err();
            assert!(e.contains(expected), "{body}: {e}");
        }
    }

    #[test]
    fn every_status_selects_stopped_included() {
        for status in Status::ALL {
            let (plan, _) = parse_json(serde_json::json!({
                "selector": {"user_id": "u", "status": [status.name()]}, "action": "end"
            }))
            .unwrap();
            assert_eq!(plan.selector.statuses, vec![status]);
        }
    }

    #[test]
    fn idempotency_keys_make_stable_job_ids() {
        let a = job_id_for_key("class-42-extend").unwrap();
        assert!(is_job_id(&a));
        assert_eq!(a, job_id_for_key("class-42-extend").unwrap());
        assert_ne!(a, job_id_for_key("class-43-extend").unwrap());
        assert!(job_id_for_key("").is_err());
        assert!(job_id_for_key("a\nb").is_err());
        assert!(job_id_for_key(&"k".repeat(256)).is_err());
        assert!(!is_job_id("ABC"));
    }
}
