//! `lrctl library status|sync`: the library files a playbook file declares, against the tenant's
//! live response library. Each file is looked up under the name the library keeps it by (a bundled
//! file's versioned name, [`shared::library::versioned_name`]: `triage.ps1` is kept as
//! `triage-6bf94f0d21df.ps1`; an external file's own name) and gets the verdict submit would give
//! it before a run ([`shared::library::judge`], the one rule set: never decided here), so that an
//! operator sees before a deploy what the pipeline will upload, replace or refuse, and can do it
//! ahead of time. An entry under a bundled file's plain name, or under another version's name, is
//! not this bundle's: it is neither judged nor touched. The status names a bundled file by its
//! library name with the playbook's name after it.
//!
//! `status` lists once and exits 0 only when every file is ready. `sync` applies the verdicts:
//! uploads what is missing under its library name (without `OverrideIfExists`, so nothing someone
//! put there since the listing is overwritten), replaces only what the verdict says (a copy the
//! pipeline uploaded under that name with other bytes, or someone else's file under it where the
//! playbook says `replace_unmanaged`), never deletes (older versions stay, for runs that still name
//! them), never touches a refused file; then lists again and prints the final status. Every call
//! waits out a 429 (Retry-After, or 10 s) up to [`MAX_RETRIES`] times.
//!
//! Defender is reached as the functions reach it (the MDE_* settings, the credentials secret);
//! listing and uploading need the app's `Library.Manage` permission. File names, hashes and
//! descriptions come from the tenant and are printed through [`crate::output`].

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use shared::adapters::secrets::SecretsManagerCredentials;
use shared::alerts::playbook::Playbooks;
use shared::defender::{DefenderClient, DefenderError, LibraryFile, TokenProvider, http_client};
use shared::library::verdict::is_managed;
use shared::library::{Bundle, BundleFile, Listing, Verdict};
use shared::ports::{BoxFuture, LibraryApi};

use crate::cli::{LibraryCommand, PlaybooksArg, SyncArgs};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{err, out, print_json, table};

/// What the Defender app needs for `library`, said in `--help` and when Defender answers 401/403.
pub const PERMISSION: &str = "the Defender app registration needs the Library.Manage application \
     permission (WindowsDefenderATP API), with admin consent";

/// Retries of one call that Defender answered with 429.
pub const MAX_RETRIES: u32 = 5;

/// The wait after a 429 without `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

pub async fn command(ctx: &Ctx, cmd: &LibraryCommand) -> Result<u8> {
    match cmd {
        LibraryCommand::Status(args) => status(ctx, args).await,
        LibraryCommand::Sync(args) => sync(ctx, args).await,
    }
}

/// The declared files and where they were declared (for output).
pub struct Declared {
    /// `the bundled playbooks`, or `playbook file PATH|URI`.
    pub source: String,
    pub bundle: Bundle,
}

/// The playbooks `--playbooks` (else `LR_PLAYBOOKS`) names, or the bundled ones, with their
/// library files: read and checked as the functions read them at cold start.
pub async fn declared(ctx: &Ctx, arg: &PlaybooksArg) -> Result<Declared> {
    let chosen = arg
        .playbooks
        .clone()
        .or_else(|| ctx.settings.playbooks.clone())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let Some(chosen) = chosen else {
        let (_, bundle) = shared::entry::load_playbooks(None, &ctx.sdk)
            .await
            .map_err(|e| Error::failed(format!("the bundled playbooks: {e}")))?;
        return Ok(Declared {
            source: "the bundled playbooks".into(),
            bundle,
        });
    };
    let bundle = if chosen.starts_with("s3://") {
        shared::entry::load_playbooks(Some(&chosen), &ctx.sdk)
            .await
            .map_err(|e| Error::failed(format!("playbook file {chosen}: {e}")))?
            .1
    } else {
        from_file(Path::new(&chosen))?
    };
    Ok(Declared {
        source: format!("playbook file {chosen}"),
        bundle,
    })
}

