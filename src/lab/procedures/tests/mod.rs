//! Native tests of the procedures against a fake world: in-memory storage, index, webhook receiver and backend, each able to fail on purpose, and a clock the tests move.

mod bounds;
mod budget;
mod claims;
mod cost;
mod faults;
mod limits;
mod links;
mod requests;
mod stage;
mod timeline;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use futures::executor::block_on;

use crate::lab::config::Config;
use crate::lab::index::IndexRow;
use crate::lab::legacy::LegacyRecord;
use crate::lab::ports::Power;
use crate::lab::ports::{
    BackendError, BackendReply, Delivery, FleetIndex, LabBackend, Level, Logger, RecordStore,
    Runtime, StoreError, Stored, WebhookSender,
};
use crate::lab::procedures::{Lab, Reply, Request};
use crate::lab::session::{NewSession, Session, Status};

/// 2026-11-30T00:00:00Z.
pub const T0: i64 = 1_796_083_200_000;
pub const SECOND: i64 = 1_000;
pub const MINUTE: i64 = 60_000;
/// Alarms in a row that may fire at once without progress before `World::run` calls it a loop.
pub const LOOP_LIMIT: usize = 5;

/// Other events, run while a request to another object waits for its answer.
pub type Meanwhile = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>>;

/// How a storage crash is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The operation fails and changes nothing.
    Before,
    /// A write lands, then the invocation dies (its answer is lost).
    After,
}

/// One backend call, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub services: bool,
    pub id: String,
    pub at: i64,
    pub status: u16,
}

/// The fake world: every port in memory, faults on demand.
pub struct World {
    pub config: Config,
    pub now: Cell<i64>,
    pub seed: Cell<u64>,
    // storage
    pub record: RefCell<Option<String>>,
    pub legacy: RefCell<Option<LegacyRecord>>,
    /// A claim on this object's VM (`lab::session::claim`), as stored.
    pub claim: RefCell<Option<String>>,
    /// The worker VMs a create is claiming (the object's memory).
    pub claiming: RefCell<Vec<String>>,
    /// Every object of the test by name (`Labs`), shared by all of them; and every request this
    /// one sent.
    pub peers: Rc<RefCell<HashMap<String, Rc<World>>>>,
    pub sent: RefCell<Vec<(String, Request)>>,
    /// Every other object fails to answer.
    pub peers_down: Cell<bool>,
    /// Runs once, in the middle of the request to a peer whose number (1-based, counted in
    /// `sent`) it names: other events meanwhile.
    pub during_send: RefCell<Option<(usize, Meanwhile)>>,
    pub alarm: Cell<Option<i64>>,
    pub saved: RefCell<Vec<String>>,
    /// Storage operations so far, and the one that crashes (1-based), if any.
    pub ops: Cell<usize>,
    pub crash_at: Cell<Option<(usize, Crash)>>,
    /// The invocation crashed: every further operation of it fails (the next one starts anew).
    dead: Cell<bool>,
    /// A value longer than this (UTF-16 bytes) is refused, as `SQLITE_TOOBIG` would.
    pub max_value_bytes: Cell<Option<usize>>,
    // index
    pub rows: RefCell<HashMap<String, IndexRow>>,
    /// The worker VMs' rows (`vms`): which lab lists each, and at which revision (written at a
    /// lab's first row, as `index::upsert_all` writes them).
    pub vm_rows: RefCell<HashMap<String, (String, u64)>>,
    pub index_down: Cell<bool>,
    // webhooks
    pub deliveries: RefCell<Vec<Delivery>>,
    pub receiver_down: Cell<bool>,
    // backend
    pub calls: RefCell<Vec<Call>>,
    /// Statuses each VM answers, in turn (then 200 once, then 404: it is gone).
    pub scripts: RefCell<HashMap<String, VecDeque<u16>>>,
    pub gone: RefCell<BTreeMap<String, i64>>,
    pub error_body: RefCell<String>,
    /// Runs a delivery in the middle of the next VM deletion (another event of the object).
    pub deliver_during_delete: Cell<bool>,
    /// The fleet's budget (`None`: off), and the most permits out at once.
    pub budget: RefCell<Option<crate::lab::fleet::budget::Allocator>>,
    /// The budget says wait to this many more asks (whatever `budget` says).
    pub budget_waits: Cell<u32>,
    pub permits_peak: Cell<usize>,
    /// What each `acquire` said it wanted, in order.
    pub permits_wanted: RefCell<Vec<usize>>,
    /// The activity noted in the object's memory (`evict` forgets it), and the record-only
    /// writes.
    pub noted: Cell<Option<i64>>,
    pub puts: Cell<usize>,
    /// The object's memory of held webhook events and of the index revision written
    /// (`evict` forgets them).
    pub queued: Cell<bool>,
    pub index_written: Cell<u64>,
    /// Storage rows written as the platform's store counts them (a key or an alarm written or
    /// deleted: a row), and the fleet index's writes (an upsert or a delete, each a batch).
    pub storage_rows: Cell<u64>,
    pub index_writes: Cell<u64>,
    // the invocation's ledger, and what each invocation used (the latest last)
    pub ledger: RefCell<crate::lab::invocation::Ledger>,
    pub used: RefCell<Vec<crate::lab::invocation::ledger::Used>>,
    /// Calls the plan refused (`ENFORCE_PLAN_LIMITS`): none may happen.
    pub exceeded: Cell<usize>,
    /// How long each backend call takes (the clock moves by it), and one that times out.
    pub call_ms: Cell<i64>,
    pub timeout_ms: Cell<i64>,
    /// VMs whose deletion gets no answer until the clock reaches this time (the call waits,
    /// letting the rest of the invocation run meanwhile).
    pub answer_at: RefCell<HashMap<String, i64>>,
    /// Stop and start calls (the grace stage): each with its VM, time and answer; and the
    /// statuses each VM's power calls answer, in turn (then 200).
    pub powers: RefCell<Vec<(Power, String, i64, u16)>>,
    pub power_scripts: RefCell<HashMap<String, VecDeque<u16>>>,
    /// A request the object answers in the middle of the next power call (another event).
    pub request_during_power: RefCell<Option<Request>>,
    /// Each power call gives way once before it answers (other requests of the object run
    /// meanwhile, as on workerd while a call is in flight).
    pub power_yields: Cell<bool>,
    /// A request the object answers while a webhook is being sent (once).
    pub request_during_send: RefCell<Option<Request>>,
    /// The invocation is cut short right after a webhook is sent (once).
    pub die_after_send: Cell<bool>,
    /// The object is evicted right after a request's answer, before its index row is written
    /// (once).
    pub evict_after_answer: Cell<bool>,
    // log
    pub lines: RefCell<Vec<(Level, String)>>,
    pub records: RefCell<Vec<serde_json::Value>>,
}

