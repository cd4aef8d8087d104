//! Simulated time: real elapsed time times the scale, plus whatever tests advanced it by.

use std::sync::Mutex;
use std::time::Instant;

use time::{Duration, OffsetDateTime};

#[derive(Debug)]
pub struct SimClock {
    start_sim: OffsetDateTime,
    start_real: Instant,
    scale: f64,
    advanced: Mutex<Duration>,
}

impl SimClock {
    pub fn new(start_sim: OffsetDateTime, scale: f64) -> Self {
        Self {
            start_sim,
            start_real: Instant::now(),
            scale,
            advanced: Mutex::new(Duration::ZERO),
        }
    }

    pub fn start(&self) -> OffsetDateTime {
        self.start_sim
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn now(&self) -> OffsetDateTime {
        let real = self.start_real.elapsed().as_secs_f64() * self.scale;
        let advanced = *self.advanced.lock().unwrap_or_else(|p| p.into_inner());
        self.start_sim + Duration::seconds_f64(real) + advanced
    }

    pub fn advance(&self, by: Duration) {
        let mut a = self.advanced.lock().unwrap_or_else(|p| p.into_inner());
        *a += by;
    }

    /// Real seconds a client should wait for `sim` simulated seconds to pass (at least 1).
    pub fn real_secs_for(&self, sim: Duration) -> u64 {
        let secs = sim.as_seconds_f64() / self.scale;
        (secs.ceil() as u64).max(1)
    }
}

/// `2021-02-04T15:36:52` in UTC, the part both formats below share.
fn utc_seconds(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Defender's timestamp format: `2021-02-04T15:36:52.7788848Z` (7 fractional digits).
pub fn format_ts(t: OffsetDateTime) -> String {
    format!("{}.{:07}Z", utc_seconds(t), t.nanosecond() / 100)
}

/// The `se` form of a blob link: `2021-02-04T16:13:50Z`.
pub fn format_se(t: OffsetDateTime) -> String {
    format!("{}Z", utc_seconds(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_defender() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_612_453_012_778_884_800).unwrap();
        assert_eq!(format_ts(t), "2021-02-04T15:36:52.7788848Z");
        assert_eq!(format_se(t), "2021-02-04T15:36:52Z");
    }

    #[test]
    fn advance_moves_time_forward() {
        let c = SimClock::new(OffsetDateTime::UNIX_EPOCH, 1.0);
        c.advance(Duration::hours(2));
        assert!(c.now() >= OffsetDateTime::UNIX_EPOCH + Duration::hours(2));
        assert_eq!(c.real_secs_for(Duration::seconds(30)), 30);
        let fast = SimClock::new(OffsetDateTime::UNIX_EPOCH, 600.0);
        assert_eq!(fast.real_secs_for(Duration::seconds(60)), 1);
    }
}
