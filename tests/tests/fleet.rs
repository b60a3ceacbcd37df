//! Fleet mode: two warden processes sharing one real `redis-server` (started here on a
//! free loopback port, `appendfsync always`), in front of one real upstream.

use std::time::{Duration, Instant};

use warden_core::fixtures::SampleKey;
use warden_e2e::{
    free_port, kid, now, request, token, wait_for, Redis, Response, Upstream, Warden,
};

/// The fleet's shared secret, written next to each node's config.
const FLEET_KEY: &str = "fleet-test-key-0123456789abcdef";

/// Lookups that miss a node's index go to Redis: on a loaded 2-core CI machine a round
/// trip can exceed the default 50 ms, which would turn a test of propagation into one of
/// the fail mode.
const LEDGER: &str = "timeout = \"1s\"";

/// A protected route whose ledger failures let requests through (loudly).
const OPEN_ROUTE: &str = r#"
[[routes]]
name = "catalog"
class = "protected"
paths = ["/catalog/*"]
on_backend_failure = "fail_open"
"#;

fn fleet_extra(redis: &Redis, node: &str, namespace: &str, dir: &std::path::Path) -> String {
    let key = dir.join(format!("fleet-{node}.key"));
    std::fs::write(&key, FLEET_KEY).expect("write fleet key");
    format!(
        r#"
[fleet]
redis_url = "{url}"
node = "{node}"
namespace = "{namespace}"
key_file = "{key}"
sync_interval = "100ms"
command_timeout = "300ms"
connect_timeout = "300ms"
{OPEN_ROUTE}"#,
        url = redis.url(),
        key = key.display(),
    )
}

/// Two nodes on one Redis, with the same rules.
fn two_nodes(
    redis: &Redis,
    up: &Upstream,
    rules: &str,
    ns: &str,
) -> (Warden, Warden, tempfile::TempDir) {
    two_nodes_with(redis, up, rules, LEDGER, ns)
}

/// [`two_nodes`] with these `[ledger]` lines.
fn two_nodes_with(
    redis: &Redis,
    up: &Upstream,
    rules: &str,
    ledger: &str,
    ns: &str,
) -> (Warden, Warden, tempfile::TempDir) {
    let keys = tempfile::tempdir().expect("tempdir");
    let a = Warden::start_with_rules_and_ledger_to(
        up.addr,
        rules,
        ledger,
        &fleet_extra(redis, "a", ns, keys.path()),
    );
    let b = Warden::start_with_rules_and_ledger_to(
        up.addr,
        rules,
        ledger,
        &fleet_extra(redis, "b", ns, keys.path()),
    );
    (a, b, keys)
}

/// How long `f` takes to hold, polled every 20 ms, at most `limit`.
fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    wait_for(limit, || f().then_some(())).map(|()| start.elapsed())
}

/// Whether `f` holds within a second (the fleet's propagation bound).
fn within_a_second(f: impl FnMut() -> bool) -> bool {
    time_until(Duration::from_secs(1), f).is_some()
}

