//! The fleet-wide budget of backend calls on workerd: the `BackendBudget` Durable Object (one, named `fleet`) that leases permits, and the client every lab's attempt asks before each call.

use crate::lab::error::ServiceError;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use std::rc::Rc;

use futures::channel::oneshot;
use futures::future::{select, Either};
use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::lab::config::Config;
use crate::lab::fleet::budget::{Allocator, Answered, Asker, CallOutcome, Lease, Then, Waiting};
use crate::lab::ports::Permit;
use crate::platform::objects;
use crate::platform::runtime::{now_ms, within};
use crate::platform::usage::{add, Usage};

/// Name of the coordinator's binding in `wrangler.toml`.
pub const BUDGET_BINDING: &str = "BACKEND_BUDGET";
/// The one coordinator's name.
const COORDINATOR: &str = "fleet";
/// How long the coordinator keeps a request for a permit waiting before it answers "come back
/// later" (the lab then asks again, for up to `WAIT_IN_ATTEMPT_MS`).
const MAX_WAIT_MS: i64 = 4_000;
/// What "come back later" says.
const COME_BACK_MS: i64 = 2_000;
/// How long a lab waits for the coordinator to answer at all before it calls without a permit:
/// well past `MAX_WAIT_MS`, so a coordinator busy with a thousand waiting labs (each answered
/// within `MAX_WAIT_MS` of its own turn) still counts as reachable. Measured with 1,000 labs
/// expiring together on this machine: 12 s against a 10 s wait made 854 of them fall back.
const UNREACHABLE_AFTER: Duration = Duration::from_millis(20_000);

#[derive(Serialize)]
struct Acquire {
    /// The lab asking (labs are served fairly), and whether its last attempt failed; neither
    /// from a lab of the previous version.
    lab: String,
    failing: bool,
    priority: i64,
    max: u32,
    lease_ms: i64,
    window_ms: i64,
    /// Permits wanted at once (the calls the lab's attempt can start now).
    wanted: u32,
}

impl Acquire {
    /// The request as `Serialize` writes it; `lab`, `failing` and `wanted` may be missing (a
    /// lab of the previous version). Read from a JSON value: a derived deserializer costs the
    /// wasm more than these fields.
    fn from_json(text: &str) -> Option<Acquire> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(Acquire {
            lab: v["lab"].as_str().unwrap_or_default().to_string(),
            failing: v["failing"].as_bool().unwrap_or(false),
            priority: v["priority"].as_i64()?,
            max: u32::try_from(v["max"].as_u64()?).ok()?,
            lease_ms: v["lease_ms"].as_i64()?,
            window_ms: v["window_ms"].as_i64()?,
            wanted: v["wanted"]
                .as_u64()
                .map_or(Some(1), |n| u32::try_from(n).ok())?,
        })
    }
}

#[derive(Serialize)]
struct Release {
    lease: u64,
    overloaded: bool,
    /// Never used for a call: the limit stays as it is.
    unused: bool,
}

impl Release {
    /// The release as `Serialize` writes it (`unused` missing from a lab of the previous
    /// version).
    fn from_json(text: &str) -> Option<Release> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(Release {
            lease: v["lease"].as_u64()?,
            overloaded: v["overloaded"].as_bool()?,
            unused: v["unused"].as_bool().unwrap_or(false),
        })
    }
}

/// The coordinator: one allocator in memory (a restart starts it afresh; leases are short), and
/// the requests waiting for a permit.
#[durable_object]
pub struct BackendBudget {
    allocator: RefCell<Option<Allocator>>,
    waiters: RefCell<HashMap<u64, oneshot::Sender<Vec<Lease>>>>,
}

impl BackendBudget {
    /// Grants what the limit allows to the waiting requests; a lease whose requester left goes
    /// straight back.
    fn dispatch(&self, now: i64) {
        let granted = match self.allocator.borrow_mut().as_mut() {
            Some(a) => a.grant(now),
            None => return,
        };
        for (ticket, leases) in granted {
            let sender = self.waiters.borrow_mut().remove(&ticket);
            let undelivered = match sender {
                Some(sender) => sender.send(leases).err(),
                None => Some(leases),
            };
            if let (Some(leases), Some(a)) = (undelivered, self.allocator.borrow_mut().as_mut()) {
                for lease in leases {
                    a.give_back(lease.id);
                }
            }
        }
    }

