//! The streaming engine: a package from its download link into a multipart upload to its evidence
//! key, part by part (the next part downloading while earlier ones upload), hashing as it goes
//! (SHA-256 of the package and, for a GetFile, of the file inside the gzip), resuming a broken
//! download with a fresh link and a Range request, and checkpointing at part boundaries when the
//! invocation's time runs out. Once every part is uploaded it saves the copy as "completing" and
//! hands it to `complete`: the object appears under its key only then, whole, and only if nothing
//! is there (If-None-Match); no server-side copy publishes it (one moved every byte a second time
//! and stopped at 5 GiB).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::checkpoint::{
    Checkpoint, Finished, MAX_PARTS, MIB, Saved, discard_checkpoint, load_checkpoint,
    save_checkpoint,
};
use super::complete::{complete, upload_gone};
use super::link::check_link;
use super::outcome::{CopyError, CopyResult};
use crate::budget::{self, Paced};
use crate::clock::Clock;
use crate::defender::{CommandType, DownloadLink, Transcript};
use crate::hash::{HashSink, ResumableSha256};
use crate::messages::CollectJob;
use crate::ports::{Defender, Fetch, StoreError, Upload, Uploads};
use crate::stages::settings::CollectConfig;
use crate::store::keys::checkpoint_key;
use crate::store::{RunRecord, evidence_key};

/// Transcripts are parsed for their exit code when at most this large.
pub(super) const TRANSCRIPT_PARSE_LIMIT: usize = 4 << 20;

/// The part size for a package: the configured minimum, or more when the package would need more
/// than 10,000 parts; whole MiB.
pub fn part_size(content_length: Option<u64>, min: usize) -> usize {
    let min = (min as u64).max(5 * MIB);
    let needed = content_length.map(|l| l.div_ceil(MAX_PARTS)).unwrap_or(0);
    (needed.max(min).div_ceil(MIB) * MIB) as usize
}

/// Where the package comes from; asked again for a fresh link when a download breaks off.
pub(super) struct Source<'a, S, D, F> {
    pub(super) store: &'a S,
    pub(super) defender: &'a D,
    pub(super) fetch: &'a F,
    pub(super) cfg: &'a CollectConfig,
    pub(super) clock: &'a dyn Clock,
    pub(super) job: &'a CollectJob,
}