/// Revokes one token through `w`'s admin API.
fn revoke_token(w: &Warden, t: &str) {
    let r = revoke_answer(w, t);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The admin API's answer to revoking one token through `w`.
fn revoke_answer(w: &Warden, t: &str) -> Response {
    w.admin(
        "POST",
        "/ledger/revoke",
        &serde_json::json!({"token": t}).to_string(),
    )
}

/// Bans a client address through `w`'s admin API, for `ttl`.
fn ban_address(w: &Warden, ip: &str, ttl: &str) {
    let r = w.admin(
        "POST",
        "/decisions",
        &format!(r#"{{"field":"ip","value":"{ip}","ttl":"{ttl}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn records_revocations_and_bans_reach_every_node_within_a_second() {
    let redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    // A node-local rule that bans: a ban it places on one node must apply on the other.
    let rules = r#"
[[rules]]
name = "ban-fast"
paths = ["/account/ban/*"]
key = ["ip"]
window = "1m"
threshold = 3
action = "ban"
ban_for = "1h"
"#;
    let (a, b, _keys) = two_nodes(&redis, &up, rules, "t1");
    let t = token(SampleKey::RsA, kid::ACTIVE, "alice", now() - 60);

    // Unknown everywhere: forged.
    let r = b.get("/account/profile", &t);
    assert_eq!(r.status, 401, "{}\n{}", r.text(), b.log());
    // Recorded on A: accepted on B within a second.
    a.record(&t);
    let took = time_until(Duration::from_secs(1), || {
        b.get("/account/profile", &t).status == 200
    });
    assert!(
        took.is_some(),
        "a record made on A was not accepted on B within 1 s"
    );
    // Twice more on B: the token is now in B's index and its confirmed cache.
    assert_eq!(b.get("/account/profile", &t).status, 200);
    assert_eq!(b.get("/account/profile", &t).status, 200);
    let cached = wait_for(Duration::from_secs(2), || {
        (b.metric("warden_verify_cache_entries") >= 1.0).then_some(())
    });
    assert!(cached.is_some(), "B did not cache the confirmed token");

    // Revoked on A: refused on B within a second, cache or not.
    revoke_token(&a, &t);
    assert!(
        within_a_second(|| b.get("/account/profile", &t).status == 401),
        "a revocation made on A still passed on B after 1 s"
    );
    let counted = wait_for(Duration::from_secs(1), || {
        (b.metric("warden_fleet_stream_applied_total{kind=\"revocation\"}") >= 1.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "B did not count the revocation it applied"
    );
    // And it stays refused (the cache does not bring it back).
    for _ in 0..3 {
        assert_eq!(b.get("/account/profile", &t).status, 401);
    }

    // An account revocation on B reaches A.
    let t2 = token(SampleKey::RsA, kid::ACTIVE, "bob", now() - 60);
    b.record(&t2);
    assert_eq!(a.get("/account/profile", &t2).status, 200);
    let r = b.admin("POST", "/ledger/revoke", r#"{"account":"bob"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let took = time_until(Duration::from_secs(1), || {
        a.get("/account/profile", &t2).status == 401
    });
    assert!(
        took.is_some(),
        "an account revocation made on B still passed on A after 1 s"
    );

    // A ban placed by hand on A applies on B within a second.
    let t3 = token(SampleKey::RsA, kid::ACTIVE, "carol", now() - 60);
    a.record(&t3);
    assert_eq!(b.get_from("127.0.0.9", "/account/profile", &t3).status, 200);
    ban_address(&a, "127.0.0.9", "1h");
    assert!(
        within_a_second(|| b.get_from("127.0.0.9", "/account/profile", &t3).status == 403),
        "a ban placed on A did not apply on B within 1 s"
    );
    // Only that address: another still passes on B.
    assert_eq!(
        b.get_from("127.0.0.10", "/account/profile", &t3).status,
        200
    );
    let bans = b.admin("GET", "/decisions", "").json();
    assert!(
        bans["bans"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["key"] == "ip=127.0.0.9")),
        "{bans}"
    );
    // A ban placed by a rule on A (4 requests over a threshold of 3) applies on B, where
    // the address never sent a request.
    let statuses: Vec<u16> = (0..4)
        .map(|_| a.get_from("127.0.0.11", "/account/ban/x", &t3).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 403]);
    let took = time_until(Duration::from_secs(1), || {
        b.get_from("127.0.0.11", "/account/ban/x", &t3).status == 403
    });
    assert!(
        took.is_some(),
        "a rule's ban placed on A did not apply on B within 1 s"
    );
    let counted = wait_for(Duration::from_secs(1), || {
        (b.metric("warden_fleet_stream_applied_total{kind=\"ban\"}") >= 2.0).then_some(())
    });
    assert!(counted.is_some(), "B did not count the two bans it applied");

    // Lifted on B (same ban id on every node): lifted on A too.
    let id = bans["bans"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["key"] == "ip=127.0.0.9"))
        .and_then(|x| x["id"].as_str())
        .expect("ban id")
        .to_owned();
    assert_eq!(
        b.admin("DELETE", &format!("/decisions/{id}"), "").status,
        200
    );
    let took = time_until(Duration::from_secs(1), || {
        a.get_from("127.0.0.9", "/account/profile", &t3).status == 200
    });
    assert!(
        took.is_some(),
        "a ban lifted on B still applied on A after 1 s"
    );
}

/// A token revoked through one node before its record exists is refused on every node
/// once any node records it, and on a node started afterwards; the fleet holds its
/// waiting revocations to one shared cap.
#[test]
fn a_token_revoked_before_its_record_is_refused_on_every_node_once_recorded() {
    let redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    let ledger = format!("{LEDGER}\nmax_pending_revocations = 2");
    let (mut a, b, _keys) = two_nodes_with(&redis, &up, "", &ledger, "pend");
    let t = now() - 30;
    let tok = |account: &str| token(SampleKey::RsA, kid::ACTIVE, account, t);
    let (stolen, other, third) = (tok("dave"), tok("erin"), tok("frank"));
    for (w, t) in [(&a, &stolen), (&b, &other)] {
        let r = revoke_answer(w, t);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["waiting_for_record"], true, "{}", r.text());
    }
    assert_eq!(redis.cli(&["ZCARD", "pend:revoked:pending"]).trim(), "2");
    // The cap is the fleet's: node a took one, node b one.
    let r = revoke_answer(&a, &third);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("max_pending_revocations = 2"),
        "{}",
        r.text()
    );

    // The login node (b) writes the record: refused on both nodes.
    b.record(&stolen);
    assert_eq!(b.get("/account/x", &stolen).status, 401);
    assert_eq!(a.get("/account/x", &stolen).status, 401);
    a.record(&other);
    assert_eq!(b.get("/account/x", &other).status, 401);
    assert_eq!(a.get("/account/x", &other).status, 401);
    // Recorded, they no longer wait: the set is empty.
    assert_eq!(redis.cli(&["ZCARD", "pend:revoked:pending"]).trim(), "0");
    // The refused one was not kept anywhere.
    a.record(&third);
    assert_eq!(b.get("/account/x", &third).status, 200);
    // A node that starts afterwards, with an empty index, refuses it too.
    a.restart();
    assert_eq!(a.get("/account/x", &stolen).status, 401);
    assert_eq!(a.get("/account/x", &third).status, 200);
}

