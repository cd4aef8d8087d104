//! Where an unfinished copy stands, saved at a part boundary under the command's checkpoint key:
//! enough for the next invocation to go on. A stored checkpoint is state read back from S3, so it
//! is checked before it is trusted; an unusable one is discarded and the copy starts over.

use crate::hash::ResumableSha256;
use crate::ports::{StoreError, Uploads};
use crate::store::keys::{self, checkpoint_key};

/// S3 allows at most 10,000 parts.
pub const MAX_PARTS: u64 = 10_000;
pub(super) const MIB: u64 = 1 << 20;

/// A copy whose staging object is whole: its hashes and, for a transcript, its summary. Saved in
/// the checkpoint before publishing, so that a failure after this point only publishes again.
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
}

/// Where an unfinished copy stands, saved at a part boundary: enough for the next invocation to go
/// on without downloading the uploaded parts again; or, once the upload is complete, what is left
/// to publish.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Checkpoint format version (1).
    pub v: u32,
    /// The staging object's key; must be under this command's staging prefix.
    pub staging: String,
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
pub(super) enum Saved {
    Usable(Box<Checkpoint>),
    /// Unreadable or inconsistent: why.
    Corrupt(String),
}

pub(super) async fn load_checkpoint<S: Uploads>(
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

/// Gives up on an unfinished copy: aborts its upload and forgets its checkpoint.
pub(super) async fn discard_checkpoint<S: Uploads>(
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
