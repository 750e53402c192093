//! The fleet index's pure part: a lab's row, whether the index is behind the record, and every SQL statement the D1 adapter runs (upsert, delete, list, stats).
//!
//! The object is the source of truth; the index (a D1 table, `migrations/`) is a copy for listing
//! the fleet. Every change of the record bumps its `revision`; the row carries the revision it
//! was written from, so an older write never overwrites a newer row. Until the index confirms
//! the current revision, the row is owed: the object's alarm comes back for it within
//! `CLEANUP_RETRY_SECONDS` at the latest (see `lab::wake`). The platform side
//! (`platform::fleet_db`) only runs the statements built here.

use serde::{Deserialize, Serialize};

use crate::lab::fleet::report::{Reconciliation, VmState};
use crate::lab::session::{EndReason, Labels, Origin, Session};
use crate::lab::status::{in_cleanup_sql, stuck_sql, Status};
use crate::lab::text;

/// Marks a change of the record: a new revision, and the row owed, at the latest by
/// `now_ms + retry_ms`. Revisions grow with time (microseconds of the clock, at least one more
/// than the last), so a lab forgotten and created again still gets revisions above its old row.
pub fn touch(session: &mut Session, now_ms: i64, retry_ms: i64) {
    let sync = &mut session.sync;
    let by_clock = (now_ms.max(0) as u64).saturating_mul(1000);
    sync.revision = sync.revision.saturating_add(1).max(by_clock);
    sync.index.retry_at_ms = Some(now_ms.saturating_add(retry_ms));
}

/// `touch` for a change a request saves and writes the row of right after its answer: the row
/// gets no wake-up of its own while the lab is live (a save writes the alarm once, not again
/// when the row is confirmed). Only an object evicted between the save and the row's write
/// leaves it owed: the lab's next wake-up writes it (its warning or expiry at the latest); a
/// completed lab, whose next wake-up may be its purge, keeps the retry.
pub fn answered(session: &mut Session, now_ms: i64, retry_ms: i64) {
    touch(session, now_ms, retry_ms);
    if session.status() != Status::Completed {
        session.sync.index.retry_at_ms = None;
    }
}

/// Whether the index is behind the record.
pub fn owed(session: &Session) -> bool {
    session.sync.index.written < session.sync.revision
}

/// Records that the index confirmed `revision`; nothing more is owed once it is the current one.
pub fn confirmed(session: &mut Session, revision: u64) {
    let sync = &mut session.sync;
    sync.index.written = sync.index.written.max(revision);
    if sync.index.written >= sync.revision {
        sync.index.retry_at_ms = None;
    }
}

/// Records a failed row write: try again at `now_ms + retry_ms`.
pub fn write_failed(session: &mut Session, now_ms: i64, retry_ms: i64) {
    session.sync.index.retry_at_ms = Some(now_ms.saturating_add(retry_ms));
}

/// The lab's row, as the index stores it (times in epoch milliseconds), and as the list query
/// reads it back (`lab::rows::read`, failing closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRow {
    pub lab_request_id: String,
    pub user_id: String,
    pub lab_type: String,
    pub vm_count: u32,
    pub status: Status,
    pub created_at: i64,
    pub expires_at: i64,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub pending_count: u32,
    pub already_gone_count: u32,
    /// The first error of the last attempt, escaped and short.
    pub last_error: Option<String>,
    pub completed_at: Option<i64>,
    pub updated_at: i64,
    pub revision: u64,
    pub origin: Origin,
    /// Why the lab ended (`None` while scheduled).
    pub end_reason: Option<EndReason>,
    /// The lab's labels: written to `labels` (its own table), read back as one JSON object
    /// (the text `json_group_object` made; `NULL` without labels).
    #[serde(deserialize_with = "crate::lab::rows::json_text", default)]
    pub labels: Labels,
    /// For a lab of several VMs, how far each VM's deletion got, as a JSON object of the VMs
    /// deleted or already gone (`{"w1":"deleted"}`; a VM not in it is pending): the inventory's
    /// lookup reads a VM's state here rather than from a row of its own in `vms`, which each
    /// attempt wrote again (`migrations/0015_vm_states_in_the_lab_row.sql`). `None` for a
    /// single-VM lab (its counts say it). Not in the API's answers.
    #[serde(skip)]
    pub vms_done: Option<String>,
    /// No row of the lab confirmed written yet: its VMs' rows may still name another lab (see
    /// `upsert_all`). Not a column.
    #[serde(skip)]
    pub first: bool,
}

/// A worker VM's row in `vms`: which lab lists it (written once, at the lab's first row; its
/// state is in the lab's row: `IndexRow::vms_done`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub vm_id: String,
}

/// Longest `last_error` in a row.
pub const MAX_LAST_ERROR: usize = 160;

/// The row of `session` as of `now_ms`.
pub fn row(session: &Session, now_ms: i64) -> IndexRow {
    let c = &session.cleanup;
    IndexRow {
        lab_request_id: session.lab_request_id.clone(),
        user_id: session.user_id.clone(),
        lab_type: session.lab_type().name().into(),
        vm_count: session.vm_count() as u32,
        status: c.status,
        created_at: session.created_at_ms,
        expires_at: session.expires_at_ms,
        attempts: c.attempts,
        // A stopped lab's next step is its deletion at `delete_at` (the sweep reads this).
        next_attempt_at: session.stopped_until().or(c.next_attempt_at_ms),
        pending_count: session.pending().len() as u32,
        already_gone_count: c.already_gone.len() as u32,
        last_error: last_error(session),
        completed_at: c.completed_at_ms,
        updated_at: now_ms,
        revision: session.sync.revision,
        origin: session.origin(),
        end_reason: session.end_reason,
        labels: session.labels.clone(),
        vms_done: vms_done(session),
        first: session.sync.index.written == 0,
    }
}

/// D1's largest row (and string): 2,000,000 bytes
/// (<https://developers.cloudflare.com/d1/platform/limits/>). A lab's row stays far below it,
/// its VMs' states at most about 7 KB (`MAX_WORKERS` + 1 ids of `MAX_ID_LEN` characters).
pub const D1_MAX_ROW_BYTES: usize = 2_000_000;

/// `IndexRow::vms_done`: the VMs of a lab of several VMs that are deleted or already gone, each
/// with its state, in the order of the lab's VMs; `None` for a single-VM lab.
fn vms_done(session: &Session) -> Option<String> {
    if session.vm_count() == 1 {
        return None;
    }
    let mut done = String::from("{");
    for vm in session.vms() {
        if !session.is_done(vm.id) {
            continue;
        }
        let state = if session.cleanup.deleted.iter().any(|d| d == vm.id) {
            VmState::Deleted
        } else {
            VmState::AlreadyGone
        };
        if done.len() > 1 {
            done.push(',');
        }
        done.push_str(&serde_json::to_string(vm.id).unwrap_or_default());
        done.push_str(":\"");
        done.push_str(state.name());
        done.push('"');
    }
    done.push('}');
    Some(done)
}

/// The rows of `session`'s worker VMs in `vms`, which find a worker's lab by the worker's id.
/// None for the master, whose id is its lab's (`lookup` finds it in `sessions`, as a
/// single-VM lab's VM), and no state: the lab's row holds them all (`IndexRow::vms_done`).
pub fn vm_rows(session: &Session) -> Vec<VmRow> {
    session
        .worker_lab_request_ids
        .iter()
        .map(|id| VmRow { vm_id: id.clone() })
        .collect()
}

