//! Adopting a lab scheduled by the TypeScript worker this one replaces: its storage keys become an ordinary session.
//!
//! The TypeScript worker stored each field under its own key (`lab_request_id`, `user_id`,
//! `worker_lab_request_ids` as a JSON *string* of an array of strings, `duration` in minutes) and
//! an alarm at its expiry. The glue reads those keys and the alarm; this module decides, without
//! touching storage, whether they make a session and, if not, what is wrong with them.

use crate::lab::limits::{describe_char, id_problem, IdProblem};
pub use crate::lab::refusal::LegacyProblem;
use crate::lab::session::{NewSession, Session};

/// The keys the TypeScript worker wrote, in the order they are reported.
pub const LEGACY_KEYS: [&str; 4] = [
    "lab_request_id",
    "user_id",
    "worker_lab_request_ids",
    "duration",
];

/// A stored legacy value as the glue read it (JavaScript values, reduced to what matters here).
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyValue {
    /// The key is not in storage.
    Missing,
    Text(String),
    Number(f64),
    /// Any other JavaScript value, by its type name (`boolean`, `object`, `array`, `null`, ...).
    Other(&'static str),
}

impl LegacyValue {
    /// The value's type, as an error line names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            LegacyValue::Missing => "missing",
            LegacyValue::Text(_) => "string",
            LegacyValue::Number(_) => "number",
            LegacyValue::Other(name) => name,
        }
    }
}

/// The legacy keys of one object, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyRecord {
    pub lab_request_id: LegacyValue,
    pub user_id: LegacyValue,
    pub worker_lab_request_ids: LegacyValue,
    pub duration: LegacyValue,
}

/// The value, or `None` with its problem noted.
fn keep<T>(problems: &mut Vec<LegacyProblem>, checked: Result<T, LegacyProblem>) -> Option<T> {
    checked.map_err(|problem| problems.push(problem)).ok()
}

/// A legacy id key's value, checked as a create's.
fn legacy_id(key: &'static str, value: &LegacyValue) -> Result<String, LegacyProblem> {
    match value {
        LegacyValue::Text(s) => match id_problem(s) {
            None => Ok(s.clone()),
            Some(problem) => Err(LegacyProblem {
                key,
                found: describe_bad_id(problem),
                expected: EXPECTED_ID,
            }),
        },
        other => Err(LegacyProblem {
            key,
            found: other.type_name().into(),
            expected: EXPECTED_ID,
        }),
    }
}

/// The legacy `duration`: whole minutes from 1 to `max_minutes`.
fn legacy_duration(value: &LegacyValue, max_minutes: u64) -> Result<u64, LegacyProblem> {
    match value {
        LegacyValue::Number(n)
            if n.is_finite() && *n >= 1.0 && n.fract() == 0.0 && *n <= max_minutes as f64 =>
        {
            Ok(*n as u64)
        }
        other => Err(LegacyProblem {
            key: "duration",
            found: match other {
                LegacyValue::Number(n) => format!("the number {}", decimal(*n)),
                other => other.type_name().into(),
            },
            expected: EXPECTED_DURATION,
        }),
    }
}

impl LegacyRecord {
    /// Whether any legacy key is present at all (an object that holds none is not a legacy lab).
    pub fn is_present(&self) -> bool {
        [
            &self.lab_request_id,
            &self.user_id,
            &self.worker_lab_request_ids,
            &self.duration,
        ]
        .iter()
        .any(|v| **v != LegacyValue::Missing)
    }

