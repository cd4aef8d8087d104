//! collect: ask for a command's result link, check it, and stream the package into S3 through a
//! multipart upload with bounded memory, hashing as it goes. The evidence object appears under its
//! final key only when complete, with its hashes in its metadata (uploaded to a staging key, then
//! published by a server-side copy). The last command to land writes the run's manifest.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::settings::CollectConfig;
use super::{Claimed, claim, hand_off};
use super::{Done, StageError, jitter};
use crate::budget::{self, Paced};
use crate::clock::Clock;
use crate::defender::{CommandType, DownloadLink, Next, Transcript};
use crate::hash::ResumableSha256;
use crate::messages::{CollectJob, Delivery, MESSAGE_VERSION};
use crate::ports::{Defender, Fetch, ObjectStore, Queue, StoreError, Upload};
use crate::store::keys::{self, checkpoint_key};
use crate::store::{
    Chain, CommandOutcome, CommandRecord, RECORD_VERSION, RunRecord, command_key, evidence_key,
    finish_run_if_complete, load_command, update_record,
};

/// S3 allows at most 10,000 parts.
pub const MAX_PARTS: u64 = 10_000;
const MIB: u64 = 1 << 20;
/// Transcripts are parsed for their exit code when at most this large.
const TRANSCRIPT_PARSE_LIMIT: usize = 4 << 20;

/// The part size for a package: the configured minimum, or more when the package would need more
/// than 10,000 parts; whole MiB.
pub fn part_size(content_length: Option<u64>, min: usize) -> usize {
    let min = (min as u64).max(5 * MIB);
    let needed = content_length.map(|l| l.div_ceil(MAX_PARTS)).unwrap_or(0);
    (needed.max(min).div_ceil(MIB) * MIB) as usize
}

/// A result link is followed only over https to an allowed host (plain http only to an allowed
/// loopback host, which is how the local simulator serves), and only before its `se` expiry.
pub fn check_link(url: &str, allowed_hosts: &[String], now: OffsetDateTime) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|_| "the result link is not a URL".to_string())?;
    let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("the result link to {host} carries credentials"));
    }

    let allowed = allowed_hosts.iter().any(|a| match a.strip_prefix('.') {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == *a,
    });
    if !allowed {
        return Err(format!(
            "the result link points at {host}, which is not an allowed download host"
        ));
    }
    let loopback = host
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(host == "localhost");
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        s => return Err(format!("the result link uses {s}; only https is followed")),
    }
    // Only the default port (an allowed host on another port reaches whatever listens there);
    // a loopback host, which is how the local simulator serves, may name its port.
    if let Some(port) = u.port()
        && !loopback
    {
        return Err(format!(
            "the result link to {host} names port {port}; only the default port is followed"
        ));
    }
    let se = u
        .query_pairs()
        .find(|(k, _)| k == "se")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| "the result link has no se (expiry)".to_string())?;
    let expiry = OffsetDateTime::parse(&se, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("the result link's se {se:?} is not a time"))?;
    if expiry <= now {
        return Err(format!("the result link expired at {se}"));
    }
    Ok(())
}

