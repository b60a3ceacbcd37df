//! Distinct count over a sliding window, exact while small, HyperLogLog when large.
//!
//! **Small (exact).** Up to [`SMALL_MAX`] distinct values, each kept as a 32-bit keyed
//! fingerprint with the second it was last seen; the count is the number seen within the
//! window, exact at one-second granularity. The first [`INLINE`] live inside the entry
//! (no allocation): a key seen with 3 accounts costs no heap at all. Fingerprint
//! collisions can only merge two values (undercount by one); among 64 values the chance
//! is 64²/2³³ ≈ 5·10⁻⁷.
//!
//! **Large (approximate).** Past [`SMALL_MAX`] live values the set becomes three
//! HyperLogLog sketches (`hyperloglockless`, precision [`HLL_PRECISION`]: 1024 one-byte
//! registers each, relative standard error 1.04/√1024 ≈ 3.3 %): one for the current
//! window (`curr`), one for the previous (`prev`), and their union (`both`, kept by
//! inserting every value into it too, and starting each window as a copy of `prev`).
//! The window's estimate is
//!
//! ```text
//! |curr| + (1 - f) * (|prev ∪ curr| - |curr|)
//! ```
//!
//! where `f` is how far `now` is into the current window: every value seen in this
//! window, plus the share of the values seen *only* in the previous one that fell in its
//! last `1 - f`. Values seen in both windows count once. (The counters' `prev * (1 - f) +
//! curr` would count them twice: 150 people behind one office NAT, each seen within the
//! first minutes of every hour, would read as 300 at the top of each hour.) The sketches
//! keep a running sum, so an estimate is O(1), not O(m): the engine estimates on every
//! request. Chosen over `hyperloglog` 1.0.4 (wrong precision, O(m) estimates),
//! `cardinality-estimator` and `datasketches` (O(m) estimates) after the measurements in
//! `../shared/FINDINGS.md` and `benches/`.
//!
//! **Error in large mode.** The HLL error of `|curr|` and of `|prev ∪ curr|` (3.3 % of
//! each, one standard error), plus the window approximation, which assumes the values
//! seen only in the previous window were spread evenly over it: exact for a stream of
//! new values (a scraper walking accounts), and within `[|curr|, |prev ∪ curr|]` always.
//! The difference of two estimates is clamped at zero.
//!
//! **Memory.** The entry is 36 bytes; small mode adds nothing up to 3 values and 8
//! bytes a value up to 64 (512 bytes); large mode adds 3 × 1 KiB + 3 × 56 bytes, and 48
//! bytes of cached counts.

use std::hash::BuildHasherDefault;

use hyperloglockless::HyperLogLog;

use crate::snapshot::{Reader, SnapshotError, Writer};
use crate::window::{epoch, fraction};

/// Values kept inside the entry.
pub const INLINE: usize = 3;
/// Most values kept exactly.
pub const SMALL_MAX: usize = 64;
/// HyperLogLog precision (2^p registers).
pub const HLL_PRECISION: u8 = 10;

type Hll = HyperLogLog<BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

fn new_hll() -> Hll {
    HyperLogLog::with_hasher(HLL_PRECISION, BuildHasherDefault::default())
}

