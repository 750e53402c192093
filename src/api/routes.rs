//! The public routes: maps a method and path to a `Route`, or to a 404/405 `ApiError`.

use crate::api::auth::{Access, Caller};
use crate::api::error::ApiError;
use crate::api::{percent, validation};
use crate::lab::config::Config;
use crate::lab::procedures::Request as LabRequest;
use crate::lab::session::By;

/// Path of the collection of lab sessions.
pub const SESSIONS_PATH: &str = "/api/v1/labs/sessions";
/// Path of the fleet's counts.
pub const STATS_PATH: &str = "/api/v1/labs/stats";
/// Path of the inventory reconciliation.
pub const INVENTORY_PATH: &str = "/api/v1/labs/inventory";
/// Path of the fleet-wide budget's state.
pub const BUDGET_PATH: &str = "/api/v1/labs/budget";
/// Path of the bulk actions.
pub const BULK_PATH: &str = "/api/v1/labs/bulk";
/// Path of the Prometheus metrics (operator token, like the API).
pub const METRICS_PATH: &str = "/metrics";

/// A request the API serves; ids are taken from the path, percent-decoded, not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/v1/labs/sessions`: schedule a lab's cleanup.
    CreateSession,
    /// `GET /api/v1/labs/sessions`: list the fleet's labs from the index (operator).
    ListSessions,
    /// `GET /api/v1/labs/stats`: counts over the fleet (operator).
    Stats,
    /// `POST /api/v1/labs/inventory`: reconcile the backend's running VMs (operator).
    Inventory,
    /// `GET /api/v1/labs/budget`: the fleet-wide budget of backend calls now (operator).
    Budget,
    /// `GET /metrics`: the stats and service levels as Prometheus text (operator).
    Metrics,
    /// `POST /api/v1/labs/bulk`: end, extend, retry or resume the labs a selector matches (operator).
    Bulk,
    /// `GET /api/v1/labs/bulk/{job_id}`: a bulk job's progress (operator).
    BulkJob(String),
    /// `.../sessions/{lab_request_id}[/...]`: an operation on one lab, answered by its object.
    Lab(String, LabRoute),
    /// `GET /healthz`: liveness, no detail.
    Health,
}

impl Route {
    /// The route's name in its invocation's ledger line (`event: invocation`, `kind: "route
    /// <name>"`): the router's own call to a lab's object, a job's object or D1 is counted there,
    /// beside the object's own line.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::CreateSession => "route create",
            Route::ListSessions => "route list",
            Route::Stats => "route stats",
            Route::Inventory => "route inventory",
            Route::Budget => "route budget",
            Route::Metrics => "route metrics",
            Route::Bulk => "route bulk",
            Route::BulkJob(_) => "route bulk job",
            Route::Lab(_, op) => match op {
                LabRoute::Status => "route status",
                LabRoute::End => "route end",
                LabRoute::Extend => "route extend",
                LabRoute::Retry => "route retry",
                LabRoute::Events => "route events",
                LabRoute::Activity => "route activity",
                LabRoute::Resume => "route resume",
            },
            Route::Health => "route health",
        }
    }
}

/// An operation on one lab: which token it needs, and the lab request it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabRoute {
    /// `GET /api/v1/labs/sessions/{lab_request_id}`: the session's status.
    Status,
    /// `DELETE /api/v1/labs/sessions/{lab_request_id}`: end the lab now.
    End,
    /// `POST /api/v1/labs/sessions/{lab_request_id}/extend`: move the expiry later.
    Extend,
    /// `POST /api/v1/labs/sessions/{lab_request_id}/retry`: the next attempt now (operator).
    Retry,
    /// `GET /api/v1/labs/sessions/{lab_request_id}/events`: the lab's timeline.
    Events,
    /// `POST /api/v1/labs/sessions/{lab_request_id}/activity`: the student is active.
    Activity,
    /// `POST /api/v1/labs/sessions/{lab_request_id}/resume`: a stopped lab active again.
    Resume,
}

impl LabRoute {
    pub fn access(self) -> Access {
        match self {
            LabRoute::Retry => Access::Fleet,
            LabRoute::Status
            | LabRoute::End
            | LabRoute::Extend
            | LabRoute::Events
            | LabRoute::Activity
            | LabRoute::Resume => Access::PerLab,
        }
    }

    /// Whether the operation reads a JSON body (retry now and activity take none, and refuse
    /// one with fields).
    pub fn has_body(self) -> bool {
        matches!(
            self,
            LabRoute::Extend | LabRoute::Retry | LabRoute::Activity | LabRoute::Resume
        )
    }

