//! A set of digests that only grows, kept as bits: the "was this ever added?" test that
//! lets a request skip a map lookup (the engine's bans, the ledger's revoked tokens).

use std::sync::atomic::{AtomicU64, Ordering};

/// Digests added so far, one bit each: a clear bit means the digest was never added, a
/// set bit that it may have been (other digests share the bit). Bits are never cleared:
/// clearing could race with an add and lose it, and a caller that trusts a clear bit
/// must never be wrong. As digests are added more bits are set, and
/// [`StickyBits::may_contain`] says "maybe" more often, never "no" wrongly: after a few
/// times as many digests as there are bits, nearly every answer is "maybe" and the
/// caller does the lookup it would have done without the bits. Digests must be spread
/// evenly already (keyed hashes, token ids): the low bits pick the bit.
///
/// Memory: 8 bytes a word, nothing else.
///
/// ```
/// use warden_core::bits::StickyBits;
///
/// let bits = StickyBits::with_words(4);
/// assert!(!bits.may_contain(42));
/// bits.add(42);
/// assert!(bits.may_contain(42));
/// ```
#[derive(Debug)]
pub struct StickyBits {
    words: Box<[AtomicU64]>,
    /// `words.len() - 1` (a power of two): a mask, not a division, per test.
    mask: usize,
}

impl StickyBits {
    /// `words` × 64 bits, all clear; `words` is rounded up to a power of two (at least
    /// one word).
    #[must_use]
    pub fn with_words(words: usize) -> Self {
        let n = words.max(1).next_power_of_two();
        Self {
            words: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
        }
    }

    /// Word and bit of a digest.
    #[inline]
    fn at(&self, digest: u64) -> (usize, u64) {
        ((digest >> 6) as usize & self.mask, 1 << (digest & 63))
    }

    /// Adds a digest: do it before (or, for a mark already made, after) whatever the
    /// bit stands for becomes visible, so that a clear bit never hides it.
    pub fn add(&self, digest: u64) {
        let (word, bit) = self.at(digest);
        if let Some(w) = self.words.get(word) {
            w.fetch_or(bit, Ordering::Release);
        }
    }

    /// Whether the digest may have been added: `false` means it never was.
    #[inline]
    #[must_use]
    pub fn may_contain(&self, digest: u64) -> bool {
        let (word, bit) = self.at(digest);
        self.words
            .get(word)
            .is_none_or(|w| w.load(Ordering::Acquire) & bit != 0)
    }
}
