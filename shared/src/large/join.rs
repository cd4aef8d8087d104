//! One device part into the large file's single upload: its GetFile package (the part,
//! gzip-compressed) decompressed as it streams, cut into the S3 parts [`Layout`] gives it,
//! hashed on its own (to be checked against the device's part hash) and into the whole file's
//! hash, whose state is carried from part to part (and saved between invocations).
//!
//! Memory stays flat: one S3 part (at most [`MAX_S3_PART`](super::layout::MAX_S3_PART)) and what
//! one write into the decompressor inflates to are held, however the package compresses.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;

use super::layout::Layout;
use crate::hash::ResumableSha256;
use crate::ports::{ByteStream, StoreError, Upload, Uploads};

/// A device part joined into the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartJoined {
    /// The S3 parts uploaded for it: (part number, ETag), in order.
    pub parts: Vec<(i32, String)>,
    /// Decompressed bytes (the part's length).
    pub bytes: u64,
    /// SHA-256 of the decompressed bytes (to compare with the device's).
    pub sha256: String,
}

/// Why a device part could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The store failed: try again.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The upload no longer exists (aborted or expired): the join starts over.
    #[error("the large file's upload is gone")]
    UploadGone,
    /// The download broke off: fetch the part again (a fresh link), from its start.
    #[error("the part's download broke off: {0}")]
    Download(String),
    /// The package is not the part the map describes: not gzip, or another length. Joining it
    /// would shift every byte after it, so the part is not joined.
    #[error("{0}")]
    Package(String),
}

/// Decompressed bytes, hashed twice and kept until a whole S3 part is there.
struct Sink<'a> {
    buffer: Vec<u8>,
    part: Sha256,
    whole: &'a mut ResumableSha256,
    written: u64,
    limit: u64,
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.limit {
            return Err(std::io::Error::other("more bytes than the part map says"));
        }
        self.part.update(buf);
        self.whole.update(buf);
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Joins device part `index` (0-based) of `layout` from `package` into the upload `upload_id`
/// under `key`, continuing `whole`. `whole` must hold exactly the bytes of the parts before this
/// one; on an error it may hold some of this part's bytes too, so the caller restarts this part
/// from the state it saved at the part's start.
pub async fn join_part<S: Uploads>(
    store: &S,
    key: &str,
    upload_id: &str,
    layout: &Layout,
    index: u64,
    package: ByteStream,
    whole: &mut ResumableSha256,
) -> Result<PartJoined, JoinError> {
    if index >= layout.device_parts() {
        return Err(JoinError::Package(format!(
            "part {} of a file of {} parts",
            index + 1,
            layout.device_parts()
        )));
    }
    // The whole file's hash moves on only when the part is joined: after an error the caller
    // still holds the state at the part's start.
    let mut state = whole.clone();
    let joined = join_into(store, key, upload_id, layout, index, package, &mut state).await?;
    *whole = state;
    Ok(joined)
}

async fn join_into<S: Uploads>(
    store: &S,
    key: &str,
    upload_id: &str,
    layout: &Layout,
    index: u64,
    mut package: ByteStream,
    whole: &mut ResumableSha256,
) -> Result<PartJoined, JoinError> {
    let (numbers, expected) = layout.s3_parts_of(index);
    let s3_part = usize::try_from(layout.s3_part).unwrap_or(usize::MAX);
    let mut next = *numbers.start();
    let mut decoder = flate2::write::GzDecoder::new(Sink {
        buffer: Vec::with_capacity(s3_part.min(64 << 20)),
        part: Sha256::new(),
        whole,
        written: 0,
        limit: expected,
    });
    let mut parts = Vec::new();
    let wrong = |why: String| JoinError::Package(format!("part {}: {why}", index + 1));
    while let Some(chunk) = package.next().await {
        let chunk = chunk.map_err(JoinError::Download)?;
        // A little input at a time, the S3 parts cut in between: a chunk of zeros inflates a
        // thousand times, and what it inflates to is never held whole.
        let mut pos = 0;
        while pos < chunk.len() {
            let n = decoder
                .write(&chunk[pos..])
                .map_err(|e| wrong(format!("the package does not inflate: {e}")))?;
            if n == 0 {
                return Err(wrong("the package has bytes after its end".into()));
            }
            pos += n;
            while decoder.get_ref().buffer.len() >= s3_part {
                let rest = decoder.get_mut().buffer.split_off(s3_part);
                let body = std::mem::replace(&mut decoder.get_mut().buffer, rest);
                parts.push((next, upload(store, key, upload_id, next, body).await?));
                next += 1;
            }
        }
    }
    let sink = decoder
        .finish()
        .map_err(|e| wrong(format!("the package ends early: {e}")))?;
    if sink.written != expected {
        return Err(wrong(format!(
            "{} bytes, the part map says {expected}",
            sink.written
        )));
    }
    if !sink.buffer.is_empty() || parts.is_empty() {
        parts.push((
            next,
            upload(store, key, upload_id, next, sink.buffer).await?,
        ));
    }
    Ok(PartJoined {
        parts,
        bytes: sink.written,
        sha256: hex::encode(sink.part.finalize()),
    })
}

