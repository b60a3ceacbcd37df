//! The token ledger: which tokens the real issuance process issued.
//!
//! A token that verifies but has no record here was never issued: it is **forged**.
//! Backends sit behind the [`Ledger`] trait; [`MemIndex`] is the in-memory index every
//! backend can use for lookups.
//!
//! ## Memory of [`MemIndex`]
//! One entry is 32 bytes: a 16-byte [`TokenId`], an 8-byte keyed digest of the account,
//! issue and expiry times as `u32` seconds since 2020-01-01 (good until 2156), the top
//! bit of the expiry marking a revoked token. The table (dashmap, hashbrown underneath)
//! adds one control byte per slot and keeps its load at or under 7/8, doubling its slots
//! when full, so a table of `n` entries costs between `33 * n / 0.875` and `33 * 2n / 0.875`
//! bytes. At 10 M entries the slots number 2^24: 16.8 M * 33 B = 553 MB, **55 bytes an
//! entry** (measured by `benches/src/bin/ledger_memory.rs`, see `benches/RESULTS.md`).
//!
//! ## Revocations that arrive before their record
//! A token revoked by its id while the index has no record of it (revoked by `jti` before
//! a batch import brings its record, or before the login response is captured) is kept
//! **waiting**: id and revocation time, 20 bytes an entry, 24 to 48 bytes with the
//! table's slack (so the default cap of [`DEFAULT_MAX_PENDING`] = 100 000 costs at most
//! 4.8 MB). A record that arrives for a waiting id is stored revoked, and the id stops
//! waiting. The backends drop a waiting revocation once it is older than
//! `ledger.pending_revocation_ttl` (no token it could concern is still valid), and refuse
//! a new one with [`LedgerError::Full`] while [`MemIndex::set_pending_cap`] ids wait.
//!
//! The account digest is SipHash-2-4 under a per-process random key: an attacker who
//! holds a signing key cannot search for a second account name with the same digest
//! without knowing the key. A digest collision between two honest accounts (2^-64 per
//! pair) would let one account's token pass for the other's; the signature and the
//! `jti` must match as well, so it is not exploitable by itself.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use siphasher::sip::SipHasher24;

use crate::bits::StickyBits;
use crate::error::LedgerError;

/// Unix time 2020-01-01T00:00:00Z; compact times count from here.
pub const EPOCH_BASE: u64 = 1_577_836_800;
const REVOKED_BIT: u32 = 1 << 31;
const TIME_MASK: u32 = REVOKED_BIT - 1;

/// A token's identity in the ledger: the first 128 bits of SHA-256 over the `jti`
/// (when the token has one) or over the whole compact token, with a domain prefix so
/// that the two can never collide. SHA-256, not a fast hash: an attacker with a signing
/// key chooses `jti` freely and must not find one that lands on an issued token's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    /// The id of a token that carries a `jti`.
    #[must_use]
    pub fn from_jti(jti: &str) -> Self {
        Self::digest(b"warden:jti:", jti.as_bytes())
    }

    /// The id of a token without a `jti`: a digest of the whole token.
    #[must_use]
    pub fn from_token(token: &str) -> Self {
        Self::digest(b"warden:tok:", token.as_bytes())
    }

    fn digest(domain: &[u8], value: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(domain);
        h.update(value);
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        Self(id)
    }

    /// Lower-case hex, the form used in the admin API and in events.
    #[must_use]
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        s
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, LedgerError> {
        let bad = || {
            LedgerError::Invalid(format!(
                "token id {:?} is not 32 hex digits",
                crate::token::truncate(s)
            ))
        };
        if s.len() != 32 {
            return Err(bad());
        }
        let mut id = [0u8; 16];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (chunk[1] as char).to_digit(16).ok_or_else(bad)?;
            id[i] = (hi * 16 + lo) as u8;
        }
        Ok(Self(id))
    }
}

impl std::fmt::Debug for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenId({})", self.to_hex())
    }
}

/// What the issuance process issued: one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The token's id.
    pub id: TokenId,
    /// The account the token was issued to.
    pub account: String,
    /// Issue time, unix seconds.
    pub issued_at: u64,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// The key that signed it.
    pub kid: String,
}

impl Record {
    /// Checks the record's own consistency.
    pub fn validate(&self) -> Result<(), LedgerError> {
        if self.account.is_empty() || self.account.len() > 512 {
            return Err(LedgerError::Invalid(format!(
                "account must be 1..=512 bytes, got {}",
                self.account.len()
            )));
        }
        if self.kid.len() > 256 {
            return Err(LedgerError::Invalid(format!(
                "kid is {} bytes, over 256",
                self.kid.len()
            )));
        }
        if self.expires_at <= self.issued_at {
            return Err(LedgerError::Invalid(format!(
                "expires_at {} is not after issued_at {}",
                self.expires_at, self.issued_at
            )));
        }
        Ok(())
    }
}

