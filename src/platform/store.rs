//! The object's storage: the only code that reads or writes it, counting its operations.

use std::cell::Cell;

use chrono::{DateTime, Utc};
use wasm_bindgen::JsValue;
use worker::js_sys::{Array, Map};
use worker::{console_debug, Result, State, Storage};

use crate::lab::cleanup::LOG_PREFIX;
use crate::lab::legacy::{LegacyRecord, LegacyValue, LEGACY_KEYS};
use crate::lab::session::Session;

/// Storage key of the session record (one JSON string, written in one operation).
const SESSION_KEY: &str = "session";

/// What an object's storage holds.
pub enum Stored {
    /// A session record in this worker's format.
    Session(Session),
    /// No session record, but the TypeScript worker's keys (see `lab::legacy`).
    Legacy(LegacyRecord),
    /// Nothing at all.
    Empty,
}

/// The object's storage as one request or alarm uses it, counting its operations (reported at
/// debug level, and measured by the benchmark).
pub struct Store {
    storage: Storage,
    reads: Cell<u32>,
    writes: Cell<u32>,
}

fn alarm_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Store {
    pub fn new(state: &State) -> Self {
        Self {
            storage: state.storage(),
            reads: Cell::new(0),
            writes: Cell::new(0),
        }
    }

    fn count(cell: &Cell<u32>, n: u32) {
        cell.set(cell.get() + n);
    }

    /// Reads the session record and the legacy keys in one operation.
    pub async fn load(&self) -> Result<Stored> {
        Self::count(&self.reads, 1);
        let keys: Vec<&str> = std::iter::once(SESSION_KEY).chain(LEGACY_KEYS).collect();
        let found: Map = self.storage.get_multiple(keys).await?;
        let get = |key: &str| found.get(&JsValue::from_str(key));
        if let Some(text) = get(SESSION_KEY).as_string() {
            return serde_json::from_str(&text)
                .map(Stored::Session)
                .map_err(|e| {
                    worker::Error::RustError(format!("stored session is unreadable: {e}"))
                });
        }
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
    pub async fn alarm(&self) -> Result<Option<i64>> {
        Self::count(&self.reads, 1);
        self.storage.get_alarm().await
    }

    /// Writes the record and its alarm (`None`: no alarm) in one batch: both calls are issued in
    /// the same turn, so the runtime coalesces them into one atomic write.
    pub async fn save(&self, session: &Session, alarm_at_ms: Option<i64>) -> Result<()> {
        let text = serde_json::to_string(session)?;
        Self::count(&self.writes, 2);
        let (put, alarm) = futures::join!(
            self.storage.put(SESSION_KEY, text),
            self.alarm_write(alarm_at_ms)
        );
        put.and(alarm)
    }

    async fn alarm_write(&self, at_ms: Option<i64>) -> Result<()> {
        match at_ms {
            Some(at) => self.storage.set_alarm(alarm_time(at)).await,
            None => self.storage.delete_alarm().await,
        }
    }

    /// Writes an adopted legacy lab in this worker's format with its alarm, and removes the
    /// legacy keys, all in one batch (the same turn): the lab is never in both formats or none.
    pub async fn adopt(&self, session: &Session, alarm_at_ms: i64) -> Result<()> {
        let text = serde_json::to_string(session)?;
        Self::count(&self.writes, 3);
        let (put, alarm, deleted) = futures::join!(
            self.storage.put(SESSION_KEY, text),
            self.storage.set_alarm(alarm_time(alarm_at_ms)),
            self.storage.delete_multiple(LEGACY_KEYS.to_vec())
        );
        put.and(alarm).and(deleted.map(|_| ()))
    }

    pub async fn set_alarm(&self, at_ms: i64) -> Result<()> {
        Self::count(&self.writes, 1);
        self.storage.set_alarm(alarm_time(at_ms)).await
    }

    /// Forgets everything, alarm included (`deleteAll()` removes the alarm too for compatibility
    /// dates from 2026-02-24).
    pub async fn delete_all(&self) -> Result<()> {
        Self::count(&self.writes, 1);
        self.storage.delete_all().await
    }

    pub fn report(&self, what: &str) {
        console_debug!(
            "{LOG_PREFIX} storage ops for {what}: {} read(s), {} write(s)",
            self.reads.get(),
            self.writes.get()
        );
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
