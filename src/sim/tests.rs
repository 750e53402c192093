//! The simulation in `cargo test`: 500 seeds of 200 steps (more with `SIM_SEEDS`, `SIM_STEPS`), one seed replayed (`SIM_SEED`), and the same seed twice giving the same run.

use super::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `SIM_SEEDS` seeds (500) of `SIM_STEPS` steps (200) each, from `SIM_FIRST_SEED` (0): every
/// invariant after every step, then the drain. The seeds are shared out over the machine's
/// cores (`SIM_THREADS`, by default all of them); a failure prints the smallest failing seed
/// (seeds above one that failed are skipped) and its shrunk trace, whatever the threads' order.
#[test]
fn seeds() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    let (first, seeds, steps) = (
        env("SIM_FIRST_SEED", 0),
        env("SIM_SEEDS", 500),
        env("SIM_STEPS", 200) as usize,
    );
    let threads = env(
        "SIM_THREADS",
        std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    )
    .max(1);
    let started = std::time::Instant::now();
    let next = AtomicU64::new(first);
    let lowest_failure = AtomicU64::new(u64::MAX);
    let failure: Mutex<Option<(u64, Report)>> = Mutex::new(None);
    let total = Mutex::new(Stats::default());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut mine = Stats::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + seeds || seed > lowest_failure.load(Ordering::Relaxed) {
                        break;
                    }
                    match check_seed(seed, steps) {
                        Ok(stats) => {
                            mine.steps += stats.steps;
                            mine.alarms += stats.alarms;
                            mine.deletions += stats.deletions;
                            mine.stops += stats.stops;
                        }
                        Err(report) => {
                            lowest_failure.fetch_min(seed, Ordering::Relaxed);
                            let mut slot = failure.lock().unwrap();
                            if slot.as_ref().is_none_or(|(s, _)| seed < *s) {
                                *slot = Some((seed, report));
                            }
                        }
                    }
                }
                let mut t = total.lock().unwrap();
                t.steps += mine.steps;
                t.alarms += mine.alarms;
                t.deletions += mine.deletions;
                t.stops += mine.stops;
            });
        }
    });
    if let Some((_, report)) = failure.into_inner().unwrap() {
        panic!("{report}\n(invariant broken: {})", report.failure.kind);
    }
    let total = total.into_inner().unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "simulation: {seeds} seeds x {steps} steps on {threads} threads: {} steps, {} alarms, {} deletions, {} stops in {secs:.1} s ({:.0} steps/s)",
        total.steps,
        total.alarms,
        total.deletions,
        total.stops,
        total.steps as f64 / secs
    );
}

/// `SIM_SEED=N cargo test --lib sim::tests::replay -- --nocapture`: one seed, its trace printed.
#[test]
fn replay() {
    let seed = env("SIM_SEED", 1);
    let steps = env("SIM_STEPS", 200) as usize;
    let (result, trace) = run(seed, &generate(seed, steps));
    if std::env::var("SIM_SEED").is_ok() {
        eprintln!("{}", trace.join("\n"));
    }
    if let Err(f) = result {
        match check_seed(seed, steps) {
            Err(report) => panic!("{report}"),
            Ok(_) => panic!("{f:?}"),
        }
    }
}

/// A seed is a run: the same seed twice does the same thing, step for step.
#[test]
fn a_seed_replays_step_for_step() {
    for seed in [3, 17, 42] {
        let actions = generate(seed, 150);
        assert_eq!(actions, generate(seed, 150));
        let (a, trace_a) = run(seed, &actions);
        let (b, trace_b) = run(seed, &actions);
        assert_eq!(trace_a, trace_b, "seed {seed}");
        assert_eq!(a, b, "seed {seed}");
    }
}

/// A scenario the seeds meet rarely, written out: a large inventory (150 unknown VMs), a slow
/// backend and slow objects, two Cron Trigger runs 15 minutes apart (the second acts on 100):
/// each run within its wall time.
#[test]
fn a_slow_large_inventory_keeps_each_runs_wall_time() {
    let actions = vec![
        // After the previous worker's labs could have expired (their VMs are held till then).
        Action::Pause {
            ms: 6 * 60 * MINUTE,
        },
        Action::Flood { n: 150 },
        Action::Slow {
            page_ms: 15_000,
            call_ms: 45_000,
        },
        Action::Cron,
        Action::Tick { ms: 15 * MINUTE },
        Action::Cron,
        Action::Tick { ms: 15 * MINUTE },
        Action::Cron,
    ];
    for seed in 0..4 {
        let (result, trace) = run(seed, &actions);
        if let Err(f) = result {
            panic!("seed {seed}: {f:?}\n{}", trace.join("\n"));
        }
        eprintln!("{}", trace.join("\n"));
    }
}

/// The previous worker's labs (not adopted yet) seen by acting inventories past their VMs'
/// grace: none of their VMs is taken for an orphan before the lab's expiry.
#[test]
fn the_previous_workers_labs_are_never_taken_for_orphans() {
    // Seeds whose previous worker's labs have workers and expire late in the run.
    let seeds: Vec<u64> = (0..200)
        .filter(|s| {
            legacy_labs(*s)
                .iter()
                .any(|(_, workers, created, duration)| {
                    !workers.is_empty() && created + duration > T0 + 90 * MINUTE
                })
        })
        .take(5)
        .collect();
    assert_eq!(seeds.len(), 5);
    let actions = vec![
        Action::Tick { ms: 62 * MINUTE },
        Action::Push { act: true },
        Action::Tick { ms: 12 * MINUTE },
        Action::Push { act: true },
        Action::Cron,
        Action::Tick { ms: 12 * MINUTE },
        Action::Cron,
    ];
    for seed in seeds {
        let (result, trace) = run(seed, &actions);
        if let Err(f) = result {
            panic!("seed {seed}: {f:?}\n{}", trace.join("\n"));
        }
    }
}
