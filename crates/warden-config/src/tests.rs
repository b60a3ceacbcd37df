use super::*;

fn ok(src: &str) -> Loaded {
    compile_str(Path::new("w.toml"), src).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn errs(src: &str) -> Vec<String> {
    match compile_str(Path::new("w.toml"), src) {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => e
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect(),
    }
}

const MIN: &str = "[upstream]\npeers = [\"127.0.0.1:8081\"]\n";

#[test]
fn minimal_config_has_safe_defaults() {
    let l = ok(MIN);
    let c = l.config;
    assert_eq!(
        c.server.listen,
        vec!["127.0.0.1:8080".parse().expect("addr")]
    );
    assert!(c.admin.listen.ip().is_loopback());
    assert_eq!(c.token.header.as_deref(), Some("authorization"));
    assert_eq!(c.routes.default_class, RouteClass::Open);
    assert_eq!(c.ledger.timeout, Duration::from_millis(50));
    assert_eq!(
        c.ledger.pending_revocation_ttl,
        Duration::from_secs(7 * 86_400)
    );
    assert_eq!(
        c.ledger.max_pending_revocations,
        warden_core::ledger::DEFAULT_MAX_PENDING
    );
    // No protected route and no keys: both warned about.
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
}

#[test]
fn header_names_and_the_host_value_are_checked_when_the_file_is_read() {
    let l = ok(&format!(
        "{MIN}[rules]\ntag_header = \"X-Bot-Score\"\n[token]\nheader = \"X-Session\"\n"
    ));
    assert_eq!(l.config.rules.tag_header, "x-bot-score");
    assert_eq!(l.config.token.header.as_deref(), Some("x-session"));
    // All three bad values reported at once, each at its place.
    let e = errs(
        "[upstream]\npeers = [\"127.0.0.1:8081\"]\nhost_header = \"a\\r\\nb\"\n\
         [rules]\ntag_header = \"x tag\"\n[token]\nheader = \"auth:\"\n",
    );
    for want in [
        "w.toml:3:15: error: upstream.host_header: \"a\\r\\nb\" is not a host header value",
        "w.toml:5:14: error: rules.tag_header: \"x tag\" is not a header name",
        "w.toml:7:10: error: token.header: \"auth:\" is not a header name",
    ] {
        assert!(e.iter().any(|m| m.contains(want)), "{want}\n{e:?}");
    }
}

#[test]
fn events_repeat_interval_defaults_to_a_minute_and_zero_turns_it_off() {
    assert_eq!(
        ok(MIN).config.events.repeat_interval,
        Duration::from_secs(60)
    );
    let l = ok(&format!("{MIN}[events]\nrepeat_interval = \"0s\"\n"));
    assert_eq!(l.config.events.repeat_interval, Duration::ZERO);
    let e = errs(&format!("{MIN}[events]\nrepeat_interval = \"often\"\n"));
    assert!(
        e.iter()
            .any(|m| m.contains("w.toml:4:19: error: events.repeat_interval")),
        "{e:?}"
    );
}

#[test]
fn upstream_peers_are_addresses_or_host_names_with_a_port() {
    let good = [
        "127.0.0.1:8081",
        "[::1]:8081",
        "localhost:8081",
        "web.default.svc.cluster.local:80",
        "web-1.internal.:8080",
    ];
    for p in good {
        let l = ok(&format!("[upstream]\npeers = [\"{p}\"]\n"));
        assert_eq!(l.config.upstream.peers, [p]);
    }
    for p in [
        "web.internal",      // no port
        "web.internal:0",    // port 0
        "web.internal:http", // a service name, not a number
        "10.0.0:80",         // a mistyped address, not a name
        "-web.internal:80",
        "web_1.internal:80",
        "web..internal:80",
        ":80",
        "[::1:80",
    ] {
        let e = errs(&format!("[upstream]\npeers = [\"{p}\"]\n"));
        assert!(
            e.iter()
                .any(|m| m.contains(&format!("upstream.peers: {p:?} is not an address"))),
            "{p}: {e:?}"
        );
    }
}

#[test]
fn every_error_is_reported_at_once_with_its_place() {
    let src = r#"[upstream]
peers = ["127.0.0.1:8081", "not-an-address"]
connect_timeout = "fast"

[token]
leeway = 30

[[keys]]
kid = "k1"
alg = "RS999"
pem = "x"

[[routes]]
name = "account"
class = "protectd"
paths = ["account/*"]

[[routes]]
name = "login"
class = "issuance"
paths = ["/login"]

[bogus]
x = 1
"#;
    let e = errs(src);
    let expect = [
        "w.toml:2:28: error: upstream.peers: \"not-an-address\" is not an address",
        "w.toml:3:19: error: upstream.connect_timeout = \"fast\" is not a duration",
        "w.toml:6:10: error:", // leeway is an integer where a string was expected
        "w.toml:10:7: error: key \"k1\": alg \"RS999\" is not supported",
        "w.toml:15:9: error: routes.class = \"protectd\" is not one of: protected, issuance, open",
        "w.toml:16:10: error: path \"account/*\" must start with '/'",
        "w.toml:20:9: error: issuance route \"login\" needs token_json_field or token_cookie",
        "w.toml:23:2: error: unknown section `bogus`",
    ];
    for want in expect {
        assert!(
            e.iter().any(|got| got.starts_with(want)),
            "missing {want:?} in\n{}",
            e.join("\n")
        );
    }
    assert_eq!(e.len(), expect.len(), "{}", e.join("\n"));
}

#[test]
fn waiting_revocation_limits_are_read_and_checked() {
    let l = ok(&format!(
        "{MIN}[ledger]\npending_revocation_ttl = \"1d\"\nmax_pending_revocations = 5\n"
    ));
    assert_eq!(
        l.config.ledger.pending_revocation_ttl,
        Duration::from_secs(86_400)
    );
    assert_eq!(l.config.ledger.max_pending_revocations, 5);
    let e = errs(&format!(
        "{MIN}[ledger]\npending_revocation_ttl = \"a week\"\nmax_pending_revocations = -1\n"
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("w.toml:4:26:") && e[0].contains("a week"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("w.toml:5:27:")
            && e[1].contains("ledger.max_pending_revocations = -1 is out of range"),
        "{e:?}"
    );
}

#[test]
fn syntax_errors_are_all_reported() {
    let e = errs("[upstream\npeers = [\"127.0.0.1:1\"]\n[token]\nleeway = \"1s\n");
    assert!(e.len() >= 2, "{e:?}");
    assert!(e[0].starts_with("w.toml:1:"), "{e:?}");
}

#[test]
fn unknown_fields_are_refused() {
    let e = errs("[upstream]\npeers = [\"127.0.0.1:1\"]\npeer = 3\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("w.toml:3:1: error: unknown field `peer`"),
        "{e:?}"
    );
}

#[test]
fn missing_upstream_is_an_error() {
    let e = errs("[token]\nleeway = \"1s\"\n");
    assert!(e[0].contains("upstream.peers is required"), "{e:?}");
}

#[test]
fn keys_are_read_relative_to_the_config_and_lifecycle_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.pub"), warden_core::fixtures::RS256_A_PUB).expect("write");
    std::fs::write(
        dir.path().join("jwks.json"),
        warden_core::fixtures::jwks_rs256("j1"),
    )
    .expect("write");
    let src = format!(
        r#"{MIN}
[[keys]]
kid = "a"
alg = "RS256"
pem_file = "a.pub"
status = "retired"
retired_at = "2025-06-01T00:00:00Z"

[[keys]]
kid = "j1"
status = "revoked"

[jwks]
files = ["jwks.json"]
"#
    );
    let path = dir.path().join("warden.toml");
    std::fs::write(&path, src).expect("write");
    let l = load(&path).unwrap_or_else(|e| panic!("{e:?}"));
    let keys = l.config.keys;
    assert_eq!(keys.len(), 2);
    let a = keys.iter().find(|k| k.kid == "a").expect("a");
    assert_eq!(a.state, KeyState::Retired { at: 1_748_736_000 });
    let j = keys.iter().find(|k| k.kid == "j1").expect("j1");
    assert_eq!(j.state, KeyState::Revoked);
}

#[test]
fn key_problems_point_at_the_key() {
    let src = format!(
        "{MIN}[[keys]]\nkid = \"a\"\nalg = \"RS256\"\npem = \"garbage\"\n\n[[keys]]\nkid = \"b\"\nalg = \"RS256\"\npem_file = \"/nonexistent/b.pub\"\n\n[[keys]]\nkid = \"c\"\nstatus = \"retired\"\n"
    );
    let e = errs(&src);
    // Key c is both retired without a time and without material: two errors.
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with("w.toml:4:7: error: key \"a\": cannot read PEM"),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("cannot read pem_file /nonexistent/b.pub")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("key \"c\" is retired but has no retired_at")),
        "{e:?}"
    );
}

