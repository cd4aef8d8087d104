//! What every command works with, built once from the settings: the evidence bucket, the SQS and
//! KMS clients, the output mode, and run ids as typed on the command line.

use crate::bucket;
use crate::config;
use crate::error::{Error, Result};

/// What every command works with: the settings, the SDK configuration and the output mode.
pub struct Ctx {
    pub settings: config::Settings,
    pub sdk: aws_config::SdkConfig,
    pub json: bool,
}

impl Ctx {
    /// The evidence bucket (an error naming `--bucket` / `LR_BUCKET` if not configured).
    pub fn bucket(&self) -> Result<bucket::Bucket> {
        Ok(bucket::Bucket::new(&self.sdk, self.settings.bucket()?))
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }

    pub fn kms(&self) -> aws_sdk_kms::Client {
        aws_sdk_kms::Client::new(&self.sdk)
    }
}

/// A run id from the command line.
pub fn run_id(text: &str) -> Result<shared::ids::RunId> {
    shared::ids::RunId::parse(text.trim())
        .map_err(|e| Error::Usage(format!("{e} (find run ids with `lrctl runs`)")))
}
