//! A mock lab backend: serves the two cleanup endpoints, records every call, and injects faults per lab id.
//!
//! Used in-process by the integration tests and the benchmark, and as a standalone server
//! (`mock-backend` binary) by the local run command. Control endpoints under `/__mock/` let a
//! person or a script read the calls and add faults over HTTP.

pub mod http;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Path of the exposed-services deletion.
pub const EXPOSE_PATH: &str = "/api/v1/expose/";
/// Path of the VM deletion.
pub const DELETE_VM_PATH: &str = "/api/v1/labs/delete";
/// Paths of a VM's stop and start (the grace stage: the worker's `STOP_PATH` and `START_PATH`
/// point here in the tests and `scripts/dev.sh`).
pub const STOP_PATH: &str = "/api/v1/labs/stop";
pub const START_PATH: &str = "/api/v1/labs/start";
/// Path of the inventory of running VMs (`GET`, paged by `?cursor=`), the contract of
/// docs/OPERATIONS.md.
pub const INVENTORY_PATH: &str = "/api/v1/labs/inventory";

/// A VM the mock runs: listed by its inventory until a deletion of it succeeds (unless
/// `sticky`: a backend whose delete does not take).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningVm {
    pub lab_request_id: String,
    pub user_id: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub sticky: bool,
}

/// Which backend endpoint a call or a fault is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `DELETE /api/v1/expose/`
    Expose,
    /// `POST /api/v1/labs/delete`
    DeleteVm,
    /// `POST /api/v1/labs/stop`
    Stop,
    /// `POST /api/v1/labs/start`
    Start,
}

/// What the mock does instead of answering 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Answer with this status and a JSON error body.
    Status { status: u16 },
    /// Wait, then answer 200 (a slow but successful backend).
    Delay { ms: u64 },
    /// Hold the connection open without answering for `ms`, then close it.
    Hang { ms: u64 },
    /// Send a response head promising a body, part of it, then close the connection.
    Reset,
    /// Refuse as an overloaded backend does: `status` (429 or 503) at once, with a
    /// `Retry-After` header when `retry_after` is set.
    Refuse {
        status: u16,
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// Answer with a redirect (`status`, e.g. 302 or 307) to `location`. `/__mock/landing`
    /// answers 200 to anything and is recorded, so a client that follows shows up.
    Redirect { status: u16, location: String },
}

/// A path that answers 200 to any method, and is recorded as a call: the target of redirects.
pub const LANDING_PATH: &str = "/__mock/landing";

/// A fault for one lab id: applied to its next `times` calls (forever if `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub lab_request_id: String,
    /// `None`: every endpoint.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    pub action: Action,
    #[serde(default)]
    pub times: Option<u32>,
}

impl Fault {
    /// A fault on `endpoint` for `lab_request_id`, applied to every call until `times` limits it.
    pub fn on(lab_request_id: &str, endpoint: Endpoint, action: Action) -> Fault {
        Fault {
            lab_request_id: lab_request_id.to_string(),
            endpoint: Some(endpoint),
            action,
            times: None,
        }
    }

    /// Applies the fault to the next `n` matching calls only.
    pub fn times(self, n: u32) -> Fault {
        Fault {
            times: Some(n),
            ..self
        }
    }
}

/// One call the mock received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// Arrival time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// When the mock finished with the call (answered, closed, or gave up), same clock.
    pub done_ms: u64,
    pub method: String,
    pub path: String,
    /// `Some` for calls to the two backend endpoints.
    pub endpoint: Option<Endpoint>,
    pub lab_request_id: Option<String>,
    pub user_id: Option<String>,
    /// The `Authorization` header as received.
    pub authorization: Option<String>,
    /// The status answered; `None` for a hang or reset (no complete answer).
    pub status: Option<u16>,
}

/// A backend that serves `max_in_flight` calls at once and refuses the rest at once, as a real
/// one behind a concurrency limit does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub max_in_flight: usize,
    /// The refusal's status: 429 or 503.
    pub status: u16,
    /// The refusal's `Retry-After` header, if any (e.g. `"2"`).
    #[serde(default)]
    pub retry_after: Option<String>,
    /// A backend that slows down instead of refusing: it serves every call, each taking the
    /// latency times (calls in flight / `max_in_flight`), at least once the latency.
    #[serde(default)]
    pub slow: bool,
}

