//! Rule state grouped by key: one map entry per key value, holding the slot of every rule
//! keyed on it, inline.
//!
//! The default pack keys five rules on the client address and three on the token. With a
//! map per rule, one request made eleven table lookups, and with a large user base each
//! lookup misses the CPU caches about twice (control bytes, then the bucket): memory
//! latency, not arithmetic, set the cost. Grouped, a request makes one lookup per key
//! (four for the default pack) and finds its rules' slots side by side in the bucket,
//! where the hardware prefetcher brings the neighbouring lines along.
//!
//! **Memory.** An entry is the 8-byte key and `N` slots of [`SLOT_BYTES`] (an empty
//! slot, a [`SlidingCount`] or a [`DistinctSet`]) in a bucket of the group's [`Table`]
//! (which holds 2 buckets per entry on average, see `table.rs`); `N` is the group's exact rule count (1 to [`MAX_SLOTS`]), so a key tracked by
//! one rule costs what it did with a map per rule, and a key tracked by five costs less
//! than five entries would. Large distinct sets add their heap (see `distinct.rs`).

use crate::distinct::DistinctSet;
use crate::table::Table;
use crate::window::SlidingCount;

/// Most rules sharing one entry; a key with more rules gets several groups.
pub const MAX_SLOTS: usize = 8;

/// Bytes of one slot.
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();
// The memory figures in the docs assume it; a bigger slot must be a decision.
const _: () = assert!(SLOT_BYTES <= 24);

/// A time and a window, as [`Slot::is_idle_at`] compares them: the window index and
/// the time and window in seconds, worked out once per sweep and window rather than with
/// a division per entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleAt {
    epoch: u32,
    now_s: u32,
    window_s: u32,
}

impl IdleAt {
    pub(crate) fn new(now_ms: u64, window_ms: u64) -> Self {
        Self {
            epoch: crate::window::epoch(now_ms, window_ms),
            now_s: crate::distinct::secs(now_ms),
            window_s: crate::distinct::window_secs(window_ms),
        }
    }
}

/// One rule's state for one key.
#[derive(Debug, Clone, Default)]
pub(crate) enum Slot {
    /// The rule has not counted this key (yet, or since it was lifted).
    #[default]
    Empty,
    Count(SlidingCount),
    Distinct(DistinctSet),
}

impl Slot {
    pub(crate) fn estimate(&self, now_ms: u64, window_ms: u64) -> f64 {
        match self {
            Slot::Empty => 0.0,
            Slot::Count(c) => c.estimate(now_ms, window_ms),
            Slot::Distinct(d) => d.estimate(now_ms, window_ms),
        }
    }

    pub(crate) fn is_idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.is_idle_at(&IdleAt::new(now_ms, window_ms))
    }

    /// [`Slot::is_idle`] with the window's position worked out already (a sweep visits
    /// every entry with the same few windows).
    #[inline]
    pub(crate) fn is_idle_at(&self, at: &IdleAt) -> bool {
        match self {
            Slot::Empty => true,
            Slot::Count(c) => c.is_idle_at_epoch(at.epoch),
            Slot::Distinct(d) => d.is_idle_at(at.now_s, at.window_s),
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Slot::Distinct(d) => d.heap_bytes(),
            _ => 0,
        }
    }

    /// The counter, made if the slot was empty.
    pub(crate) fn count(&mut self) -> &mut SlidingCount {
        if !matches!(self, Slot::Count(_)) {
            *self = Slot::Count(SlidingCount::default());
        }
        match self {
            Slot::Count(c) => c,
            _ => unreachable!("just set"),
        }
    }

    /// The distinct set, made if the slot was empty. (A slot never changes kind: it
    /// belongs to one rule, whose measure is part of its state fingerprint.)
    pub(crate) fn distinct(&mut self) -> &mut DistinctSet {
        if !matches!(self, Slot::Distinct(_)) {
            *self = Slot::Distinct(DistinctSet::default());
        }
        match self {
            Slot::Distinct(d) => d,
            _ => unreachable!("just set"),
        }
    }
}

/// `N` slots, inline.
#[derive(Debug, Clone)]
pub(crate) struct Slots<const N: usize>([Slot; N]);

impl<const N: usize> Default for Slots<N> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Slot::Empty))
    }
}

type Map<const N: usize> = Table<Slots<N>>;

/// A group's map, its entries sized to the group.
#[derive(Debug)]
pub(crate) enum GroupMap {
    S1(Map<1>),
    S2(Map<2>),
    S3(Map<3>),
    S4(Map<4>),
    S5(Map<5>),
    S6(Map<6>),
    S7(Map<7>),
    S8(Map<8>),
}

macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            GroupMap::S1($m) => $body,
            GroupMap::S2($m) => $body,
            GroupMap::S3($m) => $body,
            GroupMap::S4($m) => $body,
            GroupMap::S5($m) => $body,
            GroupMap::S6($m) => $body,
            GroupMap::S7($m) => $body,
            GroupMap::S8($m) => $body,
        }
    };
}

impl GroupMap {
    /// A map for `slots` rules (1 to [`MAX_SLOTS`]).
    pub(crate) fn new(slots: usize) -> Self {
        match slots {
            0 | 1 => GroupMap::S1(Map::default()),
            2 => GroupMap::S2(Map::default()),
            3 => GroupMap::S3(Map::default()),
            4 => GroupMap::S4(Map::default()),
            5 => GroupMap::S5(Map::default()),
            6 => GroupMap::S6(Map::default()),
            7 => GroupMap::S7(Map::default()),
            _ => GroupMap::S8(Map::default()),
        }
    }

    /// Runs `f` on the key's slots, making the entry if it is new. One lookup; the
    /// entry's shard stays locked while `f` runs, so keep `f` short.
    #[inline]
    pub(crate) fn update<R>(&self, key: u64, f: impl FnOnce(&mut [Slot]) -> R) -> R {
        each!(self, m => m.update(key, |e| f(&mut e.0)))
    }

    /// Runs `f` on the key's slots if the key is tracked.
    pub(crate) fn get_mut<R>(&self, key: u64, f: impl FnOnce(&mut [Slot]) -> R) -> Option<R> {
        each!(self, m => m.get_mut(key, |e| f(&mut e.0)))
    }

    pub(crate) fn len(&self) -> usize {
        each!(self, m => m.len())
    }

    /// Bytes of the table: capacity × (key + slots). Heap of large sets apart.
    pub(crate) fn table_bytes(&self) -> usize {
        each!(self, m => m.table_bytes())
    }

    /// Starts bringing the key's entry into the cache (see [`Table::prefetch`]).
    #[inline]
    pub(crate) fn prefetch(&self, key: u64) {
        each!(self, m => m.prefetch(key))
    }

    /// Keeps the entries for which `keep` says so (it may change them).
    pub(crate) fn retain(&self, mut keep: impl FnMut(&mut [Slot]) -> bool) {
        each!(self, m => m.retain(|e| keep(&mut e.0)))
    }

    /// Visits every entry.
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, &[Slot])) {
        each!(self, m => m.for_each(|k, e| f(k, &e.0)))
    }

    pub(crate) fn shrink_to_fit(&self) {
        each!(self, m => m.shrink_to_fit())
    }
}
