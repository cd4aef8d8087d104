//! Environment variables → typed configuration, read once per cold start. Every error names the
//! variable and what was wrong with it.

use std::collections::HashMap;
use std::time::Duration;

/// Where settings come from: the process environment, or a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for std::collections::BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {var} is not set: {what}")]
    Missing {
        var: &'static str,
        what: &'static str,
    },
    #[error("environment variable {var}={value:?} is not valid: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn var(&self) -> &'static str {
        match self {
            Self::Missing { var, .. } | Self::Invalid { var, .. } => var,
        }
    }
}

pub(crate) fn required(
    env: &dyn Env,
    var: &'static str,
    what: &'static str,
) -> Result<String, ConfigError> {
    match env.var(var) {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(ConfigError::Missing { var, what }),
    }
}

pub(crate) fn optional(env: &dyn Env, var: &'static str) -> Option<String> {
    env.var(var)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub fn number<T>(
    env: &dyn Env,
    var: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = optional(env, var) else {
        return Ok(default);
    };
    let v: T = raw.parse().map_err(|_| ConfigError::Invalid {
        var,
        value: raw.clone(),
        reason: "expected a whole number".into(),
    })?;
    if !range.contains(&v) {
        return Err(ConfigError::Invalid {
            var,
            value: raw,
            reason: format!("must be between {} and {}", range.start(), range.end()),
        });
    }
    Ok(v)
}

/// A base URL: https, or http only on a loopback host (the local simulator). No trailing slash.
pub(crate) fn base_url(var: &'static str, raw: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        var,
        value: raw.to_string(),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(raw).map_err(|e| invalid(&format!("not a URL ({e})")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Err(invalid("no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(invalid(
                "must be https (plain http is allowed only on loopback)",
            ));
        }
        _ => return Err(invalid("must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// Defender cloud presets: API host, login host and token scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudPreset {
    pub api_base: String,
    pub login_base: String,
    pub scope: String,
}

const COMMERCIAL_LOGIN: &str = "https://login.microsoftonline.com";
const GOV_LOGIN: &str = "https://login.microsoftonline.us";
// Some APIs still want tokens for the legacy resource, also when called on api.security.microsoft.com.
const COMMERCIAL_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

/// Names accepted in `MDE_CLOUD`.
pub const CLOUDS: &[&str] = &[
    "commercial",
    "commercial-us",
    "commercial-eu",
    "commercial-uk",
    "commercial-au",
    "security",
    "security-us",
    "security-eu",
    "security-uk",
    "security-au",
    "security-swa",
    "security-ina",
    "gcc",
    "gcc-high",
    "dod",
];

pub fn cloud_preset(name: &str) -> Option<CloudPreset> {
    let commercial = |api: String| CloudPreset {
        api_base: api,
        login_base: COMMERCIAL_LOGIN.into(),
        scope: COMMERCIAL_SCOPE.into(),
    };
    let n = name.to_ascii_lowercase();
    match n.as_str() {
        "commercial" => Some(commercial(
            "https://api.securitycenter.microsoft.com".into(),
        )),
        "security" => Some(commercial("https://api.security.microsoft.com".into())),
        "gcc" => Some(CloudPreset {
            api_base: "https://api-gcc.securitycenter.microsoft.us".into(),
            login_base: COMMERCIAL_LOGIN.into(),
            scope: "https://api-gcc.securitycenter.microsoft.us/.default".into(),
        }),
        "gcc-high" | "dod" => Some(CloudPreset {
            api_base: "https://api-gov.securitycenter.microsoft.us".into(),
            login_base: GOV_LOGIN.into(),
            scope: "https://api-gov.securitycenter.microsoft.us/.default".into(),
        }),
        _ => {
            if let Some(r) = n.strip_prefix("commercial-")
                && ["us", "eu", "uk", "au"].contains(&r)
            {
                return Some(commercial(format!(
                    "https://api-{r}.securitycenter.microsoft.com"
                )));
            }
            if let Some(r) = n.strip_prefix("security-")
                && ["us", "eu", "uk", "au", "swa", "ina"].contains(&r)
            {
                return Some(commercial(format!(
                    "https://{r}.api.security.microsoft.com"
                )));
            }
            None
        }
    }
}

/// How to reach Defender and where its credentials are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefenderConfig {
    pub api_base: String,
    pub login_base: String,
    pub scope: String,
    /// Secrets Manager id (name or ARN) of `{tenant_id, client_id, client_secret}`.
    pub credentials_secret_id: String,
    pub http_timeout: Duration,
}

impl DefenderConfig {
    /// Reads `MDE_CLOUD` (default commercial), `MDE_API_BASE_URL`, `MDE_LOGIN_BASE_URL`,
    /// `MDE_TOKEN_SCOPE` (each overrides the preset), `MDE_CREDENTIALS_SECRET_ID` and
    /// `MDE_HTTP_TIMEOUT_SECS` (default 30).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let cloud = optional(env, "MDE_CLOUD").unwrap_or_else(|| "commercial".into());
        let preset = cloud_preset(&cloud).ok_or_else(|| ConfigError::Invalid {
            var: "MDE_CLOUD",
            value: cloud.clone(),
            reason: format!("expected one of {}", CLOUDS.join(", ")),
        })?;
        let api_base = match optional(env, "MDE_API_BASE_URL") {
            Some(v) => base_url("MDE_API_BASE_URL", &v)?,
            None => preset.api_base,
        };
        let login_base = match optional(env, "MDE_LOGIN_BASE_URL") {
            Some(v) => base_url("MDE_LOGIN_BASE_URL", &v)?,
            None => preset.login_base,
        };
        let scope = match optional(env, "MDE_TOKEN_SCOPE") {
            Some(s) if s.ends_with("/.default") => s,
            Some(s) => {
                return Err(ConfigError::Invalid {
                    var: "MDE_TOKEN_SCOPE",
                    value: s,
                    reason: "a client-credentials scope ends with /.default".into(),
                });
            }
            None => preset.scope,
        };
        let credentials_secret_id = required(
            env,
            "MDE_CREDENTIALS_SECRET_ID",
            "the Secrets Manager name or ARN of the Defender app credentials",
        )?;
        let timeout = number(env, "MDE_HTTP_TIMEOUT_SECS", 30u64, 1..=900)?;
        Ok(Self {
            api_base,
            login_base,
            scope,
            credentials_secret_id,
            http_timeout: Duration::from_secs(timeout),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn evidence_retention_is_off_unless_days_are_set_and_names_a_bad_mode() {
        assert_eq!(Retention::from_env(&env(&[])).unwrap(), None);
        assert_eq!(
            Retention::from_env(&env(&[("EVIDENCE_RETENTION_DAYS", "30")])).unwrap(),
            Some(Retention {
                mode: RetentionMode::Governance,
                days: 30
            })
        );
        let compliance = env(&[
            ("EVIDENCE_RETENTION_DAYS", "7"),
            ("EVIDENCE_RETENTION_MODE", "COMPLIANCE"),
        ]);
        assert_eq!(
            Retention::from_env(&compliance).unwrap().unwrap().mode,
            RetentionMode::Compliance
        );
        let bad = env(&[
            ("EVIDENCE_RETENTION_DAYS", "7"),
            ("EVIDENCE_RETENTION_MODE", "governance-ish"),
        ]);
        assert!(
            Retention::from_env(&bad)
                .unwrap_err()
                .to_string()
                .contains("EVIDENCE_RETENTION_MODE")
        );
        let zero = env(&[("EVIDENCE_RETENTION_DAYS", "0")]);
        assert!(Retention::from_env(&zero).is_err());
    }

    #[test]
    fn commercial_is_the_default() {
        let c = DefenderConfig::from_env(&env(&[("MDE_CREDENTIALS_SECRET_ID", "lr/defender")]))
            .unwrap();
        assert_eq!(c.api_base, "https://api.securitycenter.microsoft.com");
        assert_eq!(c.login_base, "https://login.microsoftonline.com");
        assert_eq!(c.scope, "https://api.securitycenter.microsoft.com/.default");
        assert_eq!(c.http_timeout, Duration::from_secs(30));
    }

    #[test]
    fn every_preset_resolves_to_https_hosts() {
        for name in CLOUDS {
            let p = cloud_preset(name).unwrap();
            assert!(p.api_base.starts_with("https://"), "{name}");
            assert!(p.scope.ends_with("/.default"), "{name}");
            assert!(base_url("X", &p.api_base).is_ok());
        }
        let gov = cloud_preset("gcc-high").unwrap();
        assert_eq!(gov.api_base, "https://api-gov.securitycenter.microsoft.us");
        assert_eq!(gov.login_base, "https://login.microsoftonline.us");
        let gcc = cloud_preset("GCC").unwrap();
        assert_eq!(gcc.api_base, "https://api-gcc.securitycenter.microsoft.us");
        assert_eq!(gcc.login_base, "https://login.microsoftonline.com");
        assert_eq!(
            cloud_preset("dod").unwrap().login_base,
            "https://login.microsoftonline.us"
        );
        assert_eq!(
            cloud_preset("commercial-eu").unwrap().api_base,
            "https://api-eu.securitycenter.microsoft.com"
        );
        assert_eq!(
            cloud_preset("security-swa").unwrap().api_base,
            "https://swa.api.security.microsoft.com"
        );
        assert!(cloud_preset("security-xx").is_none());
    }

    #[test]
    fn explicit_urls_override_the_preset() {
        let c = DefenderConfig::from_env(&env(&[
            ("MDE_CLOUD", "gcc-high"),
            ("MDE_API_BASE_URL", "http://127.0.0.1:4010/"),
            ("MDE_LOGIN_BASE_URL", "http://localhost:4010/login"),
            ("MDE_CREDENTIALS_SECRET_ID", "s"),
        ]))
        .unwrap();
        assert_eq!(c.api_base, "http://127.0.0.1:4010");
        assert_eq!(c.login_base, "http://localhost:4010/login");
        assert_eq!(
            c.scope,
            "https://api-gov.securitycenter.microsoft.us/.default"
        );
    }

    #[test]
    fn each_error_names_its_variable() {
        let base = [("MDE_CREDENTIALS_SECRET_ID", "s")];
        let cases: Vec<(Vec<(&'static str, &'static str)>, &str)> = vec![
            (vec![], "MDE_CREDENTIALS_SECRET_ID"),
            (
                vec![("MDE_CREDENTIALS_SECRET_ID", "  ")],
                "MDE_CREDENTIALS_SECRET_ID",
            ),
            (vec![base[0], ("MDE_CLOUD", "mars")], "MDE_CLOUD"),
            (
                vec![base[0], ("MDE_API_BASE_URL", "http://api.example.com")],
                "MDE_API_BASE_URL",
            ),
            (
                vec![base[0], ("MDE_API_BASE_URL", "not a url")],
                "MDE_API_BASE_URL",
            ),
            (
                vec![base[0], ("MDE_API_BASE_URL", "ftp://x.example")],
                "MDE_API_BASE_URL",
            ),
            (
                vec![base[0], ("MDE_API_BASE_URL", "https://u:p@x.example")],
                "MDE_API_BASE_URL",
            ),
            (
                vec![base[0], ("MDE_LOGIN_BASE_URL", "https://x.example/?a=b")],
                "MDE_LOGIN_BASE_URL",
            ),
            (
                vec![base[0], ("MDE_TOKEN_SCOPE", "https://x")],
                "MDE_TOKEN_SCOPE",
            ),
            (
                vec![base[0], ("MDE_HTTP_TIMEOUT_SECS", "ten")],
                "MDE_HTTP_TIMEOUT_SECS",
            ),
            (
                vec![base[0], ("MDE_HTTP_TIMEOUT_SECS", "0")],
                "MDE_HTTP_TIMEOUT_SECS",
            ),
        ];
        for (pairs, var) in cases {
            let e = DefenderConfig::from_env(&env(&pairs)).unwrap_err();
            assert_eq!(e.var(), var, "{pairs:?}");
            assert!(e.to_string().contains(var), "{e}");
        }
        let e = DefenderConfig::from_env(&env(&[base[0], ("MDE_CLOUD", "mars")])).unwrap_err();
        assert!(e.to_string().contains("gcc-high"), "lists the choices: {e}");
    }
}

fn queue_url(env: &dyn Env, var: &'static str, what: &'static str) -> Result<String, ConfigError> {
    let v = required(env, var, what)?;
    let parsed = url::Url::parse(&v).map_err(|e| ConfigError::Invalid {
        var,
        value: v.clone(),
        reason: format!("not a URL ({e})"),
    })?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(ConfigError::Invalid {
            var,
            value: v,
            reason: "must be an SQS queue URL".into(),
        });
    }
    Ok(v)
}

/// Object Lock retention for evidence and manifests (never for state): set when the bucket has
/// Object Lock enabled. Each evidence write carries its own retain-until date, so the bucket needs
/// no default retention rule (which would also lock the records rewritten many times a minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub mode: RetentionMode,
    pub days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    /// Users with s3:BypassGovernanceRetention may still delete (an administrator's escape hatch).
    Governance,
    /// Nobody may delete until the date passes, not even the account's root user.
    Compliance,
}

impl Retention {
    /// `EVIDENCE_RETENTION_DAYS` (unset or empty: no retention) and `EVIDENCE_RETENTION_MODE`
    /// (GOVERNANCE, the default, or COMPLIANCE).
    pub fn from_env(env: &dyn Env) -> Result<Option<Self>, ConfigError> {
        if optional(env, "EVIDENCE_RETENTION_DAYS").is_none() {
            return Ok(None);
        }
        let days = number(env, "EVIDENCE_RETENTION_DAYS", 365, 1..=36_500)?;
        let mode = match optional(env, "EVIDENCE_RETENTION_MODE").as_deref() {
            None | Some("GOVERNANCE") => RetentionMode::Governance,
            Some("COMPLIANCE") => RetentionMode::Compliance,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "EVIDENCE_RETENTION_MODE",
                    value: other.to_string(),
                    reason: "must be GOVERNANCE or COMPLIANCE".into(),
                });
            }
        };
        Ok(Some(Self { mode, days }))
    }
}