/// A revocation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// One token.
    Token(TokenId),
    /// Every token of an account issued at or before `at` (unix seconds). Tokens issued
    /// later, after the account owner logs in again, are not affected.
    Account {
        /// The account.
        account: String,
        /// Cut-off, unix seconds.
        at: u64,
    },
    /// Every token signed by a key id, whenever issued.
    Kid(String),
}

/// The question the proxy asks for each verified token.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The token id.
    pub id: TokenId,
    /// The account the token claims.
    pub account: &'a str,
    /// The key id that verified it.
    pub kid: &'a str,
    /// The token's `iat`, if any.
    pub issued_at: Option<u64>,
}

impl<'a> Query<'a> {
    /// The question for a token that verified.
    #[must_use]
    pub fn of(v: &'a crate::verify::Verified) -> Self {
        Self {
            id: v.id,
            account: &v.account,
            kid: &v.kid,
            issued_at: v.issued_at,
        }
    }

    /// Whether the token was issued within the last `window_s` seconds (allowing a second
    /// of clock skew ahead): its record may still be on its way, so an unknown answer is
    /// waited for (the proxy) and never remembered (the fleet's negative cache).
    #[must_use]
    pub fn just_issued(&self, window_s: u64, now_s: u64) -> bool {
        self.issued_at
            .is_some_and(|iat| iat.saturating_add(window_s) >= now_s && iat <= now_s + 1)
    }
}

/// The ledger's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Answer {
    /// Issued to this account and not revoked.
    Issued,
    /// No record: never issued (or already swept after expiry).
    Unknown,
    /// Issued, but to another account.
    AccountMismatch,
    /// Revoked, by token or by account.
    RevokedToken,
    /// Its key id was revoked in the ledger.
    RevokedKey,
}

/// Counters a backend exposes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Records in the index (including revoked ones until they expire).
    pub entries: u64,
    /// Records accepted since start.
    pub recorded_total: u64,
    /// Revocation orders applied since start.
    pub revocations_total: u64,
    /// Records removed after expiry since start.
    pub swept_total: u64,
    /// Token revocations waiting for their record (see [`MemIndex`]).
    pub pending_revocations: u64,
}

/// What the admin API shows of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// The record.
    pub record: Record,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A token ledger backend.
///
/// The proxy calls [`Ledger::check_local`] first on every protected request; only when it
/// returns `None` does it await [`Ledger::check`], under the configured timeout. Remote
/// backends (Redis) answer from a local cache where they can and go remote otherwise.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// A short, fixed name for logs and metrics (`embedded`, `redis`).
    fn name(&self) -> &'static str;

    /// Answers from memory without waiting, or `None` if the backend must be asked.
    /// The default has no local answer.
    fn check_local(&self, _query: &Query<'_>) -> Option<Answer> {
        None
    }

    /// The revision of the answers (see [`MemIndex::revision`]), read before asking:
    /// the verifier keeps it with a token the ledger confirmed. `None` (the default): no
    /// revisions, the proxy asks every time.
    fn revision(&self) -> Option<u64> {
        None
    }

    /// Whether a token this ledger answered [`Answer::Issued`] for at revision `stamp`
    /// is still issued, known from memory without a lookup (see
    /// [`MemIndex::still_issued`]); `false` means "ask", not "not issued". The default
    /// never knows.
    fn still_issued(&self, _stamp: u64, _id: &TokenId) -> bool {
        false
    }

    /// Answers whether a verified token was issued.
    async fn check(&self, query: &Query<'_>) -> Result<Answer, LedgerError>;

    /// Stores records. `Ok` means every record is durable and visible to `check`.
    async fn record(&self, records: Vec<Record>) -> Result<(), LedgerError>;

    /// Applies a revocation durably; returns how many records it marked (0 for a
    /// key-id or an account, which still take effect, and for a token with no record
    /// yet, whose revocation waits for its record: see the module docs). A token
    /// revocation that cannot be kept fails with [`LedgerError::Full`]. `now` (unix
    /// seconds) is the revocation's time: a waiting revocation is kept for
    /// `ledger.pending_revocation_ttl` from it.
    async fn revoke(&self, revocation: Revocation, now: u64) -> Result<u64, LedgerError>;

    /// Reads one record, for the admin API.
    async fn get(&self, id: &TokenId) -> Result<Option<RecordView>, LedgerError>;

    /// Counters.
    fn stats(&self) -> LedgerStats;

    /// Removes records that expired before `now - retention.expiry_grace`, and token
    /// revocations that waited for their record longer than
    /// `retention.pending_revocation_ttl`; returns how many records. The default removes
    /// nothing (for backends whose store expires records itself).
    async fn sweep(&self, _now: u64, _retention: Retention) -> Result<u64, LedgerError> {
        Ok(0)
    }

    /// Graceful upgrade, in the old process: releases whatever the new process needs to
    /// open the backend (a file lock), after making every acknowledged write durable.
    /// Afterwards lookups keep working from memory, and writes are either passed on to
    /// the new process durably or refused with an error, never dropped. Blocking (it may
    /// wait for queued writes). The default does nothing: a shared store needs no
    /// hand-over.
    fn hand_over(&self) -> Result<(), LedgerError> {
        Ok(())
    }
}

