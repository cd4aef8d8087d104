//! The status board: one listing of the pipeline's live response actions, shared by every poll.
//!
//! Looking at each run's action on its own costs a GET per run per look: 25 runs looked at every
//! 10 s are 150 GETs a minute, past Defender's 100, and stepping the looks out to stay within it
//! leaves a finished action unnoticed for minutes. One list call
//! (`GET /api/machineactions?$filter=creationDateTimeUtc ge ...`) answers for every run created
//! since the oldest one still running. So a poll reads the board (an S3 object) first and asks
//! Defender only when the board is older than [`FRESH`]: status GETs stay at about one per
//! [`FRESH`] for the whole tenant however many runs are live, and a run sees its action at most
//! [`FRESH`] old. One poll refreshes at a time (a claim written with If-Match; a claim lapses after
//! [`CLAIM`]). When the board says an action ended, the action itself is read once (by id): the
//! board says when, the action says what (its commands as Defender records them).
//!
//! The board is a cache: an unreadable one is ignored and rebuilt, one the store will not give
//! or take (denied, down) costs a read by id, an action missing from it is read by id, and
//! nothing is decided from it that the action itself would not say.

use std::time::Duration;

use time::OffsetDateTime;

use crate::budget::{self, BudgetConfig, Paced};
use crate::clock::Clock;
use crate::defender::{ActionFilter, ActionId, ActionStatus, DefenderError, MachineAction};
use crate::ids::MachineId;
use crate::ids::RUN_COMMENT_PREFIX;
use crate::ports::{Defender, ObjectStore, Put, PutResult, StoreError};
use crate::store::keys::board_key;

/// A board younger than this answers a poll without a call to Defender.
pub const FRESH: Duration = Duration::from_secs(5);
/// A refresh claimed by another poll is left to it for this long.
pub const CLAIM: Duration = Duration::from_secs(5);
/// The first page of a listing: a listing this long may have been cut short.
pub const PAGE: usize = 1000;
/// How far before a run's submission its action's creation time may lie (clock skew).
const SKEW: time::Duration = time::Duration::minutes(5);
/// How far back a listing reaches. An action created earlier (a Pending action for an offline
/// device can wait three days) is read by id on its own looks, which stretch out to a minute while
/// it is Pending, rather than widening every listing until they fill a page and the current runs
/// fall off it.
pub const WINDOW: time::Duration = time::Duration::hours(2);

/// The stored board.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Board {
    /// Format version (1).
    pub v: u32,
    /// When the listing was read from Defender.
    pub fetched_at: OffsetDateTime,
    /// The listing holds every live response action created at or after this.
    pub since: OffsetDateTime,
    /// The listing filled a whole page: an action not on it may still exist.
    pub partial: bool,
    /// A poll has been refreshing the board since then (the others read it meanwhile).
    #[serde(default)]
    pub refreshing_since: Option<OffsetDateTime>,
    /// The pipeline's actions on the listing (their comment carries a run's tag).
    pub actions: Vec<Entry>,
}

/// What the board keeps of an action: what a look at a running action uses.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The action's id.
    pub id: ActionId,
    /// Where it stood when listed.
    pub status: ActionStatus,
    /// Its device.
    pub machine_id: MachineId,
    /// The device's name, if Defender gave it.
    pub computer_dns_name: Option<String>,
    /// Who submitted it, as Defender names them.
    pub requestor: Option<String>,
    /// When it was created (Defender's text).
    pub created: Option<String>,
    /// When it last changed (Defender's text).
    pub last_update: Option<String>,
}

impl Entry {
    fn of(a: MachineAction) -> Self {
        Self {
            id: a.id,
            status: a.status,
            machine_id: a.machine_id,
            computer_dns_name: a.computer_dns_name,
            requestor: a.requestor,
            created: a.creation_date_time_utc,
            last_update: a.last_update_date_time_utc,
        }
    }

    /// The action as a look reports it: without its commands (read by id once it ends).
    fn action(&self) -> MachineAction {
        MachineAction {
            id: self.id.clone(),
            kind: Some("LiveResponse".into()),
            requestor: self.requestor.clone(),
            requestor_comment: None,
            status: self.status.clone(),
            machine_id: self.machine_id.clone(),
            computer_dns_name: self.computer_dns_name.clone(),
            creation_date_time_utc: self.created.clone(),
            last_update_date_time_utc: self.last_update.clone(),
            cancellation_requestor: None,
            cancellation_comment: None,
            cancellation_date_time_utc: None,
            commands: vec![],
        }
    }
}

