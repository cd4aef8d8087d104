//! poll: look at the action; while it runs, come back later through the queue on a stepped
//! schedule; past the run's deadline, cancel it; once it ends, record every command and fan out
//! one collect job per command that left a result.

use std::time::Duration;

use super::{Done, StageError, jitter};
use crate::budget::{self, Paced};
use crate::clock::Clock;
use crate::config::PollConfig;
use crate::defender::{ActionStatus, CommandStatus, DefenderError, MachineAction, Next};
use crate::messages::{CollectJob, MESSAGE_VERSION, PollJob, encode};
use crate::ports::{Defender, ObjectStore, Queue};
use crate::store::{
    CommandOutcome, CommandRecord, RECORD_VERSION, RunOutcome, RunRecord, RunState,
    finish_run_if_complete, load_command, put_command, update_run,
};

/// How many times an action may answer 404 (it can, just after creation) before the run fails.
const NOT_FOUND_POLLS: u32 = 10;

/// The delay before poll number `polls` (0-based), never later than just past the deadline.
pub fn next_delay(schedule: &[Duration], polls: u32, until_deadline: Duration) -> Duration {
    let step = schedule
        .get(polls as usize)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(60));
    step.min(until_deadline + Duration::from_secs(1))
        .max(Duration::from_secs(1))
}

pub async fn handle<S: ObjectStore, Q: Queue, D: Defender>(
    cfg: &PollConfig,
    store: &S,
    queue: &Q,
    defender: &D,
    clock: &dyn Clock,
    body: &str,
) -> Result<Done, StageError> {
    let now = clock.now();
    let (job, run_id, run) = super::open::<PollJob, _>(store, body).await?;
    if run.state == RunState::Collecting {
        // Finalised before, but the collect jobs may not all have gone out (a crash between the
        // record and the sends): send again for every command still waiting for its copy.
        let mut resent = 0;
        for index in 0..run.commands.len() as u32 {
            if load_command(store, &run_id, index)
                .await?
                .is_some_and(|c| c.outcome == CommandOutcome::Collecting)
            {
                send_collect(cfg, queue, &run_id, &job.action_id, index).await?;
                resent += 1;
            }
        }
        finish_run_if_complete(store, &run_id).await?;
        return Ok(Done::new(
            &run_id,
            "resent",
            format!("{resent} collect job(s) sent again"),
        ));
    }
    if run.state != RunState::Submitted {
        return Ok(Done::new(
            &run_id,
            "duplicate",
            format!("run is {:?}", run.state),
        ));
    }
    let until_deadline: Duration = (run.deadline - now).try_into().unwrap_or(Duration::ZERO);
    let read = budget::get_call(store, &cfg.budget, clock, || {
        defender.get_machine_action(&job.action_id)
    })
    .await?;
    let read = match read {
        Paced::Wait(wait) => return paced(cfg, queue, &job, wait).await,
        Paced::Ran(read) => read,
    };
    let action = match read {
        Ok(a) => a,
        Err(DefenderError::NotFound { .. }) if job.polls < NOT_FOUND_POLLS => {
            // New actions can answer 404 for a moment.
            requeue(cfg, queue, &job, job.polls + 1, Duration::from_secs(2)).await?;
            return Ok(Done::new(
                &run_id,
                "not_yet_visible",
                "action answered 404; looking again shortly",
            ));
        }
        Err(e) if matches!(e.next(), Next::RetryAfter(_)) => {
            let delay = match e.next() {
                Next::RetryAfter(Some(d)) => d,
                _ => cfg.retry.delay(job.polls.min(8), jitter()),
            };
            requeue(cfg, queue, &job, job.polls, delay).await?;
            return Ok(Done::new(
                &run_id,
                "throttled",
                format!("{e}; again in {}s", delay.as_secs()),
            ));
        }
        Err(e) => {
            update_run(store, &run_id, |r| {
                r.state = RunState::Failed;
                r.outcome = Some(RunOutcome::Failed);
                r.reason = Some(format!("cannot read action {}: {e}", job.action_id));
                true
            })
            .await?;
            budget::release_session(store, &cfg.budget, clock, &run_id).await?;
            finish_run_if_complete(store, &run_id).await?;
            return Ok(Done::new(&run_id, "failed", e.to_string()));
        }
    };
    if action.status.is_final() {
        return finalize(cfg, store, queue, clock, &run, &action, false).await;
    }
    if now >= run.deadline {
        let comment = format!(
            "{}: deadline passed, cancelled by the pipeline",
            run.run_id.comment_tag()
        );
        let cancel = budget::get_call(store, &cfg.budget, clock, || {
            defender.cancel_machine_action(&action.id, &comment)
        })
        .await?;
        let cancel = match cancel {
            Paced::Wait(wait) => return paced(cfg, queue, &job, wait).await,
            Paced::Ran(cancel) => cancel,
        };
        return match cancel {
            Ok(cancelled) => finalize(cfg, store, queue, clock, &run, &cancelled, true).await,
            // It ended between the two calls: look again right away.
            Err(DefenderError::Rejected { .. }) => {
                requeue(cfg, queue, &job, job.polls + 1, Duration::from_secs(1)).await?;
                Ok(Done::new(
                    &run_id,
                    "cancel_refused",
                    "action ended before the cancel",
                ))
            }
            Err(e) => {
                let delay = match e.next() {
                    Next::RetryAfter(Some(d)) => d,
                    _ => Duration::from_secs(5),
                };
                requeue(cfg, queue, &job, job.polls, delay).await?;
                Ok(Done::new(&run_id, "cancel_retry", e.to_string()))
            }
        };
    }
    let delay = next_delay(&cfg.poll_delays, job.polls + 1, until_deadline);
    requeue(cfg, queue, &job, job.polls + 1, delay).await?;
    Ok(Done::new(
        &run_id,
        "waiting",
        format!(
            "action {} is {:?}; again in {}s",
            action.id,
            action.status,
            delay.as_secs()
        ),
    ))
}

