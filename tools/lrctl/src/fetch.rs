//! `lrctl fetch RUN DIR`: a run's evidence on the analyst's disk, each object exactly the bytes
//! the manifest hashed (the version it pins, when it names one). Objects stream to a `.partial`
//! file while being hashed and are renamed only once their SHA-256 and size match, so a file with
//! its final name is always verified evidence; `--decompress` does the same for the file inside
//! a GetFile package. The manifest and its signature are written beside them for `verify`-ing
//! offline. Memory stays bounded whatever the object's size.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use serde_json::json;
use shared::defender::CommandType;
use shared::ids::RunId;
use shared::store::{Manifest, ManifestCommand, manifest_key, signature_key};

use crate::Ctx;
use crate::bucket::{Bucket, parse};
use crate::digest::{Tally, stream_into};
use crate::error::{Error, Result};
use crate::output::{print_json, progress};

/// A file fetched and verified.
#[derive(Debug)]
pub struct Fetched {
    pub key: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// The decompressed file, when asked for and the package has one.
    pub decompressed: Option<PathBuf>,
}

/// The file name an evidence key is written under: its last segment, if it is a plain name.
fn file_name(key: &str) -> std::result::Result<&str, String> {
    let name = key.rsplit('/').next().unwrap_or_default();
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('\\')
        || name.starts_with("manifest")
    {
        return Err(format!("{key}: not a key lrctl can name a file after"));
    }
    Ok(name)
}

fn create(path: &Path) -> std::result::Result<BufWriter<File>, String> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn finish(w: BufWriter<File>, path: &Path) -> std::result::Result<(), String> {
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Fetches one collected object; an error says what was wrong (its partial files are removed).
async fn fetch_one(
    bucket: &Bucket,
    cmd: &ManifestCommand,
    key: &str,
    dir: &Path,
    decompress: bool,
    bar: &indicatif::ProgressBar,
) -> std::result::Result<Fetched, String> {
    let name = file_name(key)?;
    let path = dir.join(name);
    let partial = dir.join(format!("{name}.partial"));
    let unpack =
        decompress && cmd.kind == CommandType::GetFile && cmd.sha256_decompressed.is_some();
    let content_name = name
        .strip_suffix(".gz")
        .map_or(format!("{name}.content"), str::to_string);
    let content = dir.join(&content_name);
    let content_partial = dir.join(format!("{content_name}.partial"));
    let cleanup = || {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(&content_partial);
    };
    let version = cmd.s3_version_id.as_deref();
    let obj = bucket
        .open(key, version)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| match version {
            Some(v) => format!("{key}: the version the manifest pins ({v}) is missing"),
            None => format!("{key}: missing from the bucket"),
        })?;
    bar.set_message(key.to_string());
    let raw = create(&partial)?;
    let unpacked = if unpack {
        match create(&content_partial) {
            Ok(w) => Some(w),
            Err(e) => {
                cleanup();
                return Err(e);
            }
        }
    } else {
        None
    };
    let result = stream_into(obj.body, Tally::new(raw, unpacked), |n| bar.inc(n)).await;
    let (digests, raw) = match result {
        Ok(r) => r,
        Err(e) => {
            cleanup();
            return Err(format!("{key}: {e}; removed the partial download"));
        }
    };
    let mut wrong = Vec::new();
    if cmd.sha256.as_deref() != Some(digests.sha256.as_str()) {
        wrong.push(format!(
            "SHA-256 is {}, the manifest says {}",
            digests.sha256,
            cmd.sha256.as_deref().unwrap_or("nothing")
        ));
    }
    if cmd.size.is_some_and(|n| n != digests.size) {
        wrong.push(format!(
            "size is {}, the manifest says {:?}",
            digests.size, cmd.size
        ));
    }
    let mut decompressed = None;
    match digests.decompressed {
        Some(Ok((sha, _, w))) => {
            if let Err(e) = finish(w, &content_partial) {
                wrong.push(e);
            } else if cmd.sha256_decompressed.as_deref() != Some(sha.as_str()) {
                wrong.push(format!(
                    "decompressed SHA-256 is {sha}, the manifest says {}",
                    cmd.sha256_decompressed.as_deref().unwrap_or("nothing")
                ));
            } else {
                decompressed = Some(content.clone());
            }
        }
        Some(Err(e)) => wrong.push(format!("does not decompress: {e}")),
        None => {}
    }
    if let Err(e) = finish(raw, &partial) {
        wrong.push(e);
    }
    if !wrong.is_empty() {
        cleanup();
        return Err(format!(
            "{key}: {}; removed the partial download",
            wrong.join("; ")
        ));
    }
    std::fs::rename(&partial, &path)
        .map_err(|e| format!("cannot rename {}: {e}", partial.display()))?;
    if decompressed.is_some() {
        std::fs::rename(&content_partial, &content)
            .map_err(|e| format!("cannot rename {}: {e}", content_partial.display()))?;
    }
    Ok(Fetched {
        key: key.to_string(),
        path,
        sha256: digests.sha256,
        size: digests.size,
        decompressed,
    })
}

pub async fn command(ctx: &Ctx, run: &RunId, dir: &Path, decompress: bool) -> Result<u8> {
    let bucket = ctx.bucket()?;
    let mkey = manifest_key(run);
    let bytes = bucket.get(&mkey).await?.ok_or_else(|| {
        Error::failed(format!(
            "no manifest for run {run} ({mkey} is missing): a run has one once it has finished \
             (see `lrctl show {run}`)"
        ))
    })?;
    let manifest: Manifest = parse(&mkey, &bytes)?;
    let io = |e: std::io::Error| Error::failed(format!("cannot write to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("manifest.json"), &bytes).map_err(io)?;
    match bucket.get(&signature_key(run)).await? {
        Some(sig) => std::fs::write(dir.join("manifest.sig.json"), sig).map_err(io)?,
        None => eprintln!(
            "lrctl: warning: {} is missing; the manifest is unsigned",
            signature_key(run)
        ),
    }
    let total = manifest.commands.iter().filter_map(|c| c.size).sum();
    let bar = progress(total);
    let (mut fetched, mut failed) = (Vec::new(), Vec::new());
    for cmd in &manifest.commands {
        if let Some(key) = cmd.s3_key.as_deref() {
            match fetch_one(&bucket, cmd, key, dir, decompress, &bar).await {
                Ok(f) => fetched.push(f),
                Err(e) => failed.push(e),
            }
        }
    }
    bar.finish_and_clear();
    let code = u8::from(!failed.is_empty());
    if ctx.json {
        let files: Vec<_> = fetched
            .iter()
            .map(|f| {
                json!({"key": f.key, "path": f.path, "sha256": f.sha256, "size": f.size,
                       "decompressed": f.decompressed})
            })
            .collect();
        print_json(&json!({"run_id": run, "dir": dir, "files": files, "failed": failed}));
        return Ok(code);
    }
    for f in &fetched {
        println!(
            "{}  {} bytes  SHA-256 {}  (matches the manifest)",
            f.path.display(),
            f.size,
            f.sha256
        );
        if let Some(d) = &f.decompressed {
            println!("{}  decompressed, matches the manifest", d.display());
        }
    }
    for e in &failed {
        println!("FAILED {e}");
    }
    println!(
        "fetched {} object(s) of run {run} into {}{}",
        fetched.len(),
        dir.display(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {} failed", failed.len())
        }
    );
    Ok(code)
}