pub async fn handle<S: ObjectStore, Q: Queue, D: Defender, F: Fetch>(
    cfg: &CollectConfig,
    store: &S,
    queue: &Q,
    defender: &D,
    fetch: &F,
    clock: &dyn Clock,
    msg: &Delivery,
) -> Result<Done, StageError> {
    let now = clock.now();
    let deadline = std::time::Instant::now() + cfg.time_budget;
    let (job, run_id, run) = super::open::<CollectJob, _>(store, &msg.body).await?;
    let Some(command) = run.commands.get(job.index as usize).cloned() else {
        return Err(StageError::Reject {
            code: "unknown_command",
            reason: format!("run {run_id} has no command {}", job.index),
        });
    };
    // Poll left a record with Defender's view of the command; only the message holding the
    // command's chain copies it, and anything past Collecting means done already.
    let key = command_key(&run_id, job.index);
    let acts = |r: &CommandRecord| r.outcome == CommandOutcome::Collecting;
    let pending = match claim(store, &key, (&msg.id, job.prev.as_deref()), clock, acts).await? {
        Claimed::Mine(rec) => rec,
        Claimed::Duplicate => {
            return Ok(Done::new(
                &run_id,
                "duplicate",
                format!("another collect job holds command {}", job.index),
            ));
        }
        Claimed::Idle(rec) => {
            finish_run_if_complete(store, &run_id).await?;
            return Ok(Done::new(
                &run_id,
                "duplicate",
                format!("command {} already {:?}", job.index, rec.outcome),
            ));
        }
    };
    let (start_time, end_time) = (pending.start_time, pending.end_time);
    let step = Step {
        cfg,
        store,
        queue,
        clock,
        msg,
        job: &job,
    };

    // A copy whose upload completed before a crash needs no link: only publishing is left.
    let ck_key = checkpoint_key(&run_id, job.index);
    let finished = match load_checkpoint(store, &ck_key, &run_id, job.index).await? {
        Some(Saved::Usable(ck)) if ck.completed.is_some() => Some(*ck),
        _ => None,
    };
    let result = match finished {
        Some(ck) => publish(store, &run, &job, command.kind, &ck).await,
        None => {
            let link = budget::get_call(store, &cfg.budget, clock, || {
                defender.result_download_link(&job.action_id, job.index)
            })
            .await?;
            let link = match link {
                Paced::Wait(wait) => {
                    step.again(
                        job.attempt,
                        job.link_errors,
                        wait.max(Duration::from_secs(1)),
                    )
                    .await?;
                    return Ok(Done::new(
                        &run_id,
                        "paced",
                        format!("GET budget full; again in {}s", wait.as_secs()),
                    ));
                }
                Paced::Ran(link) => link,
            };
            let link = match link {
                Ok(l) => l,
                Err(e) => {
                    if let Next::RetryAfter(after) = e.next()
                        && job.link_errors + 1 < MAX_LINK_ERRORS
                    {
                        // Asking for the link is not the copy failing: its own count grows instead.
                        let delay =
                            after.unwrap_or_else(|| cfg.retry.delay(job.link_errors, jitter()));
                        step.again(job.attempt, job.link_errors + 1, delay).await?;
                        return Ok(Done::new(
                            &run_id,
                            "throttled",
                            format!("{e}; again in {}s", delay.as_secs()),
                        ));
                    }
                    record_failure(
                        store,
                        &msg.id,
                        &run,
                        &job,
                        command.kind,
                        format!("no result link: {e}"),
                        now,
                    )
                    .await?;
                    return Ok(Done::new(&run_id, "collect_failed", e.to_string()));
                }
            };
            if let Err(reason) = check_link(link.url.expose(), &cfg.allowed_hosts, now) {
                tracing::warn!(run_id = %run_id, action_id = %job.action_id, index = job.index, %reason, "result link refused");
                record_failure(
                    store,
                    &msg.id,
                    &run,
                    &job,
                    command.kind,
                    format!("link refused: {reason}"),
                    now,
                )
                .await?;
                return Ok(Done::new(&run_id, "link_refused", reason));
            }

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
                "continued",
                format!(
                    "command {} paused at byte {offset}; the next invocation goes on from there",
                    job.index
                ),
            ))
        }
        Ok(CopyResult::Copied(copied)) => {
            let rec = CommandRecord {
                v: RECORD_VERSION,
                index: job.index,
                kind: command.kind,
                command,
                outcome: CommandOutcome::Collected,
                command_status: Some("Completed".into()),
                errors: vec![],
                start_time,
                end_time,
                s3_key: Some(copied.key.clone()),
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
            if !finish_command(store, &run_id, &msg.id, &rec).await? {
                return Ok(Done::new(
                    &run_id,
                    "duplicate",
                    format!(
                        "a concurrent copy of this job finished command {}",
                        job.index
                    ),
                ));
            }
            // Recorded: the staging copy and the checkpoint are no longer needed (the bucket's
            // lifecycle rule removes staging objects a crash leaves here).
            cleanup(store, &copied.staging, &checkpoint_key(&run_id, job.index)).await;
            let manifest = finish_run_if_complete(store, &run_id).await?;
            let time_to_evidence = (OffsetDateTime::now_utc() - run.created_at).as_seconds_f64();
            let done = Done::new(
                &run_id,
                "collected",
                format!(
                    "command {} → {} ({} bytes, sha256 {}){}",
                    job.index,
                    copied.key,
                    copied.size,
                    copied.sha256,
                    if manifest { "; manifest written" } else { "" }
                ),
            )
            .with_metric("BytesCopied", copied.size as f64, "Bytes")
            .with_metric("TimeToEvidence", time_to_evidence, "Seconds");
            Ok(done)
        }
        Err(CopyError::Store(e)) => Err(e.into()),
        Err(e @ (CopyError::Download(_) | CopyError::UploadGone)) => {
            let reason = match e {
                CopyError::Download(reason) => reason,
                _ => "the multipart upload is gone; the copy starts over".to_string(),
            };
            if job.attempt + 1 >= cfg.max_attempts {
                record_failure(
                    store,
                    &msg.id,
                    &run,
                    &job,
                    command.kind,
                    format!("copy failed {} times, last: {reason}", job.attempt + 1),
                    now,
                )
                .await?;
                return Ok(Done::new(&run_id, "collect_failed", reason));
            }
            let delay = cfg
                .retry
                .delay(job.attempt, jitter())
                .min(Duration::from_secs(60));
            step.again(job.attempt + 1, job.link_errors, delay).await?;
            Ok(Done::new(
                &run_id,
                "copy_retry",
                format!("{reason}; again in {}s", delay.as_secs()),
            ))
        }
    }
}

