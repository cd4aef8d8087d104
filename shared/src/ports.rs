//! The narrow interfaces the stages work through, split by capability so that a stage asks for
//! what it uses: records ([`ObjectStore`]), uploads ([`Uploads`], collect only), messages
//! ([`Queue`]), Defender ([`Defender`]; its live response library, [`LibraryApi`], submit only),
//! downloads ([`Fetch`]), and what ends a run beyond its
//! records ([`Notary`]: a [`Signer`] for the manifest and the [`Events`] bus). The adapters that implement them
//! (S3, SQS, the Defender client, an HTTP downloader, and in-memory ones for tests) live in
//! [`crate::adapters`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::codes::RejectCode;
use crate::defender::{
    ActionFilter, ActionId, DefenderError, DownloadLink, LibraryFile, LibraryUpload,
    LiveResponseRequest, MachineAction, MachineId,
};
use crate::secret::Secret;

/// An object store failure: worth retrying.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// How a record that cannot be read says so: retrying will not make it readable.
const UNREADABLE: &str = "unreadable record: ";

impl StoreError {
    /// A stored record that does not parse (`key`, and why).
    pub fn unreadable(key: &str, why: impl std::fmt::Display) -> Self {
        Self(format!("{UNREADABLE}{key}: {why}"))
    }

    /// Whether this is a record that cannot be read (not a failure worth retrying).
    pub fn is_unreadable(&self) -> bool {
        self.0.starts_with(UNREADABLE)
    }
}

/// The condition a [`ObjectStore::put`] writes under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Unconditionally, replacing whatever is there.
    Always,
    /// Only if no object has the key (`If-None-Match: *`).
    IfAbsent,
    /// Only if the object still has this ETag (`If-Match`).
    IfMatch(String),
}

/// What a conditional [`ObjectStore::put`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutResult {
    /// The object was written.
    Written {
        /// The new object's ETag, for a later `Put::IfMatch`.
        etag: String,
    },
    /// The condition did not hold: someone else wrote first.
    Conflict,
}

/// A record as read, with the ETag to compare-and-swap against.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object's bytes.
    pub body: Bytes,
    /// The ETag of exactly these bytes; pass it to `Put::IfMatch` to update them.
    pub etag: String,
}

/// What a step of a multipart upload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload<T> {
    /// The step happened; its result.
    Done(T),
    /// The upload no longer exists (completed, aborted, or expired by a lifecycle rule): a copy
    /// that named it must start over.
    Gone,
}

/// Records: read, write with a condition (create-only or compare-and-swap), list, delete.
pub trait ObjectStore: Send + Sync {
    /// The object at `key`, or `None` if there is none.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Stored>, StoreError>> + Send;
    /// Writes `body` to `key` if `condition` holds; `Conflict` (not an error) if it does not.
    fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        condition: Put,
    ) -> impl Future<Output = Result<PutResult, StoreError>> + Send;
    /// Every key that starts with `prefix` (all pages).
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Deletes `key`; deleting a key that does not exist succeeds.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Where `key` is, for people and events (`s3://bucket/key` for S3).
    fn location(&self, key: &str) -> String {
        key.to_string()
    }
}

