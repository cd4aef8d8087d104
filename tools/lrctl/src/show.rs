//! `lrctl show RUN`: one run's story in time order, put together from the run record, the command
//! records, the manifest and its signature: when the alert came in, what Defender reported, what
//! was collected with its hashes, when the manifest was written and signed and the completion
//! event published, and why the run failed if it did. A run record that does not parse is an error
//! naming its key; a damaged command, manifest or signature record is named and the rest shown.
//! `show` checks no signature: it says one is present and which key it names (`lrctl verify`
//! checks it). Every line printed is cleaned of terminal controls ([`crate::output::out`]).

use serde_json::json;
use shared::custody::signature::{ManifestSignature, Statement};
use shared::ids::RunId;
use shared::store::{CommandOutcome, CommandRecord, Manifest, RunRecord};
use time::OffsetDateTime;

use crate::bucket::{MAX_MANIFEST, MAX_RECORD, MAX_SIGNATURE, parse};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{out, print_json, timestamp};
use crate::runs::load_commands;

/// A serde enum value as its stored word (`Succeeded`, `get_file`, ...).
fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// What one command record adds to the timeline.
fn command_event(c: &CommandRecord) -> String {
    let head = format!("command {} ({})", c.index, word(&c.kind));
    if c.outcome == CommandOutcome::Collected {
        let mut s = format!(
            "{head} collected: {}, {} bytes, SHA-256 {}",
            c.s3_key.as_deref().unwrap_or("(no key)"),
            c.size.map_or("?".into(), |n| n.to_string()),
            c.sha256.as_deref().unwrap_or("?"),
        );
        if let Some(d) = &c.sha256_decompressed {
            let n = c.size_decompressed.map_or("?".into(), |n| n.to_string());
            s.push_str(&format!("; decompressed {n} bytes, SHA-256 {d}"));
        }
        s
    } else {
        let why = c.reason.as_deref().filter(|r| !r.is_empty());
        format!(
            "{head} {}{}",
            word(&c.outcome),
            why.map(|r| format!(": {r}")).unwrap_or_default()
        )
    }
}

/// The run's events, in time order.
pub fn timeline(
    run: &RunRecord,
    commands: &[CommandRecord],
    manifest: Option<(&str, &Manifest)>,
    signed: Option<&Statement>,
) -> Vec<(OffsetDateTime, String)> {
    let mut ev = vec![(
        run.created_at,
        format!(
            "alert received: {} on {}, playbook {}",
            run.alert.alert_id, run.machine_id, run.playbook
        ),
    )];
    if let Some(t) = run.submitted_at {
        let action = run.action_id.as_ref().map(|a| a.to_string());
        ev.push((
            t,
            format!(
                "submitted to Defender: action {}",
                action.as_deref().unwrap_or("?")
            ),
        ));
    }
    for s in &run.statuses {
        ev.push((s.at, format!("action status {}", word(&s.status))));
    }
    if run.cancelled_by_pipeline {
        ev.push((
            run.deadline,
            "deadline passed: the pipeline cancelled the action".into(),
        ));
    }
    for c in commands {
        if let Some(t) = c.recorded_at {
            ev.push((t, command_event(c)));
        }
    }
    if let Some(t) = run.finished_at {
        let outcome = run.outcome.as_ref().map(word).unwrap_or_else(|| "-".into());
        ev.push((t, format!("run {} ({outcome})", word(&run.state))));
    }
    if let Some((key, m)) = manifest {
        ev.push((m.completed_at, format!("manifest written: {key}")));
    }
    if let Some(st) = signed {
        ev.push((
            st.signed_at,
            format!(
                "manifest signature present (key {}; `lrctl verify` checks it)",
                st.key_id
            ),
        ));
    }
    if let Some(t) = run.announcement.as_ref().and_then(|a| a.published_at) {
        ev.push((t, "completion event published".into()));
    }
    ev.sort_by_key(|(t, _)| *t);
    ev
}

pub async fn command(ctx: &Ctx, run: &RunId) -> Result<u8> {
    let bucket = ctx.bucket()?;
    let run_key = shared::store::run_key(run);
    let record: RunRecord = bucket.record(&run_key, MAX_RECORD).await?.ok_or_else(|| {
        Error::failed(format!(
            "no run {run}: there is no {run_key} in bucket {} (list runs with `lrctl runs`)",
            bucket.name()
        ))
    })?;
    let (commands, mut damaged) = load_commands(&bucket, run, record.commands.len()).await;
    let manifest_key = shared::store::manifest_key(run);
    let manifest: Option<Manifest> = match bucket.record(&manifest_key, MAX_MANIFEST).await {
        Ok(m) => m,
        Err(e) => {
            damaged.push((manifest_key.clone(), e.to_string()));
            None
        }
    };
    let sig_key = shared::store::signature_key(run);
    let statement = match bucket
        .record::<ManifestSignature>(&sig_key, MAX_SIGNATURE)
        .await
        .and_then(|doc| {
            doc.map(|d| parse::<Statement>(&sig_key, d.statement.as_bytes()))
                .transpose()
        }) {
        Ok(st) => st,
        Err(e) => {
            damaged.push((sig_key.clone(), e.to_string()));
            None
        }
    };
    let events = timeline(
        &record,
        &commands,
        manifest.as_ref().map(|m| (manifest_key.as_str(), m)),
        statement.as_ref(),
    );
    if ctx.json {
        let events: Vec<_> = events
            .iter()
            .map(|(t, what)| json!({"at": timestamp(*t), "event": what}))
            .collect();
        print_json(&json!({
            "run_id": run, "alert_id": record.alert.alert_id, "machine_id": record.machine_id,
            "computer_dns_name": record.computer_dns_name, "playbook": record.playbook,
            "state": record.state, "outcome": record.outcome, "reason": record.reason,
            "events": events,
            "unreadable": damaged.iter().map(|(k, e)| json!({"key": k, "error": e})).collect::<Vec<_>>(),
        }));
        return Ok(0);
    }
    out(format!("run       {run}"));
    out(format!(
        "alert     {} {}",
        record.alert.alert_id,
        crate::output::excerpt(&record.alert.title, 100)
    ));
    out(format!(
        "device    {}{}",
        record.machine_id,
        record
            .computer_dns_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    ));
    out(format!("playbook  {}", record.playbook));
    let outcome = record
        .outcome
        .as_ref()
        .map(word)
        .unwrap_or_else(|| "-".into());
    out(format!("state     {} ({outcome})", word(&record.state)));
    if let Some(r) = &record.reason {
        out(format!("reason    {r}"));
    }
    out("");
    for (t, what) in events {
        out(format!("{}  {what}", timestamp(t)));
    }
    for (key, why) in &damaged {
        out(format!("unreadable: {key}: {why}"));
    }
    Ok(0)
}
