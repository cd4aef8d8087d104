//! The four functions' entry points: clients built once per cold start from the environment, and a
//! batch handler. The Lambda binaries and the local runner both call these.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use time::OffsetDateTime;

use crate::alerts::playbook::{PlaybookError, Playbooks};
use crate::aws::{S3Store, SecretsManagerCredentials, SqsQueue, s3_client};
use crate::batch;
use crate::clock::SystemClock;
use crate::config::{ConfigError, Env};
use crate::defender::{DefenderClient, DefenderConfig, TokenProvider, http_client};
use crate::ports::{HttpFetch, ObjectStore};
use crate::stages;
use crate::stages::settings::{CollectConfig, IntakeConfig, PollConfig, SubmitConfig};
use crate::store::retention::Retention;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Playbooks(#[from] PlaybookError),
    #[error("{0}")]
    Other(String),
}

pub type Defender = DefenderClient<SecretsManagerCredentials>;

fn defender(cfg: &DefenderConfig, sdk: &aws_config::SdkConfig) -> Result<Defender, InitError> {
    let http = http_client(cfg.http_timeout).map_err(|e| InitError::Other(e.to_string()))?;
    let creds = SecretsManagerCredentials::new(
        aws_sdk_secretsmanager::Client::new(sdk),
        &cfg.credentials_secret_id,
    );
    let auth = TokenProvider::new(creds, http.clone(), &cfg.login_base, &cfg.scope);
    Ok(DefenderClient::new(http, &cfg.api_base, auth))
}

/// Everything a stage that talks to Defender reads from its environment, checked (no AWS calls).
pub struct Settings<C> {
    pub stage: C,
    pub defender: DefenderConfig,
    /// Object Lock retention for what it writes under `evidence/`.
    pub retention: Option<Retention>,
}

impl<C> Settings<C> {
    fn from_env(
        env: &dyn Env,
        stage: impl FnOnce(&dyn Env) -> Result<C, ConfigError>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            stage: stage(env)?,
            defender: DefenderConfig::from_env(env)?,
            retention: Retention::from_env(env)?,
        })
    }
}

/// Messages handled at once within a batch (collect handles one at a time: memory stays bounded).
const CONCURRENCY: usize = 10;

pub struct Intake {
    pub cfg: IntakeConfig,
    playbooks: Playbooks,
    store: S3Store,
    queue: SqsQueue,
}

impl Intake {
    /// Every setting intake reads, checked (no AWS calls).
    pub fn config(env: &dyn Env) -> Result<IntakeConfig, ConfigError> {
        IntakeConfig::from_env(env)
    }

    pub async fn from_env(env: &dyn Env, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let cfg = Self::config(env)?;
        let store = S3Store::new(s3_client(sdk), &cfg.bucket);
        let playbooks = match &cfg.playbooks_s3_uri {
            None => Playbooks::bundled()?,
            Some(uri) => {
                let (bucket, key) = uri[5..].split_once('/').unwrap_or_default();
                let other = S3Store::new(s3_client(sdk), bucket);
                let body = other
                    .get(key)
                    .await
                    .map_err(|e| InitError::Other(format!("PLAYBOOKS_S3_URI {uri}: {e}")))?
                    .ok_or_else(|| {
                        InitError::Other(format!("PLAYBOOKS_S3_URI {uri}: no such object"))
                    })?;
                let text = String::from_utf8(body.body.to_vec()).map_err(|_| {
                    InitError::Other(format!("PLAYBOOKS_S3_URI {uri}: not UTF-8 text"))
                })?;
                Playbooks::from_toml(&text)?
            }
        };
        Ok(Self {
            cfg,
            playbooks,
            store,
            queue: SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        batch::handle(
            event,
            "intake",
            &self.cfg.dead_letter_queue_url,
            &self.queue,
            CONCURRENCY,
            |msg| async move {
                stages::intake::handle(
                    &self.cfg,
                    &self.playbooks,
                    &self.store,
                    &self.queue,
                    &msg.body,
                    OffsetDateTime::now_utc(),
                )
                .await
            },
        )
        .await
    }
}

pub struct Submit {
    pub cfg: SubmitConfig,
    store: S3Store,
    queue: SqsQueue,
    defender: Defender,
}

impl Submit {
    /// Every setting submit reads, checked (no AWS calls).
    pub fn config(env: &dyn Env) -> Result<Settings<SubmitConfig>, ConfigError> {
        Settings::from_env(env, SubmitConfig::from_env)
    }

    pub async fn from_env(env: &dyn Env, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let Settings {
            stage: cfg,
            defender: defender_cfg,
            retention,
        } = Self::config(env)?;
        Ok(Self {
            store: S3Store::new(s3_client(sdk), &cfg.bucket).retaining(retention),
            queue: SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
            defender: defender(&defender_cfg, sdk)?,
            cfg,
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        batch::handle(
            event,
            "submit",
            &self.cfg.dead_letter_queue_url,
            &self.queue,
            CONCURRENCY,
            |msg| async move {
                stages::submit::handle(
                    &self.cfg,
                    &self.store,
                    &self.queue,
                    &self.defender,
                    &SystemClock,
                    &msg,
                )
                .await
            },
        )
        .await
    }
}

pub struct Poll {
    pub cfg: PollConfig,
    store: S3Store,
    queue: SqsQueue,
    defender: Defender,
}

impl Poll {
    /// Every setting poll reads, checked (no AWS calls).
    pub fn config(env: &dyn Env) -> Result<Settings<PollConfig>, ConfigError> {
        Settings::from_env(env, PollConfig::from_env)
    }

    pub async fn from_env(env: &dyn Env, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let Settings {
            stage: cfg,
            defender: defender_cfg,
            retention,
        } = Self::config(env)?;
        Ok(Self {
            store: S3Store::new(s3_client(sdk), &cfg.bucket).retaining(retention),
            queue: SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
            defender: defender(&defender_cfg, sdk)?,
            cfg,
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        batch::handle(
            event,
            "poll",
            &self.cfg.dead_letter_queue_url,
            &self.queue,
            CONCURRENCY,
            |msg| async move {
                stages::poll::handle(
                    &self.cfg,
                    &self.store,
                    &self.queue,
                    &self.defender,
                    &SystemClock,
                    &msg,
                )
                .await
            },
        )
        .await
    }
}

pub struct Collect {
    pub cfg: CollectConfig,
    store: S3Store,
    queue: SqsQueue,
    defender: Defender,
    fetch: HttpFetch,
}

impl Collect {
    /// Every setting collect reads, checked (no AWS calls).
    pub fn config(env: &dyn Env) -> Result<Settings<CollectConfig>, ConfigError> {
        Settings::from_env(env, CollectConfig::from_env)
    }

    pub async fn from_env(env: &dyn Env, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let Settings {
            stage: cfg,
            defender: defender_cfg,
            retention,
        } = Self::config(env)?;
        Ok(Self {
            store: S3Store::new(s3_client(sdk), &cfg.bucket).retaining(retention),
            queue: SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
            defender: defender(&defender_cfg, sdk)?,
            fetch: HttpFetch::new(cfg.download_timeout).map_err(InitError::Other)?,
            cfg,
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        batch::handle(
            event,
            "collect",
            &self.cfg.dead_letter_queue_url,
            &self.queue,
            1,
            |msg| async move {
                stages::collect::handle(
                    &self.cfg,
                    &self.store,
                    &self.queue,
                    &self.defender,
                    &self.fetch,
                    &SystemClock,
                    &msg,
                )
                .await
            },
        )
        .await
    }
}
