//! SQS as the [`Queue`] port: delayed sends (capped at SQS's 15 minutes) and refused messages to a
//! dead-letter queue with their code and reason as message attributes. A stage message about a
//! tenant's run goes with the tenant as its `MessageGroupId`: on a standard queue that makes it
//! an SQS fair queue, which delivers a quiet tenant's messages ahead of a backlog another tenant
//! built (one tenant's burst of paced and re-enqueued jobs does not hold up another's runs).

use std::time::Duration;

use crate::ports::{Queue, QueueError, Rejection};

/// SQS as a [`Queue`].
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
}

impl SqsQueue {
    /// Sends through `client`; queue URLs are given per call.
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Self { client }
    }
}

/// SQS's largest DelaySeconds.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

impl Queue for SqsQueue {
    async fn send(
        &self,
        queue_url: &str,
        body: &str,
        delay: Duration,
    ) -> Result<String, QueueError> {
        let secs = delay.min(MAX_DELAY).as_secs_f64().ceil() as i32;
        let group = crate::messages::run_of(body)
            .and_then(|r| r.tenant())
            .map(|t| t.to_string());
        let out = self
            .client
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .delay_seconds(secs)
            .set_message_group_id(group)
            .send()
            .await
            .map_err(|e| QueueError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
        out.message_id
            .ok_or_else(|| QueueError(format!("{queue_url}: SendMessage returned no message id")))
    }

    async fn send_rejected(
        &self,
        dlq_url: &str,
        body: &str,
        why: &Rejection<'_>,
    ) -> Result<(), QueueError> {
        let (stage, code, reason) = (why.stage, why.code.as_str(), why.reason);
        use aws_sdk_sqs::types::MessageAttributeValue;
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v.chars().take(1024).collect::<String>())
                .build()
                .map_err(|e| QueueError(e.to_string()))
        };
        // An empty body cannot be sent to SQS; the attributes still say what arrived.
        let body = if body.is_empty() {
            "(empty message body)"
        } else {
            body
        };
        self.client
            .send_message()
            .queue_url(dlq_url)
            .message_body(body)
            .message_attributes("lr-stage", attr(stage)?)
            .message_attributes("lr-reject-code", attr(code)?)
            .message_attributes(
                "lr-reject-reason",
                attr(if reason.is_empty() { "-" } else { reason })?,
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| QueueError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))
    }
}