/// The first error of the last attempt, on one line, its control and format characters escaped
/// (it came from the backend), and at most `MAX_LAST_ERROR` characters.
pub fn last_error(session: &Session) -> Option<String> {
    let outcome = session.cleanup.last_outcome.as_ref()?;
    let first = outcome.errors.first()?;
    Some(text::safe(
        &format!("{}: {}", first.lab_request_id, first.error),
        MAX_LAST_ERROR,
    ))
}

/// The index table and its columns, in the order of `migrations/` (0001's table, then the
/// columns later migrations add).
pub const TABLE: &str = "sessions";
pub const COLUMNS: [&str; 18] = [
    "lab_request_id",
    "user_id",
    "lab_type",
    "vm_count",
    "status",
    "created_at",
    "expires_at",
    "attempts",
    "next_attempt_at",
    "pending_count",
    "already_gone_count",
    "last_error",
    "completed_at",
    "updated_at",
    "revision",
    "origin",
    "end_reason",
    "vms_done",
];

/// D1 binds at most 100 parameters per statement.
pub const MAX_BINDS: usize = 100;

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
    Null,
}

fn int(n: impl TryInto<i64>) -> Bind {
    // Exact in D1: times in milliseconds and revisions stay below 2^53.
    Bind::Int(n.try_into().unwrap_or(i64::MAX))
}

fn optional(n: Option<i64>) -> Bind {
    n.map_or(Bind::Null, Bind::Int)
}

/// The statements that write a lab's rows in one batch: its row in `sessions`, unless the index
/// holds a newer revision, and at the lab's first row its labels and its worker VMs' rows in
/// `vms` (neither changes later: a VM's state is in the lab's row).
pub fn upsert_all(row: &IndexRow, vms: &[VmRow]) -> Vec<(String, Vec<Bind>)> {
    let mut statements = Vec::from(upsert(row));
    if !row.first {
        return statements;
    }
    // An existing label is left as it is, and costs no write.
    if !row.labels.is_empty() {
        let marks = vec!["(?, ?, ?)"; row.labels.len()].join(", ");
        let binds = row
            .labels
            .iter()
            .flat_map(|(k, v)| {
                [
                    Bind::Text(row.lab_request_id.clone()),
                    Bind::Text(k.clone()),
                    Bind::Text(v.clone()),
                ]
            })
            .collect();
        statements.push((
            format!(
                "INSERT OR IGNORE INTO {LABELS_TABLE} (lab_request_id, key, value) VALUES {marks}"
            ),
            binds,
        ));
    }
    if !vms.is_empty() {
        let ids: Vec<String> = vms.iter().map(|vm| vm.vm_id.clone()).collect();
        let binds = vec![
            Bind::Text(row.lab_request_id.clone()),
            id_set(&ids),
            int(row.revision),
        ];
        // A VM whose row names another lab (one in retention that listed a VM of the same id)
        // moves to this one, unless that row is newer; then the rows this lab lacks. Each id
        // set bound once: one statement each, whatever the lab's size.
        statements.push((
            "UPDATE vms SET lab_request_id = ?1 WHERE vm_id IN (SELECT value FROM json_each(?2)) AND lab_request_id != ?1 AND revision < ?3".into(),
            binds.clone(),
        ));
        statements.push((
            "INSERT INTO vms (vm_id, lab_request_id, state, revision) SELECT value, ?1, 'pending', ?3 FROM json_each(?2) WHERE 1 ON CONFLICT (vm_id) DO NOTHING".into(),
            binds,
        ));
    }
    statements
}

/// The upsert of a lab's row, unless the index holds a newer revision of it. Every index that
/// holds a column an update sets is written again, changed or not (a D1 row written each), and
/// nearly all of them hold `expires_at`: it sets only what an attempt changes, and `UPSERT_FIXED`
/// the columns a row keeps from its create on where they differ (an extend moves the expiry).
/// Literals (checked against `COLUMNS` by the tests): no code builds them.
const UPSERT: &str = "INSERT INTO sessions (lab_request_id, user_id, lab_type, vm_count, status, created_at, expires_at, attempts, next_attempt_at, pending_count, already_gone_count, last_error, completed_at, updated_at, revision, origin, end_reason, vms_done) \
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18) ON CONFLICT (lab_request_id) DO UPDATE SET \
status = excluded.status, attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, pending_count = excluded.pending_count, already_gone_count = excluded.already_gone_count, last_error = excluded.last_error, completed_at = excluded.completed_at, updated_at = excluded.updated_at, revision = excluded.revision, end_reason = excluded.end_reason, vms_done = excluded.vms_done \
WHERE excluded.revision > sessions.revision";

/// After `UPSERT`, with its first 16 binds: the columns it leaves alone, where they differ.
const UPSERT_FIXED: &str = "UPDATE sessions SET user_id = ?2, lab_type = ?3, vm_count = ?4, created_at = ?6, expires_at = ?7, origin = ?16 \
WHERE lab_request_id = ?1 AND revision = ?15 \
AND (user_id, lab_type, vm_count, created_at, expires_at, origin) IS NOT (?2, ?3, ?4, ?6, ?7, ?16)";

/// The two statements that write `row` (`UPSERT`, then `UPSERT_FIXED`).
pub fn upsert(row: &IndexRow) -> [(String, Vec<Bind>); 2] {
    let binds = vec![
        Bind::Text(row.lab_request_id.clone()),
        Bind::Text(row.user_id.clone()),
        Bind::Text(row.lab_type.clone()),
        int(row.vm_count),
        Bind::Text(row.status.name().into()),
        int(row.created_at),
        int(row.expires_at),
        int(row.attempts),
        optional(row.next_attempt_at),
        int(row.pending_count),
        int(row.already_gone_count),
        row.last_error.clone().map_or(Bind::Null, Bind::Text),
        optional(row.completed_at),
        int(row.updated_at),
        int(row.revision),
        Bind::Text(row.origin.name().into()),
        row.end_reason
            .map_or(Bind::Null, |r| Bind::Text(r.name().into())),
        row.vms_done.clone().map_or(Bind::Null, Bind::Text),
    ];
    let fixed = binds[..16].to_vec();
    [(UPSERT.into(), binds), (UPSERT_FIXED.into(), fixed)]
}

/// The deletes of a lab's rows (its row and its VMs', `vm_ids`), unless the index holds a
/// revision newer than `revision` (a lab created again under the same id after this one was
/// forgotten). The VMs' rows are found by their ids, not through an index of the lab's (which
/// every VM's row would write: `migrations/0014_vms_by_id_only.sql`).
pub fn delete(lab_request_id: &str, vm_ids: &[&str], revision: u64) -> Vec<(String, Vec<Bind>)> {
    let binds = vec![Bind::Text(lab_request_id.into()), int(revision)];
    // Each id bound on its own (a lab has at most `MAX_WORKERS` + 1 VMs, within `MAX_BINDS`):
    // SQLite seeks each, and reads no row of a `json_each` (D1 counts those as rows read).
    let ids = &vm_ids[..vm_ids.len().min(MAX_BINDS - 2)];
    // Unnumbered, after `?2`: SQLite numbers them `?3`, `?4`, ...
    let marks = vec!["?"; ids.len()];
    let mut vm_binds = binds.clone();
    vm_binds.extend(ids.iter().map(|id| Bind::Text((*id).into())));
    vec![
        (
            format!("DELETE FROM {TABLE} WHERE lab_request_id = ?1 AND revision <= ?2"),
            binds.clone(),
        ),
        (
            format!(
                "DELETE FROM vms WHERE lab_request_id = ?1 AND revision <= ?2 AND vm_id IN ({})",
                marks.join(", ")
            ),
            vm_binds,
        ),
        // Only when the lab's row went (no newer lab of the same id holds it).
        (
            format!("DELETE FROM {LABELS_TABLE} WHERE lab_request_id = ?1 AND NOT EXISTS (SELECT 1 FROM {TABLE} WHERE lab_request_id = ?1 AND revision > ?2)"),
            binds,
        ),
    ]
}

