//! Calls to Durable Objects: one request to the object of a binding, by name, as `fetch`.

use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{web_sys, Env};

use crate::lab::error::ServiceError;

/// One request to an object.
pub struct Call<'a> {
    pub method: &'a str,
    /// The path (and query) the object's `fetch` routes on.
    pub path: &'a str,
    pub body: Option<String>,
    /// The runtime aborts the call when it is up (the promise fails with a `TimeoutError`) and
    /// the object's work goes on without a caller; `None`: the caller's own limits only.
    pub timeout_ms: Option<u32>,
}

/// Sends `call` to the object named `name` of the Durable Object binding `binding`; its answer
/// as is (any status). `host` only names the URL the object sees.
pub async fn fetch(
    env: &Env,
    binding: &str,
    name: &str,
    host: &str,
    call: Call<'_>,
) -> Result<web_sys::Response, ServiceError> {
    let js = |e: JsValue| ServiceError::Failed(worker::Error::from(e).to_string());
    let stub: worker::worker_sys::DurableObject = env
        .durable_object(binding)
        .and_then(|ns| ns.id_from_name(name)?.get_stub())
        .map_err(|e| ServiceError::Failed(e.to_string()))?
        .into_rpc();
    let init = web_sys::RequestInit::new();
    init.set_method(call.method);
    if let Some(body) = call.body {
        init.set_body(&JsValue::from_str(&body));
    }
    if let Some(ms) = call.timeout_ms {
        init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(ms)));
    }
    let request =
        web_sys::Request::new_with_str_and_init(&format!("https://{host}{}", call.path), &init)
            .map_err(js)?;
    JsFuture::from(stub.fetch_with_request(&request).map_err(js)?)
        .await
        .map_err(js)?
        .dyn_into::<web_sys::Response>()
        .map_err(js)
}

/// The text of an object's answer.
pub async fn text(answer: &web_sys::Response) -> Result<String, ServiceError> {
    let js = |e: JsValue| ServiceError::Failed(worker::Error::from(e).to_string());
    Ok(JsFuture::from(answer.text().map_err(js)?)
        .await
        .map_err(js)?
        .as_string()
        .unwrap_or_default())
}
