//! Before a run is submitted: every library file its commands name is in the tenant's library as
//! the playbook needs it, uploading what the bundle manages when it is missing or stale. The
//! library's listing is kept per cold start (and looked at again after [`LISTING_TTL`]), so a warm
//! submit makes no library call for runs whose files are in place. A run is refused, or a file
//! replaced, only on a listing taken for that decision, so a stale listing never refuses a run nor
//! overwrites a file someone put there since; a missing file is uploaded without `OverrideIfExists`,
//! so an upload on a stale view cannot replace anything either.
//!
//! One sync at a time per function instance (a batch's messages wait for the one that lists and
//! uploads, then find the listing fresh); every list and upload is a call of the tenant's GET
//! budget, so syncing never pushes Defender into 429s. Instances that race upload the same bytes;
//! an upload refused because another put the file there first makes the next round list again.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::verdict::{Verdict, verdict};
use super::{Bundle, LibraryUse};
use crate::budget::{self, BudgetConfig, Paced};
use crate::clock::Clock;
use crate::config::{ConfigError, Env, optional};
use crate::defender::{DefenderError, LibraryFile, Next};
use crate::ports::{LibraryApi, ObjectStore, StoreError};

/// How long a listing is trusted before the next run that needs a file lists again.
pub const LISTING_TTL: Duration = Duration::from_secs(600);

/// Rounds of list-and-upload before a sync is tried again later (the library kept changing).
const ROUNDS: usize = 4;

/// What submit does about the library (`LIBRARY_SYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Upload what is missing or stale (`upload`, the default; needs `Library.Manage`).
    Upload,
    /// Only check: a run whose managed file is missing or stale fails before submission
    /// (`verify`; for tenants whose library changes go through review).
    Verify,
    /// Neither (`off`): a missing script fails on the device, as without this feature.
    Off,
}

impl SyncMode {
    /// Reads `LIBRARY_SYNC` (`upload`, `verify` or `off`; `upload` when unset).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        match optional(env, "LIBRARY_SYNC").as_deref() {
            None | Some("upload") => Ok(Self::Upload),
            Some("verify") => Ok(Self::Verify),
            Some("off") => Ok(Self::Off),
            Some(other) => Err(ConfigError::Invalid {
                var: "LIBRARY_SYNC",
                value: other.to_string(),
                reason: "expected upload, verify or off".into(),
            }),
        }
    }
}

/// What became of a sync for one run.
#[derive(Debug)]
pub enum Ensured {
    /// The library holds every file the run names, as used (empty when sync is off or the run names
    /// none).
    Ready(Vec<LibraryUse>),
    /// The tenant budget has no room for a library call now: ask again after this long.
    Wait(Duration),
    /// The run cannot have a file as its playbook needs it: it ends before submission, with this
    /// reason naming the file and what to do.
    Refused(String),
    /// Defender failed in a way worth retrying (throttled, unavailable).
    Retry(DefenderError),
}

/// The tenant's library as last listed.
struct Listing {
    files: BTreeMap<String, LibraryFile>,
    at: OffsetDateTime,
}

impl Listing {
    fn of(files: Vec<LibraryFile>, at: OffsetDateTime) -> Self {
        Self {
            files: files
                .into_iter()
                .map(|f| (f.file_name.to_ascii_lowercase(), f))
                .collect(),
            at,
        }
    }

    fn get(&self, name: &str) -> Option<&LibraryFile> {
        self.files.get(&name.to_ascii_lowercase())
    }
}

/// What submit keeps the library with: the librarian (bundle, mode, listing) and the API it calls.
#[derive(Clone, Copy)]
pub struct LibrarySync<'a> {
    /// The bundle, the mode and the cached listing.
    pub keeper: &'a Librarian,
    /// Defender's library API.
    pub api: &'a dyn LibraryApi,
}

impl LibrarySync<'_> {
    /// [`Librarian::ensure`] through this API.
    pub async fn ensure<S: ObjectStore>(
        self,
        store: &S,
        budget: &BudgetConfig,
        clock: &dyn Clock,
        names: &[String],
    ) -> Result<Ensured, StoreError> {
        self.keeper
            .ensure(self.api, store, budget, clock, names)
            .await
    }
}

/// Keeps the library in step with the bundle for submit: built once per cold start.
pub struct Librarian {
    bundle: Bundle,
    mode: SyncMode,
    listing: tokio::sync::Mutex<Option<Listing>>,
}

impl Librarian {
    /// A librarian for `bundle`, doing what `mode` says.
    pub fn new(bundle: Bundle, mode: SyncMode) -> Self {
        Self {
            bundle,
            mode,
            listing: tokio::sync::Mutex::new(None),
        }
    }

