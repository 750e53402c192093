//! The fleet-wide routes' API side: the list's query string read into a `lab::index::ListQuery`, and the JSON of a listed lab, of a page and of the stats.
//!
//! The query string in, a checked query (or a 400 naming the parameter) out; the index
//! (`lab::index`) builds the SQL from it.

use serde::Serialize;
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::{percent, validation};
use crate::lab::config::Previous;
use crate::lab::fleet::levels;
use crate::lab::index::{
    Counts, Cursor, IndexRow, ListQuery, ReconciliationRow, DEFAULT_LIMIT, MAX_LIMIT,
};
use crate::lab::session::{EndReason, Origin};
use crate::lab::status::{is_stuck, Status};
use crate::lab::text::rfc3339;

fn invalid(message: String) -> ApiError {
    ApiError::InvalidRequest(message)
}

/// Parses the query string (without `?`). Every parameter at most once; unknown ones are refused.
pub fn parse(query: &str) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        ..ListQuery::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent::decode(raw_key, true).ok_or_else(|| {
            invalid("a query parameter name is not valid percent-encoded UTF-8".into())
        })?;
        let value = percent::decode(raw_value, true).ok_or_else(|| {
            invalid(format!(
                "{} is not valid percent-encoded UTF-8",
                truncate(&key)
            ))
        })?;
        // `label` may repeat (every one must match); any other parameter once.
        if key != "label" && seen.contains(&key) {
            return Err(invalid(format!(
                "{} is given more than once",
                truncate(&key)
            )));
        }
        seen.push(key.clone());
        match key.as_str() {
            "status" => {
                for name in value.split(',') {
                    let Some(status) = Status::from_name(name.trim()) else {
                        let names: Vec<&str> = Status::ALL.iter().map(|s| s.name()).collect();
                        return Err(invalid(format!(
                            "status must be one or more of {} separated by commas (got {:?})",
                            names.join(", "),
                            truncate(name.trim())
                        )));
                    };
                    if !q.statuses.contains(&status) {
                        q.statuses.push(status);
                    }
                }
            }
            "user_id" => {
                validation::check_id(&value, "user_id")?;
                q.user_id = Some(value);
            }
            "label" => {
                let (key, label) = value.split_once(':').ok_or_else(|| {
                    invalid("label must be key:value, e.g. label=class:cka-2026-11-30".into())
                })?;
                if let Some(problem) = crate::lab::limits::label_problem(key, label) {
                    return Err(invalid(crate::lab::text::shorten(&problem, 200)));
                }
                if q.labels.len() >= crate::lab::limits::MAX_LABELS {
                    return Err(invalid(format!(
                        "at most {} label filters",
                        crate::lab::limits::MAX_LABELS
                    )));
                }
                q.labels.push((key.to_string(), label.to_string()));
            }
            "end_reason" => {
                q.end_reason = Some(EndReason::parse(&value).ok_or_else(|| {
                    invalid(
                        "end_reason must be expired, idle, ended, operator or orphan".into(),
                    )
                })?)
            }
            "origin" => {
                q.origin = Some(
                    Origin::ALL
                        .into_iter()
                        .find(|o| o.name() == value)
                        .ok_or_else(|| {
                            invalid("origin must be api, legacy or inventory".into())
                        })?,
                )
            }
            "stuck" => {
                q.stuck = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid("stuck must be true or false".into())),
                })
            }
            "expires_before" => q.expires_before = Some(time(&key, &value)?),
            "expires_after" => q.expires_after = Some(time(&key, &value)?),
            "limit" => {
                q.limit = match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) && !value.starts_with('+') => n,
                    _ => {
                        return Err(invalid(format!(
                            "limit must be a whole number from 1 to {MAX_LIMIT}"
                        )))
                    }
                }
            }
            "cursor" => {
                q.cursor = Some(Cursor::decode(&value).ok_or_else(|| {
                    invalid(
                        "cursor is not one this API gave out (use next_cursor as it is)".into(),
                    )
                })?)
            }
            other => {
                return Err(invalid(format!(
                    "unknown query parameter {:?}; known: status, origin, end_reason, label, user_id, stuck, expires_before, expires_after, limit, cursor",
                    truncate(other)
                )))
            }
        }
    }
    Ok(q)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn time(key: &str, value: &str) -> Result<i64, ApiError> {
    crate::lab::time::parse_rfc3339(value).ok_or_else(|| {
        invalid(format!(
            "{key} must be an RFC 3339 time, e.g. 2026-11-27T10:00:00Z"
        ))
    })
}

