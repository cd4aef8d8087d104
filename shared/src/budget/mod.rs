//! The tenant's Defender budgets, kept across every concurrent invocation in one S3 object with
//! compare-and-swap: submissions per sliding minute, running sessions, and the GET calls every
//! stage makes (per minute and per hour). Pacing by these keeps Defender from answering 429.
//!
//! Defender counts a call when it *arrives*, which can be well after the budget granted it (a busy
//! CPU, a token refresh, a slow network). So a granted call holds an open stamp, counted as late as
//! it could possibly arrive (`granted + call_limit`), until the caller reports that the call
//! returned; the stamp then becomes the return time, the latest moment Defender can have counted
//! it. A window is only ever judged by upper bounds of Defender's own count times, so no delay
//! between grant and arrival can squeeze more calls into Defender's window than the budget allows.
//! Use [`submission_call`] and [`get_call`], which settle the stamp whatever the call returns.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, unix_ms};
use crate::config::{ConfigError, Env, number};
use crate::ids::RunId;
use crate::ports::{ObjectStore, Put, PutResult, StoreError};

pub use crate::store::keys::BUDGET_KEY;
const STALE_SESSION_MS: i64 = (3 * 24 + 1) * 3600 * 1000;
/// Stamps further in the future than this were not written by a sane clock: they are pulled back.
const MAX_CLOCK_SKEW_MS: i64 = 60_000;

/// The tenant's Defender limits that the budget keeps every stage within, together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Live response submissions per minute (`BUDGET_SUBMISSIONS_PER_MINUTE`).
    pub submissions_per_minute: u32,
    /// Live response sessions running at once (`BUDGET_RUNNING_SESSIONS`).
    pub running_sessions: u32,
    /// Defender calls other than submissions (status, result link, list, cancel) per minute (`BUDGET_GETS_PER_MINUTE`).
    pub gets_per_minute: u32,
    /// The same calls per hour (`BUDGET_GETS_PER_HOUR`).
    pub gets_per_hour: u32,
    /// The length of Defender's "minute" (60 s; shorter only against a time-scaled simulator).
    pub minute: Duration,
    /// The longest a granted call can take to reach Defender (token refresh, retry after a 401, the
    /// request timeout): an unsettled grant counts until then.
    pub call_limit: Duration,
}

impl BudgetConfig {
    /// `BUDGET_SUBMISSIONS_PER_MINUTE` (10), `BUDGET_RUNNING_SESSIONS` (25; newer docs allow 50),
    /// `BUDGET_GETS_PER_MINUTE` (100), `BUDGET_GETS_PER_HOUR` (1500), `BUDGET_MINUTE_MS` (60000).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            submissions_per_minute: number(env, "BUDGET_SUBMISSIONS_PER_MINUTE", 10u32, 1..=1000)?,
            running_sessions: number(env, "BUDGET_RUNNING_SESSIONS", 25u32, 1..=1000)?,
            gets_per_minute: number(env, "BUDGET_GETS_PER_MINUTE", 100u32, 1..=10_000)?,
            gets_per_hour: number(env, "BUDGET_GETS_PER_HOUR", 1500u32, 1..=100_000)?,
            minute: Duration::from_millis(number(
                env,
                "BUDGET_MINUTE_MS",
                60_000u64,
                100..=600_000,
            )?),
            call_limit: DEFAULT_CALL_LIMIT,
        })
    }

    fn hour(&self) -> Duration {
        self.minute * 60
    }
}

/// Two HTTP timeouts (30 s each: the token and the call, or a call and its retry after a 401)
/// plus time for a Secrets Manager read and a slow start.
pub const DEFAULT_CALL_LIMIT: Duration = Duration::from_secs(120);

/// One counted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Stamp {
    /// The call returned at this time (unix ms): Defender counted it no later.
    Settled(i64),
    /// Granted at `granted` and not reported back yet: Defender may count it as late as
    /// `granted + call_limit`.
    Open { granted: i64, slot: u64 },
}

impl Stamp {
    /// The latest time Defender can have counted (or will count) this call.
    fn latest(self, call_limit_ms: i64) -> i64 {
        match self {
            Stamp::Settled(t) => t,
            Stamp::Open { granted, .. } => granted.saturating_add(call_limit_ms),
        }
    }

