//! `lrctl fetch RUN DIR`: a run's evidence on the analyst's disk, each object exactly the bytes
//! the manifest hashed (the version it pins, when it names one).
//!
//! The manifest is trusted only once its signature verifies (the same check as `verify`: KMS
//! with the deployment's key, or `--public-key`) and binds its exact bytes; otherwise fetch
//! refuses, writing nothing, unless `--unverified` is given (then it says so loudly, on stderr
//! and in the summary). Each command's key must be the one the pipeline writes for it
//! ([`shared::store::evidence_key`]) and no two may give the same file name. DIR must be empty
//! unless `--force` (which first removes a manifest.json and manifest.sig.json already there, so
//! another run's signature never sits beside this manifest).
//!
//! Objects stream to a `.partial` file while being hashed and are renamed only once their SHA-256
//! and size match, so a file with its final name is always checked evidence; `--decompress` does
//! the same for the file inside a GetFile package, and stops writing once it exceeds the size the
//! manifest records. The manifest and its signature are written last, beside them, for
//! `lrctl verify --dir` offline. Memory stays bounded whatever the object's size.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use serde_json::json;
use shared::defender::CommandType;
use shared::ids::RunId;
use shared::store::{Manifest, ManifestCommand, evidence_key, manifest_key, signature_key};

