//! The JSON status body of a lab, as the API answers it and the webhooks carry it.

use serde::Serialize;

use crate::lab::session::{Cleanup, EndReason, LabType, Labels, Origin, Outcome, Session, Status};
use crate::lab::text::rfc3339;

/// The status body of a session, as answered by the API.
#[derive(Debug, Serialize)]
pub struct SessionView<'a> {
    pub lab_request_id: &'a str,
    pub user_id: &'a str,
    pub vm_name: Option<&'a str>,
    pub lab_type: LabType,
    pub worker_lab_request_ids: &'a [String],
    pub status: Status,
    pub created_at: String,
    pub expires_at: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    /// VMs the backend confirmed deleting (2xx).
    pub deleted: &'a [String],
    /// VMs the backend answered 404 for (already gone; not asked again).
    pub already_gone: &'a [String],
    pub pending: Vec<&'a str>,
    pub last_outcome: Option<&'a Outcome>,
    pub completed_at: Option<String>,
    /// True once a cleanup attempt ran with `DRY_RUN`: its "deleted" VMs were only logged.
    pub dry_run: bool,
    /// When the lab was taken over from the TypeScript worker's storage; `null` for labs
    /// scheduled by this worker.
    pub adopted_at: Option<String>,
    /// `api`, `legacy` (adopted) or `inventory` (an orphan VM an inventory reported).
    pub origin: Origin,
    /// Why the lab ended: `expired`, `idle`, `ended`, `operator` or `orphan`; `null` while it is
    /// scheduled.
    pub end_reason: Option<EndReason>,
    /// The idle timeout in `duration` units (`null`: none).
    pub idle_timeout: Option<u64>,
    /// The latest activity the lab recorded (`ACTIVITY_WRITE_SECONDS` apart at most).
    pub last_activity_at: Option<String>,
    /// The lab's labels (`{}` for none).
    pub labels: &'a Labels,
    /// A stopped lab's: when its VMs are deleted (the grace stage; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_at: Option<String>,
}

impl Session {
    /// The JSON status body the API answers with.
    pub fn view(&self) -> SessionView<'_> {
        SessionView {
            last_activity_at: self.idle.last_activity_ms.map(rfc3339),
            delete_at: self.stopped_until().map(rfc3339),
            ..self.view_now()
        }
    }

    fn view_now(&self) -> SessionView<'_> {
        self.view_at(
            &self.cleanup,
            self.expires_at_ms,
            self.dry_run,
            self.end_reason,
        )
    }

    /// The status body the lab had when its cleanup's progress was `cleanup`, its expiry
    /// `expires_at_ms`, its dry-run mark `dry_run` and its end reason `end_reason` (of the rest,
    /// only the activity changes, and a webhook's body leaves it out): how a webhook's body is
    /// rebuilt from its snapshot.
    pub fn view_at<'a>(
        &'a self,
        cleanup: &'a Cleanup,
        expires_at_ms: i64,
        dry_run: bool,
        end_reason: Option<EndReason>,
    ) -> SessionView<'a> {
        let pending = self
            .vms()
            .filter(|vm| !cleanup.is_done(vm.id))
            .map(|vm| vm.id)
            .collect();
        SessionView {
            lab_request_id: &self.lab_request_id,
            user_id: &self.user_id,
            vm_name: self.vm_name.as_deref(),
            lab_type: self.lab_type(),
            worker_lab_request_ids: &self.worker_lab_request_ids,
            status: cleanup.status,
            created_at: rfc3339(self.created_at_ms),
            expires_at: rfc3339(expires_at_ms),
            attempts: cleanup.attempts,
            next_attempt_at: cleanup.next_attempt_at_ms.map(rfc3339),
            deleted: &cleanup.deleted,
            already_gone: &cleanup.already_gone,
            pending,
            last_outcome: cleanup.last_outcome.as_ref(),
            completed_at: cleanup.completed_at_ms.map(rfc3339),
            dry_run,
            adopted_at: self.adoption.adopted_at_ms.map(rfc3339),
            origin: self.origin(),
            end_reason,
            idle_timeout: self.idle_timeout_units(),
            last_activity_at: None,
            labels: &self.labels,
            delete_at: None,
        }
    }
}
