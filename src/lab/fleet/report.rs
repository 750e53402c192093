//! What an inventory says and what the index knows of a VM: the reported VMs, a pulled page, how far a VM's deletion got, a reconciliation's counts.

use serde::Serialize;
use serde_json::Value;

use crate::lab::error::Malformed;
use crate::lab::limits::{describe_char, id_problem, IdProblem};
use crate::lab::status::Status;

/// Most VMs in one report (a pushed body, a pulled page).
pub const MAX_VMS_PER_REPORT: usize = 1_000;
/// Largest report read, pushed or pulled: `MAX_VMS_PER_REPORT` entries of two 128-character ids
/// and a time each (about 350 bytes), with room for white space. A pulled page is read up to
/// this and refused beyond it (an isolate has 128 MB: a page is never read whole first).
pub const MAX_REPORT_BYTES: usize = 512 * 1024;
/// Longest cursor kept and sent back: a longer one ends the pass (the next starts again from the
/// first page).
pub const MAX_CURSOR_BYTES: usize = 2_000;

/// One VM the backend says it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedVm {
    pub lab_request_id: String,
    pub user_id: String,
    /// When the backend created it, if it says.
    pub created_at_ms: Option<i64>,
}

impl ReportedVm {
    /// One entry of `vms`: `{"lab_request_id", "user_id", "created_at"?}`, ids checked as a
    /// create's, `created_at` RFC 3339; the reason, in words, when it is not one.
    pub fn from_json(value: &Value) -> Result<ReportedVm, Malformed> {
        let Value::Object(entry) = value else {
            return Err(Malformed("must be an object".to_string()));
        };
        let id = |key: &str| -> Result<String, Malformed> {
            match entry.get(key) {
                Some(Value::String(s)) => match id_problem(s) {
                    None => Ok(s.clone()),
                    Some(IdProblem::Empty) => Err(Malformed(format!("{key} must not be empty"))),
                    Some(IdProblem::TooLong(_)) => {
                        Err(Malformed(format!("{key} must be at most 128 characters")))
                    }
                    Some(IdProblem::Character(c)) => Err(Malformed(format!(
                        "{key} contains {}; allowed are A-Z a-z 0-9 . _ : @ + -",
                        describe_char(c)
                    ))),
                },
                Some(_) => Err(Malformed(format!("{key} must be a string"))),
                None => Err(Malformed(format!("{key} is required"))),
            }
        };
        let created_at_ms = match entry.get("created_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                crate::lab::time::parse_rfc3339(s)
                    .ok_or_else(|| Malformed("created_at must be an RFC 3339 time".into()))?,
            ),
            Some(_) => {
                return Err(Malformed(
                    "created_at must be an RFC 3339 time (a string)".to_string(),
                ))
            }
        };
        Ok(ReportedVm {
            lab_request_id: id("lab_request_id")?,
            user_id: id("user_id")?,
            created_at_ms,
        })
    }
}

/// One page of the backend's inventory (`GET {BACKEND_URL}{INVENTORY_PATH}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub vms: Vec<ReportedVm>,
    pub next_cursor: Option<String>,
    /// Entries that were not VMs as the contract says (skipped, counted, logged).
    pub skipped: usize,
    /// The page's `next_cursor` was not one this worker sends back (over `MAX_CURSOR_BYTES`):
    /// the pass ends with this page.
    pub bad_cursor: bool,
}

/// Reads a page: `{"vms": [...], "next_cursor": "..." | null}`. A page that is not that shape,
/// or holds more than `MAX_VMS_PER_REPORT` VMs, is refused; a bad entry is skipped.
pub fn parse_page(text: &str) -> Result<Page, Malformed> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Malformed(format!("the page is not JSON: {e}")))?;
    let Some(Value::Array(vms)) = value.get("vms") else {
        return Err(Malformed("the page has no \"vms\" array".to_string()));
    };
    if vms.len() > MAX_VMS_PER_REPORT {
        return Err(Malformed(format!(
            "the page holds {} VMs; at most {MAX_VMS_PER_REPORT} are read",
            vms.len()
        )));
    }
    let (next_cursor, bad_cursor) = match value.get("next_cursor") {
        None | Some(Value::Null) => (None, false),
        Some(Value::String(c)) if !c.is_empty() && c.len() <= MAX_CURSOR_BYTES => {
            (Some(c.clone()), false)
        }
        Some(Value::String(_)) => (None, true),
        Some(_) => {
            return Err(Malformed(
                "next_cursor must be a string or null".to_string(),
            ))
        }
    };
    let parsed: Vec<Result<ReportedVm, Malformed>> =
        vms.iter().map(ReportedVm::from_json).collect();
    let skipped = parsed.iter().filter(|r| r.is_err()).count();
    Ok(Page {
        vms: parsed.into_iter().filter_map(Result::ok).collect(),
        next_cursor,
        skipped,
        bad_cursor,
    })
}

/// Why a page of the inventory could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The backend refused the request (a 4xx): with a cursor, the cursor is no longer good.
    #[error("the backend's inventory answered {0}")]
    Refused(u16),
    /// Anything else: a 5xx, no answer in time, a page over `MAX_REPORT_BYTES` or not the
    /// contract's (in words).
    #[error("{0}")]
    Failed(String),
}

/// How far a known VM's deletion got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Pending,
    Deleted,
    AlreadyGone,
}

impl VmState {
    pub fn name(self) -> &'static str {
        match self {
            VmState::Pending => "pending",
            VmState::Deleted => "deleted",
            VmState::AlreadyGone => "already_gone",
        }
    }

    pub fn from_name(name: &str) -> Option<VmState> {
        [VmState::Pending, VmState::Deleted, VmState::AlreadyGone]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// What the index knows of a VM: its lab, and how far its deletion got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownVm {
    pub vm_id: String,
    pub lab_request_id: String,
    pub state: VmState,
    pub lab_status: Status,
    pub expires_at_ms: i64,
    /// When the lab completed, or else when its index row last changed: after the VM's
    /// deletion, for a finished VM.
    pub changed_at_ms: i64,
}

/// Counts of one reconciliation (or a scheduled run's pages together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub tracked: usize,
    pub overdue: usize,
    pub finished: usize,
    pub unknown: usize,
    pub scheduled: usize,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.tracked += other.tracked;
        self.overdue += other.overdue;
        self.finished += other.finished;
        self.unknown += other.unknown;
        self.scheduled += other.scheduled;
    }
}

/// Where a reconciliation's inventory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /api/v1/labs/inventory`.
    Push,
    /// The scheduled pull from the backend.
    Pull,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Push => "push",
            Source::Pull => "pull",
        }
    }
}

/// One reconciliation's record, kept for the stats and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    pub at_ms: i64,
    pub source: Source,
    pub act: bool,
    pub counts: Counts,
}
