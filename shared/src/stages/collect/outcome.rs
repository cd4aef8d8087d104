//! What a copy comes to: the stored object with its hashes, a pause at the time budget, or why it
//! stopped. Its own room because both the streaming engine (`copy`) and the completion
//! (`complete`) produce these, and neither should reach into the other for them.

use crate::ports::StoreError;

pub(super) enum CopyError {
    /// The download failed or broke off: worth another attempt with a fresh link.
    Download(String),
    /// S3 failed: SQS delivers the job again.
    Store(StoreError),
    /// The multipart upload no longer exists.
    UploadGone,
    /// The evidence key already holds other bytes: not replaced, and not this command's package.
    Occupied(String),
}

/// A stored copy.
pub(super) struct Copied {
    pub(super) key: String,
    /// The evidence object's version, when the bucket keeps versions.
    pub(super) version_id: Option<String>,
    pub(super) size: u64,
    pub(super) sha256: String,
    pub(super) sha256_decompressed: Option<String>,
    pub(super) size_decompressed: Option<u64>,
    pub(super) exit_code: Option<i64>,
    pub(super) output_excerpt: Option<String>,
    pub(super) errors_excerpt: Option<String>,
}

pub(super) enum CopyResult {
    Copied(Copied),
    /// The time budget ran out; a checkpoint holds the place.
    Paused {
        offset: u64,
    },
}
