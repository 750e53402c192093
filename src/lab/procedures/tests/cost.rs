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
    // an alarm already set for its time stopped being written again.
    let (rows, index) = whole_life(&[], &[], None);
    assert!(rows <= 15, "{rows} storage rows written");
    assert!(index <= 3, "{index} index writes");
}

#[test]
fn a_lab_with_workers_and_one_retry_writes_few_rows() {
    // The lab's own object (the worker VMs' claims are their objects' rows).
    let (rows, index) = whole_life(&[], &["w1", "w2"], Some("w2"));
    assert!(rows <= 19, "{rows} storage rows written");
    assert!(index <= 4, "{index} index writes");
}

#[test]
fn without_the_index_and_webhooks_a_lab_writes_fewer_still() {
    let (rows, index) = whole_life(&[("FLEET_INDEX", "off"), ("WEBHOOK_URL", "")], &[], None);
    assert!(rows <= 8, "{rows} storage rows written");
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
