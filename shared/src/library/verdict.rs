//! What to do about one library file a run needs, given what the bundle holds and what the
//! tenant's library lists: use it, upload it, or refuse the run with a reason naming the file.
//! Pure, so that every case is tested without Defender, and one rule set serves submit and `lrctl`.
//!
//! The rules: a managed file is uploaded when missing, and replaced when the library's copy has
//! other bytes and the pipeline uploaded it (its description carries [`MANAGED_MARKER`]) or the
//! playbook allows replacing someone else's (`replace_unmanaged`); otherwise someone else's file
//! is left alone and the run refused. An external file is never uploaded: it must be there, with
//! the pinned SHA-256 if the playbook pins one.

use super::listing::Listing;
use super::{BundleFile, LibrarySource, LibraryUse, MANAGED_MARKER};
use crate::defender::LibraryFile;

/// What to do about one library file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The library holds what the run needs.
    Ready(LibraryUse),
    /// Upload the bundle's bytes; `replace` when a file of this name is there (set
    /// `OverrideIfExists`).
    Upload {
        /// Whether a file of this name is to be replaced.
        replace: bool,
    },
    /// The run cannot have this file: why, naming it and what to do.
    Refuse(String),
}

/// The verdict for the declared file `wanted` against the tenant's `listing`: looked up under the
/// name the library keeps it by ([`BundleFile::library_name`]); a name the library lists more than
/// once (in any case) is refused rather than guessed at.
pub fn judge(wanted: &BundleFile, listing: &Listing) -> Verdict {
    let name = wanted.library_name();
    if let Some(twins) = listing.twins(&name) {
        return Verdict::Refuse(format!(
            "the tenant's library lists {name} more than once ({}); remove the extra entries",
            twins.join(", ")
        ));
    }
    // Messages name the file both ways when they differ: as the library keeps it and as the
    // playbook names it.
    let shown = if name == wanted.spec.name {
        name.clone()
    } else {
        format!("{name} (the playbook's {})", wanted.spec.name)
    };
    verdict(&shown, Some(wanted), listing.get(&name))
}

/// The verdict for `name`, declared as `wanted` (or not at all), listed by the tenant as `listed`.
pub fn verdict(name: &str, wanted: Option<&BundleFile>, listed: Option<&LibraryFile>) -> Verdict {
    let Some(wanted) = wanted else {
        return Verdict::Refuse(format!(
            "library file {name} is not declared in the playbook file this deployment loaded"
        ));
    };
    let listed_hash = listed.and_then(|l| l.sha256.as_deref());
    let same = |h: &str| listed_hash.is_some_and(|l| l.eq_ignore_ascii_case(h));
    if !wanted.managed() {
        return match (listed, wanted.sha256.as_deref()) {
            (None, _) => Verdict::Refuse(format!(
                "library file {name} is declared external but is not in the tenant's live response library; upload it (the pipeline does not manage it)"
            )),
            (Some(_), Some(pin)) if !same(pin) => Verdict::Refuse(format!(
                "library file {name} in the tenant's library has SHA-256 {}; the playbook file pins {pin} (it is external: the pipeline does not replace it)",
                listed_hash.unwrap_or("(not reported)")
            )),
            (Some(l), _) => Verdict::Ready(LibraryUse {
                name: wanted.spec.name.clone(),
                library_name: l.file_name.clone(),
                sha256: l.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
                source: LibrarySource::External,
            }),
        };
    }
    let hash = wanted.sha256.as_deref().unwrap_or_default();
    match listed {
        None => Verdict::Upload { replace: false },
        Some(l) if same(hash) => Verdict::Ready(LibraryUse {
            name: wanted.spec.name.clone(),
            library_name: l.file_name.clone(),
            sha256: Some(hash.to_string()),
            source: LibrarySource::Bundle,
        }),
        Some(l) if is_managed(l) || wanted.spec.replace_unmanaged => {
            Verdict::Upload { replace: true }
        }
        Some(_) => Verdict::Refuse(format!(
            "library file {name} in the tenant's library has SHA-256 {}, not the playbook's {hash}, and the pipeline did not upload it; remove or rename it in the library, or set replace_unmanaged = true for it in the playbook file",
            listed_hash.unwrap_or("(not reported)")
        )),
    }
}

