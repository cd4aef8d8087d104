//! How long evidence is kept: Object Lock retention for what is written under `evidence/`, read
//! from the environment. The S3 adapter applies it to every evidence write; state never gets it.

use crate::config::{ConfigError, Env, number, optional};

/// Object Lock retention for evidence and manifests (never for state): set when the bucket has
/// Object Lock enabled. Each evidence write carries its own retain-until date, so the bucket needs
/// no default retention rule (which would also lock the records rewritten many times a minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Governance or compliance mode (`EVIDENCE_RETENTION_MODE`).
    pub mode: RetentionMode,
    /// Days each object is retained from its write (`EVIDENCE_RETENTION_DAYS`).
    pub days: u32,
}

/// The Object Lock retention mode.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}
