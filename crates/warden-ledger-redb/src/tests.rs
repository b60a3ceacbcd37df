use futures_executor::block_on;
use warden_core::ledger::EPOCH_BASE;

use super::*;

fn rec(jti: &str, account: &str, iat: u64) -> Record {
    Record {
        id: TokenId::from_jti(jti),
        account: account.into(),
        issued_at: iat,
        expires_at: iat + 3600,
        kid: "k1".into(),
    }
}

fn q<'a>(jti: &str, account: &'a str) -> Query<'a> {
    Query {
        id: TokenId::from_jti(jti),
        account,
        kid: "k1",
        issued_at: None,
    }
}

const T0: u64 = EPOCH_BASE + 100_000;

fn keep(expiry_grace: u64, pending_revocation_ttl: u64) -> Retention {
    Retention {
        expiry_grace,
        pending_revocation_ttl,
    }
}

/// Revokes the token of `jti` through the ledger at `now` (unix seconds).
fn revoke_jti(l: &EmbeddedLedger, jti: &str, now: u64) -> Result<u64, LedgerError> {
    block_on(l.revoke(Revocation::Token(TokenId::from_jti(jti)), now))
}

/// A token revoked by its id before its record arrives is recorded revoked, across
/// restarts; the waiting revocations are capped and swept by age.
#[test]
fn a_token_revoked_before_its_record_is_recorded_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    let id = TokenId::from_jti;
    let now = unix_now();
    {
        let l = EmbeddedLedger::open(&path, 64).expect("open");
        assert_eq!(revoke_jti(&l, "early", now), Ok(0));
        assert_eq!(revoke_jti(&l, "late", now), Ok(0));
        assert_eq!(l.stats().pending_revocations, 2);
    }
    {
        let l = EmbeddedLedger::open(&path, 64).expect("reopen");
        assert_eq!(l.stats().pending_revocations, 2, "kept across a restart");
        block_on(l.record(vec![rec("early", "alice", now), rec("other", "bob", now)]))
            .expect("record");
        assert_eq!(
            l.check_local(&q("early", "alice")),
            Some(Answer::RevokedToken)
        );
        assert_eq!(l.check_local(&q("other", "bob")), Some(Answer::Issued));
        assert!(
            block_on(l.get(&id("early")))
                .expect("get")
                .expect("present")
                .revoked
        );
        assert_eq!(l.stats().pending_revocations, 1);
        // The cap refuses a new id, and only a new id.
        l.index().set_pending_cap(1);
        let e = revoke_jti(&l, "refused", now).expect_err("full");
        assert_eq!(e, LedgerError::Full { waiting: 1, cap: 1 });
        assert!(
            e.to_string().contains("ledger.max_pending_revocations = 1"),
            "{e}"
        );
        assert_eq!(revoke_jti(&l, "late", now), Ok(0));
        assert_eq!(revoke_jti(&l, "other", now), Ok(1));
    }
    {
        let l = EmbeddedLedger::open(&path, 64).expect("reopen");
        assert!(
            !l.index().is_pending(&id("refused")),
            "a refused one is not stored"
        );
        assert!(l.index().is_pending(&id("late")));
        assert_eq!(
            l.check_local(&q("early", "alice")),
            Some(Answer::RevokedToken)
        );
        // Not yet stale at its TTL, then dropped from memory and disk.
        assert_eq!(block_on(l.sweep(now, keep(3600, 3600))), Ok(0));
        assert_eq!(l.stats().pending_revocations, 1);
        assert_eq!(block_on(l.sweep(now + 3700, keep(3600, 3600))), Ok(0));
        assert_eq!(l.stats().pending_revocations, 0);
    }
    let l = EmbeddedLedger::open(&path, 64).expect("reopen");
    assert_eq!(l.stats().pending_revocations, 0);
    block_on(l.record(vec![rec("late", "carol", now)])).expect("record");
    assert_eq!(l.check_local(&q("late", "carol")), Some(Answer::Issued));
}

/// A waiting revocation is dated by the time the caller gives, not by the store's clock:
/// one made at `T0` is stale for a sweep an hour later, one made then is not.
#[test]
fn a_waiting_revocation_is_kept_from_the_time_it_was_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = EmbeddedLedger::open(&dir.path().join("ledger.redb"), 64).expect("open");
    let id = TokenId::from_jti;
    assert_eq!(revoke_jti(&l, "then", T0), Ok(0));
    assert_eq!(revoke_jti(&l, "later", T0 + 3600), Ok(0));
    assert_eq!(block_on(l.sweep(T0 + 3601, keep(3600, 3600))), Ok(0));
    assert!(!l.index().is_pending(&id("then")));
    assert!(l.index().is_pending(&id("later")));
    assert_eq!(l.stats().pending_revocations, 1);
}

