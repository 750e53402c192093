//! The router: every public route, from the method and path (`api::routes`) through its checks (`api::auth`, `api::validation`) to the procedure that answers it, a lab's object or a fleet-wide procedure of the core, and back to HTTP.

use worker::{web_sys, Env, Request, Response};

use crate::api::error::ApiError;
use crate::api::routes::{self, Route};
use crate::api::validation::{self, Limits};
use crate::api::{self, auth, fleet, respond};
use crate::lab;
use crate::lab::config::{Config, Webhooks, API_TOKEN_PREVIOUS, OPERATOR_TOKEN_PREVIOUS};
use crate::lab::ports::Level;
use crate::lab::protocol::Request as LabRequest;
use crate::platform;
use crate::platform::fleet_db;
use crate::platform::runtime::console;
use crate::platform::usage::Usage;

fn internal(e: worker::Error) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Answers one request to the worker.
pub async fn handle(request: Request, env: &Env) -> Result<web_sys::Response, ApiError> {
    let path = request.path();
    // The raw method: `Request::method()` maps every method it does not know (e.g. QUERY) to GET.
    let method = request.inner().method();
    if path.starts_with("/api/") || path == routes::METRICS_PATH {
        // Authentication first, from the token secrets alone: a caller without a valid token
        // learns nothing else (not even that a setting is broken).
        let (caller, slot) = authenticate(&request, env)?;
        // Only an authenticated caller is told which setting is wrong (never its value).
        let config = ready_config(env)?;
        let route = routes::route(&method, &path)?;
        auth::authorize(caller, route.access(), config.api_token.is_some())?;
        // The route's own invocation line, whatever its answer: what the router called (a lab's
        // object, a job's object, D1) beside the object's own line.
        let usage = Usage::start(&config);
        let kind = route.kind();
        let answer = api(route, request, env, &config, caller, &usage).await;
        usage.record_request(kind, Some(slot.name()));
        return answer;
    }
    if let Some(action) = api::links::action(&path) {
        let page = link(&request, env, &method, action).await;
        return respond::page(&page).map(Into::into).map_err(internal);
    }
    match routes::route(&method, &path)? {
        Route::Health => health(&request, env).map(Into::into),
        _ => Err(ApiError::NotFound(format!("no route for {path}"))),
    }
}

/// Who is calling, from the request's `Authorization` header against the four token secrets
/// (each role's current value and, during a rotation, its previous one).
fn authenticate(request: &Request, env: &Env) -> Result<(auth::Caller, auth::Slot), ApiError> {
    let secret = |name: &str| platform::env::var(env, name);
    let authorization = request.headers().get("Authorization").ok().flatten();
    let values = [
        secret("API_TOKEN"),
        secret(API_TOKEN_PREVIOUS),
        secret("OPERATOR_TOKEN"),
        secret(OPERATOR_TOKEN_PREVIOUS),
    ];
    let tokens = auth::Tokens {
        api: values[0].as_deref(),
        api_previous: values[1].as_deref(),
        operator: values[2].as_deref(),
        operator_previous: values[3].as_deref(),
    };
    auth::authenticate(&tokens, authorization.as_deref())
}

/// The configuration, or the `503 not_configured` error; the error's detail (with the value of
/// a non-secret setting) goes to the log, never to the caller.
fn config(env: &Env) -> Result<std::rc::Rc<Config>, ApiError> {
    platform::env::config(env).map_err(|e| {
        console(Level::Error, &format!("[config] {}", e.detail()));
        ApiError::from(e)
    })
}

/// The configuration as the API needs it: valid, webhooks included (a broken webhook setting
/// refuses the API while the alarms go on cleaning up).
fn ready_config(env: &Env) -> Result<std::rc::Rc<Config>, ApiError> {
    let config = config(env)?;
    if let Webhooks::Broken(e) = &config.webhooks {
        console(Level::Error, &format!("[config] {}", e.detail()));
        return Err(ApiError::from(e.clone()));
    }
    Ok(config)
}

