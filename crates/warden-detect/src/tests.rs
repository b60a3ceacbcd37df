//! Engine behaviour: every action, shadow mode, reload, bans, and eviction under a flood.

use std::net::IpAddr;
use std::time::Duration;

use warden_core::ledger::TokenId;
use warden_rules::{
    Action, Condition, Field, Match, Measure, Mode, PathPattern, RouteClass, Rule, Scope,
};

use crate::{Decision, Engine, Facts, Lookup, Nothing};

pub(crate) const T0: u64 = 1_800_000_000_000;
pub(crate) const MIB: usize = 1 << 20;

pub(crate) fn rule(
    name: &str,
    key: Vec<Field>,
    measure: Measure,
    window_s: u64,
    threshold: u64,
    action: Action,
) -> Rule {
    Rule {
        name: name.into(),
        description: String::new(),
        matcher: Match::default(),
        key,
        measure,
        window: Duration::from_secs(window_s),
        threshold,
        action,
        mode: Mode::Enforce,
        priority: 0,
        scope: Scope::Local,
    }
}

struct Req<'a> {
    ip: IpAddr,
    account: Option<&'a str>,
    token: Option<TokenId>,
    path: &'a str,
}

impl<'a> Req<'a> {
    fn new(ip: &str, account: &'a str) -> Self {
        Self {
            ip: ip.parse().expect("ip"),
            account: Some(account),
            token: Some(TokenId::from_jti(account)),
            path: "/account/addresses",
        }
    }
}

struct Headers(Vec<(&'static str, &'static str)>);

impl Lookup for Headers {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

fn eval(e: &Engine, r: &Req<'_>, now_ms: u64) -> crate::Verdict {
    eval_h(e, r, now_ms, &Nothing)
}

fn eval_h(e: &Engine, r: &Req<'_>, now_ms: u64, headers: &dyn Lookup) -> crate::Verdict {
    e.evaluate(&Facts {
        now_ms,
        class: RouteClass::Protected,
        route: Some("account"),
        method: "GET",
        path: r.path,
        ip: r.ip,
        account: r.account,
        token: r.token.as_ref(),
        headers,
        claims: &Nothing,
    })
}

#[test]
fn rate_limit_answers_with_retry_after_until_the_window_rolls() {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![rule(
            "per-account",
            vec![Field::Account],
            Measure::Count,
            60,
            5,
            Action::RateLimit,
        )],
        64 * MIB,
    );
    let r = Req::new("192.0.2.1", "alice");
    let start = T0 - T0 % 60_000; // the start of a window
    for i in 0..5 {
        assert_eq!(eval(&e, &r, start + i).decision, Decision::Pass);
    }
    let v = eval(&e, &r, start + 10_000);
    assert_eq!(v.decision, Decision::RateLimit { retry_after_s: 50 });
    assert_eq!(v.decided_by, Some("per-account"));
    assert!(v.hits[0].crossed);
    assert!(
        !eval(&e, &r, start + 10_001).hits[0].crossed,
        "crossing is reported once"
    );
    // Two windows later the account is clean again.
    assert_eq!(eval(&e, &r, start + 120_000).decision, Decision::Pass);
}

#[test]
fn block_tag_log_and_revoke_actions() {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![
            rule(
                "block-ip",
                vec![Field::Ip],
                Measure::Count,
                60,
                3,
                Action::Block,
            ),
            rule(
                "tag-account",
                vec![Field::Account],
                Measure::Count,
                60,
                1,
                Action::Tag,
            ),
            rule(
                "log-token",
                vec![Field::Token],
                Measure::Count,
                60,
                0,
                Action::Log,
            ),
            rule(
                "revoke",
                vec![Field::Token],
                Measure::Count,
                60,
                4,
                Action::RevokeToken,
            ),
        ],
        64 * MIB,
    );
    let r = Req::new("192.0.2.2", "bob");
    let v = eval(&e, &r, T0);
    assert_eq!(v.decision, Decision::Pass);
    assert_eq!(v.hits.len(), 1, "log-token fires from the first request");
    let v = eval(&e, &r, T0 + 1);
    assert_eq!(
        v.tags.iter().map(|t| &**t).collect::<Vec<_>>(),
        vec!["tag-account"]
    );
    assert_eq!(v.decision, Decision::Pass, "a tag does not refuse");
    let _ = eval(&e, &r, T0 + 2);
    assert_eq!(eval(&e, &r, T0 + 3).decision, Decision::Block);
    // Revoke outranks block.
    let v = eval(&e, &r, T0 + 4);
    assert_eq!(v.decision, Decision::RevokeToken);
    assert_eq!(v.decided_by, Some("revoke"));
}

#[test]
fn shadow_rules_count_but_never_decide() {
    let e = Engine::new(64 * MIB, 1000);
    let mut r = rule(
        "shadow-ban",
        vec![Field::Ip],
        Measure::Count,
        60,
        1,
        Action::Ban(Duration::from_secs(60)),
    );
    r.mode = Mode::Shadow;
    e.set_rules(vec![r], 64 * MIB);
    let q = Req::new("192.0.2.3", "carol");
    for i in 0..10 {
        let v = eval(&e, &q, T0 + i);
        assert_eq!(v.decision, Decision::Pass);
        if i >= 1 {
            assert_eq!(v.hits.len(), 1);
            assert_eq!(v.hits[0].mode, Mode::Shadow);
            assert!(!v.hits[0].ban_placed);
        }
    }
    assert_eq!(e.active_bans(T0), 0);
}