/// The job back on the queue until the GET budget has room: when the hourly budget is tight,
/// polls stretch out instead of provoking 429s.
async fn paced<Q: Queue>(
    cfg: &PollConfig,
    queue: &Q,
    job: &PollJob,
    wait: Duration,
) -> Result<Done, StageError> {
    requeue(cfg, queue, job, job.polls, wait.max(Duration::from_secs(1))).await?;
    Ok(Done::new(
        &job.run_id,
        "paced",
        format!("GET budget full; again in {}s", wait.as_secs()),
    ))
}

async fn requeue<Q: Queue>(
    cfg: &PollConfig,
    queue: &Q,
    job: &PollJob,
    polls: u32,
    delay: Duration,
) -> Result<(), StageError> {
    let next = PollJob {
        v: MESSAGE_VERSION,
        run_id: job.run_id.clone(),
        action_id: job.action_id.clone(),
        polls,
    };
    queue
        .send(&cfg.poll_queue_url, &encode(&next), delay)
        .await?;
    Ok(())
}

async fn send_collect<Q: Queue>(
    cfg: &PollConfig,
    queue: &Q,
    run_id: &crate::ids::RunId,
    action_id: &crate::defender::ActionId,
    index: u32,
) -> Result<(), StageError> {
    let job = CollectJob {
        v: MESSAGE_VERSION,
        run_id: run_id.clone(),
        action_id: action_id.clone(),
        index,
        attempt: 0,
    };
    queue
        .send(&cfg.collect_queue_url, &encode(&job), Duration::ZERO)
        .await?;
    Ok(())
}

