//! Playbooks: rules that pick one for an alert, and the commands it runs. An alert only fills
//! declared placeholders, each validated by its kind; it never supplies a command.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Alert, AlertError};
use crate::defender::{Command, CommandType};

/// The playbooks shipped with the project (`shared/playbooks/default.toml`).
pub const BUNDLED: &str = include_str!("../../playbooks/default.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookFile {
    pub playbooks: Vec<Playbook>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How long a run may take from intake to the last result, before it is cancelled.
    #[serde(default = "default_deadline")]
    pub deadline_minutes: u64,
    /// Every given condition must hold (lists: any of the values; case-insensitive).
    #[serde(default, rename = "match")]
    pub rule: Rule,
    pub commands: Vec<CommandTemplate>,
    #[serde(default)]
    pub placeholders: BTreeMap<String, Placeholder>,
}

fn default_deadline() -> u64 {
    240
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub category: Vec<String>,
    #[serde(default)]
    pub severity: Vec<String>,
    #[serde(default)]
    pub source: Vec<String>,
    #[serde(default)]
    pub title_contains: Vec<String>,
    /// Only alerts that carry these parameters.
    #[serde(default)]
    pub has_parameters: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "type")]
pub enum CommandTemplate {
    PutFile {
        file: String,
    },
    RunScript {
        script: String,
        #[serde(default)]
        args: Option<String>,
    },
    GetFile {
        path: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Placeholder {
    pub kind: PlaceholderKind,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaceholderKind {
    /// An absolute Windows path: `C:\...`, no `..`, no device or UNC paths, no wildcards or quotes.
    WindowsPath,
    /// A script argument token: letters, digits and `-_.,:=` only, no spaces or quotes.
    ScriptArg,
    /// A SHA-256 in hex.
    Sha256,
    /// A process name such as `OfficeClickToRun` (letters, digits, `-_.`).
    ProcessName,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("playbook {playbook}: {field}: {problem}")]
pub struct PlaybookError {
    pub playbook: String,
    pub field: String,
    pub problem: String,
}

/// A loaded, validated set of playbooks, tried in order.
#[derive(Debug, Clone)]
pub struct Playbooks(Vec<Playbook>);

impl Playbooks {
    pub fn bundled() -> Result<Self, PlaybookError> {
        Self::from_toml(BUNDLED)
    }

    pub fn from_toml(text: &str) -> Result<Self, PlaybookError> {
        let file: PlaybookFile = toml::from_str(text).map_err(|e| PlaybookError {
            playbook: "(file)".into(),
            field: "toml".into(),
            problem: e.to_string(),
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for p in &file.playbooks {
            p.validate()?;
            if !seen.insert(p.name.to_ascii_lowercase()) {
                return Err(p.error("name", "appears twice"));
            }
        }
        if file.playbooks.is_empty() {
            return Err(PlaybookError {
                playbook: "(file)".into(),
                field: "playbooks".into(),
                problem: "no playbooks defined".into(),
            });
        }
        Ok(Self(file.playbooks))
    }

    pub fn all(&self) -> &[Playbook] {
        &self.0
    }

    /// The playbook for an alert: the one it names, else the first whose rule matches.
    pub fn select(&self, alert: &Alert) -> Result<&Playbook, AlertError> {
        if let Some(name) = &alert.playbook {
            return self
                .0
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| AlertError {
                    code: "unknown_playbook",
                    message: format!(
                        "the alert asks for playbook {name:?}, which is not configured (known: {})",
                        self.names()
                    ),
                });
        }
        self.0
            .iter()
            .find(|p| p.rule.matches(alert))
            .ok_or_else(|| AlertError {
                code: "no_playbook",
                message: format!(
                    "no playbook matches category {:?}, severity {:?}, source {:?}, title {:?}",
                    alert.category, alert.severity, alert.source, alert.title
                ),
            })
    }

    fn names(&self) -> String {
        self.0
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Rule {
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
    fn error(&self, field: &str, problem: impl Into<String>) -> PlaybookError {
        PlaybookError {
            playbook: self.name.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_minutes * 60)
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
            let texts: Vec<&str> = match c {
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
                    args.iter().map(String::as_str).collect()
                }
                CommandTemplate::GetFile { path } => vec![path.as_str()],
            };
            for t in texts {
                for name in placeholders_in(t).map_err(|p| self.error(&field, p))? {
                    if !self.placeholders.contains_key(&name) {
                        return Err(self.error(
                            &field,
                            format!("uses {{{name}}}, which is not declared under placeholders"),
                        ));
                    }
                    used.insert(name);
                }
            }
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

    /// The commands for this alert, placeholders filled with validated values.
    pub fn render(&self, alert: &Alert) -> Result<Vec<Command>, AlertError> {
        let mut values = BTreeMap::new();
        for (name, ph) in &self.placeholders {
            match alert.parameters.get(name) {
                Some(v) => {
                    ph.kind.check(v).map_err(|problem| AlertError {
                        code: "invalid_parameter",
                        message: format!("parameter {name} for playbook {}: {problem}", self.name),
                    })?;
                    values.insert(name.clone(), v.clone());
                }
                None if ph.required => {
                    return Err(AlertError {
                        code: "missing_parameter",
                        message: format!(
                            "playbook {} needs parameter {name} ({:?})",
                            self.name, ph.kind
                        ),
                    });
                }
                None => {}
            }
        }
        let fill = |t: &str| -> Option<String> {
            let mut out = t.to_string();
            for name in placeholders_in(t).unwrap_or_default() {
                let v = values.get(&name)?;
                out = out.replace(&format!("{{{name}}}"), v);
            }
            Some(out)
        };
        let mut commands = Vec::new();
        for c in &self.commands {
            // A command whose optional placeholder has no value is left out.
            let cmd = match c {
                CommandTemplate::PutFile { file } => Some(Command::put_file(file)),
                CommandTemplate::RunScript { script, args } => match args {
                    Some(a) => fill(a).map(|a| Command::run_script(script, Some(&a))),
                    None => Some(Command::run_script(script, None)),
                },
                CommandTemplate::GetFile { path } => fill(path).map(|p| Command::get_file(&p)),
            };
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
                code: "nothing_to_run",
                message: format!("playbook {} renders no command for this alert", self.name),
            });
        }
        Ok(commands)
    }
}

fn valid_library_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `{name}` placeholders in a template.
fn placeholders_in(t: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {t:?}"))?;
        let name = &after[..end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("placeholder {{{name}}} must be a-z 0-9 _"));
        }
        out.push(name.to_string());
        rest = &after[end + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray '}}' in {t:?}"));
    }
    Ok(out)
}

impl PlaceholderKind {
    pub fn check(self, v: &str) -> Result<(), String> {
        match self {
            Self::WindowsPath => check_windows_path(v),
            Self::ScriptArg => {
                if (1..=128).contains(&v.len())
                    && v.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b'-' | b'_' | b'.' | b',' | b':' | b'=')
                    })
                {
                    Ok(())
                } else {
                    Err("a script argument is 1-128 of letters, digits and - _ . , : = (no spaces, quotes or shell characters)".into())
                }
            }
            Self::Sha256 => {
                if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(())
                } else {
                    Err("must be 64 hexadecimal characters".into())
                }
            }
            Self::ProcessName => {
                if (1..=64).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    Ok(())
                } else {
                    Err("a process name is 1-64 of letters, digits, '-', '_' and '.'".into())
                }
            }
        }
    }
}

