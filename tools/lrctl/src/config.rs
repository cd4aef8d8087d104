//! Where lrctl finds the deployment it talks to. One rule for every setting, so nobody has to
//! guess which value won: a flag beats the environment, the environment beats `--env-file`, and
//! the env file beats the CloudFormation stack's outputs (`--stack` / `LR_STACK`). The env file
//! may also carry the AWS endpoint, region and keys; the SDK configuration is built from them
//! explicitly (setting process variables is unsafe in Rust 2024).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The settings as given on the command line (every one also has a variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// KEY=VALUE lines: LR_* settings, the MDE_* settings `library` reaches Defender with, and
    /// AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (e.g. the local
    /// stack's .local/lrctl.env).
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// A CloudFormation stack whose outputs fill in any setting not given otherwise [env: LR_STACK].
    #[arg(long, global = true, value_name = "NAME")]
    pub stack: Option<String>,
    /// The evidence bucket [env: LR_BUCKET].
    #[arg(long, global = true, value_name = "NAME")]
    pub bucket: Option<String>,
    /// The KMS key that signs manifests [env: LR_SIGNING_KEY_ID].
    #[arg(long, global = true, value_name = "ARN")]
    pub signing_key_id: Option<String>,
    /// The alerts queue [env: LR_ALERTS_QUEUE_URL].
    #[arg(long, global = true, value_name = "URL")]
    pub alerts_queue_url: Option<String>,
    /// Each stage's input queue: alerts=URL,submit=URL,poll=URL,collect=URL [env: LR_QUEUE_URLS].
    #[arg(long, global = true, value_name = "STAGE=URL,...")]
    pub queue_urls: Option<String>,
    /// Each stage's dead-letter queue, the same way [env: LR_DLQ_URLS].
    #[arg(long, global = true, value_name = "STAGE=URL,...")]
    pub dlq_urls: Option<String>,
    /// Only this tenant's runs (a deployment with a tenant registry): `runs` and `verify --all`
    /// list under its prefix alone (all an analyst of one tenant may list), and a run of another
    /// tenant is refused [env: LR_TENANT].
    #[arg(long, global = true, value_name = "KEY")]
    pub tenant: Option<String>,
}

/// The pipeline's stages, by the name of their queue, in order.
pub const STAGES: [&str; 4] = ["alerts", "submit", "poll", "collect"];

/// A stage name as a user or a dead-letter attribute may write it (`intake` is the alerts stage).
pub fn stage_name(s: &str) -> Option<&'static str> {
    let s = s.trim().to_ascii_lowercase();
    let s = if s == "intake" { "alerts" } else { s.as_str() };
    STAGES.iter().copied().find(|x| *x == s)
}

/// Everything resolved: what lrctl needs to reach the deployment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub bucket: Option<String>,
    pub signing_key_id: Option<String>,
    pub alerts_queue_url: Option<String>,
    pub queue_urls: BTreeMap<&'static str, String>,
    pub dlq_urls: BTreeMap<&'static str, String>,
    /// AWS_* values from the environment or the env file, for the SDK.
    pub aws: BTreeMap<&'static str, String>,
    /// The playbook file `library` reads (`LR_PLAYBOOKS`: a path or `s3://bucket/key`); `None`:
    /// the bundled playbooks. A subcommand's `--playbooks` beats it.
    pub playbooks: Option<String>,
    /// The MDE_* values from the environment or the env file ([`MDE_VARS`]), read the way the
    /// functions read them ([`Settings::defender`]).
    pub mde: BTreeMap<String, String>,
    /// `--tenant` (`LR_TENANT`): only this tenant's runs.
    pub tenant: Option<shared::ids::TenantKey>,
    /// The tenant registry `tenants check` reads (`LR_TENANTS`, else the deployment's
    /// `TENANTS_S3_URI`: a path or `s3://bucket/key`).
    pub tenants: Option<String>,
}

/// A missing setting: names the flag and the variable that supply it.
fn missing(what: &str, flag: &str, var: &str) -> Error {
    Error::Usage(format!(
        "no {what}: pass {flag}, set {var}, or name the deployment with --stack NAME (LR_STACK) \
         or --env-file FILE"
    ))
}

impl Settings {
    pub fn bucket(&self) -> Result<&str> {
        self.bucket
            .as_deref()
            .ok_or_else(|| missing("evidence bucket", "--bucket", "LR_BUCKET"))
    }

    pub fn signing_key_id(&self) -> Result<&str> {
        self.signing_key_id
            .as_deref()
            .ok_or_else(|| missing("signing key", "--signing-key-id", "LR_SIGNING_KEY_ID"))
    }

    /// The alerts queue: `LR_ALERTS_QUEUE_URL`, else the `alerts` entry of the stage queues.
    pub fn alerts_queue_url(&self) -> Result<&str> {
        self.alerts_queue_url
            .as_deref()
            .or(self.queue_urls.get("alerts").map(String::as_str))
            .ok_or_else(|| missing("alerts queue", "--alerts-queue-url", "LR_ALERTS_QUEUE_URL"))
    }