#[test]
fn routes_compile_and_shadowing_is_warned() {
    let src = format!(
        r#"{MIN}
[[routes]]
name = "all-account"
class = "protected"
paths = ["/account/*"]

[[routes]]
name = "addresses"
class = "protected"
paths = ["/account/addresses"]

[[routes]]
name = "login"
class = "issuance"
paths = ["/login"]
methods = ["post"]
token_json_field = "data.access_token"
"#
    );
    let l = ok(&src);
    let r = &l.config.routes.list;
    assert_eq!(r[0].on_backend_failure, FailMode::Closed);
    assert_eq!(r[2].on_backend_failure, FailMode::Open);
    assert_eq!(r[2].methods, vec!["POST".to_owned()]);
    assert_eq!(
        r[2].capture,
        Some(Capture::JsonField(vec![
            "data".into(),
            "access_token".into()
        ]))
    );
    assert!(r[0].paths[0].matches("/account/orders"));
    assert!(!r[0].paths[0].matches("/accounts"));
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings); // shadowed path + no keys
    assert!(
        l.warnings[1].to_string().starts_with(
            "w.toml:12:10: warning: path \"/account/addresses\" of route \"addresses\" is shadowed"
        ),
        "{:?}",
        l.warnings
    );
}

#[test]
fn cidrs() {
    let n = Cidr::parse("10.0.0.0/8").expect("cidr");
    assert!(n.contains("10.1.2.3".parse().expect("ip")));
    assert!(!n.contains("11.0.0.1".parse().expect("ip")));
    assert!(n.contains("::ffff:10.0.0.1".parse().expect("ip")));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("nope").is_err());
    let all = Cidr::parse("0.0.0.0/0").expect("cidr");
    assert!(all.contains("1.2.3.4".parse().expect("ip")));
    let v6 = Cidr::parse("fd00::/8").expect("cidr");
    assert!(v6.contains("fd12::1".parse().expect("ip")));
}

