//! An SQS batch → one outcome per message → the partial batch response Lambda expects. A refused
//! message goes to the stage's dead-letter queue with its original body and the reason; only a
//! message that could not be dealt with at all is reported as failed, for SQS to deliver again.

use std::collections::BTreeMap;
use std::future::Future;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures_util::StreamExt;

use crate::codes::{Disposition, Metric, RejectCode};
use crate::ids::TenantKey;
use crate::messages::Delivery;
use crate::ports::{Queue, Rejection};
use crate::stages::{Done, StageError};

/// Runs `process` over the batch's messages, `concurrency` at a time, and returns the failures
/// for SQS to redeliver. A message `process` rejects goes to `dead_letter_queue_url` with its
/// code and reason (and counts as handled); if that send fails, it is redelivered instead. Logs
/// one line per message and emits the outcome counts and metrics as CloudWatch embedded
/// metrics, tagged with `stage`.
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
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<Done, StageError>>,
{
    let process = &process;
    let metrics = std::sync::Mutex::new(BTreeMap::<Option<TenantKey>, Metrics>::new());
    let add = |tenant: Option<TenantKey>, name: &str, value: f64, unit: &'static str| {
        let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(tenant)
            .or_default()
            .entry(name.to_string())
            .or_insert((0.0, unit))
            .0 += value;
    };
    let add = &add;
    let failures: Vec<BatchItemFailure> = futures_util::stream::iter(event.records)
        .map(|record| async move {
            let started = std::time::Instant::now();
            let message_id = record.message_id.clone().unwrap_or_default();
            let body = record.body.clone().unwrap_or_default();
            let result = if body.is_empty() {
                Err(StageError::Reject {
                    code: RejectCode::EmptyBody,
                    reason: "the message has no body".into(),
                })
            } else {
                let sender = record.attributes.get("SenderId").cloned();
                process(Delivery::new(message_id.clone(), body.clone()).from_sender(sender)).await
            };
            let failed = match result {
                Ok(done) => {
                    let tenant = done.run_id.as_ref().and_then(|r| r.tenant());
                    add(tenant.clone(), &done.outcome.metric_name(), 1.0, "Count");
                    for (metric, value) in &done.metrics {
                        add(tenant.clone(), metric.as_str(), *value, metric.unit());
                    }
                    tracing::info!(
                        stage,
                        message_id = %message_id,
                        run_id = done.run_id.as_ref().map(|r| r.as_str()).unwrap_or("-"),
                        outcome = done.outcome.as_str(),
                        detail = %done.detail,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "message handled"
                    );
                    false
                }
                Err(StageError::Reject { code, reason }) => {
                    match queue
                        .send_rejected(
                            dead_letter_queue_url,
                            &body,
                            &Rejection {
                                stage,
                                code,
                                reason: &reason,
                            },
                        )
                        .await
                    {
                        Ok(()) => {
                            add(None, Metric::Rejected.as_str(), 1.0, Metric::Rejected.unit());
                            tracing::warn!(stage, message_id = %message_id, outcome = Disposition::Rejected.as_str(), code = code.as_str(), reason = %reason, "message refused; original body sent to the dead-letter queue");
                            false
                        }
                        Err(e) => {
                            tracing::error!(stage, message_id = %message_id, outcome = Disposition::RejectFailed.as_str(), code = code.as_str(), reason = %reason, error = %e, "message refused but could not be dead-lettered; leaving it for redelivery");
                            true
                        }
                    }
                }
                Err(StageError::Retry(reason)) => {
                    add(
                        None,
                        Metric::Redelivered.as_str(),
                        1.0,
                        Metric::Redelivered.unit(),
                    );
                    tracing::warn!(stage, message_id = %message_id, outcome = Disposition::Retry.as_str(), reason = %reason, "message left for redelivery");
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
    let metrics = metrics.into_inner().unwrap_or_else(|p| p.into_inner());
    // CloudWatch Embedded Metric Format: one JSON line on stdout per batch and tenant.
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    for (tenant, metrics) in &metrics {
        println!("{}", emf_line(stage, tenant.as_ref(), metrics, now_ms));
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

/// Metric values by name, with their units.
pub type Metrics = BTreeMap<String, (f64, &'static str)>;

/// A CloudWatch Embedded Metric Format record for one batch's messages about `tenant`'s runs
/// (none: the deployment serves one tenant, or the message named no run), dimensioned by stage,
/// and also by stage and tenant when there is one (a dashboard per customer, and the stage's
/// totals across them).
pub fn emf_line(stage: &str, tenant: Option<&TenantKey>, metrics: &Metrics, now_ms: i64) -> String {
    let defs: Vec<serde_json::Value> = metrics
        .iter()
        .map(|(name, (_, unit))| serde_json::json!({"Name": name, "Unit": unit}))
        .collect();
    let dimensions = match tenant {
        None => serde_json::json!([["Stage"]]),
        Some(_) => serde_json::json!([["Stage"], ["Stage", "Tenant"]]),
    };
    let mut root = serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": "LiveResponsePipeline",
                "Dimensions": dimensions,
                "Metrics": defs,
            }]
        },
        "Stage": stage,
    });
    if let Some(obj) = root.as_object_mut() {
        if let Some(t) = tenant {
            obj.insert("Tenant".into(), serde_json::json!(t.as_str()));
        }
        for (name, (value, _)) in metrics {
            obj.insert(name.clone(), serde_json::json!(value));
        }
    }
    root.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_records_follow_the_format() {
        let mut m = BTreeMap::new();
        m.insert("Submitted".to_string(), (3.0, "Count"));
        m.insert("BytesCopied".to_string(), (1024.0, "Bytes"));
        let v: serde_json::Value =
            serde_json::from_str(&emf_line("submit", None, &m, 1_700_000_000_000)).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "LiveResponsePipeline"
        );
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "Stage"
        );
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert_eq!(v["Stage"], "submit");
        assert_eq!(v["Submitted"], 3.0);
        assert_eq!(v["BytesCopied"], 1024.0);
        let names: Vec<&str> = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["BytesCopied", "Submitted"]);
        assert!(v.get("Tenant").is_none());
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["Stage"]])
        );
    }

    #[test]
    fn a_tenant_runs_metrics_carry_a_tenant_dimension_beside_the_stage_totals() {
        let mut m = BTreeMap::new();
        m.insert("Submitted".to_string(), (2.0, "Count"));
        let acme = TenantKey::parse("acme").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&emf_line("submit", Some(&acme), &m, 1)).unwrap();
        assert_eq!(v["Tenant"], "acme");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["Stage"], ["Stage", "Tenant"]])
        );
        assert_eq!(v["Submitted"], 2.0);
    }
}
