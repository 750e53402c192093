//! A record filled to its bound through the procedures themselves: the largest lab valid input allows, a receiver down for a day, 1,000 extends, 30 days of failing retries.

use super::*;
use crate::lab::session::bound::{utf16_bytes, MAX_RECORD_BYTES, MAX_WORKERS};

#[test]
fn the_largest_lab_stays_within_the_bound_whatever_happens() {
    let world = World::new(config(&[
        ("CLEANUP_RETRY_SECONDS", "3600"),
        ("WEBHOOK_MAX_AGE_SECONDS", "86400"),
        ("STUCK_AFTER_ATTEMPTS", "3"),
    ]));
    let id = |n: usize| format!("{}-{n:03}", "k".repeat(124));
    let workers: Vec<String> = (1..=MAX_WORKERS).map(id).collect();
    let workers: Vec<&str> = workers.iter().map(String::as_str).collect();
    let mut new = lab(&id(0), &workers, 60);
    new.user_id = "u".repeat(128);
    // Outside Latin-1: stored as UTF-16, two bytes a character.
    new.vm_name = Some("実験室\"😀".repeat(51).chars().take(256).collect());
    // Every VM fails with a long error full of characters that cost the most.
    *world.error_body.borrow_mut() = "\"错误\u{202e}😀\\".repeat(400);
    for w in workers
        .iter()
        .chain(std::iter::once(&new.lab_request_id.as_str()))
    {
        world.script(w, &[500; 10_000]);
    }
    world.receiver_down.set(true);
    world.create(new.clone());
    for _ in 0..1_000 {
        match world
            .request(Request::Extend {
                minutes: 1,
                by: crate::lab::session::By::Api,
                job: None,
            })
            .unwrap()
        {
            Reply::Lab { .. } => {}
            other => panic!("{other:?}"),
        }
        world.now.set(world.now.get() + SECOND);
    }
    // 30 days of failing attempts, the receiver down for the first day.
    world.run(T0 + 86_400_000);
    world.receiver_down.set(false);
    world.run(T0 + 30 * 86_400_000);
    let s = world.session().unwrap();
    assert!(s.cleanup.attempts > 600, "{}", s.cleanup.attempts);
    assert_eq!(s.status(), Status::Retrying);
    let largest = world
        .saved
        .borrow()
        .iter()
        .map(|text| utf16_bytes(text))
        .max()
        .unwrap();
    println!("largest record saved: {largest} bytes as UTF-16 (bound {MAX_RECORD_BYTES})");
    assert!(largest <= MAX_RECORD_BYTES, "{largest}");
    assert!(
        largest > MAX_RECORD_BYTES / 3,
        "the test filled the record: {largest}"
    );
    // The events went out once the receiver was back; the cleanup never waited for them.
    assert!(world
        .delivered_types()
        .contains(&"lab.cleanup_stuck".to_string()));
}
