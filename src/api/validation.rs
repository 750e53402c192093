//! Request validation: turns a create-session body into a checked `NewSession`, or says which field is wrong.

use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::lab::fleet::report::{ReportedVm, MAX_VMS_PER_REPORT};
use crate::lab::session::timeline::EventsPage;
pub use crate::lab::session::NewSession;

use crate::lab::limits::{describe_char, id_problem, IdProblem};
pub use crate::lab::limits::{MAX_ID_LEN, MAX_VM_NAME_LEN};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest accepted inventory body (the same bound as a pulled page).
pub const MAX_INVENTORY_BODY_BYTES: usize = crate::lab::fleet::report::MAX_REPORT_BYTES;

/// Accepts `application/json` and `application/<anything>+json`, with parameters such as
/// `charset`, in any letter case. A body with no `Content-Type`, or with `text/plain` (what a
/// browser's `fetch` sends for a string body, and what the TypeScript worker accepted: it read
/// every body as JSON), is read as JSON too. Any other media type is a 415.
pub fn check_content_type(value: Option<&str>) -> Result<(), ApiError> {
    let raw = value.unwrap_or("");
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = media.is_empty()
        || media == "application/json"
        || media == "text/plain"
        || (media.starts_with("application/") && media.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "{:?}",
            truncate(raw, 100)
        )))
    }
}

/// Refuses a body whose declared or actual size is over `limit` bytes.
pub fn check_body_size(len: usize, limit: usize) -> Result<(), ApiError> {
    if len > limit {
        Err(ApiError::PayloadTooLarge { limit })
    } else {
        Ok(())
    }
}

/// Reads a body from its chunks, keeping at most `limit` bytes: the first chunk past the limit
/// stops the reading with a 413, whatever `Content-Length` said or whether it was sent at all (a
/// chunked body is never read whole first).
pub async fn read_bounded<E: std::fmt::Display>(
    chunks: impl futures::Stream<Item = Result<Vec<u8>, E>>,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    futures::pin_mut!(chunks);
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| invalid(format!("the request body could not be read: {e}")))?;
        check_body_size(body.len().saturating_add(chunk.len()), limit)?;
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// The bounds a request is checked against (from the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_duration_minutes: u64,
    pub max_worker_nodes: usize,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(message.into())
}

/// Parses and validates the JSON body of `POST /api/v1/labs/sessions`.
pub fn parse_new_session(body: &[u8], limits: Limits) -> Result<NewSession, ApiError> {
    let obj = json_object(body)?;
    no_near_misses(&obj, CREATE_FIELDS, "")?;
    if let Some(Value::Object(vm)) = obj.get("vm") {
        no_near_misses(vm, VM_FIELDS, "vm.")?;
    }
    let lab_request_id = required_id(&obj, "lab_request_id")?;
    let user_id = required_id(&obj, "user_id")?;
    let duration = duration(obj.get("duration"), "duration", limits.max_duration_minutes)?;
    let vm_name = vm_name(obj.get("vm"))?;
    let worker_lab_request_ids = worker_ids(
        obj.get("worker_nodes"),
        &lab_request_id,
        limits.max_worker_nodes,
    )?;
    // Optional; `null` is as absent (the setting's default applies).
    let idle_timeout = match obj.get("idle_timeout") {
        None | Some(Value::Null) => None,
        value => Some(self::duration(
            value,
            "idle_timeout",
            limits.max_duration_minutes,
        )?),
    };

    let labels = labels(obj.get("labels"))?;
    let keep_stopped_minutes = keep_stopped(obj.get("keep_stopped_minutes"))?;

    Ok(NewSession {
        lab_request_id,
        user_id,
        worker_lab_request_ids,
        duration,
        vm_name,
        idle_timeout,
        labels,
        keep_stopped_minutes,
    })
}

/// Parses a request body that must be a JSON object. A key repeated in any object of the body
/// is refused: two parsers that keep different copies are a known way to carry a value past a
/// check.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    // Read as text, as every other JSON of the worker is (one instance of the parser in the
    // wasm, not two): bytes that are not UTF-8 are refused as the parser would refuse them.
    let text = std::str::from_utf8(body).map_err(|e| {
        invalid(format!(
            "request body is not valid JSON: invalid unicode code point at byte {}",
            e.valid_up_to()
        ))
    })?;
    match serde_json::from_str::<Strict>(text) {
        Ok(Strict(Value::Object(obj))) => Ok(obj),
        Ok(_) => Err(invalid("request body must be a JSON object")),
        Err(e) => {
            let text = e.to_string();
            Err(invalid(match text.strip_prefix(REPEATED_KEY) {
                Some(rest) => {
                    format!("request body repeats the key {rest}; each key may appear once")
                }
                None => format!("request body is not valid JSON: {text}"),
            }))
        }
    }
}

