//! poll: look at the action; while it runs, come back later through the queue; past the run's
//! deadline, cancel it (a bounded number of times); once it ends, record every command and fan out
//! one collect job per command that left a result. Only the message that holds the run's chain
//! acts; a run whose action cannot be read or cancelled ends with a manifest that says so.
//!
//! Where a poll looks is [`board`]'s business: one listing shared by every run (the default), or
//! one GET of the action per look (`POLL_STATUS=each`).

pub mod board;

use std::time::Duration;

use super::Ports;
use super::finish::finish_run_if_complete;
use super::settings::{PollConfig, StatusFrom};
use super::{Done, Ending, StageError, Step, WHILE_SUBMITTED, end_run};
use crate::budget::{self, Paced};
use crate::codes::Outcome;
use crate::defender::{ActionStatus, CommandStatus, DefenderError, MachineAction, Next};
use crate::library::LibraryRecheck;
use crate::messages::{CollectJob, Delivery, MESSAGE_VERSION, PollJob, encode};
use crate::ports::{Defender, LibraryListing, ObjectStore, Queue};
use crate::store::{
    CommandOutcome, CommandRecord, RunOutcome, RunRecord, RunState, create_command, load_command,
    run_key, update_run,
};

/// How many times an action may answer 404 (it can, just after creation) before the run fails.
const NOT_FOUND_POLLS: u32 = 10;
/// Cancels tried past the deadline before the run ends as timed out without one.
pub(crate) const MAX_CANCELS: u32 = 5;
/// Past its deadline by this much, a run whose action cannot be read (throttled, 5xx) ends.
pub(crate) const LOST_AFTER: Duration = Duration::from_secs(1800);

/// While an action is still Pending, looks at it stretch out to a minute (at most this schedule's
/// step, or the configured one if longer).
const PENDING_DELAYS: &[Duration] = &[
    Duration::from_secs(5),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// The delay before poll number `polls` (0-based), never later than just past the deadline.
pub(crate) fn next_delay(schedule: &[Duration], polls: u32, until_deadline: Duration) -> Duration {
    let step = schedule
        .get(polls as usize)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(60));
    step.min(until_deadline + Duration::from_secs(1))
        .max(Duration::from_secs(1))
}

/// When to look at a running action again: the configured schedule; while it is still Pending
/// (not picked up: an offline device can stay so for hours), less and less often, up to a minute.
/// It is the end of a running action that must be noticed quickly.
fn look_again_in(
    schedule: &[Duration],
    status: &ActionStatus,
    polls: u32,
    until_deadline: Duration,
) -> Duration {
    let delay = next_delay(schedule, polls, until_deadline);
    if *status == ActionStatus::Pending {
        delay.max(next_delay(PENDING_DELAYS, polls, until_deadline))
    } else {
        delay
    }
}

/// The delay before cancel number `cancels` (0-based): 5 s doubling, at most 5 min.
fn cancel_delay(cancels: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << cancels.min(6)).min(300))
}

/// Handles one poll job: reads the action; while it runs, sends the next poll job; past the
/// deadline, cancels it; once it ends, records every command and sends one collect job per
/// command with a result (the manifest is written if none has one).
///
/// `library` lists the live response library once the action has ended, to record what it held
/// for the files the run used ([`LibraryRecheck`]).
pub async fn handle<S: ObjectStore, Q: Queue, D: Defender>(
    cfg: &PollConfig,
    ports: Ports<'_, S, Q, D>,
    library: &dyn LibraryListing,
    msg: &Delivery,
) -> Result<Done, StageError> {
    let done = handle_message(cfg, ports, library, msg).await;
    super::settle(ports.store, ports.notary, &cfg.budget, ports.clock, done).await
}