pub fn config(pairs: &[(&str, &str)]) -> Config {
    let mut all: HashMap<String, String> = [
        ("BACKEND_URL", "https://backend.test"),
        ("EXPIRY_SPREAD_SECONDS", "0"),
        ("CLEANUP_RETRY_SECONDS", "300"),
        ("WEBHOOK_URL", "https://hooks.test/labs"),
        ("WEBHOOK_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in pairs {
        all.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|name| all.get(name).cloned()).expect("a valid test configuration")
}

pub fn lab(id: &str, workers: &[&str], duration: u64) -> NewSession {
    NewSession {
        lab_request_id: id.into(),
        user_id: "student-1".into(),
        worker_lab_request_ids: workers.iter().map(|w| w.to_string()).collect(),
        duration,
        vm_name: Some("k8s-master".into()),
        idle_timeout: None,
        labels: Default::default(),
        keep_stopped_minutes: None,
    }
}

impl World {
    pub fn new(config: Config) -> World {
        let ledger =
            crate::lab::invocation::Ledger::new(config.limits(), config.enforce_plan_limits, T0);
        World {
            config,
            now: Cell::new(T0),
            seed: Cell::new(42),
            record: RefCell::new(None),
            legacy: RefCell::new(None),
            claim: RefCell::new(None),
            claiming: RefCell::new(Vec::new()),
            peers: Rc::new(RefCell::new(HashMap::new())),
            sent: RefCell::new(Vec::new()),
            peers_down: Cell::new(false),
            during_send: RefCell::new(None),
            alarm: Cell::new(None),
            saved: RefCell::new(Vec::new()),
            ops: Cell::new(0),
            crash_at: Cell::new(None),
            dead: Cell::new(false),
            max_value_bytes: Cell::new(None),
            rows: RefCell::new(HashMap::new()),
            vm_rows: RefCell::new(HashMap::new()),
            index_down: Cell::new(false),
            deliveries: RefCell::new(Vec::new()),
            receiver_down: Cell::new(false),
            calls: RefCell::new(Vec::new()),
            scripts: RefCell::new(HashMap::new()),
            gone: RefCell::new(BTreeMap::new()),
            error_body: RefCell::new("{\"error\":\"busy\"}".into()),
            deliver_during_delete: Cell::new(false),
            budget: RefCell::new(None),
            budget_waits: Cell::new(0),
            permits_peak: Cell::new(0),
            permits_wanted: RefCell::new(Vec::new()),
            noted: Cell::new(None),
            puts: Cell::new(0),
            queued: Cell::new(false),
            index_written: Cell::new(0),
            storage_rows: Cell::new(0),
            index_writes: Cell::new(0),
            ledger: RefCell::new(ledger),
            used: RefCell::new(Vec::new()),
            exceeded: Cell::new(0),
            call_ms: Cell::new(0),
            timeout_ms: Cell::new(0),
            answer_at: RefCell::new(HashMap::new()),
            powers: RefCell::new(Vec::new()),
            power_scripts: RefCell::new(HashMap::new()),
            request_during_power: RefCell::new(None),
            power_yields: Cell::new(false),
            request_during_send: RefCell::new(None),
            die_after_send: Cell::new(false),
            evict_after_answer: Cell::new(false),
            lines: RefCell::new(Vec::new()),
            records: RefCell::new(Vec::new()),
        }
    }

    /// Counts `rows` storage rows written.
    fn wrote(&self, rows: u64) {
        self.storage_rows.set(self.storage_rows.get() + rows);
    }

    /// Answers the request waiting in `slot` (once), as the object would while a call of its
    /// own is in flight.
    async fn answer_meanwhile(&self, slot: &RefCell<Option<Request>>) {
        let meanwhile = slot.borrow_mut().take();
        if let Some(request) = meanwhile {
            self.lab()
                .answer(request)
                .await
                .expect("the request meanwhile");
        }
    }

    /// The object is evicted: what it kept in memory is gone.
    pub fn evict(&self) {
        self.noted.set(None);
        self.queued.set(false);
        self.index_written.set(0);
        self.claiming.borrow_mut().clear();
    }

    /// A world that other objects reach as `name` (`Labs`).
    pub fn named(config: Config, name: &str) -> Rc<World> {
        let world = Rc::new(World::new(config));
        world
            .peers
            .borrow_mut()
            .insert(name.to_string(), world.clone());
        world
    }

    /// The object named `name` in this world's fleet (a new, empty one the first time), with
    /// this world's settings and clock.
    pub fn peer(&self, name: &str) -> Rc<World> {
        if let Some(peer) = self.peers.borrow().get(name) {
            peer.now.set(self.now.get());
            return peer.clone();
        }
        let mut peer = World::new(self.config.clone());
        peer.peers = self.peers.clone();
        peer.now.set(self.now.get());
        let peer = Rc::new(peer);
        self.peers
            .borrow_mut()
            .insert(name.to_string(), peer.clone());
        peer
    }

    pub fn lab(&self) -> Lab<'_, World> {
        Lab::new(self, &self.config)
    }

    pub fn session(&self) -> Option<Session> {
        self.record
            .borrow()
            .as_ref()
            .map(|text| Session::decode(text).expect("a readable record"))
    }

    pub fn request(&self, request: Request) -> Result<Reply, StoreError> {
        self.invocation();
        let reply = block_on(self.lab().answer(request));
        if let Ok(Reply::Lab {
            line: Some((level, line)),
            ..
        }) = &reply
        {
            // After the answer: the line, the index row.
            self.log(*level, line);
            if self.evict_after_answer.replace(false) {
                self.evict();
            } else {
                let _ = block_on(self.lab().sync_index());
            }
        }
        reply
    }

    pub fn create(&self, new: NewSession) -> Session {
        match self.request(Request::Create(new)).expect("create") {
            Reply::Lab { session, .. } => *session,
            other => panic!("create refused: {other:?}"),
        }
    }

    /// `VM id` answers these statuses, in turn, before it is deleted.
    pub fn script(&self, id: &str, statuses: &[u16]) {
        self.scripts
            .borrow_mut()
            .insert(id.into(), statuses.iter().copied().collect());
    }

    /// Runs the object as the platform would until nothing is left to do or `until` passes:
    /// the alarm fires when due (a failed alarm is run again 2 s later), the deliveries run
    /// after it, the clock moves. After every invocation, the alarm is set whenever work remains,
    /// and the object makes progress: an alarm that sets the next one at or before its own time
    /// without a backend call, a change of status or a new attempt is a loop, and fails the
    /// test within `LOOP_LIMIT` alarms (it never hangs). The alarms that fired.
    pub fn run(&self, until: i64) -> usize {
        let mut stalled = 0;
        for fired in 0..100_000 {
            let Some(at) = self.alarm.get() else {
                return fired;
            };
            if at > until {
                return fired;
            }
            self.now.set(self.now.get().max(at));
            self.alarm.set(None);
            let before = self.progress();
            self.invocation();
            match block_on(self.lab().alarm()) {
                Ok(done) => {
                    if done.deliver {
                        // In the background, after the alarm's own work.
                        let _ = block_on(self.lab().deliver_due());
                    }
                }
                Err(_) => {
                    // The platform runs a failed alarm again (workerd: from 2 s).
                    if self.alarm.get().is_none() {
                        self.alarm.set(Some(self.now.get() + 2 * SECOND));
                    }
                }
            }
            self.check_alarm_while_work_remains();
            let again_now = self.alarm.get().is_some_and(|next| next <= self.now.get());
            stalled = if again_now && self.progress() == before {
                stalled + 1
            } else {
                0
            };
            assert!(
                stalled < LOOP_LIMIT,
                "alarm loop: {stalled} alarms at {} set the next one at once and changed nothing ({:?})",
                self.now.get(),
                self.session().map(|s| s.status())
            );
        }
        panic!("the object never went quiet");
    }

    /// What an alarm's progress is measured by: backend calls made, the lab's status, its
    /// attempts (cleanup and stop).
    pub(crate) fn progress(&self) -> (usize, usize, Option<Status>, u32, u32) {
        let s = self.session();
        (
            self.calls.borrow().len(),
            self.powers.borrow().len(),
            s.as_ref().map(|s| s.status()),
            s.as_ref().map_or(0, |s| s.cleanup.attempts),
            s.as_ref().map_or(0, |s| s.stop.attempts),
        )
    }

    /// The one invariant after any invocation: while the lab has work left (a VM to delete, an
    /// event to deliver, an index row owed, a record to purge), its alarm is set.
    pub fn check_alarm_while_work_remains(&self) {
        if let Some(s) = self.session() {
            assert!(
                self.alarm.get().is_some(),
                "no alarm while the record holds work: {:?} at {}",
                s.status(),
                self.now.get()
            );
        }
    }

    /// The VMs the backend deleted (2xx), with when.
    pub fn deleted(&self) -> BTreeMap<String, i64> {
        self.gone.borrow().clone()
    }

    pub fn vm_calls(&self, id: &str) -> Vec<Call> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| !c.services && c.id == id)
            .cloned()
            .collect()
    }

    pub fn log_has(&self, needle: &str) -> bool {
        self.lines.borrow().iter().any(|(_, l)| l.contains(needle))
    }

    pub fn delivered_types(&self) -> Vec<String> {
        self.deliveries
            .borrow()
            .iter()
            .map(|d| {
                let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
                v["type"].as_str().unwrap().to_string()
            })
            .collect()
    }

    fn op(&self) -> Result<Option<Crash>, StoreError> {
        if self.dead.get() {
            return Err(StoreError("the invocation is gone".into()));
        }
        let n = self.ops.get() + 1;
        self.ops.set(n);
        match self.crash_at.get() {
            Some((at, Crash::Before)) if at == n => {
                self.dead.set(true);
                Err(StoreError("crashed".into()))
            }
            Some((at, Crash::After)) if at == n => {
                self.dead.set(true);
                Ok(Some(Crash::After))
            }
            _ => Ok(None),
        }
    }

    /// A new invocation of the object (a request, an alarm, a background task).
    pub fn invocation(&self) {
        self.dead.set(false);
        let fresh = crate::lab::invocation::Ledger::new(
            self.config.limits(),
            self.config.enforce_plan_limits,
            self.now.get(),
        );
        let done = self.ledger.replace(fresh);
        if done.used() != Default::default() {
            self.used.borrow_mut().push(done.used());
        }
    }

    /// Charges a call to the invocation's ledger; the platform's words when the plan refuses.
    fn charge(&self, meter: crate::lab::invocation::Meter, n: u64) -> Result<(), String> {
        self.ledger.borrow_mut().charge(meter, n).map_err(|e| {
            self.exceeded.set(self.exceeded.get() + 1);
            e.to_string()
        })
    }

    /// The most any invocation used so far, per meter (the current one included).
    pub fn peak(&self) -> crate::lab::invocation::ledger::Used {
        let mut peak = self.ledger.borrow().used();
        for u in self.used.borrow().iter() {
            peak.external = peak.external.max(u.external);
            peak.services = peak.services.max(u.services);
            peak.d1 = peak.d1.max(u.d1);
        }
        peak
    }

    fn after(crash: Option<Crash>) -> Result<(), StoreError> {
        match crash {
            Some(Crash::After) => Err(StoreError("crashed after the write".into())),
            _ => Ok(()),
        }
    }

    fn next_random(&self) -> f64 {
        // xorshift64: deterministic "randomness" for the tests.
        let mut x = self.seed.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A scripted status of `TIMEOUT` stands for a call that got no answer in time.
    pub const TIMEOUT: u16 = 0;

    fn backend_call(&self, services: bool, id: &str) -> Result<BackendReply, BackendError> {
        if self.dead.get() {
            // The invocation crashed: its calls not made yet never are.
            return Err(BackendError::Network("the invocation is gone".into()));
        }
        self.charge(crate::lab::invocation::Meter::External, 1)
            .map_err(BackendError::Network)?;
        let status = if services {
            200
        } else if self.gone.borrow().contains_key(id) {
            404
        } else {
            let scripted = self
                .scripts
                .borrow_mut()
                .get_mut(id)
                .and_then(|s| s.pop_front());
            let status = scripted.unwrap_or(200);
            if (200..300).contains(&status) {
                self.gone.borrow_mut().insert(id.into(), self.now.get());
            }
            status
        };
        self.now.set(
            self.now.get()
                + if status == Self::TIMEOUT {
                    self.timeout_ms.get()
                } else {
                    self.call_ms.get()
                },
        );
        self.calls.borrow_mut().push(Call {
            services,
            id: id.into(),
            at: self.now.get(),
            status,
        });
        if status == Self::TIMEOUT {
            return Err(BackendError::Timeout(15));
        }
        Ok(BackendReply {
            status,
            body: if (200..300).contains(&status) {
                String::new()
            } else {
                self.error_body.borrow().clone()
            },
            retry_after: None,
        })
    }
}

