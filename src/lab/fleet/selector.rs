//! Which labs a fleet-wide action selects (labels, statuses, a user): a leaf type the index's SQL and the bulk job share.

use crate::lab::status::Status;

/// Which labs: every label given, and the statuses and the user if given. At least a label or
/// a user (checked by the API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: Vec<(String, String)>,
    pub statuses: Vec<Status>,
    pub user_id: Option<String>,
}
