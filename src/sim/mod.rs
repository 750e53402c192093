//! The whole fleet in one seeded, replayable simulation: many labs' objects and every actor (creates, extends, ends, activity, resumes, alarms on time, late, twice, evictions, crashes, backend faults, the budget, the receiver and the index down, inventories, the sweep, the previous worker's labs) through random interleavings, the invariants checked after every step (docs/TESTING.md).
//!
//! A run is a list of `Action`s drawn from a seed (`generate`), applied one by one to a fleet of
//! `World`s (the procedures' fake world, one per object, sharing one clock) and checked against
//! a reference `Model` of what was asked. A failure names its seed, its step and the invariant;
//! the same seed replays the same run step for step, and `shrink` cuts its actions down to a
//! short trace that still fails the same way.

mod fleet;
mod model;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use futures::executor::block_on;

use crate::lab::config::Config;
use crate::lab::fleet::report::ReportedVm;
use crate::lab::legacy::{LegacyRecord, LegacyValue};
use crate::lab::ports::Power;
use crate::lab::procedures::tests::{config, wire, Crash, World, LOOP_LIMIT, MINUTE, SECOND, T0};
use crate::lab::procedures::Request;
use crate::lab::session::{By, NewSession};
use crate::lab::text::rfc3339;

use model::{Model, ModelLab};

/// Labs (object names `lab-N`), worker VMs (`vm-N`) and stray VMs (`stray-N`) a run draws from:
/// few, so that actors meet on the same labs and VMs.
const LABS: u8 = 6;
const WORKER_VMS: u8 = 8;
const STRAYS: u8 = 4;

/// One thing that happens to the fleet, with everything it needs (a run replays from these
/// alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `POST /sessions` (a lab id may be reused; workers may be another lab's).
    Create {
        lab: u8,
        workers: Vec<u8>,
        duration: u64,
        idle: Option<u64>,
        keep: Option<u64>,
    },
    Extend {
        lab: u8,
        minutes: u64,
    },
    End {
        lab: u8,
    },
    Activity {
        lab: u8,
    },
    Resume {
        lab: u8,
        minutes: u64,
    },
    /// The clock moves on; every alarm fires at its time.
    Tick {
        ms: i64,
    },
    /// The runtime is paused, then comes back: the alarms that fell due fire late, together.
    Pause {
        ms: i64,
    },
    /// An alarm fires again (delivered at least once).
    AlarmAgain {
        lab: u8,
    },
    /// The object is evicted: what it kept in memory is gone.
    Evict {
        lab: u8,
    },
    /// The object's `op`-th next storage operation fails (before), or lands and then the
    /// invocation dies (after).
    Crash {
        lab: u8,
        op: u8,
        after: bool,
    },
    /// The backend answers a VM's next calls with these statuses (0: no answer in time).
    Fault {
        vm: u8,
        statuses: Vec<u16>,
        power: bool,
    },
    ReceiverDown(bool),
    IndexDown(bool),
    /// The fleet's budget says wait to a lab's next asks.
    BudgetWait {
        lab: u8,
        n: u32,
    },
    /// A Cron Trigger run: the inventory's pull (acting) and the sweep.
    Cron,
    /// An inventory pushed: every VM the backend runs.
    Push {
        act: bool,
    },
    /// A VM starts that no lab lists.
    Stray {
        vm: u8,
    },
    /// Many VMs start at once that no lab lists (created 90 minutes ago, past their grace): a
    /// large inventory.
    Flood {
        n: u16,
    },
    /// The backend's inventory pages and the labs' objects answer the fleet-wide runs this
    /// slowly from now on (0: at once).
    Slow {
        page_ms: i64,
        call_ms: i64,
    },
}

/// How a run ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The step (0-based index of the action) it was found at; the drain is `usize::MAX`.
    pub step: usize,
    /// Which invariant.
    pub kind: &'static str,
    pub message: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub steps: usize,
    pub alarms: usize,
    pub deletions: usize,
    pub stops: usize,
    /// A digest of everything the backend saw and every line logged (two runs of a seed agree).
    pub digest: u64,
}

/// SplitMix64: a seed's stream of numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The fleet's settings for a seed: the grace stage on or off (and its times), webhooks on or
/// off, the Free or the Paid plan with its limits enforced, the inventory's pull acting, the
/// previous worker's cutover at the start.
pub fn settings(seed: u64) -> Config {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
    let mut pairs: Vec<(String, String)> = vec![
        ("ENFORCE_PLAN_LIMITS".into(), "true".into()),
        ("RETENTION_DAYS".into(), "1".into()),
        ("INVENTORY_PATH".into(), "/inventory".into()),
        ("RECONCILE_ACT".into(), "true".into()),
        ("LEGACY_CUTOVER_AT".into(), rfc3339(T0)),
        ("MAX_WORKER_NODES".into(), "3".into()),
        // A lifetime cap the run reaches (extends past it are refused), and the previous
        // worker's labs' hold over within the run.
        ("MAX_DURATION_MINUTES".into(), "300".into()),
    ];
    if rng.chance(50) {
        pairs.push(("PLAN".into(), "paid".into()));
    }
    if rng.chance(60) {
        pairs.push(("STOP_PATH".into(), "/stop".into()));
        pairs.push(("START_PATH".into(), "/start".into()));
        let keep = [0, 5, 30, 120][rng.below(4) as usize];
        pairs.push(("KEEP_STOPPED_MINUTES".into(), keep.to_string()));
        pairs.push(("STOP_ATTEMPTS".into(), (1 + rng.below(3)).to_string()));
    }
    if rng.chance(40) {
        // Webhooks off (the tests' settings have them on).
        pairs.push(("WEBHOOK_URL".into(), String::new()));
    } else if seed % 4 == 3 {
        // The warnings' signed links, on a quarter of the seeds with webhooks (by the seed
        // alone: the draws above and every seed's actions stay what they were). An extend or an
        // activity of such a run is, at every other step, a click of the link of the lab's last
        // warning (`Sim::click`).
        pairs.push((
            "LINK_SECRET".into(),
            "sim-link-secret-0123456789abcdef".into(),
        ));
        pairs.push(("PUBLIC_URL".into(), "https://sim.test".into()));
        // Earlier warnings: a longer time in which their links can be clicked.
        pairs.push(("WARN_BEFORE_MINUTES".into(), "30,10".into()));
        pairs.push(("IDLE_WARN_MINUTES".into(), "3".into()));
    }
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    config(&refs)
}

