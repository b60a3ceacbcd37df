//! The per-request provenance check as the proxy runs it: `Verifier::verify(token, now)`,
//! then `MemIndex::answer`, then `Verifier::remember` when the ledger confirmed the token
//! (see `warden_benches::provenance`).
//!
//! The world it runs in is sized like production: the ledger index holds 1 M records
//! before anything is measured, and the verifier's token cache is filled with other tokens
//! up to about 1 M entries (its default capacity), so both tables are far larger than
//! the CPU caches.
//!
//! Cases:
//! - `known_good/<alg>`: a token already confirmed and cached (signature skipped), cycling
//!   through `TOKENS` (256) tokens: their table entries stay in the CPU caches, so this is
//!   the compute cost of the check.
//! - `known_good_cold/<alg>`: the same, cycling through `COLD_TOKENS` (65 536) tokens whose
//!   entries, tokens and `Verified` records (about 1 KB each) exceed the 32 MiB L3, as
//!   they would with many live sessions: the cost including memory latency.
//! - `first_seen/<alg>`: a token in the ledger that this verifier has never seen: full
//!   signature verification, ledger lookup, and the insertion into the cache. A fresh
//!   verifier is built (outside the timing) whenever the pool of unseen tokens runs out.
//! - `no_cache/<alg>`: the naive baseline, a verifier with `cache_capacity: 0` that
//!   verifies every token afresh on every request.
//! - `forged/RS256`: validly signed by a registered key, never recorded in the ledger.
//! - `malformed/RS256`: an RS256 token cut to two segments.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use warden_benches::{
    account_pool, fill_index, provenance, sample_claims, sample_verified, SplitMix64, NOW,
};
use warden_core::fixtures::{mint, SampleKey};
use warden_core::keys::{KeyRegistry, KeyState};
use warden_core::ledger::{MemIndex, TokenId};
use warden_core::verify::{Checked, Policy, Verifier};
use warden_core::Reason;

/// Records in the ledger index before measuring.
const LEDGER_RECORDS: usize = 1_000_000;
/// Other tokens in the verifier's cache before measuring: with the benchmark's own
/// tokens it stays under the default capacity of 1 M, so `remember` keeps caching.
const CACHE_FILLER: usize = 700_000;
/// Distinct tokens the hot cases cycle through (a power of two).
const TOKENS: usize = 256;
/// Distinct tokens the cold cases cycle through (a power of two).
const COLD_TOKENS: usize = 1 << 16;

const ALGS: [(SampleKey, &str, &str); 4] = [
    (SampleKey::RsA, "rs-1", "RS256"),
    (SampleKey::Es, "es-1", "ES256"),
    (SampleKey::Ed, "ed-1", "EdDSA"),
    (SampleKey::Hs, "hs-1", "HS256"),
];

fn registry() -> KeyRegistry {
    let specs = ALGS
        .iter()
        .map(|(key, kid, _)| key.spec(kid, KeyState::Active))
        .collect();
    KeyRegistry::build(specs).unwrap_or_else(|e| panic!("sample keys must load: {e:?}"))
}

/// `n` tokens signed by `key`, with distinct `jti`s and accounts.
fn mint_tokens(key: SampleKey, kid: &str, tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|j| mint(key, kid, &sample_claims(tag, j)).expect("sample key signs"))
        .collect()
}

/// Puts `CACHE_FILLER` unrelated tokens into the verifier's cache (random cache keys that
/// no real token will hit), so that its table is as large as in production.
fn fill_cache(verifier: &Verifier) {
    let template = sample_verified(verifier, SampleKey::RsA, "rs-1");
    let mut rng = SplitMix64::new(42);
    for i in 0..CACHE_FILLER {
        let cache_key = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let mut verified = template.clone();
        verified.id = TokenId::from_jti(&format!("filler-{i}"));
        verified.account = format!("filler-{i}@example.com").into_boxed_str();
        let checked = Checked {
            verified: Arc::new(verified),
            cache_key,
            cached: false,
            confirmed: false,
            ledger_revision: None,
        };
        verifier.remember(&checked);
    }
}

