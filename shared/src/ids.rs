//! Pipeline ids: validated once, safe to use in S3 keys and Defender comments.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One pipeline run: an alert on a device handled by a playbook. 32 lower-case hex characters,
/// derived from (alert source, alert id, machine id, playbook) so that duplicates of an alert map
/// to the same run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    pub fn derive(source: &str, alert_id: &str, machine_id: &str, playbook: &str) -> Self {
        let d = Sha256::digest(format!(
            "lr-run/v1\n{source}\n{alert_id}\n{machine_id}\n{playbook}"
        ));
        Self(hex::encode(&d[..16]))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "run id must be 32 lower-case hex characters, got {:?}",
                s.chars().take(40).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The marker a run leaves in Defender's `requestorComment`, to find its action again.
    pub fn comment_tag(&self) -> String {
        format!("lr-run:{}", self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Words the pipeline writes into a live response's comment.
const COMMENT_KEYWORDS: [&str; 3] = ["lr-run:", "alert:", "playbook:"];

/// An alert's id in its source system: 1 to 128 of `A-Z a-z 0-9 _ - . :`, without the pipeline's
/// comment keywords.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct AlertId(String);

impl AlertId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !ok {
            return Err(format!(
                "alert id must be 1-128 characters of A-Z a-z 0-9 _ - . :, got {:?}",
                s.chars().take(40).collect::<String>()
            ));
        }
        // The requestor comment is `lr-run:<run> alert:<id> playbook:<name>`: an id carrying one of
        // the pipeline's own keywords could pass for another run's tag.
        let lower = s.to_ascii_lowercase();
        if let Some(word) = COMMENT_KEYWORDS.iter().find(|k| lower.contains(*k)) {
            return Err(format!(
                "alert id must not contain the pipeline's comment keyword {word:?}"
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AlertId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

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
            assert!(e.contains("keyword"), "{smuggled}: {e}");
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
