//! intake: alert → normalised alert → playbook → run record (de-duplicated) → submit job.

use time::OffsetDateTime;

use super::settings::IntakeConfig;
use super::{Done, StageError};
use crate::alerts::{self, playbook::Playbooks};
use crate::codes::{Outcome, RejectCode};
use crate::messages::{MESSAGE_VERSION, SubmitJob, encode};
use crate::ports::{ObjectStore, Queue};
use crate::store::{RunRecord, RunState, create_run};
use crate::tenants::Claim;

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
    // No tenant registry is read yet: a native alert naming a tenant is refused, as it was before
    // the field existed, rather than run without the check its tenant asks for. (A Defender
    // alert's `tenantId` is Defender's, not the sender's request, and is ignored as before.)
    if let Some(Claim::Key(tenant)) = &alert.tenant {
        return Err(StageError::Reject {
            code: RejectCode::InvalidField,
            reason: format!(
                "tenant {tenant}: this deployment serves one tenant and reads no tenant registry"
            ),
        });
    }
    let plan = playbooks.plan(&alert).map_err(reject)?;
    for r in &plan.refused {
        tracing::warn!(parameter = %r.name, playbook = %r.playbook, reason = %r.reason,
            "an alert value was refused; the run goes on without it");
    }
    let deadline = match cfg.max_run_deadline {
        Some(cap) => plan.playbook.deadline().min(cap),
        None => plan.playbook.deadline(),
    };
    let record = RunRecord::received(alert, plan, now, deadline);
    let run_id = record.run_id.clone();
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
