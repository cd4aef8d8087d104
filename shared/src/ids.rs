//! Every id the pipeline handles, validated once where it enters, through one pattern: a type per
//! id whose only constructor checks it, so that whatever holds one may put it in an S3 key, a
//! Defender URL or a comment. A refused id is an [`IdError`] naming which id and what it must be.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why an id was refused: which id, what it must be, and (a bounded, printable prefix of) what
/// came instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {rule}, got {got:?}")]
pub struct IdError {
    /// Which id, e.g. `run id`.
    pub what: &'static str,
    /// What the id must be.
    pub rule: String,
    /// A printable prefix (at most 64 characters) of the value refused.
    pub got: String,
}

/// An id type: a string that passed `$check` (which returns the value to keep, or the rule it
/// broke), serialised as the string, checked again when deserialised.
macro_rules! validated_id {
    ($(#[$m:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `s`; the id it keeps may be normalised (machine ids are lower-cased). The error
            /// says which rule `s` broke.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let check: fn(&str) -> Result<String, String> = $check;
                check(s).map(Self).map_err(|rule| IdError {
                    what: $what,
                    rule,
                    // Ids come from untrusted input: echo only a bounded, printable prefix.
                    got: s.chars().take(64).filter(|c| !c.is_control()).collect(),
                })
            }

            /// The id as a string, as checked.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

validated_id!(
    /// One pipeline run: an alert on a device handled by a playbook. 32 lower-case hex
    /// characters, derived from (tenant, alert source, alert id, machine id, playbook) so that
    /// duplicates of an alert map to the same run; with a tenant registry, the tenant's key and a
    /// dot before them (`acme.5f3a…`), so that every key built from the run id lies under its
    /// tenant's prefix (`evidence/acme.`: IAM can give an analyst one tenant's runs) and every
    /// job names its tenant. A tenant key holds no dot, so one tenant's prefix never covers
    /// another's, nor a single-tenant run's.
    RunId,
    "run id",
    |s| {
        let (tenant, hash) = match s.split_once('.') {
            Some((t, h)) => (Some(t), h),
            None => (None, s),
        };
        if !hex_of_len(hash, 32) || hash.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("must be 32 lower-case hex characters, after a tenant key and a dot when the run is a tenant's".into());
        }
        if let Some(t) = tenant {
            TenantKey::parse(t).map_err(|e| format!("names no valid tenant: {}", e.rule))?;
        }
        Ok(s.to_string())
    }
);

impl RunId {
    /// The run for this alert on this device with this playbook, in a deployment that serves one
    /// tenant: the same inputs always give the same id, so a duplicate alert finds the existing
    /// run.
    pub fn derive(source: &str, alert_id: &str, machine_id: &str, playbook: &str) -> Self {
        Self::derive_for(None, source, alert_id, machine_id, playbook)
    }

    /// The run for this alert of `tenant` (none: the deployment serves one tenant, and the id is
    /// what [`RunId::derive`] always gave).
    pub fn derive_for(
        tenant: Option<&TenantKey>,
        source: &str,
        alert_id: &str,
        machine_id: &str,
        playbook: &str,
    ) -> Self {
        let inputs = format!("{source}\n{alert_id}\n{machine_id}\n{playbook}");
        match tenant {
            None => Self(hex::encode(
                &Sha256::digest(format!("lr-run/v1\n{inputs}"))[..16],
            )),
            Some(t) => {
                let d = Sha256::digest(format!("lr-run/v2\n{t}\n{inputs}"));
                Self(format!("{t}.{}", hex::encode(&d[..16])))
            }
        }
    }

    /// The tenant whose run this is (none in a deployment that serves one tenant).
    pub fn tenant(&self) -> Option<TenantKey> {
        let (t, _) = self.0.split_once('.')?;
        TenantKey::parse(t).ok()
    }

    /// The marker a run leaves in Defender's `requestorComment`, to find its action again.
    pub fn comment_tag(&self) -> String {
        format!("{RUN_COMMENT_PREFIX}{}", self.0)
    }
}

/// What every run's comment tag starts with: an action whose comment holds it is the pipeline's.
pub const RUN_COMMENT_PREFIX: &str = "lr-run:";

/// Words the pipeline writes into a live response's comment.
const COMMENT_KEYWORDS: [&str; 3] = ["lr-run:", "alert:", "playbook:"];

validated_id!(
    /// An alert's id in its source system: 1 to 128 of `A-Z a-z 0-9 _ - . :`, without the
    /// pipeline's comment keywords.
    AlertId,
    "alert id",
    |s| {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !ok {
            return Err("must be 1-128 characters of A-Z a-z 0-9 _ - . :".into());
        }
        // The requestor comment is `lr-run:<run> alert:<id> playbook:<name>`: an id carrying one
        // of the pipeline's own keywords could pass for another run's tag.
        let lower = s.to_ascii_lowercase();
        if let Some(word) = COMMENT_KEYWORDS.iter().find(|k| lower.contains(*k)) {
            return Err(format!(
                "must not contain the pipeline's comment keyword {word:?}"
            ));
        }
        Ok(s.to_string())
    }
);

validated_id!(
    /// A Defender device id: 40 hex characters, kept in lower case.
    MachineId,
    "machine id",
    |s| {
        if hex_of_len(s, 40) {
            Ok(s.to_ascii_lowercase())
        } else {
            Err("must be 40 hexadecimal characters".into())
        }
    }
);

validated_id!(
    /// A machine action id (a GUID), kept in lower case.
    ActionId,
    "machine action id",
    |s| {
        if is_guid(s) {
            Ok(s.to_ascii_lowercase())
        } else {
            Err("must be a GUID (8-4-4-4-12 hexadecimal)".into())
        }
    }
);

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| hex_of_len(g, n))
}

