//! Playbooks: rules that pick one for an alert, and the commands it runs. An alert only fills
//! declared placeholders, each validated by its kind; it never supplies a command. Where a kind
//! may go and how its value is written there is in [`super::render`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::kinds::{Placeholder, PlaceholderKind};
use super::kinds::{Slot, check_in_slot};
use super::render::{self, valid_library_name};
use super::{Alert, AlertError, AlertFormat};
use crate::codes::RejectCode;
use crate::defender::{Command, CommandType};
use crate::library::LibraryFileSpec;

/// The playbooks shipped with the project (`shared/playbooks/default.toml`).
pub const BUNDLED: &str = include_str!("../../../playbooks/default.toml");

/// A playbooks TOML file as written: `[[playbooks]]` tables, tried in file order, and the library
/// files their commands name (`[[library_files]]`), shipped in `library_folder` beside the file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookFile {
    /// The folder, beside this file, holding the library files it manages (`library` if unset):
    /// a relative path of plain names, no `..`.
    #[serde(default = "default_library_folder")]
    pub library_folder: String,
    /// Every library file a `PutFile` or `RunScript` names, declared once for the file.
    #[serde(default)]
    pub library_files: Vec<LibraryFileSpec>,
    /// The playbooks, in the order they are tried.
    pub playbooks: Vec<Playbook>,
}

fn default_library_folder() -> String {
    "library".into()
}

/// One playbook: when it applies, the commands it runs, and the placeholders an alert may fill.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Unique name (1-64 of letters, digits, `-`, `_`; compared case-insensitively); an alert may
    /// ask for it by name.
    pub name: String,
    /// Free text for people; empty if absent.
    #[serde(default)]
    pub description: String,
    /// How long a run may take from intake to the last result, before it is cancelled.
    #[serde(default = "default_deadline")]
    pub deadline_minutes: u64,
    /// Every given condition must hold (lists: any of the values; case-insensitive).
    #[serde(default, rename = "match")]
    pub rule: Rule,
    /// The live response commands, in order (at least one). Only `RunScript` args and `GetFile`
    /// paths may hold `{name}` placeholders.
    pub commands: Vec<CommandTemplate>,
    /// The placeholders an alert may fill, by name, each with its kind; an alert's other values
    /// are ignored.
    #[serde(default)]
    pub placeholders: BTreeMap<String, Placeholder>,
}

fn default_deadline() -> u64 {
    240
}

/// When a playbook applies to an alert; an empty list places no condition.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Any of these alert categories.
    #[serde(default)]
    pub category: Vec<String>,
    /// Any of these severities.
    #[serde(default)]
    pub severity: Vec<String>,
    /// Any of these alert sources.
    #[serde(default)]
    pub source: Vec<String>,
    /// The title contains any of these substrings.
    #[serde(default)]
    pub title_contains: Vec<String>,
    /// Only alerts that carry these parameters.
    #[serde(default)]
    pub has_parameters: Vec<String>,
}

/// One command of a playbook, before an alert's values are filled in; `type` in TOML names
/// the variant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "type")]
pub enum CommandTemplate {
    /// Put a library file on the machine.
    PutFile {
        /// The library file name; no placeholders.
        file: String,
    },
    /// Run a library script.
    RunScript {
        /// The library script name; no placeholders.
        script: String,
        /// The script's arguments; placeholders only as whole space-separated arguments.
        #[serde(default)]
        args: Option<String>,
    },
    /// Collect a file from the machine.
    GetFile {
        /// The file's path on the machine; may hold placeholders.
        path: String,
    },
}

/// A playbook file that cannot be used; fix the file where `field` says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("playbook {playbook}: {field}: {problem}")]
pub struct PlaybookError {
    /// The playbook's name, or `(file)` for a problem with the whole file.
    pub playbook: String,
    /// Where in the playbook, e.g. `name`, `commands[2]`, `toml`.
    pub field: String,
    /// What is wrong, in words.
    pub problem: String,
}

/// What intake runs for an alert (see [`Playbooks::plan`]).
#[derive(Debug)]
pub struct Plan<'a> {
    /// The playbook that runs.
    pub playbook: &'a Playbook,
    /// SHA-256 of the playbook file it comes from ([`Playbooks::file_sha256`]).
    pub file_sha256: &'a str,
    /// Its commands with the alert's values filled in, ready for Defender.
    pub commands: Vec<Command>,
    /// Values of the alert a playbook refused: that playbook did not run (another did, or the run
    /// went on without the values).
    pub refused: Vec<RefusedParameter>,
}

