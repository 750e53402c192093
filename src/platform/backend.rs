//! The lab backend client: the engine's `LabBackend` over HTTP with the Workers `fetch`, each call bounded by a timeout.

use std::time::Duration;

use serde_json::json;

use crate::lab::config::Config;
use crate::lab::ports::{BackendError, BackendReply, LabBackend, Level, Logger, Power};
use crate::platform::http::{self, Failure};

/// Path of the exposed-services deletion (`DELETE`, body `{"lab_request_id"}`).
pub const EXPOSE_PATH: &str = "/api/v1/expose/";
/// Path of the VM deletion (`POST`, body `{"lab_request_id", "user_id"}`).
pub const DELETE_VM_PATH: &str = "/api/v1/labs/delete";

/// Talks to the lab backend at `BACKEND_URL`.
pub struct HttpLabBackend {
    base_url: String,
    token: Option<String>,
    timeout: Duration,
    stop_path: Option<String>,
    start_path: Option<String>,
}

/// The path of a power call, from the settings (`None`: not configured).
pub fn power_path(config: &Config, power: Power) -> Option<&str> {
    match power {
        Power::Stop => config.stop.as_ref().map(|s| s.stop_path.as_str()),
        Power::Start => config.start_path.as_deref(),
    }
}

fn unconfigured(power: Power) -> BackendError {
    let setting = match power {
        Power::Stop => "STOP_PATH",
        Power::Start => "START_PATH",
    };
    BackendError::Network(format!(
        "no {setting} is set; no {} call made",
        power.name()
    ))
}

impl HttpLabBackend {
    pub fn new(config: &Config) -> Self {
        Self {
            base_url: config.backend_url.clone(),
            token: config.backend_api_token.clone(),
            timeout: config.backend_timeout(),
            stop_path: power_path(config, Power::Stop).map(str::to_string),
            start_path: power_path(config, Power::Start).map(str::to_string),
        }
    }

    /// Sends one JSON request and reads the whole answer, or gives up after the timeout.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<BackendReply, BackendError> {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer));
        }
        let url = format!("{}{path}", self.base_url);
        let body = body.to_string();
        match http::exchange(
            method,
            &url,
            &headers,
            Some(&body),
            self.timeout,
            http::MAX_ANSWER_BYTES,
        )
        .await
        {
            Ok(answer) => Ok(BackendReply {
                status: answer.status,
                body: answer.body,
                retry_after: answer.retry_after,
            }),
            Err(Failure::Timeout) => Err(BackendError::Timeout(self.timeout.as_secs())),
            Err(Failure::Network(e)) => Err(BackendError::Network(e)),
            Err(Failure::CutShort { status, error }) => {
                Err(BackendError::CutShort { status, error })
            }
        }
    }
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

    async fn power(
        &self,
        power: Power,
        lab_request_id: &str,
    ) -> Result<BackendReply, BackendError> {
        let path = match power {
            Power::Stop => &self.stop_path,
            Power::Start => &self.start_path,
        };
        let path = path.as_deref().ok_or_else(|| unconfigured(power))?;
        self.call("POST", path, json!({ "lab_request_id": lab_request_id }))
            .await
    }
}

/// `DRY_RUN`: logs each call the cleanup would make and answers as if it succeeded, so a staging
/// environment runs the whole flow without touching a backend.
pub struct DryRunBackend<'a, L: Logger> {
    base_url: &'a str,
    log: &'a L,
    config: Option<&'a Config>,
}

impl<'a, L: Logger> DryRunBackend<'a, L> {
    pub fn new(base_url: &'a str, log: &'a L) -> Self {
        Self {
            base_url,
            log,
            config: None,
        }
    }

    /// With the settings' stop and start paths.
    pub fn with(config: &'a Config, log: &'a L) -> Self {
        Self {
            base_url: &config.backend_url,
            log,
            config: Some(config),
        }
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

    async fn power(
        &self,
        power: Power,
        lab_request_id: &str,
    ) -> Result<BackendReply, BackendError> {
        let path = self
            .config
            .and_then(|c| power_path(c, power))
            .ok_or_else(|| unconfigured(power))?;
        Ok(self.would("POST", path, json!({ "lab_request_id": lab_request_id })))
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
        fn record<T: serde::Serialize>(&self, _: &T) {}
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
