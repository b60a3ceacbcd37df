//! The rule engine: per-request evaluation, bans, and bounded state.
//!
//! ## State and memory
//! Rules with the same key (and the same route classes) form a key group. Each group has one map (dashmap, shared by
//! all worker threads) from a 64-bit keyed digest of the key's value to an entry holding,
//! inline, one slot per rule of the group: a [`SlidingCount`] (count rules, 12 bytes) or
//! a [`DistinctSet`](crate::distinct::DistinctSet) (distinct rules, more once a set
//! outgrows its inline values; see `distinct.rs`). A request makes one lookup per key
//! it is counted under, not one per rule (`state.rs` says why that matters).
//! [`Engine::state_bytes`] counts table slots (capacity × entry size, control bytes
//! included) plus the heap of large sets.
//!
//! ## Eviction that is not a bypass
//! When the state outgrows `max_state_bytes`, [`Engine::sweep`] first drops idle keys
//! (nothing left in their window), then evicts entries by **score** = the highest
//! estimate / threshold over the entry's rules, lowest first, until the state is back under 90 % of the cap. A flood of fresh
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
use warden_core::bits::StickyBits;
use warden_core::ledger::TokenId;
use warden_rules::{Action, Condition, Field, Match, Measure, Mode, RouteClass, Rule, Scope};

use crate::fleet::{FleetNote, FleetState};
use crate::state::{GroupMap, IdleAt, Slot, MAX_SLOTS};
use crate::window::SlidingCount;

mod persist;
pub use persist::Restored;

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
    /// Rule name, interned: one address per name in a process, so copied, not counted.
    pub rule: &'static str,
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
    /// The key's 64-bit keyed digest, the engine's state key: equal for equal values of
    /// the rule's key fields within one engine, so callers can count hits per key
    /// without formatting it (log replay's top keys).
    pub key_id: u64,
}

/// What the request gets.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Decision {
    /// Proxy it.
    #[default]
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
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Verdict {
    /// What to do.
    pub decision: Decision,
    /// The rule that decided (`manual` for a ban placed through the admin API).
    pub decided_by: Option<&'static str>,
    /// Rules over their threshold, in any mode.
    pub hits: Vec<Hit>,
    /// Tags to add to the upstream request (names of `tag` rules that fired).
    pub tags: Vec<&'static str>,
}

/// A ban.
#[derive(Debug, Clone)]
pub struct Ban {
    /// Unix milliseconds it ends.
    pub until_ms: u64,
    /// Unix milliseconds it began.
    pub placed_ms: u64,
    /// The rule that placed it, or `manual` (interned, as in [`Hit::rule`]).
    pub rule: &'static str,
    /// The key, readable (`ip=192.0.2.1`).
    pub key: String,
}

/// Scope of a ban: a rule's state fingerprint, or [`MANUAL`].
pub type BanScope = u64;
/// Scope of bans placed through the admin API, on one field.
pub const MANUAL: BanScope = 0;

/// One rule, compiled: where its state lives.
struct Compiled {
    rule: Rule,
    /// The rule's name, interned.
    name: &'static str,
    fingerprint: u64,
    window_ms: u64,
    /// Its key group, and its slot in that group's entries.
    group: usize,
    slot: usize,
    /// The field a distinct rule counts, by index in [`RuleSet::fields`].
    counted: Option<usize>,
    /// Route classes it applies to, as bits (see [`class_bit`]).
    classes: u8,
    top: Arc<TopOffenders>,
    /// A count rule of fleet scope: the other nodes' counts are added to its estimate.
    fleet: bool,
}

/// The state of the rules sharing a key, one entry per key value.
#[derive(Debug)]
struct GroupState {
    /// State fingerprint of the rule in each slot, sorted: the group's identity, so a
    /// reload that only reorders, re-prioritizes or re-thresholds rules keeps it as is.
    fingerprints: Vec<u64>,
    map: GroupMap,
    /// Heap bytes of large distinct sets.
    heap: AtomicIsize,
}