impl RecordStore for World {
    async fn load(&self) -> Result<Stored, StoreError> {
        self.op()?;
        if let Some(text) = self.record.borrow().clone() {
            return Ok(Stored::Record(text));
        }
        if let Some(text) = self.claim.borrow().clone() {
            return Ok(Stored::Claim(text));
        }
        Ok(match self.legacy.borrow().clone() {
            Some(legacy) => Stored::Legacy(legacy),
            None => Stored::Empty,
        })
    }

    async fn alarm(&self) -> Result<Option<i64>, StoreError> {
        self.op()?;
        Ok(self.alarm.get())
    }

    async fn save(&self, record: &str, alarm_at_ms: Option<i64>) -> Result<(), StoreError> {
        let crash = self.op()?;
        // As `platform::store` counts: an alarm set for that time already is not written.
        let alarm = u64::from(self.alarm.get() != alarm_at_ms);
        self.wrote(1 + alarm + u64::from(self.claim.borrow().is_some()));
        if let Some(max) = self.max_value_bytes.get() {
            let bytes = record.encode_utf16().count() * 2;
            if bytes > max {
                return Err(StoreError(format!(
                    "SQLITE_TOOBIG: string or blob too big ({bytes} bytes)"
                )));
            }
        }
        *self.record.borrow_mut() = Some(record.to_string());
        *self.claim.borrow_mut() = None;
        self.saved.borrow_mut().push(record.to_string());
        self.alarm.set(alarm_at_ms);
        Self::after(crash)
    }

