//! Responses: the one place where bodies and `ApiError`s become `worker::Response`s (JSON, and the metrics' text).

use serde::Serialize;
use worker::{Headers, Response};

use crate::api::error::ApiError;

/// A JSON response with `status`; answers are per-session state, so never cached.
pub fn json<T: Serialize>(status: u16, body: &T) -> worker::Result<Response> {
    json_with_headers(status, body, &[])
}

/// The JSON error response for `error`, with its status and headers.
pub fn error(error: &ApiError) -> worker::Result<Response> {
    json_with_headers(error.status(), &error.body(), &error.headers())
}

fn json_with_headers<T: Serialize>(
    status: u16,
    body: &T,
    extra: &[(&str, String)],
) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json; charset=utf-8")?;
    headers.set("Cache-Control", "no-store")?;
    for (name, value) in extra {
        headers.set(name, value)?;
    }
    let text = serde_json::to_string(body).map_err(|e| worker::Error::RustError(e.to_string()))?;
    Ok(Response::ok(text)?
        .with_status(status)
        .with_headers(headers))
}

/// A text response of `content_type` with `status`, never cached (`GET /metrics`).
pub fn text(status: u16, content_type: &str, body: &str) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", content_type)?;
    headers.set("Cache-Control", "no-store")?;
    Ok(Response::ok(body)?
        .with_status(status)
        .with_headers(headers))
}

/// A page of a signed link (`api::links`), with its headers.
pub fn page(page: &crate::api::links::Page) -> worker::Result<Response> {
    let headers = Headers::new();
    for (name, value) in crate::api::links::headers() {
        headers.set(name, &value)?;
    }
    if let Some(allow) = page.allow {
        headers.set("Allow", allow)?;
    }
    Ok(Response::ok(page.html.as_str())?
        .with_status(page.status)
        .with_headers(headers))
}