/// The labels' table (`migrations/0005_labels.sql`).
pub const LABELS_TABLE: &str = "labels";

/// The lookups of reported VMs: their lab, its status and expiry, how far their deletion got.
/// A worker VM's lab is found through `vms`; a master (and a single-VM lab's VM) is its lab,
/// its id the lab's: every VM whose id is a lab's is known while the lab's row is there. The
/// state is in the lab's row: a single-VM lab's from its counts, a VM of a lab of several VMs
/// from `vms_done` (pending unless it is there). A row an older version wrote without
/// `vms_done` reads its VMs' states from `vms`, as that version kept them (pending without
/// one). One statement, the ids bound once (`id_set`); a VM two labs list answers twice (the
/// inventory keeps the lab that needs it).
pub fn lookup(vm_ids: &[String]) -> Vec<(String, Vec<Bind>)> {
    if vm_ids.is_empty() {
        return Vec::new();
    }
    vec![(
        format!("{LOOKUP_IDS} SELECT v.vm_id AS vm_id, v.lab_request_id AS lab_request_id, {LOOKUP_WORKER_STATE} AS state, {LOOKUP_LAB} FROM vms v JOIN {TABLE} s ON s.lab_request_id = v.lab_request_id WHERE v.vm_id IN (SELECT id FROM ids) AND v.vm_id != v.lab_request_id AND s.vm_count != 1 \
UNION ALL SELECT s.lab_request_id AS vm_id, s.lab_request_id AS lab_request_id, {LOOKUP_OWN_STATE} AS state, {LOOKUP_LAB} FROM {TABLE} s WHERE s.lab_request_id IN (SELECT id FROM ids)"),
        vec![id_set(vm_ids)],
    )]
}

const LOOKUP_IDS: &str = "WITH ids(id) AS (SELECT value FROM json_each(?))";
const LOOKUP_LAB: &str =
    "s.status AS status, s.expires_at AS expires_at, COALESCE(s.completed_at, s.updated_at) AS updated_at";
/// A worker's state: `vms_done`'s, or the row's own where the lab's row has no `vms_done`.
const LOOKUP_WORKER_STATE: &str = "CASE WHEN s.vms_done IS NULL THEN v.state ELSE COALESCE((SELECT d.value FROM json_each(s.vms_done) d WHERE d.key = v.vm_id), 'pending') END";
/// A lab's own VM's state: a master's from `vms_done` (or its row in `vms` where the lab's row
/// has none), a single VM's from the counts.
const LOOKUP_OWN_STATE: &str = "CASE WHEN s.vm_count != 1 THEN COALESCE((SELECT d.value FROM json_each(s.vms_done) d WHERE d.key = s.lab_request_id), (SELECT m.state FROM vms m WHERE s.vms_done IS NULL AND m.vm_id = s.lab_request_id AND m.lab_request_id = s.lab_request_id), 'pending') WHEN s.pending_count > 0 THEN 'pending' WHEN s.already_gone_count > 0 THEN 'already_gone' ELSE 'deleted' END";

/// A set of ids bound once, as a JSON array that `json_each(?)` reads.
fn id_set(ids: &[String]) -> Bind {
    Bind::Text(serde_json::to_string(ids).unwrap_or_else(|_| "[]".into()))
}

/// `select` followed by a set of `ids`, in one statement whatever their number: the ids are
/// bound once, as a JSON array that `json_each` reads (a D1 query per statement is what an
/// invocation is limited to: 50 on the Free plan; a set of 1,000 ids in chunks of `MAX_BINDS`
/// was 10 of them). `None` without ids.
fn in_set(select: &str, ids: &[String]) -> Vec<(String, Vec<Bind>)> {
    if ids.is_empty() {
        return Vec::new();
    }
    vec![(
        format!("{select} (SELECT value FROM json_each(?))"),
        vec![id_set(ids)],
    )]
}

/// When these VMs were first reported.
pub fn first_seen(vm_ids: &[String]) -> Vec<(String, Vec<Bind>)> {
    in_set(
        "SELECT vm_id, first_seen_at FROM inventory_seen WHERE vm_id IN",
        vm_ids,
    )
}

/// How long a first sighting is remembered (a VM reported again after that starts anew).
pub const SEEN_KEPT_MS: i64 = 7 * 86_400_000;
/// Most first sightings remembered: past this, new unknown VMs wait for room (the oldest
/// sightings are the ones closest to confirmation; they are kept).
pub const MAX_SEEN_ROWS: u64 = 100_000;

/// Remembers `now_ms` as the first sighting of these VMs (those seen before keep theirs): one
/// statement, the ids bound once as a JSON array.
pub fn record_seen(vm_ids: &[String], now_ms: i64) -> Vec<(String, Vec<Bind>)> {
    if vm_ids.is_empty() {
        return Vec::new();
    }
    vec![(
        "INSERT OR IGNORE INTO inventory_seen (vm_id, first_seen_at) SELECT value, ? FROM json_each(?)".into(),
        vec![
            Bind::Int(now_ms),
            id_set(vm_ids),
        ],
    )]
}

/// Forgets sightings older than `SEEN_KEPT_MS`, then counts those left (up to `MAX_SEEN_ROWS`
/// and one: enough to know whether there is room), as `n`.
pub fn tidy_seen(now_ms: i64) -> Vec<(String, Vec<Bind>)> {
    vec![
        (
            "DELETE FROM inventory_seen WHERE first_seen_at < ?".into(),
            vec![Bind::Int(now_ms.saturating_sub(SEEN_KEPT_MS))],
        ),
        (
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM inventory_seen LIMIT ?)".into(),
            vec![Bind::Int(MAX_SEEN_ROWS as i64 + 1)],
        ),
    ]
}

/// How many reconciliations are kept.
pub const RECONCILIATIONS_KEPT: i64 = 100;

/// Records a reconciliation, keeping the last `RECONCILIATIONS_KEPT`.
pub fn save_reconciliation(r: &Reconciliation) -> Vec<(String, Vec<Bind>)> {
    let c = &r.counts;
    vec![
        (
            "INSERT INTO reconciliations (at, source, act, tracked, overdue, finished, unknown, scheduled) VALUES (?, ?, ?, ?, ?, ?, ?, ?)".into(),
            vec![
                Bind::Int(r.at_ms),
                Bind::Text(r.source.name().into()),
                Bind::Int(i64::from(r.act)),
                int(c.tracked),
                int(c.overdue),
                int(c.finished),
                int(c.unknown),
                int(c.scheduled),
            ],
        ),
        (
            "DELETE FROM reconciliations WHERE id <= (SELECT MAX(id) FROM reconciliations) - ?".into(),
            vec![Bind::Int(RECONCILIATIONS_KEPT)],
        ),
    ]
}

/// The last reconciliation, for the stats.
pub const LAST_RECONCILIATION: &str = "SELECT at, source, act, tracked, overdue, finished, unknown, scheduled FROM reconciliations ORDER BY id DESC LIMIT 1";

/// A row of `LAST_RECONCILIATION`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ReconciliationRow {
    pub at: i64,
    pub source: String,
    pub act: i64,
    pub tracked: u64,
    pub overdue: u64,
    pub finished: u64,
    pub unknown: u64,
    pub scheduled: u64,
}

