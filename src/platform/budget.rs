//! The fleet-wide budget of backend calls on workerd: the `BackendBudget` Durable Object (one, named `fleet`) that leases permits, and the client every lab's attempt asks before each call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either};
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{durable_object, web_sys, DurableObject, Env, Request, Response, Result, State};

use crate::lab::config::Config;
use crate::lab::fleet::budget::{Allocator, CallOutcome, Lease};
use crate::lab::ports::Permit;
use crate::platform::runtime::{now_ms, within};

/// Name of the coordinator's binding in `wrangler.toml`.
pub const BUDGET_BINDING: &str = "BACKEND_BUDGET";
/// The one coordinator's name.
const COORDINATOR: &str = "fleet";
/// How long the coordinator keeps a request for a permit waiting before it answers "come back
/// later" (the lab's attempt then stops its calls and comes back, as after a Retry-After).
const MAX_WAIT_MS: i64 = 10_000;
/// What "come back later" says.
const COME_BACK_MS: i64 = 2_000;
/// How long a lab waits for the coordinator to answer at all before it calls without a permit.
const UNREACHABLE_AFTER: Duration = Duration::from_millis(12_000);

#[derive(Serialize, Deserialize)]
struct Acquire {
    priority: i64,
    max: u32,
    lease_ms: i64,
    window_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Release {
    lease: u64,
    overloaded: bool,
}

/// The coordinator: one allocator in memory (a restart starts it afresh; leases are short), and
/// the requests waiting for a permit.
#[durable_object]
pub struct BackendBudget {
    allocator: RefCell<Option<Allocator>>,
    waiters: RefCell<HashMap<u64, oneshot::Sender<Lease>>>,
}

impl BackendBudget {
    /// Grants what the limit allows to the waiting requests; a lease whose requester left goes
    /// straight back.
    fn dispatch(&self, now: i64) {
        let granted = match self.allocator.borrow_mut().as_mut() {
            Some(a) => a.grant(now),
            None => return,
        };
        for (ticket, lease) in granted {
            let sender = self.waiters.borrow_mut().remove(&ticket);
            let undelivered = match sender {
                Some(sender) => sender.send(lease).is_err(),
                None => true,
            };
            if undelivered {
                if let Some(a) = self.allocator.borrow_mut().as_mut() {
                    a.release(lease.id, CallOutcome::Answered, now);
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
            a.request(ask.priority, deadline)
        };
        let (sender, mut receiver) = oneshot::channel();
        self.waiters.borrow_mut().insert(ticket, sender);
        self.dispatch(now);
        loop {
            let now = now_ms();
            let next = self
                .allocator
                .borrow()
                .as_ref()
                .and_then(Allocator::next_change_ms)
                .unwrap_or(deadline)
                .min(deadline);
            let pause = Duration::from_millis(next.saturating_sub(now).clamp(1, 1_000) as u64);
            match select(&mut receiver, worker::Delay::from(pause)).await {
                Either::Left((Ok(lease), _)) => {
                    return Response::from_json(&serde_json::json!({ "lease": lease.id }))
                }
                Either::Left((Err(_), _)) => break,
                Either::Right(_) => {
                    let now = now_ms();
                    self.dispatch(now);
                    if let Ok(Some(lease)) = receiver.try_recv() {
                        return Response::from_json(&serde_json::json!({ "lease": lease.id }));
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
        Response::from_json(&serde_json::json!({ "wait_ms": COME_BACK_MS }))
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
            "/acquire" => match serde_json::from_str::<Acquire>(&body) {
                Ok(ask) => self.acquire(ask).await,
                Err(e) => Response::error(format!("bad acquire: {e}"), 400),
            },
            "/release" => match serde_json::from_str::<Release>(&body) {
                Ok(r) => {
                    let now = now_ms();
                    if let Some(a) = self.allocator.borrow_mut().as_mut() {
                        let outcome = if r.overloaded {
                            CallOutcome::Overloaded
                        } else {
                            CallOutcome::Answered
                        };
                        a.release(r.lease, outcome, now);
                    }
                    self.dispatch(now);
                    Response::empty()
                }
                Err(e) => Response::error(format!("bad release: {e}"), 400),
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
) -> std::result::Result<serde_json::Value, String> {
    let js = |e: JsValue| worker::Error::from(e).to_string();
    let stub: worker::worker_sys::DurableObject = env
        .durable_object(BUDGET_BINDING)
        .and_then(|ns| ns.id_from_name(COORDINATOR)?.get_stub())
        .map_err(|e| e.to_string())?
        .into_rpc();
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(&body));
    let request = web_sys::Request::new_with_str_and_init(&format!("https://budget{path}"), &init)
        .map_err(js)?;
    let answer: web_sys::Response = JsFuture::from(stub.fetch_with_request(&request).map_err(js)?)
        .await
        .map_err(js)?
        .dyn_into()
        .map_err(js)?;
    if !answer.ok() {
        return Err(format!("the budget answered {}", answer.status()));
    }
    let text = JsFuture::from(answer.text().map_err(js)?)
        .await
        .map_err(js)?
        .as_string()
        .unwrap_or_default();
    serde_json::from_str(&text).or(Ok(serde_json::Value::Null))
}

/// A permit for one backend call of a lab expiring at `priority`: none needed without
/// `BACKEND_MAX_CONCURRENCY`. `Err` (why) when the coordinator cannot be reached in time: the
/// call then goes ahead as before (the budget may never stop a cleanup).
pub async fn acquire(
    env: &Env,
    config: &Config,
    priority: i64,
) -> std::result::Result<Permit, String> {
    let Some(max) = config.backend_max_concurrency else {
        return Ok(Permit::Unlimited);
    };
    let timeout_ms = (config.backend_timeout_seconds * 1000) as i64;
    let ask = Acquire {
        priority,
        max,
        lease_ms: timeout_ms.saturating_add(2_000),
        window_ms: timeout_ms,
    };
    let body = serde_json::to_string(&ask).unwrap_or_default();
    match within(UNREACHABLE_AFTER, call(env, "/acquire", body)).await {
        Some(Ok(answer)) => Ok(match answer["lease"].as_u64() {
            Some(lease) => Permit::Granted(lease),
            None => Permit::Wait(answer["wait_ms"].as_i64().unwrap_or(COME_BACK_MS)),
        }),
        Some(Err(e)) => Err(e),
        None => Err(format!(
            "no answer within {} s",
            UNREACHABLE_AFTER.as_secs()
        )),
    }
}

/// Returns a permit, in the background of `state` (the attempt never waits for it).
pub fn release(
    env: &Env,
    state: &worker::worker_sys::DurableObjectState,
    permit: Permit,
    outcome: CallOutcome,
) {
    let Permit::Granted(lease) = permit else {
        return;
    };
    let body = serde_json::to_string(&Release {
        lease,
        overloaded: outcome == CallOutcome::Overloaded,
    })
    .unwrap_or_default();
    let env = env.clone();
    let promise = worker::wasm_bindgen_futures::future_to_promise(async move {
        let _ = call(&env, "/release", body).await;
        Ok(JsValue::UNDEFINED)
    });
    let _ = state.wait_until(&promise);
}

/// The coordinator's state (`GET /api/v1/labs/budget`): the limit now, permits out, requests
/// waiting.
pub async fn state(env: &Env) -> std::result::Result<serde_json::Value, String> {
    call(env, "/state", String::new()).await
}
