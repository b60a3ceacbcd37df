//! Snapshot and restore: every slot kind, bans, rules changed in between, damaged files.

use std::net::IpAddr;
use std::time::Duration;

use warden_rules::{Action, Field, Measure, RouteClass, Rule};

use crate::snapshot::{read_file, write_file, Writer, MAGIC, VERSION};
use crate::tests::{MIB, T0};
use crate::{Decision, Engine, Facts, Nothing, SnapshotError};

/// A rule on one key field ([`crate::tests::rule`] takes a list).
fn rule(
    name: &str,
    key: Field,
    measure: Measure,
    window_s: u64,
    threshold: u64,
    action: Action,
) -> Rule {
    crate::tests::rule(name, vec![key], measure, window_s, threshold, action)
}

/// Rules that report their estimate on every request (threshold 0, log only), so a test
/// can read the state of every slot kind through the public API.
fn probes() -> Vec<Rule> {
    vec![
        rule("count-ip", Field::Ip, Measure::Count, 600, 0, Action::Log),
        rule(
            "accounts-per-ip",
            Field::Ip,
            Measure::Distinct(Field::Account),
            600,
            0,
            Action::Log,
        ),
        rule(
            "ips-per-account",
            Field::Account,
            Measure::Distinct(Field::Ip),
            600,
            0,
            Action::Log,
        ),
    ]
}

fn engine(rules: Vec<Rule>) -> Engine {
    let e = Engine::new(64 * MIB, 1000);
    e.set_rules(rules, 64 * MIB);
    e
}

fn eval(e: &Engine, ip: &str, account: &str, now_ms: u64) -> crate::Verdict {
    let ip: IpAddr = ip.parse().expect("ip");
    e.evaluate(&Facts {
        now_ms,
        class: RouteClass::Protected,
        route: Some("account"),
        method: "GET",
        path: "/account/x",
        ip,
        account: Some(account),
        token: None,
        headers: &Nothing,
        claims: &Nothing,
    })
}

/// Each rule's estimate for a request, by rule name.
fn estimates(v: &crate::Verdict) -> Vec<(String, f64)> {
    v.hits
        .iter()
        .map(|h| (h.rule.to_string(), h.estimate))
        .collect()
}

/// Builds state with every slot kind: a counter, an inline distinct set (2 values), a
/// small one (20) and a HyperLogLog (300 values), one address seen from 300 accounts.
fn busy(e: &Engine) {
    for i in 0..2 {
        let _ = eval(e, "192.0.2.1", &format!("inline-{i}"), T0 + i);
    }
    for i in 0..20 {
        let _ = eval(e, "192.0.2.2", &format!("small-{i}"), T0 + 100 + i);
    }
    for i in 0..300 {
        let _ = eval(e, "192.0.2.3", &format!("large-{i}"), T0 + 1_000 + i);
    }
    // One account from 30 addresses (small set on the account key).
    for i in 0..30 {
        let _ = eval(e, &format!("198.51.100.{i}"), "roamer", T0 + 2_000 + i);
    }
}

