//! The engine against a naive model: every rule on its own, with its own map from the
//! key's text to a [`SlidingCount`] or [`DistinctSet`], no key groups, no shared slots,
//! no precomputed tables. The engine groups rules by key, keeps per-slot tables built at
//! `set_rules`, and skips work for requests far below every threshold; a slot, a window,
//! a counted field or a group mixed up anywhere shows here as a different estimate, hit,
//! tag or decision on some request.

use std::collections::HashMap;
use std::net::IpAddr;

use warden_core::ledger::TokenId;
use warden_rules::{Action, Field, Measure, Mode, PathPattern, RouteClass, Rule};

use crate::distinct::DistinctSet;
use crate::tests::{rule, T0};
use crate::window::SlidingCount;
use crate::{Decision, Engine, Facts, Nothing};

/// Twelve rules over five keys (one of two fields), counts and distinct counts over
/// different fields and windows, three route-class sets, a path match and a shadow rule.
fn pack() -> Vec<Rule> {
    let acct = || Measure::Distinct(Field::Account);
    let net24 = Field::IpPrefix { v4: 24, v6: 64 };
    let mut rules = vec![
        rule(
            "ip-10s",
            vec![Field::Ip],
            Measure::Count,
            10,
            5,
            Action::Log,
        ),
        rule(
            "ip-1m",
            vec![Field::Ip],
            Measure::Count,
            60,
            12,
            Action::RateLimit,
        ),
        rule(
            "ip-accounts-1m",
            vec![Field::Ip],
            acct(),
            60,
            3,
            Action::Tag,
        ),
        rule(
            "ip-accounts-5m",
            vec![Field::Ip],
            acct(),
            300,
            4,
            Action::Log,
        ),
        rule(
            "ip-accounts-10m",
            vec![Field::Ip],
            acct(),
            600,
            3,
            Action::Block,
        ),
        rule(
            "ip-sensitive",
            vec![Field::Ip],
            Measure::Count,
            30,
            2,
            Action::Block,
        ),
        rule("net-accounts", vec![net24], acct(), 120, 5, Action::Log),
        rule(
            "token-ips",
            vec![Field::Token],
            Measure::Distinct(Field::Ip),
            60,
            2,
            Action::Tag,
        ),
        rule(
            "account-20s",
            vec![Field::Account],
            Measure::Count,
            20,
            3,
            Action::RateLimit,
        ),
        rule(
            "ip-logins",
            vec![Field::Ip],
            Measure::Count,
            60,
            3,
            Action::Log,
        ),
        rule(
            "account-ip",
            vec![Field::Account, Field::Ip],
            Measure::Count,
            60,
            2,
            Action::Log,
        ),
        rule(
            "net16-tokens",
            vec![Field::IpPrefix { v4: 16, v6: 48 }],
            Measure::Distinct(Field::Token),
            90,
            6,
            Action::Log,
        ),
    ];
    for (i, r) in rules.iter_mut().enumerate() {
        r.priority = i as i64;
        r.matcher.classes = match r.name.as_str() {
            "ip-10s" => vec![],
            "ip-logins" => vec![RouteClass::Issuance],
            _ => vec![RouteClass::Protected],
        };
    }
    rules[4].mode = Mode::Shadow;
    rules[5].matcher.paths = vec![PathPattern::Prefix("/s/".into())];
    rules
}

struct Request {
    now_ms: u64,
    class: RouteClass,
    path: &'static str,
    ip: IpAddr,
    account: Option<String>,
    token: Option<TokenId>,
}

/// The model's state of one rule for one key.
enum Model {
    Count(SlidingCount),
    Distinct(DistinctSet),
}

/// What a rule's key reads as in the model (`None`: the request lacks a field).
fn model_key(fields: &[Field], r: &Request) -> Option<String> {
    let mut out = String::new();
    for field in fields {
        let part = match field {
            Field::Ip => r.ip.to_string(),
            Field::IpPrefix { v4, .. } => match r.ip {
                IpAddr::V4(a) => format!("{}/{v4}", u32::from(a) >> (32 - u32::from(*v4))),
                IpAddr::V6(a) => a.to_string(),
            },
            Field::Account => r.account.clone()?,
            Field::Token => r.token.as_ref()?.to_hex(),
            other => panic!("the pack keys on no {other:?}"),
        };
        out.push_str(&part);
        out.push('|');
    }
    Some(out)
}

/// (rule, estimate bits, crossed) of each hit, the tags, and the decision.
type Outcome = (Vec<(String, u64, bool)>, Vec<String>, Decision);

struct Reference {
    rules: Vec<Rule>,
    state: HashMap<(usize, String), Model>,
    /// A distinct value's fingerprint: its index, so distinct only if different.
    values: HashMap<String, u32>,
}