impl Board {
    /// How old the board is at `now`. A board from the future (a skewed clock, or a forged
    /// object) counts as stale: trusting it would freeze every run's view.
    fn age(&self, now: OffsetDateTime) -> Duration {
        if self.fetched_at > now + time::Duration::SECOND {
            return Duration::MAX;
        }
        (now - self.fetched_at).try_into().unwrap_or(Duration::ZERO)
    }

    /// The board's view of `id`, if the board covers actions created at `created`.
    fn find(&self, id: &ActionId, created: OffsetDateTime) -> Seen<'_> {
        match self.actions.iter().find(|a| &a.id == id) {
            Some(a) => Seen::On(a),
            None if created < self.since => Seen::NotCovered,
            None => Seen::Missing,
        }
    }

    /// Whether another poll's claim to refresh is still running at `now`.
    fn claimed(&self, now: OffsetDateTime) -> bool {
        self.refreshing_since.is_some_and(|at| {
            at <= now + time::Duration::SECOND
                && (now - at).try_into().unwrap_or(Duration::ZERO) < CLAIM
        })
    }
}

enum Seen<'a> {
    On(&'a Entry),
    /// Covered, but not on it: just created (not listed yet), or past a partial listing's page.
    Missing,
    /// Created before what the board covers.
    NotCovered,
}

/// When a run's action was created, as near as the run knows: Defender's own creation time when
/// recorded (a run recovered after a lost answer records its submission late), else when it was
/// submitted, else when the run was recorded.
pub fn anchor(run: &crate::store::RunRecord) -> OffsetDateTime {
    run.action_created
        .as_deref()
        .and_then(parse_time)
        .or(run.submitted_at)
        .unwrap_or(run.created_at)
}

/// What a poll learns about its action, and what it cost.
pub type Look = Paced<Result<MachineAction, DefenderError>>;