/// Spreads a 32-bit fingerprint over 64 bits for the HyperLogLog (splitmix64 finalizer).
fn mix(fp: u32) -> u64 {
    let mut z = u64::from(fp).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
enum Repr {
    Inline {
        len: u8,
        items: [(u32, u32); INLINE],
    },
    Small(Vec<(u32, u32)>),
    Large(Box<Large>),
}

#[derive(Debug, Clone)]
struct Large {
    epoch: u32,
    prev: Hll,
    curr: Hll,
    /// `prev ∪ curr`.
    both: Hll,
    /// The last raw counts of `curr` and `both`, with the sketch state they were made
    /// from (see [`Counted`]).
    counted: [Counted; 2],
}

/// A sketch's raw count and the `(zeros, sum)` it was computed from. The count is a
/// function of those two alone (a logarithm and a polynomial: about 150 instructions),
/// and most inserts into a large set change no register, so the engine, which estimates
/// on every insert, reuses it while they are unchanged: the same inputs, the same `f64`.
#[derive(Debug, Clone, Copy)]
struct Counted {
    /// `usize::MAX` until a count is made (a sketch has at most 2^p zero registers).
    zeros: usize,
    sum_bits: u64,
    count: f64,
}

impl Default for Counted {
    fn default() -> Self {
        Self {
            zeros: usize::MAX,
            sum_bits: 0,
            count: 0.0,
        }
    }
}

impl Counted {
    fn of(&mut self, hll: &Hll) -> f64 {
        let (_, _, zeros, sum) = hll.parts();
        if self.zeros != zeros || self.sum_bits != sum.to_bits() {
            *self = Counted {
                zeros,
                sum_bits: sum.to_bits(),
                count: hll.raw_count(),
            };
        }
        self.count
    }
}

impl Large {
    fn new(epoch: u32) -> Self {
        Self::from_sketches(epoch, new_hll(), new_hll(), new_hll())
    }

    fn from_sketches(epoch: u32, prev: Hll, curr: Hll, both: Hll) -> Self {
        Self {
            epoch,
            prev,
            curr,
            both,
            counted: [Counted::default(); 2],
        }
    }

    fn insert(&mut self, hash: u64) {
        self.curr.insert_hash(hash);
        self.both.insert_hash(hash);
    }

    /// [`DistinctSet::estimate`] of a large set, reusing the raw counts it made last.
    fn estimate_cached(&mut self, now_ms: u64, window_ms: u64) -> f64 {
        let e = epoch(now_ms, window_ms);
        let (curr, prev_only) = if e == self.epoch {
            let curr = self.counted[0].of(&self.curr);
            (curr, (self.counted[1].of(&self.both) - curr).max(0.0))
        } else if e == self.epoch.wrapping_add(1) {
            (0.0, self.counted[0].of(&self.curr))
        } else {
            (0.0, 0.0)
        };
        prev_only * (1.0 - fraction(now_ms, window_ms)) + curr
    }
}

/// One key's distinct set.
#[derive(Debug, Clone)]
pub struct DistinctSet {
    last_seen_s: u32,
    repr: Repr,
}

impl Default for DistinctSet {
    fn default() -> Self {
        Self {
            last_seen_s: 0,
            repr: Repr::Inline {
                len: 0,
                items: [(0, 0); INLINE],
            },
        }
    }
}

/// Index of the first item with fingerprint `fp`. A small set is scanned on every insert
/// (up to [`SMALL_MAX`] items): eight items at a time, without a branch per item, which
/// the compiler turns into vector compares (a scalar `find` was a third of the engine's
/// per-slot work in a replay of scrapers walking accounts).
#[inline]
fn position(items: &[(u32, u32)], fp: u32) -> Option<usize> {
    const LANES: usize = 8;
    let mut chunks = items.chunks_exact(LANES);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut hits = 0u32;
        for (j, (f, _)) in chunk.iter().enumerate() {
            hits |= u32::from(*f == fp) << j;
        }
        if hits != 0 {
            return Some(base + hits.trailing_zeros() as usize);
        }
        base += LANES;
    }
    chunks
        .remainder()
        .iter()
        .position(|(f, _)| *f == fp)
        .map(|i| base + i)
}

pub(crate) fn secs(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 1000).unwrap_or(u32::MAX)
}

