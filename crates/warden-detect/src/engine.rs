//! The rule engine: per-request evaluation, bans, and bounded state.
//!
//! ## State and memory
//! Each rule has its own map (dashmap, shared by all worker threads) from a 64-bit keyed
//! digest of its key to a [`SlidingCount`] (count rules, 12 bytes) or a [`DistinctSet`]
//! (distinct rules, 36 bytes, more once a set outgrows its inline slots; see
//! `distinct.rs`). [`Engine::state_bytes`] counts table slots (capacity × slot size,
//! control bytes included) plus the heap of large sets.
//!
//! ## Eviction that is not a bypass
//! When the state outgrows `max_state_bytes`, [`Engine::sweep`] first drops idle keys
//! (nothing left in their window), then evicts by **score** = estimate / threshold,
//! lowest first, until the state is back under 90 % of the cap. A flood of fresh
//! addresses, each seen once, has scores near zero and evicts itself; a key close to its
//! threshold is the last to go. Bans are not state: they live in their own map, bounded
//! separately (`max_bans`), and are never evicted to make room, so an offender who was
//! banned stays banned through any flood. This is the difference from LRU limiters
//! (nginx `limit_req`, Envoy's local rate limit), where a flood of new keys pushes the
//! offender out and it returns with a clean slate. Tested with 1 M flood addresses below
//! and in `tests.rs`.

use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use siphasher::sip::SipHasher13;
use warden_core::ledger::TokenId;
use warden_rules::{Action, Condition, Field, Measure, Mode, RouteClass, Rule};

use crate::distinct::DistinctSet;
use crate::window::SlidingCount;

/// Looks up a named request attribute (a header, a claim).
pub trait Lookup {
    /// The value, if present.
    fn get(&self, name: &str) -> Option<&str>;
}

/// No values.
pub struct Nothing;

impl Lookup for Nothing {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

/// What the engine knows of a request.
pub struct Facts<'a> {
    /// Unix milliseconds.
    pub now_ms: u64,
    /// Route class.
    pub class: RouteClass,
    /// Route name, if a route matched.
    pub route: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Normalized path.
    pub path: &'a str,
    /// Client address.
    pub ip: IpAddr,
    /// Account of a token whose signature verified.
    pub account: Option<&'a str>,
    /// Ledger id of that token.
    pub token: Option<&'a TokenId>,
    /// Request headers (lower-case names).
    pub headers: &'a dyn Lookup,
    /// Claims of the verified token.
    pub claims: &'a dyn Lookup,
}

/// One rule over its threshold for this request.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Rule name.
    pub rule: Arc<str>,
    /// Its action.
    pub action: Action,
    /// Its mode.
    pub mode: Mode,
    /// The estimate that exceeded the threshold.
    pub estimate: f64,
    /// The threshold.
    pub threshold: u64,
    /// This request took the estimate over the threshold (log once, not per request).
    pub crossed: bool,
    /// A ban was placed by this request.
    pub ban_placed: bool,
    /// The key, readable (only when `crossed` or `ban_placed`).
    pub key: Option<String>,
}

/// What the request gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Proxy it.
    Pass,
    /// 429, retry after this many seconds.
    RateLimit {
        /// Seconds.
        retry_after_s: u64,
    },
    /// 403.
    Block,
    /// 403 until the ban ends.
    Banned {
        /// Unix milliseconds.
        until_ms: u64,
    },
    /// Revoke the token and refuse (401).
    RevokeToken,
}

/// The engine's answer for one request.
#[derive(Debug, Clone)]
#[must_use]
pub struct Verdict {
    /// What to do.
    pub decision: Decision,
    /// The rule that decided (`manual` for a ban placed through the admin API).
    pub decided_by: Option<Arc<str>>,
    /// Rules over their threshold, in any mode.
    pub hits: Vec<Hit>,
    /// Tags to add to the upstream request (names of `tag` rules that fired).
    pub tags: Vec<Arc<str>>,
}