/// Waiting revocations leave Redis after `ledger.pending_revocation_ttl`, and the node's
/// index at its next sweep: the waiting set makes room for new ones.
#[test]
fn a_waiting_revocation_lapses_after_its_time_to_live() {
    let redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    let keys = tempfile::tempdir().expect("tempdir");
    let w = Warden::start_with_rules_and_ledger_to(
        up.addr,
        "",
        &format!(
            "{LEDGER}\nmax_pending_revocations = 1\npending_revocation_ttl = \"1s\"\nsweep_interval = \"1s\""
        ),
        &fleet_extra(&redis, "a", "lapse", keys.path()),
    );
    let t = now() - 30;
    let (x, y) = (
        token(SampleKey::RsA, kid::ACTIVE, "xavier", t),
        token(SampleKey::RsA, kid::ACTIVE, "yvonne", t),
    );
    let r = revoke_answer(&w, &x);
    assert_eq!(r.status, 200, "{}", r.text());
    let x_key = format!(
        "lapse:tok:{}",
        r.json()["token_id"].as_str().unwrap_or_default()
    );
    assert_eq!(redis.cli(&["HGET", &x_key, "r"]).trim(), "1");
    assert_eq!(revoke_answer(&w, &y).status, 503);
    let pending = || w.admin("GET", "/ledger/stats", "").json()["pending_revocations"].as_u64();
    assert_eq!(pending(), Some(1));
    std::thread::sleep(Duration::from_millis(2100));
    // x's wait is over: its hash is gone from Redis, y takes its place in the set.
    assert_eq!(redis.cli(&["EXISTS", &x_key]).trim(), "0");
    revoke_token(&w, &y);
    assert_eq!(redis.cli(&["ZCARD", "lapse:revoked:pending"]).trim(), "1");
    // And the node's index drops x at a sweep (y's own wait lapses soon after).
    let dropped = wait_for(Duration::from_secs(3), || {
        (pending() == Some(1)).then_some(())
    });
    assert!(dropped.is_some(), "the index kept {:?} waiting", pending());
}

