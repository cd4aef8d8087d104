//! After a run's action ends: what the tenant's library holds for each file the run used, listed
//! once more and compared with what was listed just before submission. The device fetched the
//! script from the library while the action ran; a hash that is the same before and after is what
//! the manifest can say about the bytes that ran as SYSTEM (a swap and a swap back within the
//! action's lifetime is not excluded). A hash that changed, or a file gone, is marked in the
//! manifest and the event rather than attested; a library that could not be listed is said to be
//! unchecked.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{LibraryUse, Listing};
use crate::defender::LibraryFile;

/// What the library held for a run's files once its action ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryRecheck {
    /// When the library was listed again (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Each file whose hash is not the one listed before submission (empty: every file the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<LibraryChange>,
    /// Why the library could not be listed again, if it could not: the files are then unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchecked: Option<String>,
}

/// A library file a run used that the library held otherwise after its action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryChange {
    /// The name the command was sent with.
    pub library_name: String,
    /// SHA-256 listed before submission.
    pub before: Option<String>,
    /// SHA-256 listed after the action; `None` when the file is gone.
    pub after: Option<String>,
}

impl LibraryRecheck {
    /// Compares each use with the library as `files` list it now.
    pub fn of(uses: &[LibraryUse], files: Vec<LibraryFile>, at: OffsetDateTime) -> Self {
        let listing = Listing::of(files);
        let changed = uses
            .iter()
            .filter_map(|u| {
                let name = if u.library_name.is_empty() {
                    &u.name
                } else {
                    &u.library_name
                };
                let after = listing.get(name).and_then(|f| f.sha256.clone());
                let same = match (&u.sha256, &after) {
                    (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                    // An external file listed without a hash before: only its presence is known.
                    (None, _) => listing.get(name).is_some(),
                    (Some(_), None) => false,
                };
                (!same).then(|| LibraryChange {
                    library_name: name.clone(),
                    before: u.sha256.clone(),
                    after,
                })
            })
            .collect();
        Self {
            at,
            changed,
            unchecked: None,
        }
    }

    /// The library could not be listed again: `why`.
    pub fn unchecked(why: impl Into<String>, at: OffsetDateTime) -> Self {
        Self {
            at,
            changed: Vec::new(),
            unchecked: Some(why.into()),
        }
    }

    /// How it reads in one line, for a reason: `None` when every file was the same. A library that
    /// could not be listed again is a finding too: the run does not attest what it cannot check.
    pub fn finding(&self) -> Option<String> {
        if let Some(why) = &self.unchecked {
            return Some(format!(
                "the library was not listed again after the action ({why}), so what ran is not attested"
            ));
        }
        if self.changed.is_empty() {
            return None;
        }
        let files: Vec<String> = self
            .changed
            .iter()
            .map(|c| {
                format!(
                    "{} (listed {} before submission, {} after the action)",
                    c.library_name,
                    c.before.as_deref().unwrap_or("without a hash"),
                    c.after.as_deref().unwrap_or("gone")
                )
            })
            .collect();
        Some(format!(
            "library file(s) changed while the run was live, so what ran is not attested: {}",
            files.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::LibrarySource;

    fn file(name: &str, sha: &str) -> LibraryFile {
        serde_json::from_value(serde_json::json!({"fileName": name, "sha256": sha})).unwrap()
    }

    fn used(name: &str, sha: &str) -> LibraryUse {
        LibraryUse {
            name: name.into(),
            library_name: format!("{name}.v1"),
            sha256: Some(sha.into()),
            source: LibrarySource::Bundle,
        }
    }

    #[test]
    fn a_swapped_or_removed_library_file_is_marked_and_an_unchanged_one_is_not() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let uses = [
            used("a.ps1", "AA"),
            used("b.ps1", "bb"),
            used("c.ps1", "cc"),
        ];
        let now = vec![file("a.ps1.v1", "aa"), file("B.PS1.V1", "ee")];
        let r = LibraryRecheck::of(&uses, now, at);
        assert_eq!(
            r.changed,
            vec![
                LibraryChange {
                    library_name: "b.ps1.v1".into(),
                    before: Some("bb".into()),
                    after: Some("ee".into()),
                },
                LibraryChange {
                    library_name: "c.ps1.v1".into(),
                    before: Some("cc".into()),
                    after: None,
                },
            ]
        );
        let finding = r.finding().unwrap();
        assert!(
            finding.contains("b.ps1.v1") && finding.contains("gone"),
            "{finding}"
        );
        assert!(
            LibraryRecheck::of(&uses[..1], vec![file("a.ps1.v1", "aa")], at)
                .finding()
                .is_none()
        );
    }
}