/// `GET /healthz`: a cheap readiness check for load balancers and smoke tests. `200
/// {"status":"ok"}` exactly when the API can take calls; `503 {"status":"not_configured"}`
/// whenever an API route would answer `503 not_configured`, naming nothing (the log says what is
/// wrong). With the operator's token, a ready answer also lists the rotations left unfinished
/// (`rotations`: each `_PREVIOUS` secret still set, with its notice); anyone else gets the
/// plain answer, whatever token they sent.
fn health(request: &Request, env: &Env) -> Result<Response, ApiError> {
    let operator = matches!(authenticate(request, env), Ok((auth::Caller::Operator, _)));
    let mut rotations = Vec::new();
    let ready = match ready_config(env) {
        Ok(config) if config.fleet_index && !fleet_db::is_bound(env) => {
            console(
                Level::Error,
                &format!(
                    "[config] the D1 binding {} is missing; the fleet index cannot be written",
                    fleet_db::DB_BINDING
                ),
            );
            false
        }
        Ok(config) if config.api_token.is_some() => {
            rotations = config.rotations();
            true
        }
        Ok(_) => {
            console(
                Level::Error,
                "[config] API_TOKEN is not set; the API refuses every call",
            );
            false
        }
        Err(_) => false,
    };
    let (status, body) = if ready && operator {
        (200, api::fleet::health_for_operators(&rotations))
    } else if ready {
        (200, serde_json::json!({"status": "ok"}))
    } else {
        (503, serde_json::json!({"status": "not_configured"}))
    };
    respond::json(status, &body).map_err(internal)
}

/// `GET|POST /links/{action}?...`: a signed link of a warning, its page. The signature is the
/// link's authority (no token): checked here before its lab's object is asked; a GET asks only
/// what a click would do.
async fn link(request: &Request, env: &Env, method: &str, action: &str) -> api::links::Page {
    use api::links;
    if method != "GET" && method != "POST" {
        return links::wrong_method(method);
    }
    let Ok(config) = ready_config(env) else {
        return links::unavailable();
    };
    let Some(link_config) = (match &config.webhooks {
        Webhooks::On(hooks) => hooks.links.as_ref(),
        _ => None,
    }) else {
        return links::off();
    };
    let link = match links::check(link_config, action, &query_string(request)) {
        Ok(checked) => checked,
        Err(why) => {
            console(
                Level::Warn,
                &format!("[link] A link was refused ({method}): {why}"),
            );
            return links::refused(&why);
        }
    };
    let usage = Usage::start(&config);
    let answer = match usage.object_call() {
        Ok(()) => platform::fleet::link(env, link.clone(), method == "POST").await,
        Err(e) => Err(e.into()),
    };
    usage.record_request("route link", None);
    match answer {
        Ok(answer) => links::answered(&link, &answer, config.duration_unit_ms()),
        Err(e) => {
            console(
                Level::Error,
                &format!(
                    "[link] The object of lab {} did not answer a link: {e}",
                    link.lab
                ),
            );
            links::unavailable()
        }
    }
}

/// The authenticated API routes: one handler each, that reads the request, calls the
/// procedure that answers it and writes the answer.
async fn api(
    route: Route,
    request: Request,
    env: &Env,
    config: &Config,
    caller: auth::Caller,
    usage: &Usage,
) -> Result<web_sys::Response, ApiError> {
    match route {
        Route::CreateSession => create_session(request, env, config, usage).await,
        Route::Lab(id, op) => lab_route(request, env, config, caller, id, op, usage).await,
        Route::ListSessions => list(&request, env, config, usage).await,
        Route::Stats => stats(&request, env, config, usage).await,
        Route::Metrics => metrics(env, config, usage).await,
        Route::Bulk => bulk(request, env, config, usage).await,
        Route::BulkJob(id) => bulk_job(env, &id, usage).await,
        Route::Inventory => inventory(request, env, config, usage).await,
        Route::Budget => budget(env, config, usage).await,
        Route::Health => Err(ApiError::NotFound("no route for /api/healthz".into())),
    }
}

/// `.../sessions/{lab_request_id}[/...]`: the operation, answered by the lab's object.
async fn lab_route(
    request: Request,
    env: &Env,
    config: &Config,
    caller: auth::Caller,
    id: String,
    op: routes::LabRoute,
    usage: &Usage,
) -> Result<web_sys::Response, ApiError> {
    let id = path_id(id)?;
    let query = query_string(&request);
    let body = match op {
        _ if !op.has_body() => Vec::new(),
        // Routes that take no fields: any body is read only to see that it has none.
        routes::LabRoute::Retry | routes::LabRoute::Activity => any_body(request).await?,
        _ => json_body(request).await?,
    };
    forward(env, &id, op.request(&body, &query, config, caller)?, usage).await
}

/// `GET /api/v1/labs/sessions`: a page of the fleet's labs from the index.
async fn list(
    request: &Request,
    env: &Env,
    config: &Config,
    usage: &Usage,
) -> Result<web_sys::Response, ApiError> {
    index_on(config)?;
    let query = fleet::parse(&query_string(request))?;
    let fleet = platform::fleet::WorkerdFleet::new(env, config, usage);
    let (rows, read) = fleet.list(&query).await.map_err(unavailable)?;
    report_rows(config, "list", read);
    json(200, &fleet::page(rows, &query, config.stuck_after_attempts))
}

