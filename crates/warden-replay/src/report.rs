//! What a replay found: per rule (hits, would-block, first hit, top keys, requests and
//! blocks over time), per label (the simulator's actors), and overall; as a table, JSON,
//! or a comparison of two rule sets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;
use warden_detect::{describe_key, Facts, Verdict};
use warden_rules::Rule;

use crate::format::Request;
use crate::replay::{refusing, Decided, Outcome};

/// Most distinct keys counted per rule for "top keys"; beyond, hits of new keys are
/// counted as `keys_dropped`.
pub const MAX_KEYS_PER_RULE: usize = 100_000;
/// Keys shown per rule.
pub const TOP_KEYS: usize = 5;
/// Most buckets a time series holds before it halves its resolution.
const MAX_BUCKETS: usize = 4096;
/// Labels found by a scan rather than a hash lookup.
const SCANNED_LABELS: usize = 16;
/// "After the first 10 s" of each label's traffic, for the detection report.
pub const GRACE_MS: u64 = 10_000;

/// Counts over time: `buckets[i][k]` counts series `k` in
/// `[start_s + i * step_s, start_s + (i + 1) * step_s)`. The step doubles (pairs merged)
/// whenever more than 4096 buckets would be needed, so memory stays bounded whatever the
/// log's span.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Unix seconds of bucket 0.
    pub start_s: u64,
    /// Seconds per bucket.
    pub step_s: u64,
    /// Counts per bucket.
    pub buckets: Vec<[u64; 2]>,
}

impl Series {
    fn new(start_s: u64) -> Self {
        Self {
            start_s,
            step_s: 1,
            buckets: Vec::new(),
        }
    }

    /// The bucket of `t_s`. The step is a power of two (1, doubled), so a shift rather
    /// than a division: this runs for every request and every hit.
    fn bucket(&self, t_s: u64) -> usize {
        (t_s.saturating_sub(self.start_s) >> self.step_s.trailing_zeros()) as usize
    }

    fn add(&mut self, t_s: u64, k: usize) {
        let mut i = self.bucket(t_s);
        while i >= MAX_BUCKETS {
            let merged: Vec<[u64; 2]> = self
                .buckets
                .chunks(2)
                .map(|c| {
                    let b = c.get(1).copied().unwrap_or([0, 0]);
                    [c[0][0] + b[0], c[0][1] + b[1]]
                })
                .collect();
            self.buckets = merged;
            self.step_s *= 2;
            i = self.bucket(t_s);
        }
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, [0, 0]);
        }
        self.buckets[i][k] += 1;
    }
}

/// One rule's counts.
#[derive(Debug)]
pub struct RuleStats {
    rule: Rule,
    hits: u64,
    would_block: u64,
    decided: u64,
    first_hit_ms: Option<u64>,
    /// Hits per key, by the engine's key digest ([`warden_detect::Hit::key_id`]), with
    /// the key's description, written once, when the key first hits.
    keys: HashMap<u64, (u64, Box<str>), Digest>,
    keys_dropped: u64,
    /// hits, would-block over time.
    series: Option<Series>,
}

/// One label's counts (the simulator labels each request with its actor).
#[derive(Debug, Default)]
struct LabelStats {
    requests: u64,
    passed: u64,
    first_ms: u64,
    first_refused_ms: Option<u64>,
    before_first_refusal: u64,
    after_grace: u64,
    after_grace_passed: u64,
    users: HashSet<u64, Digest>,
    users_refused: HashSet<u64, Digest>,
}

/// A hasher for keys that are already well mixed 64-bit digests (the engine's key
/// digests) or addresses: one multiply instead of SipHash on every hit and request.
#[derive(Default, Clone, Copy)]
pub(crate) struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing of the value mixed with what came before: spreads addresses
        // (consecutive integers) over the table's high bits, which hashbrown uses.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Digest = BuildHasherDefault<MixHasher>;