impl Reference {
    fn observe(&mut self, r: &Request) -> Outcome {
        let mut hits = Vec::new();
        let mut tags = Vec::new();
        let mut decision = Decision::Pass;
        let mut strongest: Option<(u8, i64)> = None;
        for (ri, rule) in self.rules.iter().enumerate() {
            let m = &rule.matcher;
            if !(m.classes.is_empty() || m.classes.contains(&r.class))
                || !(m.paths.is_empty() || m.paths.iter().any(|p| p.matches(r.path)))
            {
                continue;
            }
            let Some(key) = model_key(&rule.key, r) else {
                continue;
            };
            let window_ms = rule.window.as_millis() as u64;
            let estimate = match &rule.measure {
                Measure::Count => {
                    let s = self
                        .state
                        .entry((ri, key))
                        .or_insert_with(|| Model::Count(SlidingCount::default()));
                    let Model::Count(c) = s else { panic!("kind") };
                    c.add(r.now_ms, window_ms)
                }
                Measure::Distinct(field) => {
                    let Some(value) = model_key(std::slice::from_ref(field), r) else {
                        continue;
                    };
                    let n = self.values.len() as u32;
                    let fp = *self.values.entry(value).or_insert(n);
                    let s = self
                        .state
                        .entry((ri, key))
                        .or_insert_with(|| Model::Distinct(DistinctSet::default()));
                    let Model::Distinct(d) = s else {
                        panic!("kind")
                    };
                    d.insert(fp, r.now_ms, window_ms).0
                }
            };
            let threshold = rule.threshold as f64;
            if estimate <= threshold {
                continue;
            }
            hits.push((
                rule.name.clone(),
                estimate.to_bits(),
                estimate - 1.0 <= threshold,
            ));
            if rule.mode != Mode::Enforce {
                continue;
            }
            let (severity, d) = match rule.action {
                Action::Tag => {
                    tags.push(rule.name.clone());
                    continue;
                }
                Action::Log => continue,
                Action::RateLimit => (
                    2,
                    Decision::RateLimit {
                        retry_after_s: SlidingCount::ms_to_window_end(r.now_ms, window_ms)
                            .div_ceil(1000)
                            .max(1),
                    },
                ),
                Action::Block => (3, Decision::Block),
                _ => panic!("the pack has no {:?}", rule.action),
            };
            if strongest.is_none_or(|(s, p)| severity > s || (severity == s && rule.priority < p)) {
                strongest = Some((severity, rule.priority));
                decision = d;
            }
        }
        (hits, tags, decision)
    }
}

/// xorshift64: the same requests on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn the_engine_agrees_with_a_rule_by_rule_model_on_every_request() {
    let rules = pack();
    let e = Engine::with_key(64 << 20, 1000, *b"reference-model!");
    e.set_rules(rules.clone(), 64 << 20);
    let mut model = Reference {
        rules: {
            let mut r = rules;
            r.sort_by_key(|r| r.priority);
            r
        },
        state: HashMap::new(),
        values: HashMap::new(),
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut now_ms = T0;
    let (mut hits, mut tags, mut limited, mut blocked) = (0, 0, 0, 0);
    for n in 0..30_000 {
        // Bursts (many requests in one second) and gaps (windows rolling over).
        now_ms += match rng.below(50) {
            0 => rng.below(90_000),
            1..=25 => rng.below(50),
            _ => rng.below(1_000),
        };
        let class = match rng.below(10) {
            0 => RouteClass::Issuance,
            1 => RouteClass::Open,
            _ => RouteClass::Protected,
        };
        // 24 addresses in 6 /24s in 3 /16s, one of them busy, and one IPv6; 12 accounts,
        // some requests with neither account nor token.
        let ip: IpAddr = if rng.below(4) == 0 {
            IpAddr::from([10, 0, 0, 1])
        } else if rng.below(20) == 0 {
            "2001:db8::7".parse().expect("v6")
        } else {
            let b = rng.below(3) as u8;
            let c = rng.below(2) as u8;
            IpAddr::from([10, b, c, 1 + rng.below(4) as u8])
        };
        let account = (rng.below(8) != 0).then(|| format!("acct-{}", rng.below(12)));
        let token = account
            .as_ref()
            .map(|a| TokenId::from_jti(&format!("{a}-{}", rng.below(2))));
        let r = Request {
            now_ms,
            class,
            path: if rng.below(3) == 0 {
                "/s/orders"
            } else {
                "/a/home"
            },
            ip,
            account,
            token,
        };
        let want = model.observe(&r);
        let v = e.evaluate(&Facts {
            now_ms,
            class: r.class,
            route: None,
            method: "GET",
            path: r.path,
            ip: r.ip,
            account: r.account.as_deref(),
            token: r.token.as_ref(),
            headers: &Nothing,
            claims: &Nothing,
        });
        let got: Outcome = (
            v.hits
                .iter()
                .map(|h| (h.rule.to_string(), h.estimate.to_bits(), h.crossed))
                .collect(),
            v.tags.iter().map(|t| t.to_string()).collect(),
            v.decision.clone(),
        );
        assert_eq!(got, want, "request {n} at {now_ms}");
        hits += want.0.len();
        tags += want.1.len();
        limited += usize::from(matches!(want.2, Decision::RateLimit { .. }));
        blocked += usize::from(want.2 == Decision::Block);
        if n % 50 == 0 {
            // Dropping idle keys changes no estimate.
            e.set_idle_sweep_interval(1 + rng.below(120_000));
            let _ = e.sweep(now_ms);
        }
    }
    // The comparison covered every kind of outcome, many times.
    assert!(
        hits > 5_000 && tags > 1_000 && limited > 500 && blocked > 500,
        "hits {hits}, tags {tags}, rate limits {limited}, blocks {blocked}"
    );
}
