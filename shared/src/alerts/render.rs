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
//!   `a,b` an array); a path there must also pass [`check_path_argument`]. In a GetFile `path`, a
//!   `windows_path` is the whole path; a `sha256` may sit anywhere inside a literal path, a
//!   `process_name` only as the start of a file or directory name (`C:\dir\{p}.dmp`); a
//!   `script_arg` never goes into a path. Playbooks that break these rules do not load.
//! - rendering is one left-to-right pass over the template, so a value is never scanned for
//!   placeholders (values cannot hold braces either).
//! - [`check_rendered`] re-checks every rendered command, independently of how it was rendered.

use std::collections::BTreeMap;

use super::AlertError;
use super::playbook::{Placeholder, PlaceholderKind};
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

/// Where a template's placeholders are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A RunScript `args` string: each placeholder is one whole argument.
    Arg,
    /// A GetFile `path`.
    Path,
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

/// Whether a value already checked for its kind may also go into `slot`: a path that goes into a
/// script argument must pass [`check_path_argument`].
pub(crate) fn check_in_slot(kind: PlaceholderKind, v: &str, slot: Slot) -> Result<(), String> {
    match (kind, slot) {
        (PlaceholderKind::WindowsPath, Slot::Arg) => check_path_argument(v),
        _ => Ok(()),
    }
}