/// A line that was not read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BadLine {
    /// The file.
    pub file: String,
    /// Its line number, from 1.
    pub line: u64,
    /// Why.
    pub error: String,
}

/// Everything counted during a replay.
#[derive(Debug)]
pub struct Stats {
    /// Requests decided.
    pub requests: u64,
    /// Lines whose time was before an earlier line's (taken at the later time).
    pub out_of_order: u64,
    first_ms: Option<u64>,
    last_ms: u64,
    outcomes: BTreeMap<Outcome, u64>,
    rules: Vec<RuleStats>,
    /// The engine's rule names (pointers) already resolved to an index in `rules`: a
    /// hit is matched by pointer, not by hashing its name.
    by_name: Vec<(&'static str, usize)>,
    /// Usually few (the simulator has five): the first [`SCANNED_LABELS`] are found by a
    /// scan, which beats hashing the label on every line; later ones through
    /// `label_index`.
    labels: Vec<(Box<str>, LabelStats)>,
    label_index: HashMap<Box<str>, usize>,
    /// requests, refused over time.
    series: Option<Series>,
    key_buf: String,
}

impl Stats {
    pub(crate) fn new(rules: &[Rule]) -> Self {
        Self {
            requests: 0,
            out_of_order: 0,
            first_ms: None,
            last_ms: 0,
            outcomes: BTreeMap::new(),
            rules: rules
                .iter()
                .map(|r| RuleStats {
                    rule: r.clone(),
                    hits: 0,
                    would_block: 0,
                    decided: 0,
                    first_hit_ms: None,
                    keys: HashMap::default(),
                    keys_dropped: 0,
                    series: None,
                })
                .collect(),
            by_name: Vec::new(),
            labels: Vec::new(),
            label_index: HashMap::new(),
            series: None,
            key_buf: String::new(),
        }
    }

    /// The index in `rules` of the rule named `name` (an engine's name, compared by
    /// pointer first).
    fn rule_index(&mut self, name: &'static str) -> Option<usize> {
        // Names are interned (`warden_detect::intern`): one name, one address.
        if let Some((_, i)) = self.by_name.iter().find(|(n, _)| std::ptr::eq(*n, name)) {
            return Some(*i);
        }
        // Rule names are unique in a rule set (the configuration refuses duplicates).
        let i = self.rules.iter().position(|s| s.rule.name == name)?;
        // Bounded: a rule set's names, and a reload's (replay does not reload).
        if self.by_name.len() < 4 * self.rules.len() + 16 {
            self.by_name.push((name, i));
        }
        Some(i)
    }