#[test]
fn a_client_rotating_through_accounts_is_banned_at_the_threshold() {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![rule(
            "accounts-per-ip",
            vec![Field::Ip],
            Measure::Distinct(Field::Account),
            3600,
            20,
            Action::Ban(Duration::from_secs(3600)),
        )],
        64 * MIB,
    );
    let accounts: Vec<String> = (0..40).map(|i| format!("victim{i}")).collect();
    let mut banned_at = None;
    for (i, a) in accounts.iter().enumerate() {
        // Each account read four times, as in the incident.
        for j in 0..4 {
            let v = eval(
                &e,
                &Req::new("198.51.100.9", a),
                T0 + (i * 4 + j) as u64 * 1000,
            );
            if banned_at.is_none() && matches!(v.decision, Decision::Banned { .. }) {
                banned_at = Some(i);
                assert!(v.hits[0].ban_placed);
                assert_eq!(v.hits[0].key.as_deref(), Some("ip=198.51.100.9"));
            }
        }
    }
    assert_eq!(banned_at, Some(20), "banned on the 21st distinct account");
    // A user on another address with three accounts is untouched.
    for a in ["me", "my-spouse", "my-kid"] {
        assert_eq!(
            eval(&e, &Req::new("203.0.113.5", a), T0 + 500_000).decision,
            Decision::Pass
        );
    }
    let bans = e.bans(T0 + 500_000);
    assert_eq!(bans.len(), 1);
    assert!(e.lift(&bans[0].0));
    assert_eq!(e.active_bans(T0 + 500_000), 0);
    // Lifted with a clean count: the address is not banned again at once.
    let v = eval(&e, &Req::new("198.51.100.9", "victim0"), T0 + 500_001);
    assert_eq!(v.decision, Decision::Pass);
}

#[test]
fn a_token_used_from_many_addresses_is_caught() {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![rule(
            "ips-per-token",
            vec![Field::Token],
            Measure::Distinct(Field::Ip),
            600,
            5,
            Action::RevokeToken,
        )],
        64 * MIB,
    );
    let mut decided = None;
    for i in 0..10u8 {
        let v = eval(
            &e,
            &Req::new(&format!("127.0.1.{i}"), "dave"),
            T0 + u64::from(i),
        );
        if v.decision == Decision::RevokeToken && decided.is_none() {
            decided = Some(i);
        }
    }
    assert_eq!(decided, Some(5));
}

#[test]
fn ip_prefix_keys_group_a_network() {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![rule(
            "net",
            vec![Field::IpPrefix { v4: 24, v6: 64 }],
            Measure::Count,
            60,
            3,
            Action::Block,
        )],
        64 * MIB,
    );
    for i in 1..=3u8 {
        assert_eq!(
            eval(&e, &Req::new(&format!("10.1.2.{i}"), "x"), T0).decision,
            Decision::Pass
        );
    }
    let v = eval(&e, &Req::new("10.1.2.200", "x"), T0);
    assert_eq!(v.decision, Decision::Block);
    assert_eq!(v.hits[0].key.as_deref(), Some("ip_prefix=10.1.2.0/24"));
    assert_eq!(
        eval(&e, &Req::new("10.1.3.1", "x"), T0).decision,
        Decision::Pass
    );
}

#[test]
fn a_busy_office_network_is_not_blocked_when_the_hour_turns() {
    // 250 people behind one /24, each reading their account every 10 minutes, under a
    // 300-accounts-an-hour rule (the default pack's accounts-per-network). Their
    // accounts recur in every hour, so the count must stay near 250 across each
    // boundary instead of adding last hour's 250 to this hour's. A scraper in the next
    // /24 walking new accounts is still blocked.
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![rule(
            "accounts-per-network",
            vec![Field::IpPrefix { v4: 24, v6: 64 }],
            Measure::Distinct(Field::Account),
            3600,
            300,
            Action::Block,
        )],
        64 * MIB,
    );
    let start = T0 - T0 % 3_600_000;
    let people: Vec<(String, String)> = (0..250u32)
        .map(|p| (format!("10.1.2.{}", p % 250 + 1), format!("person-{p}")))
        .collect();
    let mut scraped = None;
    for sec in 0..3 * 3600u64 {
        let now = start + sec * 1000;
        for (p, (ip, account)) in people.iter().enumerate() {
            if (sec + p as u64 * 2).is_multiple_of(600) {
                let v = eval(&e, &Req::new(ip, account), now);
                assert_eq!(v.decision, Decision::Pass, "{account} at second {sec}");
            }
        }
        // One new account every 5 s from 10.1.3.9: 720 an hour.
        if sec.is_multiple_of(5) && scraped.is_none() {
            let account = format!("victim-{sec}");
            if eval(&e, &Req::new("10.1.3.9", &account), now).decision == Decision::Block {
                scraped = Some(sec);
            }
        }
    }
    // 300 new accounts at one per 5 s: blocked after about 1 500 s.
    let at = scraped.expect("the scraper is blocked");
    assert!((1_300..1_700).contains(&at), "blocked at second {at}");
}

