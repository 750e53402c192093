//! Claims between objects: a multi-node lab's create claims each worker VM in the VM's own object before it answers; an orphan cleanup asks the lab a claim names before it starts; a claim cancels an orphan cleanup that has not started.

use futures::stream::{self, StreamExt};

use crate::lab::error::ServiceError;
use crate::lab::ports::{RecordStore, StoreError};
use crate::lab::procedures::record::{Found, Held};
use crate::lab::procedures::{Lab, Platform, Reply};
use crate::lab::protocol::{Answer, ClaimAnswer, OwnsAnswer, Request};
use crate::lab::refusal::Refusal;
use crate::lab::session::claim::Claim;
use crate::lab::session::{Origin, Session};
use crate::lab::text::{rfc3339, safe};

/// Worker VMs' objects a create claims at once (the platform's outbound connection limit).
const CLAIMS_AT_ONCE: usize = 6;
/// Refusals a create's answer names (the rest are counted).
const REFUSALS_NAMED: usize = 3;
/// How long a create waits for another create of the same lab that is claiming its workers,
/// in steps of `WAIT_STEP_MS`.
const WAIT_STEPS: u32 = 400;
const WAIT_STEP_MS: u64 = 25;

/// Whether the lab a claim names lists the VM.
pub(crate) enum Owner {
    Lists,
    DoesNot,
    /// Its object did not answer as the protocol says (in words).
    Unreachable(String),
}

/// The worker VMs a create is claiming, in the object's memory while it claims them (another
/// object asking `Owns` then hears yes): cleared when the create is done, however it ends.
pub(crate) struct Claiming<'a, P: RecordStore>(&'a P);

impl<'a, P: RecordStore> Claiming<'a, P> {
    pub(crate) fn start(store: &'a P, vm_ids: &[String]) -> Self {
        store.set_claiming(vm_ids.to_vec());
        Claiming(store)
    }
}

impl<P: RecordStore> Drop for Claiming<'_, P> {
    fn drop(&mut self) {
        self.0.set_claiming(Vec::new());
    }
}

/// Why an orphan cleanup that started cannot be undone, in words.
pub(crate) fn orphan_started(orphan: &Session) -> String {
    format!(
        "VM {} was found running with no lab (an orphan VM the backend's inventory reported) at {}, and its deletion has started; it cannot be part of a lab now",
        orphan.lab_request_id,
        rfc3339(
            orphan
                .adoption
                .inventory_at_ms
                .unwrap_or(orphan.expires_at_ms)
        )
    )
}