#[test]
fn every_slot_kind_round_trips() {
    let a = engine(probes());
    busy(&a);
    let bytes = a.snapshot(T0 + 5_000);
    let b = engine(probes());
    let got = b.restore(&bytes, T0 + 6_000).expect("restore");
    assert_eq!(got.saved_ms, T0 + 5_000);
    assert_eq!(got.slots_dropped, 0);
    assert_eq!(got.bans, 0);
    // 4 addresses + 30 addresses with a counter and a set, 302 accounts with a set.
    assert_eq!(a.tracked_keys(), b.tracked_keys());
    assert_eq!(got.slots, 2 * (3 + 30) + (2 + 20 + 300 + 1));
    // The same next request gets the same estimates from both engines: counters and
    // exact sets exactly, the HyperLogLog to rounding (its running sum is recomputed).
    let later = T0 + 60_000;
    for (ip, account) in [
        ("192.0.2.1", "inline-0"),
        ("192.0.2.2", "small-new"),
        ("192.0.2.3", "large-new"),
        ("198.51.100.7", "roamer"),
    ] {
        let (x, y) = (eval(&a, ip, account, later), eval(&b, ip, account, later));
        let (x, y) = (estimates(&x), estimates(&y));
        assert_eq!(x.len(), 3, "{x:?}");
        for ((rx, ex), (ry, ey)) in x.iter().zip(&y) {
            assert_eq!(rx, ry);
            assert!((ex - ey).abs() < 1e-6, "{ip} {rx}: {ex} vs {ey}");
        }
    }
    // The large set was really a sketch, and it came back as one: ~301 distinct.
    let v = estimates(&eval(&b, "192.0.2.3", "large-0", later + 1));
    let (_, est) = v.iter().find(|(r, _)| r == "accounts-per-ip").expect("hit");
    assert!((*est - 301.0).abs() < 301.0 * 0.13, "{est}");
    // A snapshot of the restored engine restores it again, with the two accounts
    // ("small-new", "large-new") it has seen since.
    let c = engine(probes());
    let again = c
        .restore(&b.snapshot(later + 2), later + 3)
        .expect("restore");
    assert_eq!(again.slots, got.slots + 2);
    assert_eq!(c.tracked_keys(), b.tracked_keys());
}

#[test]
fn restored_counts_keep_ageing_with_the_time_passed_in() {
    let rules = vec![rule(
        "per-ip",
        Field::Ip,
        Measure::Count,
        60,
        5,
        Action::Block,
    )];
    let a = engine(rules.clone());
    let start = T0 - T0 % 60_000;
    for i in 0..5 {
        assert_eq!(
            eval(&a, "192.0.2.9", "x", start + i).decision,
            Decision::Pass
        );
    }
    let bytes = a.snapshot(start + 10);
    // Restored in the same window: the sixth request is over the threshold.
    let b = engine(rules.clone());
    let _ = b.restore(&bytes, start + 20).expect("restore");
    assert_eq!(
        eval(&b, "192.0.2.9", "x", start + 30).decision,
        Decision::Block
    );
    // Without the snapshot it would pass: the test measures the restore.
    let fresh = engine(rules.clone());
    assert_eq!(
        eval(&fresh, "192.0.2.9", "x", start + 30).decision,
        Decision::Pass
    );
    // Restored two windows later: the counts have aged out and are not restored at all.
    let c = engine(rules);
    let got = c.restore(&bytes, start + 180_000).expect("restore");
    assert_eq!((got.slots, got.slots_dropped), (0, 1));
    assert_eq!(c.tracked_keys(), 0);
}

#[test]
fn rule_and_manual_bans_survive_with_their_expiry() {
    let rules = vec![rule(
        "ban-ip",
        Field::Ip,
        Measure::Count,
        60,
        2,
        Action::Ban(Duration::from_secs(600)),
    )];
    let a = engine(rules.clone());
    for i in 0..3 {
        let _ = eval(&a, "192.0.2.50", "x", T0 + i);
    }
    let until = T0 + 2 + 600_000;
    assert_eq!(
        eval(&a, "192.0.2.50", "x", T0 + 3).decision,
        Decision::Banned { until_ms: until }
    );
    let manual_until = T0 + 3_600_000;
    a.ban_manual(&Field::Account, "mallory", T0, manual_until)
        .expect("manual ban");
    // A manual ban that ends before the restore is not brought back.
    a.ban_manual(&Field::Ip, "203.0.113.1", T0, T0 + 20_000)
        .expect("manual ban");
    let bytes = a.snapshot(T0 + 10_000);

    let b = engine(rules);
    let got = b.restore(&bytes, T0 + 30_000).expect("restore");
    assert_eq!((got.bans, got.bans_dropped), (2, 1));
    assert_eq!(
        eval(&b, "192.0.2.50", "someone", T0 + 31_000).decision,
        Decision::Banned { until_ms: until }
    );
    let v = eval(&b, "192.0.2.99", "mallory", T0 + 31_000);
    assert_eq!(
        v.decision,
        Decision::Banned {
            until_ms: manual_until
        }
    );
    assert_eq!(v.decided_by, Some("manual"));
    assert_eq!(
        eval(&b, "203.0.113.1", "y", T0 + 31_000).decision,
        Decision::Pass
    );
    let mut listed: Vec<(String, String)> = b
        .bans(T0 + 31_000)
        .into_iter()
        .map(|(_, ban)| (ban.rule.to_string(), ban.key))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("ban-ip".into(), "ip=192.0.2.50".into()),
            ("manual".into(), "account=mallory".into())
        ]
    );
    // Bans end when they were due to.
    assert_eq!(
        eval(&b, "192.0.2.50", "z", until + 1).decision,
        Decision::Pass
    );
}