#[test]
fn matching_by_path_method_and_header() {
    let e = Engine::new(64 * MIB, 1000);
    let mut r = rule(
        "bots",
        vec![Field::Ip],
        Measure::Count,
        60,
        0,
        Action::Block,
    );
    r.matcher = Match {
        classes: vec![RouteClass::Protected],
        methods: vec!["GET".into()],
        paths: vec![PathPattern::Prefix("/account/".into())],
        conditions: vec![Condition::Prefix(
            Field::Header("user-agent".into()),
            "python-requests".into(),
        )],
    };
    e.set_rules(vec![r], 64 * MIB);
    let q = Req::new("192.0.2.9", "eve");
    assert_eq!(
        eval_h(&e, &q, T0, &Headers(vec![("user-agent", "Mozilla/5.0")])).decision,
        Decision::Pass
    );
    assert_eq!(eval_h(&e, &q, T0, &Nothing).decision, Decision::Pass);
    assert_eq!(
        eval_h(
            &e,
            &q,
            T0,
            &Headers(vec![("user-agent", "python-requests/2.31")])
        )
        .decision,
        Decision::Block
    );
    let mut other = Req::new("192.0.2.9", "eve");
    other.path = "/static/app.js";
    assert_eq!(
        eval_h(
            &e,
            &other,
            T0,
            &Headers(vec![("user-agent", "python-requests/2.31")])
        )
        .decision,
        Decision::Pass
    );
}

#[test]
fn rules_matching_on_class_alone_share_a_group_with_rules_that_test_more() {
    // One key group (address, protected routes): a rule on the class alone, and one
    // that also tests a header. Each must match on its own terms.
    let e = Engine::new(64 * MIB, 1000);
    let mut every = rule("every", vec![Field::Ip], Measure::Count, 60, 0, Action::Log);
    every.matcher.classes = vec![RouteClass::Protected];
    let mut bots = rule(
        "bots",
        vec![Field::Ip],
        Measure::Count,
        60,
        0,
        Action::Block,
    );
    bots.matcher = Match {
        classes: vec![RouteClass::Protected],
        conditions: vec![Condition::Prefix(
            Field::Header("user-agent".into()),
            "python-requests".into(),
        )],
        ..Match::default()
    };
    e.set_rules(vec![every, bots], 64 * MIB);
    let names = |v: &crate::Verdict| {
        v.hits
            .iter()
            .map(|h| h.rule.to_string())
            .collect::<Vec<_>>()
    };
    let q = Req::new("192.0.2.9", "eve");
    let browser = Headers(vec![("user-agent", "Mozilla/5.0")]);
    let script = Headers(vec![("user-agent", "python-requests/2.31")]);

    let v = eval_h(&e, &q, T0, &browser);
    assert_eq!(
        (v.decision.clone(), names(&v)),
        (Decision::Pass, vec!["every".to_owned()])
    );
    let v = eval_h(&e, &q, T0, &script);
    assert_eq!(v.decision, Decision::Block);
    assert_eq!(names(&v).len(), 2, "{:?}", names(&v));

    // On an open route neither rule applies, the class-only one included.
    let v = e.evaluate(&Facts {
        now_ms: T0,
        class: RouteClass::Open,
        route: None,
        method: "GET",
        path: "/static/app.js",
        ip: q.ip,
        account: None,
        token: None,
        headers: &script,
        claims: &Nothing,
    });
    assert_eq!(
        (v.decision.clone(), names(&v)),
        (Decision::Pass, Vec::<String>::new())
    );
}

#[test]
fn reload_keeps_state_and_bans_of_unchanged_rules_only() {
    let e = Engine::new(64 * MIB, 1000);
    let keep = rule(
        "keep",
        vec![Field::Ip],
        Measure::Count,
        60,
        3,
        Action::Ban(Duration::from_secs(600)),
    );
    let change = rule(
        "change",
        vec![Field::Account],
        Measure::Count,
        60,
        3,
        Action::Block,
    );
    e.set_rules(vec![keep.clone(), change.clone()], 64 * MIB);
    let q = Req::new("192.0.2.10", "frank");
    for i in 0..4 {
        let _ = eval(&e, &q, T0 + i);
    }
    assert_eq!(e.active_bans(T0), 1);
    // New threshold on `keep` (state kept), new window on `change` (state reset).
    let mut keep2 = keep;
    keep2.threshold = 100;
    let mut change2 = change;
    change2.window = Duration::from_secs(120);
    e.set_rules(vec![keep2, change2], 64 * MIB);
    assert_eq!(e.active_bans(T0), 1, "ban survives the reload");
    let v = eval(&e, &q, T0 + 5);
    assert!(matches!(v.decision, Decision::Banned { .. }));
    // `change` starts from zero: 1 request is under 3.
    assert!(v.hits.iter().all(|h| h.rule != "change"));
    // Removing the rule drops its bans.
    e.set_rules(vec![], 64 * MIB);
    assert_eq!(e.active_bans(T0), 0);
}