fn excerpt(s: &str) -> String {
    const MAX: usize = 2000;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Link requests that may fail with something worth retrying before the command is given up.
pub const MAX_LINK_ERRORS: u32 = 8;

fn ended_chain(now: OffsetDateTime) -> Chain {
    let mut c = Chain::default();
    c.end(now);
    c
}

/// Removes what a finished copy no longer needs; failures only leave garbage behind.
async fn cleanup<S: ObjectStore>(store: &S, staging: &str, checkpoint: &str) {
    for key in [staging, checkpoint] {
        if let Err(e) = store.delete(key).await {
            tracing::warn!(%key, error = %e, "could not remove a finished copy's leftovers");
        }
    }
}

/// One collect job's context, for handing the command's chain on.
struct Step<'a, S, Q> {
    cfg: &'a CollectConfig,
    store: &'a S,
    queue: &'a Q,
    clock: &'a dyn Clock,
    msg: &'a Delivery,
    job: &'a CollectJob,
}

impl<S: ObjectStore, Q: Queue> Step<'_, S, Q> {
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

async fn record_failure<S: ObjectStore>(
    store: &S,
    me: &str,
    run: &RunRecord,
    job: &CollectJob,
    kind: CommandType,
    reason: String,
    now: OffsetDateTime,
) -> Result<(), StageError> {
    let command =
        run.commands
            .get(job.index as usize)
            .cloned()
            .unwrap_or(crate::defender::Command {
                kind,
                params: vec![],
            });
    let (start_time, end_time) = load_command(store, &run.run_id, job.index)
        .await?
        .map(|r| (r.start_time, r.end_time))
        .unwrap_or_default();
    let mut rec = CommandRecord::unfinished(
        job.index,
        command,
        CommandOutcome::CollectFailed,
        reason,
        now,
    );
    rec.command_status = Some("Completed".into());
    (rec.start_time, rec.end_time) = (start_time, end_time);
    rec.chain = ended_chain(now);
    if finish_command(store, &run.run_id, me, &rec).await? {
        // An unfinished copy of this command is abandoned with it.
        discard_checkpoint(store, &run.run_id, job.index).await?;
    }
    finish_run_if_complete(store, &run.run_id).await?;
    Ok(())
}

/// Writes a command's final record if it is still waiting for its copy and `me` holds it. False
/// when a concurrent copy of the same message finished it first: the first final record stands,
/// and the manifest agrees with it.
async fn finish_command<S: ObjectStore>(
    store: &S,
    run: &crate::ids::RunId,
    me: &str,
    rec: &CommandRecord,
) -> Result<bool, StoreError> {
    let mut wrote = false;
    update_record::<_, CommandRecord, _>(store, &command_key(run, rec.index), |r| {
        let holds = r.chain.holder.as_deref() == Some(me) || r.chain.is_handing_off(me);
        wrote = r.outcome == CommandOutcome::Collecting && holds;
        if wrote {
            *r = rec.clone();
        }
        wrote
    })
    .await?;
    Ok(wrote)
}

enum CopyError {
    /// The download failed or broke off: worth another attempt with a fresh link.
    Download(String),
    /// S3 failed: SQS delivers the job again.
    Store(StoreError),
    /// The multipart upload no longer exists.
    UploadGone,
}