    fn clamp_to(self, now: i64) -> Self {
        match self {
            Stamp::Settled(t) if t > now + MAX_CLOCK_SKEW_MS => Stamp::Settled(now),
            Stamp::Open { granted, slot } if granted > now + MAX_CLOCK_SKEW_MS => {
                Stamp::Open { granted: now, slot }
            }
            s => s,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TenantBudget {
    v: u32,
    /// Submissions, oldest first.
    submissions: Vec<Stamp>,
    /// Runs holding a session, with when they took it (unix ms).
    running: BTreeMap<String, i64>,
    /// GET calls, oldest first.
    gets: Vec<Stamp>,
    /// The budget was rebuilt from nothing (its object was unreadable): which runs hold a session
    /// is unknown, so the cap counts as full until the sessions are rebuilt
    /// ([`rebuild_sessions`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sessions_unknown: bool,
}

impl TenantBudget {
    fn new() -> Self {
        Self {
            v: 2,
            ..Self::default()
        }
    }

    /// What to assume when the stored budget cannot be read: both call windows full as of now
    /// (nobody knows what was sent in the last minute), and the sessions unknown: the cap is full
    /// until submit rebuilds them (Defender's live actions, confirmed by their run records), or
    /// new submissions would pile onto actions that still run and Defender would answer 429.
    fn conservative(cfg: &BudgetConfig, now: i64) -> Self {
        Self {
            v: 2,
            submissions: vec![Stamp::Settled(now); cfg.submissions_per_minute as usize],
            running: BTreeMap::new(),
            gets: vec![Stamp::Settled(now); cfg.gets_per_minute as usize],
            sessions_unknown: true,
        }
    }

    /// Drops what has left every window and pulls back stamps from a clock far ahead.
    fn tidy(&mut self, cfg: &BudgetConfig, now: i64) {
        let limit = ms(cfg.call_limit);
        let minute = ms(cfg.minute);
        let hour = ms(cfg.hour());
        for s in self.submissions.iter_mut().chain(self.gets.iter_mut()) {
            *s = s.clamp_to(now);
        }
        self.submissions
            .retain(|s| s.latest(limit) > now.saturating_sub(minute));
        self.gets
            .retain(|s| s.latest(limit) > now.saturating_sub(hour));
        for since in self.running.values_mut() {
            *since = (*since).min(now);
        }
        // No run lives past three days (Defender's longest queue window, and the longest deadline):
        // a session still held after that was left behind by a run that never came back for it.
        self.running
            .retain(|_, since| *since > now.saturating_sub(STALE_SESSION_MS));
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The answer to a request for budget.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    /// Go ahead, then [`settle`] the slot when the call returns.
    Granted(Slot),
    /// Not now; ask again after this long.
    Wait(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Submissions,
    Gets,
}

/// A granted call's open stamp, to be settled with the time the call returned.
#[must_use = "settle the slot when the call returns, or it counts until its call limit"]
#[derive(Debug, PartialEq, Eq)]
pub struct Slot {
    window: Window,
    id: u64,
}

/// What a paced call came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Paced<T> {
    /// The call was made; this is what it returned.
    Ran(T),
    /// No budget now; ask again after this long (no call was made).
    Wait(Duration),
}

/// How long until the oldest of the newest `max` stamps leaves a window of `window` (None: room now).
/// When that stamp is still open (its call in flight), it will most likely settle soon and leave
/// earlier than its worst case: look again after a tenth of the window instead.
fn window_wait(
    stamps: &[Stamp],
    max: u32,
    window: Duration,
    call_limit: Duration,
    now: i64,
) -> Option<Duration> {
    let window_ms = ms(window);
    let limit = ms(call_limit);
    let mut inside: Vec<(i64, bool)> = stamps
        .iter()
        .map(|s| (s.latest(limit), matches!(s, Stamp::Open { .. })))
        .filter(|(t, _)| *t > now.saturating_sub(window_ms))
        .collect();
    if (inside.len() as u64) < max as u64 {
        return None;
    }
    inside.sort_unstable();
    let (pivot, _) = inside[inside.len() - max as usize];
    let wait = pivot.saturating_add(window_ms).saturating_sub(now).max(1);
    let in_flight = inside.iter().any(|(t, open)| *open && *t >= pivot);
    let wait = if in_flight {
        wait.min((window_ms / 10).max(1))
    } else {
        wait
    };
    Some(Duration::from_millis(wait as u64))
}

/// Settles the open stamp of `slot` in `stamps` at `returned` (or counts it at its return if the
/// stamp is gone and the return is still inside `kept`); whether the budget changed.
fn settle_stamp(stamps: &mut Vec<Stamp>, slot: u64, returned: i64, now: i64, kept: i64) -> bool {
    let found = stamps
        .iter_mut()
        .find(|s| matches!(s, Stamp::Open { slot: id, .. } if *id == slot));
    match found {
        Some(s) => {
            let Stamp::Open { granted, .. } = *s else {
                return false;
            };
            *s = Stamp::Settled(returned.min(now).max(granted));
            true
        }
        None if returned > now.saturating_sub(kept) => {
            // The open stamp is gone (the call outlived its call limit and a window after it, or
            // the budget was rebuilt): count the call at its return rather than not at all.
            stamps.push(Stamp::Settled(returned.min(now)));
            true
        }
        None => false,
    }
}

/// How long a budget write keeps trying against other writers before the caller is told to come
/// back shortly (a paced wait, never a failure: a failed message would wait out its queue's
/// visibility timeout, up to 90 minutes for collect).
const CONTENTION_GIVES_UP_AFTER: Duration = Duration::from_secs(10);

/// What a budget update came to.
enum Updated<R> {
    /// Written (or nothing to write): the answer.
    Done(R),
    /// Other writers kept winning for [`CONTENTION_GIVES_UP_AFTER`].
    Contended,
}

/// Applies `decide` to the budget with compare-and-swap; `decide` gets the time (unix ms) and
/// returns its answer and whether it changed the budget. Under contention it backs off
/// exponentially with full jitter, and gives up after [`CONTENTION_GIVES_UP_AFTER`]. A budget
/// object that cannot be parsed is set aside under `state/budget/corrupt-<ms>.json` for an
/// operator and replaced by a conservative one.
async fn with_budget<S, F, R>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    mut decide: F,
) -> Result<Updated<R>, StoreError>
where
    S: ObjectStore,
    F: FnMut(&mut TenantBudget, i64) -> (R, bool),
{
    let started = tokio::time::Instant::now();
    let mut backoff_ms: u64 = 10;
    loop {
        let now = unix_ms(clock.now());
        let mut repaired = false;
        let (mut budget, condition) = match store.get(BUDGET_KEY).await? {
            Some(s) => match serde_json::from_slice::<TenantBudget>(&s.body) {
                Ok(b) => (b, Put::IfMatch(s.etag)),
                Err(e) => {
                    let aside = crate::store::keys::corrupt_budget_key(now);
                    tracing::error!(key = BUDGET_KEY, error = %e, kept_as = %aside,
                        "the tenant budget is unreadable: replacing it with a conservative one (call windows full, sessions unknown until rebuilt from Defender's live actions)");
                    if let Err(e) = store.put(&aside, s.body.to_vec(), Put::Always).await {
                        tracing::warn!(error = %e, "could not keep the unreadable budget aside");
                    }
                    repaired = true;
                    (TenantBudget::conservative(cfg, now), Put::IfMatch(s.etag))
                }
            },
            None => (TenantBudget::new(), Put::IfAbsent),
        };
        budget.tidy(cfg, now);
        let (answer, changed) = decide(&mut budget, now);
        if !changed && !repaired {
            return Ok(Updated::Done(answer));
        }
        let body = serde_json::to_vec(&budget).map_err(|e| StoreError(e.to_string()))?;
        match store.put(BUDGET_KEY, body, condition).await? {
            PutResult::Written { .. } => return Ok(Updated::Done(answer)),
            PutResult::Conflict => {
                // Another invocation won the race: back off (full jitter) and read again.
                if started.elapsed() >= CONTENTION_GIVES_UP_AFTER {
                    tracing::warn!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "the tenant budget kept changing under this write; asking again shortly"
                    );
                    return Ok(Updated::Contended);
                }
                let pause = (backoff_ms as f64 * clock.jitter()) as u64 + 1;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                backoff_ms = (backoff_ms * 2).min(400);
            }
        }
    }
}

/// The wait a caller that lost on contention is given: 200 to 800 ms, spread so the losers do not
/// come back together; short enough to be spent inside the invocation (see [`INLINE_WAIT`]) by
/// the callers that pause inline, a one-second queue delay for the others.
fn contention_wait(clock: &dyn Clock) -> Duration {
    Duration::from_millis(200 + (clock.jitter() * 600.0) as u64)
}

/// [`with_budget`] where contention is an error: for the few updates that are not calls
/// (sessions given back, read, rebuilt), which their callers retry.
async fn with_budget_or_err<S, F, R>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    decide: F,
) -> Result<R, StoreError>
where
    S: ObjectStore,
    F: FnMut(&mut TenantBudget, i64) -> (R, bool),
{
    // These are rare and matter (a session given back): a few more rounds before giving up.
    let mut decide = decide;
    for _ in 0..4 {
        if let Updated::Done(r) = with_budget(store, cfg, clock, &mut decide).await? {
            return Ok(r);
        }
    }
    Err(StoreError("budget: too many concurrent updates".into()))
}

fn new_slot(window: Window, clock: &dyn Clock) -> Slot {
    Slot {
        window,
        id: clock.jitter().to_bits(),
    }
}

/// A submission slot and a session for `run`, or how long to wait for them. A run that already holds
/// a session (a retry after a lost answer) is granted without counting the session twice.
pub async fn acquire_submission<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    run: &RunId,
) -> Result<Grant, StoreError> {
    let slot = new_slot(Window::Submissions, clock);
    let id = slot.id;
    let granted = with_budget(store, cfg, clock, |b, now| {
        if let Some(wait) = window_wait(
            &b.submissions,
            cfg.submissions_per_minute,
            cfg.minute,
            cfg.call_limit,
            now,
        ) {
            return (Some(wait), false);
        }
        let holds = b.running.contains_key(run.as_str());
        let full = b.sessions_unknown || b.running.len() as u64 >= cfg.running_sessions as u64;
        if !holds && full {
            // A session frees when some run ends; look again in a while.
            return (Some(cfg.minute / 4), false);
        }
        b.submissions.push(Stamp::Open {
            granted: now,
            slot: id,
        });
        b.running.entry(run.to_string()).or_insert(now);
        (None, true)
    })
    .await?;
    Ok(match granted {
        Updated::Done(Some(wait)) => Grant::Wait(wait),
        Updated::Done(None) => Grant::Granted(slot),
        Updated::Contended => Grant::Wait(contention_wait(clock)),
    })
}