    /// The input queue of `stage` (where a redrive sends its dead letters back).
    pub fn queue_url(&self, stage: &str) -> Result<&str> {
        if stage == "alerts" {
            return self.alerts_queue_url();
        }
        self.queue_urls
            .get(stage)
            .map(String::as_str)
            .ok_or_else(|| missing(&format!("{stage} queue"), "--queue-urls", "LR_QUEUE_URLS"))
    }

    /// How to reach Defender, from the MDE_* values as the functions read them (cloud preset,
    /// URL overrides, token scope, the credentials secret); a usage error naming the variable.
    pub fn defender(&self) -> Result<shared::defender::DefenderConfig> {
        shared::defender::DefenderConfig::from_env(&self.mde).map_err(|e| {
            Error::Usage(format!(
                "{e} (`library` talks to Defender as the functions do: set the MDE_* variables \
                 the deployment's functions have, in the environment or the --env-file; a \
                 stack's outputs do not carry them)"
            ))
        })
    }

    /// The dead-letter queues of `stage`, or of every stage configured.
    pub fn dlqs(&self, stage: Option<&str>) -> Result<Vec<(&'static str, String)>> {
        let all: Vec<_> = self
            .dlq_urls
            .iter()
            .filter(|(s, _)| stage.is_none_or(|x| x == **s))
            .map(|(s, u)| (*s, u.clone()))
            .collect();
        if all.is_empty() {
            let what = stage.map_or("dead-letter queues".into(), |s| {
                format!("{s} dead-letter queue")
            });
            return Err(missing(&what, "--dlq-urls", "LR_DLQ_URLS"));
        }
        let mut all = all;
        all.sort_by_key(|(s, _)| STAGES.iter().position(|x| x == s));
        Ok(all)
    }
}

/// Reads KEY=VALUE lines (blank lines and `#` comments skipped, `export ` and quotes allowed).
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read the env file {}: {e}", path.display())))?;
    parse_env_file(&text).map_err(|(n, line)| {
        Error::Usage(format!(
            "{}:{n}: expected KEY=VALUE, got {line:?}",
            path.display()
        ))
    })
}

/// The KEY=VALUE lines of an env file; an error is the line number and line.
pub fn parse_env_file(
    text: &str,
) -> std::result::Result<BTreeMap<String, String>, (usize, String)> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err((i + 1, raw.chars().take(80).collect()));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((i + 1, raw.chars().take(80).collect()));
        }
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
            .unwrap_or(v);
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Parses `alerts=URL,submit=URL,...` (from `source`, named in errors).
pub fn parse_stage_urls(text: &str, source: &str) -> Result<BTreeMap<&'static str, String>> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (stage, url) = part
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("{source}: expected STAGE=URL, got {part:?}")))?;
        let stage = stage_name(stage).ok_or_else(|| {
            Error::Usage(format!(
                "{source}: unknown stage {stage:?} (stages: {})",
                STAGES.join(", ")
            ))
        })?;
        out.insert(stage, url.trim().to_string());
    }
    Ok(out)
}

/// The LR_* variables and the stack output each falls back to.
const FROM_STACK: [(&str, &str); 3] = [
    ("LR_BUCKET", "EvidenceBucketName"),
    ("LR_SIGNING_KEY_ID", "SigningKeyArn"),
    ("LR_ALERTS_QUEUE_URL", "AlertsQueueUrl"),
];

