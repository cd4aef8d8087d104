//! The run record: one per alert on a device handled by a playbook, in `state/runs/{run}/run.json`,
//! created once (If-None-Match) and changed only by compare-and-swap as the run moves on.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::chain::{Chain, Chained};
use super::command::CommandOutcome;
use super::keys::run_key;
use super::record::{RECORD_VERSION, json, parse, update_record};
use crate::alerts::Alert;
use crate::alerts::playbook::RefusedParameter;
use crate::defender::{ActionId, ActionStatus, Command, MachineId};
use crate::ids::RunId;
use crate::library::LibraryUse;
use crate::ports::{ObjectStore, Put, PutResult, StoreError};

/// Where a run stands; only moves forward, and `Completed` and `Failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted by intake; not yet submitted.
    Received,
    /// A submission is being attempted (it may have reached Defender).
    Submitting,
    /// Defender accepted it; polling.
    Submitted,
    /// The action ended; results are being copied.
    Collecting,
    /// Every command is accounted for and the manifest is written.
    Completed,
    /// Ended before its results could be collected: refused by Defender, never submitted before
    /// the deadline, or the pipeline lost sight of its action (the run's reason says which).
    Failed,
}

impl RunState {
    /// Whether the run has ended (`Completed` or `Failed`) and will not change state again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// How a run ended, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// The action succeeded and every command's result is in the bucket (or it had none).
    Succeeded,
    /// The action succeeded but the run is not whole: some results were not collected (each
    /// command's reason says why), or a library file it used changed while it ran (the run's
    /// reason names it); what was collected is evidence.
    Partial,
    /// Defender ran it and it failed, or refused to run it.
    Failed,
    /// The deadline passed (the pipeline cancelled it, or Defender timed it out).
    TimedOut,
    /// Someone else cancelled the action.
    Cancelled,
}

/// The timeline keeps at most this many status changes (a run sees four or five).
const MAX_STATUSES: usize = 32;

/// The run record: everything known about one run, in `state/runs/{run}/run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Record format version ([`super::RECORD_VERSION`]).
    pub v: u32,
    /// The run's id, derived from the alert, device and playbook.
    pub run_id: RunId,
    /// The alert as intake read it (values a playbook refused removed).
    pub alert: Alert,
    /// The name of the playbook that runs.
    pub playbook: String,
    /// SHA-256 of the playbook as it rendered the commands (its canonical JSON): which version of
    /// the playbook asked for what, whatever the file says later.
    #[serde(default)]
    pub playbook_sha256: Option<String>,
    /// SHA-256 of the playbook file intake rendered the commands with (the file as pinned by the
    /// deployment): submit acts only on a run rendered with the file it loaded itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook_file_sha256: Option<String>,
    /// Values of a Defender alert a playbook refused; the run went on without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_parameters: Vec<RefusedParameter>,
    /// The device the live response runs on.
    pub machine_id: MachineId,
    /// The commands as rendered for Defender, in order; command records are indexed by position here.
    pub commands: Vec<Command>,
    /// The requestor comment sent to Defender; carries the run id.
    pub comment: String,
    /// Where the run stands.
    pub state: RunState,
    /// When intake accepted the alert (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the run must be over: `created_at` plus the playbook's deadline, capped by
    /// `MAX_RUN_DEADLINE_SECS`. After it the pipeline cancels the action.
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    /// How many times submit has tried to post the live response.
    pub submit_attempts: u32,
    /// Defender's action id; `None` until Defender accepted the submission.
    pub action_id: Option<ActionId>,
    /// The action's last status seen; `None` until submitted.
    pub action_status: Option<ActionStatus>,
    /// When Defender accepted the submission; `None` before that.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub submitted_at: Option<OffsetDateTime>,
    /// When the run reached `Completed` or `Failed`; `None` until then.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The device's DNS name, as the action reported it.
    pub computer_dns_name: Option<String>,
    /// Who Defender says requested the action.
    pub requestor: Option<String>,
    /// The action's creation time, as Defender's timestamp text.
    pub action_created: Option<String>,
    /// The action's last update time, as Defender's timestamp text.
    pub action_last_update: Option<String>,
    /// Whether the pipeline cancelled the action (the deadline passed).
    pub cancelled_by_pipeline: bool,
    /// How the run ended; `None` while it is going on.
    pub outcome: Option<RunOutcome>,
    /// Why the run failed or ended early, in words.
    pub reason: Option<String>,
    /// The submit or poll message that may act for the run.
    #[serde(default)]
    pub chain: Chain,
    /// For a run that ended without collection: what its commands without a record are recorded
    /// as, so that a redelivery can finish an ending that was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<CommandOutcome>,
    /// Each action status poll saw, in order, with when it first saw it (the run's timeline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<StatusSeen>,
    /// The library files the commands use, as the tenant's library held them when the run was
    /// submitted (SHA-256 each); empty when the run names none or library sync is off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub library: Vec<LibraryUse>,
    /// What the library held for those files once the action ended (listed again by poll);
    /// `None` when the run used none, or its action never ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library_after: Option<crate::library::LibraryRecheck>,
    /// The completion event: who claimed it and whether it went out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<Announcement>,
}

