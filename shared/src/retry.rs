//! How long to wait before trying again, when Defender did not say: capped exponential backoff
//! with jitter, so that throttled callers spread out instead of coming back together. One home for
//! the policy; the stages and the budget only ask it for a delay.

use std::time::Duration;

use crate::config::{ConfigError, Env, number};

/// Exponential backoff with jitter and a cap, for waits Defender did not size itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's wait, before jitter; doubles with each attempt.
    pub base: Duration,
    /// The longest wait, whatever the attempt.
    pub cap: Duration,
}

impl Backoff {
    /// `RETRY_BASE_SECS` (default 15) and `RETRY_MAX_SECS` (default 900, not below the base).
    pub(crate) fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
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

/// A number in [0, 1) that differs between calls, for backoff jitter.
pub fn jitter() -> f64 {
    let b = uuid::Uuid::new_v4();
    let x = u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

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
