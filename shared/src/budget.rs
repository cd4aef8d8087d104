//! The tenant's Defender budgets, kept across every concurrent invocation in one S3 object with
//! compare-and-swap: submissions per sliding minute, running sessions, and the GET calls poll and
//! collect make (per minute and per hour). Pacing by these keeps Defender from answering 429.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::{ConfigError, Env, number};
use crate::ids::RunId;
use crate::ports::{ObjectStore, Put, PutResult, StoreError};

pub const BUDGET_KEY: &str = "budget/tenant.json";
const STALE_SESSION_MS: i64 = (3 * 24 + 1) * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    pub submissions_per_minute: u32,
    pub running_sessions: u32,
    pub gets_per_minute: u32,
    pub gets_per_hour: u32,
    /// The length of Defender's "minute" (60 s; shorter only against a time-scaled simulator).
    pub minute: Duration,
}

impl BudgetConfig {
    /// `BUDGET_SUBMISSIONS_PER_MINUTE` (10), `BUDGET_RUNNING_SESSIONS` (25; newer docs allow 50),
    /// `BUDGET_GETS_PER_MINUTE` (100), `BUDGET_GETS_PER_HOUR` (1500), `BUDGET_MINUTE_MS` (60000).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            submissions_per_minute: number(env, "BUDGET_SUBMISSIONS_PER_MINUTE", 10u32, 1..=1000)?,
            running_sessions: number(env, "BUDGET_RUNNING_SESSIONS", 25u32, 1..=1000)?,
            gets_per_minute: number(env, "BUDGET_GETS_PER_MINUTE", 100u32, 1..=10_000)?,
            gets_per_hour: number(env, "BUDGET_GETS_PER_HOUR", 1500u32, 1..=100_000)?,
            minute: Duration::from_millis(number(
                env,
                "BUDGET_MINUTE_MS",
                60_000u64,
                100..=600_000,
            )?),
        })
    }

    fn hour(&self) -> Duration {
        self.minute * 60
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TenantBudget {
    v: u32,
    /// When submissions were granted (unix ms), newest last.
    submissions: Vec<i64>,
    /// Runs holding a session, with when they took it (unix ms).
    running: BTreeMap<String, i64>,
    /// When GET calls were granted (unix ms), newest last.
    gets: Vec<i64>,
}

/// The answer to a request for budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Granted,
    /// Not now; ask again after this long.
    Wait(Duration),
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// How long until the oldest of the newest `max` stamps leaves a window of `window` (None: room now).
fn window_wait(stamps: &[i64], max: u32, window: Duration, now: i64) -> Option<Duration> {
    let window = window.as_millis() as i64;
    let inside: Vec<i64> = stamps
        .iter()
        .copied()
        .filter(|t| *t > now - window)
        .collect();
    if (inside.len() as u32) < max {
        return None;
    }
    let pivot = inside[inside.len() - max as usize];
    Some(Duration::from_millis((pivot + window - now).max(1) as u64))
}

/// Applies `decide` to the budget with compare-and-swap; `decide` returns the grant and whether it
/// changed the budget.
async fn with_budget<S, F>(store: &S, mut decide: F) -> Result<Grant, StoreError>
where
    S: ObjectStore,
    F: FnMut(&mut TenantBudget) -> (Grant, bool),
{
    for _ in 0..50 {
        let (mut budget, condition) = match store.get(BUDGET_KEY).await? {
            Some(s) => (
                serde_json::from_slice(&s.body)
                    .map_err(|e| StoreError(format!("{BUDGET_KEY}: {e}")))?,
                Put::IfMatch(s.etag),
            ),
            None => (
                TenantBudget {
                    v: 1,
                    ..TenantBudget::default()
                },
                Put::IfAbsent,
            ),
        };
        let (grant, changed) = decide(&mut budget);
        if !changed {
            return Ok(grant);
        }
        let body = serde_json::to_vec(&budget).map_err(|e| StoreError(e.to_string()))?;
        match store.put(BUDGET_KEY, body, condition).await? {
            PutResult::Written { .. } => return Ok(grant),
            PutResult::Conflict => {
                // Another invocation won the race: back off a little and read again.
                tokio::time::sleep(Duration::from_millis(
                    5 + (crate::stages::jitter() * 20.0) as u64,
                ))
                .await;
            }
        }
    }
    Err(StoreError("budget: too many concurrent updates".into()))
}

/// A submission slot and a session for `run`, or how long to wait for them. A run that already holds
/// a session (a retry after a lost answer) is granted without counting twice.
pub async fn acquire_submission<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    run: &RunId,
    now: OffsetDateTime,
) -> Result<Grant, StoreError> {
    let now_ms = ms(now);
    let minute = cfg.minute;
    let hour = cfg.hour();
    with_budget(store, |b| {
        b.submissions
            .retain(|t| *t > now_ms - minute.as_millis() as i64);
        b.gets.retain(|t| *t > now_ms - hour.as_millis() as i64);
        // No run lives past three days (Defender's longest queue window, and the longest deadline):
        // a session still held after that was left behind by a run that never came back for it.
        b.running
            .retain(|_, since| *since > now_ms - STALE_SESSION_MS);
        if let Some(wait) = window_wait(&b.submissions, cfg.submissions_per_minute, minute, now_ms)
        {
            return (Grant::Wait(wait), false);
        }
        let holds = b.running.contains_key(run.as_str());
        if !holds && b.running.len() as u32 >= cfg.running_sessions {
            // A session frees when some run ends; look again in a while.
            return (Grant::Wait(minute / 4), false);
        }
        b.submissions.push(now_ms);
        b.running.entry(run.to_string()).or_insert(now_ms);
        (Grant::Granted, true)
    })
    .await
}

/// Gives back a run's session (its action ended, or it was never accepted).
pub async fn release_session<S: ObjectStore>(store: &S, run: &RunId) -> Result<(), StoreError> {
    with_budget(store, |b| {
        let changed = b.running.remove(run.as_str()).is_some();
        (Grant::Granted, changed)
    })
    .await
    .map(|_| ())
}

/// One GET call (status, result link, list, cancel), or how long to wait for one.
pub async fn acquire_get<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    now: OffsetDateTime,
) -> Result<Grant, StoreError> {
    let now_ms = ms(now);
    let hour = cfg.hour();
    with_budget(store, |b| {
        b.gets.retain(|t| *t > now_ms - hour.as_millis() as i64);
        let wait = [
            window_wait(&b.gets, cfg.gets_per_minute, cfg.minute, now_ms),
            window_wait(&b.gets, cfg.gets_per_hour, hour, now_ms),
        ]
        .into_iter()
        .flatten()
        .max();
        match wait {
            Some(w) => (Grant::Wait(w), false),
            None => {
                b.gets.push(now_ms);
                (Grant::Granted, true)
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_windows_say_how_long_to_wait() {
        let w = Duration::from_secs(60);
        assert_eq!(window_wait(&[], 2, w, 100_000), None);
        assert_eq!(window_wait(&[50_000], 2, w, 100_000), None);
        assert_eq!(
            window_wait(&[50_000, 60_000], 2, w, 100_000),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            window_wait(&[10_000, 50_000, 60_000], 2, w, 100_000),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            window_wait(&[30_000, 40_000], 2, w, 100_000),
            None,
            "both left the window"
        );
    }
}