/// A local playbook file's library files, the managed ones read from its library folder beside it.
pub fn from_file(path: &Path) -> Result<Bundle> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Usage(format!(
            "cannot read the playbook file {} (--playbooks / LR_PLAYBOOKS): {e}",
            path.display()
        ))
    })?;
    let named = |e: String| Error::failed(format!("playbook file {}: {e}", path.display()));
    let playbooks = Playbooks::from_toml(&text).map_err(|e| named(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    Bundle::from_dir(
        playbooks.library_files(),
        &dir.join(playbooks.library_folder()),
    )
    .map_err(|e| named(e.to_string()))
}

/// The Defender client the functions would build from these settings.
fn defender(ctx: &Ctx) -> Result<DefenderClient<SecretsManagerCredentials>> {
    let cfg = ctx.settings.defender()?;
    let http = http_client(cfg.http_timeout).map_err(|e| Error::failed(e.to_string()))?;
    let creds = SecretsManagerCredentials::new(
        aws_sdk_secretsmanager::Client::new(&ctx.sdk),
        &cfg.credentials_secret_id,
    );
    let auth = TokenProvider::new(creds, http.clone(), &cfg.login_base, &cfg.scope);
    Ok(DefenderClient::new(http, &cfg.api_base, auth))
}

/// How a 429 is waited out and said: real sleeps and stderr for lrctl, recorded in tests.
pub struct Pace<'a> {
    pub sleep: &'a (dyn Fn(Duration) -> BoxFuture<'static, ()> + Sync),
    pub note: &'a (dyn Fn(&str) + Sync),
}

/// `call`, again after each 429 (waiting Retry-After, or [`DEFAULT_RETRY_AFTER`]), at most
/// [`MAX_RETRIES`] times; any other answer is returned as it is.
pub async fn retrying<'f, T>(
    pace: &Pace<'_>,
    what: &str,
    call: impl Fn() -> BoxFuture<'f, std::result::Result<T, DefenderError>>,
) -> std::result::Result<T, DefenderError> {
    let mut retries = 0;
    loop {
        match call().await {
            Err(DefenderError::RateLimited { retry_after }) if retries < MAX_RETRIES => {
                retries += 1;
                let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                (pace.note)(&format!(
                    "Defender throttled {what} (429): waiting {}s, then retry {retries} of {MAX_RETRIES}",
                    wait.as_secs()
                ));
                (pace.sleep)(wait).await;
            }
            r => return r,
        }
    }
}

/// A failed library call as lrctl reports it: what was being done, Defender's answer, and what to
/// check (the permission on 401/403).
pub fn failed(doing: &str, e: DefenderError) -> Error {
    let hint = match &e {
        DefenderError::Unauthorized { .. } => format!(" ({PERMISSION})"),
        DefenderError::Credentials(_) => " (check MDE_CREDENTIALS_SECRET_ID and its tenant_id, \
             client_id and client_secret, and MDE_CLOUD or MDE_LOGIN_BASE_URL)"
            .into(),
        DefenderError::RateLimited { .. } => {
            format!(" (still throttled after {MAX_RETRIES} retries: try again later)")
        }
        _ => String::new(),
    };
    Error::failed(format!("{doing}: {e}{hint}"))
}

