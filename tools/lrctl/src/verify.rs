//! `lrctl verify`: whether a run's evidence is what the pipeline recorded. The signature binds
//! the manifest's exact bytes (checked with KMS, or offline with an exported public key); the
//! manifest binds each evidence object's size and hashes, recomputed here by streaming the
//! current object; anything else under the run's evidence prefix is reported too. Every finding
//! names the object key, and any mismatch makes the exit code 1.
//!
//! `--all` finds runs by every `evidence/{run}/` folder and every `state/runs/{run}/run.json`,
//! not by the manifests present: a run whose manifest was deleted (a delete marker on the
//! versioned bucket) is a problem, not a run that is not there. A run without a manifest is a
//! problem when its record says it ended or it has evidence objects; otherwise it is still in
//! progress (a note). `--since` skips a run only once its signature has verified, going by the
//! signed statement's `signed_at` (a run without a manifest, still in progress, by its record's
//! `created_at`); a run that fails verification is never skipped. `--dir` checks a folder written
//! by `lrctl fetch` offline (see [`dir`]).

pub mod dir;
mod objects;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use p256::ecdsa::VerifyingKey;
use serde_json::json;
use shared::custody::signature::{
    CustodyError, ManifestSignature, Statement, check_statement, public_key, verify_offline,
};
use shared::ids::RunId;
use shared::store::{Manifest, RunRecord, evidence_key, manifest_key, run_key, signature_key};
use time::OffsetDateTime;

use crate::bucket::{Bucket, MAX_MANIFEST, MAX_RECORD, MAX_SIGNATURE};
use crate::cli::VerifyArgs;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{out, print_json, progress};

/// One thing verify found about an object: a mismatch (a problem), or context for one (a note).
#[derive(Debug, Clone)]
pub struct Finding {
    pub key: String,
    pub what: String,
    pub problem: bool,
}

impl Finding {
    pub fn problem(key: &str, what: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            what: what.into(),
            problem: true,
        }
    }
    pub fn note(key: &str, what: impl Into<String>) -> Self {
        Self {
            problem: false,
            ..Self::problem(key, what)
        }
    }
}

/// How signatures are checked.
pub enum Verifier {
    /// With KMS, and only with the deployment's signing key: a document naming another key is
    /// refused (a forger could sign with a key of their own and name it).
    Kms {
        client: aws_sdk_kms::Client,
        expected_key: String,
    },
    /// Offline, with a public key.
    Offline(VerifyingKey),
}

impl Verifier {
    /// What is wrong with the document's signature, if anything.
    pub async fn check(&self, doc: &ManifestSignature) -> Option<String> {
        match self {
            Self::Offline(key) => verify_offline(doc, key).err().map(|e| e.to_string()),
            Self::Kms {
                client,
                expected_key,
            } => {
                if expected_key != &doc.key_id {
                    return Some(format!(
                        "signed with key {}, not the deployment's signing key {expected_key}",
                        doc.key_id
                    ));
                }
                let der = match doc.der() {
                    Ok(d) => d,
                    Err(e) => return Some(e.to_string()),
                };
                let kms = shared::adapters::kms::KmsSigner::new(client.clone(), &doc.key_id);
                match kms.verify_with_kms(doc.statement.as_bytes(), &der).await {
                    Ok(true) => None,
                    Ok(false) => Some(CustodyError::BadSignature(doc.key_id.clone()).to_string()),
                    Err(e) => Some(format!(
                        "KMS could not check the signature with key {} ({}); verify offline with \
                         --public-key",
                        doc.key_id, e.0
                    )),
                }
            }
        }
    }
}

