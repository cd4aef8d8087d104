//! The scripts and files a playbook runs or puts, kept in Defender's live response library by the
//! pipeline itself: a playbook file declares each one (`[[library_files]]`), ships the ones it
//! manages in a folder beside it (the bundle), and submit makes sure the tenant's library holds
//! exactly those bytes, by SHA-256, before it submits a run that names them.
//!
//! Separate from the playbooks (which only name files) and from the Defender client (which only
//! calls the API) because it decides, with its own rules: what a playbook may name
//! ([`LibraryFileSpec`]), what the bundle holds ([`bundle`]), what the tenant lists ([`listing`]),
//! what to do about each file ([`mod@verdict`]), and when to look and upload, paced and cached
//! ([`keeper`]), and what the library held once the action ended ([`recheck`]). A bundled file is kept under a versioned name ([`versioned_name`]), so that what a
//! run's manifest names is what the device runs.

pub mod bundle;
pub mod keeper;
pub mod listing;
pub mod recheck;
pub mod verdict;

use serde::{Deserialize, Serialize};

pub use bundle::{Bundle, BundleError, BundleFile};
pub use keeper::{Ensured, Librarian, LibrarySync, SyncMode};
pub use listing::Listing;
pub use recheck::{LibraryChange, LibraryRecheck};
pub use verdict::{Verdict, judge, verdict};

/// A file in the live response library: letters, digits, `-`, `_` and `.`, not starting with `.`,
/// no `..`, at most 128 characters. The one rule for a library name, wherever one is written.
pub fn valid_library_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
        && !s.contains("..")
}

/// Defender takes library files up to 20 MB through the API.
pub const MAX_FILE_BYTES: usize = 20 * 1024 * 1024;

/// Ends the description of every file the pipeline uploads: how a later sync tells its own files
/// (which it may replace) from files someone else put there (which it never touches unless the
/// playbook says so).
pub const MANAGED_MARKER: &str = "[managed by the live response pipeline]";

/// One library file as a playbook file declares it (`[[library_files]]`); the fields Defender's
/// library keeps are sent with every upload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryFileSpec {
    /// The name commands use (letters, digits, `-`, `_`, `.`); the bundle's file of that name.
    pub name: String,
    /// Shown in the portal's library (the pipeline adds [`MANAGED_MARKER`]).
    #[serde(default)]
    pub description: String,
    /// Whether the script takes arguments.
    #[serde(default)]
    pub has_parameters: bool,
    /// What the arguments mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_description: Option<String>,
    /// Expected in the tenant's library, put there by someone else: never uploaded, replaced or
    /// deleted; a run that needs it fails before submission when it is missing.
    #[serde(default)]
    pub external: bool,
    /// The hex SHA-256 the file must have: for a bundled file, its bytes must match (checked when
    /// loading); for an external one, the library's copy must (checked before each run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Replace a file of this name that the pipeline did not upload, when its bytes differ. Off by
    /// default: someone else's file is left alone and the run fails, naming it.
    #[serde(default)]
    pub replace_unmanaged: bool,
    /// Kept in the library under its own name, not a versioned one: set (when the playbook file
    /// loads) for a file a `PutFile` puts, because the device receives it under its library name
    /// and the commands after it refer to it by that name. Such a file is replaced in place when
    /// the bundle changes (the stale-copy rule).
    #[serde(skip)]
    pub keeps_name: bool,
}

impl LibraryFileSpec {
    /// The description the pipeline uploads: the declared one, then [`MANAGED_MARKER`].
    pub fn managed_description(&self) -> String {
        let d = self.description.trim();
        if d.is_empty() {
            MANAGED_MARKER.to_string()
        } else {
            format!("{d} {MANAGED_MARKER}")
        }
    }

    /// What is wrong with the declaration, if anything (names the field).
    pub fn problem(&self) -> Option<String> {
        if !valid_library_name(&self.name) {
            return Some(format!(
                "library file name {:?} must be letters, digits, '-', '_' and '.'",
                self.name
            ));
        }
        if self.name.ends_with('.') {
            return Some(format!(
                "{}: a name may not end with '.' (Windows drops it)",
                self.name
            ));
        }
        if !self.external && self.name.len() > MAX_MANAGED_NAME {
            return Some(format!(
                "{}: a bundled file's name may have at most {MAX_MANAGED_NAME} characters (its versioned name in the library adds 13)",
                self.name
            ));
        }
        if let Some(h) = &self.sha256
            && !(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Some(format!("{}: sha256 must be 64 hex characters", self.name));
        }
        if self.external && self.replace_unmanaged {
            return Some(format!(
                "{}: an external file is never uploaded, so replace_unmanaged does not apply",
                self.name
            ));
        }
        None
    }
}

/// A library file a run used, as the tenant's library listed it before the run was submitted
/// (recorded in the run and its manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryUse {
    /// The file's name as the playbook names it.
    pub name: String,
    /// The name the command was sent with: for a bundled file its versioned name
    /// ([`versioned_name`]), which holds exactly these bytes; for an external file its own name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub library_name: String,
    /// Hex SHA-256 of the library's copy (Defender's listing, or what the pipeline uploaded);
    /// `None` only for an external file Defender lists without a hash.
    pub sha256: Option<String>,
    /// Whether the pipeline manages it (shipped in the playbook bundle) or it is external.
    pub source: LibrarySource,
}