fn check_windows_path(v: &str) -> Result<(), String> {
    if v.len() > 260 {
        return Err("a path is at most 260 characters".into());
    }
    let b = v.as_bytes();
    if b.len() < 4 || !b[0].is_ascii_alphabetic() || b[1] != b':' || b[2] != b'\\' {
        return Err(
            "must be an absolute path on a drive, like C:\\dir\\file (no UNC or device paths)"
                .into(),
        );
    }
    if v.chars()
        .any(|c| c.is_control() || !(c.is_ascii() || c.is_alphanumeric()))
    {
        return Err("holds control or unusual characters".into());
    }
    const FORBIDDEN: &[char] = &[
        '"', '\'', '`', '*', '?', '<', '>', '|', ';', '&', '$', '%', '/', ':',
    ];
    if v[2..].contains(FORBIDDEN) {
        return Err("holds a character that is not allowed in a path (quotes, wildcards, pipes, ; & $ % / :)".into());
    }
    for seg in v[3..].split('\\') {
        if seg.is_empty() {
            return Err("has an empty path segment".into());
        }
        if seg == "." || seg == ".." {
            return Err("must not contain . or .. segments".into());
        }
        if seg.ends_with(' ') || seg.ends_with('.') {
            return Err("a segment ends with a space or dot".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertFormat, Envelope};
    use crate::defender::MachineId;
    use crate::ids::AlertId;

    fn alert(category: &str, params: &[(&str, &str)]) -> Alert {
        Alert {
            format: AlertFormat::Native,
            envelope: Envelope::None,
            alert_id: AlertId::parse("a1").unwrap(),
            machine_id: MachineId::parse(&"a".repeat(40)).unwrap(),
            title: "Suspicious PowerShell".into(),
            category: category.into(),
            severity: "High".into(),
            source: "edr".into(),
            playbook: None,
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_bundled_playbooks_load() {
        let p = Playbooks::bundled().unwrap();
        assert!(p.all().len() >= 3);
    }

    #[test]
    fn rules_pick_the_first_match_and_render_validated_values() {
        let p = Playbooks::bundled().unwrap();
        let a = alert("Malware", &[("file_path", "C:\\Users\\a\\x.exe")]);
        let pb = p.select(&a).unwrap();
        assert_eq!(pb.name, "malware-file");
        let cmds = pb.render(&a).unwrap();
        assert!(
            cmds.iter().any(|c| c.kind == CommandType::GetFile
                && c.param("Path") == Some("C:\\Users\\a\\x.exe"))
        );
        let mut none = alert("Nothing", &[]);
        none.severity = "Informational".into();
        assert_eq!(p.select(&none).unwrap_err().code, "no_playbook");
        let mut named = alert("Nothing", &[]);
        named.playbook = Some("nope".into());
        assert_eq!(p.select(&named).unwrap_err().code, "unknown_playbook");
    }

    #[test]
    fn placeholder_values_cannot_smuggle_commands_or_paths() {
        for bad in [
            "C:\\a\\..\\..\\Windows\\System32\\config\\SAM",
            "\\\\evil\\share\\x",
            "C:\\a\";Remove-Item C:\\ -Recurse;\"",
            "C:\\a|calc.exe",
            "C:\\a\\*",
            "C:/a/b",
            "C:\\a\\b\u{0}c",
            "relative\\path",
            "C:\\a\\\\b",
            "C:\\a\\b.",
            "\\\\?\\C:\\x",
            "C:\\a\\$env:TEMP",
        ] {
            assert!(PlaceholderKind::WindowsPath.check(bad).is_err(), "{bad:?}");
        }
        assert!(
            PlaceholderKind::WindowsPath
                .check("C:\\Program Files\\App\\app.exe")
                .is_ok()
        );
        for bad in ["-x; rm", "a b", "$(calc)", "'x'", ""] {
            assert!(PlaceholderKind::ScriptArg.check(bad).is_err(), "{bad:?}");
        }
        assert!(PlaceholderKind::ScriptArg.check("OfficeClickToRun").is_ok());
    }

    #[test]
    fn invalid_playbooks_name_the_playbook_and_field() {
        let undeclared = r#"
[[playbooks]]
name = "bad"
[[playbooks.commands]]
type = "GetFile"
path = "{file_path}"
"#;
        let e = Playbooks::from_toml(undeclared).unwrap_err();
        assert_eq!(
            (e.playbook.as_str(), e.field.as_str()),
            ("bad", "commands[0]")
        );
        let bad_script = r#"
[[playbooks]]
name = "x"
[[playbooks.commands]]
type = "RunScript"
script = "../evil.ps1"
"#;
        let e = Playbooks::from_toml(bad_script).unwrap_err();
        assert!(e.to_string().contains("playbook x: commands[0]"), "{e}");
        let unknown_type = r#"
[[playbooks]]
name = "x"
[[playbooks.commands]]
type = "RunShell"
cmd = "calc"
"#;
        assert!(Playbooks::from_toml(unknown_type).is_err());
    }
}
