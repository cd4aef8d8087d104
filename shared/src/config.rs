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

pub(crate) fn number<T: std::str::FromStr>(
    env: &dyn Env,
    var: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
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
