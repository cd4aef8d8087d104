//! intake: alert → normalised alert → its tenant, checked against its sender → playbook → run
//! record (de-duplicated) → submit job.

use time::OffsetDateTime;

use super::settings::IntakeConfig;
use super::{Done, StageError};
use crate::alerts::{self, playbook::Playbooks};
use crate::codes::Outcome;
use crate::messages::{Delivery, MESSAGE_VERSION, SubmitJob, encode};
use crate::ports::{ObjectStore, Queue};
use crate::store::{RunRecord, RunState, create_run};
use crate::tenants::{Refusal, Tenancy};

/// What intake decides with: the playbooks, and the tenants with who may send their alerts.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    /// The deployment's playbooks.
    pub playbooks: &'a Playbooks,
    /// The tenants it serves.
    pub tenancy: &'a Tenancy,
}

impl<'a> Rules<'a> {
    /// The playbooks, for a deployment that serves one tenant.
    pub fn single(playbooks: &'a Playbooks) -> Self {
        Self {
            playbooks,
            tenancy: &Tenancy::Single,
        }
    }
}

/// Handles one alert received at `now`: parses it, finds its tenant and checks that the
/// message's sender may start runs there, picks the playbook (one the tenant may run), creates the
/// run record (or finds the run a duplicate alert already made) and sends the submit job. An
/// alert that cannot be used is a `Reject` with its code; S3 or SQS failing is a `Retry`.
pub async fn handle<S: ObjectStore, Q: Queue>(
    cfg: &IntakeConfig,
    rules: Rules<'_>,
    store: &S,
    queue: &Q,
    msg: &Delivery,
    now: OffsetDateTime,
) -> Result<Done, StageError> {
    let reject = |e: alerts::AlertError| StageError::Reject {
        code: e.code,
        reason: e.message,
    };
    let refuse = |r: Refusal| StageError::Reject {
        code: r.code(),
        reason: r.to_string(),
    };
    let alert = alerts::parse(&msg.body).map_err(reject)?;
    // Before anything else is decided for it: may this sender start runs in the tenant named?
    let tenant = rules
        .tenancy
        .admit(alert.tenant.as_ref(), msg.sender.as_deref())
        .map_err(refuse)?;
    let plan = rules.playbooks.plan(&alert).map_err(reject)?;
    if let Some(t) = tenant {
        t.may_run(&plan.playbook.name).map_err(refuse)?;
    }
    for r in &plan.refused {
        tracing::warn!(parameter = %r.name, playbook = %r.playbook, reason = %r.reason,
            "an alert value was refused; the run goes on without it");
    }
    let deadline = match cfg.max_run_deadline {
        Some(cap) => plan.playbook.deadline().min(cap),
        None => plan.playbook.deadline(),
    };
    let record = RunRecord::received(alert, plan, tenant.map(|t| &t.key), now, deadline);
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