/// The AWS variables the SDK configuration is built from.
pub const AWS_VARS: [&str; 6] = [
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// The Defender variables `library` reads, as the functions do (see
/// `shared::defender::DefenderConfig::from_env`).
pub const MDE_VARS: [&str; 6] = [
    "MDE_CLOUD",
    "MDE_API_BASE_URL",
    "MDE_LOGIN_BASE_URL",
    "MDE_TOKEN_SCOPE",
    "MDE_CREDENTIALS_SECRET_ID",
    "MDE_HTTP_TIMEOUT_SECS",
];

/// The stage queue settings a stack's outputs give: `LR_QUEUE_URLS` and `LR_DLQ_URLS` text.
fn stage_urls_from_outputs(outputs: &BTreeMap<String, String>, dead: bool) -> Option<String> {
    let parts: Vec<String> = STAGES
        .iter()
        .filter_map(|s| {
            let mut name: String = s[..1].to_uppercase() + &s[1..];
            name.push_str(if dead {
                "DeadLetterQueueUrl"
            } else {
                "QueueUrl"
            });
            outputs.get(&name).map(|u| format!("{s}={u}"))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// Resolves every setting: flags, then `env` (the process environment), then the env file, then
/// the stack's outputs (`stack_outputs` is only called when a stack is named and a setting is
/// still missing).
pub async fn resolve<F, Fut>(
    args: &SettingsArgs,
    env: &dyn Fn(&str) -> Option<String>,
    stack_outputs: F,
) -> Result<Settings>
where
    F: FnOnce(String, BTreeMap<&'static str, String>) -> Fut,
    Fut: std::future::Future<Output = Result<BTreeMap<String, String>>>,
{
    let file = match &args.env_file {
        Some(p) => read_env_file(p)?,
        None => BTreeMap::new(),
    };
    let lookup = |var: &str| {
        env(var)
            .filter(|v| !v.is_empty())
            .or(file.get(var).cloned())
    };
    let mut aws = BTreeMap::new();
    for var in AWS_VARS {
        if let Some(v) = lookup(var) {
            aws.insert(var, v);
        }
    }
    let mut mde = BTreeMap::new();
    for var in MDE_VARS {
        if let Some(v) = lookup(var) {
            mde.insert(var.to_string(), v);
        }
    }
    let playbooks = lookup("LR_PLAYBOOKS");
    let tenants = lookup("LR_TENANTS").or_else(|| lookup("TENANTS_S3_URI"));
    let tenant = match args.tenant.clone().or_else(|| lookup("LR_TENANT")) {
        None => None,
        Some(t) => Some(
            shared::ids::TenantKey::parse(t.trim())
                .map_err(|e| Error::Usage(format!("--tenant / LR_TENANT: {e}")))?,
        ),
    };
    let mut values: BTreeMap<&str, Option<String>> = BTreeMap::new();
    for (var, flag) in [
        ("LR_BUCKET", &args.bucket),
        ("LR_SIGNING_KEY_ID", &args.signing_key_id),
        ("LR_ALERTS_QUEUE_URL", &args.alerts_queue_url),
        ("LR_QUEUE_URLS", &args.queue_urls),
        ("LR_DLQ_URLS", &args.dlq_urls),
    ] {
        values.insert(var, flag.clone().or_else(|| lookup(var)));
    }
    let stack = args.stack.clone().or_else(|| lookup("LR_STACK"));
    if let Some(stack) = stack
        && values.values().any(Option::is_none)
    {
        let outputs = stack_outputs(stack, aws.clone()).await?;
        for (var, output) in FROM_STACK {
            if values[var].is_none() {
                values.insert(var, outputs.get(output).cloned());
            }
        }
        for (var, dead) in [("LR_QUEUE_URLS", false), ("LR_DLQ_URLS", true)] {
            if values[var].is_none() {
                values.insert(var, stage_urls_from_outputs(&outputs, dead));
            }
        }
    }
    let take = |var: &str| values.get(var).cloned().flatten();
    Ok(Settings {
        bucket: take("LR_BUCKET"),
        signing_key_id: take("LR_SIGNING_KEY_ID"),
        alerts_queue_url: take("LR_ALERTS_QUEUE_URL"),
        queue_urls: match take("LR_QUEUE_URLS") {
            Some(t) => parse_stage_urls(&t, "--queue-urls / LR_QUEUE_URLS")?,
            None => BTreeMap::new(),
        },
        dlq_urls: match take("LR_DLQ_URLS") {
            Some(t) => parse_stage_urls(&t, "--dlq-urls / LR_DLQ_URLS")?,
            None => BTreeMap::new(),
        },
        aws,
        playbooks,
        mde,
        tenant,
        tenants,
    })
}

/// The SDK configuration: the AWS_* values found (environment or env file) set explicitly, the
/// SDK's own defaults for the rest.
pub async fn sdk_config(aws: &BTreeMap<&'static str, String>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(url) = aws.get("AWS_ENDPOINT_URL") {
        loader = loader.endpoint_url(url);
    }
    if let Some(region) = aws.get("AWS_REGION").or(aws.get("AWS_DEFAULT_REGION")) {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let (Some(key), Some(secret)) = (
        aws.get("AWS_ACCESS_KEY_ID"),
        aws.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            key,
            secret,
            aws.get("AWS_SESSION_TOKEN").cloned(),
            None,
            "lrctl",
        ));
    }
    loader.load().await
}

/// A CloudFormation stack's outputs, by output key.
pub async fn stack_outputs(
    name: String,
    aws: BTreeMap<&'static str, String>,
) -> Result<BTreeMap<String, String>> {
    let sdk = sdk_config(&aws).await;
    let cfn = aws_sdk_cloudformation::Client::new(&sdk);
    let out = cfn
        .describe_stacks()
        .stack_name(&name)
        .send()
        .await
        .map_err(|e| {
            Error::failed(format!(
                "cannot read the outputs of stack {name} (--stack / LR_STACK): {}",
                aws_sdk_cloudformation::error::DisplayErrorContext(e)
            ))
        })?;
    Ok(out
        .stacks()
        .iter()
        .flat_map(|s| s.outputs())
        .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
        .collect())
}

#[cfg(test)]
mod tests;
