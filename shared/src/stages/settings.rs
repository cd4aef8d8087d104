//! What each stage reads from its environment, checked once per cold start: queue URLs, the
//! bucket, the poll schedule, the copy's limits. One place for the four, so that the template test
//! can hold every variable the deployment sets against what the code reads.

use std::time::Duration;

use crate::budget::BudgetConfig;
use crate::config::{
    ConfigError, Env, bucket, number, optional, queue_url, required, seconds, secs_list,
};
use crate::library::SyncMode;

/// `DEAD_LETTER_QUEUE_URL`: where every stage sends the messages it refuses.
fn dead_letter_queue_url(env: &dyn Env) -> Result<String, ConfigError> {
    queue_url(
        env,
        "DEAD_LETTER_QUEUE_URL",
        "this stage's dead-letter queue, for refused messages",
    )
}
use crate::retry::Backoff;

fn max_deadline(env: &dyn Env) -> Result<Option<Duration>, ConfigError> {
    match optional(env, "MAX_RUN_DEADLINE_SECS") {
        None => Ok(None),
        Some(_) => number(env, "MAX_RUN_DEADLINE_SECS", 0u64, 1..=3 * 24 * 3600)
            .map(|s| Some(Duration::from_secs(s))),
    }
}

/// A file in S3 the deployment pins by its SHA-256: the playbook file replacing the bundled one
/// (whose own `sha256` pins then cover the scripts beside it), or the tenant registry. The
/// function refuses to start on any other bytes: whoever may write the bucket cannot change what
/// runs as SYSTEM, or which tenant's devices a sender reaches, without a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedFile {
    /// `s3://bucket/key` (`PLAYBOOKS_S3_URI`, `TENANTS_S3_URI`).
    pub uri: String,
    /// Hex SHA-256 the file must have (`PLAYBOOKS_SHA256`, `TENANTS_SHA256`).
    pub sha256: String,
    /// The variable that named it, for messages.
    pub uri_var: &'static str,
    /// The variable that pinned it, for messages.
    pub sha256_var: &'static str,
}

/// `PLAYBOOKS_S3_URI` (`s3://bucket/key` of a playbook file replacing the bundled one, its library
/// folder beside it) with `PLAYBOOKS_SHA256`, which it requires; intake and submit read the same
/// file.
fn pinned_playbooks(env: &dyn Env) -> Result<Option<PinnedFile>, ConfigError> {
    pinned(env, "PLAYBOOKS_S3_URI", "PLAYBOOKS_SHA256", "playbook file")
}

/// `TENANTS_S3_URI` (`s3://bucket/key` of the tenant registry) with `TENANTS_SHA256`, which it
/// requires; unset, the deployment serves one tenant, configured by `MDE_*`. Every function reads
/// the same file.
pub fn pinned_tenants(env: &dyn Env) -> Result<Option<PinnedFile>, ConfigError> {
    pinned(env, "TENANTS_S3_URI", "TENANTS_SHA256", "tenant registry")
}

fn pinned(
    env: &dyn Env,
    uri_var: &'static str,
    sha256_var: &'static str,
    what: &str,
) -> Result<Option<PinnedFile>, ConfigError> {
    let uri = match optional(env, uri_var) {
        Some(u)
            if u.starts_with("s3://")
                && u[5..]
                    .split_once('/')
                    .is_some_and(|(b, k)| !b.is_empty() && !k.is_empty()) =>
        {
            u
        }
        Some(u) => {
            return Err(ConfigError::Invalid {
                var: uri_var,
                value: u,
                reason: "expected s3://bucket/key".into(),
            });
        }
        None => {
            return match optional(env, sha256_var) {
                None => Ok(None),
                Some(v) => Err(ConfigError::Invalid {
                    var: sha256_var,
                    value: v,
                    reason: format!("pins a {what}, but {uri_var} names none"),
                }),
            };
        }
    };
    let sha256 = required(
        env,
        sha256_var,
        "the SHA-256 of the file its S3_URI names (sha256sum of the file you deploy)",
    )?;
    if !(sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(ConfigError::Invalid {
            var: sha256_var,
            value: sha256,
            reason: "expected 64 hex characters".into(),
        });
    }
    Ok(Some(PinnedFile {
        uri,
        sha256: sha256.to_ascii_lowercase(),
        uri_var,
        sha256_var,
    }))
}

