//! The protocol between the worker and a lab's object: every request the object understands, as the caller sends it and the object reads it, and the answers of the internal ones.

use serde::{Deserialize, Serialize};

use crate::lab::fleet::report::ReportedVm;
use crate::lab::session::timeline::EventsPage;
use crate::lab::session::{By, NewSession};

/// Every request a lab's object understands: one type, which the router sends and the object
/// reads (`encode` / `decode`), so a new operation is one variant and its procedure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Create(NewSession),
    Status,
    /// A page of the lab's timeline.
    Events(EventsPage),
    /// `job`: the bulk job asking (`lab::fleet::bulk`), applied once per lab however often it
    /// asks.
    End {
        by: By,
        job: Option<String>,
    },
    Extend {
        minutes: u64,
        by: By,
        job: Option<String>,
    },
    Retry {
        job: Option<String>,
    },
    /// The student is active (an idle end moves later).
    Activity,
    /// A VM an inventory reported and no lab lists: cleaned up now as a lab of its own.
    Orphan(ReportedVm),
    /// A VM counted deleted that an inventory still reports: deleted again.
    DeleteAgain {
        vm: String,
    },
    /// The sweep: run what is due, and set the alarm again if it is missing.
    Poke,
    /// A multi-node lab's create, to the object of each of its worker VMs: this VM is lab `lab`'s
    /// (see `lab::session::claim`).
    Claim {
        lab: String,
        vm: String,
    },
    /// To the lab a claim names: whether it lists VM `vm` (or is creating a lab that does).
    Owns {
        vm: String,
    },
}

/// The body of an internal orphan request.
#[derive(serde::Serialize, serde::Deserialize)]
struct OrphanVm {
    lab_request_id: String,
    user_id: String,
    created_at_ms: Option<i64>,
}

/// The body of an internal claim request.
#[derive(serde::Serialize, serde::Deserialize)]
struct ClaimFor {
    lab: String,
    vm: String,
}

/// The body of an internal delete-again request.
#[derive(serde::Serialize, serde::Deserialize)]
struct AgainVm {
    vm: String,
}

/// The body of an internal extend request.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExtendBy {
    minutes: u64,
    by: By,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
}

/// The body of an internal end request.
#[derive(serde::Serialize, serde::Deserialize)]
struct EndBy {
    by: By,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
}

/// The body of an internal retry request (none from the single-lab route).
#[derive(serde::Serialize, serde::Deserialize)]
struct RetryFor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
}

impl Request {
    /// The internal request's method, path and JSON body.
    pub fn encode(&self) -> (&'static str, &'static str, Option<String>) {
        match self {
            Request::Create(new) => ("POST", "/create", serde_json::to_string(new).ok()),
            Request::Status => ("GET", "/status", None),
            Request::Events(page) if *page == EventsPage::default() => ("GET", "/events", None),
            Request::Events(page) => ("POST", "/events", serde_json::to_string(page).ok()),
            Request::End { by, job } => (
                "POST",
                "/end",
                serde_json::to_string(&EndBy {
                    by: *by,
                    job: job.clone(),
                })
                .ok(),
            ),
            Request::Extend { minutes, by, job } => (
                "POST",
                "/extend",
                serde_json::to_string(&ExtendBy {
                    minutes: *minutes,
                    by: *by,
                    job: job.clone(),
                })
                .ok(),
            ),
            Request::Retry { job } => (
                "POST",
                "/retry",
                serde_json::to_string(&RetryFor { job: job.clone() }).ok(),
            ),
            Request::Activity => ("POST", "/activity", None),
            Request::Orphan(vm) => (
                "POST",
                "/orphan",
                serde_json::to_string(&OrphanVm {
                    lab_request_id: vm.lab_request_id.clone(),
                    user_id: vm.user_id.clone(),
                    created_at_ms: vm.created_at_ms,
                })
                .ok(),
            ),
            Request::DeleteAgain { vm } => (
                "POST",
                "/delete-again",
                serde_json::to_string(&AgainVm { vm: vm.clone() }).ok(),
            ),
            Request::Poke => ("POST", "/poke", None),
            Request::Claim { lab, vm } => (
                "POST",
                "/claim",
                serde_json::to_string(&ClaimFor {
                    lab: lab.clone(),
                    vm: vm.clone(),
                })
                .ok(),
            ),
            Request::Owns { vm } => (
                "POST",
                "/owns",
                serde_json::to_string(&AgainVm { vm: vm.clone() }).ok(),
            ),
        }
    }

    /// The request `encode` made, from its method, path and body; a reason when it is not one.
    pub fn decode(method: &str, path: &str, body: &str) -> Result<Request, String> {
        fn read<T: serde::de::DeserializeOwned>(path: &str, body: &str) -> Result<T, String> {
            serde_json::from_str(body)
                .map_err(|e| format!("unreadable internal request {path}: {e}"))
        }
        Ok(match (method, path) {
            ("POST", "/create") => Request::Create(read(path, body)?),
            ("GET", "/status") => Request::Status,
            ("GET", "/events") => Request::Events(EventsPage::default()),
            ("POST", "/events") => Request::Events(read(path, body)?),
            ("POST", "/end") => {
                let end: EndBy = read(path, body)?;
                Request::End {
                    by: end.by,
                    job: end.job,
                }
            }
            ("POST", "/extend") => {
                let by: ExtendBy = read(path, body)?;
                Request::Extend {
                    minutes: by.minutes,
                    by: by.by,
                    job: by.job,
                }
            }
            ("POST", "/retry") => {
                let retry: RetryFor = if body.is_empty() {
                    RetryFor { job: None }
                } else {
                    read(path, body)?
                };
                Request::Retry { job: retry.job }
            }
            ("POST", "/activity") => Request::Activity,
            ("POST", "/orphan") => {
                let vm: OrphanVm = read(path, body)?;
                Request::Orphan(ReportedVm {
                    lab_request_id: vm.lab_request_id,
                    user_id: vm.user_id,
                    created_at_ms: vm.created_at_ms,
                })
            }
            ("POST", "/delete-again") => {
                let again: AgainVm = read(path, body)?;
                Request::DeleteAgain { vm: again.vm }
            }
            ("POST", "/poke") => Request::Poke,
            ("POST", "/claim") => {
                let claim: ClaimFor = read(path, body)?;
                Request::Claim {
                    lab: claim.lab,
                    vm: claim.vm,
                }
            }
            ("POST", "/owns") => {
                let vm: AgainVm = read(path, body)?;
                Request::Owns { vm: vm.vm }
            }
            _ => return Err(format!("no internal route for {method} {path}")),
        })
    }
}

/// A worker VM's object, asked by a create to claim the VM for its lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimAnswer {
    /// The VM is the lab's now (or was already). `cancelled_orphan`: an orphan cleanup of this
    /// VM was scheduled and had not started; it is cancelled.
    Claimed {
        #[serde(default)]
        cancelled_orphan: bool,
    },
    /// The VM cannot be this lab's: `reason` says why, in words a caller can act on.
    Refused { reason: String },
    /// The answer could not be had now (another lab's object did not answer): try again.
    Unavailable { reason: String },
}

/// A lab's object, asked whether it lists a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnsAnswer {
    pub owns: bool,
}
