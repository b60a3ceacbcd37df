//! The provenance decision against ledgers that fail the way remote backends do:
//! stuck, erroring, or late. These are fault-injecting implementations of the `Ledger`
//! trait, the seam the Redis backend will plug into.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use warden_core::fixtures::{mint, SampleKey, RS256_A_PUB};
use warden_core::keys::KeyRegistry;
use warden_core::ledger::{
    Answer, Ledger, LedgerStats, Query, Record, RecordView, Revocation, TokenId,
};
use warden_core::verify::Verifier;
use warden_core::LedgerError;
use warden_metrics::{Events, Metrics};

use super::*;

/// Never answers.
struct Stuck;
/// Always fails.
struct Broken;
/// Answers `Unknown` for the first `n` lookups, then `Issued` (a record arriving late).
struct Late(AtomicUsize);

#[async_trait]
impl Ledger for Stuck {
    fn name(&self) -> &'static str {
        "stuck"
    }
    async fn check(&self, _: &Query<'_>) -> Result<Answer, LedgerError> {
        std::future::pending().await
    }
    async fn record(&self, _: Vec<Record>) -> Result<(), LedgerError> {
        Ok(())
    }
    async fn revoke(&self, _: Revocation, _: u64) -> Result<u64, LedgerError> {
        Ok(0)
    }
    async fn get(&self, _: &TokenId) -> Result<Option<RecordView>, LedgerError> {
        Ok(None)
    }
    fn stats(&self) -> LedgerStats {
        LedgerStats::default()
    }
}

#[async_trait]
impl Ledger for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    async fn check(&self, _: &Query<'_>) -> Result<Answer, LedgerError> {
        Err(LedgerError::Unavailable("connection refused".into()))
    }
    async fn record(&self, _: Vec<Record>) -> Result<(), LedgerError> {
        Ok(())
    }
    async fn revoke(&self, _: Revocation, _: u64) -> Result<u64, LedgerError> {
        Ok(0)
    }
    async fn get(&self, _: &TokenId) -> Result<Option<RecordView>, LedgerError> {
        Ok(None)
    }
    fn stats(&self) -> LedgerStats {
        LedgerStats::default()
    }
}

#[async_trait]
impl Ledger for Late {
    fn name(&self) -> &'static str {
        "late"
    }
    async fn check(&self, _: &Query<'_>) -> Result<Answer, LedgerError> {
        let left = self.0.load(Ordering::Relaxed);
        if left == 0 {
            return Ok(Answer::Issued);
        }
        self.0.store(left - 1, Ordering::Relaxed);
        Ok(Answer::Unknown)
    }
    async fn record(&self, _: Vec<Record>) -> Result<(), LedgerError> {
        Ok(())
    }
    async fn revoke(&self, _: Revocation, _: u64) -> Result<u64, LedgerError> {
        Ok(0)
    }
    async fn get(&self, _: &TokenId) -> Result<Option<RecordView>, LedgerError> {
        Ok(None)
    }
    fn stats(&self) -> LedgerStats {
        LedgerStats::default()
    }
}

fn shared(ledger: Arc<dyn Ledger>, ledger_toml: &str) -> Shared {
    let src = format!(
        "[upstream]\npeers = [\"127.0.0.1:9\"]\n[ledger]\n{ledger_toml}\n[[keys]]\nkid = \"k\"\nalg = \"RS256\"\npem = \"\"\"{RS256_A_PUB}\"\"\"\n[[routes]]\nname = \"a\"\nclass = \"protected\"\npaths = [\"/a/*\"]\n"
    );
    let config = warden_config::compile_str("t.toml".as_ref(), &src)
        .expect("config")
        .config;
    let verifier = Verifier::new(
        KeyRegistry::build(config.keys.clone()).expect("keys"),
        config.policy.clone(),
    );
    let metrics = Arc::new(Metrics::new());
    let sink =
        std::env::temp_dir().join(format!("warden-proxy-test-events-{}", std::process::id()));
    let events =
        Arc::new(Events::start(Some(&sink), 16, metrics.events_dropped.clone()).expect("events"));
    Shared::new(&config, Arc::new(verifier), ledger, metrics, events)
}

