//! A sharded, open-addressing hash table for key-group entries, built for one thing:
//! finding a cold entry with a single cache miss, and letting a request start the misses
//! of all its key groups at once.
//!
//! **Why not a dashmap here.** dashmap (over hashbrown) keeps control bytes and buckets
//! in two arrays: a lookup of a key not in the CPU caches waits for the control bytes,
//! then for the bucket, and the shard lock's atomic instruction in between keeps the next
//! lookup from starting early. Measured on these machines a dependent memory access costs
//! about 200 ns, so the default pack's four lookups cost about 1.6 µs of waiting. Here the
//! key sits at the head of its bucket, so a lookup usually waits for one line, and
//! [`Table::prefetch`] lets the engine ask for every group's bucket before it takes the
//! first lock, so the waits overlap. Everything else (bans, caches) stays on dashmap.
//!
//! **Layout.** [`SHARDS`] shards, each a lock (`RawShardLock`, below: released with a
//! plain store) over a power-of-two array of buckets
//! `(key, value)` with linear probing, at most 3/4 full (it doubles past that). The top
//! bits of the key pick the shard, the low bits the home bucket: keys are keyed SipHash
//! outputs already, so they are not hashed again. Key 0 marks an empty bucket (a key
//! that hashes to 0 is stored as 1: a merge with probability 2⁻⁶⁴). Deletion shifts the
//! following entries back (no tombstones), so probe sequences stay short.
//!
//! **Memory.** `capacity × (8 + size_of::<V>())`, capacity between 4/3 and 8/3 of the
//! entries (2 on average), no control bytes; [`Table::table_bytes`] reports it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lock_api::RawMutex as _;

/// Number of shards (a power of two): bounds lock contention between worker threads and
/// the pause of a shard's doubling (1/64 of the table).
pub const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
const MIN_BUCKETS: usize = 16;

#[derive(Debug, Clone, Default)]
struct Bucket<V> {
    key: u64,
    value: V,
}

#[derive(Debug)]
struct Inner<V> {
    buckets: Vec<Bucket<V>>,
    len: usize,
}

#[derive(Debug)]
struct Shard<V> {
    inner: ShardLock<Inner<V>>,
    /// Address of the bucket array and its mask, republished after every resize, for
    /// [`Table::prefetch`], which reads them without the lock. A stale value only makes
    /// the prefetch useless: a prefetch never faults.
    base: AtomicUsize,
    mask: AtomicUsize,
}

/// The table.
#[derive(Debug)]
pub(crate) struct Table<V> {
    shards: Box<[Shard<V>]>,
    /// Entries and bucket-array bytes over all shards, kept as they change, so that the
    /// maintenance task's gauges and the cap check lock nothing.
    len: AtomicUsize,
    bytes: AtomicUsize,
}

impl<V: Default> Default for Table<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    inner: ShardLock::new(Inner {
                        buckets: Vec::new(),
                        len: 0,
                    }),
                    base: AtomicUsize::new(0),
                    mask: AtomicUsize::new(0),
                })
                .collect(),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }
}

fn stored(key: u64) -> u64 {
    key.max(1)
}

fn shard_of(key: u64) -> usize {
    (key >> (64 - SHARD_BITS)) as usize
}

fn home(key: u64, mask: usize) -> usize {
    key as usize & mask
}

/// Whether `k` lies cyclically in `(i, j]`.
fn between(i: usize, k: usize, j: usize) -> bool {
    if i <= j {
        i < k && k <= j
    } else {
        i < k || k <= j
    }
}

impl<V: Default> Inner<V> {
    fn mask(&self) -> usize {
        self.buckets.len().wrapping_sub(1)
    }

