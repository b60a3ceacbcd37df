//! The behaviour engine per request, with the default rule pack, against naive baselines.
//!
//! `cargo bench -p warden-benches --bench rules` (`-- snapshot` for the state snapshot
//! alone)

use std::collections::{HashMap, HashSet, VecDeque};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dashmap::DashMap;
use warden_core::ledger::TokenId;
use warden_detect::window::SlidingCount;
use warden_detect::{Engine, Facts, Nothing};
use warden_rules::{RouteClass, Rule};

const T0: u64 = 1_800_000_000_000;

fn default_pack() -> Vec<Rule> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/default.toml");
    let (rules, diags) = warden_config::rules::load_rule_file(&path);
    assert!(diags.is_empty(), "{diags:?}");
    rules.into_iter().map(|l| l.rule).collect()
}

#[derive(Clone)]
struct User {
    ip: IpAddr,
    account: String,
    token: TokenId,
}

fn users(n: u32) -> Vec<User> {
    (0..n)
        .map(|i| User {
            // Spread over 10.0.0.0/8 (an odd multiplier is a bijection mod 2^24): a few
            // users per /24, as on the Internet, not 256 tripping the network rule.
            ip: IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000 | (i.wrapping_mul(2_654_435_761) & 0x00ff_ffff),
            )),
            account: format!("user-{i}"),
            token: TokenId::from_jti(&format!("jti-{i}")),
        })
        .collect()
}

/// The benches time legitimate traffic: a user that fired a rule would time the firing
/// path instead, so the bench fails.
fn assert_legitimate(v: &warden_detect::Verdict) {
    assert!(
        v.hits.is_empty(),
        "legitimate users fired rules: {:?}",
        v.hits
    );
}

fn facts<'a>(u: &'a User, path: &'a str, now_ms: u64) -> Facts<'a> {
    Facts {
        now_ms,
        class: RouteClass::Protected,
        route: Some("account"),
        method: "GET",
        path,
        ip: u.ip,
        account: Some(&u.account),
        token: Some(&u.token),
        headers: &Nothing,
        claims: &Nothing,
    }
}

fn engine(c: &mut Criterion) {
    let pack = default_pack();
    let mut g = c.benchmark_group("rules/default_pack");
    // Users browsing: every request goes through all matching rules of the pack.
    // `hot`: 1 000 users, their state stays in the CPU caches; `cold`: 200 000 users,
    // most lookups miss the caches, as with a large user base in production.
    // The clock advances so that each user sends one request per 500 s, whatever the
    // number of iterations criterion runs: legitimate users stay under every threshold
    // (the firing path is `scraper_request_banned`).
    let e = Engine::new(1 << 30, 1_000_000);
    e.set_rules(pack.clone(), 1 << 30);
    let pages = ["/account/addresses", "/account/orders", "/account/profile"];
    let mut now = T0;
    for (label, n) in [("hot", 1_000u32), ("cold", 200_000)] {
        let us = users(n);
        for u in &us {
            let _ = e.evaluate(&facts(u, pages[0], now));
        }
        let mut i = 0usize;
        let step_ms = 500_000 / u64::from(n);
        // The request itself (address, account, token id) is prepared outside the timed
        // part, as the proxy has it in cache from parsing the request and checking the
        // token; only the engine's own state is cold.
        g.bench_function(format!("legit_request_{}_rules_{label}", pack.len()), |b| {
            b.iter_batched_ref(
                || {
                    i = i.wrapping_add(7919) % us.len();
                    now += step_ms;
                    (us[i].clone(), pages[i % 3], now)
                },
                |(u, page, now)| black_box(e.evaluate(&facts(u, page, *now))),
                BatchSize::SmallInput,
            )
        });
        let v = e.evaluate(&facts(&us[i], pages[i % 3], now + step_ms));
        assert_legitimate(&v);
    }
    // A scraper: one address, a new account every request (the rules fire and ban).
    let scraper = users(1);
    let mut n = 0u64;
    g.bench_function("scraper_request_banned", |b| {
        b.iter(|| {
            n += 1;
            let account = format!("victim-{}", n % 50_000);
            let f = Facts {
                account: Some(&account),
                ..facts(&scraper[0], "/account/addresses", now)
            };
            black_box(e.evaluate(&f))
        })
    });
    g.finish();
}

