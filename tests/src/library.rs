//! The live response library for tests: submit's library sync switched off for stage handlers
//! called directly, and the bundled playbooks' library files as simulator seeds (a tenant that
//! already holds exactly what the pipeline ships).

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

/// Every file of `shared/playbooks/library/`, as a simulator seed with its exact bytes, uploaded
/// by someone else (no pipeline marker): the tenant holds the bundle's versions.
pub fn bundled_seeds() -> Vec<LibrarySeed> {
    BUNDLED_LIBRARY
        .iter()
        .map(|(name, bytes)| LibrarySeed {
            name: name.to_string(),
            content: String::from_utf8(bytes.to_vec()).expect("bundled scripts are UTF-8 text"),
            description: "uploaded by hand".into(),
            ..LibrarySeed::default()
        })
        .collect()
}
