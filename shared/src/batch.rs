//! An SQS batch → one outcome per message → the partial batch response Lambda expects. A refused
//! message goes to the stage's dead-letter queue with its original body and the reason; only a
//! message that could not be dealt with at all is reported as failed, for SQS to deliver again.

use std::future::Future;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures_util::StreamExt;

use crate::ports::Queue;
use crate::stages::{Done, StageError};

pub async fn handle<Q, F, Fut>(
    event: SqsEvent,
    stage: &'static str,
    dead_letter_queue_url: &str,
    queue: &Q,
    concurrency: usize,
    process: F,
) -> SqsBatchResponse
where
    Q: Queue,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Done, StageError>>,
{
    let process = &process;
    let failures: Vec<BatchItemFailure> = futures_util::stream::iter(event.records)
        .map(|record| async move {
            let message_id = record.message_id.clone().unwrap_or_default();
            let body = record.body.clone().unwrap_or_default();
            let result = if body.is_empty() {
                Err(StageError::Reject {
                    code: "empty_body",
                    reason: "the message has no body".into(),
                })
            } else {
                process(body.clone()).await
            };
            let failed = match result {
                Ok(done) => {
                    tracing::info!(
                        stage,
                        message_id = %message_id,
                        run_id = done.run_id.as_ref().map(|r| r.as_str()).unwrap_or("-"),
                        outcome = done.outcome,
                        detail = %done.detail,
                        "message handled"
                    );
                    false
                }
                Err(StageError::Reject { code, reason }) => {
                    match queue
                        .send_rejected(dead_letter_queue_url, &body, stage, code, &reason)
                        .await
                    {
                        Ok(()) => {
                            tracing::warn!(stage, message_id = %message_id, outcome = "rejected", code, reason = %reason, "message refused; original body sent to the dead-letter queue");
                            false
                        }
                        Err(e) => {
                            tracing::error!(stage, message_id = %message_id, outcome = "reject_failed", code, reason = %reason, error = %e, "message refused but could not be dead-lettered; leaving it for redelivery");
                            true
                        }
                    }
                }
                Err(StageError::Retry(reason)) => {
                    tracing::warn!(stage, message_id = %message_id, outcome = "retry", reason = %reason, "message left for redelivery");
                    true
                }
            };
            failed.then(|| {
                let mut f = BatchItemFailure::default();
                f.item_identifier = message_id;
                f
            })
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|f| async move { f })
        .collect()
        .await;
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}