    /// The lab request this operation sends to the lab's object, from its checked body, its
    /// query string (without `?`) and who asked.
    pub fn request(
        self,
        body: &[u8],
        query: &str,
        config: &Config,
        caller: Caller,
    ) -> Result<LabRequest, ApiError> {
        let by = match caller {
            Caller::Frontend => By::Api,
            Caller::Operator => By::Operator,
        };
        Ok(match self {
            LabRoute::Status => LabRequest::Status,
            LabRoute::Events => LabRequest::Events(validation::parse_events_query(query)?),
            LabRoute::End => LabRequest::End { by, job: None },
            LabRoute::Extend => LabRequest::Extend {
                minutes: validation::parse_extend(body, config.max_duration_minutes)?,
                by,
                job: None,
            },
            LabRoute::Retry => {
                validation::parse_empty(body)?;
                LabRequest::Retry { job: None }
            }
            LabRoute::Activity => {
                validation::parse_empty(body)?;
                LabRequest::Activity
            }
            LabRoute::Resume => {
                // `{"duration": N}`, whole minutes from 1 (the lifetime cap is the lab's to check).
                let obj = validation::json_object(body)?;
                validation::only_fields(&obj, &["duration"], "")?;
                let max = config.max_duration_minutes;
                let minutes = validation::duration(obj.get("duration"), "duration", max)?;
                if config.start_path.is_none() {
                    return Err(ApiError::NotConfigured(
                        "START_PATH is not set: this worker cannot start a stopped lab's VMs, so it cannot resume one".into(),
                    ));
                }
                LabRequest::Resume {
                    minutes,
                    by,
                    job: None,
                }
            }
        })
    }
}

/// A path the API serves, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Template {
    Sessions,
    Session,
    Extend,
    Retry,
    Events,
    Activity,
    Resume,
    Stats,
    Inventory,
    Budget,
    Metrics,
    Bulk,
    BulkJob,
    Health,
}

impl Template {
    const ALL: [Template; 14] = [
        Template::Sessions,
        Template::Session,
        Template::Extend,
        Template::Retry,
        Template::Events,
        Template::Activity,
        Template::Resume,
        Template::Stats,
        Template::Inventory,
        Template::Budget,
        Template::Metrics,
        Template::Bulk,
        Template::BulkJob,
        Template::Health,
    ];

    /// The path, OpenAPI-style.
    fn path(self) -> &'static str {
        match self {
            Template::Sessions => "/api/v1/labs/sessions",
            Template::Session => "/api/v1/labs/sessions/{lab_request_id}",
            Template::Extend => "/api/v1/labs/sessions/{lab_request_id}/extend",
            Template::Retry => "/api/v1/labs/sessions/{lab_request_id}/retry",
            Template::Events => "/api/v1/labs/sessions/{lab_request_id}/events",
            Template::Activity => "/api/v1/labs/sessions/{lab_request_id}/activity",
            Template::Resume => "/api/v1/labs/sessions/{lab_request_id}/resume",
            Template::Stats => "/api/v1/labs/stats",
            Template::Inventory => "/api/v1/labs/inventory",
            Template::Budget => "/api/v1/labs/budget",
            Template::Metrics => METRICS_PATH,
            Template::Bulk => BULK_PATH,
            Template::BulkJob => "/api/v1/labs/bulk/{job_id}",
            Template::Health => "/healthz",
        }
    }

    fn methods(self) -> &'static [&'static str] {
        match self {
            Template::Sessions => &["GET", "POST"],
            Template::Session => &["GET", "DELETE"],
            Template::Extend
            | Template::Retry
            | Template::Activity
            | Template::Resume
            | Template::Inventory
            | Template::Bulk => &["POST"],
            Template::Stats
            | Template::Budget
            | Template::Events
            | Template::Metrics
            | Template::BulkJob
            | Template::Health => &["GET"],
        }
    }
}

