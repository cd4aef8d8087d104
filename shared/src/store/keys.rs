//! Every key the pipeline writes, in one place. The bucket holds two kinds of object, under two
//! prefixes, so that its protections can tell them apart:
//!
//! - `evidence/{run}/`: what analysts rely on, each command's result package and the run's
//!   manifest and its signature. Written once (a package by a multipart upload completed with
//!   If-None-Match, a manifest and its signature by a put with it; the bucket policy demands it),
//!   kept under Object Lock retention when the deployment turns it on, never expired.
//! - `state/`: what the pipeline rewrites while it works, run and command records, copy
//!   checkpoints, the tenant's call budget and the status board (each rewritten many times a
//!   minute). No retention;
//!   superseded versions expire.
//!
//! Keys are built from validated ids only (see [`crate::ids`]), so none can leave its prefix.

use crate::defender::CommandType;
use crate::ids::RunId;

/// Evidence and manifests: retained, never rewritten.
pub const EVIDENCE_PREFIX: &str = "evidence/";
/// Records, checkpoints and the budget: rewritten, expired.
pub const STATE_PREFIX: &str = "state/";

/// The tenant's Defender call budget, shared by every function.
pub const BUDGET_KEY: &str = "state/budget/tenant.json";

/// Where an unreadable budget is set aside for an operator (`ms`: when, in Unix milliseconds).
pub fn corrupt_budget_key(ms: i64) -> String {
    format!("state/budget/corrupt-{ms}.json")
}

/// The status board: one listing of the pipeline's live actions, shared by every poll.
pub const STATUS_BOARD_KEY: &str = "state/poll/board.json";

/// The run record of `run`.
pub fn run_key(run: &RunId) -> String {
    format!("state/runs/{run}/run.json")
}

/// The record of command `index` (from 0) of `run`.
pub fn command_key(run: &RunId, index: u32) -> String {
    format!("state/runs/{run}/commands/{index}.json")
}

/// A copy's progress, so that a later invocation resumes it.
pub fn checkpoint_key(run: &RunId, index: u32) -> String {
    format!("state/runs/{run}/checkpoints/{index}.json")
}

/// The manifest of `run`; under `evidence/`, so it gets Object Lock retention.
pub fn manifest_key(run: &RunId) -> String {
    format!("evidence/{run}/manifest.json")
}

/// The manifest's signature, beside it and written once like it.
pub fn signature_key(run: &RunId) -> String {
    format!("evidence/{run}/manifest.sig.json")
}

/// Where a command's result package lands.
pub fn evidence_key(run: &RunId, index: u32, kind: CommandType) -> String {
    match kind {
        CommandType::GetFile => format!("evidence/{run}/{index}-getfile.gz"),
        CommandType::RunScript => format!("evidence/{run}/{index}-runscript.json"),
        CommandType::PutFile => format!("evidence/{run}/{index}-putfile"),
    }
}

/// Whether a key holds evidence (retained, written once) rather than state.
pub fn is_evidence(key: &str) -> bool {
    key.starts_with(EVIDENCE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_and_state_never_share_a_prefix() {
        let run = RunId::derive("a", "b", "c", "d");
        let evidence = [
            manifest_key(&run),
            signature_key(&run),
            evidence_key(&run, 0, CommandType::GetFile),
            evidence_key(&run, 1, CommandType::RunScript),
            evidence_key(&run, 2, CommandType::PutFile),
        ];
        let state = [
            BUDGET_KEY.to_string(),
            STATUS_BOARD_KEY.to_string(),
            corrupt_budget_key(1),
            run_key(&run),
            command_key(&run, 0),
            checkpoint_key(&run, 0),
        ];
        for k in &evidence {
            assert!(is_evidence(k) && !k.starts_with(STATE_PREFIX), "{k}");
        }
        for k in &state {
            assert!(!is_evidence(k) && k.starts_with(STATE_PREFIX), "{k}");
        }
    }
}
