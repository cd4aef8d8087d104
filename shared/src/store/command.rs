//! Command records: one per command of a run, in `state/runs/{run}/commands/{index}.json`, the
//! final word on what became of it (collected, failed, not run...); its chain says which collect
//! message may copy it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::chain::{Chain, Chained};
use super::keys::command_key;
use super::record::{RECORD_VERSION, json, parse};
use crate::defender::{Command, CommandStatus, CommandType};
use crate::ids::RunId;
use crate::ports::{ObjectStore, Put, PutResult, StoreError};

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

/// The record of one command, in `state/runs/{run}/commands/{index}.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Record format version ([`super::RECORD_VERSION`]).
    pub v: u32,
    /// The command's position in the run, from 0.
    pub index: u32,
    /// The command's type.
    pub kind: CommandType,
    /// The command as sent to Defender.
    pub command: Command,
    /// What became of it.
    pub outcome: CommandOutcome,
    /// Defender's status for it as Defender wrote it (`Completed`, or an unknown value kept
    /// verbatim); `None` if not reported.
    pub command_status: Option<CommandStatus>,
    /// Defender's error messages for it; empty if none.
    pub errors: Vec<String>,
    /// When it started, as Defender's timestamp text.
    pub start_time: Option<String>,
    /// When it ended, as Defender's timestamp text.
    pub end_time: Option<String>,
    /// Where the result package is in the bucket; `None` unless collected.
    pub s3_key: Option<String>,
    /// The version of the evidence object the hashes describe (the bucket keeps versions, so this
    /// pins it even if the key is written again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_version_id: Option<String>,
    /// Bytes stored (the package as Defender served it).
    pub size: Option<u64>,
    /// SHA-256 of the stored bytes.
    pub sha256: Option<String>,
    /// For gzip GetFile packages: the file itself.
    pub sha256_decompressed: Option<String>,
    /// Bytes of the decompressed file; `None` unless the package is gzip.
    pub size_decompressed: Option<u64>,
    /// For RunScript transcripts.
    pub exit_code: Option<i64>,
    /// The transcript's standard output, cut at 2,000 bytes (`…` marks a cut).
    pub output_excerpt: Option<String>,
    /// The transcript's standard error, cut at 2,000 bytes (`…` marks a cut).
    pub errors_excerpt: Option<String>,
    /// When the record was written (UTC).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub recorded_at: Option<OffsetDateTime>,
    /// Why the result was not collected, in words; `None` when collected.
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
        rec.command_status = Some(c.command_status.clone());
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
            s3_version_id: None,
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

/// Writes the command record unconditionally, replacing any (the stages use [`create_command`]
/// or a compare-and-swap instead).
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

/// The command record `index` of `run`, or `None` if there is none yet.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defender::CommandResult;

    #[test]
    fn defender_s_command_status_is_kept_as_defender_wrote_it() {
        let result = |status: CommandStatus| CommandResult {
            index: 0,
            start_time: None,
            end_time: None,
            command_status: status,
            errors: vec![],
            command: Command::get_file("C:\\x"),
        };
        let now = OffsetDateTime::UNIX_EPOCH;
        for (status, written) in [
            (CommandStatus::Completed, "\"Completed\""),
            (CommandStatus::Other("Queued".into()), "\"Queued\""),
        ] {
            let rec =
                CommandRecord::observed(&result(status.clone()), CommandOutcome::NotRun, None, now);
            let json = serde_json::to_value(&rec).unwrap();
            assert_eq!(json["command_status"].to_string(), written);
            let back: CommandRecord = serde_json::from_value(json).unwrap();
            assert_eq!(back.command_status, Some(status));
        }
    }
}