// === rule files ===

fn rule_diags(src: &str) -> (Vec<rules::Located>, Vec<String>) {
    let (r, d) = rules::compile_rule_str(Path::new("r.toml"), src);
    (r, d.iter().map(ToString::to_string).collect())
}

#[test]
fn the_default_rule_pack_compiles_cleanly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rules/default.toml");
    let (rules, diags) = rules::load_rule_file(&path);
    assert!(diags.is_empty(), "{diags:?}");
    assert!(rules.len() >= 10, "{}", rules.len());
    assert!(rules::cross_check(&rules).is_empty());
    let r = rules
        .iter()
        .find(|l| l.rule.name == "accounts-per-ip")
        .expect("rule");
    assert_eq!(
        r.rule.measure,
        warden_rules::Measure::Distinct(warden_rules::Field::Account)
    );
    assert_eq!(
        r.rule.action,
        warden_rules::Action::Ban(Duration::from_secs(6 * 3600))
    );
}

#[test]
fn rule_errors_are_all_reported_with_their_place() {
    let src = r#"[[rules]]
name = "a"
key = ["ip", "colour"]
window = "1 fortnight"
threshold = -1
action = "ban"

[[rules]]
name = "b b"
key = ["account"]
measure = "distinct"
window = "1m"
threshold = 5
action = "smite"
"#;
    let (rules, d) = rule_diags(src);
    assert!(rules.is_empty());
    let want = [
        "r.toml:3:14: error: key \"colour\" is not a field",
        "r.toml:4:10: error: window = \"1 fortnight\" is not a duration",
        "r.toml:5:13: error: threshold = -1 must be zero or more",
        "r.toml:6:10: error: rule \"a\": action = \"ban\" needs ban_for",
        "r.toml:9:8: error: rule name \"b b\" must be",
        "r.toml:11:11: error: rule \"b b\": measure = \"distinct\" needs distinct = FIELD",
        "r.toml:14:10: error: action = \"smite\" is not one of",
    ];
    for w in want {
        assert!(
            d.iter().any(|x| x.starts_with(w)),
            "missing {w:?} in\n{}",
            d.join("\n")
        );
    }
    assert_eq!(d.len(), want.len(), "{}", d.join("\n"));
}

#[test]
fn rules_that_can_never_fire_or_are_shadowed_are_warned_about() {
    let src = r#"[[rules]]
name = "open-account"
classes = ["open"]
key = ["account"]
window = "1m"
threshold = 5
action = "block"

[[rules]]
name = "self-distinct"
key = ["ip"]
measure = "distinct"
distinct = "ip"
window = "1m"
threshold = 5
action = "log"

[[rules]]
name = "strong"
key = ["ip"]
window = "1m"
threshold = 10
action = "ban"
ban_for = "1h"

[[rules]]
name = "weak"
key = ["ip"]
window = "1m"
threshold = 20
action = "block"
"#;
    let (rules, d) = rule_diags(src);
    assert_eq!(rules.len(), 4);
    assert!(
        d.iter()
            .any(|x| x.starts_with("r.toml:2:8: warning: rule \"open-account\" uses account")),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|x| x
                .starts_with("r.toml:10:8: warning: rule \"self-distinct\" counts distinct ip")),
        "{d:?}"
    );
    let cross: Vec<String> = rules::cross_check(&rules)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cross.len(), 1, "{cross:?}");
    assert!(
        cross[0].starts_with("r.toml:27:8: warning: rule \"weak\" is shadowed by rule \"strong\""),
        "{cross:?}"
    );
}

