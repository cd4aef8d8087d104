//! Before a run is submitted: every library file its commands name is in the tenant's library as
//! the playbook needs it (a bundled file under its versioned name), uploading what the bundle
//! manages when it is missing or damaged. Every decision is made on a listing at most [`FRESH`]
//! old: a run is judged ready, refused, or a file replaced only on it, so a script swapped in the
//! library (the portal, or any app with Library.Manage) is seen before the device runs it as
//! SYSTEM, and a stale listing never refuses a run nor overwrites a file someone put there since
//! (runs submitted within [`FRESH`] of each other share one listing); a missing file
//! is uploaded without `OverrideIfExists`, so an upload on a stale view cannot replace anything
//! either, and an upload Defender refuses is looked at once more, then refused in Defender's words.
//!
//! One sync at a time per function instance (a batch's messages wait for the one that lists and
//! uploads, then find the listing warm; a failed call answers for [`FAILED_CALL_KEPT`], so they
//! do not each wait out the same failing call); every list and upload is a call of the
//! tenant's GET budget, so syncing never pushes Defender into 429s. Instances that race upload the
//! same bytes; an upload refused because another put the file there first is settled by listing.

use std::time::Duration;

use time::OffsetDateTime;

use super::verdict::{Verdict, judge};
use super::{Bundle, LibraryUse, Listing};
use crate::budget::{self, BudgetConfig, Paced};
use crate::clock::Clock;
use crate::config::{ConfigError, Env, optional};
use crate::defender::{DefenderError, Next};
use crate::ports::{LibraryApi, ObjectStore, StoreError};

/// Rounds of list-and-upload before a sync is tried again later (the library kept changing).
const ROUNDS: usize = 4;

/// A listing this recent is taken as the library as it is now: a run may be refused, or a file
/// replaced, on it (older ones are looked at again first).
pub const FRESH: Duration = Duration::from_secs(30);

