//! Replay decisions, reports, diff and HTML.

use std::sync::Arc;

use serde_json::json;
use warden_core::fixtures::{mint, SampleKey};
use warden_core::keys::{KeyRegistry, KeyState};
use warden_core::ledger::{Record, TokenId};
use warden_core::verify::{Policy, Verifier};
use warden_core::Reason;
use warden_rules::Rule;

use crate::format::{FieldMap, Format};
use crate::{replay_logs, Outcome, Provenance, Replayer, Setup, MAX_BAD_LISTED};

const T: u64 = 1_800_000_000;

fn rules(src: &str) -> Vec<Rule> {
    let (located, diags) = warden_config::rules::compile_rule_str("test.toml".as_ref(), src);
    assert!(
        diags
            .iter()
            .all(|d| d.severity != warden_config::Severity::Error),
        "{diags:?}"
    );
    located.into_iter().map(|l| l.rule).collect()
}

fn checked(rules: Vec<Rule>, records: Vec<Record>) -> Replayer {
    let registry =
        KeyRegistry::build(vec![SampleKey::Hs.spec("k", KeyState::Active)]).expect("keys");
    Replayer::new(Setup {
        rules,
        max_state_bytes: 64 << 20,
        max_bans: 10_000,
        routes: None,
        provenance: Provenance::Checked {
            verifier: Arc::new(Verifier::new(registry, Policy::default())),
        },
        log_has_tokens: true,
        records: Arc::new(records),
        header_names: Vec::new(),
    })
}

fn token(account: &str, jti: &str) -> String {
    mint(
        SampleKey::Hs,
        "k",
        &json!({"sub": account, "jti": jti, "iat": T, "exp": T + 86_400}),
    )
    .expect("mint")
}

fn record(account: &str, jti: &str) -> Record {
    Record {
        id: TokenId::from_jti(jti),
        account: account.into(),
        issued_at: T,
        expires_at: T + 86_400,
        kid: "k".into(),
    }
}

fn line(ms: u64, ip: &str, tok: Option<&str>) -> String {
    let mut v = json!({"time": ms, "ip": ip, "method": "GET", "path": "/account/orders"});
    if let Some(t) = tok {
        v["token"] = json!(t);
    }
    v.to_string()
}

/// Feeds lines and returns the outcomes.
fn feed(r: &mut Replayer, lines: &[String]) -> Vec<Outcome> {
    let map = FieldMap::new(Format::JsonLines);
    lines
        .iter()
        .map(|l| r.feed(&map.parse(l.as_bytes()).expect("line")).outcome)
        .collect()
}

#[test]
fn provenance_refuses_forged_and_missing_but_rules_still_count_them() {
    let mut r = checked(
        rules(
            r#"[[rules]]
name = "per-ip"
key = ["ip"]
window = "1m"
threshold = 2
action = "block"
"#,
        ),
        vec![record("alice", "a1")],
    );
    let good = token("alice", "a1");
    let forged = token("bob", "never-issued");
    let t = T * 1000;
    let out = feed(
        &mut r,
        &[
            line(t, "192.0.2.1", Some(&forged)),
            line(t + 1, "192.0.2.1", None),
            line(t + 2, "192.0.2.1", Some(&good)),
            line(t + 3, "192.0.2.2", Some(&good)),
            line(t + 4, "192.0.2.2", Some("not-a-token")),
        ],
    );
    assert_eq!(
        out,
        vec![
            Outcome::Refused(Reason::Forged),
            Outcome::Refused(Reason::Missing),
            // The two refused requests counted: the third from the address is over 2.
            Outcome::Blocked,
            Outcome::Passed,
            Outcome::Refused(Reason::Malformed),
        ]
    );
}

