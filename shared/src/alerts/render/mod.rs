//! How an alert's values are written into commands, and the last check of every command before it
//! leaves the pipeline.
//!
//! This module exists because placeholder values are attacker-chosen (a Defender alert's evidence
//! file name becomes `file_path`) and end up in commands that run on an endpoint. Everything that
//! decides where a value may go, how it is written there and whether the result is safe lives here,
//! in one place, so that it can be reviewed and fuzzed on its own:
//!
//! - positions: in RunScript `args` a placeholder is a whole space-separated token, written as
//!   one PowerShell single-quoted literal whatever its kind (bare, `1kb` would be a number and
//!   `a,b` an array); a path there must also pass [`super::kinds::check_path_argument`]. In a GetFile `path`, a
//!   `windows_path` is the whole path; a `sha256` may sit anywhere inside a literal path, a
//!   `process_name` only as the start of a file or directory name (`C:\dir\{p}.dmp`); a
//!   `script_arg` never goes into a path. Playbooks that break these rules do not load.
//! - rendering is one left-to-right pass over the template, so a value is never scanned for
//!   placeholders (a GetFile path may hold braces, taken literally; script values cannot).
//! - [`check_rendered`] re-checks every rendered command, independently of how it was rendered.

use std::collections::BTreeMap;

use super::AlertError;
pub use super::kinds::Slot;
use super::kinds::{Placeholder, PlaceholderKind, check_in_slot, check_windows_path};
use crate::codes::RejectCode;
use crate::defender::{Command, CommandType};

/// One piece of a command template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// A template split into text and `{name}` placeholders.
pub(crate) fn parse_template(t: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find(['{', '}']) {
        if rest.as_bytes()[start] == b'}' {
            return Err(format!("stray '}}' in {t:?}"));
        }
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 1..];
        let end = after
            .find(['{', '}'])
            .filter(|&e| after.as_bytes()[e] == b'}')
            .ok_or_else(|| format!("unclosed '{{' in {t:?}"))?;
        let name = &after[..end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("placeholder {{{name}}} must be a-z 0-9 _"));
        }
        out.push(Piece::Placeholder(name));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// A value that stands for its kind when a template is checked at load time (a process name as
/// long as one may be, so that a path that holds one stays within the length limit).
fn sample(kind: PlaceholderKind) -> &'static str {
    match kind {
        PlaceholderKind::WindowsPath => "C:\\x",
        PlaceholderKind::ScriptArg => "x",
        PlaceholderKind::ProcessName => {
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        }
        PlaceholderKind::Sha256 => {
            "0000000000000000000000000000000000000000000000000000000000000000"
        }
    }
}

fn kind_of<'a>(
    name: &str,
    declared: &'a BTreeMap<String, Placeholder>,
) -> Result<&'a Placeholder, String> {
    declared
        .get(name)
        .ok_or_else(|| format!("uses {{{name}}}, which is not declared under placeholders"))
}

/// Checks a RunScript `args` template at load time; returns the placeholders it uses.
pub(crate) fn check_args_template(
    t: &str,
    declared: &BTreeMap<String, Placeholder>,
) -> Result<Vec<String>, String> {
    let pieces = parse_template(t)?;
    let mut names = Vec::new();
    for token in t.split(' ') {
        match parse_template(token)?.as_slice() {
            [] => {}
            [Piece::Placeholder(name)] => {
                kind_of(name, declared)?;
                names.push(name.to_string());
            }
            [Piece::Text(text)] => {
                if let Some(bad) = text.bytes().find(|&b| !bare_ok(b)) {
                    return Err(format!(
                        "args text {text:?} holds {:?}; outside placeholders args may hold only letters, digits and - _ . , = : \\ /",
                        char::from(bad)
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "in args a placeholder must be a whole space-separated argument, not part of {token:?}"
                ));
            }
        }
    }
    let rendered = fill_with(&pieces, Slot::Arg, |name| {
        declared.get(name).map(|p| (p.kind, sample(p.kind)))
    });
    if let Some(r) = rendered {
        split_args(&r).map_err(|p| format!("args do not render safely: {p}"))?;
    }
    Ok(names)
}

/// Checks a GetFile `path` template at load time; returns the placeholders it uses.
pub(crate) fn check_path_template(
    t: &str,
    declared: &BTreeMap<String, Placeholder>,
) -> Result<Vec<String>, String> {
    let pieces = parse_template(t)?;
    let whole = pieces.len() == 1;
    let mut names = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let Piece::Placeholder(name) = piece else {
            continue;
        };
        let kind = kind_of(name, declared)?.kind;
        let before = i.checked_sub(1).map(|j| pieces[j]);
        let after = pieces.get(i + 1).copied();
        match kind {
            PlaceholderKind::WindowsPath if !whole => {
                return Err(format!(
                    "{{{name}}} is a windows_path: it must be the whole path, not part of one"
                ));
            }
            PlaceholderKind::ScriptArg => {
                return Err(format!(
                    "{{{name}}} is a script_arg, which cannot go into a path"
                ));
            }
            PlaceholderKind::ProcessName => {
                let starts = matches!(before, Some(Piece::Text(t)) if t.ends_with('\\'));
                let ends = match after {
                    None => true,
                    Some(Piece::Text(t)) => t.starts_with(['.', '\\']),
                    Some(Piece::Placeholder(_)) => false,
                };
                if !(starts && ends) {
                    return Err(format!(
                        "{{{name}}} is a process_name: in a path it must start a file or directory name and be followed by '.', '\\' or the end (like C:\\dir\\{{{name}}}.dmp)"
                    ));
                }
            }
            _ => {}
        }
        names.push(name.to_string());
    }
    let rendered = fill_with(&pieces, Slot::Path, |name| {
        declared.get(name).map(|p| (p.kind, sample(p.kind)))
    });
    if let Some(r) = rendered {
        check_windows_path(&r).map_err(|p| format!("the path does not render safely: {p}"))?;
    }
    Ok(names)
}