#[test]
fn manual_bans_by_ip_account_and_token() {
    let e = Engine::new(64 * MIB, 1000);
    let id = e
        .ban_manual(&Field::Ip, "192.0.2.77", T0, T0 + 60_000)
        .expect("ban");
    assert!(e.ban_manual(&Field::Ip, "nope", T0, T0 + 1).is_err());
    assert!(e.ban_manual(&Field::Path, "/x", T0, T0 + 1).is_err());
    let q = Req::new("192.0.2.77", "gina");
    assert_eq!(
        eval(&e, &q, T0).decision,
        Decision::Banned {
            until_ms: T0 + 60_000
        }
    );
    assert_eq!(
        eval(&e, &q, T0 + 60_001).decision,
        Decision::Pass,
        "bans end"
    );
    let report = e.sweep(T0 + 60_001);
    assert_eq!(report.bans_expired, 1);
    assert_eq!(report.ended[0].key, "ip=192.0.2.77");
    assert_eq!(report.ended[0].rule, "manual");
    assert!(!e.lift(&id), "an ended ban is gone");
    let id = e
        .ban_manual(&Field::Ip, "192.0.2.77", T0, T0 + 60_000)
        .expect("ban");
    assert!(e.lift(&id));
    e.ban_manual(&Field::Account, "gina", T0, T0 + 60_000)
        .expect("ban");
    assert!(matches!(
        eval(&e, &Req::new("192.0.2.1", "gina"), T0).decision,
        Decision::Banned { .. }
    ));
    let tok = TokenId::from_jti("henry").to_hex();
    e.ban_manual(&Field::Token, &tok, T0, T0 + 60_000)
        .expect("ban");
    assert!(matches!(
        eval(&e, &Req::new("192.0.2.1", "henry"), T0).decision,
        Decision::Banned { .. }
    ));
}

#[test]
fn state_per_key_is_small_while_sets_are_small() {
    // Count: 12-byte counter + 8-byte key; distinct: 24-byte set + key, no heap up to 2.
    assert!(std::mem::size_of::<(u64, crate::window::SlidingCount)>() <= 24);
    assert!(std::mem::size_of::<(u64, crate::distinct::DistinctSet)>() <= 32);
    assert_eq!(crate::SLOT_BYTES, 24);
    let e = Engine::new(1 << 30, 1000);
    e.set_rules(
        vec![rule(
            "d",
            vec![Field::Ip],
            Measure::Distinct(Field::Account),
            3600,
            1000,
            Action::Log,
        )],
        1 << 30,
    );
    for i in 0..100_000u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for a in ["a", "b", "c"] {
            let _ = e.evaluate(&Facts {
                now_ms: T0,
                class: RouteClass::Protected,
                route: None,
                method: "GET",
                path: "/",
                ip,
                account: Some(a),
                token: None,
                headers: &Nothing,
                claims: &Nothing,
            });
        }
    }
    let per_key = e.state_bytes() as f64 / e.tracked_keys() as f64;
    assert!(per_key <= 128.0, "{per_key} bytes per key");
}

/// A flood of a million fresh source addresses, with an offender among them, against a
/// state cap far smaller than the flood. The offender must be caught on time and stay
/// caught; memory must stay under the cap.
#[test]
fn eviction_under_a_flood_is_not_a_bypass() {
    let cap = 2 * MIB;
    let e = Engine::new(cap, 10_000);
    e.set_rules(
        vec![
            rule(
                "rate-per-ip",
                vec![Field::Ip],
                Measure::Count,
                60,
                300,
                Action::RateLimit,
            ),
            rule(
                "accounts-per-ip",
                vec![Field::Ip],
                Measure::Distinct(Field::Account),
                3600,
                50,
                Action::Ban(Duration::from_secs(3600)),
            ),
        ],
        cap,
    );
    let offender: IpAddr = "198.51.100.66".parse().expect("ip");
    let mut offender_requests = 0u64;
    let mut rate_limited_from = None;
    let mut banned_from = None;
    let mut max_bytes = 0;
    let facts = |ip, account, now_ms| Facts {
        now_ms,
        class: RouteClass::Protected,
        route: None,
        method: "GET",
        path: "/account/x",
        ip,
        account,
        token: None,
        headers: &Nothing,
        claims: &Nothing,
    };
    let accounts: Vec<String> = (0..100).map(|i| format!("victim-{i}")).collect();
    let start = T0 - T0 % 60_000;
    for i in 0..1_000_000u32 {
        let now = start + u64::from(i) / 50; // 50 000 requests a second: 20 s of flood
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
        let _ = e.evaluate(&facts(ip, Some("flood"), now));
        if i % 2_000 == 0 {
            // The offender: one request per 2 000 flood requests, a new account each
            // time until the hundred are used, then round again.
            offender_requests += 1;
            let a = &accounts[(offender_requests as usize - 1) % accounts.len()];
            let v = e.evaluate(&facts(offender, Some(a), now));
            if banned_from.is_none() && matches!(v.decision, Decision::Banned { .. }) {
                banned_from = Some(offender_requests);
            }
            if banned_from.is_some() {
                assert!(
                    matches!(v.decision, Decision::Banned { .. }),
                    "offender got back in at request {offender_requests}"
                );
            }
            if rate_limited_from.is_none() && matches!(v.decision, Decision::RateLimit { .. }) {
                rate_limited_from = Some(offender_requests);
            }
        }
        if i % 10_000 == 0 {
            let _ = e.sweep(now);
            max_bytes = max_bytes.max(e.state_bytes());
        }
    }
    assert_eq!(banned_from, Some(51), "banned on the 51st distinct account");
    // Between sweeps the flood adds at most 10 000 keys to each rule's table.
    let slack = 2 * 10_000 * 64 * 2;
    assert!(
        max_bytes <= cap + slack,
        "state reached {max_bytes} bytes, cap {cap}"
    );
    let _ = e.sweep(start + 20_000);
    assert!(e.state_bytes() <= cap, "{} > {cap}", e.state_bytes());
    // The flood keys were the ones evicted.
    assert!(e.tracked_keys() < 100_000);
    assert_eq!(
        rate_limited_from, None,
        "500 offender requests spread over 20 s stay under the rate rule"
    );
}

