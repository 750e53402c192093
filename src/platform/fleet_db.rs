//! The fleet index in D1 (binding `DB`): runs the statements `lab::index` builds, each bounded by a timeout.

use std::time::Duration;

use wasm_bindgen::{JsCast, JsValue};
use worker::js_sys::{self, Array, Reflect};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{D1Database, D1PreparedStatement, Env};

use crate::lab::fleet::report::{KnownVm, Reconciliation};
use crate::lab::index::{self, Bind, Counts, IndexRow, ListQuery};
use crate::lab::ports::Level;
use crate::lab::rows;
use crate::platform::runtime::{console, within};

/// Name of the D1 binding in `wrangler.toml`.
pub const DB_BINDING: &str = "DB";

/// Whatever went wrong with the index (it is logged, never shown to an API caller).
pub use crate::lab::error::ServiceError as IndexError;

fn database(env: &Env) -> Result<D1Database, IndexError> {
    env.d1(DB_BINDING)
        .map_err(|e| IndexError::Failed(format!("no D1 binding {DB_BINDING}: {e}")))
}

/// Whether the `DB` binding exists (for the readiness check).
pub fn is_bound(env: &Env) -> bool {
    database(env).is_ok()
}

fn js(bind: &Bind) -> JsValue {
    match bind {
        Bind::Text(s) => JsValue::from_str(s),
        // Exact: times in milliseconds and revisions stay below 2^53.
        Bind::Int(n) => JsValue::from_f64(*n as f64),
        Bind::Null => JsValue::NULL,
    }
}

fn prepare(
    db: &D1Database,
    (sql, binds): (String, Vec<Bind>),
) -> Result<D1PreparedStatement, IndexError> {
    let binds: Vec<JsValue> = binds.iter().map(js).collect();
    db.prepare(sql)
        .bind(&binds)
        .map_err(|e| IndexError::from(e.to_string()))
}

/// Runs `work`, or gives up after `timeout`: an index that does not answer never holds a
/// cleanup or an answer for long.
async fn bounded<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, IndexError>>,
) -> Result<T, IndexError> {
    within(timeout, work).await.unwrap_or_else(|| {
        Err(IndexError::Failed(format!(
            "the index did not answer within {} s",
            timeout.as_secs()
        )))
    })
}

/// The rows a batch read and wrote, as D1 reports them (`meta.rows_read`, `meta.rows_written`:
/// what D1 bills).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rows {
    pub read: u64,
    pub written: u64,
}

impl Rows {
    /// What a batch's results report.
    fn of(results: &[JsValue]) -> Rows {
        let meta = |result: &JsValue, name: &str| -> u64 {
            Reflect::get(result, &"meta".into())
                .and_then(|meta| Reflect::get(&meta, &name.into()))
                .ok()
                .and_then(|n| n.as_f64())
                .map_or(0, |n| n as u64)
        };
        let mut rows = Rows::default();
        for result in results {
            rows.read += meta(result, "rows_read");
            rows.written += meta(result, "rows_written");
        }
        rows
    }
}

/// What a failed D1 call says: its message and, for D1's own errors, their cause.
fn failure(e: JsValue) -> IndexError {
    let Some(error) = e.dyn_ref::<js_sys::Error>() else {
        // Not an Error (a string, or anything else thrown): said as it is, never unwrapped.
        return IndexError::Failed(format!(
            "D1 failed: {}",
            e.as_string().unwrap_or_else(|| format!("{e:?}"))
        ));
    };
    let message = String::from(error.message());
    let cause = error.cause();
    IndexError::Failed(match cause.dyn_ref::<js_sys::Error>() {
        Some(cause) if cause.message() != message.as_str() => {
            format!("{message} ({})", String::from(cause.message()))
        }
        _ => message,
    })
}

/// Runs `statements` as one D1 batch (one transaction) and answers its results as the runtime
/// gives them (`{results, meta, ...}` each). Called through the binding directly, rather than
/// through `worker`'s `D1Result`, whose readers deserialize JavaScript values with serde: the
/// rows are read as the runtime's own JSON of them (`values`), one JSON parser for everything.
async fn batch(
    db: &D1Database,
    statements: Vec<D1PreparedStatement>,
) -> Result<Vec<JsValue>, IndexError> {
    let statements: Array = statements
        .iter()
        .map(|s| JsValue::from(s.inner().clone()))
        .collect();
    let db: &JsValue = db.as_ref();
    let call = Reflect::get(db, &"batch".into())
        .and_then(|f| f.dyn_into::<js_sys::Function>())
        .and_then(|f| f.call1(db, &statements))
        .map_err(failure)?;
    let results = JsFuture::from(js_sys::Promise::from(call))
        .await
        .map_err(failure)?;
    Ok(results.dyn_into::<Array>().map_err(failure)?.to_vec())
}

