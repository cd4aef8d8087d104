//! The local stack: the same queues, bucket and secret the deployment template creates, provisioned
//! on moto through the real AWS SDK.

pub mod runner;

use std::collections::BTreeMap;

use aws_sdk_s3::types::{
    BucketVersioningStatus, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    VersioningConfiguration,
};
use aws_sdk_sqs::types::QueueAttributeName;

/// One stage's queue and the timeout of the function behind it (the template uses the same numbers).
#[derive(Debug, Clone, Copy)]
pub struct QueueSpec {
    /// Queue name suffix, and the stage it feeds.
    pub stage: &'static str,
    /// Environment variable that carries the queue URL to the functions.
    pub url_var: &'static str,
    pub function_timeout_secs: u32,
}

/// The pipeline's queues, in stage order.
pub const QUEUES: [QueueSpec; 4] = [
    QueueSpec {
        stage: "alerts",
        url_var: "ALERTS_QUEUE_URL",
        function_timeout_secs: 30,
    },
    QueueSpec {
        stage: "submit",
        url_var: "SUBMIT_QUEUE_URL",
        function_timeout_secs: 60,
    },
    QueueSpec {
        stage: "poll",
        url_var: "POLL_QUEUE_URL",
        function_timeout_secs: 60,
    },
    QueueSpec {
        stage: "collect",
        url_var: "COLLECT_QUEUE_URL",
        function_timeout_secs: 900,
    },
];

/// Receives before a message moves to its DLQ.
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// AWS's rule for SQS event sources: visibility at least six times the function timeout.
pub const VISIBILITY_FACTOR: u32 = 6;
pub const DLQ_RETENTION_SECS: u32 = 14 * 24 * 3600;
pub const QUEUE_RETENTION_SECS: u32 = 4 * 24 * 3600;
/// Days the local stack retains evidence and manifests (Object Lock, governance mode).
pub const RETENTION_DAYS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("SQS: {0}")]
    Sqs(String),
    #[error("S3: {0}")]
    S3(String),
    #[error("Secrets Manager: {0}")]
    Secrets(String),
    #[error("KMS: {0}")]
    Kms(String),
    #[error("EventBridge: {0}")]
    Events(String),
}

fn sdk_err<E: std::error::Error>(e: E) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
}

/// What was created, as the environment variables the functions read.
#[derive(Debug, Clone, Default)]
pub struct ProvisionedStack {
    pub env: BTreeMap<String, String>,
    pub queue_urls: BTreeMap<String, String>,
    pub dlq_urls: BTreeMap<String, String>,
    pub bucket: String,
    pub secret_arn: String,
    /// The KMS key that signs manifests (its ARN).
    pub signing_key_arn: String,
    /// The bus completion events go to.
    pub event_bus: String,
    /// The example rule's target: a queue that receives every completion event (as a ticketing
    /// queue would).
    pub events_queue_url: String,
}

pub struct StackNames {
    pub prefix: String,
}

/// Settings that differ between the local stack and AWS.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionOptions {
    /// Deny every request not made over TLS. moto serves plain HTTP on loopback and enforces bucket
    /// policies, so the local stack leaves this off; the deployment template always sets it.
    pub tls_only_policy: bool,
}

impl StackNames {
    pub fn queue(&self, stage: &str) -> String {
        format!("{}-{stage}", self.prefix)
    }
    pub fn dlq(&self, stage: &str) -> String {
        format!("{}-{stage}-dlq", self.prefix)
    }
    pub fn bucket(&self) -> String {
        format!("{}-evidence", self.prefix)
    }
    pub fn secret(&self) -> String {
        format!("{}/defender-credentials", self.prefix)
    }
    pub fn signing_key_alias(&self) -> String {
        format!("alias/{}-manifest-signing", self.prefix)
    }
    pub fn event_bus(&self) -> String {
        format!("{}-runs", self.prefix)
    }
    pub fn events_queue(&self) -> String {
        format!("{}-run-events", self.prefix)
    }
}

