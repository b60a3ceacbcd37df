//! Rule files: TOML with `[[rules]]` entries, checked all at once, compiled to
//! [`warden_rules::Rule`].
//!
//! ```toml
//! [[rules]]
//! name = "accounts-per-ip"
//! description = "One address walking through many accounts (the 2025 scraper: ~15 000 per IP)."
//! classes = ["protected"]          # route classes; default all
//! methods = ["GET"]                # default all
//! paths = ["/account/*"]           # default all
//! when = [{ field = "header:user-agent", prefix = "python-" }]   # equals / prefix / present
//! key = ["ip"]                     # ip, ip_prefix, account, token, route, path, method, header:NAME, claim:NAME
//! measure = "distinct"             # or "count" (default)
//! distinct = "account"             # with measure = "distinct"
//! window = "1h"
//! threshold = 50                   # fires when the measure exceeds it
//! action = "ban"                   # log, rate_limit, block, ban, revoke_token, tag
//! ban_for = "6h"                   # with action = "ban"
//! mode = "enforce"                 # or "shadow"
//! priority = 10                    # lower first among equally severe actions
//! scope = "local"                  # or "fleet": counts shared by every node (fleet mode, count rules)
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, ValueDeserializer};
use toml::Spanned;
use warden_rules::{
    Action, Condition, Field, Match, Measure, Mode, PathPattern, RouteClass, Rule, Scope,
};

use crate::diag::{Diagnostic, Severity, Sink};
use crate::raw;
use crate::values;

/// A rule and where it was written.
#[derive(Debug, Clone)]
pub struct Located {
    /// The rule.
    pub rule: Rule,
    /// Its file.
    pub file: PathBuf,
    /// Line of its `name`.
    pub line: usize,
    /// Column of its `name`.
    pub column: usize,
}

/// Reads and compiles a rule file; diagnostics include warnings.
pub fn load_rule_file(path: &Path) -> (Vec<Located>, Vec<Diagnostic>) {
    match std::fs::read_to_string(path) {
        Ok(src) => compile_rule_str(path, &src),
        Err(e) => (
            Vec::new(),
            vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_owned(),
                line: 1,
                column: 1,
                message: format!("cannot read the rule file: {e}"),
            }],
        ),
    }
}

/// Compiles rule-file text.
pub fn compile_rule_str(path: &Path, src: &str) -> (Vec<Located>, Vec<Diagnostic>) {
    let mut sink = Sink::new(path, src);
    let (doc, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        for e in &syntax {
            sink.toml_error(e, 0..0);
        }
        return (Vec::new(), sink.diagnostics);
    }
    let mut out = Vec::new();
    for (key, value) in doc.get_ref().iter() {
        if key.get_ref().as_ref() != "rules" {
            sink.error(
                key.span(),
                format!(
                    "unknown section `{}` in a rule file; expected [[rules]]",
                    key.get_ref()
                ),
            );
            continue;
        }
        let Some(items) = value.get_ref().as_array() else {
            sink.error(
                value.span(),
                "`rules` must be an array of tables ([[rules]])",
            );
            continue;
        };
        for item in items.iter() {
            match <raw::Rule as serde::Deserialize>::deserialize(ValueDeserializer::from(
                item.clone(),
            )) {
                Ok(r) => {
                    let (line, column) = sink.position(r.name.span().start);
                    if let Some(rule) = compile_rule(&mut sink, &r) {
                        out.push(Located {
                            rule,
                            file: path.to_owned(),
                            line,
                            column,
                        });
                    }
                }
                Err(e) => sink.toml_error(&e, item.span()),
            }
        }
    }
    (out, sink.diagnostics)
}

fn field(sink: &mut Sink<'_>, what: &str, v: &Spanned<String>, v4: u8, v6: u8) -> Option<Field> {
    let s = v.get_ref().as_str();
    let f = match s {
        "ip" => Field::Ip,
        "ip_prefix" => Field::IpPrefix { v4, v6 },
        "account" => Field::Account,
        "token" => Field::Token,
        "route" => Field::Route,
        "path" => Field::Path,
        "method" => Field::Method,
        _ => match s.split_once(':') {
            Some(("header", h)) if !h.is_empty() => Field::Header(h.to_ascii_lowercase()),
            Some(("claim", c)) if !c.is_empty() => Field::Claim(c.to_owned()),
            _ => {
                sink.error(
                    v.span(),
                    format!("{what} {s:?} is not a field; expected ip, ip_prefix, account, token, route, path, method, header:NAME or claim:NAME"),
                );
                return None;
            }
        },
    };
    Some(f)
}

fn span_of<T>(v: &Spanned<T>) -> Range<usize> {
    v.span()
}

