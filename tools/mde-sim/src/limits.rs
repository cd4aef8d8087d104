//! Sliding-window limits in simulated time, and the seeded random source for faults.

use std::collections::VecDeque;

use time::{Duration, OffsetDateTime};

/// At most `max` calls in any window of length `len`.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    len: Duration,
    max: u32,
    hits: VecDeque<OffsetDateTime>,
}

impl SlidingWindow {
    pub fn new(len: Duration, max: u32) -> Self {
        Self {
            len,
            max,
            hits: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: OffsetDateTime) {
        while let Some(first) = self.hits.front() {
            if *first + self.len <= now {
                self.hits.pop_front();
            } else {
                break;
            }
        }
    }

    /// How long until a call would fit, or `None` if it fits now.
    pub fn wait(&mut self, now: OffsetDateTime) -> Option<Duration> {
        self.expire(now);
        if (self.hits.len() as u32) < self.max {
            return None;
        }
        let idx = self.hits.len() - self.max as usize;
        Some((self.hits[idx] + self.len - now).max(Duration::milliseconds(1)))
    }

    pub fn record(&mut self, now: OffsetDateTime) {
        self.hits.push_back(now);
    }

    /// Calls inside the window ending now.
    pub fn count(&mut self, now: OffsetDateTime) -> usize {
        self.expire(now);
        self.hits.len()
    }
}

/// splitmix64 as a small seeded generator: faults repeat for the same seed and call order.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        crate::content::splitmix64(self.0.wrapping_sub(0x9E37_79B9_7F4A_7C15))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_blocks_then_frees() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let mut w = SlidingWindow::new(Duration::minutes(1), 2);
        assert!(w.wait(t0).is_none());
        w.record(t0);
        w.record(t0 + Duration::seconds(10));
        assert_eq!(
            w.wait(t0 + Duration::seconds(20)),
            Some(Duration::seconds(40))
        );
        assert!(w.wait(t0 + Duration::seconds(60)).is_none());
    }

    #[test]
    fn rng_is_seeded() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        let hits = (0..10_000).filter(|_| a.chance(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }
}