/// The ids in the store's table of waiting revocations, in key order.
fn pending_rows(r: &redb::ReadTransaction) -> Vec<[u8; 16]> {
    let pending = r.open_table(PENDING).expect("table");
    pending
        .iter()
        .expect("iter")
        .map(|e| e.expect("row").0.value())
        .collect()
}

/// The sweep lists stale waiting revocations, then drops them in a later commit: a
/// record that arrived in between stays (revoked), and a revocation made again in
/// between waits on.
#[test]
fn the_sweep_drops_only_what_is_still_stale_and_never_a_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::create(dir.path().join("l.redb")).expect("create");
    let index = MemIndex::new();
    let ack = || oneshot::channel().0;
    let id = TokenId::from_jti;
    let commit = |batch: Vec<Op>| {
        let counts = write_batch(&db, &index, &batch).expect("commit");
        for (op, c) in batch.into_iter().zip(counts) {
            assert!(c.is_ok(), "{c:?}");
            let _ = apply(&index, op);
        }
    };
    commit(vec![
        Op::Revoke(Revocation::Token(id("recorded")), T0, ack()),
        Op::Revoke(Revocation::Token(id("again")), T0, ack()),
        Op::Revoke(Revocation::Token(id("stale")), T0, ack()),
    ]);
    let listed = index.stale_pending(T0 + 10, 10);
    assert_eq!(listed.len(), 3);
    // Meanwhile: one record arrives, one revocation is made again.
    commit(vec![
        Op::Record(vec![rec("recorded", "alice", T0)], ack()),
        Op::Revoke(Revocation::Token(id("again")), T0 + 20, ack()),
    ]);
    commit(vec![Op::DropPending(listed, T0 + 10, ack())]);
    assert_eq!(index.answer(&q("recorded", "alice")), Answer::RevokedToken);
    assert!(index.is_pending(&id("again")) && !index.is_pending(&id("stale")));
    let r = db.begin_read().expect("read");
    let tokens = r.open_table(TOKENS).expect("table");
    assert!(
        tokens.get(id("recorded").0).expect("get").is_some(),
        "record kept"
    );
    assert_eq!(pending_rows(&r), vec![id("again").0]);
}

/// One group commit: the cap counts the revocations of the same batch.
#[test]
fn a_batch_counts_its_own_waiting_revocations_against_the_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::create(dir.path().join("l.redb")).expect("create");
    let index = MemIndex::new();
    index.set_pending_cap(2);
    let revoke = |jti: &str| {
        Op::Revoke(
            Revocation::Token(TokenId::from_jti(jti)),
            T0,
            oneshot::channel().0,
        )
    };
    let batch = [
        revoke("w1"),
        revoke("w2"),
        revoke("w3"),
        revoke("w1"),
        Op::Record(vec![rec("w2", "alice", T0)], oneshot::channel().0),
        revoke("w4"),
    ];
    let counts = write_batch(&db, &index, &batch).expect("commit");
    let full = Err(LedgerError::Full { waiting: 2, cap: 2 });
    assert_eq!(
        counts,
        vec![Ok(0), Ok(0), full.clone(), Ok(0), Ok(1), Ok(0)]
    );
    let r = db.begin_read().expect("read");
    let ids = pending_rows(&r);
    let mut want = vec![TokenId::from_jti("w1").0, TokenId::from_jti("w4").0];
    want.sort_unstable();
    assert_eq!(ids, want, "w2 recorded revoked, w3 refused");
    let tokens = r.open_table(TOKENS).expect("table");
    let w2 = tokens
        .get(TokenId::from_jti("w2").0)
        .expect("get")
        .expect("present");
    assert_eq!(w2.value().get(16), Some(&1), "stored revoked");
}

