//! How a large file's device parts map onto one S3 multipart upload.
//!
//! The joined object is one multipart upload, and S3 allows 10,000 parts of at most 5 GiB, every
//! one but the last at least 5 MiB. The S3 part size grows with the file, and it always divides
//! the device part size, so every device part starts on an S3 part boundary: device part `k`
//! fills S3 parts `k * per + 1 ..= (k + 1) * per`. A device part can then be copied on its own,
//! and a copy cut off inside one starts that device part over (its S3 parts are uploaded again
//! under the same numbers) with a fresh decompressor: no decompressor state is ever saved, only
//! the whole file's SHA-256 at each device part's end.

/// The default device part size: 2,816 MiB (2,952,790,016 bytes), just under Defender's 3 GB
/// GetFile limit, with many divisors (2^8 x 11 MiB) for the S3 part size to choose from.
pub const PART_LIMIT_DEFAULT: u64 = 2816 * MIB;
/// Defender refuses GetFile above 3 GB.
pub const GETFILE_LIMIT: u64 = 3_000_000_000;
/// S3: at most 10,000 parts in one upload.
pub const S3_MAX_PARTS: u64 = 10_000;
/// The smallest S3 part the pipeline uses (S3's own floor is 5 MiB).
pub const S3_MIN_PART: u64 = 8 * MIB;
/// S3's largest object: 5 TiB as documented for multipart uploads.
pub const S3_MAX_OBJECT: u64 = 5 * (1 << 40);
/// The largest S3 part the join holds in memory: with 10,000 parts, files up to 1.22 TiB.
pub const MAX_S3_PART: u64 = 128 * MIB;
const MIB: u64 = 1 << 20;

/// A large file's place in one multipart upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// The file's size.
    pub file_bytes: u64,
    /// Each device part's size (the last may be shorter).
    pub device_part: u64,
    /// Each S3 part's size (the last of each device part may be shorter only in the last one).
    pub s3_part: u64,
}

/// Why a file cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The device part size is not a multiple of 8 MiB between 8 MiB and Defender's GetFile
    /// limit: a setting to correct.
    #[error(
        "the large-file part size {0} is not a multiple of 8 MiB between 8 MiB and 3 GB (Defender's GetFile limit)"
    )]
    PartSize(u64),
    /// Larger than one upload of 10,000 parts of at most [`MAX_S3_PART`] that divide the part size
    /// may be: the file cannot be joined into one object.
    #[error(
        "{0} bytes is more than 10,000 S3 parts of at most 128 MiB dividing the part size can hold"
    )]
    TooLarge(u64),
}

/// Checks a configured device part size: a multiple of [`S3_MIN_PART`] (so an S3 part size always
/// divides it), within Defender's GetFile limit.
pub fn check_part_limit(device_part: u64) -> Result<(), LayoutError> {
    if !device_part.is_multiple_of(S3_MIN_PART)
        || !(S3_MIN_PART..=GETFILE_LIMIT).contains(&device_part)
    {
        return Err(LayoutError::PartSize(device_part));
    }
    Ok(())
}

impl Layout {
    /// The layout of a file of `file_bytes` split into `device_part`-byte parts: the smallest
    /// S3 part size that divides the device part (in whole MiB), is at least [`S3_MIN_PART`] and
    /// at most [`MAX_S3_PART`], and keeps the upload within 10,000 parts.
    pub fn new(file_bytes: u64, device_part: u64) -> Result<Self, LayoutError> {
        check_part_limit(device_part)?;
        if file_bytes > S3_MAX_OBJECT {
            return Err(LayoutError::TooLarge(file_bytes));
        }
        let mibs = device_part / MIB;
        let need = S3_MIN_PART.max(file_bytes.div_ceil(S3_MAX_PARTS));
        let Some(s3_part) = (S3_MIN_PART / MIB..=MAX_S3_PART / MIB)
            .filter(|d| mibs.is_multiple_of(*d))
            .map(|d| d * MIB)
            .find(|p| *p >= need)
        else {
            return Err(LayoutError::TooLarge(file_bytes));
        };
        let layout = Self {
            file_bytes,
            device_part,
            s3_part,
        };
        // One S3 part per device part at the least: the upload may still be too long only when
        // the device part itself is too small for the file.
        if layout.s3_parts_total() > S3_MAX_PARTS {
            return Err(LayoutError::TooLarge(file_bytes));
        }
        Ok(layout)
    }

