//! What the simulator remembers between requests: clients and tokens, actions, issued links, the
//! library, the limit windows, the fault dice, and the `Stats` tests and benchmarks read; with the
//! records it keeps of an issued link (`Link`) and of a library file (`LibraryFile`).
//!
//! Separate from the handlers so that one struct lists everything one lock guards; each API family
//! reads and writes its own fields (`blob` issues and opens links, `library` lists and changes the
//! library).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::action::Action;
use crate::config::{Client, Faults, SimConfig};
use crate::content::FileContent;
use crate::limits::{SeededRng, SlidingWindow};

/// Calls and outcomes, for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(default)]
pub struct Stats {
    /// Calls by endpoint, then by HTTP status.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// 429 responses sent, for any reason.
    pub throttled: u64,
    /// 429s sent because a documented limit was reached (not injected).
    pub throttled_by_limit: u64,
    /// Faults injected (429, 500, 503, early 404s, cut downloads, early link expiry).
    pub injected_faults: u64,
    /// Most submission calls (any outcome) in one sliding minute of simulated time.
    pub max_submissions_per_minute: u32,
    /// Most sessions (Pending or InProgress) at one time.
    pub max_concurrent_sessions: u32,
    pub actions_created: u64,
    pub links_issued: u64,
    pub downloads_cut: u64,
    pub blob_bytes_sent: u64,
    /// Blob requests that carried an Authorization header (a client leaking its bearer token).
    pub blob_requests_with_authorization: u64,
    /// Where each ranged blob request started, in order.
    pub blob_range_starts: Vec<u64>,
    /// Library listings served (`GET /api/libraryfiles` answered 200).
    pub library_lists: u64,
    /// Library uploads accepted (`POST /api/libraryfiles` answered 200), overrides included.
    pub library_uploads: u64,
}

pub(super) struct State {
    pub(super) clients: Vec<Client>,
    /// Every token ever issued (tests scan logs for them).
    pub(super) issued: Vec<String>,
    pub(super) actions: Vec<Action>,
    pub(super) by_id: HashMap<String, usize>,
    /// Token -> (expiry, index of its client).
    pub(super) tokens: HashMap<String, (OffsetDateTime, usize)>,
    /// Link nonce -> the result it opens.
    pub(super) links: HashMap<String, Link>,
    pub(super) submit_window: SlidingWindow,
    pub(super) submit_calls: SlidingWindow,
    /// Call budget group (status, link, cancel, library) -> (per-minute, per-hour) windows.
    pub(super) budget_windows: HashMap<&'static str, (SlidingWindow, SlidingWindow)>,
    pub(super) library: Library,
    pub(super) crc_cache: HashMap<FileContent, u32>,
    /// The working folders large-file splits left on the devices.
    pub(super) folders: crate::large::Folders,
    pub(super) rng: SeededRng,
    pub(super) faults: Faults,
    pub(super) stats: Stats,
}

impl State {
    pub(super) fn new(config: &SimConfig, now: OffsetDateTime) -> Self {
        let l = &config.limits;
        Self {
            clients: config.clients.clone(),
            issued: Vec::new(),
            actions: Vec::new(),
            by_id: HashMap::new(),
            tokens: HashMap::new(),
            links: HashMap::new(),
            submit_window: SlidingWindow::new(Duration::minutes(1), l.submissions_per_minute),
            submit_calls: SlidingWindow::new(Duration::minutes(1), u32::MAX),
            budget_windows: HashMap::new(),
            library: seeded_library(config, now),
            crc_cache: HashMap::new(),
            folders: Default::default(),
            rng: SeededRng::new(config.faults.seed),
            faults: config.faults.clone(),
            stats: Stats::default(),
        }
    }

    /// New faults, with the dice reseeded from them.
    pub(super) fn set_faults(&mut self, faults: Faults) {
        self.rng = SeededRng::new(faults.seed);
        self.faults = faults;
    }

    pub(super) fn running_sessions(&self, now: OffsetDateTime) -> usize {
        self.actions
            .iter()
            .filter(|a| !a.status(now).is_final())
            .count()
    }

    /// An action by id, without regard to case.
    pub(super) fn find_action(&self, id: &str) -> Option<&Action> {
        self.by_id
            .get(&id.to_ascii_lowercase())
            .and_then(|i| self.actions.get(*i))
    }
}

/// What an issued link opens.
pub(super) struct Link {
    pub(super) action_id: String,
    pub(super) index: usize,
    /// Set when the link was chosen to stop working before its `se`.
    pub(super) dies_at: Option<OffsetDateTime>,
}

/// A file in the live response library (the API's view of it: `library::library_entity`).
#[derive(Clone)]
pub(super) struct LibraryFile {
    pub(super) sha256: String,
    pub(super) description: String,
    pub(super) parameters_description: String,
    pub(super) has_parameters: bool,
    pub(super) created: OffsetDateTime,
    pub(super) updated: OffsetDateTime,
    pub(super) created_by: String,
}

/// Lower-case name -> (name as uploaded, file).
pub(super) type Library = BTreeMap<String, (String, LibraryFile)>;

/// The library a fresh (or reset) simulator starts with: the config's `[[library]]` seeds, each
/// hashed from its content (`[[scripts]]` only say how a script behaves when run).
fn seeded_library(config: &SimConfig, now: OffsetDateTime) -> Library {
    config
        .library
        .iter()
        .map(|seed| {
            (
                seed.name.to_ascii_lowercase(),
                (
                    seed.name.clone(),
                    LibraryFile {
                        sha256: seed.sha256(),
                        description: seed.description.clone(),
                        parameters_description: seed.parameters_description.clone(),
                        has_parameters: seed.has_parameters,
                        created: now,
                        updated: now,
                        created_by: "mde-sim".into(),
                    },
                ),
            )
        })
        .collect()
}