/// A window in whole seconds, rounded up, saturating.
pub(crate) fn window_secs(window_ms: u64) -> u32 {
    u32::try_from(window_ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

impl DistinctSet {
    /// Adds a value (its 32-bit fingerprint) seen at `now_ms`; returns the estimated
    /// number of distinct values in the window, and the change in heap bytes.
    pub fn insert(&mut self, fp: u32, now_ms: u64, window_ms: u64) -> (f64, isize) {
        let now_s = secs(now_ms);
        let window_s = window_secs(window_ms);
        let cutoff = now_s.saturating_sub(window_s);
        self.last_seen_s = now_s;
        let before = self.heap_bytes();
        let live = |items: &[(u32, u32)]| items.iter().filter(|(_, t)| *t > cutoff).count();
        match &mut self.repr {
            Repr::Inline { len, items } => {
                let n = usize::from(*len);
                if let Some(it) = items[..n].iter_mut().find(|(f, _)| *f == fp) {
                    it.1 = now_s;
                    return (live(&items[..n]) as f64, 0);
                }
                // Reuse an expired slot, else grow.
                if let Some(it) = items[..n].iter_mut().find(|(_, t)| *t <= cutoff) {
                    *it = (fp, now_s);
                    return (live(&items[..n]) as f64, 0);
                }
                if n < INLINE {
                    items[n] = (fp, now_s);
                    *len += 1;
                    return (live(&items[..=n]) as f64, 0);
                }
                let mut v = Vec::with_capacity(INLINE * 2);
                v.extend_from_slice(&items[..n]);
                v.push((fp, now_s));
                let est = live(&v) as f64;
                self.repr = Repr::Small(v);
                (est, self.heap_bytes() as isize - before as isize)
            }
            Repr::Small(v) => {
                if let Some(it) = position(v, fp).and_then(|i| v.get_mut(i)) {
                    it.1 = now_s;
                    return (live(v) as f64, 0);
                }
                v.retain(|(_, t)| *t > cutoff);
                v.push((fp, now_s));
                if v.len() <= SMALL_MAX {
                    let est = v.len() as f64;
                    return (est, self.heap_bytes() as isize - before as isize);
                }
                let mut large = Large::new(epoch(now_ms, window_ms));
                for (f, _) in v.iter() {
                    large.insert(mix(*f));
                }
                self.repr = Repr::Large(Box::new(large));
                let est = self.estimate(now_ms, window_ms);
                (est, self.heap_bytes() as isize - before as isize)
            }
            Repr::Large(l) => {
                let e = epoch(now_ms, window_ms);
                if e != l.epoch {
                    if e == l.epoch.wrapping_add(1) {
                        // The window's values become the previous window's, and the
                        // union starts as them.
                        std::mem::swap(&mut l.prev, &mut l.curr);
                        l.curr = new_hll();
                        l.both = l.prev.clone();
                    } else {
                        **l = Large::new(e);
                    }
                    l.epoch = e;
                }
                l.insert(mix(fp));
                (l.estimate_cached(now_ms, window_ms), 0)
            }
        }
    }

    /// The estimated number of distinct values in the window ending at `now_ms`.
    #[must_use]
    pub fn estimate(&self, now_ms: u64, window_ms: u64) -> f64 {
        let now_s = secs(now_ms);
        let window_s = window_secs(window_ms);
        let cutoff = now_s.saturating_sub(window_s);
        match &self.repr {
            Repr::Inline { len, items } => items[..usize::from(*len)]
                .iter()
                .filter(|(_, t)| *t > cutoff)
                .count() as f64,
            Repr::Small(v) => v.iter().filter(|(_, t)| *t > cutoff).count() as f64,
            Repr::Large(l) => {
                let e = epoch(now_ms, window_ms);
                // (values seen in this window, values seen only in the previous one)
                let (curr, prev_only) = if e == l.epoch {
                    let curr = l.curr.raw_count();
                    (curr, (l.both.raw_count() - curr).max(0.0))
                } else if e == l.epoch.wrapping_add(1) {
                    (0.0, l.curr.raw_count())
                } else {
                    (0.0, 0.0)
                };
                prev_only * (1.0 - fraction(now_ms, window_ms)) + curr
            }
        }
    }

    /// Whether nothing was seen within the window ending at `now_ms`.
    #[must_use]
    pub fn is_idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.is_idle_at(secs(now_ms), window_secs(window_ms))
    }

    /// [`DistinctSet::is_idle`] with the time and the window in seconds
    /// (`now_ms / 1000`, `window_ms` rounded up to seconds).
    #[must_use]
    #[inline]
    pub fn is_idle_at(&self, now_s: u32, window_s: u32) -> bool {
        // Large sets remember the previous window too.
        let span = if matches!(self.repr, Repr::Large(_)) {
            window_s.saturating_mul(2)
        } else {
            window_s
        };
        self.last_seen_s.saturating_add(span) < now_s
    }

    /// Heap bytes this set owns.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        match &self.repr {
            Repr::Inline { .. } => 0,
            Repr::Small(v) => v.capacity() * std::mem::size_of::<(u32, u32)>(),
            Repr::Large(_) => std::mem::size_of::<Large>() + 3 * (1usize << HLL_PRECISION),
        }
    }

    /// Whether the set has become a sketch.
    #[must_use]
    pub fn is_large(&self) -> bool {
        matches!(self.repr, Repr::Large(_))
    }
}