async fn handle_message<S: ObjectStore, Q: Queue, D: Defender>(
    cfg: &PollConfig,
    ports: Ports<'_, S, Q, D>,
    library: &dyn LibraryListing,
    msg: &Delivery,
) -> Result<Done, StageError> {
    let Ports {
        store,
        queue,
        defender,
        notary,
        clock,
    } = ports;
    let now = clock.now();
    // `open` has checked that the job names the run's own action.
    let acts = |_: &PollJob, r: &RunRecord| r.state == RunState::Submitted;
    let (job, run) = match super::open_run(store, notary, &cfg.budget, clock, msg, acts).await? {
        Ok(opened) => opened,
        Err(done) => return Ok(done),
    };
    let run_id = run.run_id.clone();
    let step = Step::new(cfg, (store, queue, clock, notary), msg, &job);
    let until_deadline: Duration = (run.deadline - now).try_into().unwrap_or(Duration::ZERO);
    let past_deadline: Duration = (now - run.deadline).try_into().unwrap_or(Duration::ZERO);
    let read = match cfg.status_from {
        StatusFrom::Board => {
            let created = board::anchor(&run);
            board::look(store, defender, &cfg.budget, clock, created, &job.action_id).await?
        }
        StatusFrom::Each => {
            budget::get_call(store, &cfg.budget, clock, || {
                defender.get_machine_action(&job.action_id)
            })
            .await?
        }
    };
    let read = match read {
        Paced::Wait(wait) => return step.pace(wait).await,
        Paced::Ran(read) => read,
    };
    let action = match read {
        Ok(a) => a,
        Err(DefenderError::NotFound { .. }) if job.polls < NOT_FOUND_POLLS => {
            // New actions can answer 404 for a moment.
            step.again(job.polls + 1, job.cancels, Duration::from_secs(2))
                .await?;
            return Ok(Done::new(
                &run_id,
                Outcome::NotYetVisible,
                "action answered 404; looking again shortly",
            ));
        }
        Err(e) if matches!(e.next(), Next::RetryAfter(_)) && past_deadline < LOST_AFTER => {
            let delay = match e.next() {
                Next::RetryAfter(Some(d)) => d,
                _ => cfg.retry.delay(job.polls.min(8), clock.jitter()),
            };
            step.again(job.polls + 1, job.cancels, delay).await?;
            return Ok(Done::new(
                &run_id,
                Outcome::Throttled,
                format!("{e}; again in {}s", delay.as_secs()),
            ));
        }
        Err(e) => {
            let reason = format!("cannot read action {}: {e}", job.action_id);
            return step
                .give_up(defender, &run, RunOutcome::Failed, reason, true)
                .await;
        }
    };
    if action.status.is_final() {
        return step.finalize(&run, &action, false, library).await;
    }
    if now >= run.deadline {
        return step.cancel(defender, &run, &action, library).await;
    }
    let delay = look_again_in(
        &cfg.poll_delays,
        &action.status,
        job.polls + 1,
        until_deadline,
    );
    step.again_seeing(job.polls + 1, job.cancels, delay, Some(&action))
        .await?;
    Ok(Done::new(
        &run_id,
        Outcome::Waiting,
        format!(
            "action {} is {:?}; again in {}s",
            action.id,
            action.status,
            delay.as_secs()
        ),
    ))
}