/// Counters of the backend-endpoint calls, for the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Calls being served right now.
    pub in_flight: usize,
    /// The most calls served at once.
    pub peak_in_flight: usize,
    /// Calls refused by the capacity limit.
    pub refused: u64,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    faults: Vec<Fault>,
    latency_ms: u64,
    expected_token: Option<String>,
    log_calls: bool,
    capacity: Option<Capacity>,
    stats: Stats,
    running: std::collections::BTreeMap<String, RunningVm>,
    /// VMs per inventory page (0: the default, 100).
    page_size: usize,
    /// Canned inventory answers by cursor (`""`: the first page), instead of the running VMs:
    /// a misbehaving backend (a cursor that loops, a refused cursor, a huge page).
    scripted_pages: Option<std::collections::HashMap<String, (u16, std::sync::Arc<String>)>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Options of a mock server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Added to every backend call before it is answered (simulated network + backend time).
    pub latency: Duration,
    /// When set, backend calls without `Authorization: Bearer <token>` get a 401.
    pub expected_token: Option<String>,
    /// Print one line per call to stdout.
    pub log_calls: bool,
    /// Serve at most this many calls at once, refusing the rest (`None`: no limit).
    pub capacity: Option<Capacity>,
}

/// How many connections may wait to be accepted: as deep as a real server's, so that a burst is
/// queued (and measured as the worker sees it), not dropped by a short queue.
const LISTEN_BACKLOG: i32 = 1024;

/// Deepens the listen queue of a bound socket (std listens with 128).
fn deepen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn listen(fd: std::os::raw::c_int, backlog: std::os::raw::c_int) -> std::os::raw::c_int;
    }
    // SAFETY: `listen` on a socket we own and keep open; calling it again only resizes the queue.
    unsafe {
        listen(listener.as_raw_fd(), LISTEN_BACKLOG);
    }
}