fn compile_rule(sink: &mut Sink<'_>, r: &raw::Rule) -> Option<Rule> {
    let before = sink
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let name = r.name.get_ref().clone();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        sink.error(
            r.name.span(),
            format!("rule name {name:?} must be non-empty ASCII letters, digits, '_' or '-' (it is a metric label)"),
        );
    }
    let prefix = |sink: &mut Sink<'_>, v: &Option<Spanned<i64>>, max: i64, default: u8| -> u8 {
        match v {
            None => default,
            Some(p) if (0..=max).contains(p.get_ref()) => {
                u8::try_from(*p.get_ref()).unwrap_or(default)
            }
            Some(p) => {
                sink.error(
                    p.span(),
                    format!("prefix length {} is out of range 0..={max}", p.get_ref()),
                );
                default
            }
        }
    };
    let v4 = prefix(sink, &r.ip_prefix_v4, 32, 24);
    let v6 = prefix(sink, &r.ip_prefix_v6, 128, 64);
    let classes_opts = [
        ("protected", RouteClass::Protected),
        ("issuance", RouteClass::Issuance),
        ("open", RouteClass::Open),
    ];
    let mut matcher = Match::default();
    if let Some(cs) = &r.classes {
        for c in cs.get_ref() {
            if let Some(c) = values::one_of(sink, "classes", c, &classes_opts) {
                matcher.classes.push(c);
            }
        }
    }
    if let Some(ms) = &r.methods {
        for m in ms.get_ref() {
            let up = m.get_ref().to_ascii_uppercase();
            if ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].contains(&up.as_str()) {
                matcher.methods.push(up);
            } else {
                sink.error(
                    m.span(),
                    format!(
                        "method {:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
                        m.get_ref()
                    ),
                );
            }
        }
    }
    if let Some(ps) = &r.paths {
        for p in ps.get_ref() {
            match PathPattern::parse(p.get_ref(), false) {
                Some(pat) => matcher.paths.push(pat),
                None => sink.error(
                    p.span(),
                    format!(
                        "path {:?} must start with '/' and may only end with '*' (prefix match)",
                        p.get_ref()
                    ),
                ),
            }
        }
    }
    if let Some(ws) = &r.when {
        for w in ws.get_ref() {
            let w = w.get_ref();
            let Some(f) = field(sink, "when.field", &w.field, v4, v6) else {
                continue;
            };
            let cond = match (&w.equals, &w.prefix, &w.present) {
                (Some(e), None, None) => Condition::Equals(f, e.get_ref().clone()),
                (None, Some(p), None) => Condition::Prefix(f, p.get_ref().clone()),
                (None, None, Some(b)) if *b.get_ref() => Condition::Present(f),
                (None, None, Some(_)) => Condition::Absent(f),
                _ => {
                    sink.error(
                        w.field.span(),
                        "a `when` condition takes exactly one of equals, prefix, present",
                    );
                    continue;
                }
            };
            matcher.conditions.push(cond);
        }
    }
    let mut key = Vec::new();
    for k in r.key.get_ref() {
        if let Some(f) = field(sink, "key", k, v4, v6) {
            key.push(f);
        }
    }
    if r.key.get_ref().is_empty() {
        sink.error(
            r.key.span(),
            format!("rule {name:?}: key is empty; expected fields like [\"ip\"] or [\"account\"]"),
        );
    }
    let measure = match (
        r.measure.as_ref().map(|m| m.get_ref().as_str()),
        &r.distinct,
    ) {
        (None | Some("count"), None) => Some(Measure::Count),
        (Some("distinct"), Some(d)) => field(sink, "distinct", d, v4, v6).map(Measure::Distinct),
        (Some("distinct"), None) => {
            sink.error(
                span_of(r.measure.as_ref()?),
                format!("rule {name:?}: measure = \"distinct\" needs distinct = FIELD"),
            );
            None
        }
        (None | Some("count"), Some(d)) => {
            sink.error(
                d.span(),
                format!("rule {name:?}: distinct is only meaningful with measure = \"distinct\""),
            );
            None
        }
        (Some(other), _) => {
            sink.error(
                span_of(r.measure.as_ref()?),
                format!("measure = {other:?} is not one of: count, distinct"),
            );
            None
        }
    };
    let window = values::duration(sink, "window", &r.window);
    if let Some(w) = window {
        if w < Duration::from_secs(1) || w > Duration::from_secs(30 * 86_400) {
            sink.error(
                r.window.span(),
                format!(
                    "window = {:?} is out of range; expected 1s to 30d",
                    r.window.get_ref()
                ),
            );
        }
    }
    let threshold = *r.threshold.get_ref();
    if threshold < 0 {
        sink.error(
            r.threshold.span(),
            format!("threshold = {threshold} must be zero or more"),
        );
    }
    let actions = [
        ("log", 0),
        ("rate_limit", 1),
        ("block", 2),
        ("ban", 3),
        ("revoke_token", 4),
        ("tag", 5),
    ];
    let action = match values::one_of(sink, "action", &r.action, &actions) {
        Some(3) => match &r.ban_for {
            Some(b) => values::duration(sink, "ban_for", b).map(Action::Ban),
            None => {
                sink.error(
                    r.action.span(),
                    format!("rule {name:?}: action = \"ban\" needs ban_for, like \"1h\""),
                );
                None
            }
        },
        Some(n) => {
            if let Some(b) = &r.ban_for {
                sink.error(
                    b.span(),
                    format!("rule {name:?}: ban_for is only meaningful with action = \"ban\""),
                );
            }
            Some(match n {
                0 => Action::Log,
                1 => Action::RateLimit,
                2 => Action::Block,
                4 => Action::RevokeToken,
                _ => Action::Tag,
            })
        }
        None => None,
    };
    let mode = match &r.mode {
        Some(m) => values::one_of(
            sink,
            "mode",
            m,
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        ),
        None => Some(Mode::Enforce),
    };
    let scope = match &r.scope {
        Some(s) => values::one_of(
            sink,
            "scope",
            s,
            &[("local", Scope::Local), ("fleet", Scope::Fleet)],
        ),
        None => Some(Scope::Local),
    };
    if let (Some(Scope::Fleet), Some(Measure::Distinct(_)), Some(s)) = (scope, &measure, &r.scope) {
        sink.warn(
            s.span(),
            format!("rule {name:?}: scope = \"fleet\" on a distinct rule: distinct counts are not shared between nodes, each node counts the values it sees (only count rules are fleet-wide)"),
        );
    }
    let errors = sink
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let (Some(measure), Some(window), Some(action), Some(mode), Some(scope)) =
        (measure, window, action, mode, scope)
    else {
        return None;
    };
    if errors > before {
        return None;
    }
    let rule = Rule {
        name,
        description: r
            .description
            .as_ref()
            .map(|d| d.get_ref().clone())
            .unwrap_or_default(),
        matcher,
        key,
        measure,
        window,
        threshold: u64::try_from(threshold).unwrap_or(0),
        action,
        mode,
        priority: r.priority.as_ref().map_or(0, |p| *p.get_ref()),
        scope,
    };
    never_fires(sink, &rule, r.name.span());
    Some(rule)
}

