//! submit: one live response per run. Defender's 429s and busy devices put the job back on the
//! queue with a delay; neither is a failure. Only the message that holds the run's chain acts
//! (duplicate alerts and redeliveries are dropped), and a submission that may have reached Defender
//! is looked up by the run id in its comment before anything is sent again, even past the deadline.

use std::time::Duration;

use super::settings::SubmitConfig;
use super::{BEFORE_SUBMISSION, Done, Ending, Ports, StageError, Step, end_run, hand_off};
use crate::budget::{self, Paced};
use crate::clock::Clock;
use crate::codes::Outcome;
use crate::defender::{
    ActionFilter, ActionStatus, DefenderError, LiveResponseRequest, MachineAction, Next,
};
use crate::ids::RunId;
use crate::library::{self, Ensured, LibrarySync, LibraryUse};
use crate::messages::{Delivery, MESSAGE_VERSION, PollJob, SubmitJob};
use crate::ports::{Defender, ObjectStore, Queue, StoreError};
use crate::store::chain::CHAIN_TTL;
use crate::store::{
    CommandOutcome, RunOutcome, RunRecord, RunState, load_run, run_key, update_run,
};

/// Attempts (Defender errors worth retrying, lookups that failed) before the run is given up.
pub const MAX_ATTEMPTS: u32 = 20;

/// Handles one submit job: submits the run's live response within the budget, or puts the job
/// back with a delay (throttled, device busy, paced), or ends the run (refused, deadline, too
/// many attempts). On success the run's chain is handed to its first poll job.
pub async fn handle<S: ObjectStore, Q: Queue, D: Defender>(
    cfg: &SubmitConfig,
    ports: Ports<'_, S, Q, D>,
    library: LibrarySync<'_>,
    msg: &Delivery,
) -> Result<Done, StageError> {
    let done = handle_message(cfg, ports, library, msg).await;
    super::settle(ports.store, ports.notary, &cfg.budget, ports.clock, done).await
}

async fn handle_message<S: ObjectStore, Q: Queue, D: Defender>(
    cfg: &SubmitConfig,
    ports: Ports<'_, S, Q, D>,
    library: LibrarySync<'_>,
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
    let me = msg.id.as_str();
    let acts = |_: &SubmitJob, r: &RunRecord| match r.state {
        RunState::Received | RunState::Submitting => true,
        // Recorded as submitted by this message, which died before handing over to poll.
        RunState::Submitted => r.chain.held_by(me),
        _ => false,
    };
    let (job, run) = match super::open_run(store, notary, &cfg.budget, clock, msg, acts).await? {
        Ok(opened) => opened,
        Err(done) => return Ok(done),
    };
    let run_id = run.run_id.clone();
    let step = Step::new(cfg, (store, queue, clock, notary), msg, &job);

    if run.state == RunState::Submitted {
        step.hand_to_poll(&run).await?;
        return Ok(Done::new(
            &run_id,
            Outcome::Submitted,
            "handed over to poll again",
        ));
    }

    // An earlier attempt may have reached Defender before its answer was lost: look first, and
    // before the deadline check, so that a live action is never left uncollected.
    if run.state == RunState::Submitting
        && let Some(done) = step.recover_earlier_submission(defender, &run).await?
    {
        return Ok(done);
    }
    if now >= run.deadline {
        return step.never_submitted(&run).await;
    }

    let used = match step.library_versions(library, &run).await? {
        Ok(used) => used,
        Err(done) => return Ok(done),
    };

    if clock.now() >= run.deadline && run.state == RunState::Received {
        // The sync took the rest of the run's time (nothing can have been posted yet).
        return step.never_submitted(&run).await;
    }

    step.post(defender, &run, used).await
}

