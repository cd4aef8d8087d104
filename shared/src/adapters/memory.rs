//! In-memory adapters, for stage tests that need no network: a store with S3's conditional writes
//! and multipart semantics, a queue that records what was sent, a signer, a bus and a live response
//! library.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::ports::{
    ByteStream, Completion, Head, ObjectStore, Put, PutResult, Queue, QueueError, Rejection,
    StoreError, Stored, Upload, Uploads,
};
use bytes::Bytes;

/// An in-memory object store with S3's conditional writes and multipart uploads; ETags are a
/// counter, so every write gets a new one.
#[derive(Default)]
pub struct MemStore {
    /// The stored objects by key, each with its ETag number; tests read and seed it directly.
    pub objects: Mutex<BTreeMap<String, (Bytes, u64)>>,
    /// The metadata each object was uploaded with (multipart uploads only), by key.
    pub metadata: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    /// Every (key, version) given retention, in order.
    pub retained: Mutex<Vec<(String, Option<String>)>>,
    uploads: Mutex<BTreeMap<String, PendingUpload>>,
    version: Mutex<u64>,
}

/// An unfinished multipart upload: its key, its metadata and the parts stored so far.
type PendingUpload = (String, BTreeMap<String, String>, BTreeMap<i32, Bytes>);

impl MemStore {
    /// Multipart uploads begun and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }

    fn next(&self) -> u64 {
        let mut v = self.version.lock().unwrap();
        *v += 1;
        *v
    }
}

impl ObjectStore for MemStore {
    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.objects.lock().unwrap().get(key).map(|(b, v)| Stored {
            body: b.clone(),
            etag: v.to_string(),
        }))
    }
    async fn put(&self, key: &str, body: Vec<u8>, condition: Put) -> Result<PutResult, StoreError> {
        let v = self.next();
        let mut o = self.objects.lock().unwrap();
        let ok = match (&condition, o.get(key)) {
            (Put::Always, _) => true,
            (Put::IfAbsent, existing) => existing.is_none(),
            (Put::IfMatch(etag), Some((_, cur))) => *etag == cur.to_string(),
            (Put::IfMatch(_), None) => false,
        };
        if !ok {
            return Ok(PutResult::Conflict);
        }
        o.insert(key.to_string(), (Bytes::from(body), v));
        Ok(PutResult::Written {
            etag: v.to_string(),
        })
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
}

impl Uploads for MemStore {
    async fn open_read(&self, key: &str) -> Result<ByteStream, StoreError> {
        let body = self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StoreError(format!("no {key}")))?;
        Ok(Box::pin(futures_util::stream::iter([Ok(body)])))
    }

    async fn head(&self, key: &str, version: Option<&str>) -> Result<Option<Head>, StoreError> {
        let o = self.objects.lock().unwrap();
        Ok(o.get(key)
            .filter(|(_, v)| version.is_none_or(|want| want == v.to_string()))
            .map(|(b, v)| Head {
                size: b.len() as u64,
                version_id: Some(v.to_string()),
            }))
    }

    async fn retain(&self, key: &str, version: Option<&str>) -> Result<(), StoreError> {
        if crate::store::keys::is_evidence(key) {
            self.retained
                .lock()
                .unwrap()
                .push((key.to_string(), version.map(str::to_string)));
        }
        Ok(())
    }

    async fn begin_upload(
        &self,
        key: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<String, StoreError> {
        let id = format!("{key}#{}", self.next());
        self.uploads
            .lock()
            .unwrap()
            .insert(id.clone(), (key.to_string(), metadata, BTreeMap::new()));
        Ok(id)
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: i32,
        body: Bytes,
    ) -> Result<Upload<String>, StoreError> {
        let mut u = self.uploads.lock().unwrap();
        // As S3 does, an upload id is found only under its own key.
        let Some((_, _, parts)) = u.get_mut(upload_id).filter(|(k, _, _)| k == key) else {
            return Ok(Upload::Gone);
        };
        // As S3 does, a part uploaded again under the same number replaces the first.
        let etag = format!("etag-{n}-{}", body.len());
        parts.insert(n, body);
        Ok(Upload::Done(etag))
    }
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        listed: Vec<(i32, String)>,
    ) -> Result<Completion, StoreError> {
        let mut uploads = self.uploads.lock().unwrap();
        if uploads.get(upload_id).is_none_or(|(k, _, _)| k != key) {
            // Strict: a completed upload is gone, even to a repeat of its own completion.
            return Ok(Completion::Gone);
        }
        let mut objects = self.objects.lock().unwrap();
        if objects.contains_key(key) {
            // If-None-Match: the upload stays, for its owner to abort.
            return Ok(Completion::Taken);
        }
        let Some((_, metadata, parts)) = uploads.remove(upload_id) else {
            return Ok(Completion::Gone);
        };
        // The object is the listed parts, in order, each as last uploaded.
        let mut body = Vec::new();
        for (n, etag) in &listed {
            let part = parts
                .get(n)
                .filter(|b| *etag == format!("etag-{n}-{}", b.len()))
                .ok_or_else(|| StoreError(format!("InvalidPart: part {n} ({etag})")))?;
            body.extend_from_slice(part);
        }
        let v = self.next();
        objects.insert(key.to_string(), (Bytes::from(body), v));
        self.metadata
            .lock()
            .unwrap()
            .insert(key.to_string(), metadata);
        if crate::store::keys::is_evidence(key) {
            self.retained
                .lock()
                .unwrap()
                .push((key.to_string(), Some(v.to_string())));
        }
        Ok(Completion::Stored {
            version_id: Some(v.to_string()),
        })
    }
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let mut u = self.uploads.lock().unwrap();
        if u.get(upload_id).is_some_and(|(k, _, _)| k == key) {
            u.remove(upload_id);
        }
        Ok(())
    }
}

