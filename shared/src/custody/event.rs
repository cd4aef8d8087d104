//! The completion event: one EventBridge event per finished run (source `lr.pipeline`, detail type
//! `Live Response Run Finished`), built from the manifest as stored, so the event says what the
//! signed manifest says.
//!
//! Exactly once in effect: the event is published after the manifest and its signature are
//! written, by the one message that claims it in the run record, and the run records it was
//! published; a redelivery does not publish again. A function that dies after PutEvents and before
//! recording it leaves the claim to lapse and the event is published once more: both copies carry
//! the same `event_id` (the run id), for consumers to de-duplicate on. A publish is abandoned after
//! [`PUBLISH_TIMEOUT`], well inside the claim's [`CLAIM_LAPSES`], so a claim never lapses under a
//! live publish; one that EventBridge took before the timeout is the other way a second copy goes
//! out.
//!
//! An event stays under EventBridge's 256 KB entry limit whatever the run holds
//! ([`RunFinished::detail`]): long reasons are cut, and if that is not enough the per-command list
//! is left out (the manifest has it).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::defender::{CommandStatus, CommandType, MachineId};
use crate::ids::{AlertId, RunId, TenantKey};
use crate::store::{CommandOutcome, Manifest, RunOutcome, RunState};
use crate::text::cut;

/// The event's source.
pub const SOURCE: &str = "lr.pipeline";
/// The event's detail type.
pub const DETAIL_TYPE: &str = "Live Response Run Finished";

/// How long a claim on a run's event holds before another message may publish in its place (its
/// holder died): far longer than a publish may take, shorter than any queue's visibility timeout,
/// so the redelivery of the message that died finds it lapsed.
pub const CLAIM_LAPSES: Duration = Duration::from_secs(20);
/// A publish not answered in this time is abandoned (the message is retried).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(8);
const _: () = assert!(PUBLISH_TIMEOUT.as_secs() * 2 < CLAIM_LAPSES.as_secs());

/// The largest detail published: EventBridge refuses entries over 256 KB (detail, source and
/// detail type together).
pub const MAX_DETAIL_BYTES: usize = 200 * 1024;
/// A reason in an event is cut to this many bytes (the manifest keeps it whole).
const MAX_REASON_BYTES: usize = 1024;

/// The event's detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinished {
    /// The same for every copy of this run's event (the run id): de-duplicate on it.
    pub event_id: String,
    /// The run.
    pub run_id: RunId,
    /// The tenant whose Defender ran it (our key for it), for a rule that routes per customer;
    /// absent in a deployment that serves one tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantKey>,
    /// The alert that started it.
    pub alert: EventAlert,
    /// The device it ran on.
    pub device: EventDevice,
    /// The playbook that rendered its commands.
    pub playbook: EventPlaybook,
    /// `completed` or `failed`.
    pub state: RunState,
    /// How it ended, in one word.
    pub outcome: Option<RunOutcome>,
    /// Why it failed or ended early.
    pub reason: Option<String>,
    /// Each command, in order.
    pub commands: Vec<EventCommand>,
    /// The manifest and its signature.
    pub manifest: EventManifest,
    /// When intake accepted the alert.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// When the manifest was written.
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// Seconds from the alert's arrival to its evidence sealed.
    pub time_to_evidence_secs: f64,
    /// Set when the event was shortened to fit EventBridge (reasons cut, or the command list left
    /// out): the manifest has everything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shortened: bool,
}

/// The alert of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAlert {
    /// The sender's id for it.
    pub id: AlertId,
    /// The detection source or product that raised it.
    pub source: String,
    /// Its title.
    pub title: String,
    /// Its severity, as sent.
    pub severity: String,
}

/// The device of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDevice {
    /// Defender's machine id.
    pub id: MachineId,
    /// The DNS name, if Defender reported one.
    pub name: Option<String>,
}

/// The playbook of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPlaybook {
    /// Its name.
    pub name: String,
    /// SHA-256 of the version that rendered the commands.
    pub sha256: Option<String>,
}

/// One command of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCommand {
    /// Its position in the run, from 0.
    pub index: u32,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: CommandType,
    /// What became of it.
    pub outcome: CommandOutcome,
    /// Defender's status for it.
    pub status: Option<CommandStatus>,
    /// Where its result is, when collected.
    pub s3_uri: Option<String>,
    /// The version of that object the hashes describe.
    pub s3_version_id: Option<String>,
    /// Bytes stored.
    pub size: Option<u64>,
    /// SHA-256 of the stored bytes.
    pub sha256: Option<String>,
    /// SHA-256 of the decompressed file (GetFile).
    pub sha256_decompressed: Option<String>,
    /// Why it was not collected.
    pub reason: Option<String>,
}

/// The manifest of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventManifest {
    /// Where the manifest is.
    pub s3_uri: String,
    /// SHA-256 of its exact bytes (what the signature binds).
    pub sha256: String,
    /// Where its signature is.
    pub signature_s3_uri: String,
    /// The KMS key that signed it.
    pub signature_key_id: String,
}

impl RunFinished {
    /// The event for a stored manifest; `locate` turns a key into an S3 URI.
    pub fn of(
        manifest: &Manifest,
        manifest_meta: EventManifest,
        locate: impl Fn(&str) -> String,
    ) -> Self {
        let commands = manifest
            .commands
            .iter()
            .map(|c| EventCommand {
                index: c.index,
                kind: c.kind,
                outcome: c.outcome,
                status: c.command_status.clone(),
                s3_uri: c.s3_key.as_deref().map(&locate),
                s3_version_id: c.s3_version_id.clone(),
                size: c.size,
                sha256: c.sha256.clone(),
                sha256_decompressed: c.sha256_decompressed.clone(),
                reason: c.reason.clone(),
            })
            .collect();
        let a = &manifest.alert;
        Self {
            event_id: manifest.run_id.to_string(),
            tenant: manifest.tenant.clone(),
            run_id: manifest.run_id.clone(),
            alert: EventAlert {
                id: a.alert_id.clone(),
                source: a.source.clone(),
                title: a.title.clone(),
                severity: a.severity.clone(),
            },
            device: EventDevice {
                id: manifest.device.machine_id.clone(),
                name: manifest.device.computer_dns_name.clone(),
            },
            playbook: EventPlaybook {
                name: manifest.playbook.clone(),
                sha256: manifest.playbook_sha256.clone(),
            },
            state: manifest.run_state,
            outcome: manifest.outcome,
            reason: manifest.reason.clone(),
            commands,
            manifest: manifest_meta,
            received_at: manifest.created_at,
            finished_at: manifest.completed_at,
            time_to_evidence_secs: (manifest.completed_at - manifest.created_at).as_seconds_f64(),
            shortened: false,
        }
    }

    /// The event's JSON detail, at most [`MAX_DETAIL_BYTES`]: as it is if it fits; else with every
    /// reason cut to 1 KB; else without the per-command list.
    pub fn detail(mut self) -> Result<String, serde_json::Error> {
        let text = serde_json::to_string(&self)?;
        if text.len() <= MAX_DETAIL_BYTES {
            return Ok(text);
        }
        self.shortened = true;
        self.reason = self.reason.map(|r| cut(&r, MAX_REASON_BYTES));
        for c in &mut self.commands {
            c.reason = c.reason.take().map(|r| cut(&r, MAX_REASON_BYTES));
        }
        let text = serde_json::to_string(&self)?;
        if text.len() <= MAX_DETAIL_BYTES {
            return Ok(text);
        }
        self.commands.clear();
        serde_json::to_string(&self)
    }
}
