//! The four stages as plain functions over the ports. Each takes one message and says what became
//! of it; `crate::batch` turns that into an SQS partial batch response.
//!
//! Here is what they share: `open` (decode a job and load its run; a job naming another action
//! is refused), `claim` and `hand_off` (one message acts for a record: take its chain, pass it
//! on around a send), `end_run` (every way a run ends without collection, with the states each
//! caller may end from), and `Step` (one message's context, which each stage extends).

pub mod collect;
pub mod finish;
pub mod intake;
pub mod poll;
pub mod settings;
pub mod submit;

use crate::budget::{self, BudgetConfig};
use crate::clock::Clock;
use crate::codes::{Metric, Outcome, RejectCode};
use crate::ids::RunId;
use crate::messages::{Job, decode};
use crate::ports::{Notary, ObjectStore, Queue, QueueError, StoreError};
use crate::store::{
    Chained, CommandOutcome, CommandRecord, RunOutcome, RunRecord, RunState, Standing,
    create_command, update_record, update_run,
};
use finish::finish_run_if_complete;

/// What a stage's handler works with beside its configuration and the message: the ports and the
/// clock, one value instead of five parameters on every handler and step. The functions build it
/// from the clients they made once per process; tests from in-memory adapters.
pub struct Ports<'a, S, Q, D> {
    /// Records and evidence.
    pub store: &'a S,
    /// The stages' queues (the next job, a retry, a dead letter).
    pub queue: &'a Q,
    /// Defender's API.
    pub defender: &'a D,
    /// The signer of manifests and the bus of completion events.
    pub notary: Notary<'a>,
    /// The time.
    pub clock: &'a dyn Clock,
}

impl<'a, S, Q, D> Ports<'a, S, Q, D> {
    /// The ports, in the order the handlers used to take them.
    pub fn new(
        store: &'a S,
        queue: &'a Q,
        defender: &'a D,
        notary: Notary<'a>,
        clock: &'a dyn Clock,
    ) -> Self {
        Self {
            store,
            queue,
            defender,
            notary,
            clock,
        }
    }
}

impl<S, Q, D> Clone for Ports<'_, S, Q, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S, Q, D> Copy for Ports<'_, S, Q, D> {}

/// What one message's handling works with: its stage's settings, the ports, the message and its
/// job. Each stage adds its own steps (`again`, `pace`, ...) in an `impl` for its settings and job.
pub(crate) struct Step<'a, C, J, S, Q> {
    pub cfg: &'a C,
    pub store: &'a S,
    pub queue: &'a Q,
    pub clock: &'a dyn Clock,
    pub notary: Notary<'a>,
    pub msg: &'a crate::messages::Delivery,
    pub job: &'a J,
}

impl<'a, C, J, S, Q> Step<'a, C, J, S, Q> {
    pub fn new(
        cfg: &'a C,
        (store, queue, clock, notary): (&'a S, &'a Q, &'a dyn Clock, Notary<'a>),
        msg: &'a crate::messages::Delivery,
        job: &'a J,
    ) -> Self {
        Self {
            cfg,
            store,
            queue,
            clock,
            notary,
            msg,
            job,
        }
    }
}

/// What a stage did with a message, for the one log line per message and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// The run the message was about; logged as `-` when `None`.
    pub run_id: Option<RunId>,
    /// What became of the message, counted as a metric.
    pub outcome: Outcome,
    /// One line on what happened, for the log.
    pub detail: String,
    /// Values for CloudWatch, beyond the count of outcomes.
    pub metrics: Vec<(Metric, f64)>,
}

impl Done {
    /// A result for `run_id` with no metrics beyond the outcome.
    pub fn new(run_id: &RunId, outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            run_id: Some(run_id.clone()),
            outcome,
            detail: detail.into(),
            metrics: Vec::new(),
        }
    }

    /// Adds a CloudWatch value to report with the outcome.
    pub fn with_metric(mut self, metric: Metric, value: f64) -> Self {
        self.metrics.push((metric, value));
        self
    }
}

/// Why a stage did not finish a message; decides whether SQS redelivers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Infrastructure failed (S3, SQS): leave the message for SQS to deliver again.
    #[error("retry: {0}")]
    Retry(String),
    /// The message itself is wrong: send its body to the dead-letter queue with this reason.
    #[error("reject ({code}): {reason}")]
    Reject {
        /// The reject code, for the dead-letter attributes and metrics.
        code: RejectCode,
        /// What is wrong with the message, for whoever re-drives it.
        reason: String,
    },
}