    pub(crate) fn count(
        &mut self,
        req: &Request<'_>,
        now_ms: u64,
        d: &Decided,
        verdict: Option<&Verdict>,
        facts: Option<&Facts<'_>>,
    ) {
        self.requests += 1;
        let first = *self.first_ms.get_or_insert(now_ms);
        self.last_ms = now_ms;
        *self.outcomes.entry(d.outcome).or_default() += 1;
        let t_s = now_ms / 1000;
        let refused = !d.outcome.reached_upstream();
        let series = self.series.get_or_insert_with(|| Series::new(first / 1000));
        series.add(t_s, 0);
        if refused {
            series.add(t_s, 1);
        }
        if let (Some(v), Some(f)) = (verdict, facts) {
            for h in &v.hits {
                let Some(i) = self.rule_index(h.rule) else {
                    continue;
                };
                let Some(s) = self.rules.get_mut(i) else {
                    continue;
                };
                s.hits += 1;
                s.first_hit_ms.get_or_insert(now_ms);
                let series = s.series.get_or_insert_with(|| Series::new(first / 1000));
                series.add(t_s, 0);
                if h.action.denies() {
                    s.would_block += 1;
                    series.add(t_s, 1);
                }
                let full = s.keys.len() >= MAX_KEYS_PER_RULE;
                match s.keys.get_mut(&h.key_id) {
                    Some((n, _)) => *n += 1,
                    None if !full => {
                        describe_key(&s.rule.key, f, &mut self.key_buf);
                        s.keys.insert(h.key_id, (1, self.key_buf.as_str().into()));
                    }
                    None => s.keys_dropped += 1,
                }
            }
            if let Some(by) = d.decided_by {
                if let Some(i) = self.rule_index(by) {
                    if let Some(s) = self.rules.get_mut(i) {
                        s.decided += 1;
                        // A ban in force refuses without the rule being over its threshold.
                        if !refusing(v, by) {
                            s.would_block += 1;
                            s.series
                                .get_or_insert_with(|| Series::new(first / 1000))
                                .add(t_s, 1);
                        }
                    }
                }
            }
        }
        if let Some(label) = req.label.as_deref() {
            let scanned = self.labels.len().min(SCANNED_LABELS);
            let found = match self.labels[..scanned]
                .iter()
                .position(|(n, _)| **n == *label)
            {
                Some(i) => Some(i),
                None => self.label_index.get(label).copied(),
            };
            let at = match found {
                Some(i) => i,
                None => {
                    if self.labels.len() >= SCANNED_LABELS {
                        self.label_index.insert(label.into(), self.labels.len());
                    }
                    self.labels.push((
                        label.into(),
                        LabelStats {
                            first_ms: now_ms,
                            ..LabelStats::default()
                        },
                    ));
                    self.labels.len() - 1
                }
            };
            let l = &mut self.labels[at].1;
            l.requests += 1;
            // A client is an address: in the simulator, one person or one scraper node.
            // (Accounts would count a person twice: static assets carry no token.)
            let user = match req.ip {
                std::net::IpAddr::V4(a) => u64::from(u32::from(a)),
                std::net::IpAddr::V6(a) => {
                    let v = u128::from(a);
                    (v as u64) ^ (v >> 64) as u64 ^ (1 << 63)
                }
            };
            l.users.insert(user);
            if refused {
                if l.first_refused_ms.is_none() {
                    l.first_refused_ms = Some(now_ms);
                    l.before_first_refusal = l.requests - 1;
                }
                l.users_refused.insert(user);
            } else {
                l.passed += 1;
            }
            if now_ms >= l.first_ms + GRACE_MS {
                l.after_grace += 1;
                if !refused {
                    l.after_grace_passed += 1;
                }
            }
        }
    }

