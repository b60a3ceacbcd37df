//! Log replay per line: parsing alone (JSON lines, combined format), and the whole
//! decision (provenance with keys and ledger, the default rule pack, statistics), with and
//! without rules, on an hour of simulated traffic.
//!
//! `cargo bench -p warden-benches --bench replay`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use warden_core::keys::{KeyRegistry, KeyState};
use warden_core::ledger::{Record, TokenId};
use warden_core::verify::{Policy, Verifier};
use warden_replay::format::{FieldMap, Format};
use warden_replay::sim::{self, Scenario};
use warden_replay::{Provenance, Replayer, Setup};
use warden_rules::Rule;

fn default_pack() -> Vec<Rule> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/default.toml");
    let (rules, diags) = warden_config::rules::load_rule_file(&path);
    assert!(diags.is_empty(), "{diags:?}");
    rules.into_iter().map(|l| l.rule).collect()
}

/// An hour of the report's scenario: people, the forging scraper, the stolen-token one.
fn traffic() -> sim::Traffic {
    let s = Scenario {
        duration_s: 3600,
        sessions: 5_000,
        forged_window: (600, 600),
        stolen_window: (1800, 600),
        ..Scenario::report()
    };
    sim::generate(&s).expect("generate")
}

fn replayer(rules: Vec<Rule>, records: &Arc<Vec<Record>>, kid: &str) -> Replayer {
    let registry = KeyRegistry::build(vec![
        warden_core::fixtures::SampleKey::Hs.spec(kid, KeyState::Active)
    ])
    .expect("keys");
    Replayer::new(Setup {
        rules,
        max_state_bytes: 256 << 20,
        max_bans: 1_000_000,
        routes: None,
        provenance: Provenance::Checked {
            verifier: Arc::new(Verifier::new(registry, Policy::default())),
        },
        log_has_tokens: true,
        records: Arc::clone(records),
        header_names: Vec::new(),
    })
}

fn bench(c: &mut Criterion) {
    let t = traffic();
    let kid = Scenario::report().kid;
    let mut buf = String::new();
    let json: Vec<String> = t
        .events
        .iter()
        .map(|e| {
            sim::json_line(e, &mut buf);
            buf.clone()
        })
        .collect();
    let combined: Vec<String> = t
        .events
        .iter()
        .map(|e| {
            sim::combined_line(e, &mut buf);
            buf.clone()
        })
        .collect();
    let records: Arc<Vec<Record>> = Arc::new(
        t.issued
            .iter()
            .map(|r| Record {
                id: TokenId::from_jti(&r.jti),
                account: r.account.clone(),
                issued_at: r.issued_at,
                expires_at: r.expires_at,
                kid: kid.clone(),
            })
            .collect(),
    );
    let n = json.len() as u64;
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);

    let map = FieldMap::new(Format::JsonLines);
    g.bench_function("parse_json_lines", |b| {
        b.iter(|| {
            for l in &json {
                let _ = black_box(map.parse(l.as_bytes()));
            }
        })
    });
    let mut cmap = FieldMap::new(Format::Combined);
    cmap.apply("token=extra1").expect("map");
    cmap.apply("label=extra2").expect("map");
    g.bench_function("parse_combined", |b| {
        b.iter(|| {
            for l in &combined {
                let _ = black_box(cmap.parse(l.as_bytes()));
            }
        })
    });
    let parsed: Vec<_> = json
        .iter()
        .map(|l| map.parse(l.as_bytes()).expect("sim lines parse"))
        .collect();
    for (name, rules) in [
        ("decide_default_pack", default_pack()),
        ("decide_no_rules", Vec::new()),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || replayer(rules.clone(), &records, &kid),
                |mut r| {
                    for req in &parsed {
                        black_box(r.feed(req));
                    }
                    r
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.bench_function("parse_and_decide_default_pack", |b| {
        b.iter_batched(
            || replayer(default_pack(), &records, &kid),
            |mut r| {
                for l in &json {
                    if let Ok(req) = map.parse(l.as_bytes()) {
                        black_box(r.feed(&req));
                    }
                }
                r
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