#[test]
fn records_are_visible_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    {
        let l = EmbeddedLedger::open(&path, 64).expect("open");
        block_on(l.record(vec![rec("a", "alice", T0), rec("b", "bob", T0)])).expect("record");
        assert_eq!(l.check_local(&q("a", "alice")), Some(Answer::Issued));
        revoke_jti(&l, "b", T0).expect("revoke");
        block_on(l.revoke(Revocation::Kid("k9".into()), T0)).expect("revoke kid");
        block_on(l.revoke(
            Revocation::Account {
                account: "carol".into(),
                at: T0,
            },
            T0,
        ))
        .expect("revoke account");
    }
    let l = EmbeddedLedger::open(&path, 64).expect("reopen");
    assert_eq!(l.check_local(&q("a", "alice")), Some(Answer::Issued));
    assert_eq!(l.check_local(&q("b", "bob")), Some(Answer::RevokedToken));
    assert!(l.index().kid_revoked("k9"));
    block_on(l.record(vec![rec("c", "carol", T0 - 5)])).expect("record");
    assert_eq!(l.check_local(&q("c", "carol")), Some(Answer::RevokedToken));
    let view = block_on(l.get(&TokenId::from_jti("b")))
        .expect("get")
        .expect("present");
    assert!(view.revoked);
    assert_eq!(view.record.account, "bob");
    assert_eq!(l.stats().entries, 3);
}

#[test]
fn sweep_removes_expired_from_memory_and_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    {
        let l = EmbeddedLedger::open(&path, 64).expect("open");
        block_on(l.record(vec![rec("old", "a", T0), rec("new", "a", T0 + 100_000)]))
            .expect("record");
        assert_eq!(
            block_on(l.sweep(T0 + 3600 + 61, keep(60, 3600))).expect("sweep"),
            1
        );
        assert_eq!(l.stats().entries, 1);
    }
    let l = EmbeddedLedger::open(&path, 64).expect("reopen");
    assert_eq!(l.stats().entries, 1);
    assert_eq!(
        block_on(l.get(&TokenId::from_jti("old"))).expect("get"),
        None
    );
}

#[test]
fn invalid_records_are_refused_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = EmbeddedLedger::open(&dir.path().join("l.redb"), 64).expect("open");
    let mut bad = rec("x", "", T0);
    bad.account.clear();
    let err = block_on(l.record(vec![rec("ok", "a", T0), bad])).expect_err("refused");
    assert!(matches!(err, LedgerError::Invalid(_)));
    assert_eq!(l.stats().entries, 0);
}

#[test]
fn a_garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    std::fs::write(&path, vec![0x5a; 8192]).expect("write");
    let err = EmbeddedLedger::open(&path, 64).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("ledger.redb"), "{msg}");
}

#[test]
fn a_truncated_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    {
        let l = EmbeddedLedger::open(&path, 64).expect("open");
        let many: Vec<Record> = (0..2000).map(|i| rec(&format!("t{i}"), "a", T0)).collect();
        block_on(l.record(many)).expect("record");
    }
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open file");
    f.set_len(len / 3).expect("truncate");
    drop(f);
    let err = EmbeddedLedger::open(&path, 64)
        .err()
        .expect("a truncated store must be refused");
    assert!(err.to_string().contains("ledger.redb"), "{err}");
}

fn wait_until(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}

