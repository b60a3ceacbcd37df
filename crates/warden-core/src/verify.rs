//! Token verification with a cache, so a known-good token does not pay a signature check
//! on every request.
//!
//! ## The cache
//! Keyed by SipHash-1-3-128 of the whole compact token under a per-process random key.
//! A hit means "this exact byte string verified before"; the 128-bit keyed digest makes
//! a forged collision infeasible for anyone who does not know the key (it never leaves
//! the process). On a hit warden still re-checks, on every request: the key is still in
//! the registry with the same material (fingerprint), its lifecycle allows the token,
//! `exp`/`nbf` against `now`, and the ledger. Only the signature and the parsing are
//! skipped.
//!
//! Only tokens the ledger confirmed are cached ([`Verifier::remember`]), so an attacker
//! cannot fill the cache with tokens of their own.
//!
//! ## Asking the ledger once per revision
//! A ledger with revisions ([`Ledger::revision`](crate::ledger::Ledger::revision): the
//! embedded one and the fleet's) changes its revision after anything that can turn an
//! "issued" answer into another (a revocation of an account or a key, a removal, a
//! replaced record), and marks each revoked token in a filter. A confirmed token is
//! cached with the revision read before the ledger confirmed it; while the ledger stays
//! at that revision and the token's filter bit is clear, its answer cannot have changed,
//! and the proxy and log replay skip the lookup ([`Checked::confirmed_revision`],
//! [`Ledger::still_issued`](crate::ledger::Ledger::still_issued)). A change sends every
//! cached token back to one lookup, which stamps it again. This takes a lookup off the
//! common request (a repeat of a good token), not a check: the answer is the one the
//! ledger would give.
//!
//! ## Validly signed tokens the ledger refused
//! A forged token (a leaked key's, never issued) sent again would pay the full signature
//! check every time: 40 µs for RS256, 100 µs for ES256, the attacker's cheapest way to
//! make warden work. Tokens whose signature verified but whose ledger answer was not
//! "issued" go to a second, smaller cache ([`Verifier::conclude`]), bounded apart
//! (a tenth of `cache_capacity`) so that an attacker minting tokens can fill only that
//! one and never push out confirmed tokens. A hit there skips only the signature, as in
//! the main cache: the ledger is still asked on every request, so a token whose record
//! arrives late passes as soon as it is there (and moves to the main cache). Memory: measured at 226 bytes of heap
//! (277 of RSS) per cached token with no kept claims (`benches/RESULTS.md`); the cache
//! holds at most `cache_capacity` entries (default 1 M: about 280 MB at the worst). Kept
//! claims add their own bytes, so only the claims rules use are kept
//! ([`Verifier::keep_claims`]). When full, new tokens are verified but not cached until
//! the periodic sweep drops expired entries, and, if the cache is still over 90 % full,
//! about half of it: those tokens are verified again once.

use std::hash::Hasher as _;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use jsonwebtoken::Algorithm;
use siphasher::sip128::{Hasher128 as _, SipHasher13};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::keys::{Key, KeyRegistry, KeyUse};
use crate::ledger::{Answer, IdHasherBuilder, Record, TokenId};
use crate::reason::Reason;
use crate::token;

/// What the verifier checks beyond the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud` (a string, or one element of an array), if set.
    pub audience: Option<String>,
    /// The claim naming the account (default `sub`).
    pub account_claim: String,
    /// Tokens longer than this are refused before any parsing.
    pub max_token_bytes: usize,
    /// Most tokens the verification cache holds.
    pub cache_capacity: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            leeway_seconds: 30,
            issuer: None,
            audience: None,
            account_claim: "sub".into(),
            max_token_bytes: 8192,
            cache_capacity: 1_000_000,
        }
    }
}

/// What warden keeps of a token that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The ledger id (`jti` digest, or digest of the token).
    pub id: TokenId,
    /// The account claim.
    pub account: Box<str>,
    /// The key id that verified it.
    pub kid: Arc<str>,
    /// Fingerprint of that key's material.
    pub key_fingerprint: u64,
    /// `iat`.
    pub issued_at: Option<u64>,
    /// `exp` (required).
    pub expires_at: u64,
    /// `nbf`.
    pub not_before: Option<u64>,
    /// The claims rules key on ([`Verifier::keep_claims`]), string, number or boolean:
    /// at most [`MAX_KEPT_CLAIMS`], each value at most 256 bytes.
    pub claims: Box<[(Box<str>, Box<str>)]>,
}