/// Renders one template for an alert's checked values: `Ok(None)` when an optional placeholder has
/// no value (the command is left out). A path that goes into a script argument must pass
/// [`check_path_argument`].
pub(crate) fn fill(
    playbook: &str,
    template: &str,
    slot: Slot,
    values: &BTreeMap<String, (PlaceholderKind, String)>,
) -> Result<Option<String>, AlertError> {
    let pieces = parse_template(template).map_err(|p| AlertError {
        code: "unsafe_render",
        message: format!("playbook {playbook}: {p}"),
    })?;
    for piece in &pieces {
        if let Piece::Placeholder(name) = piece
            && let Some((kind, v)) = values.get(*name)
        {
            check_in_slot(*kind, v, slot).map_err(|problem| AlertError {
                code: "invalid_parameter",
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

/// A file in the live response library: letters, digits, `-`, `_` and `.`, not starting with `.`,
/// no `..`.
pub fn valid_library_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
        && !s.contains("..")
}

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

/// Whether a file or directory name is a DOS device name (`NUL.txt` is `NUL`): its part before
/// the first `.`, spaces around it trimmed, case-insensitive.
pub fn is_dos_device_name(segment: &str) -> bool {
    let base = segment.split('.').next().unwrap_or_default();
    let base = base.trim_matches(' ').to_ascii_uppercase();
    if matches!(
        base.as_str(),
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" | "CLOCK$"
    ) {
        return true;
    }
    let digit = base
        .strip_prefix("COM")
        .or_else(|| base.strip_prefix("LPT"));
    let mut chars = digit.into_iter().flat_map(str::chars);
    matches!(
        (chars.next(), chars.next()),
        (Some('0'..='9' | '\u{b9}' | '\u{b2}' | '\u{b3}'), None)
    )
}

/// A path as Windows allows a file to be named, for a GetFile path (no shell reads it): absolute on
/// a drive, none of the characters Windows forbids in a name (`< > : " / \\ | ? *`, so no
/// alternate data stream and no wildcard), no control or direction-override characters, no `.` or
/// `..` segment, no segment ending in a space or dot, no DOS device name (`NUL.txt`), no `%NAME%`
/// pair (an environment variable some layer might expand), at most 260 characters. Apostrophes,
/// `&`, `$`, braces, brackets and letters of any script are allowed: attacker-named files have
/// them, and refusing them would let a file's name stop its collection.
pub fn check_windows_path(v: &str) -> Result<(), String> {
    if v.chars().count() > 260 {
        return Err("a path is at most 260 characters".into());
    }
    let b = v.as_bytes();
    if b.len() < 4 || !b[0].is_ascii_alphabetic() || b[1] != b':' || b[2] != b'\\' {
        return Err(
            "must be an absolute path on a drive, like C:\\dir\\file (no UNC or device paths)"
                .into(),
        );
    }
    if v.chars().any(|c| {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
            || c == '\u{feff}'
    }) {
        return Err("holds control or direction-override characters".into());
    }
    const FORBIDDEN: &[char] = &['"', '*', '?', '<', '>', '|', '/', ':'];
    if v[2..].contains(FORBIDDEN) {
        return Err(
            "holds a character Windows does not allow in a name (\" * ? < > | / or : after the drive)"
                .into(),
        );
    }
    if v.matches('%').count() > 1 {
        return Err("holds a %NAME% pair (an environment variable)".into());
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
        if is_dos_device_name(seg) {
            return Err(format!(
                "{seg:?} is a DOS device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9)"
            ));
        }
    }
    Ok(())
}

/// A path that goes into a script argument, on top of [`check_windows_path`]: printable ASCII
/// only (PowerShell reads some non-ASCII quotes and dashes as syntax), none of the characters a
/// shell or a `-Path` parameter might read (`' ` $ % ; & { } [ ]`), and no ` -` (should the
/// arguments ever be split on spaces, it would not pass for a parameter name).
pub fn check_path_argument(v: &str) -> Result<(), String> {
    check_windows_path(v)?;
    if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("goes into a script argument, which must be printable ASCII (PowerShell reads some non-ASCII quotes and dashes as syntax)".into());
    }
    if let Some(c) = v.chars().find(|c| "'`$%;&{}[]".contains(*c)) {
        return Err(format!(
            "goes into a script argument, which must not hold {c:?} (' ` $ % ; & {{ }} [ ])"
        ));
    }
    if v.contains(" -") {
        return Err("goes into a script argument, which must not hold \" -\"".into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alerts::playbook::{PlaybookError, Playbooks};
    use crate::alerts::{Alert, AlertFormat, Envelope};
    use crate::defender::MachineId;
    use crate::ids::AlertId;

    pub(crate) fn alert(category: &str, params: &[(&str, &str)]) -> Alert {
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

    fn one(toml: &str) -> Result<Playbooks, PlaybookError> {
        Playbooks::from_toml(toml)
    }

    /// A playbook that puts `file_path` into a script argument, and `mode`, `sha` and `proc`
    /// (all optional, so that command is left out unless all three are given) into another.
    const ARGS_PLAYBOOK: &str = r#"
[[playbooks]]
name = "args"
[[playbooks.commands]]
type = "RunScript"
script = "inspect.ps1"
args = "-Path {file_path}"
[[playbooks.commands]]
type = "RunScript"
script = "inspect.ps1"
args = "-Mode {mode} -Sha {sha} -Name {proc}"
[playbooks.placeholders.file_path]
kind = "windows_path"
[playbooks.placeholders.mode]
kind = "script_arg"
required = false
[playbooks.placeholders.sha]
kind = "sha256"
required = false
[playbooks.placeholders.proc]
kind = "process_name"
required = false
"#;

    fn render_one(toml: &str, params: &[(&str, &str)]) -> Result<Vec<Command>, AlertError> {
        let p = one(toml).unwrap();
        p.all()[0].render(&alert("Malware", params))
    }

    #[test]
    fn a_path_goes_into_args_as_one_quoted_literal() {
        let cmds = render_one(
            ARGS_PLAYBOOK,
            &[("file_path", "C:\\Program Files\\a (1)\\#b @c,d=e+f-g.exe")],
        )
        .unwrap();
        assert_eq!(
            cmds[0].param("Args"),
            Some("-Path 'C:\\Program Files\\a (1)\\#b @c,d=e+f-g.exe'")
        );
        let cmds = render_one(
            ARGS_PLAYBOOK,
            &[
                ("file_path", "C:\\x.exe"),
                ("mode", "Quick"),
                ("sha", &"ab".repeat(32)),
                ("proc", "lsass"),
            ],
        )
        .unwrap();
        assert_eq!(cmds[0].param("Args"), Some("-Path 'C:\\x.exe'"));
        // Every value is a literal: bare, `1kb` would be a number and `a,b` an array.
        assert_eq!(
            cmds[1].param("Args").unwrap(),
            format!("-Mode 'Quick' -Sha '{}' -Name 'lsass'", "ab".repeat(32))
        );
    }

    #[test]
    fn a_path_in_a_script_argument_must_be_ascii_but_need_not_be_in_get_file() {
        for bad in [
            "C:\\Users\\a\\\u{441}\u{447}\u{451}\u{442}.pdf.exe",
            "C:\\Users\\a\\\u{ff43}\u{ff41}\u{ff4c}\u{ff43}.exe",
            "C:\\Windows\\Syst\u{435}m32\\x.dll",
            "C:\\a\\x\u{b2}.exe",
        ] {
            let e = render_one(ARGS_PLAYBOOK, &[("file_path", bad)]).unwrap_err();
            assert_eq!(e.code, "invalid_parameter", "{bad:?}: {e}");
            let p = Playbooks::bundled().unwrap();
            let a = alert("Malware", &[("file_path", bad)]);
            let cmds = p.select(&a).unwrap().render(&a).unwrap();
            assert!(cmds.iter().any(|c| c.param("Path") == Some(bad)));
        }
    }

    #[test]
    fn a_value_holding_a_placeholder_is_never_expanded() {
        let both = r#"
[[playbooks]]
name = "both"
[[playbooks.commands]]
type = "RunScript"
script = "inspect.ps1"
args = "{file_path} {mode}"
[playbooks.placeholders.file_path]
kind = "windows_path"
[playbooks.placeholders.mode]
kind = "script_arg"
"#;
        let r = render_one(both, &[("file_path", "C:\\a\\{mode}"), ("mode", "Quick")]);
        assert_eq!(r.unwrap_err().code, "invalid_parameter");
    }

    #[test]
    fn playbooks_that_put_a_kind_where_it_cannot_be_safe_are_refused() {
        let cmd = |ty: &str, field: &str, text: &str, kind: &str| {
            format!(
                "[[playbooks]]\nname = \"pos\"\n[[playbooks.commands]]\ntype = \"{ty}\"\n{}{field} = {text:?}\n[playbooks.placeholders.v]\nkind = \"{kind}\"\n",
                if ty == "RunScript" {
                    "script = \"x.ps1\"\n"
                } else {
                    ""
                }
            )
        };
        for (ty, field, text, kind) in [
            ("RunScript", "args", "-Path:{v}", "windows_path"),
            ("RunScript", "args", "x{v}", "script_arg"),
            ("RunScript", "args", "{v}.dmp", "process_name"),
            ("RunScript", "args", "'{v}'", "windows_path"),
            ("RunScript", "args", "-Name $x {v}", "script_arg"),
            ("RunScript", "args", "a;b {v}", "script_arg"),
            ("GetFile", "path", "C:\\x\\{v}", "windows_path"),
            ("GetFile", "path", "{v}\\x", "windows_path"),
            ("GetFile", "path", "C:\\x\\{v}", "script_arg"),
            ("GetFile", "path", "{v}", "sha256"),
            ("GetFile", "path", "{v}", "process_name"),
            ("GetFile", "path", "C:\\x\\a{v}.dmp", "process_name"),
            ("GetFile", "path", "C:\\x\\{v}1.dmp", "process_name"),
            ("GetFile", "path", "C:\\x\\..\\{v}.dmp", "process_name"),
            (
                "GetFile",
                "path",
                format!("C:\\{}\\{{v}}", "a".repeat(200)).as_str(),
                "process_name",
            ),
            ("GetFile", "path", "C:\\Temp\\*.log", "sha256"),
        ] {
            let toml = cmd(ty, field, text, kind);
            let e = one(&toml).expect_err(&toml);
            assert_eq!(
                (e.playbook.as_str(), e.field.as_str()),
                ("pos", "commands[0]"),
                "{toml}: {e}"
            );
        }
        for (ty, field, text, kind) in [
            ("RunScript", "args", "-Path {v}", "windows_path"),
            ("RunScript", "args", "{v}", "script_arg"),
            ("GetFile", "path", "{v}", "windows_path"),
            (
                "GetFile",
                "path",
                "C:\\windows\\TEMP\\{v}.dmp.zip",
                "process_name",
            ),
            ("GetFile", "path", "C:\\x\\{v}\\y.txt", "process_name"),
            ("GetFile", "path", "C:\\q\\f-{v}.bin", "sha256"),
        ] {
            let toml = cmd(ty, field, text, kind);
            assert!(one(&toml).is_ok(), "{toml}: {:?}", one(&toml).err());
        }
    }

    fn values(v: &[(&str, PlaceholderKind, &str)]) -> BTreeMap<String, (PlaceholderKind, String)> {
        v.iter()
            .map(|(n, k, v)| (n.to_string(), (*k, v.to_string())))
            .collect()
    }

    #[test]
    fn one_pass_never_expands_a_placeholder_inside_a_value() {
        // Script values cannot hold braces (the kinds refuse them); this checks the pass itself.
        let v = values(&[
            ("a", PlaceholderKind::ScriptArg, "{b}"),
            ("b", PlaceholderKind::ScriptArg, "B"),
        ]);
        let out = fill("p", "{a} {b} {a}", Slot::Arg, &v).unwrap();
        assert_eq!(out.as_deref(), Some("'{b}' 'B' '{b}'"));
        let v = values(&[
            ("a", PlaceholderKind::Sha256, "{a}"),
            ("b", PlaceholderKind::Sha256, "x"),
        ]);
        let out = fill("p", "C:\\{a}\\{b}", Slot::Path, &v).unwrap();
        assert_eq!(out.as_deref(), Some("C:\\{a}\\x"));
        assert_eq!(fill("p", "{a} {c}", Slot::Arg, &v).unwrap(), None);
    }

    #[test]
    fn a_path_argument_is_one_literal_and_its_quotes_are_doubled() {
        assert_eq!(quote_literal("C:\\a (1)\\#b"), "'C:\\a (1)\\#b'");
        assert_eq!(quote_literal("C:\\it's"), "'C:\\it''s'");
        let v = values(&[("p", PlaceholderKind::WindowsPath, "C:\\a b (1).exe")]);
        let out = fill("p", "-Path {p} -Quick", Slot::Arg, &v)
            .unwrap()
            .unwrap();
        assert_eq!(out, "-Path 'C:\\a b (1).exe' -Quick");
        assert_eq!(
            split_args(&out).unwrap(),
            ["-Path", "C:\\a b (1).exe", "-Quick"]
        );
        // A legal file name that a script argument cannot carry safely is refused there (in a
        // GetFile path it is collected as it is).
        for name in [
            "C:\\it's.exe",
            "C:\\a&b.exe",
            "C:\\x$.exe",
            "C:\\[a].exe",
            "C:\\a -Recurse b.exe",
        ] {
            let v = values(&[("p", PlaceholderKind::WindowsPath, name)]);
            assert_eq!(
                fill("p", "{p}", Slot::Arg, &v).unwrap_err().code,
                "invalid_parameter",
                "{name}"
            );
            assert_eq!(
                fill("p", "{p}", Slot::Path, &v).unwrap().as_deref(),
                Some(name)
            );
        }
        let v = values(&[("p", PlaceholderKind::WindowsPath, "C:\\\u{2018}x\u{2019}")]);
        assert_eq!(
            fill("p", "{p}", Slot::Arg, &v).unwrap_err().code,
            "invalid_parameter"
        );
    }

    #[test]
    fn the_final_check_refuses_anything_that_is_not_plainly_literal() {
        for bad in [
            "-Path C:\\a (1).exe",
            "-x #comment",
            "$(calc)",
            "a;b",
            "a|b",
            "a&b",
            "a>b",
            "a<b",
            "\"a\"",
            "`n",
            "a\nb",
            "a\tb",
            "@(1)",
            "{x}",
            "'unclosed",
            "'a'b",
            "a'b'",
            "'a$b'",
            "'a`b'",
            "'a\"b'",
            "'a;b'",
            "'a\u{2019}b'",
            "'C:\\\u{430}'",
            "\u{2013}Force",
            "'a\u{0}b'",
            "'%TEMP%'",
        ] {
            assert!(split_args(bad).is_err(), "{bad:?}");
            assert!(
                check_rendered(&Command::run_script("x.ps1", Some(bad))).is_err(),
                "{bad:?}"
            );
        }
        for ok in ["", "-Quick", "-Path 'C:\\a (1)\\#b.exe' -N x,y=1", "''"] {
            assert!(split_args(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "C:\\Temp\\NUL.txt",
            "C:\\x\\..\\y",
            "C:\\x:ads",
            "C:\\%TEMP%\\x",
            "\\\\srv\\x",
        ] {
            assert!(check_rendered(&Command::get_file(bad)).is_err(), "{bad:?}");
        }
        for bad in ["../x.ps1", "a b.ps1", "..ps1", ""] {
            assert!(check_rendered(&Command::put_file(bad)).is_err(), "{bad:?}");
            assert!(
                check_rendered(&Command::run_script(bad, None)).is_err(),
                "{bad:?}"
            );
        }
        let mut extra = Command::get_file("C:\\x.txt");
        extra.params.push(extra.params[0].clone());
        assert!(check_rendered(&extra).is_err());
        assert!(check_rendered(&Command::get_file("C:\\Program Files\\a (1)\\b.exe")).is_ok());
        // Names Windows allows, attackers choose, and no shell reads in a GetFile path.
        for ok in [
            "C:\\Users\\a\\it's {setup} [1] 100% a&b x$.exe",
            "C:\\Users\\a\\Invoice \u{2013} Bob\u{2019}s.exe",
        ] {
            assert!(check_rendered(&Command::get_file(ok)).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn dos_device_names_follow_windows_rules() {
        for dev in [
            "CON",
            "con",
            "nul.txt",
            "Aux.tar.gz",
            "COM1",
            "com0",
            "LPT9",
            "lpt\u{b9}",
            "COM\u{b3}",
            "con .log",
            "PRN  ",
            "CONIN$",
            "clock$",
        ] {
            assert!(is_dos_device_name(dev), "{dev:?}");
        }
        for not in [
            "CONSOLE",
            "COM10",
            "COM",
            "LPT",
            "nul_x.txt",
            "x.con",
            "COMa",
            "com\u{b4}",
            "",
            "C ON",
        ] {
            assert!(!is_dos_device_name(not), "{not:?}");
        }
    }
}
