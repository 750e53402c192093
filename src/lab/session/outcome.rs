//! What a cleanup attempt achieved, as the record keeps it and as the engine reports it.

use serde::{Deserialize, Serialize};

/// One VM that failed to delete in an attempt, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionError {
    pub lab_request_id: String,
    pub error: String,
}

/// What one cleanup attempt achieved (kept as the lab's `last_outcome`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub successful_deletions: usize,
    pub failed_deletions: usize,
    pub errors: Vec<DeletionError>,
    /// VMs not tried in the attempt because the backend was overloaded (still pending; not
    /// failures).
    #[serde(default)]
    pub not_tried: usize,
}

/// Whether one deletion (of a VM, or of the exposed services) counts as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// The backend answered 2xx.
    Deleted,
    /// The backend answered 404: the VM was already gone.
    AlreadyGone,
    /// The backend is overloaded (429 or 503), and says when to come back if it sent a
    /// `Retry-After`: to be retried, and no further call in this attempt.
    Refused {
        retry_after_ms: Option<i64>,
        error: String,
    },
    /// Anything else: to be retried.
    Failed(String),
}

impl Deletion {
    /// Whether the deletion counts as done (2xx or 404).
    pub fn is_done(&self) -> bool {
        matches!(self, Deletion::Deleted | Deletion::AlreadyGone)
    }
}

/// How an attempt ended, as far as timing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every VM is deleted: no next attempt.
    Done,
    /// The backend refused a call (429 or 503); `retry_after_ms` is the longest wait it asked for
    /// (`None`: it did not say).
    Refused { retry_after_ms: Option<i64> },
    /// Some deletion failed otherwise (5xx, timeout, network, ...).
    Failed,
    /// The invocation's limits (its subrequests, or the attempt's deadline) left VMs untried:
    /// the next attempt goes on with them a moment later, in an invocation of its own.
    Continued,
}

/// What an attempt did: the VM ids the backend confirmed deleting and those it said were already
/// gone, the outcome to store, how the services call went (`None`: not made), how the attempt
/// ended (for the retry timing), and how many backend calls it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub deleted: Vec<String>,
    pub already_gone: Vec<String>,
    pub outcome: Outcome,
    pub services: Option<Deletion>,
    pub ending: Ending,
    pub calls: usize,
    /// Calls that got no answer in time.
    pub timeouts: usize,
    /// Calls the backend refused ("not now": 429 or 503), among the failed ones.
    pub refused: usize,
}

impl AttemptResult {
    /// Whether some call failed for a reason other than a refusal (a 5xx but 503, a timeout,
    /// a reset): the backend did not merely say "not now".
    pub fn failed_otherwise(&self) -> bool {
        self.outcome.failed_deletions > self.refused
    }
}

impl Default for AttemptResult {
    fn default() -> Self {
        AttemptResult {
            deleted: Vec::new(),
            already_gone: Vec::new(),
            outcome: Outcome::default(),
            services: None,
            ending: Ending::Failed,
            calls: 0,
            timeouts: 0,
            refused: 0,
        }
    }
}
