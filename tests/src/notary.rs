//! A notary for stage handlers called directly: an in-memory signing key and bus that live for
//! the whole test binary. Tests that check signatures or events make their own
//! `MemSigner`/`MemEvents`.

use std::sync::LazyLock;

use shared::adapters::memory::{MemEvents, MemSigner};
use shared::ports::Notary;

static SIGNER: LazyLock<MemSigner> = LazyLock::new(MemSigner::default);
static EVENTS: LazyLock<MemEvents> = LazyLock::new(MemEvents::default);

/// A notary whose signatures and events go nowhere a test looks.
pub fn notary() -> Notary<'static> {
    Notary {
        signer: &*SIGNER,
        events: &*EVENTS,
    }
}