#[test]
fn top_offenders_list_the_worst_keys_of_a_rule() {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![rule(
            "per-ip",
            vec![Field::Ip],
            Measure::Count,
            60,
            10,
            Action::Log,
        )],
        64 * MIB,
    );
    // 50 addresses: address i sends i requests. Only those at or over half the threshold
    // (5) are candidates; the list keeps the 32 highest.
    for i in 1..=50u32 {
        let ip = format!("10.0.{}.{}", i / 256, i % 256);
        for j in 0..i {
            let _ = eval(&e, &Req::new(&ip, "x"), T0 + u64::from(j));
        }
    }
    let info = e.rules_info(T0 + 100);
    assert_eq!(info.len(), 1);
    let top = &info[0].top;
    assert_eq!(top.len(), crate::TOP_K);
    assert_eq!(top[0].display, "ip=10.0.0.50");
    assert_eq!(top[0].estimate, 50.0);
    assert!(top.windows(2).all(|w| w[0].estimate >= w[1].estimate));
    assert_eq!(top.last().map(|o| o.estimate), Some(19.0));
    assert_eq!(info[0].tracked_keys, 50);
    // A window later, nothing is current.
    assert!(e.rules_info(T0 + 200_000)[0].top.is_empty());
}

/// Rules with the same key share one entry per key value; a reload that adds or drops a
/// rule on that key moves the entries to a new layout, carrying the unchanged rules'
/// counts over.
#[test]
fn reload_that_changes_a_key_group_carries_counts_over() {
    let e = Engine::new(64 * MIB, 1000);
    let count = rule(
        "count",
        vec![Field::Ip],
        Measure::Count,
        600,
        10,
        Action::Block,
    );
    let accounts = rule(
        "accounts",
        vec![Field::Ip],
        Measure::Distinct(Field::Account),
        600,
        5,
        Action::Block,
    );
    e.set_rules(vec![count.clone(), accounts.clone()], 64 * MIB);
    for (i, a) in ["a", "b", "c", "d"].iter().enumerate() {
        let _ = eval(&e, &Req::new("192.0.2.20", a), T0 + i as u64);
    }
    // Another rule on the address joins the group; one on the account appears too.
    let extra = rule(
        "extra",
        vec![Field::Ip],
        Measure::Count,
        60,
        1000,
        Action::Log,
    );
    let other = rule(
        "other",
        vec![Field::Account],
        Measure::Count,
        60,
        1000,
        Action::Log,
    );
    e.set_rules(
        vec![count.clone(), extra.clone(), accounts.clone(), other],
        64 * MIB,
    );
    // 4 requests and 4 accounts were counted before: 2 more accounts cross 5 and a 7th
    // request is still under 10.
    let v = eval(&e, &Req::new("192.0.2.20", "e"), T0 + 10);
    assert_eq!(v.decision, Decision::Pass, "{:?}", v.hits);
    let v = eval(&e, &Req::new("192.0.2.20", "f"), T0 + 11);
    assert_eq!(v.decision, Decision::Block);
    assert_eq!(v.hits.len(), 1);
    assert_eq!(v.hits[0].rule, "accounts");
    assert_eq!(v.hits[0].estimate, 6.0);
    // Dropping `extra` again: counts still carried (6 requests), then 5 more.
    e.set_rules(vec![count, accounts], 64 * MIB);
    for i in 0..4 {
        let _ = eval(&e, &Req::new("192.0.2.20", "f"), T0 + 20 + i);
    }
    let v = eval(&e, &Req::new("192.0.2.20", "f"), T0 + 30);
    let hit = v
        .hits
        .iter()
        .find(|h| h.rule == "count")
        .expect("count fired");
    assert_eq!(hit.estimate, 11.0);
    assert_eq!(e.tracked_keys(), 1, "one address, one entry");
}