// === snapshots ===
// tag u8 (0 inline, 1 small, 2 large) | last_seen_s u32 |
//   inline, small: count (u8, u32) | count x (fingerprint u32, second u32)
//   large: epoch u32 | 2 x 2^HLL_PRECISION register bytes (previous, current); their
//     union is rebuilt on reading

const TAG_INLINE: u8 = 0;
const TAG_SMALL: u8 = 1;
const TAG_LARGE: u8 = 2;
/// Highest register value a 64-bit hash can produce (1 + 64 trailing zeros).
const MAX_REGISTER: u8 = 65;

impl DistinctSet {
    /// Appends the set's snapshot form.
    pub(crate) fn write_to(&self, w: &mut Writer) {
        match &self.repr {
            Repr::Inline { len, items } => {
                w.u8(TAG_INLINE);
                w.u32(self.last_seen_s);
                w.u8(*len);
                for (f, t) in &items[..usize::from(*len)] {
                    w.u32(*f);
                    w.u32(*t);
                }
            }
            Repr::Small(v) => {
                w.u8(TAG_SMALL);
                w.u32(self.last_seen_s);
                w.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
                for (f, t) in v {
                    w.u32(*f);
                    w.u32(*t);
                }
            }
            Repr::Large(l) => {
                w.u8(TAG_LARGE);
                w.u32(self.last_seen_s);
                w.u32(l.epoch);
                for hll in [&l.prev, &l.curr] {
                    w.bytes(&hll.iter().collect::<Vec<u8>>());
                }
            }
        }
    }

    /// Reads a set written by [`DistinctSet::write_to`], checking every length and
    /// register before it allocates or builds anything.
    pub(crate) fn read_from(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let tag = r.u8()?;
        let last_seen_s = r.u32()?;
        let repr = match tag {
            TAG_INLINE => {
                let len = r.u8()?;
                if usize::from(len) > INLINE {
                    return Err(r.bad(format!("inline set of {len} values, at most {INLINE}")));
                }
                let mut items = [(0, 0); INLINE];
                for it in items.iter_mut().take(usize::from(len)) {
                    *it = (r.u32()?, r.u32()?);
                }
                Repr::Inline { len, items }
            }
            TAG_SMALL => {
                let len = r.u32()? as usize;
                if len > SMALL_MAX || len <= INLINE {
                    return Err(r.bad(format!(
                        "small set of {len} values, expected {} to {SMALL_MAX}",
                        INLINE + 1
                    )));
                }
                let mut v = Vec::with_capacity(len);
                for _ in 0..len {
                    v.push((r.u32()?, r.u32()?));
                }
                Repr::Small(v)
            }
            TAG_LARGE => {
                let epoch = r.u32()?;
                let prev = read_hll(r)?;
                let curr = read_hll(r)?;
                let mut both = prev.clone();
                if let Err(e) = both.union(&curr) {
                    return Err(r.bad(format!("HyperLogLog union: {e:?}")));
                }
                Repr::Large(Box::new(Large::from_sketches(epoch, prev, curr, both)))
            }
            other => return Err(r.bad(format!("unknown distinct-set kind {other}"))),
        };
        Ok(Self { last_seen_s, repr })
    }
}

