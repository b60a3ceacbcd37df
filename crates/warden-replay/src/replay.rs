//! One request through the proxy's decision code, at the time the log gives.
//!
//! [`Replayer::feed`] does what `warden-proxy`'s `filter` does, with the same functions:
//! [`warden_config::path::normalize`], [`Routes::find`], on protected routes
//! [`Verifier::verify`] + [`MemIndex::answer`] + [`Verifier::conclude`] (forged,
//! revoked or unknown tokens are refused, and still counted by the rules), then
//! [`Engine::evaluate`], with [`Engine::sweep`] every 100 ms of log time as the proxy's
//! maintenance task does. A `revoke_token` decision revokes the token in the replay's own
//! ledger, so its later requests are refused as they would be live.
//!
//! What differs from live, and why:
//! - Live, a revocation is written in the background and requests racing it within a few
//!   milliseconds may still be decided by the rule rather than the ledger (both refuse).
//!   Replay revokes at once.
//! - The issuance race (`ledger.issuance_wait`) does not exist: every record is loaded
//!   before the first line.
//! - The client address is the log's: trusted-proxy resolution happened when the line
//!   was written (map `ip` to the field that holds the client).
//! - Without `--config` keys, tokens are parsed but not verified ([`Provenance::Unchecked`]):
//!   account and ledger id come from their claims, nothing is refused for provenance
//!   except tokens that do not parse and tokens a rule revoked.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use warden_config::model::{RouteClass, Routes};
use warden_core::ledger::{Answer, MemIndex, Query, Record, Revocation, TokenId};
use warden_core::token;
use warden_core::verify::{Checked, Verified, Verifier};
use warden_core::Reason;
use warden_detect::{Decision, Engine, Facts, Lookup, Verdict};
use warden_rules::Rule;

use crate::format::{Request, MAX_HEADERS};
use crate::report::Stats;

/// How often replay drops idle keys (milliseconds of log time).
const IDLE_SWEEP_EVERY_MS: u64 = 3_600_000;

/// The key of the engine's digests in a replay. Fixed, so that a replay is reproducible
/// (the distinct sketches, and so the estimates near a threshold, depend on the key) and
/// the two sides of a diff judge the same log with the same digests: with a key drawn
/// per replayer, a rule set diffed with itself would show changes. A live proxy draws
/// its key at random so that nobody can aim hash collisions at it; a replay of a log
/// already written has no such attacker.
const REPLAY_KEY: [u8; 16] = *b"warden-replay-v1";

/// The proxy's maintenance task sweeps the engine this often (milliseconds).
pub const SWEEP_EVERY_MS: u64 = 100;
/// Most tokens whose unverified claims are remembered (then the memo starts afresh).
const TOKEN_MEMO_MAX: usize = 1 << 20;

/// How provenance is decided.
#[non_exhaustive]
pub enum Provenance {
    /// Keys and ledger records: exactly the proxy's check.
    Checked {
        /// Verifies tokens with the configured keys and policy.
        verifier: Arc<Verifier>,
    },
    /// No keys: tokens are parsed, not verified; the account may come from the log.
    Unchecked {
        /// The claim naming the account.
        account_claim: String,
    },
}

/// What the proxy would have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Outcome {
    /// Proxied to the upstream.
    Passed,
    /// 400: a path whose meaning depends on the reader.
    BadPath,
    /// Refused for provenance (401 or the route's status).
    Refused(Reason),
    /// 429 by a rule.
    RateLimited,
    /// 403 by a rule.
    Blocked,
    /// 403 by a ban.
    Banned,
    /// 401, the token revoked by a rule.
    Revoked,
}

impl Outcome {
    /// Whether the request reached the upstream.
    #[must_use]
    pub fn reached_upstream(self) -> bool {
        self == Outcome::Passed
    }

    /// A short name (`passed`, `refused:forged`, `rate_limited`...).
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Outcome::Passed => "passed".into(),
            Outcome::BadPath => "bad_path".into(),
            Outcome::Refused(r) => format!("refused:{}", r.as_str()),
            Outcome::RateLimited => "rate_limited".into(),
            Outcome::Blocked => "blocked".into(),
            Outcome::Banned => "banned".into(),
            Outcome::Revoked => "revoked".into(),
        }
    }
}

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// What happened.
    pub outcome: Outcome,
    /// The status the client got (200 for a proxied request, whatever the upstream said).
    pub status: u16,
    /// The rule that decided, if a rule did.
    pub decided_by: Option<&'static str>,
}

/// Replays requests through one rule set.
pub struct Replayer {
    engine: Engine,
    routes: Option<Routes>,
    provenance: Provenance,
    check_missing: bool,
    ledger: MemIndex,
    revoked: HashSet<TokenId>,
    token_memo: HashMap<u64, Option<(Box<str>, TokenId)>>,
    /// The engine's verdict, kept from one request to the next for its buffers.
    verdict: Verdict,
    header_names: Vec<Box<str>>,
    next_sweep_ms: u64,
    last_ms: u64,
    /// What the report is made of.
    pub stats: Stats,
}