    async fn save_claim(&self, claim: &str, alarm_at_ms: Option<i64>) -> Result<(), StoreError> {
        let crash = self.op()?;
        // As `platform::store` counts: the alarm only where it moves.
        let alarm = u64::from(self.alarm.get() != alarm_at_ms);
        self.wrote(1 + alarm + u64::from(self.record.borrow().is_some()));
        *self.claim.borrow_mut() = Some(claim.to_string());
        *self.record.borrow_mut() = None;
        self.alarm.set(alarm_at_ms);
        Self::after(crash)
    }

    fn claiming(&self) -> Vec<String> {
        self.claiming.borrow().clone()
    }

    fn set_claiming(&self, vm_ids: Vec<String>) {
        *self.claiming.borrow_mut() = vm_ids;
    }

    fn queued_events(&self) -> bool {
        self.queued.get()
    }

    fn set_queued_events(&self, queued: bool) {
        self.queued.set(queued);
    }

    fn index_written(&self) -> u64 {
        self.index_written.get()
    }

    fn set_index_written(&self, revision: u64) {
        self.index_written.set(revision);
    }

    async fn adopt(&self, record: &str, alarm_at_ms: i64) -> Result<(), StoreError> {
        let crash = self.op()?;
        self.wrote(2 + crate::lab::legacy::LEGACY_KEYS.len() as u64);
        *self.record.borrow_mut() = Some(record.to_string());
        *self.legacy.borrow_mut() = None;
        self.alarm.set(Some(alarm_at_ms));
        Self::after(crash)
    }

