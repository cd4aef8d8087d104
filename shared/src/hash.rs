//! SHA-256 whose state can be saved and restored, so that a copy that spans invocations keeps one
//! hash over all of its bytes (sha2's own hasher keeps its state private).

use std::io::Write;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The SHA-256 of `bytes` in lower-case hex: how every hash is written in records, manifests and
/// signatures.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A SHA-256 whose state serialises (as the eight state words, the length and the unfinished
/// block in hex), so a hash can be saved in a checkpoint and continued later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Saved")]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes hashed so far.
    len: u64,
    /// Bytes of an unfinished 64-byte block.
    #[serde(with = "hex_bytes")]
    pending: Vec<u8>,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self {
            state: H0,
            len: 0,
            pending: Vec::with_capacity(64),
        }
    }
}

impl ResumableSha256 {
    /// A hash of nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hashes `data` after what came before.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            self.compress(&block);
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            self.compress(block);
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    fn compress(&mut self, block: &[u8]) {
        sha2::compress256(
            &mut self.state,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }

    /// The digest, as lower-case hex.
    pub fn finish_hex(mut self) -> String {
        let bit_len = self.len.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.pending);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bit_len.to_be_bytes());
        for block in tail.chunks_exact(64) {
            self.compress(block);
        }
        self.state.iter().map(|w| format!("{w:08x}")).collect()
    }
}

/// A saved state as read back, checked before use: a stored value is never trusted to be whole.
#[derive(Deserialize)]
struct Saved {
    state: [u32; 8],
    len: u64,
    #[serde(with = "hex_bytes")]
    pending: Vec<u8>,
}

impl TryFrom<Saved> for ResumableSha256 {
    type Error = String;

    fn try_from(s: Saved) -> Result<Self, String> {
        if s.pending.len() >= 64 || s.len % 64 != s.pending.len() as u64 {
            return Err(format!(
                "a saved SHA-256 state of {} bytes cannot hold {} pending bytes",
                s.len,
                s.pending.len()
            ));
        }
        Ok(Self {
            state: s.state,
            len: s.len,
            pending: s.pending,
        })
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Counts and hashes what a gzip decoder writes into it.
pub(crate) struct HashSink {
    /// The hash of what was written so far.
    pub(crate) hasher: Sha256,
    /// Bytes written so far.
    pub(crate) len: u64,
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a stored package hashes to: its SHA-256 and length and, when asked and it is clean gzip,
/// those of the file inside.
pub struct PackageHashes {
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    /// Bytes read.
    pub size: u64,
    /// Hex SHA-256 and length of the decompressed content; `None` unless asked and clean gzip.
    pub decompressed: Option<(String, u64)>,
}

/// Hashes a stored package in one pass (and its gzip content when `gzip`); the read error, in
/// words, if the stream breaks off.
pub async fn hash_package(
    mut stream: crate::ports::ByteStream,
    gzip: bool,
) -> Result<PackageHashes, String> {
    let mut outer = HashSink {
        hasher: Sha256::new(),
        len: 0,
    };
    let mut inner = gzip.then(|| {
        flate2::write::GzDecoder::new(HashSink {
            hasher: Sha256::new(),
            len: 0,
        })
    });
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        outer.write_all(&chunk).map_err(|e| e.to_string())?;
        if let Some(d) = inner.as_mut()
            && d.write_all(&chunk).is_err()
        {
            inner = None;
        }
    }
    Ok(PackageHashes {
        sha256: hex::encode(outer.hasher.finalize()),
        size: outer.len,
        decompressed: inner
            .and_then(|d| d.finish().ok())
            .map(|s| (hex::encode(s.hasher.finalize()), s.len)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn a_corrupt_saved_state_is_refused_not_trusted() {
        let zeros = "00".repeat(8);
        for (len, pending) in [
            (65u64, "00".repeat(65)),
            (3, zeros.clone()),
            (8, "zz".into()),
        ] {
            let saved =
                format!(r#"{{"state":[0,0,0,0,0,0,0,0],"len":{len},"pending":"{pending}"}}"#);
            assert!(
                serde_json::from_str::<ResumableSha256>(&saved).is_err(),
                "{saved}"
            );
        }
        let ok = format!(r#"{{"state":[0,0,0,0,0,0,0,0],"len":72,"pending":"{zeros}"}}"#);
        assert!(serde_json::from_str::<ResumableSha256>(&ok).is_ok());
    }

    #[test]
    fn matches_sha2_for_any_split_and_survives_a_save() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0usize, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 10_000] {
            let want = hex::encode(Sha256::digest(&data[..len]));
            for split in [0usize, 1, 3, 64, 100, 777] {
                let split = split.min(len);
                let mut h = ResumableSha256::new();
                h.update(&data[..split]);
                // Save and restore in the middle, as a checkpoint does.
                let saved = serde_json::to_string(&h).unwrap();
                let mut h: ResumableSha256 = serde_json::from_str(&saved).unwrap();
                h.update(&data[split..len]);
                assert_eq!(h.len(), len as u64);
                assert_eq!(h.finish_hex(), want, "len {len} split {split}");
            }
        }
    }
}
