//! Behaviour rules through a real warden in front of a real upstream, clients on
//! distinct loopback addresses.

use std::time::Duration;

use serde_json::json;
use warden_core::fixtures::SampleKey;
use warden_e2e::{kid, now, request_from, token, wait_for, Upstream, Warden};

fn issued(w: &Warden, account: &str) -> String {
    let t = token(SampleKey::Hs, kid::HS, account, now() - 10);
    w.record(&t);
    t
}

fn hits(w: &Warden, rule: &str, mode: &str) -> f64 {
    w.metric(&format!(
        "warden_rule_hits_total{{mode=\"{mode}\",rule=\"{rule}\"}}"
    ))
}

#[test]
fn a_client_rotating_through_accounts_is_banned_at_the_threshold() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start_with_rules(
        &up,
        r#"[[rules]]
name = "accounts-per-ip"
classes = ["protected"]
key = ["ip"]
measure = "distinct"
distinct = "account"
window = "1h"
threshold = 5
action = "ban"
ban_for = "1h"
"#,
        "",
    );
    let tokens: Vec<String> = (0..8).map(|i| issued(&w, &format!("victim{i}"))).collect();
    // Five distinct accounts pass; the sixth is over the threshold: banned.
    for (i, t) in tokens.iter().enumerate().take(5) {
        assert_eq!(
            w.get_from("127.0.0.2", "/account/addresses", t).status,
            200,
            "account {i}"
        );
    }
    assert_eq!(
        w.get_from("127.0.0.2", "/account/addresses", &tokens[5])
            .status,
        403
    );
    // Banned: even an account it already read, even a valid token.
    assert_eq!(
        w.get_from("127.0.0.2", "/account/addresses", &tokens[0])
            .status,
        403
    );
    // A household on another address with three accounts is untouched.
    for t in &tokens[5..8] {
        assert_eq!(w.get_from("127.0.0.3", "/account/orders", t).status, 200);
    }
    // The SOC sees the ban, and an event with the key.
    let bans = w.admin("GET", "/decisions", "").json();
    let ban = &bans["bans"][0];
    assert_eq!(ban["rule"], "accounts-per-ip");
    assert_eq!(ban["key"], "ip=127.0.0.2");
    let events = wait_for(Duration::from_secs(3), || {
        let e = w.events();
        e.iter().any(|e| e["type"] == "ban_placed").then_some(e)
    })
    .expect("ban event");
    let e = events
        .iter()
        .find(|e| e["type"] == "ban_placed")
        .expect("event");
    assert_eq!(e["rule"], "accounts-per-ip");
    assert_eq!(e["key"], "ip=127.0.0.2");
    assert_eq!(e["client_ip"], "127.0.0.2");
    assert_eq!(w.metric("warden_decisions_total{action=\"ban\"}"), 2.0);
    // Lifting the ban lets the address back in with a clean count.
    let id = ban["id"].as_str().expect("id");
    assert_eq!(
        w.admin("DELETE", &format!("/decisions/{id}"), "").status,
        200
    );
    assert_eq!(
        w.get_from("127.0.0.2", "/account/addresses", &tokens[0])
            .status,
        200
    );
    assert_eq!(
        w.admin("DELETE", &format!("/decisions/{id}"), "").status,
        404
    );
}

#[test]
fn a_stolen_token_used_from_many_addresses_is_revoked_everywhere() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start_with_rules(
        &up,
        r#"[[rules]]
name = "ips-per-token"
classes = ["protected"]
key = ["token"]
measure = "distinct"
distinct = "ip"
window = "1h"
threshold = 3
action = "revoke_token"
"#,
        "",
    );
    let stolen = issued(&w, "victim");
    for i in 10..13 {
        assert_eq!(
            w.get_from(&format!("127.0.0.{i}"), "/account/addresses", &stolen)
                .status,
            200
        );
    }
    assert_eq!(
        w.get_from("127.0.0.13", "/account/addresses", &stolen)
            .status,
        401
    );
    // Revoked in the ledger: refused from the owner's own address too.
    let refused = wait_for(Duration::from_secs(2), || {
        (w.get_from("127.0.0.10", "/account/addresses", &stolen)
            .status
            == 401)
            .then_some(())
    });
    assert!(refused.is_some());
    // Once the revocation is durable, the ledger itself refuses the token.
    let by_ledger = wait_for(Duration::from_secs(2), || {
        let _ = w.get_from("127.0.0.10", "/account/addresses", &stolen);
        (w.metric("warden_provenance_total{reason=\"revoked_token\"}") >= 1.0).then_some(())
    });
    assert!(
        by_ledger.is_some(),
        "the token was not revoked in the ledger"
    );
    let ev = wait_for(Duration::from_secs(2), || {
        w.events()
            .into_iter()
            .find(|e| e["type"] == "token_revoked")
    })
    .expect("token_revoked event");
    assert_eq!(ev["account"], "victim");
    assert!(ev.get("detail").is_none(), "{ev}");
    // The victim's next login gives a token that works.
    let fresh = issued(&w, "victim");
    assert_eq!(
        w.get_from("127.0.0.10", "/account/addresses", &fresh)
            .status,
        200
    );
}