/// How long a ledger keeps what no longer matters (`[ledger]` settings), for
/// [`Ledger::sweep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records are kept this long past their expiry, seconds (`ledger.expiry_grace`).
    pub expiry_grace: u64,
    /// A token revocation waits this long for its record, seconds
    /// (`ledger.pending_revocation_ttl`).
    pub pending_revocation_ttl: u64,
}

/// Most token revocations an index keeps waiting for their record, unless configured
/// (`ledger.max_pending_revocations`).
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// Converts unix seconds to the compact form, saturating.
#[must_use]
pub fn compact_time(unix: u64) -> u32 {
    let rel = unix.saturating_sub(EPOCH_BASE);
    u32::try_from(rel).unwrap_or(TIME_MASK).min(TIME_MASK)
}

/// Converts the compact form back to unix seconds.
#[must_use]
pub fn unix_time(compact: u32) -> u64 {
    u64::from(compact & TIME_MASK) + EPOCH_BASE
}

/// One index entry; 16 bytes, alignment 4. See the module docs for the memory figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    account: [u32; 2],
    issued_at: u32,
    /// Compact expiry; [`REVOKED_BIT`] marks a revoked token.
    expires: u32,
}

impl Packed {
    /// Whether the token was revoked.
    #[must_use]
    pub fn revoked(&self) -> bool {
        self.expires & REVOKED_BIT != 0
    }

    /// Expiry, unix seconds.
    #[must_use]
    pub fn expires_at(&self) -> u64 {
        unix_time(self.expires)
    }

    /// Issue time, unix seconds.
    #[must_use]
    pub fn issued_at(&self) -> u64 {
        unix_time(self.issued_at)
    }
}

/// Hashes a key that is already uniform by folding its bytes: a [`TokenId`] (SHA-256
/// output) or the verifier's cache key (a keyed SipHash). Running SipHash over them
/// again would only cost time.
#[derive(Clone, Copy, Default, Debug)]
pub struct IdHasherBuilder;

/// See [`IdHasherBuilder`].
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // TokenId hashes as one 16-byte slice (after a length prefix for arrays of u8 it
        // is written as-is); fold whatever arrives so any caller stays correct.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

impl BuildHasher for IdHasherBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// The in-memory ledger index, shared by all worker threads. Lock-free reads in the
/// dashmap sense (sharded `RwLock`s, readers never wait for each other).
pub struct MemIndex {
    tokens: DashMap<TokenId, Packed, IdHasherBuilder>,
    /// Account digest -> compact cut-off: tokens of that account issued at or before
    /// the cut-off are revoked.
    revoked_accounts: DashMap<u64, u32>,
    revoked_kids: DashMap<String, ()>,
    /// Whether either map above has anything: `DashMap::is_empty` locks every shard in
    /// turn (4 per CPU), far too slow to ask on every request.
    any_revoked_accounts: AtomicBool,
    any_revoked_kids: AtomicBool,
    account_key: (u64, u64),
    recorded_total: AtomicU64,
    revocations_total: AtomicU64,
    swept_total: AtomicU64,
    /// See [`MemIndex::revision`].
    revision: AtomicU64,
    /// The revoked token ids (their first 8 bytes: ids are digests, evenly spread): a
    /// token revocation does not change the revision (revoke-token rules revoke many under
    /// attack, and each change would send every cached token back to a lookup), it adds
    /// the token here, and [`MemIndex::still_issued`] answers "ask" for a token that may
    /// be in it. [`REVOKED_WORDS`] × 64 bits, 8 KiB; after many thousands of revocations
    /// most bits are set and confirmed tokens are asked about as they were without it.
    revoked_tokens: StickyBits,
    /// Token revocations waiting for their record: id -> compact time of the
    /// revocation. Changed only under the lock of the id's shard of `tokens` (an
    /// `entry` on it), so a revocation and the record it waits for never miss each other.
    pending: DashMap<TokenId, u32, IdHasherBuilder>,
    /// Whether `pending` may hold anything: read before each insert.
    any_pending: AtomicBool,
    /// See [`MemIndex::set_pending_cap`].
    pending_cap: AtomicUsize,
}

