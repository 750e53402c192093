//! Reconciliations against a fake index and fake labs: each class, the grace, acting once, a lab that refuses.

use std::cell::RefCell;
use std::collections::HashMap;

use futures::executor::block_on;

use super::*;
use crate::lab::config::Config;
use crate::lab::fleet::sweep::{pull, CURSOR_KEY};
use crate::lab::fleet::InventorySource;

const NOW: i64 = 1_796_083_200_000;
const MINUTE: i64 = 60_000;

#[derive(Default)]
struct Fake {
    known: Vec<KnownVm>,
    seen: RefCell<HashMap<String, i64>>,
    /// The labs' objects: what each has (orphans scheduled, VMs deleted again).
    orphans: RefCell<Vec<String>>,
    orphan_set: RefCell<std::collections::HashSet<String>>,
    again: RefCell<Vec<(String, String)>>,
    /// Labs whose object answers 409 (a lab of that id that is not an orphan).
    taken: Vec<String>,
    /// Labs the index lists as overdue (for the sweep), and the pokes they got.
    overdue: Vec<String>,
    pokes: RefCell<Vec<String>>,
    saved: RefCell<Vec<Reconciliation>>,
    lines: RefCell<Vec<String>>,
    /// Sightings the table holds besides `seen` (to fill it), and how often it was tidied.
    seen_padding: std::cell::Cell<u64>,
    tidied: std::cell::Cell<u32>,
    /// The backend's inventory: each cursor's answer (`None`: the first page); what was asked.
    pages: RefCell<HashMap<Option<String>, Result<Page, PageError>>>,
    asked: RefCell<Vec<Option<String>>>,
    state: RefCell<HashMap<String, String>>,
    /// The invocation's ledger (`None`: no limit), what each ended invocation used, and the
    /// calls its plan refused.
    ledger: RefCell<Option<crate::lab::invocation::Ledger>>,
    used: RefCell<Vec<crate::lab::invocation::ledger::Used>>,
    exceeded: std::cell::Cell<usize>,
    /// The run's clock: how long it has run, moved by each page read (`page_ms`) and each call
    /// to a lab's object (`call_ms`).
    clock: std::cell::Cell<i64>,
    page_ms: std::cell::Cell<i64>,
    call_ms: std::cell::Cell<i64>,
}

impl Fake {
    /// A new invocation on `limits`, enforced as the platform enforces them.
    fn invocation(&self, limits: crate::lab::invocation::Limits, now: i64) {
        let done = self
            .ledger
            .replace(Some(crate::lab::invocation::Ledger::new(limits, true, now)));
        if let Some(done) = done {
            self.used.borrow_mut().push(done.used());
        }
    }

    fn charge(&self, meter: crate::lab::invocation::Meter, n: u64) -> Result<(), String> {
        match self.ledger.borrow_mut().as_mut() {
            Some(ledger) => ledger.charge(meter, n).map_err(|e| {
                self.exceeded.set(self.exceeded.get() + 1);
                e.to_string()
            }),
            None => Ok(()),
        }
    }

    fn d1(&self, queries: u64) -> Result<(), String> {
        self.charge(crate::lab::invocation::Meter::Service, 1)?;
        self.charge(crate::lab::invocation::Meter::D1Query, queries)
    }
}

impl crate::lab::ports::Allowance for Fake {
    fn left(&self, meter: crate::lab::invocation::Meter) -> u64 {
        self.ledger
            .borrow()
            .as_ref()
            .map_or(u64::MAX, |l| l.left(meter))
    }
    fn invocation_started_ms(&self) -> i64 {
        self.ledger
            .borrow()
            .as_ref()
            .map_or(NOW, |l| l.started_ms())
    }
    fn elapsed_ms(&self) -> i64 {
        self.clock.get()
    }
}

