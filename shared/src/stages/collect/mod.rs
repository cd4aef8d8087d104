//! collect: ask for a command's result link, check it, and stream the package into S3 through a
//! multipart upload to its evidence key with bounded memory, hashing as it goes. The evidence
//! object appears under its key only when complete and only if nothing is there (write-once); its
//! hashes go into the command record and the signed manifest. The last command to land writes the
//! run's manifest.
//!
//! This module is the stage: which message acts, what is recorded when. The rooms beside it hold
//! the parts it drives: `link` (which result links are followed), `copy` (the streaming
//! engine: parts, fresh links and resumption), `complete` (making the object stand under its key,
//! or finding it there), `outcome` (what a copy comes to), `checkpoint` (where an unfinished copy
//! stands, saved between invocations).

mod checkpoint;
mod complete;
mod copy;
pub use copy::STALL_GRACE;
mod link;
mod outcome;

use super::Ports;
use std::time::Duration;

use time::OffsetDateTime;

use self::checkpoint::{Saved, discard_checkpoint, load_checkpoint};
use self::complete::complete;
use self::copy::Source;
use self::copy::copy;
use self::link::check_link;
use self::outcome::{Copied, CopyError, CopyResult};

pub use self::copy::PARTS_IN_FLIGHT;
use super::finish::finish_run_if_complete;
use super::settings::CollectConfig;
use super::{Claimed, claim, hand_off};
use super::{Done, StageError, Step};
use crate::budget::{self, Paced};
use crate::codes::{Metric, Outcome, RejectCode};
use crate::defender::{Command, CommandStatus, CommandType, DownloadLink, Next};
use crate::messages::{CollectJob, Delivery, MESSAGE_VERSION};
use crate::ports::{Defender, Fetch, Queue, StoreError, Uploads};
use crate::store::keys::checkpoint_key;
use crate::store::{
    Chain, CommandOutcome, CommandRecord, RECORD_VERSION, RunRecord, command_key, evidence_key,
    load_command, update_record,
};

/// Handles one collect job: fetches the command's result link, copies the package into the
/// evidence bucket (resuming from a checkpoint, or saving one when the time budget runs out)
/// and records the command; the last command to land writes the manifest.
pub async fn handle<S: Uploads, Q: Queue, D: Defender, F: Fetch>(
    cfg: &CollectConfig,
    ports: Ports<'_, S, Q, D>,
    fetch: &F,
    msg: &Delivery,
) -> Result<Done, StageError> {
    let done = handle_message(cfg, ports, fetch, msg).await;
    super::settle(ports.store, ports.notary, &cfg.budget, ports.clock, done).await
}

async fn handle_message<S: Uploads, Q: Queue, D: Defender, F: Fetch>(
    cfg: &CollectConfig,
    ports: Ports<'_, S, Q, D>,
    fetch: &F,
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
    let deadline = now + cfg.time_budget;
    let (job, run_id, run) = super::open::<CollectJob, _>(store, &msg.body).await?;
    if run.commands.get(job.index as usize).is_none() {
        return Err(StageError::Reject {
            code: RejectCode::UnknownCommand,
            reason: format!("run {run_id} has no command {}", job.index),
        });
    }
    // Poll left a record with Defender's view of the command; only the message holding the
    // command's chain copies it, and anything past Collecting means done already.
    let key = command_key(&run_id, job.index);
    let acts = |r: &CommandRecord| r.outcome == CommandOutcome::Collecting;
    let pending = match claim(store, &key, (&msg.id, job.prev.as_deref()), clock, acts).await? {
        Claimed::Mine(rec) => rec,
        Claimed::Duplicate => {
            return Ok(Done::new(
                &run_id,
                Outcome::Duplicate,
                format!("another collect job holds command {}", job.index),
            ));
        }
        Claimed::Idle(rec) => {
            finish_run_if_complete(store, notary, &run_id, clock).await?;
            return Ok(Done::new(
                &run_id,
                Outcome::Duplicate,
                format!("command {} already {:?}", job.index, rec.outcome),
            ));
        }
    };
    let (start_time, end_time) = (pending.start_time, pending.end_time);
    // The command as Defender ran it (poll's record), e.g. a script under its versioned name.
    let command = pending.command;
    let step = Step::new(cfg, (store, queue, clock, notary), msg, &job);

    // A copy whose upload completed before a crash needs no link: only recording is left.
    let ck_key = checkpoint_key(&run_id, job.index);
    let upload_key = evidence_key(&run_id, job.index, command.kind);
    let finished = match load_checkpoint(store, &ck_key, &upload_key).await? {
        Some(Saved::Usable(ck)) if ck.completed.is_some() => Some(*ck),
        _ => None,
    };
    let result = match finished {
        Some(ck) => complete(store, &run, &job, &ck_key, ck).await,
        None => {
            let link = match step.result_link(defender, &run, command.kind, now).await? {
                Ok(link) => link,
                Err(done) => return Ok(done),
            };
            let source = Source {
                store,
                defender,
                fetch,
                cfg,
                clock,
                job: &job,
            };
            copy(store, &source, &run, command.kind, &link, deadline).await
        }
    };
    match result {
        Ok(CopyResult::Paused { offset }) => {
            step.again(job.attempt, job.link_errors, Duration::ZERO)
                .await?;
            Ok(Done::new(
                &run_id,
                Outcome::Continued,
                format!(
                    "command {} paused at byte {offset}; the next invocation goes on from there",
                    job.index
                ),
            ))
        }
        Ok(CopyResult::Copied(copied)) => {
            step.collected(&run, command, (start_time, end_time), &copied, &ck_key, now)
                .await
        }
        Err(CopyError::Store(e)) => Err(e.into()),
        Err(CopyError::Occupied(reason)) => {
            tracing::warn!(run_id = %run_id, index = job.index, %reason, "evidence key taken");
            step.fail(&run, command.kind, reason.clone(), now).await?;
            Ok(Done::new(&run_id, Outcome::CollectFailed, reason))
        }
        Err(CopyError::Download(reason)) => step.copy_failed(&run, command.kind, reason, now).await,
        Err(CopyError::UploadGone) => {
            let reason = "the multipart upload is gone; the copy starts over".to_string();
            step.copy_failed(&run, command.kind, reason, now).await
        }
    }
}

