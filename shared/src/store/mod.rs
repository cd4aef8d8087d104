//! Run records, command records and the manifest, kept in S3 (where each lives is [`keys`]).
//! Conditional writes make creation de-duplicating and updates compare-and-swap; [`chain`] says
//! which message may act on a record.

pub mod chain;
mod command;
pub mod keys;
mod manifest;
mod record;
pub mod retention;
mod run;

pub use chain::{Chain, Chained, Standing};
pub use command::{CommandOutcome, CommandRecord, create_command, load_command, put_command};
pub use keys::{command_key, evidence_key, manifest_key, run_key, signature_key};
pub use manifest::{
    Manifest, ManifestAction, ManifestCommand, ManifestDevice, final_state, settle_outcome,
};
pub use record::{RECORD_VERSION, json, parse, update_record};
pub use run::{
    Announcement, RunOutcome, RunRecord, RunState, StatusSeen, create_run, load_run, update_run,
};
