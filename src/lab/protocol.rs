//! The protocol between the worker and a lab's object: every request the object understands, as the caller sends it and the object reads it, and the answers of the internal ones.

use serde::Serialize;

use crate::lab::error::{Malformed, ServiceError};
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
    /// A stopped lab's VMs started again, the lab active for `minutes` more (`lab::session::stage`).
    Resume {
        minutes: u64,
        by: By,
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
    /// A signed link of a warning (`lab::link`), checked by the route: what it would do
    /// (`apply` false: a GET) or done once (`apply` true: a POST).
    Link {
        link: crate::lab::link::Link,
        apply: bool,
    },
}

/// The body of an internal link request.
#[derive(serde::Serialize, serde::Deserialize)]
struct LinkFor {
    link: crate::lab::link::Link,
    apply: bool,
}

/// The body of an internal orphan request.
#[derive(serde::Serialize)]
struct OrphanVm {
    lab_request_id: String,
    user_id: String,
    created_at_ms: Option<i64>,
}

/// The body of an internal claim request.
#[derive(serde::Serialize)]
struct ClaimFor {
    lab: String,
    vm: String,
}

/// The body of an internal delete-again request.
#[derive(serde::Serialize)]
struct AgainVm {
    vm: String,
}

/// The body of an internal extend request.
#[derive(serde::Serialize)]
struct ExtendBy {
    minutes: u64,
    by: By,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
}

/// The body of an internal end request.
#[derive(serde::Serialize)]
struct EndBy {
    by: By,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
}

/// The body of an internal retry request (none from the single-lab route).
#[derive(serde::Serialize)]
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
            Request::Resume { minutes, by, job } => (
                "POST",
                "/resume",
                serde_json::to_string(&ExtendBy {
                    minutes: *minutes,
                    by: *by,
                    job: job.clone(),
                })
                .ok(),
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
            Request::Link { link, apply } => (
                "POST",
                "/link",
                serde_json::to_string(&LinkFor {
                    link: link.clone(),
                    apply: *apply,
                })
                .ok(),
            ),
        }
    }

    /// The request `encode` made, from its method, path and body; a reason when it is not one.
    /// The small bodies are read from a JSON value (a derived deserializer each would cost the
    /// wasm more than their few fields); a create and a page of events by their own types.
    pub fn decode(method: &str, path: &str, body: &str) -> Result<Request, Malformed> {
        let bad = |why: Malformed| Malformed(format!("unreadable internal request {path}: {why}"));
        let json = || -> Result<serde_json::Value, Malformed> {
            serde_json::from_str(body).map_err(|e| bad(Malformed(e.to_string())))
        };
        Ok(match (method, path) {
            ("POST", "/create") => Request::Create(
                NewSession::from_value(&json()?).ok_or_else(|| bad("not a create".into()))?,
            ),
            ("GET", "/status") => Request::Status,
            ("GET", "/events") => Request::Events(EventsPage::default()),
            ("POST", "/events") => Request::Events(
                EventsPage::from_value(&json()?).ok_or_else(|| bad("not a page".into()))?,
            ),
            ("POST", "/end") => {
                let v = json()?;
                Request::End {
                    by: by(&v).ok_or_else(|| bad("by".into()))?,
                    job: job(&v).map_err(bad)?,
                }
            }
            ("POST", "/extend") => {
                let v = json()?;
                Request::Extend {
                    minutes: v["minutes"].as_u64().ok_or_else(|| bad("minutes".into()))?,
                    by: by(&v).ok_or_else(|| bad("by".into()))?,
                    job: job(&v).map_err(bad)?,
                }
            }
            ("POST", "/retry") if body.is_empty() => Request::Retry { job: None },
            ("POST", "/retry") => Request::Retry {
                job: job(&json()?).map_err(bad)?,
            },
            ("POST", "/resume") => {
                let v = json()?;
                Request::Resume {
                    minutes: v["minutes"].as_u64().ok_or_else(|| bad("minutes".into()))?,
                    by: by(&v).ok_or_else(|| bad("by".into()))?,
                    job: job(&v).map_err(bad)?,
                }
            }
            ("POST", "/activity") => Request::Activity,
            ("POST", "/orphan") => {
                let v = json()?;
                Request::Orphan(ReportedVm {
                    lab_request_id: text(&v, "lab_request_id").map_err(bad)?,
                    user_id: text(&v, "user_id").map_err(bad)?,
                    created_at_ms: v["created_at_ms"].as_i64(),
                })
            }
            ("POST", "/delete-again") => Request::DeleteAgain {
                vm: text(&json()?, "vm").map_err(bad)?,
            },
            ("POST", "/poke") => Request::Poke,
            ("POST", "/claim") => {
                let v = json()?;
                Request::Claim {
                    lab: text(&v, "lab").map_err(bad)?,
                    vm: text(&v, "vm").map_err(bad)?,
                }
            }
            ("POST", "/owns") => Request::Owns {
                vm: text(&json()?, "vm").map_err(bad)?,
            },
            ("POST", "/link") => {
                let LinkFor { link, apply } =
                    serde_json::from_str(body).map_err(|e| bad(Malformed(e.to_string())))?;
                Request::Link { link, apply }
            }
            _ => return Err(Malformed(format!("no internal route for {method} {path}"))),
        })
    }
}