#[test]
fn rate_limit_block_and_tag_actions() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start_with_rules(
        &up,
        r#"[[rules]]
name = "per-account"
classes = ["protected"]
paths = ["/account/orders"]
key = ["account"]
window = "1m"
threshold = 3
action = "rate_limit"

[[rules]]
name = "blocked-section"
paths = ["/account/blocked"]
key = ["ip"]
window = "1m"
threshold = 1
action = "block"

[[rules]]
name = "watch-orders"
paths = ["/account/orders"]
key = ["account"]
window = "1m"
threshold = 2
action = "log"

[[rules]]
name = "step-up"
paths = ["/account/settings"]
key = ["account"]
window = "1m"
threshold = 0
action = "tag"
"#,
        "",
    );
    let t = issued(&w, "alice");
    for _ in 0..3 {
        assert_eq!(w.get_from("127.0.0.20", "/account/orders", &t).status, 200);
    }
    let r = w.get_from("127.0.0.20", "/account/orders", &t);
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // Another page of the same account is not limited by that rule.
    assert_eq!(
        w.get_from("127.0.0.20", "/account/addresses", &t).status,
        200
    );

    assert_eq!(w.get_from("127.0.0.21", "/account/blocked", &t).status, 200);
    assert_eq!(w.get_from("127.0.0.21", "/account/blocked", &t).status, 403);

    // The tag reaches the upstream; a client cannot forge it.
    let r = request_from(
        Some("127.0.0.22".parse().expect("ip")),
        w.proxy,
        "GET",
        "/account/settings",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("X-Warden-Tag", "trusted"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["x_warden_tag"], "step-up");
    let r = request_from(
        Some("127.0.0.22".parse().expect("ip")),
        w.proxy,
        "GET",
        "/account/addresses",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("X-Warden-Tag", "trusted"),
        ],
        b"",
    );
    assert_eq!(
        r.json()["x_warden_tag"],
        serde_json::Value::Null,
        "client-supplied tag passed through"
    );
    assert_eq!(
        w.metric("warden_decisions_total{action=\"rate_limit\"}"),
        1.0
    );
    assert_eq!(w.metric("warden_decisions_total{action=\"block\"}"), 1.0);
    assert_eq!(w.metric("warden_decisions_total{action=\"tag\"}"), 1.0);
    // The log rule only logs: once, when its threshold is crossed, with the key.
    let logged: Vec<_> = wait_for(Duration::from_secs(2), || {
        let e: Vec<_> = w
            .events()
            .into_iter()
            .filter(|e| e["rule"] == "watch-orders")
            .collect();
        (!e.is_empty()).then_some(e)
    })
    .expect("log rule event");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["type"], "rule_fired");
    assert_eq!(logged[0]["action"], "log");
    assert_eq!(logged[0]["key"], "account=alice");
    assert_eq!(hits(&w, "watch-orders", "enforce"), 2.0);
}

#[test]
fn shadow_mode_never_blocks_but_counts() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start_with_rules(
        &up,
        r#"[[rules]]
name = "would-ban"
key = ["ip"]
window = "1m"
threshold = 1
action = "ban"
ban_for = "1h"
mode = "shadow"
"#,
        "",
    );
    let t = issued(&w, "bob");
    for _ in 0..6 {
        assert_eq!(
            w.get_from("127.0.0.30", "/account/addresses", &t).status,
            200
        );
    }
    assert_eq!(hits(&w, "would-ban", "shadow"), 5.0);
    assert_eq!(hits(&w, "would-ban", "enforce"), 0.0);
    assert_eq!(w.admin("GET", "/decisions", "").json()["bans"], json!([]));
    let ev = wait_for(Duration::from_secs(2), || {
        w.events().into_iter().find(|e| e["type"] == "rule_fired")
    })
    .expect("rule_fired event");
    assert_eq!(ev["action"], "shadow");
}

