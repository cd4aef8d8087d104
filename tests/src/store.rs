//! A store decorator, the one home for a test's latency, interleaving, kill points and faults on
//! S3: [`Hooked`] passes every operation to the store it wraps (the in-memory adapter,
//! `shared::adapters::memory::MemStore`), running a test's hook first (which may hold the
//! operation, let time pass, never return, or fail it) and telling an observer what it came to.

use std::collections::BTreeMap;

use bytes::Bytes;
use shared::ports::{
    BoxFuture, ByteStream, Completion, Head, ObjectStore, Put, PutResult, StoreError, Stored,
    Upload, Uploads,
};

/// An operation on the store, with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read a record.
    Get(String),
    /// Write a record.
    Put(String),
    /// List under a prefix.
    List(String),
    /// Delete a key.
    Delete(String),
    /// Stream an object.
    OpenRead(String),
    /// HEAD an object.
    Head(String),
    /// Set an object's retention.
    Retain(String),
    /// Start a multipart upload.
    BeginUpload(String),
    /// Upload part `.1`.
    UploadPart(String, i32),
    /// Complete an upload.
    CompleteUpload(String),
    /// Abort an upload.
    AbortUpload(String),
}

impl Op {
    /// The key (or prefix) it is on.
    pub fn key(&self) -> &str {
        match self {
            Op::Get(k)
            | Op::Put(k)
            | Op::List(k)
            | Op::Delete(k)
            | Op::OpenRead(k)
            | Op::Head(k)
            | Op::Retain(k)
            | Op::BeginUpload(k)
            | Op::UploadPart(k, _)
            | Op::CompleteUpload(k)
            | Op::AbortUpload(k) => k,
        }
    }
}

/// What an operation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// It failed.
    Failed,
    /// A write that stored its bytes (a put, or an upload completed into its object).
    Written,
    /// A write whose condition did not hold (a put's compare-and-swap, a completion that found
    /// the key taken, its upload gone or a write in flight): nothing changed.
    NotWritten,
    /// Anything else that answered.
    Done,
}

/// Runs before an operation; an error fails it without reaching the store.
pub type Before<'a> = Box<dyn Fn(Op) -> BoxFuture<'a, Result<(), StoreError>> + Send + Sync + 'a>;
/// Told what each operation came to.
pub type After<'a> = Box<dyn Fn(&Op, Effect) + Send + Sync + 'a>;

/// `inner` with a hook before each operation and an observer after it.
pub struct Hooked<'a, S> {
    inner: &'a S,
    before: Option<Before<'a>>,
    after: Option<After<'a>>,
}

impl<'a, S> Hooked<'a, S> {
    /// `inner`, unchanged until hooks are added.
    pub fn new(inner: &'a S) -> Self {
        Self {
            inner,
            before: None,
            after: None,
        }
    }

    /// The same, running `hook` before each operation.
    pub fn before(
        self,
        hook: impl Fn(Op) -> BoxFuture<'a, Result<(), StoreError>> + Send + Sync + 'a,
    ) -> Self {
        Self {
            before: Some(Box::new(hook)),
            ..self
        }
    }

    /// The same, telling `observer` what each operation came to.
    pub fn after(self, observer: impl Fn(&Op, Effect) + Send + Sync + 'a) -> Self {
        Self {
            after: Some(Box::new(observer)),
            ..self
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &'a S {
        self.inner
    }

    async fn run<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, StoreError>>,
        effect: impl FnOnce(&T) -> Effect,
    ) -> Result<T, StoreError> {
        if let Some(before) = &self.before {
            before(op.clone()).await?;
        }
        let result = call.await;
        if let Some(after) = &self.after {
            let e = match &result {
                Ok(value) => effect(value),
                Err(_) => Effect::Failed,
            };
            after(&op, e);
        }
        result
    }
}

fn done<T>(_: &T) -> Effect {
    Effect::Done
}

impl<S: ObjectStore> ObjectStore for Hooked<'_, S> {
    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.run(Op::Get(key.into()), self.inner.get(key), done)
            .await
    }
    async fn put(&self, key: &str, body: Vec<u8>, c: Put) -> Result<PutResult, StoreError> {
        let written = |r: &PutResult| match r {
            PutResult::Written { .. } => Effect::Written,
            _ => Effect::NotWritten,
        };
        self.run(Op::Put(key.into()), self.inner.put(key, body, c), written)
            .await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.run(Op::List(prefix.into()), self.inner.list(prefix), done)
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run(Op::Delete(key.into()), self.inner.delete(key), done)
            .await
    }
    fn location(&self, key: &str) -> String {
        self.inner.location(key)
    }
}

impl<S: Uploads> Uploads for Hooked<'_, S> {
    async fn open_read(&self, key: &str) -> Result<ByteStream, StoreError> {
        self.run(Op::OpenRead(key.into()), self.inner.open_read(key), done)
            .await
    }
    async fn head(&self, key: &str, version: Option<&str>) -> Result<Option<Head>, StoreError> {
        self.run(Op::Head(key.into()), self.inner.head(key, version), done)
            .await
    }
    async fn retain(&self, key: &str, version: Option<&str>) -> Result<(), StoreError> {
        self.run(
            Op::Retain(key.into()),
            self.inner.retain(key, version),
            done,
        )
        .await
    }
    async fn begin_upload(
        &self,
        key: &str,
        meta: BTreeMap<String, String>,
    ) -> Result<String, StoreError> {
        let call = self.inner.begin_upload(key, meta);
        self.run(Op::BeginUpload(key.into()), call, done).await
    }
    async fn upload_part(
        &self,
        key: &str,
        id: &str,
        n: i32,
        body: Bytes,
    ) -> Result<Upload<String>, StoreError> {
        let call = self.inner.upload_part(key, id, n, body);
        self.run(Op::UploadPart(key.into(), n), call, done).await
    }
    async fn complete_upload(
        &self,
        key: &str,
        id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<Completion, StoreError> {
        let stored = |c: &Completion| match c {
            Completion::Stored { .. } => Effect::Written,
            _ => Effect::NotWritten,
        };
        let call = self.inner.complete_upload(key, id, parts);
        self.run(Op::CompleteUpload(key.into()), call, stored).await
    }
    async fn abort_upload(&self, key: &str, id: &str) -> Result<(), StoreError> {
        self.run(
            Op::AbortUpload(key.into()),
            self.inner.abort_upload(key, id),
            done,
        )
        .await
    }
}
