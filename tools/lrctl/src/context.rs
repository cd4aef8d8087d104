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

    /// A run id from the command line, refused when `--tenant` names another tenant than the
    /// run's.
    pub fn run_id(&self, text: &str) -> Result<shared::ids::RunId> {
        let run = run_id(text)?;
        if let Some(t) = &self.settings.tenant
            && run.tenant().as_ref() != Some(t)
        {
            return Err(Error::Usage(format!(
                "run {run} is not tenant {t}'s (--tenant / LR_TENANT); its id starts with its tenant's key"
            )));
        }
        Ok(run)
    }

    /// Where the run records `runs` and `verify --all` list lie: every run's, or `--tenant`'s.
    pub fn runs_prefix(&self) -> String {
        shared::store::keys::runs_prefix(self.settings.tenant.as_ref())
    }

    /// Where the evidence folders `verify --all` lists lie: every run's, or `--tenant`'s.
    pub fn evidence_prefix(&self) -> String {
        shared::store::keys::evidence_prefix(self.settings.tenant.as_ref())
    }
}

/// A run id from the command line (any tenant's: [`Ctx::run_id`] checks `--tenant`).
pub fn run_id(text: &str) -> Result<shared::ids::RunId> {
    shared::ids::RunId::parse(text.trim())
        .map_err(|e| Error::Usage(format!("{e} (find run ids with `lrctl runs`)")))
}