/// `GET /api/v1/labs/stats`: the fleet's counts and service levels.
async fn stats(
    request: &Request,
    env: &Env,
    config: &Config,
    usage: &Usage,
) -> Result<web_sys::Response, ApiError> {
    index_on(config)?;
    if !query_string(request).is_empty() {
        return Err(ApiError::InvalidRequest(
            "the stats route takes no query parameters".into(),
        ));
    }
    let (counts, now) = fleet_counts(env, config, "stats", usage).await?;
    json(
        200,
        &fleet::stats(
            &counts,
            counts.last_reconciliation.as_ref(),
            now,
            &config.rotations(),
        ),
    )
}

/// `GET /metrics`: the same, as Prometheus text.
async fn metrics(env: &Env, config: &Config, usage: &Usage) -> Result<web_sys::Response, ApiError> {
    index_on(config)?;
    let (counts, now) = fleet_counts(env, config, "metrics", usage).await?;
    respond::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        &fleet::metrics(&counts, now, &config.rotations()),
    )
    .map(Into::into)
    .map_err(internal)
}

/// `GET /api/v1/labs/bulk/{job_id}`: the job's progress, from its object.
async fn bulk_job(env: &Env, id: &str, usage: &Usage) -> Result<web_sys::Response, ApiError> {
    if !api::bulk::is_job_id(id) {
        return Err(ApiError::NotFound("no bulk job with that id".into()));
    }
    usage
        .object_call()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    platform::bulk::call(env, id, "GET", "/status", None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `POST /api/v1/labs/inventory`: the pushed VMs reconciled (`lab::fleet::inventory::push`).
async fn inventory(
    request: Request,
    env: &Env,
    config: &Config,
    usage: &Usage,
) -> Result<web_sys::Response, ApiError> {
    index_on(config)?;
    let body = json_body_within(request, validation::MAX_INVENTORY_BODY_BYTES).await?;
    let (vms, act) = validation::parse_inventory(&body)?;
    let fleet = platform::fleet::WorkerdFleet::new(env, config, usage);
    let now = platform::runtime::now_ms();
    let answer = lab::fleet::inventory::push(&fleet, config, &vms, act, now).await;
    json(200, &answer.map_err(unavailable)?)
}

/// `GET /api/v1/labs/budget`: the fleet-wide budget's state, from its coordinator.
async fn budget(env: &Env, config: &Config, usage: &Usage) -> Result<web_sys::Response, ApiError> {
    let mut state = match config.backend_max_concurrency {
        None => serde_json::json!({"limit": null, "in_flight": 0, "waiting": 0}),
        Some(_) => platform::budget::state(env, usage).await.map_err(|e| {
            console(Level::Error, &format!("[budget] {e}"));
            ApiError::Unavailable("the budget's coordinator did not answer; try again".into())
        })?,
    };
    state["max"] = serde_json::json!(config.backend_max_concurrency);
    json(200, &state)
}

/// The fleet routes read the index: `FLEET_INDEX = "off"` (a choice, not a broken setting)
/// leaves them nothing to read.
fn index_on(config: &Config) -> Result<(), ApiError> {
    if config.fleet_index {
        Ok(())
    } else {
        Err(ApiError::Unavailable(
            "FLEET_INDEX is off: there is no fleet index to read".into(),
        ))
    }
}

/// The raw query string of `request` (without `?`), as sent.
fn query_string(request: &Request) -> String {
    let url = request.inner().url();
    let url = url.split('#').next().unwrap_or("");
    url.split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default()
}

/// The fleet's counts and service levels now (one D1 batch), for the route `what`; and now.
async fn fleet_counts(
    env: &Env,
    config: &Config,
    what: &str,
    usage: &Usage,
) -> Result<(lab::index::Counts, i64), ApiError> {
    let now = platform::runtime::now_ms();
    let fleet = platform::fleet::WorkerdFleet::new(env, config, usage);
    let (counts, read) = fleet.counts(now).await.map_err(unavailable)?;
    report_rows(config, what, read);
    Ok((counts, now))
}

/// The rows D1 read for a fleet route, at debug level when `LOG_STORAGE_OPS` is on (the
/// benchmark reads them: D1 bills rows read).
fn report_rows(config: &Config, route: &str, rows: fleet_db::Rows) {
    if config.log_storage_ops {
        worker::console_debug!("[index] D1 rows for {route}: {} read", rows.read);
    }
}

/// The index failed a fleet-wide query: logged in full, answered as a 503 in words.
fn unavailable(e: fleet_db::IndexError) -> ApiError {
    console(Level::Error, &format!("[index] {e}"));
    ApiError::Unavailable("the fleet index did not answer; try again".into())
}

fn json(status: u16, body: &impl serde::Serialize) -> Result<web_sys::Response, ApiError> {
    respond::json(status, body)
        .map(Into::into)
        .map_err(internal)
}

/// Checks a `lab_request_id` taken from the path with the same rules as in a body.
fn path_id(id: String) -> Result<String, ApiError> {
    validation::check_id(&id, "lab_request_id in the path")?;
    Ok(id)
}

/// Reads a JSON request body after checking its `Content-Type` and size.
async fn json_body(request: Request) -> Result<Vec<u8>, ApiError> {
    json_body_within(request, validation::MAX_BODY_BYTES).await
}

/// A body that should be empty (or `{}`): none at all is fine whatever the `Content-Type`
/// says; one that is sent is read as any JSON body.
async fn any_body(request: Request) -> Result<Vec<u8>, ApiError> {
    if request.inner().body().is_none() {
        return Ok(Vec::new());
    }
    json_body(request).await
}

/// `json_body` with a limit of `limit` bytes.
async fn json_body_within(mut request: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let headers = request.headers();
    validation::check_content_type(headers.get("Content-Type").ok().flatten().as_deref())?;
    if let Some(declared) = headers
        .get("Content-Length")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        validation::check_body_size(declared, limit)?;
    }
    if request.inner().body().is_none() {
        return Ok(Vec::new());
    }
    validation::read_bounded(request.stream().map_err(internal)?, limit).await
}

/// `POST /api/v1/labs/sessions`: validate, then hand over to the lab's `SessionManager`.
async fn create_session(
    request: Request,
    env: &Env,
    config: &Config,
    usage: &Usage,
) -> Result<web_sys::Response, ApiError> {
    let body = json_body(request).await?;
    let new = validation::parse_new_session(
        &body,
        Limits {
            max_duration_minutes: config.max_duration_minutes,
            max_worker_nodes: config.max_worker_nodes,
        },
    )?;
    let id = new.lab_request_id.clone();
    forward(env, &id, LabRequest::Create(new), usage).await
}

/// `POST /api/v1/labs/bulk`: a dry run answers what each matching lab would get; a real run
/// starts the job (`job_id`: from the `Idempotency-Key`, or random) and answers 202.
async fn bulk(
    request: Request,
    env: &Env,
    config: &Config,
    usage: &Usage,
) -> Result<web_sys::Response, ApiError> {
    index_on(config)?;
    let job_id = request
        .headers()
        .get("Idempotency-Key")
        .ok()
        .flatten()
        .map(|k| api::bulk::job_id_for_key(&k))
        .transpose()?;
    let body = json_body(request).await?;
    let (plan, dry_run) = api::bulk::parse(&body, config.max_duration_minutes)?;
    use lab::fleet::bulk::{begin, Begun, NotBegun};
    let id = job_id.unwrap_or_else(|| {
        let r = platform::runtime::random;
        lab::webhook::event_id([r(), r(), r(), r()])[4..].to_string()
    });
    let fingerprint = api::bulk::fingerprint(&plan);
    let fleet = platform::fleet::WorkerdFleet::new(env, config, usage);
    let limits = (config.duration_unit_ms(), config.max_duration_minutes);
    let now = platform::runtime::now_ms();
    match begin(&fleet, plan, dry_run, (id, fingerprint), limits, now).await {
        Ok(Begun::Preview(labs)) => json(
            200,
            &serde_json::json!({"matched": labs.len(), "labs": labs}),
        ),
        Ok(Begun::Start(job)) => {
            let body = job.to_value().to_string();
            usage
                .object_call()
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            platform::bulk::call(env, &job.id, "POST", "/start", Some(body))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))
        }
        Err(e @ NotBegun::TooMany(_)) => Err(ApiError::TooLarge(e.to_string())),
        Err(NotBegun::Index(e)) => Err(unavailable(e)),
    }
}

/// Sends `lab_request` to the `SessionManager` named `lab_request_id` and returns its answer as
/// is.
async fn forward(
    env: &Env,
    lab_request_id: &str,
    lab_request: LabRequest,
    usage: &Usage,
) -> Result<web_sys::Response, ApiError> {
    usage
        .object_call()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // No timeout of its own: the caller's request has one.
    platform::fleet::call_lab(env, lab_request_id, &lab_request, None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}