    /// Index of `key`'s bucket, or of the empty bucket where it would go.
    fn probe(&self, key: u64) -> usize {
        let mask = self.mask();
        let mut i = home(key, mask);
        loop {
            let k = self.buckets[i].key;
            if k == key || k == 0 {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    fn find(&self, key: u64) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let i = self.probe(key);
        (self.buckets[i].key == key).then_some(i)
    }

    /// Rebuilds into `capacity` buckets (a power of two above the entries).
    fn rebuild(&mut self, capacity: usize) {
        let old = std::mem::replace(
            &mut self.buckets,
            std::iter::repeat_with(Bucket::default)
                .take(capacity)
                .collect(),
        );
        for b in old.into_iter().filter(|b| b.key != 0) {
            let i = self.probe(b.key);
            self.buckets[i] = b;
        }
    }

    /// Removes the entry at `i`, shifting later entries of its run back (a walk must
    /// look at `i` again: it may hold one of them now).
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let k = self.buckets[j].key;
            if k == 0 {
                break;
            }
            if between(i, home(k, mask), j) {
                continue;
            }
            self.buckets[i] = std::mem::take(&mut self.buckets[j]);
            i = j;
        }
        self.buckets[i] = Bucket::default();
        self.len -= 1;
    }
}

impl<V: Default> Table<V> {
    fn lock(&self, shard: usize) -> ShardGuard<'_, Inner<V>> {
        self.shards[shard].inner.lock()
    }
    /// Rebuilds a shard into `capacity` buckets and publishes its new address.
    fn resize(&self, shard: usize, inner: &mut Inner<V>, capacity: usize) {
        let size = std::mem::size_of::<Bucket<V>>();
        let before = inner.buckets.len();
        inner.rebuild(capacity);
        if capacity >= before {
            self.bytes
                .fetch_add((capacity - before) * size, Ordering::Relaxed);
        } else {
            self.bytes
                .fetch_sub((before - capacity) * size, Ordering::Relaxed);
        }
        self.publish(shard, inner);
    }

    fn publish(&self, shard: usize, inner: &Inner<V>) {
        let s = &self.shards[shard];
        s.base
            .store(inner.buckets.as_ptr() as usize, Ordering::Relaxed);
        s.mask.store(inner.mask(), Ordering::Relaxed);
    }

    /// Asks the CPU to bring `key`'s home bucket into the cache, without locking and
    /// without waiting: call it for every key a request will look up, then look them up.
    #[inline]
    pub(crate) fn prefetch(&self, key: u64) {
        let key = stored(key);
        let s = &self.shards[shard_of(key)];
        let base = s.base.load(Ordering::Relaxed);
        if base == 0 {
            return;
        }
        let size = std::mem::size_of::<Bucket<V>>();
        let at = base.wrapping_add(home(key, s.mask.load(Ordering::Relaxed)).wrapping_mul(size));
        // The whole bucket, up to four lines.
        let mut line = at & !63;
        while line < at + size.min(256) {
            prefetch_line(line);
            line += 64;
        }
    }

    /// Runs `f` on the key's value, making it (default) if it is new.
    #[inline]
    pub(crate) fn update<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> R {
        let key = stored(key);
        let shard = shard_of(key);
        let mut g = self.lock(shard);
        let mut i = if g.buckets.is_empty() {
            usize::MAX
        } else {
            g.probe(key)
        };
        if i == usize::MAX || (g.buckets[i].key == 0 && (g.len + 1) * 4 > g.buckets.len() * 3) {
            let capacity = (g.buckets.len() * 2).max(MIN_BUCKETS);
            self.resize(shard, &mut g, capacity);
            i = g.probe(key);
        }
        if g.buckets[i].key == 0 {
            g.buckets[i].key = key;
            g.len += 1;
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        f(&mut g.buckets[i].value)
    }

    /// Runs `f` on the key's value if the key is present.
    pub(crate) fn get_mut<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let key = stored(key);
        let mut g = self.lock(shard_of(key));
        let i = g.find(key)?;
        Some(f(&mut g.buckets[i].value))
    }
    /// Entries.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Bytes of the bucket arrays.
    pub(crate) fn table_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keeps the entries for which `keep` says so (it may change them). Locks one shard
    /// at a time.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&mut V) -> bool) {
        for s in 0..SHARDS {
            let mut g = self.lock(s);
            let n = g.buckets.len();
            // Start after an empty bucket, so that no run wraps past the start and an
            // entry shifted back into a visited bucket has been visited already.
            let Some(start) = g.buckets.iter().position(|b| b.key == 0) else {
                continue;
            };
            // `n` is a power of two (see `resize`): a mask, not a division per bucket.
            let mask = n - 1;
            let mut step = 1;
            while step <= n {
                let i = (start + step) & mask;
                if g.buckets[i].key != 0 && !keep(&mut g.buckets[i].value) {
                    // A later entry of the run may now sit in `i`: look again.
                    g.remove_at(i);
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                step += 1;
            }
        }
    }

    /// Visits every entry (one shard locked at a time).
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, &V)) {
        for s in 0..SHARDS {
            let g = self.lock(s);
            for b in g.buckets.iter().filter(|b| b.key != 0) {
                f(b.key, &b.value);
            }
        }
    }

    /// Shrinks each shard to the smallest power of two that keeps it under 3/4 full.
    pub(crate) fn shrink_to_fit(&self) {
        for s in 0..SHARDS {
            let mut g = self.lock(s);
            let want = if g.len == 0 {
                0
            } else {
                (g.len * 4 / 3 + 1).next_power_of_two().max(MIN_BUCKETS)
            };
            if want < g.buckets.len() {
                self.resize(s, &mut g, want);
            }
        }
    }
}