/// A ban.
#[derive(Debug, Clone)]
pub struct Ban {
    /// Unix milliseconds it ends.
    pub until_ms: u64,
    /// Unix milliseconds it began.
    pub placed_ms: u64,
    /// The rule that placed it, or `manual`.
    pub rule: Arc<str>,
    /// The key, readable (`ip=192.0.2.1`).
    pub key: String,
}

/// Scope of a ban: a rule's state fingerprint, or [`MANUAL`].
pub type BanScope = u64;
/// Scope of bans placed through the admin API, on one field.
pub const MANUAL: BanScope = 0;

#[derive(Debug)]
enum Table {
    Count(StateMap<SlidingCount>),
    Distinct(StateMap<DistinctSet>, AtomicIsize),
}

/// One rule's state; kept across reloads while the rule's state fingerprint is unchanged.
#[derive(Debug)]
pub struct RuleState {
    fingerprint: u64,
    table: Table,
    top: TopOffenders,
}

impl RuleState {
    fn new(rule: &Rule) -> Self {
        let table = match rule.measure {
            Measure::Count => Table::Count(StateMap::default()),
            Measure::Distinct(_) => Table::Distinct(StateMap::default(), AtomicIsize::new(0)),
        };
        Self {
            fingerprint: rule.state_fingerprint(),
            table,
            top: TopOffenders::default(),
        }
    }

    fn len(&self) -> usize {
        match &self.table {
            Table::Count(m) => m.len(),
            Table::Distinct(m, _) => m.len(),
        }
    }

    fn bytes(&self) -> usize {
        match &self.table {
            Table::Count(m) => m.capacity() * (std::mem::size_of::<(u64, SlidingCount)>() + 1),
            Table::Distinct(m, heap) => {
                m.capacity() * (std::mem::size_of::<(u64, DistinctSet)>() + 1)
                    + usize::try_from(heap.load(Ordering::Relaxed)).unwrap_or(0)
            }
        }
    }
}

struct Compiled {
    rule: Rule,
    name: Arc<str>,
    window_ms: u64,
    state: Arc<RuleState>,
}

/// Offenders kept per rule for the SOC.
pub const TOP_K: usize = 32;

/// A key high in a rule's measure.
#[derive(Debug, Clone)]
pub struct Offender {
    key: u64,
    /// The key, readable.
    pub display: String,
    /// Its highest estimate seen.
    pub estimate: f64,
    /// Unix milliseconds it was last seen over half the threshold.
    pub last_ms: u64,
}

/// A rule's worst keys: a bounded "heavy hitters" list of the keys with the highest
/// estimates, fed only by requests at or over half the rule's threshold, through a
/// `try_lock` that skips the update rather than wait, so it never slows a request.
/// The SOC reads it from the admin API instead of per-key metric labels.
#[derive(Debug, Default)]
pub struct TopOffenders(std::sync::Mutex<Vec<Offender>>);

impl TopOffenders {
    fn offer(&self, key: u64, estimate: f64, now_ms: u64, display: impl FnOnce() -> String) {
        let Ok(mut top) = self.0.try_lock() else {
            return;
        };
        if let Some(o) = top.iter_mut().find(|o| o.key == key) {
            o.estimate = o.estimate.max(estimate);
            o.last_ms = now_ms;
            return;
        }
        let entry = |display| Offender {
            key,
            display,
            estimate,
            last_ms: now_ms,
        };
        if top.len() < TOP_K {
            top.push(entry(display()));
            return;
        }
        if let Some((i, min)) = top
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.estimate.total_cmp(&b.1.estimate))
        {
            if estimate > min.estimate {
                top[i] = entry(display());
            }
        }
    }

    fn list(&self, since_ms: u64) -> Vec<Offender> {
        let mut v: Vec<Offender> = match self.0.lock() {
            Ok(t) => t
                .iter()
                .filter(|o| o.last_ms >= since_ms)
                .cloned()
                .collect(),
            Err(p) => p.into_inner().clone(),
        };
        v.sort_by(|a, b| b.estimate.total_cmp(&a.estimate));
        v
    }
}