/// Multipart uploads and reading objects back: what collect needs beyond records. A package is
/// uploaded straight to its evidence key: the object appears there only when the upload is
/// completed, whole, and only if nothing is there yet (write-once).
pub trait Uploads: ObjectStore {
    /// Streams an object's bytes.
    fn open_read(&self, key: &str) -> impl Future<Output = Result<ByteStream, StoreError>> + Send;
    /// The object at `key` (the version `version`, or the current one): its size and version;
    /// `None` when there is no such object or version.
    fn head(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send;
    /// Sets the deployment's Object Lock retention on this version of an evidence object (does
    /// nothing where the store keeps no retention, or for state).
    fn retain(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Starts a multipart upload to `key` with this metadata (an evidence key also gets the
    /// deployment's Object Lock retention, as every evidence write does); returns its upload id.
    fn begin_upload(
        &self,
        key: &str,
        metadata: BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
    /// Uploads one part; its ETag, or `Gone` when the upload no longer exists.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> impl Future<Output = Result<Upload<String>, StoreError>> + Send;
    /// Joins the uploaded parts, given as (part number, ETag) in order, into the object, only if
    /// no object exists under `key` (If-None-Match: a completion never replaces anything).
    fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> impl Future<Output = Result<Completion, StoreError>> + Send;
    /// Drops an unfinished upload and the parts stored so far.
    fn abort_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What a HEAD of an object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its length in bytes.
    pub size: u64,
    /// Its version, when the store keeps versions.
    pub version_id: Option<String>,
}

/// What completing a multipart upload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The object is stored under its key; its version id when the store keeps versions.
    Stored {
        /// The new object's version.
        version_id: Option<String>,
    },
    /// An object already exists under the key (a completion of the same copy that went unrecorded,
    /// or something else): nothing was replaced; the caller finds out which.
    Taken,
    /// The upload no longer exists: completed already (a completion that went unrecorded),
    /// aborted, or expired by a lifecycle rule. The caller looks under the key.
    Gone,
    /// A concurrent conditional write to the key is in flight (409): S3 says to start the upload
    /// over.
    Conflict,
}

/// A message queue failure: worth retrying.
#[derive(Debug, Clone, thiserror::Error)]
#[error("queue: {0}")]
pub struct QueueError(pub String);

/// Messages between the stages (SQS in production).
pub trait Queue: Send + Sync {
    /// Sends `body`, visible after `delay` (SQS caps delays at 900 s; callers cap too); returns the
    /// new message's id.
    fn send(
        &self,
        queue_url: &str,
        body: &str,
        delay: Duration,
    ) -> impl Future<Output = Result<String, QueueError>> + Send;
    /// Puts a refused message's original body on a dead-letter queue with why beside it.
    fn send_rejected(
        &self,
        dlq_url: &str,
        body: &str,
        why: &Rejection<'_>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// Why a message was refused, as it travels with the body to the dead-letter queue (the
/// `lr-stage`, `lr-reject-code` and `lr-reject-reason` attributes).
#[derive(Debug, Clone, Copy)]
pub struct Rejection<'a> {
    /// The stage that refused it.
    pub stage: &'a str,
    /// What kind of refusal.
    pub code: RejectCode,
    /// Why, in words.
    pub reason: &'a str,
}

/// The Defender calls the stages make.
pub trait Defender: Send + Sync {
    /// Starts a live response; see [`crate::defender::DefenderClient::run_live_response`].
    fn run_live_response(
        &self,
        machine: &MachineId,
        request: &LiveResponseRequest,
    ) -> impl Future<Output = Result<MachineAction, DefenderError>> + Send;
    /// The machine action as it stands now.
    fn get_machine_action(
        &self,
        id: &ActionId,
    ) -> impl Future<Output = Result<MachineAction, DefenderError>> + Send;
    /// Machine actions matching `filter` (the first page, up to 1,000).
    fn list_machine_actions(
        &self,
        filter: &ActionFilter,
    ) -> impl Future<Output = Result<Vec<MachineAction>, DefenderError>> + Send;
    /// A fresh download link for command `index` of action `id`.
    fn result_download_link(
        &self,
        id: &ActionId,
        index: u32,
    ) -> impl Future<Output = Result<DownloadLink, DefenderError>> + Send;
    /// Asks Defender to cancel the action, with `comment`.
    fn cancel_machine_action(
        &self,
        id: &ActionId,
        comment: &str,
    ) -> impl Future<Output = Result<MachineAction, DefenderError>> + Send;
}

/// The tenant's live response library (Defender's `libraryfiles` API), as submit keeps it in step
/// with the playbooks. Dyn-compatible: it travels beside the [`Defender`] port without a generic.
pub trait LibraryApi: Send + Sync {
    /// Every file in the library.
    fn list(&self) -> BoxFuture<'_, Result<Vec<LibraryFile>, DefenderError>>;
    /// Uploads one file; Defender's entity for it.
    fn upload<'a>(
        &'a self,
        upload: &'a LibraryUpload,
    ) -> BoxFuture<'a, Result<LibraryFile, DefenderError>>;
}

/// Reading the tenant's live response library, and nothing more: what poll lists once an action
/// has ended, to record what the library held for the files the run used
/// ([`crate::library::LibraryRecheck`]). Every [`LibraryApi`] is one.
pub trait LibraryListing: Send + Sync {
    /// Every file in the library.
    fn list_library(&self) -> BoxFuture<'_, Result<Vec<LibraryFile>, DefenderError>>;
}

impl<T: LibraryApi + ?Sized> LibraryListing for T {
    fn list_library(&self) -> BoxFuture<'_, Result<Vec<LibraryFile>, DefenderError>> {
        self.list()
    }
}

/// A stream of downloaded or read bytes; an error is a message fit to record (no URLs).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// An open download.
pub struct Download {
    /// The length of what this response carries (from `from` to the end), when the server said.
    pub content_length: Option<u64>,
    /// The bytes, from `from` on.
    pub stream: ByteStream,
}

/// Downloads a pre-signed link (no bearer token: the link carries its own signature).
pub trait Fetch: Send + Sync {
    /// Opens `url` at byte `from` (a Range request when above 0); the error is a message fit to
    /// record, without the URL.
    fn open(
        &self,
        url: &Secret<String>,
        from: u64,
    ) -> impl Future<Output = Result<Download, String>> + Send;
}

/// A future a dyn-compatible port returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a signature or an event could not be made: worth retrying (a key that is disabled or a
/// bus that is missing says so in the text, and the message ends in the dead-letter queue with it
/// after its receives, to be re-driven once fixed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NotaryError(pub String);

/// Signs small statements with an asymmetric key (KMS, `ECDSA_SHA_256` over the raw message).
/// Dyn-compatible: a run is signed once, and stages take it beside the clock without a generic.
pub trait Signer: Send + Sync {
    /// The key, as configured (its ARN in a deployment); statements name it.
    fn key_id(&self) -> &str;
    /// Signs `message` (at most 4,096 bytes: KMS signs raw messages up to that size); the
    /// DER-encoded ECDSA signature.
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, NotaryError>>;
    /// Whether `der` is this key's signature of `message` (`false` for any other key's, or for
    /// bytes that are no signature); an error only when the key cannot be asked.
    fn verify<'a>(
        &'a self,
        message: &'a [u8],
        der: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, NotaryError>>;
}

/// Where run events go (EventBridge in production).
pub trait Events: Send + Sync {
    /// Publishes one event with this source, detail type and JSON detail.
    fn publish<'a>(
        &'a self,
        source: &'a str,
        detail_type: &'a str,
        detail: &'a str,
    ) -> BoxFuture<'a, Result<(), NotaryError>>;
}

/// What ends a run beyond its records: the signer of its manifest and the bus its end is announced
/// on.
#[derive(Clone, Copy)]
pub struct Notary<'a> {
    /// Signs the manifest's statement.
    pub signer: &'a dyn Signer,
    /// Carries the run's completion event.
    pub events: &'a dyn Events,
}