impl From<StoreError> for StageError {
    /// S3 failing is worth retrying; a record that does not parse will not parse on the next
    /// delivery either: the message goes to the dead-letter queue with the reason, for an operator
    /// to repair the record and re-drive it.
    fn from(e: StoreError) -> Self {
        if e.is_unreadable() {
            Self::Reject {
                code: RejectCode::UnreadableRecord,
                reason: e.0,
            }
        } else {
            Self::Retry(e.to_string())
        }
    }
}

impl From<QueueError> for StageError {
    fn from(e: QueueError) -> Self {
        Self::Retry(e.to_string())
    }
}

/// Decodes a stage message and loads the run it names; either failing is the message's fault.
pub(crate) async fn open<J: Job, S: ObjectStore>(
    store: &S,
    body: &str,
) -> Result<(J, RunId, RunRecord), StageError> {
    let job: J = decode(body).map_err(|reason| StageError::Reject {
        code: RejectCode::InvalidMessage,
        reason,
    })?;
    let run_id = job.run_id().clone();
    let key = crate::store::run_key(&run_id);
    let Some(stored) = store.get(&key).await? else {
        return Err(StageError::Reject {
            code: RejectCode::UnknownRun,
            reason: format!("run {run_id} has no record"),
        });
    };
    // A record that cannot be read will not become readable by retrying: the message goes to the
    // dead-letter queue at once, with the reason, for an operator to repair the record and re-drive.
    let run: RunRecord = serde_json::from_slice(&stored.body).map_err(|e| StageError::Reject {
        code: RejectCode::UnreadableRun,
        reason: format!("{key} is not a valid run record: {e}"),
    })?;
    // A job may only act on its run's own action: a forged or stale job naming another action
    // would otherwise poll, cancel or copy that action's results into this run.
    if let Some(named) = job.action_id()
        && run.action_id.as_ref() != Some(named)
    {
        return Err(StageError::Reject {
            code: RejectCode::ActionMismatch,
            reason: format!(
                "the job names action {named}, but run {run_id} {}",
                match &run.action_id {
                    Some(own) => format!("is action {own}"),
                    None => "has no action yet".to_string(),
                }
            ),
        });
    }
    Ok((job, run_id, run))
}

/// How a run ends when its results will not be collected, and from which states.
pub(crate) struct Ending<'a> {
    pub outcome: RunOutcome,
    pub reason: &'a str,
    /// The outcome of every command without a final record.
    pub unfinished: CommandOutcome,
    /// The states the caller may end the run from; in any other the run is left as it is.
    pub from: &'static [RunState],
}

/// Submit ends runs only before Defender accepted them.
pub(crate) const BEFORE_SUBMISSION: &[RunState] = &[RunState::Received, RunState::Submitting];
/// Poll ends runs only while their action is out.
pub(crate) const WHILE_SUBMITTED: &[RunState] = &[RunState::Submitted];

/// Ends a run whose results will not be collected (refused, never submitted, its action lost or
/// not cancellable): the run is marked Failed with `outcome` and `reason` (the first reason
/// stands), every command without a final record gets one (`unfinished`, with the reason), the
/// session goes back to the budget, and the manifest is written. Safe to repeat; a run that
/// already reached collection is left to it.
pub(crate) async fn end_run<S: ObjectStore>(
    store: &S,
    notary: Notary<'_>,
    budget_cfg: &BudgetConfig,
    clock: &dyn Clock,
    run_id: &RunId,
    ending: Ending<'_>,
) -> Result<RunRecord, StageError> {
    let Ending {
        outcome,
        reason,
        unfinished,
        from,
    } = ending;
    let run = update_run(store, run_id, |r| {
        // Decided inside the write: a copy of the message that read the run before another
        // copy moved it on (a 201 recorded meanwhile) must not end it.
        if !from.contains(&r.state) {
            return false;
        }
        r.chain.end(clock.now());
        r.state = RunState::Failed;
        r.unfinished = Some(unfinished);
        r.outcome = Some(outcome);
        r.reason.get_or_insert_with(|| reason.to_string());
        true
    })
    .await?;
    if run.state != RunState::Failed {
        return Ok(run);
    }
    let now = clock.now();
    let why = run.reason.clone().unwrap_or_else(|| reason.to_string());
    for (index, command) in run.commands.iter().enumerate() {
        let index = index as u32;
        // Only missing records are written: a command poll already handed to collect (a finalize
        // that crashed before marking the run) keeps its record, and collect finishes it.
        let kind = run.unfinished.unwrap_or(unfinished);
        let rec = CommandRecord::unfinished(index, command.clone(), kind, &why, now);
        create_command(store, run_id, &rec).await?;
    }
    budget::release_session(store, budget_cfg, clock, run_id).await?;
    finish_run_if_complete(store, notary, run_id, clock).await?;
    Ok(run)
}