/// Most claims kept per verified token.
pub const MAX_KEPT_CLAIMS: usize = 16;

impl Verified {
    /// A kept claim's value.
    #[must_use]
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| &**v)
    }
}

fn kept_claims(c: &token::Claims, wanted: &[Box<str>]) -> Box<[(Box<str>, Box<str>)]> {
    if wanted.is_empty() {
        return Box::default();
    }
    c.sorted()
        .into_iter()
        .filter(|(k, _)| wanted.iter().any(|w| **w == **k))
        .filter_map(|(k, v)| {
            let v = match v {
                token::Claim::String(s) => s.to_owned(),
                token::Claim::Number(n) => n.to_string(),
                token::Claim::Bool(b) => b.to_string(),
                token::Claim::Other => return None,
            };
            (k.len() <= 64 && v.len() <= 256).then(|| (k.into(), v.into_boxed_str()))
        })
        .take(MAX_KEPT_CLAIMS)
        .collect()
}

/// The result of verifying one token.
#[derive(Debug, Clone)]
#[must_use]
pub struct Checked {
    /// What verified.
    pub verified: Arc<Verified>,
    /// The cache key of the token.
    pub cache_key: u128,
    /// Whether the signature check was skipped thanks to a cache.
    pub cached: bool,
    /// Whether it came from the cache of ledger-confirmed tokens.
    pub confirmed: bool,
    /// The ledger revision the token was last confirmed at (see
    /// [`Checked::confirmed_revision`]); `None` unless `confirmed`.
    pub ledger_revision: Option<u64>,
}

impl Checked {
    /// The ledger revision this token was last confirmed at, for a token from the cache
    /// of confirmed tokens: if the ledger says it is [still
    /// issued](crate::ledger::Ledger::still_issued) at that revision, asking it again
    /// would answer [`Answer::Issued`] again. Read the ledger's revision before asking
    /// it (or before this shortcut), and pass it to [`Verifier::conclude_at`].
    #[must_use]
    pub fn confirmed_revision(&self) -> Option<u64> {
        self.ledger_revision.filter(|_| self.confirmed)
    }
}

/// A ledger-confirmed token in the verifier's cache, with the ledger revision it was
/// last confirmed at (updated in place, under the map's read lock).
#[derive(Debug)]
struct Confirmed {
    verified: Arc<Verified>,
    /// [`UNSTAMPED`] until a ledger with revisions confirms it.
    revision: AtomicU64,
}

/// No revision: the token is asked about.
const UNSTAMPED: u64 = u64::MAX;

impl Confirmed {
    fn new(verified: Arc<Verified>, revision: Option<u64>) -> Self {
        Self {
            verified,
            revision: AtomicU64::new(revision.unwrap_or(UNSTAMPED)),
        }
    }
}

/// When [`Verifier::record_for_issued_at`] checks a token's key use and lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckedAt {
    /// At this time, unix seconds (a token seen now).
    Time(u64),
    /// At the token's own issue time (its `iat`; 0 without one).
    Issued,
}

/// Verifies tokens against the current registry and policy.
pub struct Verifier {
    /// Read on every request: an `ArcSwap` load takes no lock and writes no line another
    /// worker reads (a `RwLock` read bumps its reader count, a line every worker shares).
    registry: ArcSwap<KeyRegistry>,
    policy: Policy,
    /// Keyed by [`Verifier::cache_key`], a keyed SipHash: uniform already, so the maps
    /// take it as it is ([`IdHasherBuilder`]) instead of hashing it again.
    cache: DashMap<u128, Confirmed, IdHasherBuilder>,
    /// `cache.len()` locks every shard: this counter answers instead, approximately.
    cached: AtomicUsize,
    /// Validly signed tokens the ledger did not confirm (see the module doc).
    unconfirmed: DashMap<u128, Arc<Verified>, IdHasherBuilder>,
    unconfirmed_len: AtomicUsize,
    kept_claims: RwLock<Arc<[Box<str>]>>,
    sip_key: (u64, u64),
}