/// Records every command's outcome, then sends one collect job per command with a result.
async fn finalize<S: ObjectStore, Q: Queue>(
    cfg: &PollConfig,
    store: &S,
    queue: &Q,
    clock: &dyn Clock,
    run: &RunRecord,
    action: &MachineAction,
    cancelled_by_us: bool,
) -> Result<Done, StageError> {
    let now = clock.now();
    let mut to_collect = Vec::new();
    for c in &action.commands {
        let completed = c.command_status == CommandStatus::Completed;
        let collect = completed && c.command.kind.has_result();
        if collect {
            to_collect.push(c.index);
        }
        let outcome = match (&c.command_status, completed) {
            _ if collect => CommandOutcome::Collecting,
            (_, true) => CommandOutcome::CompletedNoResult,
            (CommandStatus::Failed, _) => CommandOutcome::Failed,
            _ => CommandOutcome::NotRun,
        };
        let rec = CommandRecord {
            v: RECORD_VERSION,
            index: c.index,
            kind: c.command.kind,
            command: c.command.clone(),
            outcome,
            command_status: Some(format!("{:?}", c.command_status)),
            errors: c.errors.clone(),
            start_time: c.start_time.clone(),
            end_time: c.end_time.clone(),
            s3_key: None,
            size: None,
            sha256: None,
            sha256_decompressed: None,
            size_decompressed: None,
            exit_code: None,
            output_excerpt: None,
            errors_excerpt: None,
            recorded_at: Some(now),
            reason: match outcome {
                CommandOutcome::NotRun => {
                    Some(format!("not run: the action ended {:?}", action.status))
                }
                _ => None,
            },
        };
        put_command(store, &run.run_id, &rec).await?;
    }
    let outcome = match (&action.status, cancelled_by_us) {
        (_, true) | (ActionStatus::TimeOut, _) => RunOutcome::TimedOut,
        (ActionStatus::Succeeded, _) => RunOutcome::Succeeded,
        (ActionStatus::Cancelled, _) => RunOutcome::Cancelled,
        _ => RunOutcome::Failed,
    };
    let reason = match (&action.status, cancelled_by_us) {
        (_, true) => {
            Some("the run's deadline passed: the pipeline cancelled the action".to_string())
        }
        (ActionStatus::Succeeded, _) => None,
        (s, _) => Some(format!("the action ended {s:?}")),
    };
    update_run(store, &run.run_id, |r| {
        r.state = RunState::Collecting;
        r.action_status = Some(action.status.clone());
        r.action_last_update = action.last_update_date_time_utc.clone();
        r.computer_dns_name = action
            .computer_dns_name
            .clone()
            .or(r.computer_dns_name.take());
        r.requestor = action.requestor.clone().or(r.requestor.take());
        r.cancelled_by_pipeline |= cancelled_by_us;
        r.outcome = Some(outcome);
        // What Defender ran is the record, whatever was asked.
        r.commands = action.commands.iter().map(|c| c.command.clone()).collect();
        if r.reason.is_none() {
            r.reason = reason.clone();
        }
        true
    })
    .await?;
    // The session is over: its slot in the tenant's budget is free again.
    budget::release_session(store, &cfg.budget, clock, &run.run_id).await?;
    for index in &to_collect {
        send_collect(cfg, queue, &run.run_id, &action.id, *index).await?;
    }
    if to_collect.is_empty() {
        finish_run_if_complete(store, &run.run_id).await?;
    }
    Ok(Done::new(
        &run.run_id,
        "ended",
        format!(
            "action {} ended {:?}; {} result(s) to collect",
            action.id,
            action.status,
            to_collect.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_steps_then_holds_and_stops_at_the_deadline() {
        let s: Vec<Duration> = [15, 30, 60, 900]
            .iter()
            .map(|x| Duration::from_secs(*x))
            .collect();
        let far = Duration::from_secs(86_400);
        assert_eq!(next_delay(&s, 0, far), Duration::from_secs(15));
        assert_eq!(next_delay(&s, 2, far), Duration::from_secs(60));
        assert_eq!(next_delay(&s, 40, far), Duration::from_secs(900));
        assert_eq!(
            next_delay(&s, 40, Duration::from_secs(10)),
            Duration::from_secs(11)
        );
        assert_eq!(next_delay(&s, 40, Duration::ZERO), Duration::from_secs(1));
    }
}