/// A sent message: queue, body, delay; or a rejected one: DLQ, body, code, reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// A message sent with [`Queue::send`].
    Message {
        /// The id returned to the sender (`mem-1`, `mem-2`, ...).
        id: String,
        /// The queue URL it was sent to.
        queue: String,
        /// The body.
        body: String,
        /// The delay asked for.
        delay: Duration,
    },
    /// A message refused with [`Queue::send_rejected`].
    Rejected {
        /// The dead-letter queue URL.
        dlq: String,
        /// The original body.
        body: String,
        /// The stage that refused it.
        stage: String,
        /// The reject code.
        code: String,
        /// Why, in words.
        reason: String,
    },
}

/// An in-memory queue that records every send; nothing is delivered.
#[derive(Default)]
pub struct MemQueue {
    /// Everything sent, in order.
    pub sent: Mutex<Vec<Sent>>,
}

impl Queue for MemQueue {
    async fn send(
        &self,
        queue_url: &str,
        body: &str,
        delay: Duration,
    ) -> Result<String, QueueError> {
        let mut sent = self.sent.lock().unwrap();
        let id = format!("mem-{}", sent.len() + 1);
        sent.push(Sent::Message {
            id: id.clone(),
            queue: queue_url.into(),
            body: body.into(),
            delay,
        });
        Ok(id)
    }
    async fn send_rejected(
        &self,
        dlq_url: &str,
        body: &str,
        why: &Rejection<'_>,
    ) -> Result<(), QueueError> {
        self.sent.lock().unwrap().push(Sent::Rejected {
            dlq: dlq_url.into(),
            body: body.into(),
            stage: why.stage.into(),
            code: why.code.as_str().into(),
            reason: why.reason.into(),
        });
        Ok(())
    }
}

/// A signer with a P-256 key held in memory (the same key for the same seed), for tests; offline
/// verification takes [`MemSigner::public_key`]. `fail` makes every signature fail, as a disabled
/// KMS key would.
pub struct MemSigner {
    key: p256::ecdsa::SigningKey,
    /// When true, signing fails.
    pub fail: std::sync::atomic::AtomicBool,
    /// Signatures made.
    pub signed: std::sync::atomic::AtomicUsize,
}

impl MemSigner {
    /// The key made from `seed` (any value but zero).
    pub fn seeded(seed: u8) -> Self {
        Self {
            key: p256::ecdsa::SigningKey::from_slice(&[seed.max(1); 32])
                .expect("a non-zero scalar below the order is a key"),
            fail: Default::default(),
            signed: Default::default(),
        }
    }

    /// The public key that verifies its signatures.
    pub fn public_key(&self) -> p256::ecdsa::VerifyingKey {
        *self.key.verifying_key()
    }
}

impl Default for MemSigner {
    fn default() -> Self {
        Self::seeded(7)
    }
}

impl crate::ports::Signer for MemSigner {
    fn key_id(&self) -> &str {
        "mem-signing-key"
    }

    fn sign<'a>(
        &'a self,
        message: &'a [u8],
    ) -> crate::ports::BoxFuture<'a, Result<Vec<u8>, crate::ports::NotaryError>> {
        use p256::ecdsa::signature::Signer as _;
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            if self.fail.load(Ordering::SeqCst) {
                return Err(crate::ports::NotaryError("the key is disabled".into()));
            }
            self.signed.fetch_add(1, Ordering::SeqCst);
            let sig: p256::ecdsa::Signature = self.key.sign(message);
            Ok(sig.to_der().as_bytes().to_vec())
        })
    }

    fn verify<'a>(
        &'a self,
        message: &'a [u8],
        der: &'a [u8],
    ) -> crate::ports::BoxFuture<'a, Result<bool, crate::ports::NotaryError>> {
        use p256::ecdsa::signature::Verifier as _;
        Box::pin(async move {
            Ok(p256::ecdsa::Signature::from_der(der)
                .is_ok_and(|sig| self.key.verifying_key().verify(message, &sig).is_ok()))
        })
    }
}