/// What the admin API shows of a rule.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// The rule.
    pub rule: Rule,
    /// Keys it tracks.
    pub tracked_keys: usize,
    /// Its worst keys seen within the last window, highest first.
    pub top: Vec<Offender>,
}

/// The behaviour engine.
pub struct Engine {
    rules: ArcSwap<Vec<Compiled>>,
    bans: DashMap<(BanScope, u64), Ban>,
    manual_bans: AtomicUsize,
    key: (u64, u64),
    max_state_bytes: AtomicUsize,
    max_bans: usize,
    last_idle_sweep_ms: AtomicU64,
}

/// How often [`Engine::sweep`] walks the tables for idle keys.
pub const IDLE_SWEEP_MS: u64 = 5_000;

/// What a sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Keys dropped because nothing was left in their window.
    pub idle: usize,
    /// Keys evicted to respect the memory cap.
    pub evicted: usize,
    /// Bans that ended.
    pub bans_expired: usize,
    /// The bans that ended, for their events.
    pub ended: Vec<Ban>,
}

fn manual_name() -> Arc<str> {
    Arc::from("manual")
}

impl Engine {
    /// An engine with no rules.
    #[must_use]
    pub fn new(max_state_bytes: usize, max_bans: usize) -> Self {
        let mut seed = [0u8; 16];
        if getrandom::fill(&mut seed).is_err() {
            seed = *b"warden-detect-k!";
        }
        Self {
            rules: ArcSwap::from_pointee(Vec::new()),
            bans: DashMap::new(),
            manual_bans: AtomicUsize::new(0),
            key: (
                u64::from_le_bytes(seed[..8].try_into().unwrap_or([0; 8])),
                u64::from_le_bytes(seed[8..].try_into().unwrap_or([0; 8])),
            ),
            max_state_bytes: AtomicUsize::new(max_state_bytes),
            max_bans,
            last_idle_sweep_ms: AtomicU64::new(0),
        }
    }