/// The actions of a run of `steps` steps drawn from `seed`.
pub fn generate(seed: u64, steps: usize) -> Vec<Action> {
    let mut rng = Rng::new(seed);
    let mut actions = Vec::with_capacity(steps);
    for _ in 0..steps {
        let lab = rng.below(u64::from(LABS)) as u8;
        let action = match rng.below(100) {
            0..=15 => {
                let workers = (0..rng.below(4))
                    .map(|_| rng.below(u64::from(WORKER_VMS)) as u8)
                    .collect::<BTreeSet<u8>>()
                    .into_iter()
                    .collect();
                Action::Create {
                    lab,
                    workers,
                    duration: 1 + rng.below(40),
                    idle: rng.chance(30).then(|| 1 + rng.below(15)),
                    keep: rng.chance(25).then(|| rng.below(60)),
                }
            }
            16..=21 => Action::Extend {
                lab,
                minutes: 1 + rng.below(30),
            },
            22..=25 => Action::End { lab },
            26..=32 => Action::Activity { lab },
            33..=37 => Action::Resume {
                lab,
                minutes: 1 + rng.below(30),
            },
            38..=62 => Action::Tick {
                ms: rng.below(4 * 60) as i64 * SECOND,
            },
            63..=65 => Action::Pause {
                ms: (5 + rng.below(240)) as i64 * MINUTE,
            },
            66..=68 => Action::AlarmAgain { lab },
            69..=72 => Action::Evict { lab },
            73..=75 => Action::Crash {
                lab,
                op: 1 + rng.below(6) as u8,
                after: rng.chance(50),
            },
            76..=83 => {
                let statuses = (0..1 + rng.below(4))
                    .map(|_| [500, 502, 503, 429, 404, 0][rng.below(6) as usize])
                    .collect();
                let vm = rng.below(u64::from(WORKER_VMS + LABS)) as u8;
                Action::Fault {
                    vm,
                    statuses,
                    power: rng.chance(50),
                }
            }
            84..=85 => Action::ReceiverDown(rng.chance(50)),
            86..=87 => Action::IndexDown(rng.chance(40)),
            88..=89 => Action::BudgetWait {
                lab,
                n: 1 + rng.below(4) as u32,
            },
            90..=93 => Action::Cron,
            94..=95 => Action::Push {
                act: rng.chance(70),
            },
            96 if rng.chance(30) => Action::Flood {
                n: 50 + rng.below(100) as u16,
            },
            96 => Action::Slow {
                page_ms: [0, 15_000][rng.below(2) as usize],
                call_ms: [0, 45_000][rng.below(2) as usize],
            },
            _ => Action::Stray {
                vm: rng.below(u64::from(STRAYS)) as u8,
            },
        };
        actions.push(action);
    }
    actions
}

fn lab_name(n: u8) -> String {
    format!("lab-{n}")
}

/// A VM of the pool: the workers first, then the labs' masters.
fn vm_name(n: u8) -> String {
    if n < WORKER_VMS {
        format!("vm-{n}")
    } else {
        lab_name(n - WORKER_VMS)
    }
}

/// The previous worker's labs at the start (created before the cutover, not adopted): each a
/// master `old-N` with workers `old-N-wK`, expiring within the run.
fn legacy_labs(seed: u64) -> Vec<(String, Vec<String>, i64, i64)> {
    let mut rng = Rng::new(seed.wrapping_add(0xC0FFEE));
    (0..rng.below(3))
        .map(|n| {
            let created = T0 - (10 + rng.below(50) as i64) * MINUTE;
            let duration = (60 + rng.below(180) as i64) * MINUTE;
            let workers = (0..rng.below(3)).map(|k| format!("old-{n}-w{k}")).collect();
            (format!("old-{n}"), workers, created, duration)
        })
        .collect()
}

/// The simulated fleet.
pub struct Sim {
    seed: u64,
    pub config: Config,
    hub: Rc<World>,
    pub now: i64,
    model: Model,
    /// Backend calls already checked, per object: (deletions and services, power calls).
    checked: BTreeMap<String, (usize, usize)>,
    /// Every VM the backend deleted (2xx), with when.
    gone: BTreeMap<String, i64>,
    /// When each VM the backend runs was created.
    created: BTreeMap<String, i64>,
    seen: RefCell<BTreeMap<String, i64>>,
    state: RefCell<BTreeMap<String, String>>,
    /// Alarms in a row that fired at once on an object and changed nothing.
    stalled: BTreeMap<String, usize>,
    /// How slow the fleet-wide runs' calls are (`Action::Slow`).
    slow: (i64, i64),
    pub stats: Stats,
    step: usize,
    /// What happened, one line a step (the trace a failure prints).
    pub trace: Vec<String>,
}