/// What intake reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeConfig {
    /// The evidence bucket (`EVIDENCE_BUCKET`).
    pub bucket: String,
    /// Where accepted alerts go as submit jobs (`SUBMIT_QUEUE_URL`).
    pub submit_queue_url: String,
    /// Where refused messages go (`DEAD_LETTER_QUEUE_URL`).
    pub dead_letter_queue_url: String,
    /// The playbook file replacing the bundled one, pinned.
    pub playbooks: Option<PinnedFile>,
    /// The tenant registry, pinned (`None`: the deployment serves one tenant).
    pub tenants: Option<PinnedFile>,
    /// Caps every playbook's deadline.
    pub max_run_deadline: Option<Duration>,
}

impl IntakeConfig {
    /// Reads `EVIDENCE_BUCKET`, `SUBMIT_QUEUE_URL`, `DEAD_LETTER_QUEUE_URL`, optional
    /// `PLAYBOOKS_S3_URI` and `MAX_RUN_DEADLINE_SECS`; the error names the variable to fix.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            bucket: bucket(env)?,
            submit_queue_url: queue_url(env, "SUBMIT_QUEUE_URL", "the submit stage's queue")?,
            dead_letter_queue_url: dead_letter_queue_url(env)?,
            playbooks: pinned_playbooks(env)?,
            tenants: pinned_tenants(env)?,
            max_run_deadline: max_deadline(env)?,
        })
    }
}

/// What submit reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitConfig {
    /// The evidence bucket (`EVIDENCE_BUCKET`).
    pub bucket: String,
    /// The tenant's Defender call budget.
    pub budget: BudgetConfig,
    /// Submit's own queue, for delayed retries (`SUBMIT_QUEUE_URL`).
    pub submit_queue_url: String,
    /// Where submitted runs go to be polled (`POLL_QUEUE_URL`).
    pub poll_queue_url: String,
    /// Where refused messages go (`DEAD_LETTER_QUEUE_URL`).
    pub dead_letter_queue_url: String,
    /// The delay before the first poll: the first of `POLL_DELAYS_SECS`.
    pub first_poll_delay: Duration,
    /// Backoff for retrying a failed submit.
    pub retry: Backoff,
    /// The playbook file replacing the bundled one, pinned: its library files are the ones kept
    /// in Defender's library.
    pub playbooks: Option<PinnedFile>,
    /// Whether submit uploads, only checks, or leaves alone the library files a run names
    /// (`LIBRARY_SYNC`).
    pub library_sync: SyncMode,
}

impl SubmitConfig {
    /// Reads the bucket, budget, queue URLs, `POLL_DELAYS_SECS` and the retry backoff; the error
    /// names the variable to fix.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            bucket: bucket(env)?,
            budget: BudgetConfig::from_env(env)?,
            submit_queue_url: queue_url(
                env,
                "SUBMIT_QUEUE_URL",
                "the submit stage's own queue (for delayed retries)",
            )?,
            poll_queue_url: queue_url(env, "POLL_QUEUE_URL", "the poll stage's queue")?,
            dead_letter_queue_url: dead_letter_queue_url(env)?,
            first_poll_delay: secs_list(env, "POLL_DELAYS_SECS", DEFAULT_POLL_DELAYS)?[0],
            retry: Backoff::from_env(env)?,
            playbooks: pinned_playbooks(env)?,
            library_sync: SyncMode::from_env(env)?,
        })
    }
}

/// Look every 5 s: with the status board (the default), a look costs no Defender call unless the
/// board is older than 5 s, and the board is refreshed by one listing for every run at once.
/// (With `POLL_STATUS=each`, every look is a GET: step the delays out, e.g.
/// `15,30,60,120,300,600,900`.)
pub const DEFAULT_POLL_DELAYS: &str = "5";

