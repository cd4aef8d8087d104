//! The budget as stored, and the updates made to it: pure functions of the stored budget, the
//! configuration and the time, with no store and no clock (the compare-and-swap that applies them
//! is the parent module's, the queue that batches them [`super::lane`]'s).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BudgetConfig;

const STALE_SESSION_MS: i64 = (3 * 24 + 1) * 3600 * 1000;
/// Stamps further in the future than this were not written by a sane clock: they are pulled back.
const MAX_CLOCK_SKEW_MS: i64 = 60_000;

/// One counted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum Stamp {
    /// The call returned at this time (unix ms): Defender counted it no later.
    Settled(i64),
    /// Granted at `granted` and not reported back yet: Defender may count it as late as
    /// `granted + call_limit`.
    Open { granted: i64, slot: u64 },
}

impl Stamp {
    /// The slot of a stamp still open.
    pub(super) fn slot(self) -> Option<u64> {
        match self {
            Stamp::Open { slot, .. } => Some(slot),
            Stamp::Settled(_) => None,
        }
    }

    /// The latest time Defender can have counted (or will count) this call.
    pub(super) fn latest(self, call_limit_ms: i64) -> i64 {
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
pub(super) struct TenantBudget {
    pub(super) v: u32,
    /// Submissions, oldest first.
    pub(super) submissions: Vec<Stamp>,
    /// Runs holding a session, with when they took it (unix ms).
    pub(super) running: BTreeMap<String, i64>,
    /// GET calls, oldest first.
    pub(super) gets: Vec<Stamp>,
    /// The budget was rebuilt from nothing (its object was unreadable): which runs hold a session
    /// is unknown, so the cap counts as full until the sessions are rebuilt
    /// ([`super::rebuild_sessions`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) sessions_unknown: bool,
    /// Runs told to wait for a submission slot, in the order they first asked: the tenant's
    /// line. Each is told to come back when its own slot opens (those ahead of it having theirs),
    /// so a burst asks about once per slot instead of every waiting run asking at every opening.
    /// It only advises: a free slot goes to whoever asks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) waiting: Vec<Waiting>,
}

/// A run in the tenant's line for a submission slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Waiting {
    /// The run.
    pub(super) run: String,
    /// When it was told to come back (unix ms).
    pub(super) due: i64,
}

/// The longest line kept: a stored budget with more is not one the pipeline wrote.
const MAX_WAITING: usize = 10_000;

/// The furthest ahead a waiting run is told to come back: SQS delays a message at most 15 minutes.
const MAX_DUE_MS: i64 = 15 * 60 * 1000;

/// How late past its time a waiting run keeps its place in line: a sixth of the minute (10 s),
/// for a queue delay's whole seconds and a busy batch, and never under 2 s. Later, its place is
/// dropped (its message went astray, its run ended) and the runs behind it are told earlier
/// times. The line only advises: a run that lost its place still gets a slot that is free.
fn grace(cfg: &BudgetConfig) -> i64 {
    (ms(cfg.minute) / 6).max(2_000)
}

impl TenantBudget {
    pub(super) fn new() -> Self {
        Self {
            v: 2,
            ..Self::default()
        }
    }

    /// What to assume when the stored budget cannot be read: both call windows full as of now
    /// (nobody knows what was sent in the last minute), and the sessions unknown: the cap is full
    /// until submit rebuilds them (Defender's live actions, confirmed by their run records), or
    /// new submissions would pile onto actions that still run and Defender would answer 429.
    pub(super) fn conservative(cfg: &BudgetConfig, now: i64) -> Self {
        Self {
            v: 2,
            submissions: vec![Stamp::Settled(now); cfg.submissions_per_minute as usize],
            running: BTreeMap::new(),
            gets: vec![Stamp::Settled(now); cfg.gets_per_minute as usize],
            sessions_unknown: true,
            waiting: Vec::new(),
        }
    }