/// A copy whose staging object is whole: its hashes and, for a transcript, its summary. Saved in
/// the checkpoint before publishing, so that a failure after this point only publishes again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finished {
    pub size: u64,
    pub sha256: String,
    pub sha256_decompressed: Option<String>,
    pub size_decompressed: Option<u64>,
    pub exit_code: Option<i64>,
    pub output_excerpt: Option<String>,
    pub errors_excerpt: Option<String>,
}

/// A published copy.
struct Copied {
    key: String,
    staging: String,
    size: u64,
    sha256: String,
    sha256_decompressed: Option<String>,
    size_decompressed: Option<u64>,
    exit_code: Option<i64>,
    output_excerpt: Option<String>,
    errors_excerpt: Option<String>,
}

/// Counts and hashes what a gzip decoder writes into it.
struct HashSink {
    hasher: Sha256,
    len: u64,
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the package comes from; asked again for a fresh link when a download breaks off.
struct Source<'a, S, D, F> {
    store: &'a S,
    defender: &'a D,
    fetch: &'a F,
    cfg: &'a CollectConfig,
    clock: &'a dyn Clock,
    job: &'a CollectJob,
}

impl<S: ObjectStore, D: Defender, F: Fetch> Source<'_, S, D, F> {
    /// A fresh link, checked like the first, opened at byte `from`.
    async fn reopen(&self, from: u64) -> Result<crate::ports::Download, CopyError> {
        // The link call counts against the GET budget; mid-copy, wait for it here (briefly).
        let mut waited = Duration::ZERO;
        let link = loop {
            let call = budget::get_call(self.store, &self.cfg.budget, self.clock, || {
                self.defender
                    .result_download_link(&self.job.action_id, self.job.index)
            })
            .await
            .map_err(CopyError::Store)?;
            match call {
                Paced::Ran(link) => break link,
                Paced::Wait(w) => {
                    waited += w;
                    if waited > Duration::from_secs(60) {
                        return Err(CopyError::Download(
                            "GET budget exhausted while resuming".into(),
                        ));
                    }
                    tokio::time::sleep(w).await;
                }
            }
        }
        .map_err(|e| CopyError::Download(format!("asking for a fresh link: {e}")))?;
        check_link(link.url.expose(), &self.cfg.allowed_hosts, self.clock.now())
            .map_err(CopyError::Download)?;
        self.fetch
            .open(&link.url, from)
            .await
            .map_err(CopyError::Download)
    }
}

/// Resumptions with a Range request within one copy attempt.
const MAX_RESUMES: u32 = 10;

/// Where an unfinished copy stands, saved at a part boundary: enough for the next invocation to go
/// on without downloading the uploaded parts again; or, once the upload is complete, what is left
/// to publish.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub v: u32,
    pub staging: String,
    pub upload_id: String,
    pub part_size: usize,
    pub parts: Vec<(i32, String)>,
    /// Bytes uploaded so far (the sum of the parts).
    pub offset: u64,
    pub package_len: Option<u64>,
    /// SHA-256 of the first `offset` bytes.
    pub sha256: ResumableSha256,
    pub invocations: u32,
    /// Set once CompleteMultipartUpload succeeded: the staging object is whole.
    #[serde(default)]
    pub completed: Option<Finished>,
}

impl Checkpoint {
    /// A stored checkpoint is checked before it is used: it must describe an upload of this
    /// command within S3's limits, with a hash state that matches its offset.
    pub fn check(&self, run: &crate::ids::RunId, index: u32) -> Result<(), String> {
        let prefix = keys::staging_prefix(run, index);
        if !self.staging.starts_with(&prefix) || self.staging.contains("..") {
            return Err(format!(
                "staging key {:?} is not this command's",
                self.staging
            ));
        }
        if self.upload_id.is_empty() {
            return Err("no upload id".into());
        }
        if !(5 * MIB..=5 * 1024 * MIB).contains(&(self.part_size as u64)) {
            return Err(format!(
                "part size {} is outside S3's limits",
                self.part_size
            ));
        }
        if self.parts.len() as u64 > MAX_PARTS {
            return Err(format!("{} parts is more than S3 allows", self.parts.len()));
        }
        for (i, (n, etag)) in self.parts.iter().enumerate() {
            if *n as i64 != i as i64 + 1 || etag.is_empty() {
                return Err(format!("part {} is numbered {n} or has no ETag", i + 1));
            }
        }
        if self.completed.is_none() {
            if self.offset != self.parts.len() as u64 * self.part_size as u64 {
                return Err(format!(
                    "offset {} is not the end of part {}",
                    self.offset,
                    self.parts.len()
                ));
            }
            if self.sha256.len() != self.offset {
                return Err(format!(
                    "the hash covers {} bytes, not the {} uploaded",
                    self.sha256.len(),
                    self.offset
                ));
            }
        }
        if self.package_len.is_some_and(|l| self.offset > l) {
            return Err(format!("offset {} is past the package's end", self.offset));
        }
        Ok(())
    }
}