/// Where poll learns an action's state (`POLL_STATUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFrom {
    /// `board` (default): the status board, one listing shared by every run.
    Board,
    /// `each`: one GET of the action per look.
    Each,
}

impl StatusFrom {
    fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        match env.var("POLL_STATUS").as_deref() {
            None | Some("") | Some("board") => Ok(Self::Board),
            Some("each") => Ok(Self::Each),
            Some(other) => Err(ConfigError::Invalid {
                var: "POLL_STATUS",
                value: other.to_string(),
                reason: "expected board or each".into(),
            }),
        }
    }
}

/// What poll reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollConfig {
    /// The evidence bucket (`EVIDENCE_BUCKET`).
    pub bucket: String,
    /// The tenant's Defender call budget.
    pub budget: BudgetConfig,
    /// Poll's own queue; it re-enqueues itself (`POLL_QUEUE_URL`).
    pub poll_queue_url: String,
    /// Where finished actions go to be collected (`COLLECT_QUEUE_URL`).
    pub collect_queue_url: String,
    /// Where refused messages go (`DEAD_LETTER_QUEUE_URL`).
    pub dead_letter_queue_url: String,
    /// Delays between polls (`POLL_DELAYS_SECS`); the last repeats once they run out.
    pub poll_delays: Vec<Duration>,
    /// Where an action's state is read (`POLL_STATUS`).
    pub status_from: StatusFrom,
    /// Backoff for retrying a failed poll.
    pub retry: Backoff,
}

impl PollConfig {
    /// Reads the bucket, budget, queue URLs, `POLL_DELAYS_SECS` and the retry backoff; the error
    /// names the variable to fix.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            bucket: bucket(env)?,
            budget: BudgetConfig::from_env(env)?,
            poll_queue_url: queue_url(
                env,
                "POLL_QUEUE_URL",
                "the poll stage's own queue (it re-enqueues itself)",
            )?,
            collect_queue_url: queue_url(env, "COLLECT_QUEUE_URL", "the collect stage's queue")?,
            dead_letter_queue_url: dead_letter_queue_url(env)?,
            poll_delays: secs_list(env, "POLL_DELAYS_SECS", DEFAULT_POLL_DELAYS)?,
            status_from: StatusFrom::from_env(env)?,
            retry: Backoff::from_env(env)?,
        })
    }
}

/// What collect reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectConfig {
    /// The evidence bucket (`EVIDENCE_BUCKET`).
    pub bucket: String,
    /// The tenant's Defender call budget.
    pub budget: BudgetConfig,
    /// Collect's own queue, for retries and continuations (`COLLECT_QUEUE_URL`).
    pub collect_queue_url: String,
    /// Where refused messages go (`DEAD_LETTER_QUEUE_URL`).
    pub dead_letter_queue_url: String,
    /// Host suffixes a result link may point at.
    pub allowed_hosts: Vec<String>,
    /// Smallest multipart part; larger when a package would need more than 10,000 parts.
    pub part_size_min: usize,
    /// Copies tried before a command is recorded as not collected.
    pub max_attempts: u32,
    /// Backoff between copy attempts.
    pub retry: Backoff,
    /// How long a download may wait for its next bytes (`DOWNLOAD_READ_TIMEOUT_SECS`, default 60).
    pub download_timeout: Duration,
    /// How long one invocation copies before it saves a checkpoint and hands the rest to the next
    /// (the function's timeout is 900 s).
    pub time_budget: Duration,
}

/// The default `DOWNLOAD_ALLOWED_HOSTS`: the commercial and US Government blob hosts.
pub const DEFAULT_ALLOWED_HOSTS: &str = ".blob.core.windows.net,.blob.core.usgovcloudapi.net";

