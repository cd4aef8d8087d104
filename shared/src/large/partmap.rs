//! The part map `large-file-split.ps1` prints: the file's size and SHA-256 as the device read it,
//! and each part's name, offset, size and SHA-256. It comes back inside a RunScript transcript,
//! written by a script on a device an attacker may control, so it is checked whole before the
//! pipeline acts on it: the parts must tile the file exactly, in order, each within the part size
//! asked for, with names the split script gives (nothing that could steer a GetFile elsewhere).

use serde::Deserialize;

/// The format version the split script prints.
pub const PART_MAP_VERSION: u32 = 1;
/// More parts than this is not a split the pipeline asked for (10,000 S3 parts, at least one each).
pub const MAX_DEVICE_PARTS: usize = 10_000;

/// One part as the device wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartOnDevice {
    /// Its file name in the working folder (`part-00001` ...).
    pub name: String,
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length.
    pub bytes: u64,
    /// Its SHA-256 as the device computed it (lower-case hex).
    pub sha256: String,
}

/// The split as the device reported it, checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartMap {
    /// Format version ([`PART_MAP_VERSION`]).
    pub v: u32,
    /// The file's full path on the device.
    pub path: String,
    /// Bytes copied into the parts (the file's length as read).
    pub bytes: u64,
    /// The file's length when the split began (more than `bytes` if it shrank while read).
    pub size_at_start: u64,
    /// SHA-256 of every byte copied into the parts, in order (lower-case hex).
    pub sha256: String,
    /// The part size the split was asked for.
    pub part_bytes: u64,
    /// The working folder holding the parts.
    pub folder: String,
    /// The parts, in file order.
    pub parts: Vec<PartOnDevice>,
}

/// Why a part map was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartMapError {
    /// Not the split script's JSON (a field missing, of the wrong type, or unknown).
    #[error("the split script's output is not a part map: {0}")]
    Unreadable(String),
    /// A field holds a value the split script never prints.
    #[error("the part map's {field} is invalid: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What was wrong with it.
        why: String,
    },
}