    /// The report, with the run's file names and bad lines.
    #[must_use]
    pub fn report(&self, meta: Meta) -> Report {
        let mut rules: Vec<RuleReport> = self
            .rules
            .iter()
            .map(|s| {
                let mut keys: Vec<(&str, u64)> = s.keys.values().map(|(n, k)| (&**k, *n)).collect();
                keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                RuleReport {
                    name: s.rule.name.clone(),
                    action: s.rule.action.as_str(),
                    mode: s.rule.mode.as_str(),
                    threshold: s.rule.threshold,
                    window_s: s.rule.window.as_secs(),
                    hits: s.hits,
                    would_block: s.would_block,
                    decided: s.decided,
                    first_hit_ms: s.first_hit_ms,
                    first_hit: s.first_hit_ms.map(rfc3339),
                    keys: s.keys.len() as u64,
                    keys_dropped: s.keys_dropped,
                    top_keys: keys
                        .into_iter()
                        .take(TOP_KEYS)
                        .map(|(k, n)| KeyCount {
                            key: k.to_owned(),
                            hits: n,
                        })
                        .collect(),
                    series: s.series.clone().unwrap_or_default(),
                }
            })
            .collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.hits));
        let mut labels: Vec<LabelReport> = self
            .labels
            .iter()
            .map(|(name, l)| LabelReport {
                label: name.to_string(),
                requests: l.requests,
                reached_upstream: l.passed,
                share_reached: ratio(l.passed, l.requests),
                first_refusal_after_ms: l.first_refused_ms.map(|t| t - l.first_ms),
                requests_before_first_refusal: l.first_refused_ms.map(|_| l.before_first_refusal),
                after_10s_requests: l.after_grace,
                after_10s_reached: l.after_grace_passed,
                share_reached_after_10s: ratio(l.after_grace_passed, l.after_grace),
                refused: l.requests - l.passed,
                share_refused: ratio(l.requests - l.passed, l.requests),
                users: l.users.len() as u64,
                users_refused: l.users_refused.len() as u64,
            })
            .collect();
        labels.sort_by(|a, b| a.label.cmp(&b.label));
        let reached = self.outcomes.get(&Outcome::Passed).copied().unwrap_or(0);
        Report {
            provenance: meta.provenance,
            rules_file: meta.rules_file,
            files: meta.files,
            lines: meta.lines,
            requests: self.requests,
            bad_lines: meta.bad_lines,
            bad: meta.bad,
            status_compared: meta.status_compared,
            status_mismatched: meta.status_mismatched,
            mismatches: meta.mismatches,
            out_of_order: self.out_of_order,
            first: self.first_ms.map(rfc3339),
            last: self.first_ms.map(|_| rfc3339(self.last_ms)),
            reached_upstream: reached,
            outcomes: self.outcomes.iter().map(|(o, n)| (o.name(), *n)).collect(),
            rules,
            labels,
            series: self.series.clone().unwrap_or_default(),
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// What the run knows beyond the statistics.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// `checked` (keys and ledger), `unchecked` (tokens parsed, not verified) or `none`.
    pub provenance: String,
    /// The rule file.
    pub rules_file: String,
    /// Log files.
    pub files: Vec<String>,
    /// Lines read.
    pub lines: u64,
    /// Lines not read.
    pub bad_lines: u64,
    /// The first of them.
    pub bad: Vec<BadLine>,
    /// Logged statuses compared with the replay's decisions.
    pub status_compared: u64,
    /// Of which disagreed.
    pub status_mismatched: u64,
    /// The first disagreements.
    pub mismatches: Vec<Change>,
}

/// A key and its hits.
#[derive(Debug, Clone, Serialize)]
pub struct KeyCount {
    /// `ip=192.0.2.1`.
    pub key: String,
    /// Requests over the threshold with this key.
    pub hits: u64,
}

/// One rule's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    /// Name.
    pub name: String,
    /// Action.
    pub action: &'static str,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// Threshold.
    pub threshold: u64,
    /// Window, seconds.
    pub window_s: u64,
    /// Requests that found the rule over its threshold.
    pub hits: u64,
    /// Requests the rule refused or would refuse by itself (shadow rules included; a ban
    /// in force counts).
    pub would_block: u64,
    /// Requests whose answer this rule decided (the strongest action of those that fired).
    pub decided: u64,
    /// Log time of the first hit, unix ms.
    pub first_hit_ms: Option<u64>,
    /// The same, RFC 3339.
    pub first_hit: Option<String>,
    /// Distinct keys that hit.
    pub keys: u64,
    /// Hits of keys beyond [`MAX_KEYS_PER_RULE`].
    pub keys_dropped: u64,
    /// Keys with the most hits.
    pub top_keys: Vec<KeyCount>,
    /// Hits and would-block over time.
    pub series: Series,
}

/// One label's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct LabelReport {
    /// The label.
    pub label: String,
    /// Requests.
    pub requests: u64,
    /// Of which reached the upstream.
    pub reached_upstream: u64,
    /// Their share.
    pub share_reached: f64,
    /// Refused.
    pub refused: u64,
    /// Their share.
    pub share_refused: f64,
    /// From the label's first request to its first refusal, ms.
    pub first_refusal_after_ms: Option<u64>,
    /// Requests before the first refusal.
    pub requests_before_first_refusal: Option<u64>,
    /// Requests 10 s or more after the label's first.
    pub after_10s_requests: u64,
    /// Of which reached the upstream.
    pub after_10s_reached: u64,
    /// Their share.
    pub share_reached_after_10s: f64,
    /// Distinct client addresses.
    pub users: u64,
    /// Of which had at least one request refused.
    pub users_refused: u64,
}

