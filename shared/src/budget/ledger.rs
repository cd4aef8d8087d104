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
    ) -> (Answer, bool) {
        match self {
            // A grant applied twice (its write stored, then carried again by the next writer
            // after the first was cancelled) holds one stamp, not two.
            Op::Submission { slot, .. } | Op::Get { slot }
                if b.submissions
                    .iter()
                    .chain(&b.gets)
                    .any(|s| s.slot() == Some(*slot)) =>
            {
                (Answer::Slot(None), false)
            }
            Op::Submission { run, slot } => {
                if let Some(wait) = window_wait(
                    &b.submissions,
                    cfg.submissions_per_minute,
                    cfg.minute,
                    cfg.call_limit,
                    now,
                ) {
                    return (Answer::Slot(Some(wait)), false);
                }
                let holds = b.running.contains_key(run.as_str());
                let full =
                    b.sessions_unknown || b.running.len() as u64 >= cfg.running_sessions as u64;
                if !holds && full {
                    // A session frees when some run ends; look again in a while.
                    return (Answer::Slot(Some(cfg.minute / 4)), false);
                }
                b.submissions.push(Stamp::Open {
                    granted: now,
                    slot: *slot,
                });
                b.running.entry(run.clone()).or_insert(now);
                (Answer::Slot(None), true)
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
                    return (Answer::Slot(wait), false);
                }
                b.gets.push(Stamp::Open {
                    granted: now,
                    slot: *slot,
                });
                (Answer::Slot(None), true)
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
                (Answer::Applied, changed)
            }
            Op::Release { run } => (Answer::Applied, b.running.remove(run.as_str()).is_some()),
            Op::Sessions => (
                Answer::Sessions(b.running.keys().cloned().collect(), !b.sessions_unknown),
                false,
            ),
            Op::Rebuild { held } => {
                if !b.sessions_unknown {
                    return (Answer::Applied, false);
                }
                for (run, since) in held {
                    b.running.entry(run.clone()).or_insert(*since);
                }
                b.sessions_unknown = false;
                (Answer::Applied, true)
            }
        }
    }
}