#[test]
fn a_revoke_token_decision_revokes_in_the_replay_ledger() {
    let mut r = checked(
        rules(
            r#"[[rules]]
name = "ips-per-token"
key = ["token"]
measure = "distinct"
distinct = "ip"
window = "1h"
threshold = 2
action = "revoke_token"
"#,
        ),
        vec![record("victim", "v1"), record("other", "o1")],
    );
    let stolen = token("victim", "v1");
    let other = token("other", "o1");
    let t = T * 1000;
    let out = feed(
        &mut r,
        &[
            line(t, "192.0.2.1", Some(&stolen)),
            line(t + 1000, "198.51.100.1", Some(&stolen)),
            line(t + 2000, "203.0.113.1", Some(&stolen)),
            // Hours later, back on the owner's address, under the threshold by then: the
            // ledger refuses it, as the live ledger would.
            line(t + 3 * 3_600_000, "192.0.2.1", Some(&stolen)),
            line(t + 3 * 3_600_000, "192.0.2.1", Some(&other)),
        ],
    );
    assert_eq!(
        out,
        vec![
            Outcome::Passed,
            Outcome::Passed,
            Outcome::Revoked,
            Outcome::Refused(Reason::RevokedToken),
            Outcome::Passed,
        ]
    );
}

#[test]
fn bans_expire_on_log_time() {
    let mut r = checked(
        rules(
            r#"[[rules]]
name = "burst"
key = ["ip"]
window = "1s"
threshold = 2
action = "ban"
ban_for = "10s"
"#,
        ),
        vec![record("alice", "a1")],
    );
    let good = token("alice", "a1");
    let t = T * 1000;
    let at = |ms: u64| line(t + ms, "192.0.2.1", Some(&good));
    let out = feed(&mut r, &[at(0), at(100), at(200), at(5_000), at(10_300)]);
    assert_eq!(
        out,
        vec![
            Outcome::Passed,
            Outcome::Passed,
            Outcome::Banned,
            // Under the threshold, still banned.
            Outcome::Banned,
            // The ban placed at 200 ms ended at 10.2 s.
            Outcome::Passed,
        ]
    );
    assert_eq!(r.engine().bans(t + 10_300).len(), 0);
}

#[test]
fn account_only_logs_feed_account_rules_without_judging_provenance() {
    let mut r = Replayer::new(Setup {
        rules: rules(
            r#"[[rules]]
name = "ips-per-account"
key = ["account"]
measure = "distinct"
distinct = "ip"
window = "1h"
threshold = 1
action = "block"
"#,
        ),
        max_state_bytes: 64 << 20,
        max_bans: 1000,
        routes: None,
        provenance: Provenance::Unchecked {
            account_claim: "sub".into(),
        },
        log_has_tokens: false,
        records: Arc::new(Vec::new()),
        header_names: Vec::new(),
    });
    let map = FieldMap::new(Format::JsonLines);
    let l = |ip: &str, account: &str| {
        json!({"time": "2027-01-15T08:00:00Z", "ip": ip, "method": "GET", "path": "/account/x", "account": account}).to_string()
    };
    let out: Vec<Outcome> = [
        l("192.0.2.1", "alice"),
        l("192.0.2.2", "alice"),
        l("192.0.2.2", "bob"),
    ]
    .iter()
    .map(|x| r.feed(&map.parse(x.as_bytes()).expect("line")).outcome)
    .collect();
    assert_eq!(
        out,
        vec![Outcome::Passed, Outcome::Blocked, Outcome::Passed]
    );
}

#[test]
fn bad_lines_are_counted_exactly_and_listed_with_numbers() {
    let mut r = checked(Vec::new(), Vec::new());
    let mut log = String::new();
    for i in 0..50 {
        if i % 2 == 0 {
            log.push_str("garbage\n");
        } else {
            log.push_str(&line(T * 1000 + i, "192.0.2.1", None));
            log.push('\n');
        }
    }
    log.push_str("\n\r\n");
    let map = FieldMap::new(Format::JsonLines);
    let run = replay_logs(
        vec![("a.log".into(), log.as_bytes())],
        &map,
        std::slice::from_mut(&mut r),
    );
    assert_eq!(run.lines, 52);
    assert_eq!(run.bad_lines, 25);
    assert_eq!(run.bad.len(), MAX_BAD_LISTED);
    assert_eq!(
        run.bad.iter().map(|b| b.line).take(3).collect::<Vec<_>>(),
        vec![1, 3, 5]
    );
    assert!(run.bad[0].error.contains("not a JSON object"));
    let report = r.stats.report(run.meta("checked", "r.toml"));
    assert_eq!(report.requests, 25);
    assert!(report.text().contains("a.log:1: not a JSON object"));
    assert!(report.text().contains("and 5 more"));
}

