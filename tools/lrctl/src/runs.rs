//! `lrctl runs`: which runs exist and how far each got, read from the run records under
//! `state/runs/` (and their command records, to count what was collected), filtered by state,
//! outcome, device, alert and age. A record that does not parse is reported by key and skipped,
//! so one damaged record never hides the rest.

use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use shared::ids::RunId;
use shared::store::{CommandOutcome, CommandRecord, RunOutcome, RunRecord, RunState};
use time::OffsetDateTime;

use crate::Ctx;
use crate::bucket::Bucket;
use crate::cli::RunsArgs;
use crate::error::{Error, Result};
use crate::output::{age, parse_duration, print_json, table};

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
                .map(|s| parse_word("--outcome", s, "succeeded, failed, timed_out, cancelled"))
                .transpose()?,
            device: args.device.as_ref().map(|d| d.trim().to_ascii_lowercase()),
            alert: args.alert.clone(),
            since: args
                .since
                .as_deref()
                .map(|s| parse_duration(s).map_err(|e| Error::Usage(format!("--since: {e}"))))
                .transpose()?
                .map(|secs| now - time::Duration::seconds(secs)),
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

/// The command records of `run` (commands `0..n`; a missing one is left out).
pub async fn load_commands(bucket: &Bucket, run: &RunId, n: usize) -> Result<Vec<CommandRecord>> {
    let keys: Vec<String> = (0..n as u32)
        .map(|i| shared::store::command_key(run, i))
        .collect();
    let found: Vec<Option<CommandRecord>> = futures_util::stream::iter(keys)
        .map(|k| async move { bucket.record::<CommandRecord>(&k).await })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Every run record in the bucket, and the keys of those that would not read (with why).
pub async fn load_runs(bucket: &Bucket) -> Result<(Vec<RunRecord>, Vec<(String, String)>)> {
    let keys: Vec<String> = bucket
        .list("state/runs/")
        .await?
        .into_iter()
        .filter(|k| k.ends_with("/run.json"))
        .collect();
    let results: Vec<(String, Result<Option<RunRecord>>)> = futures_util::stream::iter(keys)
        .map(|k| async move {
            let r = bucket.record::<RunRecord>(&k).await;
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
    let (runs, bad) = load_runs(&bucket).await?;
    let runs: Vec<RunRecord> = runs.into_iter().filter(|r| filter.keeps(r)).collect();
    let counts: Vec<usize> = futures_util::stream::iter(&runs)
        .map(|r| {
            let bucket = &bucket;
            async move {
                let cmds = load_commands(bucket, &r.run_id, r.commands.len()).await?;
                Ok::<_, Error>(
                    cmds.iter()
                        .filter(|c| c.outcome == CommandOutcome::Collected)
                        .count(),
                )
            }
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    for (key, why) in &bad {
        eprintln!("lrctl: skipped {key}: {why}");
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
        println!("no runs match");
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
                format!("{n}/{}", r.commands.len()),
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