    async fn set_alarm(&self, at_ms: i64) -> Result<(), StoreError> {
        let crash = self.op()?;
        self.wrote(u64::from(self.alarm.get() != Some(at_ms)));
        self.alarm.set(Some(at_ms));
        Self::after(crash)
    }

    async fn put(&self, record: &str) -> Result<(), StoreError> {
        let crash = self.op()?;
        self.wrote(1);
        *self.record.borrow_mut() = Some(record.to_string());
        self.saved.borrow_mut().push(record.to_string());
        self.puts.set(self.puts.get() + 1);
        Self::after(crash)
    }

    fn noted_activity(&self) -> Option<i64> {
        self.noted.get()
    }

    fn note_activity(&self, at_ms: i64) {
        self.noted.set(Some(at_ms));
    }

    async fn delete_all(&self) -> Result<(), StoreError> {
        let crash = self.op()?;
        // As `platform::store` counts: the record, and the alarm if one is set.
        self.wrote(1 + u64::from(self.alarm.get().is_some()));
        *self.record.borrow_mut() = None;
        *self.legacy.borrow_mut() = None;
        *self.claim.borrow_mut() = None;
        self.alarm.set(None);
        Self::after(crash)
    }
}

impl FleetIndex for World {
    async fn upsert(
        &self,
        row: &IndexRow,
        vms: &[crate::lab::index::VmRow],
    ) -> Result<(), crate::lab::error::ServiceError> {
        self.charge(crate::lab::invocation::Meter::Service, 1)?;
        self.charge(
            crate::lab::invocation::Meter::D1Query,
            crate::lab::index::upsert_all(row, vms).len() as u64,
        )?;
        if self.index_down.get() {
            return Err("D1_ERROR: no such table: sessions".into());
        }
        self.index_writes.set(self.index_writes.get() + 1);
        let mut rows = self.rows.borrow_mut();
        if rows
            .get(&row.lab_request_id)
            .is_none_or(|existing| existing.revision < row.revision)
        {
            rows.insert(row.lab_request_id.clone(), row.clone());
        }
        if row.first {
            let mut vm_rows = self.vm_rows.borrow_mut();
            for vm in vms {
                let newer = vm_rows.get(&vm.vm_id).is_none_or(|(lab, revision)| {
                    lab == &row.lab_request_id || *revision < row.revision
                });
                if newer {
                    vm_rows.insert(vm.vm_id.clone(), (row.lab_request_id.clone(), row.revision));
                }
            }
        }
        Ok(())
    }