fn sample_log() -> String {
    let t = T * 1000;
    let mut log = String::new();
    // One address walking through 30 accounts, and a household with 3.
    for i in 0..30u64 {
        let l = json!({"time": t + i * 1000, "ip": "203.0.113.9", "method": "GET",
            "path": "/account/addresses", "account": format!("victim-{i}"), "label": "<script>scraper"});
        log.push_str(&l.to_string());
        log.push('\n');
        let l = json!({"time": t + i * 1000 + 1, "ip": "192.0.2.1", "method": "GET",
            "path": "/account/orders", "account": format!("home-{}", i % 3), "label": "legit"});
        log.push_str(&l.to_string());
        log.push('\n');
    }
    log
}

fn unchecked(rules: Vec<Rule>) -> Replayer {
    Replayer::new(Setup {
        rules,
        max_state_bytes: 64 << 20,
        max_bans: 1000,
        routes: None,
        provenance: Provenance::Unchecked {
            account_claim: "sub".into(),
        },
        log_has_tokens: false,
        records: Arc::new(Vec::new()),
        header_names: Vec::new(),
    })
}

const LOOSE: &str = r#"[[rules]]
name = "accounts-per-ip"
key = ["ip"]
measure = "distinct"
distinct = "account"
window = "1h"
threshold = 20
action = "block"
"#;

const STRICT: &str = r#"[[rules]]
name = "accounts-per-ip"
key = ["ip"]
measure = "distinct"
distinct = "account"
window = "1h"
threshold = 5
action = "block"

[[rules]]
name = "watch"
key = ["ip"]
window = "1m"
threshold = 10
action = "ban"
ban_for = "1h"
mode = "shadow"
"#;

#[test]
fn report_counts_hits_first_hit_top_keys_and_labels() {
    let mut r = unchecked(rules(STRICT));
    let map = FieldMap::new(Format::JsonLines);
    let log = sample_log();
    let run = replay_logs(
        vec![("s.log".into(), log.as_bytes())],
        &map,
        std::slice::from_mut(&mut r),
    );
    let rep = r.stats.report(run.meta("unchecked", "strict.toml"));
    let rule = rep
        .rules
        .iter()
        .find(|x| x.name == "accounts-per-ip")
        .expect("rule");
    // Accounts 6..30 of the scraper: 25 hits, all refusing; the household never.
    assert_eq!((rule.hits, rule.would_block, rule.decided), (25, 25, 25));
    assert_eq!(rule.first_hit_ms, Some(T * 1000 + 5000));
    assert_eq!(rule.top_keys[0].key, "ip=203.0.113.9");
    assert_eq!(rule.top_keys.len(), 1);
    // The shadow ban rule would have refused from the 11th request in a minute, and
    // decides nothing.
    let watch = rep.rules.iter().find(|x| x.name == "watch").expect("rule");
    assert!(watch.would_block > 0);
    assert_eq!(watch.decided, 0);
    let legit = rep
        .labels
        .iter()
        .find(|l| l.label == "legit")
        .expect("label");
    assert_eq!((legit.requests, legit.refused, legit.users), (30, 0, 1));
    let scraper = rep
        .labels
        .iter()
        .find(|l| l.label == "<script>scraper")
        .expect("label");
    assert_eq!(scraper.requests_before_first_refusal, Some(5));
    assert_eq!((scraper.users, scraper.users_refused), (1, 1));
    assert_eq!(scraper.first_refusal_after_ms, Some(5000));
    assert_eq!(scraper.reached_upstream, 5);
    // Requests from 10 s on: 20, none reached.
    assert_eq!(
        (scraper.after_10s_requests, scraper.after_10s_reached),
        (20, 0)
    );
    let v: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&rep).expect("json")).expect("parse");
    assert!(v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .any(|r| r["name"] == "accounts-per-ip" && r["hits"] == 25));
    assert_eq!(v["requests"], 60);
}

