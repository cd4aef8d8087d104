//! The manifest: what an analyst reads, in `evidence/{run}/manifest.json`, written exactly once
//! when every command of a finished run has its final record (`crate::stages::finish` writes it,
//! signs it and announces it). Its commands are the analyst's view of each command record: what
//! was asked, what became of it, where its evidence is and its hashes; not the pipeline's
//! bookkeeping (which message held the record).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::command::{CommandOutcome, CommandRecord};
use super::record::RECORD_VERSION;
use super::run::{RunOutcome, RunRecord, RunState};
use crate::alerts::Alert;
use crate::alerts::playbook::RefusedParameter;
use crate::defender::{ActionId, ActionStatus, Command, CommandStatus, CommandType, MachineId};
use crate::ids::{RunId, TenantKey};
use crate::library::{LibraryRecheck, LibraryUse};

/// The manifest of a finished run, in `evidence/{run}/manifest.json`: the run and every
/// command's final record, written once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Record format version ([`super::RECORD_VERSION`]).
    pub v: u32,
    /// The run's id.
    pub run_id: RunId,
    /// The tenant whose Defender ran it (our key for it in the tenant registry, the run id's
    /// prefix); absent in a deployment that serves one tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantKey>,
    /// The name of the playbook that ran.
    pub playbook: String,
    /// SHA-256 of the playbook that rendered the commands (see [`super::RunRecord::playbook_sha256`]).
    pub playbook_sha256: Option<String>,
    /// SHA-256 of the playbook file the run was rendered with (the deployment pins it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook_file_sha256: Option<String>,
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
    /// Every command the run meant to execute, in order, each with what became of it.
    pub commands: Vec<ManifestCommand>,
    /// The live response library files the commands used, with the SHA-256 the tenant's library
    /// held for each when the run was submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub library: Vec<LibraryUse>,
    /// What the library held for those files once the action ended: a file whose hash changed
    /// is listed there (and the run is not a success), or why it could not be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library_after: Option<LibraryRecheck>,
}

impl Manifest {
    /// The manifest of a run that ended, from its record and every command's final record, sealed
    /// at `sealed_at` (the state is `Failed` for a failed run, `Completed` otherwise; the outcome
    /// is the run's as [`settle_outcome`] leaves it). A pure function of its inputs: the same
    /// records give the same bytes, which is how a manifest found at the key is checked before it
    /// is signed.
    pub fn of(run: &RunRecord, commands: Vec<CommandRecord>, sealed_at: OffsetDateTime) -> Self {
        let (outcome, reason) = settle_outcome(run, &commands);
        Self {
            v: RECORD_VERSION,
            tenant: run.run_id.tenant(),
            run_id: run.run_id.clone(),
            playbook: run.playbook.clone(),
            playbook_sha256: run.playbook_sha256.clone(),
            playbook_file_sha256: run.playbook_file_sha256.clone(),
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
            run_state: final_state(run.state),
            outcome,
            reason,
            created_at: run.created_at,
            completed_at: sealed_at,
            commands: commands.into_iter().map(ManifestCommand::from).collect(),
            library: run.library.clone(),
            library_after: run.library_after.clone(),
        }
    }
}

impl Manifest {
    /// The manifest as the pipeline wrote it before seal times were pinned and outcomes settled
    /// (a run recorded before `playbook_file_sha256` existed): written at `completed_at`, with the
    /// run's outcome as recorded. Only for recognising a manifest an older version of the
    /// pipeline wrote for exactly these records, mid-upgrade.
    pub fn before_pinning(
        run: &RunRecord,
        commands: Vec<CommandRecord>,
        completed_at: OffsetDateTime,
    ) -> Self {
        Self {
            outcome: run.outcome,
            reason: run.reason.clone(),
            ..Self::of(run, commands, completed_at)
        }
    }
}