/// Link requests that may fail with something worth retrying before the command is given up.
pub(crate) const MAX_LINK_ERRORS: u32 = 8;

fn ended_chain(now: OffsetDateTime) -> Chain {
    let mut c = Chain::default();
    c.end(now);
    c
}

impl<S: Uploads, Q: Queue> Step<'_, CollectConfig, CollectJob, S, Q> {
    /// Records a copied command as collected (its record is the evidence's account: key, version,
    /// size, hashes, the script's exit code and output excerpts), drops the checkpoint, and seals the
    /// run if this was its last command.
    async fn collected(
        &self,
        run: &RunRecord,
        command: Command,
        (start_time, end_time): (Option<String>, Option<String>),
        copied: &Copied,
        ck_key: &str,
        now: OffsetDateTime,
    ) -> Result<Done, StageError> {
        let rec = CommandRecord {
            v: RECORD_VERSION,
            index: self.job.index,
            kind: command.kind,
            command,
            outcome: CommandOutcome::Collected,
            command_status: Some(CommandStatus::Completed),
            errors: vec![],
            start_time,
            end_time,
            s3_key: Some(copied.key.clone()),
            s3_version_id: copied.version_id.clone(),
            size: Some(copied.size),
            sha256: Some(copied.sha256.clone()),
            sha256_decompressed: copied.sha256_decompressed.clone(),
            size_decompressed: copied.size_decompressed,
            exit_code: copied.exit_code,
            output_excerpt: copied.output_excerpt.clone(),
            errors_excerpt: copied.errors_excerpt.clone(),
            recorded_at: Some(now),
            reason: None,
            chain: ended_chain(now),
        };
        if !finish_command(self.store, &run.run_id, &self.msg.id, &rec).await? {
            return Ok(Done::new(
                &run.run_id,
                Outcome::Duplicate,
                format!(
                    "a concurrent copy of this job finished command {}",
                    self.job.index
                ),
            ));
        }
        // Recorded: the checkpoint is no longer needed.
        if let Err(e) = self.store.delete(ck_key).await {
            tracing::warn!(key = %ck_key, error = %e, "could not remove a finished copy's checkpoint");
        }
        let manifest =
            finish_run_if_complete(self.store, self.notary, &run.run_id, self.clock).await?;
        let time_to_evidence = (self.clock.now() - run.created_at).as_seconds_f64();
        let done = Done::new(
            &run.run_id,
            Outcome::Collected,
            format!(
                "command {} → {} ({} bytes, sha256 {}){}",
                self.job.index,
                copied.key,
                copied.size,
                copied.sha256,
                if manifest { "; manifest written" } else { "" }
            ),
        )
        .with_metric(Metric::BytesCopied, copied.size as f64)
        .with_metric(Metric::TimeToEvidence, time_to_evidence);
        Ok(done)
    }

    /// A copy that broke off (download failed, upload gone): tried again with a fresh link after a
    /// backoff, until the attempts run out and the command is recorded as not collected.
    async fn copy_failed(
        &self,
        run: &RunRecord,
        kind: CommandType,
        reason: String,
        now: OffsetDateTime,
    ) -> Result<Done, StageError> {
        let attempt = self.job.attempt;
        if attempt + 1 >= self.cfg.max_attempts {
            let why = format!("copy failed {} times, last: {reason}", attempt + 1);
            self.fail(run, kind, why, now).await?;
            return Ok(Done::new(&run.run_id, Outcome::CollectFailed, reason));
        }
        let delay = self
            .cfg
            .retry
            .delay(attempt, self.clock.jitter())
            .min(Duration::from_secs(60));
        self.again(attempt + 1, self.job.link_errors, delay).await?;
        Ok(Done::new(
            &run.run_id,
            Outcome::CopyRetry,
            format!("{reason}; again in {}s", delay.as_secs()),
        ))
    }

    /// The command's result link, within the GET budget and from an allowed host. `Err` when this
    /// message is done (paced, retried later, or the command recorded as not collected).
    async fn result_link<D: Defender>(
        &self,
        defender: &D,
        run: &RunRecord,
        kind: CommandType,
        now: OffsetDateTime,
    ) -> Result<Result<DownloadLink, Done>, StageError> {
        let link = budget::get_call(self.store, &self.cfg.budget, self.clock, || {
            defender.result_download_link(&self.job.action_id, self.job.index)
        })
        .await?;
        let link = match link {
            Paced::Wait(wait) => {
                let delay = budget::queue_delay(wait);
                self.again(self.job.attempt, self.job.link_errors, delay)
                    .await?;
                return Ok(Err(Done::new(
                    &run.run_id,
                    Outcome::Paced,
                    format!("GET budget full; again in {}s", delay.as_secs()),
                )));
            }
            Paced::Ran(link) => link,
        };
        let link = match link {
            Ok(l) => l,
            Err(e) => {
                if let Next::RetryAfter(after) = e.next()
                    && self.job.link_errors + 1 < MAX_LINK_ERRORS
                {
                    // Asking for the link is not the copy failing: its own count grows instead.
                    let delay = after.unwrap_or_else(|| {
                        self.cfg
                            .retry
                            .delay(self.job.link_errors, self.clock.jitter())
                    });
                    self.again(self.job.attempt, self.job.link_errors + 1, delay)
                        .await?;
                    return Ok(Err(Done::new(
                        &run.run_id,
                        Outcome::Throttled,
                        format!("{e}; again in {}s", delay.as_secs()),
                    )));
                }
                self.fail(run, kind, format!("no result link: {e}"), now)
                    .await?;
                return Ok(Err(Done::new(
                    &run.run_id,
                    Outcome::CollectFailed,
                    e.to_string(),
                )));
            }
        };
        if let Err(reason) = check_link(link.url.expose(), &self.cfg.allowed_hosts, now) {
            tracing::warn!(run_id = %run.run_id, action_id = %self.job.action_id, index = self.job.index, %reason, "result link refused");
            self.fail(run, kind, format!("link refused: {reason}"), now)
                .await?;
            return Ok(Err(Done::new(&run.run_id, Outcome::LinkRefused, reason)));
        }
        Ok(Ok(link))
    }

    async fn again(
        &self,
        attempt: u32,
        link_errors: u32,
        delay: Duration,
    ) -> Result<(), StageError> {
        let next = CollectJob {
            attempt,
            link_errors,
            ..self.job.clone()
        };
        debug_assert_eq!(next.v, MESSAGE_VERSION);
        hand_off::<_, _, CommandRecord, _, _>(
            self.store,
            self.queue,
            self.clock,
            &command_key(&self.job.run_id, self.job.index),
            &self.msg.id,
            &self.cfg.collect_queue_url,
            (next, delay),
            |_| {},
        )
        .await?;
        Ok(())
    }
}

