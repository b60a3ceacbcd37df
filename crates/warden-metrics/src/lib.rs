//! Warden's telemetry: Prometheus metrics and structured JSON-line events.
//!
//! Every metric name is listed once, in [`Metrics::new`]. Label values come only from
//! small fixed sets (route class, outcome, provenance reason, record source...): never
//! an IP, account, token or path. Per-request counters are fetched once at start and
//! kept in arrays, so the hot path pays an atomic increment, not a label lookup.
//!
//! Events are written by one background thread from a bounded queue; when the queue is
//! full the event is dropped and `warden_events_dropped_total` counts it, so a slow
//! disk or a stuck stdout never stalls the proxy.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::SystemTime;

mod webhook;

pub use webhook::{WebhookConfig, WebhookCounters};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use warden_core::ledger::TokenId;
use warden_core::Reason;

/// Route class label values, indexed by [`ClassIdx`].
pub const CLASSES: [&str; 3] = ["protected", "issuance", "open"];
/// Request outcome label values, indexed by [`Outcome`].
pub const OUTCOMES: [&str; 5] = [
    "passed",
    "rejected",
    "fail_open",
    "bad_request",
    "unavailable",
];
/// Why warden refused a request or closed a connection before looking at its token,
/// indexed by [`HttpRefusal`].
pub const HTTP_REFUSALS: [&str; 5] = [
    "header_timeout",
    "body_timeout",
    "header_too_large",
    "too_many_headers",
    "ambiguous_framing",
];

/// A request refused (or a connection closed) for how it was sent, not for its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// The request header did not arrive within `limits.header_timeout`: connection closed.
    HeaderTimeout = 0,
    /// The body did not arrive within `limits.body_timeout`: 408.
    BodyTimeout = 1,
    /// Request line and headers over `limits.max_header_bytes`: 431.
    HeaderTooLarge = 2,
    /// More header fields than `limits.max_headers`: 431.
    TooManyHeaders = 3,
    /// Framing two parsers could read differently (Content-Length with Transfer-Encoding,
    /// several Content-Length or Transfer-Encoding fields, a coding other than `chunked`):
    /// 400, never forwarded.
    AmbiguousFraming = 4,
}

/// Ledger record sources.
pub const SOURCES: [&str; 3] = ["admin", "inline", "import"];

/// Index into [`CLASSES`].
pub type ClassIdx = usize;

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Proxied to the upstream.
    Passed = 0,
    /// Refused by warden.
    Rejected = 1,
    /// Proxied although the ledger could not answer (fail-open route).
    FailOpen = 2,
    /// Refused as an ambiguous or invalid request.
    BadRequest = 3,
    /// Refused with 503 because the ledger could not answer (fail-closed route).
    Unavailable = 4,
}

/// Where a ledger record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The admin API.
    Admin = 0,
    /// Seen in a login response on an issuance route.
    Inline = 1,
    /// `warden ledger import`.
    Import = 2,
}

