//! The `SessionManager` Durable Object, one per lab: an adapter that reads a request, calls the lab's procedure (`lab::procedures`) on workerd's ports (`platform::lab_ports`), and writes the answer.

use std::rc::Rc;

use wasm_bindgen::JsCast;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::api::error::ApiError;
use crate::api::respond;
use crate::lab::config::Config;
use crate::lab::ports::{Level, Logger, StoreError};
use crate::lab::procedures::{self, Lab, Reply};
use crate::platform::env;
use crate::platform::lab_ports::{report, Workerd};
use crate::platform::runtime::ConsoleLogger;

#[durable_object]
pub struct SessionManager {
    state: State,
    /// The runtime's object state and storage APIs, which `Store` and the budget call directly.
    raw: worker::worker_sys::DurableObjectState,
    storage: worker::worker_sys::DurableObjectStorage,
    env: Env,
    /// The latest activity noted and not yet written (see `RecordStore::noted_activity`).
    activity: Rc<std::cell::Cell<Option<i64>>>,
    /// The worker VMs a create is claiming (see `RecordStore::claiming`).
    claiming: Rc<std::cell::RefCell<Vec<String>>>,
}

impl SessionManager {
    fn ports(&self, config: Rc<Config>) -> Workerd {
        Workerd::new(
            &self.storage,
            &self.raw,
            &self.env,
            config,
            self.activity.clone(),
            self.claiming.clone(),
        )
    }

    /// Runs `task` (a procedure on fresh ports) after the answer or the alarm, `what` naming it
    /// in the usage line: the answer never waits for a log line, an index row or a webhook
    /// receiver.
    fn later<F>(
        &self,
        config: Rc<Config>,
        what: String,
        task: impl FnOnce(Rc<Workerd>, Rc<Config>) -> F + 'static,
    ) where
        F: std::future::Future<Output = std::result::Result<(), StoreError>> + 'static,
    {
        let ports = Rc::new(self.ports(config.clone()));
        self.state.wait_until(async move {
            worker::Delay::from(std::time::Duration::ZERO).await;
            if let Err(e) = task(ports.clone(), config).await {
                ConsoleLogger.log(Level::Error, &format!("background work stopped: {e}"));
            }
            report(&ports, &format!("{what}, after the answer"));
        });
    }
}

impl DurableObject for SessionManager {
    fn new(state: State, env: Env) -> Self {
        let raw = state._inner();
        let storage = raw.storage().expect("a Durable Object always has storage");
        Self {
            raw: raw.clone().unchecked_into(),
            state: State::from(raw),
            storage,
            env,
            activity: Rc::new(std::cell::Cell::new(None)),
            claiming: Rc::new(std::cell::RefCell::new(Vec::new())),
        }
    }

    async fn fetch(&self, mut request: Request) -> Result<Response> {
        let config = match env::config(&self.env) {
            Ok(config) => config,
            Err(e) => return respond::error(&ApiError::from(e)),
        };
        let path = request.path();
        // The raw method: `Request::method()` maps the ones it does not know to GET.
        let method = request.inner().method();
        let body = request.text().await.unwrap_or_default();
        let lab_request = match procedures::Request::decode(&method, &path, &body) {
            Ok(lab_request) => lab_request,
            Err(e) => return respond::error(&ApiError::InvalidRequest(e)),
        };
        let ports = self.ports(config.clone());
        let reply = Lab::new(&ports, &config).answer(lab_request).await;
        report(&ports, &path);
        match reply.map_err(|e| worker::Error::RustError(e.to_string()))? {
            Reply::Refused(refusal) => respond::error(&ApiError::from(refusal)),
            Reply::Events(events) => respond::json(200, &events),
            Reply::Noted => Response::empty().map(|r| r.with_status(204)),
            Reply::Poked { revived } => {
                respond::json(200, &serde_json::json!({ "revived": revived }))
            }
            Reply::Claim(answer) => respond::json(200, &answer),
            Reply::Owns(answer) => respond::json(200, &answer),
            Reply::Lab {
                status,
                session,
                line,
            } => {
                let answer = respond::json(status, &session.view());
                if let Some((level, line)) = line {
                    self.later(config, path, move |ports, config| async move {
                        ports.log(level, &line);
                        Lab::new(&*ports, &config).sync_index().await
                    });
                }
                answer
            }
        }
    }

    async fn alarm(&self) -> Result<Response> {
        let done = match env::config(&self.env) {
            Ok(config) => {
                let ports = self.ports(config.clone());
                let done = Lab::new(&ports, &config).alarm().await;
                let what = format!("alarm ({})", describe(&done));
                if matches!(done, Ok(d) if d.deliver) {
                    self.later(config, what.clone(), |ports, config| async move {
                        Lab::new(&*ports, &config).deliver_due().await
                    });
                }
                report(&ports, &what);
                done
            }
            Err(e) => {
                let defaults = Rc::new(Config::defaults());
                let ports = self.ports(defaults.clone());
                Lab::new(&ports, &defaults).alarm_misconfigured(&e).await
            }
        };
        // Only storage errors reach here: returned, the platform runs the alarm again.
        done.map_err(|e| worker::Error::RustError(e.to_string()))?;
        Response::empty()
    }
}

fn describe(done: &std::result::Result<procedures::AlarmDone, StoreError>) -> &'static str {
    done.as_ref().map_or("storage error", |d| d.woke.describe())
}