/// A running mock backend. Stops when dropped.
pub struct MockBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MockBackend {
    /// Starts a mock on `addr` (e.g. `127.0.0.1:0` for any free port).
    pub fn start(addr: &str, options: Options) -> std::io::Result<MockBackend> {
        let listener = TcpListener::bind(addr)?;
        deepen_backlog(&listener);
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                latency_ms: options.latency.as_millis() as u64,
                expected_token: options.expected_token,
                log_calls: options.log_calls,
                capacity: options.capacity,
                ..State::default()
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("mock-backend-accept".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if shared.stopping.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(stream) = stream {
                            let shared = shared.clone();
                            let _ = thread::Builder::new()
                                .name("mock-backend-conn".into())
                                .spawn(move || serve_connection(stream, &shared));
                        }
                    }
                })?
        };
        Ok(MockBackend {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL to give the worker as `BACKEND_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call received so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// The backend-endpoint calls that name `lab_request_id`, in arrival order.
    pub fn calls_for(&self, lab_request_id: &str) -> Vec<Call> {
        calls_naming(&self.shared.lock().calls, &[lab_request_id])
    }

    /// The backend-endpoint calls naming any of `ids`, in arrival order.
    pub fn calls_for_any(&self, ids: &[&str]) -> Vec<Call> {
        calls_naming(&self.shared.lock().calls, ids)
    }

    /// Waits until `done(calls naming ids)` holds or `timeout` passes; returns the last calls seen
    /// and whether the condition held.
    pub fn wait_for(
        &self,
        ids: &[&str],
        timeout: Duration,
        done: impl Fn(&[Call]) -> bool,
    ) -> (Vec<Call>, bool) {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            let calls = calls_naming(&state.calls, ids);
            if done(&calls) {
                return (calls, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (calls, false);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn add_fault(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    /// Removes every fault for `lab_request_id`.
    pub fn clear_faults(&self, lab_request_id: &str) {
        self.shared
            .lock()
            .faults
            .retain(|f| f.lab_request_id != lab_request_id);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency_ms = latency.as_millis() as u64;
    }

    /// Serves at most `capacity.max_in_flight` calls at once from now on (`None`: no limit).
    pub fn set_capacity(&self, capacity: Option<Capacity>) {
        self.shared.lock().capacity = capacity;
    }

    /// Runs `vm` from now on: the inventory lists it.
    pub fn run_vm(&self, vm: RunningVm) {
        self.shared
            .lock()
            .running
            .insert(vm.lab_request_id.clone(), vm);
    }

    /// Stops every running VM whose id starts with `prefix` (the inventory no longer lists it).
    pub fn stop_vms_starting_with(&self, prefix: &str) {
        self.shared
            .lock()
            .running
            .retain(|id, _| !id.starts_with(prefix));
    }

    /// The VMs the inventory lists now.
    pub fn running(&self) -> Vec<RunningVm> {
        self.shared.lock().running.values().cloned().collect()
    }

    /// The inventory answers these instead of the running VMs: each cursor (`""` for the first
    /// page) its status and body; a cursor not listed answers 400. `None`: the running VMs again.
    pub fn script_inventory(&self, pages: Option<Vec<(&str, u16, String)>>) {
        self.shared.lock().scripted_pages = pages.map(|pages| {
            pages
                .into_iter()
                .map(|(cursor, status, body)| {
                    (cursor.to_string(), (status, std::sync::Arc::new(body)))
                })
                .collect()
        });
    }

    /// VMs per inventory page.
    pub fn set_page_size(&self, n: usize) {
        self.shared.lock().page_size = n;
    }

    /// The counters of backend-endpoint calls.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }

    /// Forgets all calls, faults and counters.
    pub fn reset(&self) {
        let mut state = self.shared.lock();
        state.calls.clear();
        state.faults.clear();
        let in_flight = state.stats.in_flight;
        state.stats = Stats {
            in_flight,
            ..Stats::default()
        };
    }

    /// Stops accepting connections and waits for the acceptor thread.
    pub fn stop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            self.shared.stopping.store(true, Ordering::SeqCst);
            // Wake the blocking accept.
            let _ = TcpStream::connect(self.addr);
            let _ = acceptor.join();
        }
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn calls_naming(calls: &[Call], ids: &[&str]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| {
            c.endpoint.is_some()
                && c.lab_request_id
                    .as_deref()
                    .is_some_and(|id| ids.contains(&id))
        })
        .cloned()
        .collect()
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    // No Nagle delay: an answer must not wait for the peer's delayed ACK (up to 40 ms).
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = write_half;
    // Keep-alive: serve requests until the peer closes or a fault ends the connection.
    while let Ok(Some(request)) = http::read_message(&mut reader, false) {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if !handle_request(&request, &mut writer, shared) {
            return;
        }
        if request
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

/// What to do with one backend call, decided under the lock.
enum Plan {
    Answer {
        status: u16,
        body: Value,
        wait_ms: u64,
        retry_after: Option<String>,
    },
    Hang {
        ms: u64,
    },
    Reset {
        wait_ms: u64,
    },
    Redirect {
        status: u16,
        location: String,
        wait_ms: u64,
    },
}

/// Serves one request; returns whether the connection may be reused.
fn handle_request(request: &http::Message, writer: &mut TcpStream, shared: &Shared) -> bool {
    let mut parts = request.start_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();

    if path == LANDING_PATH {
        let mut state = shared.lock();
        let seq = state.calls.len() as u64 + 1;
        state.calls.push(Call {
            seq,
            at_ms: now_ms(),
            done_ms: now_ms(),
            method: method.clone(),
            path: path.clone(),
            endpoint: None,
            lab_request_id: None,
            user_id: None,
            authorization: request.header("Authorization").map(str::to_string),
            status: Some(200),
        });
        shared.changed.notify_all();
        drop(state);
        return write_json(writer, 200, &json!({"status": "ok", "landing": true}), None).is_ok();
    }
    if let Some(control) = path.strip_prefix("/__mock/") {
        let (status, body) = control_request(&method, control, &request.body, shared);
        return write_json(writer, status, &body, None).is_ok();
    }

    if method == "GET"
        && (path == INVENTORY_PATH || path.starts_with(&format!("{INVENTORY_PATH}?")))
    {
        if let Some((status, body)) = scripted_page(&path, shared) {
            return write_text(writer, status, &body).is_ok();
        }
        let (status, body) = inventory(&path, request.header("Authorization"), shared);
        return write_json(writer, status, &body, None).is_ok();
    }
    let endpoint = match (method.as_str(), path.as_str()) {
        ("DELETE", EXPOSE_PATH) => Some(Endpoint::Expose),
        ("POST", DELETE_VM_PATH) => Some(Endpoint::DeleteVm),
        ("POST", STOP_PATH) => Some(Endpoint::Stop),
        ("POST", START_PATH) => Some(Endpoint::Start),
        _ => None,
    };
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    let lab_request_id = field("lab_request_id");
    let user_id = field("user_id");
    let authorization = request.header("Authorization").map(str::to_string);

    let (seq, plan, log_calls, serving) = {
        let mut state = shared.lock();
        let seq = state.calls.len() as u64 + 1;
        let mut latency = state.latency_ms;
        if let Some(c) = state
            .capacity
            .as_ref()
            .filter(|c| c.slow && endpoint.is_some())
        {
            let load = (state.stats.in_flight + 1) as u64;
            latency = latency * load.max(c.max_in_flight as u64) / c.max_in_flight.max(1) as u64;
        }
        // Refusals are answered at once and take no place among the calls being served.
        let mut at_once = endpoint.is_none();
        let plan = match endpoint {
            None => Plan::Answer {
                status: 404,
                body: json!({"error": format!("mock backend: no route {method} {path}")}),
                wait_ms: 0,
                retry_after: None,
            },
            Some(_)
                if state
                    .capacity
                    .as_ref()
                    .is_some_and(|c| !c.slow && state.stats.in_flight >= c.max_in_flight) =>
            {
                let capacity = state.capacity.clone().unwrap_or(Capacity {
                    max_in_flight: 0,
                    status: 429,
                    retry_after: None,
                    slow: false,
                });
                state.stats.refused += 1;
                at_once = true;
                Plan::Answer {
                    status: capacity.status,
                    body: json!({"error": "mock backend: over capacity"}),
                    wait_ms: 0,
                    retry_after: capacity.retry_after,
                }
            }
            Some(_) if !token_ok(&state.expected_token, authorization.as_deref()) => Plan::Answer {
                status: 401,
                body: json!({"error": "missing or wrong bearer token"}),
                wait_ms: latency,
                retry_after: None,
            },
            Some(_)
                if lab_request_id.is_none()
                    || (endpoint == Some(Endpoint::DeleteVm) && user_id.is_none()) =>
            {
                Plan::Answer {
                    status: 400,
                    body: json!({"error": "lab_request_id and user_id are required"}),
                    wait_ms: latency,
                    retry_after: None,
                }
            }
            Some(ep) => match take_fault(&mut state.faults, lab_request_id.as_deref(), ep) {
                None => {
                    if ep == Endpoint::DeleteVm {
                        let id = lab_request_id.clone().unwrap_or_default();
                        if state.running.get(&id).is_some_and(|vm| !vm.sticky) {
                            state.running.remove(&id);
                        }
                    }
                    ok_plan(ep, lab_request_id.as_deref(), latency)
                }
                Some(Action::Status { status }) => Plan::Answer {
                    status,
                    body: json!({"error": format!("mock backend: injected {status}")}),
                    wait_ms: latency,
                    retry_after: None,
                },
                Some(Action::Refuse {
                    status,
                    retry_after,
                }) => {
                    at_once = true;
                    Plan::Answer {
                        status,
                        body: json!({"error": format!("mock backend: refused with {status}")}),
                        wait_ms: 0,
                        retry_after,
                    }
                }
                Some(Action::Delay { ms }) => {
                    let mut plan = ok_plan(ep, lab_request_id.as_deref(), latency);
                    if let Plan::Answer { wait_ms, .. } = &mut plan {
                        *wait_ms += ms;
                    }
                    plan
                }
                Some(Action::Hang { ms }) => Plan::Hang { ms },
                Some(Action::Reset) => Plan::Reset { wait_ms: latency },
                Some(Action::Redirect { status, location }) => Plan::Redirect {
                    status,
                    location,
                    wait_ms: latency,
                },
            },
        };
        let status = match &plan {
            Plan::Answer { status, .. } | Plan::Redirect { status, .. } => Some(*status),
            _ => None,
        };
        // A call the mock serves (not one refused at once) holds a place until it is answered.
        let serving = !at_once;
        if serving {
            state.stats.in_flight += 1;
            state.stats.peak_in_flight = state.stats.peak_in_flight.max(state.stats.in_flight);
        }
        state.calls.push(Call {
            seq,
            at_ms: now_ms(),
            done_ms: 0,
            method: method.clone(),
            path: path.clone(),
            endpoint,
            lab_request_id: lab_request_id.clone(),
            user_id: user_id.clone(),
            authorization: authorization.clone(),
            status,
        });
        shared.changed.notify_all();
        (seq, plan, state.log_calls, serving)
    };

    let keep_alive = match plan {
        Plan::Answer {
            status,
            body,
            wait_ms,
            retry_after,
        } => {
            thread::sleep(Duration::from_millis(wait_ms));
            write_json(writer, status, &body, retry_after.as_deref()).is_ok()
        }
        Plan::Hang { ms } => {
            thread::sleep(Duration::from_millis(ms));
            false
        }
        Plan::Redirect {
            status,
            location,
            wait_ms,
        } => {
            thread::sleep(Duration::from_millis(wait_ms));
            let answer = format!(
                "HTTP/1.1 {status} Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
            );
            writer.write_all(answer.as_bytes()).is_ok() && writer.flush().is_ok()
        }
        Plan::Reset { wait_ms } => {
            thread::sleep(Duration::from_millis(wait_ms));
            let _ = writer.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"stat",
            );
            let _ = writer.flush();
            let _ = writer.shutdown(std::net::Shutdown::Both);
            false
        }
    };

    let mut state = shared.lock();
    if serving {
        state.stats.in_flight = state.stats.in_flight.saturating_sub(1);
    }
    if let Some(call) = state.calls.iter_mut().find(|c| c.seq == seq) {
        call.done_ms = now_ms();
        if log_calls {
            println!(
                "mock-backend: #{seq} {method} {path} lab_request_id={} user_id={} -> {}",
                call.lab_request_id.as_deref().unwrap_or("-"),
                call.user_id.as_deref().unwrap_or("-"),
                call.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no answer (fault)".into())
            );
        }
    }
    shared.changed.notify_all();
    keep_alive
}

fn ok_plan(endpoint: Endpoint, id: Option<&str>, latency: u64) -> Plan {
    let body = match endpoint {
        Endpoint::Expose => {
            json!({"status": "ok", "message": "exposed services deleted", "lab_request_id": id})
        }
        Endpoint::DeleteVm => {
            json!({"status": "ok", "message": "lab deleted", "lab_request_id": id})
        }
        Endpoint::Stop => json!({"status": "ok", "message": "vm stopped", "lab_request_id": id}),
        Endpoint::Start => json!({"status": "ok", "message": "vm started", "lab_request_id": id}),
    };
    Plan::Answer {
        status: 200,
        body,
        wait_ms: latency,
        retry_after: None,
    }
}

/// A canned inventory answer for `path`'s cursor, when answers are scripted (the call is
/// recorded as any).
fn scripted_page(path: &str, shared: &Shared) -> Option<(u16, std::sync::Arc<String>)> {
    let mut state = shared.lock();
    let pages = state.scripted_pages.as_ref()?;
    let cursor = path
        .split_once("cursor=")
        .map(|(_, c)| c.split('&').next().unwrap_or(""))
        .unwrap_or("");
    let (status, body) = pages.get(cursor).cloned().unwrap_or((
        400,
        std::sync::Arc::new("{\"error\":\"unknown cursor\"}".into()),
    ));
    let seq = state.calls.len() as u64 + 1;
    state.calls.push(Call {
        seq,
        at_ms: now_ms(),
        done_ms: now_ms(),
        method: "GET".into(),
        path: path.to_string(),
        endpoint: None,
        lab_request_id: None,
        user_id: None,
        authorization: None,
        status: Some(status),
    });
    shared.changed.notify_all();
    Some((status, body))
}

/// Writes a JSON text as it is (a canned answer), in pieces: a large one is streamed.
fn write_text(writer: &mut TcpStream, status: u16, text: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} Status\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        text.len()
    );
    writer.write_all(head.as_bytes())?;
    for chunk in text.as_bytes().chunks(64 * 1024) {
        writer.write_all(chunk)?;
    }
    writer.flush()
}

/// `GET /api/v1/labs/inventory[?cursor=N]`: the VMs the mock runs, sorted by id, a page at a
/// time; `next_cursor` is the offset of the next page, `null` on the last.
fn inventory(path: &str, authorization: Option<&str>, shared: &Shared) -> (u16, Value) {
    let mut state = shared.lock();
    let seq = state.calls.len() as u64 + 1;
    let ok = token_ok(&state.expected_token, authorization);
    state.calls.push(Call {
        seq,
        at_ms: now_ms(),
        done_ms: now_ms(),
        method: "GET".into(),
        path: path.to_string(),
        endpoint: None,
        lab_request_id: None,
        user_id: None,
        authorization: authorization.map(str::to_string),
        status: Some(if ok { 200 } else { 401 }),
    });
    shared.changed.notify_all();
    if !ok {
        return (401, json!({"error": "missing or wrong bearer token"}));
    }
    let offset: usize = path
        .split_once("cursor=")
        .and_then(|(_, c)| c.split('&').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let size = if state.page_size == 0 {
        100
    } else {
        state.page_size
    };
    let page: Vec<Value> = state
        .running
        .values()
        .skip(offset)
        .take(size)
        .map(|vm| {
            let mut entry = json!({"lab_request_id": vm.lab_request_id, "user_id": vm.user_id});
            if let Some(at) = &vm.created_at {
                entry["created_at"] = json!(at);
            }
            entry
        })
        .collect();
    let next = offset + page.len();
    let next_cursor = if next < state.running.len() {
        json!(next.to_string())
    } else {
        Value::Null
    };
    (200, json!({"vms": page, "next_cursor": next_cursor}))
}

fn token_ok(expected: &Option<String>, authorization: Option<&str>) -> bool {
    match expected {
        None => true,
        Some(token) => authorization == Some(format!("Bearer {token}").as_str()),
    }
}

/// Takes the first matching fault, counting down its `times`.
fn take_fault(faults: &mut Vec<Fault>, id: Option<&str>, endpoint: Endpoint) -> Option<Action> {
    let index = faults.iter().position(|f| {
        Some(f.lab_request_id.as_str()) == id && f.endpoint.is_none_or(|e| e == endpoint)
    })?;
    let action = faults[index].action.clone();
    match &mut faults[index].times {
        Some(1) | Some(0) => {
            faults.remove(index);
        }
        Some(n) => *n -= 1,
        None => {}
    }
    Some(action)
}

fn control_request(method: &str, path: &str, body: &[u8], shared: &Shared) -> (u16, Value) {
    match (method, path) {
        ("GET", "calls") => (200, json!(shared.lock().calls)),
        ("POST", "faults") => match serde_json::from_slice::<Fault>(body) {
            Ok(fault) => {
                shared.lock().faults.push(fault.clone());
                (201, json!(fault))
            }
            Err(e) => (400, json!({"error": format!("bad fault: {e}")})),
        },
        ("GET", "faults") => (200, json!(shared.lock().faults)),
        ("GET", "stats") => (200, json!(shared.lock().stats)),
        ("POST", "faults/clear") => match serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["lab_request_id"].as_str().map(str::to_string))
        {
            Some(id) => {
                let mut state = shared.lock();
                let before = state.faults.len();
                state.faults.retain(|f| f.lab_request_id != id);
                (200, json!({"cleared": before - state.faults.len()}))
            }
            None => (
                400,
                json!({"error": "body must be {\"lab_request_id\": \"...\"}"}),
            ),
        },
        ("POST", "capacity") => match serde_json::from_slice::<Option<Capacity>>(body) {
            Ok(capacity) => {
                shared.lock().capacity = capacity.clone();
                (200, json!(capacity))
            }
            Err(e) => (400, json!({"error": format!("bad capacity: {e}")})),
        },
        ("POST", "vms") => {
            let vms: Result<Vec<RunningVm>, _> = serde_json::from_slice::<Vec<RunningVm>>(body)
                .or_else(|_| serde_json::from_slice::<RunningVm>(body).map(|vm| vec![vm]));
            match vms {
                Ok(vms) => {
                    let mut state = shared.lock();
                    for vm in &vms {
                        state.running.insert(vm.lab_request_id.clone(), vm.clone());
                    }
                    (201, json!({"running": state.running.len()}))
                }
                Err(e) => (400, json!({"error": format!("bad VM: {e}")})),
            }
        }
        ("GET", "vms") => (
            200,
            json!(shared.lock().running.values().collect::<Vec<_>>()),
        ),
        ("POST", "reset") => {
            let mut state = shared.lock();
            state.calls.clear();
            state.faults.clear();
            (200, json!({"status": "reset"}))
        }
        _ => (
            404,
            json!({"error": "control endpoints: GET calls, GET faults, POST faults, POST faults/clear, GET stats, POST capacity, POST vms, GET vms, POST reset"}),
        ),
    }
}

fn write_json(
    writer: &mut TcpStream,
    status: u16,
    body: &Value,
    retry_after: Option<&str>,
) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let retry_after = retry_after
        .map(|v| format!("Retry-After: {v}\r\n"))
        .unwrap_or_default();
    // One write per answer.
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{retry_after}Content-Length: {}\r\n\r\n{text}",
        text.len()
    );
    writer.write_all(answer.as_bytes())?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::json_request;

    fn delete(mock: &MockBackend, id: &str) -> u16 {
        let addr = mock.addr().to_string();
        json_request(
            &addr,
            "POST",
            DELETE_VM_PATH,
            &json!({"lab_request_id": id, "user_id": "u"}),
        )
        .map(|r| r.status)
        .unwrap_or(0)
    }

    #[test]
    fn records_calls_and_answers_200() {
        let mock = MockBackend::start("127.0.0.1:0", Options::default()).unwrap();
        assert_eq!(delete(&mock, "a"), 200);
        let r = json_request(
            &mock.addr().to_string(),
            "DELETE",
            EXPOSE_PATH,
            &json!({"lab_request_id": "a"}),
        )
        .unwrap();
        assert_eq!(r.status, 200);
        // The mock stamps `done_ms` just after its answer is written: wait for that.
        let (calls, ok) = mock.wait_for(&["a"], Duration::from_secs(5), |c| {
            c.len() == 2 && c.iter().all(|c| c.done_ms > 0)
        });
        assert!(ok);
        assert_eq!(calls[0].endpoint, Some(Endpoint::DeleteVm));
        assert_eq!(calls[0].user_id.as_deref(), Some("u"));
        assert_eq!(calls[1].endpoint, Some(Endpoint::Expose));
        assert_eq!(calls[1].status, Some(200));
        assert!(calls[1].done_ms >= calls[1].at_ms);
    }

    #[test]
    fn faults_apply_per_id_and_count_down() {
        let mock = MockBackend::start("127.0.0.1:0", Options::default()).unwrap();
        mock.add_fault(Fault {
            lab_request_id: "w1".into(),
            endpoint: Some(Endpoint::DeleteVm),
            action: Action::Status { status: 500 },
            times: Some(2),
        });
        mock.add_fault(Fault {
            lab_request_id: "gone".into(),
            endpoint: None,
            action: Action::Status { status: 404 },
            times: None,
        });
        assert_eq!(delete(&mock, "w1"), 500);
        assert_eq!(delete(&mock, "other"), 200);
        assert_eq!(delete(&mock, "w1"), 500);
        assert_eq!(delete(&mock, "w1"), 200);
        assert_eq!(delete(&mock, "gone"), 404);
        assert_eq!(delete(&mock, "gone"), 404);
    }

    #[test]
    fn reset_and_hang_give_no_complete_answer() {
        let mock = MockBackend::start("127.0.0.1:0", Options::default()).unwrap();
        mock.add_fault(Fault {
            lab_request_id: "r".into(),
            endpoint: None,
            action: Action::Reset,
            times: Some(1),
        });
        mock.add_fault(Fault {
            lab_request_id: "h".into(),
            endpoint: None,
            action: Action::Hang { ms: 300 },
            times: Some(1),
        });
        assert_eq!(delete(&mock, "r"), 0);
        let started = Instant::now();
        assert_eq!(delete(&mock, "h"), 0);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(mock.calls_for("r")[0].status, None);
    }

    #[test]
    fn redirects_point_at_a_recorded_landing() {
        let mock = MockBackend::start("127.0.0.1:0", Options::default()).unwrap();
        mock.add_fault(
            Fault::on(
                "r",
                Endpoint::DeleteVm,
                Action::Redirect {
                    status: 307,
                    location: LANDING_PATH.into(),
                },
            )
            .times(1),
        );
        assert_eq!(delete(&mock, "r"), 307);
        let addr = mock.addr().to_string();
        let r = json_request(&addr, "POST", LANDING_PATH, &json!({})).unwrap();
        assert_eq!(r.status, 200);
        let calls = mock.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].status, Some(307));
        assert_eq!(calls[1].path, LANDING_PATH);
    }

    #[test]
    fn capacity_refuses_beyond_the_limit_at_once_and_counts() {
        let mock = MockBackend::start(
            "127.0.0.1:0",
            Options {
                latency: Duration::from_millis(300),
                capacity: Some(Capacity {
                    max_in_flight: 2,
                    status: 429,
                    retry_after: Some("2".into()),
                    slow: false,
                }),
                ..Options::default()
            },
        )
        .unwrap();
        let addr = mock.addr().to_string();
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let addr = addr.clone();
                thread::spawn(move || {
                    let started = Instant::now();
                    let r = http::request(
                        &addr,
                        "POST",
                        DELETE_VM_PATH,
                        &[],
                        format!(r#"{{"lab_request_id":"c{i}","user_id":"u"}}"#).as_bytes(),
                        Duration::from_secs(5),
                    )
                    .unwrap();
                    (
                        r.status,
                        r.header("Retry-After").map(str::to_string),
                        started.elapsed(),
                    )
                })
            })
            .collect();
        let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
        let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
        assert_eq!(ok + refused.len(), 5);
        assert!(ok >= 2, "{answers:?}");
        assert!(!refused.is_empty(), "{answers:?}");
        for (_, retry_after, took) in &refused {
            assert_eq!(retry_after.as_deref(), Some("2"));
            assert!(
                *took < Duration::from_millis(250),
                "refused at once: {took:?}"
            );
        }
        // A request leaves the count once its answer is written: a client can read the answer
        // a moment before that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while mock.stats().in_flight != 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let stats = mock.stats();
        assert_eq!(stats.peak_in_flight, 2);
        assert_eq!(stats.refused, refused.len() as u64);
        assert_eq!(stats.in_flight, 0);
    }

    #[test]
    fn refuse_faults_carry_retry_after() {
        let mock = MockBackend::start("127.0.0.1:0", Options::default()).unwrap();
        mock.add_fault(
            Fault::on(
                "x",
                Endpoint::Expose,
                Action::Refuse {
                    status: 503,
                    retry_after: Some("1".into()),
                },
            )
            .times(1),
        );
        let addr = mock.addr().to_string();
        let r = json_request(
            &addr,
            "DELETE",
            EXPOSE_PATH,
            &json!({"lab_request_id": "x"}),
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("Retry-After"), Some("1"));
        let r = json_request(
            &addr,
            "DELETE",
            EXPOSE_PATH,
            &json!({"lab_request_id": "x"}),
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Retry-After"), None);
    }

    #[test]
    fn token_is_checked_when_expected() {
        let mock = MockBackend::start(
            "127.0.0.1:0",
            Options {
                expected_token: Some("t0k".into()),
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(delete(&mock, "a"), 401);
        let r = http::request(
            &mock.addr().to_string(),
            "POST",
            DELETE_VM_PATH,
            &[("Authorization", "Bearer t0k")],
            br#"{"lab_request_id":"a","user_id":"u"}"#,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.status, 200);
    }

    #[test]
    fn control_endpoints_work_over_http() {
        let mock = MockBackend::start("127.0.0.1:0", Options::default()).unwrap();
        let addr = mock.addr().to_string();
        let r = json_request(
            &addr,
            "POST",
            "/__mock/faults",
            &json!({"lab_request_id": "x", "action": {"kind": "status", "status": 503}, "times": 1}),
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(delete(&mock, "x"), 503);
        let calls = json_request(&addr, "GET", "/__mock/calls", &json!(null))
            .unwrap()
            .json();
        assert_eq!(calls.as_array().unwrap().len(), 1);
        assert_eq!(calls[0]["status"], 503);
        json_request(&addr, "POST", "/__mock/reset", &json!(null)).unwrap();
        assert!(mock.calls().is_empty());
    }

    #[test]
    fn wait_for_returns_when_condition_holds() {
        let mock = MockBackend::start("127.0.0.1:0", Options::default()).unwrap();
        let (calls, ok) = mock.wait_for(&["z"], Duration::from_millis(100), |c| !c.is_empty());
        assert!(!ok && calls.is_empty());
        delete(&mock, "z");
        let (calls, ok) = mock.wait_for(&["z"], Duration::from_secs(5), |c| c.len() == 1);
        assert!(ok);
        assert_eq!(calls.len(), 1);
    }
}