/// An action status and when poll first saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSeen {
    /// The status.
    pub status: ActionStatus,
    /// When it was first seen (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The run's completion event. A message claims it before publishing, so that two messages that
/// finish the run at once publish once; a claim whose holder died lapses (see
/// `crate::stages::finish`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// When it was claimed.
    #[serde(with = "time::serde::rfc3339")]
    pub claimed_at: OffsetDateTime,
    /// When it was published; `None` while claimed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub published_at: Option<OffsetDateTime>,
}

impl RunRecord {
    /// A run as intake records it: the alert, the commands its playbook rendered (and the values
    /// playbooks refused), and a deadline `deadline` from `now`. Its id derives from its tenant
    /// (none when the deployment serves one), the alert's format, id, device and the playbook, so
    /// that duplicates of an alert make one run; its Defender comment starts with the run's tag.
    pub fn received(
        alert: Alert,
        plan: crate::alerts::playbook::Plan<'_>,
        tenant: Option<&crate::ids::TenantKey>,
        now: OffsetDateTime,
        deadline: std::time::Duration,
    ) -> Self {
        let format = serde_json::to_value(alert.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let playbook = plan.playbook;
        let run_id = RunId::derive_for(
            tenant,
            &format,
            alert.alert_id.as_str(),
            alert.machine_id.as_str(),
            &playbook.name,
        );
        Self {
            v: RECORD_VERSION,
            comment: format!(
                "{} alert:{} playbook:{}",
                run_id.comment_tag(),
                alert.alert_id,
                playbook.name
            ),
            run_id,
            playbook: playbook.name.clone(),
            playbook_sha256: Some(playbook.sha256()),
            playbook_file_sha256: Some(plan.file_sha256.to_string()),
            refused_parameters: plan.refused,
            machine_id: alert.machine_id.clone(),
            alert,
            commands: plan.commands,
            state: RunState::Received,
            created_at: now,
            deadline: now + deadline,
            submit_attempts: 0,
            action_id: None,
            action_status: None,
            submitted_at: None,
            finished_at: None,
            computer_dns_name: None,
            requestor: None,
            action_created: None,
            action_last_update: None,
            cancelled_by_pipeline: false,
            outcome: None,
            reason: None,
            chain: Chain::default(),
            unfinished: None,
            library: Vec::new(),
            library_after: None,
            statuses: Vec::new(),
            announcement: None,
        }
    }

    /// Whether the run is sealed: its completion event went out, which happens only after its
    /// manifest and signature are stored and it is final.
    pub fn is_sealed(&self) -> bool {
        self.announcement
            .as_ref()
            .is_some_and(|a| a.published_at.is_some())
    }

    /// Takes in what Defender says of the run's action, seen at `now`: its status (kept in the
    /// timeline when it changed), times, device name and requestor (a value Defender leaves out
    /// keeps the one recorded).
    pub fn absorb(&mut self, action: &crate::defender::MachineAction, now: OffsetDateTime) {
        if self.statuses.last().map(|s| &s.status) != Some(&action.status)
            && self.statuses.len() < MAX_STATUSES
        {
            self.statuses.push(StatusSeen {
                status: action.status.clone(),
                at: now,
            });
        }
        self.action_status = Some(action.status.clone());
        self.computer_dns_name = action
            .computer_dns_name
            .clone()
            .or(self.computer_dns_name.take());
        self.requestor = action.requestor.clone().or(self.requestor.take());
        if action.creation_date_time_utc.is_some() {
            self.action_created = action.creation_date_time_utc.clone();
        }
        if action.last_update_date_time_utc.is_some() {
            self.action_last_update = action.last_update_date_time_utc.clone();
        }
    }
}

impl Chained for RunRecord {
    fn chain(&self) -> &Chain {
        &self.chain
    }
    fn chain_mut(&mut self) -> &mut Chain {
        &mut self.chain
    }
}

/// Creates the run record unless one exists; returns the existing one otherwise.
pub async fn create_run<S: ObjectStore>(
    store: &S,
    run: &RunRecord,
) -> Result<Option<RunRecord>, StoreError> {
    let key = run_key(&run.run_id);
    match store.put(&key, json(run)?, Put::IfAbsent).await? {
        PutResult::Written { .. } => Ok(None),
        PutResult::Conflict => load_run(store, &run.run_id)
            .await
            .map(|r| r.map(|(r, _)| r)),
    }
}

/// The run record and its ETag (for a compare-and-swap), or `None` if there is none.
pub async fn load_run<S: ObjectStore>(
    store: &S,
    run: &RunId,
) -> Result<Option<(RunRecord, String)>, StoreError> {
    let key = run_key(run);
    match store.get(&key).await? {
        Some(s) => Ok(Some((parse(&key, &s.body)?, s.etag))),
        None => Ok(None),
    }
}

/// Applies `change` to a run record with compare-and-swap (see [`update_record`]).
pub async fn update_run<S, F>(store: &S, run: &RunId, change: F) -> Result<RunRecord, StoreError>
where
    S: ObjectStore,
    F: FnMut(&mut RunRecord) -> bool,
{
    update_record(store, &run_key(run), change)
        .await?
        .ok_or_else(|| StoreError(format!("run {run} has no record")))
}
