//! labs-cleanup: the worker's entry point and router; every lab's cleanup lives in its own `SessionManager`.
//!
//! Flow: `routes` (which endpoint) -> `validation` (is the request sound) -> `SessionManager`
//! Durable Object (store, alarm) -> `cleanup` engine -> `backend` client.

pub mod backend;
pub mod cleanup;
pub mod config;
pub mod error;
pub mod respond;
pub mod routes;
pub mod session;
pub mod session_manager;
pub mod validation;

use wasm_bindgen::JsValue;
use worker::{event, Context, Env, Headers, Method, Request, RequestInit, Response};

use crate::config::Config;
use crate::error::ApiError;
use crate::routes::Route;
use crate::validation::Limits;

pub use crate::session_manager::SessionManager;

/// Name of the Durable Object binding in `wrangler.toml`.
const SESSION_MANAGER_BINDING: &str = "SESSION_MANAGER";

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(request: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    match handle(request, &env).await {
        Ok(response) => Ok(response),
        Err(e) => {
            if e.status() >= 500 {
                worker::console_error!("[router] {e}");
            }
            respond::error(&e)
        }
    }
}

fn internal(e: worker::Error) -> ApiError {
    ApiError::Internal(e.to_string())
}

async fn handle(request: Request, env: &Env) -> Result<Response, ApiError> {
    match routes::route(request.method().as_ref(), &request.path())? {
        Route::CreateSession => create_session(request, env).await,
    }
}

/// `POST /api/v1/labs/sessions`: validate, then hand over to the lab's `SessionManager`.
async fn create_session(mut request: Request, env: &Env) -> Result<Response, ApiError> {
    let headers = request.headers();
    validation::check_content_type(headers.get("Content-Type").ok().flatten().as_deref())?;
    if let Some(declared) = headers
        .get("Content-Length")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        validation::check_body_size(declared)?;
    }
    let body = request.bytes().await.map_err(internal)?;
    validation::check_body_size(body.len())?;

    let config = Config::from_env(env).map_err(|e| ApiError::NotConfigured(e.to_string()))?;
    let new = validation::parse_new_session(
        &body,
        Limits {
            max_duration_minutes: config.max_duration_minutes,
            max_worker_nodes: config.max_worker_nodes,
        },
    )?;

    let stub = env
        .durable_object(SESSION_MANAGER_BINDING)
        .and_then(|ns| ns.id_from_name(&new.lab_request_id)?.get_stub())
        .map_err(internal)?;
    let forward_headers = Headers::new();
    forward_headers
        .set("Content-Type", "application/json")
        .map_err(internal)?;
    let body = serde_json::to_string(&new).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(forward_headers)
        .with_body(Some(JsValue::from_str(&body)));
    let forward = Request::new_with_init(
        &format!("https://session-manager{}", session_manager::CREATE_PATH),
        &init,
    )
    .map_err(internal)?;
    stub.fetch_with_request(forward).await.map_err(internal)
}
