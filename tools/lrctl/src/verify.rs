//! `lrctl verify`: whether a run's evidence is what the pipeline recorded. The signature binds
//! the manifest's exact bytes (checked with KMS, or offline with an exported public key); the
//! manifest binds each evidence object's size and hashes, recomputed here by streaming the
//! current object; anything else under the run's evidence prefix is reported too. Every finding
//! names the object key, and any mismatch makes the exit code 1.

mod objects;

use std::collections::BTreeSet;

use p256::ecdsa::VerifyingKey;
use serde_json::json;
use shared::custody::signature::{
    CustodyError, ManifestSignature, check_statement, public_key, verify_offline,
};
use shared::ids::RunId;
use shared::store::{Manifest, manifest_key, signature_key};
use time::OffsetDateTime;

use crate::Ctx;
use crate::bucket::Bucket;
use crate::cli::VerifyArgs;
use crate::error::{Error, Result};
use crate::output::{parse_duration, print_json, progress};

/// One thing verify found about an object: a mismatch (a problem), or context for one (a note).
#[derive(Debug, Clone)]
pub struct Finding {
    pub key: String,
    pub what: String,
    pub problem: bool,
}

impl Finding {
    fn problem(key: &str, what: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            what: what.into(),
            problem: true,
        }
    }
    fn note(key: &str, what: impl Into<String>) -> Self {
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
    async fn check(&self, doc: &ManifestSignature) -> Option<String> {
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
                match kms.verify(doc.statement.as_bytes(), &der).await {
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

/// What verify found for one run.
#[derive(Debug)]
pub struct RunCheck {
    pub run: RunId,
    pub objects: usize,
    pub findings: Vec<Finding>,
}

impl RunCheck {
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| f.problem).count()
    }
}

/// The manifest's signature: present, about these bytes, and made by the key.
async fn check_signature(
    bucket: &Bucket,
    verifier: &Verifier,
    run: &RunId,
    manifest: &[u8],
) -> Result<Vec<Finding>> {
    let (mkey, skey) = (manifest_key(run), signature_key(run));
    let Some(bytes) = bucket.get(&skey).await? else {
        return Ok(vec![Finding::problem(
            &skey,
            "missing: the manifest is not signed",
        )]);
    };
    let doc: ManifestSignature = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        Err(e) => return Ok(vec![Finding::problem(&skey, format!("unreadable: {e}"))]),
    };
    let mut found = Vec::new();
    match check_statement(&doc, run, &mkey, manifest) {
        Ok(_) => {}
        Err(e @ CustodyError::ManifestChanged { .. }) => {
            found.push(Finding::problem(&mkey, e.to_string()))
        }
        Err(e) => found.push(Finding::problem(&skey, e.to_string())),
    }
    if let Some(e) = verifier.check(&doc).await {
        found.push(Finding::problem(&skey, e));
    }
    Ok(found)
}

/// Verifies one run; `None` when it was received before `since` (skipped).
pub async fn verify_run(
    bucket: &Bucket,
    verifier: &Verifier,
    run: &RunId,
    since: Option<OffsetDateTime>,
) -> Result<Option<RunCheck>> {
    let mkey = manifest_key(run);
    let mut check = RunCheck {
        run: run.clone(),
        objects: 0,
        findings: Vec::new(),
    };
    let Some(bytes) = bucket.get(&mkey).await? else {
        check.findings.push(Finding::problem(
            &mkey,
            "missing: the run has no manifest yet (see `lrctl show RUN`)",
        ));
        return Ok(Some(check));
    };
    let manifest = serde_json::from_slice::<Manifest>(&bytes);
    if let (Ok(m), Some(t)) = (&manifest, since)
        && m.created_at < t
    {
        return Ok(None);
    }
    check
        .findings
        .extend(check_signature(bucket, verifier, run, &bytes).await?);
    let manifest = match manifest {
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
    let total: u64 = manifest.commands.iter().filter_map(|c| c.size).sum();
    let bar = progress(total);
    let mut listed: BTreeSet<String> = [mkey.clone(), signature_key(run)].into();
    for cmd in &manifest.commands {
        if let Some(key) = &cmd.s3_key {
            listed.insert(key.clone());
            check.objects += 1;
            check
                .findings
                .extend(objects::check(bucket, run, cmd, &bar).await?);
        }
    }
    bar.finish_and_clear();
    for key in bucket.list(&format!("evidence/{run}/")).await? {
        if !listed.contains(&key) {
            check
                .findings
                .push(Finding::problem(&key, "is not listed in the manifest"));
        }
    }
    Ok(Some(check))
}

/// Run ids that have a manifest.
async fn runs_with_manifests(bucket: &Bucket) -> Result<Vec<RunId>> {
    let keys = bucket.list("evidence/").await?;
    Ok(keys
        .iter()
        .filter_map(|k| k.strip_prefix("evidence/")?.strip_suffix("/manifest.json"))
        .filter_map(|r| RunId::parse(r).ok())
        .collect())
}

pub async fn command(ctx: &Ctx, args: &VerifyArgs) -> Result<u8> {
    let bucket = ctx.bucket()?;
    let verifier = match &args.public_key {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                Error::Usage(format!(
                    "cannot read the public key {}: {e}",
                    path.display()
                ))
            })?;
            Verifier::Offline(public_key(&bytes).map_err(|e| {
                Error::Usage(format!(
                    "{}: {e} (export one with `lrctl key export`)",
                    path.display()
                ))
            })?)
        }
        // Checking with the key the document names would let a forger pick the key.
        None => Verifier::Kms {
            client: ctx.kms(),
            expected_key: ctx.settings.signing_key_id()?.to_string(),
        },
    };
    let since = args
        .since
        .as_deref()
        .map(|s| parse_duration(s).map_err(|e| Error::Usage(format!("--since: {e}"))))
        .transpose()?
        .map(|secs| OffsetDateTime::now_utc() - time::Duration::seconds(secs));
    let runs = match &args.run {
        Some(r) => vec![crate::run_id(r)?],
        None => runs_with_manifests(&bucket).await?,
    };
    let mut checks = Vec::new();
    for run in &runs {
        if let Some(c) = verify_run(&bucket, &verifier, run, since).await? {
            if !ctx.json {
                for f in &c.findings {
                    let tag = if f.problem { "" } else { "  note: " };
                    println!("{tag}{}: {}", f.key, f.what);
                }
            }
            checks.push(c);
        }
    }
    let problems: usize = checks.iter().map(RunCheck::problems).sum();
    let objects: usize = checks.iter().map(|c| c.objects).sum();
    if ctx.json {
        let runs: Vec<_> = checks
            .iter()
            .map(|c| {
                let f: Vec<_> = c
                    .findings
                    .iter()
                    .map(|f| json!({"key": f.key, "finding": f.what, "problem": f.problem}))
                    .collect();
                json!({"run_id": c.run, "objects": c.objects, "problems": c.problems(), "findings": f})
            })
            .collect();
        print_json(
            &json!({"ok": problems == 0, "problems": problems, "objects": objects, "runs": runs}),
        );
    } else if problems == 0 {
        println!(
            "verified {} run(s), {objects} evidence object(s): manifests, signatures and hashes match",
            checks.len()
        );
    } else {
        let bad = checks.iter().filter(|c| c.problems() > 0).count();
        println!(
            "{problems} problem(s) in {bad} of {} run(s) verified",
            checks.len()
        );
    }
    Ok(if problems == 0 { 0 } else { 1 })
}
