//! The lab backend client: the engine's `LabBackend` over HTTP with the Workers `fetch`, each call bounded by a timeout.

use std::time::Duration;

use futures::future::{select, Either};
use serde_json::json;
use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, web_sys, Delay};

use crate::config::Config;
use crate::lab::cleanup::{BackendError, BackendReply, LabBackend, Level, Logger};

/// Path of the exposed-services deletion (`DELETE`, body `{"lab_request_id"}`).
pub const EXPOSE_PATH: &str = "/api/v1/expose/";
/// Path of the VM deletion (`POST`, body `{"lab_request_id", "user_id"}`).
pub const DELETE_VM_PATH: &str = "/api/v1/labs/delete";

/// Talks to the lab backend at `BACKEND_URL`.
pub struct HttpLabBackend {
    base_url: String,
    token: Option<String>,
    timeout: Duration,
}

impl HttpLabBackend {
    pub fn new(config: &Config) -> Self {
        Self {
            base_url: config.backend_url.clone(),
            token: config.backend_api_token.clone(),
            timeout: Duration::from_secs(config.backend_timeout_seconds),
        }
    }

    /// Sends one JSON request and reads the whole answer, or gives up after the timeout and
    /// aborts the request. Written against the runtime's `fetch` directly (`web_sys`): the
    /// `worker` wrappers would convert every request and answer back and forth for nothing.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<BackendReply, BackendError> {
        let controller = web_sys::AbortController::new().map_err(network)?;
        let url = format!("{}{path}", self.base_url);
        let exchange = async {
            let headers = web_sys::Headers::new().map_err(network)?;
            headers
                .set("Content-Type", "application/json")
                .map_err(network)?;
            headers.set("Accept", "application/json").map_err(network)?;
            if let Some(token) = &self.token {
                headers
                    .set("Authorization", &format!("Bearer {token}"))
                    .map_err(network)?;
            }
            let init = web_sys::RequestInit::new();
            init.set_method(method);
            init.set_headers(&headers);
            init.set_body(&JsValue::from_str(&body.to_string()));
            // A redirect is an answer, not a success: followed, a 3xx to a page that answers 200
            // would count as deleted (a wrong BACKEND_URL, a login page). Manual mode hands the
            // 3xx back, and the classifier counts it as failed.
            init.set_redirect(web_sys::RequestRedirect::Manual);
            init.set_signal(Some(&controller.signal()));
            let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
            let response: web_sys::Response =
                JsFuture::from(global.fetch_with_str_and_init(&url, &init))
                    .await
                    .map_err(network)?
                    .dyn_into()
                    .map_err(network)?;
            let status = response.status();
            let retry_after = response.headers().get("Retry-After").ok().flatten();
            // A body cut short (connection reset mid-response) is no trustworthy answer, even
            // after a 2xx head: a failure, so the VM is tried again.
            let cut_short = |e: JsValue| BackendError::CutShort {
                status,
                error: js_message(&e),
            };
            let body = JsFuture::from(response.text().map_err(cut_short)?)
                .await
                .map_err(cut_short)?
                .as_string()
                .unwrap_or_default();
            Ok(BackendReply {
                status,
                body,
                retry_after,
            })
        };
        let timeout = Delay::from(self.timeout);
        futures::pin_mut!(exchange);
        match select(exchange, timeout).await {
            Either::Left((result, _)) => result,
            Either::Right(((), _)) => {
                controller.abort();
                Err(BackendError::Timeout(self.timeout.as_secs()))
            }
        }
    }
}

/// The message of a JavaScript error (`TypeError: Network connection lost.`), or its text.
fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "unknown error".into())
}

fn network(e: JsValue) -> BackendError {
    BackendError::Network(js_message(&e))
}

impl LabBackend for HttpLabBackend {
    async fn delete_exposed_services(&self, master_id: &str) -> Result<BackendReply, BackendError> {
        self.call(
            "DELETE",
            EXPOSE_PATH,
            json!({ "lab_request_id": master_id }),
        )
        .await
    }

    async fn delete_vm(
        &self,
        lab_request_id: &str,
        user_id: &str,
    ) -> Result<BackendReply, BackendError> {
        self.call(
            "POST",
            DELETE_VM_PATH,
            json!({ "lab_request_id": lab_request_id, "user_id": user_id }),
        )
        .await
    }
}

/// `DRY_RUN`: logs each call the cleanup would make and answers as if it succeeded, so a staging
/// environment runs the whole flow without touching a backend.
pub struct DryRunBackend<'a, L: Logger> {
    base_url: &'a str,
    log: &'a L,
}

impl<'a, L: Logger> DryRunBackend<'a, L> {
    pub fn new(base_url: &'a str, log: &'a L) -> Self {
        Self { base_url, log }
    }

    fn would(&self, method: &str, path: &str, body: serde_json::Value) -> BackendReply {
        self.log.log(
            Level::Info,
            &format!(
                "[dry run] would call {method} {}{path} {body}",
                self.base_url
            ),
        );
        BackendReply {
            status: 200,
            ..BackendReply::default()
        }
    }
}

impl<L: Logger> LabBackend for DryRunBackend<'_, L> {
    async fn delete_exposed_services(&self, master_id: &str) -> Result<BackendReply, BackendError> {
        Ok(self.would(
            "DELETE",
            EXPOSE_PATH,
            json!({ "lab_request_id": master_id }),
        ))
    }

    async fn delete_vm(
        &self,
        lab_request_id: &str,
        user_id: &str,
    ) -> Result<BackendReply, BackendError> {
        Ok(self.would(
            "POST",
            DELETE_VM_PATH,
            json!({ "lab_request_id": lab_request_id, "user_id": user_id }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Lines(RefCell<Vec<String>>);

    impl Logger for Lines {
        fn log(&self, _: Level, message: &str) {
            self.0.borrow_mut().push(message.to_string());
        }
    }

    #[test]
    fn dry_run_logs_each_call_and_succeeds() {
        let log = Lines::default();
        let backend = DryRunBackend::new("https://labs.example.com", &log);
        let services = futures::executor::block_on(backend.delete_exposed_services("m"));
        let vm = futures::executor::block_on(backend.delete_vm("w1", "u"));
        assert_eq!(services.unwrap().status, 200);
        assert_eq!(vm.unwrap().status, 200);
        assert_eq!(
            *log.0.borrow(),
            vec![
                r#"[dry run] would call DELETE https://labs.example.com/api/v1/expose/ {"lab_request_id":"m"}"#,
                r#"[dry run] would call POST https://labs.example.com/api/v1/labs/delete {"lab_request_id":"w1","user_id":"u"}"#,
            ]
        );
    }
}