/// What a delivered message may do for a record with a chain (see [`crate::store::chain`]).
pub(crate) enum Claimed<T> {
    /// It holds the chain: go on.
    Mine(T),
    /// Another message holds the chain: drop this one.
    Duplicate,
    /// The record is in a state this stage does not act on: drop this one.
    Idle(T),
}

/// Takes or confirms the chain of the record at `key` for message `me` (sent by `prev`), if `acts`
/// says the stage acts on the record as it is.
pub(crate) async fn claim<S, T, A>(
    store: &S,
    key: &str,
    (me, prev): (&str, Option<&str>),
    clock: &dyn Clock,
    acts: A,
) -> Result<Claimed<T>, StageError>
where
    S: ObjectStore,
    T: Chained + serde::Serialize + serde::de::DeserializeOwned,
    A: Fn(&T) -> bool,
{
    let now = clock.now();
    let mut standing = Standing::Duplicate;
    let mut acting = false;
    let rec = update_record::<_, T, _>(store, key, |r| {
        standing = r.chain().standing(me, prev, now);
        acting = acts(r);
        if standing != Standing::Mine || !acting {
            return false;
        }
        let c = r.chain();
        if c.held_by(me) {
            return false;
        }
        r.chain_mut().hold(me, now);
        true
    })
    .await?;
    let Some(rec) = rec else {
        return Err(StageError::Reject {
            code: RejectCode::UnknownRecord,
            reason: format!("{key} does not exist"),
        });
    };
    Ok(match standing {
        _ if !acting => Claimed::Idle(rec),
        Standing::Mine => Claimed::Mine(rec),
        Standing::Duplicate => Claimed::Duplicate,
    })
}

/// Hands the chain of the record at `key` from `me` to a new message (`next`, sent with
/// `prev: me`, on `queue_url` after `delay`), applying `also` to the record in the same write as
/// naming the new message. Returns
/// the record as stored, or None if `me` no longer held the chain (then nothing is recorded, and
/// anything sent is dropped as a duplicate when it arrives).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn hand_off<S, Q, T, J, F>(
    store: &S,
    queue: &Q,
    clock: &dyn Clock,
    key: &str,
    me: &str,
    queue_url: &str,
    (mut next, delay): (J, std::time::Duration),
    mut also: F,
) -> Result<Option<T>, StageError>
where
    S: ObjectStore,
    Q: Queue,
    J: Job,
    T: Chained + serde::Serialize + serde::de::DeserializeOwned,
    F: FnMut(&mut T),
{
    let mut held = false;
    update_record::<_, T, _>(store, key, |r| {
        let c = r.chain();
        held = c.held_by(me);
        if !held || c.is_handing_off(me) {
            return false;
        }
        r.chain_mut().begin_handoff(me, clock.now());
        true
    })
    .await?;
    if !held {
        return Ok(None);
    }
    next.set_prev(me);
    let body = serde_json::to_string(&next)
        .map_err(|e| StageError::Retry(format!("cannot encode the next message: {e}")))?;
    let next = queue.send(queue_url, &body, delay).await?;
    let mut still = false;
    let rec = update_record::<_, T, _>(store, key, |r| {
        still = r.chain().is_handing_off(me);
        if !still {
            return false;
        }
        r.chain_mut().hold(&next, clock.now());
        also(r);
        true
    })
    .await?;
    Ok(rec.filter(|_| still))
}

