//! What one invocation of a lab's object used, counted as it goes and logged at debug level when
//! `LOG_STORAGE_OPS` is on: the benchmark prices a lab from these lines (docs/PERFORMANCE.md).

use std::cell::Cell;

use worker::console_debug;

use crate::lab::cleanup::LOG_PREFIX;

/// Counters of one invocation (a request, an alarm, or the work after its answer).
pub struct Usage {
    started_ms: f64,
    /// Storage operations (a batch of writes issued in one turn is one operation).
    pub storage_reads: Cell<u64>,
    pub storage_writes: Cell<u64>,
    /// Rows as Durable Objects' SQLite storage bills them: a key read or written is a row, each
    /// alarm set or deleted is a row written, deletes count as writes.
    pub rows_read: Cell<u64>,
    pub rows_written: Cell<u64>,
    /// D1 batches sent, and the rows D1 reported (`meta.rows_read`, `meta.rows_written`).
    pub d1_batches: Cell<u64>,
    pub d1_rows_read: Cell<u64>,
    pub d1_rows_written: Cell<u64>,
    /// Subrequests: calls to the lab backend, webhook deliveries, calls to the budget's object.
    pub backend_calls: Cell<u64>,
    pub webhook_calls: Cell<u64>,
    pub budget_calls: Cell<u64>,
    /// Calls to other labs' objects (a create's claims, a claim's question to its lab).
    pub object_calls: Cell<u64>,
}

/// Adds `n` to a counter.
pub fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().saturating_add(n));
}

impl Usage {
    pub fn start() -> Self {
        Self {
            started_ms: worker::js_sys::Date::now(),
            storage_reads: Cell::new(0),
            storage_writes: Cell::new(0),
            rows_read: Cell::new(0),
            rows_written: Cell::new(0),
            d1_batches: Cell::new(0),
            d1_rows_read: Cell::new(0),
            d1_rows_written: Cell::new(0),
            backend_calls: Cell::new(0),
            webhook_calls: Cell::new(0),
            budget_calls: Cell::new(0),
            object_calls: Cell::new(0),
        }
    }

    /// Logs the counts at debug level, `what` naming the invocation. The first part keeps the
    /// words of the line this replaced ("storage ops for …: N read(s), M write(s)").
    pub fn report(&self, what: &str) {
        // Whole milliseconds (formatting a float would add float printing to the worker).
        let wall_ms = (worker::js_sys::Date::now() - self.started_ms).max(0.0) as u64;
        console_debug!(
            "{LOG_PREFIX} storage ops for {what}: {} read(s), {} write(s); usage: {wall_ms} ms wall, {} storage row(s) read, {} written, {} D1 batch(es), {} D1 row(s) read, {} written, {} backend call(s), {} webhook call(s), {} budget call(s), {} object call(s)",
            self.storage_reads.get(),
            self.storage_writes.get(),
            self.rows_read.get(),
            self.rows_written.get(),
            self.d1_batches.get(),
            self.d1_rows_read.get(),
            self.d1_rows_written.get(),
            self.backend_calls.get(),
            self.webhook_calls.get(),
            self.budget_calls.get(),
            self.object_calls.get(),
        );
    }
}
