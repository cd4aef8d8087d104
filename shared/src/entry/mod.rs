//! The four functions as one shape: a [`Function`] has a name, a batch concurrency, settings read
//! from the environment (checked without AWS calls), clients built once per cold start, and what it
//! does with one message. [`handle`] turns a batch into a partial batch response and [`run`] is a
//! Lambda binary's whole `main`; the local runner calls [`Function::build`] and [`handle`] too, so
//! the four functions are wired in one place.

use std::future::Future;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use time::OffsetDateTime;

use crate::adapters::events::{EventBridgeEvents, event_bus};
use crate::adapters::http::HttpFetch;
use crate::adapters::kms::{KmsSigner, signing_key_id};
use crate::adapters::s3::{S3Store, s3_client};
use crate::adapters::secrets::SecretsManagerCredentials;
use crate::adapters::sqs::SqsQueue;
use crate::alerts::playbook::{PlaybookError, Playbooks};
use crate::batch;
use crate::clock::SystemClock;
use crate::config::{ConfigError, Env, ProcessEnv};
use crate::defender::{DefenderClient, DefenderConfig};
use crate::library::{BundleError, Librarian, LibrarySync};
use crate::messages::Delivery;
use crate::ports::Notary;
use crate::stages::Ports;
use crate::stages::intake::Rules;
use crate::stages::settings::{
    CollectConfig, IntakeConfig, PinnedFile, PollConfig, SubmitConfig, pinned_tenants,
};
use crate::stages::{self, Done, StageError};
use crate::store::retention::Retention;
use crate::tenants::{RegistryError, Tenancy};

mod files;
mod tenants;

pub use files::{check_pin, load_playbook_file, load_playbooks, load_tenancy};
use tenants::{Credentials, Served};

/// Why a function could not start: fix the setting, the playbook file or the resource named.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// An environment variable is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The playbook file does not load.
    #[error(transparent)]
    Playbooks(#[from] PlaybookError),
    /// A library file the playbook file declares cannot be had (missing, too large, not the pinned
    /// version).
    #[error(transparent)]
    Library(#[from] BundleError),
    /// The tenant registry does not parse or names something invalid.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Anything else at start-up, e.g. the playbook object cannot be read or an HTTP client cannot be built.
    #[error("{0}")]
    Other(String),
}

/// The production Defender client: credentials from Secrets Manager.
pub type Defender = DefenderClient<SecretsManagerCredentials>;

/// One Lambda function of the pipeline.
pub trait Function: Sized + Send + Sync + 'static {
    /// The stage's name in logs, metrics and reject attributes.
    const NAME: &'static str;
    /// Messages handled at once within a batch (collect takes one: memory stays bounded).
    const CONCURRENCY: usize;
    /// Everything it reads from its environment.
    type Settings;

    /// Its settings, checked (no AWS calls).
    fn config(env: &dyn Env) -> Result<Self::Settings, ConfigError>;

    /// Its clients, built once per cold start.
    fn build(
        env: &dyn Env,
        sdk: &aws_config::SdkConfig,
    ) -> impl Future<Output = Result<Self, InitError>>;

    /// What it does with one message.
    fn process(&self, msg: Delivery) -> impl Future<Output = Result<Done, StageError>> + Send;

    /// Where it sends the messages it refuses.
    fn dead_letters(&self) -> (&SqsQueue, &str);
}

/// One SQS batch through a function: a span and a log line per message, refused messages to the
/// dead-letter queue with their reason, the rest reported for redelivery.
pub async fn handle<F: Function>(f: &F, event: SqsEvent) -> SqsBatchResponse {
    let (queue, dead_letter_queue_url) = f.dead_letters();
    batch::handle(
        event,
        F::NAME,
        dead_letter_queue_url,
        queue,
        F::CONCURRENCY,
        |msg| f.process(msg),
    )
    .await
}

/// A Lambda binary's `main`: logging, the AWS SDK, the function built once, then every batch.
pub async fn run<F: Function>() -> Result<(), lambda_runtime::Error> {
    crate::logging::init();
    let sdk = crate::adapters::sdk_config().await;
    let function = F::build(&ProcessEnv, &sdk).await?;
    let function = &function;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<SqsEvent>| async move {
            Ok::<_, lambda_runtime::Error>(handle(function, event.payload).await)
        },
    ))
    .await
}

/// Everything a stage that talks to Defender reads from its environment, checked (no AWS calls).
pub struct Settings<C> {
    /// The stage's own settings.
    pub stage: C,
    /// How to reach Defender.
    pub defender: DefenderConfig,
    /// Object Lock retention for what it writes under `evidence/`.
    pub retention: Option<Retention>,
    /// The KMS key that signs manifests (`SIGNING_KEY_ID`).
    pub signing_key_id: String,
    /// The bus completion events go to (`EVENT_BUS_NAME`, `default` if unset).
    pub event_bus: String,
    /// The tenant registry, pinned (`None`: the deployment serves one tenant).
    pub tenants: Option<PinnedFile>,
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
            signing_key_id: signing_key_id(env)?,
            event_bus: event_bus(env),
            tenants: pinned_tenants(env)?,
        })
    }
}

