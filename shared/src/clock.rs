//! Time and chance as one port: the clock (pacing stamps each Defender call with the time it
//! *returned*, which a stage's start-of-message `now` cannot give) and the jitter that spreads
//! retries. Tests and the lifecycle model drive a manual clock whose jitter comes from a seed, so
//! that a printed seed replays the same schedule.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

/// Time and jitter for the stages: [`SystemClock`] in production, [`ManualClock`] in tests.
pub trait Clock: Send + Sync {
    /// The current time (UTC).
    fn now(&self) -> OffsetDateTime;

    /// A number in [0, 1) that differs between calls, for backoff jitter.
    fn jitter(&self) -> f64 {
        crate::retry::jitter()
    }

    /// Waits `d` inside the invocation (a short pause, never a way to wait for minutes): the
    /// system clock sleeps, the manual clock moves forward by `d` at once.
    fn pause(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told (milliseconds since the Unix epoch), with jitter drawn from
/// a seeded sequence.
#[derive(Debug)]
pub struct ManualClock(AtomicI64, AtomicU64);

impl ManualClock {
    /// At `t`, with jitter from seed 0.
    pub fn at(t: OffsetDateTime) -> Self {
        Self::seeded(t, 0)
    }

    /// At `t`, with jitter from `seed`: the same seed gives the same jitter, call by call.
    pub fn seeded(t: OffsetDateTime, seed: u64) -> Self {
        Self(AtomicI64::new(unix_ms(t)), AtomicU64::new(seed))
    }

    /// Moves the clock forward by `by` (millisecond precision).
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    /// Sets the clock to `t` (millisecond precision); it may move backwards.
    pub fn set(&self, t: OffsetDateTime) {
        self.0.store(unix_ms(t), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        from_unix_ms(self.0.load(Ordering::SeqCst))
    }

    fn pause(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.advance(d);
        Box::pin(std::future::ready(()))
    }

    fn jitter(&self) -> f64 {
        // SplitMix64 over a shared counter.
        let mut z = self
            .1
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Milliseconds since the Unix epoch (saturating far outside any real date).
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The time at `ms` since the Unix epoch, clamped to what `time` can represent.
pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