/// A body's string field `key`.
fn text(v: &serde_json::Value, key: &str) -> Result<String, Malformed> {
    v[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Malformed(format!("{key} must be a string")))
}

/// A body's `by`.
fn by(v: &serde_json::Value) -> Option<By> {
    v["by"].as_str().and_then(By::parse)
}

/// A body's `job`, if any.
fn job(v: &serde_json::Value) -> Result<Option<String>, Malformed> {
    match &v["job"] {
        serde_json::Value::Null => Ok(None),
        other => other
            .as_str()
            .map(|j| Some(j.to_string()))
            .ok_or_else(|| Malformed("job must be a string".into())),
    }
}

/// A worker VM's object, asked by a create to claim the VM for its lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OwnsAnswer {
    pub owns: bool,
}

/// What a lab's object answered a request of another part of the worker (the sweep, the
/// inventory, a bulk job, a create claiming its workers), as the caller reads it: one decoding
/// of the answer's status and body (`Answer::read`, the inverse of what the object sends), so
/// that the core never reads a status code or picks a field out of JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Carried out, and a lab of its own created for it (201: an orphan's cleanup).
    Created,
    /// Carried out, and a VM scheduled for deletion again (202).
    Scheduled,
    /// Carried out (any other 2xx).
    Done,
    /// The sweep's poke: whether the alarm had to be set again.
    Poked {
        revived: bool,
    },
    Claim(ClaimAnswer),
    Owns(OwnsAnswer),
    /// Refused (4xx), with the object's words.
    Refused {
        status: u16,
        message: String,
    },
}

/// The body of a poke's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PokeAnswer {
    pub revived: bool,
}

/// The answers' bodies are read from a JSON value, not by derived deserializers: a derived
/// one per answer costs the wasm more than the few fields they hold (docs/PERFORMANCE.md,
/// "Size").
fn text_of<'v>(v: &'v serde_json::Value, outer: &str, inner: &str) -> Option<&'v str> {
    v.get(outer)?.get(inner)?.as_str()
}

