//! The live response library for tests: submit's library sync switched off for stage handlers
//! called directly, and the bundled playbooks' library files as simulator seeds, under their
//! plain names (for tests that run them through the API by hand) and their versioned names (a
//! tenant that already holds exactly what the pipeline ships, where the pipeline looks).

use std::sync::LazyLock;

use mde_sim::LibrarySeed;
use shared::adapters::memory::MemLibrary;
use shared::library::bundle::BUNDLED_LIBRARY;
use shared::library::{Librarian, LibrarySync};

static OFF: LazyLock<Librarian> = LazyLock::new(Librarian::off);
static NONE: LazyLock<MemLibrary> = LazyLock::new(MemLibrary::default);

/// Library sync that does nothing: for handlers whose tests are not about the library.
pub fn sync_off() -> LibrarySync<'static> {
    LibrarySync {
        keeper: &OFF,
        api: &*NONE,
    }
}

/// An empty live response library: what poll lists after an action for handlers called
/// directly whose runs use no library file (it is not listed for those).
pub fn empty() -> &'static MemLibrary {
    &NONE
}

/// `toml` with a `sha256` pin for each of `files` it declares (after the declaration's name): a
/// playbook file a deployment pins must pin every library file it manages.
pub fn pin_files(toml: &str, files: &[(&str, &[u8])]) -> String {
    let mut toml = toml.to_string();
    for (name, bytes) in files {
        let line = format!("name = \"{name}\"\n");
        toml = toml.replacen(
            &line,
            &format!("{line}sha256 = \"{}\"\n", shared::hash::sha256_hex(bytes)),
            1,
        );
    }
    toml
}

/// The bundled playbook file with its library files pinned: what a deployment puts in S3.
pub fn pinned_bundled_playbooks() -> String {
    pin_files(shared::alerts::playbook::BUNDLED, BUNDLED_LIBRARY)
}

/// Every file of `shared/playbooks/library/`, as simulator seeds with its exact bytes, uploaded
/// by someone else (no pipeline marker), under its plain and its versioned name.
pub fn bundled_seeds() -> Vec<LibrarySeed> {
    BUNDLED_LIBRARY
        .iter()
        .flat_map(|(name, bytes)| {
            let content =
                String::from_utf8(bytes.to_vec()).expect("bundled scripts are UTF-8 text");
            let versioned = shared::library::versioned_name(name, &shared::hash::sha256_hex(bytes));
            [name.to_string(), versioned].map(|n| LibrarySeed {
                name: n,
                content: content.clone(),
                description: "uploaded by hand".into(),
                ..LibrarySeed::default()
            })
        })
        .collect()
}
