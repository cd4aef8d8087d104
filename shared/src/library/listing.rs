//! The tenant's library as Defender listed it, looked up without regard to case as Defender's
//! names are, with the names it lists more than once kept aside (a sync never guesses which of
//! two entries is meant). Entries Defender describes in a way we cannot read are left out, so one
//! odd entry never hides the others.

use std::collections::BTreeMap;

use crate::defender::LibraryFile;

/// The library's files by lower-case name.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    files: BTreeMap<String, LibraryFile>,
    twins: BTreeMap<String, Vec<String>>,
}

impl Listing {
    /// The listing of `files`.
    pub fn of(files: Vec<LibraryFile>) -> Self {
        let mut listing = Self::default();
        for f in files {
            let key = f.file_name.to_ascii_lowercase();
            if let Some(first) = listing.files.get(&key) {
                let names = listing
                    .twins
                    .entry(key.clone())
                    .or_insert_with(|| vec![first.file_name.clone()]);
                names.push(f.file_name.clone());
            }
            listing.files.insert(key, f);
        }
        listing
    }

    /// The file of this name (any case).
    pub fn get(&self, name: &str) -> Option<&LibraryFile> {
        self.files.get(&name.to_ascii_lowercase())
    }

    /// The entries listed under this name (any case) when there is more than one.
    pub fn twins(&self, name: &str) -> Option<&[String]> {
        self.twins
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
    }

    /// Records a file as Defender answered an upload of it.
    pub fn insert(&mut self, file: LibraryFile) {
        self.files.insert(file.file_name.to_ascii_lowercase(), file);
    }
}