    /// One that does nothing (sync off, nothing declared).
    pub fn off() -> Self {
        Self::new(Bundle::empty(), SyncMode::Off)
    }

    /// The bundle it keeps.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Makes sure the library holds each of `names` as the bundle needs it, uploading (in
    /// [`SyncMode::Upload`]) within the tenant's GET budget; `Err` only when the budget's store
    /// failed.
    pub async fn ensure<S: ObjectStore>(
        &self,
        api: &dyn LibraryApi,
        store: &S,
        budget: &BudgetConfig,
        clock: &dyn Clock,
        names: &[String],
    ) -> Result<Ensured, StoreError> {
        if self.mode == SyncMode::Off || names.is_empty() {
            return Ok(Ensured::Ready(Vec::new()));
        }
        let mut cache = self.listing.lock().await;
        let mut listed_now = false;
        for _ in 0..ROUNDS {
            let stale = cache
                .as_ref()
                .is_none_or(|l| clock.now() - l.at > LISTING_TTL);
            if stale {
                match budget::get_call(store, budget, clock, || api.list()).await? {
                    Paced::Wait(wait) => return Ok(Ensured::Wait(wait)),
                    Paced::Ran(Err(e)) => return Ok(failed(e, "listing")),
                    Paced::Ran(Ok(files)) => {
                        *cache = Some(Listing::of(files, clock.now()));
                        listed_now = true;
                    }
                }
            }
            let Some(listing) = cache.as_mut() else {
                continue;
            };
            let mut uses = Vec::new();
            let mut uploads = Vec::new();
            let mut refusal = None;
            for name in names {
                match verdict(name, self.bundle.get(name), listing.get(name)) {
                    Verdict::Ready(u) => uses.push(u),
                    Verdict::Upload { replace } => uploads.push((name, replace)),
                    Verdict::Refuse(r) => refusal = refusal.or(Some(r)),
                }
            }
            if uses.len() == names.len() {
                return Ok(Ensured::Ready(uses));
            }
            // A run is refused, and a file replaced, only on what the library holds now, not on
            // what it held at the last listing. A missing file is uploaded on the cached view:
            // if someone put it there since, Defender refuses the upload and the next round looks.
            let replaces = uploads.iter().any(|(_, replace)| *replace);
            let refuses = refusal.is_some() || self.mode == SyncMode::Verify;
            if !listed_now && (refuses || replaces) {
                *cache = None;
                continue;
            }
            if let Some(r) = refusal {
                return Ok(Ensured::Refused(r));
            }
            if self.mode == SyncMode::Verify {
                let names: Vec<&str> = uploads.iter().map(|(n, _)| n.as_str()).collect();
                return Ok(Ensured::Refused(format!(
                    "library file(s) {} missing from the tenant's library or not the playbook's version, and LIBRARY_SYNC=verify does not upload",
                    names.join(", ")
                )));
            }
            for (name, replace) in uploads {
                let Some(file) = self.bundle.get(name) else {
                    continue;
                };
                let upload = file.upload(replace);
                match budget::get_call(store, budget, clock, || api.upload(&upload)).await? {
                    Paced::Wait(wait) => return Ok(Ensured::Wait(wait)),
                    Paced::Ran(Ok(mut entity)) => {
                        tracing::info!(
                            file = %upload.file_name,
                            sha256 = file.sha256.as_deref().unwrap_or_default(),
                            replaced = replace,
                            "uploaded a library file"
                        );
                        // Defender's answer names the hash it stored; without one, ours stands.
                        entity.sha256 = entity.sha256.or_else(|| file.sha256.clone());
                        listing
                            .files
                            .insert(upload.file_name.to_ascii_lowercase(), entity);
                    }
                    Paced::Ran(Err(DefenderError::Rejected { .. })) if !replace => {
                        // Most likely another instance uploaded it first: look again.
                        *cache = None;
                        listed_now = false;
                        break;
                    }
                    Paced::Ran(Err(e)) => return Ok(failed(e, "uploading")),
                }
            }
        }
        Ok(Ensured::Retry(DefenderError::Transient {
            reason: "the live response library kept changing while it was synced".into(),
        }))
    }
}

/// A failed library call: retried when Defender says so, else the run is refused with a reason
/// that says what to fix.
fn failed(e: DefenderError, doing: &str) -> Ensured {
    match e.next() {
        Next::RetryAfter(_) => Ensured::Retry(e),
        Next::GiveUp => {
            let hint = match e {
                DefenderError::Unauthorized { .. } => {
                    " (the app registration needs the Library.Manage permission, or set LIBRARY_SYNC=off)"
                }
                _ => "",
            };
            Ensured::Refused(format!(
                "{doing} the live response library failed: {e}{hint}"
            ))
        }
    }
}