/// The rows of one result as JSON values, each read into its query's struct by `typed`.
fn values(result: &JsValue) -> Result<Vec<serde_json::Value>, IndexError> {
    let rows = Reflect::get(result, &"results".into()).map_err(failure)?;
    if rows.is_null_or_undefined() {
        return Ok(Vec::new());
    }
    let text = js_sys::JSON::stringify(&rows).map_err(failure)?;
    match serde_json::from_str(&String::from(text)) {
        Ok(serde_json::Value::Array(rows)) => Ok(rows),
        Ok(_) => Err(IndexError::Failed(
            "D1 answered rows that are not a list".into(),
        )),
        Err(e) => Err(IndexError::Failed(format!(
            "D1 answered unreadable rows: {e}"
        ))),
    }
}

/// Runs writing statements in one batch (one transaction), within `timeout`.
async fn run(
    env: &Env,
    statements: Vec<(String, Vec<Bind>)>,
    timeout: Duration,
) -> Result<Rows, IndexError> {
    let db = database(env)?;
    let prepared = statements
        .into_iter()
        .map(|statement| prepare(&db, statement))
        .collect::<Result<Vec<_>, _>>()?;
    bounded(timeout, async {
        Ok(Rows::of(&batch(&db, prepared).await?))
    })
    .await
}

/// Runs `statements` (a lab's row written or deleted, as `lab::index` builds them) in one
/// batch, within `timeout`.
pub async fn write(
    env: &Env,
    statements: Vec<(String, Vec<Bind>)>,
    timeout: Duration,
) -> Result<Rows, IndexError> {
    run(env, statements, timeout).await
}

/// One page of the list route (one row more than the page when another follows), and the rows
/// D1 read for it.
pub async fn list(
    env: &Env,
    query: &ListQuery,
    stuck_after: u32,
    timeout: Duration,
) -> Result<(Vec<IndexRow>, Rows), IndexError> {
    let db = database(env)?;
    let statement = prepare(&db, index::list(query, stuck_after))?;
    bounded(timeout, async {
        let results = batch(&db, vec![statement]).await?;
        let rows = match results.first() {
            Some(result) => typed("list", values(result)?)?,
            None => Vec::new(),
        };
        Ok((rows, Rows::of(&results)))
    })
    .await
}

/// Reads `rows` (one result of `query`) as `T` each, failing closed (`lab::rows::read`); an
/// unreadable row is logged as an error and as a structured record (`event:
/// d1_unreadable_row`, counted in Workers Logs), and the whole answer is refused.
fn typed<T: serde::de::DeserializeOwned>(
    query: &'static str,
    rows: Vec<serde_json::Value>,
) -> Result<Vec<T>, IndexError> {
    rows::read(query, rows).inspect_err(unreadable)
}

/// `typed` for an aggregate's one row.
fn one<T: serde::de::DeserializeOwned + Default>(
    query: &'static str,
    found: Vec<serde_json::Value>,
) -> Result<T, IndexError> {
    rows::one(query, found).inspect_err(unreadable)
}

fn unreadable(e: &IndexError) {
    if let IndexError::Unreadable { query, .. } = e {
        console(Level::Error, &format!("[index] {e}"));
        crate::platform::runtime::log_object(&serde_json::json!({
            "event": "d1_unreadable_row",
            "query": query,
        }));
    }
}

/// The stats route's counts, the last reconciliation and the service levels' rows, in one round
/// trip (a D1 batch), and the rows D1 read for them.
pub async fn counts(
    env: &Env,
    stuck_after: u32,
    now_ms: i64,
    timeout: Duration,
) -> Result<(Counts, Rows), IndexError> {
    let db = database(env)?;
    let statements = index::stats(stuck_after, now_ms)
        .into_iter()
        .map(|statement| prepare(&db, statement))
        .collect::<Result<Vec<_>, _>>()?;
    bounded(timeout, async {
        let results = batch(&db, statements).await?;
        let [kept, stuck, pending, last, completions, overdue] = results.as_slice() else {
            return Err(IndexError::Failed(format!(
                "the index answered {} results for 6 queries",
                results.len()
            )));
        };
        let kept: Vec<(String, i64)> = typed::<rows::Kept>("fleet_counts", values(kept)?)?
            .into_iter()
            .map(|k| (k.name, k.n))
            .collect();
        let pending: rows::Pending = one("pending", values(pending)?)?;
        let counts = Counts {
            by_status: index::by_status(&kept),
            stuck: one::<rows::Count>("stuck", values(stuck)?)?.n,
            vms_pending: pending.vms_pending,
            oldest_pending_expiry: pending.oldest,
            vms_stopped: pending.vms_stopped,
            oldest_stopped_expiry: pending.oldest_stopped,
            vms_already_gone: index::kept(&kept, "already_gone"),
            last_reconciliation: typed("last_reconciliation", values(last)?)?
                .into_iter()
                .next(),
            completions: typed("completions", values(completions)?)?,
            overdue: typed("backlog", values(overdue)?)?,
        };
        Ok((counts, Rows::of(&results)))
    })
    .await
}