#[test]
fn ended_bans_leave_redis_while_the_nodes_run() {
    // Bans are kept in a Redis hash that every starting node reads whole; ended ones must
    // go while the fleet runs (not only when a node starts), or the hash grows with every
    // ban ever placed.
    let redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    let (a, _b, _keys) = two_nodes(&redis, &up, "", "prune");
    for (ip, ttl) in [("127.0.0.20", "1s"), ("127.0.0.21", "1h")] {
        ban_address(&a, ip, ttl);
    }
    // (bans in the hash, entries in the end index)
    let sizes = || -> (Option<u32>, Option<u32>) {
        let n = |cmd: &str, key: &str| redis.cli(&[cmd, key]).trim().parse().ok();
        (n("HLEN", "prune:bans"), n("ZCARD", "prune:bans:end"))
    };
    let both = wait_for(Duration::from_secs(2), || {
        (sizes() == (Some(2), Some(2))).then_some(())
    });
    assert!(
        both.is_some(),
        "the two bans did not reach Redis: {}",
        redis.cli(&["HKEYS", "prune:bans"])
    );
    // Pruned every 20 sync intervals (2 s here), after the 1 s ban ended.
    let pruned = wait_for(Duration::from_secs(6), || {
        (sizes() == (Some(1), Some(1))).then_some(())
    });
    assert!(
        pruned.is_some(),
        "the ended ban is still in Redis: {} / {}",
        redis.cli(&["HGETALL", "prune:bans"]),
        redis.cli(&["ZRANGE", "prune:bans:end", "0", "-1", "WITHSCORES"])
    );
    // The one still running stays.
    assert!(
        redis.cli(&["HGETALL", "prune:bans"]).contains("127.0.0.21"),
        "{}",
        redis.cli(&["HGETALL", "prune:bans"])
    );
}

#[test]
fn a_scraper_spread_over_two_nodes_is_caught_by_a_fleet_rule_not_by_a_local_one() {
    let redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    // Two rules alike but for their scope and paths: neither node alone ever sees more
    // than 10 requests of the scraper on either path.
    let rules = r#"
[[rules]]
name = "fleet-rate"
paths = ["/account/fleet/*"]
key = ["ip"]
window = "1m"
threshold = 10
action = "block"
scope = "fleet"

[[rules]]
name = "local-rate"
paths = ["/account/local/*"]
key = ["ip"]
window = "1m"
threshold = 10
action = "block"
"#;
    let (a, b, _keys) = two_nodes(&redis, &up, rules, "t2");
    let t = token(SampleKey::RsA, kid::ACTIVE, "scraper", now() - 60);
    a.record(&t);
    let nodes = [&a, &b];
    let statuses = |path: &str, src: &str| -> Vec<u16> {
        (0..20)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(60));
                nodes[i % 2].get_from(src, path, &t).status
            })
            .collect()
    };
    // Node-local counting: 10 per node, never over the threshold, never refused.
    let local = statuses("/account/local/page", "127.0.0.21");
    assert!(local.iter().all(|s| *s == 200), "local rule: {local:?}");
    // Fleet counting: the same pattern is refused once the fleet's total passes 10.
    let fleet = statuses("/account/fleet/page", "127.0.0.22");
    let first_refusal = fleet.iter().position(|s| *s == 403);
    assert!(
        first_refusal.is_some_and(|i| i < 19),
        "fleet rule never refused the scraper: {fleet:?}"
    );
    // Both nodes refused it: each counted the other's requests.
    let refused_by = |n: usize| fleet.iter().skip(n).step_by(2).any(|s| *s == 403);
    assert!(refused_by(0) && refused_by(1), "{fleet:?}");
    // Another address is not affected.
    assert_eq!(
        a.get_from("127.0.0.23", "/account/fleet/page", &t).status,
        200
    );
}