    /// Installs a rule set. Rules whose state fingerprint (name, key, measure, window,
    /// match) is unchanged keep their counters and bans; others start empty; state of
    /// removed rules is dropped. Requests in flight finish with the old set.
    pub fn set_rules(&self, mut rules: Vec<Rule>, max_state_bytes: usize) {
        rules.sort_by_key(|r| r.priority);
        let old = self.rules.load();
        let compiled = rules
            .into_iter()
            .map(|rule| {
                let fp = rule.state_fingerprint();
                let state = old
                    .iter()
                    .find(|c| c.state.fingerprint == fp)
                    .map_or_else(|| Arc::new(RuleState::new(&rule)), |c| Arc::clone(&c.state));
                Compiled {
                    name: Arc::from(rule.name.as_str()),
                    window_ms: u64::try_from(rule.window.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                    rule,
                    state,
                }
            })
            .collect::<Vec<_>>();
        let live: Vec<u64> = compiled.iter().map(|c| c.state.fingerprint).collect();
        self.rules.store(Arc::new(compiled));
        self.bans
            .retain(|(scope, _), _| *scope == MANUAL || live.contains(scope));
        self.max_state_bytes
            .store(max_state_bytes, Ordering::Relaxed);
    }

    /// Names of the rules in force, in evaluation order.
    #[must_use]
    pub fn rule_names(&self) -> Vec<Arc<str>> {
        self.rules
            .load()
            .iter()
            .map(|c| Arc::clone(&c.name))
            .collect()
    }

    fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.key.0, self.key.1)
    }

    /// Evaluates a request: counts it in every matching rule and decides.
    pub fn evaluate(&self, f: &Facts<'_>) -> Verdict {
        let mut v = Verdict {
            decision: Decision::Pass,
            decided_by: None,
            hits: Vec::new(),
            tags: Vec::new(),
        };
        let mut strongest: Option<(u8, i64)> = None;
        let mut decide =
            |v: &mut Verdict, severity: u8, priority: i64, d: Decision, by: &Arc<str>| {
                if strongest.is_none_or(|(s, p)| severity > s || (severity == s && priority < p)) {
                    strongest = Some((severity, priority));
                    v.decision = d;
                    v.decided_by = Some(Arc::clone(by));
                }
            };
        if self.manual_bans.load(Ordering::Relaxed) > 0 {
            for field in [Field::Ip, Field::Account, Field::Token] {
                if let Some(k) = self.hash_fields(std::slice::from_ref(&field), f) {
                    if let Some(b) = self.bans.get(&(MANUAL, k)) {
                        if b.until_ms > f.now_ms {
                            let by = manual_name();
                            decide(
                                &mut v,
                                6,
                                i64::MIN,
                                Decision::Banned {
                                    until_ms: b.until_ms,
                                },
                                &by,
                            );
                        }
                    }
                }
            }
        }
        let rules = self.rules.load();
        let mut memo = Memo::default();
        for c in rules.iter() {
            let r = &c.rule;
            if !matches(r, f) {
                continue;
            }
            let Some(key) = self.key_of(&r.key, f, &mut memo) else {
                continue;
            };
            let enforce = r.mode == Mode::Enforce;
            if let (Action::Ban(_), true) = (&r.action, enforce) {
                if let Some(b) = self.bans.get(&(c.state.fingerprint, key)) {
                    if b.until_ms > f.now_ms {
                        decide(
                            &mut v,
                            r.action.severity(),
                            r.priority,
                            Decision::Banned {
                                until_ms: b.until_ms,
                            },
                            &c.name,
                        );
                    }
                }
            }
            let estimate = match (&c.state.table, &r.measure) {
                (Table::Count(m), _) => m.entry(key).or_default().add(f.now_ms, c.window_ms),
                (Table::Distinct(m, heap), Measure::Distinct(field)) => {
                    let Some(fp) = self.field_hash(field, f, &mut memo) else {
                        continue;
                    };
                    let (est, delta) =
                        m.entry(key)
                            .or_default()
                            .insert(fp as u32, f.now_ms, c.window_ms);
                    if delta != 0 {
                        heap.fetch_add(delta, Ordering::Relaxed);
                    }
                    est
                }
                (Table::Distinct(..), Measure::Count) => continue,
            };
            let threshold = r.threshold as f64;
            if estimate * 2.0 >= threshold {
                c.state
                    .top
                    .offer(key, estimate, f.now_ms, || describe(&r.key, f));
            }
            if estimate <= threshold {
                continue;
            }
            let crossed = estimate - 1.0 <= threshold;
            let mut hit = Hit {
                rule: Arc::clone(&c.name),
                action: r.action.clone(),
                mode: r.mode,
                estimate,
                threshold: r.threshold,
                crossed,
                ban_placed: false,
                key: None,
            };
            if enforce {
                match &r.action {
                    Action::Log => {}
                    Action::Tag => v.tags.push(Arc::clone(&c.name)),
                    Action::RateLimit => {
                        let ms = SlidingCount::ms_to_window_end(f.now_ms, c.window_ms);
                        decide(
                            &mut v,
                            2,
                            r.priority,
                            Decision::RateLimit {
                                retry_after_s: ms.div_ceil(1000).max(1),
                            },
                            &c.name,
                        );
                    }
                    Action::Block => decide(&mut v, 3, r.priority, Decision::Block, &c.name),
                    Action::RevokeToken => {
                        if f.token.is_some() {
                            decide(&mut v, 4, r.priority, Decision::RevokeToken, &c.name);
                        }
                    }
                    Action::Ban(ttl) => {
                        let until_ms =
                            f.now_ms + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
                        let placed = self.place_ban(
                            c.state.fingerprint,
                            key,
                            &c.name,
                            describe(&r.key, f),
                            f.now_ms,
                            until_ms,
                        );
                        hit.ban_placed = placed;
                        decide(
                            &mut v,
                            5,
                            r.priority,
                            Decision::Banned { until_ms },
                            &c.name,
                        );
                    }
                }
            }
            if hit.crossed || hit.ban_placed {
                hit.key = Some(describe(&r.key, f));
            }
            v.hits.push(hit);
        }
        v
    }

    /// Places a ban unless one is in force; returns whether it placed one.
    fn place_ban(
        &self,
        scope: BanScope,
        key: u64,
        rule: &Arc<str>,
        display: String,
        now_ms: u64,
        until_ms: u64,
    ) -> bool {
        if let Some(b) = self.bans.get(&(scope, key)) {
            if b.until_ms > now_ms {
                return false;
            }
        }
        if self.bans.len() >= self.max_bans {
            return false;
        }
        self.bans.insert(
            (scope, key),
            Ban {
                until_ms,
                placed_ms: now_ms,
                rule: Arc::clone(rule),
                key: display,
            },
        );
        true
    }

    /// Bans a value of `ip`, `account` or `token` (a token id in hex) by hand.
    pub fn ban_manual(
        &self,
        field: &Field,
        value: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<String, String> {
        let key = self.manual_key(field, value)?;
        let display = format!("{}={value}", field.name());
        self.bans.insert(
            (MANUAL, key),
            Ban {
                until_ms,
                placed_ms: now_ms,
                rule: manual_name(),
                key: display.clone(),
            },
        );
        self.manual_bans.store(
            self.bans.iter().filter(|e| e.key().0 == MANUAL).count(),
            Ordering::Relaxed,
        );
        Ok(ban_id(MANUAL, key))
    }

    fn manual_key(&self, field: &Field, value: &str) -> Result<u64, String> {
        let ip;
        let token;
        let facts = Facts {
            now_ms: 0,
            class: RouteClass::Open,
            route: None,
            method: "",
            path: "",
            ip: match field {
                Field::Ip => {
                    ip = value
                        .parse::<IpAddr>()
                        .map_err(|_| format!("{value:?} is not an IP address"))?;
                    ip
                }
                _ => IpAddr::from([0, 0, 0, 0]),
            },
            account: matches!(field, Field::Account).then_some(value),
            token: match field {
                Field::Token => {
                    token = TokenId::from_hex(value).map_err(|e| e.to_string())?;
                    Some(&token)
                }
                _ => None,
            },
            headers: &Nothing,
            claims: &Nothing,
        };
        match field {
            Field::Ip | Field::Account | Field::Token => self
                .hash_fields(std::slice::from_ref(field), &facts)
                .ok_or_else(|| "empty value".to_owned()),
            other => Err(format!(
                "manual bans are on ip, account or token, not {}",
                other.name()
            )),
        }
    }

    /// Lifts a ban by id (as listed) and forgets the rule's count for that key, so the
    /// key starts clean instead of being banned again by its next request. Returns
    /// whether a ban was lifted.
    pub fn lift(&self, id: &str) -> bool {
        let Some((scope, key)) = parse_ban_id(id) else {
            return false;
        };
        let lifted = self.bans.remove(&(scope, key)).is_some();
        if lifted && scope != MANUAL {
            for c in self
                .rules
                .load()
                .iter()
                .filter(|c| c.state.fingerprint == scope)
            {
                match &c.state.table {
                    Table::Count(m) => {
                        m.remove(&key);
                    }
                    Table::Distinct(m, heap) => {
                        if let Some((_, e)) = m.remove(&key) {
                            heap.fetch_sub(e.heap_bytes() as isize, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        if scope == MANUAL && lifted {
            self.manual_bans.fetch_sub(1, Ordering::Relaxed);
        }
        lifted
    }

    /// Bans in force, with their ids.
    #[must_use]
    pub fn bans(&self, now_ms: u64) -> Vec<(String, Ban)> {
        self.bans
            .iter()
            .filter(|e| e.value().until_ms > now_ms)
            .map(|e| (ban_id(e.key().0, e.key().1), e.value().clone()))
            .collect()
    }

    /// Bans in force.
    #[must_use]
    pub fn active_bans(&self, now_ms: u64) -> usize {
        self.bans
            .iter()
            .filter(|e| e.value().until_ms > now_ms)
            .count()
    }

    /// The rules in force with their worst keys.
    #[must_use]
    pub fn rules_info(&self, now_ms: u64) -> Vec<RuleInfo> {
        self.rules
            .load()
            .iter()
            .map(|c| RuleInfo {
                rule: c.rule.clone(),
                tracked_keys: c.state.len(),
                top: c.state.top.list(now_ms.saturating_sub(c.window_ms)),
            })
            .collect()
    }

    /// Keys tracked over all rules.
    #[must_use]
    pub fn tracked_keys(&self) -> usize {
        self.rules.load().iter().map(|c| c.state.len()).sum()
    }

    /// Bytes of rule state (tables and large sets).
    #[must_use]
    pub fn state_bytes(&self) -> usize {
        self.rules.load().iter().map(|c| c.state.bytes()).sum()
    }

    /// Drops ended bans, idle keys (at most every [`IDLE_SWEEP_MS`]), and evicts the
    /// lowest-scoring keys while the state is over its cap. Call it periodically (the
    /// proxy does every 100 ms, so a flood is evicted within 100 ms).
    pub fn sweep(&self, now_ms: u64) -> SweepReport {
        let mut report = SweepReport::default();
        let mut manual = 0;
        self.bans.retain(|(scope, _), b| {
            let live = b.until_ms > now_ms;
            if !live {
                report.ended.push(b.clone());
            } else if *scope == MANUAL {
                manual += 1;
            }
            live
        });
        report.bans_expired = report.ended.len();
        self.manual_bans.store(manual, Ordering::Relaxed);
        let rules = self.rules.load();
        // Dropping idle keys walks every table and write-locks each shard in turn: worth
        // it every few seconds, not on every call. Eviction below still runs whenever the
        // cap is exceeded.
        let last = self.last_idle_sweep_ms.load(Ordering::Relaxed);
        let idle_due = now_ms.saturating_sub(last) >= IDLE_SWEEP_MS || now_ms < last;
        if idle_due {
            self.last_idle_sweep_ms.store(now_ms, Ordering::Relaxed);
        }
        for c in rules.iter().filter(|_| idle_due) {
            let w = c.window_ms;
            match &c.state.table {
                Table::Count(m) => {
                    let n = m.len();
                    m.retain(|_, e| !e.is_idle(now_ms, w));
                    report.idle += n - m.len();
                }
                Table::Distinct(m, heap) => {
                    let n = m.len();
                    m.retain(|_, e| {
                        let idle = e.is_idle(now_ms, w);
                        if idle {
                            heap.fetch_sub(e.heap_bytes() as isize, Ordering::Relaxed);
                        }
                        !idle
                    });
                    report.idle += n - m.len();
                }
            }
        }
        let cap = self.max_state_bytes.load(Ordering::Relaxed);
        if self.state_bytes() > cap {
            report.evicted = self.evict(&rules, now_ms, cap / 10 * 9);
        }
        report
    }

    fn evict(&self, rules: &[Compiled], now_ms: u64, target: usize) -> usize {
        const BUCKETS: usize = 64;
        let score_bucket = |est: f64, threshold: u64| -> usize {
            let s = est / (threshold.max(1) as f64);
            ((s * (BUCKETS - 1) as f64) as usize).min(BUCKETS - 1)
        };
        // Pass 1: how many keys sit in each score bucket.
        let mut hist = [0usize; BUCKETS];
        let mut total = 0usize;
        for c in rules {
            match &c.state.table {
                Table::Count(m) => m.iter().for_each(|e| {
                    hist[score_bucket(e.estimate(now_ms, c.window_ms), c.rule.threshold)] += 1
                }),
                Table::Distinct(m, _) => m.iter().for_each(|e| {
                    hist[score_bucket(e.estimate(now_ms, c.window_ms), c.rule.threshold)] += 1
                }),
            }
            total += c.state.len();
        }
        let bytes = self.state_bytes();
        if total == 0 || bytes <= target {
            return 0;
        }
        // Keys to drop, assuming an even share of bytes per key (slots dominate).
        let excess_keys = ((bytes - target) as f64 / bytes as f64 * total as f64).ceil() as usize;
        let mut cut = 0;
        let mut acc = 0;
        while cut < BUCKETS && acc + hist[cut] <= excess_keys {
            acc += hist[cut];
            cut += 1;
        }
        // Evict every bucket below `cut`, and part of bucket `cut`.
        let mut partial = excess_keys.saturating_sub(acc);
        let mut evicted = 0;
        for c in rules {
            let mut keep = |est: f64| {
                let b = score_bucket(est, c.rule.threshold);
                if b < cut {
                    evicted += 1;
                    false
                } else if b == cut && partial > 0 {
                    partial -= 1;
                    evicted += 1;
                    false
                } else {
                    true
                }
            };
            match &c.state.table {
                Table::Count(m) => {
                    m.retain(|_, e| keep(e.estimate(now_ms, c.window_ms)));
                    m.shrink_to_fit();
                }
                Table::Distinct(m, heap) => {
                    m.retain(|_, e| {
                        let k = keep(e.estimate(now_ms, c.window_ms));
                        if !k {
                            heap.fetch_sub(e.heap_bytes() as isize, Ordering::Relaxed);
                        }
                        k
                    });
                    m.shrink_to_fit();
                }
            }
        }
        evicted
    }

    fn hash_fields(&self, fields: &[Field], f: &Facts<'_>) -> Option<u64> {
        self.key_of(fields, f, &mut Memo::default())
    }

    /// The keyed hash of one field's value, computed once per request.
    fn field_hash<'r>(&self, field: &'r Field, f: &Facts<'_>, memo: &mut Memo<'r>) -> Option<u64> {
        if let Some(h) = memo.get(field) {
            return h;
        }
        let mut h = self.hasher();
        let h = write_field(&mut h, field, f).then(|| h.finish());
        memo.put(field, h);
        h
    }

    /// A rule's key: the field's hash for one field, a mix of them for several.
    fn key_of<'r>(&self, fields: &'r [Field], f: &Facts<'_>, memo: &mut Memo<'r>) -> Option<u64> {
        let mut key = 0u64;
        for (i, field) in fields.iter().enumerate() {
            let h = self.field_hash(field, f, memo)?;
            key = if i == 0 {
                h
            } else {
                (key.rotate_left(23) ^ h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            };
        }
        Some(key)
    }
}

/// Field hashes already computed for this request (rules share fields: five rules of the
/// default pack key on the address). Fixed size, no allocation.
#[derive(Default)]
struct Memo<'r> {
    len: usize,
    slots: [Option<(&'r Field, Option<u64>)>; 8],
}

impl<'r> Memo<'r> {
    fn get(&self, field: &Field) -> Option<Option<u64>> {
        self.slots[..self.len]
            .iter()
            .flatten()
            .find(|(f, _)| *f == field)
            .map(|(_, h)| *h)
    }

    fn put(&mut self, field: &'r Field, h: Option<u64>) {
        if self.len < self.slots.len() {
            self.slots[self.len] = Some((field, h));
            self.len += 1;
        }
    }
}

/// Hashes a `u64` key as itself: the state maps are keyed by SipHash outputs already,
/// so hashing them again would only cost time.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyBuild = std::hash::BuildHasherDefault<KeyHasher>;
type StateMap<V> = DashMap<u64, V, KeyBuild>;

fn ban_id(scope: BanScope, key: u64) -> String {
    format!("{scope:016x}{key:016x}")
}

fn parse_ban_id(id: &str) -> Option<(BanScope, u64)> {
    if id.len() != 32 || !id.is_ascii() {
        return None;
    }
    Some((
        u64::from_str_radix(&id[..16], 16).ok()?,
        u64::from_str_radix(&id[16..], 16).ok()?,
    ))
}

fn masked(ip: IpAddr, v4: u8, v6: u8) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(v4.min(32)))
                .unwrap_or(0);
            (IpAddr::V4((u32::from(a) & mask).into()), v4.min(32))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6.min(128)))
                .unwrap_or(0);
            (IpAddr::V6((u128::from(a) & mask).into()), v6.min(128))
        }
    }
}