/// A shard's lock: `lock_api`'s `Mutex` (its guard, its `Send`/`Sync` rules) over
/// [`RawShardLock`].
type ShardLock<T> = lock_api::Mutex<RawShardLock, T>;
type ShardGuard<'a, T> = lock_api::MutexGuard<'a, RawShardLock, T>;

/// The raw lock under a shard: taken with one compare-and-swap, released with a plain
/// store.
///
/// `std`'s `Mutex` releases with an atomic swap (to learn whether a thread sleeps on
/// it), a second locked instruction, and every lookup takes and releases one shard:
/// five times a request with the default pack. Here the release is an ordinary store.
/// The price is how a thread waits: it spins a little, yields its core a few times,
/// then sleeps 50 µs at a time until the lock is free, rather than being woken by the
/// kernel when it is. Shards are held for one entry's update (tens of nanoseconds), a
/// shard's doubling or a sweep's walk over one shard (a sixty-fourth of the table), so a
/// waiter rarely gets past the spins.
struct RawShardLock {
    locked: AtomicBool,
}

/// A waiting thread's spins before it yields, and yields before it sleeps (50 µs at a
/// time).
const SPINS: u32 = 64;
const YIELDS: u32 = 16;

// SAFETY: `lock` returns only once this thread has turned `locked` from false to true by
// a compare-and-swap with `Acquire`, and `unlock` (called by the guard's holder only)
// turns it back with `Release`: at most one holder at a time, each ordered after the one
// before. The guard is not `Send` (`GuardNoSend`), as for `std`'s `Mutex`.
#[allow(unsafe_code)]
unsafe impl lock_api::RawMutex for RawShardLock {
    const INIT: Self = Self {
        locked: AtomicBool::new(false),
    };
    type GuardMarker = lock_api::GuardNoSend;