/// Start of the parse error a repeated key raises.
const REPEATED_KEY: &str = "repeated key ";

/// A JSON value read with the rule that no object repeats a key.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("{REPEATED_KEY}{key:?}")));
            }
            let Strict(value) = map.next_value()?;
            obj.insert(key, value);
        }
        Ok(Strict(Value::Object(obj)))
    }
}

/// Refuses any field of `obj` not in `known` (an operator's body: a typo there is a different
/// request, e.g. `dryRun` for `dry_run`), naming it and the field it resembles, if any.
/// `within` prefixes the names (`"selector."`).
pub fn only_fields(obj: &Map<String, Value>, known: &[&str], within: &str) -> Result<(), ApiError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(invalid(match resembled(key, known, 1) {
            Some(like) => format!(
                "unknown field {within}{}; did you mean {within}{like}?",
                shown(key)
            ),
            None if known.is_empty() => format!(
                "unknown field {within}{}; this request takes no fields",
                shown(key)
            ),
            None => format!(
                "unknown field {within}{}; the fields are {}",
                shown(key),
                known.join(", ")
            ),
        })),
    }
}

/// Refuses a field of `obj` that is not in `known` but nearly is one (`idle_timeot`,
/// `worker_node`): a body the frontend sends may carry fields of its own, but a misspelt known
/// one would be silently ignored and change what is scheduled.
pub fn no_near_misses(
    obj: &Map<String, Value>,
    known: &[&str],
    within: &str,
) -> Result<(), ApiError> {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        if let Some(like) = resembled(key, known, 0) {
            return Err(invalid(format!(
                "{within}{} is not a field; did you mean {within}{like}?",
                shown(key)
            )));
        }
    }
    Ok(())
}

/// A field name from outside as a message shows it: quoted, escaped, shortened.
fn shown(key: &str) -> String {
    format!("{:?}", truncate(key, 70))
}

/// The known name `key` resembles: the same letters but for case, `_` and `-` (`dryRun`), or
/// one edit away from a name of 5 characters or more (two from one of 10 or more; at least
/// `least` edits from any name: a suggestion for a field refused anyway may be looser).
fn resembled<'a>(key: &str, known: &[&'a str], least: usize) -> Option<&'a str> {
    let plain = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let key_plain = plain(key);
    known.iter().copied().find(|name| {
        let allowed = match name.chars().count() {
            0..=4 => 0,
            5..=9 => 1,
            _ => 2,
        }
        .max(least);
        plain(name) == key_plain
            || (key.chars().count() <= 70 && edits(&key_plain, &plain(name)) <= allowed)
    })
}

