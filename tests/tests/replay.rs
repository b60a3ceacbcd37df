//! Replay decides as the live warden: `warden simulate --live` drives a real warden (the
//! default rule pack) with legitimate users and scrapers from many loopback addresses and
//! logs each request with the time it was sent and the status warden answered; `warden
//! replay` then runs that log through the same rules and must give every request the
//! status the live warden gave it.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use warden_e2e::{kid, warden_bin, Upstream, Warden};

#[test]
fn replaying_live_traffic_gives_every_request_the_live_answer() {
    let pack = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/default.toml"),
    )
    .expect("default pack");
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start_with_rules(&up, &pack, "");
    let dir = w.dir.path();
    let sent = dir.join("sent.jsonl");
    let records = dir.join("records.jsonl");
    let out = Command::new(warden_bin())
        .args(["simulate", "--scenario", "small", "--kid", kid::HS])
        .args([
            "--live",
            &w.proxy.to_string(),
            "--admin",
            &w.admin.to_string(),
        ])
        .arg("--admin-token-file")
        .arg(dir.join("admin.token"))
        .args(["--concurrency", "1", "--log-out"])
        .arg(&sent)
        .arg("--records-out")
        .arg(&records)
        .output()
        .expect("run warden simulate");
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(&sent).expect("sent log");
    let statuses: Vec<u64> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["status"]
                .as_u64()
                .expect("status")
        })
        .collect();
    // The traffic exercised the proxy's paths: proxied, refused for provenance or by a
    // revocation (401), banned (403).
    for s in [200, 401, 403] {
        assert!(
            statuses.contains(&s),
            "no {s} among the live answers: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(!statuses.contains(&0), "a request failed");
    println!("{}", String::from_utf8_lossy(&out.stdout));

    let out = Command::new(warden_bin())
        .arg("replay")
        .arg("--rules")
        .arg(w.rules_path())
        .arg("--config")
        .arg(w.config_path())
        .arg("--records")
        .arg(&records)
        .arg("--log")
        .arg(&sent)
        .arg("--json")
        .output()
        .expect("run warden replay");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["bad_lines"], 0);
    assert_eq!(report["status_compared"], statuses.len() as u64);
    assert_eq!(
        report["status_mismatched"], 0,
        "replay disagrees with the live warden: {}",
        report["mismatches"]
    );
    let outcomes = &report["outcomes"];
    assert!(outcomes["refused:forged"].as_u64() > Some(0), "{outcomes}");
    assert!(outcomes["banned"].as_u64() > Some(0), "{outcomes}");
    let revoked = outcomes["revoked"].as_u64().unwrap_or(0)
        + outcomes["refused:revoked_token"].as_u64().unwrap_or(0);
    assert!(revoked > 0, "{outcomes}");
    // And the live warden revoked the same tokens in its ledger.
    assert!(w.metric("warden_decisions_total{action=\"revoke_token\"}") >= 1.0);
}