/// All of warden's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Vec<[IntCounter; 5]>,
    provenance: Vec<IntCounter>,
    /// Seconds spent in warden's own request filters.
    pub filter_seconds: Histogram,
    /// Seconds from sending a request upstream to its response header.
    pub upstream_seconds: Histogram,
    records: Vec<IntCounter>,
    /// Records that could not be stored, by source.
    record_failures: Vec<IntCounter>,
    /// Records in the ledger index.
    pub ledger_entries: IntGauge,
    /// Token revocations waiting for their record.
    pub ledger_pending_revocations: IntGauge,
    /// Ledger lookups that failed or timed out.
    pub ledger_unavailable: IntCounter,
    /// Seconds a ledger lookup took when it had to be awaited.
    pub ledger_seconds: Histogram,
    issuance_wait: Vec<IntCounter>,
    /// Failed admin authentications.
    pub admin_auth_failures: IntCounter,
    /// Failed admin authentications answered at once (429) because every delay slot was
    /// taken.
    pub admin_auth_overflow: IntCounter,
    http_refusals: Vec<IntCounter>,
    reloads: Vec<IntCounter>,
    /// Generation of the configuration in force (1 at start, +1 per successful reload).
    pub config_generation: IntGauge,
    /// Events dropped because the event queue was full.
    pub events_dropped: IntCounter,
    /// Rejection events not written because the same one was written within
    /// `events.repeat_interval` ([`RepeatFilter`]).
    pub events_suppressed: IntCounter,
    /// Tokens in the verification cache.
    pub verify_cache_entries: IntGauge,
    rule_hits: IntCounterVec,
    declared_rules: std::sync::Mutex<Vec<String>>,
    decisions: Vec<IntCounter>,
    /// Bans in force.
    pub active_bans: IntGauge,
    /// Keys tracked by the rules.
    pub tracked_keys: IntGauge,
    /// Bytes of rule state.
    pub state_bytes: IntGauge,
    /// Keys evicted to respect the state cap.
    pub state_evictions: IntCounter,
    /// Webhook counters.
    pub webhook: WebhookCounters,
    /// Fleet mode (Redis) counters; they stay at zero on a single node.
    pub fleet: FleetCounters,
}

/// Redis operations, the `op` label of `warden_fleet_redis_errors_total`.
pub const FLEET_OPS: [&str; 6] = ["lookup", "record", "revoke", "stream", "sync", "publish"];
/// What a node applied from the fleet stream, the `kind` label.
pub const FLEET_APPLIED: [&str; 3] = ["revocation", "ban", "lift"];

/// A Redis operation of fleet mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetOp {
    /// A ledger lookup that missed the local index.
    Lookup = 0,
    /// A ledger write.
    Record = 1,
    /// A revocation.
    Revoke = 2,
    /// Reading the revocation and ban stream.
    Stream = 3,
    /// Pushing and reading fleet-scope counters.
    Sync = 4,
    /// Publishing this node's bans.
    Publish = 5,
}

/// What was applied from the fleet stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetApplied {
    /// A revocation (token, account or key id).
    Revocation = 0,
    /// A ban placed on another node.
    Ban = 1,
    /// A ban lifted on another node.
    Lift = 2,
}

/// Fleet mode's metrics.
pub struct FleetCounters {
    errors: Vec<IntCounter>,
    applied: Vec<IntCounter>,
    /// 1 after a failed Redis exchange, until one succeeds; 0 otherwise (and always 0
    /// on a node not in fleet mode).
    pub redis_down: IntGauge,
    /// 1 while another running process holds this node's `fleet.node` name, else 0.
    pub node_conflict: IntGauge,
    /// Seconds since this node's fleet view was last refreshed (the older of the last
    /// stream read and the last counter sync).
    pub sync_lag_seconds: prometheus::Gauge,
}

impl FleetCounters {
    /// Counts a failed Redis operation.
    pub fn error(&self, op: FleetOp) {
        if let Some(c) = self.errors.get(op as usize) {
            c.inc();
        }
    }

    /// Counts entries applied from the stream.
    pub fn applied(&self, kind: FleetApplied, n: u64) {
        if let Some(c) = self.applied.get(kind as usize) {
            c.inc_by(n);
        }
    }
}

/// Decision label values, indexed by [`DecisionKind`].
pub const DECISIONS: [&str; 5] = ["rate_limit", "block", "ban", "revoke_token", "tag"];

/// A request decision by the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// 429.
    RateLimit = 0,
    /// 403.
    Block = 1,
    /// 403 under a ban.
    Ban = 2,
    /// Token revoked, 401.
    RevokeToken = 3,
    /// Header added.
    Tag = 4,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> Vec<IntCounter> {
    let v = IntCounterVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|e| panic_metric(name, &e));
    register(r, name, Box::new(v.clone()));
    values.iter().map(|x| v.with_label_values(&[x])).collect()
}

