//! Reconciliations against a fake index and fake labs: each class, the grace, acting once, a lab that refuses.

use std::cell::RefCell;
use std::collections::HashMap;

use futures::executor::block_on;

use super::*;
use crate::lab::config::Config;

const NOW: i64 = 1_796_083_200_000;
const MINUTE: i64 = 60_000;

#[derive(Default)]
struct Fake {
    known: Vec<KnownVm>,
    seen: RefCell<HashMap<String, i64>>,
    /// The labs' objects: what each has (orphans scheduled, VMs deleted again).
    orphans: RefCell<Vec<String>>,
    again: RefCell<Vec<(String, String)>>,
    /// Labs whose object answers 409 (a lab of that id that is not an orphan).
    taken: Vec<String>,
    saved: RefCell<Vec<Reconciliation>>,
    lines: RefCell<Vec<String>>,
}

impl FleetStore for Fake {
    async fn lookup(&self, vm_ids: &[String]) -> Result<Vec<KnownVm>, String> {
        // What the labs' objects did shows in the index (their rows follow their answers):
        // an orphan is a lab of its own being cleaned up, a VM deleted again is pending.
        let orphans = self.orphans.borrow();
        let again = self.again.borrow();
        let mut known: Vec<KnownVm> = self
            .known
            .iter()
            .map(|k| match again.iter().find(|(_, vm)| *vm == k.vm_id) {
                Some(_) => KnownVm {
                    state: VmState::Pending,
                    lab_status: Status::Retrying,
                    ..k.clone()
                },
                None => k.clone(),
            })
            .collect();
        known.extend(
            orphans
                .iter()
                .map(|id| known_vm(id, id, VmState::Pending, Status::CleaningUp, NOW)),
        );
        Ok(known
            .into_iter()
            .filter(|k| vm_ids.contains(&k.vm_id))
            .collect())
    }
    async fn first_seen(
        &self,
        vm_ids: &[String],
        now_ms: i64,
        record: bool,
    ) -> Result<Vec<(String, i64)>, String> {
        let mut seen = self.seen.borrow_mut();
        let before: Vec<(String, i64)> = vm_ids
            .iter()
            .filter_map(|id| seen.get(id).map(|at| (id.clone(), *at)))
            .collect();
        if record {
            for id in vm_ids {
                seen.entry(id.clone()).or_insert(now_ms);
            }
        }
        Ok(before)
    }
    async fn save_reconciliation(&self, r: &Reconciliation) -> Result<(), String> {
        self.saved.borrow_mut().push(r.clone());
        Ok(())
    }
    async fn overdue(&self, _: i64, _: u32) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    async fn state(&self, _: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
    async fn set_state(&self, _: &str, _: Option<&str>) -> Result<(), String> {
        Ok(())
    }
}

impl Labs for Fake {
    async fn call(&self, lab: &str, request: Request) -> Result<(u16, serde_json::Value), String> {
        match request {
            Request::Orphan(vm) if self.taken.contains(&vm.lab_request_id) => {
                Ok((409, serde_json::Value::Null))
            }
            Request::Orphan(vm) => {
                let mut orphans = self.orphans.borrow_mut();
                if orphans.contains(&vm.lab_request_id) {
                    return Ok((200, serde_json::Value::Null));
                }
                orphans.push(vm.lab_request_id);
                Ok((201, serde_json::Value::Null))
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
fn acting_schedules_old_unknowns_and_finished_vms_once() {
    let fake = world();
    let a = block_on(reconcile(&fake, &config(), &report(), true, NOW)).unwrap();
    let scheduled: Vec<(&str, &str)> = a
        .scheduled
        .iter()
        .map(|s| (s.lab_request_id.as_str(), s.action))
        .collect();
    assert_eq!(
        scheduled,
        vec![
            ("ghost-w", "delete_again"),
            ("gone-w", "delete_again"),
            ("old", "orphan")
        ]
    );
    // The young VM waits for its grace; the undated one's grace starts now; the raced one is a
    // lab that is not an orphan (never touched); tracked and overdue VMs are left to their labs.
    assert_eq!(*fake.orphans.borrow(), vec!["old"]);
    assert_eq!(fake.seen.borrow().get("undated"), Some(&NOW));
    // The same inventory again: nothing scheduled twice; what was scheduled is overdue now.
    let again = block_on(reconcile(&fake, &config(), &report(), true, NOW)).unwrap();
    assert!(again.scheduled.is_empty(), "{:?}", again.scheduled);
    assert!(ids(&again.overdue).contains(&"old") && ids(&again.overdue).contains(&"ghost-w"));
    // An hour after its first sighting, the undated VM is old enough.
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
    assert_eq!(orphans, vec!["undated", "young"]);
}

#[test]
fn at_most_so_many_actions_per_call() {
    let fake = Fake::default();
    let many: Vec<ReportedVm> = (0..MAX_ACTIONS_PER_CALL + 7)
        .map(|n| vm(&format!("orphan-{n:04}"), Some(120)))
        .collect();
    let a = block_on(reconcile(&fake, &config(), &many, true, NOW)).unwrap();
    assert_eq!(a.scheduled.len(), MAX_ACTIONS_PER_CALL);
    assert_eq!(a.deferred, 7);
    let b = block_on(reconcile(&fake, &config(), &many, true, NOW)).unwrap();
    assert_eq!(b.scheduled.len(), 7, "the rest when reported again");
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
