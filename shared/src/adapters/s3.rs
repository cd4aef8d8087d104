//! The evidence bucket as records and uploads: conditional writes for create-only and
//! compare-and-swap, a 403 on a read explained (S3 answers 403 for a missing key the role may not
//! list), Object Lock retention on every write under `evidence/`.

use std::collections::BTreeMap;

use aws_sdk_s3::error::ProvideErrorMetadata;

use crate::ports::{
    Completion, Head, ObjectStore, Put, PutResult, StoreError, Stored, Upload, Uploads,
};
use crate::store::retention::{Retention, RetentionMode};

/// An S3 client; path-style addressing when the endpoint is overridden (moto on loopback has no
/// per-bucket host names).
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let builder =
        aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some());
    aws_sdk_s3::Client::from_conf(builder.build())
}

/// The evidence bucket as an [`ObjectStore`].
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    retention: Option<Retention>,
}

impl S3Store {
    /// The bucket `bucket` through `client` (make it with [`s3_client`]); no retention until
    /// [`S3Store::retaining`].
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            retention: None,
        }
    }

    /// Every write under `evidence/` carries this Object Lock retention (state never does).
    pub fn retaining(mut self, retention: Option<Retention>) -> Self {
        self.retention = retention;
        self
    }

    /// The Object Lock mode and retain-until date for a write to `key`, if it is evidence.
    fn lock_for(
        &self,
        key: &str,
    ) -> Option<(
        aws_sdk_s3::types::ObjectLockMode,
        aws_sdk_s3::primitives::DateTime,
    )> {
        let r = self
            .retention
            .filter(|_| crate::store::keys::is_evidence(key))?;
        let until = std::time::SystemTime::now()
            + std::time::Duration::from_secs(u64::from(r.days) * 86_400);
        let mode = match r.mode {
            RetentionMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
            RetentionMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
        };
        Some((mode, until.into()))
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// After a 403 on a read of `key`: whether a listing of exactly that key (which a grant of
    /// `s3:ListBucket` limited by `s3:prefix` to the key certainly allows) shows it absent. S3 is
    /// documented to answer 404, not 403, for a missing key to a caller allowed that listing;
    /// the pipeline does not depend on it: "not listed" is absent whatever the read said. `None`
    /// when the listing is refused too (the read's 403 then stands).
    async fn absent_by_listing(&self, key: &str) -> Option<bool> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .await
            .ok()?;
        // The key itself sorts before any longer key it is a prefix of.
        let listed = out.contents().iter().any(|o| o.key() == Some(key));
        if !listed {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    bucket = %self.bucket,
                    key,
                    "S3 answered 403 for a key a listing shows absent: reading such keys as absent by listing them (logged once)"
                );
            });
        }
        Some(!listed)
    }
}

fn s3_err<E: std::error::Error + 'static>(what: &str, key: &str, e: E) -> StoreError {
    StoreError(format!(
        "{what} {key}: {}",
        aws_sdk_s3::error::DisplayErrorContext(e)
    ))
}

/// A read of `key` that S3 refused (403). S3 does not say why: either the role may not read the
/// key, or the key does not exist and the role may not list it (S3 tells a missing key, 404, only
/// to a caller allowed `s3:ListBucket` on the bucket for that prefix).
fn read_denied(bucket: &str, key: &str, detail: &str) -> StoreError {
    let message = format!(
        "get {key}: access denied (403): the role is missing s3:GetObject on {bucket}/{key} or, \
         if the object may simply not exist, s3:ListBucket on bucket {bucket} with an s3:prefix \
         condition matching \"{key}\" (without it S3 answers 403, not 404, for a missing key); \
         S3 said: {detail}"
    );
    tracing::error!(bucket, key, "{message}");
    StoreError(message)
}

fn status_of<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl S3Store {
    /// GetObject of `key` in the bucket.
    fn get_object(
        &self,
        key: &str,
    ) -> aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder {
        self.client.get_object().bucket(&self.bucket).key(key)
    }
}