#[test]
fn a_rule_file_change_applies_within_a_second_and_keeps_state() {
    let up = Upstream::start(kid::ACTIVE);
    let rule = r#"[[rules]]
name = "per-ip"
key = ["ip"]
window = "1h"
threshold = 5
action = "block"
"#;
    let w = Warden::start_with_rules(&up, rule, "");
    let t = issued(&w, "carol");
    for _ in 0..4 {
        assert_eq!(w.get_from("127.0.0.40", "/account/a", &t).status, 200);
    }
    // Add a rule to the file: no signal, the file change is enough.
    let extra = "\n[[rules]]\nname = \"no-reports\"\npaths = [\"/account/reports\"]\nkey = [\"account\"]\nwindow = \"1m\"\nthreshold = 0\naction = \"block\"\n";
    assert_eq!(w.get_from("127.0.0.42", "/account/reports", &t).status, 200);
    std::fs::write(w.rules_path(), format!("{rule}{extra}")).expect("write rules");
    let applied = wait_for(Duration::from_millis(1500), || {
        (w.admin("GET", "/config/generation", "").json()["generation"] == 2).then_some(())
    });
    assert!(
        applied.is_some(),
        "rule file change not applied within 1.5 s; log:\n{}",
        w.log()
    );
    // The new rule acts.
    assert_eq!(w.get_from("127.0.0.42", "/account/reports", &t).status, 403);
    // The counter survived: the 5th request passes (5 is not over 5), the 6th is blocked.
    assert_eq!(w.get_from("127.0.0.40", "/account/a", &t).status, 200);
    assert_eq!(w.get_from("127.0.0.40", "/account/a", &t).status, 403);
    // A broken rule file is refused; the rules in force stay.
    std::fs::write(w.rules_path(), "[[rules]]\nname = \"broken\"\n").expect("write");
    let refused = wait_for(Duration::from_millis(1500), || {
        (w.metric("warden_reloads_total{outcome=\"error\"}") >= 1.0).then_some(())
    });
    assert!(refused.is_some());
    assert_eq!(
        w.admin("GET", "/config/generation", "").json()["generation"],
        2
    );
    assert_eq!(w.get_from("127.0.0.40", "/account/a", &t).status, 403);
    assert_eq!(w.get_from("127.0.0.41", "/account/a", &t).status, 200);
}

#[test]
fn legitimate_users_under_the_default_pack_are_never_blocked() {
    let up = Upstream::start(kid::ACTIVE);
    let pack = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/rules/default.toml"
    ))
    .expect("default pack");
    let w = Warden::start_with_rules(&up, &pack, "");
    // Forty users, each on their own address; two households of three accounts on one
    // address each; everybody browses every section a few times.
    let pages = [
        "/account/addresses",
        "/account/orders",
        "/account/profile",
        "/account/entrance-codes",
    ];
    let mut requests = 0;
    for u in 0..40 {
        let t = issued(&w, &format!("user{u}"));
        let ip = format!("127.0.3.{}", u + 1);
        for round in 0..3 {
            for p in pages {
                let r = w.get_from(&ip, p, &t);
                assert_eq!(r.status, 200, "user{u} round {round} {p}: {}", r.text());
                requests += 1;
            }
        }
    }
    for h in 0..2 {
        let ip = format!("127.0.4.{}", h + 1);
        for m in 0..3 {
            let t = issued(&w, &format!("household{h}-member{m}"));
            for p in pages {
                assert_eq!(w.get_from(&ip, p, &t).status, 200);
                requests += 1;
            }
        }
    }
    assert!(requests > 500);
    assert_eq!(w.metric("warden_decisions_total{action=\"ban\"}"), 0.0);
    assert_eq!(
        w.metric("warden_decisions_total{action=\"rate_limit\"}"),
        0.0
    );
    assert_eq!(w.metric("warden_decisions_total{action=\"block\"}"), 0.0);
    // Every rule of the pack is declared, with zero hits.
    assert!(w.metric("warden_rule_hits_total{mode=\"enforce\",rule=\"accounts-per-ip\"}") == 0.0);
    let text = warden_e2e::request(w.admin, "GET", "/metrics", &[], b"").text();
    assert!(text.contains("rule=\"accounts-per-ip-week\""));
}

#[test]
fn rules_can_key_on_a_token_claim() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start_with_rules(
        &up,
        r#"[[rules]]
name = "per-tenant"
classes = ["protected"]
key = ["claim:tenant"]
window = "1m"
threshold = 2
action = "block"
"#,
        "",
    );
    let t = now() - 5;
    let mint = |sub: &str, tenant: &str| {
        let tok = warden_core::fixtures::mint(
            SampleKey::Hs,
            kid::HS,
            &json!({"sub": sub, "jti": format!("{sub}-{tenant}"), "iat": t, "exp": t + 600, "tenant": tenant}),
        )
        .expect("mint");
        w.record(&tok);
        tok
    };
    let (a, b, c) = (mint("a", "acme"), mint("b", "acme"), mint("c", "acme"));
    let other = mint("d", "globex");
    assert_eq!(w.get_from("127.0.0.60", "/account/x", &a).status, 200);
    assert_eq!(w.get_from("127.0.0.61", "/account/x", &b).status, 200);
    assert_eq!(
        w.get_from("127.0.0.62", "/account/x", &c).status,
        403,
        "third request of tenant acme"
    );
    assert_eq!(w.get_from("127.0.0.62", "/account/x", &other).status, 200);
}
