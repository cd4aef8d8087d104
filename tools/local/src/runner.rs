//! Plays Lambda's SQS event source mapping against moto: long-polls each queue, hands batches to
//! the same entry points the Lambda binaries run, deletes what succeeded, and leaves failed
//! messages to their visibility timeout and the queue's redrive policy.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use shared::entry::{self, Collect, Function, InitError, Intake, Poll, Submit};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{ProvisionedStack, QUEUES};

type Handler =
    Arc<dyn Fn(SqsEvent) -> Pin<Box<dyn Future<Output = SqsBatchResponse> + Send>> + Send + Sync>;

/// Event source mapping settings, per queue as the template sets them.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub batch_size: i32,
    /// Long-poll wait per receive.
    pub wait: Duration,
    /// When set, a failed message becomes visible again after this long instead of the queue's
    /// visibility timeout (Lambda waits the full timeout; tests need not).
    pub failed_visibility: Option<Duration>,
    /// When set, received messages stay invisible this long instead of the queue's visibility
    /// timeout, so that a killed runner's messages come back soon (tests only).
    pub receive_visibility: Option<Duration>,
    /// Collect invocations at once in this pipeline (each copies one package, as the template's
    /// batch size of 1; the template lets `CollectMaxConcurrency`, default 10, run at once).
    pub collect_loops: usize,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 10,
            wait: Duration::from_secs(1),
            failed_visibility: None,
            receive_visibility: None,
            collect_loops: 1,
        }
    }
}

/// The four stages running against the local stack.
pub struct LocalPipeline {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalPipeline {
    /// Builds each stage from `env` (the stack's variables plus the stage's own dead-letter queue)
    /// and starts one event-source loop per queue.
    pub async fn start(
        sdk: &aws_config::SdkConfig,
        stack: &ProvisionedStack,
        env: &BTreeMap<String, String>,
        options: RunnerOptions,
    ) -> Result<Self, InitError> {
        let stage_env = |stage: &str| {
            let mut e = env.clone();
            e.insert(
                "DEAD_LETTER_QUEUE_URL".into(),
                stack.dlq_urls[stage].clone(),
            );
            e
        };
        let handlers: HashMap<&str, (Handler, i32)> = HashMap::from([
            (
                "alerts",
                (
                    handler(Intake::build(&stage_env("alerts"), sdk).await?),
                    options.batch_size,
                ),
            ),
            (
                "submit",
                (
                    handler(Submit::build(&stage_env("submit"), sdk).await?),
                    options.batch_size,
                ),
            ),
            (
                "poll",
                (
                    handler(Poll::build(&stage_env("poll"), sdk).await?),
                    options.batch_size,
                ),
            ),
            // One package at a time per invocation, as the template's batch size for collect.
            (
                "collect",
                (
                    handler(Collect::build(&stage_env("collect"), sdk).await?),
                    1,
                ),
            ),
        ]);
        let (stop, rx) = watch::channel(false);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let mut tasks = Vec::new();
        for q in QUEUES {
            let (h, batch) = handlers[q.stage].clone();
            let url = stack.queue_urls[q.stage].clone();
            let loops = if q.stage == "collect" {
                options.collect_loops.max(1)
            } else {
                1
            };
            for n in 0..loops {
                // Each collect loop stands for its own Lambda instance: a process of its own, with
                // its own clients and budget lane, as in production.
                let h = if n == 0 {
                    h.clone()
                } else {
                    handler(Collect::build(&stage_env("collect"), sdk).await?)
                };
                tasks.push(tokio::spawn(event_source(
                    sqs.clone(),
                    q.stage,
                    url.clone(),
                    h,
                    RunnerOptions {
                        batch_size: batch,
                        ..options.clone()
                    },
                    rx.clone(),
                )));
            }
        }
        Ok(Self { stop, tasks })
    }

    /// Ends every loop at once, mid-batch, as a crashed or timed-out invocation would: messages in
    /// flight are neither finished nor deleted.
    pub fn kill(self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops polling; batches being handled finish first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A function's batch handler, as the event-source loop calls it.
fn handler<F: Function>(function: F) -> Handler {
    let function = Arc::new(function);
    Arc::new(move |e| {
        let f = function.clone();
        Box::pin(async move { entry::handle(&*f, e).await })
    })
}

async fn event_source(
    sqs: aws_sdk_sqs::Client,
    stage: &'static str,
    url: String,
    handler: Handler,
    options: RunnerOptions,
    mut stop: watch::Receiver<bool>,
) {
    let arn_name = url.rsplit('/').next().unwrap_or_default().to_string();
    loop {
        if *stop.borrow() {
            return;
        }
        let received = tokio::select! {
            r = sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(options.batch_size)
                .wait_time_seconds(options.wait.as_secs().max(1) as i32)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .set_visibility_timeout(options.receive_visibility.map(|v| v.as_secs() as i32))
                .send() => r,
            _ = stop.changed() => return,
        };
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(stage, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "receive failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let mut event = SqsEvent::default();
        let mut receipts = HashMap::new();
        for m in &messages {
            let mut msg = SqsMessage::default();
            msg.message_id = m.message_id.clone();
            msg.receipt_handle = m.receipt_handle.clone();
            msg.body = m.body.clone();
            msg.md5_of_body = m.md5_of_body.clone();
            msg.event_source = Some("aws:sqs".into());
            msg.event_source_arn = Some(format!("arn:aws:sqs:us-east-1:123456789012:{arn_name}"));
            msg.aws_region = Some("us-east-1".into());
            msg.attributes = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            if let (Some(id), Some(rh)) = (&m.message_id, &m.receipt_handle) {
                receipts.insert(id.clone(), rh.clone());
            }
            event.records.push(msg);
        }
        let started = std::time::Instant::now();
        let size = event.records.len();
        let response = handler(event).await;
        tracing::debug!(
            stage,
            size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch handled"
        );
        let failed: std::collections::HashSet<String> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        let mut entries = Vec::new();
        for (i, (id, rh)) in receipts.iter().enumerate() {
            if failed.contains(id) {
                if let Some(v) = options.failed_visibility {
                    let _ = sqs
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(rh)
                        .visibility_timeout(v.as_secs() as i32)
                        .send()
                        .await;
                }
                continue;
            }
            if let Ok(e) = DeleteMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .receipt_handle(rh)
                .build()
            {
                entries.push(e);
            }
        }
        if !entries.is_empty()
            && let Err(e) = sqs
                .delete_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
        {
            tracing::warn!(stage, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "delete failed; the messages will be delivered again");
        }
    }
}