    /// Drops what has left every window and pulls back stamps from a clock far ahead.
    pub(super) fn tidy(&mut self, cfg: &BudgetConfig, now: i64) {
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
        let grace = grace(cfg);
        for w in &mut self.waiting {
            w.due = w.due.min(now.saturating_add(MAX_DUE_MS));
        }
        self.waiting.retain(|w| w.due.saturating_add(grace) > now);
        self.waiting.truncate(MAX_WAITING);
    }
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    Submissions,
    Gets,
}

/// The stamps still inside a window of `window_ms` at `now`: when each leaves it (counted at its
/// latest) and whether its call is still in flight, oldest first.
fn inside_window(
    stamps: &[Stamp],
    window_ms: i64,
    call_limit: Duration,
    now: i64,
) -> Vec<(i64, bool)> {
    let limit = ms(call_limit);
    let mut inside: Vec<(i64, bool)> = stamps
        .iter()
        .map(|s| (s.latest(limit), matches!(s, Stamp::Open { .. })))
        .filter(|(t, _)| *t > now.saturating_sub(window_ms))
        .collect();
    inside.sort_unstable();
    inside
}

/// How long (ms) until the `k`-th slot (0-based) opens in a window of `window_ms` holding
/// `inside` ([`inside_window`]) at most `max` calls, counting from the first slot not free now:
/// the oldest stamp of the newest `max` leaving, then the next, minute after minute (a slot free
/// now is taken about now). When a stamp in flight may settle before the one whose leaving opens
/// the slot, look again after a tenth of the window instead.
fn kth_opening(inside: &[(i64, bool)], max: usize, window_ms: i64, k: usize, now: i64) -> i64 {
    let max = max.max(1);
    let at = inside.len().saturating_sub(max) + k % max;
    let rounds = i64::try_from(k / max).unwrap_or(i64::MAX);
    let (leaves, _) = inside.get(at).copied().unwrap_or((now, false));
    let wait = leaves
        .saturating_add(window_ms)
        .saturating_sub(now)
        .saturating_add(window_ms.saturating_mul(rounds))
        .max(1);
    let in_flight = rounds == 0 && inside.iter().any(|(t, open)| *open && *t >= leaves);
    if in_flight {
        wait.min((window_ms / 10).max(1))
    } else {
        wait
    }
}

/// How long until the oldest of the newest `max` stamps leaves a window of `window` (None: room now).
/// When that stamp is still open (its call in flight), it will most likely settle soon and leave
/// earlier than its worst case: look again after a tenth of the window instead.
pub(super) fn window_wait(
    stamps: &[Stamp],
    max: u32,
    window: Duration,
    call_limit: Duration,
    now: i64,
) -> Option<Duration> {
    let window_ms = ms(window);
    let inside = inside_window(stamps, window_ms, call_limit, now);
    if (inside.len() as u64) < max as u64 {
        return None;
    }
    let wait = kth_opening(&inside, max as usize, window_ms, 0, now);
    Some(Duration::from_millis(wait as u64))
}

/// The submission slots free now, and for a run with `ahead` runs before it in line, how long
/// (ms) until its own slot opens: the free slots go to those first, then the slots open as
/// [`window_wait`] says, one after another ([`kth_opening`]).
pub(super) fn next_opening(
    stamps: &[Stamp],
    cfg: &BudgetConfig,
    ahead: usize,
    now: i64,
) -> (usize, i64) {
    let minute = ms(cfg.minute);
    let per_minute = (cfg.submissions_per_minute as usize).max(1);
    let inside = inside_window(stamps, minute, cfg.call_limit, now);
    let free = per_minute.saturating_sub(inside.len());
    if ahead < free {
        return (free, 0);
    }
    (
        free,
        kth_opening(&inside, per_minute, minute, ahead - free, now),
    )
}

/// Settles the open stamp of `slot` in `stamps` at `returned` (or counts it at its return if the
/// stamp is gone and the return is still inside `kept`); whether the budget changed.
pub(super) fn settle_stamp(
    stamps: &mut Vec<Stamp>,
    slot: u64,
    returned: i64,
    now: i64,
    kept: i64,
) -> bool {
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

/// One update of the budget, as data: a process's updates queue on its [`Lane`](super::Lane) and go out
/// together, each applied in turn to the budget one write stores.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A submission slot (and a session) for a run.
    Submission { run: String, slot: u64 },
    /// A GET slot.
    Get { slot: u64 },
    /// A granted call returned at `returned` (unix ms).
    Settle {
        window: Window,
        slot: u64,
        returned: i64,
    },
    /// A run gives back its session.
    Release { run: String },
    /// Which runs hold a session (reads only).
    Sessions,
    /// The sessions of a budget rebuilt from nothing.
    Rebuild { held: Vec<(String, i64)> },
}

/// Whether applying an [`Op`] changed the budget, and whether that change must be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    /// Nothing changed.
    None,
    /// A change worth storing once but not worth waiting for: a waiting run's place in line (the
    /// line only spreads out when runs come back; a place lost to a conflicting write costs a
    /// bunched return, never a window).
    Optional,
    /// A change that must be stored before the answer holds (a grant, a settlement, a session).
    Required,
}

impl From<bool> for Change {
    fn from(changed: bool) -> Self {
        if changed {
            Change::Required
        } else {
            Change::None
        }
    }
}