/// lrctl's settings for a provisioned stack, as variables (what `lrctl --env-file` reads): the
/// bucket, the signing key, the alerts queue, and every stage's queue and dead-letter queue
/// (`stage=url,...`); and from `env`, the functions' environment (the stack's, pointed at the
/// simulator), the MDE_* settings they reach Defender with and their playbook file
/// (`PLAYBOOKS_S3_URI` as `LR_PLAYBOOKS`), for `lrctl library`.
pub fn lrctl_settings(
    stack: &ProvisionedStack,
    env: &BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    let stages = |urls: &BTreeMap<String, String>| {
        urls.iter()
            .map(|(s, u)| format!("{s}={u}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = vec![
        ("LR_BUCKET", stack.bucket.clone()),
        ("LR_SIGNING_KEY_ID", stack.signing_key_arn.clone()),
        (
            "LR_ALERTS_QUEUE_URL",
            stack.queue_urls.get("alerts").cloned().unwrap_or_default(),
        ),
        ("LR_QUEUE_URLS", stages(&stack.queue_urls)),
        ("LR_DLQ_URLS", stages(&stack.dlq_urls)),
    ];
    for var in [
        "MDE_CLOUD",
        "MDE_API_BASE_URL",
        "MDE_LOGIN_BASE_URL",
        "MDE_TOKEN_SCOPE",
        "MDE_CREDENTIALS_SECRET_ID",
        "MDE_HTTP_TIMEOUT_SECS",
    ] {
        if let Some(v) = env.get(var).filter(|v| !v.is_empty()) {
            out.push((var, v.clone()));
        }
    }
    if let Some(uri) = env.get("PLAYBOOKS_S3_URI").filter(|v| !v.is_empty()) {
        out.push(("LR_PLAYBOOKS", uri.clone()));
    }
    out
}

/// The event pattern of the example rule: every completion event the pipeline publishes.
pub fn run_finished_pattern() -> serde_json::Value {
    serde_json::json!({
        "source": [shared::custody::event::SOURCE],
        "detail-type": [shared::custody::event::DETAIL_TYPE],
    })
}

/// Creates (or finds) the queues with DLQs and redrive, the evidence bucket and the secret.
pub async fn provision(
    sdk: &aws_config::SdkConfig,
    names: &StackNames,
    credentials_json: &str,
    options: ProvisionOptions,
) -> Result<ProvisionedStack, ProvisionError> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let s3 = shared::adapters::s3::s3_client(sdk);
    let sm = aws_sdk_secretsmanager::Client::new(sdk);
    let mut out = ProvisionedStack::default();

    for q in QUEUES {
        let dlq = sqs
            .create_queue()
            .queue_name(names.dlq(q.stage))
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                DLQ_RETENTION_SECS.to_string(),
            )
            .attributes(QueueAttributeName::SqsManagedSseEnabled, "true")
            .send()
            .await
            .map_err(|e| ProvisionError::Sqs(sdk_err(e)))?;
        let dlq_url = dlq.queue_url().unwrap_or_default().to_string();
        let dlq_arn = queue_arn(&sqs, &dlq_url).await?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": MAX_RECEIVE_COUNT,
        });
        let queue = sqs
            .create_queue()
            .queue_name(names.queue(q.stage))
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                (q.function_timeout_secs * VISIBILITY_FACTOR).to_string(),
            )
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                QUEUE_RETENTION_SECS.to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(QueueAttributeName::SqsManagedSseEnabled, "true")
            .send()
            .await
            .map_err(|e| ProvisionError::Sqs(sdk_err(e)))?;
        let url = queue.queue_url().unwrap_or_default().to_string();
        out.env.insert(q.url_var.to_string(), url.clone());
        out.queue_urls.insert(q.stage.to_string(), url);
        out.dlq_urls.insert(q.stage.to_string(), dlq_url);
    }

    let bucket = names.bucket();
    // Object Lock on, as a deployment with EnableObjectLock=true: evidence and manifests are
    // written with a retention date (EVIDENCE_RETENTION_*), state never is.
    match s3
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) => {
            let text = sdk_err(e);
            if !text.contains("BucketAlreadyOwnedByYou") {
                return Err(ProvisionError::S3(text));
            }
        }
    }
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .map_err(|e| ProvisionError::S3(sdk_err(e)))?;
    let sse = ServerSideEncryptionByDefault::builder()
        .sse_algorithm(ServerSideEncryption::AwsKms)
        .build()
        .map_err(|e| ProvisionError::S3(e.to_string()))?;
    let rule = ServerSideEncryptionRule::builder()
        .apply_server_side_encryption_by_default(sse)
        .bucket_key_enabled(true)
        .build();
    s3.put_bucket_encryption()
        .bucket(&bucket)
        .server_side_encryption_configuration(
            ServerSideEncryptionConfiguration::builder()
                .rules(rule)
                .build()
                .map_err(|e| ProvisionError::S3(e.to_string()))?,
        )
        .send()
        .await
        .map_err(|e| ProvisionError::S3(sdk_err(e)))?;
    s3.put_public_access_block()
        .bucket(&bucket)
        .public_access_block_configuration(
            PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .block_public_policy(true)
                .ignore_public_acls(true)
                .restrict_public_buckets(true)
                .build(),
        )
        .send()
        .await
        .map_err(|e| ProvisionError::S3(sdk_err(e)))?;
    if options.tls_only_policy {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}}
            }]
        });
        s3.put_bucket_policy()
            .bucket(&bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| ProvisionError::S3(sdk_err(e)))?;
    }
    out.env.insert("EVIDENCE_BUCKET".into(), bucket.clone());
    out.env
        .insert("EVIDENCE_RETENTION_DAYS".into(), RETENTION_DAYS.to_string());
    out.env
        .insert("EVIDENCE_RETENTION_MODE".into(), "GOVERNANCE".into());
    out.bucket = bucket;

    let secret_name = names.secret();
    let arn = match sm
        .create_secret()
        .name(&secret_name)
        .secret_string(credentials_json)
        .send()
        .await
    {
        Ok(o) => o.arn().unwrap_or_default().to_string(),
        Err(e) => {
            let text = sdk_err(e);
            if !text.contains("ResourceExists") {
                return Err(ProvisionError::Secrets(text));
            }
            sm.put_secret_value()
                .secret_id(&secret_name)
                .secret_string(credentials_json)
                .send()
                .await
                .map_err(|e| ProvisionError::Secrets(sdk_err(e)))?
                .arn()
                .unwrap_or_default()
                .to_string()
        }
    };
    out.env
        .insert("MDE_CREDENTIALS_SECRET_ID".into(), secret_name);
    out.secret_arn = arn;

    out.signing_key_arn = signing_key(sdk, names).await?;
    out.env
        .insert("SIGNING_KEY_ID".into(), out.signing_key_arn.clone());
    let (bus, events_queue_url) = event_bus(sdk, &sqs, names).await?;
    out.env.insert("EVENT_BUS_NAME".into(), bus.clone());
    out.event_bus = bus;
    out.events_queue_url = events_queue_url;
    Ok(out)
}

