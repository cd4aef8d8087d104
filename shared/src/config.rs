//! Reading settings from the environment: the [`Env`] port, [`ConfigError`] (which always names
//! the variable and what was wrong with it) and typed readers. What each part of the pipeline reads
//! lives with it: the stages' settings in [`crate::stages::settings`], Defender's in
//! [`crate::defender::cloud`], the retry policy in [`crate::retry`], the budget's in
//! [`crate::budget`], evidence retention in [`crate::store::retention`].

use std::collections::HashMap;
use std::time::Duration;

/// Where settings come from: the process environment, or a map in tests.
pub trait Env {
    /// The variable's value, or `None` if it is not set.
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

/// A setting that cannot be used; the message names the variable and says what to set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or blank.
    #[error("environment variable {var} is not set: {what}")]
    Missing {
        /// The variable's name.
        var: &'static str,
        /// What the variable should hold, for the message.
        what: &'static str,
    },
    /// A variable is set to something unusable.
    #[error("environment variable {var}={value:?} is not valid: {reason}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// The value as set (settings hold no secrets, so it is shown).
        value: String,
        /// What is wrong with it, or what was expected.
        reason: String,
    },
}

impl ConfigError {
    /// The name of the variable at fault.
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

/// Whole seconds in `var` as a duration (see [`number`]).
pub fn seconds(
    env: &dyn Env,
    var: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    number(env, var, default, range).map(Duration::from_secs)
}

/// The whole number in `var`, or `default` when it is unset or blank; an error if it does
/// not parse or is outside `range`.
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

/// A queue URL the stage sends to (`what` says which, in the error when it is missing).
pub(crate) fn queue_url(
    env: &dyn Env,
    var: &'static str,
    what: &'static str,
) -> Result<String, ConfigError> {
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

/// `EVIDENCE_BUCKET`: a valid bucket name.
pub(crate) fn bucket(env: &dyn Env) -> Result<String, ConfigError> {
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

/// A comma-separated list of seconds, each 1 to 900 (SQS's longest delay).
pub(crate) fn secs_list(
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
