//! Warden's rule model.
//!
//! A rule says: for requests that **match** (route class, method, path, conditions),
//! group them by a **key** (client IP, IP prefix, account, token, header, claim, or a
//! composite), **measure** each group (request count, or distinct values of a field)
//! over a sliding **window**, and when the measure exceeds the **threshold**, take the
//! **action** (log, rate-limit, block, ban, revoke the token, tag the request) — or, in
//! shadow mode, only record what it would have done.
//!
//! These types are built by `warden-config` from rule files and read by
//! `warden-detect`; they are never deserialized directly.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::hash::{Hash, Hasher};
use std::time::Duration;

/// What warden does on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// Token provenance enforced.
    Protected,
    /// Login/token endpoints: responses are watched for issued tokens.
    Issuance,
    /// Proxied without enforcement, still counted.
    Open,
}

impl RouteClass {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Protected => "protected",
            Self::Issuance => "issuance",
            Self::Open => "open",
        }
    }
}

/// A path pattern: exact, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPattern {
    /// The whole path.
    Exact(String),
    /// Any path starting with this.
    Prefix(String),
}

impl PathPattern {
    /// Parses `"/a/b"` (exact) or `"/a/*"` (prefix); `None` if not of that form.
    #[must_use]
    pub fn parse(text: &str, lowercase: bool) -> Option<Self> {
        let star = text.find('*');
        if !text.starts_with('/') || star.is_some_and(|i| i != text.len() - 1) {
            return None;
        }
        let t = if lowercase {
            text.to_ascii_lowercase()
        } else {
            text.to_owned()
        };
        Some(match t.strip_suffix('*') {
            Some(p) => Self::Prefix(p.to_owned()),
            None => Self::Exact(t),
        })
    }

    /// Whether a (normalized) path matches.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
        }
    }

    /// Whether every path this pattern matches is also matched by `other`.
    #[must_use]
    pub fn covered_by(&self, other: &PathPattern) -> bool {
        match (other, self) {
            (PathPattern::Prefix(a), PathPattern::Prefix(b) | PathPattern::Exact(b)) => {
                b.starts_with(a.as_str())
            }
            (PathPattern::Exact(a), PathPattern::Exact(b)) => a == b,
            (PathPattern::Exact(_), PathPattern::Prefix(_)) => false,
        }
    }
}

/// A request attribute a rule can key on, measure, or test.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// The client address.
    Ip,
    /// The client's network: IPv4 addresses cut to `v4` bits, IPv6 to `v6` bits.
    IpPrefix {
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// The verified token's account claim.
    Account,
    /// The verified token's ledger id.
    Token,
    /// The matched route's name.
    Route,
    /// The normalized path.
    Path,
    /// The request method.
    Method,
    /// A request header (name lower-cased).
    Header(String),
    /// A claim of the verified token.
    Claim(String),
}

impl Field {
    /// The name used in rule files (`ip`, `ip_prefix`, `header:x-device-id`...).
    #[must_use]
    pub fn name(&self) -> String {
        match self {
            Field::Ip => "ip".into(),
            Field::IpPrefix { .. } => "ip_prefix".into(),
            Field::Account => "account".into(),
            Field::Token => "token".into(),
            Field::Route => "route".into(),
            Field::Path => "path".into(),
            Field::Method => "method".into(),
            Field::Header(h) => format!("header:{h}"),
            Field::Claim(c) => format!("claim:{c}"),
        }
    }
}

/// What is measured per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Measure {
    /// Requests.
    Count,
    /// Distinct values of a field.
    Distinct(Field),
}

/// A condition on a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The field equals a value.
    Equals(Field, String),
    /// The field starts with a value.
    Prefix(Field, String),
    /// The field is present.
    Present(Field),
    /// The field is absent.
    Absent(Field),
}

/// What a rule does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Record an event only.
    Log,
    /// Answer 429 with `Retry-After` while over the threshold.
    RateLimit,
    /// Answer 403 while over the threshold.
    Block,
    /// Deny the key for a time, even once under the threshold.
    Ban(Duration),
    /// Revoke the request's token in the ledger and refuse the request.
    RevokeToken,
    /// Pass the request with a header naming the rule, so the application can step up.
    Tag,
}

