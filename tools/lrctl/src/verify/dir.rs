//! `lrctl verify --dir DIR --public-key FILE`: a folder written by `lrctl fetch`, checked with no
//! AWS access at all. The signature document (`manifest.sig.json`) must verify with the public
//! key and bind the exact bytes of `manifest.json`; then every file the manifest lists (named
//! after its key, as fetch writes it) must have the manifest's size and SHA-256, and a GetFile
//! package must decompress to the manifest's decompressed SHA-256 and size (and so must the
//! decompressed file beside it, when `--decompress` wrote one). Findings name the file.

use std::io::Read;
use std::path::Path;

use serde_json::json;
use shared::custody::signature::{
    CustodyError, ManifestSignature, check_statement, public_key, verify_offline,
};
use shared::defender::CommandType;
use shared::store::{Manifest, ManifestCommand, evidence_key, manifest_key};

use super::Finding;
use crate::bucket::{MAX_MANIFEST, MAX_SIGNATURE};
use crate::context::Ctx;
use crate::digest::{Digests, Tally};
use crate::error::{Error, Result};
use crate::output::{out, print_json};

/// A small file's bytes, at most `max`; an error says which file and why.
fn read_capped(path: &Path, max: u64) -> std::result::Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
        return Err(format!("is larger than the {max} bytes lrctl reads for it"));
    }
    Ok(bytes)
}

/// Streams a file through a [`Tally`] (decompressing it too when `gunzip`).
fn hash_file(path: &Path, gunzip: bool) -> std::result::Result<Digests<std::io::Sink>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut tally = Tally::new(std::io::sink(), gunzip.then(std::io::sink));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if n == 0 {
            break;
        }
        tally
            .feed(buf.get(..n).unwrap_or_default())
            .map_err(|e| format!("cannot hash it: {e}"))?;
    }
    Ok(tally.finish().0)
}

fn differ(what: &str, got: &str, want: Option<&str>) -> Option<String> {
    match want {
        Some(w) if w == got => None,
        Some(w) => Some(format!("{what} is {got}, the manifest says {w}")),
        None => Some(format!("{what} is {got}, the manifest records none")),
    }
}

/// The files of one manifest entry.
fn check_command(dir: &Path, run: &shared::ids::RunId, cmd: &ManifestCommand) -> Vec<Finding> {
    let Some(key) = cmd.s3_key.as_deref() else {
        return vec![];
    };
    let expected = evidence_key(run, cmd.index, cmd.kind);
    if key != expected {
        return vec![Finding::problem(
            key,
            format!(
                "command {} names this key; the pipeline writes its result at {expected}",
                cmd.index
            ),
        )];
    }
    let name = key.rsplit('/').next().unwrap_or_default();
    let path = dir.join(name);
    let shown = path.display().to_string();
    let gunzip = cmd.kind == CommandType::GetFile && cmd.sha256_decompressed.is_some();
    let d = match hash_file(&path, gunzip) {
        Ok(d) => d,
        Err(e) => return vec![Finding::problem(&shown, e)],
    };
    let mut wrong = Vec::new();
    let size = cmd.size.map(|n| n.to_string());
    wrong.extend(differ("size", &d.size.to_string(), size.as_deref()));
    wrong.extend(differ("SHA-256", &d.sha256, cmd.sha256.as_deref()));
    let want_n = cmd.size_decompressed.map(|n| n.to_string());
    match &d.decompressed {
        Some(Ok((sha, n, _))) => {
            wrong.extend(differ(
                "decompressed SHA-256",
                sha,
                cmd.sha256_decompressed.as_deref(),
            ));
            if want_n.is_some() {
                wrong.extend(differ(
                    "decompressed size",
                    &n.to_string(),
                    want_n.as_deref(),
                ));
            }
        }
        Some(Err(e)) => wrong.push(format!("does not decompress: {e}")),
        None => {}
    }
    let mut found: Vec<Finding> = wrong
        .into_iter()
        .map(|w| Finding::problem(&shown, w))
        .collect();
    // The decompressed file `fetch --decompress` writes beside the package, if there is one.
    if let Some(content) = gunzip.then(|| name.strip_suffix(".gz")).flatten() {
        let cpath = dir.join(content);
        if cpath.exists() {
            let cshown = cpath.display().to_string();
            match hash_file(&cpath, false) {
                Ok(c) => {
                    found.extend(
                        differ("SHA-256", &c.sha256, cmd.sha256_decompressed.as_deref())
                            .map(|w| Finding::problem(&cshown, w)),
                    );
                    if want_n.is_some() {
                        found.extend(
                            differ("size", &c.size.to_string(), want_n.as_deref())
                                .map(|w| Finding::problem(&cshown, w)),
                        );
                    }
                }
                Err(e) => found.push(Finding::problem(&cshown, e)),
            }
        }
    }
    found
}

pub fn command(ctx: &Ctx, dir: &Path, key_file: &Path) -> Result<u8> {
    let key_bytes = std::fs::read(key_file).map_err(|e| {
        Error::Usage(format!(
            "cannot read the public key {}: {e}",
            key_file.display()
        ))
    })?;
    let key = public_key(&key_bytes).map_err(|e| {
        Error::Usage(format!(
            "{}: {e} (export one with `lrctl key export`)",
            key_file.display()
        ))
    })?;
    let (mpath, spath) = (dir.join("manifest.json"), dir.join("manifest.sig.json"));
    let (mshown, sshown) = (mpath.display().to_string(), spath.display().to_string());
    let fail = |path: &str, e: String| Error::failed(format!("{path}: {e}"));
    let bytes = read_capped(&mpath, MAX_MANIFEST).map_err(|e| fail(&mshown, e))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| fail(&mshown, format!("unreadable: {e}")))?;
    let run = manifest.run_id.clone();
    let mut findings = Vec::new();
    match read_capped(&spath, MAX_SIGNATURE).and_then(|b| {
        serde_json::from_slice::<ManifestSignature>(&b).map_err(|e| format!("unreadable: {e}"))
    }) {
        Err(e) => findings.push(Finding::problem(&sshown, e)),
        Ok(doc) => {
            match check_statement(&doc, &run, &manifest_key(&run), &bytes) {
                Ok(_) => {}
                Err(e @ CustodyError::ManifestChanged { .. }) => {
                    findings.push(Finding::problem(&mshown, e.to_string()))
                }
                Err(e) => findings.push(Finding::problem(&sshown, e.to_string())),
            }
            if let Err(e) = verify_offline(&doc, &key) {
                findings.push(Finding::problem(&sshown, e.to_string()));
            }
        }
    }
    let mut files = 0usize;
    for cmd in &manifest.commands {
        if cmd.s3_key.is_some() {
            files = files.saturating_add(1);
            findings.extend(check_command(dir, &run, cmd));
        }
    }
    let problems = findings.iter().filter(|f| f.problem).count();
    if ctx.json {
        let f: Vec<_> = findings
            .iter()
            .map(|f| json!({"key": f.key, "finding": f.what, "problem": f.problem}))
            .collect();
        print_json(&json!({"ok": problems == 0, "dir": dir, "run_id": run,
                           "files": files, "problems": problems, "findings": f}));
    } else {
        for f in &findings {
            out(format!("{}: {}", f.key, f.what));
        }
        if problems == 0 {
            out(format!(
                "verified {} offline: run {run}, {files} evidence file(s): manifest, signature \
                 and hashes match",
                dir.display()
            ));
        } else {
            out(format!("{problems} problem(s) in {}", dir.display()));
        }
    }
    Ok(u8::from(problems > 0))
}