/// A replay's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How provenance was judged.
    pub provenance: String,
    /// The rule file.
    pub rules_file: String,
    /// Log files.
    pub files: Vec<String>,
    /// Lines read.
    pub lines: u64,
    /// Requests decided.
    pub requests: u64,
    /// Lines not read.
    pub bad_lines: u64,
    /// The first of them, with line numbers.
    pub bad: Vec<BadLine>,
    /// Logged statuses compared with the replay's decisions.
    pub status_compared: u64,
    /// Of which disagreed (a refusal the log does not show, or the reverse).
    pub status_mismatched: u64,
    /// The first disagreements: `before` the logged status, `after` the replay's.
    pub mismatches: Vec<Change>,
    /// Lines logged out of time order.
    pub out_of_order: u64,
    /// First request time.
    pub first: Option<String>,
    /// Last request time.
    pub last: Option<String>,
    /// Requests that reached the upstream.
    pub reached_upstream: u64,
    /// Requests per outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Per rule, most hits first.
    pub rules: Vec<RuleReport>,
    /// Per label.
    pub labels: Vec<LabelReport>,
    /// Requests and refusals over time.
    pub series: Series,
}

/// RFC 3339 (UTC, milliseconds) of unix milliseconds.
#[must_use]
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 7_200_000 {
        format!("{:.1} min", ms as f64 / 60_000.0)
    } else {
        format!("{:.1} h", ms as f64 / 3_600_000.0)
    }
}

fn pct(x: f64) -> String {
    if x == 0.0 {
        "0 %".into()
    } else if x < 0.0001 {
        format!("{:.4} %", x * 100.0)
    } else {
        format!("{:.2} %", x * 100.0)
    }
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        for (i, c) in cells.enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i == 0 {
                let _ = write!(out, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{c}", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    let total: usize = w.iter().sum::<usize>() + 2 * (w.len() - 1);
    let _ = writeln!(out, "{}", "-".repeat(total));
    for r in rows {
        line(out, &mut r.iter().map(String::as_str));
    }
}

impl Report {
    /// The human table.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} lines, {} requests ({} to {}), {} bad lines, {} out of order; provenance {}",
            self.lines,
            self.requests,
            self.first.as_deref().unwrap_or("-"),
            self.last.as_deref().unwrap_or("-"),
            self.bad_lines,
            self.out_of_order,
            self.provenance,
        );
        let _ = writeln!(
            out,
            "reached the upstream: {} ({})",
            self.reached_upstream,
            pct(ratio(self.reached_upstream, self.requests))
        );
        if self.status_compared > 0 {
            let _ = writeln!(
                out,
                "logged statuses compared: {}, disagreeing: {}",
                self.status_compared, self.status_mismatched
            );
            for c in &self.mismatches {
                let _ = writeln!(
                    out,
                    "  {}:{}: logged {}, replay {}",
                    c.file, c.line, c.before, c.after
                );
            }
        }
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "outcomes: {}\n", outcomes.join(", "));
        let rows: Vec<Vec<String>> = self
            .rules
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    format!(
                        "{}{}",
                        r.action,
                        if r.mode == "shadow" { " (shadow)" } else { "" }
                    ),
                    r.hits.to_string(),
                    r.would_block.to_string(),
                    r.decided.to_string(),
                    r.first_hit.clone().unwrap_or_else(|| "-".into()),
                    r.top_keys
                        .iter()
                        .take(3)
                        .map(|k| format!("{} ({})", k.key, k.hits))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "rule",
                "action",
                "hits",
                "would block",
                "decided",
                "first hit",
                "top keys",
            ],
            &rows,
        );
        if !self.labels.is_empty() {
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .labels
                .iter()
                .map(|l| {
                    vec![
                        l.label.clone(),
                        l.requests.to_string(),
                        pct(l.share_reached),
                        pct(l.share_reached_after_10s),
                        l.first_refusal_after_ms
                            .map_or_else(|| "never".into(), duration),
                        l.requests_before_first_refusal
                            .map_or_else(|| "-".into(), |n| n.to_string()),
                        format!("{}/{}", l.users_refused, l.users),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "label",
                    "requests",
                    "reached upstream",
                    "after 10 s",
                    "first refusal",
                    "requests before",
                    "users refused",
                ],
                &rows,
            );
        }
        if self.bad_lines > 0 {
            let _ = writeln!(out, "\n{} bad lines:", self.bad_lines);
            for b in &self.bad {
                let _ = writeln!(out, "  {}:{}: {}", b.file, b.line, b.error);
            }
            if self.bad_lines > self.bad.len() as u64 {
                let _ = writeln!(
                    out,
                    "  ... and {} more",
                    self.bad_lines - self.bad.len() as u64
                );
            }
        }
        out
    }
}