    async fn delete(
        &self,
        lab_request_id: &str,
        vm_ids: &[&str],
        revision: u64,
    ) -> Result<(), crate::lab::error::ServiceError> {
        self.charge(crate::lab::invocation::Meter::Service, 1)?;
        self.charge(
            crate::lab::invocation::Meter::D1Query,
            crate::lab::index::delete(lab_request_id, vm_ids, revision).len() as u64,
        )?;
        if self.index_down.get() {
            return Err("D1_ERROR: no such table: sessions".into());
        }
        self.index_writes.set(self.index_writes.get() + 1);
        let mut rows = self.rows.borrow_mut();
        if rows
            .get(lab_request_id)
            .is_some_and(|r| r.revision <= revision)
        {
            rows.remove(lab_request_id);
            let mut vm_rows = self.vm_rows.borrow_mut();
            for vm in vm_ids {
                if vm_rows
                    .get(*vm)
                    .is_some_and(|(lab, _)| lab == lab_request_id)
                {
                    vm_rows.remove(*vm);
                }
            }
        }
        Ok(())
    }
}

impl WebhookSender for World {
    async fn send(&self, delivery: &Delivery) -> Result<u16, crate::lab::error::ServiceError> {
        self.charge(crate::lab::invocation::Meter::External, 1)?;
        if self.receiver_down.get() {
            return Err("network error: connection refused".into());
        }
        self.answer_meanwhile(&self.request_during_send).await;
        self.deliveries.borrow_mut().push(delivery.clone());
        if self.die_after_send.replace(false) {
            self.dead.set(true);
        }
        Ok(204)
    }
}

