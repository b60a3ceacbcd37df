//! Distinct count over a sliding window, exact while small, HyperLogLog when large.
//!
//! **Small (exact).** Up to [`SMALL_MAX`] distinct values, each kept as a 32-bit keyed
//! fingerprint with the second it was last seen; the count is the number seen within the
//! window, exact at one-second granularity. The first [`INLINE`] live inside the entry
//! (no allocation): a key seen with 2 accounts costs no heap at all. Fingerprint
//! collisions can only merge two values (undercount by one); among 64 values the chance
//! is 64²/2³³ ≈ 5·10⁻⁷.
//!
//! **Large (approximate).** Past [`SMALL_MAX`] live values the set becomes two
//! HyperLogLog sketches (`hyperloglockless`, precision [`HLL_PRECISION`]: 1024 one-byte
//! registers each, relative standard error 1.04/√1024 ≈ 3.3 %): one for the current
//! window (`curr`), one for the previous (`prev`), and the count of their union (`both`):
//! its registers are the two sketches' maxima, so only its zero count and register sum
//! are kept, updated at each insert as a third sketch's would be (see `Union` below).
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
//! **Memory.** The set is 24 bytes, in the entry; small mode adds nothing up to 2 values,
//! then a heap array of 8 bytes a value, doubled from 4 as needed up to 64 (at most 512
//! bytes); large mode adds 2 × 1 KiB of registers and 168 bytes of sketch headers, union
//! and cached counts (checked in the tests). Two values inline rather than three: the
//! third would make every slot of every entry 8 bytes larger, distinct or not, and the
//! rule state is what a replay or a busy node waits on memory for.

use std::hash::BuildHasherDefault;

use hyperloglockless::HyperLogLog;

use crate::snapshot::{Reader, SnapshotError, Writer};
use crate::window::{epoch, fraction};

/// Values kept inside the entry.
pub const INLINE: usize = 2;
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
struct Large {
    epoch: u32,
    prev: Hll,
    curr: Hll,
    /// `prev ∪ curr`, as its count needs it (see [`Union`]).
    both: Union,
    /// The last raw counts of `curr` and `both`, with the sketch state they were made
    /// from (see [`Counted`]).
    counted: [Counted; 2],
}

/// `2^-r`, exactly (a power of two is an exact `f64` down to `2^-1022`).
fn inv_pow2(r: u8) -> f64 {
    f64::from_bits((1023 - u64::from(r)) << 52)
}

/// The union `prev ∪ curr` without registers of its own: its register `j` is
/// `max(prev[j], curr[j])`, read from the two sketches, and its count is a function of
/// its number of zero registers and its sum of `2^-register`, kept here. They change by
/// exactly the steps a `hyperloglockless` sketch takes on an insert or a union, so the
/// count is, to the bit, the one a third sketch fed every value would give (tested
/// against one), for a third less memory and one register write fewer an insert.
#[derive(Debug, Clone, Copy)]
struct Union {
    zeros: usize,
    sum: f64,
}

impl Union {
    /// The union's state when it equals `hll`.
    fn of(hll: &Hll) -> Self {
        let (_, _, zeros, sum) = hll.parts();
        Self { zeros, sum }
    }

    /// A register holding `old` is offered `new` (`HyperLogLog::update`'s steps).
    fn offer(&mut self, old: u8, new: u8) {
        // (Saturating: the same result whenever the counts agree with the registers,
        // which every path that builds a set ensures.)
        self.zeros = self.zeros.saturating_sub(usize::from(old == 0 && new > 0));
        self.sum -= (inv_pow2(old) - inv_pow2(new)).max(0.0);
    }