fn fresh_token() -> String {
    let now = unix_now();
    mint(
        SampleKey::RsA,
        "k",
        &serde_json::json!({"sub": "a", "jti": "j", "iat": now, "exp": now + 60}),
    )
    .expect("mint")
}

async fn decide_bounded(s: &Shared, token: &str) -> Reason {
    let settings = s.settings.load_full();
    // Time is paused: if `decide` had no timeout of its own, this outer one would fire.
    tokio::time::timeout(Duration::from_secs(3600), decide(s, token, &settings))
        .await
        .expect("decide hung past its own timeout")
        .reason
}

#[tokio::test(start_paused = true)]
async fn a_stuck_ledger_times_out_as_backend_unavailable() {
    let s = shared(Arc::new(Stuck), "timeout = \"50ms\"");
    let started = tokio::time::Instant::now();
    assert_eq!(
        decide_bounded(&s, &fresh_token()).await,
        Reason::BackendUnavailable
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.metrics.ledger_unavailable.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_ledger_is_backend_unavailable() {
    let s = shared(Arc::new(Broken), "");
    assert_eq!(
        decide_bounded(&s, &fresh_token()).await,
        Reason::BackendUnavailable
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_record_is_waited_for_within_the_issuance_wait() {
    let s = shared(
        Arc::new(Late(AtomicUsize::new(3))),
        "issuance_wait = \"250ms\"",
    );
    assert_eq!(decide_bounded(&s, &fresh_token()).await, Reason::Ok);
    // Too late: 100 polls of 5 ms exceed 250 ms.
    let s = shared(
        Arc::new(Late(AtomicUsize::new(100))),
        "issuance_wait = \"250ms\"",
    );
    assert_eq!(decide_bounded(&s, &fresh_token()).await, Reason::Forged);
    // No waiting room: refused at once.
    let s = shared(Arc::new(Late(AtomicUsize::new(1))), "max_waiters = 0");
    assert_eq!(decide_bounded(&s, &fresh_token()).await, Reason::Forged);
}

#[test]
fn fail_modes_map_to_actions() {
    assert_eq!(
        action_for(Reason::BackendUnavailable, FailMode::Open),
        Action::PassFailOpen
    );
    assert_eq!(
        action_for(Reason::BackendUnavailable, FailMode::Closed),
        Action::Unavailable
    );
    assert_eq!(action_for(Reason::Ok, FailMode::Closed), Action::Pass);
    for r in Reason::ALL
        .iter()
        .filter(|r| !matches!(r, Reason::Ok | Reason::BackendUnavailable))
    {
        assert_eq!(action_for(*r, FailMode::Open), Action::Refuse, "{r}");
    }
}

#[test]
fn upstreams_are_taken_round_robin_ready_ones_first() {
    let lb = LoadBalancer::<RoundRobin>::try_from_iter(["127.0.0.1:1001", "127.0.0.1:1002"])
        .expect("static upstreams");
    let lb = Arc::new(lb);
    let proxy = WardenProxy::new(Arc::new(shared(Arc::new(Broken), "")), Arc::clone(&lb));
    let pick = || proxy.next_peer().map(|p| p._address.to_string());
    let picks: Vec<_> = (0..4).map(|_| pick()).collect();
    assert_ne!(picks[0], picks[1], "{picks:?}");
    assert_eq!(picks[0], picks[2], "{picks:?}");
    assert_eq!(picks[1], picks[3], "{picks:?}");
    let mut both: Vec<_> = picks[..2].iter().flatten().cloned().collect();
    both.sort();
    assert_eq!(both, ["127.0.0.1:1001", "127.0.0.1:1002"]);

    // A backend that is not ready (here disabled; the health check's verdict goes through
    // the same readiness) is skipped; with none ready, the round robin goes on over all of
    // them (tried anyway, as nginx does: a peer really down answers 502).
    let backends = lb.backends().get_backend();
    let first = backends.iter().next().expect("a backend");
    lb.backends().set_enable(first, false);
    for _ in 0..3 {
        assert_eq!(pick().as_deref(), Some("127.0.0.1:1002"));
    }
    for b in backends.iter() {
        lb.backends().set_enable(b, false);
    }
    let mut all: Vec<_> = (0..2).filter_map(|_| pick()).collect();
    all.sort();
    assert_eq!(all, ["127.0.0.1:1001", "127.0.0.1:1002"]);
}