impl<P: Platform> Lab<'_, P> {
    /// Asks lab `lab` whether it lists VM `vm`.
    pub(crate) async fn owner(&self, lab: &str, vm: &str) -> Owner {
        let request = Request::Owns { vm: vm.to_string() };
        match self.platform.call(lab, request).await {
            Ok(Answer::Owns(OwnsAnswer { owns: true })) => Owner::Lists,
            Ok(Answer::Owns(OwnsAnswer { owns: false })) => Owner::DoesNot,
            Ok(Answer::Refused { status, .. }) | Err(ServiceError::Answered(status)) => {
                Owner::Unreachable(format!("it answered {status}"))
            }
            Ok(_) => Owner::Unreachable("an answer to another request".into()),
            Err(e) => Owner::Unreachable(safe(&e.to_string(), 200)),
        }
    }

    /// `Request::Owns`: whether this lab lists VM `vm`, or is creating a lab that does.
    pub async fn owns(&self, vm: &str) -> Result<Reply, StoreError> {
        let owns = self.platform.claiming().iter().any(|w| w == vm)
            || match self.find().await? {
                Found::Session(session) => session.position(vm).is_some(),
                _ => false,
            };
        Ok(Reply::Owns(OwnsAnswer { owns }))
    }

    /// `Request::Claim`: lab `lab` claims this object's VM `vm` as one of its worker VMs.
    pub async fn claim(&self, lab: &str, vm: &str) -> Result<Reply, StoreError> {
        Ok(Reply::Claim(self.claim_vm(lab, vm).await?))
    }

    async fn claim_vm(&self, lab: &str, vm: &str) -> Result<ClaimAnswer, StoreError> {
        if !self.platform.claiming().is_empty() {
            return Ok(refused(format!(
                "VM {vm} is the master VM of a lab being created"
            )));
        }
        let now = self.platform.now_ms();
        let claim = Claim::new(lab, vm, now);
        Ok(match self.find().await? {
            Found::Session(orphan)
                if orphan.origin() == Origin::Inventory && orphan.cleanup.attempts == 0 =>
            {
                let claim = Claim {
                    stale_row: Some(orphan.sync.revision),
                    ..claim
                };
                self.save_claim(&claim, now).await?;
                self.warn(format!(
                    "The orphan cleanup of VM {vm} was cancelled before it started: lab {lab} lists it as a worker VM"
                ));
                ClaimAnswer::Claimed {
                    cancelled_orphan: true,
                }
            }
            Found::Session(orphan) if orphan.origin() == Origin::Inventory => {
                refused(orphan_started(&orphan))
            }
            Found::Session(session) => refused(format!(
                "VM {vm} is the master VM of lab {}",
                session.lab_request_id
            )),
            Found::Unreadable(_) => refused(format!(
                "VM {vm} is the master VM of a lab the previous worker scheduled, whose record cannot be read"
            )),
            Found::Claimed(_, held) if held.lab == lab => ClaimAnswer::Claimed {
                cancelled_orphan: false,
            },
            Found::Claimed(text, held) => match self.owner(&held.lab, vm).await {
                Owner::Lists => refused(format!("VM {vm} is a worker VM of lab {}", held.lab)),
                Owner::Unreachable(e) => ClaimAnswer::Unavailable {
                    reason: format!(
                        "lab {}, which claimed VM {vm} before, did not answer whether it still lists it ({e})",
                        held.lab
                    ),
                },
                // A stale claim: replaced, unless another claim took its place meanwhile.
                Owner::DoesNot if self.still(&Held::Text(text)).await? => {
                    let claim = Claim {
                        stale_row: held.stale_row,
                        ..claim
                    };
                    self.save_claim(&claim, now).await?;
                    ClaimAnswer::Claimed {
                        cancelled_orphan: false,
                    }
                }
                Owner::DoesNot => ClaimAnswer::Unavailable {
                    reason: format!("VM {vm} was claimed by another lab meanwhile"),
                },
            },
            Found::Nothing => {
                self.save_claim(&claim, now).await?;
                ClaimAnswer::Claimed {
                    cancelled_orphan: false,
                }
            }
        })
    }

    /// Saves `claim`, with an alarm now while it owes the deletion of an index row, else at
    /// the time to ask whether its lab still lists the VM (`release_check_at`).
    async fn save_claim(&self, claim: &Claim, now: i64) -> Result<(), StoreError> {
        let alarm = claim
            .stale_row
            .filter(|_| self.config.fleet_index)
            .map(|_| now)
            .unwrap_or_else(|| self.release_check_at(claim.at_ms.max(now)));
        self.platform.save_claim(&claim.encode(), Some(alarm)).await
    }

    /// When a claim made (or last found still needed) at `since_ms` next asks its lab whether
    /// it still lists the VM: once the lab could have lived its longest (`MAX_DURATION_MINUTES`,
    /// extensions included, and the grace stage's time kept stopped) and been kept its
    /// retention; a lab still cleaning up then is asked again a retention later.
    fn release_check_at(&self, since_ms: i64) -> i64 {
        let config = self.config;
        let kept = config
            .stop
            .as_ref()
            .map_or(0, |stage| config.duration_ms(stage.keep_stopped_minutes));
        since_ms
            .saturating_add(config.duration_ms(config.max_duration_minutes))
            .saturating_add(kept)
            .saturating_add(config.retention_ms())
            .saturating_add(config.retry_ms())
    }

    /// Claims every worker VM of `session` for it, a few at once. `Err`: the refusal the create
    /// answers (nothing is scheduled; claims taken are stale, and found so when next asked).
    pub(crate) async fn claim_workers(&self, session: &Session) -> Result<(), Refusal> {
        let lab = session.lab_request_id.as_str();
        let (refused, unavailable) = self.claim_all(session).await;
        if !refused.is_empty() {
            return Err(Refusal::Conflict(format!(
                "lab {lab} is not scheduled: {}",
                named(&refused)
            )));
        }
        if !unavailable.is_empty() {
            return Err(Refusal::Unavailable(format!(
                "lab {lab} is not scheduled: {}; nothing was changed, try again",
                named(&unavailable)
            )));
        }
        Ok(())
    }

    /// Claims every worker VM of `session`, a few at once: the refusals and the failures to
    /// get an answer, in words.
    pub(crate) async fn claim_all(&self, session: &Session) -> (Vec<String>, Vec<String>) {
        let lab = session.lab_request_id.as_str();
        let answers: Vec<(&String, ClaimAnswer)> =
            stream::iter(session.worker_lab_request_ids.iter())
                .map(|vm| async move { (vm, self.ask_claim(lab, vm).await) })
                .buffered(CLAIMS_AT_ONCE)
                .collect()
                .await;
        let mut refused = Vec::new();
        let mut unavailable = Vec::new();
        for (vm, answer) in answers {
            match answer {
                ClaimAnswer::Claimed {
                    cancelled_orphan: true,
                } => self.warn(format!(
                    "Lab {lab}: worker VM {vm} was pending as an orphan; its cleanup is cancelled and the lab is created as asked"
                )),
                ClaimAnswer::Claimed { .. } => {}
                ClaimAnswer::Refused { reason } => refused.push(reason),
                ClaimAnswer::Unavailable { reason } => unavailable.push(reason),
            }
        }
        (refused, unavailable)
    }

    /// Claims `vm` for `lab` through the VM's object.
    async fn ask_claim(&self, lab: &str, vm: &str) -> ClaimAnswer {
        let request = Request::Claim {
            lab: lab.to_string(),
            vm: vm.to_string(),
        };
        match self.platform.call(vm, request).await {
            Ok(Answer::Claim(answer)) => answer,
            Ok(Answer::Refused { status, .. }) | Err(ServiceError::Answered(status)) => {
                ClaimAnswer::Unavailable {
                    reason: format!("the object of worker VM {vm} answered {status}"),
                }
            }
            Ok(_) => ClaimAnswer::Unavailable {
                reason: format!("the object of worker VM {vm} answered another request"),
            },
            Err(ServiceError::Failed(e)) if e.starts_with("an unreadable answer") => {
                ClaimAnswer::Unavailable {
                    reason: format!("the object of worker VM {vm} answered unreadably ({e})"),
                }
            }
            Err(e) => ClaimAnswer::Unavailable {
                reason: format!(
                    "the object of worker VM {vm} did not answer ({})",
                    safe(&e.to_string(), 200)
                ),
            },
        }
    }

    /// Waits while another create in this object claims its workers (it answers first; this
    /// one then finds its record).
    pub(crate) async fn after_other_creates(&self) {
        for _ in 0..WAIT_STEPS {
            if self.platform.claiming().is_empty() {
                return;
            }
            self.platform.sleep(WAIT_STEP_MS).await;
        }
    }

    /// The alarm of an object that holds a claim: the index row of the orphan cleanup it
    /// cancelled is deleted (again later if the index fails); otherwise the claim is released
    /// once its lab no longer lists the VM (`release`).
    pub(crate) async fn claim_alarm(&self, text: String, claim: Claim) -> Result<(), StoreError> {
        let Some(revision) = claim.stale_row else {
            return self.release(text, claim).await;
        };
        if !self.config.fleet_index {
            return self.forget_row(text, claim).await;
        }
        // The orphan cleanup's lab: its one VM, the claimed one.
        match self
            .platform
            .delete(&claim.vm, &[claim.vm.as_str()], revision)
            .await
        {
            Ok(()) => self.forget_row(text, claim).await,
            Err(e) => {
                let again = self
                    .platform
                    .now_ms()
                    .saturating_add(self.config.retry_ms());
                self.warn(format!(
                    "The index row of the cancelled orphan cleanup of VM {} could not be deleted ({}); trying again at {}",
                    claim.vm,
                    safe(&e.to_string(), 200),
                    rfc3339(again)
                ));
                self.platform.set_alarm(again).await
            }
        }
    }

    async fn forget_row(&self, text: String, claim: Claim) -> Result<(), StoreError> {
        if !self.still(&Held::Text(text)).await? {
            return Ok(());
        }
        let claim = Claim {
            stale_row: None,
            ..claim
        };
        let check = self.release_check_at(claim.at_ms);
        self.platform.save_claim(&claim.encode(), Some(check)).await
    }

    /// A claim's release (issue 36, 8: claims lived forever): at its check time, the lab it
    /// names is asked whether it still lists the VM. It does: asked again a retention later.
    /// It does not (purged, or its create failed): the claim is deleted, unless another claim
    /// took its place meanwhile (a create claiming the VM again writes a claim of its own,
    /// which this one never deletes). No answer: asked again a retry pause later.
    async fn release(&self, text: String, claim: Claim) -> Result<(), StoreError> {
        let now = self.platform.now_ms();
        let due = self.release_check_at(claim.at_ms);
        if now < due {
            return self.platform.set_alarm(due).await;
        }
        match self.owner(&claim.lab, &claim.vm).await {
            Owner::Lists => {
                let again = self.release_check_at(now);
                self.platform.set_alarm(again).await
            }
            Owner::Unreachable(e) => {
                let again = now.saturating_add(self.config.retry_ms());
                self.warn(format!(
                    "The claim of VM {} by lab {} is due for release, but the lab did not answer whether it still lists it ({e}); asking again at {}",
                    claim.vm,
                    claim.lab,
                    rfc3339(again)
                ));
                self.platform.set_alarm(again).await
            }
            Owner::DoesNot => {
                if !self.still(&Held::Text(text)).await? {
                    return Ok(());
                }
                self.info(format!(
                    "The claim of VM {} by lab {} is released: the lab no longer lists it",
                    claim.vm, claim.lab
                ));
                self.platform.delete_all().await
            }
        }
    }
}

fn refused(reason: String) -> ClaimAnswer {
    ClaimAnswer::Refused { reason }
}

/// The first few reasons, and how many more.
fn named(reasons: &[String]) -> String {
    let mut text = reasons
        .iter()
        .take(REFUSALS_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if reasons.len() > REFUSALS_NAMED {
        text.push_str(&format!("; and {} more", reasons.len() - REFUSALS_NAMED));
    }
    text
}