/// What is stored under a checkpoint key.
enum Saved {
    Usable(Box<Checkpoint>),
    /// Unreadable or inconsistent: why.
    Corrupt(String),
}

async fn load_checkpoint<S: ObjectStore>(
    store: &S,
    key: &str,
    run: &crate::ids::RunId,
    index: u32,
) -> Result<Option<Saved>, StoreError> {
    let Some(stored) = store.get(key).await? else {
        return Ok(None);
    };
    Ok(Some(
        match serde_json::from_slice::<Checkpoint>(&stored.body) {
            Ok(ck) => match ck.check(run, index) {
                Ok(()) => Saved::Usable(Box::new(ck)),
                Err(why) => Saved::Corrupt(why),
            },
            Err(e) => Saved::Corrupt(e.to_string()),
        },
    ))
}

async fn save_checkpoint<S: ObjectStore>(
    store: &S,
    key: &str,
    ck: &Checkpoint,
) -> Result<(), StoreError> {
    let body = serde_json::to_vec(ck).map_err(|e| StoreError(e.to_string()))?;
    store
        .put(key, body, crate::ports::Put::Always)
        .await
        .map(|_| ())
}

/// Gives up on an unfinished copy: aborts its upload and forgets its checkpoint.
async fn discard_checkpoint<S: ObjectStore>(
    store: &S,
    run: &crate::ids::RunId,
    index: u32,
) -> Result<(), StoreError> {
    let key = checkpoint_key(run, index);
    if let Some(Saved::Usable(ck)) = load_checkpoint(store, &key, run, index).await?
        && let Err(e) = store.abort_upload(&ck.staging, &ck.upload_id).await
    {
        tracing::warn!(run_id = %run, error = %e, "could not abort an abandoned upload");
    }
    store.delete(&key).await
}

enum CopyResult {
    Copied(Copied),
    /// The time budget ran out; a checkpoint holds the place.
    Paused {
        offset: u64,
    },
}