/// Labs not completed whose due time (the next attempt, else the expiry) passed before
/// `before_ms`, oldest expiry first.
pub fn overdue(before_ms: i64, limit: u32) -> (String, Vec<Bind>) {
    (
        format!(
            "SELECT lab_request_id FROM {TABLE} WHERE status != '{}' AND COALESCE(next_attempt_at, expires_at) < ? ORDER BY expires_at LIMIT ?",
            Status::Completed.name()
        ),
        vec![Bind::Int(before_ms), int(limit)],
    )
}

/// The fleet jobs' state.
pub fn get_state(key: &str) -> (String, Vec<Bind>) {
    (
        "SELECT value FROM fleet_state WHERE key = ?".into(),
        vec![Bind::Text(key.into())],
    )
}

pub fn set_state(key: &str, value: Option<&str>) -> (String, Vec<Bind>) {
    match value {
        Some(value) => (
            "INSERT INTO fleet_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value".into(),
            vec![Bind::Text(key.into()), Bind::Text(value.into())],
        ),
        None => (
            "DELETE FROM fleet_state WHERE key = ?".into(),
            vec![Bind::Text(key.into())],
        ),
    }
}

/// Default and largest page size of the list.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// Where a page starts: after this (`expires_at`, `lab_request_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub expires_at: i64,
    pub lab_request_id: String,
}

impl Cursor {
    /// The opaque cursor: hex of `v1:<expires_at>:<lab_request_id>`.
    pub fn encode(&self) -> String {
        format!("v1:{}:{}", self.expires_at, self.lab_request_id)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A cursor `encode` gave out, or `None` for anything else. Byte pairs, never string
    /// slices: a cursor is anything a caller sends, multi-byte characters included (`a%C3%A9b`
    /// once split a character and panicked).
    pub fn decode(value: &str) -> Option<Cursor> {
        let hex = value.as_bytes();
        if hex.len() % 2 != 0 || hex.len() > 400 {
            return None;
        }
        let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let bytes: Vec<u8> = hex
            .chunks_exact(2)
            .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
            .collect::<Option<_>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let (expires_at, id) = text.strip_prefix("v1:")?.split_once(':')?;
        let expires_at = expires_at.parse::<i64>().ok()?;
        crate::lab::limits::id_problem(id)
            .is_none()
            .then(|| Cursor {
                expires_at,
                lab_request_id: id.to_string(),
            })
    }
}

/// A checked list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub statuses: Vec<Status>,
    pub origin: Option<Origin>,
    pub end_reason: Option<EndReason>,
    /// `label=key:value`, repeatable: every one must match.
    pub labels: Vec<(String, String)>,
    pub user_id: Option<String>,
    pub stuck: Option<bool>,
    /// Exclusive bounds on `expires_at` (epoch ms).
    pub expires_before: Option<i64>,
    pub expires_after: Option<i64>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            statuses: Vec::new(),
            origin: None,
            end_reason: None,
            labels: Vec::new(),
            user_id: None,
            stuck: None,
            expires_before: None,
            expires_after: None,
            limit: DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

/// The start of the list's statement: every column of `COLUMNS` but `vms_done`, the last, which
/// the list does not answer (a literal, checked by the tests), and the lab's labels as one JSON
/// object.
const LIST_SELECT: &str = "SELECT lab_request_id, user_id, lab_type, vm_count, status, created_at, expires_at, attempts, next_attempt_at, pending_count, already_gone_count, last_error, completed_at, updated_at, revision, origin, end_reason, \
(SELECT json_group_object(key, value) FROM labels l WHERE l.lab_request_id = sessions.lab_request_id) AS labels FROM sessions WHERE 1 = 1";

/// The list's statement: its SQL and its bound values, one row more than the page (which says
/// whether another page follows). Paging is by key (`expires_at`, then `lab_request_id`), so a
/// lab is listed once however many labs are added while paging.
pub fn list(q: &ListQuery, stuck_after: u32) -> (String, Vec<Bind>) {
    let mut sql = String::from(LIST_SELECT);
    let mut binds = Vec::new();
    // Each label: the labs that carry it, from its index (SQLite probes the sessions by key).
    for (key, value) in &q.labels {
        sql.push_str(" AND lab_request_id IN (SELECT lab_request_id FROM labels WHERE key = ? AND value = ?)");
        binds.push(Bind::Text(key.clone()));
        binds.push(Bind::Text(value.clone()));
    }
    if !q.statuses.is_empty() {
        let marks = vec!["?"; q.statuses.len()].join(", ");
        sql.push_str(&format!(" AND status IN ({marks})"));
        binds.extend(q.statuses.iter().map(|s| Bind::Text(s.name().into())));
        // Beside the values, what the partial index that holds them says, so that SQLite uses
        // it (migration 0013): the rare statuses have an index of their own; the scheduled
        // labs are among the active labs'; the completed ones are nearly every row, paged in
        // the expiry index.
        sql.push_str(status_scope(&q.statuses));
    }
    if let Some(origin) = q.origin {
        // Beside the value, what `sessions_by_origin` holds (migration 0009), so that SQLite
        // uses it: a term SQLite cannot disprove from `origin = ?` alone.
        sql.push_str(if origin == Origin::Api {
            " AND origin = ?"
        } else {
            " AND origin = ? AND origin != 'api'"
        });
        binds.push(Bind::Text(origin.name().into()));
    }
    if let Some(reason) = q.end_reason {
        sql.push_str(" AND end_reason = ?");
        binds.push(Bind::Text(reason.name().into()));
        // `sessions_by_end_reason` leaves out the labs whose time was up (migration 0013).
        if reason != EndReason::Expired {
            sql.push_str(" AND end_reason != 'expired'");
        }
    }
    if let Some(user) = &q.user_id {
        sql.push_str(" AND user_id = ?");
        binds.push(Bind::Text(user.clone()));
    }
    if let Some(stuck) = q.stuck {
        sql.push_str(&format!(" AND {}", stuck_sql(!stuck)));
        binds.push(int(stuck_after));
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
        // A row value: SQLite seeks the index to it (an OR of the two parts scans the index
        // from its start when the values are bound; docs/PERFORMANCE.md, "The fleet view").
        sql.push_str(" AND (expires_at, lab_request_id) > (?, ?)");
        binds.push(Bind::Int(c.expires_at));
        binds.push(Bind::Text(c.lab_request_id.clone()));
    }
    sql.push_str(" ORDER BY expires_at, lab_request_id LIMIT ?");
    binds.push(int(i64::from(q.limit) + 1));
    (sql, binds)
}

/// The term that lets SQLite use the partial index holding every lab in `statuses`: the one of
/// the rare statuses, or the active labs' (by expiry); none when completed labs are asked for.
fn status_scope(statuses: &[Status]) -> &'static str {
    let rare = |s: &Status| matches!(s, Status::CleaningUp | Status::Retrying | Status::Stopped);
    if statuses.iter().all(rare) {
        " AND status IN ('cleaning_up', 'retrying', 'stopped')"
    } else if !statuses.contains(&Status::Completed) {
        " AND status != 'completed'"
    } else {
        ""
    }
}

/// The counts the index keeps up to date as rows change (`migrations/0003_fleet_counts.sql`):
/// `status:<name>` per status, `move:<from>><to>` per status change (0011), and
/// `already_gone`.
pub const COUNTS_TABLE: &str = "fleet_counts";