#[test]
fn rule_files_are_loaded_from_the_config_and_names_are_unique_across_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rule = |name: &str| {
        format!("[[rules]]\nname = \"{name}\"\nkey = [\"ip\"]\nwindow = \"1m\"\nthreshold = 5\naction = \"log\"\n")
    };
    std::fs::write(dir.path().join("a.toml"), rule("x")).expect("write");
    std::fs::write(dir.path().join("b.toml"), rule("x")).expect("write");
    let path = dir.path().join("warden.toml");
    std::fs::write(&path, format!("{MIN}[rules]\nfiles = [\"a.toml\", \"b.toml\", \"missing.toml\"]\nmax_state_bytes = \"64MiB\"\n")).expect("write");
    let e = load(&path).expect_err("refused");
    let msgs: Vec<String> = e
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("b.toml:2:8: error: rule name \"x\" is already used at")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("missing.toml does not exist")),
        "{msgs:?}"
    );
    std::fs::write(
        &path,
        format!("{MIN}[rules]\nfiles = [\"a.toml\"]\nmax_state_bytes = \"64MiB\"\n"),
    )
    .expect("write");
    let ok = load(&path).expect("loads");
    assert_eq!(ok.config.rules.list.len(), 1);
    assert_eq!(ok.config.rules.max_state_bytes, 64 << 20);
    // `check_file` recognises a rule file on its own.
    assert!(check_file(&dir.path().join("a.toml")).is_ok());
}

#[test]
fn limits_have_defaults_and_out_of_range_values_are_reported_in_place() {
    let c = ok(MIN).config;
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
    let c = ok(&format!(
        "{MIN}[limits]\nheader_timeout = \"2s\"\nbody_timeout = \"5s\"\nmax_header_bytes = \"8KiB\"\nmax_headers = 20\n"
    ))
    .config;
    assert_eq!(
        c.limits,
        Limits {
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(5),
            max_header_bytes: 8192,
            max_headers: 20,
        }
    );
    let e = errs(&format!(
        "{MIN}[limits]\nheader_timeout = \"0s\"\nbody_timeout = \"soon\"\nmax_header_bytes = \"2MiB\"\nmax_headers = 300\n"
    ));
    let want = [
        "w.toml:4:18: error: limits.header_timeout = \"0s\" is out of range",
        "w.toml:5:16: error: limits.body_timeout = \"soon\" is not a duration",
        "w.toml:6:20: error: limits.max_header_bytes = 2097152 bytes is out of range",
        "w.toml:7:15: error: limits.max_headers = 300 is out of range; expected 1 to 256",
    ];
    for w in want {
        assert!(e.iter().any(|x| x.starts_with(w)), "{w}\nnot in\n{e:#?}");
    }
    let e = errs(&format!("{MIN}[limits]\nmax_body = 1\n"));
    assert!(
        e[0].starts_with("w.toml:4:1: error: unknown field `max_body`"),
        "{e:?}"
    );
}

