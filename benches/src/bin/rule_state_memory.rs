//! Bytes of behaviour state per tracked key, at 1 M keys (the target: ≤ 128 bytes
//! while sets are small).
//!
//! `cargo run --release -p warden-benches --bin rule_state_memory [KEYS]`
//!
//! Two rules of the default pack's shape — distinct accounts per address, requests per
//! address — fed KEYS addresses with three accounts each. The two rules share a key, so
//! each address has one entry with two slots (see `crates/warden-detect/src/state.rs`). Prints the engine's own
//! accounting (table capacity × slot size + heap of large sets) and the process RSS.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use warden_detect::{Engine, Facts, Nothing};
use warden_rules::{Action, Field, Match, Measure, Mode, RouteClass, Rule, Scope};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn rule(name: &str, measure: Measure) -> Rule {
    Rule {
        name: name.into(),
        description: String::new(),
        matcher: Match::default(),
        key: vec![Field::Ip],
        measure,
        window: Duration::from_secs(3600),
        threshold: 1_000_000,
        action: Action::Log,
        mode: Mode::Enforce,
        priority: 0,
        scope: Scope::Local,
    }
}

fn main() {
    let keys: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kib();
    let e = Engine::new(usize::MAX, 1000);
    e.set_rules(
        vec![
            rule("accounts-per-ip", Measure::Distinct(Field::Account)),
            rule("rate-per-ip", Measure::Count),
        ],
        usize::MAX,
    );
    let now = 1_800_000_000_000;
    for i in 0..keys {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        for a in ["a", "b", "c"] {
            let _ = e.evaluate(&Facts {
                now_ms: now,
                class: RouteClass::Protected,
                route: None,
                method: "GET",
                path: "/account/x",
                ip,
                account: Some(a),
                token: None,
                headers: &Nothing,
                claims: &Nothing,
            });
        }
    }
    // Both rules key on the address, so they share one entry per address: a tracked key
    // here is one (rule, address) pair, the unit the issue's ≤ 128 bytes is about.
    let entries = e.tracked_keys();
    let tracked = 2 * entries;
    let bytes = e.state_bytes();
    let rss = rss_kib().saturating_sub(before) * 1024;
    println!("addresses                 {keys}");
    println!("entries (one per address) {entries}");
    println!("tracked keys (2 rules)    {tracked}");
    println!("state bytes (accounted)   {bytes}");
    println!(
        "bytes per tracked key     {:.1}",
        bytes as f64 / tracked as f64
    );
    println!(
        "bytes per address         {:.1}  (both rules)",
        bytes as f64 / f64::from(keys)
    );
    println!(
        "RSS growth                {rss}  ({:.1} per tracked key)",
        rss as f64 / tracked as f64
    );
}