/// A graceful upgrade in one process: two ledgers on one file stand for the old and
/// the new warden (redb's lock and the journal's `flock` are per open file, so they
/// conflict within a process as between two).
#[test]
fn hand_over_releases_the_store_and_passes_later_records_on() {
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    let journal = journal_path(&path);
    let old = EmbeddedLedger::open(&path, 64).expect("open");
    block_on(old.record(vec![rec("a", "alice", T0)])).expect("record");

    // While the old one holds the store, the new one waits, then gives up clearly.
    let err = EmbeddedLedger::open_waiting(&path, 64, Duration::from_millis(200))
        .err()
        .expect("busy");
    assert!(matches!(err, OpenError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("SIGQUIT"), "{err}");

    // The old one hands over while the new one waits: the new one gets the store.
    let new = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            old.hand_over().expect("hand over");
        });
        EmbeddedLedger::open_waiting(&path, 64, Duration::from_secs(10)).expect("take over")
    });
    assert!(old.handed_over());
    assert_eq!(new.check_local(&q("a", "alice")), Some(Answer::Issued));
    // The old one still answers lookups from memory.
    assert_eq!(old.check_local(&q("a", "alice")), Some(Answer::Issued));

    // A record the old one takes while it drains is acknowledged, visible there at
    // once, journaled, and imported by the new one within a poll or two.
    block_on(old.record(vec![rec("b", "bob", T0), rec("c", "carol", T0)])).expect("record");
    assert_eq!(old.check_local(&q("b", "bob")), Some(Answer::Issued));
    assert!(journal.exists());
    assert!(
        wait_until(Duration::from_secs(2), || new.check_local(&q("c", "carol"))
            == Some(Answer::Issued)),
        "the new ledger did not import the journal"
    );
    // The other way: what the new one commits reaches the old one's memory.
    assert!(handback_path(&path).exists());
    block_on(new.record(vec![rec("n", "nina", T0)])).expect("record");
    revoke_jti(&new, "a", T0).expect("revoke");
    assert!(
        wait_until(Duration::from_secs(2), || old.check_local(&q("n", "nina"))
            == Some(Answer::Issued)
            && old.check_local(&q("a", "alice")) == Some(Answer::RevokedToken)),
        "the old ledger did not follow the new one's commits"
    );
    // A token revoked through the new one before its record exists, whose record then
    // reaches the old one (a login it still serves): refused by both.
    assert_eq!(revoke_jti(&new, "w", T0), Ok(0));
    assert!(
        wait_until(Duration::from_secs(2), || old
            .index()
            .is_pending(&TokenId::from_jti("w"))),
        "the old ledger did not follow the waiting revocation"
    );
    block_on(old.record(vec![rec("w", "wendy", T0)])).expect("record");
    assert_eq!(
        old.check_local(&q("w", "wendy")),
        Some(Answer::RevokedToken)
    );
    assert!(
        wait_until(Duration::from_secs(2), || new.check_local(&q("w", "wendy"))
            == Some(Answer::RevokedToken)),
        "the new ledger imported the record unrevoked, or not at all"
    );
    assert_eq!(new.stats().pending_revocations, 0);
    // Writes the journal cannot carry are refused with a reason, not dropped.
    let e = block_on(old.revoke(Revocation::Kid("k1".into()), T0)).expect_err("refused");
    assert!(e.to_string().contains("handed its ledger"), "{e}");
    assert!(block_on(old.get(&TokenId::from_jti("a"))).is_err());
    assert_eq!(
        block_on(old.sweep(u64::MAX / 2, keep(0, 0))).expect("sweep"),
        0
    );

    // The old process exits: the journal's lock goes, the new one finishes it.
    block_on(old.record(vec![rec("d", "dave", T0)])).expect("record");
    drop(old);
    assert!(
        wait_until(Duration::from_secs(2), || !journal.exists()
            && !handback_path(&path).exists()),
        "journal or mirror not removed"
    );
    assert_eq!(new.check_local(&q("d", "dave")), Some(Answer::Issued));
    // Everything is in the store itself.
    drop(new);
    let again = EmbeddedLedger::open(&path, 64).expect("reopen");
    for (j, a) in [("b", "bob"), ("c", "carol"), ("d", "dave"), ("n", "nina")] {
        assert_eq!(again.check_local(&q(j, a)), Some(Answer::Issued), "{j}");
    }
    assert_eq!(
        again.check_local(&q("a", "alice")),
        Some(Answer::RevokedToken)
    );
    assert_eq!(
        again.check_local(&q("w", "wendy")),
        Some(Answer::RevokedToken)
    );
    assert_eq!(again.stats().pending_revocations, 0);
    assert_eq!(again.stats().entries, 6);
}

#[test]
fn a_journal_left_behind_is_imported_at_start_and_bad_lines_kept_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    let journal = journal_path(&path);
    let good = journal_line(&rec("e", "erin", T0));
    std::fs::write(
        &journal,
        format!(
            "{good}\n{{\"token_id\":\"zz\"}}\n\n{}",
            journal_line(&rec("f", "frank", T0))
        ),
    )
    .expect("write journal");
    let l = EmbeddedLedger::open(&path, 64).expect("open");
    assert_eq!(l.check_local(&q("e", "erin")), Some(Answer::Issued));
    // The last line has no newline: it was being written when the writer died. Kept,
    // with the bad line, in the file set aside.
    assert_eq!(l.check_local(&q("f", "frank")), Some(Answer::Unknown));
    assert!(!journal.exists());
    let aside = dir.path().join("ledger.redb.handoff.jsonl.rejected");
    assert!(std::fs::read_to_string(aside)
        .expect("kept")
        .contains("frank"));
}