/// Edits (insert, delete, replace, swap of neighbours) from `a` to `b`.
fn edits(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The fields of a create's body, of its `vm` and of a `worker_nodes` entry.
pub const CREATE_FIELDS: &[&str] = &[
    "lab_request_id",
    "user_id",
    "duration",
    "vm",
    "worker_nodes",
    "labels",
    "idle_timeout",
    "keep_stopped_minutes",
];
const VM_FIELDS: &[&str] = &["name"];
const WORKER_FIELDS: &[&str] = &["worker_lab_request_id"];
/// The fields of an inventory push, and of one of its VMs.
pub const INVENTORY_FIELDS: &[&str] = &["vms", "act"];
const INVENTORY_VM_FIELDS: &[&str] = &["lab_request_id", "user_id", "created_at"];

fn required_id(obj: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(invalid(format!("{field} is required"))),
        Some(Value::String(s)) => check_id(s, field).map(|()| s.clone()),
        Some(other) => Err(invalid(format!(
            "{field} must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// Checks an id: 1 to 128 characters from `A-Z a-z 0-9 . _ : @ + -`.
pub fn check_id(id: &str, field: &str) -> Result<(), ApiError> {
    match id_problem(id) {
        None => Ok(()),
        Some(IdProblem::Empty) => Err(invalid(format!("{field} must not be empty"))),
        Some(IdProblem::TooLong(_)) => Err(invalid(format!(
            "{field} must be at most {MAX_ID_LEN} characters"
        ))),
        Some(IdProblem::Character(bad)) => Err(invalid(format!(
            "{field} contains {}; allowed are A-Z a-z 0-9 . _ : @ + -",
            describe_char(bad)
        ))),
    }
}

/// Checks a whole number of minutes from 1 to `max`. Floats (even `60.0`), strings and booleans
/// are refused, so that a client's unit or type mistake is caught rather than guessed at.
pub fn duration(value: Option<&Value>, field: &str, max: u64) -> Result<u64, ApiError> {
    let n = match value {
        None | Some(Value::Null) => return Err(invalid(format!("{field} is required"))),
        Some(Value::Number(n)) => n,
        Some(other) => {
            return Err(invalid(format!(
                "{field} must be a whole number of minutes, got {}",
                type_name(other)
            )))
        }
    };
    if let Some(m) = n.as_u64() {
        if m == 0 {
            Err(invalid(format!("{field} must be at least 1 minute")))
        } else if m > max {
            Err(invalid(format!("{field} must be at most {max} minutes")))
        } else {
            Ok(m)
        }
    } else if n.is_i64() {
        Err(invalid(format!("{field} must be at least 1 minute")))
    } else {
        Err(invalid(format!(
            "{field} must be a whole number of minutes, got {n}"
        )))
    }
}

/// A create's `keep_stopped_minutes`: optional (`null` as absent), 0 (deleted at once) to
/// `MAX_KEEP_STOPPED_MINUTES`.
fn keep_stopped(value: Option<&Value>) -> Result<Option<u64>, ApiError> {
    const FIELD: &str = "keep_stopped_minutes";
    let max = crate::lab::config::MAX_KEEP_STOPPED_MINUTES;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(m) if m <= max => Ok(Some(m)),
            Some(_) => Err(invalid(format!("{FIELD} must be at most {max} minutes"))),
            None => Err(invalid(format!(
                "{FIELD} must be a whole number of minutes from 0, got {n}"
            ))),
        },
        Some(other) => Err(invalid(format!(
            "{FIELD} must be a whole number of minutes, got {}",
            type_name(other)
        ))),
    }
}

/// Parses the body of `POST /api/v1/labs/sessions/{id}/extend`: `{"minutes": N}`, N a whole
/// number from 1 to `max_minutes` (the total lifetime cap is checked against the session).
/// An inventory push: `{"vms": [{"lab_request_id", "user_id", "created_at"?}, ...], "act"?}`,
/// at most `MAX_VMS_PER_REPORT` VMs (more: `413 too_large`), each id checked as a create's, no
/// id twice. Returns the VMs and whether to act.
pub fn parse_inventory(body: &[u8]) -> Result<(Vec<ReportedVm>, bool), ApiError> {
    let obj = json_object(body)?;
    only_fields(&obj, INVENTORY_FIELDS, "")?;
    let vms = match obj.get("vms") {
        Some(Value::Array(vms)) => vms,
        None | Some(Value::Null) => return Err(invalid("vms is required (an array)")),
        Some(other) => {
            return Err(invalid(format!(
                "vms must be an array, got {}",
                type_name(other)
            )))
        }
    };
    if vms.len() > MAX_VMS_PER_REPORT {
        return Err(ApiError::TooLarge(format!(
            "vms holds {} VMs; at most {MAX_VMS_PER_REPORT} per call (send the rest in another)",
            vms.len()
        )));
    }
    let act = match obj.get("act") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(act)) => *act,
        Some(other) => {
            return Err(invalid(format!(
                "act must be true or false, got {}",
                type_name(other)
            )))
        }
    };
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut parsed = Vec::with_capacity(vms.len());
    for (i, entry) in vms.iter().enumerate() {
        if let Value::Object(fields) = entry {
            no_near_misses(fields, INVENTORY_VM_FIELDS, &format!("vms[{i}]."))?;
        }
        let vm = ReportedVm::from_json(entry).map_err(|e| invalid(format!("vms[{i}]: {e}")))?;
        if let Some(first) = seen.insert(entry["lab_request_id"].as_str().unwrap_or_default(), i) {
            return Err(invalid(format!(
                "vms[{i}].lab_request_id repeats vms[{first}]; each VM may appear once"
            )));
        }
        parsed.push(vm);
    }
    Ok((parsed, act))
}

pub fn parse_extend(body: &[u8], max_minutes: u64) -> Result<u64, ApiError> {
    let obj = json_object(body)?;
    only_fields(&obj, &["minutes"], "")?;
    duration(obj.get("minutes"), "minutes", max_minutes)
}

/// The query string of `GET .../events` (without `?`): `limit` (1 to `MAX_EVENTS_PAGE`, default
/// `DEFAULT_EVENTS_PAGE`) and `cursor` (a page's `next_cursor`), each at most once; nothing
/// else.
pub fn parse_events_query(query: &str) -> Result<EventsPage, ApiError> {
    use crate::lab::session::timeline::{EventsCursor, MAX_EVENTS_PAGE};
    let mut page = EventsPage::default();
    let mut seen: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if seen.contains(&key) {
            return Err(invalid(format!("{} is given more than once", shown(key))));
        }
        seen.push(key);
        match key {
            "limit" => {
                page.limit = match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_EVENTS_PAGE).contains(&n) && !value.starts_with('+') => n,
                    _ => {
                        return Err(invalid(format!(
                            "limit must be a whole number from 1 to {MAX_EVENTS_PAGE}"
                        )))
                    }
                }
            }
            "cursor" => {
                page.after = Some(EventsCursor::parse(value).ok_or_else(|| {
                    invalid("cursor must be the next_cursor of a page of this timeline")
                })?)
            }
            _ => {
                return Err(invalid(format!(
                    "unknown query parameter {}; the parameters are limit and cursor",
                    shown(key)
                )))
            }
        }
    }
    Ok(page)
}

