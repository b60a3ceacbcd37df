//! `MemIndex::answer` at 1 M and 10 M entries against the naive stores a first version
//! would use: `Mutex<HashMap<TokenId, Record>>` and `DashMap<String (hex id), Record>`,
//! both at 1 M.
//!
//! Lookups walk a precomputed list of 2^20 random existing ids, so that consecutive
//! lookups land in different parts of the table and miss the CPU caches as they do in
//! production (`memindex_hit_hot` cycles through 1 024 of them instead, and
//! `memindex_miss` looks up ids never recorded, as for a forged token). The hex ids of the `DashMap<String, _>` baseline are precomputed too: its
//! figure is the lookup alone, without the `to_hex` a real caller would pay.
//!
//! `dashmap_is_empty` measures `DashMap::is_empty`, which `MemIndex::answer` calls twice
//! per lookup (revoked kids, revoked accounts): it read-locks every shard in turn, and
//! dashmap's default shard count is 4 x CPUs rounded up to a power of two.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dashmap::DashMap;
use warden_benches::{
    account_pool, fill_index, synthetic_account, synthetic_id, synthetic_record, SplitMix64,
    SYNTHETIC_IAT,
};
use warden_core::ledger::{Answer, MemIndex, Query, Record, TokenId};

/// Lookups cycle through this many random existing ids.
const PROBES: usize = 1 << 20;
/// The `_hot` case cycles through this many: their entries stay in the CPU caches, which
/// separates the compute cost of a lookup from its memory latency.
const HOT_PROBES: usize = 1 << 10;

/// Random existing records: (id, account index).
fn probes(n: usize, seed: u64) -> Vec<(TokenId, usize)> {
    let mut rng = SplitMix64::new(seed);
    (0..PROBES)
        .map(|_| {
            // `n` fits in u64 and the result is below it.
            let i = rng.below(n as u64) as usize;
            (synthetic_id(i), synthetic_account(i))
        })
        .collect()
}

/// Ids that were never recorded (a forged token's lookup).
fn absent_probes(n: usize) -> Vec<(TokenId, usize)> {
    (0..PROBES)
        .map(|j| (synthetic_id(n + j), synthetic_account(j)))
        .collect()
}

fn bench_memindex(c: &mut Criterion, n: usize, label: &str, accounts: &[String]) {
    let index = MemIndex::new();
    fill_index(&index, n, accounts);
    let hits = probes(n, 7);
    let hot: Vec<(TokenId, usize)> = hits[..HOT_PROBES].to_vec();
    let misses = absent_probes(n);
    let mut g = c.benchmark_group("ledger_lookup");
    for (case, set, expect) in [
        ("memindex_hit", &hits, Answer::Issued),
        ("memindex_hit_hot", &hot, Answer::Issued),
        ("memindex_miss", &misses, Answer::Unknown),
    ] {
        // Setup check, outside the measurement: the probes really hit (or miss).
        let (id, acct) = set[0];
        let q = Query {
            id,
            account: &accounts[acct],
            kid: "rs-1",
            issued_at: Some(SYNTHETIC_IAT),
        };
        assert_eq!(index.answer(&q), expect, "{case} probes are wrong");
        let mask = set.len() - 1;
        g.bench_function(BenchmarkId::new(case, label), |b| {
            let mut j = 0usize;
            b.iter(|| {
                let (id, acct) = set[j & mask];
                j = j.wrapping_add(1);
                let q = Query {
                    id,
                    account: &accounts[acct],
                    kid: "rs-1",
                    issued_at: Some(SYNTHETIC_IAT),
                };
                black_box(index.answer(black_box(&q)))
            });
        });
    }
    g.finish();
}

fn naive_answer(record: Option<&Record>, account: &str) -> Answer {
    match record {
        Some(r) if r.account == account => Answer::Issued,
        Some(_) => Answer::AccountMismatch,
        None => Answer::Unknown,
    }
}

fn bench_baselines(c: &mut Criterion, accounts: &[String]) {
    const N: usize = 1_000_000;
    let hits = probes(N, 7);
    let mut g = c.benchmark_group("ledger_lookup");

    let map: Mutex<HashMap<TokenId, Record>> = Mutex::new(
        (0..N)
            .map(|i| {
                let r = synthetic_record(i, accounts);
                (r.id, r)
            })
            .collect(),
    );
    g.bench_function(BenchmarkId::new("mutex_hashmap_hit", "1M"), |b| {
        let mut j = 0usize;
        b.iter(|| {
            let (id, acct) = hits[j & (PROBES - 1)];
            j = j.wrapping_add(1);
            let m = map.lock().unwrap_or_else(|p| p.into_inner());
            black_box(naive_answer(m.get(black_box(&id)), &accounts[acct]))
        });
    });
    drop(map);

    let map: DashMap<String, Record> = DashMap::new();
    for i in 0..N {
        let r = synthetic_record(i, accounts);
        map.insert(r.id.to_hex(), r);
    }
    let hex: Vec<(String, usize)> = hits.iter().map(|(id, a)| (id.to_hex(), *a)).collect();
    g.bench_function(BenchmarkId::new("dashmap_string_hit", "1M"), |b| {
        let mut j = 0usize;
        b.iter(|| {
            let (id, acct) = &hex[j & (PROBES - 1)];
            j = j.wrapping_add(1);
            let r = map.get(black_box(id.as_str()));
            black_box(naive_answer(r.as_deref(), &accounts[*acct]))
        });
    });
    g.finish();
}

fn bench_is_empty(c: &mut Criterion) {
    let here =
        (std::thread::available_parallelism().map_or(1, usize::from) * 4).next_power_of_two();
    let mut g = c.benchmark_group("dashmap_is_empty");
    for shards in [here, 256] {
        let map: DashMap<u64, u32> = DashMap::with_shard_amount(shards);
        g.bench_function(BenchmarkId::new("shards", shards), |b| {
            b.iter(|| black_box(black_box(&map).is_empty()));
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let accounts = account_pool();
    bench_is_empty(c);
    bench_memindex(c, 1_000_000, "1M", &accounts);
    bench_baselines(c, &accounts);
    bench_memindex(c, 10_000_000, "10M", &accounts);
}

criterion_group!(ledger_index, benches);
criterion_main!(ledger_index);
