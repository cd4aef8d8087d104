//! The four stages as plain functions over the ports. Each takes one message body and says
//! what became of it; `crate::batch` turns that into an SQS partial batch response.

pub mod collect;
pub mod intake;
pub mod poll;
pub mod submit;

use crate::ids::RunId;
use crate::messages::{Job, decode};
use crate::ports::{ObjectStore, QueueError, StoreError};
use crate::store::{RunRecord, load_run};

/// What a stage did with a message, for the one log line per message and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub run_id: Option<RunId>,
    pub outcome: &'static str,
    pub detail: String,
    /// Values for CloudWatch (name, value, unit), beyond the count of outcomes.
    pub metrics: Vec<(&'static str, f64, &'static str)>,
}

impl Done {
    pub fn new(run_id: &RunId, outcome: &'static str, detail: impl Into<String>) -> Self {
        Self {
            run_id: Some(run_id.clone()),
            outcome,
            detail: detail.into(),
            metrics: Vec::new(),
        }
    }

    pub fn with_metric(mut self, name: &'static str, value: f64, unit: &'static str) -> Self {
        self.metrics.push((name, value, unit));
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Infrastructure failed (S3, SQS): leave the message for SQS to deliver again.
    #[error("retry: {0}")]
    Retry(String),
    /// The message itself is wrong: send its body to the dead-letter queue with this reason.
    #[error("reject ({code}): {reason}")]
    Reject { code: &'static str, reason: String },
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        Self::Retry(e.to_string())
    }
}

impl From<QueueError> for StageError {
    fn from(e: QueueError) -> Self {
        Self::Retry(e.to_string())
    }
}

/// A number in [0, 1) that differs between calls, for backoff jitter.
pub fn jitter() -> f64 {
    let b = uuid::Uuid::new_v4();
    let x = u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Decodes a stage message and loads the run it names; either failing is the message's fault.
pub(crate) async fn open<J: Job, S: ObjectStore>(
    store: &S,
    body: &str,
) -> Result<(J, RunId, RunRecord), StageError> {
    let job: J = decode(body).map_err(|reason| StageError::Reject {
        code: "invalid_message",
        reason,
    })?;
    let run_id = job.run_id().clone();
    let Some((run, _)) = load_run(store, &run_id).await? else {
        return Err(StageError::Reject {
            code: "unknown_run",
            reason: format!("run {run_id} has no record"),
        });
    };
    Ok((job, run_id, run))
}
