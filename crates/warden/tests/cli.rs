//! The `warden` command line, run as a process. (This file also makes `cargo test` build
//! the `warden` binary that the end-to-end suite in `tests/` drives.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn warden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warden"))
}

/// The repository's default rule pack.
fn default_pack() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rules/default.toml")
}

/// `warden simulate --scenario small` with `args`, writing into `out`.
fn simulate_small(out: &Path, args: &[&str]) {
    succeeds(
        warden()
            .args(["simulate", "--scenario", "small"])
            .args(args)
            .arg("--out")
            .arg(out),
        "run warden simulate",
    );
}

/// Runs a command that must succeed (its standard error shown if it does not).
fn succeeds(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn check_reports_every_error_with_its_place_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\npeers = [\"nowhere\"]\n\n[token]\nleeway = \"soon\"\n\n[[routes]]\nname = \"a\"\nclass = \"guarded\"\npaths = [\"/a\"]\n",
    )
    .expect("write");
    let out = warden()
        .arg("check")
        .arg(&path)
        .output()
        .expect("run warden check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    for want in [
        format!("{p}:2:10: error: upstream.peers: \"nowhere\" is not an address"),
        format!("{p}:5:10: error: token.leeway = \"soon\" is not a duration"),
        format!("{p}:9:9: error: routes.class = \"guarded\" is not one of"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 errors"));
}

#[test]
fn check_accepts_a_good_file_and_run_refuses_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[upstream]\npeers = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"a\"\nclass = \"protected\"\npaths = [\"/a/*\"]\n")
        .expect("write");
    succeeds(warden().arg("check").arg(&good), "run");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[upstream]\npeers = 5\n").expect("write");
    let out = warden()
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":2:9: error:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_refuses_an_upstream_name_that_does_not_resolve_before_taking_any_socket() {
    // `.invalid` never resolves (RFC 6761). `warden check` accepts the name (it makes no
    // DNS query); `warden run` names it and exits before binding the listener.
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listen.local_addr().expect("addr").port();
    drop(listen);
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n[upstream]\npeers = [\"web.no-such-host.invalid:8080\"]\n[[routes]]\nname = \"a\"\nclass = \"protected\"\npaths = [\"/a/*\"]\n"),
    )
    .expect("write");
    succeeds(warden().arg("check").arg(&config), "run");
    let out = warden()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warden: upstream.peers: cannot resolve web.no-such-host.invalid:8080"),
        "{stderr}"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the listener is still bound"
    );
}

#[test]
fn a_missing_config_is_a_clear_error() {
    let out = warden()
        .args(["check", "/nonexistent/warden.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/warden.toml:1:1: error: cannot read the file"));
}

#[test]
fn the_reference_configuration_is_valid_and_warns_of_nothing() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/warden.toml");
    let out = succeeds(warden().args(["check", path]), "run");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (0 warnings)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_default_rule_pack_checks_clean_and_a_bad_rule_file_is_reported() {
    let out = succeeds(warden().arg("check").arg(default_pack()), "run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (0 warnings)"));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("rules.toml");
    std::fs::write(&bad, "[[rules]]\nname = \"r\"\nkey = [\"ip\"]\nwindow = \"1h\"\nthreshold = 3\naction = \"ban\"\n").expect("write");
    let out = warden().arg("check").arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:6:10: error: rule \"r\": action = \"ban\" needs ban_for",
            bad.display()
        )),
        "{stderr}"
    );
}