type Checked<T> = Result<T, Failure>;

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let config = settings(seed);
        let hub = World::named(config.clone(), "__fleet");
        let mut sim = Sim {
            seed,
            config,
            hub,
            now: T0,
            model: Model::default(),
            checked: BTreeMap::new(),
            gone: BTreeMap::new(),
            created: BTreeMap::new(),
            seen: RefCell::new(BTreeMap::new()),
            state: RefCell::new(BTreeMap::new()),
            stalled: BTreeMap::new(),
            slow: (0, 0),
            stats: Stats::default(),
            step: 0,
            trace: Vec::new(),
        };
        for (id, workers, created, duration) in legacy_labs(seed) {
            let world = sim.object(&id);
            *world.legacy.borrow_mut() = Some(LegacyRecord {
                lab_request_id: LegacyValue::Text(id.clone()),
                user_id: LegacyValue::Text("old-user".into()),
                worker_lab_request_ids: LegacyValue::Text(
                    serde_json::to_string(&workers).unwrap_or_default(),
                ),
                duration: LegacyValue::Number((duration / MINUTE) as f64),
            });
            world.alarm.set(Some(created + duration));
            for vm in std::iter::once(&id).chain(&workers) {
                sim.created.insert(vm.clone(), created);
            }
            sim.model.labs.insert(
                id.clone(),
                ModelLab {
                    workers,
                    created_at: created,
                    expires_at: created + duration,
                    idle_ms: None,
                    last_activity: created,
                    keep_ms: 0,
                    ended_by_request: None,
                    stage_may_give_up: false,
                },
            );
            sim.trace.push(format!(
                "{} the previous worker's lab {id} (expires {})",
                sim.at(T0),
                sim.at(created + duration)
            ));
        }
        sim
    }

    /// The object named `name` (a new, empty one the first time), its clock set to now.
    fn object(&self, name: &str) -> Rc<World> {
        let world = self.hub.peer(name);
        world.now.set(self.now);
        world
    }

    fn objects(&self) -> Vec<(String, Rc<World>)> {
        self.hub
            .peers
            .borrow()
            .iter()
            .filter(|(name, _)| name.as_str() != "__fleet")
            .map(|(n, w)| (n.clone(), w.clone()))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect()
    }

    /// A time as the trace shows it: minutes and seconds since the run started.
    fn at(&self, t: i64) -> String {
        let s = (t - T0) / SECOND;
        format!(
            "{}{:>4}:{:02}",
            if s < 0 { "-" } else { "+" },
            s.abs() / 60,
            s.abs() % 60
        )
    }

    fn fail(&self, kind: &'static str, message: String) -> Failure {
        Failure {
            step: self.step,
            kind,
            message,
        }
    }

    fn window(&self) -> i64 {
        (self.config.activity_write_seconds * 1000) as i64
    }

    fn unit(&self) -> i64 {
        self.config.duration_unit_ms()
    }

    /// A request to lab `id`'s object: its status and body.
    fn ask(&mut self, id: &str, request: Request) -> (u16, serde_json::Value) {
        let world = self.object(id);
        let reply = world.request(request);
        self.now = self.now.max(world.now.get());
        match reply {
            Ok(reply) => wire(&reply),
            Err(e) => (500, serde_json::json!({ "storage": e.0 })),
        }
    }

    /// After an answer lost (a 5xx: the invocation died, maybe after its write landed), what
    /// the lab says now, as a client asking again would learn it: its expiry.
    fn resync(&mut self, id: &str) {
        let (code, view) = self.ask(id, Request::Status);
        if code != 200 {
            return;
        }
        if let Some(m) = self.model.labs.get_mut(id) {
            if view["status"] == "scheduled" {
                m.expires_at = epoch(&view["expires_at"]);
            }
        }
    }

    /// With links on: the student opens the link of lab `id`'s last warning of type `kind` (a
    /// GET: nothing may change), then clicks it (a POST); one past its deadline only at every
    /// other step. `None`: no link clicked (the caller acts as without links).
    fn click(&mut self, id: &str, kind: &str) -> Checked<Option<String>> {
        let crate::lab::config::Webhooks::On(hooks) = &self.config.webhooks else {
            return Ok(None);
        };
        let Some(config) = hooks.links.clone() else {
            return Ok(None);
        };
        let world = self.object(id);
        let url = world.deliveries.borrow().iter().rev().find_map(|d| {
            let v: serde_json::Value = serde_json::from_str(&d.body).ok()?;
            if v["type"] != kind {
                return None;
            }
            let links = &v["data"]["links"];
            links["extend"][0]["url"]
                .as_str()
                .or(links["keep_active"]["url"].as_str())
                .map(str::to_string)
        });
        let Some(url) = url else {
            return Ok(None);
        };
        let rest = url
            .strip_prefix("https://sim.test/links/")
            .unwrap_or_default();
        let (action, query) = rest.split_once('?').unwrap_or_default();
        let Ok((link, sig)) = crate::lab::link::parse(action, query, |v| Some(v.to_string()))
        else {
            return Err(self.fail("answers", format!("a warning's link does not read: {url}")));
        };
        if !crate::lab::link::verify(&config, &link, &sig) {
            return Err(self.fail(
                "answers",
                format!("a warning's link does not verify: {url}"),
            ));
        }
        // A link still within its deadline is clicked; a spent or stale one every other step.
        if link.until_ms <= self.now && self.step % 2 == 1 {
            return Ok(None);
        }
        // Opened (a mail scanner, a preview): nothing changes.
        let before = self.object(id).session();
        let (code, offer) = self.ask(
            id,
            Request::Link {
                link: link.clone(),
                apply: false,
            },
        );
        if code < 500 && self.object(id).session() != before {
            return Err(self.fail(
                "answers",
                format!("opening a link of {id} changed its record ({offer})"),
            ));
        }
        // Clicked.
        let (code, answer) = self.ask(
            id,
            Request::Link {
                link: link.clone(),
                apply: true,
            },
        );
        let outcome = answer["outcome"].as_str().unwrap_or("?").to_string();
        if code >= 500 {
            // The answer was lost, maybe after the write: the lab says what it is now.
            self.resync(id);
            if link.action == crate::lab::link::Action::KeepActive {
                let view = self.ask(id, Request::Status).1;
                if let (Some(m), Some(at)) = (
                    self.model.labs.get_mut(id),
                    view["last_activity_at"].as_str(),
                ) {
                    m.last_activity = m.last_activity.max(epoch(&serde_json::json!(at)));
                }
            }
        } else if outcome == "applied" {
            let ends = answer["ends_at_ms"].as_i64().unwrap_or_default();
            let now = self.now;
            let unit = self.unit();
            if let Some(m) = self.model.labs.get_mut(id) {
                match link.action {
                    crate::lab::link::Action::Extend => {
                        let expected = m.expires_at + link.minutes as i64 * unit;
                        m.expires_at = ends;
                        if ends != expected {
                            return Err(self.fail(
                                "answers",
                                format!("a link extended {id} to {ends}, expected {expected}"),
                            ));
                        }
                    }
                    crate::lab::link::Action::KeepActive => {
                        m.last_activity = m.last_activity.max(now)
                    }
                }
            }
        }
        Ok(Some(format!(
            "click {} link of {id} ({} {}) -> {code} {outcome}",
            link.action.name(),
            kind,
            link.minutes
        )))
    }

    /// Applies one action, then checks every invariant.
    pub fn apply(&mut self, action: &Action) -> Checked<()> {
        let line = match self.act(action) {
            Ok(line) => line,
            Err(failure) => {
                self.trace
                    .push(format!("{} {action:?} -> broke", self.at(self.now)));
                return Err(failure);
            }
        };
        self.trace.push(format!("{} {line}", self.at(self.now)));
        self.check()?;
        self.step += 1;
        self.stats.steps += 1;
        Ok(())
    }

    fn act(&mut self, action: &Action) -> Checked<String> {
        let unit = self.unit();
        Ok(match action {
            Action::Create {
                lab,
                workers,
                duration,
                idle,
                keep,
            } => {
                let id = lab_name(*lab);
                let workers: Vec<String> = workers.iter().map(|w| vm_name(*w)).collect();
                let (code, view) = self.ask(
                    &id,
                    Request::Create(NewSession {
                        lab_request_id: id.clone(),
                        user_id: "sim-user".into(),
                        worker_lab_request_ids: workers.clone(),
                        duration: *duration,
                        vm_name: None,
                        idle_timeout: *idle,
                        labels: Default::default(),
                        keep_stopped_minutes: *keep,
                    }),
                );
                // An answer lost (a 5xx) after the create was written: the lab is there, as
                // the status a client asks again says (created now).
                let created_anyway = code >= 500 && {
                    let (status, view) = self.ask(&id, Request::Status);
                    status == 200 && epoch(&view["created_at"]) == self.now
                };
                if code == 201 || created_anyway {
                    let view = if created_anyway {
                        self.ask(&id, Request::Status).1
                    } else {
                        view
                    };
                    let keep_ms = match (&self.config.stop, keep) {
                        (None, _) => 0,
                        (Some(_), Some(k)) => *k as i64 * unit,
                        (Some(stage), None) => stage.keep_stopped_minutes as i64 * unit,
                    };
                    for vm in std::iter::once(&id).chain(&workers) {
                        // A new VM of that id (the backend made it for this lab).
                        self.created.insert(vm.clone(), self.now);
                        self.gone.remove(vm);
                        for (_, world) in self.objects() {
                            world.gone.borrow_mut().remove(vm);
                        }
                    }
                    self.model
                        .strays
                        .retain(|s| !workers.contains(s) && *s != id);
                    let expires = crate::sim::epoch(&view["expires_at"]);
                    self.model.labs.insert(
                        id.clone(),
                        ModelLab {
                            workers: workers.clone(),
                            created_at: self.now,
                            expires_at: expires,
                            idle_ms: idle.map(|m| m as i64 * unit),
                            last_activity: self.now,
                            keep_ms,
                            ended_by_request: None,
                            stage_may_give_up: false,
                        },
                    );
                    if expires != self.now + *duration as i64 * unit {
                        return Err(self.fail(
                            "answers",
                            format!("create of {id} answered expiry {expires}, asked {duration}"),
                        ));
                    }
                }
                format!(
                    "create {id} {workers:?} {duration} min idle {idle:?} keep {keep:?} -> {code}"
                )
            }
            Action::Extend { lab, minutes } => {
                let id = lab_name(*lab);
                if let Some(line) = self.click(&id, "lab.expiring")? {
                    return Ok(line);
                }
                let (code, view) = self.ask(
                    &id,
                    Request::Extend {
                        minutes: *minutes,
                        by: By::Api,
                        job: None,
                    },
                );
                if code >= 500 {
                    self.resync(&id);
                } else if code == 200 {
                    let expires = epoch(&view["expires_at"]);
                    if let Some(m) = self.model.labs.get_mut(&id) {
                        let expected = m.expires_at + *minutes as i64 * unit;
                        m.expires_at = expires;
                        if expires != expected {
                            return Err(self.fail(
                                "answers",
                                format!("extend of {id} by {minutes} answered {expires}, expected {expected}"),
                            ));
                        }
                    }
                }
                format!("extend {id} +{minutes} -> {code}")
            }
            Action::End { lab } => {
                let id = lab_name(*lab);
                let (code, _) = self.ask(
                    &id,
                    Request::End {
                        by: By::Api,
                        job: None,
                    },
                );
                // A 5xx: the invocation died, maybe after the end was written (its answer lost):
                // the lab may be ended from now on (and the status says so).
                if code >= 500 {
                    self.resync(&id);
                }
                if code == 202 || code >= 500 {
                    let now = self.now;
                    if let Some(m) = self.model.labs.get_mut(&id) {
                        m.ended_by_request = Some(m.ended_by_request.unwrap_or(now).min(now));
                    }
                }
                format!("end {id} -> {code}")
            }
            Action::Activity { lab } => {
                let id = lab_name(*lab);
                if let Some(line) = self.click(&id, "lab.idle_warning")? {
                    return Ok(line);
                }
                let (code, _) = self.ask(&id, Request::Activity);
                if code == 204 {
                    let now = self.now;
                    if let Some(m) = self.model.labs.get_mut(&id) {
                        m.last_activity = m.last_activity.max(now);
                    }
                }
                format!("activity {id} -> {code}")
            }
            Action::Resume { lab, minutes } => {
                let id = lab_name(*lab);
                let (code, view) = self.ask(
                    &id,
                    Request::Resume {
                        minutes: *minutes,
                        by: By::Api,
                        job: None,
                    },
                );
                let view = if code >= 500 {
                    // The answer was lost: what the lab is now says whether it was resumed.
                    self.ask(&id, Request::Status).1
                } else {
                    view
                };
                if (code == 200 || code >= 500) && view["status"] == "scheduled" {
                    let now = self.now;
                    if let Some(m) = self.model.labs.get_mut(&id) {
                        let expires = epoch(&view["expires_at"]);
                        if expires != m.expires_at {
                            // Resumed now (a repeat answers the lab as it is).
                            m.expires_at = expires;
                            m.last_activity = now;
                            m.ended_by_request = None;
                            m.stage_may_give_up = false;
                        }
                    }
                }
                format!("resume {id} +{minutes} -> {code}")
            }
            Action::Tick { ms } => {
                let until = self.now + ms;
                let fired = self.fire_until(until, false)?;
                self.now = self.now.max(until);
                format!("tick {} s ({fired} alarms)", ms / SECOND)
            }
            Action::Pause { ms } => {
                self.now += ms;
                let fired = self.fire_until(self.now, true)?;
                format!("pause {} min, back ({fired} alarms late)", ms / MINUTE)
            }
            Action::AlarmAgain { lab } => {
                let id = lab_name(*lab);
                let world = self.object(&id);
                let had = world.alarm.get();
                if had.is_some() || world.record.borrow().is_some() {
                    self.fire(&id, &world)?;
                    if world.alarm.get().is_none() {
                        world
                            .alarm
                            .set(had.filter(|_| world.record.borrow().is_some()));
                    }
                }
                format!("alarm of {id} again")
            }
            Action::Evict { lab } => {
                let id = lab_name(*lab);
                self.object(&id).evict();
                format!("evict {id}")
            }
            Action::Crash { lab, op, after } => {
                let id = lab_name(*lab);
                let world = self.object(&id);
                let mode = if *after { Crash::After } else { Crash::Before };
                world
                    .crash_at
                    .set(Some((world.ops.get() + usize::from(*op), mode)));
                if let Some(m) = self.model.labs.get_mut(&id) {
                    m.stage_may_give_up = true;
                }
                format!("crash {id} at op +{op} ({mode:?})")
            }
            Action::Fault {
                vm,
                statuses,
                power,
            } => {
                let vm = vm_name(*vm);
                for (_, world) in self.objects() {
                    let scripts = if *power {
                        &world.power_scripts
                    } else {
                        &world.scripts
                    };
                    scripts
                        .borrow_mut()
                        .entry(vm.clone())
                        .or_default()
                        .extend(statuses.iter().copied());
                }
                format!(
                    "fault {vm} {} {statuses:?}",
                    if *power { "stop/start" } else { "delete" }
                )
            }
            Action::ReceiverDown(down) => {
                for (_, world) in self.objects() {
                    world.receiver_down.set(*down);
                }
                format!("receiver {}", if *down { "down" } else { "up" })
            }
            Action::IndexDown(down) => {
                for (_, world) in self.objects() {
                    world.index_down.set(*down);
                }
                format!("index {}", if *down { "down" } else { "up" })
            }
            Action::BudgetWait { lab, n } => {
                let id = lab_name(*lab);
                self.object(&id).budget_waits.set(*n);
                format!("budget says wait to {id} {n} times")
            }
            Action::Cron => {
                let started = self.now;
                let record = self.with_fleet(|fleet, config, now| {
                    block_on(crate::lab::fleet::sweep::run(fleet, config, now))
                });
                let took = self.now - started;
                let wall = self.config.limits().wall_ms;
                if took > wall {
                    return Err(self.fail(
                        "every invocation within its plan",
                        format!(
                            "a Cron Trigger run took {} s of its {} s",
                            took / 1000,
                            wall / 1000
                        ),
                    ));
                }
                format!(
                    "cron ({} s): {} overdue, {} revived, inventory {:?}",
                    took / 1000,
                    record.overdue,
                    record.revived,
                    record.inventory
                )
            }
            Action::Flood { n } => {
                let created = self.now - 90 * MINUTE;
                for k in 0..*n {
                    let vm = format!("flood-{k}");
                    if !self.model.strays.contains(&vm) {
                        self.model.strays.push(vm.clone());
                    }
                    self.created.insert(vm.clone(), created);
                    self.gone.remove(&vm);
                }
                format!("{n} VMs start that no lab lists")
            }
            Action::Slow { page_ms, call_ms } => {
                self.slow = (*page_ms, *call_ms);
                format!("inventory pages take {page_ms} ms, calls to objects {call_ms} ms")
            }
            Action::Push { act } => {
                let running = self.running();
                let answer = self.with_fleet(|fleet, config, now| {
                    block_on(crate::lab::fleet::inventory::push(
                        fleet, config, &running, *act, now,
                    ))
                });
                match answer {
                    Ok(a) => format!(
                        "push {} VMs (act {act}): scheduled {:?}, legacy {}",
                        running.len(),
                        a.scheduled
                            .iter()
                            .map(|s| s.lab_request_id.as_str())
                            .collect::<Vec<_>>(),
                        a.legacy
                    ),
                    Err(e) => format!("push (act {act}) failed: {e}"),
                }
            }
            Action::Stray { vm } => {
                let vm = format!("stray-{vm}");
                if !self.model.strays.contains(&vm) {
                    self.model.strays.push(vm.clone());
                    self.created.insert(vm.clone(), self.now);
                    self.gone.remove(&vm);
                    for (_, world) in self.objects() {
                        world.gone.borrow_mut().remove(&vm);
                    }
                }
                format!("stray VM {vm} starts")
            }
        })
    }

    /// What the backend runs now: every VM a lab or a stray made, not deleted since.
    /// In the backend's own order (not the labs'): a lab's workers may be listed on a page
    /// before its master's, or pushed without it.
    fn running(&self) -> Vec<ReportedVm> {
        let mut running: Vec<ReportedVm> = self
            .created
            .iter()
            .filter(|(vm, _)| !self.gone.contains_key(*vm))
            .map(|(vm, at)| ReportedVm {
                lab_request_id: vm.clone(),
                user_id: "sim-user".into(),
                created_at_ms: Some(*at),
            })
            .collect();
        let order = |vm: &ReportedVm| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (self.seed, &vm.lab_request_id).hash(&mut h);
            h.finish()
        };
        running.sort_by_key(order);
        running
    }

    /// Runs `f` as one fleet-wide invocation (a push, a Cron Trigger run).
    fn with_fleet<T>(&mut self, f: impl FnOnce(&fleet::SimFleet<'_>, &Config, i64) -> T) -> T {
        let objects = self.objects();
        for (_, world) in &objects {
            world.now.set(self.now);
        }
        self.hub.now.set(self.now);
        self.hub.invocation();
        let running = self.running();
        let fleet = fleet::SimFleet {
            hub: &self.hub,
            objects,
            seen: &self.seen,
            state: &self.state,
            running,
            started: self.now,
            page_ms: self.slow.0,
            call_ms: self.slow.1,
        };
        let out = f(&fleet, &self.config, self.now);
        self.now = self.now.max(self.hub.now.get());
        out
    }

    /// Fires every alarm due by `until`, earliest first (`late`: all at the time now, as after
    /// a pause). How many fired.
    fn fire_until(&mut self, until: i64, late: bool) -> Checked<usize> {
        let mut fired = 0;
        loop {
            let next = self
                .objects()
                .into_iter()
                .filter_map(|(name, w)| w.alarm.get().map(|at| (at, name, w)))
                .filter(|(at, _, _)| *at <= until)
                .min_by_key(|(at, name, _)| (*at, name.clone()));
            let Some((at, name, world)) = next else {
                return Ok(fired);
            };
            if !late {
                self.now = self.now.max(at);
            }
            world.alarm.set(None);
            self.fire(&name, &world)?;
            fired += 1;
            if fired > 20_000 {
                return Err(self.fail(
                    "no loop",
                    format!("more than 20,000 alarms fired before {}", self.at(until)),
                ));
            }
        }
    }

    /// Fires `world`'s alarm now, as the platform runs one (a failed alarm again 2 s later).
    fn fire(&mut self, name: &str, world: &World) -> Checked<()> {
        world.now.set(self.now);
        let before = world.progress();
        world.invocation();
        match block_on(world.lab().alarm()) {
            Ok(done) => {
                if done.deliver {
                    world.invocation();
                    let _ = block_on(world.lab().deliver_due());
                }
            }
            Err(_) => {
                if world.alarm.get().is_none() {
                    world.alarm.set(Some(world.now.get() + 2 * SECOND));
                }
            }
        }
        self.stats.alarms += 1;
        self.now = self.now.max(world.now.get());
        let again_now = world.alarm.get().is_some_and(|next| next <= self.now);
        let stalled = self.stalled.entry(name.to_string()).or_default();
        *stalled = if again_now && world.progress() == before {
            *stalled + 1
        } else {
            0
        };
        if *stalled >= LOOP_LIMIT {
            return Err(self.fail(
                "no loop",
                format!(
                    "the alarm of {name} fired {LOOP_LIMIT} times at {} with no progress and set itself again at once ({:?})",
                    self.at(self.now),
                    world.session().map(|s| s.status())
                ),
            ));
        }
        self.check_calls()
    }

    /// Every invariant that holds after any step.
    fn check(&mut self) -> Checked<()> {
        self.check_calls()?;
        for (name, world) in self.objects() {
            if let Some(text) = world.record.borrow().as_deref() {
                // UTF-16 units are never more than UTF-8 bytes: counted only when it may matter.
                let max = crate::lab::session::bound::MAX_RECORD_BYTES;
                let bytes = if text.len() * 2 <= max {
                    0
                } else {
                    text.encode_utf16().count() * 2
                };
                if bytes > max {
                    return Err(self.fail(
                        "record within its bound",
                        format!("{name}'s record is {bytes} bytes"),
                    ));
                }
                if world.alarm.get().is_none() {
                    let status = world.session().map(|s| s.status());
                    return Err(self.fail(
                        "alarm while work remains",
                        format!("{name} holds a record ({status:?}) and no alarm"),
                    ));
                }
            }
            if world.claim.borrow().is_some() && world.alarm.get().is_none() {
                return Err(self.fail(
                    "alarm while work remains",
                    format!("{name} holds a claim and no alarm (it would never be released)"),
                ));
            }
            if world.exceeded.get() > 0 {
                return Err(self.fail(
                    "every invocation within its plan",
                    format!("{name} made {} calls past the plan", world.exceeded.get()),
                ));
            }
        }
        if self.hub.exceeded.get() > 0 {
            return Err(self.fail(
                "every invocation within its plan",
                format!(
                    "a fleet-wide run made {} calls past the plan",
                    self.hub.exceeded.get()
                ),
            ));
        }
        Ok(())
    }

    /// The backend calls made since the last check: no VM stopped or deleted before its lab is
    /// due (its time up, or its time up and kept stopped, or ended by request), and no VM a
    /// live lab lists deleted by any other object (a reconciliation, an older lab).
    fn check_calls(&mut self) -> Checked<()> {
        let window = self.window();
        let mut newly_gone = Vec::new();
        for (name, world) in self.objects() {
            let (calls_seen, powers_seen) = self.checked.get(&name).copied().unwrap_or((0, 0));
            let calls: Vec<_> = world.calls.borrow()[calls_seen..].to_vec();
            let powers: Vec<_> = world.powers.borrow()[powers_seen..].to_vec();
            self.checked.insert(
                name.clone(),
                (calls_seen + calls.len(), powers_seen + powers.len()),
            );
            let destroys = calls
                .iter()
                .filter(|c| !c.services)
                .map(|c| (c.id.clone(), c.at, c.status, "deleted"))
                .chain(
                    powers
                        .iter()
                        .filter(|(p, ..)| *p == Power::Stop)
                        .map(|(_, id, at, status)| (id.clone(), *at, *status, "stopped")),
                );
            for (vm, at, status, what) in destroys {
                if let Some(lab) = self.model.labs.get(&name).filter(|l| l.lists(&name, &vm)) {
                    let earliest = if what == "deleted" {
                        lab.delete_from(window)
                    } else {
                        lab.due(window)
                    };
                    if at < earliest {
                        return Err(self.fail(
                            "never early",
                            format!(
                                "VM {vm} of lab {name} {what} at {} before its lab was due at {} ({lab:?})",
                                self.at(at),
                                self.at(earliest)
                            ),
                        ));
                    }
                }
                let live = self.model.live_listing(&vm, &name, at, window);
                if !live.is_empty() {
                    return Err(self.fail(
                        "never a live lab's VM",
                        format!(
                            "VM {vm} {what} at {} by {name}, while lab {live:?} lists it and is live",
                            self.at(at)
                        ),
                    ));
                }
                if status == 404 && !self.gone.contains_key(&vm) {
                    // The backend says it does not run it: gone, for the whole fleet.
                    self.gone.insert(vm.clone(), at);
                    newly_gone.push((vm.clone(), at));
                }
                if what == "stopped" {
                    self.stats.stops += 1;
                    // A stop that failed otherwise than by a refusal: the stage may give up.
                    if !matches!(status, 200..=299 | 404 | 429 | 503) {
                        if let Some(m) = self.model.labs.get_mut(&name) {
                            m.stage_may_give_up = true;
                        }
                    }
                } else if (200..300).contains(&status) {
                    self.stats.deletions += 1;
                    if !self.gone.contains_key(&vm) {
                        self.gone.insert(vm.clone(), at);
                        newly_gone.push((vm.clone(), at));
                    }
                }
            }
        }
        // The backend is one: a VM deleted through one object is gone for every other.
        if !newly_gone.is_empty() {
            for (_, world) in self.objects() {
                let mut gone = world.gone.borrow_mut();
                for (vm, at) in &newly_gone {
                    gone.entry(vm.clone()).or_insert(*at);
                }
            }
        }
        Ok(())
    }

    /// Faults stop; the fleet runs on until it is quiet. Then every lab whose time is up has
    /// every VM deleted (liveness), within a bounded number of alarms, and the index agrees
    /// with the records.
    pub fn drain(&mut self) -> Checked<()> {
        self.step = usize::MAX;
        for (_, world) in self.objects() {
            world.scripts.borrow_mut().clear();
            world.power_scripts.borrow_mut().clear();
            world.receiver_down.set(false);
            world.index_down.set(false);
            world.budget_waits.set(0);
            world.crash_at.set(None);
        }
        let alarms_before = self.stats.alarms;
        // Past every lab's expiry and the time its VMs are kept stopped, with retries.
        let horizon = self
            .model
            .labs
            .values()
            .map(|l| l.expires_at.max(l.due(0)) + l.keep_ms)
            .max()
            .unwrap_or(self.now)
            .max(self.now)
            + 6 * 60 * MINUTE;
        while self.now < horizon {
            self.fire_until(self.now + 10 * MINUTE, false)?;
            self.now += 10 * MINUTE;
            self.check()?;
        }
        let labs = self.model.labs.len().max(1);
        let alarms = self.stats.alarms - alarms_before;
        if alarms > 400 * labs + 400 {
            return Err(self.fail(
                "always eventually",
                format!("{alarms} alarms to quiet {labs} labs"),
            ));
        }
        for (id, lab) in self.model.labs.clone() {
            for vm in lab.vms(&id) {
                if !self.gone.contains_key(&vm) {
                    let status = self.object(&id).session().map(|s| s.status());
                    return Err(self.fail(
                        "always eventually",
                        format!(
                            "VM {vm} of lab {id} ({status:?}) is not deleted by {} (its lab was due at {})",
                            self.at(self.now),
                            self.at(lab.due(0))
                        ),
                    ));
                }
            }
        }
        // The index agrees with every record kept (a write owed was made by now).
        for (name, world) in self.objects() {
            if let Some(s) = world.session() {
                let row = world.rows.borrow().get(&name).cloned();
                if row.as_ref().map(|r| r.status) != Some(s.status()) {
                    return Err(self.fail(
                        "the index agrees when quiet",
                        format!(
                            "{name} is {:?}; its index row says {:?}",
                            s.status(),
                            row.map(|r| r.status)
                        ),
                    ));
                }
            }
        }
        // Then retention ends: every record and claim goes, and the alarms with them.
        let until = self.now + 3 * 24 * 60 * MINUTE;
        while self.now < until {
            self.fire_until(self.now + 60 * MINUTE, false)?;
            self.now += 60 * MINUTE;
        }
        self.check()?;
        Ok(())
    }

    /// A digest of what the backend saw and what was logged (replay compares it).
    fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, world) in self.objects() {
            name.hash(&mut h);
            for c in world.calls.borrow().iter() {
                (c.services, &c.id, c.at, c.status).hash(&mut h);
            }
            for (p, id, at, status) in world.powers.borrow().iter() {
                (*p == Power::Stop, id, at, status).hash(&mut h);
            }
            for (_, line) in world.lines.borrow().iter() {
                line.hash(&mut h);
            }
        }
        h.finish()
    }
}