/// Each rule of the default pack alone, with 200 000 users in random order (state cold, as
/// in `legit_request_*_cold`): what one rule of each kind costs. The kinds in the pack:
/// request counts keyed on the address, the account or the token, over minutes or a day;
/// distinct counts (accounts per address or per network, addresses or networks per token,
/// addresses per account) over minutes, a day or a week; path-restricted counts; and the
/// login-route count (issuance class). Each request matches the rule's route class and
/// paths, so the rule's counter or set is updated, not only its matcher run.
fn per_rule(c: &mut Criterion) {
    fn field_name(f: &warden_rules::Field) -> String {
        format!("{f:?}")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_lowercase()
    }
    let pack = default_pack();
    let mut g = c.benchmark_group("rules/each_rule_cold");
    let us = users(200_000);
    for rule in pack {
        let class = rule
            .matcher
            .classes
            .first()
            .copied()
            .unwrap_or(RouteClass::Protected);
        let path = match rule.matcher.paths.first() {
            Some(warden_rules::PathPattern::Exact(p) | warden_rules::PathPattern::Prefix(p)) => {
                p.clone()
            }
            None => "/account/profile".to_string(),
        };
        let label = format!(
            "{}:{}_by_{}",
            rule.name,
            match &rule.measure {
                warden_rules::Measure::Count => "count".to_string(),
                warden_rules::Measure::Distinct(f) => format!("distinct_{}", field_name(f)),
            },
            rule.key
                .iter()
                .map(field_name)
                .collect::<Vec<_>>()
                .join("+")
        );
        let e = Engine::new(1 << 30, 1_000_000);
        e.set_rules(vec![rule], 1 << 30);
        let mut now = T0;
        let step_ms = 500_000 / 200_000;
        fn at<'a>(u: &'a User, path: &'a str, class: RouteClass, now: u64) -> Facts<'a> {
            Facts {
                class,
                ..facts(u, path, now)
            }
        }
        for u in &us {
            let _ = e.evaluate(&at(u, &path, class, now));
        }
        let mut i = 0usize;
        g.bench_function(label, |b| {
            b.iter_batched_ref(
                || {
                    i = i.wrapping_add(7919) % us.len();
                    now += step_ms;
                    (us[i].clone(), now)
                },
                |(u, now)| black_box(e.evaluate(&at(u, &path, class, *now))),
                BatchSize::SmallInput,
            )
        });
        let v = e.evaluate(&at(&us[i], &path, class, now + step_ms));
        assert_legitimate(&v);
    }
    g.finish();
}

fn baselines(c: &mut Criterion) {
    let mut g = c.benchmark_group("rules/window");
    const KEYS: u64 = 100_000;
    let window = 60_000;
    let sliding: DashMap<u64, SlidingCount> = DashMap::new();
    let exact: Mutex<HashMap<u64, VecDeque<u64>>> = Mutex::new(HashMap::new());
    let mut k = 0u64;
    let mut now = T0;
    g.bench_function("sliding_count_dashmap", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            now += 1;
            black_box(sliding.entry(k).or_default().add(now, window))
        })
    });
    g.bench_function("naive_exact_log_mutex_hashmap", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            now += 1;
            let mut m = exact.lock().expect("lock");
            let q = m.entry(k).or_default();
            q.push_back(now);
            while q.front().is_some_and(|t| *t + window <= now) {
                q.pop_front();
            }
            black_box(q.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rules/distinct");
    let sets: DashMap<u64, warden_detect::distinct::DistinctSet> = DashMap::new();
    let naive: Mutex<HashMap<u64, HashSet<u32>>> = Mutex::new(HashMap::new());
    let mut v = 0u32;
    g.bench_function("distinct_set_dashmap_3_values", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            v = v.wrapping_add(1);
            now += 1;
            black_box(sets.entry(k).or_default().insert(v % 3, now, 3_600_000))
        })
    });
    g.bench_function("naive_hashset_mutex_hashmap_3_values", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            v = v.wrapping_add(1);
            let mut m = naive.lock().expect("lock");
            let s = m.entry(k).or_default();
            s.insert(v % 3);
            black_box(s.len())
        })
    });
    g.finish();
}

/// The state snapshot of the default pack with 200 000 users who each made one request
/// (every key of every group tracked): writing it (the walk over the tables and the
/// encoding, no file), and restoring it into a fresh engine. The size is printed.
fn snapshot(c: &mut Criterion) {
    let rules = default_pack();
    let engine = Engine::new(1 << 30, 100_000);
    engine.set_rules(rules.clone(), 1 << 30);
    let people = users(200_000);
    for (i, u) in people.iter().enumerate() {
        let _ = engine.evaluate(&facts(u, "/account/orders", T0 + i as u64));
    }
    let now = T0 + people.len() as u64;
    let bytes = engine.snapshot(now);
    eprintln!(
        "snapshot of {} tracked keys ({} bytes of state): {} bytes, {:.1} bytes a key",
        engine.tracked_keys(),
        engine.state_bytes(),
        bytes.len(),
        bytes.len() as f64 / engine.tracked_keys() as f64
    );
    let mut g = c.benchmark_group("rules/snapshot_200k_users");
    g.sample_size(10);
    g.bench_function("write", |b| {
        b.iter(|| black_box(engine.snapshot(now).len()))
    });
    g.bench_function("restore", |b| {
        b.iter_batched(
            || {
                let e = Engine::new(1 << 30, 100_000);
                e.set_rules(rules.clone(), 1 << 30);
                e
            },
            |e| black_box(e.restore(&bytes, now).map(|r| r.slots)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, engine, per_rule, baselines, snapshot);
criterion_main!(benches);
