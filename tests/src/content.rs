//! The content oracle: what a device's file holds in the simulator (its documented content
//! formula, computed here independently) and the hashes its evidence must carry.

use shared::store::ManifestCommand;

/// The simulator's documented file content (MDE-SIM content formula), computed here independently.
pub fn expected_file(machine_id: &str, path: &str, size: u64) -> Vec<u8> {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!(
        "mde-sim/v1\n{}\n{}\n{}",
        machine_id.to_lowercase(),
        path,
        size
    ));
    let seed = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    let mut out = Vec::with_capacity(size as usize + 8);
    let mut k = 0u64;
    while (out.len() as u64) < size {
        let mut z = seed.wrapping_add(k).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
        k += 1;
    }
    out.truncate(size as usize);
    out
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The SHA-256 (hex) of the file `path` of `size` bytes on `machine_id`: what a collected
/// GetFile's `sha256_decompressed` must be.
pub fn expected_sha256(machine_id: &str, path: &str, size: u64) -> String {
    sha256_hex(&expected_file(machine_id, path, size))
}

/// A collected file is the device's file: its package decompresses to content with the oracle's
/// hash, and the stored object `stored` is the one its record hashed.
pub fn assert_evidence(
    command: &ManifestCommand,
    stored: &[u8],
    machine_id: &str,
    path: &str,
    size: u64,
) {
    let key = command.s3_key.as_deref().unwrap_or("(no key)");
    assert_eq!(
        command.sha256_decompressed.as_deref(),
        Some(expected_sha256(machine_id, path, size).as_str()),
        "{key}: the device's file, whole"
    );
    assert_eq!(
        Some(sha256_hex(stored)),
        command.sha256,
        "{key}: the evidence object is the one hashed"
    );
}
