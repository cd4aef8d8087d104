//! The scripts and files a playbook runs or puts, kept in Defender's live response library by the
//! pipeline itself: a playbook file declares each one (`[[library_files]]`), ships the ones it
//! manages in a folder beside it (the bundle), and submit makes sure the tenant's library holds
//! exactly those bytes, by SHA-256, before it submits a run that names them.
//!
//! Separate from the playbooks (which only name files) and from the Defender client (which only
//! calls the API) because it decides, with its own rules: what a playbook may name
//! ([`LibraryFileSpec`]), what the bundle holds ([`bundle`]), what to do about each file the tenant
//! lists ([`verdict`]), and when to look and upload, paced and cached ([`keeper`]).

pub mod bundle;
pub mod keeper;
pub mod verdict;

use serde::{Deserialize, Serialize};

pub use bundle::{Bundle, BundleError, BundleFile};
pub use keeper::{Ensured, Librarian, LibrarySync, SyncMode};
pub use verdict::{Verdict, verdict};

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
        if !crate::alerts::render::valid_library_name(&self.name) {
            return Some(format!(
                "library file name {:?} must be letters, digits, '-', '_' and '.'",
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

/// A library file a run used, as the tenant's library held it when the run was submitted
/// (recorded in the run and its manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryUse {
    /// The file's name.
    pub name: String,
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