impl Verifier {
    /// A verifier over a registry.
    #[must_use]
    pub fn new(registry: KeyRegistry, policy: Policy) -> Self {
        let mut seed = [0u8; 16];
        if getrandom::fill(&mut seed).is_err() {
            // No OS randomness: the cache would be keyed by a known key, so keep it off.
            seed = [0; 16];
        }
        let k0 = u64::from_le_bytes(seed[..8].try_into().unwrap_or([0; 8]));
        let k1 = u64::from_le_bytes(seed[8..].try_into().unwrap_or([0; 8]));
        let mut policy = policy;
        if k0 == 0 && k1 == 0 {
            policy.cache_capacity = 0;
        }
        Self {
            registry: ArcSwap::from_pointee(registry),
            policy,
            cache: DashMap::with_hasher(IdHasherBuilder),
            cached: AtomicUsize::new(0),
            unconfirmed: DashMap::with_hasher(IdHasherBuilder),
            unconfirmed_len: AtomicUsize::new(0),
            kept_claims: RwLock::new(Arc::from(Vec::new())),
            sip_key: (k0, k1),
        }
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The current registry.
    #[must_use]
    pub fn registry(&self) -> Arc<KeyRegistry> {
        self.registry.load_full()
    }

    /// Swaps in a new registry. Cached tokens are re-checked against it on their next use
    /// (a kid that disappeared or whose material changed is verified afresh).
    pub fn swap_registry(&self, registry: KeyRegistry) {
        self.registry.store(Arc::new(registry));
    }

    fn cache_key(&self, token: &str) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.sip_key.0, self.sip_key.1);
        h.write(token.as_bytes());
        h.finish128().as_u128()
    }

    /// Verifies a token for a request at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Checked, Reason> {
        if token.len() > self.policy.max_token_bytes {
            return Err(Reason::Malformed);
        }
        let registry = self.registry.load();
        let cache_key = self.cache_key(token);
        let hit = match self.cache.get(&cache_key).map(|c| {
            let revision = c.revision.load(Ordering::Relaxed);
            (
                Arc::clone(&c.verified),
                (revision != UNSTAMPED).then_some(revision),
            )
        }) {
            Some((v, revision)) => Some((v, true, revision)),
            None if self.unconfirmed_len.load(Ordering::Relaxed) > 0 => self
                .unconfirmed
                .get(&cache_key)
                .map(|v| (Arc::clone(&v), false, None)),
            None => None,
        };
        if let Some((v, confirmed, ledger_revision)) = hit {
            match registry.get(&v.kid) {
                Some(key) if key.fingerprint == v.key_fingerprint => {
                    self.check_live(&v, key, now)?;
                    return Ok(Checked {
                        verified: v,
                        cache_key,
                        cached: true,
                        confirmed,
                        ledger_revision,
                    });
                }
                Some(_) => {} // material changed under the same kid: verify afresh
                None => return Err(Reason::UnknownKid),
            }
        }
        let (verified, key) = self.verify_fresh(token, &registry)?;
        self.check_live(&verified, &key, now)?;
        Ok(Checked {
            verified: Arc::new(verified),
            cache_key,
            cached: false,
            confirmed: false,
            ledger_revision: None,
        })
    }

    /// Most entries of the cache of validly signed, unconfirmed tokens.
    fn unconfirmed_capacity(&self) -> usize {
        self.policy.cache_capacity / 10
    }

    /// Caches a token the ledger confirmed, so its next use skips the signature.
    pub fn remember(&self, checked: &Checked) {
        self.remember_at(checked, None);
    }

    /// [`Verifier::remember`], stamped with the ledger revision read before the ledger
    /// was asked (see [`Checked::confirmed_revision`]); a cached token gets the new
    /// stamp.
    fn remember_at(&self, checked: &Checked, revision: Option<u64>) {
        if self.policy.cache_capacity == 0 {
            return;
        }
        if checked.confirmed {
            if let Some(r) = revision.filter(|r| checked.ledger_revision != Some(*r)) {
                if let Some(c) = self.cache.get(&checked.cache_key) {
                    c.revision.store(r, Ordering::Relaxed);
                }
            }
            return;
        }
        if checked.cached && self.unconfirmed.remove(&checked.cache_key).is_some() {
            // Its record arrived after a refusal: it moves to the main cache.
            self.unconfirmed_len.fetch_sub(1, Ordering::Relaxed);
        }
        if self.cached.load(Ordering::Relaxed) >= self.policy.cache_capacity {
            return;
        }
        if self
            .cache
            .insert(
                checked.cache_key,
                Confirmed::new(Arc::clone(&checked.verified), revision),
            )
            .is_none()
        {
            self.cached.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The provenance of a verified token once the ledger answered: [`reason_for`] the
    /// answer, and a confirmed token is cached ([`Verifier::remember`]). The proxy and log
    /// replay both finish every provenance check with this.
    pub fn conclude(&self, checked: &Checked, answer: Answer) -> Reason {
        self.conclude_at(checked, answer, None)
    }

    /// [`Verifier::conclude`] with the ledger's revision, read before it was asked (or
    /// before [`Checked::confirmed_revision`] let the request skip asking): a confirmed token
    /// is cached with it, so that its next use skips the ledger too while the revision
    /// holds.
    pub fn conclude_at(&self, checked: &Checked, answer: Answer, revision: Option<u64>) -> Reason {
        let reason = reason_for(answer);
        if reason == Reason::Ok {
            self.remember_at(checked, revision);
        } else if !checked.cached && self.unconfirmed_capacity() > 0 {
            // Validly signed, not issued (or revoked): the next copy skips the signature.
            if self.unconfirmed_len.load(Ordering::Relaxed) < self.unconfirmed_capacity()
                && self
                    .unconfirmed
                    .insert(checked.cache_key, Arc::clone(&checked.verified))
                    .is_none()
            {
                self.unconfirmed_len.fetch_add(1, Ordering::Relaxed);
            }
        }
        reason
    }

    /// Entries in the cache of validly signed tokens the ledger did not confirm.
    #[must_use]
    pub fn unconfirmed_len(&self) -> usize {
        self.unconfirmed_len.load(Ordering::Relaxed)
    }

    /// Drops cached tokens expired at `now`; if the cache is still over 90 % full,
    /// drops about half of it (by a bit of the cache key), so that a full cache keeps
    /// serving most tokens instead of sending them all back to signature checks at once.
    /// Called periodically by the proxy's maintenance task. Returns entries dropped.
    pub fn sweep_cache(&self, now: u64) -> usize {
        let before = self.cache.len();
        self.cache
            .retain(|_, c| c.verified.expires_at + self.policy.leeway_seconds >= now);
        if self.cache.len() * 10 > self.policy.cache_capacity * 9 {
            let bit = (now % 64) as u32;
            self.cache.retain(|k, _| (k >> bit) & 1 == 0);
        }
        let after = self.cache.len();
        self.cached.store(after, Ordering::Relaxed);
        // The same for the unconfirmed cache; its count is only a guide for the sweep.
        self.unconfirmed
            .retain(|_, v| v.expires_at + self.policy.leeway_seconds >= now);
        if self.unconfirmed.len() * 10 > self.unconfirmed_capacity() * 9 {
            let bit = ((now + 32) % 64) as u32;
            self.unconfirmed.retain(|k, _| (k >> bit) & 1 == 0);
        }
        self.unconfirmed_len
            .store(self.unconfirmed.len(), Ordering::Relaxed);
        before - after
    }

    /// Sets which claims verified tokens keep (for rules keyed on claims); other claims
    /// are not kept, which keeps cached tokens small. A change empties the cache, so
    /// every token is read again with the new set.
    pub fn keep_claims(&self, names: Vec<String>) {
        let new: Arc<[Box<str>]> = names.into_iter().map(String::into_boxed_str).collect();
        let mut g = match self.kept_claims.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if *g != new {
            *g = new;
            self.cache.clear();
            self.cached.store(0, Ordering::Relaxed);
            self.unconfirmed.clear();
            self.unconfirmed_len.store(0, Ordering::Relaxed);
        }
    }

    /// Drops cached tokens that any of `revocations` covers, from both caches; returns
    /// how many. This is not what refuses a revoked token (the ledger does, asked
    /// whenever its revision or the token's revoked bit says its answer may have
    /// changed: see the module doc): it keeps the caches from holding tokens that
    /// can no longer pass (fleet mode calls it for revocations made on other nodes too).
    /// One walk over the caches for the whole batch (hash lookups per cached token), so
    /// a burst of revocations costs one walk, not one each.
    pub fn forget_revoked(&self, revocations: &[crate::ledger::Revocation]) -> usize {
        use crate::ledger::Revocation;
        use std::collections::{HashMap, HashSet};
        if revocations.is_empty() {
            return 0;
        }
        let mut ids = HashSet::new();
        let mut accounts: HashMap<&str, u64> = HashMap::new();
        let mut kids = HashSet::new();
        for r in revocations {
            match r {
                Revocation::Token(id) => {
                    ids.insert(*id);
                }
                Revocation::Account { account, at } => {
                    let cut = accounts.entry(account.as_str()).or_insert(*at);
                    *cut = (*cut).max(*at);
                }
                Revocation::Kid(kid) => {
                    kids.insert(kid.as_str());
                }
            }
        }
        let covered = |v: &Verified| {
            ids.contains(&v.id)
                || kids.contains(&*v.kid)
                || accounts
                    .get(&*v.account)
                    .is_some_and(|at| v.issued_at.is_none_or(|iat| iat <= *at))
        };
        let before = self.cache.len() + self.unconfirmed.len();
        self.cache.retain(|_, c| !covered(&c.verified));
        self.unconfirmed.retain(|_, v| !covered(v));
        self.cached.store(self.cache.len(), Ordering::Relaxed);
        self.unconfirmed_len
            .store(self.unconfirmed.len(), Ordering::Relaxed);
        before.saturating_sub(self.cache.len() + self.unconfirmed.len())
    }

    /// Tokens in the cache.
    #[must_use]
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Verifies a token observed in a login response (or sent by the issuance service)
    /// and turns it into a ledger record. The key must be allowed to sign it now.
    pub fn record_for_issued(&self, token: &str, now: u64) -> Result<Record, Reason> {
        self.record_for_issued_at(token, CheckedAt::Time(now))
    }

    /// [`Verifier::record_for_issued`], the key's use and the token's lifetime checked at
    /// `at`: a record read long after its token was issued (a replay's `--records`) is
    /// checked at the token's own issue time, parsed once.
    pub fn record_for_issued_at(&self, token: &str, at: CheckedAt) -> Result<Record, Reason> {
        if token.len() > self.policy.max_token_bytes {
            return Err(Reason::Malformed);
        }
        let registry = self.registry.load();
        let (v, key) = self.verify_fresh(token, &registry)?;
        let now = match at {
            CheckedAt::Time(now) => now,
            CheckedAt::Issued => v.issued_at.unwrap_or(0),
        };
        self.check_live(&v, &key, now)?;
        Ok(Record {
            id: v.id,
            account: v.account.into(),
            issued_at: v.issued_at.unwrap_or(now),
            expires_at: v.expires_at,
            kid: v.kid.to_string(),
        })
    }

    fn check_live(&self, v: &Verified, key: &Key, now: u64) -> Result<(), Reason> {
        match key.check_use(v.issued_at) {
            KeyUse::Allowed => {}
            KeyUse::Revoked => return Err(Reason::RevokedKey),
            KeyUse::Retired => return Err(Reason::RetiredKey),
        }
        let leeway = self.policy.leeway_seconds;
        if now > v.expires_at.saturating_add(leeway) {
            return Err(Reason::Expired);
        }
        if let Some(nbf) = v.not_before {
            if now.saturating_add(leeway) < nbf {
                return Err(Reason::NotYetValid);
            }
        }
        Ok(())
    }

    fn verify_fresh(
        &self,
        token: &str,
        registry: &KeyRegistry,
    ) -> Result<(Verified, Arc<Key>), Reason> {
        let parsed =
            token::parse(token, self.policy.max_token_bytes).map_err(|_| Reason::Malformed)?;
        let kid = parsed.header.kid.as_deref().ok_or(Reason::UnknownKid)?;
        let key = registry.get(kid).ok_or(Reason::UnknownKid)?;
        if parsed.header.alg != key.alg {
            return Err(Reason::AlgMismatch);
        }
        if !signature_ok(&parsed, key) {
            return Err(Reason::BadSignature);
        }
        let c = &parsed.claims;
        let bad = |_| Reason::BadClaims;
        let expires_at = c
            .numeric_date("exp")
            .map_err(bad)?
            .ok_or(Reason::BadClaims)?;
        let issued_at = c.numeric_date("iat").map_err(bad)?;
        let not_before = c.numeric_date("nbf").map_err(bad)?;
        if let Some(iss) = &self.policy.issuer {
            if c.string("iss").map_err(bad)? != Some(iss.as_str()) {
                return Err(Reason::BadClaims);
            }
        }
        if let Some(aud) = &self.policy.audience {
            if !c.has_audience(aud) {
                return Err(Reason::BadClaims);
            }
        }
        let account = c
            .string(&self.policy.account_claim)
            .map_err(bad)?
            .filter(|a| !a.is_empty())
            .ok_or(Reason::BadClaims)?;
        let id = match c.string("jti").map_err(bad)? {
            Some(jti) if !jti.is_empty() => TokenId::from_jti(jti),
            _ => TokenId::from_token(token),
        };
        Ok((
            Verified {
                id,
                account: account.into(),
                kid: Arc::clone(&key.kid),
                key_fingerprint: key.fingerprint,
                issued_at,
                expires_at,
                not_before,
                claims: {
                    let wanted = match self.kept_claims.read() {
                        Ok(g) => Arc::clone(&g),
                        Err(p) => Arc::clone(&p.into_inner()),
                    };
                    kept_claims(c, &wanted)
                },
            },
            Arc::clone(key),
        ))
    }
}

fn signature_ok(parsed: &token::ParsedToken<'_>, key: &Key) -> bool {
    if let Some(hmac) = &key.hmac {
        return hmac_ok(parsed, hmac);
    }
    // ECDSA signatures in JWS are fixed-size r||s; anything else is refused before the
    // backend sees it (r or s of zero are rejected by the backend's range checks).
    let expected_len = match key.alg {
        Algorithm::ES256 => Some(64usize),
        Algorithm::ES384 => Some(96),
        Algorithm::EdDSA => Some(64),
        _ => None,
    };
    if let Some(len) = expected_len {
        // base64url without padding: 4 chars per 3 bytes, rounded up.
        if parsed.signature_b64.len() != (len * 4).div_ceil(3) {
            return false;
        }
    }
    backend_ok(parsed, key)
}

/// The signature checked by jsonwebtoken with the key's decoding key (set up per call for
/// an HMAC key): what [`signature_ok`] does for every key that has no [`Key::hmac`], and
/// the reference the unit tests compare it with for those that have.
fn backend_ok(parsed: &token::ParsedToken<'_>, key: &Key) -> bool {
    jsonwebtoken::crypto::verify(
        parsed.signature_b64,
        parsed.signing_input.as_bytes(),
        &key.decoding,
        key.alg,
    )
    .unwrap_or(false)
}

/// An HMAC signature checked with the key built when the registry was loaded: what
/// `jsonwebtoken::crypto::verify` does (decode the base64url signature, compare the MAC
/// in constant time) without setting the key up again. A signature over 128 characters
/// decodes to more than 96 bytes, longer than any HMAC (64 at most), so it is refused
/// without decoding, as the comparison would refuse it.
fn hmac_ok(parsed: &token::ParsedToken<'_>, key: &aws_lc_rs::hmac::Key) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let mut sig = [0u8; 96];
    if parsed.signature_b64.len() > 128 {
        return false;
    }
    match URL_SAFE_NO_PAD.decode_slice(parsed.signature_b64, &mut sig) {
        Ok(n) => aws_lc_rs::hmac::verify(key, parsed.signing_input.as_bytes(), &sig[..n]).is_ok(),
        Err(_) => false,
    }
}

/// Maps a ledger answer to the request's provenance reason.
#[must_use]
pub fn reason_for(answer: Answer) -> Reason {
    match answer {
        Answer::Issued => Reason::Ok,
        Answer::Unknown => Reason::Forged,
        Answer::AccountMismatch => Reason::AccountMismatch,
        Answer::RevokedToken => Reason::RevokedToken,
        Answer::RevokedKey => Reason::RevokedKey,
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