fn bucket(env: &dyn Env) -> Result<String, ConfigError> {
    let v = required(
        env,
        "EVIDENCE_BUCKET",
        "the S3 bucket that holds run records and evidence",
    )?;
    let ok = (3..=63).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        return Err(ConfigError::Invalid {
            var: "EVIDENCE_BUCKET",
            value: v,
            reason: "not an S3 bucket name (3-63 of a-z 0-9 . -)".into(),
        });
    }
    Ok(v)
}

fn secs_list(
    env: &dyn Env,
    var: &'static str,
    default: &str,
) -> Result<Vec<Duration>, ConfigError> {
    let raw = optional(env, var).unwrap_or_else(|| default.to_string());
    let mut out = Vec::new();
    for part in raw.split(',') {
        let n: u64 = part.trim().parse().map_err(|_| ConfigError::Invalid {
            var,
            value: raw.clone(),
            reason: "expected comma-separated whole seconds, like 15,30,60".into(),
        })?;
        if !(1..=900).contains(&n) {
            return Err(ConfigError::Invalid {
                var,
                value: raw.clone(),
                reason: "each delay must be 1 to 900 seconds (SQS DelaySeconds)".into(),
            });
        }
        out.push(Duration::from_secs(n));
    }
    Ok(out)
}

/// Exponential backoff with jitter and a cap, for waits Defender did not size itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let base = number(env, "RETRY_BASE_SECS", 15u64, 1..=900)?;
        let cap = number(env, "RETRY_MAX_SECS", 900u64, 1..=900)?;
        if cap < base {
            return Err(ConfigError::Invalid {
                var: "RETRY_MAX_SECS",
                value: cap.to_string(),
                reason: "must not be below RETRY_BASE_SECS".into(),
            });
        }
        Ok(Self {
            base: Duration::from_secs(base),
            cap: Duration::from_secs(cap),
        })
    }

    /// The wait before try `attempt` (0-based): base·2^attempt, capped, then "equal jitter"
    /// (between half and all of it) so that throttled callers do not come back together.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let j = jitter.clamp(0.0, 1.0);
        exp.mul_f64(0.5 + 0.5 * j)
    }
}

