//! Delivers a lab's webhook events over HTTP, signed as Standard Webhooks says, each bounded by a timeout.

use std::time::Duration;

use futures::future::{select, Either};
use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, web_sys, Delay};

use crate::config::WebhookConfig;
use crate::lab::webhook::{sign, OutboxEvent};

/// `User-Agent` of every delivery: this worker and its version.
pub const USER_AGENT: &str = concat!("labs-cleanup/", env!("CARGO_PKG_VERSION"));

/// Sends `event` once, signed for this delivery's time (`now_secs`): the status it got, or why
/// there was none (timeout, network error). Redirects are not followed (a 3xx is not a delivery).
pub async fn deliver(
    config: &WebhookConfig,
    event: &OutboxEvent,
    now_secs: i64,
    timeout: Duration,
) -> Result<u16, String> {
    let controller = web_sys::AbortController::new().map_err(message)?;
    let exchange = async {
        let headers = web_sys::Headers::new().map_err(message)?;
        headers
            .set("Content-Type", "application/json")
            .map_err(message)?;
        headers.set("User-Agent", USER_AGENT).map_err(message)?;
        headers.set("webhook-id", &event.id).map_err(message)?;
        headers
            .set("webhook-timestamp", &now_secs.to_string())
            .map_err(message)?;
        headers
            .set(
                "webhook-signature",
                &sign(&config.secret, &event.id, now_secs, &event.body),
            )
            .map_err(message)?;
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_headers(&headers);
        init.set_body(&JsValue::from_str(&event.body));
        init.set_redirect(web_sys::RequestRedirect::Manual);
        init.set_signal(Some(&controller.signal()));
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let response: web_sys::Response =
            JsFuture::from(global.fetch_with_str_and_init(&config.url, &init))
                .await
                .map_err(message)?
                .dyn_into()
                .map_err(message)?;
        // Read the answer to its end, so the connection can be reused; its text is not needed.
        if let Ok(text) = response.text() {
            let _ = JsFuture::from(text).await;
        }
        Ok(response.status())
    };
    futures::pin_mut!(exchange);
    match select(exchange, Delay::from(timeout)).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => {
            controller.abort();
            Err(format!("no answer within {} s", timeout.as_secs()))
        }
    }
}

fn message(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| format!("network error: {}", String::from(e.message())))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "network error".into())
}
