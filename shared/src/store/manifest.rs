//! The manifest: what an analyst reads, in `evidence/{run}/manifest.json`, written exactly once
//! when every command of a finished run has its final record.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::command::{CommandOutcome, CommandRecord, load_command};
use super::keys::manifest_key;
use super::record::{RECORD_VERSION, json};
use super::run::{RunOutcome, RunState, load_run, update_run};
use crate::alerts::Alert;
use crate::alerts::playbook::RefusedParameter;
use crate::clock::Clock;
use crate::defender::{ActionId, ActionStatus, MachineId};
use crate::ids::RunId;
use crate::ports::{ObjectStore, Put, PutResult, StoreError};

/// The manifest of a finished run, in `evidence/{run}/manifest.json`: the run and every
/// command's final record, written once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Record format version ([`super::RECORD_VERSION`]).
    pub v: u32,
    /// The run's id.
    pub run_id: RunId,
    /// The name of the playbook that ran.
    pub playbook: String,
    /// SHA-256 of the playbook that rendered the commands (see [`super::RunRecord::playbook_sha256`]).
    pub playbook_sha256: Option<String>,
    /// Values of the alert a playbook refused; the run went on without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_parameters: Vec<RefusedParameter>,
    /// The alert as intake read it.
    pub alert: Alert,
    /// The device the live response ran on.
    pub device: ManifestDevice,
    /// The Defender action; `None` if the run never got one (it failed before submission).
    pub action: Option<ManifestAction>,
    /// `Completed` or `Failed`.
    pub run_state: RunState,
    /// How the run ended, in one word.
    pub outcome: Option<RunOutcome>,
    /// Why the run failed or ended early, in words; `None` when it did not.
    pub reason: Option<String>,
    /// When intake accepted the alert (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the manifest was written (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
    /// Every command the run meant to execute, in order, each with its final record.
    pub commands: Vec<CommandRecord>,
}

/// The device of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDevice {
    /// Defender's machine id.
    pub machine_id: MachineId,
    /// The DNS name, if the action reported one.
    pub computer_dns_name: Option<String>,
}

/// The Defender action of a manifest, as last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestAction {
    /// Defender's action id.
    pub id: ActionId,
    /// The action's last status seen.
    pub status: Option<ActionStatus>,
    /// Who Defender says requested it.
    pub requestor: Option<String>,
    /// The comment sent with it; carries the run id.
    pub requestor_comment: String,
    /// The action's creation time, as Defender's timestamp text.
    pub created: Option<String>,
    /// The action's last update time, as Defender's timestamp text.
    pub last_update: Option<String>,
    /// Whether the pipeline cancelled it (the deadline passed).
    pub cancelled_by_pipeline: bool,
}

/// Writes the manifest when every command of a finished run has its final record; exactly once
/// (a conditional write), whichever stage gets there last. Returns true if this call wrote it.
/// The manifest lists every command the run meant to execute, each with its outcome.
pub async fn finish_run_if_complete<S: ObjectStore>(
    store: &S,
    run_id: &RunId,
    clock: &dyn Clock,
) -> Result<bool, StoreError> {
    let Some((run, _)) = load_run(store, run_id).await? else {
        return Ok(false);
    };
    let ended = matches!(
        run.state,
        RunState::Collecting | RunState::Completed | RunState::Failed
    );
    if !ended {
        return Ok(false);
    }
    let mut commands = Vec::with_capacity(run.commands.len());
    for i in 0..run.commands.len() as u32 {
        match load_command(store, run_id, i).await? {
            Some(c) if c.outcome != CommandOutcome::Collecting => commands.push(c),
            _ => return Ok(false),
        }
    }
    let now = clock.now();
    let final_state = if run.state == RunState::Failed {
        RunState::Failed
    } else {
        RunState::Completed
    };
    let manifest = Manifest {
        v: RECORD_VERSION,
        run_id: run.run_id.clone(),
        playbook: run.playbook.clone(),
        playbook_sha256: run.playbook_sha256.clone(),
        refused_parameters: run.refused_parameters.clone(),
        alert: run.alert.clone(),
        device: ManifestDevice {
            machine_id: run.machine_id.clone(),
            computer_dns_name: run.computer_dns_name.clone(),
        },
        action: run.action_id.clone().map(|id| ManifestAction {
            id,
            status: run.action_status.clone(),
            requestor: run.requestor.clone(),
            requestor_comment: run.comment.clone(),
            created: run.action_created.clone(),
            last_update: run.action_last_update.clone(),
            cancelled_by_pipeline: run.cancelled_by_pipeline,
        }),
        run_state: final_state,
        outcome: run.outcome,
        reason: run.reason.clone(),
        created_at: run.created_at,
        completed_at: now,
        commands,
    };
    let wrote = matches!(
        store
            .put(&manifest_key(run_id), json(&manifest)?, Put::IfAbsent)
            .await?,
        PutResult::Written { .. }
    );
    if run.state != final_state || run.finished_at.is_none() {
        update_run(store, run_id, |r| {
            if r.state == final_state && r.finished_at.is_some() {
                return false;
            }
            r.state = final_state;
            r.finished_at.get_or_insert(now);
            true
        })
        .await?;
    }
    Ok(wrote)
}