impl ClaimAnswer {
    /// The answer as `Serialize` writes it: `{"claimed": {"cancelled_orphan": ..}}`,
    /// `{"refused": {"reason": ..}}` or `{"unavailable": {"reason": ..}}`.
    fn from_value(v: &serde_json::Value) -> Option<ClaimAnswer> {
        if let Some(claimed) = v.get("claimed") {
            let cancelled_orphan = match claimed.get("cancelled_orphan") {
                None => false,
                Some(b) => b.as_bool()?,
            };
            return Some(ClaimAnswer::Claimed { cancelled_orphan });
        }
        if let Some(reason) = text_of(v, "refused", "reason") {
            return Some(ClaimAnswer::Refused {
                reason: reason.to_string(),
            });
        }
        text_of(v, "unavailable", "reason").map(|reason| ClaimAnswer::Unavailable {
            reason: reason.to_string(),
        })
    }
}

impl Answer {
    /// The answer to `request` whose status is `status` and body `body`. `Err`: the object
    /// failed (5xx) or answered what the request cannot have (an object of a version that
    /// does not know it).
    pub fn read(request: &Request, status: u16, body: &str) -> Result<Answer, ServiceError> {
        let parsed = || serde_json::from_str::<serde_json::Value>(body);
        let unreadable =
            |what: String| ServiceError::Failed(format!("an unreadable answer: {what}"));
        let read = |pick: fn(&serde_json::Value) -> Option<Answer>| match parsed() {
            Ok(v) => pick(&v).ok_or_else(|| unreadable(crate::lab::text::safe(body, 100))),
            Err(e) => Err(unreadable(e.to_string())),
        };
        match status {
            200..=299 => match request {
                Request::Poke => read(|v| {
                    let revived = v.get("revived")?.as_bool()?;
                    Some(Answer::Poked { revived })
                }),
                Request::Claim { .. } => read(|v| ClaimAnswer::from_value(v).map(Answer::Claim)),
                Request::Owns { .. } => read(|v| {
                    let owns = v.get("owns")?.as_bool()?;
                    Some(Answer::Owns(OwnsAnswer { owns }))
                }),
                _ if status == 201 => Ok(Answer::Created),
                _ if status == 202 => Ok(Answer::Scheduled),
                _ => Ok(Answer::Done),
            },
            400..=499 => Ok(Answer::Refused {
                status,
                message: parsed()
                    .ok()
                    .and_then(|v| text_of(&v, "error", "message").map(str::to_string))
                    .unwrap_or_else(|| format!("answered {status}")),
            }),
            _ => Err(ServiceError::Answered(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> String {
        "vm-1".into()
    }

    /// The answers as the object sends them today, and as the previous version sent them (the
    /// same bodies: a deploy mixes both), read into the one typed answer.
    #[test]
    fn every_answer_of_this_and_the_previous_version_reads_as_its_type() {
        let poke = Request::Poke;
        assert_eq!(
            Answer::read(&poke, 200, r#"{"revived":true}"#),
            Ok(Answer::Poked { revived: true })
        );
        let claim = Request::Claim {
            lab: "m".into(),
            vm: vm(),
        };
        assert_eq!(
            Answer::read(&claim, 200, r#"{"claimed":{"cancelled_orphan":true}}"#),
            Ok(Answer::Claim(ClaimAnswer::Claimed {
                cancelled_orphan: true
            }))
        );
        assert_eq!(
            Answer::read(&claim, 200, r#"{"refused":{"reason":"no"}}"#),
            Ok(Answer::Claim(ClaimAnswer::Refused {
                reason: "no".into()
            }))
        );
        let owns = Request::Owns { vm: vm() };
        assert_eq!(
            Answer::read(&owns, 200, r#"{"owns":false}"#),
            Ok(Answer::Owns(OwnsAnswer { owns: false }))
        );
        // A lab's view: only the status matters to an internal caller.
        let view = r#"{"lab_request_id":"vm-1","status":"cleaning_up"}"#;
        let orphan = Request::Orphan(ReportedVm {
            lab_request_id: vm(),
            user_id: "u".into(),
            created_at_ms: None,
        });
        assert_eq!(Answer::read(&orphan, 201, view), Ok(Answer::Created));
        assert_eq!(Answer::read(&orphan, 200, view), Ok(Answer::Done));
        let again = Request::DeleteAgain { vm: vm() };
        assert_eq!(Answer::read(&again, 202, view), Ok(Answer::Scheduled));
        let end = Request::End {
            by: By::Operator,
            job: Some("job-1".into()),
        };
        assert_eq!(Answer::read(&end, 200, view), Ok(Answer::Done));
        // Refusals carry the object's words; without a body, the status.
        assert_eq!(
            Answer::read(
                &end,
                409,
                r#"{"error":{"code":"conflict","message":"lab m is completed"}}"#
            ),
            Ok(Answer::Refused {
                status: 409,
                message: "lab m is completed".into()
            })
        );
        assert_eq!(
            Answer::read(&end, 404, ""),
            Ok(Answer::Refused {
                status: 404,
                message: "answered 404".into()
            })
        );
        // An object of a version that does not know the request refuses it (400): a refusal,
        // which the claim reads as "unavailable", never as a claim.
        assert!(matches!(
            Answer::read(
                &claim,
                400,
                r#"{"error":{"code":"invalid_request","message":"no internal route for POST /claim"}}"#
            ),
            Ok(Answer::Refused { status: 400, .. })
        ));
        // The object failed: an error, with its status.
        assert_eq!(
            Answer::read(&poke, 500, "boom"),
            Err(ServiceError::Answered(500))
        );
        assert_eq!(
            Answer::read(&end, 503, ""),
            Err(ServiceError::Answered(503))
        );
        // A 200 whose body is not the request's answer is unreadable, not a default.
        assert!(matches!(
            Answer::read(&poke, 200, "{}"),
            Err(ServiceError::Failed(words)) if words.starts_with("an unreadable answer")
        ));
        assert!(Answer::read(&owns, 200, "null").is_err());
    }

    #[test]
    fn every_request_decodes_as_it_was_encoded() {
        let requests = vec![
            Request::Create(NewSession {
                lab_request_id: "m".into(),
                user_id: "u".into(),
                worker_lab_request_ids: vec!["w1".into(), "w2".into()],
                duration: 60,
                vm_name: Some("k8s \"é\" 😀".into()),
                idle_timeout: Some(15),
                labels: [("class".to_string(), "c1".to_string())].into(),
                keep_stopped_minutes: None,
            }),
            Request::Create(NewSession {
                lab_request_id: "s".into(),
                user_id: "u".into(),
                worker_lab_request_ids: Vec::new(),
                duration: 1,
                vm_name: None,
                idle_timeout: None,
                labels: Default::default(),
                keep_stopped_minutes: None,
            }),
            Request::Events(EventsPage {
                after: Some(crate::lab::session::timeline::EventsCursor { at: 5, skip: 2 }),
                limit: 10,
            }),
            Request::Status,
            Request::Events(EventsPage::default()),
            Request::End {
                by: By::Operator,
                job: None,
            },
            Request::Extend {
                minutes: 5,
                by: By::Operator,
                job: Some("j".into()),
            },
            Request::Retry { job: None },
            Request::Resume {
                minutes: 30,
                by: By::Api,
                job: None,
            },
            Request::Resume {
                minutes: 5,
                by: By::Operator,
                job: Some("j".into()),
            },
            Request::Activity,
            Request::Orphan(ReportedVm {
                lab_request_id: vm(),
                user_id: "u".into(),
                created_at_ms: Some(1),
            }),
            Request::DeleteAgain { vm: vm() },
            Request::Poke,
            Request::Claim {
                lab: "m".into(),
                vm: vm(),
            },
            Request::Owns { vm: vm() },
        ];
        for request in requests {
            let (method, path, body) = request.encode();
            let decoded = Request::decode(method, path, body.as_deref().unwrap_or(""));
            assert_eq!(decoded, Ok(request), "{method} {path}");
        }
        assert!(Request::decode("POST", "/nowhere", "").is_err());
    }
}