/// Runs reading statements in one batch; every row as a JSON value (read by `typed`).
async fn rows(
    env: &Env,
    statements: Vec<(String, Vec<Bind>)>,
    timeout: Duration,
) -> Result<Vec<serde_json::Value>, IndexError> {
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    let db = database(env)?;
    let prepared = statements
        .into_iter()
        .map(|statement| prepare(&db, statement))
        .collect::<Result<Vec<_>, _>>()?;
    bounded(timeout, async {
        let mut all = Vec::new();
        for result in batch(&db, prepared).await? {
            all.extend(values(&result)?);
        }
        Ok(all)
    })
    .await
}

/// What the index knows of these VMs.
pub async fn lookup(
    env: &Env,
    vm_ids: &[String],
    timeout: Duration,
) -> Result<Vec<KnownVm>, IndexError> {
    let found = rows(env, index::lookup(vm_ids), timeout).await?;
    typed::<rows::Lookup>("lookup", found)?
        .into_iter()
        .map(|row| {
            let state = row.state.clone();
            row.known().ok_or_else(|| {
                let e = IndexError::Unreadable {
                    query: "lookup",
                    detail: format!("a VM state {:?}", crate::lab::text::safe(&state, 40)),
                };
                unreadable(&e);
                e
            })
        })
        .collect()
}

/// When these VMs were first reported (those seen before).
pub async fn first_seen(
    env: &Env,
    vm_ids: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i64)>, IndexError> {
    let seen = rows(env, index::first_seen(vm_ids), timeout).await?;
    Ok(typed::<rows::Seen>("first_seen", seen)?
        .into_iter()
        .map(|r| (r.vm_id, r.first_seen_at))
        .collect())
}

/// Remembers `now_ms` as the first sighting of these VMs.
pub async fn remember_seen(
    env: &Env,
    vm_ids: &[String],
    now_ms: i64,
    timeout: Duration,
) -> Result<(), IndexError> {
    if vm_ids.is_empty() {
        return Ok(());
    }
    run(env, index::record_seen(vm_ids, now_ms), timeout)
        .await
        .map(|_| ())
}

/// Forgets old sightings; the sightings left (counted up to `MAX_SEEN_ROWS` and one).
pub async fn tidy_seen(env: &Env, now_ms: i64, timeout: Duration) -> Result<u64, IndexError> {
    let left = rows(env, index::tidy_seen(now_ms), timeout).await?;
    Ok(one::<rows::Count>("tidy_seen", left)?.n)
}

pub async fn save_reconciliation(
    env: &Env,
    r: &Reconciliation,
    timeout: Duration,
) -> Result<(), IndexError> {
    run(env, index::save_reconciliation(r), timeout)
        .await
        .map(|_| ())
}

pub async fn overdue(
    env: &Env,
    before_ms: i64,
    limit: u32,
    timeout: Duration,
) -> Result<Vec<String>, IndexError> {
    let ids = rows(env, vec![index::overdue(before_ms, limit)], timeout).await?;
    Ok(typed::<rows::LabId>("overdue", ids)?
        .into_iter()
        .map(|r| r.lab_request_id)
        .collect())
}

pub async fn state(env: &Env, key: &str, timeout: Duration) -> Result<Option<String>, IndexError> {
    let found = rows(env, vec![index::get_state(key)], timeout).await?;
    Ok(typed::<rows::StateValue>("state", found)?
        .into_iter()
        .next()
        .map(|r| r.value))
}

pub async fn set_state(
    env: &Env,
    key: &str,
    value: Option<&str>,
    timeout: Duration,
) -> Result<(), IndexError> {
    run(env, vec![index::set_state(key, value)], timeout)
        .await
        .map(|_| ())
}

/// Up to `limit` labs a bulk selector matches after `after`, in lab id order.
pub async fn bulk_page(
    env: &Env,
    selector: &crate::lab::fleet::bulk::Selector,
    after: Option<&str>,
    limit: u32,
    timeout: Duration,
) -> Result<Vec<crate::lab::fleet::bulk::Candidate>, IndexError> {
    let found = rows(env, vec![index::bulk_page(selector, after, limit)], timeout).await?;
    typed("bulk_page", found)
}

/// How many labs a bulk selector matches.
pub async fn bulk_count(
    env: &Env,
    selector: &crate::lab::fleet::bulk::Selector,
    timeout: Duration,
) -> Result<u64, IndexError> {
    let found = rows(env, vec![index::bulk_count(selector)], timeout).await?;
    Ok(one::<rows::Count>("bulk_count", found)?.n)
}