/// A request whose outcome differs between the two rule sets.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// File.
    pub file: String,
    /// Line number.
    pub line: u64,
    /// Outcome under the first rule set.
    pub before: String,
    /// Outcome under the other.
    pub after: String,
}

/// Two rule sets on the same logs.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// Under `--rules`.
    pub before: Report,
    /// Under `--diff`.
    pub after: Report,
    /// Requests whose outcome changed.
    pub changed: u64,
    /// Counts of each `before -> after` change.
    pub transitions: BTreeMap<String, u64>,
    /// The first changed requests.
    pub examples: Vec<Change>,
}

impl Diff {
    /// The human table.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} requests; reached the upstream: {} -> {} ; {} requests changed outcome\n",
            self.before.requests,
            self.before.reached_upstream,
            self.after.reached_upstream,
            self.changed
        );
        let mut names: Vec<&str> = self.before.rules.iter().map(|r| r.name.as_str()).collect();
        for r in &self.after.rules {
            if !names.contains(&r.name.as_str()) {
                names.push(&r.name);
            }
        }
        let find = |rep: &'_ Report, n: &str| rep.rules.iter().find(|r| r.name == n).cloned();
        let cell = |r: &Option<RuleReport>, f: fn(&RuleReport) -> u64| {
            r.as_ref().map_or_else(|| "-".into(), |r| f(r).to_string())
        };
        let rows: Vec<Vec<String>> = names
            .iter()
            .map(|n| {
                let (a, b) = (find(&self.before, n), find(&self.after, n));
                let status = match (&a, &b) {
                    (Some(_), None) => "removed",
                    (None, Some(_)) => "added",
                    (Some(x), Some(y))
                        if x.threshold != y.threshold
                            || x.action != y.action
                            || x.mode != y.mode
                            || x.window_s != y.window_s =>
                    {
                        "changed"
                    }
                    _ => "",
                };
                vec![
                    (*n).to_owned(),
                    status.to_owned(),
                    cell(&a, |r| r.hits),
                    cell(&b, |r| r.hits),
                    cell(&a, |r| r.would_block),
                    cell(&b, |r| r.would_block),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "rule",
                "",
                "hits before",
                "hits after",
                "would block before",
                "would block after",
            ],
            &rows,
        );
        if !self.transitions.is_empty() {
            out.push('\n');
            for (t, n) in &self.transitions {
                let _ = writeln!(out, "{t}: {n}");
            }
            for c in &self.examples {
                let _ = writeln!(out, "  {}:{}: {} -> {}", c.file, c.line, c.before, c.after);
            }
        }
        out
    }
}