impl FleetStore for Fake {
    async fn lookup(
        &self,
        vm_ids: &[String],
    ) -> Result<Vec<KnownVm>, crate::lab::error::ServiceError> {
        self.d1(1)?;
        // What the labs' objects did shows in the index (their rows follow their answers):
        // an orphan is a lab of its own being cleaned up, a VM deleted again is pending.
        let orphans = self.orphan_set.borrow();
        let again = self.again.borrow();
        // Every lab that lists a VM answers a row, as the index's lookup does.
        let mut rows = Vec::new();
        for id in vm_ids {
            let listed: Vec<&KnownVm> = self.known.iter().filter(|k| &k.vm_id == id).collect();
            if listed.is_empty() && orphans.contains(id) {
                rows.push(known_vm(id, id, VmState::Pending, Status::CleaningUp, NOW));
            }
            for k in listed {
                rows.push(match again.iter().any(|(_, vm)| vm == id) {
                    true => KnownVm {
                        state: VmState::Pending,
                        lab_status: Status::Retrying,
                        ..k.clone()
                    },
                    false => k.clone(),
                });
            }
        }
        Ok(rows)
    }
    async fn first_seen(
        &self,
        vm_ids: &[String],
    ) -> Result<Vec<(String, i64)>, crate::lab::error::ServiceError> {
        self.d1(1)?;
        let seen = self.seen.borrow();
        Ok(vm_ids
            .iter()
            .filter_map(|id| seen.get(id).map(|at| (id.clone(), *at)))
            .collect())
    }
    async fn remember_seen(
        &self,
        vm_ids: &[String],
        now_ms: i64,
    ) -> Result<(), crate::lab::error::ServiceError> {
        if !vm_ids.is_empty() {
            self.d1(1)?;
        }
        let mut seen = self.seen.borrow_mut();
        for id in vm_ids {
            assert!(
                seen.insert(id.clone(), now_ms).is_none(),
                "{id} remembered twice"
            );
        }
        Ok(())
    }
    async fn tidy_seen(&self, now_ms: i64) -> Result<u64, crate::lab::error::ServiceError> {
        self.d1(2)?;
        let mut seen = self.seen.borrow_mut();
        seen.retain(|_, at| *at >= now_ms - crate::lab::index::SEEN_KEPT_MS);
        self.tidied.set(self.tidied.get() + 1);
        Ok(seen.len() as u64 + self.seen_padding.get())
    }
    async fn save_reconciliation(
        &self,
        r: &Reconciliation,
    ) -> Result<(), crate::lab::error::ServiceError> {
        self.d1(2)?;
        self.saved.borrow_mut().push(r.clone());
        Ok(())
    }
    async fn overdue(
        &self,
        _: i64,
        limit: u32,
    ) -> Result<Vec<String>, crate::lab::error::ServiceError> {
        self.d1(1)?;
        Ok(self.overdue.iter().take(limit as usize).cloned().collect())
    }
    async fn state(&self, key: &str) -> Result<Option<String>, crate::lab::error::ServiceError> {
        self.d1(1)?;
        Ok(self.state.borrow().get(key).cloned())
    }
    async fn set_state(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), crate::lab::error::ServiceError> {
        self.d1(1)?;
        let mut state = self.state.borrow_mut();
        match value {
            Some(v) => state.insert(key.to_string(), v.to_string()),
            None => state.remove(key),
        };
        Ok(())
    }
}

impl InventorySource for Fake {
    async fn page(&self, cursor: Option<&str>) -> Result<Page, PageError> {
        self.charge(crate::lab::invocation::Meter::External, 1)
            .map_err(PageError::Failed)?;
        self.asked.borrow_mut().push(cursor.map(str::to_string));
        self.clock.set(self.clock.get() + self.page_ms.get());
        self.pages
            .borrow()
            .get(&cursor.map(str::to_string))
            .cloned()
            .unwrap_or(Err(PageError::Refused(400)))
    }
}

impl Labs for Fake {
    async fn call(
        &self,
        lab: &str,
        request: Request,
    ) -> Result<crate::lab::protocol::Answer, crate::lab::error::ServiceError> {
        let sent = request.clone();
        self.clock.set(self.clock.get() + self.call_ms.get());
        let (status, body) = self.call_wire(lab, request).await?;
        crate::lab::protocol::Answer::read(&sent, status, &body.to_string())
    }
}