fn max_deadline(env: &dyn Env) -> Result<Option<Duration>, ConfigError> {
    match optional(env, "MAX_RUN_DEADLINE_SECS") {
        None => Ok(None),
        Some(_) => number(env, "MAX_RUN_DEADLINE_SECS", 0u64, 1..=3 * 24 * 3600)
            .map(|s| Some(Duration::from_secs(s))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeConfig {
    pub bucket: String,
    pub submit_queue_url: String,
    pub dead_letter_queue_url: String,
    /// `s3://bucket/key` of a playbook file replacing the bundled one.
    pub playbooks_s3_uri: Option<String>,
    /// Caps every playbook's deadline.
    pub max_run_deadline: Option<Duration>,
}

impl IntakeConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let playbooks_s3_uri = match optional(env, "PLAYBOOKS_S3_URI") {
            Some(u) if u.starts_with("s3://") && u[5..].contains('/') => Some(u),
            Some(u) => {
                return Err(ConfigError::Invalid {
                    var: "PLAYBOOKS_S3_URI",
                    value: u,
                    reason: "expected s3://bucket/key".into(),
                });
            }
            None => None,
        };
        Ok(Self {
            bucket: bucket(env)?,
            submit_queue_url: queue_url(env, "SUBMIT_QUEUE_URL", "the submit stage's queue")?,
            dead_letter_queue_url: queue_url(
                env,
                "DEAD_LETTER_QUEUE_URL",
                "this stage's dead-letter queue, for refused messages",
            )?,
            playbooks_s3_uri,
            max_run_deadline: max_deadline(env)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitConfig {
    pub bucket: String,
    pub budget: crate::budget::BudgetConfig,
    pub submit_queue_url: String,
    pub poll_queue_url: String,
    pub dead_letter_queue_url: String,
    pub first_poll_delay: Duration,
    pub retry: Backoff,
}

impl SubmitConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            bucket: bucket(env)?,
            budget: crate::budget::BudgetConfig::from_env(env)?,
            submit_queue_url: queue_url(
                env,
                "SUBMIT_QUEUE_URL",
                "the submit stage's own queue (for delayed retries)",
            )?,
            poll_queue_url: queue_url(env, "POLL_QUEUE_URL", "the poll stage's queue")?,
            dead_letter_queue_url: queue_url(
                env,
                "DEAD_LETTER_QUEUE_URL",
                "this stage's dead-letter queue, for refused messages",
            )?,
            first_poll_delay: secs_list(env, "POLL_DELAYS_SECS", DEFAULT_POLL_DELAYS)?[0],
            retry: Backoff::from_env(env)?,
        })
    }
}

/// Poll after 15 s, then back off to every 15 minutes (SQS's longest delay).
pub const DEFAULT_POLL_DELAYS: &str = "15,30,60,120,300,600,900";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollConfig {
    pub bucket: String,
    pub budget: crate::budget::BudgetConfig,
    pub poll_queue_url: String,
    pub collect_queue_url: String,
    pub dead_letter_queue_url: String,
    pub poll_delays: Vec<Duration>,
    pub retry: Backoff,
}

impl PollConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            bucket: bucket(env)?,
            budget: crate::budget::BudgetConfig::from_env(env)?,
            poll_queue_url: queue_url(
                env,
                "POLL_QUEUE_URL",
                "the poll stage's own queue (it re-enqueues itself)",
            )?,
            collect_queue_url: queue_url(env, "COLLECT_QUEUE_URL", "the collect stage's queue")?,
            dead_letter_queue_url: queue_url(
                env,
                "DEAD_LETTER_QUEUE_URL",
                "this stage's dead-letter queue, for refused messages",
            )?,
            poll_delays: secs_list(env, "POLL_DELAYS_SECS", DEFAULT_POLL_DELAYS)?,
            retry: Backoff::from_env(env)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectConfig {
    pub bucket: String,
    pub budget: crate::budget::BudgetConfig,
    pub collect_queue_url: String,
    pub dead_letter_queue_url: String,
    /// Host suffixes a result link may point at.
    pub allowed_hosts: Vec<String>,
    /// Smallest multipart part; larger when a package would need more than 10,000 parts.
    pub part_size_min: usize,
    /// Copies tried before a command is recorded as not collected.
    pub max_attempts: u32,
    pub retry: Backoff,
    pub download_timeout: Duration,
    /// How long one invocation copies before it saves a checkpoint and hands the rest to the next
    /// (the function's timeout is 900 s).
    pub time_budget: Duration,
}

pub const DEFAULT_ALLOWED_HOSTS: &str = ".blob.core.windows.net,.blob.core.usgovcloudapi.net";

impl CollectConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let raw =
            optional(env, "DOWNLOAD_ALLOWED_HOSTS").unwrap_or_else(|| DEFAULT_ALLOWED_HOSTS.into());
        let allowed_hosts: Vec<String> = raw
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        if allowed_hosts.is_empty()
            || allowed_hosts
                .iter()
                .any(|h| h.contains(['/', ':', '*', ' ']))
        {
            return Err(ConfigError::Invalid {
                var: "DOWNLOAD_ALLOWED_HOSTS",
                value: raw,
                reason:
                    "expected comma-separated host names or suffixes such as .blob.core.windows.net"
                        .into(),
            });
        }
        Ok(Self {
            bucket: bucket(env)?,
            budget: crate::budget::BudgetConfig::from_env(env)?,
            collect_queue_url: queue_url(
                env,
                "COLLECT_QUEUE_URL",
                "the collect stage's own queue (for retries)",
            )?,
            dead_letter_queue_url: queue_url(
                env,
                "DEAD_LETTER_QUEUE_URL",
                "this stage's dead-letter queue, for refused messages",
            )?,
            allowed_hosts,
            part_size_min: number(env, "COLLECT_PART_MIB", 8usize, 5..=512)? << 20,
            max_attempts: number(env, "COLLECT_MAX_ATTEMPTS", 5u32, 1..=50)?,
            retry: Backoff::from_env(env)?,
            download_timeout: Duration::from_secs(number(
                env,
                "DOWNLOAD_READ_TIMEOUT_SECS",
                60u64,
                5..=900,
            )?),
            time_budget: Duration::from_secs(number(
                env,
                "COLLECT_TIME_BUDGET_SECS",
                600u64,
                0..=870,
            )?),
        })
    }
}