    async fn acquire(&self, ask: Acquire) -> Result<Response> {
        let now = now_ms();
        let deadline = now.saturating_add(MAX_WAIT_MS);
        let ticket = {
            let mut allocator = self.allocator.borrow_mut();
            let a = allocator
                .get_or_insert_with(|| Allocator::new(ask.max, ask.lease_ms, ask.window_ms));
            // A full queue: ask again after a pause (spread), not one more connection held.
            if let Some(pause) = a.shed(now, crate::platform::runtime::random()) {
                return Response::from_json(&AcquireAnswer {
                    wait_ms: Some(COME_BACK_MS),
                    retry_in_ms: pause,
                    ..AcquireAnswer::default()
                });
            }
            let asker = Asker {
                lab: &ask.lab,
                failing: ask.failing,
            };
            a.request(asker, ask.priority, deadline, ask.wanted)
        };
        let (sender, mut receiver) = oneshot::channel();
        self.waiters.borrow_mut().insert(ticket, sender);
        self.dispatch(now);
        // Woken by a grant (a release or a new request dispatches), else at the next lease's
        // expiry or this request's deadline, whichever comes first.
        loop {
            let now = now_ms();
            let next = self
                .allocator
                .borrow()
                .as_ref()
                .and_then(Allocator::next_lease_expiry_ms)
                .unwrap_or(deadline)
                .min(deadline);
            let pause = Duration::from_millis(next.saturating_sub(now).max(1) as u64);
            match select(&mut receiver, worker::Delay::from(pause)).await {
                Either::Left((Ok(leases), _)) => return granted(&leases),
                Either::Left((Err(_), _)) => break,
                Either::Right(_) => {
                    let now = now_ms();
                    self.dispatch(now);
                    if let Ok(Some(leases)) = receiver.try_recv() {
                        return granted(&leases);
                    }
                    if now >= deadline {
                        break;
                    }
                }
            }
        }
        self.waiters.borrow_mut().remove(&ticket);
        if let Some(a) = self.allocator.borrow_mut().as_mut() {
            a.cancel(ticket);
        }
        Response::from_json(&AcquireAnswer {
            wait_ms: Some(COME_BACK_MS),
            ..AcquireAnswer::default()
        })
    }

    fn state(&self) -> serde_json::Value {
        match self.allocator.borrow().as_ref() {
            Some(a) => serde_json::json!({
                "limit": a.limit(), "in_flight": a.in_flight(), "waiting": a.waiting(),
            }),
            None => serde_json::json!({ "limit": null, "in_flight": 0, "waiting": 0 }),
        }
    }
}

/// The answer to a request that got permits: their lease ids.
fn granted(leases: &[Lease]) -> Result<Response> {
    Response::from_json(&AcquireAnswer {
        leases: leases.iter().map(|l| l.id).collect(),
        ..AcquireAnswer::default()
    })
}

/// The coordinator's answer to `/acquire`, as it sends it and a lab reads it: the leases
/// granted, or (none) when to come back: `wait_ms` if the attempt gives up, after
/// `retry_in_ms` if it asks again (0: at once).
#[derive(Debug, Default, Serialize)]
struct AcquireAnswer {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    leases: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    retry_in_ms: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl AcquireAnswer {
    /// The answer as `Serialize` writes it (read from the JSON value: a derived deserializer
    /// costs the wasm more than these three fields).
    fn from_value(v: &serde_json::Value) -> AcquireAnswer {
        AcquireAnswer {
            leases: v["leases"]
                .as_array()
                .map(|l| l.iter().filter_map(serde_json::Value::as_u64).collect())
                .unwrap_or_default(),
            wait_ms: v["wait_ms"].as_i64(),
            retry_in_ms: v["retry_in_ms"].as_i64().unwrap_or(0),
        }
    }
}

impl DurableObject for BackendBudget {
    fn new(_state: State, _env: Env) -> Self {
        BackendBudget {
            allocator: RefCell::new(None),
            waiters: RefCell::new(HashMap::new()),
        }
    }