/// One GET call (status, result link, list, cancel), or how long to wait for one.
pub async fn acquire_get<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
) -> Result<Grant, StoreError> {
    let slot = new_slot(Window::Gets, clock);
    let id = slot.id;
    let hour = cfg.hour();
    let wait = with_budget(store, cfg, clock, |b, now| {
        let wait = [
            window_wait(
                &b.gets,
                cfg.gets_per_minute,
                cfg.minute,
                cfg.call_limit,
                now,
            ),
            window_wait(&b.gets, cfg.gets_per_hour, hour, cfg.call_limit, now),
        ]
        .into_iter()
        .flatten()
        .max();
        match wait {
            Some(w) => (Some(w), false),
            None => {
                b.gets.push(Stamp::Open {
                    granted: now,
                    slot: id,
                });
                (None, true)
            }
        }
    })
    .await?;
    Ok(match wait {
        Updated::Done(Some(w)) => Grant::Wait(w),
        Updated::Done(None) => Grant::Granted(slot),
        Updated::Contended => Grant::Wait(contention_wait(clock)),
    })
}

/// Records that the call behind `slot` returned at `returned` (unix ms; read when it returned,
/// not after the budget write, which can wait behind other invocations' writes): from then on it
/// counts at that time instead of at the latest time it could have arrived. Best effort: if this
/// fails, the open stamp still counts, conservatively, until its call limit.
pub async fn settle<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    slot: Slot,
    returned: i64,
) {
    let result = with_budget(store, cfg, clock, |b, now| {
        let (stamps, kept) = match slot.window {
            Window::Submissions => (&mut b.submissions, ms(cfg.minute)),
            Window::Gets => (&mut b.gets, ms(cfg.hour())),
        };
        ((), settle_stamp(stamps, slot.id, returned, now, kept))
    })
    .await;
    match result {
        Ok(Updated::Done(())) => {}
        Ok(Updated::Contended) => {
            tracing::warn!(
                "could not settle a budget slot under contention; it counts until its call limit"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not settle a budget slot; it counts until its call limit");
        }
    }
}

/// Makes `call` (a live response submission for `run`) within the submission rate and session cap,
/// and settles its slot when it returns; or says how long to wait, without calling.
pub async fn submission_call<S, T, F, Fut>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    run: &RunId,
    call: F,
) -> Result<Paced<T>, StoreError>
where
    S: ObjectStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let grant = within_pause(clock, || acquire_submission(store, cfg, clock, run)).await?;
    Ok(run_granted(store, cfg, clock, grant, call).await)
}