/// The clients of a stage that talks to Defender, each tenant's Defender among them (with the
/// stage's settings for that tenant, `C`).
struct Clients<C> {
    store: S3Store,
    queue: SqsQueue,
    served: Served<C>,
    signer: KmsSigner,
    events: EventBridgeEvents,
}

impl<C> Clients<C> {
    fn notary(&self) -> Notary<'_> {
        Notary {
            signer: &self.signer,
            events: &self.events,
        }
    }

    /// The clients for `settings`, with `make` building the stage's settings for each tenant from
    /// its budget.
    async fn new<S>(
        settings: &Settings<S>,
        secret: Credentials,
        bucket: &str,
        base_budget: &crate::budget::BudgetConfig,
        tenancy: &Tenancy,
        sdk: &aws_config::SdkConfig,
        make: impl FnMut(Option<&crate::tenants::Tenant>, crate::budget::BudgetConfig) -> C,
    ) -> Result<Self, InitError> {
        Ok(Self {
            store: S3Store::new(s3_client(sdk), bucket).retaining(settings.retention),
            queue: SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
            served: Served::build(tenancy, secret, &settings.defender, base_budget, sdk, make)?,
            signer: KmsSigner::new(
                aws_sdk_kms::Client::from_conf(
                    aws_sdk_kms::config::Builder::from(sdk)
                        .timeout_config(notary_timeouts())
                        .build(),
                ),
                &settings.signing_key_id,
            ),
            events: EventBridgeEvents::new(
                aws_sdk_eventbridge::Client::from_conf(
                    aws_sdk_eventbridge::config::Builder::from(sdk)
                        .timeout_config(notary_timeouts())
                        .build(),
                ),
                &settings.event_bus,
            ),
        })
    }
}

/// KMS and EventBridge calls end within the event's publish timeout, retries included, so that a
/// claim on a run's event never lapses under a live publish (see `crate::custody::event`).
fn notary_timeouts() -> aws_config::timeout::TimeoutConfig {
    let whole = crate::custody::event::PUBLISH_TIMEOUT;
    aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(whole)
        .operation_attempt_timeout(whole / 3)
        .build()
}

/// Messages handled at once within a batch by the stages that are not collect.
const CONCURRENCY: usize = 10;

/// Alert in, tenant and sender checked, playbook chosen, run recorded, submit job out.
pub struct Intake {
    /// The stage's settings.
    pub cfg: IntakeConfig,
    playbooks: Playbooks,
    tenancy: Tenancy,
    store: S3Store,
    queue: SqsQueue,
}

impl Function for Intake {
    const NAME: &'static str = "intake";
    const CONCURRENCY: usize = CONCURRENCY;
    type Settings = IntakeConfig;

    fn config(env: &dyn Env) -> Result<IntakeConfig, ConfigError> {
        IntakeConfig::from_env(env)
    }

    async fn build(env: &dyn Env, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let cfg = Self::config(env)?;
        let playbooks = load_playbook_file(cfg.playbooks.as_ref(), sdk).await?;
        Ok(Self {
            tenancy: load_tenancy(cfg.tenants.as_ref(), Some(&playbooks), sdk).await?,
            playbooks,
            store: S3Store::new(s3_client(sdk), &cfg.bucket),
            queue: SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
            cfg,
        })
    }

    async fn process(&self, msg: Delivery) -> Result<Done, StageError> {
        let rules = Rules {
            playbooks: &self.playbooks,
            tenancy: &self.tenancy,
        };
        stages::intake::handle(
            &self.cfg,
            rules,
            &self.store,
            &self.queue,
            &msg,
            OffsetDateTime::now_utc(),
        )
        .await
    }

    fn dead_letters(&self) -> (&SqsQueue, &str) {
        (&self.queue, &self.cfg.dead_letter_queue_url)
    }
}

/// One live response per run, paced under its tenant's Defender limits, its library files in
/// place first.
pub struct Submit {
    /// The stage's settings (the deployment's budget; each tenant has its own).
    pub cfg: SubmitConfig,
    clients: Clients<(SubmitConfig, Librarian)>,
}

impl Function for Submit {
    const NAME: &'static str = "submit";
    const CONCURRENCY: usize = CONCURRENCY;
    type Settings = Settings<SubmitConfig>;

    fn config(env: &dyn Env) -> Result<Self::Settings, ConfigError> {
        Settings::from_env(env, SubmitConfig::from_env)
    }

