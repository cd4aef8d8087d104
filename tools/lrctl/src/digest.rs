//! Hashing evidence as it streams by: the SHA-256 and length of the stored bytes and, for gzip
//! packages, of the file inside, with the decompressed bytes optionally written somewhere. Memory
//! stays bounded by a chunk and the inflater's window, whatever the object's size; `verify` and
//! `fetch` both use it so that they hash the way the pipeline did.

use std::io::Write;

use sha2::{Digest, Sha256};

/// A `Write` that hashes and counts what passes through to `inner`, refusing (an error of kind
/// `InvalidData` holding [`TooLarge`]) to pass on more than its limit.
pub struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
    len: u64,
    limit: Option<u64>,
}

/// More bytes than the limit (the size the manifest records) came out.
#[derive(Debug)]
pub struct TooLarge(pub u64);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decompresses to more than the {} bytes the manifest records; stopped writing",
            self.0
        )
    }
}

impl std::error::Error for TooLarge {}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
            limit: None,
        }
    }

    /// The SHA-256 (hex), the length and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (hex::encode(self.hasher.finalize()), self.len, self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let len = self.len.saturating_add(n);
        if let Some(limit) = self.limit.filter(|l| len > *l) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                TooLarge(limit),
            ));
        }
        self.inner.write_all(buf)?;
        self.hasher.update(buf);
        self.len = len;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a stream hashed to.
#[derive(Debug)]
pub struct Digests<D> {
    pub sha256: String,
    pub size: u64,
    /// The decompressed content's SHA-256 and length (and where it went), or why it would not
    /// decompress; `None` when not asked for.
    pub decompressed: Option<std::result::Result<(String, u64, D), String>>,
}

/// Feeds chunks to the stored-bytes hash, to `raw` and, when asked, through a gzip decoder into
/// `decompressed`.
pub struct Tally<W: Write, D: Write> {
    raw: Hashing<W>,
    gz: Option<std::result::Result<flate2::write::GzDecoder<Hashing<D>>, String>>,
}

impl<W: Write, D: Write> Tally<W, D> {
    /// Hashes into `raw`; and decompresses into `decompressed` when given.
    pub fn new(raw: W, decompressed: Option<D>) -> Self {
        Self {
            raw: Hashing::new(raw),
            gz: decompressed.map(|d| Ok(flate2::write::GzDecoder::new(Hashing::new(d)))),
        }
    }

    /// Stops decompressing (a [`TooLarge`] error in [`Digests::decompressed`]) once more than
    /// `limit` bytes have come out, so a package cannot fill the disk past what the manifest says.
    pub fn limit_decompressed(mut self, limit: u64) -> Self {
        if let Some(Ok(gz)) = &mut self.gz {
            gz.get_mut().limit = Some(limit);
        }
        self
    }

    /// One more chunk. An error is writing to `raw` (or to the decompressed sink); bytes that do
    /// not decompress are not an error here, they show in [`Digests::decompressed`].
    pub fn feed(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.raw.write_all(chunk)?;
        if let Some(Ok(gz)) = &mut self.gz
            && let Err(e) = gz.write_all(chunk)
        {
            if let Some(big) = e.get_ref().and_then(|i| i.downcast_ref::<TooLarge>()) {
                self.gz = Some(Err(big.to_string()));
            } else if e.kind() == std::io::ErrorKind::InvalidInput
                || e.kind() == std::io::ErrorKind::InvalidData
            {
                self.gz = Some(Err(format!("not valid gzip: {e}")));
            } else {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The hashes, `raw` and the decompressed sink.
    pub fn finish(self) -> (Digests<D>, W) {
        let (sha256, size, raw) = self.raw.finish();
        let decompressed = self.gz.map(|gz| {
            gz.and_then(|d| {
                d.finish()
                    .map_err(|e| format!("not valid gzip: {e}"))
                    .map(Hashing::finish)
            })
        });
        (
            Digests {
                sha256,
                size,
                decompressed,
            },
            raw,
        )
    }
}

/// Streams an S3 object body through a [`Tally`], calling `progress` with each chunk's length.
pub async fn stream_into<W: Write, D: Write>(
    mut body: aws_sdk_s3::primitives::ByteStream,
    mut tally: Tally<W, D>,
    mut progress: impl FnMut(u64),
) -> std::result::Result<(Digests<D>, W), String> {
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("reading from S3 broke off: {e}"))?;
        tally
            .feed(&chunk)
            .map_err(|e| format!("cannot write: {e}"))?;
        progress(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
    }
    Ok(tally.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_hashing_matches_hashing_the_whole() {
        let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&content).unwrap();
        let packed = gz.finish().unwrap();
        let mut t = Tally::new(std::io::sink(), Some(Vec::new()));
        for chunk in packed.chunks(777) {
            t.feed(chunk).unwrap();
        }
        let (d, _) = t.finish();
        assert_eq!(d.sha256, hex::encode(Sha256::digest(&packed)));
        assert_eq!(d.size, packed.len() as u64);
        let (sha, n, out) = d.decompressed.unwrap().unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&content)));
        assert_eq!(n, content.len() as u64);
        assert_eq!(out, content);
    }

    #[test]
    fn decompressing_stops_at_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[0u8; 100_000]).unwrap();
        let packed = gz.finish().unwrap();
        let mut t = Tally::new(std::io::sink(), Some(Vec::new())).limit_decompressed(1000);
        for chunk in packed.chunks(777) {
            t.feed(chunk).unwrap();
        }
        let (d, _) = t.finish();
        let e = d.decompressed.unwrap().unwrap_err();
        assert!(e.contains("more than the 1000 bytes"), "{e}");
    }

    #[test]
    fn bytes_that_are_not_gzip_say_so() {
        let mut t = Tally::new(std::io::sink(), Some(std::io::sink()));
        t.feed(b"plainly not gzip at all").unwrap();
        let (d, _) = t.finish();
        assert!(d.decompressed.unwrap().is_err());
    }
}
