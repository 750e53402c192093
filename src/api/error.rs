//! Typed API errors, and the one place where they become JSON error responses.

use serde_json::json;
use thiserror::Error;

/// Everything the HTTP API can answer with other than success.
///
/// Each variant has a stable machine-readable `code` and an HTTP status; the message is for
/// people and says which field or setting is wrong and why. Messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// More items than one call may hold (e.g. VMs in an inventory).
    #[error("{0}")]
    TooLarge(String),
    #[error("Content-Type must be application/json (got {0})")]
    UnsupportedMediaType(String),
    #[error("server configuration error: {0}")]
    NotConfigured(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A configuration problem refuses the request: `503 not_configured`, naming the setting and
/// its rule, never its value (the caller may be anyone; the value goes to the log).
impl From<crate::lab::config::ConfigError> for ApiError {
    fn from(e: crate::lab::config::ConfigError) -> Self {
        ApiError::NotConfigured(e.to_string())
    }
}

/// A lab procedure's refusal, as the API answers it: the one mapping, for every route.
impl From<crate::lab::refusal::Refusal> for ApiError {
    fn from(refusal: crate::lab::refusal::Refusal) -> Self {
        use crate::lab::refusal::Refusal;
        match refusal {
            Refusal::NotFound => ApiError::NotFound("no session with this lab_request_id".into()),
            Refusal::Conflict(message) => ApiError::Conflict(message),
            Refusal::Invalid(message) => ApiError::InvalidRequest(message),
            Refusal::Unavailable(message) => ApiError::Unavailable(message),
            Refusal::Unreadable(problems) => {
                let named: Vec<String> = problems.iter().map(ToString::to_string).collect();
                ApiError::Internal(format!(
                    "this lab's record from the previous worker is unreadable ({}); it is kept and looked at again; see the worker's logs",
                    named.join("; ")
                ))
            }
        }
    }
}

impl ApiError {
    /// Every error code, in the order `docs/openapi.yaml` lists them (a test checks the spec).
    pub const CODES: &'static [&'static str] = &[
        "invalid_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "conflict",
        "payload_too_large",
        "too_large",
        "unsupported_media_type",
        "not_configured",
        "unavailable",
        "internal_error",
    ];

    /// The stable error code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::NotConfigured(_) => "not_configured",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict(_) => 409,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::TooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::NotConfigured(_) => 503,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The JSON body: `{"error": {"code": "...", "message": "..."}}`.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "code": self.code(), "message": self.to_string() } })
    }

    /// Headers that belong with this error (e.g. `Allow` on a 405).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::MethodNotAllowed { allow, .. } => vec![("Allow", allow.clone())],
            ApiError::Unauthorized(_) => vec![(
                "WWW-Authenticate",
                "Bearer realm=\"labs-cleanup\"".to_string(),
            )],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_and_message() {
        let e = ApiError::InvalidRequest("duration must be at least 1".into());
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"error": {"code": "invalid_request", "message": "duration must be at least 1"}})
        );
    }

    #[test]
    fn method_not_allowed_carries_allow_header() {
        let e = ApiError::MethodNotAllowed {
            method: "GET".into(),
            path: "/api/v1/labs/sessions".into(),
            allow: "POST".into(),
        };
        assert_eq!(e.status(), 405);
        assert_eq!(e.code(), "method_not_allowed");
        assert_eq!(e.headers(), vec![("Allow", "POST".to_string())]);
        assert!(e.to_string().contains("allowed: POST"));
    }

    #[test]
    fn every_variant_maps_to_a_4xx_or_5xx() {
        let all = [
            ApiError::InvalidRequest(String::new()),
            ApiError::Unauthorized(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::Conflict(String::new()),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::TooLarge(String::new()),
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::NotConfigured(String::new()),
            ApiError::Unavailable(String::new()),
            ApiError::Internal(String::new()),
        ];
        for e in &all {
            assert!((400..600).contains(&e.status()), "{e:?}");
            assert!(ApiError::CODES.contains(&e.code()), "{e:?}");
        }
        let mut codes: Vec<&str> = all.iter().map(ApiError::code).collect();
        codes.push("method_not_allowed");
        codes.sort_unstable();
        let mut listed = ApiError::CODES.to_vec();
        listed.sort_unstable();
        assert_eq!(codes, listed, "CODES lists every variant's code once");
    }
}