/// Everything a replayer is built from.
pub struct Setup {
    /// The rules.
    pub rules: Vec<Rule>,
    /// `rules.max_state_bytes`.
    pub max_state_bytes: usize,
    /// `rules.max_bans`.
    pub max_bans: usize,
    /// The configuration's routes; `None`: every request is on a protected route.
    pub routes: Option<Routes>,
    /// How provenance is decided.
    pub provenance: Provenance,
    /// Whether the log carries tokens: if so, a protected request without one is refused
    /// (`missing`), as live; if not, provenance is not judged at all.
    pub log_has_tokens: bool,
    /// Issued-token records for the ledger.
    pub records: Arc<Vec<Record>>,
    /// Names of the log's `header:` targets.
    pub header_names: Vec<Box<str>>,
}

struct Headers<'a, 'b> {
    names: &'a [Box<str>],
    values: &'a [Option<std::borrow::Cow<'b, str>>; MAX_HEADERS],
}

impl Lookup for Headers<'_, '_> {
    fn get(&self, name: &str) -> Option<&str> {
        let i = self.names.iter().position(|n| **n == *name)?;
        self.values.get(i)?.as_deref()
    }
}

struct Claims<'a>(Option<&'a Verified>);

impl Lookup for Claims<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.and_then(|v| v.claim(name))
    }
}

