//! Compiles the bundled playbooks' library folder (`playbooks/library/`) into the crate: every
//! file there becomes an entry of `BUNDLED_LIBRARY` (name, bytes), so that a function ships the
//! exact scripts its bundled playbooks name and can upload them to Defender's library.

use std::io::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/library");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("bundled_library.rs");
    let mut f = std::fs::File::create(&out).expect("OUT_DIR is writable");
    writeln!(
        f,
        "/// Every file of `shared/playbooks/library/`: (name, bytes)."
    )
    .unwrap();
    writeln!(f, "pub const BUNDLED_LIBRARY: &[(&str, &[u8])] = &[").unwrap();
    for p in files {
        println!("cargo:rerun-if-changed={}", p.display());
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file names");
        writeln!(
            f,
            "    ({name:?}, include_bytes!({:?})),",
            p.display().to_string()
        )
        .unwrap();
    }
    writeln!(f, "];").unwrap();
}