#[cfg(test)]
mod stage_tests {
    use super::*;

    fn base() -> HashMap<&'static str, &'static str> {
        [
            ("EVIDENCE_BUCKET", "lr-evidence"),
            (
                "SUBMIT_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/submit",
            ),
            (
                "POLL_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/poll",
            ),
            (
                "COLLECT_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/collect",
            ),
            (
                "DEAD_LETTER_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/dlq",
            ),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn stage_configs_read_and_name_bad_variables() {
        let env = base();
        assert!(IntakeConfig::from_env(&env).is_ok());
        let s = SubmitConfig::from_env(&env).unwrap();
        assert_eq!(s.first_poll_delay, Duration::from_secs(15));
        let p = PollConfig::from_env(&env).unwrap();
        assert_eq!(p.poll_delays.last(), Some(&Duration::from_secs(900)));
        let c = CollectConfig::from_env(&env).unwrap();
        assert_eq!(c.part_size_min, 8 << 20);
        assert_eq!(
            c.allowed_hosts,
            vec![".blob.core.windows.net", ".blob.core.usgovcloudapi.net"]
        );

        let cases: Vec<(&'static str, &'static str)> = vec![
            ("EVIDENCE_BUCKET", "Bad_Bucket"),
            ("POLL_DELAYS_SECS", "15,abc"),
            ("POLL_DELAYS_SECS", "15,1000"),
            ("DOWNLOAD_ALLOWED_HOSTS", "https://x/"),
            ("COLLECT_PART_MIB", "1"),
            ("RETRY_BASE_SECS", "0"),
            ("PLAYBOOKS_S3_URI", "https://bucket/key"),
            ("MAX_RUN_DEADLINE_SECS", "forever"),
            ("SUBMIT_QUEUE_URL", "not a url"),
        ];
        for (var, value) in cases {
            let mut env = base();
            env.insert(var, value);
            let errs = [
                IntakeConfig::from_env(&env).err(),
                SubmitConfig::from_env(&env).err(),
                PollConfig::from_env(&env).err(),
                CollectConfig::from_env(&env).err(),
            ];
            let e = errs
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_else(|| panic!("{var}={value} accepted"));
            assert_eq!(e.var(), var, "{e}");
        }
        let mut env = base();
        env.remove("DEAD_LETTER_QUEUE_URL");
        assert_eq!(
            IntakeConfig::from_env(&env).unwrap_err().var(),
            "DEAD_LETTER_QUEUE_URL"
        );
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let b = Backoff {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(900),
        };
        assert_eq!(b.delay(0, 1.0), Duration::from_secs(10));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(80));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(900));
        assert_eq!(b.delay(30, 0.0), Duration::from_secs(450));
    }
}