/// One pass over the pieces: text is copied, each placeholder is replaced by its value (quoted if
/// the slot needs it). None when a placeholder has no value.
fn fill_with<'v>(
    pieces: &[Piece<'_>],
    slot: Slot,
    value: impl Fn(&str) -> Option<(PlaceholderKind, &'v str)>,
) -> Option<String> {
    let mut out = String::new();
    for piece in pieces {
        match *piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder(name) => {
                let (_, v) = value(name)?;
                match slot {
                    Slot::Arg => out.push_str(&quote_literal(v)),
                    Slot::Path => out.push_str(v),
                }
            }
        }
    }
    Some(out)
}

/// A PowerShell single-quoted literal: nothing inside is evaluated; a `'` is written twice.
pub fn quote_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Renders one template for an alert's checked values: `Ok(None)` when an optional placeholder has
/// no value (the command is left out). A path that goes into a script argument must pass
/// [`check_path_argument`](crate::alerts::kinds::check_path_argument).
pub(crate) fn fill(
    playbook: &str,
    template: &str,
    slot: Slot,
    values: &BTreeMap<String, (PlaceholderKind, String)>,
) -> Result<Option<String>, AlertError> {
    let pieces = parse_template(template).map_err(|p| AlertError {
        code: RejectCode::UnsafeRender,
        message: format!("playbook {playbook}: {p}"),
    })?;
    for piece in &pieces {
        if let Piece::Placeholder(name) = piece
            && let Some((kind, v)) = values.get(*name)
        {
            check_in_slot(*kind, v, slot).map_err(|problem| AlertError {
                code: RejectCode::InvalidParameter,
                message: format!("parameter {name} for playbook {playbook}: {problem}"),
            })?;
        }
    }
    Ok(fill_with(&pieces, slot, |name| {
        values.get(name).map(|(k, v)| (*k, v.as_str()))
    }))
}

/// The last check of a rendered command, whatever rendered it: library file names for PutFile
/// and RunScript, [`split_args`] for the arguments, [`check_windows_path`] for a GetFile path.
pub fn check_rendered(cmd: &Command) -> Result<(), String> {
    let keys: Vec<&str> = cmd.params.iter().map(|p| p.key.as_str()).collect();
    let allowed: &[&str] = match cmd.kind {
        CommandType::PutFile => &["FileName"],
        CommandType::RunScript => &["ScriptName", "Args"],
        CommandType::GetFile => &["Path"],
    };
    for (i, k) in keys.iter().enumerate() {
        if !allowed.contains(k) || keys[..i].contains(k) {
            return Err(format!("unexpected or repeated parameter {k:?}"));
        }
    }
    let required = |key: &str| {
        cmd.param(key)
            .ok_or_else(|| format!("{:?} has no {key}", cmd.kind))
    };
    match cmd.kind {
        CommandType::PutFile => check_library_name(required("FileName")?),
        CommandType::RunScript => {
            check_library_name(required("ScriptName")?)?;
            match cmd.param("Args") {
                Some(a) => split_args(a).map(|_| ()),
                None => Ok(()),
            }
        }
        CommandType::GetFile => check_windows_path(required("Path")?),
    }
}

pub use crate::library::valid_library_name;

fn check_library_name(s: &str) -> Result<(), String> {
    if valid_library_name(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a library file name"))
    }
}

/// A character allowed in args outside a quoted literal.
fn bare_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b',' | b'=' | b':' | b'\\' | b'/')
}

/// A character allowed inside a quoted literal (besides a doubled `'`): printable ASCII without
/// the characters any shell layer might read or a script's `-Path` might take as a wildcard, none
/// of which a value that may go into args holds.
fn quoted_ok(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && !b"'\"`$%;|&<>*?[]{}".contains(&b)
}

/// Splits rendered args into arguments, refusing anything that is not plainly literal: printable
/// ASCII only; outside quotes letters, digits and `- _ . , = : \ /`; a `'...'` literal (with `''`
/// for a quote) only as a whole argument. Returns the arguments as PowerShell would see them.
pub fn split_args(s: &str) -> Result<Vec<String>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' {
            i += 1;
            continue;
        }
        let mut arg = String::new();
        if b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("a quoted argument is not closed".into()),
                    Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                        arg.push('\'');
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) if quoted_ok(c) => {
                        arg.push(char::from(c));
                        i += 1;
                    }
                    Some(&c) => {
                        return Err(format!(
                            "byte 0x{c:02x} is not allowed in a quoted argument"
                        ));
                    }
                }
            }
            if b.get(i).is_some_and(|&c| c != b' ') {
                return Err("a quoted argument must be a whole argument".into());
            }
        } else {
            while let Some(&c) = b.get(i).filter(|&&c| c != b' ') {
                if !bare_ok(c) {
                    return Err(format!(
                        "byte 0x{c:02x} is not allowed outside a quoted argument"
                    ));
                }
                arg.push(char::from(c));
                i += 1;
            }
        }
        out.push(arg);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