    #[inline]
    fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl RawShardLock {
    #[cold]
    fn lock_contended(&self) {
        let mut waits = 0u32;
        loop {
            // Wait reading, not writing, so that waiters do not take the line from the
            // holder; then try once. Spin first (the usual hold is tens of nanoseconds),
            // then yield the core, then sleep: a holder that is descheduled (a CPU quota
            // spent, an oversubscribed node) or walking a large shard would otherwise be
            // waited for by threads burning the same quota in `yield_now`.
            while self.locked.load(Ordering::Relaxed) {
                waits = waits.saturating_add(1);
                if waits <= SPINS {
                    std::hint::spin_loop();
                } else if waits <= SPINS + YIELDS {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
            if self.try_lock() {
                return;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
fn prefetch_line(addr: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch is a hint; it never faults and never reads into the program,
    // whatever the address (including a stale or unmapped one). SSE is part of the
    // x86_64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(addr as *const i8) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn prefetch_line(_addr: usize) {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A model check: random inserts, updates and removals against a `HashMap`,
    /// including keys crowded into one shard and one home bucket (long runs, wrap-around
    /// at the array's end).
    #[test]
    fn behaves_like_a_hash_map() {
        let t: Table<u64> = Table::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..40 {
            for _ in 0..2_000 {
                let r = next();
                // Half the keys in shard 0 with few distinct low bits: collisions.
                let key = if r & 1 == 0 { r & 0x3ff } else { r % 5_000 };
                t.update(key, |v| *v += 1);
                *model.entry(stored(key)).or_default() += 1;
            }
            // Drop about a third, by value.
            let cut = round % 3;
            t.retain(|v| *v % 3 != cut);
            model.retain(|_, v| *v % 3 != cut);
            if round % 7 == 0 {
                t.shrink_to_fit();
            }
            assert_eq!(t.len(), model.len());
            let counted: usize = (0..SHARDS).map(|s| t.lock(s).len).sum();
            assert_eq!(counted, model.len());
            let buckets: usize = (0..SHARDS).map(|s| t.lock(s).buckets.len()).sum();
            assert_eq!(
                t.table_bytes(),
                buckets * std::mem::size_of::<Bucket<u64>>()
            );
            let mut seen = HashMap::new();
            t.for_each(|k, v| {
                seen.insert(k, *v);
            });
            assert_eq!(seen, model, "round {round}");
            for (k, v) in &model {
                assert_eq!(t.get_mut(*k, |x| *x), Some(*v));
            }
        }
        assert_eq!(t.get_mut(u64::MAX - 3, |x| *x), None);
        assert!(t.table_bytes() >= model.len() * 16);
    }

    /// Threads counting into shared keys while the shards double: no count is lost.
    #[test]
    fn concurrent_updates_through_resizes() {
        let t: Table<u64> = Table::default();
        std::thread::scope(|s| {
            for th in 0..4u64 {
                let t = &t;
                s.spawn(move || {
                    for i in 0..50_000u64 {
                        // Keys spread over all shards; each key hit by every thread.
                        let key = (i % 20_000).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                        t.update(key, |v| *v += 1);
                        if i % 1000 == th {
                            t.prefetch(key);
                        }
                    }
                });
            }
        });
        assert_eq!(t.len(), 20_000);
        let mut total = 0;
        t.for_each(|_, v| total += *v);
        assert_eq!(total, 4 * 50_000);
    }

    /// One lock, four threads adding to a plain integer under it, some of them holding
    /// it 2 ms, long enough that the others go through the spins, the yields and the
    /// sleeps: no addition is lost, and a guard dropped by a panic leaves the lock free.
    #[test]
    fn the_shard_lock_excludes() {
        let lock = ShardLock::new(0u64);
        std::thread::scope(|s| {
            for th in 0..4u64 {
                let lock = &lock;
                s.spawn(move || {
                    for i in 0..100_000u64 {
                        let mut g = lock.lock();
                        let v = *g;
                        if i % 20_000 == th {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                        *g = v + 1;
                    }
                });
            }
        });
        assert_eq!(*lock.lock(), 400_000);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut g = lock.lock();
            *g += 1;
            panic!("while holding the lock");
        }));
        assert!(caught.is_err());
        assert_eq!(*lock.lock(), 400_001);
    }

    #[test]
    fn backward_shift_keeps_runs_reachable() {
        // Keys with the same home bucket across the array's end.
        let t: Table<u32> = Table::default();
        let keys: Vec<u64> = (0..10).map(|i| (i << 20) | 15).collect();
        for k in &keys {
            t.update(*k, |v| *v = 7);
        }
        t.retain(|v| {
            *v += 1;
            *v != 9
        });
        // Every entry was visited exactly once: none reached 9.
        for k in &keys {
            assert_eq!(t.get_mut(*k, |v| *v), Some(8));
        }
        let mut n = 0;
        t.retain(|_| {
            n += 1;
            n % 2 == 0
        });
        assert_eq!(t.len(), 5);
        assert_eq!(
            keys.iter()
                .filter(|k| t.get_mut(**k, |_| ()).is_some())
                .count(),
            5
        );
    }
}