/// Lifting a ban forgets only the lifted rule's count for the key; the other rules on
/// the same key keep theirs.
#[test]
fn lifting_a_ban_clears_only_that_rule_in_a_shared_entry() {
    let e = Engine::new(64 * MIB, 1000);
    let mut ban = rule(
        "ban",
        vec![Field::Ip],
        Measure::Distinct(Field::Account),
        600,
        2,
        Action::Ban(Duration::from_secs(600)),
    );
    ban.priority = 1;
    let mut watch = rule(
        "watch",
        vec![Field::Ip],
        Measure::Count,
        600,
        4,
        Action::Log,
    );
    watch.priority = 2;
    e.set_rules(vec![ban, watch], 64 * MIB);
    for (i, a) in ["a", "b", "c"].iter().enumerate() {
        let _ = eval(&e, &Req::new("192.0.2.30", a), T0 + i as u64);
    }
    let bans = e.bans(T0 + 5);
    assert_eq!(bans.len(), 1);
    assert!(e.lift(&bans[0].0));
    // `ban` starts clean: one account is under 2. `watch` remembers 3 requests.
    let v = eval(&e, &Req::new("192.0.2.30", "d"), T0 + 6);
    assert_eq!(v.decision, Decision::Pass, "{:?}", v.hits);
    let v = eval(&e, &Req::new("192.0.2.30", "d"), T0 + 7);
    assert_eq!(v.hits.len(), 1);
    assert_eq!(v.hits[0].rule, "watch");
    assert_eq!(v.hits[0].estimate, 5.0);
    let info = e.rules_info(T0 + 8);
    assert_eq!(
        info.iter().map(|i| i.tracked_keys).collect::<Vec<_>>(),
        [1, 1]
    );
}

/// A ban on a distinct rule holds for requests that lack the counted field (a banned
/// address sending requests without a valid token has no account).
#[test]
fn a_ban_holds_when_the_counted_field_is_missing() {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![rule(
            "accounts-per-ip",
            vec![Field::Ip],
            Measure::Distinct(Field::Account),
            600,
            2,
            Action::Ban(Duration::from_secs(600)),
        )],
        64 * MIB,
    );
    for (i, a) in ["a", "b", "c"].iter().enumerate() {
        let _ = eval(&e, &Req::new("192.0.2.40", a), T0 + i as u64);
    }
    let anonymous = Req {
        account: None,
        token: None,
        ..Req::new("192.0.2.40", "x")
    };
    let v = eval(&e, &anonymous, T0 + 10);
    assert!(matches!(v.decision, Decision::Banned { .. }), "{v:?}");
    // Another address without an account is not tracked at all.
    let v = eval(
        &e,
        &Req {
            account: None,
            token: None,
            ..Req::new("192.0.2.41", "x")
        },
        T0 + 10,
    );
    assert_eq!(v.decision, Decision::Pass);
    assert_eq!(e.tracked_keys(), 1);
}

/// More rules on one key than fit an entry: they spill into a second group and all
/// still count; hits and tags come in priority order whatever the grouping.
#[test]
fn many_rules_on_one_key_and_hits_in_priority_order() {
    let e = Engine::new(64 * MIB, 1000);
    let rules: Vec<Rule> = (0..11)
        .map(|i| {
            let mut r = rule(
                &format!("r{i:02}"),
                vec![Field::Ip],
                Measure::Count,
                60,
                i,
                Action::Tag,
            );
            r.priority = 100 - i as i64;
            r
        })
        .collect();
    e.set_rules(rules, 64 * MIB);
    let q = Req::new("192.0.2.50", "a");
    let mut v = eval(&e, &q, T0);
    for i in 1..12 {
        v = eval(&e, &q, T0 + i);
    }
    // 12 requests: every rule (thresholds 0..=10) is over.
    let names: Vec<&str> = v.hits.iter().map(|h| h.rule).collect();
    let expected: Vec<String> = (0..11).rev().map(|i| format!("r{i:02}")).collect();
    assert_eq!(names, expected);
    assert_eq!(v.tags.iter().map(|t| &**t).collect::<Vec<_>>(), expected);
    assert!(v.hits.iter().all(|h| h.estimate == 12.0));
    assert_eq!(e.tracked_keys(), 2, "two groups of the same key");
}

/// Rules with the same key but different route classes keep separate entries: a flood of
/// new addresses on the login route makes slots only for the rules that can match it.
#[test]
fn a_flood_on_one_route_class_makes_slots_only_for_its_rules() {
    let e = Engine::new(64 * MIB, 1000);
    let on = |mut r: Rule, classes: Vec<RouteClass>| {
        r.matcher.classes = classes;
        r
    };
    let distinct = |name: &str| {
        on(
            rule(
                name,
                vec![Field::Ip],
                Measure::Distinct(Field::Account),
                3600,
                20,
                Action::Log,
            ),
            vec![RouteClass::Protected],
        )
    };
    e.set_rules(
        vec![
            distinct("accounts-per-ip"),
            distinct("accounts-per-ip-day"),
            distinct("accounts-per-ip-week"),
            rule(
                "burst-per-ip",
                vec![Field::Ip],
                Measure::Count,
                10,
                200,
                Action::Log,
            ),
            on(
                rule(
                    "logins-per-ip",
                    vec![Field::Ip],
                    Measure::Count,
                    600,
                    30,
                    Action::Log,
                ),
                vec![RouteClass::Issuance],
            ),
        ],
        64 * MIB,
    );
    for i in 0..10_000u32 {
        let _ = e.evaluate(&Facts {
            now_ms: T0,
            class: RouteClass::Issuance,
            route: Some("login"),
            method: "POST",
            path: "/login",
            ip: IpAddr::from(std::net::Ipv4Addr::from(0x0c00_0000 + i)),
            account: None,
            token: None,
            headers: &Nothing,
            claims: &Nothing,
        });
    }
    for info in e.rules_info(T0) {
        let name = info.rule.name.as_str();
        let expected = if name == "burst-per-ip" || name == "logins-per-ip" {
            10_000
        } else {
            0
        };
        assert_eq!(info.tracked_keys, expected, "{name}");
    }
    // Two one-slot entries per address (key + 40-byte slot), at most 8/3 buckets each;
    // one entry with a slot for all five rules would be 208 bytes a bucket.
    let per_address = e.state_bytes() as f64 / 10_000.0;
    assert!(
        per_address <= 2.0 * 48.0 * 8.0 / 3.0,
        "{per_address} bytes per address"
    );
}