/// What an [`Op`] answers.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// A slot: granted (`None`) or how long to wait.
    Slot(Option<Duration>),
    /// Done; nothing to say.
    Applied,
    /// The runs holding a session, and whether they are all known.
    Sessions(Vec<String>, bool),
}

impl Op {
    /// Applies the update to `b` at `now` (unix ms): its answer, and whether it changed `b`.
    pub(super) fn apply(
        &self,
        b: &mut TenantBudget,
        cfg: &BudgetConfig,
        now: i64,
    ) -> (Answer, Change) {
        match self {
            // A grant applied twice (its write stored, then carried again by the next writer
            // after the first was cancelled) holds one stamp, not two.
            Op::Submission { slot, .. } | Op::Get { slot }
                if b.submissions
                    .iter()
                    .chain(&b.gets)
                    .any(|s| s.slot() == Some(*slot)) =>
            {
                (Answer::Slot(None), Change::None)
            }
            Op::Submission { run, slot } => {
                let holds = b.running.contains_key(run.as_str());
                let place = b.waiting.iter().position(|w| w.run == *run);
                // A run that holds a session (its earlier POST failed) is not in line: it frees a
                // session when it is done, so nothing waiting may hold it up.
                let ahead = if holds {
                    0
                } else {
                    place.unwrap_or(b.waiting.len())
                };
                let (free, opening) = next_opening(&b.submissions, cfg, ahead, now);
                let sessions_full = !holds
                    && (b.sessions_unknown
                        || b.running.len() as u64 >= cfg.running_sessions as u64);
                // First come, first served whenever there is room: the line only spreads out
                // when the waiting runs come back, so a run that is late (or never comes back)
                // holds nobody up.
                if free > 0 && !sessions_full {
                    if let Some(i) = place {
                        b.waiting.remove(i);
                    }
                    b.submissions.push(Stamp::Open {
                        granted: now,
                        slot: *slot,
                    });
                    b.running.entry(run.clone()).or_insert(now);
                    return (Answer::Slot(None), Change::Required);
                }
                // Its slot opens after those ahead of it in line have theirs; a full session cap
                // frees when some run ends: look again in a while.
                let mut wait = if free > 0 { 1 } else { opening };
                if sessions_full {
                    wait = wait.max(ms(cfg.minute) / 4);
                }
                let wait = wait.clamp(1, MAX_DUE_MS);
                let due = now.saturating_add(wait);
                let change = match place {
                    // Kept in place until a little after its time: moved only when that would
                    // drop it (one write per slot it waits for, not one per look).
                    Some(i) if b.waiting[i].due.saturating_add(grace(cfg) / 2) >= due => {
                        Change::None
                    }
                    Some(i) => {
                        b.waiting[i].due = due;
                        Change::Optional
                    }
                    None if holds => Change::None,
                    None if b.waiting.len() < MAX_WAITING => {
                        b.waiting.push(Waiting {
                            run: run.clone(),
                            due,
                        });
                        Change::Optional
                    }
                    None => Change::None,
                };
                (
                    Answer::Slot(Some(Duration::from_millis(wait as u64))),
                    change,
                )
            }
            Op::Get { slot } => {
                let wait = [
                    window_wait(
                        &b.gets,
                        cfg.gets_per_minute,
                        cfg.minute,
                        cfg.call_limit,
                        now,
                    ),
                    window_wait(&b.gets, cfg.gets_per_hour, cfg.hour(), cfg.call_limit, now),
                ]
                .into_iter()
                .flatten()
                .max();
                if wait.is_some() {
                    return (Answer::Slot(wait), Change::None);
                }
                b.gets.push(Stamp::Open {
                    granted: now,
                    slot: *slot,
                });
                (Answer::Slot(None), Change::Required)
            }
            Op::Settle {
                window,
                slot,
                returned,
            } => {
                let (stamps, kept) = match window {
                    Window::Submissions => (&mut b.submissions, ms(cfg.minute)),
                    Window::Gets => (&mut b.gets, ms(cfg.hour())),
                };
                let changed = settle_stamp(stamps, *slot, *returned, now, kept);
                (Answer::Applied, changed.into())
            }
            Op::Release { run } => (
                Answer::Applied,
                b.running.remove(run.as_str()).is_some().into(),
            ),
            Op::Sessions => (
                Answer::Sessions(b.running.keys().cloned().collect(), !b.sessions_unknown),
                Change::None,
            ),
            Op::Rebuild { held } => {
                if !b.sessions_unknown {
                    return (Answer::Applied, Change::None);
                }
                for (run, since) in held {
                    b.running.entry(run.clone()).or_insert(*since);
                }
                b.sessions_unknown = false;
                (Answer::Applied, Change::Required)
            }
        }
    }
}