/// Whether the pipeline uploaded this library file (its description ends with the marker).
pub fn is_managed(listed: &LibraryFile) -> bool {
    listed
        .description
        .as_deref()
        .is_some_and(|d| d.trim_end().ends_with(MANAGED_MARKER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::library::{Bundle, LibraryFileSpec};

    const NEW: &[u8] = b"Write-Output 'v2'";

    fn spec(name: &str) -> LibraryFileSpec {
        LibraryFileSpec {
            name: name.into(),
            description: "triage".into(),
            has_parameters: true,
            parameters_description: None,
            external: false,
            sha256: None,
            replace_unmanaged: false,
            keeps_name: false,
        }
    }

    fn listed(name: &str, content: &[u8], description: &str) -> LibraryFile {
        LibraryFile {
            file_name: name.into(),
            sha256: Some(crate::hash::sha256_hex(content)),
            description: Some(description.into()),
            creation_time: None,
            last_updated_time: None,
            created_by: None,
            has_parameters: false,
            parameters_description: None,
        }
    }

    fn bundle(specs: &[LibraryFileSpec]) -> Bundle {
        Bundle::assemble(specs, |_| Some(NEW.to_vec())).unwrap()
    }

    #[test]
    fn managed_files() {
        let b = bundle(&[spec("t.ps1")]);
        let w = b.get("t.ps1");
        assert_eq!(
            verdict("t.ps1", w, None),
            Verdict::Upload { replace: false }
        );
        let ours = spec("t.ps1").managed_description();
        match verdict("t.ps1", w, Some(&listed("T.ps1", NEW, "anything"))) {
            Verdict::Ready(u) => {
                assert_eq!(u.sha256, Some(crate::hash::sha256_hex(NEW)));
                assert_eq!(u.source, LibrarySource::Bundle);
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            verdict("t.ps1", w, Some(&listed("t.ps1", b"old", &ours))),
            Verdict::Upload { replace: true },
            "a stale copy the pipeline uploaded is replaced"
        );
        let theirs = listed("t.ps1", b"someone's", "IR team's triage");
        match verdict("t.ps1", w, Some(&theirs)) {
            Verdict::Refuse(r) => assert!(r.contains("replace_unmanaged") && r.contains("t.ps1")),
            v => panic!("someone else's file must be left alone: {v:?}"),
        }
        let mut allowed = spec("t.ps1");
        allowed.replace_unmanaged = true;
        let b = bundle(&[allowed]);
        assert_eq!(
            verdict("t.ps1", b.get("t.ps1"), Some(&theirs)),
            Verdict::Upload { replace: true }
        );
    }

    #[test]
    fn a_listing_without_hash_is_not_taken_for_the_right_version() {
        let b = bundle(&[spec("t.ps1")]);
        let mut l = listed("t.ps1", NEW, &spec("t.ps1").managed_description());
        l.sha256 = None;
        assert_eq!(
            verdict("t.ps1", b.get("t.ps1"), Some(&l)),
            Verdict::Upload { replace: true }
        );
    }

    #[test]
    fn external_files() {
        let mut e = spec("collector.exe");
        e.external = true;
        let b = bundle(&[e.clone()]);
        match verdict("collector.exe", b.get("collector.exe"), None) {
            Verdict::Refuse(r) => assert!(r.contains("external") && r.contains("collector.exe")),
            v => panic!("{v:?}"),
        }
        let there = listed("collector.exe", b"anything", "theirs");
        assert!(matches!(
            verdict("collector.exe", b.get("collector.exe"), Some(&there)),
            Verdict::Ready(LibraryUse {
                source: LibrarySource::External,
                ..
            })
        ));
        e.sha256 = Some(crate::hash::sha256_hex(b"v1"));
        let b = bundle(&[e]);
        assert!(matches!(
            verdict("collector.exe", b.get("collector.exe"), Some(&there)),
            Verdict::Refuse(r) if r.contains("pins")
        ));
        assert!(matches!(
            verdict(
                "collector.exe",
                b.get("collector.exe"),
                Some(&listed("collector.exe", b"v1", ""))
            ),
            Verdict::Ready(_)
        ));
    }

    #[test]
    fn an_undeclared_file_is_refused_by_name() {
        assert!(matches!(
            verdict("x.ps1", None, None),
            Verdict::Refuse(r) if r.contains("x.ps1")
        ));
    }
}