impl Fake {
    async fn call_wire(
        &self,
        lab: &str,
        request: Request,
    ) -> Result<(u16, serde_json::Value), String> {
        self.charge(crate::lab::invocation::Meter::Service, 1)?;
        match request {
            Request::Orphan(vm) if self.taken.contains(&vm.lab_request_id) => {
                Ok((409, serde_json::Value::Null))
            }
            Request::Orphan(vm) => {
                if !self
                    .orphan_set
                    .borrow_mut()
                    .insert(vm.lab_request_id.clone())
                {
                    return Ok((200, serde_json::Value::Null));
                }
                self.orphans.borrow_mut().push(vm.lab_request_id);
                Ok((201, serde_json::Value::Null))
            }
            Request::Poke => {
                self.pokes.borrow_mut().push(lab.to_string());
                Ok((200, serde_json::json!({"revived": false})))
            }
            Request::DeleteAgain { vm } => {
                let mut again = self.again.borrow_mut();
                if again.contains(&(lab.to_string(), vm.clone())) {
                    return Ok((200, serde_json::Value::Null));
                }
                again.push((lab.to_string(), vm));
                Ok((202, serde_json::Value::Null))
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

impl Logger for Fake {
    fn log(&self, _: Level, message: &str) {
        self.lines.borrow_mut().push(message.to_string());
    }
    fn record<T: Serialize>(&self, _: &T) {}
}

fn config() -> Config {
    Config::from_lookup(|name| match name {
        "BACKEND_URL" => Some("https://backend.test".into()),
        "ORPHAN_GRACE_MINUTES" => Some("60".into()),
        _ => None,
    })
    .unwrap()
}

fn vm(id: &str, created_minutes_ago: Option<i64>) -> ReportedVm {
    ReportedVm {
        lab_request_id: id.into(),
        user_id: "u".into(),
        created_at_ms: created_minutes_ago.map(|m| NOW - m * MINUTE),
    }
}

fn known_vm(vm: &str, lab: &str, state: VmState, status: Status, expires: i64) -> KnownVm {
    KnownVm {
        vm_id: vm.into(),
        lab_request_id: lab.into(),
        state,
        lab_status: status,
        expires_at_ms: expires,
        // Changed a minute after its expiry (its last attempt).
        changed_at_ms: expires + MINUTE,
    }
}

fn ids(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.lab_request_id.as_str()).collect()
}

fn world() -> Fake {
    Fake {
        known: vec![
            known_vm(
                "live-m",
                "live-m",
                VmState::Pending,
                Status::Scheduled,
                NOW + MINUTE,
            ),
            known_vm(
                "live-w",
                "live-m",
                VmState::Pending,
                Status::Scheduled,
                NOW + MINUTE,
            ),
            known_vm(
                "late-w",
                "late-m",
                VmState::Pending,
                Status::Retrying,
                NOW - MINUTE,
            ),
            known_vm(
                "ended-m",
                "ended-m",
                VmState::Pending,
                Status::CleaningUp,
                NOW,
            ),
            known_vm(
                "ghost-w",
                "done-m",
                VmState::Deleted,
                Status::Completed,
                NOW - 9 * MINUTE,
            ),
            known_vm(
                "gone-w",
                "done-m",
                VmState::AlreadyGone,
                Status::Completed,
                NOW - 9 * MINUTE,
            ),
        ],
        taken: vec!["raced".into()],
        ..Fake::default()
    }
}

fn report() -> Vec<ReportedVm> {
    vec![
        vm("live-m", Some(10)),
        vm("live-w", None),
        vm("late-w", Some(300)),
        vm("ended-m", None),
        vm("ghost-w", None),
        vm("gone-w", Some(600)),
        vm("young", Some(59)),
        vm("old", Some(61)),
        vm("undated", None),
        vm("raced", Some(500)),
    ]
}

#[test]
fn every_vm_is_in_exactly_one_class() {
    let fake = world();
    let a = block_on(reconcile(&fake, &config(), &report(), false, NOW)).unwrap();
    assert_eq!(ids(&a.tracked), vec!["live-m", "live-w"]);
    assert_eq!(ids(&a.overdue), vec!["late-w", "ended-m"]);
    assert_eq!(ids(&a.finished), vec!["ghost-w", "gone-w"]);
    assert_eq!(ids(&a.unknown), vec!["young", "old", "undated", "raced"]);
    assert_eq!(a.tracked[1].lab.as_deref(), Some("live-m"));
    assert_eq!(a.unknown[0].lab, None);
    let c = a.counts();
    assert_eq!(
        c.tracked + c.overdue + c.finished + c.unknown,
        report().len()
    );
    // A dry run changes nothing anywhere.
    assert!(a.scheduled.is_empty());
    assert!(fake.orphans.borrow().is_empty() && fake.again.borrow().is_empty());
    assert!(fake.seen.borrow().is_empty(), "not even a first sighting");
}

#[test]
fn acting_needs_two_reports_and_then_schedules_each_vm_once() {
    let fake = world();
    // The first report: every unknown VM past its grace and every finished VM whose lab changed
    // less than ORPHAN_CONFIRM_MINUTES (10) ago waits; the unknown ones are remembered.
    let first = block_on(reconcile(&fake, &config(), &report(), true, NOW)).unwrap();
    assert!(first.scheduled.is_empty(), "{:?}", first.scheduled);
    assert_eq!(first.unconfirmed, 4, "ghost-w, gone-w, old, raced");
    for id in ["young", "old", "undated", "raced"] {
        assert_eq!(fake.seen.borrow().get(id), Some(&NOW), "{id}");
    }
    // Nine minutes on: the finished VMs' labs changed ten minutes ago or more; the unknown ones
    // were first reported nine minutes ago only.
    let soon = block_on(reconcile(
        &fake,
        &config(),
        &report(),
        true,
        NOW + 9 * MINUTE,
    ))
    .unwrap();
    let scheduled: Vec<(&str, &str)> = soon
        .scheduled
        .iter()
        .map(|s| (s.lab_request_id.as_str(), s.action))
        .collect();
    assert_eq!(
        scheduled,
        vec![("ghost-w", "delete_again"), ("gone-w", "delete_again")]
    );
    // Ten minutes on: the unknown ones are confirmed.
    let a = block_on(reconcile(
        &fake,
        &config(),
        &report(),
        true,
        NOW + 10 * MINUTE,
    ))
    .unwrap();
    let scheduled: Vec<(&str, &str)> = a
        .scheduled
        .iter()
        .map(|s| (s.lab_request_id.as_str(), s.action))
        .collect();
    assert_eq!(scheduled, vec![("old", "orphan"), ("young", "orphan")]);
    // The undated one's grace counts from its first report; the raced one is a lab that is not
    // an orphan (never touched); tracked and overdue VMs are left to their labs.
    let mut orphans = fake.orphans.borrow().clone();
    orphans.sort();
    assert_eq!(orphans, vec!["old", "young"]);
    // The same inventory again: nothing scheduled twice; what was scheduled is overdue now.
    let again = block_on(reconcile(
        &fake,
        &config(),
        &report(),
        true,
        NOW + 10 * MINUTE,
    ))
    .unwrap();
    assert!(again.scheduled.is_empty(), "{:?}", again.scheduled);
    assert!(ids(&again.overdue).contains(&"old") && ids(&again.overdue).contains(&"ghost-w"));
    // An hour after its first report, the undated VM is old enough.
    let later = block_on(reconcile(
        &fake,
        &config(),
        &report(),
        true,
        NOW + 61 * MINUTE,
    ))
    .unwrap();
    let orphans: Vec<&str> = later
        .scheduled
        .iter()
        .map(|s| s.lab_request_id.as_str())
        .collect();
    assert_eq!(orphans, vec!["undated"]);
}

#[test]
fn a_finished_vm_is_deleted_again_only_after_its_lab_settled() {
    let fake = Fake {
        known: vec![KnownVm {
            changed_at_ms: NOW - MINUTE,
            ..known_vm(
                "done-w",
                "done-m",
                VmState::Deleted,
                Status::Completed,
                NOW - 2 * MINUTE,
            )
        }],
        ..Fake::default()
    };
    let report = vec![vm("done-w", None)];
    let a = block_on(reconcile(&fake, &config(), &report, true, NOW)).unwrap();
    assert!(a.scheduled.is_empty() && a.unconfirmed == 1);
    let b = block_on(reconcile(&fake, &config(), &report, true, NOW + 9 * MINUTE)).unwrap();
    assert_eq!(b.scheduled.len(), 1);
}

/// A VM id two labs list: a lab in its retention that deleted it, and the lab that runs it now
/// (ids the backend reuses). Whatever the order of the index's rows, the VM is the live lab's,
/// and is never deleted again for the other, however long it settled.
#[test]
fn a_vm_a_finished_lab_listed_is_never_deleted_again_while_a_live_lab_lists_it() {
    let done = KnownVm {
        changed_at_ms: NOW - 600 * MINUTE,
        ..known_vm(
            "reused",
            "done-m",
            VmState::Deleted,
            Status::Completed,
            NOW - 601 * MINUTE,
        )
    };
    let live = known_vm(
        "reused",
        "live-m",
        VmState::Pending,
        Status::Scheduled,
        NOW + 60 * MINUTE,
    );
    for known in [
        vec![done.clone(), live.clone()],
        vec![live.clone(), done.clone()],
    ] {
        let fake = Fake {
            known,
            ..Fake::default()
        };
        let report = vec![vm("reused", Some(30))];
        for at in [NOW, NOW + 20 * MINUTE] {
            let a = block_on(reconcile(&fake, &config(), &report, true, at)).unwrap();
            assert_eq!(ids(&a.tracked), vec!["reused"]);
            assert_eq!(a.tracked[0].lab.as_deref(), Some("live-m"));
            assert!(a.scheduled.is_empty() && a.finished.is_empty());
        }
        assert!(fake.again.borrow().is_empty());
    }
}

#[test]
fn a_creation_time_in_the_future_counts_from_the_first_report() {
    let fake = Fake::default();
    let far = ReportedVm {
        created_at_ms: Some(32_503_680_000_000), // the year 3000
        ..vm("far", None)
    };
    for at in [NOW, NOW + 59 * MINUTE] {
        let a = block_on(reconcile(
            &fake,
            &config(),
            std::slice::from_ref(&far),
            true,
            at,
        ))
        .unwrap();
        assert!(a.scheduled.is_empty(), "too young at {at}");
    }
    let a = block_on(reconcile(&fake, &config(), &[far], true, NOW + 60 * MINUTE)).unwrap();
    assert_eq!(
        a.scheduled.len(),
        1,
        "an orphan an hour after its first report"
    );
}

/// Reports `vms` twice, `ORPHAN_CONFIRM_MINUTES` apart: the second one acts.
fn confirmed(fake: &Fake, vms: &[ReportedVm]) -> Answer {
    block_on(reconcile(fake, &config(), vms, true, NOW)).unwrap();
    block_on(reconcile(fake, &config(), vms, true, NOW + 10 * MINUTE)).unwrap()
}

#[test]
fn at_most_so_many_actions_per_run_and_one_per_vm() {
    let fake = Fake::default();
    let many: Vec<ReportedVm> = (0..MAX_ACTIONS_PER_RUN + 7)
        .map(|n| vm(&format!("orphan-{n:04}"), Some(120)))
        .collect();
    let a = confirmed(&fake, &many);
    assert_eq!(a.scheduled.len(), MAX_ACTIONS_PER_RUN);
    assert_eq!(a.deferred, 7);
    let b = block_on(reconcile(&fake, &config(), &many, true, NOW + 10 * MINUTE)).unwrap();
    assert_eq!(b.scheduled.len(), 7, "the rest when reported again");
    // One run over pages: the cap is the run's, and a VM on two pages is acted on once.
    let fake = Fake::default();
    let pages: Vec<Vec<ReportedVm>> = (0..3)
        .map(|p| {
            (0..60)
                .map(|n| vm(&format!("vm-{:04}", p * 50 + n), Some(120)))
                .collect()
        })
        .collect();
    for page in &pages {
        block_on(reconcile(&fake, &config(), page, true, NOW)).unwrap();
    }
    let mut run = Run::default();
    let answers: Vec<Answer> = pages
        .iter()
        .map(|page| {
            block_on(reconcile_in(
                &fake,
                &config(),
                page,
                true,
                NOW + 10 * MINUTE,
                &mut run,
            ))
            .unwrap()
        })
        .collect();
    let scheduled: Vec<usize> = answers.iter().map(|a| a.scheduled.len()).collect();
    assert_eq!(
        scheduled,
        vec![60, 40, 0],
        "pages overlap by 10 VMs: 100 in all"
    );
    assert_eq!(answers[1].deferred, 10);
    assert_eq!(answers[2].deferred, 60, "the run's cap is reached");
    let mut all: Vec<String> = fake.orphans.borrow().clone();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "no VM twice");
}

#[test]
fn first_reports_are_bounded_and_tidied_once_per_run() {
    let fake = Fake::default();
    fake.seen_padding.set(crate::lab::index::MAX_SEEN_ROWS - 3);
    let vms: Vec<ReportedVm> = (0..10).map(|n| vm(&format!("new-{n}"), None)).collect();
    let mut run = Run::default();
    for half in vms.chunks(5) {
        block_on(reconcile_in(&fake, &config(), half, true, NOW, &mut run)).unwrap();
    }
    assert_eq!(
        fake.seen.borrow().len(),
        3,
        "only as many as there is room for"
    );
    assert_eq!(fake.tidied.get(), 1);
    // Old ones are forgotten.
    block_on(reconcile(
        &fake,
        &config(),
        &[],
        true,
        NOW + crate::lab::index::SEEN_KEPT_MS + 1,
    ))
    .unwrap();
    let mut fresh = Run::default();
    block_on(reconcile_in(
        &fake,
        &config(),
        &vms[..1],
        true,
        NOW + crate::lab::index::SEEN_KEPT_MS + 1,
        &mut fresh,
    ))
    .unwrap();
    assert_eq!(fake.seen.borrow().len(), 1);
}

#[test]
fn a_push_records_its_counts() {
    let fake = world();
    let a = block_on(push(&fake, &config(), &report(), false, NOW)).unwrap();
    let saved = fake.saved.borrow();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].counts, a.counts());
    assert_eq!(saved[0].source, Source::Push);
    assert!(!saved[0].act);
}

