//! The object's storage: the only code that reads or writes it, counting its operations.
//!
//! It calls the runtime's storage API directly (`worker_sys`): the writes of one batch are issued
//! in the same turn, so the runtime commits them as one atomic write, and the batch is awaited
//! once (`Promise.all`) instead of once per operation.

use std::rc::Rc;

use wasm_bindgen::{JsCast, JsValue};
use worker::js_sys::{Array, Date, Map, Object, Promise};
use worker::wasm_bindgen_futures::JsFuture;
use worker::worker_sys::DurableObjectStorage;

use crate::lab::legacy::{LegacyRecord, LegacyValue, LEGACY_KEYS};
use crate::lab::ports::{StoreError, Stored};
use crate::platform::usage::{add, Usage};

/// Storage key of the session record (one JSON string, written in one operation).
const SESSION_KEY: &str = "session";
/// Storage key of a worker VM's claim (`lab::session::claim`): never beside a record.
const CLAIM_KEY: &str = "claim";

/// Which of the two keys the last read found, so that a write of one removes the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Record,
    Claim,
    Neither,
}

/// The object's storage as one request or alarm uses it, counting its operations and rows in
/// the invocation's `Usage`.
pub struct Store {
    storage: DurableObjectStorage,
    usage: Rc<Usage>,
    seen: std::cell::Cell<Seen>,
}

fn js(e: JsValue) -> StoreError {
    StoreError(worker::Error::from(e).to_string())
}

/// Waits for every promise of a batch.
async fn all(promises: &[Promise]) -> Result<(), StoreError> {
    let array: Array = promises.iter().collect();
    JsFuture::from(Promise::all(&array))
        .await
        .map(|_| ())
        .map_err(js)
}

impl Store {
    pub fn new(storage: &DurableObjectStorage, usage: Rc<Usage>) -> Self {
        Self {
            storage: JsValue::from(storage).unchecked_into(),
            usage,
            seen: std::cell::Cell::new(Seen::Neither),
        }
    }

    /// Counts one read operation of `rows` rows.
    fn read(&self, rows: u64) {
        add(&self.usage.storage_reads, 1);
        add(&self.usage.rows_read, rows);
    }

    /// Counts one batch of `operations` writes, `rows` rows in all.
    fn wrote(&self, operations: u64, rows: u64) {
        add(&self.usage.storage_writes, operations);
        add(&self.usage.rows_written, rows);
    }

    /// Reads the session record, a claim and the legacy keys in one operation.
    pub async fn load(&self) -> Result<Stored, StoreError> {
        self.read(2 + LEGACY_KEYS.len() as u64);
        let keys: Vec<JsValue> = [SESSION_KEY, CLAIM_KEY]
            .into_iter()
            .chain(LEGACY_KEYS)
            .map(JsValue::from_str)
            .collect();
        let found: Map = JsFuture::from(self.storage.get_multiple(keys).map_err(js)?)
            .await
            .map_err(js)?
            .dyn_into()
            .map_err(js)?;
        let get = |key: &str| found.get(&JsValue::from_str(key));
        if let Some(text) = get(SESSION_KEY).as_string() {
            self.seen.set(Seen::Record);
            return Ok(Stored::Record(text));
        }
        if let Some(text) = get(CLAIM_KEY).as_string() {
            self.seen.set(Seen::Claim);
            return Ok(Stored::Claim(text));
        }
        self.seen.set(Seen::Neither);
        let legacy = LegacyRecord {
            lab_request_id: legacy_value(get(LEGACY_KEYS[0])),
            user_id: legacy_value(get(LEGACY_KEYS[1])),
            worker_lab_request_ids: legacy_value(get(LEGACY_KEYS[2])),
            duration: legacy_value(get(LEGACY_KEYS[3])),
        };
        Ok(if legacy.is_present() {
            Stored::Legacy(legacy)
        } else {
            Stored::Empty
        })
    }

    /// The time the object's alarm is set for, if any (not while the alarm handler runs).
    pub async fn alarm(&self) -> Result<Option<i64>, StoreError> {
        // The alarm's time is not a row of the storage's tables.
        self.read(0);
        let at = JsFuture::from(self.storage.get_alarm(Object::new()).map_err(js)?)
            .await
            .map_err(js)?;
        Ok(at.as_f64().map(|ms| ms as i64))
    }

    fn put_record(&self, record: &str) -> Result<Promise, StoreError> {
        self.storage
            .put(SESSION_KEY, JsValue::from_str(record))
            .map_err(js)
    }