    /// The raw count: `hyperloglockless`'s LogLog-Beta estimate (Qin et al., 2016), for
    /// [`HLL_PRECISION`] = 10, its coefficients copied from the crate (MIT OR Apache-2.0).
    fn raw_count(&self) -> f64 {
        const BETA: [f64; 8] = [
            -0.25935400670790054,
            -0.5259830199980581,
            1.4893303492587684,
            -1.2964271408499357,
            0.6228475621722162,
            -0.1567232677025104,
            0.02054415903878563,
            -0.00112488483925502,
        ];
        const M: usize = 1 << HLL_PRECISION;
        let beta = if self.zeros == 0 {
            0.0
        } else {
            let zeros = self.zeros as f64;
            let zl = (zeros + 1.0).ln();
            let mut res = BETA[7];
            for b in BETA[1..7].iter().rev() {
                res = res * zl + b;
            }
            res * zl + BETA[0] * zeros
        };
        let correction = 0.721_347_520_444_481_7 / (1.0 + 1.079_441_541_679_835_7 / M as f64);
        correction * (M * (M - self.zeros)) as f64 / (self.sum + beta)
    }
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
    /// The count of a sketch with `zeros` zero registers and register sum `sum`,
    /// computed by `count` unless those are the ones of the last count.
    fn of(&mut self, zeros: usize, sum: f64, count: impl FnOnce() -> f64) -> f64 {
        if self.zeros != zeros || self.sum_bits != sum.to_bits() {
            *self = Counted {
                zeros,
                sum_bits: sum.to_bits(),
                count: count(),
            };
        }
        self.count
    }

    fn of_hll(&mut self, hll: &Hll) -> f64 {
        let (_, _, zeros, sum) = hll.parts();
        self.of(zeros, sum, || hll.raw_count())
    }

    fn of_union(&mut self, u: &Union) -> f64 {
        self.of(u.zeros, u.sum, || u.raw_count())
    }
}

impl Large {
    fn new(epoch: u32) -> Self {
        Self::from_sketches(epoch, new_hll(), new_hll())
    }

    /// A set from its two sketches; their union is worked out from them.
    fn from_sketches(epoch: u32, prev: Hll, curr: Hll) -> Self {
        let mut both = Union::of(&prev);
        for (old, new) in prev.iter().zip(curr.iter()) {
            both.offer(old, new);
        }
        Self {
            epoch,
            prev,
            curr,
            both,
            counted: [Counted::default(); 2],
        }
    }

    fn insert(&mut self, hash: u64) {
        // The register the crate's `insert_hash` picks, and the value it offers.
        let j = (hash >> (64 - u32::from(HLL_PRECISION))) as usize;
        let rank = 1 + hash.trailing_zeros() as u8;
        let (prev, curr) = (self.prev.parts().0, self.curr.parts().0);
        if let (Some(p), Some(c)) = (prev.get(j), curr.get(j)) {
            self.both.offer((*p).max(*c), rank);
        }
        self.curr.insert_hash(hash);
    }

    /// The window turns: its values become the previous window's, and the union is
    /// them.
    fn turn(&mut self) {
        std::mem::swap(&mut self.prev, &mut self.curr);
        self.curr = new_hll();
        self.both = Union::of(&self.prev);
    }

    /// [`DistinctSet::estimate`] of a large set, reusing the raw counts it made last.
    fn estimate_cached(&mut self, now_ms: u64, window_ms: u64) -> f64 {
        let Large {
            epoch,
            curr,
            both,
            counted: [c, b],
            ..
        } = self;
        windowed(
            *epoch,
            now_ms,
            window_ms,
            || c.of_hll(curr),
            || b.of_union(both),
        )
    }

    /// [`DistinctSet::estimate`] of a large set, counting afresh.
    fn estimate(&self, now_ms: u64, window_ms: u64) -> f64 {
        windowed(
            self.epoch,
            now_ms,
            window_ms,
            || self.curr.raw_count(),
            || self.both.raw_count(),
        )
    }
}

/// The estimate of the window ending at `now_ms` from a large set's sketches of window
/// `epoch`, given their counts (`|curr|`, `|prev ∪ curr|`), each asked for only when
/// that window needs it.
fn windowed(
    epoch_of_curr: u32,
    now_ms: u64,
    window_ms: u64,
    curr: impl FnOnce() -> f64,
    both: impl FnOnce() -> f64,
) -> f64 {
    let e = epoch(now_ms, window_ms);
    // (values seen in this window, values seen only in the previous one)
    let (curr, prev_only) = if e == epoch_of_curr {
        let curr = curr();
        (curr, (both() - curr).max(0.0))
    } else if e == epoch_of_curr.wrapping_add(1) {
        (0.0, curr())
    } else {
        (0.0, 0.0)
    };
    prev_only * (1.0 - fraction(now_ms, window_ms)) + curr
}

/// One key's distinct set: 24 bytes, the size of the slot it lives in (`state.rs`).
#[derive(Debug, Clone)]
pub struct DistinctSet(Repr);