impl<S: ObjectStore, Q: Queue> Step<'_, SubmitConfig, SubmitJob, S, Q> {
    /// The library versions the run's commands name, ready in Defender's library: kept from an
    /// earlier POST of this run, or ensured now. `Err` when this message is done (paced, retried
    /// later, or the run ended because a file cannot be had).
    async fn library_versions(
        &self,
        library: LibrarySync<'_>,
        run: &RunRecord,
    ) -> Result<Result<Vec<LibraryUse>, Done>, StageError> {
        // Every script and file the commands name must be in the library as the playbook ships it:
        // a run that cannot have one ends here, with the reason, rather than on the device.
        // A run already posted once keeps the versions it was posted with (recorded with its
        // commands as sent): a retry across a deployment must not name other bytes than an earlier
        // POST that may have reached Defender.
        let pinned = run.state == RunState::Submitting && !run.library.is_empty();
        if !pinned
            && let Some(reason) = library
                .keeper
                .rendered_elsewhere(run.playbook_file_sha256.as_deref())
        {
            let e = crate::defender::DefenderError::Transient { reason };
            return self
                .retry_later(run, &e, "checking the playbook file")
                .await
                .map(Err);
        }
        let names = library::names_used(&run.commands);
        Ok(Ok(if pinned {
            run.library.clone()
        } else {
            match library
                .ensure(self.store, &self.cfg.budget, self.clock, &names)
                .await?
            {
                Ensured::Ready(used) => used,
                Ensured::Wait(wait) => return self.pace(wait).await.map(Err),
                Ensured::Retry(e) => {
                    return self
                        .retry_later(run, &e, "keeping the live response library in step")
                        .await
                        .map(Err);
                }
                Ensured::Refused(reason) => {
                    self.end(RunOutcome::Failed, &reason, CommandOutcome::NotRun)
                        .await?;
                    return Ok(Err(Done::new(&run.run_id, Outcome::LibraryRefused, reason)));
                }
            }
        }))
    }

    /// Ends a run whose deadline passed before Defender accepted it.
    async fn never_submitted(&self, run: &RunRecord) -> Result<Done, StageError> {
        self.end(
            RunOutcome::TimedOut,
            "the deadline passed before Defender accepted the live response",
            CommandOutcome::NotRun,
        )
        .await?;
        Ok(Done::new(&run.run_id, Outcome::Deadline, "never submitted"))
    }

    /// Posts the live response within the submission rate and session cap: the run is recorded as
    /// submitting (with the library versions and commands as sent) before the POST, and the
    /// answer decides what follows (poll, a retry later, or the run's end).
    async fn post<D: Defender>(
        &self,
        defender: &D,
        run: &RunRecord,
        used: Vec<LibraryUse>,
    ) -> Result<Done, StageError> {
        let me = self.msg.id.as_str();
        // Keep within the tenant's submission rate and session cap before asking Defender. Bundled
        // library files go under their versioned names: the bytes the manifest names are the ones run.
        let sent = library::sent_commands(&run.commands, &used);
        let request = LiveResponseRequest {
            commands: sent.clone(),
            comment: run.comment.clone(),
        };
        // The write before the POST checks that this message still holds a run that is not yet
        // submitted: a concurrent copy of the message (SQS can hand one message to two consumers) that
        // lost the race neither rewinds the run nor posts.
        let first_post = std::sync::atomic::AtomicBool::new(false);
        let answer = budget::submission_call(
            self.store,
            &self.cfg.budget,
            self.clock,
            &run.run_id,
            || async {
                let mut mine = false;
                let stored = update_run(self.store, &run.run_id, |r| {
                    let holds = r.chain.held_by(me);
                    mine = holds && matches!(r.state, RunState::Received | RunState::Submitting);
                    if !mine {
                        return false;
                    }
                    first_post.store(r.submit_attempts == 0, std::sync::atomic::Ordering::SeqCst);
                    r.state = RunState::Submitting;
                    // What is posted is the record: the versions and the commands as sent.
                    r.library = used.clone();
                    r.commands = sent.clone();
                    r.submit_attempts += 1;
                    true
                })
                .await?;
                if !mine {
                    // The grant may have taken a session for a run whose action already ended: give it
                    // back (a submitted run's live action keeps its session).
                    if !matches!(
                        stored.state,
                        RunState::Received | RunState::Submitting | RunState::Submitted
                    ) {
                        budget::release_session(
                            self.store,
                            &self.cfg.budget,
                            self.clock,
                            &run.run_id,
                        )
                        .await?;
                    }
                    return Ok::<_, StoreError>(None);
                }
                Ok(Some(
                    defender.run_live_response(&run.machine_id, &request).await,
                ))
            },
        )
        .await?;
        let answer = match answer {
            Paced::Wait(wait) => {
                let freed =
                    reconcile_sessions(self.store, defender, &self.cfg.budget, self.clock).await?;
                if freed > 0 {
                    tracing::warn!(run_id = %run.run_id, freed, "gave back sessions held by runs that no longer need them");
                }
                return self.pace(wait).await;
            }
            Paced::Ran(answer) => match answer? {
                Some(answer) => answer,
                None => {
                    return Ok(Done::new(
                        &run.run_id,
                        Outcome::Duplicate,
                        "another copy of this message moved the run on",
                    ));
                }
            },
        };
        let first_post = first_post.load(std::sync::atomic::Ordering::SeqCst);
        match answer {
            Ok(action) => {
                self.submitted(run, &action).await?;
                Ok(Done::new(
                    &run.run_id,
                    Outcome::Submitted,
                    format!("action {}", action.id),
                ))
            }
            Err(e @ DefenderError::InvalidResponse(_)) => {
                // A 2xx whose body could not be read: the action exists. The next attempt finds it by
                // its comment; nothing is submitted again before that lookup.
                self.retry_later(run, &e, "reading Defender's answer").await
            }
            Err(e) if matches!(e.next(), Next::RetryAfter(_)) => {
                // Refused outright (throttled, device busy): this POST took no session. Give the
                // session back only if no earlier POST of this run can have reached Defender: a
                // session that a live action holds is never released.
                let refused = first_post
                    && matches!(
                        e,
                        DefenderError::RateLimited { .. } | DefenderError::DeviceBusy { .. }
                    );
                if refused {
                    budget::release_session(self.store, &self.cfg.budget, self.clock, &run.run_id)
                        .await?;
                }
                self.retry_later(run, &e, "submitting").await
            }
            Err(e) => {
                self.end(
                    RunOutcome::Failed,
                    &format!("Defender refused the live response: {e}"),
                    CommandOutcome::NotRun,
                )
                .await?;
                Ok(Done::new(&run.run_id, Outcome::Refused, e.to_string()))
            }
        }
    }

    /// An earlier attempt may have reached Defender before its answer was lost: Defender's live
    /// actions on the device since the run was recorded, searched for the run's comment tag.
    /// `Some` when this message is done (the action was found, or the look was paced or failed).
    async fn recover_earlier_submission<D: Defender>(
        &self,
        defender: &D,
        run: &RunRecord,
    ) -> Result<Option<Done>, StageError> {
        // Only actions since the run was recorded (less a margin for clocks): an earlier
        // submission of this run cannot be older, and a device's long history cannot push it
        // out of the page.
        let filter = ActionFilter {
            machine_id: Some(run.machine_id.clone()),
            live_response_only: true,
            created_since: Some(run.created_at - time::Duration::minutes(10)),
            ..ActionFilter::default()
        };
        let listed = match budget::get_call(self.store, &self.cfg.budget, self.clock, || {
            defender.list_machine_actions(&filter)
        })
        .await?
        {
            Paced::Wait(wait) => return self.pace(wait).await.map(Some),
            Paced::Ran(listed) => listed,
        };
        match listed {
            Ok(actions) => {
                let tag = run.run_id.comment_tag();
                // The tag is the comment's first word: an alert id cannot smuggle another run's.
                if let Some(found) = actions.into_iter().find(|a| {
                    a.requestor_comment
                        .as_deref()
                        .and_then(|c| c.split_whitespace().next())
                        == Some(tag.as_str())
                }) {
                    self.submitted(run, &found).await?;
                    return Ok(Some(Done::new(
                        &run.run_id,
                        Outcome::Recovered,
                        format!("found action {} from an earlier attempt", found.id),
                    )));
                }
            }
            Err(e) => {
                return self
                    .retry_later(run, &e, "looking for an earlier submission")
                    .await
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// Ends the run before Defender accepted it (see [`end_run`]).
    async fn end(
        &self,
        outcome: RunOutcome,
        reason: &str,
        unfinished: CommandOutcome,
    ) -> Result<(), StageError> {
        let ending = Ending {
            outcome,
            reason,
            unfinished,
            from: BEFORE_SUBMISSION,
        };
        end_run(
            self.store,
            self.notary,
            &self.cfg.budget,
            self.clock,
            &self.job.run_id,
            ending,
        )
        .await?;
        Ok(())
    }

    /// Hands the run's chain to the next submit job.
    async fn again(&self, attempt: u32, delay: Duration) -> Result<bool, StageError> {
        let next = SubmitJob {
            v: MESSAGE_VERSION,
            run_id: self.job.run_id.clone(),
            attempt,
            prev: None,
        };
        let handed = hand_off::<_, _, RunRecord, _, _>(
            self.store,
            self.queue,
            self.clock,
            &run_key(&self.job.run_id),
            &self.msg.id,
            &self.cfg.submit_queue_url,
            (next, delay),
            |_| {},
        )
        .await?;
        Ok(handed.is_some())
    }

    /// Puts the job back until the budget has room (no Defender call was made).
    async fn pace(&self, wait: Duration) -> Result<Done, StageError> {
        let delay = budget::queue_delay(wait);
        self.again(self.job.attempt, delay).await?;
        Ok(Done::new(
            &self.job.run_id,
            Outcome::Paced,
            format!("tenant budget full; again in {}s", delay.as_secs()),
        ))
    }

    /// Puts the job back with a delay: Defender's Retry-After when it gave one, else backoff. After
    /// [`MAX_ATTEMPTS`], or past the deadline when no submission can be pending, the run ends.
    async fn retry_later(
        &self,
        run: &RunRecord,
        err: &DefenderError,
        doing: &str,
    ) -> Result<Done, StageError> {
        let run_id = &self.job.run_id;
        let attempt = self.job.attempt + 1;
        // A busy device or a throttled tenant is waited out until the deadline; only failures
        // count against the attempts.
        let waiting = matches!(
            err,
            DefenderError::RateLimited { .. } | DefenderError::DeviceBusy { .. }
        );
        if attempt >= MAX_ATTEMPTS && !waiting {
            let unfinished = if run.state == RunState::Submitting {
                CommandOutcome::Unknown
            } else {
                CommandOutcome::NotRun
            };
            let reason = format!("gave up after {attempt} attempts; last, {doing}: {err}");
            self.end(RunOutcome::Failed, &reason, unfinished).await?;
            return Ok(Done::new(
                run_id,
                Outcome::GaveUp,
                format!("{doing}: {err}"),
            ));
        }
        let delay = match err.next() {
            Next::RetryAfter(Some(d)) => d.max(Duration::from_secs(1)),
            _ => self.cfg.retry.delay(self.job.attempt, self.clock.jitter()),
        };
        self.again(attempt, delay).await?;
        let outcome = match err {
            DefenderError::RateLimited { .. } => Outcome::Throttled,
            DefenderError::DeviceBusy { .. } => Outcome::DeviceBusy,
            _ => Outcome::Transient,
        };
        Ok(Done::new(
            run_id,
            outcome,
            format!("{doing}: {err}; again in {}s", delay.as_secs()),
        ))
    }

    /// Records the action (only while this message holds the run and it is not yet submitted),
    /// then hands the run's chain to its first poll job. The record comes first, so that the poll
    /// job finds the run submitted however soon it arrives.
    async fn submitted(&self, run: &RunRecord, action: &MachineAction) -> Result<(), StageError> {
        let now = self.clock.now();
        let me = self.msg.id.as_str();
        let mut mine = false;
        let rec = update_run(self.store, &run.run_id, |r| {
            let holds = r.chain.held_by(me);
            mine = holds && matches!(r.state, RunState::Received | RunState::Submitting);
            if !mine {
                return false;
            }
            r.state = RunState::Submitted;
            r.action_id = Some(action.id.clone());
            r.submitted_at.get_or_insert(now);
            r.absorb(action, now);
            true
        })
        .await?;
        if mine {
            self.hand_to_poll(&rec).await?;
        }
        Ok(())
    }

    /// Hands a submitted run's chain to its first poll job.
    async fn hand_to_poll(&self, run: &RunRecord) -> Result<(), StageError> {
        let Some(action_id) = run.action_id.clone() else {
            return Err(StageError::Retry(format!(
                "run {} is submitted without an action id",
                run.run_id
            )));
        };
        let job = PollJob {
            v: MESSAGE_VERSION,
            run_id: run.run_id.clone(),
            action_id,
            polls: 0,
            cancels: 0,
            prev: None,
        };
        hand_off::<_, _, RunRecord, _, _>(
            self.store,
            self.queue,
            self.clock,
            &run_key(&run.run_id),
            &self.msg.id,
            &self.cfg.poll_queue_url,
            (job, self.cfg.first_poll_delay),
            |_| {},
        )
        .await?;
        Ok(())
    }
}

/// A budget rebuilt from nothing (its object was unreadable) knows no sessions. Defender
/// says which of the pipeline's actions are live (two listings, Pending and InProgress, within the
/// GET budget: bounded however many runs the bucket holds), and each one's run record confirms it
/// is the pipeline's and still holds its session. Until that can be done (no GET budget yet,
/// Defender failing) the sessions stay unknown and the cap full.
async fn rebuild_sessions<S: ObjectStore, D: Defender>(
    store: &S,
    defender: &D,
    budget_cfg: &crate::budget::BudgetConfig,
    clock: &dyn Clock,
) -> Result<(), StageError> {
    let mut held = Vec::new();
    for status in [ActionStatus::Pending, ActionStatus::InProgress] {
        let filter = ActionFilter {
            live_response_only: true,
            status: Some(status.clone()),
            ..ActionFilter::default()
        };
        let listed = budget::get_call(store, budget_cfg, clock, || {
            defender.list_machine_actions(&filter)
        })
        .await?;
        let actions = match listed {
            // A full page may have left some of the pipeline's live actions off: the sessions
            // stay unknown rather than undercounted.
            Paced::Ran(Ok(actions)) if actions.len() >= crate::stages::poll::board::PAGE => {
                tracing::error!(
                    alarm = "sessions_unknown",
                    listed = actions.len(),
                    "a listing of {status:?} live responses filled a page: cannot rebuild the budget's sessions; submissions wait"
                );
                return Ok(());
            }
            Paced::Ran(Ok(actions)) => actions,
            Paced::Ran(Err(e)) => {
                tracing::error!(alarm = "sessions_unknown", error = %e, "cannot list the live actions to rebuild the budget's sessions; submissions wait until it can");
                return Ok(());
            }
            Paced::Wait(_) => return Ok(()),
        };
        for a in actions {
            let Some(run_id) = a
                .requestor_comment
                .as_deref()
                .and_then(|c| c.split_whitespace().next())
                .and_then(|w| w.strip_prefix(crate::ids::RUN_COMMENT_PREFIX))
                .and_then(|id| RunId::parse(id).ok())
            else {
                continue;
            };
            // Another tenant's run named in this tenant's Defender (a comment anyone with the
            // portal can write) is not this budget's, and its record is not read.
            if !budget_cfg.owns(&run_id) {
                continue;
            }
            // An unreadable record counts as holding one: the cap errs on Defender's side.
            let since = match load_run(store, &run_id).await {
                Ok(Some((r, _))) if r.action_id.as_ref().is_none_or(|id| *id == a.id) => {
                    r.submitted_at.unwrap_or(r.created_at)
                }
                Ok(_) => continue,
                Err(_) => clock.now(),
            };
            held.push((run_id.to_string(), crate::clock::unix_ms(since)));
        }
    }
    tracing::warn!(
        sessions = held.len(),
        "rebuilt the budget's running sessions from Defender's live actions and their run records"
    );
    budget::rebuild_sessions(store, budget_cfg, clock, &held).await?;
    Ok(())
}

/// When the session cap is full, gives back the sessions of runs that no longer need them: a release
/// that failed after the run moved on, a run that ended without one, or a run whose chain has been
/// silent for longer than [`CHAIN_TTL`] (its messages went to a dead-letter queue). A full cap heals
/// itself instead of stopping every submission until the three-day rule drops the leaks. Returns
/// how many were given back.
pub async fn reconcile_sessions<S: ObjectStore, D: Defender>(
    store: &S,
    defender: &D,
    budget_cfg: &crate::budget::BudgetConfig,
    clock: &dyn Clock,
) -> Result<u32, StageError> {
    let (held, known) = budget::sessions(store, budget_cfg, clock).await?;
    if !known {
        rebuild_sessions(store, defender, budget_cfg, clock).await?;
        return Ok(0);
    }
    if (held.len() as u64) < budget_cfg.running_sessions as u64 {
        return Ok(0);
    }
    let now = clock.now();
    let silent = time::Duration::try_from(CHAIN_TTL).unwrap_or_default();
    let mut freed = 0;
    for held_by in held {
        let Ok(run_id) = RunId::parse(&held_by) else {
            continue;
        };
        let over = match load_run(store, &run_id).await {
            Ok(None) => true,
            Ok(Some((r, _))) => match r.state {
                RunState::Received | RunState::Submitting => false,
                RunState::Submitted => r.chain.since.is_some_and(|t| now - t > silent),
                RunState::Collecting | RunState::Completed | RunState::Failed => true,
            },
            // An unreadable record is left to the three-day rule.
            Err(_) => false,
        };
        if over {
            budget::release_session(store, budget_cfg, clock, &run_id).await?;
            freed += 1;
        }
    }
    Ok(freed)
}