/// A listed lab: its index row, with fields named as in the status view and times in RFC 3339.
#[derive(Debug, Serialize)]
pub struct ListedLab<'a> {
    pub lab_request_id: &'a str,
    pub user_id: &'a str,
    pub lab_type: &'a str,
    pub vm_count: u32,
    pub status: Status,
    pub created_at: String,
    pub expires_at: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub pending_count: u32,
    pub already_gone_count: u32,
    pub last_error: Option<&'a str>,
    pub completed_at: Option<String>,
    pub updated_at: String,
    /// Not completed after `STUCK_AFTER_ATTEMPTS` attempts or more.
    pub stuck: bool,
    pub origin: Origin,
    pub end_reason: Option<EndReason>,
    pub labels: &'a crate::lab::session::Labels,
    /// A stopped lab's (the grace stage): when its VMs are deleted (its row's next step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_at: Option<String>,
}

/// A lab of the list, as answered.
pub fn listed(row: &IndexRow, stuck_after: u32) -> ListedLab<'_> {
    ListedLab {
        lab_request_id: &row.lab_request_id,
        user_id: &row.user_id,
        lab_type: &row.lab_type,
        vm_count: row.vm_count,
        status: row.status,
        created_at: rfc3339(row.created_at),
        expires_at: rfc3339(row.expires_at),
        attempts: row.attempts,
        next_attempt_at: row.next_attempt_at.map(rfc3339),
        pending_count: row.pending_count,
        already_gone_count: row.already_gone_count,
        last_error: row.last_error.as_deref(),
        completed_at: row.completed_at.map(rfc3339),
        updated_at: rfc3339(row.updated_at),
        stuck: is_stuck(row.status, row.attempts, stuck_after),
        origin: row.origin,
        end_reason: row.end_reason,
        labels: &row.labels,
        delete_at: row
            .next_attempt_at
            .filter(|_| row.status == Status::Stopped)
            .map(rfc3339),
    }
}

/// The list's answer for the rows of `q` (one more than the page when another page follows):
/// `{"sessions": [...], "next_cursor": "..." | null}`.
pub fn page(mut rows: Vec<IndexRow>, q: &ListQuery, stuck_after: u32) -> Value {
    let more = rows.len() > q.limit as usize;
    rows.truncate(q.limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if more => Value::String(
            Cursor {
                expires_at: last.expires_at,
                lab_request_id: last.lab_request_id.clone(),
            }
            .encode(),
        ),
        _ => Value::Null,
    };
    let sessions: Vec<ListedLab> = rows.iter().map(|r| listed(r, stuck_after)).collect();
    json!({ "sessions": sessions, "next_cursor": next_cursor })
}

/// The stats answer: every status counted (0 where none), stuck labs, the VMs still to delete
/// and the oldest expiry among labs being cleaned up, the VMs found already gone (404), the
/// last reconciliation of an inventory (`null` before the first), and the service levels over
/// the last 24 hours at `now_ms` (labs completed, their lag's percentiles, the VMs overdue now,
/// and per hour: labs completed, their p95 lag, the backlog).
pub fn stats(
    counts: &Counts,
    reconcile: Option<&ReconciliationRow>,
    now_ms: i64,
    rotations: &[Previous],
) -> Value {
    let levels = levels::levels(now_ms, &counts.completions, &counts.overdue);
    let secs = |ms: i64| ms as f64 / 1000.0;
    let by_status: serde_json::Map<String, Value> = every_status(counts)
        .into_iter()
        .map(|(name, n)| (name.to_string(), json!(n)))
        .collect();
    json!({
        "by_status": by_status,
        "stuck": counts.stuck,
        "vms_pending": counts.vms_pending,
        "oldest_pending_expiry": counts.oldest_pending_expiry.map(rfc3339),
        "vms_stopped": counts.vms_stopped,
        "oldest_stopped_expiry": counts.oldest_stopped_expiry.map(rfc3339),
        "vms_already_gone": counts.vms_already_gone,
        "reconcile": reconcile.map(|r| json!({
            "at": rfc3339(r.at),
            "source": r.source,
            "act": r.act != 0,
            "tracked": r.tracked,
            "overdue": r.overdue,
            "finished": r.finished,
            "unknown": r.unknown,
            "scheduled": r.scheduled,
        })),
        "completed_24h": levels.completed_24h,
        "cleanup_lag_seconds": levels.lag.map(|l| json!({
            "p50": secs(l.p50), "p95": secs(l.p95), "p99": secs(l.p99), "max": secs(l.max),
        })),
        "overdue_vms": levels.overdue_vms,
        "rotations": rotation_notices(rotations),
        "hourly": levels.hours.iter().map(|h| json!({
            "hour": rfc3339(h.start),
            "completed": h.completed,
            "p95_lag_seconds": h.p95_lag_ms.map(secs),
            "vms_pending": h.vms_pending,
        })).collect::<Vec<_>>(),
    })
}

