//! Deterministic result content.
//!
//! A simulated file's bytes depend only on (machine id, path, size), so a test can compute the
//! expected bytes and SHA-256 on its own:
//!
//! ```text
//! seed     = first 8 bytes, little-endian, of SHA-256("mde-sim/v1\n{machine_id}\n{path}\n{size}")
//!            (machine_id in lower case, path exactly as written in the device config)
//! word(k)  = splitmix64(seed + k)            (wrapping add)
//! byte(o)  = byte (o mod 8) of word(o / 8), little-endian
//! ```
//!
//! A GetFile result is that file gzip-compressed with *stored* deflate blocks (no compression), so
//! that any byte of the package can be produced at any offset without generating what lies before it:
//! a 10-byte header, blocks of at most 65,535 bytes each behind a 5-byte block header, and the
//! CRC-32 and size trailer.

use sha2::{Digest, Sha256};

/// Largest payload of one stored deflate block.
pub const STORED_BLOCK: u64 = 65_535;
const BLOCK_HEADER: u64 = 5;
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];
const GZIP_TRAILER: u64 = 8;

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn file_seed(machine_id: &str, path: &str, size: u64) -> u64 {
    let digest = Sha256::digest(format!(
        "mde-sim/v1\n{}\n{}\n{}",
        machine_id.to_ascii_lowercase(),
        path,
        size
    ));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// A simulated file: `size` bytes that follow from `seed`, from byte `start` of its stream on (a
/// part of a split file is its file's stream read from the part's offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileContent {
    pub seed: u64,
    pub size: u64,
    pub start: u64,
}

impl FileContent {
    pub fn new(machine_id: &str, path: &str, size: u64) -> Self {
        Self {
            seed: file_seed(machine_id, path, size),
            size,
            start: 0,
        }
    }

    /// `size` bytes of this file from `offset` on.
    pub fn slice(&self, offset: u64, size: u64) -> Self {
        Self {
            seed: self.seed,
            size,
            start: self.start + offset,
        }
    }

    /// The same length of other bytes (a corrupted copy).
    pub fn altered(&self) -> Self {
        Self {
            seed: self.seed ^ 0x00c0_ffee_0bad_f00d,
            ..*self
        }
    }

    /// Fills `buf` with the file's bytes from `offset` on (the caller keeps within the size).
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = 0usize;
        let mut off = self.start + offset;
        // Leading partial word.
        let lead = (off % 8) as usize;
        if lead != 0 && !buf.is_empty() {
            let word = splitmix64(self.seed.wrapping_add(off / 8)).to_le_bytes();
            let n = (8 - lead).min(buf.len());
            buf[..n].copy_from_slice(&word[lead..lead + n]);
            pos += n;
            off += n as u64;
        }
        let mut k = off / 8;
        let mut chunks = buf[pos..].chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&splitmix64(self.seed.wrapping_add(k)).to_le_bytes());
            k += 1;
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let word = splitmix64(self.seed.wrapping_add(k)).to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&word[..n]);
        }
    }

    /// CRC-32 of the whole file (one pass; the caller caches it).
    pub fn crc32(&self) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < self.size {
            let n = (self.size - off).min(buf.len() as u64) as usize;
            self.fill(off, &mut buf[..n]);
            hasher.update(&buf[..n]);
            off += n as u64;
        }
        hasher.finalize()
    }
}

/// Number of stored blocks used for a file of `size` bytes (an empty file still has one).
pub fn stored_blocks(size: u64) -> u64 {
    size.div_ceil(STORED_BLOCK).max(1)
}

/// Length of the gzip package of a file of `size` bytes.
pub fn gzip_len(size: u64) -> u64 {
    GZIP_HEADER.len() as u64 + stored_blocks(size) * BLOCK_HEADER + size + GZIP_TRAILER
}

/// The gzip package of a simulated file, readable at any offset.
#[derive(Debug, Clone, Copy)]
pub struct GzipPackage {
    pub file: FileContent,
    pub crc32: u32,
}

impl GzipPackage {
    pub fn len(&self) -> u64 {
        gzip_len(self.file.size)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Fills `buf` with the package's bytes from `offset` on; returns how many were written
    /// (fewer than `buf.len()` only at the end of the package).
    pub fn fill(&self, offset: u64, buf: &mut [u8]) -> usize {
        let total = self.len();
        let mut written = 0usize;
        let mut off = offset;
        let blocks = stored_blocks(self.file.size);
        let body_start = GZIP_HEADER.len() as u64;
        let body_len = blocks * BLOCK_HEADER + self.file.size;
        while written < buf.len() && off < total {
            let out = &mut buf[written..];
            let n = if off < body_start {
                let src = &GZIP_HEADER[off as usize..];
                let n = src.len().min(out.len());
                out[..n].copy_from_slice(&src[..n]);
                n
            } else if off < body_start + body_len {
                let rel = off - body_start;
                let block = rel / (STORED_BLOCK + BLOCK_HEADER);
                let within = rel % (STORED_BLOCK + BLOCK_HEADER);
                let data_start = block * STORED_BLOCK;
                let block_len = (self.file.size - data_start.min(self.file.size)).min(STORED_BLOCK);
                if within < BLOCK_HEADER {
                    let last = block + 1 == blocks;
                    let len = block_len as u16;
                    let nlen = !len;
                    let header = [
                        u8::from(last),
                        len as u8,
                        (len >> 8) as u8,
                        nlen as u8,
                        (nlen >> 8) as u8,
                    ];
                    let src = &header[within as usize..];
                    let n = src.len().min(out.len());
                    out[..n].copy_from_slice(&src[..n]);
                    n
                } else {
                    let in_block = within - BLOCK_HEADER;
                    let n = ((block_len - in_block) as usize).min(out.len());
                    self.file.fill(data_start + in_block, &mut out[..n]);
                    n
                }
            } else {
                let mut trailer = [0u8; 8];
                trailer[..4].copy_from_slice(&self.crc32.to_le_bytes());
                trailer[4..].copy_from_slice(&(self.file.size as u32).to_le_bytes());
                let rel = (off - body_start - body_len) as usize;
                let src = &trailer[rel..];
                let n = src.len().min(out.len());
                out[..n].copy_from_slice(&src[..n]);
                n
            };
            written += n;
            off += n as u64;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_at_any_offset_matches_a_full_fill() {
        let f = FileContent::new("aa", "C:\\x", 1000);
        let mut whole = vec![0u8; 1000];
        f.fill(0, &mut whole);
        for start in [0usize, 1, 7, 8, 9, 13, 500, 999] {
            for len in [0usize, 1, 3, 8, 17, 1000 - start] {
                let len = len.min(1000 - start);
                let mut part = vec![0u8; len];
                f.fill(start as u64, &mut part);
                assert_eq!(
                    &part[..],
                    &whole[start..start + len],
                    "start {start} len {len}"
                );
            }
        }
    }

    #[test]
    fn gzip_fill_is_consistent_across_offsets() {
        let f = FileContent::new("bb", "p", 200_000);
        let pkg = GzipPackage {
            file: f,
            crc32: f.crc32(),
        };
        let mut whole = vec![0u8; pkg.len() as usize];
        assert_eq!(pkg.fill(0, &mut whole), whole.len());
        for start in [0u64, 5, 10, 14, 15, 65_549, 65_550, 131_000, pkg.len() - 9] {
            let mut part = vec![0u8; 70_000];
            let n = pkg.fill(start, &mut part);
            assert_eq!(&part[..n], &whole[start as usize..start as usize + n]);
        }
    }
}