impl LabBackend for World {
    async fn power(&self, power: Power, id: &str) -> Result<BackendReply, BackendError> {
        if self.dead.get() {
            return Err(BackendError::Network("the invocation is gone".into()));
        }
        self.charge(crate::lab::invocation::Meter::External, 1)
            .map_err(BackendError::Network)?;
        self.answer_meanwhile(&self.request_during_power).await;
        if self.power_yields.get() {
            Yield(false).await;
        }
        let status = if self.gone.borrow().contains_key(id) {
            404
        } else {
            self.power_scripts
                .borrow_mut()
                .get_mut(id)
                .and_then(|s| s.pop_front())
                .unwrap_or(200)
        };
        self.now.set(self.now.get() + self.call_ms.get());
        self.powers
            .borrow_mut()
            .push((power, id.into(), self.now.get(), status));
        Ok(BackendReply {
            status,
            body: String::new(),
            retry_after: None,
        })
    }

    async fn delete_exposed_services(&self, master_id: &str) -> Result<BackendReply, BackendError> {
        self.backend_call(true, master_id)
    }

    async fn delete_vm(
        &self,
        lab_request_id: &str,
        _user_id: &str,
    ) -> Result<BackendReply, BackendError> {
        let answer_at = self.answer_at.borrow().get(lab_request_id).copied();
        if let Some(at) = answer_at {
            while self.now.get() < at {
                Yield(false).await;
            }
        }
        if self.deliver_during_delete.replace(false) {
            // Another event of the object runs while this call waits for the backend.
            self.lab().deliver_due().await.expect("the delivery");
        }
        self.backend_call(false, lab_request_id)
    }
}

impl crate::lab::ports::Budget for World {
    async fn acquire(
        &self,
        asker: crate::lab::fleet::budget::Asker<'_>,
        priority_ms: i64,
        wanted: usize,
    ) -> crate::lab::ports::Permit {
        use crate::lab::ports::Permit;
        if self.budget_waits.get() > 0 {
            self.budget_waits.set(self.budget_waits.get() - 1);
            return Permit::Wait(2_000);
        }
        if self.budget.borrow().is_some()
            && self
                .charge(crate::lab::invocation::Meter::Service, 1)
                .is_err()
        {
            return Permit::Unlimited;
        }
        self.permits_wanted.borrow_mut().push(wanted);
        let mut budget = self.budget.borrow_mut();
        let Some(allocator) = budget.as_mut() else {
            return Permit::Unlimited;
        };
        let now = self.now.get();
        let ticket = allocator.request(asker, priority_ms, now + 10_000, 1);
        match allocator.grant(now).into_iter().find(|(t, _)| *t == ticket) {
            Some((_, leases)) => {
                let lease = leases[0];
                self.permits_peak
                    .set(self.permits_peak.get().max(allocator.in_flight()));
                Permit::Granted(lease.id)
            }
            None => {
                allocator.cancel(ticket);
                Permit::Wait(2_000)
            }
        }
    }

    fn release(
        &self,
        permit: crate::lab::ports::Permit,
        outcome: crate::lab::fleet::budget::CallOutcome,
    ) {
        if matches!(permit, crate::lab::ports::Permit::Granted(_))
            && self
                .charge(crate::lab::invocation::Meter::Service, 1)
                .is_err()
        {
            return;
        }
        if let (crate::lab::ports::Permit::Granted(lease), Some(allocator)) =
            (permit, self.budget.borrow_mut().as_mut())
        {
            allocator.release(lease, outcome, self.now.get());
        }
    }
}