/// A bus that keeps every event published (source, detail type, detail); `fail` makes publishing
/// fail, as a missing bus would.
#[derive(Default)]
pub struct MemEvents {
    /// Every event published, in order.
    pub published: Mutex<Vec<(String, String, String)>>,
    /// When true, publishing fails.
    pub fail: std::sync::atomic::AtomicBool,
}

impl crate::ports::Events for MemEvents {
    fn publish<'a>(
        &'a self,
        source: &'a str,
        detail_type: &'a str,
        detail: &'a str,
    ) -> crate::ports::BoxFuture<'a, Result<(), crate::ports::NotaryError>> {
        Box::pin(async move {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::ports::NotaryError("no such bus".into()));
            }
            self.published
                .lock()
                .unwrap()
                .push((source.into(), detail_type.into(), detail.into()));
            Ok(())
        })
    }
}

/// A live response library in memory, with Defender's rules (names ignore case; an upload over an
/// existing name needs `override_if_exists`), counting calls; `fail` answers every call with the
/// error it makes, as an unreachable or refusing Defender would.
#[derive(Default)]
pub struct MemLibrary {
    /// The files, by lower-case name.
    pub files: Mutex<BTreeMap<String, crate::defender::LibraryFile>>,
    /// List calls answered.
    pub lists: std::sync::atomic::AtomicUsize,
    /// Uploads accepted, by name, in order.
    pub uploads: Mutex<Vec<String>>,
    /// When set, every call fails with the error this makes.
    #[allow(clippy::type_complexity)]
    pub fail: Mutex<Option<fn() -> crate::defender::DefenderError>>,
}

impl MemLibrary {
    /// Puts a file in the library as someone else would (its description as given).
    pub fn seed(&self, name: &str, content: &[u8], description: &str) {
        self.files.lock().unwrap().insert(
            name.to_ascii_lowercase(),
            crate::defender::LibraryFile {
                file_name: name.into(),
                sha256: Some(crate::hash::sha256_hex(content)),
                description: Some(description.into()),
                creation_time: None,
                last_updated_time: None,
                created_by: Some("someone".into()),
                has_parameters: false,
                parameters_description: None,
            },
        );
    }

    /// The SHA-256 the library holds for `name`.
    pub fn sha256(&self, name: &str) -> Option<String> {
        self.files
            .lock()
            .unwrap()
            .get(&name.to_ascii_lowercase())
            .and_then(|f| f.sha256.clone())
    }

    fn failure(&self) -> Option<crate::defender::DefenderError> {
        self.fail.lock().unwrap().map(|f| f())
    }
}

impl crate::ports::LibraryApi for MemLibrary {
    fn list(
        &self,
    ) -> crate::ports::BoxFuture<
        '_,
        Result<Vec<crate::defender::LibraryFile>, crate::defender::DefenderError>,
    > {
        Box::pin(async move {
            if let Some(e) = self.failure() {
                return Err(e);
            }
            self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.files.lock().unwrap().values().cloned().collect())
        })
    }

    fn upload<'a>(
        &'a self,
        upload: &'a crate::defender::LibraryUpload,
    ) -> crate::ports::BoxFuture<
        'a,
        Result<crate::defender::LibraryFile, crate::defender::DefenderError>,
    > {
        Box::pin(async move {
            if let Some(e) = self.failure() {
                return Err(e);
            }
            let key = upload.file_name.to_ascii_lowercase();
            let mut files = self.files.lock().unwrap();
            if files.contains_key(&key) && !upload.override_if_exists {
                return Err(crate::defender::DefenderError::Rejected {
                    status: 400,
                    code: "InvalidRequestBody".into(),
                    message: format!("File {} already exists", upload.file_name),
                });
            }
            let entity = crate::defender::LibraryFile {
                file_name: upload.file_name.clone(),
                sha256: Some(crate::hash::sha256_hex(&upload.content)),
                description: Some(upload.description.clone()),
                creation_time: None,
                last_updated_time: None,
                created_by: Some("pipeline".into()),
                has_parameters: upload.has_parameters,
                parameters_description: upload.parameters_description.clone(),
            };
            files.insert(key, entity.clone());
            self.uploads.lock().unwrap().push(upload.file_name.clone());
            Ok(entity)
        })
    }
}