#[test]
fn ledger_import_records_good_lines_and_reports_bad_ones_by_line() {
    use warden_core::fixtures::{mint, SampleKey, RS256_A_PUB};
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.pub"), RS256_A_PUB).expect("write key");
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        "[upstream]\npeers = [\"127.0.0.1:9\"]\n[[keys]]\nkid = \"k\"\nalg = \"RS256\"\npem_file = \"a.pub\"\n[ledger]\npath = \"ledger.redb\"\n[[routes]]\nname = \"a\"\nclass = \"protected\"\npaths = [\"/a/*\"]\n",
    )
    .expect("write config");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let tok = mint(
        SampleKey::RsA,
        "k",
        &serde_json::json!({"sub": "alice", "jti": "imp-1", "iat": now, "exp": now + 600}),
    )
    .expect("mint");
    let lines = [
        serde_json::json!({"token": tok}).to_string(),
        String::new(),
        serde_json::json!({"jti": "imp-2", "account": "bob", "issued_at": now, "expires_at": now + 600, "kid": "k"}).to_string(),
        "{not json".to_owned(),
        serde_json::json!({"jti": "imp-3", "account": "carol"}).to_string(),
    ];
    let file = dir.path().join("issued.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write jsonl");
    // bob's token is revoked by its jti before the batch brings its record.
    let out = warden()
        .args(["ledger", "revoke", "--jti", "imp-2", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("no record of this token yet: the revocation waits for it"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = warden()
        .args(["ledger", "import", "--config"])
        .arg(&config)
        .arg(&file)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 2 records, 2 lines refused"));
    let f = file.display();
    assert!(
        stderr.contains(&format!("{f}:4: not a ledger record")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{f}:5: not a ledger record: missing field \"issued_at\""
        )),
        "{stderr}"
    );
    let out = warden()
        .args(["ledger", "stats", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    // The import took the waiting revocation (it stored bob's record revoked).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "entries 2\npending_revocations 0"
    );
    succeeds(
        warden()
            .args(["ledger", "revoke", "--account", "bob", "--config"])
            .arg(&config),
        "run",
    );
}

#[test]
fn simulate_writes_what_check_ledger_import_and_replay_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = dir.path().join("sim");
    simulate_small(&sim, &["--format", "combined"]);
    let conf = sim.join("warden.toml");
    succeeds(warden().arg("check").arg(&conf), "check");
    // The records are in the format `warden ledger import` reads.
    let records = sim.join("records.jsonl");
    let n = std::fs::read_to_string(&records)
        .expect("records")
        .lines()
        .count();
    succeeds(
        warden()
            .args(["ledger", "import", "--config"])
            .arg(&conf)
            .arg(&records),
        "ledger import",
    );
    let out = warden()
        .args(["ledger", "stats", "--config"])
        .arg(&conf)
        .output()
        .expect("ledger stats");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("entries {n}\npending_revocations 0")
    );

    // Replay with a diff against an empty rule file, an HTML report, and a bad line.
    let log = sim.join("access.log");
    let mut text = std::fs::read_to_string(&log).expect("log");
    text.push_str("this is not a log line\n");
    std::fs::write(&log, text).expect("append");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").expect("write");
    let pack = default_pack();
    let html = dir.path().join("report.html");
    let out = succeeds(
        warden()
            .args([
                "replay",
                "--format",
                "combined",
                "--field",
                "token=extra1",
                "--field",
                "label=extra2",
            ])
            .arg("--rules")
            .arg(&empty)
            .arg("--diff")
            .arg(&pack)
            .arg("--config")
            .arg(&conf)
            .arg("--records")
            .arg(&records)
            .arg("--log")
            .arg(&log)
            .arg("--html")
            .arg(&html)
            .arg("--json"),
        "run warden replay",
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON diff");
    assert_eq!(d["before"]["bad_lines"], 1);
    assert_eq!(
        d["before"]["bad"][0]["error"]
            .as_str()
            .map(|e| e.starts_with("not in the combined format")),
        Some(true)
    );
    // Without rules nothing but provenance refuses; the pack adds bans and revocations.
    let changed = d["changed"].as_u64().expect("changed");
    assert!(changed > 0, "{d}");
    assert_eq!(d["before"]["outcomes"]["banned"], serde_json::Value::Null);
    assert!(d["after"]["outcomes"]["banned"].as_u64() > Some(0));
    assert!(d["transitions"]["passed -> banned"].as_u64() > Some(0));
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));

    // A bad mapping is refused before anything is read.
    let out = warden()
        .args(["replay", "--field", "client=ip", "--rules"])
        .arg(&empty)
        .arg("--log")
        .arg(&log)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target \"client\""));
}

