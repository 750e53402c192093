//! Sends a signed webhook delivery to `WEBHOOK_URL` over HTTP, bounded by a timeout.

use crate::lab::error::ServiceError;
use std::time::Duration;

use crate::lab::ports::Delivery;
use crate::platform::http::{self, Failure};

/// `User-Agent` of every delivery: this worker and its version.
pub const USER_AGENT: &str = concat!("labs-cleanup/", env!("CARGO_PKG_VERSION"));

/// POSTs `delivery` to `url` once, with the Standard Webhooks headers: the status it got, or why
/// there was none (timeout, network error). Redirects are not followed (a 3xx is not a
/// delivery); an answer cut short after its status still counts by its status.
pub async fn send(url: &str, delivery: &Delivery, timeout: Duration) -> Result<u16, ServiceError> {
    let timestamp = delivery.timestamp.to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("User-Agent", USER_AGENT),
        ("webhook-id", delivery.id.as_str()),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", delivery.signature.as_str()),
    ];
    match http::exchange(
        "POST",
        url,
        &headers,
        Some(&delivery.body),
        timeout,
        http::MAX_ANSWER_BYTES,
    )
    .await
    {
        Ok(answer) => Ok(answer.status),
        Err(Failure::CutShort { status, .. }) => Ok(status),
        Err(Failure::Timeout) => Err(ServiceError::Failed(format!(
            "no answer within {} s",
            timeout.as_secs()
        ))),
        Err(Failure::Network(e)) => Err(ServiceError::Failed(format!("network error: {e}"))),
    }
}