impl<S: ObjectStore, Q: Queue> Step<'_, PollConfig, PollJob, S, Q> {
    /// Past the run's deadline: cancels the action (within the GET budget). A cancel that ends it
    /// finalizes the run; one accepted or refused without ending it is tried again, up to
    /// [`MAX_CANCELS`], after which the run ends as timed out with the action perhaps still running.
    async fn cancel<D: Defender>(
        &self,
        defender: &D,
        run: &RunRecord,
        action: &MachineAction,
        library: &dyn LibraryListing,
    ) -> Result<Done, StageError> {
        let comment = format!(
            "{}: deadline passed, cancelled by the pipeline",
            run.run_id.comment_tag()
        );
        let cancel = budget::get_call(self.store, &self.cfg.budget, self.clock, || {
            defender.cancel_machine_action(&action.id, &comment)
        })
        .await?;
        let cancel = match cancel {
            Paced::Wait(wait) => return self.pace(wait).await,
            Paced::Ran(cancel) => cancel,
        };
        match cancel {
            // A reply that is final and lists every command is the record; otherwise the next
            // poll reads the action again (a reply without commands never shrinks the manifest).
            Ok(cancelled)
                if cancelled.status.is_final()
                    && cancelled.commands.len() == run.commands.len() =>
            {
                self.finalize(run, &cancelled, true, library).await
            }
            // Accepted without ending the action: it counts against the cap like a refusal, or
            // a Defender that accepts every cancel and ends nothing would be asked forever.
            Ok(_) if self.job.cancels + 1 >= MAX_CANCELS => {
                let reason = format!(
                    "the run's deadline passed and Defender accepted {} cancels without ending the action; it may still be running",
                    self.job.cancels + 1
                );
                self.give_up(defender, run, RunOutcome::TimedOut, reason, false)
                    .await
            }
            Ok(_) => {
                let delay = if self.job.cancels == 0 {
                    Duration::from_secs(1)
                } else {
                    cancel_delay(self.job.cancels)
                };
                self.again(self.job.polls + 1, self.job.cancels + 1, delay)
                    .await?;
                Ok(Done::new(
                    &run.run_id,
                    Outcome::Cancelled,
                    "cancel accepted; reading the action again",
                ))
            }
            Err(e) if self.job.cancels + 1 >= MAX_CANCELS => {
                let reason = format!(
                    "the run's deadline passed and Defender refused the cancel {} times (last: {e}); the action may still be running",
                    self.job.cancels + 1
                );
                self.give_up(defender, run, RunOutcome::TimedOut, reason, false)
                    .await
            }
            Err(e) => {
                // Refused, or it ended between the two calls: the next poll reads it again.
                let delay = match e.next() {
                    Next::RetryAfter(Some(d)) => d,
                    _ => cancel_delay(self.job.cancels),
                };
                self.again(self.job.polls + 1, self.job.cancels + 1, delay)
                    .await?;
                Ok(Done::new(
                    &run.run_id,
                    Outcome::CancelRetry,
                    format!("{e}; again in {}s", delay.as_secs()),
                ))
            }
        }
    }

    /// Hands the run's chain to the next poll job.
    async fn again(&self, polls: u32, cancels: u32, delay: Duration) -> Result<(), StageError> {
        self.again_seeing(polls, cancels, delay, None).await
    }

    /// Hands the run's chain to the next poll job, recording the action as `seen` (its status in
    /// the run's timeline) in the same write.
    async fn again_seeing(
        &self,
        polls: u32,
        cancels: u32,
        delay: Duration,
        seen: Option<&MachineAction>,
    ) -> Result<(), StageError> {
        let now = self.clock.now();
        let next = PollJob {
            v: MESSAGE_VERSION,
            run_id: self.job.run_id.clone(),
            action_id: self.job.action_id.clone(),
            polls,
            cancels,
            prev: None,
        };
        super::hand_off::<_, _, RunRecord, _, _>(
            self.store,
            self.queue,
            self.clock,
            &run_key(&self.job.run_id),
            &self.msg.id,
            &self.cfg.poll_queue_url,
            (next, delay),
            |r: &mut RunRecord| {
                if let Some(action) = seen {
                    r.absorb(action, now);
                }
            },
        )
        .await?;
        Ok(())
    }

    /// The job back on the queue until the GET budget has room: when the hourly budget is tight,
    /// polls stretch out instead of provoking 429s.
    async fn pace(&self, wait: Duration) -> Result<Done, StageError> {
        let delay = budget::queue_delay(wait);
        self.again(self.job.polls, self.job.cancels, delay).await?;
        Ok(Done::new(
            &self.job.run_id,
            Outcome::Paced,
            format!("GET budget full; again in {}s", delay.as_secs()),
        ))
    }

    /// Ends a run whose action can no longer be followed: tries once to cancel it (when
    /// `cancel`, and the GET budget allows), then records every command as unknown, gives the
    /// session back and writes the manifest.
    async fn give_up<D: Defender>(
        &self,
        defender: &D,
        run: &RunRecord,
        outcome: RunOutcome,
        mut reason: String,
        cancel: bool,
    ) -> Result<Done, StageError> {
        // A finalize that was interrupted after recording the commands saw the action end: its
        // commands waiting for a copy are handed to collect (again; duplicates are dropped there)
        // and no cancel is needed.
        let mut finalized = false;
        for index in 0..run.commands.len() as u32 {
            let Some(rec) = load_command(self.store, &run.run_id, index).await? else {
                continue;
            };
            finalized = true;
            if rec.outcome == CommandOutcome::Collecting {
                self.send_collect(index).await?;
            }
        }
        if finalized {
            reason.push_str("; the action had ended and its results are collected");
        } else if cancel {
            let comment = format!(
                "{}: the pipeline lost sight of this action and cancelled it",
                run.run_id.comment_tag()
            );
            let tried = budget::get_call(self.store, &self.cfg.budget, self.clock, || {
                defender.cancel_machine_action(&self.job.action_id, &comment)
            })
            .await?;
            reason.push_str(match tried {
                Paced::Ran(Ok(_)) => "; the action was cancelled",
                Paced::Ran(Err(_)) => "; the action could not be cancelled",
                Paced::Wait(_) => "; no GET budget was left to cancel the action",
            });
        }
        end_run(
            self.store,
            self.notary,
            &self.cfg.budget,
            self.clock,
            &run.run_id,
            Ending {
                outcome,
                reason: &reason,
                unfinished: CommandOutcome::Unknown,
                from: WHILE_SUBMITTED,
            },
        )
        .await?;
        Ok(Done::new(&run.run_id, Outcome::GaveUp, reason))
    }

    /// Lists the library once more now that the action has ended, and compares what it holds for
    /// each file the run used with what was listed before submission. A listing Defender fails
    /// is recorded as unchecked, not retried (the results' links lapse in 30 minutes); `None` when
    /// the GET budget has no room now.
    async fn recheck_library(
        &self,
        run: &RunRecord,
        library: &dyn LibraryListing,
    ) -> Result<Option<LibraryRecheck>, StageError> {
        let listed = budget::get_call(self.store, &self.cfg.budget, self.clock, || {
            library.list_library()
        })
        .await?;
        let now = self.clock.now();
        let recheck = match listed {
            Paced::Ran(Ok(files)) => LibraryRecheck::of(&run.library, files, now),
            Paced::Ran(Err(e)) => {
                LibraryRecheck::unchecked(format!("listing the library failed: {e}"), now)
            }
            Paced::Wait(_) => return Ok(None),
        };
        match recheck.finding() {
            Some(finding) if !recheck.changed.is_empty() => {
                tracing::error!(run_id = %run.run_id, alarm = "library_changed", "{finding}");
            }
            Some(finding) => tracing::warn!(run_id = %run.run_id, "{finding}"),
            None => {}
        }
        Ok(Some(recheck))
    }

    /// Sends the collect job for one command of this poll job's action.
    async fn send_collect(&self, index: u32) -> Result<(), StageError> {
        let job = CollectJob {
            v: MESSAGE_VERSION,
            run_id: self.job.run_id.clone(),
            action_id: self.job.action_id.clone(),
            index,
            attempt: 0,
            link_errors: 0,
            prev: None,
        };
        self.queue
            .send(&self.cfg.collect_queue_url, &encode(&job), Duration::ZERO)
            .await?;
        Ok(())
    }

    /// Records every command's outcome (first record wins: a redelivered poll never overwrites
    /// what collect wrote since), sends one collect job per command with a result that is still
    /// waiting for its copy, then marks the run Collecting and ends the poll chain.
    async fn finalize(
        &self,
        run: &RunRecord,
        action: &MachineAction,
        cancelled_by_us: bool,
        library: &dyn LibraryListing,
    ) -> Result<Done, StageError> {
        let (store, now) = (self.store, self.clock.now());
        let library_after = match run.library_after.clone() {
            Some(seen) => Some(seen),
            None if run.library.is_empty() => None,
            None => match self.recheck_library(run, library).await? {
                Some(recheck) => Some(recheck),
                // No GET budget for the listing now: the action is read again when there is
                // (a run that is merely paced is not marked unchecked). A cancel's reply is the
                // record of its end and is not read again: its library is marked unchecked.
                None if !cancelled_by_us => {
                    return self.pace(crate::budget::INLINE_WAIT * 2).await;
                }
                None => Some(LibraryRecheck::unchecked(
                    "no GET budget was left to list the library",
                    now,
                )),
            },
        };
        let mut to_collect = Vec::new();
        for c in &action.commands {
            let completed = c.command_status == CommandStatus::Completed;
            let collect = completed && c.command.kind.has_result();
            let outcome = match (&c.command_status, completed) {
                _ if collect => CommandOutcome::Collecting,
                (_, true) => CommandOutcome::CompletedNoResult,
                (CommandStatus::Failed, _) => CommandOutcome::Failed,
                _ => CommandOutcome::NotRun,
            };
            let reason = (outcome == CommandOutcome::NotRun)
                .then(|| format!("not run: the action ended {:?}", action.status));
            let rec = CommandRecord::observed(c, outcome, reason, now);
            create_command(store, &run.run_id, &rec).await?;
            if collect
                && load_command(store, &run.run_id, c.index)
                    .await?
                    .is_some_and(|r| r.outcome == CommandOutcome::Collecting)
            {
                to_collect.push(c.index);
            }
        }
        for index in &to_collect {
            self.send_collect(*index).await?;
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
        let me = &self.msg.id;
        update_run(store, &run.run_id, |r| {
            let holds = r.chain.held_by(me);
            if r.state != RunState::Submitted || !holds {
                return false;
            }
            r.chain.end(now);
            r.state = RunState::Collecting;
            r.absorb(action, now);
            r.cancelled_by_pipeline |= cancelled_by_us;
            r.outcome = Some(outcome);
            if r.library_after.is_none() {
                r.library_after = library_after.clone();
            }
            // What Defender ran is the record, whatever was asked (never a shorter list).
            if action.commands.len() >= r.commands.len() {
                r.commands = action.commands.iter().map(|c| c.command.clone()).collect();
            }
            if r.reason.is_none() {
                r.reason = reason.clone();
            }
            true
        })
        .await?;
        // The session is over: its slot in the tenant's budget is free again.
        budget::release_session(store, &self.cfg.budget, self.clock, &run.run_id).await?;
        finish_run_if_complete(store, self.notary, &run.run_id, self.clock).await?;
        Ok(Done::new(
            &run.run_id,
            Outcome::Ended,
            format!(
                "action {} ended {:?}; {} result(s) to collect",
                action.id,
                action.status,
                to_collect.len()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_action_is_looked_at_less_and_less_often_a_running_one_every_step() {
        let s = [Duration::from_secs(5)];
        let far = Duration::from_secs(86_400);
        let pending = ActionStatus::Pending;
        let running = ActionStatus::InProgress;
        let secs = |status: &ActionStatus, polls| look_again_in(&s, status, polls, far).as_secs();
        assert_eq!(
            (0..8).map(|p| secs(&pending, p)).collect::<Vec<_>>(),
            [5, 5, 10, 15, 30, 60, 60, 60]
        );
        assert_eq!(
            secs(&running, 40),
            5,
            "after a long wait, running: every 5 s"
        );
        let slow = [Duration::from_secs(120)];
        assert_eq!(look_again_in(&slow, &pending, 0, far).as_secs(), 120);
        assert_eq!(
            look_again_in(&s, &pending, 7, Duration::from_secs(3)).as_secs(),
            4,
            "never past the deadline"
        );
    }

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