fn invalid(field: &'static str, why: impl Into<String>) -> PartMapError {
    PartMapError::Invalid {
        field,
        why: why.into(),
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl PartMap {
    /// Reads the split script's standard output and checks it against what was asked: the part
    /// size and the working folder the pipeline chose. The output's last non-empty line is the map
    /// (the script prints nothing else, but a profile or module may print before it).
    pub fn parse(output: &str, part_bytes: u64, folder: &str) -> Result<Self, PartMapError> {
        let line = output
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .ok_or_else(|| PartMapError::Unreadable("the script printed nothing".into()))?;
        let mut map: PartMap =
            serde_json::from_str(line).map_err(|e| PartMapError::Unreadable(e.to_string()))?;
        map.check(part_bytes, folder)?;
        // The parts are fetched from the folder as the pipeline wrote it, not as the device
        // spelled it back.
        map.folder = folder.to_string();
        Ok(map)
    }

    fn check(&self, part_bytes: u64, folder: &str) -> Result<(), PartMapError> {
        if self.v != PART_MAP_VERSION {
            return Err(invalid(
                "v",
                format!("version {} (expected {PART_MAP_VERSION})", self.v),
            ));
        }
        if self.part_bytes != part_bytes {
            return Err(invalid(
                "part_bytes",
                format!("{} (the pipeline asked for {part_bytes})", self.part_bytes),
            ));
        }
        if !self.folder.eq_ignore_ascii_case(folder) {
            return Err(invalid(
                "folder",
                format!("{:?} (the pipeline chose {folder:?})", self.folder),
            ));
        }
        if !is_sha256(&self.sha256) {
            return Err(invalid("sha256", "not 64 lower-case hex digits"));
        }
        if self.parts.is_empty() {
            return Err(invalid("parts", "none listed"));
        }
        if self.parts.len() > MAX_DEVICE_PARTS {
            return Err(invalid(
                "parts",
                format!("{} listed, at most {MAX_DEVICE_PARTS}", self.parts.len()),
            ));
        }
        let mut offset = 0u64;
        let last = self.parts.len() - 1;
        for (i, part) in self.parts.iter().enumerate() {
            let expected = format!("part-{:05}", i + 1);
            if part.name != expected {
                return Err(invalid(
                    "parts",
                    format!(
                        "part {} is named {:?} (expected {expected})",
                        i + 1,
                        part.name
                    ),
                ));
            }
            if part.offset != offset {
                return Err(invalid(
                    "parts",
                    format!(
                        "{} starts at {} (expected {offset})",
                        part.name, part.offset
                    ),
                ));
            }
            let full = i < last;
            if (full && part.bytes != part_bytes) || part.bytes > part_bytes {
                return Err(invalid(
                    "parts",
                    format!(
                        "{} holds {} bytes (every part but the last holds {part_bytes})",
                        part.name, part.bytes
                    ),
                ));
            }
            if part.bytes == 0 && self.parts.len() > 1 {
                return Err(invalid("parts", format!("{} is empty", part.name)));
            }
            if !is_sha256(&part.sha256) {
                return Err(invalid(
                    "parts",
                    format!("{}'s sha256 is not 64 lower-case hex digits", part.name),
                ));
            }
            offset = offset
                .checked_add(part.bytes)
                .ok_or_else(|| invalid("parts", "the sizes overflow"))?;
        }
        if self.bytes > self.size_at_start {
            return Err(invalid(
                "bytes",
                format!(
                    "{} copied from a file of {}",
                    self.bytes, self.size_at_start
                ),
            ));
        }
        if offset != self.bytes {
            return Err(invalid(
                "bytes",
                format!("{} but the parts add up to {offset}", self.bytes),
            ));
        }
        Ok(())
    }

    /// The device path of part `index` (0-based): the working folder and the part's name.
    pub fn part_path(&self, index: usize) -> Option<String> {
        self.parts
            .get(index)
            .map(|p| format!("{}\\{}", self.folder.trim_end_matches('\\'), p.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLDER: &str = "C:\\Windows\\Temp\\lr-large-0123456789abcdef0123456789abcdef-1";
    const MIB: u64 = 1 << 20;

    fn map(sizes: &[u64], part: u64) -> serde_json::Value {
        let mut offset = 0;
        let parts: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let p = serde_json::json!({"name": format!("part-{:05}", i + 1), "offset": offset,
                    "bytes": b, "sha256": "ab".repeat(32)});
                offset += b;
                p
            })
            .collect();
        serde_json::json!({"v": 1, "path": "C:\\Logs\\Security Ærø.evtx", "bytes": offset,
            "size_at_start": offset, "sha256": "cd".repeat(32), "part_bytes": part,
            "folder": FOLDER, "parts": parts})
    }

    fn parse(v: &serde_json::Value) -> Result<PartMap, PartMapError> {
        PartMap::parse(&format!("some banner\n{v}\n\n"), 64 * MIB, FOLDER)
    }

    #[test]
    fn a_large_file_part_map_that_tiles_the_file_is_accepted() {
        let m = parse(&map(&[64 * MIB, 64 * MIB, 64 * MIB, 8 * MIB], 64 * MIB)).unwrap();
        assert_eq!(m.bytes, 200 * MIB);
        assert_eq!(m.parts.len(), 4);
        assert_eq!(m.part_path(3).unwrap(), format!("{FOLDER}\\part-00004"));
        assert_eq!(m.part_path(4), None);
    }

    #[test]
    fn a_large_file_part_map_with_a_gap_an_overlap_or_a_wrong_total_is_refused() {
        let mut gap = map(&[64 * MIB, 8 * MIB], 64 * MIB);
        gap["parts"][1]["offset"] = serde_json::json!(64 * MIB + 1);
        let mut total = map(&[64 * MIB, 8 * MIB], 64 * MIB);
        total["bytes"] = serde_json::json!(72 * MIB + 1);
        let short = map(&[32 * MIB, 8 * MIB], 64 * MIB);
        let long = map(&[65 * MIB], 64 * MIB);
        for (case, v) in [
            ("gap", gap),
            ("total", total),
            ("short", short),
            ("long", long),
        ] {
            assert!(
                matches!(parse(&v), Err(PartMapError::Invalid { .. })),
                "{case}: {:?}",
                parse(&v)
            );
        }
    }

    #[test]
    fn a_large_file_part_map_cannot_steer_a_getfile_outside_the_working_folder() {
        let mut named = map(&[64 * MIB, 8 * MIB], 64 * MIB);
        named["parts"][1]["name"] = serde_json::json!("..\\..\\Users\\x\\secrets.txt");
        let mut folder = map(&[8 * MIB], 64 * MIB);
        folder["folder"] = serde_json::json!("C:\\Users\\victim");
        let mut asked = map(&[8 * MIB], 64 * MIB);
        asked["part_bytes"] = serde_json::json!(128 * MIB);
        let mut hash = map(&[8 * MIB], 64 * MIB);
        hash["parts"][0]["sha256"] = serde_json::json!("AB".repeat(32));
        let mut extra = map(&[8 * MIB], 64 * MIB);
        extra["then_get"] = serde_json::json!("C:\\Windows\\System32\\config\\SAM");
        for (case, v) in [
            ("name", named),
            ("folder", folder),
            ("part_bytes", asked),
            ("hash", hash),
            ("unknown field", extra),
        ] {
            assert!(parse(&v).is_err(), "{case} accepted");
        }
        assert!(matches!(
            PartMap::parse("", 64 * MIB, FOLDER),
            Err(PartMapError::Unreadable(_))
        ));
    }
}
