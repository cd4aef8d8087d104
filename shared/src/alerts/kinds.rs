//! What a value from an alert may be, by its kind, and where a kind may go. Placeholder values
//! are attacker-chosen (a Defender alert's evidence file name becomes `file_path`), so each kind
//! has a small, checked shape here, in one place: playbooks declare kinds, rendering asks these
//! checks before it writes a value anywhere.

use serde::{Deserialize, Serialize};

/// A placeholder a playbook declares: the kind of value it takes, and whether it must have one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Placeholder {
    /// What values it accepts and where it may go.
    pub kind: PlaceholderKind,
    /// Whether an alert without the value is refused (the default); if `false`, a command using
    /// the placeholder is left out when there is no value.
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// The kinds of value a placeholder can take, each with a checked shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaceholderKind {
    /// An absolute Windows path as Windows allows a file to be named ([`check_windows_path`]).
    /// Goes only into a GetFile path (as the whole path, literally) or into args as one quoted
    /// literal (then it must also pass [`check_path_argument`]).
    WindowsPath,
    /// A script argument token: letters, digits and `-_.,=` only, no `..`, not starting with `-`,
    /// not a DOS device name. Goes only into args, as a whole argument.
    ScriptArg,
    /// A SHA-256 in hex. Goes into args, or anywhere inside a GetFile path.
    Sha256,
    /// A process name such as `OfficeClickToRun` (letters, digits, `-_.`; no `..`, not starting
    /// with `.` or `-` nor ending with `.`, not a DOS device name). Goes into args, or into a
    /// GetFile path as the start of a name (`C:\dir\{p}.dmp`).
    ProcessName,
}

impl PlaceholderKind {
    /// Whether a value may fill a placeholder of this kind (wherever it goes; a path that goes into
    /// a script argument must also pass [`check_path_argument`], checked by [`check_in_slot`]).
    pub fn check(self, v: &str) -> Result<(), String> {
        match self {
            Self::WindowsPath => check_windows_path(v),
            Self::ScriptArg => {
                if !(1..=128).contains(&v.len())
                    || !v.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b',' | b'=')
                    })
                {
                    return Err("a script argument is 1-128 of letters, digits and - _ . , = (no spaces, quotes, colons or shell characters)".into());
                }
                if v.starts_with('-') {
                    return Err(
                        "a script argument must not start with '-' (it would name a parameter)"
                            .into(),
                    );
                }
                check_name_like(v)
            }
            Self::Sha256 => {
                if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(())
                } else {
                    Err("must be 64 hexadecimal characters".into())
                }
            }
            Self::ProcessName => {
                if !(1..=64).contains(&v.len())
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return Err(
                        "a process name is 1-64 of letters, digits, '-', '_' and '.'".into(),
                    );
                }
                if v.starts_with(['.', '-']) || v.ends_with('.') {
                    return Err(
                        "a process name must not start with '.' or '-' nor end with '.'".into(),
                    );
                }
                check_name_like(v)
            }
        }
    }
}

/// What script arguments and process names share: no `..`, no DOS device name.
fn check_name_like(v: &str) -> Result<(), String> {
    if v.contains("..") {
        return Err("must not contain '..'".into());
    }
    if is_dos_device_name(v) {
        return Err(format!(
            "{v:?} is a DOS device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9)"
        ));
    }
    Ok(())
}

/// Where a template's placeholders are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A RunScript `args` string: each placeholder is one whole argument.
    Arg,
    /// A GetFile `path`.
    Path,
}

/// Whether a value already checked for its kind may also go into `slot`: a path that goes into a
/// script argument must pass [`check_path_argument`].
pub fn check_in_slot(kind: PlaceholderKind, v: &str, slot: Slot) -> Result<(), String> {
    match (kind, slot) {
        (PlaceholderKind::WindowsPath, Slot::Arg) => check_path_argument(v),
        _ => Ok(()),
    }
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
mod tests {
    use super::*;

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