impl CollectConfig {
    /// Reads the bucket, budget, queue URLs, `DOWNLOAD_ALLOWED_HOSTS`, `COLLECT_PART_MIB`,
    /// `COLLECT_MAX_ATTEMPTS`, `DOWNLOAD_READ_TIMEOUT_SECS`, `COLLECT_TIME_BUDGET_SECS` and the
    /// retry backoff; the error names the variable to fix.
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
            budget: BudgetConfig::from_env(env)?,
            collect_queue_url: queue_url(
                env,
                "COLLECT_QUEUE_URL",
                "the collect stage's own queue (for retries)",
            )?,
            dead_letter_queue_url: dead_letter_queue_url(env)?,
            allowed_hosts,
            part_size_min: number(env, "COLLECT_PART_MIB", 8usize, 5..=512)? << 20,
            max_attempts: number(env, "COLLECT_MAX_ATTEMPTS", 5u32, 1..=50)?,
            retry: Backoff::from_env(env)?,
            download_timeout: seconds(env, "DOWNLOAD_READ_TIMEOUT_SECS", 60, 5..=900)?,
            time_budget: seconds(env, "COLLECT_TIME_BUDGET_SECS", 600, 0..=870)?,
        })
    }
}

#[cfg(test)]
mod stage_tests {
    use super::*;
    use std::collections::HashMap;

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
        assert_eq!(s.first_poll_delay, Duration::from_secs(5));
        assert_eq!(s.library_sync, SyncMode::Upload);
        let p = PollConfig::from_env(&env).unwrap();
        assert_eq!(p.poll_delays, vec![Duration::from_secs(5)]);
        assert_eq!(p.status_from, StatusFrom::Board);
        let mut each = base();
        each.insert("POLL_STATUS", "each");
        assert_eq!(
            PollConfig::from_env(&each).unwrap().status_from,
            StatusFrom::Each
        );
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
            ("PLAYBOOKS_S3_URI", "s3://bucket/"),
            (
                "PLAYBOOKS_SHA256",
                "abababababababababababababababababababababababababababababababab",
            ),
            ("LIBRARY_SYNC", "sometimes"),
            ("POLL_STATUS", "sometimes"),
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
        // Defect (swapped playbooks): a playbook file from S3 without a pin is refused, naming the
        // pin to set; with one, both stages carry it.
        let mut env = base();
        env.insert("PLAYBOOKS_S3_URI", "s3://bucket/unpinned.toml");
        assert_eq!(
            IntakeConfig::from_env(&env).unwrap_err().var(),
            "PLAYBOOKS_SHA256"
        );
        assert_eq!(
            SubmitConfig::from_env(&env).unwrap_err().var(),
            "PLAYBOOKS_SHA256"
        );
        env.insert(
            "PLAYBOOKS_SHA256",
            "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB",
        );
        let pinned = Some(PinnedFile {
            uri: "s3://bucket/unpinned.toml".into(),
            sha256: "ab".repeat(32),
            uri_var: "PLAYBOOKS_S3_URI",
            sha256_var: "PLAYBOOKS_SHA256",
        });
        assert_eq!(IntakeConfig::from_env(&env).unwrap().playbooks, pinned);
        assert_eq!(SubmitConfig::from_env(&env).unwrap().playbooks, pinned);
        // The tenant registry is pinned the same way: every function refuses an unpinned one.
        let mut env = base();
        assert_eq!(IntakeConfig::from_env(&env).unwrap().tenants, None);
        env.insert("TENANTS_S3_URI", "s3://bucket/tenants.toml");
        assert_eq!(
            IntakeConfig::from_env(&env).unwrap_err().var(),
            "TENANTS_SHA256"
        );
        assert_eq!(pinned_tenants(&env).unwrap_err().var(), "TENANTS_SHA256");
        env.insert(
            "TENANTS_SHA256",
            "abababababababababababababababababababababababababababababababab",
        );
        assert_eq!(
            IntakeConfig::from_env(&env).unwrap().tenants.map(|p| p.uri),
            Some("s3://bucket/tenants.toml".to_string())
        );
        env.insert("TENANTS_S3_URI", "https://bucket/tenants.toml");
        assert_eq!(pinned_tenants(&env).unwrap_err().var(), "TENANTS_S3_URI");
        let mut env = base();
        env.remove("DEAD_LETTER_QUEUE_URL");
        assert_eq!(
            IntakeConfig::from_env(&env).unwrap_err().var(),
            "DEAD_LETTER_QUEUE_URL"
        );
    }
}