fn register(r: &Registry, name: &str, c: Box<dyn prometheus::core::Collector>) {
    if let Err(e) = r.register(c) {
        panic_metric(name, &e);
    }
}

// Metric definitions are constants of this file: a failure here is a programming error
// caught by the first test, never something input can cause.
fn panic_metric(name: &str, e: &prometheus::Error) -> ! {
    panic!("metric {name} is ill-defined: {e}")
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic_metric(name, &e));
    register(r, name, Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic_metric(name, &e));
    register(r, name, Box::new(g.clone()));
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic_metric(name, &e));
    register(r, name, Box::new(h.clone()));
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    #[must_use]
    pub fn new() -> Self {
        let r = Registry::new();
        let req = IntCounterVec::new(
            Opts::new(
                "warden_requests_total",
                "Requests by route class and outcome.",
            ),
            &["class", "outcome"],
        )
        .unwrap_or_else(|e| panic_metric("warden_requests_total", &e));
        register(&r, "warden_requests_total", Box::new(req.clone()));
        let requests = CLASSES
            .iter()
            .map(|c| [0, 1, 2, 3, 4].map(|o| req.with_label_values(&[c, OUTCOMES[o]])))
            .collect();
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        Self {
            requests,
            provenance: counter_vec(
                &r,
                "warden_provenance_total",
                "Token provenance outcomes on protected routes, by reason.",
                "reason",
                &reasons,
            ),
            filter_seconds: histogram(
                &r,
                "warden_filter_seconds",
                "Time spent in warden's own request filters (not the upstream).",
                vec![1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1, 1.0],
            ),
            upstream_seconds: histogram(
                &r,
                "warden_upstream_seconds",
                "Time from sending a request upstream to receiving its response header.",
                vec![5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
            ),
            records: counter_vec(
                &r,
                "warden_ledger_records_total",
                "Ledger records stored, by source.",
                "source",
                &SOURCES,
            ),
            record_failures: counter_vec(
                &r,
                "warden_ledger_record_failures_total",
                "Ledger records that could not be stored, by source.",
                "source",
                &SOURCES,
            ),
            ledger_entries: gauge(&r, "warden_ledger_entries", "Records in the ledger index."),
            ledger_pending_revocations: gauge(
                &r,
                "warden_ledger_pending_revocations",
                "Token revocations waiting for their record (revoked before it was recorded).",
            ),
            ledger_unavailable: counter(
                &r,
                "warden_ledger_unavailable_total",
                "Ledger lookups that failed or timed out.",
            ),
            ledger_seconds: histogram(
                &r,
                "warden_ledger_lookup_seconds",
                "Time of ledger lookups that had to be awaited.",
                vec![1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5],
            ),
            issuance_wait: counter_vec(
                &r,
                "warden_issuance_wait_total",
                "Requests whose just-issued token was unknown and waited for its record, by outcome.",
                "outcome",
                &["found", "timeout", "overflow"],
            ),
            admin_auth_failures: counter(
                &r,
                "warden_admin_auth_failures_total",
                "Admin requests refused for a missing or wrong bearer token.",
            ),
            admin_auth_overflow: counter(
                &r,
                "warden_admin_auth_overflow_total",
                "Failed admin authentications answered at once with 429, every delay slot being taken.",
            ),
            http_refusals: counter_vec(
                &r,
                "warden_http_refusals_total",
                "Requests refused or connections closed for how they were sent (timeouts, header limits, ambiguous framing), by reason.",
                "reason",
                &HTTP_REFUSALS,
            ),
            reloads: counter_vec(
                &r,
                "warden_reloads_total",
                "Configuration reloads, by outcome.",
                "outcome",
                &["ok", "error"],
            ),
            config_generation: gauge(
                &r,
                "warden_config_generation",
                "Generation of the configuration in force.",
            ),
            events_dropped: counter(
                &r,
                "warden_events_dropped_total",
                "Events dropped because the event queue was full.",
            ),
            events_suppressed: counter(
                &r,
                "warden_events_suppressed_total",
                "Rejection events not written: the same client, token and reason was written within events.repeat_interval.",
            ),
            verify_cache_entries: gauge(
                &r,
                "warden_verify_cache_entries",
                "Tokens in the verification cache.",
            ),
            declared_rules: std::sync::Mutex::new(Vec::new()),
            rule_hits: {
                let v = IntCounterVec::new(
                    Opts::new("warden_rule_hits_total", "Requests over a rule's threshold, by rule and mode."),
                    &["rule", "mode"],
                )
                .unwrap_or_else(|e| panic_metric("warden_rule_hits_total", &e));
                register(&r, "warden_rule_hits_total", Box::new(v.clone()));
                v
            },
            decisions: counter_vec(
                &r,
                "warden_decisions_total",
                "Requests the rules acted on (enforce mode), by action.",
                "action",
                &DECISIONS,
            ),
            active_bans: gauge(&r, "warden_active_bans", "Bans in force."),
            tracked_keys: gauge(&r, "warden_tracked_keys", "Keys tracked by the behaviour rules."),
            state_bytes: gauge(&r, "warden_state_bytes", "Bytes of behaviour-rule state (counters and sets)."),
            state_evictions: counter(
                &r,
                "warden_state_evictions_total",
                "Keys evicted, lowest score first, to keep rule state under its cap.",
            ),
            webhook: WebhookCounters {
                delivered: counter(&r, "warden_webhook_batches_total", "Event batches delivered to the webhook."),
                failed: counter(&r, "warden_webhook_failures_total", "Webhook delivery attempts that failed (each retry counts)."),
                dropped: counter(
                    &r,
                    "warden_webhook_dropped_total",
                    "Events not delivered to the webhook: queue full, or every attempt failed.",
                ),
            },
            fleet: FleetCounters {
                errors: counter_vec(
                    &r,
                    "warden_fleet_redis_errors_total",
                    "Fleet mode: Redis operations that failed or timed out, by operation.",
                    "op",
                    &FLEET_OPS,
                ),
                applied: counter_vec(
                    &r,
                    "warden_fleet_stream_applied_total",
                    "Fleet mode: revocations and bans made on other nodes and applied here, by kind.",
                    "kind",
                    &FLEET_APPLIED,
                ),
                redis_down: gauge(&r, "warden_fleet_redis_down", "Fleet mode: 1 after a failed Redis exchange until one succeeds, else 0 (always 0 outside fleet mode)."),
                node_conflict: gauge(&r, "warden_fleet_node_conflict", "Fleet mode: 1 while another running warden holds this node's fleet.node name (names must be unique), else 0."),
                sync_lag_seconds: {
                    let name = "warden_fleet_sync_lag_seconds";
                    let g = prometheus::Gauge::new(name, "Fleet mode: seconds since this node's view of the fleet (stream and counters) was last refreshed.")
                        .unwrap_or_else(|e| panic_metric(name, &e));
                    register(&r, name, Box::new(g.clone()));
                    g
                },
            },
            registry: r,
        }
    }

    /// Counts a request.
    pub fn request(&self, class: ClassIdx, outcome: Outcome) {
        if let Some(row) = self.requests.get(class) {
            row[outcome as usize].inc();
        }
    }

    /// Counts a provenance outcome.
    pub fn provenance(&self, reason: Reason) {
        self.provenance[reason.index()].inc();
    }

    /// Counts stored records.
    pub fn records(&self, source: Source, n: u64) {
        self.records[source as usize].inc_by(n);
    }

    /// Counts records that could not be stored.
    pub fn record_failures(&self, source: Source, n: u64) {
        self.record_failures[source as usize].inc_by(n);
    }

    /// Counts an issuance wait: `found`, `timeout` or `overflow`.
    pub fn issuance_wait(&self, outcome: IssuanceWait) {
        self.issuance_wait[outcome as usize].inc();
    }

    /// Counts a request over a rule's threshold. Rule names come from the rule files: a
    /// small set the operator controls, never request data.
    pub fn rule_hit(&self, rule: &str, mode: &str) {
        self.rule_hits.with_label_values(&[rule, mode]).inc();
    }

    /// Counts a decision.
    pub fn decision(&self, kind: DecisionKind) {
        self.decisions[kind as usize].inc();
    }

    /// Pre-registers the series of the rules in force, so dashboards see zeros.
    /// Series of rules no longer in force are removed.
    pub fn declare_rules<'a>(&self, rules: impl Iterator<Item = &'a str>) {
        let new: Vec<String> = rules.map(str::to_owned).collect();
        let mut declared = match self.declared_rules.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for gone in declared.iter().filter(|r| !new.contains(r)) {
            for mode in ["enforce", "shadow"] {
                let _ = self.rule_hits.remove_label_values(&[gone, mode]);
            }
        }
        for r in &new {
            for mode in ["enforce", "shadow"] {
                let _ = self.rule_hits.with_label_values(&[r, mode]);
            }
        }
        *declared = new;
    }

    /// Counts a request refused for how it was sent.
    pub fn http_refusal(&self, r: HttpRefusal) {
        self.http_refusals[r as usize].inc();
    }

    /// Counts a reload.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// The text exposition of every metric.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            log::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Outcome of waiting for a just-issued token's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuanceWait {
    /// The record arrived.
    Found = 0,
    /// It did not arrive in time: forged.
    Timeout = 1,
    /// Too many requests were already waiting: refused at once.
    Overflow = 2,
}