/// The `FROM ... WHERE` of a bulk selector (`lab::fleet::bulk::Selector`) and its binds: driven
/// by the first label's index (in lab id order) when there is one, by the user's otherwise.
fn bulk_from(selector: &crate::lab::fleet::selector::Selector) -> (String, Vec<Bind>) {
    let mut binds = Vec::new();
    let mut sql = match selector.labels.first() {
        Some((key, value)) => {
            binds.push(Bind::Text(key.clone()));
            binds.push(Bind::Text(value.clone()));
            format!("FROM {LABELS_TABLE} l JOIN {TABLE} s ON s.lab_request_id = l.lab_request_id WHERE l.key = ? AND l.value = ?")
        }
        None => format!("FROM {TABLE} s WHERE 1 = 1"),
    };
    for (key, value) in selector.labels.iter().skip(1) {
        sql.push_str(&format!(
            " AND s.lab_request_id IN (SELECT lab_request_id FROM {LABELS_TABLE} WHERE key = ? AND value = ?)"
        ));
        binds.push(Bind::Text(key.clone()));
        binds.push(Bind::Text(value.clone()));
    }
    if let Some(user) = &selector.user_id {
        sql.push_str(" AND s.user_id = ?");
        binds.push(Bind::Text(user.clone()));
    }
    if !selector.statuses.is_empty() {
        let marks = vec!["?"; selector.statuses.len()].join(", ");
        sql.push_str(&format!(" AND s.status IN ({marks})"));
        binds.extend(
            selector
                .statuses
                .iter()
                .map(|s| Bind::Text(s.name().into())),
        );
    }
    (sql, binds)
}

/// Up to `limit` labs a bulk selector matches with an id after `after`, in id order (the ids
/// never change, so a job pages through them once whatever its action does to them).
pub fn bulk_page(
    selector: &crate::lab::fleet::selector::Selector,
    after: Option<&str>,
    limit: u32,
) -> (String, Vec<Bind>) {
    let (from, mut binds) = bulk_from(selector);
    // In the driving index's order: no sort of the whole class.
    let id = if selector.labels.is_empty() {
        "s.lab_request_id"
    } else {
        "l.lab_request_id"
    };
    let mut sql = format!(
        "SELECT s.lab_request_id AS lab_request_id, s.status AS status, s.created_at AS created_at, s.expires_at AS expires_at {from}"
    );
    if let Some(after) = after {
        sql.push_str(&format!(" AND {id} > ?"));
        binds.push(Bind::Text(after.into()));
    }
    sql.push_str(&format!(" ORDER BY {id} LIMIT ?"));
    binds.push(int(limit));
    (sql, binds)
}

/// How many labs a bulk selector matches.
pub fn bulk_count(selector: &crate::lab::fleet::selector::Selector) -> (String, Vec<Bind>) {
    let (from, binds) = bulk_from(selector);
    (format!("SELECT COUNT(*) AS n {from}"), binds)
}

/// The labs completed since `since_ms`, for the service levels (`lab::fleet::levels`): from the
/// covering index of `migrations/0006` alone.
pub fn completions(since_ms: i64) -> (String, Vec<Bind>) {
    (
        format!("SELECT completed_at, expires_at, vm_count, already_gone_count FROM {TABLE} WHERE completed_at IS NOT NULL AND completed_at >= ?"),
        vec![Bind::Int(since_ms)],
    )
}

/// The labs past their expiry at `now_ms` and not completed (the backlog): from the partial
/// index of the labs not completed.
pub fn backlog(now_ms: i64) -> (String, Vec<Bind>) {
    (
        format!("SELECT expires_at, pending_count FROM {TABLE} WHERE status != 'completed' AND expires_at <= ?"),
        vec![Bind::Int(now_ms)],
    )
}

/// The stats route's statements, run in one batch, none reading the whole table: the kept
/// counts (labs by status, VMs found already gone); stuck labs (a partial index of the labs not
/// completed); VMs pending and the oldest expiry among labs being cleaned up (a covering
/// index); the last reconciliation.
pub fn stats(stuck_after: u32, now_ms: i64) -> Vec<(String, Vec<Bind>)> {
    vec![
        (format!("SELECT name, n FROM {COUNTS_TABLE}"), vec![]),
        (
            format!("SELECT COUNT(*) AS n FROM {TABLE} WHERE {}", stuck_sql(false)),
            vec![int(stuck_after)],
        ),
        (
            // The VMs being cleaned up and the oldest such lab's expiry; the same of the labs
            // stopped (the grace stage), in the one pass over the status index.
            format!(
                "SELECT SUM(CASE WHEN status = '{stopped}' THEN 0 ELSE pending_count END) AS vms_pending, \
MIN(CASE WHEN status = '{stopped}' THEN NULL ELSE expires_at END) AS oldest, \
SUM(CASE WHEN status = '{stopped}' THEN pending_count ELSE 0 END) AS vms_stopped, \
MIN(CASE WHEN status = '{stopped}' THEN expires_at END) AS oldest_stopped \
FROM {TABLE} WHERE status IN {}",
                in_cleanup_sql().replace(')', &format!(", '{}')", Status::Stopped.name())),
                stopped = Status::Stopped.name()
            ),
            vec![],
        ),
        (LAST_RECONCILIATION.to_string(), vec![]),
        completions(now_ms.saturating_sub(crate::lab::fleet::levels::WINDOW_MS)),
        backlog(now_ms),
    ]
}

/// The kept count named `name`, among the rows of `SELECT name, n FROM fleet_counts`.
pub fn kept(counts: &[(String, i64)], name: &str) -> u64 {
    counts
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| (*v).max(0) as u64)
}

/// The labs by status, from the kept counts: `status:<name>`, the labs inserted with that status
/// less those deleted with it, plus the moves into it (`move:<from>><to>`) less the moves out of
/// it (`migrations/0011_moves_counted.sql`).
pub fn by_status(counts: &[(String, i64)]) -> Vec<(Status, u64)> {
    Status::ALL
        .iter()
        .map(|s| {
            let name = s.name();
            let mut n = 0i64;
            for (count, v) in counts {
                if count.strip_prefix("status:") == Some(name) {
                    n += v;
                } else if let Some((from, to)) =
                    count.strip_prefix("move:").and_then(|m| m.split_once('>'))
                {
                    if to == name {
                        n += v;
                    }
                    if from == name {
                        n -= v;
                    }
                }
            }
            (*s, n.max(0) as u64)
        })
        .collect()
}