impl<S: Uploads, D: Defender, F: Fetch> Source<'_, S, D, F> {
    /// A fresh link, checked like the first, opened at byte `from`.
    pub(super) async fn reopen(&self, from: u64) -> Result<crate::ports::Download, CopyError> {
        // The link call counts against the GET budget; mid-copy, wait for it here (briefly: a
        // minute by the clock, pauses inside the budget's calls included).
        let started = self.clock.now();
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
                    if self.clock.now() - started + w > Duration::from_secs(60) {
                        return Err(CopyError::Download(
                            "GET budget exhausted while resuming".into(),
                        ));
                    }
                    self.clock.pause(w).await;
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
pub(super) const MAX_RESUMES: u32 = 10;

pub(super) async fn copy<S: Uploads, D: Defender, F: Fetch>(
    store: &S,
    source: &Source<'_, S, D, F>,
    run: &RunRecord,
    kind: CommandType,
    link: &DownloadLink,
    deadline: time::OffsetDateTime,
) -> Result<CopyResult, CopyError> {
    let (cfg, fetch, job) = (source.cfg, source.fetch, source.job);
    let ck_key = checkpoint_key(&run.run_id, job.index);
    let key = evidence_key(&run.run_id, job.index, kind);
    let mut saved = load_checkpoint(store, &ck_key, &key)
        .await
        .map_err(CopyError::Store)?;
    if let Some(Saved::Corrupt(why)) = &saved {
        tracing::warn!(run_id = %run.run_id, index = job.index, reason = %why, "checkpoint unusable; starting the copy over");
        store.delete(&ck_key).await.map_err(CopyError::Store)?;
        saved = None;
    }
    let (download, mut ck) = match saved {
        Some(Saved::Usable(ck)) if ck.completed.is_some() => {
            // Every part was uploaded before a failure: the object is made to stand, or found.
            return complete(store, run, job, &ck_key, *ck).await;
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
                discard_checkpoint(store, &run.run_id, job.index, &key)
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
            let upload_id = store
                .begin_upload(&key, provenance(run, job))
                .await
                .map_err(CopyError::Store)?;
            let ck = Checkpoint {
                v: Checkpoint::VERSION,
                key: key.clone(),
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
                if let Err(abort) = store.abort_upload(&ck.key, &ck.upload_id).await {
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
        version_id: None,
        stored: false,
        decompressed_pending: resumed && kind == CommandType::GetFile,
    });
    // "Completing": from here on, what is left needs neither a link nor a download.
    save_checkpoint(store, &ck_key, &ck)
        .await
        .map_err(CopyError::Store)?;
    complete(store, run, job, &ck_key, ck).await
}

/// Who an evidence object belongs to, in its metadata from the start (its hashes are known only
/// at the end: they are in the command record and the signed manifest, the record of truth).
fn provenance(run: &RunRecord, job: &CollectJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("run-id".to_string(), run.run_id.to_string()),
        ("action-id".to_string(), job.action_id.to_string()),
        ("command-index".to_string(), job.index.to_string()),
    ])
}

pub(super) struct Hashes {
    pub(super) size: u64,
    pub(super) sha256: String,
    pub(super) sha256_decompressed: Option<String>,
    pub(super) size_decompressed: Option<u64>,
    pub(super) transcript: Option<Transcript>,
}

/// Parts uploading at once: the download goes on while fewer are in flight and waits while this
/// many are (memory: about this many part buffers, plus the one filling).
pub const PARTS_IN_FLIGHT: usize = 2;

/// A part on its way to S3, and where the copy stands once it is there.
struct InFlight {
    n: i32,
    len: u64,
    /// The hash of everything up to and including this part.
    hashed: ResumableSha256,
    /// The part's bytes, shared with the upload: once it is done, the buffer fills the next part
    /// (a new 8 MiB buffer per part leaves the allocator's heap growing with the package).
    body: Bytes,
}

/// Streams the download into parts from the checkpoint's place on, uploading up to
/// [`PARTS_IN_FLIGHT`] parts while the next one downloads. Returns the hashes when done, or `None`
/// when the time budget ran out (the checkpoint then stands at a part boundary). The checkpoint
/// moves only when a part and every part before it are stored, so on an error it still says where
/// to go on (parts in flight are uploaded again from there).
/// How long past the time budget a stalled download is waited for (the function's timeout leaves
/// at least this much after the largest budget, `COLLECT_TIME_BUDGET_SECS` 870 of 900).
pub const STALL_GRACE: Duration = Duration::from_secs(20);

pub(super) async fn stream_parts<S: Uploads, D: Defender, F: Fetch>(
    store: &S,
    ck: &mut Checkpoint,
    kind: CommandType,
    mut download: crate::ports::Download,
    source: &Source<'_, S, D, F>,
    deadline: time::OffsetDateTime,
) -> Result<Option<Hashes>, CopyError> {
    let mut resumes = 0u32;
    let part_size = ck.part_size;
    let (key, upload_id) = (ck.key.clone(), ck.upload_id.clone());
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
    let mut spare: Vec<BytesMut> = Vec::new();
    let mut total = ck.offset;
    let mut next_part = ck.parts.len() as i32 + 1;
    let mut in_flight = futures_util::stream::FuturesOrdered::new();
    // One closure, so that every part's future has the same type.
    let send = |part: InFlight| {
        let (key, upload_id) = (&key, &upload_id);
        async move {
            let stored = store
                .upload_part(key, upload_id, part.n, part.body.clone())
                .await;
            (part, stored)
        }
    };
    // A stored part moves the checkpoint, in order.
    let settle = |ck: &mut Checkpoint,
                  spare: &mut Vec<BytesMut>,
                  part: InFlight,
                  stored: Result<Upload<String>, StoreError>| {
        let Upload::Done(etag) = stored.map_err(CopyError::Store)? else {
            return Err(CopyError::UploadGone);
        };
        ck.parts.push((part.n, etag));
        ck.offset += part.len;
        ck.sha256 = part.hashed;
        if let Ok(mut b) = part.body.try_into_mut() {
            b.clear();
            spare.push(b);
        }
        Ok::<_, CopyError>(())
    };
    loop {
        while in_flight.len() >= PARTS_IN_FLIGHT {
            let (part, stored) = in_flight.next().await.expect("parts are in flight");
            settle(ck, &mut spare, part, stored)?;
        }
        // A chunk is waited for only until the time budget is over, and STALL_GRACE after it:
        // a download that stalls mid-part must not outlive the invocation (the budget is
        // otherwise checked at part boundaries only). The checkpoint then stands at the last
        // stored part, and the next invocation goes on from there with a fresh link.
        let budget_left: Duration = (deadline - source.clock.now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        let chunk = tokio::select! {
            biased;
            Some((part, stored)) = in_flight.next(), if !in_flight.is_empty() => {
                settle(ck, &mut spare, part, stored)?;
                continue;
            }
            chunk = tokio::time::timeout(budget_left + STALL_GRACE, download.stream.next()) => chunk,
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(_) => {
                tracing::warn!(run_id = %source.job.run_id, index = source.job.index, at = total,
                    "the download stalled past the time budget; going on from the last stored part in the next invocation");
                while let Some((part, stored)) = in_flight.next().await {
                    settle(ck, &mut spare, part, stored)?;
                }
                return Ok(None);
            }
        };
        let Some(chunk) = chunk else { break };
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
                // A chunk larger than a part fills several: the limit holds within it too (a
                // part starts only when there is room, and takes the buffer that room freed).
                while in_flight.len() >= PARTS_IN_FLIGHT {
                    let (done, stored) = in_flight.next().await.expect("parts are in flight");
                    settle(ck, &mut spare, done, stored)?;
                }
                let n = next_part;
                next_part += 1;
                let next = spare
                    .pop()
                    .unwrap_or_else(|| BytesMut::with_capacity(part_size));
                let part = InFlight {
                    n,
                    len: part_size as u64,
                    hashed: hasher.clone(),
                    body: std::mem::replace(&mut buf, next).freeze(),
                };
                in_flight.push_back(send(part));
                let end = ck.offset + part_size as u64 * in_flight.len() as u64;
                let more = ck.package_len.is_none_or(|len| end < len);
                // Bytes of this chunk past the boundary are neither hashed nor kept: the next
                // invocation downloads them again from the checkpoint's offset.
                if more && source.clock.now() >= deadline {
                    while let Some((part, stored)) = in_flight.next().await {
                        settle(ck, &mut spare, part, stored)?;
                    }
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
    if !buf.is_empty() || (ck.parts.is_empty() && in_flight.is_empty()) {
        let n = next_part;
        let part = InFlight {
            n,
            len: buf.len() as u64,
            hashed: hasher.clone(),
            body: buf.split().freeze(),
        };
        in_flight.push_back(send(part));
    }
    while let Some((part, stored)) = in_flight.next().await {
        settle(ck, &mut spare, part, stored)?;
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

/// A transcript's text for the manifest: at most 2,000 bytes.
fn excerpt(s: &str) -> String {
    crate::text::cut(s, 2000)
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
}
