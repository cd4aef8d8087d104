//! `lrctl runs`: which runs exist and how far each got, read from the run records under
//! `state/runs/` (and their command records, to count what was collected), filtered by state,
//! outcome, device, alert and age. A record that does not parse is reported by key and skipped,
//! so one damaged record never hides the rest: a damaged run record leaves its run out, a damaged
//! command record shows its run's collected count as `?`; both keys are listed as skipped.

use futures_util::StreamExt;
use serde_json::json;
use shared::ids::RunId;
use shared::store::{CommandOutcome, CommandRecord, RunOutcome, RunRecord, RunState};
use time::OffsetDateTime;

use crate::bucket::{Bucket, MAX_RECORD};
use crate::cli::RunsArgs;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{age, print_json, table};

/// Keys of records that would not read, each with why.
pub type Unreadable = Vec<(String, String)>;

/// How many records are read at once.
const PARALLEL: usize = 16;

/// Parses a snake_case enum value the way records store it, or says what the values are.
fn parse_word<T: serde::de::DeserializeOwned>(flag: &str, text: &str, values: &str) -> Result<T> {
    serde_json::from_value(json!(text.trim().to_ascii_lowercase()))
        .map_err(|_| Error::Usage(format!("{flag} {text:?}: expected one of {values}")))
}

/// The filters of `lrctl runs`, parsed.
struct Filter {
    state: Option<RunState>,
    outcome: Option<RunOutcome>,
    device: Option<String>,
    alert: Option<String>,
    since: Option<OffsetDateTime>,
}

impl Filter {
    fn new(args: &RunsArgs, now: OffsetDateTime) -> Result<Self> {
        Ok(Self {
            state: args
                .state
                .as_deref()
                .map(|s| {
                    parse_word(
                        "--state",
                        s,
                        "received, submitting, submitted, collecting, completed, failed",
                    )
                })
                .transpose()?,
            outcome: args
                .outcome
                .as_deref()
                .map(|s| {
                    parse_word(
                        "--outcome",
                        s,
                        "succeeded, partial, failed, timed_out, cancelled",
                    )
                })
                .transpose()?,
            device: args.device.as_ref().map(|d| d.trim().to_ascii_lowercase()),
            alert: args.alert.clone(),
            since: args
                .since
                .as_deref()
                .map(|s| crate::output::since(s, now))
                .transpose()?,
        })
    }

    fn keeps(&self, r: &RunRecord) -> bool {
        let device_matches = |d: &str| {
            r.machine_id.as_str() == d
                || r.computer_dns_name.as_deref().is_some_and(|n| {
                    let n = n.to_ascii_lowercase();
                    n == d || n.split('.').next() == Some(d)
                })
        };
        self.state.is_none_or(|s| s == r.state)
            && self.outcome.is_none_or(|o| Some(o) == r.outcome)
            && self.device.as_deref().is_none_or(device_matches)
            && self
                .alert
                .as_deref()
                .is_none_or(|a| r.alert.alert_id.as_str() == a)
            && self.since.is_none_or(|t| r.created_at >= t)
    }
}