#[test]
fn pages_are_read_leniently_and_entries_strictly() {
    let page = parse_page(
        r#"{"vms": [{"lab_request_id": "a", "user_id": "u", "created_at": "2026-11-30T09:00:00Z"},
                    {"lab_request_id": "b/c", "user_id": "u"},
                    {"lab_request_id": "d", "user_id": "u", "created_at": "yesterday"},
                    {"lab_request_id": "e", "user_id": "u"}],
            "next_cursor": "p2"}"#,
    )
    .unwrap();
    assert_eq!(page.vms.len(), 2);
    assert_eq!(page.skipped, 2);
    assert_eq!(page.next_cursor.as_deref(), Some("p2"));
    assert_eq!(page.vms[0].created_at_ms, Some(1_796_029_200_000));
    assert!(parse_page(r#"{"vms": [], "next_cursor": null}"#)
        .unwrap()
        .next_cursor
        .is_none());
    for bad in [
        "[]",
        "{}",
        r#"{"vms": 3}"#,
        r#"{"vms": [], "next_cursor": 5}"#,
        "<html>",
    ] {
        assert!(parse_page(bad).is_err(), "{bad}");
    }
    let too_many = format!(
        "{{\"vms\": [{}]}}",
        vec![r#"{"lab_request_id": "a", "user_id": "u"}"#; MAX_VMS_PER_REPORT + 1].join(",")
    );
    assert!(parse_page(&too_many).unwrap_err().contains("at most 1000"));
}

fn page(vms: &[&str], next: Option<&str>) -> Result<Page, PageError> {
    Ok(Page {
        vms: vms.iter().map(|id| vm(id, Some(120))).collect(),
        next_cursor: next.map(str::to_string),
        skipped: 0,
        bad_cursor: false,
    })
}

fn acting() -> Config {
    Config::from_lookup(|name| match name {
        "BACKEND_URL" => Some("https://backend.test".into()),
        "RECONCILE_ACT" => Some("true".into()),
        _ => None,
    })
    .unwrap()
}

impl Fake {
    fn set_state_now(&self, cursor: Option<&str>) {
        block_on(self.set_state(CURSOR_KEY, cursor)).unwrap();
    }

    fn serve(&self, cursor: Option<&str>, answer: Result<Page, PageError>) {
        self.pages
            .borrow_mut()
            .insert(cursor.map(str::to_string), answer);
    }

    fn cursor(&self) -> Option<String> {
        self.state.borrow().get(CURSOR_KEY).cloned()
    }

    fn logged(&self, needle: &str) -> bool {
        self.lines.borrow().iter().any(|l| l.contains(needle))
    }
}

#[test]
fn a_cursor_that_leads_back_ends_the_pass_and_nothing_is_done_twice() {
    let fake = Fake::default();
    fake.serve(None, page(&["a"], Some("p1")));
    fake.serve(Some("p1"), page(&["b"], Some("p1")));
    // Two runs ten minutes apart: the second confirms and acts.
    for at in [NOW, NOW + 10 * MINUTE] {
        fake.asked.borrow_mut().clear();
        block_on(pull(&fake, &acting(), 20, at)).unwrap();
        assert_eq!(
            *fake.asked.borrow(),
            vec![None, Some("p1".to_string())],
            "each page once"
        );
        assert_eq!(
            fake.cursor(),
            None,
            "the next run starts from the first page"
        );
    }
    assert!(fake.logged("next_cursor \"p1\" leads back to a page this run read already"));
    let mut orphans = fake.orphans.borrow().clone();
    orphans.sort();
    assert_eq!(orphans, vec!["a", "b"], "once each");
    // A page that repeats another's VMs under a new cursor ends the pass too.
    let fake = Fake::default();
    fake.serve(None, page(&["a", "b"], Some("p1")));
    fake.serve(Some("p1"), page(&["b", "a"], Some("p2")));
    fake.serve(Some("p2"), page(&["c"], None));
    block_on(pull(&fake, &acting(), 20, NOW)).unwrap();
    assert_eq!(fake.asked.borrow().len(), 2);
    assert!(fake.logged("a page holds the same VMs as a page this run read already"));
}

#[test]
fn a_refused_or_oversized_cursor_starts_again_from_the_first_page() {
    let fake = Fake::default();
    fake.serve(None, page(&["a"], Some("p1")));
    fake.serve(Some("p1"), page(&["b"], None));
    // The backend no longer knows the stored cursor (it answers 400 for it).
    fake.set_state_now(Some("expired"));
    let counts = block_on(pull(&fake, &acting(), 20, NOW)).unwrap();
    assert_eq!(counts.unknown, 2);
    assert_eq!(
        *fake.asked.borrow(),
        vec![Some("expired".to_string()), None, Some("p1".to_string())]
    );
    assert!(fake.logged(
        "the backend refused the cursor \"expired\" (400); starting again from the first page"
    ));
    // A stored cursor over the limit is not even sent.
    fake.asked.borrow_mut().clear();
    fake.set_state_now(Some(&"x".repeat(MAX_CURSOR_BYTES + 1)));
    block_on(pull(&fake, &acting(), 20, NOW)).unwrap();
    assert_eq!(fake.asked.borrow()[0], None);
    assert!(fake.logged("the stored cursor is over 2000 bytes"));
    // A page whose next_cursor is over the limit ends the pass.
    let long = Fake::default();
    long.serve(
        None,
        Ok(Page {
            bad_cursor: true,
            ..page(&["a"], None).unwrap()
        }),
    );
    block_on(pull(&long, &acting(), 20, NOW)).unwrap();
    assert_eq!(long.cursor(), None);
    assert!(long.logged("a page's next_cursor is over 2000 bytes; the pass ends with this page"));
}

#[test]
fn a_run_that_fails_on_a_later_page_saves_the_counts_it_has() {
    let fake = Fake::default();
    fake.serve(None, page(&["a", "b"], Some("p1")));
    fake.serve(
        Some("p1"),
        Err(PageError::Failed(
            "the backend's inventory answered 503".into(),
        )),
    );
    let e = block_on(pull(&fake, &acting(), 20, NOW)).unwrap_err();
    assert_eq!(e, "the backend's inventory answered 503");
    let saved = fake.saved.borrow();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].counts.unknown, 2);
    assert_eq!(
        fake.cursor().as_deref(),
        Some("p1"),
        "the next run goes on from there"
    );
}

