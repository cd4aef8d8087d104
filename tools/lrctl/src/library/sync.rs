//! `lrctl library sync`: applies the verdicts (upload what is missing, replace only what the
//! verdict says, never delete, never touch a refused file), then lists again and prints the status.

use serde_json::{Value, json};
use shared::defender::DefenderError;
use shared::library::{Bundle, Verdict};
use shared::ports::LibraryApi;

use super::status::{Row, judge, status_json, status_text};
use super::{Pace, declared, defender, failed, list, nothing_declared, real_pace, retrying};
use crate::cli::SyncArgs;
use crate::context::Ctx;
use crate::error::Result;
use crate::output::{out, print_json};

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
