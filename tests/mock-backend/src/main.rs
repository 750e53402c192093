//! `mock-backend`: runs the mock lab backend as a standalone server for local runs and benchmarks.

use std::time::Duration;

use mock_backend::{Capacity, MockBackend, Options};

const USAGE: &str =
    "usage: mock-backend [--listen 127.0.0.1:8788] [--latency-ms N] [--token T] [--quiet]
                    [--capacity N [--refuse-status 429|503] [--retry-after SECONDS]]

Serves DELETE /api/v1/expose/, POST /api/v1/labs/delete, and (the grace stage) POST
/api/v1/labs/stop and POST /api/v1/labs/start, answering 200 unless a fault says
otherwise, and prints one line per call. Control endpoints:
  GET  /__mock/calls    every call received, as JSON
  GET  /__mock/faults   the faults still pending
  POST /__mock/faults   add a fault, e.g.
       {\"lab_request_id\": \"k8s-worker-1-def-456\", \"endpoint\": \"delete_vm\",
        \"action\": {\"kind\": \"status\", \"status\": 500}, \"times\": 2}
       kinds: status{status}, delay{ms}, hang{ms}, reset, redirect{status, location}
       (location /__mock/landing answers 200 and is recorded); endpoint: expose | delete_vm |
       stop | start | null (every one)
  POST /__mock/faults/clear {\"lab_request_id\": \"...\"}: remove that id's faults
  GET  /__mock/stats    calls in flight now, the peak, calls refused by --capacity
  POST /__mock/capacity {\"max_in_flight\": 20, \"status\": 429, \"retry_after\": \"2\"} (null: no limit)
  POST /__mock/reset    forget calls, faults and counters

--capacity N serves N calls at once and refuses the rest at once with --refuse-status (429 by
default), with a Retry-After header when --retry-after is given.";

fn main() {
    let mut listen = "127.0.0.1:8788".to_string();
    let mut options = Options {
        log_calls: true,
        ..Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("mock-backend: {name} needs a value\n\n{USAGE}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--listen" => listen = value("--listen"),
            "--latency-ms" => {
                let ms = value("--latency-ms").parse().unwrap_or_else(|_| {
                    eprintln!("mock-backend: --latency-ms takes a whole number");
                    std::process::exit(2)
                });
                options.latency = Duration::from_millis(ms);
            }
            "--token" => options.expected_token = Some(value("--token")),
            "--capacity" | "--refuse-status" | "--retry-after" => {
                let v = value(&arg);
                let capacity = options.capacity.get_or_insert(Capacity {
                    max_in_flight: usize::MAX,
                    status: 429,
                    retry_after: None,
                    slow: false,
                });
                let number = || {
                    v.parse::<usize>().unwrap_or_else(|_| {
                        eprintln!("mock-backend: {arg} takes a whole number");
                        std::process::exit(2)
                    })
                };
                match arg.as_str() {
                    "--capacity" => capacity.max_in_flight = number(),
                    "--refuse-status" => capacity.status = number() as u16,
                    _ => capacity.retry_after = Some(v.clone()),
                }
            }
            "--quiet" => options.log_calls = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("mock-backend: unknown argument {other}\n\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    if !listen.starts_with("127.")
        && !listen.starts_with("localhost:")
        && !listen.starts_with("[::1]:")
    {
        eprintln!("mock-backend: refusing to listen on {listen}: loopback addresses only");
        std::process::exit(2)
    }
    let mock = MockBackend::start(&listen, options).unwrap_or_else(|e| {
        eprintln!("mock-backend: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    println!("mock-backend: listening on {}", mock.url());
    loop {
        std::thread::park();
    }
}