/// The tenant's library, listed (429s waited out).
pub async fn list(api: &dyn LibraryApi, pace: &Pace<'_>) -> Result<Vec<LibraryFile>> {
    retrying(pace, "the library listing", || api.list())
        .await
        .map_err(|e| failed("listing Defender's live response library failed", e))
}

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

    fn cells(&self) -> Vec<String> {
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

    fn json(&self) -> Value {
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

fn nothing_declared(ctx: &Ctx, source: &str) -> u8 {
    if ctx.json {
        print_json(&status_json(source, &[]));
    } else {
        out(format!("{source} declare no library files"));
    }
    0
}

fn real_pace() -> Pace<'static> {
    Pace {
        sleep: &|d| Box::pin(tokio::time::sleep(d)),
        note: &|line| err(line),
    }
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

/// What `sync` did (or, with `--dry-run`, would do) about one file that was not ready.
#[derive(Debug, Clone)]
pub struct Step {
    /// The library name (see [`Row::name`]).
    pub name: String,
    /// The name the playbook file declares it by.
    pub playbook_name: String,
    /// upload, replace or refuse.
    pub action: &'static str,
    /// The line printed for it.
    pub line: String,
    /// Whether the upload was made.
    pub done: bool,
    /// Why not: the refusal, or the upload's failure.
    pub error: Option<String>,
}

/// A sync: its steps, the verdicts it acted on, and the status listed after it (`None` for a dry
/// run, which changes nothing).
pub struct Synced {
    pub steps: Vec<Step>,
    pub before: Vec<Row>,
    pub after: Option<Vec<Row>>,
}

impl Synced {
    /// Whether it ended with every file ready (a dry run: with nothing refused).
    pub fn ok(&self) -> bool {
        let clean = self.steps.iter().all(|s| s.error.is_none());
        match &self.after {
            Some(after) => clean && after.iter().all(Row::ready),
            None => clean,
        }
    }
}

/// Lists, then acts on each file's verdict (see the module doc), saying each action as it goes;
/// then lists again (not in a dry run). `Err` when listing fails, or an upload is refused for
/// want of the permission (the rest would be too).
pub async fn apply(
    api: &dyn LibraryApi,
    bundle: &Bundle,
    dry_run: bool,
    pace: &Pace<'_>,
    say: &mut dyn FnMut(&str),
) -> Result<Synced> {
    let before = judge(bundle, &list(api, pace).await?);
    let mut steps = Vec::new();
    for row in &before {
        let name = row.name();
        let mut step = |action: &'static str, line: String, done, error| {
            say(&line);
            steps.push(Step {
                name: name.clone(),
                playbook_name: row.playbook_name().to_string(),
                action,
                line,
                done,
                error,
            });
        };
        let replace = match &row.verdict {
            Verdict::Ready(_) => continue,
            Verdict::Refuse(reason) => {
                step(
                    "refuse",
                    format!("refused {name}: {reason}"),
                    false,
                    Some(reason.clone()),
                );
                continue;
            }
            Verdict::Upload { replace } => *replace,
        };
        let new = row.file.sha256.clone().unwrap_or_default();
        let (action, what) = match row.replaces() {
            Some(what) => (
                "replace",
                format!("{name}, {what} (SHA-256 {} -> {new})", row.library_sha256()),
            ),
            None => ("upload", format!("{name} (SHA-256 {new})")),
        };
        let (verb, did) = if replace {
            ("replace", "replaced")
        } else {
            ("upload", "uploaded")
        };
        if dry_run {
            step(action, format!("would {verb} {what}"), false, None);
            continue;
        }
        let upload = row.file.upload(replace);
        match retrying(pace, &format!("the upload of {name}"), || {
            api.upload(&upload)
        })
        .await
        {
            Ok(_) => step(action, format!("{did} {what}"), true, None),
            Err(e @ DefenderError::Unauthorized { .. }) => {
                return Err(failed(&format!("uploading {name} failed"), e));
            }
            Err(e) => {
                let why = failed(&format!("could not {verb} {name}"), e).to_string();
                step(action, why.clone(), false, Some(why));
            }
        }
    }
    let after = if dry_run {
        None
    } else {
        Some(judge(bundle, &list(api, pace).await?))
    };
    Ok(Synced {
        steps,
        before,
        after,
    })
}

pub async fn sync(ctx: &Ctx, args: &SyncArgs) -> Result<u8> {
    let declared = declared(ctx, &args.playbooks).await?;
    if declared.bundle.is_empty() {
        return Ok(nothing_declared(ctx, &declared.source));
    }
    let api = defender(ctx)?;
    let json = ctx.json;
    let mut say = |line: &str| {
        if !json {
            out(line);
        }
    };
    let synced = apply(&api, &declared.bundle, args.dry_run, &real_pace(), &mut say).await?;
    let status = synced.after.as_ref().unwrap_or(&synced.before);
    if json {
        let steps: Vec<Value> = synced
            .steps
            .iter()
            .map(|s| {
                json!({"name": s.name, "playbook_name": s.playbook_name,
                       "library_name": s.name, "action": s.action, "done": s.done,
                       "error": s.error, "message": s.line})
            })
            .collect();
        print_json(&json!({
            "dry_run": args.dry_run,
            "steps": steps,
            "status": status_json(&declared.source, status),
            "ok": synced.ok(),
        }));
    } else {
        if synced.steps.is_empty() {
            out("nothing to do: every declared file is in sync");
        }
        out("");
        out(if args.dry_run {
            "status (dry run: nothing changed):"
        } else {
            "status after sync:"
        });
        print!("{}", status_text(&declared.source, status));
    }
    Ok(u8::from(!synced.ok()))
}

#[cfg(test)]
mod tests;
