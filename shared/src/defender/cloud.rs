//! Which Defender cloud to talk to, and how: the cloud presets (API host, login host, token scope)
//! and [`DefenderConfig`], read from the environment with each preset overridable.

use std::time::Duration;

use crate::config::{ConfigError, Env, base_url, number, optional, required};

/// Defender cloud presets: API host, login host and token scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudPreset {
    /// Defender API base URL, without a trailing `/`.
    pub api_base: String,
    /// Entra login base URL, without a trailing `/`.
    pub login_base: String,
    /// The client-credentials scope for the API (ends in `/.default`).
    pub scope: String,
}

const COMMERCIAL_LOGIN: &str = "https://login.microsoftonline.com";
const GOV_LOGIN: &str = "https://login.microsoftonline.us";
// Some APIs still want tokens for the legacy resource, also when called on api.security.microsoft.com.
const COMMERCIAL_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";
const GCC: &str = "https://api-gcc.securitycenter.microsoft.us";
const GOV: &str = "https://api-gov.securitycenter.microsoft.us";

/// Every cloud `MDE_CLOUD` may name: (name, API base, login base, token scope).
const PRESETS: &[(&str, &str, &str, &str)] = &[
    (
        "commercial",
        "https://api.securitycenter.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "commercial-us",
        "https://api-us.securitycenter.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "commercial-eu",
        "https://api-eu.securitycenter.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "commercial-uk",
        "https://api-uk.securitycenter.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "commercial-au",
        "https://api-au.securitycenter.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "security",
        "https://api.security.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "security-us",
        "https://us.api.security.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "security-eu",
        "https://eu.api.security.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "security-uk",
        "https://uk.api.security.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "security-au",
        "https://au.api.security.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "security-swa",
        "https://swa.api.security.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "security-ina",
        "https://ina.api.security.microsoft.com",
        COMMERCIAL_LOGIN,
        COMMERCIAL_SCOPE,
    ),
    (
        "gcc",
        GCC,
        COMMERCIAL_LOGIN,
        "https://api-gcc.securitycenter.microsoft.us/.default",
    ),
    (
        "gcc-high",
        GOV,
        GOV_LOGIN,
        "https://api-gov.securitycenter.microsoft.us/.default",
    ),
    (
        "dod",
        GOV,
        GOV_LOGIN,
        "https://api-gov.securitycenter.microsoft.us/.default",
    ),
];

/// Names accepted in `MDE_CLOUD`.
pub fn clouds() -> impl Iterator<Item = &'static str> {
    PRESETS.iter().map(|p| p.0)
}

/// The preset a cloud name (case-insensitive) stands for.
pub fn cloud_preset(name: &str) -> Option<CloudPreset> {
    PRESETS
        .iter()
        .find(|p| p.0.eq_ignore_ascii_case(name))
        .map(|&(_, api, login, scope)| CloudPreset {
            api_base: api.into(),
            login_base: login.into(),
            scope: scope.into(),
        })
}

/// How to reach Defender and where its credentials are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefenderConfig {
    /// Defender API base URL: the preset's or `MDE_API_BASE_URL`.
    pub api_base: String,
    /// Entra login base URL: the preset's or `MDE_LOGIN_BASE_URL`.
    pub login_base: String,
    /// Token scope: the preset's or `MDE_TOKEN_SCOPE`.
    pub scope: String,
    /// Secrets Manager id (name or ARN) of `{tenant_id, client_id, client_secret}`.
    pub credentials_secret_id: String,
    /// Timeout for one whole Defender request (`MDE_HTTP_TIMEOUT_SECS`).
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
            reason: format!(
                "expected one of {}",
                clouds().collect::<Vec<_>>().join(", ")
            ),
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
    use std::collections::HashMap;

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
        for name in clouds() {
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