/// The state of action `id`, created by Defender at about `submitted` (see [`anchor`]): from a fresh board; from
/// a listing that refreshes it; or, when the board cannot say (the action is not on it, or it
/// ended), from the action itself. Every Defender call goes through the tenant's GET budget.
pub async fn look<S: ObjectStore, D: Defender>(
    store: &S,
    defender: &D,
    budget_cfg: &BudgetConfig,
    clock: &dyn Clock,
    submitted: OffsetDateTime,
    id: &ActionId,
) -> Result<Look, StoreError> {
    let now = clock.now();
    let created = submitted - SKEW;
    let board_key = board_key(budget_cfg.key_tenant());
    if created < now - WINDOW {
        return by_id(store, defender, budget_cfg, clock, id).await;
    }
    // The board is a cache: when the store will not give it (denied, down), the action is read
    // by id (the budget, which is not a cache, still decides whether that can happen now).
    let (board, etag) = match load(store, &board_key).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(error = %e, key = %board_key, "status board unreadable from the store; reading the action by id");
            return by_id(store, defender, budget_cfg, clock, id).await;
        }
    };
    let mut board = board;
    if let Some(b) = &board {
        let fresh = b.age(now) <= FRESH;
        // Someone else is refreshing: a board up to a claim's length older still answers.
        let waiting = b.claimed(now) && b.age(now) <= FRESH + CLAIM;
        if fresh || waiting {
            match b.find(id, created) {
                Seen::On(a) => return by_id_if_final(store, defender, budget_cfg, clock, a).await,
                Seen::Missing if fresh => {
                    return by_id(store, defender, budget_cfg, clock, id).await;
                }
                _ => {}
            }
        }
    }
    // Stale, or it does not cover this run: claim the refresh (one poll at a time).
    if let Some(b) = board.as_mut()
        && !b.claimed(now)
    {
        b.refreshing_since = Some(now);
        let claim = match &etag {
            Some(e) => Put::IfMatch(e.clone()),
            None => Put::IfAbsent,
        };
        match store.put(&board_key, encode(b)?, claim).await {
            Ok(PutResult::Written { .. }) => {}
            Ok(PutResult::Conflict) => {
                // Another poll refreshed or claimed it first: read what it left.
                match load(store, &board_key).await {
                    Ok((Some(other), _)) if other.age(now) <= FRESH + CLAIM => {
                        if let Seen::On(a) = other.find(id, created) {
                            return by_id_if_final(store, defender, budget_cfg, clock, a).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, key = %board_key, "could not read the status board after losing its claim; listing")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, key = %board_key, "could not claim the status board's refresh; reading the action by id");
                return by_id(store, defender, budget_cfg, clock, id).await;
            }
        }
    }
    // The listing covers this run and every action still running on the old board.
    let oldest_running = board
        .iter()
        .flat_map(|b| &b.actions)
        .filter(|a| !a.status.is_final())
        .filter_map(|a| a.created.as_deref().and_then(parse_time))
        .min()
        .map(|t| t - SKEW);
    let since = oldest_running
        .map_or(created, |o| o.min(created))
        .max(now - WINDOW);
    let filter = ActionFilter {
        live_response_only: true,
        created_since: Some(since),
        ..ActionFilter::default()
    };
    let listed = budget::get_call(store, budget_cfg, clock, || {
        defender.list_machine_actions(&filter)
    })
    .await?;
    let listed = match listed {
        Paced::Wait(w) => return Ok(Paced::Wait(w)),
        Paced::Ran(Err(e)) => return Ok(Paced::Ran(Err(e))),
        Paced::Ran(Ok(listed)) => listed,
    };
    let fresh = Board {
        v: 1,
        fetched_at: now,
        since,
        partial: listed.len() >= PAGE,
        refreshing_since: None,
        actions: listed
            .into_iter()
            .filter(|a| {
                // The tag is the comment's first word (as submit reads it): someone else's
                // session that mentions a tag further on is not kept.
                a.requestor_comment
                    .as_deref()
                    .and_then(|c| c.split_whitespace().next())
                    .is_some_and(|w| w.starts_with(RUN_COMMENT_PREFIX))
            })
            .map(Entry::of)
            .collect(),
    };
    // A cache: a board that cannot be written costs the next poll a listing, nothing more.
    match encode(&fresh) {
        Ok(body) => {
            if let Err(e) = store.put(&board_key, body, Put::Always).await {
                tracing::warn!(error = %e, "could not write the status board");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not encode the status board"),
    }
    match fresh.find(id, created) {
        Seen::On(a) => by_id_if_final(store, defender, budget_cfg, clock, a).await,
        _ => by_id(store, defender, budget_cfg, clock, id).await,
    }
}

/// The action itself when the board says it ended (its commands as Defender records them);
/// otherwise the board's view, which cost nothing.
async fn by_id_if_final<S: ObjectStore, D: Defender>(
    store: &S,
    defender: &D,
    budget_cfg: &BudgetConfig,
    clock: &dyn Clock,
    seen: &Entry,
) -> Result<Look, StoreError> {
    if seen.status.is_final() {
        by_id(store, defender, budget_cfg, clock, &seen.id).await
    } else {
        Ok(Paced::Ran(Ok(seen.action())))
    }
}

/// One GET of the action by id.
async fn by_id<S: ObjectStore, D: Defender>(
    store: &S,
    defender: &D,
    budget_cfg: &BudgetConfig,
    clock: &dyn Clock,
    id: &ActionId,
) -> Result<Look, StoreError> {
    budget::get_call(store, budget_cfg, clock, || defender.get_machine_action(id)).await
}

/// The stored board and its ETag; an unreadable one is treated as absent (and rewritten by the
/// next refresh), with a warning.
async fn load<S: ObjectStore>(
    store: &S,
    key: &str,
) -> Result<(Option<Board>, Option<String>), StoreError> {
    let Some(stored) = store.get(key).await? else {
        return Ok((None, None));
    };
    match serde_json::from_slice::<Board>(&stored.body) {
        Ok(b) if b.v == 1 => Ok((Some(b), Some(stored.etag))),
        Ok(b) => {
            tracing::warn!(v = b.v, "status board of an unknown format; rebuilding it");
            Ok((None, Some(stored.etag)))
        }
        Err(e) => {
            tracing::warn!(error = %e, "status board unreadable; rebuilding it");
            Ok((None, Some(stored.etag)))
        }
    }
}

fn encode(b: &Board) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(b).map_err(|e| StoreError(format!("status board: {e}")))
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
#[path = "board_tests.rs"]
mod tests;