fn text_field<'a>(field: &Field, f: &'a Facts<'a>) -> Option<&'a str> {
    match field {
        Field::Account => f.account,
        Field::Route => f.route,
        Field::Path => Some(f.path),
        Field::Method => Some(f.method),
        Field::Header(h) => f.headers.get(h),
        Field::Claim(c) => f.claims.get(c),
        Field::Ip | Field::IpPrefix { .. } | Field::Token => None,
    }
}

/// Feeds a field's value to a hasher; `false` if the request has no such value.
fn write_field(h: &mut impl Hasher, field: &Field, f: &Facts<'_>) -> bool {
    match field {
        Field::Ip => {
            match f.ip {
                IpAddr::V4(a) => h.write(&a.octets()),
                IpAddr::V6(a) => h.write(&a.octets()),
            }
            true
        }
        Field::IpPrefix { v4, v6 } => {
            let (net, len) = masked(f.ip, *v4, *v6);
            match net {
                IpAddr::V4(a) => h.write(&a.octets()),
                IpAddr::V6(a) => h.write(&a.octets()),
            }
            h.write_u8(len);
            true
        }
        Field::Token => match f.token {
            Some(t) => {
                h.write(&t.0);
                true
            }
            None => false,
        },
        other => match text_field(other, f) {
            Some(s) => {
                h.write(s.as_bytes());
                h.write_u8(0xff);
                true
            }
            None => false,
        },
    }
}