/// A queue's ARN.
async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, ProvisionError> {
    Ok(sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| ProvisionError::Sqs(sdk_err(e)))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default())
}

/// The manifest signing key (ECC_NIST_P256, SIGN_VERIFY), found by its alias or created.
async fn signing_key(
    sdk: &aws_config::SdkConfig,
    names: &StackNames,
) -> Result<String, ProvisionError> {
    let kms = aws_sdk_kms::Client::new(sdk);
    let alias = names.signing_key_alias();
    if let Ok(found) = kms.describe_key().key_id(&alias).send().await
        && let Some(arn) = found.key_metadata().and_then(|m| m.arn())
    {
        return Ok(arn.to_string());
    }
    let key = kms
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .description("Signs live response manifests")
        .send()
        .await
        .map_err(|e| ProvisionError::Kms(sdk_err(e)))?;
    let meta = key
        .key_metadata()
        .ok_or_else(|| ProvisionError::Kms("CreateKey returned no key".into()))?;
    kms.create_alias()
        .alias_name(&alias)
        .target_key_id(meta.key_id())
        .send()
        .await
        .map_err(|e| ProvisionError::Kms(sdk_err(e)))?;
    Ok(meta.arn().unwrap_or(meta.key_id()).to_string())
}

/// The bus completion events go to, with the example rule of
/// docs/deployment.md#5-route-the-completion-events: every event to a queue.
async fn event_bus(
    sdk: &aws_config::SdkConfig,
    sqs: &aws_sdk_sqs::Client,
    names: &StackNames,
) -> Result<(String, String), ProvisionError> {
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let bus = names.event_bus();
    if let Err(e) = events.create_event_bus().name(&bus).send().await {
        let text = sdk_err(e);
        if !text.contains("ResourceAlreadyExists") {
            return Err(ProvisionError::Events(text));
        }
    }
    let queue = sqs
        .create_queue()
        .queue_name(names.events_queue())
        .attributes(QueueAttributeName::SqsManagedSseEnabled, "true")
        .send()
        .await
        .map_err(|e| ProvisionError::Sqs(sdk_err(e)))?;
    let url = queue.queue_url().unwrap_or_default().to_string();
    let arn = queue_arn(sqs, &url).await?;
    let rule = format!("{}-run-finished", names.prefix);
    let rule_arn = events
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(run_finished_pattern().to_string())
        .send()
        .await
        .map_err(|e| ProvisionError::Events(sdk_err(e)))?
        .rule_arn()
        .unwrap_or_default()
        .to_string();
    // The queue lets only this rule send to it (what the template's example does too).
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}}
        }]
    });
    sqs.set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .send()
        .await
        .map_err(|e| ProvisionError::Sqs(sdk_err(e)))?;
    events
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("run-events-queue")
                .arn(arn)
                .build()
                .map_err(|e| ProvisionError::Events(e.to_string()))?,
        )
        .send()
        .await
        .map_err(|e| ProvisionError::Events(sdk_err(e)))?;
    Ok((bus, url))
}
