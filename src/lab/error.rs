//! The errors of calls that leave the core: to another object, the fleet index (D1), the webhook receiver, the budget's coordinator.

use thiserror::Error;

/// Why a call to a service of the platform failed: another object, the fleet index (D1), the
/// webhook receiver, the budget's coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServiceError {
    /// Past the plan's limit (`ENFORCE_PLAN_LIMITS`), in the platform's words.
    #[error(transparent)]
    Exceeded(#[from] crate::lab::invocation::Exceeded),
    /// The service answered this status: it failed (a 5xx), or the request was not one it
    /// takes.
    #[error("answered {0}")]
    Answered(u16),
    /// No answer in time.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// The service failed, answered something unusable or could not be reached, in its words.
    #[error("{0}")]
    Failed(String),
    /// The fleet index answered a row that does not read as its query's columns
    /// (`lab::index::rows`): the whole answer is refused, never read as fewer rows.
    #[error("the index answered a row of {query} that does not read ({detail}); nothing of the answer is used")]
    Unreadable { query: &'static str, detail: String },
}

impl From<String> for ServiceError {
    fn from(words: String) -> Self {
        ServiceError::Failed(words)
    }
}

impl From<&str> for ServiceError {
    fn from(words: &str) -> Self {
        ServiceError::Failed(words.to_string())
    }
}

/// Something from outside (a page of the backend's inventory, an internal request) that is
/// not as its contract says, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl std::ops::Deref for Malformed {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// An error compared with the words it says (what a log line holds).
impl PartialEq<&str> for ServiceError {
    fn eq(&self, words: &&str) -> bool {
        self.to_string().as_str() == *words
    }
}

impl From<&str> for Malformed {
    fn from(words: &str) -> Self {
        Malformed(words.to_string())
    }
}
