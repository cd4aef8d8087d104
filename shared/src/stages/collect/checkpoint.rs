//! Where an unfinished copy stands, saved at a part boundary under the command's checkpoint key:
//! enough for the next invocation to go on. A stored checkpoint is state read back from S3, so it
//! is checked before it is trusted; an unusable one is discarded and the copy starts over.

use crate::hash::ResumableSha256;
use crate::ports::{StoreError, Uploads};
use crate::store::keys::checkpoint_key;

/// S3 allows at most 10,000 parts.
pub const MAX_PARTS: u64 = 10_000;
pub(super) const MIB: u64 = 1 << 20;

/// A copy whose upload is whole: its hashes and, for a transcript, its summary; once the object
/// stands, its version. Saved in the checkpoint before the upload is completed, so that a failure
/// after this point needs neither a link nor a download.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finished {
    /// Bytes in the package as stored.
    pub size: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Hex SHA-256 of the decompressed file; `None` unless the package is gzip.
    pub sha256_decompressed: Option<String>,
    /// Bytes of the decompressed file; `None` unless the package is gzip.
    pub size_decompressed: Option<u64>,
    /// A transcript's exit code; `None` for other packages or when absent.
    pub exit_code: Option<i64>,
    /// A transcript's standard output, cut short; `None` for other packages.
    pub output_excerpt: Option<String>,
    /// A transcript's standard error, cut short; `None` for other packages.
    pub errors_excerpt: Option<String>,
    /// The evidence object's version, when the bucket keeps versions (and the completion said).
    #[serde(default)]
    pub version_id: Option<String>,
    /// Whether the object is known to stand under its key. Saved `false` before the upload is
    /// completed ("completing"): a later invocation then completes it again or finds the object,
    /// with no link and no download.
    #[serde(default)]
    pub stored: bool,
    /// The package is a GetFile whose copy resumed: the file inside is hashed from the stored
    /// object once it stands (the decompressor's state could not be saved).
    #[serde(default)]
    pub decompressed_pending: bool,
}

/// Where an unfinished copy stands, saved at a part boundary: enough for the next invocation to go
/// on without downloading the uploaded parts again; or, once the upload is complete, what is left
/// to record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Checkpoint format version: 2 (the upload goes to the evidence key; a version 1 checkpoint
    /// named a staging key and is not used).
    pub v: u32,
    /// The key the upload goes to: the command's evidence key.
    #[serde(alias = "staging")]
    pub key: String,
    /// The multipart upload id.
    pub upload_id: String,
    /// Bytes per part (all but the last), within S3's limits (5 MiB to 5 GiB).
    pub part_size: usize,
    /// The uploaded parts as (part number from 1, ETag), in order.
    pub parts: Vec<(i32, String)>,
    /// Bytes uploaded so far (the sum of the parts).
    pub offset: u64,
    /// The package's length as the download first announced it; `None` if it did not.
    pub package_len: Option<u64>,
    /// SHA-256 of the first `offset` bytes.
    pub sha256: ResumableSha256,
    /// Invocations that have worked on this copy, counting the current one.
    pub invocations: u32,
    /// Set once every part is uploaded (see [`Finished::stored`]).
    #[serde(default)]
    pub completed: Option<Finished>,
}

impl Checkpoint {
    /// The format this code writes and reads.
    pub const VERSION: u32 = 2;

    /// A stored checkpoint is checked before it is used: it must describe an upload to this
    /// command's evidence key (`key`) within S3's limits, with a hash state that matches its
    /// offset.
    pub fn check(&self, key: &str) -> Result<(), String> {
        if self.v != Self::VERSION {
            return Err(format!(
                "checkpoint format {} is not {} (an upload to a staging key, from before an upgrade)",
                self.v,
                Self::VERSION
            ));
        }
        if self.key != key {
            return Err(format!(
                "upload key {:?} is not this command's evidence key {key:?}",
                self.key
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
pub(super) enum Saved {
    Usable(Box<Checkpoint>),
    /// Unreadable or inconsistent: why.
    Corrupt(String),
}

/// The checkpoint under `key`, checked against `upload_key`, the evidence key its upload must go to.
pub(super) async fn load_checkpoint<S: Uploads>(
    store: &S,
    key: &str,
    upload_key: &str,
) -> Result<Option<Saved>, StoreError> {
    let Some(stored) = store.get(key).await? else {
        return Ok(None);
    };
    Ok(Some(
        match serde_json::from_slice::<Checkpoint>(&stored.body) {
            Ok(ck) => match ck.check(upload_key) {
                Ok(()) => Saved::Usable(Box::new(ck)),
                Err(why) => Saved::Corrupt(why),
            },
            Err(e) => Saved::Corrupt(e.to_string()),
        },
    ))
}

pub(super) async fn save_checkpoint<S: Uploads>(
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

/// Gives up on an unfinished copy: aborts its upload and forgets its checkpoint. An object that
/// stands is not touched (evidence stays).
pub(super) async fn discard_checkpoint<S: Uploads>(
    store: &S,
    run: &crate::ids::RunId,
    index: u32,
    upload_key: &str,
) -> Result<(), StoreError> {
    let key = checkpoint_key(run, index);
    if let Some(Saved::Usable(ck)) = load_checkpoint(store, &key, upload_key).await?
        && ck.completed.as_ref().is_none_or(|f| !f.stored)
        && let Err(e) = store.abort_upload(&ck.key, &ck.upload_id).await
    {
        tracing::warn!(run_id = %run, error = %e, "could not abort an abandoned upload");
    }
    store.delete(&key).await
}