impl Action {
    /// The label value.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::RateLimit => "rate_limit",
            Action::Block => "block",
            Action::Ban(_) => "ban",
            Action::RevokeToken => "revoke_token",
            Action::Tag => "tag",
        }
    }

    /// Which action wins when several rules fire: higher is stronger.
    #[must_use]
    pub fn severity(&self) -> u8 {
        match self {
            Action::Log => 0,
            Action::Tag => 1,
            Action::RateLimit => 2,
            Action::Block => 3,
            Action::RevokeToken => 4,
            Action::Ban(_) => 5,
        }
    }

    /// Whether the action refuses the request.
    #[must_use]
    pub fn denies(&self) -> bool {
        self.severity() >= 2
    }
}

/// Enforce, or only record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Act.
    Enforce,
    /// Count and log what would have happened; never affect the request.
    Shadow,
}

impl Mode {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// Where a rule's counts live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Counted by each node on its own (the default).
    #[default]
    Local,
    /// Counted across the fleet: each node adds the other nodes' counts, synchronized
    /// through Redis every sync interval (fleet mode only; count rules only).
    Fleet,
}

impl Scope {
    /// The name used in rule files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Fleet => "fleet",
        }
    }
}

/// Which requests a rule looks at. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Match {
    /// Route classes.
    pub classes: Vec<RouteClass>,
    /// Methods (upper-case).
    pub methods: Vec<String>,
    /// Path patterns.
    pub paths: Vec<PathPattern>,
    /// Further conditions, all of which must hold.
    pub conditions: Vec<Condition>,
}

/// One behaviour rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique name (a metric label).
    pub name: String,
    /// What it catches, for people.
    pub description: String,
    /// Which requests.
    pub matcher: Match,
    /// Grouping key: one or more fields.
    pub key: Vec<Field>,
    /// What is measured.
    pub measure: Measure,
    /// Sliding window.
    pub window: Duration,
    /// Fires when the measure exceeds this.
    pub threshold: u64,
    /// What it does.
    pub action: Action,
    /// Enforce or shadow.
    pub mode: Mode,
    /// Order among rules of equal action severity (lower first).
    pub priority: i64,
    /// Node-local or fleet-wide counts.
    pub scope: Scope,
}

impl Rule {
    /// Names of the token claims the rule reads (in its key, measure or conditions).
    #[must_use]
    pub fn claims_used(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |f: &Field| {
            if let Field::Claim(c) = f {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        };
        self.key.iter().for_each(&mut add);
        if let Measure::Distinct(f) = &self.measure {
            add(f);
        }
        for c in &self.matcher.conditions {
            match c {
                Condition::Equals(f, _)
                | Condition::Prefix(f, _)
                | Condition::Present(f)
                | Condition::Absent(f) => add(f),
            }
        }
        out
    }

    /// Identity of the rule's state: name, key, measure and window. Rules whose
    /// fingerprint survives a reload keep their counters and bans; a changed threshold,
    /// action or mode keeps them too.
    #[must_use]
    pub fn state_fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut h);
        self.key.hash(&mut h);
        self.measure.hash(&mut h);
        self.window.hash(&mut h);
        self.matcher.hash(&mut h);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(threshold: u64) -> Rule {
        Rule {
            name: "r".into(),
            description: String::new(),
            matcher: Match::default(),
            key: vec![Field::Ip],
            measure: Measure::Count,
            window: Duration::from_secs(60),
            threshold,
            action: Action::Block,
            mode: Mode::Enforce,
            priority: 0,
            scope: Scope::Local,
        }
    }

    #[test]
    fn threshold_changes_keep_state_but_window_changes_do_not() {
        let a = rule(10);
        let b = rule(20);
        assert_eq!(a.state_fingerprint(), b.state_fingerprint());
        let mut c = rule(10);
        c.window = Duration::from_secs(61);
        assert_ne!(a.state_fingerprint(), c.state_fingerprint());
    }

    #[test]
    fn patterns() {
        let p = PathPattern::parse("/account/*", false).expect("pattern");
        assert!(p.matches("/account/x"));
        assert!(PathPattern::parse("/a*b", false).is_none());
        assert!(PathPattern::parse("a", false).is_none());
        let e = PathPattern::parse("/account/x", false).expect("pattern");
        assert!(e.covered_by(&p));
        assert!(!p.covered_by(&e));
    }

    #[test]
    fn severity_orders_actions() {
        assert!(Action::Ban(Duration::from_secs(1)).severity() > Action::Block.severity());
        assert!(!Action::Tag.denies());
        assert!(Action::RateLimit.denies());
    }
}
