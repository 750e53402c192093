//! What a lab writes over its whole life, counted as the platform bills it: a cost regression
//! is a bug (docs/PERFORMANCE.md, "What a lab costs"). Storage rows as the store counts them (a
//! key or an alarm written or deleted), and the fleet index's writes (each a D1 batch).

use super::*;

/// From the create to the purge of the record: `(storage rows written, index writes)`.
fn whole_life(pairs: &[(&str, &str)], workers: &[&str], fail_once: Option<&str>) -> (u64, u64) {
    let world = World::new(config(pairs));
    world.create(lab("cost-m", workers, 60));
    if let Some(vm) = fail_once {
        world.script(vm, &[500]);
    }
    world.run(T0 + 30 * DAY);
    assert!(world.session().is_none(), "the record is purged");
    assert_eq!(world.deleted().len(), 1 + workers.len());
    (world.storage_rows.get(), world.index_writes.get())
}

const DAY: i64 = 86_400_000;

#[test]
fn a_clean_single_vm_lab_writes_few_rows() {
    // Webhooks (the warning, the completion) and the fleet index on; the same count as the
    // object's usage lines on workerd (docs/PERFORMANCE.md), where it was 22 before the hold of
    // a queued event and the index's confirmation stopped costing saves of their own, 16 before
    // an alarm already set for its time stopped being written again, 15 before the warning was
    // sent ahead of its one save and the purge stopped counting an alarm that was not set, 11
    // before a request's index row stopped having a wake-up of its own.
    let (rows, index) = whole_life(&[], &[], None);
    assert!(rows <= 10, "{rows} storage rows written");
    assert!(index <= 3, "{index} index writes");
}

#[test]
fn a_lab_with_workers_and_one_retry_writes_few_rows() {
    // The lab's own object (the worker VMs' claims are their objects' rows).
    let (rows, index) = whole_life(&[], &["w1", "w2"], Some("w2"));
    assert!(rows <= 14, "{rows} storage rows written");
    assert!(index <= 4, "{index} index writes");
}

#[test]
fn without_the_index_and_webhooks_a_lab_writes_fewer_still() {
    let (rows, index) = whole_life(&[("FLEET_INDEX", "off"), ("WEBHOOK_URL", "")], &[], None);
    assert!(rows <= 7, "{rows} storage rows written");
    assert_eq!(index, 0);
}

#[test]
fn an_eviction_between_the_row_and_the_next_save_writes_the_row_again_and_loses_nothing() {
    let world = World::new(config(&[]));
    world.create(lab("cost-e", &[], 60));
    // The create's row is written and known in memory only; the object is evicted.
    world.evict();
    world.run(T0 + 30 * DAY);
    assert!(world.session().is_none());
    assert_eq!(world.deleted().len(), 1);
    // The row is there, the same revision written again at most once more.
    assert!(
        world.index_writes.get() <= 4,
        "{}",
        world.index_writes.get()
    );
}

#[test]
fn a_create_saves_its_alarm_once_and_an_eviction_before_its_row_loses_nothing() {
    // The create's row is written right after its answer: no wake-up of the row's own (the
    // alarm is written once, for the lab's warning).
    let world = World::new(config(&[("WARN_BEFORE_MINUTES", "10")]));
    world.create(lab("cost-c", &[], 60));
    assert_eq!(world.storage_rows.get(), 2, "the record and its alarm");
    assert_eq!(world.alarm.get(), Some(T0 + 50 * MINUTE), "the warning's");
    assert!(world.rows.borrow().contains_key("cost-c"));
    // Evicted between a create's answer and its row: the lab's next wake-up writes the row.
    let evicted = World::new(config(&[("WARN_BEFORE_MINUTES", "10")]));
    evicted.evict_after_answer.set(true);
    evicted.create(lab("cost-e2", &[], 60));
    assert!(!evicted.rows.borrow().contains_key("cost-e2"));
    assert_eq!(evicted.alarm.get(), Some(T0 + 50 * MINUTE));
    evicted.run(T0 + 50 * MINUTE);
    assert!(
        evicted.rows.borrow().contains_key("cost-e2"),
        "written at the warning"
    );
    evicted.run(T0 + 30 * DAY);
    assert!(evicted.session().is_none());
    assert_eq!(evicted.deleted().len(), 1);
    // A failed write keeps its retry: the row is written within the retry pause.
    let down = World::new(config(&[("WARN_BEFORE_MINUTES", "10")]));
    down.index_down.set(true);
    down.create(lab("cost-d", &[], 60));
    down.index_down.set(false);
    assert!(
        down.alarm.get() < Some(T0 + 50 * MINUTE),
        "{:?}",
        down.alarm.get()
    );
    down.run(T0 + 10 * MINUTE);
    assert!(down.rows.borrow().contains_key("cost-d"));
}
