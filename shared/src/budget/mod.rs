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
//!
//! `ledger` holds the stored budget and the updates to it as pure functions; this module applies
//! them with compare-and-swap; [`Lane`] batches one process's updates into one write.

use std::future::Future;
use std::time::Duration;

use crate::clock::{Clock, unix_ms};
use crate::config::{ConfigError, Env, number};
use crate::ids::{RunId, TenantKey};
use crate::ports::{ObjectStore, Put, PutResult, StoreError};
use crate::tenants::Limits;

mod lane;
mod ledger;

pub use crate::store::keys::BUDGET_KEY;
pub use lane::Lane;
use ledger::{Answer, Change, Op, TenantBudget, Window};
#[cfg(test)]
use ledger::{Stamp, settle_stamp, window_wait};

/// The tenant's Defender limits that the budget keeps every stage within, together.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// This process's queue of budget updates ([`Lane`]): clones of the configuration share it.
    pub lane: Lane,
    /// Whose budget this is (none: the deployment serves one tenant): it picks the budget object
    /// and the status board, and the runs whose sessions count against it.
    pub tenant: Option<TenantKey>,
    /// The registry's legacy tenant keeps the single-tenant budget object and status board, and
    /// its runs from before the registry (whose ids name no tenant) count against it too.
    pub legacy: bool,
}

impl BudgetConfig {
    /// `BUDGET_SUBMISSIONS_PER_MINUTE` (10), `BUDGET_RUNNING_SESSIONS` (25; newer docs allow 50),
    /// `BUDGET_GETS_PER_MINUTE` (100), `BUDGET_GETS_PER_HOUR` (1500), `BUDGET_MINUTE_MS` (60000):
    /// Defender's documented limits and their ranges are [`Limits`]'s.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let (d, max) = (Limits::default(), Limits::MAX);
        Ok(Self {
            submissions_per_minute: number(
                env,
                "BUDGET_SUBMISSIONS_PER_MINUTE",
                d.submissions_per_minute,
                1..=max.submissions_per_minute,
            )?,
            running_sessions: number(
                env,
                "BUDGET_RUNNING_SESSIONS",
                d.running_sessions,
                1..=max.running_sessions,
            )?,
            gets_per_minute: number(
                env,
                "BUDGET_GETS_PER_MINUTE",
                d.gets_per_minute,
                1..=max.gets_per_minute,
            )?,
            gets_per_hour: number(
                env,
                "BUDGET_GETS_PER_HOUR",
                d.gets_per_hour,
                1..=max.gets_per_hour,
            )?,
            minute: Duration::from_millis(number(
                env,
                "BUDGET_MINUTE_MS",
                60_000u64,
                100..=600_000,
            )?),
            call_limit: DEFAULT_CALL_LIMIT,
            lane: Lane::default(),
            tenant: None,
            legacy: false,
        })
    }

    /// The budget of a registry's tenant: its own limits, object and lane, the deployment's
    /// minute and call limit.
    pub fn for_tenant(&self, tenant: &TenantKey, limits: &Limits) -> Self {
        Self {
            submissions_per_minute: limits.submissions_per_minute,
            running_sessions: limits.running_sessions,
            gets_per_minute: limits.gets_per_minute,
            gets_per_hour: limits.gets_per_hour,
            minute: self.minute,
            call_limit: self.call_limit,
            lane: Lane::default(),
            tenant: Some(tenant.clone()),
            legacy: false,
        }
    }

    /// The tenant the keys of this budget's objects are built for (none: the single-tenant keys).
    pub fn key_tenant(&self) -> Option<&TenantKey> {
        if self.legacy {
            None
        } else {
            self.tenant.as_ref()
        }
    }

    /// The object this budget is kept in.
    pub fn key(&self) -> String {
        crate::store::keys::budget_key(self.key_tenant())
    }

    /// Whether `run`'s sessions count against this budget: the run is its tenant's (or, for the
    /// legacy tenant, from before the registry). A run of another tenant never does, whatever
    /// that tenant's Defender lists.
    pub fn owns(&self, run: &RunId) -> bool {
        let of = run.tenant();
        of == self.tenant || (self.legacy && of.is_none())
    }

    fn hour(&self) -> Duration {
        self.minute * 60
    }
}

/// Two HTTP timeouts (30 s each: the token and the call, or a call and its retry after a 401)
/// plus time for a Secrets Manager read and a slow start.
pub const DEFAULT_CALL_LIMIT: Duration = Duration::from_secs(120);

/// The answer to a request for budget.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    /// Go ahead, then [`settle`] the slot when the call returns.
    Granted(Slot),
    /// Not now; ask again after this long.
    Wait(Duration),
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

/// How long a budget write keeps trying against other writers before the caller is told to come
/// back shortly (a paced wait, never a failure: a failed message would wait out its queue's
/// visibility timeout, up to 90 minutes for collect).
const CONTENTION_GIVES_UP_AFTER: Duration = Duration::from_secs(10);