    async fn fetch(&self, mut request: Request) -> Result<Response> {
        let path = request.path();
        let body = request.text().await.unwrap_or_default();
        match path.as_str() {
            "/acquire" => match Acquire::from_json(&body) {
                Some(ask) => self.acquire(ask).await,
                None => Response::error("bad acquire", 400),
            },
            "/release" => match Release::from_json(&body) {
                Some(r) => {
                    let now = now_ms();
                    if let Some(a) = self.allocator.borrow_mut().as_mut() {
                        if r.unused {
                            a.give_back(r.lease);
                        } else {
                            let outcome = if r.overloaded {
                                CallOutcome::Overloaded
                            } else {
                                CallOutcome::Answered
                            };
                            a.release(r.lease, outcome, now);
                        }
                    }
                    self.dispatch(now);
                    Response::empty()
                }
                None => Response::error("bad release", 400),
            },
            "/state" => Response::from_json(&self.state()),
            _ => Response::error("no such budget route", 404),
        }
    }
}

/// One request to the coordinator; its JSON answer.
async fn call(
    env: &Env,
    path: &str,
    body: String,
) -> std::result::Result<serde_json::Value, ServiceError> {
    let call = objects::Call {
        method: "POST",
        path,
        body: Some(body),
        timeout_ms: None,
    };
    let answer = objects::fetch(env, BUDGET_BINDING, COORDINATOR, "budget", call).await?;
    if !answer.ok() {
        return Err(ServiceError::Failed(format!(
            "the budget answered {}",
            answer.status()
        )));
    }
    let text = objects::text(&answer).await?;
    serde_json::from_str(&text).or(Ok(serde_json::Value::Null))
}

/// How long a permit kept for a lab's next call stays usable: a lease lasts the backend timeout
/// plus 2 s, so a call started within this still ends before its lease does.
const SPARE_FRESH_MS: i64 = 1_000;

/// What one request to the coordinator came back with, shared by the calls that waited for it.
/// `Ok(None)`: permits granted (in `spare`); `Ok(Some(wait))`: come back later, after the
/// pause it says (`retry_in_ms`, 0 when the coordinator held the request already).
type Asked = Result<Option<ComeBack>, ServiceError>;

#[derive(Debug, Clone, Copy)]
struct ComeBack {
    wait_ms: i64,
    retry_in_ms: i64,
}

/// A lab's side of the budget for one invocation: asks the coordinator for as many permits as
/// the attempt can use at once (one round trip for up to `CLEANUP_CONCURRENCY` calls), keeps the
/// spare ones for its next calls a short while, and returns what it did not use.
pub struct Permits {
    env: Env,
    state: worker::worker_sys::DurableObjectState,
    max: Option<u32>,
    timeout_ms: i64,
    /// Leases granted and not used yet, with when they were granted.
    spare: Rc<RefCell<Vec<(u64, i64)>>>,
    /// The request to the coordinator in flight, which other calls of the attempt wait for.
    /// `Some` while a request is in flight: the calls waiting for its answer.
    asking: RefCell<Option<Vec<oneshot::Sender<Asked>>>>,
    /// Counts the round trips to the coordinator.
    usage: Rc<Usage>,
    /// Since when this invocation has been told to come back later (`lab::fleet::budget`).
    waiting: std::cell::Cell<Waiting>,
}

impl Permits {
    pub fn new(
        env: &Env,
        state: &worker::worker_sys::DurableObjectState,
        config: &Config,
        usage: Rc<Usage>,
    ) -> Self {
        Permits {
            usage,
            env: env.clone(),
            state: JsValue::from(state).unchecked_into(),
            max: config.backend_max_concurrency,
            timeout_ms: (config.backend_timeout_seconds * 1000) as i64,
            spare: Rc::new(RefCell::new(Vec::new())),
            asking: RefCell::new(None),
            waiting: std::cell::Cell::new(Waiting::default()),
        }
    }

