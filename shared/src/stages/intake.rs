//! intake: alert → normalised alert → playbook → run record (de-duplicated) → submit job.

use time::OffsetDateTime;

use super::settings::IntakeConfig;
use super::{Done, StageError};
use crate::alerts::{self, playbook::Playbooks};
use crate::codes::Outcome;
use crate::ids::RunId;
use crate::messages::{MESSAGE_VERSION, SubmitJob, encode};
use crate::ports::{ObjectStore, Queue};
use crate::store::{RECORD_VERSION, RunRecord, RunState, create_run};

/// Handles one alert body received at `now`: parses it, picks the playbook, creates the run
/// record (or finds the run a duplicate alert already made) and sends the submit job. An alert
/// that cannot be used is a `Reject` with its code; S3 or SQS failing is a `Retry`.
pub async fn handle<S: ObjectStore, Q: Queue>(
    cfg: &IntakeConfig,
    playbooks: &Playbooks,
    store: &S,
    queue: &Q,
    body: &str,
    now: OffsetDateTime,
) -> Result<Done, StageError> {
    let reject = |e: alerts::AlertError| StageError::Reject {
        code: e.code,
        reason: e.message,
    };
    let alert = alerts::parse(body).map_err(reject)?;
    let plan = playbooks.plan(&alert).map_err(reject)?;
    for r in &plan.refused {
        tracing::warn!(parameter = %r.name, playbook = %r.playbook, reason = %r.reason,
            "an alert value was refused; the run goes on without it");
    }
    let (playbook, commands) = (plan.playbook, plan.commands);
    let format = serde_json::to_value(alert.format)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let run_id = RunId::derive(
        &format,
        alert.alert_id.as_str(),
        alert.machine_id.as_str(),
        &playbook.name,
    );
    let deadline = match cfg.max_run_deadline {
        Some(cap) => playbook.deadline().min(cap),
        None => playbook.deadline(),
    };
    let record = RunRecord {
        v: RECORD_VERSION,
        run_id: run_id.clone(),
        comment: format!(
            "{} alert:{} playbook:{}",
            run_id.comment_tag(),
            alert.alert_id,
            playbook.name
        ),
        playbook: playbook.name.clone(),
        playbook_sha256: Some(playbook.sha256()),
        refused_parameters: plan.refused,
        machine_id: alert.machine_id.clone(),
        alert,
        commands,
        state: RunState::Received,
        created_at: now,
        deadline: now + deadline,
        submit_attempts: 0,
        action_id: None,
        action_status: None,
        submitted_at: None,
        finished_at: None,
        computer_dns_name: None,
        requestor: None,
        action_created: None,
        action_last_update: None,
        cancelled_by_pipeline: false,
        outcome: None,
        reason: None,
        chain: Default::default(),
        unfinished: None,
    };
    let outcome = match create_run(store, &record).await? {
        None => Outcome::Accepted,
        // Seen before. If it never reached submit (a crash between the two writes), send it on.
        Some(existing) if existing.state == RunState::Received => Outcome::Resent,
        Some(existing) => {
            return Ok(Done::new(
                &run_id,
                Outcome::Duplicate,
                format!(
                    "alert already handled by run {run_id} ({:?})",
                    existing.state
                ),
            ));
        }
    };
    let job = SubmitJob {
        v: MESSAGE_VERSION,
        run_id: run_id.clone(),
        attempt: 0,
        prev: None,
    };
    queue
        .send(
            &cfg.submit_queue_url,
            &encode(&job),
            std::time::Duration::ZERO,
        )
        .await?;
    Ok(Done::new(
        &run_id,
        outcome,
        format!(
            "playbook {} on {} ({} commands)",
            record.playbook,
            record.machine_id,
            record.commands.len()
        ),
    ))
}
