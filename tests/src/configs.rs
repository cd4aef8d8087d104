//! Stage configurations with test values, for tests that call a stage's handler directly: the
//! bucket is `b`, queue URLs are the queues' names (`submit`, `poll`, `collect`, `dlq`), retries
//! wait a second, and the tenant budget is the documented default. Override fields with
//! `..collect_config()` where a test needs other values.

use std::collections::HashMap;
use std::time::Duration;

use shared::budget::BudgetConfig;
use shared::retry::Backoff;
use shared::stages::settings::{CollectConfig, IntakeConfig, PollConfig, SubmitConfig};

/// An environment that sets nothing (every setting at its default).
pub fn no_env() -> HashMap<&'static str, &'static str> {
    HashMap::new()
}

/// Retries after one second, never longer.
pub fn backoff() -> Backoff {
    Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(1),
    }
}

/// The tenant budget with Defender's documented limits.
pub fn budget() -> BudgetConfig {
    BudgetConfig::from_env(&no_env()).expect("the default budget")
}

pub fn intake_config() -> IntakeConfig {
    IntakeConfig {
        bucket: "b".into(),
        submit_queue_url: "submit".into(),
        dead_letter_queue_url: "dlq".into(),
        playbooks: None,
        tenants: None,
        max_run_deadline: None,
    }
}

pub fn submit_config() -> SubmitConfig {
    SubmitConfig {
        bucket: "b".into(),
        budget: budget(),
        submit_queue_url: "submit".into(),
        poll_queue_url: "poll".into(),
        dead_letter_queue_url: "dlq".into(),
        first_poll_delay: Duration::from_secs(15),
        retry: backoff(),
        playbooks: None,
        library_sync: shared::library::SyncMode::Upload,
    }
}

pub fn poll_config() -> PollConfig {
    PollConfig {
        bucket: "b".into(),
        budget: budget(),
        poll_queue_url: "poll".into(),
        collect_queue_url: "collect".into(),
        dead_letter_queue_url: "dlq".into(),
        poll_delays: vec![Duration::from_secs(15)],
        status_from: shared::stages::settings::StatusFrom::Board,
        retry: backoff(),
    }
}

/// Collect following links to the simulator (127.0.0.1) only, in 5 MiB parts, with a minute to
/// copy before it hands over.
pub fn collect_config() -> CollectConfig {
    CollectConfig {
        bucket: "b".into(),
        budget: budget(),
        collect_queue_url: "collect".into(),
        dead_letter_queue_url: "dlq".into(),
        allowed_hosts: vec!["127.0.0.1".into()],
        part_size_min: 5 << 20,
        max_attempts: 3,
        retry: backoff(),
        download_timeout: Duration::from_secs(30),
        time_budget: Duration::from_secs(60),
    }
}
