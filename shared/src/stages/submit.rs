//! submit: one live response per run. Defender's 429s and busy devices put the job back on the
//! queue with a delay; neither is a failure. A submission that may have reached Defender is looked
//! up by the run id in its comment before anything is sent again.

use std::time::Duration;

use time::OffsetDateTime;

use super::{Done, StageError, jitter};
use crate::budget::{self, Paced};
use crate::clock::Clock;
use crate::config::SubmitConfig;
use crate::defender::{ActionFilter, DefenderError, LiveResponseRequest, MachineAction, Next};
use crate::messages::{MESSAGE_VERSION, PollJob, SubmitJob, encode};
use crate::ports::{Defender, ObjectStore, Queue, StoreError};
use crate::store::{RunOutcome, RunRecord, RunState, finish_run_if_complete, update_run};

pub async fn handle<S: ObjectStore, Q: Queue, D: Defender>(
    cfg: &SubmitConfig,
    store: &S,
    queue: &Q,
    defender: &D,
    clock: &dyn Clock,
    body: &str,
) -> Result<Done, StageError> {
    let now = clock.now();
    let (job, run_id, run) = super::open::<SubmitJob, _>(store, body).await?;
    match run.state {
        RunState::Received | RunState::Submitting => {}
        RunState::Submitted => {
            // Recorded, but the poll job may not have been sent (a crash or failed send): send it.
            if let Some(action_id) = &run.action_id {
                send_poll(cfg, queue, &run, action_id.clone()).await?;
            }
            return Ok(Done::new(&run_id, "already_submitted", "poll job re-sent"));
        }
        _ => {
            return Ok(Done::new(
                &run_id,
                "duplicate",
                format!("run is {:?}", run.state),
            ));
        }
    }
    if now >= run.deadline {
        fail_run(
            cfg,
            store,
            clock,
            &run,
            RunOutcome::TimedOut,
            "the deadline passed before Defender accepted the live response",
        )
        .await?;
        return Ok(Done::new(&run_id, "deadline", "never submitted"));
    }

    // An earlier attempt may have reached Defender before this invocation died: look first.
    if run.state == RunState::Submitting {
        let filter = ActionFilter {
            machine_id: Some(run.machine_id.clone()),
            live_response_only: true,
            ..ActionFilter::default()
        };
        let listed = match budget::get_call(store, &cfg.budget, clock, || {
            defender.list_machine_actions(&filter)
        })
        .await?
        {
            Paced::Wait(wait) => return pace(cfg, queue, &job, wait).await,
            Paced::Ran(listed) => listed,
        };
        match listed {
            Ok(actions) => {
                let tag = run.run_id.comment_tag();
                if let Some(found) = actions.into_iter().find(|a| {
                    a.requestor_comment
                        .as_deref()
                        .is_some_and(|c| c.contains(&tag))
                }) {
                    record_submitted(cfg, store, queue, &run, &found, now).await?;
                    return Ok(Done::new(
                        &run_id,
                        "recovered",
                        format!("found action {} from an earlier attempt", found.id),
                    ));
                }
            }
            Err(e) => {
                return retry_later(cfg, queue, &job, &e, "looking for an earlier submission")
                    .await;
            }
        }
    }

    // Keep within the tenant's submission rate and session cap before asking Defender.
    let request = LiveResponseRequest {
        commands: run.commands.clone(),
        comment: run.comment.clone(),
    };
    let answer = budget::submission_call(store, &cfg.budget, clock, &run_id, || async {
        update_run(store, &run_id, |r| {
            r.state = RunState::Submitting;
            r.submit_attempts += 1;
            true
        })
        .await?;
        Ok::<_, StoreError>(defender.run_live_response(&run.machine_id, &request).await)
    })
    .await?;
    let answer = match answer {
        Paced::Wait(wait) => return pace(cfg, queue, &job, wait).await,
        Paced::Ran(answer) => answer?,
    };
    match answer {
        Ok(action) => {
            record_submitted(cfg, store, queue, &run, &action, now).await?;
            Ok(Done::new(
                &run_id,
                "submitted",
                format!("action {}", action.id),
            ))
        }
        Err(e) if matches!(e.next(), Next::RetryAfter(_)) => {
            // Refused outright (throttled, device busy): no session was taken. After a transient
            // failure it may have been, so the run keeps its place until poll or a retry settles it.
            if matches!(
                e,
                DefenderError::RateLimited { .. } | DefenderError::DeviceBusy { .. }
            ) {
                budget::release_session(store, &cfg.budget, clock, &run_id).await?;
            }
            retry_later(cfg, queue, &job, &e, "submitting").await
        }
        Err(e) => {
            fail_run(
                cfg,
                store,
                clock,
                &run,
                RunOutcome::Failed,
                &format!("Defender refused the live response: {e}"),
            )
            .await?;
            Ok(Done::new(&run_id, "refused", e.to_string()))
        }
    }
}