/// Every status with its count (0 where none).
fn every_status(counts: &Counts) -> Vec<(&'static str, u64)> {
    Status::ALL
        .iter()
        .map(|status| {
            let n = counts
                .by_status
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            (status.name(), n)
        })
        .collect()
}

/// The readiness answer for the operator: ready, and the rotations not finished.
pub fn health_for_operators(rotations: &[Previous]) -> Value {
    json!({"status": "ok", "rotations": rotation_notices(rotations)})
}

/// Each `_PREVIOUS` secret still set, with what the operator is to do about it.
fn rotation_notices(rotations: &[Previous]) -> Vec<Value> {
    rotations
        .iter()
        .map(|p| json!({"setting": p.setting(), "notice": p.notice()}))
        .collect()
}

/// `GET /metrics`: the stats as Prometheus text.
pub fn metrics(counts: &Counts, now_ms: i64, rotations: &[Previous]) -> String {
    let levels = levels::levels(now_ms, &counts.completions, &counts.overdue);
    let gauges = levels::Gauges {
        by_status: every_status(counts),
        stuck: counts.stuck,
        vms_pending: counts.vms_pending,
        vms_stopped: counts.vms_stopped,
        oldest_stopped_expiry_ms: counts.oldest_stopped_expiry,
        vms_already_gone: counts.vms_already_gone,
        reconciliation: counts.last_reconciliation.as_ref().map(|r| {
            (
                r.at,
                vec![
                    ("tracked", r.tracked),
                    ("overdue", r.overdue),
                    ("finished", r.finished),
                    ("unknown", r.unknown),
                    ("scheduled", r.scheduled),
                ],
            )
        }),
        previous_secrets: Previous::ALL
            .iter()
            .map(|p| (p.secret(), u64::from(rotations.contains(p))))
            .collect(),
    };
    levels::prometheus(&gauges, &levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(query: &str) -> String {
        match parse(query) {
            Err(ApiError::InvalidRequest(m)) => m,
            other => panic!("{query}: expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn no_parameters_is_the_first_page_of_everything() {
        let q = parse("").unwrap();
        assert_eq!(q, ListQuery::default());
        assert_eq!(q.limit, 50);
    }

    #[test]
    fn every_filter_is_read() {
        let q = parse(
            "status=retrying,cleaning_up&user_id=user%40x&stuck=true&expires_before=2026-11-27T10:00:00Z&expires_after=2026-11-27T09:00:00%2B01:00&limit=200",
        )
        .unwrap();
        assert_eq!(q.statuses, vec![Status::Retrying, Status::CleaningUp]);
        assert_eq!(q.user_id.as_deref(), Some("user@x"));
        assert_eq!(q.stuck, Some(true));
        assert_eq!(q.expires_before, Some(1_795_773_600_000));
        assert_eq!(q.expires_after, Some(1_795_766_400_000));
        assert_eq!(q.limit, 200);
        assert_eq!(parse("stuck=false").unwrap().stuck, Some(false));
    }

    #[test]
    fn the_cursor_given_out_is_read_back() {
        let c = Cursor {
            expires_at: 1_795_000_000_123,
            lab_request_id: "lab:7@x".into(),
        };
        let q = parse(&format!("cursor={}&limit=10", c.encode())).unwrap();
        assert_eq!(q.cursor, Some(c));
    }

    fn row(id: &str, expires_at: i64, status: Status, attempts: u32) -> IndexRow {
        IndexRow {
            lab_request_id: id.into(),
            user_id: "u".into(),
            lab_type: "single_vm".into(),
            vm_count: 1,
            status,
            created_at: 0,
            expires_at,
            attempts,
            next_attempt_at: None,
            pending_count: 1,
            already_gone_count: 0,
            last_error: None,
            completed_at: None,
            updated_at: 5,
            revision: 7,
            origin: Origin::Api,
            end_reason: None,
            labels: Default::default(),
            vms_done: None,
            first: false,
        }
    }

    #[test]
    fn a_page_says_where_the_next_one_starts() {
        let q = parse("limit=2").unwrap();
        let v = page(
            vec![
                row("a", 10, Status::Retrying, 3),
                row("b", 20, Status::Scheduled, 0),
                row("c", 30, Status::Scheduled, 0),
            ],
            &q,
            3,
        );
        let sessions = v["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0]["lab_request_id"], "a");
        assert_eq!(sessions[0]["status"], "retrying");
        assert_eq!(sessions[0]["stuck"], true);
        assert_eq!(sessions[0]["expires_at"], "1970-01-01T00:00:00.010Z");
        assert_eq!(sessions[1]["stuck"], false);
        let next = parse(&format!("cursor={}", v["next_cursor"].as_str().unwrap())).unwrap();
        assert_eq!(
            next.cursor,
            Some(Cursor {
                expires_at: 20,
                lab_request_id: "b".into()
            })
        );
        let last = page(vec![row("c", 30, Status::Scheduled, 0)], &q, 3);
        assert_eq!(last["next_cursor"], Value::Null);
    }

    #[test]
    fn stats_name_every_status() {
        let v = stats(
            &Counts {
                by_status: vec![(Status::Retrying, 2), (Status::Completed, 5)],
                stuck: 1,
                vms_pending: 3,
                oldest_pending_expiry: Some(1_000),
                vms_stopped: 2,
                oldest_stopped_expiry: Some(2_000),
                vms_already_gone: 4,
                last_reconciliation: None,
                completions: vec![crate::lab::fleet::levels::Completion {
                    completed_at: 3_000,
                    expires_at: 1_500,
                    vm_count: 3,
                    already_gone_count: 0,
                }],
                overdue: vec![crate::lab::fleet::levels::Overdue {
                    expires_at: 2_500,
                    pending_count: 2,
                }],
            },
            Some(&ReconciliationRow {
                at: 2_000,
                source: "pull".into(),
                act: 1,
                tracked: 5,
                overdue: 1,
                finished: 0,
                unknown: 2,
                scheduled: 2,
            }),
            4_000,
            &[Previous::WebhookSecret],
        );
        let hourly = v["hourly"].as_array().unwrap();
        assert_eq!(hourly.len(), 24);
        assert_eq!(hourly[23]["completed"], 1);
        assert_eq!(hourly[23]["p95_lag_seconds"], 1.5);
        assert_eq!(hourly[23]["vms_pending"], 2);
        let mut v = v;
        v.as_object_mut().unwrap().remove("hourly");
        assert_eq!(
            v,
            json!({
                "by_status": {"scheduled": 0, "stopped": 0, "cleaning_up": 0, "retrying": 2, "completed": 5},
                "stuck": 1,
                "vms_pending": 3,
                "oldest_pending_expiry": "1970-01-01T00:00:01.000Z",
                "vms_stopped": 2,
                "oldest_stopped_expiry": "1970-01-01T00:00:02.000Z",
                "vms_already_gone": 4,
                "reconcile": {"at": "1970-01-01T00:00:02.000Z", "source": "pull", "act": true,
                    "tracked": 5, "overdue": 1, "finished": 0, "unknown": 2, "scheduled": 2},
                "completed_24h": 1,
                "cleanup_lag_seconds": {"p50": 1.5, "p95": 1.5, "p99": 1.5, "max": 1.5},
                "overdue_vms": 2,
                "rotations": [{"setting": "WEBHOOK_SECRET_PREVIOUS", "notice": Previous::WebhookSecret.notice()}]
            })
        );
        let empty = stats(&Counts::default(), None, 4_000, &[]);
        assert_eq!(empty["rotations"], json!([]));
        assert_eq!(empty["cleanup_lag_seconds"], Value::Null);
        assert_eq!(empty["oldest_pending_expiry"], Value::Null);
        assert_eq!(empty["reconcile"], Value::Null);
    }

    #[test]
    fn bad_parameters_are_named() {
        assert!(err("status=done").starts_with("status must be one or more of"));
        assert!(err("status=").starts_with("status must be"));
        assert!(err("user_id=a/b").contains("user_id"));
        assert_eq!(err("stuck=yes"), "stuck must be true or false");
        assert!(err("expires_before=tomorrow").starts_with("expires_before must be an RFC 3339"));
        for limit in ["0", "201", "-1", "ten", "", "+5", "1.5"] {
            assert!(
                err(&format!("limit={limit}")).starts_with("limit must be"),
                "{limit}"
            );
        }
        for cursor in ["zz", "abc", "7631", "a%C3%A9b", "%C3%A9", "76313a783a79"] {
            assert!(
                err(&format!("cursor={cursor}")).starts_with("cursor is not one"),
                "{cursor}"
            );
        }
        assert!(err("sort=name").starts_with("unknown query parameter \"sort\""));
        assert_eq!(err("limit=5&limit=6"), "limit is given more than once");
        assert!(err("user_id=%ff").contains("percent-encoded"));
    }
}