#[test]
fn diff_shows_what_changes_between_two_rule_sets() {
    let mut rs = vec![unchecked(rules(LOOSE)), unchecked(rules(STRICT))];
    let map = FieldMap::new(Format::JsonLines);
    let log = sample_log();
    let run = replay_logs(vec![("s.log".into(), log.as_bytes())], &map, &mut rs);
    // Loose blocks accounts 21..30 (10), strict 6..30 (25): 15 more.
    assert_eq!(run.changed, 15);
    assert_eq!(run.transitions.get("passed -> blocked"), Some(&15));
    assert_eq!(run.examples[0].line, 11, "the 6th scraper line is line 11");
    let d = crate::Diff {
        before: rs[0].stats.report(run.meta("unchecked", "loose.toml")),
        after: rs[1].stats.report(run.meta("unchecked", "strict.toml")),
        changed: run.changed,
        transitions: run.transitions.clone(),
        examples: run.examples.clone(),
    };
    let text = d.text();
    assert!(text.contains("15 requests changed outcome"), "{text}");
    assert!(text.contains("passed -> blocked: 15"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("accounts-per-ip"))
        .expect("row");
    assert!(row.contains("changed"), "{row}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("watch") && l.contains("added")));
}

/// A replay is reproducible: two replays of one log agree to the last bit of every
/// estimate, and a rule set diffed against itself changes nothing. (The engine's digests
/// are keyed; with a key drawn at random per replayer, the distinct sketches of two
/// replays would differ, and a diff would report changes no rule made.)
#[test]
fn replays_are_reproducible_and_a_rule_set_diffed_with_itself_changes_nothing() {
    const WIDE: &str = r#"[[rules]]
name = "accounts-per-ip"
key = ["ip"]
measure = "distinct"
distinct = "account"
window = "1h"
threshold = 1000
action = "block"
"#;
    let t = T * 1000;
    let mut log = String::new();
    // Past the exact sets' 64 values: the HyperLogLog sketches decide.
    for i in 0..2000u64 {
        let l = json!({"time": t + i, "ip": "203.0.113.9", "method": "GET",
            "path": "/account/orders", "account": format!("victim-{i}")});
        log.push_str(&l.to_string());
        log.push('\n');
    }
    let map = FieldMap::new(Format::JsonLines);
    let estimates = |r: &Replayer| -> Vec<u64> {
        r.engine()
            .rules_info(t + 2000)
            .iter()
            .flat_map(|i| i.top.iter().map(|o| o.estimate.to_bits()))
            .collect()
    };
    let mut both = vec![unchecked(rules(WIDE)), unchecked(rules(WIDE))];
    let run = replay_logs(vec![("w.log".into(), log.as_bytes())], &map, &mut both);
    let first = estimates(&both[0]);
    assert!(!first.is_empty(), "the scraping address is a top offender");
    assert_eq!(estimates(&both[1]), first);
    assert_eq!(run.changed, 0, "{:?}", run.examples);
    let mut again = unchecked(rules(WIDE));
    let _ = replay_logs(
        vec![("w.log".into(), log.as_bytes())],
        &map,
        std::slice::from_mut(&mut again),
    );
    assert_eq!(estimates(&again), first);
}

/// Checks that tags nest: every opened tag is closed in order (void and self-closed tags
/// aside), and that nothing is loaded from elsewhere.
fn assert_well_formed(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        let end = rest[i..].find('>').expect("every tag ends") + i;
        let tag = &rest[i + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        assert!(!name.is_empty(), "empty tag <{tag}>");
        if ["meta", "br"].contains(&name.as_str()) {
            continue;
        }
        if tag.starts_with('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "</{name}>");
        } else {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(!html.contains("<script"));
    assert!(!html.contains("src="));
    assert!(!html.contains("href="));
}

#[test]
fn html_report_is_self_contained_and_well_formed() {
    let mut r = unchecked(rules(STRICT));
    let map = FieldMap::new(Format::JsonLines);
    let mut log = sample_log();
    log.push_str("bad <line>\n");
    let run = replay_logs(
        vec![("s.log".into(), log.as_bytes())],
        &map,
        std::slice::from_mut(&mut r),
    );
    let html = crate::html::render(&r.stats.report(run.meta("unchecked", "strict.toml")));
    assert_well_formed(&html);
    // One chart for all requests, one per rule.
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(html.contains("&lt;script&gt;scraper"));
    assert!(html.contains("<code>s.log:61</code>"));
}

/// The lines `read_until` cuts (the reader before `for_each_line`), `\n` removed.
fn lines_by_read_until(data: &[u8]) -> Vec<Vec<u8>> {
    use std::io::BufRead as _;
    let mut r = data;
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::new();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                out.push(buf);
            }
        }
    }
}

#[test]
fn lines_are_cut_as_read_until_cut_them_whatever_the_buffer() {
    // Buffers down to one byte, so that lines straddle fills at every offset, and lines
    // longer than the buffer; empty lines, CRs, no final newline.
    let mut state = 5u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..600 {
        let len = (rand() % 200) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| match rand() % 6 {
                0 => b'\n',
                1 => b'\r',
                _ => b'a' + (rand() % 26) as u8,
            })
            .collect();
        let want = lines_by_read_until(&data);
        for cap in [1, 2, 3, 7, 64, 1 << 20] {
            let mut got = Vec::new();
            let mut carry = b"left over".to_vec();
            let mut input = std::io::BufReader::with_capacity(cap, &data[..]);
            crate::for_each_line(&mut input, &mut carry, |l| got.push(l.to_vec()))
                .expect("no read error");
            assert_eq!(got, want, "round {round}, buffer {cap}: {data:?}");
        }
    }
}

