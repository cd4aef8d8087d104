//! The run record: one per alert on a device handled by a playbook, in `state/runs/{run}/run.json`,
//! created once (If-None-Match) and changed only by compare-and-swap as the run moves on.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::chain::{Chain, Chained};
use super::command::CommandOutcome;
use super::keys::run_key;
use super::{json, parse, update_record};
use crate::alerts::Alert;
use crate::alerts::playbook::RefusedParameter;
use crate::defender::{ActionId, ActionStatus, Command, MachineId};
use crate::ids::RunId;
use crate::ports::{ObjectStore, Put, PutResult, StoreError};

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
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// How a run ended, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// The action succeeded (see each command for its result).
    Succeeded,
    /// Defender ran it and it failed, or refused to run it.
    Failed,
    /// The deadline passed (the pipeline cancelled it, or Defender timed it out).
    TimedOut,
    /// Someone else cancelled the action.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub v: u32,
    pub run_id: RunId,
    pub alert: Alert,
    pub playbook: String,
    /// SHA-256 of the playbook as it rendered the commands (its canonical JSON): which version of
    /// the playbook asked for what, whatever the file says later.
    #[serde(default)]
    pub playbook_sha256: Option<String>,
    /// Values of a Defender alert a playbook refused; the run went on without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_parameters: Vec<RefusedParameter>,
    pub machine_id: MachineId,
    pub commands: Vec<Command>,
    /// The requestor comment sent to Defender; carries the run id.
    pub comment: String,
    pub state: RunState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    pub submit_attempts: u32,
    pub action_id: Option<ActionId>,
    pub action_status: Option<ActionStatus>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub submitted_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub computer_dns_name: Option<String>,
    pub requestor: Option<String>,
    pub action_created: Option<String>,
    pub action_last_update: Option<String>,
    pub cancelled_by_pipeline: bool,
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