/// The verifier `verify` and `fetch` use: offline with the PEM public key at `public_key`, else
/// KMS with the deployment's signing key (a usage error naming the setting if none is configured).
pub fn verifier(ctx: &Ctx, public_key_file: Option<&Path>) -> Result<Verifier> {
    match public_key_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                Error::Usage(format!(
                    "cannot read the public key {}: {e}",
                    path.display()
                ))
            })?;
            Ok(Verifier::Offline(public_key(&bytes).map_err(|e| {
                Error::Usage(format!(
                    "{}: {e} (export one with `lrctl key export`)",
                    path.display()
                ))
            })?))
        }
        // Checking with the key the document names would let a forger pick the key.
        None => Ok(Verifier::Kms {
            client: ctx.kms(),
            expected_key: ctx.settings.signing_key_id()?.to_string(),
        }),
    }
}

/// What verify found for one run.
#[derive(Debug)]
pub struct RunCheck {
    pub run: RunId,
    pub objects: usize,
    pub findings: Vec<Finding>,
    /// Its manifest was read and checked (signature, objects).
    pub checked: bool,
    /// It has no manifest yet and nothing says it should (a note, not a problem).
    pub in_progress: bool,
}

impl RunCheck {
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| f.problem).count()
    }
}

/// What the signature check found: problems (none when it verified), the statement when the
/// signature verified and binds exactly these manifest bytes, and the document's bytes as read.
pub struct SignatureCheck {
    pub findings: Vec<Finding>,
    pub verified: Option<Statement>,
    pub document: Option<Vec<u8>>,
}

/// The manifest's signature: present, about these bytes, and made by the key.
pub async fn check_signature(
    bucket: &Bucket,
    verifier: &Verifier,
    run: &RunId,
    manifest: &[u8],
) -> Result<SignatureCheck> {
    let (mkey, skey) = (manifest_key(run), signature_key(run));
    let failed = |f: Finding, document: Option<Vec<u8>>| SignatureCheck {
        findings: vec![f],
        verified: None,
        document,
    };
    let bytes = match bucket.get(&skey, MAX_SIGNATURE).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Ok(failed(
                Finding::problem(&skey, "missing: the manifest is not signed"),
                None,
            ));
        }
        Err(e) => return Ok(failed(Finding::problem(&skey, e.to_string()), None)),
    };
    Ok(check_document(verifier, run, &mkey, &skey, manifest, bytes).await)
}

/// A signature document (its bytes, as read from `skey`) against the manifest bytes.
pub async fn check_document(
    verifier: &Verifier,
    run: &RunId,
    mkey: &str,
    skey: &str,
    manifest: &[u8],
    bytes: Vec<u8>,
) -> SignatureCheck {
    let doc: ManifestSignature = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        Err(e) => {
            return SignatureCheck {
                findings: vec![Finding::problem(skey, format!("unreadable: {e}"))],
                verified: None,
                document: Some(bytes),
            };
        }
    };
    let mut findings = Vec::new();
    let statement = match check_statement(&doc, run, mkey, manifest) {
        Ok(st) => Some(st),
        Err(e @ CustodyError::ManifestChanged { .. }) => {
            findings.push(Finding::problem(mkey, e.to_string()));
            None
        }
        Err(e) => {
            findings.push(Finding::problem(skey, e.to_string()));
            None
        }
    };
    if let Some(e) = verifier.check(&doc).await {
        findings.push(Finding::problem(skey, e));
    }
    SignatureCheck {
        verified: statement.filter(|_| findings.is_empty()),
        findings,
        document: Some(bytes),
    }
}

/// The sum of the sizes the manifest records (saturating: a stored value cannot overflow it).
pub fn total_size(manifest: &Manifest) -> u64 {
    manifest
        .commands
        .iter()
        .filter_map(|c| c.size)
        .fold(0u64, u64::saturating_add)
}