/// Warns about a rule that cannot fire.
fn never_fires(sink: &mut Sink<'_>, r: &Rule, at: Range<usize>) {
    let token_field = |f: &Field| matches!(f, Field::Account | Field::Token | Field::Claim(_));
    let needs_token = r.key.iter().any(token_field)
        || matches!(&r.measure, Measure::Distinct(f) if token_field(f));
    if needs_token
        && !r.matcher.classes.is_empty()
        && !r.matcher.classes.contains(&RouteClass::Protected)
    {
        sink.warn(
            at.clone(),
            format!(
                "rule {:?} uses account, token or claims but matches no protected route: only protected routes carry verified tokens, so it never fires",
                r.name
            ),
        );
    }
    if let Measure::Distinct(f) = &r.measure {
        if r.key.contains(f) && r.threshold >= 1 {
            sink.warn(
                at.clone(),
                format!("rule {:?} counts distinct {} per key that includes {}: at most 1, it never exceeds {}", r.name, f.name(), f.name(), r.threshold),
            );
        }
    }
    if r.action == Action::RevokeToken
        && !r.matcher.classes.is_empty()
        && !r.matcher.classes.contains(&RouteClass::Protected)
    {
        sink.warn(at, format!("rule {:?} revokes tokens but matches no protected route: there is no verified token to revoke", r.name));
    }
}

/// Checks rules across files: duplicate names are errors, shadowed rules warnings.
pub fn cross_check(rules: &[Located]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let at = |l: &Located, severity, message| Diagnostic {
        severity,
        file: l.file.clone(),
        line: l.line,
        column: l.column,
        message,
    };
    for (i, b) in rules.iter().enumerate() {
        for a in &rules[..i] {
            if a.rule.name == b.rule.name {
                out.push(at(
                    b,
                    Severity::Error,
                    format!(
                        "rule name {:?} is already used at {}:{}:{}",
                        b.rule.name,
                        a.file.display(),
                        a.line,
                        a.column
                    ),
                ));
            }
        }
        for a in rules.iter() {
            if std::ptr::eq(a, b) {
                continue;
            }
            let (ra, rb) = (&a.rule, &b.rule);
            let same_state = ra.matcher == rb.matcher
                && ra.key == rb.key
                && ra.measure == rb.measure
                && ra.window == rb.window;
            let a_wins = ra.mode == Mode::Enforce
                && ra.action.denies()
                && rb.action.denies()
                && (ra.action.severity(), -ra.priority) > (rb.action.severity(), -rb.priority)
                && ra.threshold <= rb.threshold;
            if same_state && a_wins {
                out.push(at(
                    b,
                    Severity::Warning,
                    format!(
                        "rule {:?} is shadowed by rule {:?} ({}:{}): same requests, key and window, a lower or equal threshold and a stronger action, so it never decides",
                        rb.name,
                        ra.name,
                        a.file.display(),
                        a.line
                    ),
                ));
            }
        }
    }
    out
}
