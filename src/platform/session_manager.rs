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
use crate::platform::lab_ports::{report, Memory, Workerd};
use crate::platform::runtime::ConsoleLogger;
use crate::platform::usage::Usage;

#[durable_object]
pub struct SessionManager {
    state: State,
    /// The runtime's object state and storage APIs, which `Store` and the budget call directly.
    raw: worker::worker_sys::DurableObjectState,
    storage: worker::worker_sys::DurableObjectStorage,
    env: Env,
    /// What the object keeps in memory between invocations (see `lab_ports::Memory`).
    memory: Memory,
}

impl SessionManager {
    fn ports(&self, config: Rc<Config>, usage: Rc<Usage>) -> Workerd {
        Workerd::new(
            &self.storage,
            &self.raw,
            &self.env,
            config,
            &self.memory,
            usage,
        )
    }

    /// Runs `task` (a procedure on fresh ports, charged to the same invocation's `usage`) after
    /// the answer or the alarm, then logs what the invocation used (`kind`, `what`): the answer
    /// never waits for a log line, an index row or a webhook receiver.
    fn later<F>(
        &self,
        config: Rc<Config>,
        usage: Rc<Usage>,
        (kind, what): (String, String),
        task: impl FnOnce(Rc<Workerd>, Rc<Config>) -> F + 'static,
    ) where
        F: std::future::Future<Output = std::result::Result<(), StoreError>> + 'static,
    {
        let ports = Rc::new(self.ports(config.clone(), usage.clone()));
        self.state.wait_until(async move {
            worker::Delay::from(std::time::Duration::ZERO).await;
            if let Err(e) = task(ports, config.clone()).await {
                ConsoleLogger.log(Level::Error, &format!("background work stopped: {e}"));
            }
            report(&usage, &config, &kind, &format!("{what}, after the answer"));
        });
    }

    /// After an answer that changed the record (`line` set): the line logged and the index row
    /// brought up to date (`Lab::sync_index`), neither awaited by the answer.
    fn log_and_sync(
        &self,
        config: Rc<Config>,
        usage: Rc<Usage>,
        what: (String, String),
        line: Option<(Level, String)>,
    ) {
        if let Some((level, line)) = line {
            self.later(config, usage, what, move |ports, config| async move {
                ports.log(level, &line);
                Lab::new(&*ports, &config).sync_index().await
            });
        }
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
            memory: Memory::default(),
        }
    }

    async fn fetch(&self, mut request: Request) -> Result<Response> {
        let config = match env::config(&self.env) {
            Ok(config) => config,
            Err(e) => return respond::error(&ApiError::from(e)),
        };
        let usage = Rc::new(Usage::start(&config));
        let path = request.path();
        let kind = path.trim_start_matches('/').to_string();
        // The raw method: `Request::method()` maps the ones it does not know to GET.
        let method = request.inner().method();
        let body = request.text().await.unwrap_or_default();
        let lab_request = match procedures::Request::decode(&method, &path, &body) {
            Ok(lab_request) => lab_request,
            Err(e) => return respond::error(&ApiError::InvalidRequest(e.0)),
        };
        let ports = self.ports(config.clone(), usage.clone());
        let reply = Lab::new(&ports, &config).answer(lab_request).await;
        let reply = reply.map_err(|e| worker::Error::RustError(e.to_string()))?;
        if !matches!(
            &reply,
            Reply::Lab { line: Some(_), .. } | Reply::Link { line: Some(_), .. }
        ) {
            report(&usage, &config, &kind, &path);
        }
        match reply {
            Reply::Refused(refusal) => respond::error(&ApiError::from(refusal)),
            Reply::Events(events) => respond::json(200, &events),
            Reply::Noted => Response::empty().map(|r| r.with_status(204)),
            Reply::Poked { revived } => {
                respond::json(200, &serde_json::json!({ "revived": revived }))
            }
            Reply::Claim(answer) => respond::json(200, &answer),
            Reply::Owns(answer) => respond::json(200, &answer),
            Reply::Link { answer, line } => {
                let answered = respond::json(200, &answer);
                self.log_and_sync(config, usage, (kind, path), line);
                answered
            }
            Reply::Lab {
                status,
                session,
                line,
            } => {
                let answer = respond::json(status, &session.view());
                self.log_and_sync(config, usage, (kind, path), line);
                answer
            }
        }
    }

    async fn alarm(&self) -> Result<Response> {
        let done = match env::config(&self.env) {
            Ok(config) => {
                let usage = Rc::new(Usage::start(&config));
                let ports = self.ports(config.clone(), usage.clone());
                let done = Lab::new(&ports, &config).alarm().await;
                let what = format!("alarm ({})", describe(&done));
                if matches!(done, Ok(d) if d.deliver) {
                    self.later(
                        config,
                        usage,
                        ("alarm".into(), what),
                        |ports, config| async move { Lab::new(&*ports, &config).deliver_due().await },
                    );
                } else {
                    report(&usage, &config, "alarm", &what);
                }
                done
            }
            Err(e) => {
                let defaults = Rc::new(Config::defaults());
                let usage = Rc::new(Usage::start(&defaults));
                let ports = self.ports(defaults.clone(), usage);
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