impl crate::lab::ports::Labs for World {
    async fn call(
        &self,
        lab_request_id: &str,
        request: Request,
    ) -> Result<crate::lab::protocol::Answer, crate::lab::error::ServiceError> {
        let sent = request.clone();
        let (status, body) = self.call_wire(lab_request_id, request).await?;
        crate::lab::protocol::Answer::read(&sent, status, &body.to_string())
    }
}

impl World {
    /// A request to a peer, answered as the object's adapter answers it on the wire.
    async fn call_wire(
        &self,
        lab_request_id: &str,
        request: Request,
    ) -> Result<(u16, serde_json::Value), String> {
        self.charge(crate::lab::invocation::Meter::Service, 1)?;
        self.sent
            .borrow_mut()
            .push((lab_request_id.to_string(), request.clone()));
        let due =
            matches!(&*self.during_send.borrow(), Some((n, _)) if *n == self.sent.borrow().len());
        if due {
            let hook = self.during_send.borrow_mut().take();
            if let Some((_, meanwhile)) = hook {
                meanwhile().await;
            }
        }
        if self.peers_down.get() {
            return Err("Durable Object reset because its code was updated.".into());
        }
        // Every name has an object: a new one, empty, the first time it is reached.
        let peer = self.peer(lab_request_id);
        peer.now.set(self.now.get());
        peer.invocation();
        // Boxed: the peer's procedure may call a peer in turn.
        let answer: std::pin::Pin<Box<dyn std::future::Future<Output = _>>> =
            Box::pin(async move { peer.lab().answer(request).await });
        let reply = answer.await.map_err(|e| e.to_string())?;
        Ok(wire(&reply))
    }
}

/// A reply as the object's adapter answers it: its status and JSON body.
pub fn wire(reply: &Reply) -> (u16, serde_json::Value) {
    use crate::lab::refusal::Refusal;
    match reply {
        Reply::Lab {
            status, session, ..
        } => (*status, serde_json::to_value(session.view()).unwrap()),
        Reply::Refused(refusal) => (
            match refusal {
                Refusal::NotFound => 404,
                Refusal::Conflict(_) => 409,
                Refusal::Invalid(_) => 400,
                Refusal::Unreadable(_) => 500,
                Refusal::Unavailable(_) => 503,
            },
            serde_json::json!({"error": {"message": format!("{refusal:?}")}}),
        ),
        Reply::Events(events) => (200, events.clone()),
        Reply::Noted => (204, serde_json::Value::Null),
        Reply::Poked { revived } => (200, serde_json::json!({ "revived": revived })),
        Reply::Claim(answer) => (200, serde_json::to_value(answer).unwrap()),
        Reply::Owns(answer) => (200, serde_json::to_value(answer).unwrap()),
        Reply::Link { answer, .. } => (200, serde_json::to_value(answer).unwrap()),
    }
}

impl crate::lab::ports::Allowance for World {
    fn left(&self, meter: crate::lab::invocation::Meter) -> u64 {
        self.ledger.borrow().left(meter)
    }
    fn invocation_started_ms(&self) -> i64 {
        self.ledger.borrow().started_ms()
    }
    fn elapsed_ms(&self) -> i64 {
        self.now
            .get()
            .saturating_sub(self.ledger.borrow().started_ms())
    }
}

impl Runtime for World {
    fn now_ms(&self) -> i64 {
        self.now.get()
    }

    fn random(&self) -> f64 {
        self.next_random()
    }

    async fn sleep(&self, ms: u64) {
        self.now.set(self.now.get() + ms as i64);
        // Other futures of the invocation run meanwhile (an attempt waiting for an answer).
        Yield(false).await;
    }
}

impl Logger for World {
    fn log(&self, level: Level, message: &str) {
        self.lines.borrow_mut().push((level, message.to_string()));
    }

    fn record<T: serde::Serialize>(&self, record: &T) {
        self.records
            .borrow_mut()
            .push(serde_json::to_value(record).unwrap());
    }
}

/// The status of the stored lab.
pub fn status(world: &World) -> Option<Status> {
    world.session().map(|s| s.status())
}

/// Gives way once: `Pending` (waking itself at once), then `Ready`.
pub struct Yield(pub bool);

impl std::future::Future for Yield {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
