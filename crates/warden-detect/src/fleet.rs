//! The engine's side of fleet mode, with no network in it: the counts other nodes made
//! for fleet-scope rules, the counts this node made since the last synchronization, and
//! the bans this node placed or lifted that the fleet must hear about.
//!
//! A synchronizer (the `warden-fleet` crate, over Redis) calls [`FleetState::take_sync`]
//! every sync interval, pushes the deltas, reads back the other nodes' counts and hands
//! them to [`FleetState::set_remote`]; it drains [`FleetState::take_notes`] and applies
//! other nodes' bans with [`crate::Engine::apply_fleet_ban`].
//!
//! ## Accuracy
//! A fleet-scope count rule's estimate on a node is its own sliding count (exact, as for
//! a local rule) plus the other nodes' sliding count **as of the last synchronization**,
//! computed with the same two-bucket formula (`window.rs`). The other nodes' part lags by
//! at most one sync interval plus one Redis round trip (both directions): with the
//! default 250 ms, a key sending `r` requests a second through other nodes is
//! under-counted by at most about `r * 0.5 s` (more while Redis is unreachable: the
//! remote part then stays as last read, and the deltas wait, up to
//! [`MAX_PENDING_EPOCHS`] windows, to be pushed when it returns). The remote part never
//! over-counts: each node's contribution is kept in its own field and a node never adds
//! its own.
//!
//! ## Memory
//! One [`FleetEntry`] (48 bytes plus about 40 of map overhead) per (rule, key) seen by a
//! fleet-scope rule within its last two windows, at most `max_keys`; beyond that, new
//! keys are counted locally only (counted in [`FleetState::overflow`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use dashmap::DashMap;

use crate::window::{epoch, fraction};

/// Windows a delta may wait for Redis before it is dropped.
pub const MAX_PENDING_EPOCHS: u32 = 2;
/// Most ban notes kept for the synchronizer; beyond, new notes are dropped (and counted).
pub const MAX_NOTES: usize = 10_000;

/// Counts of one (rule, key) for the fleet.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetEntry {
    /// Window length, milliseconds.
    pub window_ms: u64,
    /// Last time this node counted the key, unix milliseconds.
    pub last_ms: u64,
    /// This node's counts not yet pushed: (epoch, count), at most two epochs.
    pending: [(u32, u32); 2],
    /// Other nodes' counts, as last read: their epoch, previous and current bucket.
    remote_epoch: u32,
    remote_prev: u32,
    remote_curr: u32,
}

impl FleetEntry {
    fn add_pending(&mut self, e: u32, n: u32) {
        for p in &mut self.pending {
            if p.1 > 0 && p.0 == e {
                p.1 = p.1.saturating_add(n);
                return;
            }
        }
        // A free slot, or the oldest epoch gives way.
        let i = if self.pending[0].1 == 0 {
            0
        } else if self.pending[1].1 == 0 {
            1
        } else if self.pending[0].0 < self.pending[1].0 {
            0
        } else {
            1
        };
        self.pending[i] = (e, n);
    }

    /// The other nodes' estimate over the window ending at `now_ms`.
    #[must_use]
    pub fn remote_estimate(&self, now_ms: u64) -> f64 {
        let e = epoch(now_ms, self.window_ms);
        let (prev, curr) = if e == self.remote_epoch {
            (self.remote_prev, self.remote_curr)
        } else if e == self.remote_epoch.wrapping_add(1) {
            (self.remote_curr, 0)
        } else {
            (0, 0)
        };
        f64::from(prev) * (1.0 - fraction(now_ms, self.window_ms)) + f64::from(curr)
    }
}

/// What the synchronizer pushes and reads for one (rule, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncItem {
    /// The rule's state fingerprint.
    pub rule: u64,
    /// The key's hash.
    pub key: u64,
    /// Window length, milliseconds.
    pub window_ms: u64,
    /// The current window index at the time of the sync.
    pub epoch: u32,
    /// This node's counts to add: (epoch, count).
    pub deltas: Vec<(u32, u32)>,
}

/// A ban placed or lifted on this node, for the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetNote {
    /// A ban was placed.
    Ban {
        /// Its scope: the rule's state fingerprint, or [`crate::MANUAL`].
        scope: u64,
        /// The key's hash (identical on every node: the fleet shares the hash key).
        key: u64,
        /// Unix milliseconds it began.
        placed_ms: u64,
        /// Unix milliseconds it ends.
        until_ms: u64,
        /// The rule's name, or `manual`.
        rule: &'static str,
        /// The key, readable.
        display: String,
    },
    /// A ban was lifted, by id.
    Lift {
        /// The ban id, as listed.
        id: String,
    },
}

/// Fleet-scope counts and notes (see the module docs).
#[derive(Debug)]
pub struct FleetState {
    entries: DashMap<(u64, u64), FleetEntry>,
    notes: Mutex<Vec<FleetNote>>,
    max_keys: usize,
    /// Keys counted only locally because `max_keys` was reached.
    pub overflow: AtomicU64,
    /// Notes dropped because [`MAX_NOTES`] were waiting.
    pub notes_dropped: AtomicU64,
}

impl FleetState {
    /// Fleet state for at most `max_keys` (rule, key) pairs.
    #[must_use]
    pub fn new(max_keys: usize) -> Self {
        Self {
            entries: DashMap::new(),
            notes: Mutex::new(Vec::new()),
            max_keys,
            overflow: AtomicU64::new(0),
            notes_dropped: AtomicU64::new(0),
        }
    }

