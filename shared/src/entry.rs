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
use crate::defender::{DefenderClient, DefenderConfig, TokenProvider, http_client};
use crate::library::{Bundle, BundleError, Librarian, LibrarySync};
use crate::messages::Delivery;
use crate::ports::{Notary, ObjectStore};
use crate::stages::Ports;
use crate::stages::settings::{
    CollectConfig, IntakeConfig, PinnedPlaybooks, PollConfig, SubmitConfig,
};
use crate::stages::{self, Done, StageError};
use crate::store::retention::Retention;

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
        })
    }
}

/// The clients of a stage that talks to Defender.
struct Clients {
    store: S3Store,
    queue: SqsQueue,
    defender: Defender,
    signer: KmsSigner,
    events: EventBridgeEvents,
}

impl Clients {
    fn notary(&self) -> Notary<'_> {
        Notary {
            signer: &self.signer,
            events: &self.events,
        }
    }
}

impl Clients {
    fn new<C>(
        settings: &Settings<C>,
        bucket: &str,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, InitError> {
        let cfg = &settings.defender;
        let http = http_client(cfg.http_timeout).map_err(|e| InitError::Other(e.to_string()))?;
        let creds = SecretsManagerCredentials::new(
            aws_sdk_secretsmanager::Client::new(sdk),
            &cfg.credentials_secret_id,
        );
        let auth = TokenProvider::new(creds, http.clone(), &cfg.login_base, &cfg.scope);
        Ok(Self {
            store: S3Store::new(s3_client(sdk), bucket).retaining(settings.retention),
            queue: SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
            defender: DefenderClient::new(http, &cfg.api_base, auth),
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

/// Alert in, playbook chosen, run recorded, submit job out.
pub struct Intake {
    /// The stage's settings.
    pub cfg: IntakeConfig,
    playbooks: Playbooks,
    store: S3Store,
    queue: SqsQueue,
}

/// The bundled playbooks, or the pinned playbook file `PLAYBOOKS_S3_URI` names, checked (intake
/// reads only this: it never needs the library files, nor may it read them).
pub async fn load_playbook_file(
    file: Option<&PinnedPlaybooks>,
    sdk: &aws_config::SdkConfig,
) -> Result<Playbooks, InitError> {
    Ok(match file {
        None => Playbooks::bundled()?,
        Some(f) => read_playbook_file(&f.uri, Some(&f.sha256), sdk).await?.0,
    })
}

/// The playbooks with their bundle: the bundled ones and library, or the playbook file at `uri`
/// with the library files it manages read from its folder beside it
/// (`<dir>/<library_folder>/<name>`). Submit loads this, checked, at cold start (and
/// `lrctl library` for the tenant): a declared file that is missing stops it, naming the file.
///
/// With `pin` (a deployment always pins: `PLAYBOOKS_SHA256`), a file with other bytes stops the
/// start, and every library file the pinned file manages must pin its own SHA-256: so whoever
/// may write the playbooks bucket can change neither the playbooks nor the scripts they run.
pub async fn load_playbooks(
    uri: Option<&str>,
    pin: Option<&str>,
    sdk: &aws_config::SdkConfig,
) -> Result<(Playbooks, Bundle), InitError> {
    let Some(uri) = uri else {
        let playbooks = Playbooks::bundled()?;
        let bundle = Bundle::bundled(playbooks.library_files())?;
        return Ok((playbooks, bundle));
    };
    let (playbooks, store, dir) = read_playbook_file(uri, pin, sdk).await?;
    let mut contents = std::collections::BTreeMap::new();
    for spec in playbooks.library_files().iter().filter(|s| !s.external) {
        if pin.is_some() && spec.sha256.is_none() {
            return Err(InitError::Library(BundleError {
                file: spec.name.clone(),
                problem: format!(
                    "the pinned playbook file {uri} must pin this file's sha256: its bytes come from the playbooks bucket, and only a pin in the pinned file keeps them from being swapped"
                ),
            }));
        }
        let key = format!("{dir}{}/{}", playbooks.library_folder(), spec.name);
        if let Some(bytes) = read_object(&store, &key).await? {
            contents.insert(spec.name.clone(), bytes);
        }
    }
    let bundle = Bundle::assemble(playbooks.library_files(), |name| contents.remove(name))?;
    Ok((playbooks, bundle))
}

/// The playbook file at `uri`, checked against `pin`; the store of its bucket and the folder it
/// is in (`dir/`).
async fn read_playbook_file(
    uri: &str,
    pin: Option<&str>,
    sdk: &aws_config::SdkConfig,
) -> Result<(Playbooks, S3Store, String), InitError> {
    let (bucket, key) = uri
        .strip_prefix("s3://")
        .and_then(|p| p.split_once('/'))
        .ok_or_else(|| {
            InitError::Other(format!("PLAYBOOKS_S3_URI {uri}: expected s3://bucket/key"))
        })?;
    let store = S3Store::new(s3_client(sdk), bucket);
    let body = read_object(&store, key)
        .await?
        .ok_or_else(|| InitError::Other(format!("PLAYBOOKS_S3_URI {uri}: no such object")))?;
    check_pin(uri, &body, pin)?;
    let text = String::from_utf8(body)
        .map_err(|_| InitError::Other(format!("PLAYBOOKS_S3_URI {uri}: not UTF-8 text")))?;
    let playbooks = Playbooks::from_toml(&text)?;
    let dir = key
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    Ok((playbooks, store, dir))
}

/// The playbook file's bytes against the deployment's pin: any other bytes stop the start.
pub fn check_pin(uri: &str, body: &[u8], pin: Option<&str>) -> Result<(), InitError> {
    let Some(pin) = pin else {
        return Ok(());
    };
    let actual = crate::hash::sha256_hex(body);
    if actual.eq_ignore_ascii_case(pin) {
        return Ok(());
    }
    Err(InitError::Other(format!(
        "PLAYBOOKS_S3_URI {uri} has SHA-256 {actual}, but the deployment pins {pin} (PLAYBOOKS_SHA256): refusing to start on a playbook file nobody deployed. If the change is yours, deploy its hash"
    )))
}

async fn read_object(store: &S3Store, key: &str) -> Result<Option<Vec<u8>>, InitError> {
    store
        .get(key)
        .await
        .map_err(|e| InitError::Other(format!("{}: {e}", store.location(key))))
        .map(|o| o.map(|s| s.body.to_vec()))
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
        Ok(Self {
            playbooks: load_playbook_file(cfg.playbooks.as_ref(), sdk).await?,
            store: S3Store::new(s3_client(sdk), &cfg.bucket),
            queue: SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
            cfg,
        })
    }

    async fn process(&self, msg: Delivery) -> Result<Done, StageError> {
        stages::intake::handle(
            &self.cfg,
            &self.playbooks,
            &self.store,
            &self.queue,
            &msg.body,
            OffsetDateTime::now_utc(),
        )
        .await
    }

    fn dead_letters(&self) -> (&SqsQueue, &str) {
        (&self.queue, &self.cfg.dead_letter_queue_url)
    }
}

/// One live response per run, paced under Defender's limits, its library files in place first.
pub struct Submit {
    /// The stage's settings.
    pub cfg: SubmitConfig,
    clients: Clients,
    librarian: Librarian,
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
        Ok(Self {
            clients: Clients::new(&settings, &cfg.bucket, sdk)?,
            librarian: Librarian::new(bundle, cfg.library_sync).rendering(playbooks.file_sha256()),
            cfg: settings.stage,
        })
    }

    async fn process(&self, msg: Delivery) -> Result<Done, StageError> {
        let c = &self.clients;
        let library = LibrarySync {
            keeper: &self.librarian,
            api: &c.defender,
        };
        stages::submit::handle(
            &self.cfg,
            Ports::new(&c.store, &c.queue, &c.defender, c.notary(), &SystemClock),
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
    /// The stage's settings.
    pub cfg: PollConfig,
    clients: Clients,
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
        Ok(Self {
            clients: Clients::new(&settings, &settings.stage.bucket, sdk)?,
            cfg: settings.stage,
        })
    }

    async fn process(&self, msg: Delivery) -> Result<Done, StageError> {
        let c = &self.clients;
        stages::poll::handle(
            &self.cfg,
            Ports::new(&c.store, &c.queue, &c.defender, c.notary(), &SystemClock),
            &c.defender,
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
    /// The stage's settings.
    pub cfg: CollectConfig,
    clients: Clients,
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
        Ok(Self {
            clients: Clients::new(&settings, &settings.stage.bucket, sdk)?,
            fetch: HttpFetch::new(settings.stage.download_timeout).map_err(InitError::Other)?,
            cfg: settings.stage,
        })
    }

    async fn process(&self, msg: Delivery) -> Result<Done, StageError> {
        let c = &self.clients;
        stages::collect::handle(
            &self.cfg,
            Ports::new(&c.store, &c.queue, &c.defender, c.notary(), &SystemClock),
            &self.fetch,
            &msg,
        )
        .await
    }

    fn dead_letters(&self) -> (&SqsQueue, &str) {
        (&self.clients.queue, &self.cfg.dead_letter_queue_url)
    }
}