/// Puts the job back until the budget has room (no Defender call was made).
async fn pace<Q: Queue>(
    cfg: &SubmitConfig,
    queue: &Q,
    job: &SubmitJob,
    wait: Duration,
) -> Result<Done, StageError> {
    let delay = wait.max(Duration::from_secs(1));
    queue
        .send(&cfg.submit_queue_url, &encode(job), delay)
        .await?;
    Ok(Done::new(
        &job.run_id,
        "paced",
        format!("tenant budget full; again in {}s", delay.as_secs()),
    ))
}

/// Puts the job back with a delay: Defender's Retry-After when it gave one, else backoff.
async fn retry_later<Q: Queue>(
    cfg: &SubmitConfig,
    queue: &Q,
    job: &SubmitJob,
    err: &DefenderError,
    doing: &str,
) -> Result<Done, StageError> {
    let delay = match err.next() {
        Next::RetryAfter(Some(d)) => d.max(Duration::from_secs(1)),
        _ => cfg.retry.delay(job.attempt, jitter()),
    };
    let next = SubmitJob {
        v: MESSAGE_VERSION,
        run_id: job.run_id.clone(),
        attempt: job.attempt + 1,
    };
    queue
        .send(&cfg.submit_queue_url, &encode(&next), delay)
        .await?;
    let outcome = match err {
        DefenderError::RateLimited { .. } => "throttled",
        DefenderError::DeviceBusy { .. } => "device_busy",
        _ => "transient",
    };
    Ok(Done::new(
        &job.run_id,
        outcome,
        format!("{doing}: {err}; again in {}s", delay.as_secs()),
    ))
}

async fn record_submitted<S: ObjectStore, Q: Queue>(
    cfg: &SubmitConfig,
    store: &S,
    queue: &Q,
    run: &RunRecord,
    action: &MachineAction,
    now: OffsetDateTime,
) -> Result<(), StageError> {
    update_run(store, &run.run_id, |r| {
        r.state = RunState::Submitted;
        r.action_id = Some(action.id.clone());
        r.action_status = Some(action.status.clone());
        r.submitted_at.get_or_insert(now);
        r.computer_dns_name = action
            .computer_dns_name
            .clone()
            .or(r.computer_dns_name.take());
        r.requestor = action.requestor.clone().or(r.requestor.take());
        r.action_created = action.creation_date_time_utc.clone();
        true
    })
    .await?;
    send_poll(cfg, queue, run, action.id.clone()).await
}

async fn send_poll<Q: Queue>(
    cfg: &SubmitConfig,
    queue: &Q,
    run: &RunRecord,
    action_id: crate::defender::ActionId,
) -> Result<(), StageError> {
    let job = PollJob {
        v: MESSAGE_VERSION,
        run_id: run.run_id.clone(),
        action_id,
        polls: 0,
    };
    queue
        .send(&cfg.poll_queue_url, &encode(&job), cfg.first_poll_delay)
        .await?;
    Ok(())
}

async fn fail_run<S: ObjectStore>(
    cfg: &SubmitConfig,
    store: &S,
    clock: &dyn Clock,
    run: &RunRecord,
    outcome: RunOutcome,
    reason: &str,
) -> Result<(), StageError> {
    // Whatever session this run held is free again.
    budget::release_session(store, &cfg.budget, clock, &run.run_id).await?;
    update_run(store, &run.run_id, |r| {
        r.state = RunState::Failed;
        r.outcome = Some(outcome);
        r.reason = Some(reason.to_string());
        true
    })
    .await?;
    finish_run_if_complete(store, &run.run_id).await?;
    Ok(())
}