#[test]
fn a_pull_takes_at_most_so_many_actions_in_a_run() {
    let fake = Fake::default();
    for p in 0..20 {
        let ids: Vec<String> = (0..30).map(|n| format!("vm-{p:02}-{n:02}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let next = (p < 19).then(|| format!("p{}", p + 1));
        let cursor = (p > 0).then(|| format!("p{p}"));
        fake.serve(cursor.as_deref(), page(&ids, next.as_deref()));
    }
    block_on(pull(&fake, &acting(), 20, NOW)).unwrap();
    assert!(fake.orphans.borrow().is_empty(), "the first reports");
    block_on(pull(&fake, &acting(), 20, NOW + 10 * MINUTE)).unwrap();
    assert_eq!(fake.orphans.borrow().len(), MAX_ACTIONS_PER_RUN);
}

/// The backend runs `pages` pages of `per_page` VMs, all unknown and long past their grace.
fn big_inventory(fake: &Fake, pages: usize, per_page: usize) {
    for p in 0..pages {
        let vms: Vec<ReportedVm> = (0..per_page)
            .map(|n| vm(&format!("vm-{p:03}-{n:04}"), Some(24 * 60)))
            .collect();
        let cursor = (p > 0).then(|| format!("p{p}"));
        let next = (p + 1 < pages).then(|| format!("p{}", p + 1));
        fake.serve(
            cursor.as_deref(),
            Ok(Page {
                vms,
                next_cursor: next,
                skipped: 0,
                bad_cursor: false,
            }),
        );
    }
}

#[test]
fn a_hundred_thousand_orphans_are_handled_over_runs_each_within_the_plan() {
    use crate::lab::invocation::plan::{FREE, PAID};
    for (plan, limits) in [("free", FREE), ("paid", PAID)] {
        let fake = Fake::default();
        big_inventory(&fake, 100, 1_000);
        let config = Config::from_lookup(|name| match name {
            "BACKEND_URL" => Some("https://backend.test".into()),
            "RECONCILE_ACT" => Some("true".into()),
            "INVENTORY_PATH" => Some("/inventory".into()),
            "PLAN" => Some(plan.into()),
            _ => None,
        })
        .unwrap();
        let mut now = NOW;
        let mut runs = 0;
        while fake.orphans.borrow().len() < 100_000 {
            fake.invocation(limits, now);

            block_on(crate::lab::fleet::sweep::run(&fake, &config, now));
            runs += 1;
            now += 15 * MINUTE;
            assert!(
                runs < 3_000,
                "{plan}: {} orphans after {runs} runs",
                fake.orphans.borrow().len()
            );
        }
        fake.invocation(limits, now);
        assert_eq!(fake.exceeded.get(), 0, "{plan}: a call past the plan");
        let used = fake.used.borrow();
        let peak_d1 = used.iter().map(|u| u.d1).max().unwrap();
        let peak_services = used.iter().map(|u| u.services).max().unwrap();
        let peak_external = used.iter().map(|u| u.external).max().unwrap();
        assert!(
            peak_d1 <= limits.d1_queries
                && peak_services <= limits.services
                && peak_external <= limits.external
        );
        // Every orphan once, at 100 a run after the first pass confirmed them.
        let mut all = fake.orphans.borrow().clone();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "{plan}: no orphan twice");
        assert!(runs >= 1_000, "{plan}: {runs} runs");
        eprintln!("{plan}: 100,000 orphans in {runs} runs; per run at most {peak_d1} D1 queries, {peak_services} calls to services, {peak_external} fetches");
    }
}

#[test]
fn five_thousand_overdue_labs_are_poked_over_runs_each_within_the_plan() {
    use crate::lab::invocation::plan::FREE;
    let fake = Fake {
        overdue: (0..5_000).map(|n| format!("late-{n:04}")).collect(),
        ..Fake::default()
    };
    let config = Config::from_lookup(|name| match name {
        "BACKEND_URL" => Some("https://backend.test".into()),
        _ => None,
    })
    .unwrap();
    // The fake's index lists the labs not poked yet, oldest first.
    let mut runs = 0;
    while fake.pokes.borrow().len() < 5_000 {
        fake.invocation(FREE, NOW);
        let left: Vec<String> = fake.overdue[fake.pokes.borrow().len()..].to_vec();
        let step = Fake {
            overdue: left,
            ledger: RefCell::new(fake.ledger.borrow().clone()),
            ..Fake::default()
        };
        block_on(crate::lab::fleet::sweep::sweep(&step, &config, NOW)).unwrap();
        assert_eq!(step.exceeded.get(), 0);
        fake.pokes.borrow_mut().extend(step.pokes.take());
        runs += 1;
        assert!(runs <= 25, "{runs} runs");
    }
    assert_eq!(runs, 25, "200 labs a run");
}

#[test]
fn a_stopped_labs_vms_are_tracked_not_overdue() {
    // The grace stage keeps a stopped lab's VMs on purpose until its delete_at, past its expiry.
    let stopped = known_vm("w1", "m", VmState::Pending, Status::Stopped, NOW - 60_000);
    assert_eq!(classify(Some(&stopped), NOW), Class::Tracked);
    let retrying = known_vm("w1", "m", VmState::Pending, Status::Retrying, NOW - 60_000);
    assert_eq!(classify(Some(&retrying), NOW), Class::Overdue);
}

/// Issue 36, 5: a slow backend and slow objects on the Paid plan (each page takes the backend's
/// whole timeout, each call to a lab's object 10 s, one after another): the run reads pages and acts only while they can end in its wall time,
/// then saves the counts and sweeps, and ends within the platform's 15 minutes. (The check
/// measured against a time fixed at the run's start: 20 pages and 100 actions, 20 minutes.)
#[test]
fn a_slow_inventory_keeps_the_runs_wall_time_and_leaves_time_for_the_sweep() {
    use crate::lab::invocation::plan::PAID;
    let fake = Fake {
        overdue: (0..50).map(|n| format!("late-{n:02}")).collect(),
        ..Fake::default()
    };
    big_inventory(&fake, 20, 30);
    let config = Config::from_lookup(|name| match name {
        "BACKEND_URL" => Some("https://backend.test".into()),
        "RECONCILE_ACT" => Some("true".into()),
        "INVENTORY_PATH" => Some("/inventory".into()),
        "PLAN" => Some("paid".into()),
        _ => None,
    })
    .unwrap();
    // The first pass, quick, records the first reports.
    fake.invocation(PAID, NOW);
    block_on(crate::lab::fleet::sweep::run(&fake, &config, NOW));
    fake.pokes.borrow_mut().clear();
    let saved = fake.saved.borrow().len();
    // The second, slow: it would act on every orphan it reads.
    let now = NOW + 15 * MINUTE;
    fake.invocation(PAID, now);
    fake.clock.set(0);
    fake.page_ms.set(15_000);
    fake.call_ms.set(10_000);
    let record = block_on(crate::lab::fleet::sweep::run(&fake, &config, now));
    let wall = config.limits().wall_ms;
    assert!(
        fake.clock.get() <= wall - crate::lab::invocation::plan::WALL_MARGIN_MS,
        "the run took {} ms of its {wall}",
        fake.clock.get()
    );
    assert!(
        fake.asked.borrow().len() < 20 + 20,
        "it stopped reading pages"
    );
    assert!(fake.logged("within its invocation's limits; the next run goes on from here"));
    assert_eq!(fake.saved.borrow().len(), saved + 1, "the counts saved");
    assert!(record.inventory.is_some());
    assert!(
        !fake.pokes.borrow().is_empty(),
        "the sweep ran ({} ms, asked {})",
        fake.clock.get(),
        fake.asked.borrow().len()
    );
    assert_eq!(record.overdue, 50);
}

/// Issue 36, 4: during the cutover (`LEGACY_CUTOVER_AT`), an acting reconciliation leaves alone
/// every unknown VM that may be a worker VM of a lab the previous worker scheduled and this one
/// has not adopted yet; after every such lab could have expired, it is an orphan as any other.
#[test]
fn an_acting_inventory_during_the_cutover_deletes_no_vm_of_a_legacy_lab() {
    let cutover = NOW - 100 * MINUTE;
    let config = Config::from_lookup(|name| match name {
        "BACKEND_URL" => Some("https://backend.test".into()),
        "RECONCILE_ACT" => Some("true".into()),
        "LEGACY_CUTOVER_AT" => Some(crate::lab::text::rfc3339(cutover)),
        "MAX_DURATION_MINUTES" => Some("600".into()),
        _ => None,
    })
    .unwrap();
    let fake = Fake::default();
    // Two worker VMs of a legacy lab (one created before the cutover, one of unknown age), and
    // an orphan created after the cutover; all past their grace (60 minutes) by the second run.
    let vms = vec![
        vm("legacy-w1", Some(120)),
        vm("legacy-w2", None),
        vm("after", Some(70)),
    ];
    // Reported twice, 70 minutes apart (confirmed): only the orphan is acted on (the VM of
    // unknown age is in its grace at its first report).
    for (at, legacy) in [(NOW, 1), (NOW + 70 * MINUTE, 2)] {
        let answer = block_on(reconcile(&fake, &config, &vms, true, at)).unwrap();
        assert_eq!(answer.unknown.len(), 3);
        assert_eq!(answer.legacy, legacy, "at {at}");
    }
    assert_eq!(*fake.orphans.borrow(), vec!["after".to_string()]);
    assert!(fake.logged("2 unknown VMs may belong to labs of the previous worker not adopted yet"));
    // legacy-w1 is held until its creation plus MAX_DURATION_MINUTES and a retry pause; the
    // VM of unknown age until the cutover plus that.
    let w1_free = NOW - 120 * MINUTE + 600 * MINUTE + config.retry_ms();
    let answer = block_on(reconcile(&fake, &config, &vms, true, w1_free - 1)).unwrap();
    assert_eq!(answer.legacy, 2);
    let answer = block_on(reconcile(&fake, &config, &vms, true, w1_free)).unwrap();
    assert_eq!(answer.legacy, 1);
    assert!(fake.orphans.borrow().contains(&"legacy-w1".to_string()));
    let w2_free = cutover + 600 * MINUTE + config.retry_ms();
    let answer = block_on(reconcile(&fake, &config, &vms, true, w2_free)).unwrap();
    assert_eq!(answer.legacy, 0);
    assert!(fake.orphans.borrow().contains(&"legacy-w2".to_string()));
    // Without the setting, no previous worker: all three are orphans.
    let fake = Fake::default();
    for at in [NOW, NOW + 70 * MINUTE] {
        block_on(reconcile(&fake, &acting(), &vms, true, at)).unwrap();
    }
    assert_eq!(fake.orphans.borrow().len(), 3);
}