/// Every path the API serves (OpenAPI-style templates) with its methods: the source for 405
/// answers, and checked against `docs/openapi.yaml` by a test.
pub fn routes() -> Vec<(&'static str, &'static [&'static str])> {
    Template::ALL
        .iter()
        .map(|t| (t.path(), t.methods()))
        .collect()
}

impl Route {
    /// Which token the route needs.
    pub fn access(&self) -> Access {
        match self {
            Route::ListSessions
            | Route::Stats
            | Route::Inventory
            | Route::Budget
            | Route::Metrics
            | Route::Bulk
            | Route::BulkJob(_) => Access::Fleet,
            Route::Lab(_, op) => op.access(),
            Route::CreateSession | Route::Health => Access::PerLab,
        }
    }
}

/// Finds the route for `method` and `path`. A trailing slash is not significant.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let not_found = || ApiError::NotFound(format!("no route for {path}"));
    let id = |segment: &str| percent::decode(segment, false).ok_or_else(not_found);
    let (template, id) = if path == SESSIONS_PATH {
        (Template::Sessions, None)
    } else if path == STATS_PATH {
        (Template::Stats, None)
    } else if path == INVENTORY_PATH {
        (Template::Inventory, None)
    } else if path == BUDGET_PATH {
        (Template::Budget, None)
    } else if path == METRICS_PATH {
        (Template::Metrics, None)
    } else if path == BULK_PATH {
        (Template::Bulk, None)
    } else if let Some(job) = path
        .strip_prefix(BULK_PATH)
        .and_then(|r| r.strip_prefix('/'))
        .filter(|r| !r.is_empty() && !r.contains('/'))
    {
        (Template::BulkJob, Some(id(job)?))
    } else if path == "/healthz" {
        (Template::Health, None)
    } else {
        let rest = path
            .strip_prefix(SESSIONS_PATH)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(not_found)?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [segment] if !segment.is_empty() => (Template::Session, Some(id(segment)?)),
            [segment, "extend"] if !segment.is_empty() => (Template::Extend, Some(id(segment)?)),
            [segment, "retry"] if !segment.is_empty() => (Template::Retry, Some(id(segment)?)),
            [segment, "events"] if !segment.is_empty() => (Template::Events, Some(id(segment)?)),
            [segment, "activity"] if !segment.is_empty() => {
                (Template::Activity, Some(id(segment)?))
            }
            [segment, "resume"] if !segment.is_empty() => (Template::Resume, Some(id(segment)?)),
            _ => return Err(not_found()),
        }
    };
    match (template, method, id) {
        (Template::Sessions, "POST", None) => Ok(Route::CreateSession),
        (Template::Sessions, "GET", None) => Ok(Route::ListSessions),
        (Template::Session, "GET", Some(id)) => Ok(Route::Lab(id, LabRoute::Status)),
        (Template::Session, "DELETE", Some(id)) => Ok(Route::Lab(id, LabRoute::End)),
        (Template::Extend, "POST", Some(id)) => Ok(Route::Lab(id, LabRoute::Extend)),
        (Template::Retry, "POST", Some(id)) => Ok(Route::Lab(id, LabRoute::Retry)),
        (Template::Events, "GET", Some(id)) => Ok(Route::Lab(id, LabRoute::Events)),
        (Template::Activity, "POST", Some(id)) => Ok(Route::Lab(id, LabRoute::Activity)),
        (Template::Resume, "POST", Some(id)) => Ok(Route::Lab(id, LabRoute::Resume)),
        (Template::Stats, "GET", None) => Ok(Route::Stats),
        (Template::Inventory, "POST", None) => Ok(Route::Inventory),
        (Template::Budget, "GET", None) => Ok(Route::Budget),
        (Template::Metrics, "GET", None) => Ok(Route::Metrics),
        (Template::Bulk, "POST", None) => Ok(Route::Bulk),
        (Template::BulkJob, "GET", Some(job)) => Ok(Route::BulkJob(job)),
        (Template::Health, "GET", None) => Ok(Route::Health),
        _ => Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: template.path().to_string(),
            allow: template.methods().join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_matched() {
        assert_eq!(route("POST", SESSIONS_PATH), Ok(Route::CreateSession));
        assert_eq!(
            route("POST", "/api/v1/labs/sessions/"),
            Ok(Route::CreateSession)
        );
        assert_eq!(
            route("GET", "/api/v1/labs/sessions/lab-1"),
            Ok(Route::Lab("lab-1".into(), LabRoute::Status))
        );
        assert_eq!(
            route("DELETE", "/api/v1/labs/sessions/lab-1/"),
            Ok(Route::Lab("lab-1".into(), LabRoute::End))
        );
        assert_eq!(
            route("POST", "/api/v1/labs/sessions/lab-1/extend"),
            Ok(Route::Lab("lab-1".into(), LabRoute::Extend))
        );
        assert_eq!(route("GET", "/healthz"), Ok(Route::Health));
        assert_eq!(route("GET", SESSIONS_PATH), Ok(Route::ListSessions));
        assert_eq!(route("GET", "/api/v1/labs/stats"), Ok(Route::Stats));
        assert_eq!(
            route("POST", "/api/v1/labs/sessions/lab-1/retry"),
            Ok(Route::Lab("lab-1".into(), LabRoute::Retry))
        );
        assert_eq!(
            route("GET", "/api/v1/labs/sessions/user%40x%3A1"),
            Ok(Route::Lab("user@x:1".into(), LabRoute::Status))
        );
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        for (method, path, allow) in [
            ("PUT", SESSIONS_PATH, "GET, POST"),
            ("DELETE", SESSIONS_PATH, "GET, POST"),
            ("POST", "/api/v1/labs/stats", "GET"),
            ("GET", "/api/v1/labs/sessions/x/retry", "POST"),
            ("POST", "/api/v1/labs/sessions/x", "GET, DELETE"),
            ("PATCH", "/api/v1/labs/sessions/x", "GET, DELETE"),
            ("GET", "/api/v1/labs/sessions/x/extend", "POST"),
            ("POST", "/healthz", "GET"),
        ] {
            let e = route(method, path).unwrap_err();
            assert_eq!(e.status(), 405, "{method} {path}");
            assert_eq!(e.headers(), vec![("Allow", allow.to_string())]);
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/api",
            "/api/v1/labs",
            "/api/v1/labs/sessionsX",
            "/API/V1/LABS/SESSIONS",
            "/api/v1/labs/sessions//extend",
            "/api/v1/labs/sessions/x/y",
            "/api/v1/labs/sessions/x/extend/more",
            "/api/v1/labs/sessions/%zz",
            "/api/v1/labs/sessions/%ff",
        ] {
            let e = route("GET", path).unwrap_err();
            assert_eq!(e.code(), "not_found", "{path}");
        }
    }
}