    /// A spare permit still fresh enough for a call; stale ones go back.
    fn take_spare(&self, now: i64) -> Option<u64> {
        let mut spare = self.spare.borrow_mut();
        let stale: Vec<u64> = spare
            .iter()
            .filter(|(_, at)| now.saturating_sub(*at) >= SPARE_FRESH_MS)
            .map(|(id, _)| *id)
            .collect();
        spare.retain(|(id, _)| !stale.contains(id));
        drop(spare);
        for lease in stale {
            self.give_back(lease);
        }
        self.spare.borrow_mut().pop().map(|(id, _)| id)
    }

    /// A permit for one backend call of lab `asker` at `priority` (see `lab::cleanup`),
    /// `wanted` the calls it can start now: none needed without `BACKEND_MAX_CONCURRENCY`. `Err` (why) when the
    /// coordinator cannot be reached in time: the call then goes ahead as before (the budget
    /// may never stop a cleanup).
    pub async fn acquire(
        &self,
        asker: Asker<'_>,
        priority: i64,
        wanted: usize,
    ) -> std::result::Result<Permit, ServiceError> {
        let Some(max) = self.max else {
            return Ok(Permit::Unlimited);
        };
        loop {
            if let Some(lease) = self.take_spare(now_ms()) {
                return Ok(Permit::Granted(lease));
            }
            // Another call of this attempt is asking: its answer may hold a permit for this one.
            let waiting = self.asking.borrow_mut().as_mut().map(|waiters| {
                let (sender, receiver) = oneshot::channel();
                waiters.push(sender);
                receiver
            });
            let asked = match waiting {
                Some(receiver) => receiver.await.unwrap_or_else(|_| {
                    Err(ServiceError::Failed(
                        "the request for permits was dropped".to_string(),
                    ))
                }),
                None => {
                    let ask = Acquire {
                        lab: asker.lab.to_string(),
                        failing: asker.failing,
                        priority,
                        max,
                        lease_ms: self.timeout_ms.saturating_add(2_000),
                        window_ms: self.timeout_ms,
                        wanted: wanted.clamp(1, 64) as u32,
                    };
                    self.usage
                        .charge(crate::lab::invocation::Meter::Service, 1)
                        .map_err(|e| ServiceError::Failed(e.to_string()))?;
                    add(&self.usage.budget_calls, 1);
                    *self.asking.borrow_mut() = Some(Vec::new());
                    let asked = ask_for(self.env.clone(), ask, self.spare.clone()).await;
                    for waiter in self.asking.borrow_mut().take().unwrap_or_default() {
                        let _ = waiter.send(asked.clone());
                    }
                    asked
                }
            };
            let answered = match &asked {
                Ok(None) => Answered::Granted,
                Ok(Some(come_back)) => Answered::ComeBack {
                    wait_ms: come_back.wait_ms,
                    retry_in_ms: come_back.retry_in_ms,
                },
                Err(_) => Answered::Unreachable,
            };
            let mut waiting = self.waiting.get();
            let then = waiting.after(answered, now_ms());
            self.waiting.set(waiting);
            match then {
                Then::Go => continue,
                Then::AskAgain { after_ms } => {
                    if after_ms > 0 {
                        worker::Delay::from(Duration::from_millis(after_ms as u64)).await;
                    }
                }
                Then::GiveUp { come_back_ms } => return Ok(Permit::Wait(come_back_ms)),
                Then::CallAnyway => {
                    return Err(asked.err().unwrap_or_else(|| "unreachable".into()))
                }
            }
        }
    }

    /// Returns a permit used for a call, in the background of the object (the attempt never
    /// waits for it).
    pub fn release(&self, permit: Permit, outcome: CallOutcome) {
        if let Permit::Granted(lease) = permit {
            self.send_release(Release {
                lease,
                overloaded: outcome == CallOutcome::Overloaded,
                unused: false,
            });
        }
    }

    fn give_back(&self, lease: u64) {
        self.send_release(Release {
            lease,
            overloaded: false,
            unused: true,
        });
    }