impl ObjectStore for S3Store {
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        match self.get_object(key).send().await {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_string();
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| StoreError(format!("read {key}: {e}")))?
                    .into_bytes();
                Ok(Some(Stored { body, etag }))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            // S3 answers 403 for a key that does not exist when the caller may not list it (and
            // may, for all we verified, even when it may): a listing of exactly the key decides.
            // Listed, or not listable: retrying cannot help; say which permission is missing.
            Err(e) if status_of(&e) == Some(403) => {
                if self.absent_by_listing(key).await == Some(true) {
                    return Ok(None);
                }
                Err(read_denied(
                    &self.bucket,
                    key,
                    &aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                ))
            }
            Err(e) => Err(s3_err("get", key, e)),
        }
    }

    async fn put(&self, key: &str, body: Vec<u8>, condition: Put) -> Result<PutResult, StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(body.into());
        if let Some((mode, until)) = self.lock_for(key) {
            // S3 wants an integrity checksum on any write with Object Lock parameters.
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until)
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32);
        }
        req = match &condition {
            Put::Always => req,
            Put::IfAbsent => req.if_none_match("*"),
            Put::IfMatch(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(out) => Ok(PutResult::Written {
                etag: out.e_tag().unwrap_or_default().to_string(),
            }),
            // 412: the condition failed; 409: a concurrent conditional write is in flight.
            Err(e)
                if condition != Put::Always && matches!(status_of(&e), Some(412) | Some(409)) =>
            {
                Ok(PutResult::Conflict)
            }
            Err(e) => Err(s3_err("put", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| s3_err("list", prefix, e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_err("delete", key, e))
    }
}

impl Uploads for S3Store {
    async fn open_read(&self, key: &str) -> Result<crate::ports::ByteStream, StoreError> {
        let out = self
            .get_object(key)
            .send()
            .await
            .map_err(|e| s3_err("read", key, e))?;
        let stream = futures_util::stream::unfold(out.body, |mut body| async move {
            match body.next().await {
                Some(Ok(b)) => Some((Ok(b), body)),
                Some(Err(e)) => Some((Err(format!("reading back from S3: {e}")), body)),
                None => None,
            }
        });
        Ok(Box::pin(stream))
    }

    async fn head(&self, key: &str, version: Option<&str>) -> Result<Option<Head>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => Ok(Some(Head {
                size: out
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                version_id: out.version_id().map(str::to_string),
            })),
            // 404: no such key or version; 400 for a version id S3 cannot parse (read from a
            // stored checkpoint: not trusted).
            Err(e) if matches!(status_of(&e), Some(404)) => Ok(None),
            Err(e) if version.is_some() && matches!(status_of(&e), Some(400)) => Ok(None),
            Err(e) if matches!(status_of(&e), Some(403)) => {
                if version.is_none() && self.absent_by_listing(key).await == Some(true) {
                    return Ok(None);
                }
                Err(read_denied(&self.bucket, key, "HeadObject"))
            }
            Err(e) => Err(s3_err("head", key, e)),
        }
    }

    async fn retain(&self, key: &str, version: Option<&str>) -> Result<(), StoreError> {
        let Some((mode, until)) = self.lock_for(key) else {
            return Ok(());
        };
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(match mode {
                        aws_sdk_s3::types::ObjectLockMode::Compliance => {
                            aws_sdk_s3::types::ObjectLockRetentionMode::Compliance
                        }
                        _ => aws_sdk_s3::types::ObjectLockRetentionMode::Governance,
                    })
                    .retain_until_date(until)
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_err("retain", key, e))
    }

    async fn begin_upload(
        &self,
        key: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<String, StoreError> {
        let lock = self.lock_for(key);
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_metadata(Some(metadata.into_iter().collect()))
            // Retention asked at creation: S3 retains the object from the moment it appears.
            // (Every part then carries the SDK's CRC32, which S3 wants on parts of a locked upload.)
            .set_object_lock_mode(lock.as_ref().map(|(m, _)| m.clone()))
            .set_object_lock_retain_until_date(lock.map(|(_, u)| u))
            .send()
            .await
            .map_err(|e| s3_err("begin upload", key, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError(format!("begin upload {key}: no upload id")))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: bytes::Bytes,
    ) -> Result<Upload<String>, StoreError> {
        let mut req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .body(body.into());
        if self.lock_for(key).is_some() {
            // S3 wants an integrity checksum on every part of an upload with Object Lock: asked
            // for, not left to the SDK's default (AWS_REQUEST_CHECKSUM_CALCULATION may turn it off).
            req = req.checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32);
        }
        match req.send().await {
            Ok(out) => Ok(Upload::Done(out.e_tag().unwrap_or_default().to_string())),
            Err(e) if e.code() == Some("NoSuchUpload") => Ok(Upload::Gone),
            Err(e) => Err(s3_err("upload part", key, e)),
        }
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<Completion, StoreError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let parts = parts
            .into_iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(n).e_tag(etag).build())
            .collect();
        let out = match self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("NoSuchUpload") => return Ok(Completion::Gone),
            // 412: an object is there already.
            Err(e) if matches!(status_of(&e), Some(412)) => return Ok(Completion::Taken),
            // 409: a concurrent conditional write is in flight.
            Err(e) if matches!(status_of(&e), Some(409)) => return Ok(Completion::Conflict),
            Err(e) => return Err(s3_err("complete upload", key, e)),
        };
        let version_id = out.version_id().map(str::to_string);
        // Confirmed on the new version: an S3 that drops retention from an upload (moto does)
        // still keeps the object. Idempotent; the date is a moment later than the upload's.
        self.retain(key, version_id.as_deref()).await?;
        Ok(Completion::Stored { version_id })
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_err("abort upload", key, e))
    }
}