/// Makes one GET `call` within the GET budget and settles its slot when it returns; or says how
/// long to wait, without calling.
pub async fn get_call<S, T, F, Fut>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    call: F,
) -> Result<Paced<T>, StoreError>
where
    S: ObjectStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let grant = within_pause(clock, || acquire_get(store, cfg, clock)).await?;
    Ok(run_granted(store, cfg, clock, grant, call).await)
}

/// As [`get_call`], but a wait is answered at once, never paused inline: for a caller holding a
/// lock that other messages of the batch wait on (each would otherwise pause in turn).
pub async fn get_call_at_once<S, T, F, Fut>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    call: F,
) -> Result<Paced<T>, StoreError>
where
    S: ObjectStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let grant = acquire_get(store, cfg, clock).await?;
    Ok(run_granted(store, cfg, clock, grant, call).await)
}

/// A wait this short is spent inside the invocation, and the budget asked again, rather than on
/// a trip through the queue: SQS delays come in whole seconds, so a window that opens a fraction
/// of a second into one would be missed by up to a second, every round, for every paced call.
pub const INLINE_WAIT: Duration = Duration::from_secs(1);
/// How many inline pauses one call may take before its wait goes back to the queue (others may
/// win the slot that opened; they are not waited for forever).
const INLINE_PAUSES: u32 = 3;