/// A run without a manifest: a problem if its record says it ended or it has evidence objects
/// (`keys`), else still in progress (`None`: skipped, in progress and received before `since`).
async fn without_manifest(
    bucket: &Bucket,
    mut check: RunCheck,
    keys: &[String],
    since: Option<OffsetDateTime>,
    explicit: bool,
) -> Option<RunCheck> {
    let run = check.run.clone();
    let (mkey, rkey) = (manifest_key(&run), run_key(&run));
    let record = bucket.record::<RunRecord>(&rkey, MAX_RECORD).await;
    let state = |r: &RunRecord| {
        serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    match &record {
        Ok(Some(r)) if r.state.is_final() => check.findings.push(Finding::problem(
            &mkey,
            format!(
                "missing: run {run} has ended ({}) but has no manifest: it was deleted or never \
                 written (a versioned bucket keeps deleted versions; see `lrctl show {run}`)",
                state(r)
            ),
        )),
        _ if !keys.is_empty() => check.findings.push(Finding::problem(
            &mkey,
            format!(
                "missing: evidence/{run}/ holds {} object(s) but no manifest: it was deleted, or \
                 the run is still being collected ({})",
                keys.len(),
                match &record {
                    Ok(Some(r)) => format!("its record says {}", state(r)),
                    Ok(None) => "it has no run record".into(),
                    Err(_) => "its run record is unreadable".into(),
                }
            ),
        )),
        Ok(Some(r)) => {
            if !explicit && since.is_some_and(|t| r.created_at < t) {
                return None;
            }
            let what = format!(
                "no manifest yet: the run is {} (see `lrctl show {run}`)",
                state(r)
            );
            if explicit {
                check
                    .findings
                    .push(Finding::problem(&mkey, format!("missing: {what}")));
            } else {
                check.in_progress = true;
                check.findings.push(Finding::note(&mkey, what));
            }
        }
        Ok(None) => check.findings.push(Finding::problem(
            &mkey,
            format!("missing, and there is no run record {rkey}: no run {run} in this bucket"),
        )),
        Err(_) => {}
    }
    if let Err(e) = record {
        check.findings.push(Finding::problem(&rkey, e.to_string()));
    }
    for key in keys {
        check
            .findings
            .push(Finding::note(key, "is not covered by any manifest"));
    }
    Some(check)
}

/// Verifies one run; `None` when skipped by `since` (only once its signature verified, or when it
/// is in progress and was received before). `keys` is what is under `evidence/{run}/` when the
/// caller already listed it; `explicit` when the user named the run.
pub async fn verify_run(
    bucket: &Bucket,
    verifier: &Verifier,
    run: &RunId,
    since: Option<OffsetDateTime>,
    keys: Option<Vec<String>>,
    explicit: bool,
) -> Result<Option<RunCheck>> {
    let (mkey, skey) = (manifest_key(run), signature_key(run));
    let mut check = RunCheck {
        run: run.clone(),
        objects: 0,
        findings: Vec::new(),
        checked: false,
        in_progress: false,
    };
    let keys = match keys {
        Some(k) => k,
        None => bucket.list(&format!("evidence/{run}/")).await?,
    };
    let bytes = match bucket.get(&mkey, MAX_MANIFEST).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(without_manifest(bucket, check, &keys, since, explicit).await),
        Err(e) => {
            check.findings.push(Finding::problem(&mkey, e.to_string()));
            return Ok(Some(check));
        }
    };
    check.checked = true;
    let sig = check_signature(bucket, verifier, run, &bytes).await?;
    if let (Some(st), Some(t)) = (&sig.verified, since)
        && st.signed_at < t
    {
        return Ok(None);
    }
    check.findings.extend(sig.findings);
    let manifest = match serde_json::from_slice::<Manifest>(&bytes) {
        Ok(m) => m,
        Err(e) => {
            check
                .findings
                .push(Finding::problem(&mkey, format!("unreadable: {e}")));
            return Ok(Some(check));
        }
    };
    if &manifest.run_id != run {
        check.findings.push(Finding::problem(
            &mkey,
            format!("is the manifest of run {}, not {run}", manifest.run_id),
        ));
    }
    let bar = progress(total_size(&manifest));
    let mut listed: BTreeSet<String> = [mkey.clone(), skey].into();
    for cmd in &manifest.commands {
        if let Some(key) = &cmd.s3_key {
            let expected = evidence_key(run, cmd.index, cmd.kind);
            if key != &expected {
                check.findings.push(Finding::problem(
                    key,
                    format!(
                        "is not where the pipeline writes command {}'s result ({expected})",
                        cmd.index
                    ),
                ));
            }
            if !listed.insert(key.clone()) {
                check.findings.push(Finding::problem(
                    key,
                    "is listed twice in the manifest (or is the manifest or its signature)",
                ));
            }
            check.objects = check.objects.saturating_add(1);
            check
                .findings
                .extend(objects::check(bucket, run, cmd, &bar).await?);
        }
    }
    bar.finish_and_clear();
    for key in keys {
        if !listed.contains(&key) {
            check
                .findings
                .push(Finding::problem(&key, "is not listed in the manifest"));
        }
    }
    Ok(Some(check))
}

