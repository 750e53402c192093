//! One outbound HTTP exchange over the runtime's `fetch`, for the lab backend and the webhook receiver alike: no redirects followed, the whole answer read, bounded by a timeout.

use std::time::Duration;

use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, web_sys};

use crate::platform::runtime::within;

/// An answer, read to its end or to the limit.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
    /// The body went on past the limit: `body` holds its first bytes only (the rest was not
    /// read).
    pub truncated: bool,
}

/// Most bytes of an answer read from the lab backend or the webhook receiver (only the
/// inventory reads more): an error body is logged shortened anyway, and an isolate has 128 MB.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why there is no answer.
pub enum Failure {
    /// Nothing within the timeout (the request was aborted).
    Timeout,
    /// The connection failed before any answer: the request may never have arrived.
    Network(String),
    /// An answer began (its status is known) and was cut off.
    CutShort { status: u16, error: String },
}

/// Sends one request (`headers` besides none; `body` as text, none for a GET) and reads the
/// answer up to `limit` bytes, or gives up after `timeout` and aborts it. Written against the runtime's `fetch` directly
/// (`web_sys`): the `worker` wrappers would convert every request and answer back and forth for
/// nothing. A redirect is an answer, not a success: followed, a 3xx to a page that answers 200
/// would count as done (a wrong URL, a login page); manual mode hands the 3xx back.
pub async fn exchange(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
    limit: usize,
) -> Result<Answer, Failure> {
    let controller = web_sys::AbortController::new().map_err(network)?;
    let work = async {
        let list = web_sys::Headers::new().map_err(network)?;
        for (name, value) in headers {
            list.set(name, value).map_err(network)?;
        }
        let init = web_sys::RequestInit::new();
        init.set_method(method);
        init.set_headers(&list);
        if let Some(body) = body {
            init.set_body(&JsValue::from_str(body));
        }
        init.set_redirect(web_sys::RequestRedirect::Manual);
        init.set_signal(Some(&controller.signal()));
        let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
        let response: web_sys::Response =
            JsFuture::from(global.fetch_with_str_and_init(url, &init))
                .await
                .map_err(network)?
                .dyn_into()
                .map_err(network)?;
        let status = response.status();
        let retry_after = response.headers().get("Retry-After").ok().flatten();
        // A body cut short (connection reset mid-response) is no trustworthy answer, even after
        // a 2xx head.
        let cut_short = |e: JsValue| Failure::CutShort {
            status,
            error: message(&e),
        };
        let (body, truncated) = read_within(&response, limit).await.map_err(cut_short)?;
        Ok(Answer {
            status,
            body,
            retry_after,
            truncated,
        })
    };
    match within(timeout, work).await {
        Some(result) => result,
        None => {
            controller.abort();
            Err(Failure::Timeout)
        }
    }
}

/// Reads an answer's body chunk by chunk, keeping at most `limit` bytes: past it, the stream is
/// cancelled unread. Whether it was.
async fn read_within(
    response: &web_sys::Response,
    limit: usize,
) -> Result<(String, bool), JsValue> {
    let Some(stream) = response.body() else {
        return Ok((String::new(), false));
    };
    let reader: web_sys::ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await?;
        if js_sys::Reflect::get(&chunk, &JsValue::from_str("done"))?.is_truthy() {
            return Ok((String::from_utf8_lossy(&bytes).into_owned(), false));
        }
        let value: js_sys::Uint8Array =
            js_sys::Reflect::get(&chunk, &JsValue::from_str("value"))?.unchecked_into();
        let room = limit.saturating_sub(bytes.len());
        let length = value.length() as usize;
        if length > room {
            bytes.extend(value.subarray(0, room as u32).to_vec());
            // Nothing more is read; the connection is let go.
            let _ = reader.cancel();
            return Ok((String::from_utf8_lossy(&bytes).into_owned(), true));
        }
        bytes.extend(value.to_vec());
    }
}

/// The message of a JavaScript error (`TypeError: Network connection lost.`), or its text.
fn message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "unknown error".into())
}

fn network(e: JsValue) -> Failure {
    Failure::Network(message(&e))
}
