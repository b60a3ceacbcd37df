//! Log replay per line: parsing alone (JSON lines, combined format), and the whole
//! decision (provenance with keys and ledger, the default rule pack, statistics), with and
//! without rules, on an hour of simulated traffic.
//!
//! `cargo bench -p warden-benches --bench replay`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use warden_benches::replay::{default_pack, json_lines, records, replayer, traffic};
use warden_replay::format::{FieldMap, Format};
use warden_replay::sim;

fn bench(c: &mut Criterion) {
    let t = traffic();
    let json = json_lines(&t);
    let mut buf = String::new();
    let combined: Vec<String> = t
        .events
        .iter()
        .map(|e| {
            sim::combined_line(e, &mut buf);
            buf.clone()
        })
        .collect();
    let records = records(&t);
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
                || replayer(rules.clone(), &records),
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
            || replayer(default_pack(), &records),
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
