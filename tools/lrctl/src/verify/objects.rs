//! One evidence object against its manifest entry: the current object streamed and hashed (and
//! decompressed for GetFile packages), compared with the manifest's size and hashes and with the
//! object's own metadata; when it differs, whether the version the manifest pins is still intact.

use std::collections::HashMap;

use shared::defender::CommandType;
use shared::ids::RunId;
use shared::store::ManifestCommand;

use super::Finding;
use crate::bucket::{Bucket, Object};
use crate::digest::{Digests, Tally, stream_into};
use crate::error::Result;

/// Whether the manifest says this package holds a gzip file whose content it hashed.
fn wants_decompressed(cmd: &ManifestCommand) -> bool {
    cmd.kind == CommandType::GetFile && cmd.sha256_decompressed.is_some()
}

/// How `what` compares with the manifest's `want`.
fn differ(what: &str, got: &str, want: Option<&str>) -> Option<String> {
    match want {
        Some(w) if w == got => None,
        Some(w) => Some(format!("{what} is {got}, the manifest says {w}")),
        None => Some(format!("{what} is {got}, the manifest records none")),
    }
}

/// What differs between the bytes hashed and the manifest entry.
fn content_diffs(cmd: &ManifestCommand, d: &Digests<std::io::Sink>) -> Vec<String> {
    let mut out = Vec::new();
    let size = cmd.size.map(|n| n.to_string());
    out.extend(differ("size", &d.size.to_string(), size.as_deref()));
    out.extend(differ("SHA-256", &d.sha256, cmd.sha256.as_deref()));
    if let Some(want) = &cmd.sha256_decompressed {
        match &d.decompressed {
            Some(Ok((sha, n, _))) => {
                out.extend(differ("decompressed SHA-256", sha, Some(want)));
                let want_n = cmd.size_decompressed.map(|n| n.to_string());
                if want_n.is_some() {
                    out.extend(differ(
                        "decompressed size",
                        &n.to_string(),
                        want_n.as_deref(),
                    ));
                }
            }
            Some(Err(e)) => out.push(format!(
                "does not decompress ({e}); the manifest says it holds a file with SHA-256 {want}"
            )),
            None => {}
        }
    }
    out
}

/// What differs between the object's metadata (set when the pipeline began its upload) and the
/// manifest. The pipeline writes who the object belongs to (run, command, action); objects
/// published before packages went straight to their keys also carry their hashes, checked when
/// present (the hashes that count are the manifest's, checked against the bytes).
fn metadata_diffs(
    run: &RunId,
    cmd: &ManifestCommand,
    meta: &HashMap<String, String>,
) -> Vec<String> {
    let required = [
        ("run-id", Some(run.to_string())),
        ("command-index", Some(cmd.index.to_string())),
    ];
    let when_present = [
        ("sha256", cmd.sha256.clone()),
        ("size", cmd.size.map(|n| n.to_string())),
        ("sha256-decompressed", cmd.sha256_decompressed.clone()),
        (
            "size-decompressed",
            cmd.size_decompressed.map(|n| n.to_string()),
        ),
    ];
    if required.iter().all(|(name, _)| !meta.contains_key(*name)) {
        return vec![
            "has none of the metadata the pipeline writes (run-id, command-index): the pipeline \
             did not write this object"
                .into(),
        ];
    }
    let mut out = Vec::new();
    for (name, want) in required {
        match (meta.get(name), want) {
            (Some(got), want) => {
                out.extend(differ(&format!("metadata {name}"), got, want.as_deref()))
            }
            (None, Some(want)) => {
                out.push(format!("metadata has no {name}, the manifest says {want}"))
            }
            (None, None) => {}
        }
    }
    for (name, want) in when_present {
        if let Some(got) = meta.get(name) {
            out.extend(differ(&format!("metadata {name}"), got, want.as_deref()));
        }
    }
    out
}

/// Streams `obj` and hashes it as the manifest entry asks.
async fn hash(
    obj: Object,
    cmd: &ManifestCommand,
    bar: &indicatif::ProgressBar,
) -> std::result::Result<Digests<std::io::Sink>, String> {
    let tally = Tally::new(std::io::sink(), wants_decompressed(cmd).then(std::io::sink));
    stream_into(obj.body, tally, |n| bar.inc(n))
        .await
        .map(|(d, _)| d)
}

/// Checks the object of a collected command; findings name its key.
pub async fn check(
    bucket: &Bucket,
    run: &RunId,
    cmd: &ManifestCommand,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Finding>> {
    let Some(key) = cmd.s3_key.as_deref() else {
        return Ok(vec![]);
    };
    let problem = |what: String| Finding::problem(key, what);
    // Where it is (the key the pipeline writes for this command) is checked by the caller.
    let mut found = Vec::new();
    crate::output::label(bar, key);
    let current = bucket.open(key, None).await?;
    let current_version = current.as_ref().and_then(|o| o.version_id.clone());
    let diffs = match current {
        None => {
            vec!["missing: the manifest lists it but the bucket has no such object".to_string()]
        }
        Some(obj) => {
            let meta = obj.metadata.clone();
            match hash(obj, cmd, bar).await {
                Ok(d) => {
                    let mut diffs = content_diffs(cmd, &d);
                    diffs.extend(metadata_diffs(run, cmd, &meta));
                    diffs
                }
                Err(e) => vec![e],
            }
        }
    };
    if diffs.is_empty() {
        return Ok(found);
    }
    found.extend(diffs.into_iter().map(problem));
    if let Some(pinned) = cmd.s3_version_id.as_deref() {
        let note = if current_version.as_deref() == Some(pinned) {
            format!("this is the version the manifest pins ({pinned})")
        } else {
            match bucket.open(key, Some(pinned)).await? {
                None => format!("the version the manifest pins ({pinned}) is gone too"),
                Some(obj) => match hash(obj, cmd, bar).await {
                    Ok(d) if content_diffs(cmd, &d).is_empty() => format!(
                        "the version the manifest pins ({pinned}) is intact; the current version \
                         ({}) is not it (`lrctl fetch` downloads the pinned one)",
                        current_version.as_deref().unwrap_or("none")
                    ),
                    Ok(d) => format!(
                        "the version the manifest pins ({pinned}) differs too: {}",
                        content_diffs(cmd, &d).join("; ")
                    ),
                    Err(e) => {
                        format!("the version the manifest pins ({pinned}) cannot be read: {e}")
                    }
                },
            }
        };
        found.push(Finding::note(key, note));
    }
    Ok(found)
}
