//! `lrctl library status`: each declared file against the tenant's listing, judged by the rules
//! submit applies, as a table or JSON; exit 0 only when every file is ready.

use serde_json::{Value, json};
use shared::defender::LibraryFile;
use shared::library::verdict::is_managed;
use shared::library::{Bundle, BundleFile, Listing, Verdict};

use super::{declared, defender, list, nothing_declared, real_pace};
use crate::cli::PlaybooksArg;
use crate::context::Ctx;
use crate::error::Result;
use crate::output::{print_json, table};

/// One declared file against the library: what the library holds under its library name, and the
/// verdict.
#[derive(Debug, Clone)]
pub struct Row {
    pub file: BundleFile,
    pub listed: Option<LibraryFile>,
    pub verdict: Verdict,
}

/// Every declared file's row, in the bundle's order, judged on `listing` by
/// [`shared::library::judge`] (the rules submit applies).
pub fn judge(bundle: &Bundle, listing: &[LibraryFile]) -> Vec<Row> {
    let listing = Listing::of(listing.to_vec());
    bundle
        .files()
        .map(|file| Row {
            verdict: shared::library::judge(file, &listing),
            listed: listing.get(&file.library_name()).cloned(),
            file: file.clone(),
        })
        .collect()
}

impl Row {
    /// The name the library keeps it under (a bundled file's versioned name).
    pub fn name(&self) -> String {
        self.file.library_name()
    }

    /// The name the playbook file declares it by.
    pub fn playbook_name(&self) -> &str {
        &self.file.spec.name
    }

    /// The name as the status shows it: the library's, then the playbook's where they differ
    /// (`triage-6bf94f0d21df.ps1 (triage.ps1)`).
    pub fn label(&self) -> String {
        let name = self.name();
        if name == self.playbook_name() {
            name
        } else {
            format!("{name} ({})", self.playbook_name())
        }
    }

    pub fn ready(&self) -> bool {
        matches!(self.verdict, Verdict::Ready(_))
    }

    pub fn refused(&self) -> bool {
        matches!(self.verdict, Verdict::Refuse(_))
    }

    /// `bundle` (the pipeline keeps it) or `external` (someone else does).
    pub fn source(&self) -> &'static str {
        if self.file.managed() {
            "bundle"
        } else {
            "external"
        }
    }

    /// Whether the library's copy carries the pipeline's marker (`None`: no copy).
    pub fn managed(&self) -> Option<bool> {
        self.listed.as_ref().map(is_managed)
    }

    /// The library's SHA-256 as shown: `missing`, `(not reported)` or the hash.
    pub fn library_sha256(&self) -> String {
        match &self.listed {
            None => "missing".into(),
            Some(l) => l.sha256.clone().unwrap_or_else(|| "(not reported)".into()),
        }
    }

    /// What a replacement replaces, in words (`None` unless the verdict replaces).
    pub fn replaces(&self) -> Option<&'static str> {
        match self.verdict {
            Verdict::Upload { replace: true } if self.managed() == Some(true) => {
                Some("a stale copy the pipeline uploaded")
            }
            Verdict::Upload { replace: true } => Some("someone else's file (replace_unmanaged)"),
            _ => None,
        }
    }

    /// The verdict as one word for scripts: ready, upload, replace or refuse.
    pub fn action(&self) -> &'static str {
        match self.verdict {
            Verdict::Ready(_) => "ready",
            Verdict::Upload { replace: false } => "upload",
            Verdict::Upload { replace: true } => "replace",
            Verdict::Refuse(_) => "refuse",
        }
    }

    /// The verdict in words.
    pub fn verdict_text(&self) -> String {
        match (&self.verdict, self.replaces()) {
            (Verdict::Ready(_), _) => "in sync".into(),
            (Verdict::Upload { .. }, None) => "would upload".into(),
            (Verdict::Upload { .. }, Some(what)) => format!("would replace {what}"),
            (Verdict::Refuse(reason), _) => format!("refused: {reason}"),
        }
    }

    pub(super) fn cells(&self) -> Vec<String> {
        vec![
            self.label(),
            self.source().to_string(),
            self.file.sha256.clone().unwrap_or_else(|| "any".into()),
            self.library_sha256(),
            match self.managed() {
                None => "-",
                Some(true) => "yes",
                Some(false) => "no",
            }
            .to_string(),
            self.verdict_text(),
        ]
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "name": self.name(),
            "playbook_name": self.playbook_name(),
            "library_name": self.name(),
            "source": self.source(),
            "expected_sha256": self.file.sha256,
            "in_library": self.listed.is_some(),
            "library_sha256": self.listed.as_ref().and_then(|l| l.sha256.clone()),
            "library_description": self.listed.as_ref().and_then(|l| l.description.clone()),
            "managed": self.managed(),
            "verdict": self.action(),
            "summary": self.verdict_text(),
            "reason": match &self.verdict {
                Verdict::Refuse(r) => Some(r.as_str()),
                _ => None,
            },
        })
    }
}

const HEADERS: [&str; 6] = [
    "NAME",
    "SOURCE",
    "PLAYBOOK SHA-256",
    "LIBRARY SHA-256",
    "MANAGED",
    "VERDICT",
];

/// The status as JSON: the source, whether every file is ready, and each file.
pub fn status_json(source: &str, rows: &[Row]) -> Value {
    json!({
        "playbooks": source,
        "ready": rows.iter().all(Row::ready),
        "files": rows.iter().map(Row::json).collect::<Vec<_>>(),
    })
}

/// The status as text: the table, then a line of counts.
pub fn status_text(source: &str, rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let ready = rows.iter().filter(|r| r.ready()).count();
    let refused = rows.iter().filter(|r| r.refused()).count();
    let todo = rows.len() - ready - refused;
    let mut text = table(&HEADERS, &cells);
    text.push_str(&crate::output::clean(&format!(
        "{} library file(s) declared in {source}: {ready} in sync, {todo} to upload or replace, {refused} refused",
        rows.len()
    )));
    if todo > 0 && refused == 0 {
        text.push_str(" (`lrctl library sync` does it)");
    }
    text.push('\n');
    text
}

pub async fn status(ctx: &Ctx, args: &PlaybooksArg) -> Result<u8> {
    let declared = declared(ctx, args).await?;
    if declared.bundle.is_empty() {
        return Ok(nothing_declared(ctx, &declared.source));
    }
    let api = defender(ctx)?;
    let listing = list(&api, &real_pace()).await?;
    let rows = judge(&declared.bundle, &listing);
    if ctx.json {
        print_json(&status_json(&declared.source, &rows));
    } else {
        print!("{}", status_text(&declared.source, &rows));
    }
    Ok(u8::from(!rows.iter().all(Row::ready)))
}