fn fnv(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

impl Replayer {
    /// A replayer with a fresh engine, its ledger loaded with the records.
    #[must_use]
    pub fn new(setup: Setup) -> Self {
        let engine = Engine::with_key(setup.max_state_bytes, setup.max_bans, REPLAY_KEY);
        // Idle keys are dropped every hour of log time rather than the proxy's 5 s: no
        // decision changes while the state is under its cap (an idle key counts zero
        // either way), and the walk over every table would otherwise dominate a replay of
        // hours of sparse traffic (every 10 min, the walks were 4 % of replaying the
        // report scenario's six hours). The cap is still checked every 100 ms of log time;
        // over it, eviction takes the lowest-scoring entries, idle ones among them, so an
        // over-cap replay can differ from the proxy's in which low-scoring keys go.
        engine.set_idle_sweep_interval(IDLE_SWEEP_EVERY_MS);
        let ledger = MemIndex::new();
        for r in setup.records.iter() {
            ledger.insert(r);
        }
        if let Provenance::Checked { verifier } = &setup.provenance {
            let mut claims: Vec<String> = setup.rules.iter().flat_map(Rule::claims_used).collect();
            claims.sort();
            claims.dedup();
            verifier.keep_claims(claims);
        }
        let check_missing =
            setup.log_has_tokens && matches!(setup.provenance, Provenance::Checked { .. });
        let stats = Stats::new(&setup.rules);
        engine.set_rules(setup.rules, setup.max_state_bytes);
        Self {
            engine,
            routes: setup.routes,
            provenance: setup.provenance,
            check_missing,
            ledger,
            revoked: HashSet::new(),
            token_memo: HashMap::new(),
            verdict: Verdict::default(),
            header_names: setup.header_names,
            next_sweep_ms: 0,
            last_ms: 0,
            stats,
        }
    }

    /// The engine (bans in force, top offenders).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Decides one request and counts it in the statistics.
    pub fn feed(&mut self, req: &Request<'_>) -> Decided {
        // Time only moves forward: a line logged out of order is taken at the latest
        // time seen (counted in the report).
        let now_ms = if req.time_ms < self.last_ms {
            self.stats.out_of_order += 1;
            self.last_ms
        } else {
            req.time_ms
        };
        self.last_ms = now_ms;
        if now_ms >= self.next_sweep_ms {
            let _ = self.engine.sweep(now_ms);
            self.next_sweep_ms = now_ms - now_ms % SWEEP_EVERY_MS + SWEEP_EVERY_MS;
        }
        let lowercase = self.routes.as_ref().is_some_and(|r| r.case_insensitive);
        let Ok(path) = warden_config::path::normalize(&req.path, lowercase) else {
            let d = Decided {
                outcome: Outcome::BadPath,
                status: 400,
                decided_by: None,
            };
            self.stats.count(req, now_ms, &d, None, None);
            return d;
        };
        let (route, class) = match &self.routes {
            Some(r) => r.find(&path, &req.method),
            None => (None, RouteClass::Protected),
        };
        let route_name = route.map(|(_, r)| r.name.as_str());
        let reject_status = route.map_or(401, |(_, r)| r.reject_status);

        // 1. Provenance, on protected routes.
        let mut checked: Option<Checked> = None;
        let mut unchecked: Option<(Box<str>, TokenId)> = None;
        let mut reason = Reason::Ok;
        if class == RouteClass::Protected {
            match (&self.provenance, req.token.as_deref()) {
                (Provenance::Checked { .. }, None) if self.check_missing => {
                    reason = Reason::Missing;
                }
                (Provenance::Checked { verifier }, Some(t)) => {
                    match verifier.verify(t, now_ms / 1000) {
                        Ok(c) => {
                            // As the proxy's `decide`: a token confirmed at the ledger's
                            // revision is not asked about again.
                            let (revision, answer) = match c.confirmed_revision() {
                                Some(r) if self.ledger.still_issued(r, &c.verified.id) => {
                                    (r, Answer::Issued)
                                }
                                _ => {
                                    let revision = self.ledger.revision();
                                    (revision, self.ledger.answer(&Query::of(&c.verified)))
                                }
                            };
                            reason = verifier.conclude_at(&c, answer, Some(revision));
                            checked = Some(c);
                        }
                        Err(r) => reason = r,
                    }
                }
                (Provenance::Unchecked { account_claim }, Some(t)) => {
                    match unverified(&mut self.token_memo, t, account_claim) {
                        Some((account, id)) => {
                            if self.revoked.contains(&id) {
                                reason = Reason::RevokedToken;
                            }
                            unchecked = Some((account, id));
                        }
                        None => reason = Reason::Malformed,
                    }
                }
                _ => {}
            }
        }
        let verified = checked.as_ref().map(|c| &*c.verified);
        let (account, token_id) = match (&verified, &unchecked) {
            (Some(v), _) => (Some(&*v.account), Some(v.id)),
            (None, Some((a, id))) => (Some(&**a), Some(*id)),
            (None, None) if class == RouteClass::Protected => (req.account.as_deref(), None),
            _ => (None, None),
        };

        // 2. Behaviour rules, on every request (refused ones too).
        let headers = Headers {
            names: &self.header_names,
            values: &req.headers,
        };
        let claims = Claims(verified);
        let facts = Facts {
            now_ms,
            class,
            route: route_name,
            method: &req.method,
            path: &path,
            ip: req.ip,
            account,
            token: token_id.as_ref(),
            headers: &headers,
            claims: &claims,
        };
        let mut verdict = std::mem::take(&mut self.verdict);
        self.engine.evaluate_into(&facts, &mut verdict);

        // 3. A provenance refusal first, then the rules' decision.
        let d = if reason != Reason::Ok {
            Decided {
                outcome: Outcome::Refused(reason),
                status: reject_status,
                decided_by: None,
            }
        } else {
            let (outcome, status) = match verdict.decision {
                Decision::Pass => (Outcome::Passed, 200),
                Decision::RateLimit { .. } => (Outcome::RateLimited, 429),
                Decision::Block => (Outcome::Blocked, 403),
                Decision::Banned { .. } => (Outcome::Banned, 403),
                Decision::RevokeToken => {
                    if let Some(id) = token_id {
                        match &self.provenance {
                            Provenance::Checked { .. } => {
                                let _ = self.ledger.revoke(&Revocation::Token(id), now_ms / 1000);
                            }
                            Provenance::Unchecked { .. } => {
                                self.revoked.insert(id);
                            }
                        }
                    }
                    (Outcome::Revoked, 401)
                }
            };
            Decided {
                outcome,
                status,
                decided_by: verdict.decided_by,
            }
        };
        self.stats
            .count(req, now_ms, &d, Some(&verdict), Some(&facts));
        self.verdict = verdict;
        d
    }

    /// The time of the last request (unix milliseconds).
    #[must_use]
    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }
}

/// Account and ledger id from a token's claims, without verifying it; memoized.
fn unverified(
    memo: &mut HashMap<u64, Option<(Box<str>, TokenId)>>,
    token: &str,
    account_claim: &str,
) -> Option<(Box<str>, TokenId)> {
    let h = fnv(token);
    if let Some(hit) = memo.get(&h) {
        return hit.clone();
    }
    let parsed = token::parse(token, 8192).ok().and_then(|p| {
        let account = p
            .claims
            .string(account_claim)
            .ok()
            .flatten()
            .filter(|a| !a.is_empty())?;
        let id = match p.claims.string("jti").ok().flatten() {
            Some(j) if !j.is_empty() => TokenId::from_jti(j),
            _ => TokenId::from_token(token),
        };
        Some((Box::from(account), id))
    });
    if memo.len() >= TOKEN_MEMO_MAX {
        memo.clear();
    }
    memo.insert(h, parsed.clone());
    parsed
}

/// Whether a hit's action refuses the request (in shadow mode: would refuse).
pub(crate) fn refusing(v: &Verdict, rule: &str) -> bool {
    v.hits.iter().any(|h| h.rule == rule && h.action.denies())
}
