//! Shared helpers for the benchmarks and the memory measurement: the per-request
//! provenance check as the proxy runs it, deterministic pseudo-random numbers (no `rand`
//! dependency), and synthetic ledger records.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt::Write as _;

use warden_core::fixtures::{mint, SampleKey};
use warden_core::ledger::{MemIndex, Query, Record, TokenId, EPOCH_BASE};
use warden_core::verify::{Verified, Verifier};
use warden_core::Reason;

/// The request time every benchmark uses (unix seconds, 2027-01-15).
pub const NOW: u64 = 1_800_000_000;

/// Distinct account names in the synthetic ledger: a realistic ledger holds several live
/// tokens per account (devices, sessions).
pub const ACCOUNTS: usize = 1 << 16;

/// The per-request provenance check, in the order the proxy runs it: verify (signature
/// skipped on a cache hit), ask the in-memory ledger index, and cache the token only if
/// the ledger confirmed it.
#[inline]
pub fn provenance(verifier: &Verifier, index: &MemIndex, token: &str, now: u64) -> Reason {
    let checked = match verifier.verify(token, now) {
        Ok(c) => c,
        Err(reason) => return reason,
    };
    let v = &checked.verified;
    let query = Query {
        id: v.id,
        account: &v.account,
        kid: &v.kid,
        issued_at: v.issued_at,
    };
    verifier.conclude(&checked, index.answer(&query))
}

/// The claims of sample token `j` of a series `tag`: those of a typical session token
/// (account, id, times, issuer, audience), valid from a minute before [`NOW`] for an hour.
#[must_use]
pub fn sample_claims(tag: &str, j: usize) -> serde_json::Value {
    serde_json::json!({
        "sub": format!("bench-{tag}-{j}@example.com"),
        "jti": format!("{tag}-{j}-0f3c9a1e-5b7d-4e2a-9c61-3d8b7f2a4e10"),
        "iat": NOW - 60,
        "exp": NOW + 3600,
        "iss": "https://login.example.com",
        "aud": "api",
    })
}

/// What `verifier` keeps of a sample token signed by `key` under `kid` (which must be in
/// its registry). Synthetic cache entries are clones of it, so that they have the shape
/// and the size of real ones whatever fields `Verified` grows.
#[must_use]
pub fn sample_verified(verifier: &Verifier, key: SampleKey, kid: &str) -> Verified {
    let token = mint(key, kid, &sample_claims("template", 0)).expect("sample key signs");
    let checked = verifier
        .verify(&token, NOW)
        .expect("the sample token verifies");
    (*checked.verified).clone()
}

/// SplitMix64, the simulator's generator: small, fast, deterministic.
pub use warden_replay::sim::Rng as SplitMix64;

/// The account names of the synthetic ledger, `user-0` .. `user-{ACCOUNTS - 1}`.
#[must_use]
pub fn account_pool() -> Vec<String> {
    (0..ACCOUNTS).map(|i| format!("user-{i}")).collect()
}

/// The id of synthetic record `i` (SHA-256 of a `jti`, as for a real token).
#[must_use]
pub fn synthetic_id(i: usize) -> TokenId {
    let mut jti = String::with_capacity(24);
    let _ = write!(jti, "synthetic-{i}");
    TokenId::from_jti(&jti)
}

/// The account of synthetic record `i`, as an index into [`account_pool`].
#[must_use]
pub fn synthetic_account(i: usize) -> usize {
    i % ACCOUNTS
}

/// Issue time of every synthetic record: an hour before [`NOW`], valid for a day.
pub const SYNTHETIC_IAT: u64 = NOW - 3600;

/// Synthetic record `i`.
#[must_use]
pub fn synthetic_record(i: usize, accounts: &[String]) -> Record {
    Record {
        id: synthetic_id(i),
        account: accounts[synthetic_account(i)].clone(),
        issued_at: SYNTHETIC_IAT,
        expires_at: SYNTHETIC_IAT + 86_400,
        kid: "rs-1".into(),
    }
}

/// Inserts synthetic records `0..n` into `index`, reusing one [`Record`] so that nothing
/// but the index stays allocated.
pub fn fill_index(index: &MemIndex, n: usize, accounts: &[String]) {
    fill_index_range(index, 0..n, accounts);
}

/// Inserts synthetic records `range` into `index` (see [`fill_index`]).
pub fn fill_index_range(index: &MemIndex, range: std::ops::Range<usize>, accounts: &[String]) {
    let mut record = synthetic_record(range.start, accounts);
    for i in range {
        record.id = synthetic_id(i);
        record.account.clear();
        record.account.push_str(&accounts[synthetic_account(i)]);
        index.insert(&record);
    }
}

/// Compact times must stay representable: the synthetic records are after the epoch base.
const _: () = assert!(SYNTHETIC_IAT > EPOCH_BASE);

/// The log replay benchmark's setup, shared by `benches/replay.rs` and the
/// `replay_profile` binary (one pass, for callgrind and perf).
pub mod replay {
    use std::path::Path;
    use std::sync::Arc;

    use warden_core::keys::{KeyRegistry, KeyState};
    use warden_core::ledger::{Record, TokenId};
    use warden_core::verify::{Policy, Verifier};
    use warden_replay::sim::{self, Scenario};
    use warden_replay::{Provenance, Replayer, Setup};
    use warden_rules::Rule;

    /// The default rule pack, `deploy/rules/default.toml`.
    #[must_use]
    pub fn default_pack() -> Vec<Rule> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/default.toml");
        let (rules, diags) = warden_config::rules::load_rule_file(&path);
        assert!(diags.is_empty(), "{diags:?}");
        rules.into_iter().map(|l| l.rule).collect()
    }

    /// An hour of the report's scenario: people, the forging scraper, the stolen-token one.
    #[must_use]
    pub fn traffic() -> sim::Traffic {
        let s = Scenario {
            duration_s: 3600,
            sessions: 5_000,
            forged_window: (600, 600),
            stolen_window: (1800, 600),
            ..Scenario::report()
        };
        sim::generate(&s).expect("generate")
    }

    /// The traffic as JSON lines.
    #[must_use]
    pub fn json_lines(t: &sim::Traffic) -> Vec<String> {
        let mut buf = String::new();
        t.events
            .iter()
            .map(|e| {
                sim::json_line(e, &mut buf);
                buf.clone()
            })
            .collect()
    }

    /// The ledger records of the traffic's issued tokens.
    #[must_use]
    pub fn records(t: &sim::Traffic) -> Arc<Vec<Record>> {
        let kid = Scenario::report().kid;
        Arc::new(
            t.issued
                .iter()
                .map(|r| Record {
                    id: TokenId::from_jti(&r.jti),
                    account: r.account.clone(),
                    issued_at: r.issued_at,
                    expires_at: r.expires_at,
                    kid: kid.clone(),
                })
                .collect(),
        )
    }

    /// A replayer checking provenance with the simulator's key and the records.
    #[must_use]
    pub fn replayer(rules: Vec<Rule>, records: &Arc<Vec<Record>>) -> Replayer {
        let kid = Scenario::report().kid;
        let registry = KeyRegistry::build(vec![
            warden_core::fixtures::SampleKey::Hs.spec(&kid, KeyState::Active)
        ])
        .expect("keys");
        Replayer::new(Setup {
            rules,
            max_state_bytes: 256 << 20,
            max_bans: 1_000_000,
            routes: None,
            provenance: Provenance::Checked {
                verifier: Arc::new(Verifier::new(registry, Policy::default())),
            },
            log_has_tokens: true,
            records: Arc::clone(records),
            header_names: Vec::new(),
        })
    }
}