impl GroupState {
    fn bytes(&self) -> usize {
        self.map.table_bytes() + usize::try_from(self.heap.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// A key group in a rule set: its key, its state, and which rule sits in each slot.
struct Group {
    /// The key's fields, by index in [`RuleSet::fields`].
    key_fields: Vec<usize>,
    /// Index in [`RuleSet::rules`] of the rule in each slot.
    members: Vec<usize>,
    /// Route classes of its rules, as bits (a group's rules share them).
    classes: u8,
    /// Slots whose rule matches on route class alone (no method, path or condition):
    /// for them the class bit decides, and [`matches`] is not called.
    class_only: u8,
    /// The other slots: those whose rule [`matches`] must test.
    tested: u8,
    /// What a request needs of the rule in each slot, read from the rule once, when the
    /// set is installed, rather than from the rule on every request.
    slots: Vec<SlotRule>,
    state: Arc<GroupState>,
}

// A group's slots are bits of a u8 (matched, counted, class-only, tested).
const _: () = assert!(MAX_SLOTS <= 8);

/// A slot's rule as the request path uses it.
#[derive(Debug, Clone, Copy)]
struct SlotRule {
    /// The field a distinct rule counts, by index in [`RuleSet::fields`]; `None` for a
    /// count rule.
    counted: Option<usize>,
    window_ms: u64,
    /// The rule's threshold, as the estimates compare with it.
    threshold: f64,
    /// An enforced `ban` rule: a request looks its bans up (when there are bans).
    bans: bool,
    /// See [`Compiled::fleet`].
    fleet: bool,
}

/// A rule set in force: rules in priority order, and their key groups.
#[derive(Default)]
struct RuleSet {
    rules: Vec<Compiled>,
    groups: Vec<Group>,
    /// Every field the rules key on or count, once: a request hashes each at most once.
    fields: Vec<Field>,
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
///
/// Under attack most offers come from keys that are not in the full list and would not
/// enter it (in the report scenario, two thirds of 742 000 offers); two atomics answer
/// those without the lock: a filter of the listed keys and the list's lowest estimate,
/// both kept under the lock as the list changes. The list is the same as without them
/// (tested against a model).
#[derive(Debug)]
pub struct TopOffenders {
    top: std::sync::Mutex<Top>,
    /// Bit `key % 256` of every listed key: a key whose bit is clear is not listed (with
    /// 32 keys listed, one key in eight not listed has its bit set by another).
    members: [AtomicU64; 4],
    /// The lowest estimate of the full list, as `f64` bits, or -1 while the list has
    /// room. It may lag behind the list's lowest, never above it: a key under it and
    /// not in the list would not enter the list.
    floor: AtomicU64,
}

impl Default for TopOffenders {
    fn default() -> Self {
        Self {
            top: std::sync::Mutex::default(),
            members: [const { AtomicU64::new(0) }; 4],
            floor: AtomicU64::new((-1f64).to_bits()),
        }
    }
}

/// The word of [`TopOffenders::members`] holding `key`'s bit, and the bit.
fn member_bit(key: u64) -> (usize, u64) {
    ((key >> 6) as usize % 4, 1 << (key % 64))
}

#[derive(Debug, Default)]
struct Top {
    list: Vec<Offender>,
    /// Index of the lowest estimate in the full list (the first of equals; the list
    /// never shrinks), once looked for and until the list changes there: a key over
    /// half the threshold that is not among the worst is answered without a walk over
    /// all [`TOP_K`] estimates.
    min: Option<usize>,
}

impl TopOffenders {
    fn offer(&self, key: u64, estimate: f64, now_ms: u64, display: impl FnOnce() -> String) {
        let (word, bit) = member_bit(key);
        if self.members[word].load(Ordering::Relaxed) & bit == 0
            && estimate <= f64::from_bits(self.floor.load(Ordering::Relaxed))
        {
            return;
        }
        let Ok(mut top) = self.top.try_lock() else {
            return;
        };
        let top = &mut *top;
        if let Some(i) = top.list.iter().position(|o| o.key == key) {
            let o = &mut top.list[i];
            o.estimate = o.estimate.max(estimate);
            o.last_ms = now_ms;
            // A higher estimate elsewhere leaves the lowest where it was.
            if top.min == Some(i) {
                top.min = None;
            }
            return;
        }
        let entry = |display| Offender {
            key,
            display,
            estimate,
            last_ms: now_ms,
        };
        if top.list.len() < TOP_K {
            top.list.push(entry(display()));
            self.members[word].fetch_or(bit, Ordering::Relaxed);
            return;
        }
        let min = match top.min {
            Some(i) => Some(i),
            None => top
                .list
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.estimate.total_cmp(&b.1.estimate))
                .map(|(i, _)| i),
        };
        if top.min.is_none() {
            if let Some(i) = min {
                self.floor
                    .store(top.list[i].estimate.to_bits(), Ordering::Relaxed);
            }
        }
        top.min = min;
        if let Some(i) = min {
            if estimate > top.list[i].estimate {
                top.list[i] = entry(display());
                top.min = None;
                let mut members = [0u64; 4];
                for o in &top.list {
                    let (w, b) = member_bit(o.key);
                    members[w] |= b;
                }
                for (a, m) in self.members.iter().zip(members) {
                    a.store(m, Ordering::Relaxed);
                }
            }
        }
    }

    fn list(&self, since_ms: u64) -> Vec<Offender> {
        let mut v: Vec<Offender> = match self.top.lock() {
            Ok(t) => t
                .list
                .iter()
                .filter(|o| o.last_ms >= since_ms)
                .cloned()
                .collect(),
            Err(p) => p.into_inner().list.clone(),
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
    set: ArcSwap<RuleSet>,
    bans: DashMap<(BanScope, u64), Ban>,
    /// Bans in the map (updated on every change, rare): a request looks bans up only
    /// when there are some.
    ban_count: AtomicUsize,
    manual_bans: AtomicUsize,
    /// The SipHash key of every key digest and distinct fingerprint; a restored snapshot
    /// brings its own (its digests were made with it), so it can change, once, before
    /// serving.
    key: [AtomicU64; 2],
    max_state_bytes: AtomicUsize,
    max_bans: usize,
    last_idle_sweep_ms: AtomicU64,
    idle_sweep_ms: AtomicU64,
    /// No ban ends before this (unix ms; a lower bound: lowered whenever a ban is placed,
    /// set exactly by a walk over the bans): [`Engine::sweep`] walks the bans only once
    /// one may have ended, not on every call.
    next_ban_end_ms: AtomicU64,
    /// Fleet mode: other nodes' counts and the bans to tell them about.
    fleet: std::sync::OnceLock<Arc<FleetState>>,
    /// A bit per ban scope and key digest that has ever been banned: a request looks a
    /// rule's ban on its key up in `bans` only when its bit is set, instead of hashing
    /// into the ban map for each `ban` rule on every request once any ban exists. The
    /// bit is set before the ban goes in and never cleared (clearing could race with a
    /// ban being placed and let a banned key through), so a clear bit means no ban;
    /// after many thousands of bans most bits are set and requests look up as they did
    /// without it. [`BAN_FILTER_WORDS`] × 64 bits, keyed by [`ban_digest`].
    ban_filter: StickyBits,
}

/// Words of [`Engine`]'s ban filter (16 384 bits, 2 KiB).
const BAN_FILTER_WORDS: usize = 256;

/// A ban's scope and key as the ban filter keys them (both are hashes: their low bits
/// are spread evenly already; the scope is in it so that a key banned by one rule does
/// not send the other rules' checks to the map).
fn ban_digest(scope: BanScope, key: u64) -> u64 {
    key ^ scope
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

/// The name bans placed through the admin API carry.
const MANUAL_NAME: &str = "manual";

/// A rule's name as hits, tags, decisions and bans carry it: interned, so that naming the
/// rule of a hit is a copy, where an `Arc<str>` clone and its drop cost two locked
/// instructions per hit (a log replay's scrapers hit several rules on every request).
/// Each distinct name is kept once for the life of the process: a few bytes per rule
/// name ever loaded, however many times the rules are reloaded.
#[must_use]
pub(crate) fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(Box::from(name));
    names.insert(n);
    n
}

impl Engine {
    /// An engine with no rules.
    #[must_use]
    pub fn new(max_state_bytes: usize, max_bans: usize) -> Self {
        let mut seed = [0u8; 16];
        if getrandom::fill(&mut seed).is_err() {
            seed = *b"warden-detect-k!";
        }
        Self::with_key(max_state_bytes, max_bans, seed)
    }

    /// An engine with no rules whose key hashes use a given 128-bit key. Fleet mode
    /// gives every node the same (secret) key, so that a key's hash, a ban's id and a
    /// fleet counter's name are the same on every node; otherwise [`Engine::new`] draws
    /// one at random, which an attacker cannot aim hash collisions at.
    #[must_use]
    pub fn with_key(max_state_bytes: usize, max_bans: usize, seed: [u8; 16]) -> Self {
        Self {
            set: ArcSwap::from_pointee(RuleSet::default()),
            bans: DashMap::new(),
            ban_count: AtomicUsize::new(0),
            manual_bans: AtomicUsize::new(0),
            key: [
                AtomicU64::new(u64::from_le_bytes(seed[..8].try_into().unwrap_or([0; 8]))),
                AtomicU64::new(u64::from_le_bytes(seed[8..].try_into().unwrap_or([0; 8]))),
            ],
            max_state_bytes: AtomicUsize::new(max_state_bytes),
            max_bans,
            last_idle_sweep_ms: AtomicU64::new(0),
            idle_sweep_ms: AtomicU64::new(IDLE_SWEEP_MS),
            next_ban_end_ms: AtomicU64::new(u64::MAX),
            fleet: std::sync::OnceLock::new(),
            ban_filter: StickyBits::with_words(BAN_FILTER_WORDS),
        }
    }

    /// Sets `key`'s bit in the ban filter: before every insert into `bans`.
    fn note_ban_key(&self, scope: BanScope, key: u64) {
        self.ban_filter.add(ban_digest(scope, key));
    }

    /// Whether `key` may have a ban (see `ban_filter`).
    #[inline]
    fn may_be_banned(&self, scope: BanScope, key: u64) -> bool {
        self.ban_filter.may_contain(ban_digest(scope, key))
    }

    /// Turns fleet mode on: fleet-scope count rules add the other nodes' counts from
    /// `state`, and bans placed or lifted here are noted for the fleet. Once only;
    /// returns `false` if fleet mode was already on.
    pub fn attach_fleet(&self, state: Arc<FleetState>) -> bool {
        self.fleet.set(state).is_ok()
    }

    /// The fleet state, in fleet mode.
    #[must_use]
    pub fn fleet(&self) -> Option<&Arc<FleetState>> {
        self.fleet.get()
    }

    /// Applies a ban another node placed (not noted back to the fleet). A rule ban
    /// whose rule (by state fingerprint) is not in force here is ignored and `false`
    /// returned: the nodes of a fleet are meant to run the same rules.
    pub fn apply_fleet_ban(
        &self,
        scope: BanScope,
        key: u64,
        placed_ms: u64,
        until_ms: u64,
        display: &str,
    ) -> bool {
        let name = if scope == MANUAL {
            MANUAL_NAME
        } else {
            match self
                .set
                .load()
                .rules
                .iter()
                .find(|c| c.fingerprint == scope)
            {
                Some(c) => c.name,
                None => return false,
            }
        };
        if self.ban_count.load(Ordering::Relaxed) >= self.max_bans
            && !self.bans.contains_key(&(scope, key))
        {
            return false;
        }
        let newer = self
            .bans
            .get(&(scope, key))
            .is_some_and(|b| b.until_ms >= until_ms);
        if !newer {
            self.insert_ban(
                scope,
                key,
                Ban {
                    until_ms,
                    placed_ms,
                    rule: name,
                    key: display.to_owned(),
                },
                false,
            );
        }
        true
    }

    /// Lifts a ban another node lifted (not noted back); see [`Engine::lift`].
    pub fn lift_fleet(&self, id: &str) -> bool {
        self.lift_inner(id)
    }

    /// The one way a ban goes in: rule bans, manual bans and bans from the fleet. Keeps
    /// the counts and the earliest end the sweep looks at, and, with `tell_fleet`, notes
    /// the ban for the other nodes (not for a ban that came from them).
    fn insert_ban(&self, scope: BanScope, key: u64, ban: Ban, tell_fleet: bool) {
        if tell_fleet {
            if let Some(fleet) = self.fleet.get() {
                fleet.note(FleetNote::Ban {
                    scope,
                    key,
                    placed_ms: ban.placed_ms,
                    until_ms: ban.until_ms,
                    rule: ban.rule,
                    display: ban.key.clone(),
                });
            }
        }
        self.next_ban_end_ms
            .fetch_min(ban.until_ms, Ordering::Relaxed);
        self.note_ban_key(scope, key);
        let new = self.bans.insert((scope, key), ban).is_none();
        if new && scope == MANUAL {
            self.manual_bans.fetch_add(1, Ordering::Relaxed);
        }
        self.ban_count.store(self.bans.len(), Ordering::Relaxed);
    }

    /// Installs a rule set. Rules whose state fingerprint (name, key, measure, window,
    /// match) is unchanged keep their counters and bans; others start empty; state of
    /// removed rules is dropped. Requests in flight finish with the old set.
    ///
    /// Rules with the same key share one entry per key value (see `state.rs`). A key
    /// group whose rules are unchanged keeps its map as is; one that gained or lost a
    /// rule gets a new map, into which the slots of its unchanged rules are copied here,
    /// before the new set is installed. Requests counted in the old map during that copy
    /// (milliseconds per hundred thousand keys) are not carried over: a reload can
    /// under-count a rule by the requests of that moment, never over-count.
    pub fn set_rules(&self, mut rules: Vec<Rule>, max_state_bytes: usize) {
        rules.sort_by_key(|r| r.priority);
        let old = self.set.load();
        let mut compiled: Vec<Compiled> = rules
            .into_iter()
            .map(|rule| {
                let fingerprint = rule.state_fingerprint();
                let top = old
                    .rules
                    .iter()
                    .find(|c| c.fingerprint == fingerprint)
                    .map_or_else(|| Arc::new(TopOffenders::default()), |c| Arc::clone(&c.top));
                Compiled {
                    name: intern(&rule.name),
                    fingerprint,
                    window_ms: u64::try_from(rule.window.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                    group: 0,
                    slot: 0,
                    counted: None,
                    classes: if rule.matcher.classes.is_empty() {
                        u8::MAX
                    } else {
                        rule.matcher
                            .classes
                            .iter()
                            .fold(0, |m, c| m | class_bit(*c))
                    },
                    top,
                    fleet: rule.scope == Scope::Fleet && rule.measure == Measure::Count,
                    rule,
                }
            })
            .collect();
        let mut fields: Vec<Field> = Vec::new();
        let mut field_index = |field: &Field| match fields.iter().position(|x| x == field) {
            Some(i) => i,
            None => {
                fields.push(field.clone());
                fields.len() - 1
            }
        };
        for c in &mut compiled {
            if let Measure::Distinct(field) = &c.rule.measure {
                c.counted = Some(field_index(field));
            }
        }
        // Key groups: rules with the same key and the same route classes, in the order of
        // their first rule, at most MAX_SLOTS each. Splitting by class keeps a request
        // from making slots for rules that can never match it: a flood of new addresses
        // on the login route makes entries of one slot for its two rules, not entries
        // holding every rule keyed on the address.
        let mut by_key: Vec<(Vec<Field>, u8, Vec<usize>)> = Vec::new();
        for (i, c) in compiled.iter().enumerate() {
            match by_key.iter_mut().find(|(k, classes, m)| {
                *k == c.rule.key && *classes == c.classes && m.len() < MAX_SLOTS
            }) {
                Some((_, _, m)) => m.push(i),
                None => by_key.push((c.rule.key.clone(), c.classes, vec![i])),
            }
        }
        let mut groups = Vec::with_capacity(by_key.len());
        for (gi, (key, classes, mut members)) in by_key.into_iter().enumerate() {
            members.sort_by_key(|&i| compiled[i].fingerprint);
            let fingerprints: Vec<u64> = members.iter().map(|&i| compiled[i].fingerprint).collect();
            for (slot, &i) in members.iter().enumerate() {
                compiled[i].group = gi;
                compiled[i].slot = slot;
            }
            let state = old
                .groups
                .iter()
                .find(|g| g.state.fingerprints == fingerprints)
                .map_or_else(
                    || Arc::new(carry_over(&old, fingerprints)),
                    |g| Arc::clone(&g.state),
                );
            let class_only = members.iter().enumerate().fold(0u8, |m, (slot, &i)| {
                m | (u8::from(on_class_alone(&compiled[i].rule)) << slot)
            });
            let slots = members
                .iter()
                .map(|&i| {
                    let c = &compiled[i];
                    SlotRule {
                        counted: c.counted,
                        window_ms: c.window_ms,
                        threshold: c.rule.threshold as f64,
                        bans: c.rule.mode == Mode::Enforce
                            && matches!(c.rule.action, Action::Ban(_)),
                        fleet: c.fleet,
                    }
                })
                .collect();
            let tested = !class_only & (u8::MAX >> (8 - members.len().clamp(1, MAX_SLOTS)));
            groups.push(Group {
                key_fields: key.iter().map(&mut field_index).collect(),
                members,
                classes,
                class_only,
                tested,
                slots,
                state,
            });
        }
        let live: Vec<u64> = compiled.iter().map(|c| c.fingerprint).collect();
        self.set.store(Arc::new(RuleSet {
            rules: compiled,
            groups,
            fields,
        }));
        self.bans
            .retain(|(scope, _), _| *scope == MANUAL || live.contains(scope));
        self.ban_count.store(self.bans.len(), Ordering::Relaxed);
        self.max_state_bytes
            .store(max_state_bytes, Ordering::Relaxed);
    }

    fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(
            self.key[0].load(Ordering::Relaxed),
            self.key[1].load(Ordering::Relaxed),
        )
    }

    /// Evaluates a request: counts it in every matching rule and decides.
    pub fn evaluate(&self, f: &Facts<'_>) -> Verdict {
        let mut v = Verdict::default();
        self.evaluate_into(f, &mut v);
        v
    }

    /// [`Engine::evaluate`] into a verdict the caller keeps from one request to the
    /// next: its previous contents are replaced, and its `hits` and `tags` keep their
    /// allocations, so a caller evaluating many requests in a row (log replay) allocates
    /// nothing for them once they have grown.
    pub fn evaluate_into(&self, f: &Facts<'_>, v: &mut Verdict) {
        v.decision = Decision::Pass;
        v.decided_by = None;
        v.hits.clear();
        v.tags.clear();
        let mut strongest: Option<(u8, i64)> = None;
        let mut decide =
            |v: &mut Verdict, severity: u8, priority: i64, d: Decision, by: &'static str| {
                if strongest.is_none_or(|(s, p)| severity > s || (severity == s && priority < p)) {
                    strongest = Some((severity, priority));
                    v.decision = d;
                    v.decided_by = Some(by);
                }
            };
        if self.manual_bans.load(Ordering::Relaxed) > 0 {
            for field in [Field::Ip, Field::Account, Field::Token] {
                if let Some(k) = self
                    .hash_fields(std::slice::from_ref(&field), f)
                    .filter(|k| self.may_be_banned(MANUAL, *k))
                {
                    let until_ms = self.bans.get(&(MANUAL, k)).map(|b| b.until_ms);
                    if let Some(until_ms) = until_ms.filter(|u| *u > f.now_ms) {
                        decide(v, 6, i64::MIN, Decision::Banned { until_ms }, MANUAL_NAME);
                    }
                }
            }
        }
        let bans_exist = self.ban_count.load(Ordering::Relaxed) > 0;
        let set = self.set.load();
        let mut memo = Memo::default();
        // Hits and tags go straight into the verdict, each at its rule's place in
        // priority order (groups are visited key by key); these hold the rule indexes,
        // set up by the first hit or tag (a request that fires nothing pays nothing).
        let mut hit_order: Option<RuleOrder> = None;
        let mut tag_order: Option<RuleOrder> = None;
        // Phase 1: the key of every group with a matching rule, and a prefetch of its
        // entry, so that the cache misses of all groups overlap instead of queueing
        // behind each other's locks (`table.rs`).
        let mut plan = [None; PLAN];
        for (gi, g) in set.groups.iter().enumerate().take(PLAN) {
            plan[gi] = self.plan(&set, g, f, &mut memo);
            if let Some((_, key)) = plan[gi] {
                g.state.map.prefetch(key);
            }
        }
        // Phase 2: count, then judge.
        for (gi, g) in set.groups.iter().enumerate() {
            let planned = match plan.get(gi) {
                Some(p) => *p,
                None => self.plan(&set, g, f, &mut memo),
            };
            let Some((matched, key)) = planned else {
                continue;
            };
            // The matching rules that count this request (bit per slot), with the value
            // each distinct rule counts. A distinct rule whose field the request lacks
            // counts nothing, but its bans still apply.
            let mut counts = 0u8;
            let mut values = [0u32; MAX_SLOTS];
            let mut bits = matched;
            while bits != 0 {
                let slot = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let Some(s) = g.slots.get(slot) else { break };
                match s.counted {
                    None => counts |= 1 << slot,
                    Some(i) => {
                        if let Some(h) = self.field_hash(&set, i, f, &mut memo) {
                            values[slot] = h as u32;
                            counts |= 1 << slot;
                        }
                    }
                }
            }
            // One lookup for all of them.
            let mut estimates = [0f64; MAX_SLOTS];
            let mut heap = 0isize;
            if counts != 0 {
                g.state.map.update(key, |slots| {
                    let mut bits = counts;
                    while bits != 0 {
                        let slot = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let (Some(s), Some(state)) = (g.slots.get(slot), slots.get_mut(slot))
                        else {
                            break;
                        };
                        estimates[slot] = match s.counted {
                            None => state.count().add(f.now_ms, s.window_ms),
                            Some(_) => {
                                let (est, delta) =
                                    state.distinct().insert(values[slot], f.now_ms, s.window_ms);
                                heap += delta;
                                est
                            }
                        };
                    }
                });
            }
            if heap != 0 {
                g.state.heap.fetch_add(heap, Ordering::Relaxed);
            }
            if let Some(fleet) = self.fleet.get() {
                for (slot, s) in g.slots.iter().enumerate() {
                    if s.fleet && counts & (1 << slot) != 0 {
                        let c = &set.rules[g.members[slot]];
                        estimates[slot] += fleet.observe(c.fingerprint, key, f.now_ms, c.window_ms);
                    }
                }
            }
            let mut bits = matched;
            while bits != 0 {
                let slot = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let (Some(s), Some(&ri)) = (g.slots.get(slot), g.members.get(slot)) else {
                    break;
                };
                // This rule's ban on this key, looked up once, for refusing the request
                // and for placing a ban below: `None` when there are no bans at all or
                // the filter rules this one out.
                let mut ban_until = None;
                if bans_exist && s.bans {
                    let c = &set.rules[ri];
                    if self.may_be_banned(c.fingerprint, key) {
                        ban_until = self.bans.get(&(c.fingerprint, key)).map(|b| b.until_ms);
                    }
                    if let Some(until_ms) = ban_until.filter(|u| *u > f.now_ms) {
                        decide(
                            v,
                            c.rule.action.severity(),
                            c.rule.priority,
                            Decision::Banned { until_ms },
                            c.name,
                        );
                    }
                }
                if counts & (1 << slot) == 0 {
                    continue;
                }
                let estimate = estimates[slot];
                let threshold = s.threshold;
                // Most requests are far below every threshold: they stop here.
                let high = estimate * 2.0 >= threshold;
                if !high && estimate <= threshold {
                    continue;
                }
                let c = &set.rules[ri];
                let r = &c.rule;
                if high {
                    c.top.offer(key, estimate, f.now_ms, || describe(&r.key, f));
                }
                if estimate <= threshold {
                    continue;
                }
                let enforce = r.mode == Mode::Enforce;
                let crossed = estimate - 1.0 <= threshold;
                let mut hit = Hit {
                    rule: c.name,
                    action: r.action.clone(),
                    mode: r.mode,
                    estimate,
                    threshold: r.threshold,
                    crossed,
                    ban_placed: false,
                    key: None,
                    key_id: key,
                };
                if enforce {
                    match &r.action {
                        Action::Log => {}
                        Action::Tag => {
                            let at = tag_order.get_or_insert_with(RuleOrder::new).insert(ri);
                            v.tags.insert(at, c.name);
                        }
                        Action::RateLimit => {
                            let ms = SlidingCount::ms_to_window_end(f.now_ms, c.window_ms);
                            decide(
                                v,
                                2,
                                r.priority,
                                Decision::RateLimit {
                                    retry_after_s: ms.div_ceil(1000).max(1),
                                },
                                c.name,
                            );
                        }
                        Action::Block => decide(v, 3, r.priority, Decision::Block, c.name),
                        Action::RevokeToken => {
                            if f.token.is_some() {
                                decide(v, 4, r.priority, Decision::RevokeToken, c.name);
                            }
                        }
                        Action::Ban(ttl) => {
                            let until_ms =
                                f.now_ms + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
                            // Unless one is in force (as the lookup above found it).
                            hit.ban_placed = ban_until.is_none_or(|u| u <= f.now_ms)
                                && self.place_ban(
                                    c.fingerprint,
                                    key,
                                    c.name,
                                    || describe(&r.key, f),
                                    f.now_ms,
                                    until_ms,
                                );
                            decide(v, 5, r.priority, Decision::Banned { until_ms }, c.name);
                        }
                    }
                }
                if hit.crossed || hit.ban_placed {
                    hit.key = Some(describe(&r.key, f));
                }
                let at = hit_order.get_or_insert_with(RuleOrder::new).insert(ri);
                v.hits.insert(at, hit);
            }
        }
    }

    /// Places a ban, unless the cap on bans is reached; returns whether it placed one.
    /// The caller has found no ban in force on `(scope, key)`: two threads placing the
    /// same ban at once may both place it (the last one in stays), as they could when
    /// this looked the ban up again.
    fn place_ban(
        &self,
        scope: BanScope,
        key: u64,
        rule: &'static str,
        display: impl FnOnce() -> String,
        now_ms: u64,
        until_ms: u64,
    ) -> bool {
        if self.ban_count.load(Ordering::Relaxed) >= self.max_bans {
            return false;
        }
        self.insert_ban(
            scope,
            key,
            Ban {
                until_ms,
                placed_ms: now_ms,
                rule,
                key: display(),
            },
            true,
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
        self.insert_ban(
            MANUAL,
            key,
            Ban {
                until_ms,
                placed_ms: now_ms,
                rule: MANUAL_NAME,
                key: display,
            },
            true,
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
        let lifted = self.lift_inner(id);
        if lifted {
            if let Some(fleet) = self.fleet.get() {
                fleet.note(FleetNote::Lift { id: id.to_owned() });
            }
        }
        lifted
    }

    fn lift_inner(&self, id: &str) -> bool {
        let Some((scope, key)) = parse_ban_id(id) else {
            return false;
        };
        let lifted = self.bans.remove(&(scope, key)).is_some();
        self.ban_count.store(self.bans.len(), Ordering::Relaxed);
        if lifted && scope != MANUAL {
            let set = self.set.load();
            for c in set.rules.iter().filter(|c| c.fingerprint == scope) {
                let g = &set.groups[c.group];
                let freed = g.state.map.get_mut(key, |slots| {
                    let freed = slots[c.slot].heap_bytes();
                    slots[c.slot] = Slot::Empty;
                    freed
                });
                if let Some(freed) = freed.filter(|b| *b > 0) {
                    g.state.heap.fetch_sub(freed as isize, Ordering::Relaxed);
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

    /// The rules in force with their worst keys. Walks every key group once (an admin
    /// call, not a request path).
    #[must_use]
    pub fn rules_info(&self, now_ms: u64) -> Vec<RuleInfo> {
        let set = self.set.load();
        let mut tracked = vec![0usize; set.rules.len()];
        for g in &set.groups {
            g.state.map.for_each(|_, slots| {
                for (slot, &ri) in g.members.iter().enumerate() {
                    if !matches!(slots[slot], Slot::Empty) {
                        tracked[ri] += 1;
                    }
                }
            });
        }
        set.rules
            .iter()
            .zip(tracked)
            .map(|(c, tracked_keys)| RuleInfo {
                rule: c.rule.clone(),
                tracked_keys,
                top: c.top.list(now_ms.saturating_sub(c.window_ms)),
            })
            .collect()
    }

    /// Key values tracked: entries over all key groups (a value tracked by several
    /// rules with the same key is one entry).
    #[must_use]
    pub fn tracked_keys(&self) -> usize {
        self.set
            .load()
            .groups
            .iter()
            .map(|g| g.state.map.len())
            .sum()
    }

    /// Bytes of rule state (tables and large sets).
    #[must_use]
    pub fn state_bytes(&self) -> usize {
        self.set.load().groups.iter().map(|g| g.state.bytes()).sum()
    }

    /// How often (in the time passed to [`Engine::sweep`]) idle keys are dropped; the
    /// default is [`IDLE_SWEEP_MS`]. Dropping idle keys changes no decision (an idle key
    /// counts zero either way), only memory: log replay, which runs hours of log time in
    /// seconds, sets it longer so the walk over every table does not dominate.
    pub fn set_idle_sweep_interval(&self, ms: u64) {
        self.idle_sweep_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Drops ended bans, idle keys (at most every [`IDLE_SWEEP_MS`]), and evicts the
    /// lowest-scoring keys while the state is over its cap. Call it periodically (the
    /// proxy does every 100 ms, so a flood is evicted within 100 ms).
    pub fn sweep(&self, now_ms: u64) -> SweepReport {
        let mut report = SweepReport::default();
        let last = self.last_idle_sweep_ms.load(Ordering::Relaxed);
        let every = self.idle_sweep_ms.load(Ordering::Relaxed);
        let idle_due = now_ms.saturating_sub(last) >= every || now_ms < last;
        // The bans are walked when one may have ended, and with every idle sweep: a ban
        // placed by another thread while this walk ran can lower the bound before the
        // walk stores its own, and is then found by the next idle sweep at the latest
        // (an ended ban refuses nothing meanwhile: requests compare its end with their
        // time).
        if idle_due || now_ms >= self.next_ban_end_ms.load(Ordering::Relaxed) {
            let mut manual = 0;
            let mut next_end = u64::MAX;
            self.bans.retain(|(scope, _), b| {
                let live = b.until_ms > now_ms;
                if !live {
                    report.ended.push(b.clone());
                } else {
                    next_end = next_end.min(b.until_ms);
                    if *scope == MANUAL {
                        manual += 1;
                    }
                }
                live
            });
            self.next_ban_end_ms.store(next_end, Ordering::Relaxed);
            report.bans_expired = report.ended.len();
            self.manual_bans.store(manual, Ordering::Relaxed);
            self.ban_count.store(self.bans.len(), Ordering::Relaxed);
        }
        let set = self.set.load();
        // Dropping idle keys walks every table and write-locks each shard in turn: worth
        // it every few seconds, not on every call. Eviction below still runs whenever the
        // cap is exceeded.
        if idle_due {
            self.last_idle_sweep_ms.store(now_ms, Ordering::Relaxed);
            for g in &set.groups {
                let windows: Vec<IdleAt> = g
                    .members
                    .iter()
                    .map(|&ri| IdleAt::new(now_ms, set.rules[ri].window_ms))
                    .collect();
                let before = g.state.map.len();
                let mut freed = 0usize;
                // An idle slot is emptied (freeing a large set's heap); an entry whose
                // slots are all idle goes.
                g.state.map.retain(|slots| {
                    let mut live = false;
                    for (s, w) in slots.iter_mut().zip(&windows) {
                        if s.is_idle_at(w) {
                            if !matches!(s, Slot::Empty) {
                                freed += s.heap_bytes();
                                *s = Slot::Empty;
                            }
                        } else {
                            live = true;
                        }
                    }
                    live
                });
                if freed > 0 {
                    g.state.heap.fetch_sub(freed as isize, Ordering::Relaxed);
                }
                report.idle += before - g.state.map.len();
            }
        }
        let cap = self.max_state_bytes.load(Ordering::Relaxed);
        // The set loaded above, not another load of it: this runs every 100 ms.
        let bytes: usize = set.groups.iter().map(|g| g.state.bytes()).sum();
        if bytes > cap {
            report.evicted = self.evict(&set, now_ms, cap / 10 * 9);
        }
        report
    }

    /// Evicts the entries with the lowest score (an entry's score is its highest
    /// estimate / threshold over its rules) until the state is under `target`.
    fn evict(&self, set: &RuleSet, now_ms: u64, target: usize) -> usize {
        const BUCKETS: usize = 64;
        let params = |g: &Group| -> Vec<(u64, u64)> {
            g.members
                .iter()
                .map(|&ri| (set.rules[ri].window_ms, set.rules[ri].rule.threshold.max(1)))
                .collect()
        };
        let bucket = |slots: &[Slot], params: &[(u64, u64)]| -> usize {
            let score = slots
                .iter()
                .zip(params)
                .map(|(s, (w, t))| s.estimate(now_ms, *w) / *t as f64)
                .fold(0.0, f64::max);
            ((score * (BUCKETS - 1) as f64) as usize).min(BUCKETS - 1)
        };
        // Pass 1: how many entries sit in each score bucket.
        let mut hist = [0usize; BUCKETS];
        let mut total = 0usize;
        for g in &set.groups {
            let p = params(g);
            g.state
                .map
                .for_each(|_, slots| hist[bucket(slots, &p)] += 1);
            total += g.state.map.len();
        }
        let bytes = self.state_bytes();
        if total == 0 || bytes <= target {
            return 0;
        }
        // Entries to drop, assuming an even share of bytes per entry (slots dominate).
        let excess = ((bytes - target) as f64 / bytes as f64 * total as f64).ceil() as usize;
        let mut cut = 0;
        let mut acc = 0;
        while cut < BUCKETS && acc + hist[cut] <= excess {
            acc += hist[cut];
            cut += 1;
        }
        // Evict every bucket below `cut`, and part of bucket `cut`.
        let mut partial = excess.saturating_sub(acc);
        let mut evicted = 0;
        for g in &set.groups {
            let p = params(g);
            let mut freed = 0usize;
            g.state.map.retain(|slots| {
                let b = bucket(slots, &p);
                let keep = if b < cut {
                    false
                } else if b == cut && partial > 0 {
                    partial -= 1;
                    false
                } else {
                    true
                };
                if !keep {
                    evicted += 1;
                    freed += slots.iter().map(Slot::heap_bytes).sum::<usize>();
                }
                keep
            });
            if freed > 0 {
                g.state.heap.fetch_sub(freed as isize, Ordering::Relaxed);
            }
            g.state.map.shrink_to_fit();
        }
        evicted
    }

    /// Which of a group's rules match the request (bit `i` for slot `i`) and the group's
    /// key; `None` when no rule matches or the request lacks a key field.
    fn plan(&self, set: &RuleSet, g: &Group, f: &Facts<'_>, memo: &mut Memo) -> Option<(u8, u64)> {
        let matched = match_mask(set, g, f);
        if matched == 0 {
            return None;
        }
        Some((matched, self.key_of(set, &g.key_fields, f, memo)?))
    }

    /// The hash of a key, computed afresh (manual bans, not the request path).
    fn hash_fields(&self, fields: &[Field], f: &Facts<'_>) -> Option<u64> {
        let sip = self.hasher();
        let mut key = 0u64;
        for (i, field) in fields.iter().enumerate() {
            key = mix(key, field_digest(&sip, field, f)?, i);
        }
        Some(key)
    }

    /// The keyed hash of field `i` of the rule set's field table, computed once per
    /// request.
    #[inline]
    fn field_hash(&self, set: &RuleSet, i: usize, f: &Facts<'_>, memo: &mut Memo) -> Option<u64> {
        if let Some(h) = memo.get(i) {
            return h;
        }
        let h = field_digest(&self.hasher(), &set.fields[i], f);
        memo.put(i, h);
        h
    }

    /// A key: the field's hash for one field, a mix of them for several.
    fn key_of(
        &self,
        set: &RuleSet,
        fields: &[usize],
        f: &Facts<'_>,
        memo: &mut Memo,
    ) -> Option<u64> {
        if let [field] = fields {
            return self.field_hash(set, *field, f, memo);
        }
        let mut key = 0u64;
        for (i, &field) in fields.iter().enumerate() {
            key = mix(key, self.field_hash(set, field, f, memo)?, i);
        }
        Some(key)
    }
}

/// Mixes field hash `h`, the `i`-th of a key, into `key`.
fn mix(key: u64, h: u64, i: usize) -> u64 {
    if i == 0 {
        h
    } else {
        (key.rotate_left(23) ^ h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// Field hashes already computed for this request, by index in the rule set's field
/// table (rules share fields: five rules of the default pack key on the address). Fixed
/// size, no allocation; fields past [`MEMO_FIELDS`] are hashed each time they are used.
#[derive(Default)]
struct Memo {
    /// Fields hashed, and of those, fields the request has (bit per field).
    done: u16,
    present: u16,
    hashes: [u64; MEMO_FIELDS],
}

const MEMO_FIELDS: usize = 16;

impl Memo {
    #[inline]
    fn get(&self, i: usize) -> Option<Option<u64>> {
        (i < MEMO_FIELDS && self.done & (1 << i) != 0)
            .then(|| (self.present & (1 << i) != 0).then(|| self.hashes[i]))
    }

    #[inline]
    fn put(&mut self, i: usize, h: Option<u64>) {
        if i < MEMO_FIELDS {
            self.done |= 1 << i;
            if let Some(h) = h {
                self.present |= 1 << i;
                self.hashes[i] = h;
            }
        }
    }
}

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

/// Longest text value hashed from a stack buffer in one call; longer ones are streamed.
const SHORT_TEXT: usize = 95;

/// The keyed hash of a field's value, `None` if the request has no such value. The bytes
/// hashed are the address octets (with the prefix length after a masked network), the
/// token id, or the text followed by `0xff`, exactly as a streaming `Hasher` fed them
/// piece by piece would see them: snapshots and the fleet's shared state are keyed by
/// these values, so they must not change. Assembled on the stack and hashed in one call,
/// they skip the hasher's buffering of each piece (tested against the streaming form).
fn field_digest(sip: &SipHasher13, field: &Field, f: &Facts<'_>) -> Option<u64> {
    match field {
        Field::Ip => Some(match f.ip {
            IpAddr::V4(a) => sip.hash(&a.octets()),
            IpAddr::V6(a) => sip.hash(&a.octets()),
        }),
        Field::IpPrefix { v4, v6 } => {
            let mut buf = [0u8; 17];
            let (net, len) = masked(f.ip, *v4, *v6);
            let n = match net {
                IpAddr::V4(a) => {
                    buf[..4].copy_from_slice(&a.octets());
                    4
                }
                IpAddr::V6(a) => {
                    buf[..16].copy_from_slice(&a.octets());
                    16
                }
            };
            buf[n] = len;
            Some(sip.hash(&buf[..=n]))
        }
        Field::Token => f.token.map(|t| sip.hash(&t.0)),
        other => text_field(other, f).map(|s| {
            let b = s.as_bytes();
            if b.len() <= SHORT_TEXT {
                let mut buf = [0u8; SHORT_TEXT + 1];
                buf[..b.len()].copy_from_slice(b);
                buf[b.len()] = 0xff;
                sip.hash(&buf[..=b.len()])
            } else {
                let mut h = *sip;
                h.write(b);
                h.write_u8(0xff);
                h.finish()
            }
        }),
    }
}

fn describe(fields: &[Field], f: &Facts<'_>) -> String {
    let mut out = String::new();
    describe_key(fields, f, &mut out);
    out
}

/// A key's readable form, as bans, events, the admin API and log replay show it
/// (`ip=192.0.2.1,account=alice`): written into `out` (cleared first), text values cut
/// at 128 characters.
pub fn describe_key(fields: &[Field], f: &Facts<'_>, out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field.name());
        out.push('=');
        // Writing to a String cannot fail.
        let _ = match field {
            Field::Ip => write!(out, "{}", f.ip),
            Field::IpPrefix { v4, v6 } => {
                let (net, len) = masked(f.ip, *v4, *v6);
                write!(out, "{net}/{len}")
            }
            Field::Token => {
                if let Some(t) = f.token {
                    out.push_str(&t.to_hex());
                }
                Ok(())
            }
            other => {
                out.extend(text_field(other, f).unwrap_or("").chars().take(128));
                Ok(())
            }
        };
    }
}

/// Key groups planned (keyed and prefetched) before any is counted; later ones are
/// handled one at a time.
const PLAN: usize = 16;

/// The rule indexes of what a verdict gathered (hits or tags), in the order they sit,
/// so that each next one is inserted at its rule's place: inline up to 32, on the heap
/// beyond (one rule, one hit: only a pack of more than 32 rules firing at once spills).
struct RuleOrder {
    inline: [usize; 32],
    len: usize,
    heap: Vec<usize>,
}

impl RuleOrder {
    fn new() -> Self {
        Self {
            inline: [0; 32],
            len: 0,
            heap: Vec::new(),
        }
    }

    /// Where rule `ri`'s item goes (after any of an equal index), noted there.
    fn insert(&mut self, ri: usize) -> usize {
        if self.heap.is_empty() && self.len < self.inline.len() {
            let at = self.inline[..self.len].partition_point(|&r| r <= ri);
            self.inline.copy_within(at..self.len, at + 1);
            self.inline[at] = ri;
            self.len += 1;
            return at;
        }
        if self.heap.is_empty() {
            self.heap.extend_from_slice(&self.inline[..self.len]);
        }
        let at = self.heap.partition_point(|&r| r <= ri);
        self.heap.insert(at, ri);
        at
    }
}

/// Bit `i` set when the rule in slot `i` of the group matches the request.
fn match_mask(set: &RuleSet, g: &Group, f: &Facts<'_>) -> u8 {
    if g.classes & class_bit(f.class) == 0 {
        return 0;
    }
    let mut mask = g.class_only;
    let mut tested = g.tested;
    while tested != 0 {
        let slot = tested.trailing_zeros() as usize;
        tested &= tested - 1;
        if g.members
            .get(slot)
            .is_some_and(|&ri| matches(&set.rules[ri].rule, f))
        {
            mask |= 1 << slot;
        }
    }
    mask
}

fn class_bit(c: RouteClass) -> u8 {
    match c {
        RouteClass::Protected => 1,
        RouteClass::Issuance => 2,
        RouteClass::Open => 4,
    }
}

/// Whether a rule matches on route class alone: [`matches`] holds for every request.
/// Every part of [`Match`] is named, so a new one must be decided here too.
fn on_class_alone(r: &Rule) -> bool {
    let Match {
        classes: _,
        methods,
        paths,
        conditions,
    } = &r.matcher;
    methods.is_empty() && paths.is_empty() && conditions.is_empty()
}

/// Whether a rule's match holds, route class apart (tested first, from bits).
fn matches(r: &Rule, f: &Facts<'_>) -> bool {
    let m = &r.matcher;
    (m.methods.is_empty() || m.methods.iter().any(|x| x == f.method))
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

/// A new key group's state, with the slots of its rules that were in force copied from
/// the groups that held them.
fn carry_over(old: &RuleSet, fingerprints: Vec<u64>) -> GroupState {
    let state = GroupState {
        map: GroupMap::new(fingerprints.len()),
        heap: AtomicIsize::new(0),
        fingerprints,
    };
    for og in &old.groups {
        // (old slot, new slot) of each rule in both.
        let pairs: Vec<(usize, usize)> = og
            .state
            .fingerprints
            .iter()
            .enumerate()
            .filter_map(|(os, fp)| {
                state
                    .fingerprints
                    .iter()
                    .position(|f| f == fp)
                    .map(|ns| (os, ns))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let mut heap = 0usize;
        og.state.map.for_each(|key, slots| {
            if pairs
                .iter()
                .all(|&(os, _)| matches!(slots[os], Slot::Empty))
            {
                return;
            }
            state.map.update(key, |new| {
                for &(os, ns) in &pairs {
                    heap += slots[os].heap_bytes();
                    new[ns] = slots[os].clone();
                }
            });
        });
        state.heap.fetch_add(heap as isize, Ordering::Relaxed);
    }
    state
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    /// The digests as they were first made: the pieces fed to a streaming hasher one by
    /// one. Snapshots and the fleet's shared state hold values made this way.
    fn streamed(sip: &SipHasher13, field: &Field, f: &Facts<'_>) -> Option<u64> {
        let mut h = *sip;
        match field {
            Field::Ip => match f.ip {
                IpAddr::V4(a) => h.write(&a.octets()),
                IpAddr::V6(a) => h.write(&a.octets()),
            },
            Field::IpPrefix { v4, v6 } => {
                let (net, len) = masked(f.ip, *v4, *v6);
                match net {
                    IpAddr::V4(a) => h.write(&a.octets()),
                    IpAddr::V6(a) => h.write(&a.octets()),
                }
                h.write_u8(len);
            }
            Field::Token => h.write(&f.token?.0),
            other => {
                h.write(text_field(other, f)?.as_bytes());
                h.write_u8(0xff);
            }
        }
        Some(h.finish())
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn a_name_is_interned_once() {
        let a = intern("accounts-per-ip");
        let b = intern(&String::from("accounts-per-ip"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "accounts-per-ip");
        assert!(!std::ptr::eq(a, intern("accounts-per-ip-day")));
    }

    #[test]
    fn one_shot_digests_equal_the_streamed_ones() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        // Text around the stack buffer's length (SHORT_TEXT), multi-byte characters too.
        let alphabet: Vec<char> = "abcxyz0189-_.@é€😀".chars().collect();
        for n in 0..20_000 {
            let sip = SipHasher13::new_with_keys(rng.next(), rng.next());
            let ip = if rng.next().is_multiple_of(3) {
                IpAddr::from(
                    ((u128::from(rng.next()) << 64) | u128::from(rng.next())).to_be_bytes(),
                )
            } else {
                IpAddr::from((rng.next() as u32).to_be_bytes())
            };
            let len = (rng.next() % (SHORT_TEXT as u64 + 40)) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            let token =
                TokenId((u128::from(rng.next()) << 64 | u128::from(rng.next())).to_le_bytes());
            let present = n % 7 != 0;
            let f = Facts {
                now_ms: 0,
                class: RouteClass::Protected,
                route: present.then_some(text.as_str()),
                method: "GET",
                path: &text,
                ip,
                account: present.then_some(text.as_str()),
                token: present.then_some(&token),
                headers: &Nothing,
                claims: &Nothing,
            };
            let fields = [
                Field::Ip,
                // Lengths past the address's width are cut to it.
                Field::IpPrefix {
                    v4: (rng.next() % 40) as u8,
                    v6: (rng.next() % 140) as u8,
                },
                Field::Token,
                Field::Account,
                Field::Route,
                Field::Path,
                Field::Method,
                Field::Header("x-absent".into()),
            ];
            for field in &fields {
                assert_eq!(
                    field_digest(&sip, field, &f),
                    streamed(&sip, field, &f),
                    "{field:?} of {ip} / {text:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod top_tests {
    use super::*;

    /// The list as it was kept before the lowest entry was remembered: a walk over all
    /// of them for every key that is not in a full list.
    fn naive(top: &mut Vec<Offender>, key: u64, estimate: f64, now_ms: u64) {
        if let Some(o) = top.iter_mut().find(|o| o.key == key) {
            o.estimate = o.estimate.max(estimate);
            o.last_ms = now_ms;
            return;
        }
        let entry = Offender {
            key,
            display: key.to_string(),
            estimate,
            last_ms: now_ms,
        };
        if top.len() < TOP_K {
            top.push(entry);
            return;
        }
        if let Some((i, min)) = top
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.estimate.total_cmp(&b.1.estimate))
        {
            if estimate > min.estimate {
                top[i] = entry;
            }
        }
    }

    #[test]
    fn the_remembered_lowest_entry_changes_nothing() {
        let t = TopOffenders::default();
        let mut model = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..100_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 80 keys for 32 places; few distinct estimates, so ties are common, rising
            // over time, so that keys keep replacing each other and the lowest entry is
            // often raised in place.
            let key = x % 80;
            let estimate = ((x >> 20) % 8 + i / 2_000) as f64;
            t.offer(key, estimate, i, || key.to_string());
            naive(&mut model, key, estimate, i);
            if i % 97 == 0 {
                let got = t.top.lock().expect("lock").list.clone();
                let same = got.len() == model.len()
                    && got.iter().zip(&model).all(|(a, b)| {
                        (a.key, a.estimate.to_bits(), a.last_ms, &a.display)
                            == (b.key, b.estimate.to_bits(), b.last_ms, &b.display)
                    });
                assert!(same, "offer {i}: {got:?} vs {model:?}");
            }
        }
    }
}
