//! One pass of the replay benchmark's `parse_and_decide_default_pack` (or one of its
//! parts), for instruction counts and sampling profiles, which criterion's repeated
//! runs make awkward:
//!
//! `valgrind --tool=callgrind target/release/replay_profile [parse|decide|both] [PASSES]`
//!
//! Setup (generating and signing the traffic) is counted too; compare runs of the same
//! mode, or subtract a run with `setup`.

use std::hint::black_box;

use warden_benches::replay::{default_pack, json_lines, records, replayer, traffic};
use warden_replay::format::{FieldMap, Format};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "both".into());
    let passes: usize = args.next().and_then(|p| p.parse().ok()).unwrap_or(1);
    let t = traffic();
    let json = json_lines(&t);
    let records = records(&t);
    let map = FieldMap::new(Format::JsonLines);
    let parsed: Vec<_> = json
        .iter()
        .map(|l| map.parse(l.as_bytes()).expect("sim lines parse"))
        .collect();
    let start = std::time::Instant::now();
    let mut n = 0u64;
    for _ in 0..passes {
        match mode.as_str() {
            "setup" => {}
            "parse" => {
                for l in &json {
                    let _ = black_box(map.parse(l.as_bytes()));
                    n += 1;
                }
            }
            "decide" => {
                let mut r = replayer(default_pack(), &records);
                for req in &parsed {
                    black_box(r.feed(req));
                    n += 1;
                }
                black_box(r);
            }
            _ => {
                let mut r = replayer(default_pack(), &records);
                for l in &json {
                    if let Ok(req) = map.parse(l.as_bytes()) {
                        black_box(r.feed(&req));
                    }
                    n += 1;
                }
                black_box(r);
            }
        }
    }
    let s = start.elapsed().as_secs_f64();
    eprintln!(
        "{mode}: {n} lines in {s:.3} s, {:.0} lines/s",
        n as f64 / s.max(1e-9)
    );
}