async fn copy<S: ObjectStore, D: Defender, F: Fetch>(
    store: &S,
    source: &Source<'_, S, D, F>,
    run: &RunRecord,
    kind: CommandType,
    link: &DownloadLink,
    deadline: std::time::Instant,
) -> Result<CopyResult, CopyError> {
    let (cfg, fetch, job) = (source.cfg, source.fetch, source.job);
    let ck_key = checkpoint_key(&run.run_id, job.index);
    let mut saved = load_checkpoint(store, &ck_key, &run.run_id, job.index)
        .await
        .map_err(CopyError::Store)?;
    if let Some(Saved::Corrupt(why)) = &saved {
        tracing::warn!(run_id = %run.run_id, index = job.index, reason = %why, "checkpoint unusable; starting the copy over");
        store.delete(&ck_key).await.map_err(CopyError::Store)?;
        saved = None;
    }
    let (download, mut ck) = match saved {
        Some(Saved::Usable(ck)) if ck.completed.is_some() => {
            // The upload completed before a failure: only publishing is left.
            return publish(store, run, job, kind, &ck).await;
        }
        Some(Saved::Usable(ck)) => {
            let mut ck = *ck;
            let download = fetch
                .open(&link.url, ck.offset)
                .await
                .map_err(CopyError::Download)?;
            if let (Some(len), Some(rest)) = (ck.package_len, download.content_length)
                && len != ck.offset + rest
            {
                discard_checkpoint(store, &run.run_id, job.index)
                    .await
                    .map_err(CopyError::Store)?;
                return Err(CopyError::Download(format!(
                    "the package is now {} bytes, not the {len} the checkpoint was made for",
                    ck.offset + rest
                )));
            }
            ck.invocations += 1;
            tracing::info!(run_id = %run.run_id, index = job.index, offset = ck.offset, "resuming a copy from its checkpoint");
            (download, ck)
        }
        _ => {
            let download = fetch
                .open(&link.url, 0)
                .await
                .map_err(CopyError::Download)?;
            let part_size = part_size(download.content_length, cfg.part_size_min);
            let staging = keys::new_staging_key(&run.run_id, job.index);
            let upload_id = store
                .begin_upload(&staging)
                .await
                .map_err(CopyError::Store)?;
            let ck = Checkpoint {
                v: 1,
                staging,
                upload_id,
                part_size,
                parts: Vec::new(),
                offset: 0,
                package_len: download.content_length,
                sha256: ResumableSha256::new(),
                invocations: 1,
                completed: None,
            };
            (download, ck)
        }
    };
    let resumed = ck.offset > 0;
    let hashes = match stream_parts(store, &mut ck, kind, download, source, deadline).await {
        Ok(Some(h)) => h,
        Ok(None) => {
            save_checkpoint(store, &ck_key, &ck)
                .await
                .map_err(CopyError::Store)?;
            return Ok(CopyResult::Paused { offset: ck.offset });
        }
        Err(CopyError::UploadGone) => return upload_gone(store, &ck_key).await,
        Err(e) => {
            if ck.parts.is_empty() {
                // Nothing worth keeping: never leave an orphaned upload behind a failed copy.
                if let Err(abort) = store.abort_upload(&ck.staging, &ck.upload_id).await {
                    tracing::warn!(run_id = %run.run_id, error = %abort, "could not abort a failed upload");
                }
                let _ = store.delete(&ck_key).await;
            } else {
                // The next attempt goes on from the last uploaded part.
                save_checkpoint(store, &ck_key, &ck)
                    .await
                    .map_err(CopyError::Store)?;
            }
            return Err(e);
        }
    };
    let completed = store
        .complete_upload(&ck.staging, &ck.upload_id, ck.parts.clone())
        .await
        .map_err(CopyError::Store)?;
    if completed == Upload::Gone {
        return upload_gone(store, &ck_key).await;
    }
    let mut hashes = hashes;
    if resumed && kind == CommandType::GetFile {
        // The decompressor's state cannot be saved; hash the file from the stored package instead.
        let decompressed = hash_gzip(
            store
                .open_read(&ck.staging)
                .await
                .map_err(CopyError::Store)?,
        )
        .await;
        hashes.sha256_decompressed = decompressed.as_ref().map(|d| d.0.clone());
        hashes.size_decompressed = decompressed.map(|d| d.1);
    }
    ck.completed = Some(Finished {
        size: hashes.size,
        sha256: hashes.sha256,
        sha256_decompressed: hashes.sha256_decompressed,
        size_decompressed: hashes.size_decompressed,
        exit_code: hashes.transcript.as_ref().and_then(|t| t.exit_code),
        output_excerpt: hashes
            .transcript
            .as_ref()
            .map(|t| excerpt(&t.script_output)),
        errors_excerpt: hashes
            .transcript
            .as_ref()
            .map(|t| excerpt(&t.script_errors)),
    });
    // Completion is recorded before publishing: a failure from here on publishes again.
    save_checkpoint(store, &ck_key, &ck)
        .await
        .map_err(CopyError::Store)?;
    publish(store, run, job, kind, &ck).await
}

/// The upload a checkpoint named no longer exists (it was completed before a crash, aborted, or
/// expired): forget the checkpoint; the next attempt starts the copy over.
async fn upload_gone<S: ObjectStore>(store: &S, ck_key: &str) -> Result<CopyResult, CopyError> {
    store.delete(ck_key).await.map_err(CopyError::Store)?;
    Err(CopyError::Download(
        "the multipart upload the checkpoint named is gone; the copy starts over".into(),
    ))
}

/// Copies a completed staging object to its final key with its hashes in its metadata. Safe to
/// repeat: the staging object and the checkpoint are removed only after the command is recorded.
async fn publish<S: ObjectStore>(
    store: &S,
    run: &RunRecord,
    job: &CollectJob,
    kind: CommandType,
    ck: &Checkpoint,
) -> Result<CopyResult, CopyError> {
    let Some(done) = ck.completed.clone() else {
        return Err(CopyError::Download("the copy is not complete".into()));
    };
    let key = evidence_key(&run.run_id, job.index, kind);
    let mut meta = BTreeMap::new();
    meta.insert("sha256".to_string(), done.sha256.clone());
    meta.insert("size".to_string(), done.size.to_string());
    if let Some(d) = &done.sha256_decompressed {
        meta.insert("sha256-decompressed".to_string(), d.clone());
    }
    if let Some(n) = done.size_decompressed {
        meta.insert("size-decompressed".to_string(), n.to_string());
    }
    meta.insert("run-id".to_string(), run.run_id.to_string());
    meta.insert("action-id".to_string(), job.action_id.to_string());
    meta.insert("command-index".to_string(), job.index.to_string());
    store
        .publish(&ck.staging, &key, meta)
        .await
        .map_err(CopyError::Store)?;
    Ok(CopyResult::Copied(Copied {
        key,
        staging: ck.staging.clone(),
        size: done.size,
        sha256: done.sha256,
        sha256_decompressed: done.sha256_decompressed,
        size_decompressed: done.size_decompressed,
        exit_code: done.exit_code,
        output_excerpt: done.output_excerpt,
        errors_excerpt: done.errors_excerpt,
    }))
}