validated_id!(
    /// One of the deployment's Defender tenants, as the tenant registry names it (our key, not
    /// Entra's id): 1 to 32 lower-case letters, digits and inner hyphens, starting with a letter.
    /// It goes into S3 keys (so IAM can scope an analyst to one tenant), metric dimensions and
    /// events.
    TenantKey,
    "tenant key",
    |s| {
        let ok = (1..=32).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && !s.contains("--")
            && s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(s.to_string())
        } else {
            Err("must be 1-32 lower-case letters, digits and single inner hyphens, starting with a letter".into())
        }
    }
);

validated_id!(
    /// An Entra (Azure AD) tenant id (a GUID), kept in lower case.
    EntraTenantId,
    "Entra tenant id",
    |s| {
        if is_guid(s) {
            Ok(s.to_ascii_lowercase())
        } else {
            Err("must be a GUID (8-4-4-4-12 hexadecimal)".into())
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_stable_and_distinct() {
        let a = RunId::derive("defender", "da1", "m", "triage");
        assert_eq!(a, RunId::derive("defender", "da1", "m", "triage"));
        assert_ne!(a, RunId::derive("defender", "da2", "m", "triage"));
        assert_ne!(a, RunId::derive("defender", "da1", "m", "memory"));
        assert_eq!(RunId::parse(a.as_str()), Ok(a.clone()));
        assert!(RunId::parse("../../etc").is_err());
        assert!(RunId::parse(&a.as_str().to_uppercase()).is_err());
        assert_eq!(a.comment_tag(), format!("lr-run:{a}"));
    }

    #[test]
    fn a_tenant_run_id_lies_under_its_tenant_prefix_and_no_other() {
        let acme = TenantKey::parse("acme").unwrap();
        let acme_x = TenantKey::parse("acme-x").unwrap();
        let single = RunId::derive("defender", "da1", "m", "triage");
        let a = RunId::derive_for(Some(&acme), "defender", "da1", "m", "triage");
        let b = RunId::derive_for(Some(&acme_x), "defender", "da1", "m", "triage");
        // One tenant's alert is another run than the same alert ids in another tenant, and than a
        // single-tenant deployment's (whose ids are unchanged).
        assert_ne!(a, b);
        assert_eq!(
            single,
            RunId::derive_for(None, "defender", "da1", "m", "triage")
        );
        assert!(a.as_str().starts_with("acme.") && !b.as_str().starts_with("acme."));
        assert!(!single.as_str().contains('.'));
        assert_eq!(a.tenant(), Some(acme));
        assert_eq!(single.tenant(), None);
        assert_eq!(RunId::parse(a.as_str()), Ok(a.clone()));
        for forged in [
            format!("ACME.{}", &single.as_str()),
            format!("acme/x.{single}"),
            format!("acme..{single}"),
            format!(".{single}"),
            format!("acme.{single}.x"),
            format!("acme.x.{single}"),
            format!("{single}."),
        ] {
            assert!(RunId::parse(&forged).is_err(), "{forged}");
        }
    }

    #[test]
    fn alert_ids_refuse_path_and_url_tricks() {
        assert!(AlertId::parse("da637471012345678901_-1234567890").is_ok());
        assert!(AlertId::parse("ALERT-2026:11.24").is_ok());
        for smuggled in [
            "x-lr-run:0123abcd",
            "LR-RUN:ab",
            "alert:1",
            "a.playbook:triage",
        ] {
            let e = AlertId::parse(smuggled).unwrap_err();
            assert!(e.to_string().contains("keyword"), "{smuggled}: {e}");
        }
        for bad in [
            "",
            "a/b",
            "../x",
            "a b",
            "a%2F",
            "a\u{202e}b",
            &"a".repeat(129),
        ] {
            assert!(AlertId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
