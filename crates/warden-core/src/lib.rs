//! Warden's detector core: token parsing and verification, the key registry, the token
//! ledger trait and its in-memory index, and provenance reasons.
//!
//! Nothing here knows about pingora, tokio or the network, and nothing reads a clock:
//! every function that depends on time takes `now` (unix seconds).
//!
//! The provenance of a request's token is decided in two steps:
//! 1. [`verify::Verifier::verify`]: signature (skipped for a token already confirmed),
//!    key lifecycle, `exp`/`nbf`, claims;
//! 2. [`ledger::Ledger::check`]: was it issued, to this account, and not revoked?
//!
//! ```
//! use warden_core::fixtures::{mint, SampleKey};
//! use warden_core::keys::{KeyRegistry, KeyState};
//! use warden_core::ledger::{MemIndex, Query};
//! use warden_core::verify::{reason_for, Policy, Verifier};
//! use warden_core::Reason;
//!
//! let now = 1_800_000_000;
//! let registry = KeyRegistry::build(vec![SampleKey::RsA.spec("login-2026", KeyState::Active)]).unwrap();
//! let verifier = Verifier::new(registry, Policy::default());
//! let ledger = MemIndex::new();
//! let claims = serde_json::json!({"sub": "alice", "jti": "t-1", "iat": now, "exp": now + 600});
//! let token = mint(SampleKey::RsA, "login-2026", &claims).unwrap();
//!
//! // Validly signed, but the login service never issued it: forged.
//! let checked = verifier.verify(&token, now).unwrap();
//! let v = &checked.verified;
//! let q = Query { id: v.id, account: &v.account, kid: &v.kid, issued_at: v.issued_at };
//! assert_eq!(reason_for(ledger.answer(&q)), Reason::Forged);
//!
//! // Once recorded by the issuance process, it passes.
//! ledger.insert(&verifier.record_for_issued(&token, now).unwrap());
//! assert_eq!(reason_for(ledger.answer(&q)), Reason::Ok);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bits;
mod claims;
pub mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod ingest;
pub mod json;
pub mod keys;
pub mod ledger;
pub mod reason;
pub mod token;
pub mod verify;

pub use error::{KeyError, LedgerError, Malformed};
pub use reason::Reason;
