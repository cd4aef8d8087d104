//! The evidence bucket as lrctl reads it: small records parsed with an error that names their
//! key, listings, and objects opened as streams (never read whole) with their version and
//! metadata. Everything lrctl does with S3 goes through here. Whole reads are capped (see
//! [`MAX_MANIFEST`], [`MAX_SIGNATURE`], [`MAX_RECORD`]): a stored object far larger than its kind
//! ever is an error naming its key, checked before reading (its length) and while reading.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use shared::ports::ObjectStore;

use crate::error::{Error, Result};

/// The largest manifest lrctl reads (a manifest is a few KiB per command).
pub const MAX_MANIFEST: u64 = 64 << 20;
/// The largest signature document lrctl reads (its statement is at most 4 KiB).
pub const MAX_SIGNATURE: u64 = 64 << 10;
/// The largest run or command record lrctl reads.
pub const MAX_RECORD: u64 = 16 << 20;

/// The bucket.
#[derive(Clone)]
pub struct Bucket {
    client: aws_sdk_s3::Client,
    store: shared::adapters::s3::S3Store,
    name: String,
}

/// An object opened for reading.
pub struct Object {
    /// Its bytes, in chunks as they arrive.
    pub body: aws_sdk_s3::primitives::ByteStream,
    /// Its length, if S3 said.
    pub size: Option<u64>,
    /// The version read.
    pub version_id: Option<String>,
    /// Its user metadata (`x-amz-meta-*`).
    pub metadata: HashMap<String, String>,
}

fn s3_error<E: std::error::Error + 'static>(what: &str, e: E) -> Error {
    Error::failed(format!(
        "{what}: {}",
        aws_sdk_s3::error::DisplayErrorContext(e)
    ))
}

impl Bucket {
    /// The bucket `name` with the SDK configuration `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, name: &str) -> Self {
        let client = shared::adapters::s3::s3_client(sdk);
        Self {
            store: shared::adapters::s3::S3Store::new(client.clone(), name),
            client,
            name: name.to_string(),
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SDK client, for writes lrctl's tests make.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// A small object's bytes (records, manifests), or `None` if there is none; one larger than
    /// `max` bytes is an error naming its key (nothing past `max` is read).
    pub async fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let too_big = |n: String| {
            Error::failed(format!(
                "s3://{}/{key} is {n} bytes, more than the {max} lrctl reads for an object of its \
                 kind: it is not what the pipeline writes there",
                self.name
            ))
        };
        let Some(mut obj) = self.open(key, None).await? else {
            return Ok(None);
        };
        if let Some(n) = obj.size.filter(|n| *n > max) {
            return Err(too_big(n.to_string()));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = obj.body.next().await {
            let chunk = chunk.map_err(|e| {
                Error::failed(format!("reading s3://{}/{key} broke off: {e}", self.name))
            })?;
            let n = u64::try_from(bytes.len().saturating_add(chunk.len())).unwrap_or(u64::MAX);
            if n > max {
                return Err(too_big(format!("over {max}")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes))
    }

    /// A stored JSON record of at most `max` bytes, or `None` if there is none; one that does not
    /// parse is an error naming its key.
    pub async fn record<T: DeserializeOwned>(&self, key: &str, max: u64) -> Result<Option<T>> {
        match self.get(key, max).await? {
            Some(bytes) => parse(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.store
            .list(prefix)
            .await
            .map_err(|e| Error::failed(format!("cannot list s3://{}/{prefix}: {}", self.name, e.0)))
    }

    /// Every key under `prefix` whose latest version is a delete marker: deleted on a versioned
    /// bucket (Object Lock allows that too), its earlier versions still there.
    pub async fn deleted(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let out = self
                .client()
                .list_object_versions()
                .bucket(&self.name)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| {
                    Error::failed(format!(
                        "cannot list the versions under s3://{}/{prefix}: {}",
                        self.name,
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    ))
                })?;
            keys.extend(
                out.delete_markers()
                    .iter()
                    .filter(|m| m.is_latest() == Some(true))
                    .filter_map(|m| m.key().map(str::to_string)),
            );
            if out.is_truncated() != Some(true) {
                return Ok(keys);
            }
            key_marker = out.next_key_marker().map(str::to_string);
            version_marker = out.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() && version_marker.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Opens `key` (the version `version`, or the current one) for streaming; `None` if missing.
    pub async fn open(&self, key: &str, version: Option<&str>) -> Result<Option<Object>> {
        let req = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .set_version_id(version.map(str::to_string));
        match req.send().await {
            Ok(out) => Ok(Some(Object {
                size: out.content_length().and_then(|n| u64::try_from(n).ok()),
                version_id: out.version_id().map(str::to_string),
                metadata: out.metadata().cloned().unwrap_or_default(),
                body: out.body,
            })),
            Err(e)
                if e.as_service_error().is_some_and(|s| s.is_no_such_key())
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) =>
            {
                Ok(None)
            }
            Err(e) => Err(s3_error(&format!("read s3://{}/{key}", self.name), e)),
        }
    }
}

/// A record's JSON parsed; an error names the key and says what is wrong.
pub fn parse<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::failed(format!(
            "{key} is unreadable ({e}); the stored record is damaged or not one lrctl knows"
        ))
    })
}