    fn write_alarm(&self, at_ms: Option<i64>) -> Result<Promise, StoreError> {
        match at_ms {
            Some(at) => self
                .storage
                .set_alarm(Date::new(&JsValue::from_f64(at as f64)), Object::new()),
            None => self.storage.delete_alarm(Object::new()),
        }
        .map_err(js)
    }

    /// Writes the record and its alarm (`None`: no alarm) in one atomic batch, removing the
    /// claim the last read found.
    pub async fn save(&self, record: &str, alarm_at_ms: Option<i64>) -> Result<(), StoreError> {
        self.write(Some((Seen::Record, record)), alarm_at_ms).await
    }

    /// A value (`Seen::Record` or `Seen::Claim`, its text; `None`: the alarm alone) and the
    /// alarm in one atomic batch, removing the other of the two keys the last read found. An
    /// alarm already set for that time is not written again (a row written fewer: a save of a
    /// delivery or a warning keeps the wake-up it had; a fresh claim owes none); the read and
    /// the batch are one step for the object, whose input gate holds other events back while
    /// storage answers. The alarm is read before any write is issued, so that the batch's
    /// writes are all issued in one turn (one atomic write).
    async fn write(
        &self,
        value: Option<(Seen, &str)>,
        alarm_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let alarm_moves = self.alarm().await? != alarm_at_ms;
        let mut batch = Vec::new();
        if let Some((kind, text)) = value {
            let (key, other, other_key) = match kind {
                Seen::Claim => (CLAIM_KEY, Seen::Record, SESSION_KEY),
                Seen::Record | Seen::Neither => (SESSION_KEY, Seen::Claim, CLAIM_KEY),
            };
            batch.push(self.storage.put(key, JsValue::from_str(text)).map_err(js)?);
            if self.seen.get() == other {
                batch.push(self.storage.delete(other_key).map_err(js)?);
            }
        }
        if alarm_moves {
            batch.push(self.write_alarm(alarm_at_ms)?);
        }
        self.wrote(batch.len() as u64, batch.len() as u64);
        all(&batch).await?;
        if let Some((kind, _)) = value {
            self.seen.set(kind);
        }
        Ok(())
    }

    /// Writes a claim and its alarm in one atomic batch, removing the record the last read
    /// found.
    pub async fn save_claim(
        &self,
        claim: &str,
        alarm_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.write(Some((Seen::Claim, claim)), alarm_at_ms).await
    }

    /// Writes an adopted legacy lab in this worker's format with its alarm, and removes the
    /// legacy keys, in one atomic batch: the lab is never in both formats, or in none.
    pub async fn adopt(&self, record: &str, alarm_at_ms: i64) -> Result<(), StoreError> {
        self.wrote(3, 2 + LEGACY_KEYS.len() as u64);
        let keys: Vec<JsValue> = LEGACY_KEYS.iter().map(|k| JsValue::from_str(k)).collect();
        let batch = [
            self.put_record(record)?,
            self.write_alarm(Some(alarm_at_ms))?,
            self.storage.delete_multiple(keys).map_err(js)?,
        ];
        all(&batch).await
    }

    /// Writes the record alone.
    pub async fn put(&self, record: &str) -> Result<(), StoreError> {
        self.wrote(1, 1);
        all(&[self.put_record(record)?]).await
    }

    /// Sets the alarm, unless it is set for that time already.
    pub async fn set_alarm(&self, at_ms: i64) -> Result<(), StoreError> {
        self.write(None, Some(at_ms)).await
    }

    /// Forgets everything, alarm included (`deleteAll()` removes the alarm too for compatibility
    /// dates from 2026-02-24).
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        // The record, and the alarm if one is set (it is not while the alarm handler that
        // purges runs): the only rows a lab's object holds.
        let alarm = u64::from(self.alarm().await?.is_some());
        self.wrote(1, 1 + alarm);
        all(&[self.storage.delete_all().map_err(js)?]).await
    }
}

/// A JavaScript value read from a legacy key, reduced to what adoption needs.
fn legacy_value(value: JsValue) -> LegacyValue {
    if value.is_undefined() {
        LegacyValue::Missing
    } else if let Some(text) = value.as_string() {
        LegacyValue::Text(text)
    } else if let Some(n) = value.as_f64() {
        LegacyValue::Number(n)
    } else if value.is_null() {
        LegacyValue::Other("null")
    } else if Array::is_array(&value) {
        LegacyValue::Other("array")
    } else if value.as_bool().is_some() {
        LegacyValue::Other("boolean")
    } else if value.is_bigint() {
        LegacyValue::Other("bigint")
    } else {
        LegacyValue::Other("object")
    }
}