#[test]
fn sweeps_end_each_ban_on_time_without_walking_the_bans_every_call() {
    // Bans placed out of order of their ends (a long rule ban, then shorter manual ones):
    // each sweep must end exactly the bans whose time has come, whichever was placed
    // last, though sweeps in between skip the walk.
    let e = Engine::new(64 * MIB, 1000);
    e.set_idle_sweep_interval(u64::MAX / 4);
    e.set_rules(
        vec![rule(
            "ban-accounts",
            vec![Field::Ip],
            Measure::Distinct(Field::Account),
            3600,
            2,
            Action::Ban(Duration::from_secs(600)),
        )],
        64 * MIB,
    );
    for (i, a) in ["a", "b", "c"].iter().enumerate() {
        let _ = eval(&e, &Req::new("192.0.2.9", a), T0 + i as u64);
    }
    assert_eq!(e.active_bans(T0 + 10), 1, "the rule banned the address");
    assert_eq!(e.sweep(T0 + 100).bans_expired, 0);
    e.ban_manual(&Field::Ip, "192.0.2.1", T0 + 100, T0 + 50_000)
        .expect("ban");
    assert_eq!(e.sweep(T0 + 40_000).bans_expired, 0);
    e.ban_manual(&Field::Ip, "192.0.2.2", T0 + 40_000, T0 + 45_000)
        .expect("ban");
    assert_eq!(e.sweep(T0 + 44_999).bans_expired, 0);
    let r = e.sweep(T0 + 45_000);
    assert_eq!(r.bans_expired, 1);
    assert_eq!(r.ended[0].key, "ip=192.0.2.2");
    assert_eq!(e.sweep(T0 + 49_999).bans_expired, 0);
    let r = e.sweep(T0 + 50_000);
    assert_eq!(r.ended.len(), 1);
    assert_eq!(r.ended[0].key, "ip=192.0.2.1");
    assert_eq!(
        e.sweep(T0 + 600_001).bans_expired,
        0,
        "the rule's ban ends at +600 s + 2 ms"
    );
    let r = e.sweep(T0 + 600_002);
    assert_eq!(r.ended.len(), 1);
    assert_eq!(r.ended[0].rule, "ban-accounts");
    assert_eq!(e.active_bans(T0 + 600_002), 0);
    // A ban whose end is already behind the last sweep is still found.
    e.ban_manual(&Field::Ip, "192.0.2.3", T0, T0 + 1_000)
        .expect("ban");
    assert_eq!(e.sweep(T0 + 1_000).bans_expired, 1);
}

#[test]
fn hits_carry_the_key_digest() {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(
        vec![rule(
            "per-ip",
            vec![Field::Ip],
            Measure::Count,
            60,
            1,
            Action::Log,
        )],
        64 * MIB,
    );
    let a = Req::new("192.0.2.1", "x");
    let b = Req::new("192.0.2.2", "x");
    let ids: Vec<u64> = (0..3)
        .flat_map(|i| {
            let mut v = eval(&e, &a, T0 + i).hits;
            v.extend(eval(&e, &b, T0 + i).hits);
            v
        })
        .map(|h| h.key_id)
        .collect();
    // Two requests each below the threshold, then hits: a, b, a, b.
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], ids[2]);
    assert_eq!(ids[1], ids[3]);
    assert_ne!(ids[0], ids[1]);
}