    /// Turns the legacy keys into a session expiring at the object's alarm time (`alarm_at_ms`),
    /// or at `now_ms` when no alarm is set (the lab has expired). The TypeScript worker took
    /// requests without a token, so every value is checked with today's rules (`rules`): ids,
    /// `user_id`, the number of workers, the duration. A record that fails any of them is not
    /// adopted at all, not half-way.
    ///
    /// Every unreadable key is reported, so one log line names all of them.
    pub fn adopt(
        &self,
        alarm_at_ms: Option<i64>,
        now_ms: i64,
        rules: &Rules,
    ) -> Result<Session, Vec<LegacyProblem>> {
        let mut problems = Vec::new();
        let p = &mut problems;
        let master = keep(p, legacy_id("lab_request_id", &self.lab_request_id));
        let user = keep(p, legacy_id("user_id", &self.user_id));
        let workers = keep(
            p,
            parse_worker_ids(
                &self.worker_lab_request_ids,
                master.as_deref(),
                rules.max_workers,
            ),
        );
        let duration = keep(
            p,
            legacy_duration(&self.duration, rules.max_duration_minutes),
        );
        let (Some(lab_request_id), Some(user_id), Some(worker_lab_request_ids), Some(duration)) =
            (master, user, workers, duration)
        else {
            return Err(problems);
        };
        let expires_at_ms = alarm_at_ms.unwrap_or(now_ms);
        let lifetime_ms = (duration as i64).saturating_mul(rules.unit_ms);
        let created_at_ms = expires_at_ms.saturating_sub(lifetime_ms).min(now_ms);
        let mut session = Session::schedule(
            NewSession {
                lab_request_id,
                user_id,
                worker_lab_request_ids,
                duration,
                vm_name: None,
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            },
            created_at_ms,
            expires_at_ms.saturating_sub(created_at_ms),
        );
        session.adoption.adopted_at_ms = Some(now_ms);
        Ok(session)
    }

    /// The lab id of an unreadable record, for its log line: a valid id as it is; anything else
    /// described, never echoed (it may hold a newline or a bidi override, or be 60,000 characters).
    pub fn label(&self) -> String {
        match &self.lab_request_id {
            LegacyValue::Text(id) if id_problem(id).is_none() => format!(" of lab {id}"),
            _ => String::new(),
        }
    }
}

/// Today's rules an adopted record must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// One `duration` unit, in ms: dates `created_at` (the TypeScript worker did not store it).
    pub unit_ms: i64,
    /// `MAX_WORKER_NODES`.
    pub max_workers: usize,
    /// `MAX_DURATION_MINUTES`.
    pub max_duration_minutes: u64,
}

impl Rules {
    /// Today's rules, from the settings.
    pub fn of(config: &crate::lab::config::Config) -> Rules {
        Rules {
            unit_ms: config.duration_unit_ms(),
            max_workers: config.max_worker_nodes,
            max_duration_minutes: config.max_duration_minutes,
        }
    }
}

const EXPECTED_ID: &str = "an id of 1 to 128 characters from A-Z a-z 0-9 . _ : @ + -";
const EXPECTED_DURATION: &str = "a whole number of minutes from 1 to MAX_DURATION_MINUTES";

/// What is wrong with a stored id, without repeating it.
fn describe_bad_id(problem: IdProblem) -> String {
    match problem {
        IdProblem::Empty => "an empty string".into(),
        IdProblem::TooLong(n) => format!("a string of {n} characters"),
        IdProblem::Character(c) => format!("a string holding {}", describe_char(c)),
    }
}

/// A number as a person writes it, to three decimals at most, without float formatting (which
/// would add about 14 KB to the worker for one error line).
fn decimal(n: f64) -> String {
    if !n.is_finite() || n.abs() >= 1e15 {
        return if n.is_nan() {
            "NaN".into()
        } else {
            "a very large number".into()
        };
    }
    let thousandths = (n * 1000.0).round() as i64;
    let (sign, abs) = if thousandths < 0 {
        ("-", -thousandths)
    } else {
        ("", thousandths)
    };
    let fraction = format!("{:03}", abs % 1000);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{sign}{}", abs / 1000)
    } else {
        format!("{sign}{}.{fraction}", abs / 1000)
    }
}