/// The body of a request that takes no fields (retry now, activity): none, or `{}`.
pub fn parse_empty(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    only_fields(&json_object(body)?, &[], "")
}

/// `labels`: an object of at most `MAX_LABELS` string values, keys `[a-z0-9_.-]{1,63}`, values
/// 1 to 128 printable characters; missing or `null` is none.
fn labels(value: Option<&Value>) -> Result<crate::lab::session::Labels, ApiError> {
    use crate::lab::limits::{label_problem, MAX_LABELS};
    let entries = match value {
        None | Some(Value::Null) => return Ok(Default::default()),
        Some(Value::Object(entries)) => entries,
        Some(other) => {
            return Err(invalid(format!(
                "labels must be an object, got {}",
                type_name(other)
            )))
        }
    };
    if entries.len() > MAX_LABELS {
        return Err(invalid(format!(
            "labels may hold at most {MAX_LABELS} entries, got {}",
            entries.len()
        )));
    }
    let mut labels = crate::lab::session::Labels::new();
    for (key, value) in entries {
        let Value::String(value) = value else {
            return Err(invalid(format!(
                "label {} must be a string, got {}",
                truncate(key, 70),
                type_name(value)
            )));
        };
        if let Some(problem) = label_problem(key, value) {
            return Err(invalid(crate::lab::text::shorten(&problem, 200)));
        }
        labels.insert(key.clone(), value.clone());
    }
    Ok(labels)
}

fn vm_name(value: Option<&Value>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(vm)) => match vm.get("name") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(name)) if name.chars().count() > MAX_VM_NAME_LEN => Err(invalid(
                format!("vm.name must be at most {MAX_VM_NAME_LEN} characters"),
            )),
            Some(Value::String(name)) if name.chars().any(char::is_control) => {
                Err(invalid("vm.name must not contain control characters"))
            }
            Some(Value::String(name)) => Ok(Some(name.clone())),
            Some(other) => Err(invalid(format!(
                "vm.name must be a string, got {}",
                type_name(other)
            ))),
        },
        Some(other) => Err(invalid(format!(
            "vm must be an object, got {}",
            type_name(other)
        ))),
    }
}