/// `warden replay --records` with records in token form: each token is verified at its
/// own issue time, so records of tokens that expired years ago load, and the replay is
/// the one the same records in facts form give. (Checked at the clock's time, every one
/// of them would be refused as expired, and every logged token count as forged.)
#[test]
fn replay_reads_token_records_at_their_issue_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = dir.path().join("sim");
    // 2001: long expired.
    simulate_small(&sim, &["--start", "1000000000"]);
    let log = sim.join("access.jsonl");
    let mut tokens: Vec<String> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        // Every token the simulator's login issued: all but the forger's.
        .filter(|v| v["label"] != "forged")
        .filter_map(|v| v["token"].as_str().map(str::to_owned))
        .collect();
    tokens.sort();
    tokens.dedup();
    assert!(tokens.len() > 10, "{}", tokens.len());
    let facts = sim.join("records.jsonl");
    let as_tokens = dir.path().join("token-records.jsonl");
    let lines: Vec<String> = tokens
        .iter()
        .map(|t| serde_json::json!({ "token": t }).to_string())
        .collect();
    std::fs::write(&as_tokens, lines.join("\n") + "\n").expect("write");
    let pack = default_pack();
    let replay = |records: &Path| {
        let out = succeeds(
            warden()
                .arg("replay")
                .arg("--rules")
                .arg(&pack)
                .arg("--config")
                .arg(sim.join("warden.toml"))
                .arg("--records")
                .arg(records)
                .arg("--log")
                .arg(&log)
                .arg("--json"),
            "run warden replay",
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        (report, stderr)
    };
    let (by_facts, _) = replay(&facts);
    let (by_tokens, stderr) = replay(&as_tokens);
    assert!(!stderr.contains("refused"), "{stderr}");
    assert_eq!(by_tokens["outcomes"], by_facts["outcomes"]);
    assert_eq!(by_tokens["labels"], by_facts["labels"]);
    // Legitimate requests passed: their tokens were found in the ledger.
    assert!(
        by_tokens["outcomes"]["passed"].as_u64() > Some(0),
        "{by_tokens}"
    );
}

#[test]
fn check_validates_fleet_mode_and_says_which_rules_stay_node_local() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("fleet.key"), "0123456789abcdef0123456789").expect("key");
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rules]]\nname = \"ips\"\nkey = [\"ip\"]\nwindow = \"1m\"\nthreshold = 100\naction = \"block\"\nscope = \"fleet\"\n\n[[rules]]\nname = \"accounts\"\nclasses = [\"protected\"]\nkey = [\"ip\"]\nmeasure = \"distinct\"\ndistinct = \"account\"\nwindow = \"1h\"\nthreshold = 50\naction = \"block\"\nscope = \"fleet\"\n",
    )
    .expect("rules");
    let conf = dir.path().join("warden.toml");
    let base = "[upstream]\npeers = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"a\"\nclass = \"protected\"\npaths = [\"/a/*\"]\n[rules]\nfiles = [\"rules.toml\"]\n";
    std::fs::write(
        &conf,
        format!("{base}[fleet]\nredis_url = \"redis://127.0.0.1:6379/0\"\nnode = \"n1\"\nkey_file = \"fleet.key\"\n"),
    )
    .expect("config");
    let out = warden().arg("check").arg(&conf).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The distinct rule stays node-local, and check says so; the count rule does not warn.
    assert!(
        stderr.contains(
            "rules.toml:18:9: warning: rule \"accounts\": scope = \"fleet\" on a distinct rule"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("rule \"ips\""), "{stderr}");

    // Without [fleet], a fleet-scope rule counts on this node only: a warning.
    std::fs::write(&conf, base).expect("config");
    let out = warden().arg("check").arg(&conf).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rule \"ips\" has scope = \"fleet\" but there is no [fleet] section"),
        "{stderr}"
    );

    // A broken [fleet] section: every error, with its place, and run refuses it too.
    std::fs::write(
        &conf,
        format!("{base}[fleet]\nredis_url = \"http://127.0.0.1:6379\"\nkey_file = \"missing.key\"\nnode = \"n1\"\n"),
    )
    .expect("config");
    let out = warden().arg("check").arg(&conf).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            ":10:13: error: fleet.redis_url = \"http://127.0.0.1:6379\" is not a Redis URL"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(":11:12: error: fleet.key_file: cannot read"),
        "{stderr}"
    );
}