fn read_hll(r: &mut Reader<'_>) -> Result<Hll, SnapshotError> {
    let regs = r.bytes(1usize << HLL_PRECISION)?;
    if let Some(bad) = regs.iter().find(|x| **x > MAX_REGISTER) {
        return Err(r.bad(format!("HyperLogLog register {bad} is over {MAX_REGISTER}")));
    }
    // The sketch's running sum and zero count are derived, not stored: recomputed here
    // they cannot disagree with the registers.
    let zeros = regs.iter().filter(|x| **x == 0).count();
    let sum: f64 = regs.iter().map(|x| (-f64::from(*x)).exp2()).sum();
    Ok(HyperLogLog::from_parts(
        regs.into(),
        BuildHasherDefault::default(),
        zeros,
        sum,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 3_600_000;
    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn position_finds_the_first_match_at_every_length_and_place() {
        for len in 0..=SMALL_MAX + 1 {
            // Fingerprints 100.. with one duplicate of the last, so "first" matters.
            let mut items: Vec<(u32, u32)> = (0..len as u32).map(|i| (100 + i, i)).collect();
            if len > 1 {
                items.push((100 + len as u32 - 1, 0));
            }
            for fp in 99..=100 + len as u32 {
                let want = items.iter().position(|(f, _)| *f == fp);
                assert_eq!(position(&items, fp), want, "len {len}, fp {fp}");
            }
        }
    }

    #[test]
    fn small_sets_are_exact_and_allocation_free_up_to_three() {
        let mut s = DistinctSet::default();
        for (i, fp) in [7u32, 8, 7, 9, 8].iter().enumerate() {
            let (est, heap) = s.insert(*fp, T0 + i as u64 * 1000, W);
            assert_eq!(heap, 0);
            assert!(est <= 3.0);
        }
        assert_eq!(s.estimate(T0 + 10_000, W), 3.0);
        assert_eq!(s.heap_bytes(), 0);
        assert!(
            std::mem::size_of::<DistinctSet>() <= 40,
            "{}",
            std::mem::size_of::<DistinctSet>()
        );
    }

    #[test]
    fn exact_window_forgets_old_values() {
        let mut s = DistinctSet::default();
        for fp in 0..10u32 {
            s.insert(fp, T0, W);
        }
        assert_eq!(s.estimate(T0, W), 10.0);
        // An hour and a second later, all ten are out of the window.
        let later = T0 + W + 1000;
        assert_eq!(s.estimate(later, W), 0.0);
        assert_eq!(s.insert(99, later, W).0, 1.0);
    }

    #[test]
    fn large_sets_estimate_within_the_documented_error() {
        // The HLL's standard error at p = 10 is 3.25 %; 4 sigma is 13 %.
        for n in [100u32, 1_000, 15_000, 100_000] {
            let mut s = DistinctSet::default();
            let mut est = 0.0;
            for fp in 0..n {
                // Distinct, well-spread fingerprints, as the engine's keyed hash gives.
                est = s
                    .insert(fp.wrapping_mul(2_654_435_761), T0 + u64::from(fp) % 1000, W)
                    .0;
            }
            let rel = (est - f64::from(n)).abs() / f64::from(n);
            assert!(rel < 0.13, "n = {n}: estimate {est} ({:.1} %)", rel * 100.0);
            assert_eq!(s.is_large(), n as usize > SMALL_MAX);
        }
    }

    #[test]
    fn a_stream_of_new_values_is_counted_over_the_sliding_window() {
        // 10 new values a second for two windows: the window always holds ~36 000.
        let w = 3_600_000;
        let mut s = DistinctSet::default();
        let mut fp = 0u32;
        let mut est = 0.0;
        for sec in 0..7_200u64 {
            for _ in 0..10 {
                fp += 1;
                est = s
                    .insert(fp.wrapping_mul(2_654_435_761), T0 + sec * 1000, w)
                    .0;
            }
        }
        let rel = (est - 36_000.0).abs() / 36_000.0;
        assert!(rel < 0.13, "{est}");
    }

    /// The exact count over `(now - window, now]` at one-second granularity, as the small
    /// mode keeps it.
    fn truth(last_seen: &std::collections::HashMap<u32, u64>, now_s: u64, window_s: u64) -> f64 {
        last_seen
            .values()
            .filter(|t| **t + window_s > now_s)
            .count() as f64
    }

    /// Feeds `values(sec)` each second for `hours` windows and checks every estimate after
    /// the first window against the exact count.
    fn track(hours: u64, values: impl Fn(u64) -> Vec<u32>) -> f64 {
        let w = 3_600_000;
        let start = T0 - T0 % w;
        let mut s = DistinctSet::default();
        let mut seen = std::collections::HashMap::new();
        let mut worst: f64 = 0.0;
        for sec in 0..hours * 3600 {
            let now = start + sec * 1000;
            let vs = values(sec);
            for v in &vs {
                seen.insert(*v, sec);
                s.insert(v.wrapping_mul(2_654_435_761), now, w);
            }
            if sec >= 3600 && !vs.is_empty() {
                let t = truth(&seen, sec, 3600);
                let rel = (s.estimate(now, w) - t).abs() / t;
                assert!(
                    rel < 0.13,
                    "second {sec}: estimate {} for {t} ({:.1} %)",
                    s.estimate(now, w),
                    rel * 100.0
                );
                worst = worst.max(rel);
            }
        }
        assert!(s.is_large());
        worst
    }

    #[test]
    fn values_returning_every_window_count_once_across_the_boundary() {
        // 150 people behind one address, each seen every 10 minutes, all within the
        // first minutes of each hour too. `prev * (1 - f) + curr` read about 300 just
        // after each hour began.
        track(3, |sec| {
            (0..150u32)
                .filter(|p| (sec + u64::from(*p) * 4).is_multiple_of(600))
                .collect()
        });
    }

    #[test]
    fn returning_values_and_a_stream_of_new_ones_together() {
        // 100 regulars every 5 minutes, and 2 new values a minute.
        track(3, |sec| {
            let mut v: Vec<u32> = (0..100u32)
                .filter(|p| (sec + u64::from(*p) * 3).is_multiple_of(300))
                .collect();
            if sec.is_multiple_of(30) {
                v.push(1_000_000 + (sec / 30) as u32);
            }
            v
        });
    }

    #[test]
    fn a_large_set_spanning_two_windows_round_trips() {
        // 200 values in one window, 150 of them again and 100 new in the next: the
        // union is rebuilt from the two sketches on reading, so the restored set
        // estimates what the original does, and both count the 150 once.
        let start = T0 - T0 % W;
        let mut s = DistinctSet::default();
        for v in 0..200u32 {
            s.insert(
                v.wrapping_mul(2_654_435_761),
                start + u64::from(v) * 1000,
                W,
            );
        }
        let next = start + W;
        for v in 50..350u32 {
            s.insert(v.wrapping_mul(2_654_435_761), next + u64::from(v) * 1000, W);
        }
        let mut w = Writer::default();
        s.write_to(&mut w);
        let file = w.finish();
        let mut r = Reader::open(&file).expect("open");
        let back = DistinctSet::read_from(&mut r).expect("read");
        assert_eq!(r.remaining(), 0);
        for at in [next + 400_000, next + W / 2, next + W - 1] {
            let (x, y) = (s.estimate(at, W), back.estimate(at, W));
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
        // Halfway: 300 in this window, plus half of the 50 seen only in the last one.
        let est = back.estimate(next + W / 2, W);
        assert!((est - 325.0).abs() < 325.0 * 0.13, "{est}");
    }

    #[test]
    fn estimates_from_insert_equal_fresh_estimates() {
        // `insert` reuses the sketches' last raw counts while they are unchanged; the
        // answer must be the one `estimate` computes from scratch, to the bit, through
        // promotion, repeated values, window turns and gaps of several windows.
        let w = 60_000;
        let mut s = DistinctSet::default();
        let mut now = T0;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += match x % 1000 {
                0 => 3 * w,
                1..=20 => w / 2,
                _ => x % 40,
            };
            // Mostly values seen before (registers unchanged), some new ones.
            let fp = if x.is_multiple_of(4) {
                (x >> 32) as u32
            } else {
                (i % 500) as u32
            };
            let (est, _) = s.insert(fp.wrapping_mul(2_654_435_761), now, w);
            assert_eq!(est.to_bits(), s.estimate(now, w).to_bits(), "insert {i}");
        }
        assert!(s.is_large());
    }

    #[test]
    fn heap_accounting_follows_promotion() {
        let mut s = DistinctSet::default();
        let mut total: isize = 0;
        for fp in 0..200u32 {
            total += s.insert(fp.wrapping_mul(2_654_435_761), T0, W).1;
        }
        assert!(s.is_large());
        assert_eq!(total, s.heap_bytes() as isize);
    }
}