async fn upload<S: Uploads>(
    store: &S,
    key: &str,
    upload_id: &str,
    number: i32,
    body: Vec<u8>,
) -> Result<String, JoinError> {
    match store
        .upload_part(key, upload_id, number, bytes::Bytes::from(body))
        .await?
    {
        Upload::Done(etag) => Ok(etag),
        Upload::Gone => Err(JoinError::UploadGone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemStore;
    use crate::ports::Completion;

    const MIB: u64 = 1 << 20;

    fn file(len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }

    fn gzip(bytes: &[u8]) -> ByteStream {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        let packed = e.finish().unwrap();
        // Arrives in uneven chunks, as a download does.
        let chunks: Vec<Result<bytes::Bytes, String>> = packed
            .chunks(100_003)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    /// Three device parts (8, 8 and 3 MiB) join into one object holding the file's bytes, each
    /// part's hash and the whole file's hash as the device computes them, with the whole hash's
    /// state saved and restored between parts as a checkpoint does.
    #[tokio::test]
    async fn a_large_file_joins_into_one_object_with_the_devices_hashes() {
        let store = MemStore::default();
        let data = file(19 * MIB as usize);
        let layout = Layout::new(data.len() as u64, 8 * MIB).unwrap();
        let key = "evidence/r/0-large.bin";
        let upload = store.begin_upload(key, Default::default()).await.unwrap();
        let mut whole = ResumableSha256::new();
        let mut all = Vec::new();
        for k in 0..layout.device_parts() {
            let start = (k * layout.device_part) as usize;
            let end = (start + layout.device_part as usize).min(data.len());
            let joined = join_part(
                &store,
                key,
                &upload,
                &layout,
                k,
                gzip(&data[start..end]),
                &mut whole,
            )
            .await
            .unwrap();
            assert_eq!(
                joined.sha256,
                hex::encode(Sha256::digest(&data[start..end]))
            );
            all.extend(joined.parts);
            whole = serde_json::from_str(&serde_json::to_string(&whole).unwrap()).unwrap();
        }
        assert_eq!(whole.finish_hex(), hex::encode(Sha256::digest(&data)));
        assert!(matches!(
            store.complete_upload(key, &upload, all).await.unwrap(),
            Completion::Stored { .. }
        ));
        let stored = crate::hash::hash_package(store.open_read(key).await.unwrap(), false)
            .await
            .unwrap();
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
    }

    /// A part altered on its way joins (the evidence is kept) but hashes otherwise than the
    /// device said; a part of another length, or not gzip at all, is not joined.
    #[tokio::test]
    async fn a_large_file_part_that_differs_from_the_device_is_seen() {
        let store = MemStore::default();
        let data = file(10 * MIB as usize);
        let layout = Layout::new(data.len() as u64, 8 * MIB).unwrap();
        let key = "evidence/r/0-large.bin";
        let upload = store.begin_upload(key, Default::default()).await.unwrap();
        let mut altered = data[..8 * MIB as usize].to_vec();
        altered[12345] ^= 1;
        let mut whole = ResumableSha256::new();
        let joined = join_part(&store, key, &upload, &layout, 0, gzip(&altered), &mut whole)
            .await
            .unwrap();
        assert_ne!(
            joined.sha256,
            hex::encode(Sha256::digest(&data[..8 * MIB as usize]))
        );
        let before = whole.clone();
        let short = join_part(
            &store,
            key,
            &upload,
            &layout,
            1,
            gzip(&data[..MIB as usize]),
            &mut whole,
        )
        .await;
        assert!(
            matches!(short, Err(JoinError::Package(ref m)) if m.contains("part 2")),
            "{short:?}"
        );
        assert_eq!(
            whole, before,
            "a part not joined leaves the whole file's hash where it was"
        );
        let past = join_part(&store, key, &upload, &layout, 2, gzip(&[]), &mut whole).await;
        assert!(matches!(past, Err(JoinError::Package(_))), "{past:?}");
        let long = join_part(&store, key, &upload, &layout, 1, gzip(&data), &mut whole).await;
        assert!(matches!(long, Err(JoinError::Package(_))), "{long:?}");
        let raw: ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(
            bytes::Bytes::from_static(b"not gzip at all"),
        )]));
        let raw = join_part(&store, key, &upload, &layout, 1, raw, &mut whole).await;
        assert!(matches!(raw, Err(JoinError::Package(_))), "{raw:?}");
    }
}
