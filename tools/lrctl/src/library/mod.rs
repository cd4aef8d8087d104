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

use shared::adapters::secrets::SecretsManagerCredentials;
use shared::alerts::playbook::Playbooks;
use shared::defender::{DefenderClient, DefenderError, LibraryFile, TokenProvider, http_client};
use shared::library::Bundle;
use shared::ports::{BoxFuture, LibraryApi};

use crate::cli::{LibraryCommand, PlaybooksArg};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{err, out, print_json};

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
        let (_, bundle) = shared::entry::load_playbooks(None, None, &ctx.sdk)
            .await
            .map_err(|e| Error::failed(format!("the bundled playbooks: {e}")))?;
        return Ok(Declared {
            source: "the bundled playbooks".into(),
            bundle,
        });
    };
    let bundle = if chosen.starts_with("s3://") {
        shared::entry::load_playbooks(Some(&chosen), None, &ctx.sdk)
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

mod status;
mod sync;

pub use status::{Row, judge, status, status_json, status_text};
pub use sync::{Step, Synced, apply, sync};

#[cfg(test)]
mod tests;