    /// How many device parts the file has (at least one: an empty file is one empty part).
    pub fn device_parts(&self) -> u64 {
        self.file_bytes.div_ceil(self.device_part).max(1)
    }

    /// S3 parts per full device part.
    pub fn per_device_part(&self) -> u64 {
        self.device_part / self.s3_part
    }

    /// The S3 part numbers (1-based) device part `index` (0-based) fills, and the bytes it holds.
    pub fn s3_parts_of(&self, index: u64) -> (std::ops::RangeInclusive<i32>, u64) {
        let start = index * self.device_part;
        let bytes = self.file_bytes.saturating_sub(start).min(self.device_part);
        let first = index * self.per_device_part() + 1;
        let count = bytes.div_ceil(self.s3_part).max(1);
        (first as i32..=(first + count - 1) as i32, bytes)
    }

    /// S3 parts in the whole upload.
    pub fn s3_parts_total(&self) -> u64 {
        let last = self.device_parts() - 1;
        let (range, _) = self.s3_parts_of(last);
        *range.end() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_file_of_200_mib_in_64_mib_parts_is_four_device_parts_on_8_mib_s3_parts() {
        let l = Layout::new(200 * MIB, 64 * MIB).unwrap();
        assert_eq!(l.device_parts(), 4);
        assert_eq!(l.s3_part, 8 * MIB);
        assert_eq!(l.s3_parts_of(0), (1..=8, 64 * MIB));
        assert_eq!(l.s3_parts_of(3), (25..=25, 8 * MIB));
        assert_eq!(l.s3_parts_total(), 25);
    }

    #[test]
    fn a_large_file_keeps_every_device_part_on_an_s3_part_boundary_within_10000_parts() {
        for file in [
            0,
            1,
            4 << 30,
            (4u64 << 30) + 12345,
            100u64 << 30,
            (1u64 << 40) + 7,
            S3_MAX_OBJECT,
        ] {
            for part in [8 * MIB, 64 * MIB, 1000 * MIB, PART_LIMIT_DEFAULT] {
                let Ok(l) = Layout::new(file, part) else {
                    // Only a file too large for 10,000 parts as large as both allow may fail.
                    assert!(
                        file.div_ceil(part.min(MAX_S3_PART)) > S3_MAX_PARTS,
                        "{file} in {part}"
                    );
                    continue;
                };
                assert_eq!(part % l.s3_part, 0, "{file} in {part}");
                assert!(l.s3_part >= S3_MIN_PART && l.s3_part <= MAX_S3_PART);
                assert!(l.s3_parts_total() <= S3_MAX_PARTS);
                let mut next = 1;
                let mut bytes = 0;
                for k in 0..l.device_parts() {
                    let (range, b) = l.s3_parts_of(k);
                    assert_eq!(*range.start(), next, "{file} in {part}: part {k}");
                    next = range.end() + 1;
                    bytes += b;
                }
                assert_eq!(bytes, file);
            }
        }
    }

    #[test]
    fn a_large_file_part_limit_outside_8_mib_to_3_gb_is_refused() {
        for bad in [
            0,
            MIB,
            5 * MIB,
            8 * MIB + 1,
            2861 * MIB,
            2864 * MIB,
            4 << 30,
        ] {
            assert_eq!(
                check_part_limit(bad),
                Err(LayoutError::PartSize(bad)),
                "{bad}"
            );
        }
        assert!(check_part_limit(PART_LIMIT_DEFAULT).is_ok());
        assert!(Layout::new(S3_MAX_OBJECT + 1, PART_LIMIT_DEFAULT).is_err());
    }
}