/// Finishes what an interrupted ending left undone, for a message that found its run already past
/// its stage: a Failed run gets its missing command records, its session back and its manifest; a
/// collecting or completed run gets its session back and its manifest once every command is
/// recorded. Idempotent.
pub(crate) async fn finish_ended<S: ObjectStore>(
    store: &S,
    notary: Notary<'_>,
    budget_cfg: &BudgetConfig,
    clock: &dyn Clock,
    run: &RunRecord,
) -> Result<(), StageError> {
    match run.state {
        RunState::Failed => {
            end_run(
                store,
                notary,
                budget_cfg,
                clock,
                &run.run_id,
                Ending {
                    outcome: run.outcome.unwrap_or(RunOutcome::Failed),
                    reason: run.reason.as_deref().unwrap_or("ended"),
                    unfinished: run.unfinished.unwrap_or(CommandOutcome::Unknown),
                    from: &[],
                },
            )
            .await?;
        }
        RunState::Collecting | RunState::Completed => {
            // The action ended before the run left Submitted: its session is free, also when the
            // message that marked it died before giving the session back.
            budget::release_session(store, budget_cfg, clock, &run.run_id).await?;
            finish_run_if_complete(store, notary, &run.run_id, clock).await?;
        }
        RunState::Received | RunState::Submitting | RunState::Submitted => {}
    }
    Ok(())
}

/// Before a message is reported handled (and so deleted): a run that has ended but is not yet
/// sealed (another copy of this message, or another message, failed or died while sealing it) is
/// sealed now, or the message is kept for another try. So no message that saw such a run is deleted
/// while the run stays unsealed, whichever path it took (a duplicate, a chain already ended, a
/// command another copy finished).
pub(crate) async fn settle<S: ObjectStore>(
    store: &S,
    notary: Notary<'_>,
    budget_cfg: &BudgetConfig,
    clock: &dyn Clock,
    done: Result<Done, StageError>,
) -> Result<Done, StageError> {
    let Ok(done) = done else {
        return done;
    };
    let Some(run_id) = &done.run_id else {
        return Ok(done);
    };
    let Some((run, _)) = crate::store::load_run(store, run_id).await? else {
        return Ok(done);
    };
    if !run.is_sealed() {
        finish_ended(store, notary, budget_cfg, clock, &run).await?;
    }
    Ok(done)
}

/// Opens a submit or poll message and claims its run's chain: the job and the run to act on, or
/// what became of the message (a duplicate, or a run past this stage, whose interrupted ending is
/// finished on the way).
pub(crate) async fn open_run<J: Job, S: ObjectStore>(
    store: &S,
    notary: Notary<'_>,
    budget_cfg: &BudgetConfig,
    clock: &dyn Clock,
    msg: &crate::messages::Delivery,
    acts: impl Fn(&J, &RunRecord) -> bool,
) -> Result<Result<(J, RunRecord), Done>, StageError> {
    let (job, run_id, _) = open::<J, _>(store, &msg.body).await?;
    let key = crate::store::run_key(&run_id);
    let claimed = claim(
        store,
        &key,
        (&msg.id, job.prev()),
        clock,
        |r: &RunRecord| acts(&job, r),
    )
    .await?;
    Ok(match claimed {
        Claimed::Mine(run) => Ok((job, run)),
        Claimed::Duplicate => Err(Done::new(
            &run_id,
            Outcome::Duplicate,
            "another message holds this run",
        )),
        Claimed::Idle(run) => {
            finish_ended(store, notary, budget_cfg, clock, &run).await?;
            Err(Done::new(
                &run_id,
                Outcome::Duplicate,
                format!("run is {:?}", run.state),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemStore;
    use crate::clock::ManualClock;
    use crate::ports::Put;
    use crate::store::{CommandRecord, command_key};

    #[tokio::test]
    async fn an_unreadable_record_is_refused_with_its_key_not_retried() {
        let store = MemStore::default();
        let run = RunId::derive("t", "corrupt", "m", "p");
        let key = command_key(&run, 0);
        store
            .put(&key, b"{\"v\": 1, \"index\":".to_vec(), Put::Always)
            .await
            .unwrap();
        let clock = ManualClock::at(time::OffsetDateTime::UNIX_EPOCH);
        let claimed =
            claim::<_, CommandRecord, _>(&store, &key, ("m-1", None), &clock, |_| true).await;
        match claimed {
            Err(StageError::Reject { code, reason }) => {
                assert_eq!(code, RejectCode::UnreadableRecord);
                assert!(reason.contains(&key), "{reason}");
            }
            Err(other) => panic!("expected a rejection naming {key}, got {other}"),
            Ok(_) => panic!("expected a rejection naming {key}, got a claim"),
        }
        // A store that fails is still worth retrying.
        let e: StageError = StoreError("s3 timed out".into()).into();
        assert!(matches!(e, StageError::Retry(_)));
    }
}