/// The command records of `run` (commands `0..n`; a missing one is left out), and the keys of
/// those that would not read (with why).
pub async fn load_commands(
    bucket: &Bucket,
    run: &RunId,
    n: usize,
) -> (Vec<CommandRecord>, Vec<(String, String)>) {
    let keys: Vec<String> = (0..n)
        .map_while(|i| u32::try_from(i).ok())
        .map(|i| shared::store::command_key(run, i))
        .collect();
    let found: Vec<(String, Result<Option<CommandRecord>>)> = futures_util::stream::iter(keys)
        .map(|k| async move {
            let r = bucket.record::<CommandRecord>(&k, MAX_RECORD).await;
            (k, r)
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let (mut records, mut bad) = (Vec::new(), Vec::new());
    for (key, r) in found {
        match r {
            Ok(Some(c)) => records.push(c),
            Ok(None) => {}
            Err(e) => bad.push((key, e.to_string())),
        }
    }
    (records, bad)
}

/// Every run record under `prefix` (every run's, or one tenant's: [`crate::context::Ctx::runs_prefix`]),
/// and the keys of those that would not read (with why).
pub async fn load_runs(
    bucket: &Bucket,
    prefix: &str,
) -> Result<(Vec<RunRecord>, Vec<(String, String)>)> {
    let keys: Vec<String> = bucket
        .list(prefix)
        .await?
        .into_iter()
        .filter(|k| k.ends_with("/run.json"))
        .collect();
    let results: Vec<(String, Result<Option<RunRecord>>)> = futures_util::stream::iter(keys)
        .map(|k| async move {
            let r = bucket.record::<RunRecord>(&k, MAX_RECORD).await;
            (k, r)
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let (mut runs, mut bad) = (Vec::new(), Vec::new());
    for (key, r) in results {
        match r {
            Ok(Some(run)) => runs.push(run),
            Ok(None) => {}
            Err(e) => bad.push((key, e.to_string())),
        }
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    Ok((runs, bad))
}

fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub async fn command(ctx: &Ctx, args: &RunsArgs) -> Result<u8> {
    let now = OffsetDateTime::now_utc();
    let filter = Filter::new(args, now)?;
    let bucket = ctx.bucket()?;
    let (runs, mut bad) = load_runs(&bucket, &ctx.runs_prefix()).await?;
    let runs: Vec<RunRecord> = runs.into_iter().filter(|r| filter.keeps(r)).collect();
    // The collected count of each run; `None` when a command record would not read.
    let loaded: Vec<(Option<usize>, Unreadable)> = futures_util::stream::iter(&runs)
        .map(|r| {
            let bucket = &bucket;
            async move {
                let (cmds, damaged) = load_commands(bucket, &r.run_id, r.commands.len()).await;
                let n = cmds
                    .iter()
                    .filter(|c| c.outcome == CommandOutcome::Collected)
                    .count();
                (damaged.is_empty().then_some(n), damaged)
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut counts = Vec::with_capacity(loaded.len());
    for (n, damaged) in loaded {
        counts.push(n);
        bad.extend(damaged);
    }
    for (key, why) in &bad {
        crate::output::err(format!("lrctl: skipped {key}: {why}"));
    }
    if ctx.json {
        let rows: Vec<_> = runs
            .iter()
            .zip(&counts)
            .map(|(r, n)| {
                json!({
                    "run_id": r.run_id, "alert_id": r.alert.alert_id,
                    "machine_id": r.machine_id, "computer_dns_name": r.computer_dns_name,
                    "playbook": r.playbook, "state": r.state, "outcome": r.outcome,
                    "reason": r.reason, "created_at": crate::output::timestamp(r.created_at),
                    "age_secs": (now - r.created_at).whole_seconds(),
                    "commands_collected": n, "commands_total": r.commands.len(),
                })
            })
            .collect();
        let skipped: Vec<_> = bad
            .iter()
            .map(|(k, e)| json!({"key": k, "error": e}))
            .collect();
        print_json(&json!({"runs": rows, "skipped": skipped}));
        return Ok(0);
    }
    if runs.is_empty() {
        crate::output::out("no runs match");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .zip(&counts)
        .map(|(r, n)| {
            vec![
                r.run_id.to_string(),
                r.alert.alert_id.to_string(),
                r.computer_dns_name
                    .clone()
                    .unwrap_or_else(|| r.machine_id.to_string()),
                r.playbook.clone(),
                word(&r.state),
                r.outcome.as_ref().map(word).unwrap_or_else(|| "-".into()),
                age((now - r.created_at).whole_seconds()),
                format!(
                    "{}/{}",
                    n.map_or("?".into(), |n| n.to_string()),
                    r.commands.len()
                ),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "RUN",
                "ALERT",
                "DEVICE",
                "PLAYBOOK",
                "STATE",
                "OUTCOME",
                "AGE",
                "COLLECTED"
            ],
            &rows
        )
    );
    Ok(0)
}