use crate::bucket::{Bucket, MAX_MANIFEST, parse};
use crate::cli::FetchArgs;
use crate::context::Ctx;
use crate::digest::{Tally, stream_into};
use crate::error::{Error, Result};
use crate::output::{err, out, print_json, progress};
use crate::verify::{check_signature, total_size, verifier};

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
    // Only with a size to stop at: the content is never written past what the manifest says.
    let unpack = decompress
        && cmd.kind == CommandType::GetFile
        && cmd.sha256_decompressed.is_some()
        && cmd.size_decompressed.is_some();
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
    crate::output::label(bar, key);
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
    let mut tally = Tally::new(raw, unpacked);
    if let Some(limit) = cmd.size_decompressed {
        tally = tally.limit_decompressed(limit);
    }
    let result = stream_into(obj.body, tally, |n| bar.inc(n)).await;
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
            "size is {}, the manifest says {}",
            digests.size,
            cmd.size.map_or("nothing".into(), |n| n.to_string())
        ));
    }
    let mut decompressed = None;
    match digests.decompressed {
        Some(Ok((sha, n, w))) => {
            if let Err(e) = finish(w, &content_partial) {
                wrong.push(e);
            } else if cmd.sha256_decompressed.as_deref() != Some(sha.as_str()) {
                wrong.push(format!(
                    "decompressed SHA-256 is {sha}, the manifest says {}",
                    cmd.sha256_decompressed.as_deref().unwrap_or("nothing")
                ));
            } else if cmd.size_decompressed.is_some_and(|want| want != n) {
                wrong.push(format!(
                    "decompressed size is {n}, the manifest says {}",
                    cmd.size_decompressed
                        .map_or("nothing".into(), |n| n.to_string())
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

/// Whether `dir` holds anything (a missing folder does not).
fn holds_anything(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::failed(format!("cannot read {}: {e}", dir.display()))),
    }
}

/// The keys to fetch, each checked to be where the pipeline writes that command's result and to
/// give a file name of its own; an error lists every command that is not.
fn planned<'m>(
    run: &RunId,
    manifest: &'m Manifest,
) -> std::result::Result<Vec<(&'m ManifestCommand, &'m str)>, Vec<String>> {
    let (mut plan, mut wrong) = (Vec::new(), Vec::new());
    let mut names = BTreeSet::new();
    for cmd in &manifest.commands {
        let Some(key) = cmd.s3_key.as_deref() else {
            continue;
        };
        let expected = evidence_key(run, cmd.index, cmd.kind);
        if key != expected {
            wrong.push(format!(
                "{key}: command {} of the manifest names this key; the pipeline writes its result \
                 at {expected}",
                cmd.index
            ));
            continue;
        }
        let name = match file_name(key) {
            Ok(n) => n,
            Err(e) => {
                wrong.push(e);
                continue;
            }
        };
        let content = name
            .strip_suffix(".gz")
            .map_or(format!("{name}.content"), str::to_string);
        for n in [name.to_string(), content] {
            if !names.insert(n.clone()) {
                wrong.push(format!(
                    "{key}: another command of the manifest is written as {n} too"
                ));
            }
        }
        plan.push((cmd, key));
    }
    if wrong.is_empty() {
        Ok(plan)
    } else {
        Err(wrong)
    }
}

pub async fn command(ctx: &Ctx, run: &RunId, args: &FetchArgs) -> Result<u8> {
    let (dir, decompress) = (args.dir.as_path(), args.decompress);
    if !args.force && holds_anything(dir)? {
        return Err(Error::Usage(format!(
            "{} is not empty: fetch into a new folder, or pass --force to write into it (its \
             manifest.json and manifest.sig.json are replaced)",
            dir.display()
        )));
    }
    let bucket = ctx.bucket()?;
    let verifier = match verifier(ctx, args.public_key.as_deref()) {
        Ok(v) => Ok(v),
        Err(e) if args.unverified => Err(e),
        Err(e) => {
            return Err(Error::Usage(format!(
                "{e}; fetch checks the manifest's signature first (or pass --unverified)"
            )));
        }
    };
    let mkey = manifest_key(run);
    let bytes = bucket.get(&mkey, MAX_MANIFEST).await?.ok_or_else(|| {
        Error::failed(format!(
            "no manifest for run {run} ({mkey} is missing): a run has one once it has finished \
             (see `lrctl show {run}`)"
        ))
    })?;
    let (problems, signature) = match &verifier {
        Ok(v) => {
            let sig = check_signature(&bucket, v, run, &bytes).await?;
            let problems: Vec<String> = sig
                .findings
                .iter()
                .filter(|f| f.problem)
                .map(|f| format!("{}: {}", f.key, f.what))
                .collect();
            let problems = if sig.verified.is_none() && problems.is_empty() {
                vec![format!("{}: does not verify", signature_key(run))]
            } else {
                problems
            };
            (problems, sig.document)
        }
        Err(e) => (
            vec![format!("the signature was not checked: {e}")],
            bucket
                .get(&signature_key(run), crate::bucket::MAX_SIGNATURE)
                .await
                .ok()
                .flatten(),
        ),
    };
    let verified = problems.is_empty();
    if !verified {
        for p in &problems {
            err(format!("lrctl: {p}"));
        }
        if !args.unverified {
            err(format!(
                "lrctl: refusing to fetch run {run}: its manifest is not vouched for by a valid \
                 signature (nothing was written; `lrctl verify {run}` says more, --unverified \
                 fetches anyway)"
            ));
            return Ok(1);
        }
        err(format!(
            "lrctl: WARNING: UNVERIFIED: fetching run {run} although its manifest's signature \
             does not verify; the files are checked only against a manifest nothing vouches for"
        ));
    }
    let manifest: Manifest = parse(&mkey, &bytes)?;
    if &manifest.run_id != run {
        return Err(Error::failed(format!(
            "{mkey} is the manifest of run {}, not {run}; nothing was written",
            manifest.run_id
        )));
    }
    let plan = planned(run, &manifest).map_err(|wrong| {
        Error::failed(format!(
            "refusing to fetch run {run}, nothing was written: {}",
            wrong.join("; ")
        ))
    })?;
    let io = |e: std::io::Error| Error::failed(format!("cannot write to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    for stale in ["manifest.json", "manifest.sig.json"] {
        match std::fs::remove_file(dir.join(stale)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    let bar = progress(total_size(&manifest));
    let (mut fetched, mut failed) = (Vec::new(), Vec::new());
    for (cmd, key) in plan {
        match fetch_one(&bucket, cmd, key, dir, decompress, &bar).await {
            Ok(f) => fetched.push(f),
            Err(e) => failed.push(e),
        }
    }
    bar.finish_and_clear();
    std::fs::write(dir.join("manifest.json"), &bytes).map_err(io)?;
    if let Some(sig) = &signature {
        std::fs::write(dir.join("manifest.sig.json"), sig).map_err(io)?;
    }
    // With --unverified the user chose to go without the signature (said loudly above): the
    // exit code is about the objects.
    let code = u8::from(!failed.is_empty());
    if ctx.json {
        let files: Vec<_> = fetched
            .iter()
            .map(|f| {
                json!({"key": f.key, "path": f.path, "sha256": f.sha256, "size": f.size,
                       "decompressed": f.decompressed})
            })
            .collect();
        print_json(
            &json!({"run_id": run, "dir": dir, "signature_verified": verified,
                           "signature_problems": problems, "files": files, "failed": failed}),
        );
        return Ok(code);
    }
    let against = if verified {
        "matches the signed manifest"
    } else {
        "matches the UNVERIFIED manifest"
    };
    for f in &fetched {
        out(format!(
            "{}  {} bytes  SHA-256 {}  ({against})",
            f.path.display(),
            f.size,
            f.sha256
        ));
        if let Some(d) = &f.decompressed {
            out(format!("{}  decompressed, {against}", d.display()));
        }
    }
    for e in &failed {
        out(format!("FAILED {e}"));
    }
    out(format!(
        "fetched {} object(s) of run {run} into {}{}{}",
        fetched.len(),
        dir.display(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {} failed", failed.len())
        },
        if verified {
            "; the manifest's signature verified"
        } else {
            "; UNVERIFIED: the manifest's signature does not verify"
        }
    ));
    Ok(code)
}