/// Yields `data` in pieces of `piece` bytes, an interruption before each, then `fail`.
struct Flaky {
    data: Vec<u8>,
    at: usize,
    piece: usize,
    interrupted: bool,
    fail: Option<std::io::ErrorKind>,
}

impl std::io::Read for Flaky {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.interrupted = !self.interrupted;
        if self.interrupted {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.at == self.data.len() {
            return match self.fail {
                Some(k) => Err(k.into()),
                None => Ok(0),
            };
        }
        let n = self.piece.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn a_read_error_ends_the_file_as_one_bad_line_after_the_lines_before_it() {
    let good = line(T * 1000, "192.0.2.1", None);
    let data = format!("{good}\n{good}\r\n{good}").into_bytes();
    let flaky = |fail| {
        std::io::BufReader::with_capacity(
            16,
            Flaky {
                data: data.clone(),
                at: 0,
                piece: 5,
                interrupted: false,
                fail,
            },
        )
    };
    let mut r = checked(Vec::new(), Vec::new());
    let map = FieldMap::new(Format::JsonLines);
    // Interruptions are retried: all three lines, the last without a newline.
    let run = replay_logs(
        vec![("a.log".into(), flaky(None))],
        &map,
        std::slice::from_mut(&mut r),
    );
    assert_eq!((run.lines, run.bad_lines), (3, 0));
    // An error while the third line is read: two lines, then bad line 3; the next file
    // is read.
    let run = replay_logs(
        vec![
            ("a.log".into(), flaky(Some(std::io::ErrorKind::BrokenPipe))),
            ("b.log".into(), flaky(None)),
        ],
        &map,
        std::slice::from_mut(&mut r),
    );
    assert_eq!((run.lines, run.bad_lines), (5, 1));
    assert_eq!((run.bad[0].file.as_str(), run.bad[0].line), ("a.log", 3));
    assert!(run.bad[0]
        .error
        .starts_with("read error, rest of the file skipped"));
    assert_eq!(r.stats.requests, 8);
}