/// How a run ended, said by what was collected: an action that succeeded is a success only when
/// every command's result is in the bucket (or it had none) and no library file it used changed
/// while it ran. Otherwise the run is `Partial` when some evidence was collected (or only the
/// library changed) and `Failed` when none was, with a reason that counts what was
/// lost and names each command's reason, so that a rule routing "runs that need a person" (any
/// outcome but `succeeded`) reaches it. Other outcomes stand as recorded. Idempotent: settling a
/// settled outcome changes nothing.
pub fn settle_outcome(
    run: &RunRecord,
    commands: &[CommandRecord],
) -> (Option<RunOutcome>, Option<String>) {
    if run.outcome != Some(RunOutcome::Succeeded) {
        return (run.outcome, run.reason.clone());
    }
    let delivered = |c: &&CommandRecord| {
        matches!(
            c.outcome,
            CommandOutcome::Collected | CommandOutcome::CompletedNoResult
        )
    };
    let lost: Vec<&CommandRecord> = commands.iter().filter(|c| !delivered(c)).collect();
    let library = run.library_after.as_ref().and_then(LibraryRecheck::finding);
    if lost.is_empty() {
        return match library {
            None => (run.outcome, run.reason.clone()),
            Some(finding) => (Some(RunOutcome::Partial), Some(finding)),
        };
    }
    let collected = commands
        .iter()
        .filter(|c| c.outcome == CommandOutcome::Collected)
        .count();
    let outcome = if collected == 0 {
        RunOutcome::Failed
    } else {
        RunOutcome::Partial
    };
    let mut reason = if collected == 0 {
        format!(
            "no evidence was collected: {} of {} commands did not deliver their result",
            lost.len(),
            run.commands.len()
        )
    } else {
        format!(
            "{} of {} commands did not deliver their result",
            lost.len(),
            run.commands.len()
        )
    };
    for c in lost.iter().take(5) {
        let why = c.reason.as_deref().unwrap_or("no reason recorded");
        reason.push_str(&format!("; command {} ({:?}): {why}", c.index, c.outcome));
    }
    if let Some(finding) = library {
        reason.push_str(&format!("; {finding}"));
    }
    (Some(outcome), Some(crate::text::cut(&reason, 2_000)))
}

/// The state a run ends in once its manifest is written: `Failed` stays, anything else completed.
pub fn final_state(state: RunState) -> RunState {
    if state == RunState::Failed {
        RunState::Failed
    } else {
        RunState::Completed
    }
}

/// One command of a manifest: what was asked, what became of it, and its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestCommand {
    /// The command's position in the run, from 0.
    pub index: u32,
    /// The command's type.
    pub kind: CommandType,
    /// The command as sent to Defender.
    pub command: Command,
    /// What became of it.
    pub outcome: CommandOutcome,
    /// Defender's status for it, as Defender wrote it.
    pub command_status: Option<CommandStatus>,
    /// Defender's error messages for it.
    pub errors: Vec<String>,
    /// When it started, as Defender's timestamp text.
    pub start_time: Option<String>,
    /// When it ended, as Defender's timestamp text.
    pub end_time: Option<String>,
    /// Where its result is in the bucket; `None` unless collected.
    pub s3_key: Option<String>,
    /// The version of that object the hashes describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_version_id: Option<String>,
    /// Bytes stored (the package as Defender served it).
    pub size: Option<u64>,
    /// SHA-256 of the stored bytes.
    pub sha256: Option<String>,
    /// For gzip GetFile packages: SHA-256 of the file itself.
    pub sha256_decompressed: Option<String>,
    /// Bytes of the decompressed file.
    pub size_decompressed: Option<u64>,
    /// For RunScript transcripts: the script's exit code.
    pub exit_code: Option<i64>,
    /// The transcript's standard output, cut at 2,000 bytes.
    pub output_excerpt: Option<String>,
    /// The transcript's standard error, cut at 2,000 bytes.
    pub errors_excerpt: Option<String>,
    /// When its record was written (UTC).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub recorded_at: Option<OffsetDateTime>,
    /// Why the result was not collected.
    pub reason: Option<String>,
}

impl From<CommandRecord> for ManifestCommand {
    fn from(c: CommandRecord) -> Self {
        Self {
            index: c.index,
            kind: c.kind,
            command: c.command,
            outcome: c.outcome,
            command_status: c.command_status,
            errors: c.errors,
            start_time: c.start_time,
            end_time: c.end_time,
            s3_key: c.s3_key,
            s3_version_id: c.s3_version_id,
            size: c.size,
            sha256: c.sha256,
            sha256_decompressed: c.sha256_decompressed,
            size_decompressed: c.size_decompressed,
            exit_code: c.exit_code,
            output_excerpt: c.output_excerpt,
            errors_excerpt: c.errors_excerpt,
            recorded_at: c.recorded_at,
            reason: c.reason,
        }
    }
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