/// Asks for budget, pausing inline while the answer is a wait of at most [`INLINE_WAIT`].
async fn within_pause<F, Fut>(clock: &dyn Clock, mut acquire: F) -> Result<Grant, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Grant, StoreError>>,
{
    let mut pauses = 0;
    loop {
        match acquire().await? {
            Grant::Wait(w) if w <= INLINE_WAIT && pauses < INLINE_PAUSES => {
                pauses += 1;
                clock.pause(w).await;
            }
            grant => return Ok(grant),
        }
    }
}

/// The queue delay for a job paced by the budget: the wait in whole seconds rounded *down*
/// (at least one), so the job comes back at most a second early and spends the rest inside
/// [`submission_call`] or [`get_call`] instead of up to a second late.
pub fn queue_delay(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_secs().max(1))
}

/// Makes the call if the budget granted it, and settles its slot when it returns.
async fn run_granted<S, T, F, Fut>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    grant: Grant,
    call: F,
) -> Paced<T>
where
    S: ObjectStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    match grant {
        Grant::Wait(w) => Paced::Wait(w),
        Grant::Granted(slot) => {
            let out = call().await;
            let returned = unix_ms(clock.now());
            settle(store, cfg, clock, slot, returned).await;
            Paced::Ran(out)
        }
    }
}

/// Gives back a run's session (its action ended, or it was never accepted).
pub async fn release_session<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    run: &RunId,
) -> Result<(), StoreError> {
    with_budget_or_err(store, cfg, clock, |b, _| {
        ((), b.running.remove(run.as_str()).is_some())
    })
    .await
}

/// The runs that hold a session now, for reconciling against run records.
pub async fn held_sessions<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
) -> Result<Vec<String>, StoreError> {
    Ok(sessions(store, cfg, clock).await?.0)
}

/// The runs that hold a session now, and whether the budget knows them all (false after it was
/// rebuilt from nothing, until [`rebuild_sessions`]).
pub async fn sessions<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
) -> Result<(Vec<String>, bool), StoreError> {
    with_budget_or_err(store, cfg, clock, |b, _| {
        (
            (b.running.keys().cloned().collect(), !b.sessions_unknown),
            false,
        )
    })
    .await
}

/// Sets the sessions of a budget rebuilt from nothing: `held` (run id, since when, unix ms) are the
/// runs whose records say they hold one; the cap counts them from now on.
pub async fn rebuild_sessions<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    held: &[(String, i64)],
) -> Result<(), StoreError> {
    with_budget_or_err(store, cfg, clock, |b, _| {
        if !b.sessions_unknown {
            return ((), false);
        }
        for (run, since) in held {
            b.running.entry(run.clone()).or_insert(*since);
        }
        b.sessions_unknown = false;
        ((), true)
    })
    .await
}

#[cfg(test)]
mod tests;