    /// Counts one request of `key` under rule `rule` and returns the other nodes' part
    /// of the estimate at `now_ms`.
    pub fn observe(&self, rule: u64, key: u64, now_ms: u64, window_ms: u64) -> f64 {
        let e = epoch(now_ms, window_ms);
        if let Some(mut entry) = self.entries.get_mut(&(rule, key)) {
            entry.last_ms = now_ms;
            entry.window_ms = window_ms;
            entry.add_pending(e, 1);
            return entry.remote_estimate(now_ms);
        }
        if self.entries.len() >= self.max_keys {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return 0.0;
        }
        let mut entry = FleetEntry {
            window_ms,
            last_ms: now_ms,
            ..FleetEntry::default()
        };
        entry.add_pending(e, 1);
        self.entries.insert((rule, key), entry);
        0.0
    }

    /// The (rule, key) pairs to synchronize at `now_ms`, with their pending deltas
    /// (taken: call [`FleetState::restore`] if they could not be pushed). Pairs not
    /// counted here for two windows are dropped. At most `limit` pairs, those with
    /// deltas first.
    pub fn take_sync(&self, now_ms: u64, limit: usize) -> Vec<SyncItem> {
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.last_ms) < e.window_ms.saturating_mul(2));
        let mut out: Vec<SyncItem> = Vec::new();
        let mut idle: Vec<SyncItem> = Vec::new();
        for mut e in self.entries.iter_mut() {
            let (rule, key) = *e.key();
            let cur = epoch(now_ms, e.window_ms);
            let deltas: Vec<(u32, u32)> = e
                .pending
                .iter()
                .filter(|p| p.1 > 0 && cur.saturating_sub(p.0) < MAX_PENDING_EPOCHS)
                .copied()
                .collect();
            let item = SyncItem {
                rule,
                key,
                window_ms: e.window_ms,
                epoch: cur,
                deltas,
            };
            if item.deltas.is_empty() {
                if idle.len() + out.len() < limit {
                    idle.push(item);
                }
            } else if out.len() < limit {
                e.pending = [(0, 0); 2];
                out.push(item);
            }
        }
        let room = limit.saturating_sub(out.len());
        out.extend(idle.into_iter().take(room));
        out
    }

    /// Puts back deltas that could not be pushed.
    pub fn restore(&self, items: &[SyncItem]) {
        for item in items {
            if let Some(mut e) = self.entries.get_mut(&(item.rule, item.key)) {
                for &(ep, n) in &item.deltas {
                    e.add_pending(ep, n);
                }
            }
        }
    }

    /// The other nodes' counts of a (rule, key) for window `epoch` and the one before.
    pub fn set_remote(&self, rule: u64, key: u64, epoch: u32, prev: u32, curr: u32) {
        if let Some(mut e) = self.entries.get_mut(&(rule, key)) {
            e.remote_epoch = epoch;
            e.remote_prev = prev;
            e.remote_curr = curr;
        }
    }

    /// The entry of a (rule, key), if tracked.
    #[must_use]
    pub fn entry(&self, rule: u64, key: u64) -> Option<FleetEntry> {
        self.entries.get(&(rule, key)).map(|e| *e)
    }

    /// Pairs tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pair is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn note(&self, note: FleetNote) {
        let mut notes = match self.notes.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        if notes.len() >= MAX_NOTES {
            self.notes_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        notes.push(note);
    }

    /// The notes waiting, oldest first (taken).
    pub fn take_notes(&self) -> Vec<FleetNote> {
        let mut notes = match self.notes.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        std::mem::take(&mut *notes)
    }

    /// Puts back notes that could not be sent, ahead of newer ones.
    pub fn restore_notes(&self, mut old: Vec<FleetNote>) {
        let mut notes = match self.notes.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        old.append(&mut notes);
        old.truncate(MAX_NOTES);
        *notes = old;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 10_000;

    #[test]
    fn remote_counts_add_with_the_sliding_formula_and_age_out() {
        let f = FleetState::new(100);
        let t = 1_800_000_000_000 / W * W; // start of a window
        assert_eq!(f.observe(1, 7, t, W), 0.0);
        let e = epoch(t, W);
        f.set_remote(1, 7, e, 0, 30);
        assert_eq!(f.observe(1, 7, t + 1, W), 30.0);
        // Next window, half-way: the previous bucket counts for half.
        assert!((f.observe(1, 7, t + W + W / 2, W) - 15.0).abs() < 1e-9);
        // Two windows later nothing is left.
        assert_eq!(f.observe(1, 7, t + 2 * W + 1, W), 0.0);
    }

    #[test]
    fn deltas_are_taken_once_and_restored_on_failure() {
        let f = FleetState::new(100);
        let t = 1_800_000_000_000;
        for i in 0..5 {
            let _ = f.observe(1, 7, t + i, W);
        }
        let items = f.take_sync(t + 10, 100);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].deltas, vec![(epoch(t, W), 5)]);
        // Taken: a second sync has nothing to push, but still reads the key.
        let again = f.take_sync(t + 20, 100);
        assert!(again[0].deltas.is_empty());
        f.restore(&items);
        assert_eq!(f.take_sync(t + 30, 100)[0].deltas, vec![(epoch(t, W), 5)]);
    }

    #[test]
    fn bounded_keys_and_idle_pairs_go() {
        let f = FleetState::new(2);
        let t = 1_800_000_000_000;
        let _ = f.observe(1, 1, t, W);
        let _ = f.observe(1, 2, t, W);
        let _ = f.observe(1, 3, t, W);
        assert_eq!(f.len(), 2);
        assert_eq!(f.overflow.load(Ordering::Relaxed), 1);
        assert!(f.take_sync(t + 2 * W, 10).is_empty());
        assert!(f.is_empty());
    }
}