/// A short, stable digest of a token id for events: enough to correlate events about one
/// token, useless for replaying it.
#[must_use]
pub fn token_hash(id: &TokenId) -> String {
    let d = Sha256::digest(id.0);
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One structured event. `type` is stable: a SIEM can key on it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Event {
    /// RFC 3339 time with milliseconds.
    pub ts: String,
    /// Stable event type (`token_rejected`, `key_misuse`, `fail_open`, `record_failed`,
    /// `reload`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Route name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Rule name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rule's key, readable (`ip=192.0.2.1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Provenance reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What warden did (`reject`, `pass`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// Account claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// [`token_hash`] of the token id; never the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    /// Key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Request path (without query string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Free text for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// An event of a type, stamped now.
    #[must_use]
    pub fn new(kind: &'static str) -> Self {
        Self {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind,
            ..Self::default()
        }
    }
}

/// Decides which repeated events are written: a key (say a client address, a token and a
/// reason) is written, then not again until `interval` has passed since it was written;
/// the repeats are counted instead. A forged token replayed ten thousand times a minute
/// then writes one event a minute, not ten thousand, while every request is still counted
/// by the metrics. The interval runs from each written event, not from clock-aligned
/// windows, so a burst straddling a minute boundary is still one event.
///
/// **Memory and error.** A fixed table of [`RepeatFilter::SLOTS`] 64-bit slots (512 KiB),
/// in pairs: a key may sit in either slot of its pair, which holds a 32-bit tag of a key
/// and the second it was written (32 bits, enough until 2106); a new key replaces the
/// older of the two. So no key is remembered beyond its pair: three keys sharing a pair
/// evict each other, which writes an event more, never one less (a first sighting is
/// missed only when a different key with the same pair and the same 32-bit tag was
/// written within the interval: about 2⁻³² per pair of keys). 10 000 keys a minute, a
/// flood of forged tokens each from its own address, write about 3 % of their repeats
/// (one slot a key wrote about 14 %); 3 000 keys, about 0.3 % (one slot, 4 %). Keys are
/// hashed with a per-process random key, so clients cannot aim collisions. Lock-free;
/// two threads seeing a key at once may both write it.
pub struct RepeatFilter {
    interval_s: u64,
    hasher: std::collections::hash_map::RandomState,
    slots: Box<[std::sync::atomic::AtomicU64]>,
}

impl RepeatFilter {
    /// Slots in the table.
    pub const SLOTS: usize = 1 << 16;

    /// A filter writing each key once per `interval` (zero: every time).
    #[must_use]
    pub fn new(interval: std::time::Duration) -> Self {
        let interval_s = interval.as_secs();
        let slots = if interval_s == 0 { 0 } else { Self::SLOTS };
        Self {
            interval_s,
            hasher: std::collections::hash_map::RandomState::new(),
            slots: (0..slots)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }

    /// Whether the event for `key` seen at `now_s` (unix seconds) should be written: it
    /// was not written in the last `interval`.
    pub fn first<K: std::hash::Hash>(&self, key: &K, now_s: u64) -> bool {
        use std::hash::BuildHasher;
        use std::sync::atomic::Ordering;
        if self.interval_s == 0 {
            return true;
        }
        let h = self.hasher.hash_one(key);
        let tag = h >> 32;
        // Second 0 is never stored (an empty slot), hence the max(1).
        let now = u64::from(u32::try_from(now_s).unwrap_or(u32::MAX).max(1));
        let written_at = |v: u64| v & u64::from(u32::MAX);
        // Two slots side by side (one cache line): a key is looked for in both and
        // written over the older, so two keys sharing a slot no longer evict each other.
        let i = (h as usize) & (Self::SLOTS - 2);
        let pair = [&self.slots[i], &self.slots[i + 1]];
        let seen = pair.map(|s| s.load(Ordering::Relaxed));
        for v in seen {
            // A clock stepped back counts as a repeat until it passes the written second.
            if v >> 32 == tag
                && written_at(v) != 0
                && now.saturating_sub(written_at(v)) < self.interval_s
            {
                return false;
            }
        }
        let older = usize::from(written_at(seen[1]) < written_at(seen[0]));
        pair[older].store(tag << 32 | now, Ordering::Relaxed);
        true
    }
}

/// Where events go.
pub struct Events {
    tx: SyncSender<String>,
    dropped: IntCounter,
    webhook: Option<std::sync::Arc<webhook::Queue>>,
}

impl Events {
    /// Events to stdout (`path` = `None`, or `-`) or appended to a file.
    pub fn start(path: Option<&Path>, queue: usize, dropped: IntCounter) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stdout()),
            Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel::<String>(queue.max(1));
        std::thread::Builder::new()
            .name("warden-events".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    // Drain what else is queued, then flush once, so `tail -f` sees
                    // events promptly without a flush per line under load.
                    while let Ok(more) = rx.try_recv() {
                        let _ = writeln!(out, "{more}");
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Self {
            tx,
            dropped,
            webhook: None,
        })
    }

    /// Also delivers every event to a webhook.
    pub fn with_webhook(
        mut self,
        cfg: WebhookConfig,
        counters: WebhookCounters,
    ) -> std::io::Result<Self> {
        self.webhook = Some(webhook::start(cfg, counters)?);
        Ok(self)
    }

    /// Queues an event; never blocks.
    pub fn emit(&self, event: &Event) {
        let line = match serde_json::to_string(event) {
            Ok(l) => l,
            Err(e) => {
                log::error!("cannot serialize event {}: {e}", event.kind);
                return;
            }
        };
        if let Some(w) = &self.webhook {
            w.push(line.clone());
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn repeats_are_written_once_per_interval_and_keys_apart() {
        let f = RepeatFilter::new(Duration::from_secs(60));
        let t0 = 1_800_000_020;
        assert!(f.first(&("forged", "10.0.0.1", 7u64), t0));
        assert!(!f.first(&("forged", "10.0.0.1", 7u64), t0 + 1));
        assert!(!f.first(&("forged", "10.0.0.1", 7u64), t0 + 39));
        // Another address, token or reason is another key.
        assert!(f.first(&("forged", "10.0.0.2", 7u64), t0 + 1));
        assert!(f.first(&("forged", "10.0.0.1", 8u64), t0 + 1));
        assert!(f.first(&("revoked", "10.0.0.1", 7u64), t0 + 1));
        // A clock minute turning is not enough (t0 is 20 s before one) ...
        assert!(!f.first(&("forged", "10.0.0.1", 7u64), t0 + 40));
        assert!(!f.first(&("forged", "10.0.0.1", 7u64), t0 + 59));
        // ... the interval since the written event is: written again, once.
        assert!(f.first(&("forged", "10.0.0.1", 7u64), t0 + 60));
        assert!(!f.first(&("forged", "10.0.0.1", 7u64), t0 + 61));
        assert!(!f.first(&("forged", "10.0.0.1", 7u64), t0 + 119));
        assert!(f.first(&("forged", "10.0.0.1", 7u64), t0 + 120));
        // 100 000 keys in one window, more than the slots: every first sighting is
        // written (evictions only add events), and most repeats are not.
        let keys = 100_000u64;
        assert!((0..keys).all(|k| f.first(&k, t0 + 50)));
        let again = (0..keys).filter(|k| f.first(k, t0 + 51)).count();
        assert!(again < keys as usize, "{again}");
        let recent = (keys - 1000..keys).filter(|k| f.first(k, t0 + 52)).count();
        assert!(recent < 100, "{recent} of the last 1000 keys written again");
        // 10 000 keys, well under the slots: few repeats written (one slot a key wrote
        // about 14 % of them again; a pair of slots about 3 %).
        let g = RepeatFilter::new(Duration::from_secs(60));
        assert!((0..10_000u64).all(|k| g.first(&k, t0)));
        let again = (0..10_000u64).filter(|k| g.first(k, t0 + 1)).count();
        assert!(again < 500, "{again} of 10 000 repeats written");
        // Interval zero: every event is written.
        let all = RepeatFilter::new(Duration::ZERO);
        assert!((0..3).all(|_| all.first(&1u8, t0)));
    }

    #[test]
    fn every_metric_is_exposed_with_fixed_labels() {
        let m = Metrics::new();
        m.request(0, Outcome::Rejected);
        m.provenance(Reason::Forged);
        m.records(Source::Inline, 2);
        let text = m.encode();
        assert!(
            text.contains("warden_requests_total{class=\"protected\",outcome=\"rejected\"} 1"),
            "{text}"
        );
        assert!(text.contains("warden_provenance_total{reason=\"forged\"} 1"));
        assert!(text.contains("warden_ledger_records_total{source=\"inline\"} 2"));
        // Every reason is pre-registered, so dashboards see zeros, not gaps.
        for r in Reason::ALL {
            assert!(text.contains(&format!("reason=\"{}\"", r.as_str())), "{r}");
        }
    }

    #[test]
    fn rules_removed_by_a_reload_leave_the_exposition() {
        let m = Metrics::new();
        m.declare_rules(["a", "b"].into_iter());
        m.rule_hit("a", "enforce");
        assert!(m.encode().contains("rule=\"b\""));
        m.declare_rules(["a"].into_iter());
        let text = m.encode();
        assert!(!text.contains("rule=\"b\""), "{text}");
        assert!(
            text.contains("warden_rule_hits_total{mode=\"enforce\",rule=\"a\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn events_are_json_lines_without_tokens() {
        let dir = std::env::temp_dir().join(format!("warden-events-{}", std::process::id()));
        let m = Metrics::new();
        let ev = Events::start(Some(&dir), 16, m.events_dropped.clone()).expect("start");
        let mut e = Event::new("key_misuse");
        e.reason = Some("forged");
        e.token_hash = Some(token_hash(&TokenId::from_jti("x")));
        ev.emit(&e);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&dir).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&dir);
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json line");
        assert_eq!(v["type"], "key_misuse");
        assert_eq!(v["reason"], "forged");
        assert_eq!(v["token_hash"].as_str().map(str::len), Some(16));
        assert!(v.get("account").is_none());
    }
}
