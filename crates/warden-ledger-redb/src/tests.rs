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

#[test]
fn records_are_visible_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    {
        let l = EmbeddedLedger::open(&path, 64).expect("open");
        block_on(l.record(vec![rec("a", "alice", T0), rec("b", "bob", T0)])).expect("record");
        assert_eq!(l.check_local(&q("a", "alice")), Some(Answer::Issued));
        block_on(l.revoke(Revocation::Token(TokenId::from_jti("b")))).expect("revoke");
        block_on(l.revoke(Revocation::Kid("k9".into()))).expect("revoke kid");
        block_on(l.revoke(Revocation::Account {
            account: "carol".into(),
            at: T0,
        }))
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
        assert_eq!(block_on(l.sweep(T0 + 3600 + 61, 60)).expect("sweep"), 1);
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
