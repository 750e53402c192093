//! The vocabulary every layer shares: a lab's statuses, their names, and the "stuck" rule, defined once.
//!
//! The API, the index's SQL, the webhooks and the dashboard spell these names; they all take them
//! from here (the SQL is built from them, and a test checks the migration and the page).

use serde::Serialize;

/// Where a lab is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for the lab to expire.
    Scheduled,
    /// Ended, its VMs stopped and kept until `delete_at` (the grace stage, `STOP_PATH`).
    Stopped,
    /// A cleanup attempt is running (or was interrupted and will be resumed by the alarm).
    CleaningUp,
    /// An attempt left VMs undeleted; the next attempt is scheduled.
    Retrying,
    /// Every VM is deleted.
    Completed,
}

impl Status {
    /// Every status, in the order of a lab's life.
    pub const ALL: [Status; 5] = [
        Status::Scheduled,
        Status::Stopped,
        Status::CleaningUp,
        Status::Retrying,
        Status::Completed,
    ];

    /// The status as the API, the index and the webhooks name it (serde uses the same names).
    pub fn name(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Stopped => "stopped",
            Status::CleaningUp => "cleaning_up",
            Status::Retrying => "retrying",
            Status::Completed => "completed",
        }
    }

    /// The status of `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The status in words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Stopped => "stopped",
            Status::CleaningUp => "being cleaned up",
            Status::Retrying => "being cleaned up (retrying)",
            Status::Completed => "already cleaned up",
        }
    }
}

/// Whether a lab counts as stuck: not completed after `stuck_after` attempts or more
/// (`STUCK_AFTER_ATTEMPTS`). The fleet view, its SQL (`stuck_sql`) and `lab.cleanup_stuck` all
/// use this rule.
pub fn is_stuck(status: Status, attempts: u32, stuck_after: u32) -> bool {
    status != Status::Completed && attempts >= stuck_after
}

/// The stuck rule as SQL over the index's `status` and `attempts` columns, with one bound
/// parameter (`?`) for `stuck_after`; `negated` is its complement.
pub fn stuck_sql(negated: bool) -> String {
    let done = Status::Completed.name();
    if negated {
        format!("(status = '{done}' OR attempts < ?)")
    } else {
        // `attempts > 0` follows from `STUCK_AFTER_ATTEMPTS` >= 1; said, it lets SQLite use
        // the partial index of labs with attempts (`migrations/0008_narrow_indexes.sql`).
        format!("status != '{done}' AND attempts >= ? AND attempts > 0")
    }
}

/// The statuses of labs whose cleanup has started and is not finished, as an SQL list
/// (`('cleaning_up', 'retrying')`).
pub fn in_cleanup_sql() -> String {
    format!(
        "('{}', '{}')",
        Status::CleaningUp.name(),
        Status::Retrying.name()
    )
}

crate::lab::named_enum!(Status, Status::from_name);

/// A single-VM lab, or a multi-node Kubernetes lab (a master and its workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabType {
    SingleVm,
    MultiNode,
}

impl LabType {
    pub fn name(self) -> &'static str {
        match self {
            LabType::SingleVm => "single_vm",
            LabType::MultiNode => "multi_node",
        }
    }
}

/// Whether a VM is the lab's master (the `lab_request_id`) or one of its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_the_vocabulary_agree() {
        for status in Status::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.name().into())
            );
            assert_eq!(Status::from_name(status.name()), Some(status));
        }
        assert_eq!(Status::from_name("done"), None);
        for t in [LabType::SingleVm, LabType::MultiNode] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
    }

    #[test]
    fn stuck_means_not_completed_after_enough_attempts() {
        assert!(!is_stuck(Status::Retrying, 2, 3));
        assert!(is_stuck(Status::Retrying, 3, 3));
        assert!(is_stuck(Status::CleaningUp, 7, 3));
        assert!(!is_stuck(Status::Completed, 9, 3));
        assert!(!is_stuck(Status::Scheduled, 0, 3));
        assert_eq!(
            stuck_sql(false),
            "status != 'completed' AND attempts >= ? AND attempts > 0"
        );
        assert_eq!(stuck_sql(true), "(status = 'completed' OR attempts < ?)");
        assert_eq!(in_cleanup_sql(), "('cleaning_up', 'retrying')");
    }
}