fn describe(fields: &[Field], f: &Facts<'_>) -> String {
    fields
        .iter()
        .map(|field| {
            let value = match field {
                Field::Ip => f.ip.to_string(),
                Field::IpPrefix { v4, v6 } => {
                    let (net, len) = masked(f.ip, *v4, *v6);
                    format!("{net}/{len}")
                }
                Field::Token => f.token.map(|t| t.to_hex()).unwrap_or_default(),
                other => text_field(other, f)
                    .unwrap_or("")
                    .chars()
                    .take(128)
                    .collect(),
            };
            format!("{}={value}", field.name())
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn matches(r: &Rule, f: &Facts<'_>) -> bool {
    let m = &r.matcher;
    (m.classes.is_empty() || m.classes.contains(&f.class))
        && (m.methods.is_empty() || m.methods.iter().any(|x| x == f.method))
        && (m.paths.is_empty() || m.paths.iter().any(|p| p.matches(f.path)))
        && m.conditions.iter().all(|c| condition(c, f))
}

fn condition(c: &Condition, f: &Facts<'_>) -> bool {
    let present = |field: &Field| match field {
        Field::Ip | Field::IpPrefix { .. } => true,
        Field::Token => f.token.is_some(),
        other => text_field(other, f).is_some(),
    };
    // Text fields compare in place; addresses and token ids are formatted (rare in
    // conditions, and only when a rule has such a condition).
    let test = |field: &Field, pred: &dyn Fn(&str) -> bool| -> bool {
        match field {
            Field::Ip => pred(&f.ip.to_string()),
            Field::IpPrefix { v4, v6 } => {
                let (net, len) = masked(f.ip, *v4, *v6);
                pred(&format!("{net}/{len}"))
            }
            Field::Token => f.token.is_some_and(|t| pred(&t.to_hex())),
            other => text_field(other, f).is_some_and(pred),
        }
    };
    match c {
        Condition::Present(field) => present(field),
        Condition::Absent(field) => !present(field),
        Condition::Equals(field, v) => test(field, &|x| x == v),
        Condition::Prefix(field, v) => test(field, &|x| x.starts_with(v.as_str())),
    }
}
