//! The fleet index in D1 (binding `DB`): each lab's row, written by its object, and the queries behind the list and stats routes.

use std::time::Duration;

use futures::future::{select, Either};
use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{D1Database, Delay, Env};

use crate::api::fleet::{self, Bind, Counts, ListQuery};
use crate::lab::index::IndexRow;

/// Name of the D1 binding in `wrangler.toml`.
pub const DB_BINDING: &str = "DB";

/// Whatever went wrong with the index, in words (it is logged, never shown to an API caller).
pub type IndexError = String;

fn database(env: &Env) -> Result<D1Database, IndexError> {
    env.d1(DB_BINDING)
        .map_err(|e| format!("no D1 binding {DB_BINDING}: {e}"))
}

/// Whether the `DB` binding exists (for the readiness check).
pub fn is_bound(env: &Env) -> bool {
    database(env).is_ok()
}

/// Runs `work`, or gives up after `timeout`: an index that does not answer never holds a
/// cleanup or an answer for long.
async fn bounded<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, IndexError>>,
) -> Result<T, IndexError> {
    futures::pin_mut!(work);
    match select(work, Delay::from(timeout)).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => Err(format!(
            "the index did not answer within {} s",
            timeout.as_secs()
        )),
    }
}

fn text(value: &str) -> JsValue {
    JsValue::from_str(value)
}

fn int(value: i64) -> JsValue {
    // Exact: times in milliseconds and revisions stay below 2^53.
    JsValue::from_f64(value as f64)
}

fn optional(value: Option<i64>) -> JsValue {
    value.map_or(JsValue::NULL, int)
}

const UPSERT: &str = "INSERT INTO sessions (lab_request_id, user_id, lab_type, vm_count, status, created_at, expires_at, attempts, next_attempt_at, pending_count, already_gone_count, last_error, completed_at, updated_at, revision)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
ON CONFLICT (lab_request_id) DO UPDATE SET
  user_id = excluded.user_id, lab_type = excluded.lab_type, vm_count = excluded.vm_count,
  status = excluded.status, created_at = excluded.created_at, expires_at = excluded.expires_at,
  attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,
  pending_count = excluded.pending_count, already_gone_count = excluded.already_gone_count,
  last_error = excluded.last_error, completed_at = excluded.completed_at,
  updated_at = excluded.updated_at, revision = excluded.revision
WHERE excluded.revision > sessions.revision";

/// Writes `row` unless the index already holds a newer revision of it.
pub async fn upsert(env: &Env, row: &IndexRow, timeout: Duration) -> Result<(), IndexError> {
    let db = database(env)?;
    let binds = [
        text(&row.lab_request_id),
        text(&row.user_id),
        text(&row.lab_type),
        int(row.vm_count.into()),
        text(&row.status),
        int(row.created_at),
        int(row.expires_at),
        int(row.attempts.into()),
        optional(row.next_attempt_at),
        int(row.pending_count.into()),
        int(row.already_gone_count.into()),
        row.last_error.as_deref().map_or(JsValue::NULL, text),
        optional(row.completed_at),
        int(row.updated_at),
        int(i64::try_from(row.revision).unwrap_or(i64::MAX)),
    ];
    let statement = db.prepare(UPSERT).bind(&binds).map_err(|e| e.to_string())?;
    bounded(timeout, async {
        statement.run().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
}

/// Deletes the lab's row, unless the index holds a revision newer than `revision` (a lab created
/// again under the same id after this one was forgotten).
pub async fn delete(
    env: &Env,
    lab_request_id: &str,
    revision: u64,
    timeout: Duration,
) -> Result<(), IndexError> {
    let db = database(env)?;
    let statement = db
        .prepare("DELETE FROM sessions WHERE lab_request_id = ?1 AND revision <= ?2")
        .bind(&[
            text(lab_request_id),
            int(i64::try_from(revision).unwrap_or(i64::MAX)),
        ])
        .map_err(|e| e.to_string())?;
    bounded(timeout, async {
        statement.run().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
}

/// One page of the list route.
pub async fn list(
    env: &Env,
    query: &ListQuery,
    stuck_after: u32,
    timeout: Duration,
) -> Result<Vec<IndexRow>, IndexError> {
    let db = database(env)?;
    let (sql, binds) = fleet::sql(query, stuck_after);
    let binds: Vec<JsValue> = binds
        .iter()
        .map(|b| match b {
            Bind::Text(s) => text(s),
            Bind::Int(n) => int(*n),
        })
        .collect();
    let statement = db.prepare(sql).bind(&binds).map_err(|e| e.to_string())?;
    bounded(timeout, async {
        let result = statement.all().await.map_err(|e| e.to_string())?;
        if let Some(error) = result.error() {
            return Err(error);
        }
        result.results::<IndexRow>().map_err(|e| e.to_string())
    })
    .await
}

#[derive(Deserialize)]
struct StatusCount {
    status: String,
    n: u64,
}

#[derive(Deserialize)]
struct Number {
    n: Option<u64>,
}

#[derive(Deserialize)]
struct Pending {
    vms_pending: Option<u64>,
    oldest: Option<i64>,
}

/// The stats route's counts, in one round trip (a D1 batch).
pub async fn counts(env: &Env, stuck_after: u32, timeout: Duration) -> Result<Counts, IndexError> {
    let db = database(env)?;
    let statements = vec![
        db.prepare("SELECT status, COUNT(*) AS n FROM sessions GROUP BY status"),
        db.prepare("SELECT COUNT(*) AS n FROM sessions WHERE status != 'completed' AND attempts >= ?1")
            .bind(&[int(stuck_after.into())])
            .map_err(|e| e.to_string())?,
        db.prepare("SELECT SUM(pending_count) AS vms_pending, MIN(expires_at) AS oldest FROM sessions WHERE status IN ('cleaning_up', 'retrying')"),
        db.prepare("SELECT SUM(already_gone_count) AS n FROM sessions"),
    ];
    bounded(timeout, async {
        let results = db.batch(statements).await.map_err(|e| e.to_string())?;
        let [by_status, stuck, pending, gone] = results.as_slice() else {
            return Err(format!(
                "the index answered {} results for 4 queries",
                results.len()
            ));
        };
        let e = |e: worker::Error| e.to_string();
        let first = |rows: Vec<Number>| rows.into_iter().next().and_then(|r| r.n).unwrap_or(0);
        let pending = pending.results::<Pending>().map_err(e)?.into_iter().next();
        Ok(Counts {
            by_status: by_status
                .results::<StatusCount>()
                .map_err(e)?
                .into_iter()
                .map(|c| (c.status, c.n))
                .collect(),
            stuck: first(stuck.results::<Number>().map_err(e)?),
            vms_pending: pending.as_ref().and_then(|p| p.vms_pending).unwrap_or(0),
            oldest_pending_expiry: pending.and_then(|p| p.oldest),
            vms_already_gone: first(gone.results::<Number>().map_err(e)?),
        })
    })
    .await
}