/// The run a key under `evidence/{run}/` or `state/runs/{run}/` belongs to.
fn run_of(key: &str) -> Option<RunId> {
    key.strip_prefix("evidence/")
        .or_else(|| key.strip_prefix("state/runs/"))
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(folder, _)| RunId::parse(folder).ok())
}

/// Every run the bucket knows of (by `evidence/{run}/` folders and `state/runs/{run}/run.json`
/// records) with the keys under its evidence folder, and the keys under `evidence/` that are not
/// in a run's folder.
async fn all_runs(
    ctx: &Ctx,
    bucket: &Bucket,
) -> Result<(BTreeMap<RunId, Vec<String>>, Vec<String>)> {
    let mut runs: BTreeMap<RunId, Vec<String>> = BTreeMap::new();
    let mut strays = Vec::new();
    for key in bucket.list(&ctx.evidence_prefix()).await? {
        let run = key
            .strip_prefix("evidence/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(folder, _)| RunId::parse(folder).ok());
        match run {
            Some(run) => runs.entry(run).or_default().push(key),
            None => strays.push(key),
        }
    }
    for key in bucket.list(&ctx.runs_prefix()).await? {
        if let Some(run) = key
            .strip_prefix("state/runs/")
            .and_then(|r| r.strip_suffix("/run.json"))
            .and_then(|r| RunId::parse(r).ok())
        {
            runs.entry(run).or_default();
        }
    }
    Ok((runs, strays))
}

pub async fn command(ctx: &Ctx, args: &VerifyArgs) -> Result<u8> {
    if let Some(d) = &args.dir {
        let key = args.public_key.as_deref().ok_or_else(|| {
            Error::Usage("--dir needs --public-key FILE (from `lrctl key export`)".into())
        })?;
        return dir::command(ctx, d, key);
    }
    let bucket = ctx.bucket()?;
    let verifier = verifier(ctx, args.public_key.as_deref())?;
    let since = args
        .since
        .as_deref()
        .map(|s| crate::output::since(s, OffsetDateTime::now_utc()))
        .transpose()?;
    type Listed = Vec<(RunId, Option<Vec<String>>)>;
    let (runs, strays, deleted): (Listed, Vec<String>, Vec<String>) = match &args.run {
        Some(r) => {
            let run = ctx.run_id(r)?;
            let mut deleted = bucket.deleted(&format!("evidence/{run}/")).await?;
            deleted.extend(bucket.deleted(&shared::store::run_key(&run)).await?);
            (vec![(run, None)], vec![], deleted)
        }
        None => {
            let (mut all, strays) = all_runs(ctx, &bucket).await?;
            let mut deleted = bucket.deleted(&ctx.evidence_prefix()).await?;
            // Of the state, only a run record: the pipeline deletes its own checkpoints.
            deleted.extend(
                bucket
                    .deleted(&ctx.runs_prefix())
                    .await?
                    .into_iter()
                    .filter(|k| k.ends_with("/run.json")),
            );
            // A run whose every object was deleted is still a run to report.
            for key in &deleted {
                if let Some(run) = run_of(key) {
                    all.entry(run).or_default();
                }
            }
            (
                all.into_iter().map(|(r, k)| (r, Some(k))).collect(),
                strays,
                deleted,
            )
        }
    };
    let explicit = args.run.is_some();
    let mut checks = Vec::new();
    let mut skipped = 0usize;
    for key in &strays {
        if !ctx.json {
            out(format!(
                "{key}: is under evidence/ but not in a run's folder"
            ));
        }
    }
    for (run, keys) in &runs {
        // Deleted evidence, manifest, signature or run record: the latest version of the key is a
        // delete marker. Always a problem, whatever else the run shows.
        let gone: Vec<Finding> = deleted
            .iter()
            .filter(|k| run_of(k).as_ref() == Some(run))
            .map(|k| {
                Finding::problem(
                    k,
                    "was deleted (its latest version is a delete marker; earlier versions may \
                     still hold it)",
                )
            })
            .collect();
        let checked = verify_run(&bucket, &verifier, run, since, keys.clone(), explicit).await?;
        let checked = match (checked, gone.is_empty()) {
            (c, true) => c,
            (Some(mut c), false) => {
                c.in_progress = false;
                c.findings.splice(0..0, gone);
                Some(c)
            }
            (None, false) => Some(RunCheck {
                run: run.clone(),
                objects: 0,
                findings: gone,
                checked: false,
                in_progress: false,
            }),
        };
        match checked {
            Some(c) => {
                if !ctx.json {
                    for f in &c.findings {
                        let tag = if f.problem { "" } else { "  note: " };
                        out(format!("{tag}{}: {}", f.key, f.what));
                    }
                }
                checks.push(c);
            }
            None => skipped += 1,
        }
    }
    let problems = checks
        .iter()
        .map(RunCheck::problems)
        .fold(strays.len(), usize::saturating_add);
    let objects = checks
        .iter()
        .map(|c| c.objects)
        .fold(0, usize::saturating_add);
    let verified = checks.iter().filter(|c| c.checked).count();
    let in_progress = checks.iter().filter(|c| c.in_progress).count();
    let found = runs.len();
    if ctx.json {
        let runs: Vec<_> = checks
            .iter()
            .map(|c| {
                let f: Vec<_> = c
                    .findings
                    .iter()
                    .map(|f| json!({"key": f.key, "finding": f.what, "problem": f.problem}))
                    .collect();
                json!({"run_id": c.run, "objects": c.objects, "problems": c.problems(),
                       "checked": c.checked, "in_progress": c.in_progress, "findings": f})
            })
            .collect();
        print_json(&json!({
            "ok": problems == 0, "bucket": bucket.name(), "problems": problems,
            "objects": objects, "found": found, "verified": verified, "skipped": skipped,
            "in_progress": in_progress, "strays": strays, "runs": runs,
        }));
        return Ok(if problems == 0 { 0 } else { 1 });
    }
    if found == 0 && strays.is_empty() {
        out(format!(
            "no runs found in bucket {}: nothing to verify",
            bucket.name()
        ));
        return Ok(0);
    }
    let mut aside = Vec::new();
    if skipped > 0 {
        aside.push(format!(
            "{skipped} skipped (signed, or received, before --since)"
        ));
    }
    if in_progress > 0 {
        aside.push(format!("{in_progress} in progress (no manifest yet)"));
    }
    out(format!(
        "found {found} run(s) in bucket {}{}{}",
        bucket.name(),
        if aside.is_empty() { "" } else { "; " },
        aside.join(", ")
    ));
    if problems == 0 {
        out(format!(
            "verified {verified} run(s), {objects} evidence object(s): manifests, signatures and \
             hashes match"
        ));
    } else {
        let bad = checks.iter().filter(|c| c.problems() > 0).count();
        out(format!(
            "{problems} problem(s) in {bad} of {found} run(s) found ({verified} with a manifest \
             checked){}",
            if strays.is_empty() {
                String::new()
            } else {
                format!(", {} key(s) outside any run's folder", strays.len())
            }
        ));
    }
    Ok(if problems == 0 { 0 } else { 1 })
}