/// An RFC 3339 time of a view, in ms.
fn epoch(v: &serde_json::Value) -> i64 {
    v.as_str()
        .and_then(crate::lab::time::parse_rfc3339)
        .unwrap_or(i64::MIN)
}

/// Runs `actions` on the fleet of `seed`, then drains it. A panic anywhere is a failure too.
pub fn run(seed: u64, actions: &[Action]) -> (Result<Stats, Failure>, Vec<String>) {
    let trace = Rc::new(RefCell::new(Vec::new()));
    let out = {
        let trace = trace.clone();
        panic::catch_unwind(AssertUnwindSafe(move || {
            let mut sim = Sim::new(seed);
            let result = (|| {
                for action in actions {
                    sim.apply(action)?;
                }
                sim.drain()
            })();
            *trace.borrow_mut() = std::mem::take(&mut sim.trace);
            result.map(|()| Stats {
                digest: sim.digest(),
                ..sim.stats.clone()
            })
        }))
    };
    let trace = trace.take();
    match out {
        Ok(result) => (result, trace),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (
                Err(Failure {
                    step: trace.len(),
                    kind: "no panic",
                    message,
                }),
                trace,
            )
        }
    }
}

/// Cuts `actions` down to a short list that still fails with the same kind of failure: chunks
/// removed, halving their size (delta debugging), as long as the failure stays.
pub fn shrink(seed: u64, actions: &[Action], kind: &'static str) -> Vec<Action> {
    let fails = |list: &[Action]| matches!(run(seed, list).0, Err(f) if f.kind == kind);
    let mut current: Vec<Action> = actions.to_vec();
    // Nothing after the failing step matters.
    let mut chunk = current.len() / 2;
    while chunk >= 1 {
        let mut start = 0;
        while start < current.len() {
            let mut candidate = current.clone();
            let end = (start + chunk).min(candidate.len());
            candidate.drain(start..end);
            if fails(&candidate) {
                current = candidate;
            } else {
                start += chunk;
            }
        }
        chunk /= 2;
    }
    current
}

/// A failing seed, as printed: the failure, and the shrunk run's timeline.
#[derive(Debug, Clone)]
pub struct Report {
    pub failure: Failure,
    pub text: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Runs one seed of `steps` steps; on a failure, shrinks it and answers the report to print.
pub fn check_seed(seed: u64, steps: usize) -> Result<Stats, Report> {
    let actions = generate(seed, steps);
    let (result, _) = run(seed, &actions);
    match result {
        Ok(stats) => Ok(stats),
        Err(failure) => {
            let short = shrink(seed, &actions, failure.kind);
            let (again, trace) = run(seed, &short);
            let shown = again.err().unwrap_or(failure.clone());
            let text = format!(
                "seed {seed}: {} broken at step {} of {steps}: {}\nreplay: SIM_SEED={seed} SIM_STEPS={steps} cargo test --lib sim::tests::replay -- --nocapture\nshrunk to {} of {} actions; the labs' timeline:\n{}",
                failure.kind,
                failure.step,
                shown.message,
                short.len(),
                actions.len(),
                trace.join("\n")
            );
            Err(Report { failure, text })
        }
    }
}

#[cfg(test)]
mod tests;