#[test]
fn redis_down_applies_the_fail_mode_and_recovers_when_it_returns() {
    let mut redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    let keys = tempfile::tempdir().expect("tempdir");
    let mut a =
        Warden::start_with_rules_to(up.addr, "", &fleet_extra(&redis, "a", "t3", keys.path()));
    let known = token(SampleKey::RsA, kid::ACTIVE, "alice", now() - 60);
    a.record(&known);
    assert_eq!(a.get("/account/profile", &known).status, 200);

    // Redis crashes.
    redis.kill();
    // The acknowledged record was fsynced: it is in the append-only file.
    let aof = std::fs::read_dir(redis.dir.path().join("appendonlydir"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read(e.path()).unwrap_or_default())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect::<String>()
        })
        .unwrap_or_default();
    assert!(
        aof.contains("alice"),
        "the acknowledged record is not in Redis's AOF"
    );

    // A token this node already knows is still answered from its index.
    assert_eq!(a.get("/account/profile", &known).status, 200);
    // One it must ask Redis about: the route's fail mode applies.
    let fresh = token(SampleKey::RsA, kid::ACTIVE, "dave", now() - 60);
    let closed = a.get("/account/profile", &fresh);
    assert_eq!(closed.status, 503, "fail-closed route: {}", closed.text());
    let open = a.get("/catalog/items", &fresh);
    assert_eq!(open.status, 200, "fail-open route: {}", open.text());
    // A record cannot be made durable: the caller hears it (503), nothing is dropped
    // silently.
    let r = a.admin(
        "POST",
        "/ledger/records",
        &serde_json::json!({"token": fresh}).to_string(),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["recorded"], 0);
    // A login observed inline while Redis is down: counted and reported as failed.
    let login = request(a.proxy, "POST", "/login", &[], br#"{"account":"erin"}"#);
    assert_eq!(login.status, 200);
    let failed = wait_for(Duration::from_secs(3), || {
        (a.metric("warden_ledger_record_failures_total{source=\"inline\"}") >= 1.0).then_some(())
    });
    assert!(
        failed.is_some(),
        "an inline record that failed was not counted"
    );
    let event = wait_for(Duration::from_secs(2), || {
        a.events()
            .into_iter()
            .find(|e| e["type"] == "record_failed")
    });
    assert!(event.is_some_and(|e| e["detail"].as_str().is_some_and(|d| d.contains("redis"))));
    assert!(a.metric("warden_fleet_redis_errors_total{op=\"record\"}") >= 2.0);
    assert_eq!(a.metric("warden_fleet_redis_down"), 1.0);
    assert!(
        a.alive(),
        "warden exited while Redis was down:\n{}",
        a.log()
    );

    // Redis returns (same data): the node reconnects by itself.
    redis.restart();
    let back = wait_for(Duration::from_secs(5), || {
        let r = a.admin(
            "POST",
            "/ledger/records",
            &serde_json::json!({"token": fresh}).to_string(),
        );
        (r.status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "no recovery after Redis returned:\n{}",
        a.log()
    );
    assert_eq!(a.get("/account/profile", &fresh).status, 200);
    // The record made before the crash is still in Redis, and revocations flow again.
    assert!(redis.cli(&["KEYS", "t3:tok:*"]).lines().count() >= 2);
    revoke_token(&a, &known);
    assert_eq!(a.get("/account/profile", &known).status, 401);
    let up_again = wait_for(Duration::from_secs(2), || {
        (a.metric("warden_fleet_redis_down") == 0.0).then_some(())
    });
    assert!(up_again.is_some());
    assert!(a.alive());
}

#[test]
fn a_stalled_redis_gets_the_fail_mode_in_time_not_a_hung_request() {
    let redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    let keys = tempfile::tempdir().expect("tempdir");
    // The default ledger.timeout (50 ms) bounds lookups; fleet.command_timeout (300 ms
    // here) bounds writes.
    let mut a =
        Warden::start_with_rules_to(up.addr, "", &fleet_extra(&redis, "a", "t4", keys.path()));
    let known = token(SampleKey::RsA, kid::ACTIVE, "alice", now() - 60);
    a.record(&known);

    redis.pause();
    let fresh = token(SampleKey::RsA, kid::ACTIVE, "dave", now() - 60);
    let started = Instant::now();
    let closed = a.get("/account/profile", &fresh);
    assert_eq!(closed.status, 503, "fail-closed route: {}", closed.text());
    assert_eq!(
        a.get("/catalog/items", &fresh).status,
        200,
        "fail-open route"
    );
    assert_eq!(a.get("/account/profile", &known).status, 200, "known token");
    let r = a.admin(
        "POST",
        "/ledger/records",
        &serde_json::json!({"token": fresh}).to_string(),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text()
            .contains("ledger backend unavailable: redis MULTI/EXEC"),
        "{}",
        r.text()
    );
    // Four requests and a write, each bounded by its timeout, not by Redis.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "requests waited for a stalled Redis: {:?}",
        started.elapsed()
    );
    assert!(a.alive());

    redis.resume();
    let back = wait_for(Duration::from_secs(5), || {
        let r = a.admin(
            "POST",
            "/ledger/records",
            &serde_json::json!({"token": fresh}).to_string(),
        );
        (r.status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "no recovery after Redis resumed:\n{}",
        a.log()
    );
    assert_eq!(a.get("/account/profile", &fresh).status, 200);
}

#[test]
fn a_node_starts_while_redis_is_down_and_joins_when_it_comes() {
    let up = Upstream::start(kid::ACTIVE);
    let keys = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let extra = format!(
        "[fleet]\nredis_url = \"redis://127.0.0.1:{port}/0\"\nnode = \"a\"\nnamespace = \"t5\"\nkey_file = \"{key}\"\nconnect_timeout = \"300ms\"\ncommand_timeout = \"300ms\"\n",
        key = {
            let k = keys.path().join("fleet.key");
            std::fs::write(&k, FLEET_KEY).expect("write key");
            k.display().to_string()
        }
    );
    // Nothing listens on the port: warden starts anyway (the harness waits for /ready).
    let mut a = Warden::start_with_rules_to(up.addr, "", &extra);
    let t = token(SampleKey::RsA, kid::ACTIVE, "alice", now() - 60);
    assert_eq!(a.get("/account/profile", &t).status, 503);
    let r = a.admin(
        "POST",
        "/ledger/records",
        &serde_json::json!({"token": t}).to_string(),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(a.alive());
    // Redis comes up on that port: the node joins by itself.
    let _redis = Redis::start_on(port);
    let joined = wait_for(Duration::from_secs(5), || {
        let r = a.admin(
            "POST",
            "/ledger/records",
            &serde_json::json!({"token": t}).to_string(),
        );
        (r.status == 200).then_some(())
    });
    assert!(
        joined.is_some(),
        "the node did not join Redis:\n{}",
        a.log()
    );
    assert_eq!(a.get("/account/profile", &t).status, 200);
}

#[test]
fn two_processes_given_one_node_name_still_share_revocations_and_bans_and_are_flagged() {
    // A configuration copied to two hosts with the same fleet.node: each must still apply
    // what the other writes (entries are skipped by process, not by name), and the name
    // clash must show (warden_fleet_node_conflict on one of them, and its log).
    let redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    let keys = tempfile::tempdir().expect("tempdir");
    let start = |node: &str| {
        Warden::start_with_rules_and_ledger_to(
            up.addr,
            "",
            LEDGER,
            &fleet_extra(&redis, node, "t6", keys.path()),
        )
    };
    let a = start("twin");
    let b = start("twin");
    let c = start("other");
    let conflict = |w: &Warden| w.metric("warden_fleet_node_conflict");
    let flagged = wait_for(Duration::from_secs(3), || {
        (conflict(&a) + conflict(&b) == 1.0).then_some(())
    });
    assert!(
        flagged.is_some(),
        "the clash was not flagged on exactly one twin: a {} b {}\n{}\n{}",
        conflict(&a),
        conflict(&b),
        a.log(),
        b.log()
    );
    let flagged_log = if conflict(&a) == 1.0 {
        a.log()
    } else {
        b.log()
    };
    assert!(
        flagged_log.contains("node name \"twin\" is held by another running warden"),
        "{flagged_log}"
    );
    assert_eq!(conflict(&c), 0.0);

    // A revocation made on one twin reaches the other.
    let t = token(SampleKey::RsA, kid::ACTIVE, "alice", now() - 60);
    a.record(&t);
    assert!(
        within_a_second(|| b.get("/account/profile", &t).status == 200),
        "a record made on one twin did not reach the other"
    );
    revoke_token(&a, &t);
    assert!(
        within_a_second(|| b.get("/account/profile", &t).status == 401),
        "a revocation made on one twin still passed on the other after 1 s"
    );
    // A ban placed on the other twin applies on the first.
    let t2 = token(SampleKey::RsA, kid::ACTIVE, "bob", now() - 60);
    b.record(&t2);
    ban_address(&b, "127.0.0.9", "1h");
    assert!(
        within_a_second(|| a.get_from("127.0.0.9", "/account/profile", &t2).status == 403),
        "a ban placed on one twin did not apply on the other within 1 s"
    );

    // The twin that holds the name stops: the other takes it once the claim expires
    // (three sync intervals, 300 ms here), and its conflict clears.
    let (holder, waiting) = if conflict(&a) == 1.0 { (b, a) } else { (a, b) };
    drop(holder);
    let cleared = wait_for(Duration::from_secs(3), || {
        (conflict(&waiting) == 0.0).then_some(())
    });
    assert!(cleared.is_some(), "{}", waiting.log());
}

#[test]
fn a_forged_token_replayed_costs_one_redis_lookup_per_half_second_not_one_per_request() {
    // Forged tokens are unknown to Redis; without the negative cache, each request with
    // one was an HGETALL. With it: one per node and ABSENT_MS (500 ms).
    let redis = Redis::start();
    let up = Upstream::start(kid::ACTIVE);
    let (a, b, _keys) = two_nodes(&redis, &up, "", "t7");
    let hgetall = || -> u64 {
        let info = redis.cli(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_hgetall:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let forged = token(SampleKey::RsA, kid::ACTIVE, "mallory", now() - 600);
    let before = hgetall();
    let started = Instant::now();
    for _ in 0..40 {
        assert_eq!(b.get("/account/profile", &forged).status, 401);
    }
    let elapsed = started.elapsed();
    let lookups = hgetall() - before;
    // One lookup, plus one per half-second the 40 requests took.
    let allowed = 1 + u64::try_from(elapsed.as_millis() / 500).unwrap_or(u64::MAX);
    assert!(
        lookups <= allowed,
        "{lookups} Redis lookups for 40 requests in {elapsed:?} (allowed {allowed})"
    );
    assert!(lookups >= 1, "the token was never looked up in Redis");

    // The cache does not hide a record for long: the token, issued ten minutes ago, is
    // recorded on A (an import, say) and accepted on B within a second.
    a.record(&forged);
    assert!(
        within_a_second(|| b.get("/account/profile", &forged).status == 200),
        "a record made on A was refused on B after 1 s"
    );

    // A token issued just now is never remembered as absent: B waits for its record
    // (ledger.issuance_wait, 250 ms) asking Redis again, and the record made on A 50 ms
    // into the wait lets it through. (Remembered, B would answer "unknown" from memory
    // for the whole wait and refuse it.)
    let fresh = token(SampleKey::RsA, kid::ACTIVE, "dave", now());
    let status = std::thread::scope(|s| {
        let waiting = s.spawn(|| b.get("/account/orders", &fresh).status);
        std::thread::sleep(Duration::from_millis(50));
        a.record(&fresh);
        waiting.join().expect("request thread")
    });
    assert_eq!(status, 200, "{}", b.log());
}
