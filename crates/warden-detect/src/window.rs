//! Sliding-window request counter.
//!
//! Two fixed buckets, the current window and the previous one, and the estimate
//! `prev * (1 - f) + curr`, where `f` is how far `now` is into the current window
//! (Cloudflare's sliding-window approximation).
//!
//! **Error.** The true count over `(now - window, now]` is `curr` plus the part of `prev`
//! that fell in its last `1 - f` fraction; the estimate assumes `prev` was spread evenly.
//! So the estimate and the truth both lie in `[curr, curr + prev]`: the error is at most
//! `prev * max(f, 1 - f)`, and zero for an even rate. Tested in this file.
//!
//! **Memory.** 12 bytes: `epoch` (window index, `now_ms / window_ms`), `prev`, `curr`.
//! Counts saturate at `u32::MAX`.

/// One key's sliding count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlidingCount {
    epoch: u32,
    prev: u32,
    curr: u32,
}

impl SlidingCount {
    fn roll(&mut self, epoch: u32) {
        if epoch == self.epoch {
            return;
        }
        self.prev = if epoch == self.epoch.wrapping_add(1) {
            self.curr
        } else {
            0
        };
        self.curr = 0;
        self.epoch = epoch;
    }

    /// Counts one request at `now_ms` and returns the estimate including it.
    pub fn add(&mut self, now_ms: u64, window_ms: u64) -> f64 {
        self.roll(epoch(now_ms, window_ms));
        self.curr = self.curr.saturating_add(1);
        // `estimate` at the epoch just rolled to, without working the epoch out again.
        f64::from(self.prev) * (1.0 - fraction(now_ms, window_ms)) + f64::from(self.curr)
    }

    /// The estimated count over the window ending at `now_ms`.
    #[must_use]
    pub fn estimate(&self, now_ms: u64, window_ms: u64) -> f64 {
        let e = epoch(now_ms, window_ms);
        let (prev, curr) = if e == self.epoch {
            (self.prev, self.curr)
        } else if e == self.epoch.wrapping_add(1) {
            (self.curr, 0)
        } else {
            (0, 0)
        };
        f64::from(prev) * (1.0 - fraction(now_ms, window_ms)) + f64::from(curr)
    }

    /// Milliseconds until the current window ends.
    #[must_use]
    pub fn ms_to_window_end(now_ms: u64, window_ms: u64) -> u64 {
        let w = window_ms.max(1);
        w - now_ms % w
    }

    /// The raw fields (window index, previous and current bucket), for snapshots.
    #[must_use]
    pub(crate) fn parts(&self) -> (u32, u32, u32) {
        (self.epoch, self.prev, self.curr)
    }

    /// A counter from its raw fields (see [`SlidingCount::parts`]); any values are valid.
    #[must_use]
    pub(crate) fn from_parts(epoch: u32, prev: u32, curr: u32) -> Self {
        Self { epoch, prev, curr }
    }

    /// Whether nothing is left in the window ending at `now_ms` (the entry can go).
    #[must_use]
    pub fn is_idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.is_idle_at_epoch(epoch(now_ms, window_ms))
    }

    /// [`SlidingCount::is_idle`] at window index `epoch` ([`epoch`] of the time).
    #[must_use]
    #[inline]
    pub fn is_idle_at_epoch(&self, epoch: u32) -> bool {
        epoch > self.epoch.wrapping_add(1)
    }
}

/// The window index of a time, saturating.
#[must_use]
pub fn epoch(now_ms: u64, window_ms: u64) -> u32 {
    u32::try_from(now_ms / window_ms.max(1)).unwrap_or(u32::MAX)
}

/// How far into its window a time is, in `[0, 1)`.
#[must_use]
pub fn fraction(now_ms: u64, window_ms: u64) -> f64 {
    let w = window_ms.max(1);
    (now_ms % w) as f64 / w as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;

    #[test]
    fn an_even_rate_is_estimated_exactly() {
        // One request per second for ten minutes: the window always holds 60.
        let mut c = SlidingCount::default();
        let start = 1_000 * W;
        for s in 0..600u64 {
            let now = start + s * 1000;
            let est = c.add(now, W);
            if s >= 60 {
                assert!((est - 60.0).abs() <= 1.0 + 1e-9, "at {s}s: {est}");
            }
        }
    }

    #[test]
    fn error_is_bounded_by_the_previous_bucket_for_any_burst() {
        // All of the previous window's requests came in its first second: the truth is
        // `curr` once we are past it, the estimate over-counts, within the bound.
        let mut c = SlidingCount::default();
        let start = 1_000 * W;
        for _ in 0..100 {
            c.add(start, W);
        }
        let now = start + W + W / 2; // halfway into the next window
        let est = c.add(now, W);
        let truth = 1.0;
        let bound = 100.0 * 0.5;
        assert!(est >= truth && est - truth <= bound, "{est}");
        // And both lie in [curr, curr + prev].
        assert!((1.0..=101.0).contains(&est));
    }

    #[test]
    fn old_windows_are_forgotten() {
        let mut c = SlidingCount::default();
        c.add(10 * W, W);
        assert!(!c.is_idle(11 * W, W));
        assert!(c.is_idle(12 * W, W));
        assert_eq!(c.estimate(12 * W, W), 0.0);
        assert_eq!(c.add(12 * W, W), 1.0);
    }

    #[test]
    fn size_is_twelve_bytes() {
        assert_eq!(std::mem::size_of::<SlidingCount>(), 12);
    }
}
