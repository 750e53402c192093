//! The fleet-wide routes' pure parts: the list's query parameters, cursor and SQL, and the JSON of a listed lab and of the stats.
//!
//! The query string in, a checked `ListQuery` (or a 400 naming the parameter) out, and from it
//! the one SQL statement with its bound values. Paging is by key (`expires_at`, then
//! `lab_request_id`), so a lab is listed once however many labs are added while paging.

use chrono::DateTime;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::validation;
use crate::lab::index::{is_stuck, IndexRow};
use crate::lab::session::rfc3339;

/// Default and largest page size.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;
/// The statuses a lab can be in.
pub const STATUSES: [&str; 4] = ["scheduled", "cleaning_up", "retrying", "completed"];

/// Where a page starts: after this (`expires_at`, `lab_request_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub expires_at: i64,
    pub lab_request_id: String,
}

/// A checked list query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    pub statuses: Vec<String>,
    pub user_id: Option<String>,
    pub stuck: Option<bool>,
    /// Exclusive bounds on `expires_at` (epoch ms).
    pub expires_before: Option<i64>,
    pub expires_after: Option<i64>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

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
        let key = decode(raw_key).ok_or_else(|| {
            invalid("a query parameter name is not valid percent-encoded UTF-8".into())
        })?;
        let value = decode(raw_value)
            .ok_or_else(|| invalid(format!("{key} is not valid percent-encoded UTF-8")))?;
        if seen.contains(&key) {
            return Err(invalid(format!("{key} is given more than once")));
        }
        seen.push(key.clone());
        match key.as_str() {
            "status" => {
                for status in value.split(',') {
                    let status = status.trim();
                    if !STATUSES.contains(&status) {
                        return Err(invalid(format!(
                            "status must be one or more of {} separated by commas (got {:?})",
                            STATUSES.join(", "),
                            truncate(status)
                        )));
                    }
                    if !q.statuses.iter().any(|s| s == status) {
                        q.statuses.push(status.to_string());
                    }
                }
            }
            "user_id" => {
                validation::check_id(&value, "user_id")?;
                q.user_id = Some(value);
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
            "cursor" => q.cursor = Some(decode_cursor(&value)?),
            other => {
                return Err(invalid(format!(
                    "unknown query parameter {:?}; known: status, user_id, stuck, expires_before, expires_after, limit, cursor",
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
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            invalid(format!(
                "{key} must be an RFC 3339 time, e.g. 2026-11-27T10:00:00Z"
            ))
        })
}

/// Decodes `%XX` escapes and `+` (a space, as forms send it); `None` if not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The opaque cursor: hex of `v1:<expires_at>:<lab_request_id>`.
pub fn encode_cursor(cursor: &Cursor) -> String {
    format!("v1:{}:{}", cursor.expires_at, cursor.lab_request_id)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_cursor(value: &str) -> Result<Cursor, ApiError> {
    let bad = || invalid("cursor is not one this API gave out (use next_cursor as it is)".into());
    // Byte pairs, never string slices: a cursor is anything a caller sends, multi-byte
    // characters included (`a%C3%A9b` once split a character and panicked).
    let hex = value.as_bytes();
    if hex.len() % 2 != 0 || hex.len() > 400 {
        return Err(bad());
    }
    let bytes: Vec<u8> = hex
        .chunks_exact(2)
        .map(|pair| Some((hex_digit(pair[0])? << 4) | hex_digit(pair[1])?))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let rest = text.strip_prefix("v1:").ok_or_else(bad)?;
    let (expires_at, id) = rest.split_once(':').ok_or_else(bad)?;
    let expires_at = expires_at.parse::<i64>().map_err(|_| bad())?;
    validation::check_id(id, "cursor").map_err(|_| bad())?;
    Ok(Cursor {
        expires_at,
        lab_request_id: id.to_string(),
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// The statement of a query: its SQL and its bound values, one row more than the page (which
/// says whether another page follows).
pub fn sql(q: &ListQuery, stuck_after: u32) -> (String, Vec<Bind>) {
    let mut sql = format!("SELECT {COLUMNS} FROM sessions WHERE 1 = 1");
    let mut binds = Vec::new();
    if !q.statuses.is_empty() {
        let marks = vec!["?"; q.statuses.len()].join(", ");
        sql.push_str(&format!(" AND status IN ({marks})"));
        binds.extend(q.statuses.iter().cloned().map(Bind::Text));
    }
    if let Some(user) = &q.user_id {
        sql.push_str(" AND user_id = ?");
        binds.push(Bind::Text(user.clone()));
    }
    match q.stuck {
        Some(true) => {
            sql.push_str(" AND status != 'completed' AND attempts >= ?");
            binds.push(Bind::Int(stuck_after.into()));
        }
        Some(false) => {
            sql.push_str(" AND (status = 'completed' OR attempts < ?)");
            binds.push(Bind::Int(stuck_after.into()));
        }
        None => {}
    }
    if let Some(before) = q.expires_before {
        sql.push_str(" AND expires_at < ?");
        binds.push(Bind::Int(before));
    }
    if let Some(after) = q.expires_after {
        sql.push_str(" AND expires_at > ?");
        binds.push(Bind::Int(after));
    }
    if let Some(c) = &q.cursor {
        sql.push_str(" AND (expires_at > ? OR (expires_at = ? AND lab_request_id > ?))");
        binds.push(Bind::Int(c.expires_at));
        binds.push(Bind::Int(c.expires_at));
        binds.push(Bind::Text(c.lab_request_id.clone()));
    }
    sql.push_str(" ORDER BY expires_at, lab_request_id LIMIT ?");
    binds.push(Bind::Int(i64::from(q.limit) + 1));
    (sql, binds)
}

/// The columns a listed row has, in the index table.
pub const COLUMNS: &str = "lab_request_id, user_id, lab_type, vm_count, status, created_at, expires_at, attempts, next_attempt_at, pending_count, already_gone_count, last_error, completed_at, updated_at, revision";

/// A listed lab: its index row, with fields named as in the status view and times in RFC 3339.
#[derive(Debug, Serialize)]
pub struct ListedLab<'a> {
    pub lab_request_id: &'a str,
    pub user_id: &'a str,
    pub lab_type: &'a str,
    pub vm_count: u32,
    pub status: &'a str,
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
}

/// A lab of the list, as answered.
pub fn listed(row: &IndexRow, stuck_after: u32) -> ListedLab<'_> {
    ListedLab {
        lab_request_id: &row.lab_request_id,
        user_id: &row.user_id,
        lab_type: &row.lab_type,
        vm_count: row.vm_count,
        status: &row.status,
        created_at: rfc3339(row.created_at),
        expires_at: rfc3339(row.expires_at),
        attempts: row.attempts,
        next_attempt_at: row.next_attempt_at.map(rfc3339),
        pending_count: row.pending_count,
        already_gone_count: row.already_gone_count,
        last_error: row.last_error.as_deref(),
        completed_at: row.completed_at.map(rfc3339),
        updated_at: rfc3339(row.updated_at),
        stuck: is_stuck(&row.status, row.attempts, stuck_after),
    }
}

/// The list's answer for the rows of `q` (one more than the page when another page follows):
/// `{"sessions": [...], "next_cursor": "..." | null}`.
pub fn page(mut rows: Vec<IndexRow>, q: &ListQuery, stuck_after: u32) -> Value {
    let more = rows.len() > q.limit as usize;
    rows.truncate(q.limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if more => Value::String(encode_cursor(&Cursor {
            expires_at: last.expires_at,
            lab_request_id: last.lab_request_id.clone(),
        })),
        _ => Value::Null,
    };
    let sessions: Vec<ListedLab> = rows.iter().map(|r| listed(r, stuck_after)).collect();
    json!({ "sessions": sessions, "next_cursor": next_cursor })
}

/// Counts over the fleet, as read from the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_status: Vec<(String, u64)>,
    pub stuck: u64,
    pub vms_pending: u64,
    pub oldest_pending_expiry: Option<i64>,
    pub vms_already_gone: u64,
}

/// The stats answer: every status counted (0 where none), stuck labs, the VMs still to delete
/// and the oldest expiry among labs being cleaned up, and the VMs found already gone (404).
pub fn stats(counts: &Counts) -> Value {
    let by_status: serde_json::Map<String, Value> = STATUSES
        .iter()
        .map(|status| {
            let n = counts
                .by_status
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            (status.to_string(), json!(n))
        })
        .collect();
    json!({
        "by_status": by_status,
        "stuck": counts.stuck,
        "vms_pending": counts.vms_pending,
        "oldest_pending_expiry": counts.oldest_pending_expiry.map(rfc3339),
        "vms_already_gone": counts.vms_already_gone,
    })
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
        assert_eq!(q.limit, 50);
        assert!(q.statuses.is_empty() && q.user_id.is_none() && q.cursor.is_none());
        let (sql, binds) = sql(&q, 3);
        assert!(sql.ends_with("WHERE 1 = 1 ORDER BY expires_at, lab_request_id LIMIT ?"));
        assert_eq!(binds, vec![Bind::Int(51)]);
    }

    #[test]
    fn every_filter_is_read_and_bound() {
        let q = parse(
            "status=retrying,cleaning_up&user_id=user%40x&stuck=true&expires_before=2026-11-27T10:00:00Z&expires_after=2026-11-27T09:00:00%2B01:00&limit=200",
        )
        .unwrap();
        assert_eq!(q.statuses, vec!["retrying", "cleaning_up"]);
        assert_eq!(q.user_id.as_deref(), Some("user@x"));
        assert_eq!(q.stuck, Some(true));
        assert_eq!(q.expires_before, Some(1_795_773_600_000));
        assert_eq!(q.expires_after, Some(1_795_766_400_000));
        assert_eq!(q.limit, 200);
        let (sql, binds) = sql(&q, 3);
        assert_eq!(
            sql,
            format!("SELECT {COLUMNS} FROM sessions WHERE 1 = 1 AND status IN (?, ?) AND user_id = ? AND status != 'completed' AND attempts >= ? AND expires_at < ? AND expires_at > ? ORDER BY expires_at, lab_request_id LIMIT ?")
        );
        assert_eq!(
            binds,
            vec![
                Bind::Text("retrying".into()),
                Bind::Text("cleaning_up".into()),
                Bind::Text("user@x".into()),
                Bind::Int(3),
                Bind::Int(1_795_773_600_000),
                Bind::Int(1_795_766_400_000),
                Bind::Int(201),
            ]
        );
        let (sql, binds) = super::sql(&parse("stuck=false").unwrap(), 4);
        assert!(sql.contains("AND (status = 'completed' OR attempts < ?)"));
        assert_eq!(binds[0], Bind::Int(4));
    }

    #[test]
    fn the_cursor_round_trips_and_pages_by_key() {
        let c = Cursor {
            expires_at: 1_795_000_000_123,
            lab_request_id: "lab:7@x".into(),
        };
        let text = encode_cursor(&c);
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        let q = parse(&format!("cursor={text}&limit=10")).unwrap();
        assert_eq!(q.cursor, Some(c));
        let (sql, binds) = sql(&q, 3);
        assert!(sql.contains("AND (expires_at > ? OR (expires_at = ? AND lab_request_id > ?))"));
        assert_eq!(binds.len(), 4);
    }

    fn row(id: &str, expires_at: i64, status: &str, attempts: u32) -> IndexRow {
        IndexRow {
            lab_request_id: id.into(),
            user_id: "u".into(),
            lab_type: "single_vm".into(),
            vm_count: 1,
            status: status.into(),
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
        }
    }

    #[test]
    fn a_page_says_where_the_next_one_starts() {
        let q = parse("limit=2").unwrap();
        let v = page(
            vec![
                row("a", 10, "retrying", 3),
                row("b", 20, "scheduled", 0),
                row("c", 30, "scheduled", 0),
            ],
            &q,
            3,
        );
        let sessions = v["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0]["lab_request_id"], "a");
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
        let last = page(vec![row("c", 30, "scheduled", 0)], &q, 3);
        assert_eq!(last["next_cursor"], Value::Null);
    }

    #[test]
    fn stats_name_every_status() {
        let v = stats(&Counts {
            by_status: vec![("retrying".into(), 2), ("completed".into(), 5)],
            stuck: 1,
            vms_pending: 3,
            oldest_pending_expiry: Some(1_000),
            vms_already_gone: 4,
        });
        assert_eq!(
            v,
            json!({
                "by_status": {"scheduled": 0, "cleaning_up": 0, "retrying": 2, "completed": 5},
                "stuck": 1,
                "vms_pending": 3,
                "oldest_pending_expiry": "1970-01-01T00:00:01.000Z",
                "vms_already_gone": 4
            })
        );
        assert_eq!(
            stats(&Counts::default())["oldest_pending_expiry"],
            Value::Null
        );
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
        for cursor in [
            "zz",
            "abc",
            "7631",
            &"0".repeat(500),
            "76313a783a79",
            // Multi-byte characters (`a%C3%A9b` once panicked on a split character).
            "aéb",
            "é",
            "+7",
            "７６",
        ] {
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