/// An alert's value a playbook refused, and why (kept in the run's record and manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedParameter {
    /// The alert parameter's name.
    pub name: String,
    /// The playbook that refused it.
    pub playbook: String,
    /// Why, e.g. the kind's check or the place it would go.
    pub reason: String,
}

/// A loaded, validated set of playbooks, tried in order, with the library files they name.
#[derive(Debug, Clone)]
pub struct Playbooks {
    list: Vec<Playbook>,
    library_folder: String,
    library_files: Vec<LibraryFileSpec>,
    file_sha256: String,
}

impl Playbooks {
    /// The playbooks shipped with the project ([`BUNDLED`]); an error means the shipped file is broken.
    pub fn bundled() -> Result<Self, PlaybookError> {
        Self::from_toml(BUNDLED)
    }

    /// Parses and validates a playbooks TOML file; the error names the playbook and field to fix.
    /// Names must be unique and the file must hold at least one playbook.
    pub fn from_toml(text: &str) -> Result<Self, PlaybookError> {
        let file: PlaybookFile = toml::from_str(text).map_err(|e| PlaybookError {
            playbook: "(file)".into(),
            field: "toml".into(),
            problem: e.to_string(),
        })?;
        let file_error = |field: &str, problem: String| PlaybookError {
            playbook: "(file)".into(),
            field: field.into(),
            problem,
        };
        let folder = &file.library_folder;
        if !folder.split('/').all(valid_library_name) {
            return Err(file_error(
                "library_folder",
                format!(
                    "{folder:?} must be a relative path of plain names (letters, digits, '-', '_', '.'; no '..')"
                ),
            ));
        }
        let mut declared = std::collections::BTreeSet::new();
        for (i, f) in file.library_files.iter().enumerate() {
            if let Some(problem) = f.problem() {
                return Err(file_error(&format!("library_files[{i}]"), problem));
            }
            if !declared.insert(f.name.to_ascii_lowercase()) {
                return Err(file_error(
                    &format!("library_files[{i}]"),
                    format!("{} is declared twice", f.name),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &file.playbooks {
            p.validate()?;
            if !seen.insert(p.name.to_ascii_lowercase()) {
                return Err(p.error("name", "appears twice"));
            }
            for (i, c) in p.commands.iter().enumerate() {
                let name = match c {
                    CommandTemplate::PutFile { file } => file,
                    CommandTemplate::RunScript { script, .. } => script,
                    CommandTemplate::GetFile { .. } => continue,
                };
                if !declared.contains(&name.to_ascii_lowercase()) {
                    return Err(p.error(
                        &format!("commands[{i}]"),
                        format!(
                            "library file {name} is not declared: add a [[library_files]] entry naming it (shipped in the {folder}/ folder beside the playbook file, or `external = true` if someone else keeps it in Defender's library)"
                        ),
                    ));
                }
            }
        }
        if file.playbooks.is_empty() {
            return Err(file_error("playbooks", "no playbooks defined".into()));
        }
        // A file a PutFile puts lands on the device under its library name, which the commands
        // after it use: it keeps its name in the library (see `LibraryFileSpec::keeps_name`).
        let mut library_files = file.library_files;
        for spec in &mut library_files {
            spec.keeps_name = file.playbooks.iter().any(|p| {
                p.commands.iter().any(|c| {
                    matches!(c, CommandTemplate::PutFile { file } if file.eq_ignore_ascii_case(&spec.name))
                })
            });
        }
        Ok(Self {
            list: file.playbooks,
            library_folder: file.library_folder,
            library_files,
            file_sha256: crate::hash::sha256_hex(text.as_bytes()),
        })
    }

    /// Hex SHA-256 of the playbook file's exact text: what a deployment pins
    /// (`PLAYBOOKS_SHA256`), and what a run records as the file it was rendered with, so that
    /// submit acts only on runs rendered with the file it loaded.
    pub fn file_sha256(&self) -> &str {
        &self.file_sha256
    }

    /// The folder, relative to the playbook file, that holds the library files it manages.
    pub fn library_folder(&self) -> &str {
        &self.library_folder
    }

    /// The library files the playbooks name, as declared.
    pub fn library_files(&self) -> &[LibraryFileSpec] {
        &self.library_files
    }

    /// Every playbook, in the order they are tried.
    pub fn all(&self) -> &[Playbook] {
        &self.list
    }

    /// What to run for an alert: the playbook, its commands, and the values it went on without.
    ///
    /// A Defender alert's values come from the endpoint (an attacker may have named the file), so
    /// a value is not allowed to stop its alert: the first matching playbook that takes every value
    /// as it is runs; if none does, the values they refused are dropped (and recorded, with the
    /// reasons) and the playbooks are tried again without them. An `lr.alert/v1` alert's values
    /// are its sender's, and it may name its playbook: a refused value refuses the alert.
    pub fn plan(&self, alert: &Alert) -> Result<Plan<'_>, AlertError> {
        if alert.format == AlertFormat::Native || alert.playbook.is_some() {
            let playbook = self.select(alert)?;
            let commands = playbook.render(alert)?;
            return Ok(Plan {
                playbook,
                file_sha256: &self.file_sha256,
                commands,
                refused: Vec::new(),
            });
        }
        let mut alert = alert.clone();
        let mut refused: Vec<RefusedParameter> = Vec::new();
        let noted = |mut e: AlertError, refused: &[RefusedParameter]| {
            for r in refused {
                e.message.push_str(&format!(
                    "; parameter {} was refused by playbook {}: {}",
                    r.name, r.playbook, r.reason
                ));
            }
            e
        };
        // Each round drops at least one value the alert carries, so the rounds end.
        loop {
            let mut this_round = Vec::new();
            for playbook in self.list.iter().filter(|p| p.rule.matches(&alert)) {
                let bad = playbook.refused_values(&alert);
                if bad.is_empty() {
                    // What earlier playbooks refused is kept: the run says why they did not run.
                    refused.extend(this_round);
                    let commands = playbook.render(&alert).map_err(|e| noted(e, &refused))?;
                    return Ok(Plan {
                        playbook,
                        file_sha256: &self.file_sha256,
                        commands,
                        refused,
                    });
                }
                this_round.extend(bad.into_iter().map(|(name, reason)| RefusedParameter {
                    name,
                    playbook: playbook.name.clone(),
                    reason,
                }));
            }
            if this_round.is_empty() {
                return Err(noted(
                    self.select(&alert).err().unwrap_or_else(|| AlertError {
                        code: RejectCode::NoPlaybook,
                        message: "no playbook takes this alert".into(),
                    }),
                    &refused,
                ));
            }
            for r in &this_round {
                alert.parameters.remove(&r.name);
            }
            refused.extend(this_round);
        }
    }

    /// The playbook for an alert: the one it names, else the first whose rule matches.
    pub fn select(&self, alert: &Alert) -> Result<&Playbook, AlertError> {
        if let Some(name) = &alert.playbook {
            return self
                .list
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| AlertError {
                    code: RejectCode::UnknownPlaybook,
                    message: format!(
                        "the alert asks for playbook {name:?}, which is not configured (known: {})",
                        self.names()
                    ),
                });
        }
        self.list
            .iter()
            .find(|p| p.rule.matches(alert))
            .ok_or_else(|| AlertError {
                code: RejectCode::NoPlaybook,
                message: format!(
                    "no playbook matches category {:?}, severity {:?}, source {:?}, title {:?}",
                    alert.category, alert.severity, alert.source, alert.title
                ),
            })
    }

    fn names(&self) -> String {
        self.list
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Rule {
    /// Whether every condition holds for `alert` (lists: any value, case-insensitive).
    pub fn matches(&self, alert: &Alert) -> bool {
        let any = |list: &[String], v: &str| {
            list.is_empty() || list.iter().any(|x| x.eq_ignore_ascii_case(v))
        };
        let title = alert.title.to_lowercase();
        any(&self.category, &alert.category)
            && any(&self.severity, &alert.severity)
            && any(&self.source, &alert.source)
            && (self.title_contains.is_empty()
                || self
                    .title_contains
                    .iter()
                    .any(|t| title.contains(&t.to_lowercase())))
            && self
                .has_parameters
                .iter()
                .all(|p| alert.parameters.contains_key(p))
    }
}

impl Playbook {
    /// The alert's values this playbook would refuse, by their kind or by a place they would go,
    /// with the reason.
    pub fn refused_values(&self, alert: &Alert) -> Vec<(String, String)> {
        self.placeholders
            .iter()
            .filter_map(|(name, ph)| {
                let v = alert.parameters.get(name)?;
                let problem = ph.kind.check(v).err().or_else(|| {
                    self.slots_of(name)
                        .find_map(|slot| check_in_slot(ph.kind, v, slot).err())
                })?;
                Some((name.clone(), problem))
            })
            .collect()
    }

    /// Where a placeholder goes in this playbook's commands.
    fn slots_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Slot> + 'a {
        let tag = format!("{{{name}}}");
        self.commands.iter().filter_map(move |c| match c {
            CommandTemplate::RunScript { args: Some(a), .. } if a.contains(&tag) => Some(Slot::Arg),
            CommandTemplate::GetFile { path } if path.contains(&tag) => Some(Slot::Path),
            _ => None,
        })
    }

    fn error(&self, field: &str, problem: impl Into<String>) -> PlaybookError {
        PlaybookError {
            playbook: self.name.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// `deadline_minutes` as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_minutes * 60)
    }

    /// Hex SHA-256 of the playbook's canonical JSON (fields in declaration order, placeholders
    /// sorted by name): names exactly what ran.
    pub fn sha256(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::hash::sha256_hex(&json)
    }

    fn validate(&self) -> Result<(), PlaybookError> {
        if !(1..=64).contains(&self.name.len())
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(self.error("name", "must be 1-64 of letters, digits, '-' and '_'"));
        }
        if self.commands.is_empty() {
            return Err(self.error("commands", "at least one command is needed"));
        }
        if !(5..=3 * 24 * 60).contains(&self.deadline_minutes) {
            return Err(self.error("deadline_minutes", "must be between 5 and 4320 (3 days)"));
        }
        let mut used = std::collections::BTreeSet::new();
        for (i, c) in self.commands.iter().enumerate() {
            let field = format!("commands[{i}]");
            let names = match c {
                CommandTemplate::PutFile { file } => {
                    if !valid_library_name(file) {
                        return Err(self.error(
                            &field,
                            "file must be a library file name (letters, digits, '-', '_', '.')",
                        ));
                    }
                    vec![]
                }
                CommandTemplate::RunScript { script, args } => {
                    if !valid_library_name(script) {
                        return Err(self.error(
                            &field,
                            "script must be a library file name (letters, digits, '-', '_', '.')",
                        ));
                    }
                    match args {
                        Some(a) => render::check_args_template(a, &self.placeholders),
                        None => Ok(vec![]),
                    }
                    .map_err(|p| self.error(&field, p))?
                }
                CommandTemplate::GetFile { path } => {
                    render::check_path_template(path, &self.placeholders)
                        .map_err(|p| self.error(&field, p))?
                }
            };
            used.extend(names);
        }
        for name in self.placeholders.keys() {
            if !used.contains(name) {
                return Err(self.error(
                    &format!("placeholders.{name}"),
                    "is declared but never used",
                ));
            }
        }
        Ok(())
    }

    /// The commands for this alert, placeholders filled with validated values in one pass, each
    /// command re-checked by [`render::check_rendered`].
    pub fn render(&self, alert: &Alert) -> Result<Vec<Command>, AlertError> {
        let mut values = BTreeMap::new();
        for (name, ph) in &self.placeholders {
            match alert.parameters.get(name) {
                Some(v) => {
                    ph.kind.check(v).map_err(|problem| AlertError {
                        code: RejectCode::InvalidParameter,
                        message: format!("parameter {name} for playbook {}: {problem}", self.name),
                    })?;
                    values.insert(name.clone(), (ph.kind, v.clone()));
                }
                None if ph.required => {
                    return Err(AlertError {
                        code: RejectCode::MissingParameter,
                        message: format!(
                            "playbook {} needs parameter {name} ({:?})",
                            self.name, ph.kind
                        ),
                    });
                }
                None => {}
            }
        }
        let fill = |t: &str, slot| render::fill(&self.name, t, slot, &values);
        let mut commands = Vec::new();
        for c in &self.commands {
            // A command whose optional placeholder has no value is left out.
            let cmd = match c {
                CommandTemplate::PutFile { file } => Some(Command::put_file(file)),
                CommandTemplate::RunScript { script, args } => match args {
                    Some(a) => fill(a, Slot::Arg)?.map(|a| Command::run_script(script, Some(&a))),
                    None => Some(Command::run_script(script, None)),
                },
                CommandTemplate::GetFile { path } => {
                    fill(path, Slot::Path)?.map(|p| Command::get_file(&p))
                }
            };
            if let Some(cmd) = &cmd {
                render::check_rendered(cmd).map_err(|problem| AlertError {
                    code: RejectCode::UnsafeRender,
                    message: format!(
                        "playbook {}: a rendered {:?} command failed the final check: {problem}",
                        self.name, cmd.kind
                    ),
                })?;
            }
            commands.extend(cmd);
        }
        // Defender runs PutFile, then RunScript, then GetFile commands; keep that order.
        commands.sort_by_key(|c| match c.kind {
            CommandType::PutFile => 0,
            CommandType::RunScript => 1,
            CommandType::GetFile => 2,
        });
        if commands.is_empty() {
            return Err(AlertError {
                code: RejectCode::NothingToRun,
                message: format!("playbook {} renders no command for this alert", self.name),
            });
        }
        Ok(commands)
    }
}

#[cfg(test)]
mod tests;
