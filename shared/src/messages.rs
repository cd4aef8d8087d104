//! Messages between stages: small versioned JSON envelopes that name a run; the run's details
//! live in its record in S3.

use serde::{Deserialize, Serialize};

use crate::defender::ActionId;
use crate::ids::RunId;

/// The `v` every stage message carries; [`decode`] refuses any other.
pub const MESSAGE_VERSION: u32 = 1;

/// intake → submit: submit this run (again, after a delay, when Defender said wait).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// Message format version ([`MESSAGE_VERSION`]).
    pub v: u32,
    /// The run to submit.
    pub run_id: RunId,
    /// Submissions tried so far (drives the backoff).
    pub attempt: u32,
    /// The message that sent this one, when it handed on a run's or command's chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// submit → poll, and poll → poll: look at the action again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollJob {
    /// Message format version ([`MESSAGE_VERSION`]).
    pub v: u32,
    /// The run the action belongs to.
    pub run_id: RunId,
    /// The action to look at; must be the run's own.
    pub action_id: ActionId,
    /// Polls so far (picks the next step of the delay schedule).
    pub polls: u32,
    /// Cancels tried past the deadline (bounded: then the run ends).
    #[serde(default)]
    pub cancels: u32,
    /// The message that sent this one, when it handed on a run's or command's chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// poll → collect: copy one command's result package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectJob {
    /// Message format version ([`MESSAGE_VERSION`]).
    pub v: u32,
    /// The run the command belongs to.
    pub run_id: RunId,
    /// The action that ran the command; must be the run's own.
    pub action_id: ActionId,
    /// The command's position in the run, from 0.
    pub index: u32,
    /// Copies tried so far.
    pub attempt: u32,
    /// Result link requests that failed with something worth retrying (bounded: then the command is
    /// recorded as not collected).
    #[serde(default)]
    pub link_errors: u32,
    /// The message that sent this one, when it handed on a run's or command's chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// A message as the queue delivered it: its id (the same on every redelivery of one send, new for
/// every send), its body and who sent it. The id is what a record's chain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The queue's message id.
    pub id: String,
    /// The message body, as sent.
    pub body: String,
    /// Who sent it, as SQS reports it (the `SenderId` attribute: an IAM principal's unique id,
    /// for a role followed by `:` and the session name); `None` when the queue did not say.
    /// Intake checks it against the alert's tenant.
    pub sender: Option<String>,
}

impl Delivery {
    /// A delivery of `body` with message id `id`, its sender unknown.
    pub fn new(id: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            body: body.into(),
            sender: None,
        }
    }

    /// The same delivery, sent by `sender` (SQS's `SenderId`).
    pub fn from_sender(mut self, sender: Option<String>) -> Self {
        self.sender = sender;
        self
    }
}

/// The run a stage message names, read without deciding what kind of job it is (`None`: it
/// names none, or is not a stage message). Picks the run's tenant before the stage runs, and the
/// SQS fair-queue group a message is sent with.
pub fn run_of(body: &str) -> Option<RunId> {
    #[derive(Deserialize)]
    struct NamesRun {
        run_id: RunId,
    }
    serde_json::from_str::<NamesRun>(body)
        .ok()
        .map(|n| n.run_id)
}

/// A stage message: names the run it is about, and the message that sent it.
pub trait Job: serde::de::DeserializeOwned + Serialize {
    /// The run the job is about.
    fn run_id(&self) -> &RunId;
    /// The message that sent this one, if it handed on a chain.
    fn prev(&self) -> Option<&str>;
    /// Records `prev` as the message that sent this one (set before sending).
    fn set_prev(&mut self, prev: &str);
    /// The Defender action the job is about, which must be the run's own (poll and collect jobs).
    fn action_id(&self) -> Option<&ActionId> {
        None
    }
}

/// The [`Job`] methods every stage message has alike, and `action_id` for those that name the
/// field holding their action.
macro_rules! job {
    ($t:ty $(, $action:ident)?) => {
        impl Job for $t {
            fn run_id(&self) -> &RunId {
                &self.run_id
            }
            fn prev(&self) -> Option<&str> {
                self.prev.as_deref()
            }
            fn set_prev(&mut self, prev: &str) {
                self.prev = Some(prev.to_string());
            }
            $(
                fn action_id(&self) -> Option<&ActionId> {
                    Some(&self.$action)
                }
            )?
        }
    };
}

job!(SubmitJob);
job!(PollJob, action_id);
job!(CollectJob, action_id);

/// Parses a stage message, checking its version; the error says what was wrong.
pub fn decode<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, String> {
    #[derive(Deserialize)]
    struct Version {
        v: Option<u32>,
    }
    match serde_json::from_str::<Version>(body) {
        Ok(Version {
            v: Some(MESSAGE_VERSION),
        }) => {}
        Ok(Version { v: Some(other) }) => {
            return Err(format!(
                "message version {other} is not supported (this build reads {MESSAGE_VERSION})"
            ));
        }
        Ok(Version { v: None }) => return Err("message has no version field \"v\"".into()),
        Err(e) => return Err(format!("message is not JSON: {e}")),
    }
    serde_json::from_str(body).map_err(|e| format!("message does not fit its schema: {e}"))
}

/// A stage message as its JSON body.
pub fn encode<T: Serialize>(msg: &T) -> String {
    // These types serialise infallibly (strings and numbers only).
    serde_json::to_string(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_run_is_read_from_any_stage_message_and_nothing_else() {
        let acme = crate::ids::TenantKey::parse("acme").unwrap();
        let run = RunId::derive_for(Some(&acme), "a", "b", "c", "d");
        let job = SubmitJob {
            v: MESSAGE_VERSION,
            run_id: run.clone(),
            attempt: 0,
            prev: None,
        };
        assert_eq!(run_of(&encode(&job)), Some(run));
        assert_eq!(run_of("{\"run_id\": \"../x\"}"), None);
        assert_eq!(run_of("not json"), None);
        assert_eq!(run_of("{}"), None);
    }

    #[test]
    fn round_trips_and_checks_versions() {
        let job = SubmitJob {
            v: MESSAGE_VERSION,
            run_id: RunId::derive("a", "b", "c", "d"),
            attempt: 2,
            prev: Some("m-1".into()),
        };
        assert_eq!(decode::<SubmitJob>(&encode(&job)).unwrap(), job);
        assert!(
            decode::<SubmitJob>(&encode(&job).replace("\"v\":1", "\"v\":9"))
                .unwrap_err()
                .contains("version 9")
        );
        assert!(
            decode::<SubmitJob>("{}")
                .unwrap_err()
                .contains("no version")
        );
        assert!(
            decode::<SubmitJob>("nope")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            decode::<SubmitJob>(r#"{"v":1,"run_id":"../x","attempt":0}"#)
                .unwrap_err()
                .contains("schema")
        );
    }
}
