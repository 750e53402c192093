//! What one invocation used, counted as it goes: its ledger against the plan (`lab::invocation`), logged as one structured `invocation` line; and, at debug level when `LOG_STORAGE_OPS` is on, its storage operations (the benchmark prices a lab from these lines, docs/PERFORMANCE.md).

use std::cell::{Cell, RefCell};

use crate::lab::config::Config;
use crate::lab::invocation::{Exceeded, InvocationRecord, Ledger, Meter};

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
    /// The invocation against its plan's limits.
    pub ledger: RefCell<Ledger>,
    plan: &'static str,
}

/// Adds `n` to a counter.
pub fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().saturating_add(n));
}

impl Usage {
    pub fn start(config: &Config) -> Self {
        let started_ms = worker::js_sys::Date::now();
        Self {
            ledger: RefCell::new(Ledger::new(
                config.limits(),
                config.enforce_plan_limits,
                started_ms as i64,
            )),
            plan: config.plan.name(),
            started_ms,
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

    /// Charges one call (or `n`) to the ledger: `Err` (the platform's words) when it is past the
    /// plan's limit and `ENFORCE_PLAN_LIMITS` is on.
    pub fn charge(&self, meter: Meter, n: u64) -> Result<(), Exceeded> {
        self.ledger.borrow_mut().charge(meter, n)
    }

    /// Charges one call to another object (a lab's, a job's, the budget's coordinator): a call
    /// to a service.
    pub fn object_call(&self) -> Result<(), Exceeded> {
        self.charge(Meter::Service, 1)?;
        add(&self.object_calls, 1);
        Ok(())
    }

    pub fn left(&self, meter: Meter) -> u64 {
        self.ledger.borrow().left(meter)
    }

    pub fn started_ms(&self) -> i64 {
        self.started_ms as i64
    }

    /// Logs the invocation's one structured line (`event: invocation`), `kind` naming it.
    pub fn record(&self, kind: &str) {
        self.record_request(kind, None);
    }

    /// `record` for an API route: `token` says which value of the caller's token was presented.
    pub fn record_request(&self, kind: &str, token: Option<&'static str>) {
        let mut record = InvocationRecord::new(
            kind,
            &self.ledger.borrow(),
            self.plan,
            worker::js_sys::Date::now() as i64,
            self.rows_written.get(),
            self.d1_rows_written.get(),
        );
        record.token = token;
        crate::platform::runtime::log_object(&record);
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
