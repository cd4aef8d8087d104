//! Run records, command records and the manifest; where each lives is [`keys`].
//! Conditional writes make creation de-duplicating and updates compare-and-swap.

pub mod chain;
pub mod keys;
pub mod retention;

pub use chain::{Chain, Chained, Standing};
pub use keys::{command_key, evidence_key, manifest_key, run_key};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::alerts::Alert;
use crate::alerts::playbook::RefusedParameter;
use crate::defender::{ActionId, ActionStatus, Command, CommandType, MachineId};
use crate::ids::RunId;
use crate::ports::{ObjectStore, Put, PutResult, StoreError};

pub const RECORD_VERSION: u32 = 1;

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

/// What became of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// It completed; its result is being copied.
    Collecting,
    /// Its result package is in S3, hashed.
    Collected,
    /// It completed and has no result (PutFile).
    CompletedNoResult,
    /// Defender reports it failed.
    Failed,
    /// It never ran (an earlier command failed, the session was cancelled or timed out).
    NotRun,
    /// It completed but its result could not be copied (the reason says why).
    CollectFailed,
    /// The pipeline could not learn what became of it (the action could not be read or cancelled).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub v: u32,
    pub index: u32,
    pub kind: CommandType,
    pub command: Command,
    pub outcome: CommandOutcome,
    pub command_status: Option<String>,
    pub errors: Vec<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub s3_key: Option<String>,
    /// Bytes stored (the package as Defender served it).
    pub size: Option<u64>,
    /// SHA-256 of the stored bytes.
    pub sha256: Option<String>,
    /// For gzip GetFile packages: the file itself.
    pub sha256_decompressed: Option<String>,
    pub size_decompressed: Option<u64>,
    /// For RunScript transcripts.
    pub exit_code: Option<i64>,
    pub output_excerpt: Option<String>,
    pub errors_excerpt: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub recorded_at: Option<OffsetDateTime>,
    pub reason: Option<String>,
    /// The collect message that may copy this command's result.
    #[serde(default)]
    pub chain: Chain,
}

impl Chained for CommandRecord {
    fn chain(&self) -> &Chain {
        &self.chain
    }
    fn chain_mut(&mut self) -> &mut Chain {
        &mut self.chain
    }
}

impl CommandRecord {
    /// The record poll leaves for a command as Defender reported it when its action ended.
    pub fn observed(
        c: &crate::defender::CommandResult,
        outcome: CommandOutcome,
        reason: Option<String>,
        now: OffsetDateTime,
    ) -> Self {
        let mut rec = Self::unfinished(c.index, c.command.clone(), outcome, "", now);
        rec.command_status = Some(format!("{:?}", c.command_status));
        rec.errors = c.errors.clone();
        rec.start_time = c.start_time.clone();
        rec.end_time = c.end_time.clone();
        rec.reason = reason;
        rec
    }

    /// The record of a command whose result will not be collected: it never ran, or its fate is
    /// unknown, or its copy failed; `reason` says why.
    pub fn unfinished(
        index: u32,
        command: Command,
        outcome: CommandOutcome,
        reason: impl Into<String>,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            v: RECORD_VERSION,
            index,
            kind: command.kind,
            command,
            outcome,
            command_status: None,
            errors: vec![],
            start_time: None,
            end_time: None,
            s3_key: None,
            size: None,
            sha256: None,
            sha256_decompressed: None,
            size_decompressed: None,
            exit_code: None,
            output_excerpt: None,
            errors_excerpt: None,
            recorded_at: Some(now),
            reason: Some(reason.into()),
            chain: Chain::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub v: u32,
    pub run_id: RunId,
    pub playbook: String,
    /// SHA-256 of the playbook that rendered the commands (see [`RunRecord::playbook_sha256`]).
    pub playbook_sha256: Option<String>,
    /// Values of the alert a playbook refused; the run went on without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_parameters: Vec<RefusedParameter>,
    pub alert: Alert,
    pub device: ManifestDevice,
    pub action: Option<ManifestAction>,
    pub run_state: RunState,
    pub outcome: Option<RunOutcome>,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
    pub commands: Vec<CommandRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDevice {
    pub machine_id: MachineId,
    pub computer_dns_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestAction {
    pub id: ActionId,
    pub status: Option<ActionStatus>,
    pub requestor: Option<String>,
    pub requestor_comment: String,
    pub created: Option<String>,
    pub last_update: Option<String>,
    pub cancelled_by_pipeline: bool,
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(v).map_err(|e| StoreError(format!("cannot encode record: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, body: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body)
        .map_err(|e| StoreError(format!("{key} is not a valid record: {e}")))
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

/// Applies `change` to the record at `key` with compare-and-swap, retrying on a concurrent write.
/// `change` returns false to leave the record as it is. Returns the record as stored afterwards,
/// or None when there is no record.
pub async fn update_record<S, T, F>(
    store: &S,
    key: &str,
    mut change: F,
) -> Result<Option<T>, StoreError>
where
    S: ObjectStore,
    T: Serialize + serde::de::DeserializeOwned,
    F: FnMut(&mut T) -> bool,
{
    for _ in 0..20 {
        let Some(stored) = store.get(key).await? else {
            return Ok(None);
        };
        let mut rec: T = parse(key, &stored.body)?;
        if !change(&mut rec) {
            return Ok(Some(rec));
        }
        match store
            .put(key, json(&rec)?, Put::IfMatch(stored.etag))
            .await?
        {
            PutResult::Written { .. } => return Ok(Some(rec)),
            PutResult::Conflict => continue,
        }
    }
    Err(StoreError(format!("{key}: too many concurrent updates")))
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

pub async fn put_command<S: ObjectStore>(
    store: &S,
    run: &RunId,
    rec: &CommandRecord,
) -> Result<(), StoreError> {
    store
        .put(&command_key(run, rec.index), json(rec)?, Put::Always)
        .await
        .map(|_| ())
}

/// Writes a command record unless one exists (poll's first record of a command; a redelivered poll
/// must not overwrite what collect has since written). True if this call wrote it.
pub async fn create_command<S: ObjectStore>(
    store: &S,
    run: &RunId,
    rec: &CommandRecord,
) -> Result<bool, StoreError> {
    Ok(matches!(
        store
            .put(&command_key(run, rec.index), json(rec)?, Put::IfAbsent)
            .await?,
        PutResult::Written { .. }
    ))
}

pub async fn load_command<S: ObjectStore>(
    store: &S,
    run: &RunId,
    index: u32,
) -> Result<Option<CommandRecord>, StoreError> {
    let key = command_key(run, index);
    match store.get(&key).await? {
        Some(s) => Ok(Some(parse(&key, &s.body)?)),
        None => Ok(None),
    }
}

/// Writes the manifest when every command of a finished run has its final record; exactly once
/// (a conditional write), whichever stage gets there last. Returns true if this call wrote it.
/// The manifest lists every command the run meant to execute, each with its outcome.
pub async fn finish_run_if_complete<S: ObjectStore>(
    store: &S,
    run_id: &RunId,
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
    let now = OffsetDateTime::now_utc();
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