#[test]
fn state_snapshot_defaults_beside_the_ledger_and_is_checked() {
    let c = ok(&format!("{MIN}[ledger]\npath = \"data/ledger.redb\"\n")).config;
    assert_eq!(
        c.state.snapshot_path.as_deref(),
        Some(Path::new("data/warden.state"))
    );
    assert_eq!(c.state.snapshot_interval, Duration::from_secs(60));
    let c = ok(&format!(
        "{MIN}[state]\nsnapshot_path = \"s/engine.snap\"\nsnapshot_interval = \"0s\"\n"
    ))
    .config;
    assert_eq!(
        c.state.snapshot_path.as_deref(),
        Some(Path::new("s/engine.snap"))
    );
    assert!(c.state.snapshot_interval.is_zero());
    let c = ok(&format!("{MIN}[state]\nsnapshot = false\n")).config;
    assert_eq!(c.state.snapshot_path, None);

    let dir = tempfile::tempdir().expect("tempdir");
    let e = errs(&format!(
        "{MIN}[state]\nsnapshot_path = \"{}\"\nsnapshot_interval = \"100ms\"\n",
        dir.path().display()
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("w.toml:4:17: error:") && e[0].contains("is a directory"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("w.toml:5:21: error:") && e[1].contains("1s to 24h"),
        "{e:?}"
    );
    let e = errs(&format!(
        "{MIN}[ledger]\npath = \"l.redb\"\n[state]\nsnapshot_path = \"l.redb.handoff.jsonl\"\n"
    ));
    assert!(e[0].contains("the ledger's own file"), "{e:?}");
    let e = errs(&format!("{MIN}[state]\nsnapshot_pth = \"x\"\n"));
    assert!(e[0].contains("unknown field `snapshot_pth`"), "{e:?}");
}

#[test]
fn work_stealing_is_off_unless_asked_for_and_must_be_a_boolean() {
    assert!(!ok(MIN).config.server.work_stealing);
    let on = format!("[server]\nwork_stealing = true\n{MIN}");
    assert!(ok(&on).config.server.work_stealing);
    let bad = format!("[server]\nwork_stealing = \"yes\"\n{MIN}");
    let e = errs(&bad);
    assert!(
        e.iter()
            .any(|m| m.contains("w.toml:2:") && m.contains("bool")),
        "{e:?}"
    );
}

#[test]
fn fleet_section_selects_the_redis_ledger_and_reports_every_error_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("fleet.key"), "0123456789abcdef0123").expect("key");
    std::fs::write(dir.path().join("short.key"), "tiny").expect("key");
    let path = dir.path().join("w.toml");
    let good = format!(
        "{MIN}[fleet]\nredis_url = \"redis://10.0.0.5:6379/2\"\nnode = \"edge-1\"\nkey_file = \"fleet.key\"\n"
    );
    let l = compile_str(&path, &good).expect("fleet config compiles");
    let f = l.config.fleet.expect("fleet");
    assert_eq!(l.config.ledger.backend, Backend::Redis);
    assert_eq!(f.node, "edge-1");
    assert_eq!(f.namespace, "warden");
    assert_eq!(f.sync_interval, Duration::from_millis(250));
    assert_eq!(f.min_replicas, 0);

    let bad = format!(
        "{MIN}[ledger]\nbackend = \"embedded\"\n[fleet]\nredis_url = \"rediss://x:6380\"\nnode = \"a b\"\nkey_file = \"short.key\"\nsync_interval = \"1ms\"\nmin_replicas = -1\n"
    );
    let e: Vec<String> = compile_str(&path, &bad)
        .expect_err("refused")
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    let want = [
        (":4:11:", "fleet mode shares the ledger through Redis"),
        (":6:13:", "TLS (rediss://) is not built in"),
        (":7:8:", "fleet.node = \"a b\""),
        (":8:12:", "holds 4 bytes"),
        (":9:17:", "fleet.sync_interval = \"1ms\" is out of range"),
        (":10:16:", "fleet.min_replicas = -1 is out of range"),
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for ((at, what), got) in want.iter().zip(&e) {
        assert!(
            got.contains(at) && got.contains(what),
            "{got} lacks {at} {what}"
        );
    }
    // Missing essentials are named.
    let e = errs(&format!("{MIN}[fleet]\nnode = \"a\"\n"));
    assert!(e.iter().any(|m| m.contains("needs redis_url")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("needs key_file")), "{e:?}");
    // A redis ledger without [fleet].
    let e = errs(&format!("{MIN}[ledger]\nbackend = \"redis\"\n"));
    assert!(e[0].contains("needs a [fleet] section"), "{e:?}");
}

#[test]
fn rule_scope_is_checked_and_distinct_fleet_rules_are_warned_about() {
    let base = "[[rules]]\nname = \"r\"\nkey = [\"ip\"]\nwindow = \"1m\"\nthreshold = 5\naction = \"block\"\n";
    let (rules, d) = rule_diags(&format!("{base}scope = \"fleet\"\n"));
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(rules[0].rule.scope, warden_rules::Scope::Fleet);
    let (rules, d) = rule_diags(&format!("{base}scope = \"global\"\n"));
    assert!(rules.is_empty());
    assert!(
        d[0].contains("r.toml:7:9: error: scope = \"global\" is not one of: local, fleet"),
        "{d:?}"
    );
    let (_, d) = rule_diags(&format!(
        "{base}measure = \"distinct\"\ndistinct = \"account\"\nscope = \"fleet\"\n"
    ));
    assert!(
        d.iter()
            .any(|m| m.contains("warning")
                && m.contains("distinct counts are not shared between nodes")),
        "{d:?}"
    );
}