impl<S: Uploads, Q: Queue> Step<'_, CollectConfig, CollectJob, S, Q> {
    /// Records the command as not collected, with the reason, and ends the run if it was the last.
    async fn fail(
        &self,
        run: &RunRecord,
        kind: CommandType,
        reason: String,
        now: OffsetDateTime,
    ) -> Result<(), StageError> {
        let (store, job) = (self.store, self.job);
        let asked = || {
            run.commands
                .get(job.index as usize)
                .cloned()
                .unwrap_or(crate::defender::Command {
                    kind,
                    params: vec![],
                })
        };
        // As Defender ran it (poll's record), else as asked.
        let (command, start_time, end_time) =
            match load_command(store, &run.run_id, job.index).await? {
                Some(r) => (r.command, r.start_time, r.end_time),
                None => (asked(), None, None),
            };
        let mut rec = CommandRecord::unfinished(
            job.index,
            command,
            CommandOutcome::CollectFailed,
            reason,
            now,
        );
        rec.command_status = Some(CommandStatus::Completed);
        (rec.start_time, rec.end_time) = (start_time, end_time);
        rec.chain = ended_chain(now);
        if finish_command(store, &run.run_id, &self.msg.id, &rec).await? {
            // An unfinished copy of this command is abandoned with it.
            let upload_key = evidence_key(&run.run_id, job.index, rec.kind);
            discard_checkpoint(store, &run.run_id, job.index, &upload_key).await?;
        }
        finish_run_if_complete(store, self.notary, &run.run_id, self.clock).await?;
        Ok(())
    }
}

/// Writes a command's final record if it is still waiting for its copy and `me` holds it. False
/// when a concurrent copy of the same message finished it first: the first final record stands,
/// and the manifest agrees with it.
async fn finish_command<S: Uploads>(
    store: &S,
    run: &crate::ids::RunId,
    me: &str,
    rec: &CommandRecord,
) -> Result<bool, StoreError> {
    let mut wrote = false;
    update_record::<_, CommandRecord, _>(store, &command_key(run, rec.index), |r| {
        let holds = r.chain.held_by(me);
        wrote = r.outcome == CommandOutcome::Collecting && holds;
        if wrote {
            *r = rec.clone();
        }
        wrote
    })
    .await?;
    Ok(wrote)
}