/// Counts over the fleet, as read from the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_status: Vec<(Status, u64)>,
    pub stuck: u64,
    pub vms_pending: u64,
    pub oldest_pending_expiry: Option<i64>,
    /// The grace stage: the VMs of stopped labs, and the earliest expiry among those labs.
    pub vms_stopped: u64,
    pub oldest_stopped_expiry: Option<i64>,
    pub vms_already_gone: u64,
    pub last_reconciliation: Option<ReconciliationRow>,
    /// The labs completed in the service levels' window, and the backlog now.
    pub completions: Vec<crate::lab::fleet::levels::Completion>,
    pub overdue: Vec<crate::lab::fleet::levels::Overdue>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::session::{AttemptResult, DeletionError, NewSession, Outcome};

    const T0: i64 = 1_795_000_000_000;
    /// The columns the list reads: all but `vms_done`.
    const LISTED: &[&str] = COLUMNS.split_last().unwrap().1;

    fn session() -> Session {
        Session::schedule(
            NewSession {
                lab_request_id: "m".into(),
                user_id: "u".into(),
                worker_lab_request_ids: vec!["w1".into(), "w2".into()],
                duration: 60,
                vm_name: None,
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            },
            T0,
            60_000,
        )
    }

    #[test]
    fn the_origin_filter_says_what_its_partial_index_holds() {
        let page = |origin| {
            list(
                &ListQuery {
                    origin: Some(origin),
                    ..ListQuery::default()
                },
                3,
            )
        };
        let (sql, binds) = page(Origin::Inventory);
        assert!(
            sql.contains(" AND origin = ? AND origin != 'api' ORDER BY"),
            "{sql}"
        );
        assert_eq!(binds[0], Bind::Text("inventory".into()));
        let migration = include_str!("../../migrations/0009_origin_index.sql");
        assert!(migration.contains("WHERE origin != 'api';"));
        // The API's labs are nearly all of them: the expiry index finds a page at once.
        let (sql, _) = page(Origin::Api);
        assert!(sql.contains(" AND origin = ? ORDER BY"), "{sql}");
    }

    #[test]
    fn a_list_row_reads_back_as_written() {
        let mut s = session();
        s.labels.insert("class".into(), "c1".into());
        s.mark_ended(crate::lab::session::EndReason::Operator, T0);
        touch(&mut s, T0, 2_000);
        let row = row(&s, T0 + 1);
        // As D1 answers the list query: the labels as the text `json_group_object` made.
        let mut v = serde_json::to_value(&row).unwrap();
        v["labels"] = serde_json::Value::String(serde_json::to_string(&row.labels).unwrap());
        // Whether the row is the lab's first is the object's to know, not a column.
        assert!(row.first);
        let read = |v: &serde_json::Value| {
            crate::lab::rows::read::<IndexRow>("list", vec![v.clone()]).map(|mut r| r.remove(0))
        };
        assert_eq!(
            read(&v),
            Ok(IndexRow {
                first: false,
                vms_done: None,
                ..row.clone()
            })
        );
        v["labels"] = serde_json::Value::Null;
        assert!(read(&v).unwrap().labels.is_empty());
        // Not a row of ours: an error, never a row left out (issue 36, 7).
        for (column, value) in [
            ("status", serde_json::json!("gone")),
            ("labels", serde_json::json!("{not json")),
            ("vm_count", serde_json::json!(-1)),
            ("revision", serde_json::Value::Null),
        ] {
            let mut bad = v.clone();
            bad[column] = value;
            assert!(
                matches!(
                    read(&bad),
                    Err(crate::lab::error::ServiceError::Unreadable { query: "list", .. })
                ),
                "{column}"
            );
        }
    }

    #[test]
    fn every_change_is_a_newer_revision_even_within_a_millisecond() {
        let mut s = session();
        touch(&mut s, T0, 2_000);
        let first = s.sync.revision;
        assert_eq!(first, T0 as u64 * 1000);
        touch(&mut s, T0, 2_000);
        assert_eq!(s.sync.revision, first + 1, "two changes in one millisecond");
        touch(&mut s, T0 + 5, 2_000);
        assert_eq!(s.sync.revision, (T0 as u64 + 5) * 1000);
        // A clock that went back never lowers the revision.
        touch(&mut s, T0 - 1_000, 2_000);
        assert_eq!(s.sync.revision, (T0 as u64 + 5) * 1000 + 1);
    }

    #[test]
    fn a_row_is_owed_until_the_current_revision_is_confirmed() {
        let mut s = session();
        touch(&mut s, T0, 2_000);
        assert!(owed(&s));
        assert_eq!(s.sync.index.retry_at_ms, Some(T0 + 2_000));
        let written = s.sync.revision;
        touch(&mut s, T0 + 1, 2_000);
        // The write of the older revision lands: still behind.
        confirmed(&mut s, written);
        assert!(owed(&s));
        assert_eq!(s.sync.index.retry_at_ms, Some(T0 + 2_001));
        write_failed(&mut s, T0 + 10, 2_000);
        assert_eq!(s.sync.index.retry_at_ms, Some(T0 + 2_010));
        let current = s.sync.revision;
        confirmed(&mut s, current);
        assert!(!owed(&s));
        assert_eq!(s.sync.index.retry_at_ms, None);
        // A late confirmation of an older revision changes nothing.
        confirmed(&mut s, written);
        assert_eq!(s.sync.index.written, current);
    }

    #[test]
    fn the_row_holds_what_the_fleet_view_lists() {
        let mut s = session();
        touch(&mut s, T0, 2_000);
        s.begin_attempt(T0 + 60_000, 5_000);
        s.finish_attempt(
            &AttemptResult {
                deleted: vec!["m".into()],
                already_gone: vec!["w2".into()],
                outcome: Outcome {
                    successful_deletions: 2,
                    failed_deletions: 1,
                    errors: vec![DeletionError {
                        lab_request_id: "w1".into(),
                        error: format!("backend answered 500: \u{202e}{}", "x".repeat(300)),
                    }],
                    not_tried: 0,
                },
                ..AttemptResult::default()
            },
            T0 + 61_000,
            T0 + 66_000,
        );
        let r = row(&s, T0 + 61_001);
        assert_eq!(r.lab_type, "multi_node");
        assert_eq!(r.vm_count, 3);
        assert_eq!(r.status, Status::Retrying);
        assert_eq!(r.attempts, 1);
        assert_eq!(r.pending_count, 1);
        assert_eq!(r.already_gone_count, 1);
        assert_eq!(r.next_attempt_at, Some(T0 + 66_000));
        assert_eq!(r.updated_at, T0 + 61_001);
        assert_eq!(r.revision, s.sync.revision);
        let error = r.last_error.unwrap();
        assert!(
            error.starts_with("w1: backend answered 500: \\u{202e}xxx"),
            "escaped: {error}"
        );
        assert_eq!(error.chars().count(), MAX_LAST_ERROR);
        assert!(error.ends_with('…'));
    }

    #[test]
    fn the_columns_are_those_of_the_migration() {
        let migration = include_str!("../../migrations/0001_sessions.sql");
        let table = migration
            .split("CREATE TABLE IF NOT EXISTS sessions (")
            .nth(1)
            .and_then(|rest| rest.split(");").next())
            .expect("the table in the migration");
        let mut columns: Vec<&str> = table
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        // Then the columns later migrations add, in order.
        for later in [
            include_str!("../../migrations/0002_inventory.sql"),
            include_str!("../../migrations/0004_end_reason.sql"),
            include_str!("../../migrations/0015_vm_states_in_the_lab_row.sql"),
        ] {
            for line in later.lines() {
                if let Some(rest) = line.strip_prefix("ALTER TABLE sessions ADD COLUMN ") {
                    columns.extend(rest.split_whitespace().next());
                }
            }
        }
        assert_eq!(columns, COLUMNS);
    }

    #[test]
    fn the_upsert_never_overwrites_a_newer_row() {
        let mut s = session();
        touch(&mut s, T0, 2_000);
        let [(sql, binds), (fixed, fixed_binds)] = upsert(&row(&s, T0));
        // The literals are what `COLUMNS` makes: the insert takes every column, the update on
        // conflict sets all but the lab's id and the fixed ones, which the second sets.
        let fixed_columns = [1, 2, 3, 5, 6, 15];
        let marks: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("?{i}")).collect();
        let sets: Vec<String> = (1..COLUMNS.len())
            .filter(|i| !fixed_columns.contains(i))
            .map(|i| format!("{c} = excluded.{c}", c = COLUMNS[i]))
            .collect();
        assert_eq!(
            sql,
            format!(
                "INSERT INTO sessions ({}) VALUES ({}) ON CONFLICT (lab_request_id) DO UPDATE SET {} WHERE excluded.revision > sessions.revision",
                COLUMNS.join(", "),
                marks.join(", "),
                sets.join(", ")
            )
        );
        let each = |f: &dyn Fn(usize) -> String| -> String {
            fixed_columns
                .iter()
                .map(|&i| f(i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(
            fixed,
            format!(
                "UPDATE sessions SET {} WHERE lab_request_id = ?1 AND revision = ?15 AND ({}) IS NOT ({})",
                each(&|i| format!("{} = ?{}", COLUMNS[i], i + 1)),
                each(&|i| COLUMNS[i].into()),
                each(&|i| format!("?{}", i + 1)),
            )
        );
        assert_eq!(COLUMNS[14], "revision");
        assert!(LIST_SELECT.starts_with(&format!("SELECT {}, (SELECT", LISTED.join(", "))));
        // An attempt's update leaves the indexes of the columns it does not change alone.
        for unchanged in ["user_id", "expires_at", "origin", "created_at"] {
            assert!(!sql.contains(&format!("{unchanged} = ")), "{sql}");
        }
        assert_eq!(fixed_binds[..], binds[..16]);
        assert_eq!(binds.len(), COLUMNS.len());
        assert_eq!(binds[4], Bind::Text("scheduled".into()));
        assert_eq!(binds[8], Bind::Null);
        assert_eq!(binds[14], Bind::Int(s.sync.revision as i64));
        let deletes = delete("m", &["m", "w1"], 7);
        assert_eq!(
            deletes[0].0,
            "DELETE FROM sessions WHERE lab_request_id = ?1 AND revision <= ?2"
        );
        assert_eq!(
            deletes[1].0,
            "DELETE FROM vms WHERE lab_request_id = ?1 AND revision <= ?2 AND vm_id IN (?, ?)"
        );
        assert_eq!(deletes[0].1, vec![Bind::Text("m".into()), Bind::Int(7)]);
        assert_eq!(
            deletes[1].1,
            vec![
                Bind::Text("m".into()),
                Bind::Int(7),
                Bind::Text("m".into()),
                Bind::Text("w1".into())
            ]
        );
        // The largest lab's VMs, each bound: within D1's binds.
        let most: Vec<String> = (0..=crate::lab::session::bound::MAX_WORKERS)
            .map(|n| format!("v{n}"))
            .collect();
        let most: Vec<&str> = most.iter().map(String::as_str).collect();
        let deletes = delete("m", &most, 7);
        assert_eq!(deletes[1].1.len(), 2 + most.len());
        assert!(deletes[1].1.len() <= MAX_BINDS);
    }

    #[test]
    fn a_labs_workers_are_written_once_and_their_states_go_in_its_row() {
        let workers: Vec<String> = (0..48).map(|n| format!("w{n}")).collect();
        let mut s = Session::schedule(
            crate::lab::session::NewSession {
                lab_request_id: "m".into(),
                user_id: "u".into(),
                worker_lab_request_ids: workers,
                duration: 60,
                vm_name: None,
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            },
            T0,
            60_000,
        );
        touch(&mut s, T0, 2_000);
        assert_eq!(row(&s, T0).vms_done.as_deref(), Some("{}"), "all pending");
        s.begin_attempt(T0 + 60_000, 5_000);
        s.finish_attempt(
            &AttemptResult {
                deleted: vec!["w7".into(), "m".into()],
                already_gone: vec!["w3".into()],
                ..AttemptResult::default()
            },
            T0 + 61_000,
            T0 + 66_000,
        );
        // In the order of the lab's VMs, the master first; the pending ones left out.
        assert_eq!(
            row(&s, T0).vms_done.as_deref(),
            Some(r#"{"m":"deleted","w3":"already_gone","w7":"deleted"}"#)
        );
        let vms = vm_rows(&s);
        assert_eq!(
            vms.len(),
            48,
            "the workers; the master is found by its lab's id"
        );
        assert_eq!(vms[0].vm_id, "w0");
        let statements = upsert_all(&row(&s, T0), &vms);
        assert_eq!(
            statements.len(),
            4,
            "the row and its fixed columns, the VMs that move, the VMs' rows: one each"
        );
        for (sql, binds) in &statements {
            assert!(binds.len() <= MAX_BINDS, "{sql}");
        }
        assert!(statements[2]
            .0
            .starts_with("UPDATE vms SET lab_request_id = ?1"));
        assert!(statements[3]
            .0
            .ends_with("FROM json_each(?2) WHERE 1 ON CONFLICT (vm_id) DO NOTHING"));
        // Once a row of the lab is confirmed, its VMs' rows are written: the row alone.
        let mut confirmed = s.clone();
        crate::lab::index::confirmed(&mut confirmed, 1);
        let later = upsert_all(&row(&confirmed, T0), &vms);
        assert_eq!(later.len(), 2);
        assert!(!later.iter().any(|(sql, _)| sql.contains(" vms ")));
        // The largest lab, its longest ids, every VM done: its row within D1's.
        let long = |n: usize| format!("{n:0>width$}", width = crate::lab::limits::MAX_ID_LEN);
        let mut largest = Session {
            lab_request_id: long(999),
            worker_lab_request_ids: (0..crate::lab::session::bound::MAX_WORKERS)
                .map(long)
                .collect(),
            ..s.clone()
        };
        largest.cleanup.deleted = largest.vms().map(|vm| vm.id.to_string()).collect();
        let full = row(&largest, T0);
        let done = full.vms_done.clone().unwrap();
        assert_eq!(done.matches("deleted").count(), 49);
        let bytes: usize = upsert(&full)[0]
            .1
            .iter()
            .map(|b| match b {
                Bind::Text(t) => t.len(),
                _ => 8,
            })
            .sum();
        assert!(
            bytes < D1_MAX_ROW_BYTES / 200,
            "{bytes} bytes: 10,000 at most"
        );
        // A single-VM lab has neither rows in `vms` nor states in its row.
        let single = Session {
            worker_lab_request_ids: Vec::new(),
            ..s.clone()
        };
        assert!(vm_rows(&single).is_empty() && row(&single, T0).vms_done.is_none());
        // A set of ids is one query however large, bound once as a JSON array.
        let ids: Vec<String> = (0..1_000).map(|n| format!("v{n}")).collect();
        let lookups = lookup(&ids);
        assert_eq!(lookups.len(), 1);
        assert!(lookups[0]
            .0
            .starts_with("WITH ids(id) AS (SELECT value FROM json_each(?))"));
        assert_eq!(
            lookups[0].1,
            vec![Bind::Text(serde_json::to_string(&ids).unwrap())]
        );
        assert_eq!(record_seen(&ids, T0).len(), 1);
        assert!(lookup(&[]).is_empty() && record_seen(&[], T0).is_empty());
    }

    /// `tests/migrations/upgrade.py` checks the lookup and the VMs' rows on SQLite across
    /// migration 0015: with the statements the worker makes.
    #[test]
    fn the_migration_test_runs_the_statements_the_worker_makes() {
        let script = include_str!("../../tests/migrations/upgrade.py");
        let (sql, _) = &lookup(&["v".into()])[0];
        assert!(script.contains(&format!("\nLOOKUP = \"{sql}\"\n")), "{sql}");
        let mut s = session();
        touch(&mut s, T0, 2_000);
        let statements = upsert_all(&row(&s, T0), &vm_rows(&s));
        assert!(script.contains(&format!("\nVM_INSERT = \"{}\"\n", statements[3].0)));
    }

    #[test]
    fn no_parameters_is_the_first_page_of_everything() {
        let (sql, binds) = list(&ListQuery::default(), 3);
        assert!(sql.ends_with("WHERE 1 = 1 ORDER BY expires_at, lab_request_id LIMIT ?"));
        assert_eq!(binds, vec![Bind::Int(51)]);
    }

    #[test]
    fn every_filter_is_bound() {
        let q = ListQuery {
            origin: None,
            end_reason: None,
            labels: vec![("class".into(), "cka".into())],
            statuses: vec![Status::Retrying, Status::CleaningUp],
            user_id: Some("user@x".into()),
            stuck: Some(true),
            expires_before: Some(1_795_773_600_000),
            expires_after: Some(1_795_766_400_000),
            limit: 200,
            cursor: None,
        };
        let (sql, binds) = list(&q, 3);
        assert_eq!(
            sql,
            format!("SELECT {}, (SELECT json_group_object(key, value) FROM labels l WHERE l.lab_request_id = sessions.lab_request_id) AS labels FROM sessions WHERE 1 = 1 AND lab_request_id IN (SELECT lab_request_id FROM labels WHERE key = ? AND value = ?) AND status IN (?, ?) AND status IN ('cleaning_up', 'retrying', 'stopped') AND user_id = ? AND status != 'completed' AND attempts >= ? AND attempts > 0 AND expires_at < ? AND expires_at > ? ORDER BY expires_at, lab_request_id LIMIT ?", LISTED.join(", "))
        );
        assert_eq!(
            binds,
            vec![
                Bind::Text("class".into()),
                Bind::Text("cka".into()),
                Bind::Text("retrying".into()),
                Bind::Text("cleaning_up".into()),
                Bind::Text("user@x".into()),
                Bind::Int(3),
                Bind::Int(1_795_773_600_000),
                Bind::Int(1_795_766_400_000),
                Bind::Int(201),
            ]
        );
        let (sql, binds) = list(
            &ListQuery {
                stuck: Some(false),
                ..ListQuery::default()
            },
            4,
        );
        assert!(sql.contains("AND (status = 'completed' OR attempts < ?)"));
        assert_eq!(binds[0], Bind::Int(4));
    }

    #[test]
    fn the_cursor_round_trips_and_pages_by_key() {
        let c = Cursor {
            expires_at: 1_795_000_000_123,
            lab_request_id: "lab:7@x".into(),
        };
        let text = c.encode();
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Cursor::decode(&text), Some(c.clone()));
        let (sql, binds) = list(
            &ListQuery {
                cursor: Some(c),
                limit: 10,
                ..ListQuery::default()
            },
            3,
        );
        assert!(sql.contains("AND (expires_at, lab_request_id) > (?, ?)"));
        assert_eq!(binds.len(), 3);
        for bad in [
            "zz",
            "abc",
            "7631",
            &"0".repeat(500),
            "76313a783a79",
            "aéb",
            "é",
            "+7",
            "７６",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bulk_selector_pages_in_its_index_order() {
        use crate::lab::fleet::selector::Selector;
        let selector = Selector {
            labels: vec![("class".into(), "c1".into()), ("course".into(), "k".into())],
            statuses: vec![Status::Scheduled],
            user_id: Some("u".into()),
        };
        let (sql, binds) = bulk_page(&selector, Some("lab-9"), 48);
        assert_eq!(
            sql,
            "SELECT s.lab_request_id AS lab_request_id, s.status AS status, s.created_at AS created_at, s.expires_at AS expires_at FROM labels l JOIN sessions s ON s.lab_request_id = l.lab_request_id WHERE l.key = ? AND l.value = ? AND s.lab_request_id IN (SELECT lab_request_id FROM labels WHERE key = ? AND value = ?) AND s.user_id = ? AND s.status IN (?) AND l.lab_request_id > ? ORDER BY l.lab_request_id LIMIT ?"
        );
        assert_eq!(binds.len(), 8);
        let by_user = Selector {
            user_id: Some("u".into()),
            ..Selector::default()
        };
        let (sql, _) = bulk_page(&by_user, None, 48);
        assert!(sql.ends_with(
            "FROM sessions s WHERE 1 = 1 AND s.user_id = ? ORDER BY s.lab_request_id LIMIT ?"
        ));
        let (sql, binds) = bulk_count(&by_user);
        assert_eq!(
            sql,
            "SELECT COUNT(*) AS n FROM sessions s WHERE 1 = 1 AND s.user_id = ?"
        );
        assert_eq!(binds, vec![Bind::Text("u".into())]);
    }

    #[test]
    fn the_stats_use_the_vocabulary() {
        let statements = stats(3, 90_000_000);
        assert_eq!(statements.len(), 6);
        assert_eq!(statements[4].1, vec![Bind::Int(90_000_000 - 86_400_000)]);
        assert_eq!(statements[5].1, vec![Bind::Int(90_000_000)]);
        assert_eq!(statements[0].0, "SELECT name, n FROM fleet_counts");
        let kept_rows = vec![
            ("status:retrying".to_string(), 2),
            ("status:completed".to_string(), 7),
            ("already_gone".to_string(), 3),
        ];
        assert_eq!(kept(&kept_rows, "already_gone"), 3);
        assert_eq!(
            by_status(&kept_rows),
            vec![
                (Status::Scheduled, 0),
                (Status::Stopped, 0),
                (Status::CleaningUp, 0),
                (Status::Retrying, 2),
                (Status::Completed, 7)
            ]
        );
        // Since 0011 a status change counts its move: 5 labs inserted scheduled, 4 of them
        // completed (3 of those after a retry), 1 completed lab deleted.
        let moved = vec![
            ("status:scheduled".to_string(), 5),
            ("status:completed".to_string(), -1),
            ("move:scheduled>retrying".to_string(), 3),
            ("move:scheduled>completed".to_string(), 1),
            ("move:retrying>completed".to_string(), 3),
            ("already_gone".to_string(), 0),
            // The grace stage: a lab stopped (its moves through `stopped` count like any).
            ("status:scheduled".to_string(), 1),
            ("move:scheduled>stopped".to_string(), 1),
        ];
        assert_eq!(
            by_status(&moved),
            vec![
                (Status::Scheduled, 1),
                (Status::Stopped, 1),
                (Status::CleaningUp, 0),
                (Status::Retrying, 0),
                (Status::Completed, 3)
            ]
        );
        let migration = include_str!("../../migrations/0011_moves_counted.sql");
        assert!(migration.contains("'move:' || OLD.status || '>' || NEW.status"));
        assert_eq!(
            statements[1].0,
            "SELECT COUNT(*) AS n FROM sessions WHERE status != 'completed' AND attempts >= ? AND attempts > 0"
        );
        assert_eq!(statements[1].1, vec![Bind::Int(3)]);
        assert!(statements[2]
            .0
            .ends_with("WHERE status IN ('cleaning_up', 'retrying', 'stopped')"));
    }

    #[test]
    fn a_status_or_end_reason_filter_says_what_its_partial_index_holds() {
        // SQLite uses a partial index only for a statement whose terms say its `WHERE`
        // (migration 0013): the stats' and the list's terms are the index's, word for word.
        let migration = include_str!("../../migrations/0013_fewer_index_rows.sql");
        let rare = "status IN ('cleaning_up', 'retrying', 'stopped')";
        assert!(migration.contains(&format!("WHERE {rare};")));
        assert!(stats(3, 0)[2].0.ends_with(&format!("WHERE {rare}")));
        assert!(migration.contains("WHERE end_reason IS NOT NULL AND end_reason != 'expired';"));
        let sql = |statuses: &[Status], end_reason: Option<EndReason>| {
            let q = ListQuery {
                statuses: statuses.to_vec(),
                end_reason,
                ..ListQuery::default()
            };
            list(&q, 3).0
        };
        assert!(sql(&[Status::Retrying, Status::Stopped], None).contains(&format!(" AND {rare} ")));
        let active = sql(&[Status::Scheduled, Status::Retrying], None);
        assert!(active.contains(" AND status != 'completed' ") && !active.contains(rare));
        let all = sql(&[Status::Completed, Status::Retrying], None);
        assert!(!all.contains("status != 'completed'") && !all.contains(rare));
        assert!(sql(&[], Some(EndReason::Idle))
            .contains(" AND end_reason = ? AND end_reason != 'expired' "));
        assert!(!sql(&[], Some(EndReason::Expired)).contains("!= 'expired'"));
    }
}