#[test]
fn only_slots_whose_rule_fingerprint_still_matches_are_restored() {
    let keep = rule("keep", Field::Ip, Measure::Count, 60, 3, Action::Block);
    let change = rule(
        "change",
        Field::Ip,
        Measure::Count,
        60,
        3,
        Action::Ban(Duration::from_secs(600)),
    );
    let a = engine(vec![keep.clone(), change.clone()]);
    let start = T0 - T0 % 60_000;
    for i in 0..4 {
        let _ = eval(&a, "192.0.2.7", "x", start + i);
    }
    assert!(a.bans(start + 5).len() == 1);
    let bytes = a.snapshot(start + 10);

    // `change` now counts over 120 s: a new fingerprint, a fresh start, its ban gone;
    // `keep` sits in another slot of a new group and keeps its count.
    let changed = Rule {
        window: Duration::from_secs(120),
        ..change
    };
    let other = rule("new", Field::Ip, Measure::Count, 60, 100, Action::Log);
    let b = engine(vec![other, changed, keep]);
    let got = b.restore(&bytes, start + 20).expect("restore");
    assert_eq!((got.slots, got.slots_dropped), (1, 1));
    assert_eq!((got.bans, got.bans_dropped), (0, 1));
    let v = eval(&b, "192.0.2.7", "x", start + 30);
    assert_eq!(v.decision, Decision::Block);
    assert_eq!(v.decided_by, Some("keep"));
    let hits: Vec<&str> = v.hits.iter().map(|h| h.rule).collect();
    assert_eq!(hits, ["keep"], "`change` starts from zero");
}

#[test]
fn damaged_snapshots_are_refused_whole_and_never_panic() {
    let a = engine(probes());
    busy(&a);
    let _ = a.ban_manual(&Field::Ip, "192.0.2.77", T0, T0 + 3_600_000);
    let good = a.snapshot(T0 + 5_000);
    let fresh = || engine(probes());

    // Cut short anywhere: a clear error, nothing applied.
    for len in (0..good.len()).step_by(7).chain([good.len() - 1]) {
        let e = fresh();
        let err = e.restore(&good[..len], T0 + 6_000).expect_err("truncated");
        assert!(
            matches!(err, SnapshotError::Truncated { .. }),
            "cut at {len}: {err}"
        );
        assert_eq!(e.tracked_keys(), 0);
        assert!(e.bans(T0).is_empty());
    }
    // Any flipped bit in the body: the checksum says so.
    for at in [22, 40, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let err = fresh().restore(&bad, T0 + 6_000).expect_err("flipped");
        assert!(matches!(err, SnapshotError::Checksum { .. }), "{err}");
    }
    let mut bad = good.clone();
    bad[0] = b'X';
    let err = fresh().restore(&bad, T0).expect_err("magic");
    assert!(
        err.to_string().contains("not a warden state snapshot"),
        "{err}"
    );
    let mut bad = good.clone();
    bad[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let err = fresh().restore(&bad, T0).expect_err("version");
    assert_eq!(
        err.to_string(),
        format!(
            "snapshot format version {}; this warden reads version {VERSION}",
            VERSION + 1
        )
    );
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        fresh().restore(&long, T0).expect_err("trailing"),
        SnapshotError::Corrupt { .. }
    ));
    // Restoring over live state is refused.
    let err = a.restore(&good, T0).expect_err("not empty");
    assert!(matches!(err, SnapshotError::NotEmpty { .. }), "{err}");
}