/// Two nodes of a fleet, wired by hand the way the Redis synchronizer wires them: same
/// hash key, each pushing its deltas and reading the other's.
#[test]
fn fleet_scope_counts_add_the_other_nodes_and_bans_travel_by_note() {
    use crate::fleet::{FleetNote, FleetState};
    use std::sync::Arc;
    let key = *b"fleet-shared-key";
    let mk = |scope| {
        let e = Engine::with_key(64 * MIB, 1000, key);
        let mut r = rule("r", vec![Field::Ip], Measure::Count, 60, 10, Action::Block);
        r.scope = scope;
        e.set_rules(vec![r], 64 * MIB);
        let f = Arc::new(FleetState::new(1000));
        assert!(e.attach_fleet(Arc::clone(&f)));
        (e, f)
    };
    for (scope, caught) in [(Scope::Fleet, true), (Scope::Local, false)] {
        let (a, fa) = mk(scope);
        let (b, fb) = mk(scope);
        let req = Req::new("192.0.2.7", "x");
        let mut refused = false;
        // What each node has pushed so far (the Redis hash, one field per node).
        let (mut pushed_a, mut pushed_b) = (0u32, 0u32);
        for i in 0..20u64 {
            let now = T0 + i * 10;
            let node = if i % 2 == 0 { &a } else { &b };
            refused |= eval(node, &req, now).decision != Decision::Pass;
            // A sync after every pair of requests: each node pushes its deltas and reads
            // the other's total.
            if i % 2 == 1 {
                let (sa, sb) = (fa.take_sync(now, 100), fb.take_sync(now, 100));
                let sum = |s: &[crate::fleet::SyncItem]| -> u32 {
                    s.iter().flat_map(|x| x.deltas.iter().map(|d| d.1)).sum()
                };
                pushed_a += sum(&sa);
                pushed_b += sum(&sb);
                for it in &sa {
                    fa.set_remote(it.rule, it.key, it.epoch, 0, pushed_b);
                }
                for it in &sb {
                    fb.set_remote(it.rule, it.key, it.epoch, 0, pushed_a);
                }
            }
        }
        // Fleet scope: 20 requests > 10. Local scope: 10 per node, never over 10.
        assert_eq!(refused, caught, "scope {scope:?}");
    }
    // A manual ban on one node is noted for the fleet, and applies on another node with
    // the same id.
    let (a, fa) = mk(Scope::Fleet);
    let (b, _) = mk(Scope::Fleet);
    let id = a
        .ban_manual(&Field::Ip, "192.0.2.9", T0, T0 + 60_000)
        .expect("ban");
    let notes = fa.take_notes();
    let Some(FleetNote::Ban {
        scope,
        key,
        placed_ms,
        until_ms,
        display,
        ..
    }) = notes.first()
    else {
        panic!("no ban note: {notes:?}");
    };
    assert!(b.apply_fleet_ban(*scope, *key, *placed_ms, *until_ms, display));
    let req = Req::new("192.0.2.9", "y");
    assert!(matches!(
        eval(&b, &req, T0 + 1).decision,
        Decision::Banned { .. }
    ));
    assert_eq!(b.bans(T0 + 1)[0].0, id);
    // Lifting on a node notes it; applying the lift elsewhere frees the address.
    assert!(b.lift_fleet(&id));
    assert_eq!(eval(&b, &req, T0 + 2).decision, Decision::Pass);
    assert!(a.lift(&id));
    assert!(matches!(
        fa.take_notes().as_slice(),
        [FleetNote::Lift { .. }]
    ));
}

/// `evaluate_into` with one verdict reused over many requests answers as `evaluate` does
/// with a fresh one: same decision, rule, hits and tags in priority order (also past the
/// 32 kept inline, over several key groups), and nothing left over from the request before.
/// (Key digests are keyed per engine, so they are not compared.)
#[test]
fn a_reused_verdict_answers_as_a_fresh_one() {
    let rules = || -> Vec<Rule> {
        (0..40u64)
            .map(|i| {
                let key = match i % 3 {
                    0 => vec![Field::Ip],
                    1 => vec![Field::Account],
                    _ => vec![Field::Ip, Field::Account],
                };
                let action = match i % 4 {
                    0 => Action::Tag,
                    1 => Action::Log,
                    2 => Action::RateLimit,
                    _ => Action::Block,
                };
                let mut r = rule(&format!("r{i:02}"), key, Measure::Count, 60, i / 2, action);
                // Priorities out of the rules' order and of their groups'.
                r.priority = ((i * 17) % 40) as i64;
                r
            })
            .collect()
    };
    let fresh = Engine::new(64 * MIB, 1000);
    let reused = Engine::new(64 * MIB, 1000);
    fresh.set_rules(rules(), 64 * MIB);
    reused.set_rules(rules(), 64 * MIB);
    let mut v = crate::Verdict::default();
    let mut most = 0;
    for i in 0..60u64 {
        // A busy client, and now and then a new one that fires nothing.
        let (ip, account) = if i % 7 == 6 {
            (format!("198.51.100.{i}"), format!("new{i}"))
        } else {
            ("192.0.2.9".to_owned(), "busy".to_owned())
        };
        let q = Req::new(&ip, &account);
        let facts = Facts {
            now_ms: T0 + i,
            class: RouteClass::Protected,
            route: Some("account"),
            method: "GET",
            path: q.path,
            ip: q.ip,
            account: q.account,
            token: q.token.as_ref(),
            headers: &Nothing,
            claims: &Nothing,
        };
        let want = fresh.evaluate(&facts);
        reused.evaluate_into(&facts, &mut v);
        assert_eq!(v.decision, want.decision, "request {i}");
        assert_eq!(v.decided_by, want.decided_by, "request {i}");
        assert_eq!(v.tags, want.tags, "request {i}");
        let show = |h: &crate::Hit| (h.rule, h.estimate, h.crossed, h.ban_placed, h.key.clone());
        let got: Vec<_> = v.hits.iter().map(show).collect();
        assert_eq!(
            got,
            want.hits.iter().map(show).collect::<Vec<_>>(),
            "request {i}"
        );
        let priorities: Vec<i64> = v
            .hits
            .iter()
            .map(|h| ((h.rule[1..].parse::<u64>().expect("index") * 17) % 40) as i64)
            .collect();
        assert!(
            priorities.windows(2).all(|w| w[0] <= w[1]),
            "{priorities:?}"
        );
        most = most.max(v.hits.len());
    }
    assert_eq!(
        most, 40,
        "every rule fires at the end, past the 32 kept inline"
    );
}