    async fn build(env: &dyn Env, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let settings = Self::config(env)?;
        let cfg = &settings.stage;
        let file = cfg.playbooks.as_ref();
        let (playbooks, bundle) = load_playbooks(
            file.map(|f| f.uri.as_str()),
            file.map(|f| f.sha256.as_str()),
            sdk,
        )
        .await?;
        let tenancy = load_tenancy(settings.tenants.as_ref(), Some(&playbooks), sdk).await?;
        let clients = Clients::new(
            &settings,
            Credentials::Actions,
            &cfg.bucket,
            &cfg.budget,
            &tenancy,
            sdk,
            |tenant, budget| {
                let library_sync = tenant
                    .and_then(|t| t.library_sync)
                    .unwrap_or(cfg.library_sync);
                let librarian =
                    Librarian::new(bundle.clone(), library_sync).rendering(playbooks.file_sha256());
                let cfg = SubmitConfig {
                    budget,
                    library_sync,
                    ..cfg.clone()
                };
                (cfg, librarian)
            },
        )
        .await?;
        Ok(Self {
            clients,
            cfg: settings.stage,
        })
    }

    async fn process(&self, msg: Delivery) -> Result<Done, StageError> {
        let c = &self.clients;
        let t = c.served.of(&msg)?;
        let (cfg, librarian) = &t.cfg;
        let library = LibrarySync {
            keeper: librarian,
            api: &t.defender,
        };
        stages::submit::handle(
            cfg,
            Ports::new(&c.store, &c.queue, &t.defender, c.notary(), &SystemClock),
            library,
            &msg,
        )
        .await
    }

    fn dead_letters(&self) -> (&SqsQueue, &str) {
        (&self.clients.queue, &self.cfg.dead_letter_queue_url)
    }
}

/// Follows each action until it ends, cancels it at the deadline, hands results to collect.
pub struct Poll {
    /// The stage's settings (the deployment's budget; each tenant has its own).
    pub cfg: PollConfig,
    clients: Clients<PollConfig>,
}

impl Function for Poll {
    const NAME: &'static str = "poll";
    const CONCURRENCY: usize = CONCURRENCY;
    type Settings = Settings<PollConfig>;

    fn config(env: &dyn Env) -> Result<Self::Settings, ConfigError> {
        Settings::from_env(env, PollConfig::from_env)
    }

    async fn build(env: &dyn Env, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let settings = Self::config(env)?;
        let cfg = &settings.stage;
        let tenancy = load_tenancy(settings.tenants.as_ref(), None, sdk).await?;
        let clients = Clients::new(
            &settings,
            Credentials::Reads,
            &cfg.bucket,
            &cfg.budget,
            &tenancy,
            sdk,
            |_, budget| PollConfig {
                budget,
                ..cfg.clone()
            },
        )
        .await?;
        Ok(Self {
            clients,
            cfg: settings.stage,
        })
    }

    async fn process(&self, msg: Delivery) -> Result<Done, StageError> {
        let c = &self.clients;
        let t = c.served.of(&msg)?;
        stages::poll::handle(
            &t.cfg,
            Ports::new(&c.store, &c.queue, &t.defender, c.notary(), &SystemClock),
            &t.defender,
            &msg,
        )
        .await
    }

    fn dead_letters(&self) -> (&SqsQueue, &str) {
        (&self.clients.queue, &self.cfg.dead_letter_queue_url)
    }
}

/// Copies one result package into evidence.
pub struct Collect {
    /// The stage's settings (the deployment's budget; each tenant has its own).
    pub cfg: CollectConfig,
    clients: Clients<CollectConfig>,
    fetch: HttpFetch,
}

impl Function for Collect {
    const NAME: &'static str = "collect";
    const CONCURRENCY: usize = 1;
    type Settings = Settings<CollectConfig>;

    fn config(env: &dyn Env) -> Result<Self::Settings, ConfigError> {
        Settings::from_env(env, CollectConfig::from_env)
    }

    async fn build(env: &dyn Env, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let settings = Self::config(env)?;
        let cfg = &settings.stage;
        let tenancy = load_tenancy(settings.tenants.as_ref(), None, sdk).await?;
        let clients = Clients::new(
            &settings,
            Credentials::Actions,
            &cfg.bucket,
            &cfg.budget,
            &tenancy,
            sdk,
            |_, budget| CollectConfig {
                budget,
                ..cfg.clone()
            },
        )
        .await?;
        Ok(Self {
            clients,
            fetch: HttpFetch::new(settings.stage.download_timeout).map_err(InitError::Other)?,
            cfg: settings.stage,
        })
    }

    async fn process(&self, msg: Delivery) -> Result<Done, StageError> {
        let c = &self.clients;
        let t = c.served.of(&msg)?;
        stages::collect::handle(
            &t.cfg,
            Ports::new(&c.store, &c.queue, &t.defender, c.notary(), &SystemClock),
            &self.fetch,
            &msg,
        )
        .await
    }

    fn dead_letters(&self) -> (&SqsQueue, &str) {
        (&self.clients.queue, &self.cfg.dead_letter_queue_url)
    }
}