/// SHA-256 and length of a gzip stream's content (None if it is not clean gzip).
async fn hash_gzip(mut stream: crate::ports::ByteStream) -> Option<(String, u64)> {
    let mut d = flate2::write::GzDecoder::new(HashSink {
        hasher: Sha256::new(),
        len: 0,
    });
    while let Some(chunk) = stream.next().await {
        d.write_all(&chunk.ok()?).ok()?;
    }
    d.finish()
        .ok()
        .map(|s| (hex::encode(s.hasher.finalize()), s.len))
}

struct Hashes {
    size: u64,
    sha256: String,
    sha256_decompressed: Option<String>,
    size_decompressed: Option<u64>,
    transcript: Option<Transcript>,
}

/// Streams the download into parts from the checkpoint's place on. Returns the hashes when done,
/// or `None` when the time budget ran out (the checkpoint then stands at a part boundary). The
/// checkpoint only ever moves at part boundaries, so on an error it still says where to go on.
async fn stream_parts<S: ObjectStore, D: Defender, F: Fetch>(
    store: &S,
    ck: &mut Checkpoint,
    kind: CommandType,
    mut download: crate::ports::Download,
    source: &Source<'_, S, D, F>,
    deadline: std::time::Instant,
) -> Result<Option<Hashes>, CopyError> {
    let mut resumes = 0u32;
    let part_size = ck.part_size;
    let mut hasher = ck.sha256.clone();
    // The decompressed hash is taken on the way only when the copy starts at the beginning.
    let mut gz = (kind == CommandType::GetFile && ck.offset == 0).then(|| {
        flate2::write::GzDecoder::new(HashSink {
            hasher: Sha256::new(),
            len: 0,
        })
    });
    let mut transcript = (kind == CommandType::RunScript && ck.offset == 0).then(Vec::new);
    let mut buf = BytesMut::with_capacity(part_size);
    let mut total = ck.offset;
    while let Some(chunk) = download.stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(reason) => {
                // Everything received so far is hashed and buffered or uploaded: go on from there.
                resumes += 1;
                if resumes > MAX_RESUMES {
                    return Err(CopyError::Download(format!(
                        "{reason} (after {MAX_RESUMES} resumptions)"
                    )));
                }
                tracing::info!(run_id = %source.job.run_id, index = source.job.index, at = total, %reason, "download broke off; resuming with a fresh link");
                download = source.reopen(total).await?;
                if let (Some(len), Some(rest)) = (ck.package_len, download.content_length)
                    && len != total + rest
                {
                    return Err(CopyError::Download(format!(
                        "resumed download is {rest} bytes from {total}, but the package is {len}"
                    )));
                }
                continue;
            }
        };
        total += chunk.len() as u64;
        if let Some(d) = gz.as_mut()
            && d.write_all(&chunk).is_err()
        {
            // Not gzip after all: keep the stored bytes' hash only.
            gz = None;
        }
        if let Some(t) = transcript.as_mut() {
            if t.len() + chunk.len() <= TRANSCRIPT_PARSE_LIMIT {
                t.extend_from_slice(&chunk);
            } else {
                transcript = None;
            }
        }
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            let take = (part_size - buf.len()).min(rest.len());
            // Hash exactly what enters the part, so that the state at a boundary is the boundary's.
            hasher.update(&rest[..take]);
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == part_size {
                let n = ck.parts.len() as i32 + 1;
                let body: Bytes = buf.split().freeze();
                let Upload::Done(etag) = store
                    .upload_part(&ck.staging, &ck.upload_id, n, body)
                    .await
                    .map_err(CopyError::Store)?
                else {
                    return Err(CopyError::UploadGone);
                };
                ck.parts.push((n, etag));
                ck.offset += part_size as u64;
                ck.sha256 = hasher.clone();
                buf.reserve(part_size);
                let more = ck.package_len.is_none_or(|len| ck.offset < len);
                // Bytes of this chunk past the boundary are neither hashed nor kept: the next
                // invocation downloads them again from the checkpoint's offset.
                if more && std::time::Instant::now() >= deadline {
                    return Ok(None);
                }
            }
        }
    }
    if let Some(len) = ck.package_len
        && len != total
    {
        return Err(CopyError::Download(format!(
            "download ended after {total} of {len} bytes"
        )));
    }
    if !buf.is_empty() || ck.parts.is_empty() {
        let n = ck.parts.len() as i32 + 1;
        let len = buf.len() as u64;
        let Upload::Done(etag) = store
            .upload_part(&ck.staging, &ck.upload_id, n, buf.split().freeze())
            .await
            .map_err(CopyError::Store)?
        else {
            return Err(CopyError::UploadGone);
        };
        ck.parts.push((n, etag));
        ck.offset += len;
        ck.sha256 = hasher.clone();
    }
    // A gzip stream that does not finish cleanly (bad CRC or size) gets no decompressed hash.
    let decompressed = gz
        .and_then(|d| d.finish().ok())
        .map(|s| (hex::encode(s.hasher.finalize()), s.len));
    let transcript = transcript.and_then(|t| serde_json::from_slice::<Transcript>(&t).ok());
    Ok(Some(Hashes {
        size: total,
        sha256: hasher.finish_hex(),
        sha256_decompressed: decompressed.as_ref().map(|d| d.0.clone()),
        size_decompressed: decompressed.map(|d| d.1),
        transcript,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert_eq!(part_size(None, 8 << 20), 8 << 20);
        assert_eq!(part_size(Some(100), 8 << 20), 8 << 20);
        assert_eq!(part_size(Some(1 << 30), 1 << 20), 5 << 20, "at least 5 MiB");
        let big = 200u64 << 30;
        let p = part_size(Some(big), 8 << 20) as u64;
        assert!(big.div_ceil(p) <= MAX_PARTS);
        assert_eq!(p % MIB, 0);
    }

    #[test]
    fn links_must_be_https_to_allowed_hosts_and_unexpired() {
        let allowed = vec![
            ".blob.core.windows.net".to_string(),
            "127.0.0.1".to_string(),
        ];
        let now = OffsetDateTime::parse(
            "2026-01-01T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ok = "https://acct.blob.core.windows.net/c/x?se=2026-01-01T00%3A30%3A00Z&sig=abc";
        assert!(check_link(ok, &allowed, now).is_ok());
        assert!(
            check_link(
                "http://127.0.0.1:9/blob/x?se=2026-01-01T00%3A30%3A00Z",
                &allowed,
                now
            )
            .is_ok()
        );
        for (bad, why) in [
            (
                "http://acct.blob.core.windows.net/c/x?se=2026-01-01T00%3A30%3A00Z",
                "only https",
            ),
            (
                "https://blob.core.windows.net.evil.com/x?se=2026-01-01T00%3A30%3A00Z",
                "not an allowed",
            ),
            (
                "https://evilblob.core.windows.net/x?se=2026-01-01T00%3A30%3A00Z",
                "not an allowed",
            ),
            (
                "https://169.254.169.254/latest/meta-data?se=2026-01-01T00%3A30%3A00Z",
                "not an allowed",
            ),
            (
                "https://u:p@acct.blob.core.windows.net/x?se=2026-01-01T00%3A30%3A00Z",
                "credentials",
            ),
            ("https://acct.blob.core.windows.net/x", "no se"),
            (
                "https://acct.blob.core.windows.net/x?se=2025-12-31T23%3A59%3A00Z",
                "expired",
            ),
            (
                "https://acct.blob.core.windows.net/x?se=tomorrow",
                "not a time",
            ),
            ("file:///etc/passwd", "not an allowed"),
            (
                "https://acct.blob.core.windows.net:6379/x?se=2026-01-01T00%3A30%3A00Z",
                "port 6379",
            ),
            (
                "http://localhost:80/x?se=2026-01-01T00%3A30%3A00Z",
                "not an allowed",
            ),
        ] {
            let e = check_link(bad, &allowed, now).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