/// `worker_lab_request_ids`: a string holding a JSON array of ids, e.g. `"[\"w1\",\"w2\"]"`,
/// at most `max_workers` of them once repeats are dropped.
fn parse_worker_ids(
    value: &LegacyValue,
    master: Option<&str>,
    max_workers: usize,
) -> Result<Vec<String>, LegacyProblem> {
    const EXPECTED: &str = "a string holding a JSON array of at most MAX_WORKER_NODES ids";
    let problem = |found: String| LegacyProblem {
        key: "worker_lab_request_ids",
        found,
        expected: EXPECTED,
    };
    let LegacyValue::Text(text) = value else {
        return Err(problem(value.type_name().into()));
    };
    let parsed: serde_json::Value =
        serde_json::from_str(text).map_err(|_| problem("a string that is not JSON".into()))?;
    let serde_json::Value::Array(items) = parsed else {
        return Err(problem(format!(
            "a string holding a JSON {}",
            json_type(&parsed)
        )));
    };
    let mut ids: Vec<String> = Vec::with_capacity(items.len().min(max_workers));
    for item in items {
        match item {
            serde_json::Value::String(id) => {
                if let Some(bad) = id_problem(&id) {
                    return Err(problem(format!(
                        "a string holding a JSON array holding {}",
                        describe_bad_id(bad)
                    )));
                }
                // A repeat, or the master listed as a worker, would delete one VM twice.
                if Some(id.as_str()) != master && !ids.contains(&id) {
                    ids.push(id);
                }
            }
            other => {
                return Err(problem(format!(
                    "a string holding a JSON array holding a {}",
                    json_type(&other)
                )))
            }
        }
    }
    if ids.len() > max_workers {
        return Err(problem(format!(
            "a string holding a JSON array of {} ids",
            ids.len()
        )));
    }
    Ok(ids)
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::session::{LabType, Status};

    const NOW: i64 = 1_800_000_000_000;
    const MINUTE: i64 = 60_000;
    const RULES: Rules = Rules {
        unit_ms: MINUTE,
        max_workers: 3,
        max_duration_minutes: 10_080,
    };

    fn record(workers: LegacyValue) -> LegacyRecord {
        LegacyRecord {
            lab_request_id: LegacyValue::Text("m".into()),
            user_id: LegacyValue::Text("u".into()),
            worker_lab_request_ids: workers,
            duration: LegacyValue::Number(60.0),
        }
    }

    #[test]
    fn a_multi_node_record_expires_at_the_alarm() {
        let r = record(LegacyValue::Text(r#"["w1","w2"]"#.into()));
        let s = r.adopt(Some(NOW + 10 * MINUTE), NOW, &RULES).unwrap();
        assert_eq!(s.lab_request_id, "m");
        assert_eq!(s.user_id, "u");
        assert_eq!(s.worker_lab_request_ids, vec!["w1", "w2"]);
        assert_eq!(s.lab_type(), LabType::MultiNode);
        assert_eq!(s.duration, 60);
        assert_eq!(s.status(), Status::Scheduled);
        assert_eq!(s.expires_at_ms, NOW + 10 * MINUTE);
        assert_eq!(s.created_at_ms, NOW - 50 * MINUTE);
        assert_eq!(s.adoption.adopted_at_ms, Some(NOW));
    }

    #[test]
    fn no_alarm_means_expired_now() {
        let r = record(LegacyValue::Text("[]".into()));
        let s = r.adopt(None, NOW, &RULES).unwrap();
        assert_eq!(s.lab_type(), LabType::SingleVm);
        assert_eq!(s.expires_at_ms, NOW);
        assert!(s.is_expired(NOW));
    }

    #[test]
    fn an_alarm_rearmed_for_a_retry_never_dates_creation_in_the_future() {
        // The TypeScript worker re-armed its alarm 5 minutes later while a VM failed.
        let mut r = record(LegacyValue::Text("[]".into()));
        r.duration = LegacyValue::Number(1.0);
        let s = r.adopt(Some(NOW + 5 * MINUTE), NOW, &RULES).unwrap();
        assert_eq!(s.created_at_ms, NOW);
        assert_eq!(s.expires_at_ms, NOW + 5 * MINUTE);
    }

    #[test]
    fn repeated_or_master_worker_ids_are_kept_once() {
        let r = record(LegacyValue::Text(r#"["w1","m","w1"]"#.into()));
        let s = r.adopt(None, NOW, &RULES).unwrap();
        assert_eq!(s.worker_lab_request_ids, vec!["w1"]);
    }

    #[test]
    fn unreadable_values_are_named_with_their_type() {
        let r = LegacyRecord {
            lab_request_id: LegacyValue::Text("m".into()),
            user_id: LegacyValue::Missing,
            worker_lab_request_ids: LegacyValue::Text(r#"{"w":1}"#.into()),
            duration: LegacyValue::Other("boolean"),
        };
        let problems = r.adopt(None, NOW, &RULES).unwrap_err();
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "key `user_id` is missing (expected an id of 1 to 128 characters from A-Z a-z 0-9 . _ : @ + -)",
                "key `worker_lab_request_ids` is a string holding a JSON object (expected a string holding a JSON array of at most MAX_WORKER_NODES ids)",
                "key `duration` is boolean (expected a whole number of minutes from 1 to MAX_DURATION_MINUTES)",
            ]
        );
    }

    #[test]
    fn worker_ids_must_be_a_json_string_of_strings() {
        for (value, found) in [
            (LegacyValue::Other("array"), "array"),
            (LegacyValue::Missing, "missing"),
            (
                LegacyValue::Text("w1,w2".into()),
                "a string that is not JSON",
            ),
            (
                LegacyValue::Text("[1]".into()),
                "a string holding a JSON array holding a number",
            ),
            (
                LegacyValue::Text(r#"["w1",""]"#.into()),
                "a string holding a JSON array holding an empty string",
            ),
            (
                LegacyValue::Text(r#"["w1","w\nx"]"#.into()),
                "a string holding a JSON array holding a string holding the character U+000A",
            ),
            (
                LegacyValue::Text(r#"["w1","w2","w3","w4"]"#.into()),
                "a string holding a JSON array of 4 ids",
            ),
        ] {
            let problems = record(value).adopt(None, NOW, &RULES).unwrap_err();
            assert_eq!(problems.len(), 1);
            assert_eq!(problems[0].key, "worker_lab_request_ids");
            assert_eq!(problems[0].found, found);
        }
    }

    #[test]
    fn duration_must_be_whole() {
        let mut r = record(LegacyValue::Text("[]".into()));
        r.duration = LegacyValue::Number(1.5);
        let problems = r.adopt(None, NOW, &RULES).unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "key `duration` is the number 1.5 (expected a whole number of minutes from 1 to MAX_DURATION_MINUTES)"
        );
        r.duration = LegacyValue::Text("60".into());
        assert_eq!(r.adopt(None, NOW, &RULES).unwrap_err()[0].found, "string");
    }

    #[test]
    fn todays_rules_apply_to_every_value() {
        let long = "x".repeat(63_007);
        for (mut r, key, found) in [
            (
                record(LegacyValue::Text("[]".into())),
                "lab_request_id",
                "a string holding the character U+000A",
            ),
            (
                record(LegacyValue::Text("[]".into())),
                "user_id",
                "a string of 63007 characters",
            ),
            (
                record(LegacyValue::Text("[]".into())),
                "duration",
                "the number 0",
            ),
            (
                record(LegacyValue::Text("[]".into())),
                "duration",
                "the number 10081",
            ),
            (
                record(LegacyValue::Text(r#"["w1","w1","m","w2","w3"]"#.into())),
                "",
                "",
            ),
        ] {
            match key {
                "lab_request_id" => {
                    r.lab_request_id = LegacyValue::Text("forged\n✅ Successfully deleted".into())
                }
                "user_id" => r.user_id = LegacyValue::Text(long.clone()),
                "duration" if found.ends_with('0') => r.duration = LegacyValue::Number(0.0),
                "duration" => r.duration = LegacyValue::Number(10_081.0),
                _ => {}
            }
            match r.adopt(None, NOW, &RULES) {
                Ok(s) => {
                    assert_eq!(key, "", "adopted half-way: {s:?}");
                    assert_eq!(s.worker_lab_request_ids, vec!["w1", "w2", "w3"]);
                }
                Err(problems) => {
                    assert_eq!(problems.len(), 1, "{problems:?}");
                    assert_eq!((problems[0].key, problems[0].found.as_str()), (key, found));
                    assert!(problems[0].to_string().len() < 300, "never echoed");
                }
            }
        }
        let mut forged = record(LegacyValue::Text("[]".into()));
        forged.lab_request_id = LegacyValue::Text("x\n✅".into());
        assert_eq!(forged.label(), "");
        assert_eq!(record(LegacyValue::Missing).label(), " of lab m");
    }

    #[test]
    fn numbers_read_as_written() {
        assert_eq!(decimal(1.5), "1.5");
        assert_eq!(decimal(60.0), "60");
        assert_eq!(decimal(-2.25), "-2.25");
        assert_eq!(decimal(0.0001), "0");
        assert_eq!(decimal(f64::INFINITY), "a very large number");
    }

    #[test]
    fn presence() {
        let none = LegacyRecord {
            lab_request_id: LegacyValue::Missing,
            user_id: LegacyValue::Missing,
            worker_lab_request_ids: LegacyValue::Missing,
            duration: LegacyValue::Missing,
        };
        assert!(!none.is_present());
        let one = LegacyRecord {
            duration: LegacyValue::Number(1.0),
            ..none
        };
        assert!(one.is_present());
    }
}
