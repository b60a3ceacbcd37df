//! Warden's behaviour detector: sliding-window counters and distinct-count sets per key,
//! in bounded lock-free maps, evaluated against rules, with bans.
//!
//! No pingora, no tokio, no clock: every call takes the time (`now_ms`, unix
//! milliseconds), so tests drive time by hand.
//!
//! ```
//! use std::time::Duration;
//! use warden_detect::{Decision, Engine, Facts, Nothing};
//! use warden_rules::*;
//!
//! let engine = Engine::new(64 << 20, 100_000);
//! engine.set_rules(vec![Rule {
//!     name: "accounts-per-ip".into(),
//!     description: "one address walking through accounts".into(),
//!     matcher: Match::default(),
//!     key: vec![Field::Ip],
//!     measure: Measure::Distinct(Field::Account),
//!     window: Duration::from_secs(3600),
//!     threshold: 3,
//!     action: Action::Ban(Duration::from_secs(600)),
//!     mode: Mode::Enforce,
//!     priority: 0,
//!     scope: Scope::Local,
//! }], 64 << 20);
//! let facts = |account, now_ms| Facts {
//!     now_ms, class: RouteClass::Protected, route: None, method: "GET", path: "/account/x",
//!     ip: "192.0.2.7".parse().unwrap(), account: Some(account), token: None,
//!     headers: &Nothing, claims: &Nothing,
//! };
//! let t = 1_800_000_000_000;
//! for (i, a) in ["a", "b", "c"].iter().enumerate() {
//!     assert_eq!(engine.evaluate(&facts(a, t + i as u64)).decision, Decision::Pass);
//! }
//! // The fourth distinct account from the same address: banned for ten minutes.
//! let v = engine.evaluate(&facts("d", t + 3));
//! assert_eq!(v.decision, Decision::Banned { until_ms: t + 3 + 600_000 });
//! // Even going back to an account it already used.
//! assert!(matches!(engine.evaluate(&facts("a", t + 4)).decision, Decision::Banned { .. }));
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod distinct;
mod engine;
pub mod fleet;
pub mod snapshot;
mod state;
mod table;
pub mod window;

pub use engine::{
    describe_key, Ban, BanScope, Decision, Engine, Facts, Hit, Lookup, Nothing, Offender, Restored,
    RuleInfo, SweepReport, TopOffenders, Verdict, IDLE_SWEEP_MS, MANUAL, TOP_K,
};
pub use snapshot::SnapshotError;
pub use state::{MAX_SLOTS, SLOT_BYTES};

#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