#[test]
fn counts_in_a_well_formed_file_cannot_size_an_allocation() {
    // A checksum-valid file announcing 2^60 entries in a group.
    let mut w = Writer::default();
    w.u64(T0);
    w.u64(1);
    w.u64(2);
    w.u32(1);
    w.u8(1);
    w.u64(42);
    w.u64(1 << 60);
    let err = engine(probes())
        .restore(&w.finish(), T0)
        .expect_err("huge count");
    assert!(err.to_string().contains("items announced"), "{err}");
    // An unknown slot kind, a group of nine rules, registers out of range.
    for (slots, kind, what) in [
        (1u8, 9u8, "unknown slot kind 9"),
        (9, 0, "group of 9 rules"),
    ] {
        let mut w = Writer::default();
        w.u64(T0);
        w.u64(1);
        w.u64(2);
        w.u32(1);
        w.u8(slots);
        for _ in 0..slots {
            w.u64(42);
        }
        w.u64(1);
        w.u64(7);
        for _ in 0..slots {
            w.u8(kind);
        }
        w.u32(0);
        let err = engine(probes()).restore(&w.finish(), T0).expect_err(what);
        assert!(err.to_string().contains(what), "{err}");
    }
    let mut w = Writer::default();
    w.u64(T0);
    w.u64(1);
    w.u64(2);
    w.u32(1);
    w.u8(1);
    w.u64(42);
    w.u64(1);
    w.u64(7);
    w.u8(2); // distinct
    w.u8(2); // large
    w.u32(0);
    w.u32(0);
    w.bytes(&[200u8; 2048]);
    w.u32(0);
    let err = engine(probes())
        .restore(&w.finish(), T0)
        .expect_err("register");
    assert!(err.to_string().contains("register 200"), "{err}");
}

#[test]
fn files_are_replaced_atomically_and_a_missing_one_is_no_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.snapshot");
    assert!(read_file(&path).expect("missing is fine").is_none());
    let a = engine(probes());
    busy(&a);
    write_file(&path, &a.snapshot(T0)).expect("write");
    write_file(&path, &a.snapshot(T0 + 1)).expect("overwrite");
    let bytes = read_file(&path).expect("read").expect("exists");
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(
        engine(probes())
            .restore(&bytes, T0 + 2)
            .expect("restore")
            .saved_ms,
        T0 + 1
    );
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("state.snapshot")]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A directory where the file should be: an error naming the path.
    let err = write_file(dir.path(), b"x").expect_err("a directory");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn an_engine_with_a_given_key_restores_only_snapshots_made_with_that_key() {
    let keyed = |key: [u8; 16]| {
        let e = Engine::with_key(64 * MIB, 1000, key);
        e.set_rules(probes(), 64 * MIB);
        e
    };
    let fleet = keyed(*b"fleet-key-012345");
    busy(&fleet);
    let same = fleet.snapshot(T0 + 5_000);
    // A node of the same fleet takes it.
    let b = keyed(*b"fleet-key-012345");
    let got = b.restore_same_key(&same, T0 + 6_000).expect("same key");
    assert!(got.slots > 0);
    assert_eq!(b.tracked_keys(), fleet.tracked_keys());
    // A snapshot from before fleet mode (a random key), or from another fleet key, is
    // refused whole: the engine keeps its key and no state.
    let single = engine(probes());
    busy(&single);
    let c = keyed(*b"fleet-key-012345");
    assert!(matches!(
        c.restore_same_key(&single.snapshot(T0 + 5_000), T0 + 6_000),
        Err(SnapshotError::OtherKey)
    ));
    assert_eq!(c.tracked_keys(), 0);
    let d = keyed(*b"another-fleet-99");
    assert!(matches!(
        d.restore_same_key(&same, T0 + 6_000),
        Err(SnapshotError::OtherKey)
    ));
    // Without the requirement the snapshot's key is taken, as on a single node.
    let e = keyed(*b"another-fleet-99");
    assert!(e.restore(&same, T0 + 6_000).is_ok());
}
