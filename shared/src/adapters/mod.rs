//! The adapters behind the ports, at the edge: S3 ([`s3`]), SQS ([`sqs`]), the Defender
//! credentials in Secrets Manager ([`secrets`]), the Defender client as a port ([`defender`]), the
//! result-link downloader ([`http`]), the manifest signer in KMS ([`kms`]), completion events on
//! EventBridge ([`events`]), and in-memory ones for tests (`memory`, with the `testing` feature). Stages never name an adapter; the entry points build them once per cold start.

pub mod defender;
pub mod events;
pub mod http;
pub mod kms;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod s3;
pub mod secrets;
pub mod sqs;

/// The shared SDK configuration: region, credentials and endpoint from the environment.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}