    fn send_release(&self, release: Release) {
        // Past the plan's limit the release is not sent: the lease comes back by itself.
        if self
            .usage
            .charge(crate::lab::invocation::Meter::Service, 1)
            .is_err()
        {
            return;
        }
        add(&self.usage.budget_calls, 1);
        let body = serde_json::to_string(&release).unwrap_or_default();
        let env = self.env.clone();
        let promise = worker::wasm_bindgen_futures::future_to_promise(async move {
            let _ = call(&env, "/release", body).await;
            Ok(JsValue::UNDEFINED)
        });
        let _ = self.state.wait_until(&promise);
    }
}

impl Drop for Permits {
    /// The invocation is over: permits kept for calls that never came go back.
    fn drop(&mut self) {
        let spare: Vec<(u64, i64)> = self.spare.borrow_mut().drain(..).collect();
        for (lease, _) in spare {
            self.give_back(lease);
        }
    }
}

/// Asks the coordinator once; granted leases go to `spare`. `Ok(Some(ms))`: come back after
/// `ms`.
async fn ask_for(env: Env, ask: Acquire, spare: Rc<RefCell<Vec<(u64, i64)>>>) -> Asked {
    let body = serde_json::to_string(&ask).unwrap_or_default();
    match within(UNREACHABLE_AFTER, call(&env, "/acquire", body)).await {
        Some(Ok(answer)) => {
            let answer = AcquireAnswer::from_value(&answer);
            if answer.leases.is_empty() {
                return Ok(Some(ComeBack {
                    wait_ms: answer.wait_ms.unwrap_or(COME_BACK_MS),
                    retry_in_ms: answer.retry_in_ms.clamp(0, 60_000),
                }));
            }
            let now = now_ms();
            spare
                .borrow_mut()
                .extend(answer.leases.into_iter().map(|id| (id, now)));
            Ok(None)
        }
        Some(Err(e)) => Err(e),
        None => Err(ServiceError::Failed(format!(
            "no answer within {} s",
            UNREACHABLE_AFTER.as_secs()
        ))),
    }
}

/// The coordinator's state (`GET /api/v1/labs/budget`): the limit now, permits out, requests
/// waiting.
pub async fn state(
    env: &Env,
    usage: &Usage,
) -> std::result::Result<serde_json::Value, ServiceError> {
    usage
        .object_call()
        .map_err(|e| ServiceError::Failed(e.to_string()))?;
    call(env, "/state", String::new()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinators_messages_read_back_as_written_and_as_the_previous_version_wrote_them() {
        let ask = Acquire {
            lab: "m".into(),
            failing: true,
            priority: 7,
            max: 20,
            lease_ms: 17_000,
            window_ms: 15_000,
            wanted: 6,
        };
        let back = Acquire::from_json(&serde_json::to_string(&ask).unwrap()).unwrap();
        assert_eq!(
            (back.lab, back.failing, back.priority, back.max, back.wanted),
            ("m".to_string(), true, 7, 20, 6)
        );
        let old = Acquire::from_json(r#"{"priority":1,"max":5,"lease_ms":3000,"window_ms":1000}"#)
            .unwrap();
        assert_eq!((old.lab.as_str(), old.failing, old.wanted), ("", false, 1));
        assert!(Acquire::from_json(r#"{"priority":1}"#).is_none());
        let release = Release {
            lease: 9,
            overloaded: true,
            unused: false,
        };
        let back = Release::from_json(&serde_json::to_string(&release).unwrap()).unwrap();
        assert_eq!((back.lease, back.overloaded, back.unused), (9, true, false));
        let old = Release::from_json(r#"{"lease":3,"overloaded":false}"#).unwrap();
        assert!(!old.unused);
        let granted = AcquireAnswer {
            leases: vec![1, 2],
            ..AcquireAnswer::default()
        };
        let v = serde_json::to_value(&granted).unwrap();
        assert_eq!(AcquireAnswer::from_value(&v).leases, vec![1, 2]);
        let later = serde_json::json!({"wait_ms": 2000});
        let read = AcquireAnswer::from_value(&later);
        assert_eq!(
            (read.leases.len(), read.wait_ms, read.retry_in_ms),
            (0, Some(2000), 0)
        );
    }
}