/// Where a library file a run used comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LibrarySource {
    /// Shipped with the playbooks and kept in the library by the pipeline.
    Bundle,
    /// Put in the library by someone else; the playbook declares it external.
    External,
}

/// Longest declared name of a bundled file: its versioned name adds 13 characters and must stay
/// within Defender's 128.
pub const MAX_MANAGED_NAME: usize = 115;

/// The name a bundled file is kept under in the library: its name with the first 12 hex digits of
/// its SHA-256 before the extension (`triage.ps1` → `triage-6bf94f0d21df.ps1`). A version is never
/// overwritten by another, so a run queued for an offline device runs the bytes its manifest names
/// even after a newer bundle is deployed, and deployments with different versions share a tenant.
pub fn versioned_name(name: &str, sha256: &str) -> String {
    let tag = &sha256[..sha256.len().min(12)];
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{tag}.{ext}"),
        _ => format!("{name}-{tag}"),
    }
}

/// `commands` as sent to Defender: each library file named as `used` says it is kept (a bundled
/// script under its versioned name); other commands as they are.
pub fn sent_commands(
    commands: &[crate::defender::Command],
    used: &[LibraryUse],
) -> Vec<crate::defender::Command> {
    commands
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let key = match c.kind {
                crate::defender::CommandType::PutFile => "FileName",
                crate::defender::CommandType::RunScript => "ScriptName",
                crate::defender::CommandType::GetFile => return c,
            };
            for p in c.params.iter_mut().filter(|p| p.key == key) {
                if let Some(u) = used
                    .iter()
                    .find(|u| u.name.eq_ignore_ascii_case(&p.value) && !u.library_name.is_empty())
                {
                    p.value = u.library_name.clone();
                }
            }
            c
        })
        .collect()
}

/// The library file names a run's commands use (PutFile and RunScript), each once, in order.
pub fn names_used(commands: &[crate::defender::Command]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for c in commands {
        if let Some(n) = c.library_file()
            && !names.iter().any(|x| x.eq_ignore_ascii_case(n))
        {
            names.push(n.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defender::Command;

    #[test]
    fn a_bundled_file_is_named_by_its_version() {
        let h = "6bf94f0d21df144cab8d358eb1754e66fc3e1d7e36bf25e07d68c498f0757e27";
        assert_eq!(versioned_name("triage.ps1", h), "triage-6bf94f0d21df.ps1");
        assert_eq!(
            versioned_name("collector.x64.exe", h),
            "collector.x64-6bf94f0d21df.exe"
        );
        assert_eq!(versioned_name("README", h), "README-6bf94f0d21df");
        assert!(valid_library_name(&versioned_name(
            &"a".repeat(MAX_MANAGED_NAME),
            h
        )));
    }

    #[test]
    fn commands_are_sent_with_the_names_the_library_keeps() {
        let commands = vec![
            Command::put_file("Collector.exe"),
            Command::run_script("triage.ps1", Some("-Quick")),
            Command::get_file("C:\\triage.ps1"),
        ];
        let used = vec![
            LibraryUse {
                name: "triage.ps1".into(),
                library_name: "triage-6bf94f0d21df.ps1".into(),
                sha256: None,
                source: LibrarySource::Bundle,
            },
            LibraryUse {
                name: "collector.exe".into(),
                library_name: "collector.exe".into(),
                sha256: None,
                source: LibrarySource::External,
            },
        ];
        let sent = sent_commands(&commands, &used);
        assert_eq!(sent[0].param("FileName"), Some("collector.exe"));
        assert_eq!(sent[1].param("ScriptName"), Some("triage-6bf94f0d21df.ps1"));
        assert_eq!(sent[1].param("Args"), Some("-Quick"));
        assert_eq!(sent[2], commands[2], "a GetFile path is never renamed");
        assert_eq!(
            names_used(&commands),
            vec!["Collector.exe".to_string(), "triage.ps1".to_string()]
        );
    }

    #[test]
    fn a_name_listed_twice_is_refused_not_guessed() {
        let spec = LibraryFileSpec {
            name: "t.ps1".into(),
            description: String::new(),
            has_parameters: false,
            parameters_description: None,
            external: false,
            sha256: None,
            replace_unmanaged: false,
            keeps_name: false,
        };
        let bundle = Bundle::assemble(&[spec], |_| Some(b"x".to_vec())).unwrap();
        let file = bundle.get("t.ps1").unwrap();
        let name = file.library_name();
        let entry = |n: &str| crate::defender::LibraryFile {
            file_name: n.into(),
            sha256: file.sha256.clone(),
            description: None,
            creation_time: None,
            last_updated_time: None,
            created_by: None,
            has_parameters: false,
            parameters_description: None,
        };
        let one = Listing::of(vec![entry(&name)]);
        assert!(matches!(judge(file, &one), Verdict::Ready(u) if u.library_name == name));
        let two = Listing::of(vec![entry(&name), entry(&name.to_uppercase())]);
        assert!(matches!(judge(file, &two), Verdict::Refuse(r) if r.contains("more than once")));
    }
}