fn worker_ids(
    value: Option<&Value>,
    master: &str,
    max_workers: usize,
) -> Result<Vec<String>, ApiError> {
    let entries = match value {
        // Missing, null and [] all mean a single-VM lab (backward compatibility).
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(invalid(format!(
                "worker_nodes must be an array, got {}",
                type_name(other)
            )))
        }
    };
    if entries.len() > max_workers {
        return Err(invalid(format!(
            "worker_nodes has {} entries; at most {max_workers} are allowed",
            entries.len()
        )));
    }
    let mut ids: Vec<String> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("worker_nodes[{i}].worker_lab_request_id");
        let Value::Object(node) = entry else {
            return Err(invalid(format!(
                "worker_nodes[{i}] must be an object with worker_lab_request_id, got {}",
                type_name(entry)
            )));
        };
        no_near_misses(node, WORKER_FIELDS, &format!("worker_nodes[{i}]."))?;
        let id = required_id(node, "worker_lab_request_id")
            .map_err(|e| invalid(e.to_string().replacen("worker_lab_request_id", &field, 1)))?;
        if id == master {
            return Err(invalid(format!(
                "{field} must differ from lab_request_id (the master VM)"
            )));
        }
        if let Some(j) = ids.iter().position(|seen| *seen == id) {
            return Err(invalid(format!(
                "{field} repeats worker_nodes[{j}].worker_lab_request_id"
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_duration_minutes: 10_080,
        max_worker_nodes: 48,
    };

    fn parse(v: Value) -> Result<NewSession, ApiError> {
        parse_new_session(v.to_string().as_bytes(), LIMITS)
    }

    fn message(v: Value) -> String {
        match parse(v) {
            Err(ApiError::InvalidRequest(m)) => m,
            other => panic!("expected invalid_request, got {other:?}"),
        }
    }

    fn base() -> Value {
        json!({"lab_request_id": "lab-1", "user_id": "user-1", "duration": 60})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    #[test]
    fn a_near_miss_of_a_known_field_is_refused_other_fields_are_not() {
        for (key, like) in [
            ("idle_timeot", "idle_timeout"),
            ("idleTimeout", "idle_timeout"),
            ("worker_node", "worker_nodes"),
            ("durration", "duration"),
            ("Lab-Request-Id", "lab_request_id"),
            ("userid", "user_id"),
            ("lables", "labels"),
        ] {
            assert_eq!(
                message(with(key, json!(5))),
                format!("{key:?} is not a field; did you mean {like}?"),
                "{key}"
            );
        }
        // The frontend's own fields go through.
        for key in [
            "course_id",
            "template",
            "lab_name",
            "region",
            "vm_size",
            "x",
        ] {
            assert!(parse(with(key, json!("anything"))).is_ok(), "{key}");
        }
        let mut v = base();
        v["worker_nodes"] = json!([{"worker_lab_request_id": "w1"}, {"worker_lab_request_ids": "w2", "worker_lab_request_id": "w3"}]);
        assert_eq!(
            message(v),
            "worker_nodes[1].\"worker_lab_request_ids\" is not a field; did you mean worker_nodes[1].worker_lab_request_id?"
        );
        assert_eq!(
            message(with("vm", json!({"nmae": "x", "Name": "y"}))),
            "vm.\"Name\" is not a field; did you mean vm.name?"
        );
        // A key from outside is quoted, escaped and shortened in the message.
        let long = format!("{}\n", "z".repeat(500));
        assert!(parse(with(&long, json!(1))).is_ok());
    }

    #[test]
    fn operator_bodies_refuse_every_unknown_field() {
        let refused = |result: Result<(), ApiError>| match result {
            Err(ApiError::InvalidRequest(m)) => m,
            other => panic!("expected invalid_request, got {other:?}"),
        };
        assert_eq!(
            refused(parse_extend(br#"{"minutes": 5, "minuts": 6}"#, 100).map(|_| ())),
            "unknown field \"minuts\"; did you mean minutes?"
        );
        assert_eq!(
            refused(parse_inventory(br#"{"vms": [], "acts": true}"#).map(|_| ())),
            "unknown field \"acts\"; did you mean act?"
        );
        assert_eq!(
            refused(parse_inventory(br#"{"vms": [], "force": true}"#).map(|_| ())),
            "unknown field \"force\"; the fields are vms, act"
        );
        assert_eq!(
            refused(
                parse_inventory(
                    br#"{"vms": [{"lab_request_id": "a", "user_id": "u", "createdAt": "2026-01-01T00:00:00Z"}]}"#
                )
                .map(|_| ())
            ),
            "vms[0].\"createdAt\" is not a field; did you mean vms[0].created_at?"
        );
        assert!(parse_inventory(
            br#"{"vms": [{"lab_request_id": "a", "user_id": "u", "ip": "10.0.0.1"}]}"#
        )
        .is_ok());
        assert_eq!(
            refused(parse_empty(br#"{"now": true}"#)),
            "unknown field \"now\"; this request takes no fields"
        );
        assert!(parse_empty(b"").is_ok() && parse_empty(b" {} ").is_ok());
        assert!(parse_empty(b"[]").is_err());
    }

    #[test]
    fn multi_node_example_is_parsed() {
        let s = parse(json!({
            "lab_request_id": "k8s-master-abc-123",
            "user_id": "user-456",
            "duration": 60,
            "vm": {"name": "k8s-master-1", "image": "ignored"},
            "worker_nodes": [
                {"worker_lab_request_id": "k8s-worker-1-def-456"},
                {"worker_lab_request_id": "k8s-worker-2-ghi-789", "extra": true}
            ],
            "unknown_field": 1
        }))
        .unwrap();
        assert_eq!(
            s,
            NewSession {
                lab_request_id: "k8s-master-abc-123".into(),
                user_id: "user-456".into(),
                worker_lab_request_ids: vec![
                    "k8s-worker-1-def-456".into(),
                    "k8s-worker-2-ghi-789".into()
                ],
                duration: 60,
                vm_name: Some("k8s-master-1".into()),
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            }
        );
    }

    #[test]
    fn missing_null_and_empty_worker_nodes_mean_single_vm() {
        for v in [
            base(),
            with("worker_nodes", Value::Null),
            with("worker_nodes", json!([])),
        ] {
            let s = parse(v).unwrap();
            assert!(s.worker_lab_request_ids.is_empty());
            assert_eq!(s.vm_name, None);
        }
    }

    #[test]
    fn malformed_json_and_non_objects_are_rejected() {
        for body in ["", "{", "nul", "[1]", "\"x\"", "42"] {
            let e = parse_new_session(body.as_bytes(), LIMITS).unwrap_err();
            assert_eq!(e.code(), "invalid_request", "{body}");
        }
    }

    #[test]
    fn required_fields_name_themselves() {
        for field in ["lab_request_id", "user_id", "duration"] {
            let mut v = base();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(message(v), format!("{field} is required"));
        }
        assert_eq!(message(with("user_id", Value::Null)), "user_id is required");
    }

    #[test]
    fn wrong_types_are_rejected() {
        assert_eq!(
            message(with("lab_request_id", json!(12))),
            "lab_request_id must be a string, got a number"
        );
        assert_eq!(
            message(with("duration", json!("60"))),
            "duration must be a whole number of minutes, got a string"
        );
        assert!(message(with("duration", json!(true))).contains("got a boolean"));
        assert_eq!(
            message(with("vm", json!("k8s"))),
            "vm must be an object, got a string"
        );
        assert_eq!(
            message(with("vm", json!({"name": 3}))),
            "vm.name must be a string, got a number"
        );
        assert_eq!(
            message(with("worker_nodes", json!({}))),
            "worker_nodes must be an array, got an object"
        );
        assert!(message(with("worker_nodes", json!(["w1"])))
            .starts_with("worker_nodes[0] must be an object"));
    }

    #[test]
    fn labels_are_bounded_and_plain() {
        let ok = parse(with(
            "labels",
            json!({"class": "cka-2026-11-30", "course": "cka"}),
        ))
        .unwrap();
        assert_eq!(ok.labels["class"], "cka-2026-11-30");
        assert!(parse(with("labels", json!(null)))
            .unwrap()
            .labels
            .is_empty());
        assert!(message(with("labels", json!([]))).contains("must be an object"));
        assert!(message(with("labels", json!({"Class": "x"}))).contains("a-z 0-9"));
        assert!(message(with("labels", json!({"a:b": "x"}))).contains("a-z 0-9"));
        assert!(message(with("labels", json!({"k".repeat(64): "x"}))).contains("1 to 63"));
        assert!(message(with("labels", json!({"": "x"}))).contains("1 to 63"));
        assert!(message(with("labels", json!({"k": ""}))).contains("1 to 128"));
        assert!(message(with("labels", json!({"k": "v".repeat(129)}))).contains("1 to 128"));
        assert!(message(with("labels", json!({"k": "a\u{202e}b"}))).contains("printable"));
        assert!(message(with("labels", json!({"k": 5}))).contains("must be a string"));
        let eleven: serde_json::Map<String, Value> =
            (0..11).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(message(with("labels", Value::Object(eleven))).contains("at most 10"));
        // Unicode values within the rule are fine.
        assert_eq!(
            parse(with("labels", json!({"room": "Zürich 😀"})))
                .unwrap()
                .labels["room"],
            "Zürich 😀"
        );
    }

    #[test]
    fn an_idle_timeout_is_a_duration_and_optional() {
        assert_eq!(
            parse(with("idle_timeout", json!(15))).unwrap().idle_timeout,
            Some(15)
        );
        assert_eq!(
            parse(with("idle_timeout", json!(null)))
                .unwrap()
                .idle_timeout,
            None
        );
        assert_eq!(
            message(with("idle_timeout", json!(0))),
            "idle_timeout must be at least 1 minute"
        );
        assert!(message(with("idle_timeout", json!("15"))).contains("got a string"));
        assert!(message(with("idle_timeout", json!(10_081))).contains("at most 10080"));
    }

    #[test]
    fn durations_must_be_whole_positive_and_capped() {
        assert_eq!(
            message(with("duration", json!(0))),
            "duration must be at least 1 minute"
        );
        assert_eq!(
            message(with("duration", json!(-5))),
            "duration must be at least 1 minute"
        );
        assert_eq!(
            message(with("duration", json!(1.5))),
            "duration must be a whole number of minutes, got 1.5"
        );
        assert!(message(with("duration", json!(60.0))).contains("whole number"));
        assert!(message(with("duration", json!(1e300))).contains("whole number"));
        assert_eq!(
            message(with("duration", json!(10_081))),
            "duration must be at most 10080 minutes"
        );
        assert_eq!(
            message(with("duration", json!(u64::MAX))),
            "duration must be at most 10080 minutes"
        );
        assert_eq!(parse(with("duration", json!(1))).unwrap().duration, 1);
        assert_eq!(
            parse(with("duration", json!(10_080))).unwrap().duration,
            10_080
        );
    }

    #[test]
    fn ids_must_be_non_empty_short_and_plain() {
        assert_eq!(
            message(with("lab_request_id", json!(""))),
            "lab_request_id must not be empty"
        );
        assert!(message(with("user_id", json!(" "))).contains("U+0020"));
        assert!(message(with("user_id", json!("a/b"))).contains("'/'"));
        assert!(message(with("user_id", json!("a\u{0}b"))).contains("U+0000"));
        assert!(message(with("user_id", json!("\u{202e}abc"))).contains("U+202E"));
        assert!(message(with("lab_request_id", json!("x".repeat(129)))).contains("at most 128"));
        assert!(parse(with("lab_request_id", json!("x".repeat(128)))).is_ok());
        assert!(parse(with("user_id", json!("user@example.com+tag:1_a.b-c"))).is_ok());
    }

    #[test]
    fn worker_entries_need_distinct_valid_ids() {
        assert_eq!(
            message(with(
                "worker_nodes",
                json!([{"worker_lab_request_id": "w1"}, {}])
            )),
            "worker_nodes[1].worker_lab_request_id is required"
        );
        assert_eq!(
            message(with("worker_nodes", json!([{"worker_lab_request_id": ""}]))),
            "worker_nodes[0].worker_lab_request_id must not be empty"
        );
        assert_eq!(
            message(with("worker_nodes", json!([{"worker_lab_request_id": 7}]))),
            "worker_nodes[0].worker_lab_request_id must be a string, got a number"
        );
        assert_eq!(
            message(with(
                "worker_nodes",
                json!([{"worker_lab_request_id": "w1"}, {"worker_lab_request_id": "w1"}])
            )),
            "worker_nodes[1].worker_lab_request_id repeats worker_nodes[0].worker_lab_request_id"
        );
        assert_eq!(
            message(with(
                "worker_nodes",
                json!([{"worker_lab_request_id": "lab-1"}])
            )),
            "worker_nodes[0].worker_lab_request_id must differ from lab_request_id (the master VM)"
        );
    }

    #[test]
    fn worker_count_is_capped() {
        let nodes = |n: usize| {
            Value::Array(
                (0..n)
                    .map(|i| json!({"worker_lab_request_id": format!("w{i}")}))
                    .collect(),
            )
        };
        assert_eq!(
            parse(with("worker_nodes", nodes(48)))
                .unwrap()
                .worker_lab_request_ids
                .len(),
            48
        );
        assert_eq!(
            message(with("worker_nodes", nodes(49))),
            "worker_nodes has 49 entries; at most 48 are allowed"
        );
    }

    #[test]
    fn extend_bodies() {
        assert_eq!(parse_extend(br#"{"minutes": 30}"#, 100), Ok(30));
        for (body, message) in [
            (&br#"{}"#[..], "minutes is required"),
            (br#"{"minutes": 0}"#, "minutes must be at least 1 minute"),
            (
                br#"{"minutes": 2.5}"#,
                "minutes must be a whole number of minutes, got 2.5",
            ),
            (
                br#"{"minutes": "5"}"#,
                "minutes must be a whole number of minutes, got a string",
            ),
            (
                br#"{"minutes": 101}"#,
                "minutes must be at most 100 minutes",
            ),
            (br#"[5]"#, "request body must be a JSON object"),
        ] {
            assert_eq!(parse_extend(body, 100), Err(invalid(message)));
        }
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert_eq!(check_content_type(Some(ok)), Ok(()), "{ok}");
        }
        // What a browser's fetch sends for a string body, and no Content-Type at all: read as
        // JSON, as the TypeScript worker did.
        for ok in [
            None,
            Some(""),
            Some("text/plain;charset=UTF-8"),
            Some("TEXT/PLAIN"),
        ] {
            assert_eq!(check_content_type(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            Some("application/jsonx"),
            Some("json"),
            Some("text/html"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
        ] {
            assert_eq!(
                check_content_type(bad).unwrap_err().status(),
                415,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_repeated_key_anywhere_is_refused_naming_it() {
        for (body, key) in [
            (
                r#"{"lab_request_id":"a","user_id":"u","duration":5,"user_id":"v"}"#,
                "\"user_id\"",
            ),
            (
                r#"{"lab_request_id":"a","user_id":"u","duration":5,"vm":{"name":"x","name":"y"}}"#,
                "\"name\"",
            ),
            (
                r#"{"lab_request_id":"a","user_id":"u","duration":5,"worker_nodes":[{"worker_lab_request_id":"w","worker_lab_request_id":"a"}]}"#,
                "\"worker_lab_request_id\"",
            ),
            (
                r#"{"extra":{"x":1,"x":1},"lab_request_id":"a","user_id":"u","duration":5}"#,
                "\"x\"",
            ),
        ] {
            let e = parse_new_session(body.as_bytes(), LIMITS).unwrap_err();
            assert_eq!(e.code(), "invalid_request");
            let m = e.to_string();
            assert!(
                m.starts_with(&format!("request body repeats the key {key}")),
                "{m}"
            );
        }
        assert!(parse_extend(br#"{"minutes":5,"minutes":500}"#, 100)
            .unwrap_err()
            .to_string()
            .contains("repeats the key \"minutes\""));
        // The same key in two different objects is fine.
        assert!(parse_new_session(
            br#"{"lab_request_id":"a","user_id":"u","duration":5,"vm":{"lab_request_id":"b"}}"#,
            LIMITS
        )
        .is_ok());
    }

    #[test]
    fn strict_parse_keeps_every_value_kind() {
        let obj = json_object(br#"{"a":[1,-2,3.5,"s",true,null,{"b":{}}]}"#).unwrap();
        assert_eq!(
            Value::Object(obj),
            json!({"a": [1, -2, 3.5, "s", true, null, {"b": {}}]})
        );
    }

    #[test]
    fn body_size_limit() {
        assert!(check_body_size(MAX_BODY_BYTES, MAX_BODY_BYTES).is_ok());
        assert_eq!(
            check_body_size(MAX_BODY_BYTES + 1, MAX_BODY_BYTES)
                .unwrap_err()
                .status(),
            413
        );
    }

    #[test]
    fn a_body_is_read_up_to_the_limit_and_no_further() {
        use futures::executor::block_on;
        use futures::stream::{self, StreamExt};
        let chunk = |n: usize| Ok::<_, String>(vec![b'x'; n]);
        let read = block_on(read_bounded(
            stream::iter(vec![chunk(10), chunk(20)]),
            MAX_BODY_BYTES,
        ))
        .unwrap();
        assert_eq!(read.len(), 30);
        let exact = block_on(read_bounded(
            stream::iter(vec![chunk(MAX_BODY_BYTES)]),
            MAX_BODY_BYTES,
        ));
        assert_eq!(exact.unwrap().len(), MAX_BODY_BYTES);
        // An endless body (no Content-Length): the reading stops at the first byte too many.
        let pulled = std::cell::Cell::new(0);
        let endless = stream::repeat(()).map(|()| {
            pulled.set(pulled.get() + 1);
            chunk(1_000)
        });
        let e = block_on(read_bounded(endless, MAX_BODY_BYTES)).unwrap_err();
        assert_eq!(e.status(), 413);
        assert_eq!(pulled.get(), MAX_BODY_BYTES / 1_000 + 1);
        let broken = stream::iter(vec![chunk(5), Err("connection reset".to_string())]);
        let e = block_on(read_bounded(broken, MAX_BODY_BYTES)).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("connection reset"));
    }

    #[test]
    fn vm_name_is_optional_and_bounded() {
        assert_eq!(parse(with("vm", json!({}))).unwrap().vm_name, None);
        assert_eq!(parse(with("vm", Value::Null)).unwrap().vm_name, None);
        assert!(message(with("vm", json!({"name": "x".repeat(257)}))).contains("at most 256"));
        assert!(message(with("vm", json!({"name": "a\nb"}))).contains("control"));
    }
}