/// Words of [`MemIndex`]'s set of revoked token ids (65 536 bits).
const REVOKED_WORDS: usize = 1024;

/// A token id as [`MemIndex`]'s set of revoked tokens keys it.
fn id_digest(id: &TokenId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(b)
}

/// Where the next [`MemIndex`]'s revisions start: each index takes its own 2³² range,
/// so no two indexes of a process (fleet mode replaces its index on a reset) ever show
/// the same revision.
static NEXT_REVISION_BASE: AtomicU64 = AtomicU64::new(0);

impl Default for MemIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl MemIndex {
    /// An empty index with a fresh random account-digest key.
    #[must_use]
    pub fn new() -> Self {
        let mut seed = [0u8; 16];
        // Without OS randomness fall back to a fixed key: the digest then only loses its
        // resistance to deliberate collisions, which the signature check still covers.
        if getrandom::fill(&mut seed).is_err() {
            seed = *b"warden-fallback!";
        }
        let k0 = u64::from_le_bytes(seed[..8].try_into().unwrap_or([0; 8]));
        let k1 = u64::from_le_bytes(seed[8..].try_into().unwrap_or([0; 8]));
        Self::with_capacity_and_key(0, (k0, k1))
    }

    /// An index sized for `capacity` entries with a given account-digest key.
    #[must_use]
    pub fn with_capacity_and_key(capacity: usize, account_key: (u64, u64)) -> Self {
        Self {
            tokens: DashMap::with_capacity_and_hasher(capacity, IdHasherBuilder),
            revoked_accounts: DashMap::new(),
            revoked_kids: DashMap::new(),
            any_revoked_accounts: AtomicBool::new(false),
            any_revoked_kids: AtomicBool::new(false),
            account_key,
            recorded_total: AtomicU64::new(0),
            revocations_total: AtomicU64::new(0),
            swept_total: AtomicU64::new(0),
            revision: AtomicU64::new(NEXT_REVISION_BASE.fetch_add(1 << 32, Ordering::Relaxed)),
            revoked_tokens: StickyBits::with_words(REVOKED_WORDS),
            pending: DashMap::with_hasher(IdHasherBuilder),
            any_pending: AtomicBool::new(false),
            pending_cap: AtomicUsize::new(DEFAULT_MAX_PENDING),
        }
    }

    /// Sets how many token revocations may wait for their record
    /// (`ledger.max_pending_revocations`); past it, [`MemIndex::revoke`] refuses a token
    /// revocation of an id with no record. Waiting ones are kept if more already wait.
    pub fn set_pending_cap(&self, cap: usize) {
        self.pending_cap.store(cap, Ordering::Relaxed);
    }

    /// Whether one more revocation can wait for its record, with `more` waiting besides
    /// those the index holds (a store's batch not yet applied).
    #[must_use]
    pub fn room_to_wait(&self, more: usize) -> bool {
        self.pending.len() + more < self.pending_cap.load(Ordering::Relaxed)
    }

    /// The refusal of a token revocation that cannot wait for its record, with `more`
    /// waiting besides those the index holds.
    #[must_use]
    pub fn pending_full(&self, more: usize) -> LedgerError {
        LedgerError::Full {
            waiting: self.pending.len() + more,
            cap: self.pending_cap.load(Ordering::Relaxed),
        }
    }

    /// Whether a token revocation of `id` waits for its record.
    #[must_use]
    pub fn is_pending(&self, id: &TokenId) -> bool {
        self.pending.contains_key(id)
    }

    /// Waiting token revocations made before `before` (unix seconds), at most `limit`:
    /// for the sweep, which drops them with [`MemIndex::drop_stale_pending`].
    #[must_use]
    pub fn stale_pending(&self, before: u64, limit: usize) -> Vec<TokenId> {
        if !self.any_pending.load(Ordering::Acquire) {
            return Vec::new();
        }
        let cut = compact_time(before);
        self.pending
            .iter()
            .filter(|e| *e.value() < cut)
            .take(limit)
            .map(|e| *e.key())
            .collect()
    }

    /// A number that changes after every change that can turn an [`Answer::Issued`]
    /// into another answer, except the revocation of one token (see
    /// [`MemIndex::still_issued`]): an account or key revocation, a removal, a record
    /// replaced. New records do not change it (they turn no `Issued` into anything
    /// else). The verifier's cache keeps, with each confirmed token, the revision read
    /// *before* the index confirmed it ([`crate::verify::Checked::confirmed_revision`]).
    /// Changes are rare (account and key revocations, expiry sweeps), and each one only
    /// sends every cached token back to one lookup.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Whether a token the index answered [`Answer::Issued`] for at revision `stamp`
    /// (read before asking) is still issued, known without looking it up: the revision
    /// is still `stamp` and the token was never revoked (its bit in the set of revoked
    /// tokens is clear). `false` means "look it up", not "not issued".
    #[must_use]
    pub fn still_issued(&self, stamp: u64, id: &TokenId) -> bool {
        self.revision() == stamp && !self.revoked_tokens.may_contain(id_digest(id))
    }