/// Mints `n` tokens, records them in the ledger, and has `verifier` confirm and cache
/// each one (checking that the next use is a cache hit).
fn known_good(
    verifier: &Verifier,
    index: &MemIndex,
    (key, kid, alg): (SampleKey, &str, &str),
    tag: &str,
    n: usize,
) -> Vec<String> {
    let started = Instant::now();
    let tokens = mint_tokens(key, kid, tag, n);
    for t in &tokens {
        let record = verifier
            .record_for_issued(t, NOW)
            .expect("sample token records");
        index.insert(&record);
        // First use verifies and caches; the second must be a cache hit.
        assert_eq!(provenance(verifier, index, t, NOW), Reason::Ok);
        let again = verifier.verify(t, NOW).expect("verifies");
        assert!(again.cached, "{alg} token was not cached");
    }
    eprintln!(
        "setup: {n} {alg} tokens of {} bytes minted, recorded and cached in {:.1} s",
        tokens.first().map_or(0, String::len),
        started.elapsed().as_secs_f64()
    );
    tokens
}

/// Cycles through `tokens` (a power of two of them), one provenance check per iteration.
fn cycle(c: &mut Criterion, id: BenchmarkId, v: &Verifier, index: &MemIndex, tokens: &[String]) {
    assert!(tokens.len().is_power_of_two());
    let mask = tokens.len() - 1;
    let mut g = c.benchmark_group("provenance");
    g.bench_function(id, |b| {
        let mut j = 0usize;
        b.iter(|| {
            let t = &tokens[j & mask];
            j = j.wrapping_add(1);
            black_box(provenance(v, index, black_box(t), NOW))
        });
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let accounts = account_pool();
    let index = MemIndex::new();
    fill_index(&index, LEDGER_RECORDS, &accounts);

    let cached = Verifier::new(registry(), Policy::default());
    fill_cache(&cached);
    let no_cache = Verifier::new(
        registry(),
        Policy {
            cache_capacity: 0,
            ..Policy::default()
        },
    );

    let mut good = Vec::new();
    let mut cold = Vec::new();
    for spec in ALGS {
        good.push((spec.2, known_good(&cached, &index, spec, spec.2, TOKENS)));
    }
    for spec in ALGS {
        let tag = format!("cold-{}", spec.2);
        cold.push((spec.2, known_good(&cached, &index, spec, &tag, COLD_TOKENS)));
    }
    eprintln!(
        "setup: ledger {} records, verifier cache {} tokens",
        index.stats().entries,
        cached.cache_len()
    );

    for (alg, tokens) in &good {
        cycle(
            c,
            BenchmarkId::new("known_good", alg),
            &cached,
            &index,
            tokens,
        );
    }
    for (alg, tokens) in &cold {
        cycle(
            c,
            BenchmarkId::new("known_good_cold", alg),
            &cached,
            &index,
            tokens,
        );
    }
    drop(cold);

    // First seen: tokens in the ledger, unknown to a new verifier. Only the checks are
    // timed; building a verifier when the pool is used up is not.
    for (alg, tokens) in good.iter().filter(|g| matches!(g.0, "RS256" | "ES256")) {
        let mut g = c.benchmark_group("provenance");
        g.bench_function(BenchmarkId::new("first_seen", alg), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let fresh = Verifier::new(registry(), Policy::default());
                    let n = left.min(TOKENS as u64) as usize;
                    let start = Instant::now();
                    for t in &tokens[..n] {
                        black_box(provenance(&fresh, &index, black_box(t), NOW));
                    }
                    total += start.elapsed();
                    left -= n as u64;
                }
                total
            });
        });
        g.finish();
    }

    for (alg, tokens) in &good {
        cycle(
            c,
            BenchmarkId::new("no_cache", alg),
            &no_cache,
            &index,
            tokens,
        );
    }

    // Forged: signed with the registered RS256 key, never recorded.
    let forged = mint_tokens(SampleKey::RsA, "rs-1", "forged", TOKENS);
    assert_eq!(provenance(&cached, &index, &forged[0], NOW), Reason::Forged);
    cycle(
        c,
        BenchmarkId::new("forged", "RS256"),
        &cached,
        &index,
        &forged,
    );

    // Malformed: a real token cut to header.payload.
    let malformed: Vec<String> = good[0]
        .1
        .iter()
        .map(|t| {
            t.rsplit_once('.')
                .map_or(t.clone(), |(hp, _)| hp.to_owned())
        })
        .collect();
    assert_eq!(
        provenance(&cached, &index, &malformed[0], NOW),
        Reason::Malformed
    );
    cycle(
        c,
        BenchmarkId::new("malformed", "RS256"),
        &cached,
        &index,
        &malformed,
    );
}

criterion_group!(provenance_benches, benches);
criterion_main!(provenance_benches);