/// A failed library call (a listing or an upload) answers for this long: the other messages of a
/// batch get the same answer at once instead of each waiting out the same failing call.
pub const FAILED_CALL_KEPT: Duration = Duration::from_secs(30);

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
    /// The mode named `upload`, `verify` or `off`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "upload" => Some(Self::Upload),
            "verify" => Some(Self::Verify),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    /// Reads `LIBRARY_SYNC` (`upload`, `verify` or `off`; `upload` when unset).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        match optional(env, "LIBRARY_SYNC") {
            None => Ok(Self::Upload),
            Some(name) => Self::parse(&name).ok_or(ConfigError::Invalid {
                var: "LIBRARY_SYNC",
                value: name,
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

/// The tenant's library as last listed, and when; and the last library call that failed.
#[derive(Default)]
struct Cache {
    listing: Option<(Listing, OffsetDateTime)>,
    failed: Option<Failure>,
}

/// A library call that failed: when, why, and whether retrying can help.
struct Failure {
    at: OffsetDateTime,
    reason: String,
    permanent: bool,
}

impl Failure {
    fn answer(&self) -> Ensured {
        if self.permanent {
            Ensured::Refused(self.reason.clone())
        } else {
            Ensured::Retry(DefenderError::Transient {
                reason: format!(
                    "a live response library call failed moments ago: {}",
                    self.reason
                ),
            })
        }
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
    cache: tokio::sync::Mutex<Cache>,
    playbook_file: Option<String>,
}

impl Librarian {
    /// A librarian for `bundle`, doing what `mode` says.
    pub fn new(bundle: Bundle, mode: SyncMode) -> Self {
        Self {
            bundle,
            mode,
            cache: tokio::sync::Mutex::new(Cache::default()),
            playbook_file: None,
        }
    }

    /// The same, for the playbook file with this SHA-256 (the one the bundle came with): submit
    /// then acts only on runs rendered with that file ([`Librarian::rendered_elsewhere`]).
    pub fn rendering(mut self, playbook_file_sha256: &str) -> Self {
        self.playbook_file = Some(playbook_file_sha256.to_string());
        self
    }

    /// Why a run rendered with the playbook file `run_file` must not be submitted with this
    /// bundle, if it must not: intake rendered it with another file than the one this instance
    /// loaded (a deployment rolling out, or a file changed without one), so the scripts this
    /// bundle would put in the library may not be the ones the run's playbook pinned. `None`
    /// when they agree, or either is not known (runs from before files were recorded).
    pub fn rendered_elsewhere(&self, run_file: Option<&str>) -> Option<String> {
        let (ours, theirs) = (self.playbook_file.as_deref()?, run_file?);
        (!ours.eq_ignore_ascii_case(theirs)).then(|| {
            format!(
                "the run was rendered with playbook file {theirs}, but this submit instance loaded {ours}; it is submitted only by an instance with the same file (a deployment may be rolling out)"
            )
        })
    }

    /// One that does nothing (sync off, nothing declared).
    pub fn off() -> Self {
        Self::new(Bundle::empty(), SyncMode::Off)
    }

    /// Makes sure the library holds each of `names` (as the playbook names them) as the bundle
    /// needs it, uploading (in [`SyncMode::Upload`]) within the tenant's GET budget; `Err` only
    /// when the budget's store failed.
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
        let mut wanted = Vec::with_capacity(names.len());
        for name in names {
            match self.bundle.get(name) {
                Some(file) => wanted.push(file),
                // Intake accepted the run with a playbook file that declares it: this instance
                // loaded an older one (a deployment is rolling out). A later attempt, on a fresh
                // instance, has it.
                None => {
                    return Ok(Ensured::Retry(DefenderError::Transient {
                        reason: format!(
                            "library file {name} is not declared in the playbook file this submit instance loaded (older than the one that accepted the run?)"
                        ),
                    }));
                }
            }
        }
        let mut cache = self.cache.lock().await;
        if let Some(f) = &cache.failed
            && clock.now() - f.at < FAILED_CALL_KEPT
        {
            // Every message of a batch would otherwise wait out the same failing call in turn,
            // and each would be told something else.
            return Ok(f.answer());
        }
        let mut rejected: Option<(String, String)> = None;
        let mut must_list = false;
        for _ in 0..ROUNDS {
            if must_list || cache.listing.is_none() {
                match budget::get_call_at_once(store, budget, clock, || api.list()).await? {
                    Paced::Wait(wait) => return Ok(Ensured::Wait(wait)),
                    Paced::Ran(Err(e)) => {
                        let (answer, failure) = failed(e, "listing", clock.now());
                        cache.failed = Some(failure);
                        return Ok(answer);
                    }
                    Paced::Ran(Ok(files)) => {
                        cache.failed = None;
                        cache.listing = Some((Listing::of(files), clock.now()));
                        must_list = false;
                    }
                }
            }
            let Some((listing, at)) = cache.listing.as_mut() else {
                continue;
            };
            let fresh = clock.now() - *at <= FRESH;
            let mut uses = Vec::new();
            let mut uploads = Vec::new();
            let mut refusal = None;
            let mut occupied = None;
            for file in &wanted {
                match judge(file, listing) {
                    Verdict::Ready(u) => uses.push(u),
                    Verdict::Upload { replace } => uploads.push((*file, replace)),
                    // The versioned name is the pipeline's by construction (it carries the
                    // bytes' hash): someone else's file under it is a plant, or a mistake, that
                    // would otherwise refuse every run needing the file. The run waits for a
                    // person to remove it (retried, then failed with the reason), with an alarm.
                    Verdict::Refuse(r) if occupies_versioned_name(file, listing) => {
                        occupied = occupied.or(Some(r));
                    }
                    Verdict::Refuse(r) => refusal = refusal.or(Some(r)),
                }
            }
            if uses.len() == wanted.len() {
                if fresh {
                    return Ok(Ensured::Ready(uses));
                }
                // Judged ready only on a view at most FRESH old: a script swapped since the last
                // listing must be seen before the device runs it.
                must_list = true;
                continue;
            }
            // A run is refused, and a file replaced, only on a fresh view of the library. A missing
            // file is uploaded on an older one: if someone put it there since, Defender refuses
            // the upload (no OverrideIfExists) and the next round looks again.
            let replaces = uploads.iter().any(|(_, replace)| *replace);
            let refuses = refusal.is_some() || self.mode == SyncMode::Verify;
            if !fresh && (refuses || replaces) {
                must_list = true;
                continue;
            }
            if let Some(r) = refusal {
                return Ok(Ensured::Refused(r));
            }
            if let Some(r) = occupied {
                if !fresh {
                    must_list = true;
                    continue;
                }
                tracing::error!(alarm = "library_name_occupied", "{r}");
                return Ok(Ensured::Retry(DefenderError::Transient {
                    reason: format!("{r} (the run waits for it to be removed)"),
                }));
            }
            if self.mode == SyncMode::Verify {
                let names: Vec<String> = uploads
                    .iter()
                    .map(|(f, _)| format!("{} (as {})", f.spec.name, f.library_name()))
                    .collect();
                return Ok(Ensured::Refused(format!(
                    "library file(s) {} missing from the tenant's library or not the playbook's version, and LIBRARY_SYNC=verify does not upload",
                    names.join(", ")
                )));
            }
            for (file, replace) in uploads {
                let upload = file.upload(replace);
                if let Some((name, why)) = &rejected
                    && *name == upload.file_name
                {
                    // Defender refused this very upload, and the library still lacks the file:
                    // not a race with another instance, but the upload itself.
                    return Ok(Ensured::Refused(format!(
                        "Defender refused the upload of library file {name}: {why}"
                    )));
                }
                let ours = file.sha256.clone();
                match budget::get_call_at_once(store, budget, clock, || api.upload(&upload)).await?
                {
                    Paced::Wait(wait) => return Ok(Ensured::Wait(wait)),
                    Paced::Ran(Ok(mut entity)) => {
                        // Defender's answer names the hash it stored; without one, ours stands.
                        entity.sha256 = entity.sha256.or_else(|| ours.clone());
                        if !entity
                            .sha256
                            .as_deref()
                            .zip(ours.as_deref())
                            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
                        {
                            return Ok(Ensured::Refused(format!(
                                "library file {} was uploaded but Defender stored SHA-256 {}, not the bundle's {}",
                                upload.file_name,
                                entity.sha256.as_deref().unwrap_or_default(),
                                ours.as_deref().unwrap_or_default()
                            )));
                        }
                        tracing::info!(
                            file = %upload.file_name,
                            sha256 = ours.as_deref().unwrap_or_default(),
                            replaced = replace,
                            "uploaded a library file"
                        );
                        listing.insert(entity);
                    }
                    Paced::Ran(Err(e @ DefenderError::Rejected { .. })) if !replace => {
                        // Most likely another instance uploaded it first: look again, and refuse
                        // if it is still missing.
                        rejected = Some((upload.file_name.clone(), e.to_string()));
                        must_list = true;
                        break;
                    }
                    Paced::Ran(Err(e)) => {
                        let (answer, failure) = failed(e, "uploading to", clock.now());
                        cache.failed = Some(failure);
                        return Ok(answer);
                    }
                }
            }
        }
        Ok(Ensured::Retry(DefenderError::Transient {
            reason: "the live response library kept changing while it was synced".into(),
        }))
    }
}

/// Whether `file` is kept under a versioned name that someone else's file (no pipeline marker,
/// other bytes) occupies in `listing`.
fn occupies_versioned_name(file: &super::BundleFile, listing: &Listing) -> bool {
    let name = file.library_name();
    file.managed()
        && name != file.spec.name
        && listing
            .get(&name)
            .is_some_and(|l| !super::verdict::is_managed(l))
}

/// A failed library call: retried when Defender says so, else the run is refused with a reason
/// that says what to fix; and the failure to answer with for a while.
fn failed(e: DefenderError, doing: &str, now: OffsetDateTime) -> (Ensured, Failure) {
    let permanent = e.next() == Next::GiveUp;
    let hint = match e {
        DefenderError::Unauthorized { .. } => {
            " (the app registration needs the Library.Manage permission, or set LIBRARY_SYNC=off)"
        }
        _ => "",
    };
    let reason = format!("{doing} the live response library failed: {e}{hint}");
    let failure = Failure {
        at: now,
        reason: reason.clone(),
        permanent,
    };
    let answer = if permanent {
        Ensured::Refused(reason)
    } else {
        Ensured::Retry(e)
    };
    (answer, failure)
}