    /// After a change that can turn `Issued` into something else: the change is visible
    /// before the new revision is.
    fn bump_revision(&self) {
        self.revision.fetch_add(1, Ordering::Release);
    }

    fn account_digest(&self, account: &str) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.account_key.0, self.account_key.1);
        h.write(account.as_bytes());
        h.finish()
    }

    /// Inserts or replaces a record. A revoked record stays revoked.
    pub fn insert(&self, record: &Record) {
        self.insert_with(record, false);
    }

    /// Inserts a record with its revoked flag, as loaded from a store.
    pub fn insert_with(&self, record: &Record, revoked: bool) {
        let d = self.account_digest(&record.account);
        let mut expires = compact_time(record.expires_at);
        if revoked {
            expires |= REVOKED_BIT;
        }
        let packed = Packed {
            account: [d as u32, (d >> 32) as u32],
            issued_at: compact_time(record.issued_at),
            expires,
        };
        let mut replaced = false;
        match self.tokens.entry(record.id) {
            Entry::Occupied(mut e) => {
                let p = e.get_mut();
                let was_revoked = p.revoked();
                replaced = *p != packed;
                *p = packed;
                if was_revoked {
                    p.expires |= REVOKED_BIT;
                }
            }
            Entry::Vacant(e) => {
                let mut packed = packed;
                // Revoked before it arrived (under this id's shard lock: see `pending`).
                if self.any_pending.load(Ordering::Acquire)
                    && self.pending.remove(&record.id).is_some()
                {
                    packed.expires |= REVOKED_BIT;
                }
                e.insert(packed);
            }
        }
        if replaced {
            self.bump_revision();
        }
        self.recorded_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies a revocation made at `now` (unix seconds); returns how many entries it
    /// marked. A token revocation of an id with no record waits for its record (module
    /// docs), or fails with [`LedgerError::Full`] when
    /// [`MemIndex::set_pending_cap`] ids already wait.
    pub fn revoke(&self, revocation: &Revocation, now: u64) -> Result<u64, LedgerError> {
        self.apply_revocation(revocation, now, true)
    }

    /// [`MemIndex::revoke`] for a revocation a store has already kept (and checked
    /// against the cap): a token revocation waits for its record whatever the cap, so
    /// this cannot fail.
    pub fn revoke_kept(&self, revocation: &Revocation, now: u64) {
        let _ = self.apply_revocation(revocation, now, false);
    }

    fn apply_revocation(
        &self,
        revocation: &Revocation,
        now: u64,
        capped: bool,
    ) -> Result<u64, LedgerError> {
        let marked = match revocation {
            Revocation::Token(id) => self.revoke_token(*id, now, capped)?,
            Revocation::Account { account, at } => {
                let d = self.account_digest(account);
                let cut = compact_time(*at);
                self.revoked_accounts
                    .entry(d)
                    .and_modify(|c| *c = (*c).max(cut))
                    .or_insert(cut);
                self.any_revoked_accounts.store(true, Ordering::Release);
                self.bump_revision();
                0
            }
            Revocation::Kid(kid) => {
                self.revoked_kids.insert(kid.clone(), ());
                self.any_revoked_kids.store(true, Ordering::Release);
                self.bump_revision();
                0
            }
        };
        self.revocations_total.fetch_add(1, Ordering::Relaxed);
        Ok(marked)
    }

    /// Restores a token revocation that waited for its record when a store was closed
    /// (made at `at`, unix seconds), whatever the cap: it was kept then. Not counted in
    /// `revocations_total`.
    pub fn restore_pending(&self, id: TokenId, at: u64) {
        let _ = self.revoke_token(id, at, false);
    }

    /// Marks the token's record revoked (1), or makes the revocation wait for it (0), or,
    /// when `capped` and as many wait as allowed, refuses it.
    fn revoke_token(&self, id: TokenId, at: u64, capped: bool) -> Result<u64, LedgerError> {
        let marked = match self.tokens.entry(id) {
            Entry::Occupied(mut e) => {
                e.get_mut().expires |= REVOKED_BIT;
                1
            }
            // Held: the record cannot arrive between this check and the wait.
            Entry::Vacant(_) => {
                if capped && !self.pending.contains_key(&id) && !self.room_to_wait(0) {
                    return Err(self.pending_full(0));
                }
                // Set before the entry is visible, so an insert that sees the entry saw
                // the flag.
                self.any_pending.store(true, Ordering::Release);
                self.pending
                    .entry(id)
                    .and_modify(|t| *t = (*t).max(compact_time(at)))
                    .or_insert(compact_time(at));
                0
            }
        };
        // After its entry is marked (see `revoked_tokens`).
        self.revoked_tokens.add(id_digest(&id));
        Ok(marked)
    }

    /// Answers a query.
    pub fn answer(&self, q: &Query<'_>) -> Answer {
        if self.any_revoked_kids.load(Ordering::Acquire) && self.revoked_kids.contains_key(q.kid) {
            return Answer::RevokedKey;
        }
        let Some(p) = self.tokens.get(&q.id).map(|p| *p) else {
            return Answer::Unknown;
        };
        let d = self.account_digest(q.account);
        if p.account != [d as u32, (d >> 32) as u32] {
            return Answer::AccountMismatch;
        }
        if p.revoked() {
            return Answer::RevokedToken;
        }
        if self.any_revoked_accounts.load(Ordering::Acquire) {
            if let Some(cut) = self.revoked_accounts.get(&d) {
                if p.issued_at <= *cut {
                    return Answer::RevokedToken;
                }
            }
        }
        Answer::Issued
    }

    /// The packed entry for an id.
    #[must_use]
    pub fn get(&self, id: &TokenId) -> Option<Packed> {
        self.tokens.get(id).map(|p| *p)
    }

    /// Whether a key id was revoked in the ledger.
    #[must_use]
    pub fn kid_revoked(&self, kid: &str) -> bool {
        self.revoked_kids.contains_key(kid)
    }

    /// Ids whose expiry is before `before` (unix seconds), at most `limit` of them.
    #[must_use]
    pub fn expired(&self, before: u64, limit: usize) -> Vec<TokenId> {
        let cut = compact_time(before);
        self.tokens
            .iter()
            .filter(|e| e.value().expires & TIME_MASK < cut)
            .take(limit)
            .map(|e| *e.key())
            .collect()
    }

    /// Drops the waiting revocations of `ids` still made before `before` (unix seconds):
    /// one revoked again since [`MemIndex::stale_pending`] listed it waits on, and one
    /// whose record arrived meanwhile is no longer waiting (its record stays).
    pub fn drop_stale_pending(&self, ids: &[TokenId], before: u64) {
        let cut = compact_time(before);
        for id in ids {
            self.pending.remove_if(id, |_, at| *at < cut);
        }
    }

    /// Removes records (after a sweep has removed them from the store).
    pub fn remove_all(&self, ids: &[TokenId]) {
        let mut removed = false;
        for id in ids {
            if self.tokens.remove(id).is_some() {
                self.swept_total.fetch_add(1, Ordering::Relaxed);
                removed = true;
            }
        }
        if removed {
            self.bump_revision();
        }
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> LedgerStats {
        LedgerStats {
            entries: self.tokens.len() as u64,
            recorded_total: self.recorded_total.load(Ordering::Relaxed),
            revocations_total: self.revocations_total.load(Ordering::Relaxed),
            swept_total: self.swept_total.load(Ordering::Relaxed),
            pending_revocations: self.pending.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(jti: &str, account: &str, iat: u64) -> Record {
        Record {
            id: TokenId::from_jti(jti),
            account: account.into(),
            issued_at: iat,
            expires_at: iat + 3600,
            kid: "k1".into(),
        }
    }

    fn q<'a>(jti: &str, account: &'a str) -> Query<'a> {
        Query {
            id: TokenId::from_jti(jti),
            account,
            kid: "k1",
            issued_at: None,
        }
    }

    #[test]
    fn entry_is_32_bytes() {
        assert_eq!(std::mem::size_of::<(TokenId, Packed)>(), 32);
    }

    #[test]
    fn answers_issued_unknown_and_mismatch() {
        let idx = MemIndex::new();
        idx.insert(&rec("t1", "alice", EPOCH_BASE + 10));
        assert_eq!(idx.answer(&q("t1", "alice")), Answer::Issued);
        assert_eq!(idx.answer(&q("t1", "bob")), Answer::AccountMismatch);
        assert_eq!(idx.answer(&q("t2", "alice")), Answer::Unknown);
    }

    #[test]
    fn ids_from_jti_and_token_never_meet() {
        assert_ne!(TokenId::from_jti("x"), TokenId::from_token("x"));
        let id = TokenId::from_jti("x");
        assert_eq!(TokenId::from_hex(&id.to_hex()), Ok(id));
        assert!(TokenId::from_hex("zz").is_err());
        assert!(TokenId::from_hex(&"g".repeat(32)).is_err());
    }

    #[test]
    fn revocations_by_token_account_and_kid() {
        let idx = MemIndex::new();
        let t0 = EPOCH_BASE + 1000;
        idx.insert(&rec("a1", "alice", t0));
        idx.insert(&rec("a2", "alice", t0 + 100));
        idx.insert(&rec("b1", "bob", t0));
        assert_eq!(
            idx.revoke(&Revocation::Token(TokenId::from_jti("b1")), t0),
            Ok(1)
        );
        assert_eq!(idx.answer(&q("b1", "bob")), Answer::RevokedToken);
        // Re-recording a revoked token does not resurrect it.
        idx.insert(&rec("b1", "bob", t0));
        assert_eq!(idx.answer(&q("b1", "bob")), Answer::RevokedToken);

        let _ = idx.revoke(
            &Revocation::Account {
                account: "alice".into(),
                at: t0 + 50,
            },
            t0,
        );
        assert_eq!(idx.answer(&q("a1", "alice")), Answer::RevokedToken);
        assert_eq!(idx.answer(&q("a2", "alice")), Answer::Issued);

        let _ = idx.revoke(&Revocation::Kid("k1".into()), t0);
        assert_eq!(idx.answer(&q("a2", "alice")), Answer::RevokedKey);
    }

    /// The revision moves on every change that can take back an `Issued`, and on no
    /// other; a revoked token is caught by its filter bit instead.
    #[test]
    fn still_issued_holds_until_a_change_that_could_take_the_answer_back() {
        let idx = MemIndex::new();
        let t0 = EPOCH_BASE + 1000;
        let id = |jti: &str| TokenId::from_jti(jti);
        idx.insert(&rec("a1", "alice", t0));
        idx.insert(&rec("b1", "bob", t0));
        let r0 = idx.revision();
        assert!(idx.still_issued(r0, &id("a1")));
        // New records take nothing back.
        idx.insert(&rec("c1", "carol", t0));
        assert_eq!(idx.revision(), r0);
        // A token revocation: that token asks again, the others do not.
        let _ = idx.revoke(&Revocation::Token(id("b1")), t0);
        assert_eq!(idx.revision(), r0);
        assert!(!idx.still_issued(r0, &id("b1")));
        assert!(idx.still_issued(r0, &id("a1")));
        // Account and key revocations, removals and replaced records move it.
        let mut last = r0;
        let changes: [&dyn Fn(); 4] = [
            &|| {
                let _ = idx.revoke(
                    &Revocation::Account {
                        account: "alice".into(),
                        at: t0,
                    },
                    t0,
                );
            },
            &|| {
                let _ = idx.revoke(&Revocation::Kid("k1".into()), t0);
            },
            &|| idx.remove_all(&[id("c1")]),
            &|| idx.insert(&rec("a1", "alice", t0 + 5)),
        ];
        for (i, change) in changes.iter().enumerate() {
            change();
            let now = idx.revision();
            assert_ne!(now, last, "change {i} kept the revision");
            assert!(!idx.still_issued(last, &id("a1")), "change {i}");
            last = now;
        }
        // Removing nothing, or re-recording a record as it is, changes nothing.
        idx.remove_all(&[id("never")]);
        idx.insert(&rec("a1", "alice", t0 + 5));
        assert_eq!(idx.revision(), last);
        // Two indexes never share a revision (fleet mode replaces its index).
        assert_ne!(MemIndex::new().revision(), MemIndex::new().revision());
    }

    /// A token revoked before its record arrives is recorded revoked; the waiting set is
    /// capped, swept by age, and counted.
    #[test]
    fn a_revocation_waits_for_its_record() {
        let idx = MemIndex::new();
        let t0 = EPOCH_BASE + 1000;
        let id = |jti: &str| TokenId::from_jti(jti);
        let r0 = idx.revision();
        assert_eq!(idx.revoke(&Revocation::Token(id("early")), t0), Ok(0));
        assert!(idx.is_pending(&id("early")));
        assert_eq!(idx.stats().pending_revocations, 1);
        assert_eq!(idx.stale_pending(t0 + 1, 10), vec![id("early")]);
        // Revoking it again keeps one entry, and its wait starts again.
        assert_eq!(idx.revoke(&Revocation::Token(id("early")), t0 + 50), Ok(0));
        assert_eq!(idx.stats().pending_revocations, 1);
        assert_eq!(idx.stale_pending(t0 + 1, 10), vec![]);
        assert_eq!(idx.stale_pending(t0 + 51, 10), vec![id("early")]);
        idx.insert(&rec("early", "alice", t0 + 10));
        assert_eq!(idx.answer(&q("early", "alice")), Answer::RevokedToken);
        assert!(idx.get(&id("early")).is_some_and(|p| p.revoked()));
        assert!(!idx.is_pending(&id("early")));
        assert_eq!(idx.stats().pending_revocations, 0);
        assert!(!idx.still_issued(r0, &id("early")));
        // Other records are untouched by it.
        idx.insert(&rec("other", "alice", t0 + 10));
        assert_eq!(idx.answer(&q("other", "alice")), Answer::Issued);

        // The cap: a full set refuses a new id, takes one that has a record or waits.
        idx.set_pending_cap(2);
        assert_eq!(idx.revoke(&Revocation::Token(id("w1")), t0), Ok(0));
        assert_eq!(idx.revoke(&Revocation::Token(id("w2")), t0 + 100), Ok(0));
        assert!(!idx.room_to_wait(0));
        assert_eq!(
            idx.revoke(&Revocation::Token(id("w3")), t0),
            Err(LedgerError::Full { waiting: 2, cap: 2 })
        );
        assert!(!idx.is_pending(&id("w3")));
        idx.insert(&rec("w3", "bob", t0));
        assert_eq!(
            idx.answer(&q("w3", "bob")),
            Answer::Issued,
            "refused, so not kept"
        );
        assert_eq!(idx.revoke(&Revocation::Token(id("w2")), t0 + 100), Ok(0));
        assert_eq!(idx.revoke(&Revocation::Token(id("other")), t0), Ok(1));
        // Account and key revocations never wait.
        let _ = idx.revoke(&Revocation::Kid("k2".into()), t0);
        assert_eq!(idx.stats().pending_revocations, 2);

        // The sweep takes those made before its cut, and they no longer wait.
        assert_eq!(idx.stale_pending(t0 + 1, 10), vec![id("w1")]);
        assert_eq!(idx.stale_pending(t0 + 101, 1).len(), 1, "at most the limit");
        let mut stale = idx.stale_pending(t0 + 101, 10);
        stale.sort();
        let mut both = vec![id("w1"), id("w2")];
        both.sort();
        assert_eq!(stale, both);
        // Between the listing and the drop, w2 is revoked again: it waits on.
        assert_eq!(idx.revoke(&Revocation::Token(id("w2")), t0 + 200), Ok(0));
        idx.drop_stale_pending(&stale, t0 + 101);
        assert_eq!(idx.stats().pending_revocations, 1);
        assert!(idx.is_pending(&id("w2")) && !idx.is_pending(&id("w1")));
        idx.drop_stale_pending(&[id("w2")], t0 + 201);
        assert_eq!(idx.stats().pending_revocations, 0);
        assert_eq!(idx.stats().entries, 3, "no record removed");
        idx.insert(&rec("w1", "carol", t0));
        assert_eq!(idx.answer(&q("w1", "carol")), Answer::Issued);

        // Restored from a store, past the cap.
        idx.set_pending_cap(0);
        idx.restore_pending(id("kept"), t0);
        assert!(idx.is_pending(&id("kept")));
        idx.insert(&rec("kept", "dan", t0));
        assert_eq!(idx.answer(&q("kept", "dan")), Answer::RevokedToken);
    }

    /// A revocation and its record racing on many threads: the record always ends up
    /// revoked, whichever lands first.
    #[test]
    fn a_revocation_and_its_record_never_miss_each_other() {
        let t0 = EPOCH_BASE + 1000;
        for round in 0..200 {
            let idx = MemIndex::new();
            let jti = format!("race{round}");
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _ = idx.revoke(&Revocation::Token(TokenId::from_jti(&jti)), t0);
                });
                s.spawn(|| idx.insert(&rec(&jti, "alice", t0)));
            });
            assert_eq!(
                idx.answer(&q(&jti, "alice")),
                Answer::RevokedToken,
                "round {round}"
            );
            assert_eq!(idx.stats().pending_revocations, 0, "round {round}");
        }
    }

    #[test]
    fn sweeps_expired() {
        let idx = MemIndex::new();
        let t0 = EPOCH_BASE + 1000;
        idx.insert(&rec("a", "alice", t0));
        idx.insert(&rec("b", "bob", t0 + 10_000));
        let gone = idx.expired(t0 + 3601, 100);
        assert_eq!(gone, vec![TokenId::from_jti("a")]);
        idx.remove_all(&gone);
        assert_eq!(idx.stats().entries, 1);
        assert_eq!(idx.stats().swept_total, 1);
    }

    #[test]
    fn compact_times_saturate() {
        assert_eq!(unix_time(compact_time(0)), EPOCH_BASE);
        assert_eq!(unix_time(compact_time(EPOCH_BASE + 5)), EPOCH_BASE + 5);
        assert_eq!(compact_time(u64::MAX), TIME_MASK);
    }
}