/// The three modes. Each keeps the second the set last took a value (`last_seen_s`),
/// for the idle sweep.
#[derive(Debug, Clone)]
enum Repr {
    /// Up to [`INLINE`] values, in the entry.
    Inline {
        len: u8,
        last_seen_s: u32,
        items: [(u32, u32); INLINE],
    },
    /// Up to [`SMALL_MAX`] values on the heap: `items[..len]`, and `items.len()` is the
    /// capacity (a boxed slice rather than a `Vec`, whose separate capacity word would
    /// make every slot of every entry 8 bytes larger).
    Small {
        len: u8,
        last_seen_s: u32,
        items: Box<[(u32, u32)]>,
    },
    Large {
        last_seen_s: u32,
        sketch: Box<Large>,
    },
}

impl Default for DistinctSet {
    fn default() -> Self {
        Self(Repr::Inline {
            len: 0,
            last_seen_s: 0,
            items: [(0, 0); INLINE],
        })
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

/// Capacity of a set's first heap array: [`INLINE`] values and the one that did not fit,
/// rounded up to a power of two.
const SMALL_FIRST: usize = (INLINE + 1).next_power_of_two();

const ITEM_BYTES: usize = std::mem::size_of::<(u32, u32)>();

/// How many of `items` were seen after `cutoff` (unix seconds): within the window.
fn live(items: &[(u32, u32)], cutoff: u32) -> usize {
    items.iter().filter(|(_, t)| *t > cutoff).count()
}

/// A set holding `items` (at most [`SMALL_MAX`]), inline if they fit.
fn exact(last_seen_s: u32, items: &[(u32, u32)]) -> Repr {
    if items.len() <= INLINE {
        let mut inline = [(0, 0); INLINE];
        inline[..items.len()].copy_from_slice(items);
        return Repr::Inline {
            len: items.len() as u8,
            last_seen_s,
            items: inline,
        };
    }
    let capacity = items.len().next_power_of_two().max(SMALL_FIRST);
    let mut v = Vec::with_capacity(capacity);
    v.extend_from_slice(items);
    v.resize(capacity, (0, 0));
    Repr::Small {
        len: items.len() as u8,
        last_seen_s,
        items: v.into_boxed_slice(),
    }
}

impl DistinctSet {
    /// Adds a value (its 32-bit fingerprint) seen at `now_ms`; returns the estimated
    /// number of distinct values in the window, and the change in heap bytes.
    pub fn insert(&mut self, fp: u32, now_ms: u64, window_ms: u64) -> (f64, isize) {
        let now_s = secs(now_ms);
        let window_s = window_secs(window_ms);
        let cutoff = now_s.saturating_sub(window_s);
        match &mut self.0 {
            Repr::Inline {
                len,
                last_seen_s,
                items,
            } => {
                *last_seen_s = now_s;
                let n = usize::from(*len);
                if let Some(it) = items[..n].iter_mut().find(|(f, _)| *f == fp) {
                    it.1 = now_s;
                    return (live(&items[..n], cutoff) as f64, 0);
                }
                // Reuse an expired slot, else grow.
                if let Some(it) = items[..n].iter_mut().find(|(_, t)| *t <= cutoff) {
                    *it = (fp, now_s);
                    return (live(&items[..n], cutoff) as f64, 0);
                }
                if n < INLINE {
                    items[n] = (fp, now_s);
                    *len += 1;
                    return (live(&items[..=n], cutoff) as f64, 0);
                }
                // Full: the values and the new one go to the heap.
                let mut all = [(fp, now_s); INLINE + 1];
                all[..INLINE].copy_from_slice(items);
                let est = live(&all, cutoff) as f64;
                self.0 = exact(now_s, &all);
                (est, self.heap_bytes() as isize)
            }
            Repr::Small {
                len,
                last_seen_s,
                items,
            } => {
                *last_seen_s = now_s;
                let n = usize::from(*len);
                if let Some(it) = position(&items[..n], fp).and_then(|i| items.get_mut(i)) {
                    it.1 = now_s;
                    return (live(&items[..n], cutoff) as f64, 0);
                }
                // Drop the values out of the window, keeping the order.
                let mut kept = 0;
                for i in 0..n {
                    if items[i].1 > cutoff {
                        items[kept] = items[i];
                        kept += 1;
                    }
                }
                if kept < SMALL_MAX {
                    let mut grown = 0;
                    if kept == items.len() {
                        let mut v = std::mem::take(items).into_vec();
                        v.resize((kept * 2).min(SMALL_MAX), (0, 0));
                        grown = (v.len() - kept) * ITEM_BYTES;
                        *items = v.into_boxed_slice();
                    }
                    items[kept] = (fp, now_s);
                    *len = (kept + 1) as u8;
                    return ((kept + 1) as f64, grown as isize);
                }
                // A value past SMALL_MAX live ones: a sketch from here on.
                let freed = items.len() * ITEM_BYTES;
                let mut large = Large::new(epoch(now_ms, window_ms));
                for (f, _) in &items[..kept] {
                    large.insert(mix(*f));
                }
                large.insert(mix(fp));
                self.0 = Repr::Large {
                    last_seen_s: now_s,
                    sketch: Box::new(large),
                };
                let est = self.estimate(now_ms, window_ms);
                (est, LARGE_BYTES as isize - freed as isize)
            }
            Repr::Large {
                last_seen_s,
                sketch: l,
            } => {
                *last_seen_s = now_s;
                let e = epoch(now_ms, window_ms);
                if e != l.epoch {
                    if e == l.epoch.wrapping_add(1) {
                        l.turn();
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
        match &self.0 {
            Repr::Inline { len, items, .. } => live(&items[..usize::from(*len)], cutoff) as f64,
            Repr::Small { len, items, .. } => live(&items[..usize::from(*len)], cutoff) as f64,
            Repr::Large { sketch: l, .. } => l.estimate(now_ms, window_ms),
        }
    }

    /// The second the set last took a value.
    fn last_seen_s(&self) -> u32 {
        match &self.0 {
            Repr::Inline { last_seen_s, .. }
            | Repr::Small { last_seen_s, .. }
            | Repr::Large { last_seen_s, .. } => *last_seen_s,
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
        let span = if self.is_large() {
            window_s.saturating_mul(2)
        } else {
            window_s
        };
        self.last_seen_s().saturating_add(span) < now_s
    }

    /// Heap bytes this set owns.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Small { items, .. } => items.len() * ITEM_BYTES,
            Repr::Large { .. } => LARGE_BYTES,
        }
    }

    /// Whether the set has become a sketch.
    #[must_use]
    pub fn is_large(&self) -> bool {
        matches!(self.0, Repr::Large { .. })
    }
}

/// Heap bytes of a large set: the boxed sketches and their registers.
const LARGE_BYTES: usize = std::mem::size_of::<Large>() + 2 * (1usize << HLL_PRECISION);

// === snapshots ===
// tag u8 (0 inline, 1 small, 2 large) | last_seen_s u32 |
//   inline, small: count (u8, u32) | count x (fingerprint u32, second u32)
//   large: epoch u32 | 2 x 2^HLL_PRECISION register bytes (previous, current); their
//     union is rebuilt on reading
// An exact set of up to INLINE_TAG_MAX values is written with the inline tag, more with
// the small one, whatever its form in memory: the format predates the two-value inline
// form, and a snapshot stays readable by the builds before it.

const TAG_INLINE: u8 = 0;
const TAG_SMALL: u8 = 1;
const TAG_LARGE: u8 = 2;
/// Most values an inline-tagged set holds in a snapshot.
const INLINE_TAG_MAX: usize = 3;
/// Highest register value a 64-bit hash can produce (1 + 64 trailing zeros).
const MAX_REGISTER: u8 = 65;

impl DistinctSet {
    /// Appends the set's snapshot form.
    pub(crate) fn write_to(&self, w: &mut Writer) {
        let items = match &self.0 {
            Repr::Inline { len, items, .. } => &items[..usize::from(*len)],
            Repr::Small { len, items, .. } => &items[..usize::from(*len)],
            Repr::Large {
                last_seen_s,
                sketch: l,
            } => {
                w.u8(TAG_LARGE);
                w.u32(*last_seen_s);
                w.u32(l.epoch);
                for hll in [&l.prev, &l.curr] {
                    w.bytes(&hll.iter().collect::<Vec<u8>>());
                }
                return;
            }
        };
        if items.len() <= INLINE_TAG_MAX {
            w.u8(TAG_INLINE);
            w.u32(self.last_seen_s());
            w.u8(items.len() as u8);
        } else {
            w.u8(TAG_SMALL);
            w.u32(self.last_seen_s());
            w.u32(items.len() as u32);
        }
        for (f, t) in items {
            w.u32(*f);
            w.u32(*t);
        }
    }

    /// Reads a set written by [`DistinctSet::write_to`], checking every length and
    /// register before it allocates or builds anything.
    pub(crate) fn read_from(r: &mut Reader<'_>) -> Result<Self, SnapshotError> {
        let tag = r.u8()?;
        let last_seen_s = r.u32()?;
        let repr = match tag {
            TAG_INLINE => {
                let len = usize::from(r.u8()?);
                if len > INLINE_TAG_MAX {
                    return Err(r.bad(format!(
                        "inline set of {len} values, at most {INLINE_TAG_MAX}"
                    )));
                }
                let mut items = [(0, 0); INLINE_TAG_MAX];
                for it in items.iter_mut().take(len) {
                    *it = (r.u32()?, r.u32()?);
                }
                exact(last_seen_s, &items[..len])
            }
            TAG_SMALL => {
                let len = r.u32()? as usize;
                if len > SMALL_MAX || len <= INLINE_TAG_MAX {
                    return Err(r.bad(format!(
                        "small set of {len} values, expected {} to {SMALL_MAX}",
                        INLINE_TAG_MAX + 1
                    )));
                }
                let mut v = Vec::with_capacity(len);
                for _ in 0..len {
                    v.push((r.u32()?, r.u32()?));
                }
                exact(last_seen_s, &v)
            }
            TAG_LARGE => {
                let epoch = r.u32()?;
                let prev = read_hll(r)?;
                let curr = read_hll(r)?;
                Repr::Large {
                    last_seen_s,
                    sketch: Box::new(Large::from_sketches(epoch, prev, curr)),
                }
            }
            other => return Err(r.bad(format!("unknown distinct-set kind {other}"))),
        };
        Ok(Self(repr))
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
    let sum: f64 = regs.iter().map(|x| inv_pow2(*x)).sum();
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
    use crate::snapshot::HEADER;

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
    fn small_sets_are_exact_and_allocation_free_up_to_two() {
        let mut s = DistinctSet::default();
        for (i, fp) in [7u32, 8, 7, 8].iter().enumerate() {
            let (est, heap) = s.insert(*fp, T0 + i as u64 * 1000, W);
            assert_eq!(heap, 0);
            assert!(est <= 2.0);
        }
        assert_eq!(s.estimate(T0 + 10_000, W), 2.0);
        assert_eq!(s.heap_bytes(), 0);
        // The third goes to the heap, counted.
        let (est, heap) = s.insert(9, T0 + 11_000, W);
        assert_eq!((est, heap), (3.0, (SMALL_FIRST * ITEM_BYTES) as isize));
        assert_eq!(s.heap_bytes(), SMALL_FIRST * ITEM_BYTES);
        assert_eq!(std::mem::size_of::<DistinctSet>(), 24);
    }

    #[test]
    fn small_sets_grow_keep_order_and_reuse_room_of_expired_values() {
        // 40 values one second apart; the window is 30 s, so the first ten expire as
        // the last ones come. The estimate is the exact live count at every step, and
        // the heap grows by doublings only while the live values need it.
        let w = 30_000;
        let mut s = DistinctSet::default();
        let mut heap = 0isize;
        for i in 0..40u32 {
            let now = T0 + u64::from(i) * 1000;
            let (est, delta) = s.insert(1000 + i, now, w);
            heap += delta;
            assert_eq!(est, f64::from(i.min(29) + 1), "value {i}");
            assert_eq!(heap, s.heap_bytes() as isize);
        }
        assert_eq!(s.heap_bytes(), 32 * ITEM_BYTES);
        // A value seen again is not counted twice.
        let (est, delta) = s.insert(1039, T0 + 39_500, w);
        assert_eq!((est, delta), (30.0, 0));
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
        let (back, _) = round_trip(&s);
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
    fn a_large_set_is_two_register_arrays_and_a_small_header() {
        // The figure the module's documentation gives.
        assert_eq!(std::mem::size_of::<Large>(), 168);
        assert_eq!(LARGE_BYTES, 2048 + 168);
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

    #[test]
    fn the_union_counts_what_a_third_sketch_would_to_the_bit() {
        // A sketch fed every value beside the set, as the set kept one before, and the
        // window turned twice: the union's state and count are the sketch's, exactly.
        let mut l = Large::new(0);
        let mut both = new_hll();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..60_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 20_000 == 19_999 {
                l.turn();
                both = l.prev.clone();
            }
            // Values seen again (most change no register) and new ones.
            let h = if x.is_multiple_of(3) {
                mix((x >> 40) as u32 % 500)
            } else {
                x
            };
            l.insert(h);
            both.insert_hash(h);
            let (_, _, zeros, sum) = both.parts();
            assert_eq!((l.both.zeros, l.both.sum.to_bits()), (zeros, sum.to_bits()));
            assert_eq!(
                l.both.raw_count().to_bits(),
                both.raw_count().to_bits(),
                "insert {i}"
            );
        }
        // Rebuilt from the two sketches, as a snapshot is read: the crate's union.
        let mut union = l.prev.clone();
        union.union(&l.curr).expect("same precision");
        let rebuilt = Large::from_sketches(l.epoch, l.prev.clone(), l.curr.clone());
        assert_eq!(
            rebuilt.both.raw_count().to_bits(),
            union.raw_count().to_bits()
        );
        assert!(rebuilt.both.raw_count() > 1000.0);
    }

    fn round_trip(s: &DistinctSet) -> (DistinctSet, Vec<u8>) {
        let mut w = Writer::default();
        s.write_to(&mut w);
        let file = w.finish();
        let mut r = Reader::open(&file).expect("open");
        let back = DistinctSet::read_from(&mut r).expect("read");
        assert_eq!(r.remaining(), 0);
        (back, file)
    }

    #[test]
    fn exact_sets_of_every_size_round_trip_in_the_format_of_before() {
        // Sets of 0 to 64 values. Up to three are written with the inline tag, as the
        // builds that kept three values inline wrote them (and can read them back), more
        // with the small tag; read back, each estimates what the original does.
        for n in 0..=SMALL_MAX as u32 {
            let mut s = DistinctSet::default();
            for v in 0..n {
                s.insert(v.wrapping_mul(2_654_435_761), T0 + u64::from(v) * 1000, W);
            }
            let (back, file) = round_trip(&s);
            let tag = file[HEADER];
            assert_eq!(tag, if n <= 3 { TAG_INLINE } else { TAG_SMALL }, "n = {n}");
            for at in [T0 + 70_000, T0 + W + 5_500] {
                assert_eq!(back.estimate(at, W), s.estimate(at, W), "n = {n}");
            }
            assert!(!back.is_large());
            assert_eq!(back.heap_bytes() == 0, n as usize <= INLINE, "n = {n}");
            assert!(back.heap_bytes() <= s.heap_bytes().max(SMALL_FIRST * ITEM_BYTES));
        }
    }

    #[test]
    fn an_inline_set_of_three_from_an_older_snapshot_reads_into_the_heap_form() {
        // Written by hand as the builds before wrote a three-value inline set.
        let mut w = Writer::default();
        w.u8(TAG_INLINE);
        w.u32(1_800_000_010);
        w.u8(3);
        for (f, t) in [
            (5u32, 1_800_000_000u32),
            (6, 1_800_000_005),
            (7, 1_800_000_010),
        ] {
            w.u32(f);
            w.u32(t);
        }
        let file = w.finish();
        let mut r = Reader::open(&file).expect("open");
        let mut s = DistinctSet::read_from(&mut r).expect("read");
        assert_eq!(s.estimate(1_800_000_010_000, W), 3.0);
        assert_eq!(s.heap_bytes(), SMALL_FIRST * ITEM_BYTES);
        // It goes on counting: one of the three again, then a fourth.
        assert_eq!(s.insert(6, 1_800_000_011_000, W), (3.0, 0));
        assert_eq!(s.insert(8, 1_800_000_012_000, W), (4.0, 0));
        // Four inline values is not a set of before either.
        let mut w = Writer::default();
        w.u8(TAG_INLINE);
        w.u32(0);
        w.u8(4);
        let file = w.finish();
        let mut r = Reader::open(&file).expect("open");
        assert!(DistinctSet::read_from(&mut r).is_err());
    }
}