/// What a budget update came to.
#[derive(Debug, Clone)]
pub(crate) enum Updated<R> {
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
    F: FnMut(&mut TenantBudget, i64) -> (R, Change),
{
    let started = tokio::time::Instant::now();
    let mut backoff_ms: u64 = 10;
    loop {
        let now = unix_ms(clock.now());
        let mut repaired = false;
        let key = cfg.key();
        let (mut budget, condition) = match store.get(&key).await? {
            Some(s) => match serde_json::from_slice::<TenantBudget>(&s.body) {
                Ok(b) => (b, Put::IfMatch(s.etag)),
                Err(e) => {
                    let aside = crate::store::keys::corrupt_budget_key(cfg.tenant.as_ref(), now);
                    tracing::error!(key = %key, error = %e, kept_as = %aside,
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
        let (answer, change) = decide(&mut budget, now);
        if change == Change::None && !repaired {
            return Ok(Updated::Done(answer));
        }
        let body = serde_json::to_vec(&budget).map_err(|e| StoreError(e.to_string()))?;
        match store.put(&key, body, condition).await? {
            PutResult::Written { .. } => {
                tracing::debug!(key = %key, elapsed_ms = started.elapsed().as_millis() as u64, "budget written");
                return Ok(Updated::Done(answer));
            }
            // A change that need not be stored is not worth another round.
            PutResult::Conflict if change < Change::Required && !repaired => {
                return Ok(Updated::Done(answer));
            }
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

/// Applies `op` through the process's [`Lane`]: queued with the process's other updates, written
/// with them in one compare-and-swap ([`with_budget`]).
async fn update<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    op: Op,
) -> Result<Updated<Answer>, StoreError> {
    cfg.lane
        .update(op, |ops| {
            with_budget(store, cfg, clock, move |b, now| {
                let mut change = Change::None;
                let answers = ops
                    .iter()
                    .map(|op| {
                        let (answer, c) = op.apply(b, cfg, now);
                        change = change.max(c);
                        answer
                    })
                    .collect::<Vec<_>>();
                (answers, change)
            })
        })
        .await
}

/// The wait a caller that lost on contention is given: 200 to 800 ms, spread so the losers do not
/// come back together; short enough to be spent inside the invocation (see [`INLINE_WAIT`]) by
/// the callers that pause inline, a one-second queue delay for the others.
fn contention_wait(clock: &dyn Clock) -> Duration {
    Duration::from_millis(200 + (clock.jitter() * 600.0) as u64)
}

/// [`update`] where contention is an error: for the few updates that are not calls (sessions
/// given back, read, rebuilt), which their callers retry.
async fn update_or_err<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    op: Op,
) -> Result<Answer, StoreError> {
    // These are rare and matter (a session given back): a few more rounds before giving up.
    for _ in 0..4 {
        if let Updated::Done(r) = update(store, cfg, clock, op.clone()).await? {
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

/// What a slot request came to.
fn granted(slot: Slot, answer: Updated<Answer>, clock: &dyn Clock) -> Grant {
    match answer {
        Updated::Done(Answer::Slot(None)) => Grant::Granted(slot),
        Updated::Done(Answer::Slot(Some(wait))) => Grant::Wait(wait),
        // Not a slot's answer (cannot happen): ask again shortly rather than call unbudgeted.
        Updated::Done(_) | Updated::Contended => Grant::Wait(contention_wait(clock)),
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
    let op = Op::Submission {
        run: run.to_string(),
        slot: slot.id,
    };
    let answer = update(store, cfg, clock, op).await?;
    Ok(granted(slot, answer, clock))
}

/// One GET call (status, result link, list, cancel), or how long to wait for one.
pub async fn acquire_get<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
) -> Result<Grant, StoreError> {
    let slot = new_slot(Window::Gets, clock);
    let answer = update(store, cfg, clock, Op::Get { slot: slot.id }).await?;
    Ok(granted(slot, answer, clock))
}

/// Records that the call behind `slot` returned at `returned` (unix ms; read when it returned,
/// not after the budget write, which can wait behind other invocations' writes): from then on it
/// counts at that time instead of at the latest time it could have arrived. Best effort: if this
/// fails (after a few rounds under contention), the open stamp still counts, conservatively, until its call limit.
pub async fn settle<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    slot: Slot,
    returned: i64,
) {
    let op = Op::Settle {
        window: slot.window,
        slot: slot.id,
        returned,
    };
    // A settlement lost counts a whole slot until the call limit (a tenth of the submissions of
    // a minute, for two minutes): it gets the rounds a session given back gets.
    if let Err(e) = update_or_err(store, cfg, clock, op).await {
        tracing::warn!(error = %e, "could not settle a budget slot; it counts until its call limit");
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
    let op = Op::Release {
        run: run.to_string(),
    };
    update_or_err(store, cfg, clock, op).await.map(|_| ())
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
    match update_or_err(store, cfg, clock, Op::Sessions).await? {
        Answer::Sessions(held, known) => Ok((held, known)),
        other => Err(StoreError(format!("budget: sessions answered {other:?}"))),
    }
}

/// Sets the sessions of a budget rebuilt from nothing: `held` (run id, since when, unix ms) are the
/// runs whose records say they hold one; the cap counts them from now on.
pub async fn rebuild_sessions<S: ObjectStore>(
    store: &S,
    cfg: &BudgetConfig,
    clock: &dyn Clock,
    held: &[(String, i64)],
) -> Result<(), StoreError> {
    let op = Op::Rebuild {
        held: held.to_vec(),
    };
    update_or_err(store, cfg, clock, op).await.map(|_| ())
}

#[cfg(test)]
mod tests;
