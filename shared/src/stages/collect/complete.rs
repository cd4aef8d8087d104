//! Completion: making a whole upload's object stand under its evidence key, or finding that it
//! does. Separate from the streaming engine because it needs neither a link nor a download: a
//! checkpoint saved "completing" (every part uploaded, the hashes known) is finished from here by a
//! later invocation, and what is found under the key (a completion that went unrecorded, a second
//! copy of the same job, or something else) is judged by its length and SHA-256 alone.

use crate::hash::hash_package;
use crate::messages::CollectJob;
use crate::ports::{Completion, Head, StoreError, Uploads};
use crate::store::RunRecord;

use super::checkpoint::{Checkpoint, Finished, save_checkpoint};
use super::outcome::{Copied, CopyError, CopyResult};

/// Makes a whole upload's object stand under its key, or finds that it does: completes the
/// upload (only if nothing is there); if the upload is gone or the key taken, looks at what is
/// there: this package (a completion that went unrecorded, or a second copy of the same job) is
/// kept; anything else is left in place and the command fails naming it. A checkpoint that says
/// the object stands is believed only if the bucket agrees.
pub(super) async fn complete<S: Uploads>(
    store: &S,
    run: &RunRecord,
    job: &CollectJob,
    ck_key: &str,
    mut ck: Checkpoint,
) -> Result<CopyResult, CopyError> {
    let Some(mut done) = ck.completed.clone() else {
        return Err(CopyError::Download("the copy is not complete".into()));
    };
    if done.stored {
        let head = store
            .head(&ck.key, done.version_id.as_deref())
            .await
            .map_err(CopyError::Store)?;
        if head.is_some_and(|h| h.size == done.size) {
            return stored(&ck);
        }
        tracing::warn!(run_id = %run.run_id, index = job.index, key = %ck.key, "the checkpoint says the object stands, but the bucket does not have it; starting over");
        store.delete(ck_key).await.map_err(CopyError::Store)?;
        return Err(CopyError::Download(format!(
            "the checkpoint named {} version {:?} of {} bytes, which the bucket does not hold; \
             the copy starts over",
            ck.key, done.version_id, done.size
        )));
    }
    let completion = store
        .complete_upload(&ck.key, &ck.upload_id, ck.parts.clone())
        .await
        .map_err(CopyError::Store)?;
    let mut read_back = None;
    done.version_id = match completion {
        Completion::Stored { version_id } => version_id,
        Completion::Conflict => {
            if let Err(e) = store.abort_upload(&ck.key, &ck.upload_id).await {
                tracing::warn!(run_id = %run.run_id, error = %e, "could not abort an upload after a conflict");
            }
            store.delete(ck_key).await.map_err(CopyError::Store)?;
            return Err(CopyError::Download(format!(
                "another write to {} was in flight (409); the copy starts over",
                ck.key
            )));
        }
        Completion::Gone | Completion::Taken => {
            let gone = completion == Completion::Gone;
            let Some(head) = store.head(&ck.key, None).await.map_err(CopyError::Store)? else {
                if gone {
                    // Aborted or expired, and nothing under the key: start over.
                    return upload_gone(store, ck_key).await;
                }
                return Err(CopyError::Store(StoreError(format!(
                    "{} was taken when completing but is not there now; looking again",
                    ck.key
                ))));
            };
            if !gone && let Err(e) = store.abort_upload(&ck.key, &ck.upload_id).await {
                tracing::warn!(run_id = %run.run_id, error = %e, "could not abort an upload whose key is taken");
            }
            let found = adopt(store, &ck, &done, &head).await?;
            tracing::info!(run_id = %run.run_id, index = job.index, key = %ck.key, "the evidence key already holds this package; keeping it");
            read_back = Some(found);
            head.version_id
        }
    };
    if done.decompressed_pending {
        // The decompressor's state could not be saved: hash the file from the stored object (the
        // same pass checks the stored bytes against what was uploaded).
        let found = match read_back {
            Some(f) => f,
            None => {
                let head = Head {
                    size: done.size,
                    version_id: done.version_id.clone(),
                };
                adopt(store, &ck, &done, &head).await?
            }
        };
        done.sha256_decompressed = found.decompressed.as_ref().map(|d| d.0.clone());
        done.size_decompressed = found.decompressed.map(|d| d.1);
        done.decompressed_pending = false;
    }
    done.stored = true;
    ck.completed = Some(done);
    // The object stands: a failure from here on only records the command.
    save_checkpoint(store, ck_key, &ck)
        .await
        .map_err(CopyError::Store)?;
    stored(&ck)
}

/// Whether the object under the key (`head`) is this package: the same length, then the same
/// SHA-256 (hashed in one pass, with the file inside a GetFile when `done` still wants its hash).
/// Kept, it gets the deployment's retention like any evidence written here. Anything else is
/// `Occupied`: not replaced, and not this command's package.
async fn adopt<S: Uploads>(
    store: &S,
    ck: &Checkpoint,
    done: &Finished,
    head: &Head,
) -> Result<crate::hash::PackageHashes, CopyError> {
    let occupied = |size: u64, sha256: &str| {
        CopyError::Occupied(format!(
            "{} already holds {size} bytes with SHA-256 {sha256}, not this package ({} bytes, \
             SHA-256 {}); it was not replaced",
            ck.key, done.size, done.sha256
        ))
    };
    if head.size != done.size {
        return Err(occupied(head.size, "not read"));
    }
    let existing = store.open_read(&ck.key).await.map_err(CopyError::Store)?;
    let found = hash_package(existing, done.decompressed_pending)
        .await
        .map_err(|e| CopyError::Store(StoreError(format!("reading {}: {e}", ck.key))))?;
    if found.sha256 != done.sha256 || found.size != done.size {
        return Err(occupied(found.size, &found.sha256));
    }
    store
        .retain(&ck.key, head.version_id.as_deref())
        .await
        .map_err(CopyError::Store)?;
    Ok(found)
}

/// The upload a checkpoint named no longer exists (it was completed before a crash, aborted, or
/// expired): forget the checkpoint; the next attempt starts the copy over.
pub(super) async fn upload_gone<S: Uploads>(
    store: &S,
    ck_key: &str,
) -> Result<CopyResult, CopyError> {
    store.delete(ck_key).await.map_err(CopyError::Store)?;
    Err(CopyError::Download(
        "the multipart upload the checkpoint named is gone; the copy starts over".into(),
    ))
}

/// A completed copy, as the checkpoint saved it.
pub(super) fn stored(ck: &Checkpoint) -> Result<CopyResult, CopyError> {
    let Some(done) = ck.completed.clone() else {
        return Err(CopyError::Download("the copy is not complete".into()));
    };
    Ok(CopyResult::Copied(Copied {
        key: ck.key.clone(),
        version_id: done.version_id,
        size: done.size,
        sha256: done.sha256,
        sha256_decompressed: done.sha256_decompressed,
        size_decompressed: done.size_decompressed,
        exit_code: done.exit_code,
        output_excerpt: done.output_excerpt,
        errors_excerpt: done.errors_excerpt,
    }))
}
