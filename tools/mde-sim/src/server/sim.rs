//! `Sim`, what every handler shares: the config, the simulated clock, the state behind one lock and
//! the key that signs result links; and what it does on its own (lock the state, reset it, list
//! the actions, name a client's requestor).
//!
//! Separate from `SimServer` (which starts the routes over a `Sim`) so that the handlers and the
//! guard stand on it without reaching up to the server that runs them. Other modules add to it
//! what is theirs: `auth` the bearer check, `guard` the faults and limits, `blob` the links.

use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use super::state::State;
use crate::clock::SimClock;
use crate::config::SimConfig;

pub(super) struct Sim {
    pub(super) config: SimConfig,
    pub(super) clock: SimClock,
    pub(super) state: Mutex<State>,
    /// Signs result links (see `blob`).
    pub(super) key: [u8; 32],
    pub(super) api_base: String,
    pub(super) blob_base: String,
}

impl Sim {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets actions, links, library changes and statistics; keeps tokens, clients and faults.
    pub(super) fn reset(&self) {
        let mut st = self.lock();
        let tokens = std::mem::take(&mut st.tokens);
        let clients = std::mem::take(&mut st.clients);
        let issued = std::mem::take(&mut st.issued);
        let faults = st.faults.clone();
        *st = State::new(&self.config, self.clock.now());
        st.tokens = tokens;
        st.clients = clients;
        st.issued = issued;
        st.set_faults(faults);
    }

    /// Every action created, as the API shows it now.
    pub(super) fn action_entities(&self) -> Vec<Value> {
        let now = self.clock.now();
        self.lock().actions.iter().map(|a| a.entity(now)).collect()
    }

    /// The `requestor` the API records for the client at `client` (see `auth::client_of`).
    pub(super) fn requestor(&self, client: usize) -> String {
        self.config
            .clients
            .get(client)
            .map(|c| c.requestor.clone())
            .unwrap_or_default()
    }
}
