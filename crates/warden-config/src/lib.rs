//! Warden's configuration.
//!
//! Users write TOML ([`raw`]); [`load`] checks all of it and reports **every** problem at
//! once as `file:line:column: error: message`, then compiles it into [`model::Config`],
//! which is never deserialized directly. Syntax errors are all reported (the TOML parser
//! recovers); each section, each `[[keys]]` and each `[[routes]]` entry is read on its
//! own so that a type error in one does not hide errors in the others.
//!
//! ```
//! let src = r#"
//! [upstream]
//! peers = ["127.0.0.1:8081"]
//! [[routes]]
//! name = "account"
//! class = "protected"
//! paths = ["/account/*"]
//! "#;
//! let loaded = warden_config::compile_str("warden.toml".as_ref(), src).unwrap();
//! assert_eq!(loaded.config.routes.list[0].name, "account");
//!
//! let bad = "[upstream]\npeers = [\"nowhere\"]\n[token]\nleeway = \"soon\"\n";
//! let diagnostics = warden_config::compile_str("warden.toml".as_ref(), bad).unwrap_err();
//! let errors: Vec<_> = diagnostics.iter().filter(|d| d.severity == warden_config::Severity::Error).collect();
//! assert_eq!(errors.len(), 2);
//! assert!(errors[0].to_string().starts_with("warden.toml:2:10: error:"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod diag;
pub mod model;
pub mod path;
#[allow(missing_docs)]
pub mod raw;
pub mod rules;
mod values;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;
use warden_core::keys::{specs_from_jwks, KeyMaterial, KeyRegistry, KeySpec, KeyState};
use warden_core::token::parse_alg;
use warden_core::verify::Policy;

use diag::Sink;
pub use diag::{Diagnostic, Severity};
use model::*;
use raw::S;

/// A configuration that compiled, and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Non-fatal oddities.
    pub warnings: Vec<Diagnostic>,
}

/// Reads and compiles a configuration file.
pub fn load(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    match std::fs::read_to_string(path) {
        Ok(src) => compile_str(path, &src),
        Err(e) => Err(vec![Diagnostic {
            severity: Severity::Error,
            file: path.to_owned(),
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
        }]),
    }
}

/// Checks one file, a configuration or a rule file (a file whose only section is
/// `[[rules]]`): the warnings if it is valid, every diagnostic if not.
pub fn check_file(path: &Path) -> Result<Vec<Diagnostic>, Vec<Diagnostic>> {
    let src = std::fs::read_to_string(path).unwrap_or_default();
    let is_rule_file = DeTable::parse(&src)
        .map(|t| {
            !t.get_ref().is_empty()
                && t.get_ref().iter().all(|(k, _)| {
                    k.get_ref().as_ref() == "rules"
                        && t.get_ref()
                            .get("rules")
                            .is_some_and(|v| v.get_ref().is_array())
                })
        })
        .unwrap_or(false);
    if is_rule_file {
        let (located, mut diags) = rules::load_rule_file(path);
        diags.extend(rules::cross_check(&located));
        if diags.iter().any(|d| d.severity == Severity::Error) {
            Err(diags)
        } else {
            Ok(diags)
        }
    } else {
        load(path).map(|l| l.warnings)
    }
}

/// Compiles configuration text; `path` names it in diagnostics and anchors relative
/// paths (key files, the ledger file).
pub fn compile_str(path: &Path, src: &str) -> Result<Loaded, Vec<Diagnostic>> {
    let mut sink = Sink::new(path, src);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let (doc, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        for e in &syntax {
            sink.toml_error(e, 0..0);
        }
        return Err(sink.diagnostics);
    }
    let mut c = Compiler {
        sink,
        base,
        sections: Sections::default(),
        failed: Vec::new(),
        key_files: Vec::new(),
    };
    c.read_sections(doc.get_ref());
    let config = c.compile(path);
    let mut diagnostics = c.sink.diagnostics;
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    match config {
        Some(config) if !diagnostics.iter().any(|d| d.severity == Severity::Error) => Ok(Loaded {
            config,
            warnings: diagnostics,
        }),
        _ => Err(diagnostics),
    }
}

#[derive(Default)]
struct Sections {
    server: raw::Server,
    admin: raw::Admin,
    upstream: raw::Upstream,
    upstream_span: Option<Range<usize>>,
    client_ip: raw::ClientIp,
    token: raw::Token,
    keys: Vec<(raw::Key, Range<usize>)>,
    jwks: raw::Jwks,
    ledger: raw::Ledger,
    routes: Vec<(raw::Route, Range<usize>)>,
    routing: raw::Routing,
    rules: raw::Rules,
    events: raw::Events,
    limits: raw::Limits,
    state: raw::State,
    fleet: Option<(raw::Fleet, Range<usize>)>,
}

const SECTIONS: &str =
    "server, admin, upstream, client_ip, token, keys, jwks, ledger, routes, routing, rules, events, limits, state, fleet";

struct Compiler<'a> {
    sink: Sink<'a>,
    base: PathBuf,
    sections: Sections,
    failed: Vec<&'static str>,
    /// Every key and JWKS file read, for [`Config::key_files`].
    key_files: Vec<PathBuf>,
}

impl Compiler<'_> {
    fn de<T: DeserializeOwned + Default>(
        &mut self,
        name: &'static str,
        v: &Spanned<DeValue<'_>>,
    ) -> T {
        match T::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(t) => t,
            Err(e) => {
                self.sink.toml_error(&e, v.span());
                // Checks that need this section are skipped: its error is already said.
                self.failed.push(name);
                T::default()
            }
        }
    }

    fn de_list<T: DeserializeOwned>(
        &mut self,
        name: &str,
        v: &Spanned<DeValue<'_>>,
    ) -> Vec<(T, Range<usize>)> {
        let Some(items) = v.get_ref().as_array() else {
            self.sink.error(
                v.span(),
                format!(
                    "`{name}` must be an array of tables ([[{name}]]), found a {}",
                    v.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match T::deserialize(ValueDeserializer::from(item.clone())) {
                Ok(t) => out.push((t, item.span())),
                Err(e) => self.sink.toml_error(&e, item.span()),
            }
        }
        out
    }

    fn read_sections(&mut self, doc: &DeTable<'_>) {
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "server" => self.sections.server = self.de("server", value),
                "admin" => self.sections.admin = self.de("admin", value),
                "upstream" => {
                    self.sections.upstream_span = Some(key.span());
                    self.sections.upstream = self.de("upstream", value);
                }
                "client_ip" => self.sections.client_ip = self.de("client_ip", value),
                "token" => self.sections.token = self.de("token", value),
                "jwks" => self.sections.jwks = self.de("jwks", value),
                "ledger" => self.sections.ledger = self.de("ledger", value),
                "routing" => self.sections.routing = self.de("routing", value),
                "events" => self.sections.events = self.de("events", value),
                "limits" => self.sections.limits = self.de("limits", value),
                "state" => self.sections.state = self.de("state", value),
                "fleet" => {
                    let f = self.de("fleet", value);
                    self.sections.fleet = Some((f, key.span()));
                }
                "rules" if value.get_ref().is_table() => self.sections.rules = self.de("rules", value),
                "rules" => self.sink.error(
                    key.span(),
                    "[[rules]] belong in rule files; list them in the configuration with [rules] files = [\"rules/default.toml\"]",
                ),
                "keys" => self.sections.keys = self.de_list("keys", value),
                "routes" => self.sections.routes = self.de_list("routes", value),
                other => self.sink.error(
                    key.span(),
                    format!("unknown section `{other}`, expected one of: {SECTIONS}"),
                ),
            }
        }
    }

    fn compile(&mut self, path: &Path) -> Option<Config> {
        let server = self.server();
        let admin = self.admin();
        let upstream = self.upstream();
        let client_ip = self.client_ip();
        let (token, policy) = self.token();
        let keys = self.keys();
        let fleet = self.fleet();
        let ledger = self.ledger(fleet.is_some());
        let routes = self.routes();
        let rules = self.rules();
        let events = self.events();
        let limits = self.limits();
        let state = self.state(&ledger);
        if fleet.is_none() {
            for r in rules
                .list
                .iter()
                .filter(|r| r.scope == warden_rules::Scope::Fleet)
            {
                self.sink.diagnostics.push(Diagnostic {
                    severity: Severity::Warning,
                    file: path.to_owned(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "rule {:?} has scope = \"fleet\" but there is no [fleet] section: it counts on this node only",
                        r.name
                    ),
                });
            }
        }
        Some(Config {
            source: path.to_owned(),
            server,
            admin,
            upstream: upstream?,
            client_ip,
            token,
            policy,
            keys,
            key_files: std::mem::take(&mut self.key_files),
            ledger,
            routes,
            rules,
            events,
            limits,
            state,
            fleet,
        })
    }

    fn fleet(&mut self) -> Option<Fleet> {
        let (f, section) = self.sections.fleet.take()?;
        if self.failed.contains(&"fleet") {
            return None;
        }
        let redis_url = match &f.redis_url {
            None => {
                self.sink.error(
                    section.clone(),
                    "[fleet] needs redis_url, like \"redis://127.0.0.1:6379/0\"",
                );
                String::new()
            }
            Some(u) => {
                let url = u.get_ref();
                let scheme_ok = ["redis://", "redis+unix://", "unix://"]
                    .iter()
                    .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
                if url.starts_with("rediss://") {
                    self.sink.error(
                        u.span(),
                        format!("fleet.redis_url = {url:?}: TLS (rediss://) is not built in; reach Redis over a private network or a local TLS tunnel and use redis://"),
                    );
                } else if !scheme_ok {
                    self.sink.error(
                        u.span(),
                        format!("fleet.redis_url = {url:?} is not a Redis URL; expected redis://host:port[/db] or redis+unix:///path"),
                    );
                }
                url.clone()
            }
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let node = match &f.node {
            Some(n) => {
                if !name_ok(n.get_ref()) {
                    self.sink.error(
                        n.span(),
                        format!(
                            "fleet.node = {:?}: expected 1 to 64 letters, digits, '-', '_' or '.'",
                            n.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_default();
                if name_ok(&host) {
                    host
                } else {
                    self.sink.error(
                        section.clone(),
                        format!("[fleet] has no node and the host name {host:?} cannot serve as one; set fleet.node, unique in the fleet"),
                    );
                    String::new()
                }
            }
        };
        let namespace = match &f.namespace {
            Some(n) => {
                if !name_ok(n.get_ref()) {
                    self.sink.error(
                        n.span(),
                        format!("fleet.namespace = {:?}: expected 1 to 64 letters, digits, '-', '_' or '.'", n.get_ref()),
                    );
                }
                n.get_ref().clone()
            }
            None => "warden".to_owned(),
        };
        let key_file = match &f.key_file {
            None => {
                self.sink.error(
                    section.clone(),
                    "[fleet] needs key_file: a file with the fleet's shared secret (at least 16 bytes, the same on every node), made with `head -c 32 /dev/urandom > fleet.key`",
                );
                PathBuf::new()
            }
            Some(k) => {
                let path = self.path(k.get_ref());
                match std::fs::read(&path) {
                    Ok(b) if trim_ascii_end(b.clone()).len() >= 16 => {}
                    Ok(b) => self.sink.error(
                        k.span(),
                        format!(
                            "fleet.key_file: {} holds {} bytes; expected at least 16 random ones",
                            path.display(),
                            b.len()
                        ),
                    ),
                    Err(e) => self.sink.error(
                        k.span(),
                        format!("fleet.key_file: cannot read {}: {e}", path.display()),
                    ),
                }
                path
            }
        };
        let bounded = |c: &mut Self,
                       field: &str,
                       v: &Option<S<String>>,
                       default: Duration,
                       lo: Duration,
                       hi: Duration| {
            let d = c.duration(field, v, default);
            match v {
                Some(v) if d < lo || d > hi => {
                    c.sink.error(
                        v.span(),
                        format!(
                            "{field} = {:?} is out of range; expected {lo:?} to {hi:?}",
                            v.get_ref()
                        ),
                    );
                    default
                }
                _ => d,
            }
        };
        let ms = Duration::from_millis;
        let sync_interval = bounded(
            self,
            "fleet.sync_interval",
            &f.sync_interval,
            ms(250),
            ms(10),
            ms(10_000),
        );
        let command_timeout = bounded(
            self,
            "fleet.command_timeout",
            &f.command_timeout,
            ms(500),
            ms(1),
            ms(60_000),
        );
        let connect_timeout = bounded(
            self,
            "fleet.connect_timeout",
            &f.connect_timeout,
            ms(1000),
            ms(1),
            ms(60_000),
        );
        let replica_timeout = bounded(
            self,
            "fleet.replica_timeout",
            &f.replica_timeout,
            ms(200),
            ms(1),
            ms(60_000),
        );
        Some(Fleet {
            redis_url,
            node,
            namespace,
            key_file,
            sync_interval,
            command_timeout,
            connect_timeout,
            min_replicas: u32::try_from(self.count(
                "fleet.min_replicas",
                &f.min_replicas,
                0,
                0..101,
            ))
            .unwrap_or(0),
            replica_timeout,
            stream_max_len: self.count(
                "fleet.stream_max_len",
                &f.stream_max_len,
                100_000,
                1000..100_000_001,
            ),
            max_keys: self.count("fleet.max_keys", &f.max_keys, 100_000, 1..100_000_001),
        })
    }

    fn state(&mut self, ledger: &Ledger) -> State {
        let s = std::mem::take(&mut self.sections.state);
        let enabled = s.snapshot.as_ref().is_none_or(|b| *b.get_ref());
        // The embedded ledger's store, which the default snapshot sits beside; in fleet
        // mode (ledger in Redis) the default is beside the configuration file.
        let store = match &ledger.backend {
            Backend::Embedded { path } => Some(path.clone()),
            Backend::Redis => None,
        };
        let snapshot_path = match &s.snapshot_path {
            Some(p) if p.get_ref().trim().is_empty() => {
                self.sink.error(
                    p.span(),
                    "state.snapshot_path is empty; give a file, or set `snapshot = false`",
                );
                None
            }
            Some(p) => Some((self.path(p.get_ref()), p.span())),
            None => Some((
                store.as_deref().map_or_else(
                    || self.path("warden.state"),
                    |s| s.with_file_name("warden.state"),
                ),
                0..0,
            )),
        };
        let snapshot_path = snapshot_path.and_then(|(path, span)| {
            if path.is_dir() {
                self.sink.error(
                    span,
                    format!(
                        "state.snapshot_path {} is a directory; expected a file",
                        path.display()
                    ),
                );
                return None;
            }
            if store
                .as_deref()
                .is_some_and(|s| path == s || path == warden_ledger_journal(s))
            {
                self.sink.error(
                    span,
                    format!(
                        "state.snapshot_path {} is the ledger's own file; use another name",
                        path.display()
                    ),
                );
                return None;
            }
            Some(path)
        });
        let snapshot_interval = self.duration(
            "state.snapshot_interval",
            &s.snapshot_interval,
            Duration::from_secs(60),
        );
        if let Some(v) = &s.snapshot_interval {
            if !snapshot_interval.is_zero()
                && (snapshot_interval < Duration::from_secs(1)
                    || snapshot_interval > Duration::from_secs(86_400))
            {
                self.sink.error(
                    v.span(),
                    format!(
                        "state.snapshot_interval = {:?} is out of range; expected 0s (only at stop and upgrade) or 1s to 24h",
                        v.get_ref()
                    ),
                );
            }
        }
        State {
            snapshot_path: if enabled { snapshot_path } else { None },
            snapshot_interval,
        }
    }

    fn limits(&mut self) -> Limits {
        let l = std::mem::take(&mut self.sections.limits);
        let d = Limits::default();
        let timeout = |c: &mut Self, field: &str, v: &Option<S<String>>, default: Duration| {
            let t = c.duration(field, v, default);
            match v {
                Some(v) if t.is_zero() || t > Duration::from_secs(3600) => {
                    c.sink.error(
                        v.span(),
                        format!(
                            "{field} = {:?} is out of range; expected more than 0s and at most 1h",
                            v.get_ref()
                        ),
                    );
                    default
                }
                _ => t,
            }
        };
        let header_timeout = timeout(
            self,
            "limits.header_timeout",
            &l.header_timeout,
            d.header_timeout,
        );
        let body_timeout = timeout(self, "limits.body_timeout", &l.body_timeout, d.body_timeout);
        // pingora refuses more than 1 MiB - 1 of header and more than 256 fields itself.
        let max_header_bytes = match &l.max_header_bytes {
            None => d.max_header_bytes,
            Some(v) => match values::bytes(&mut self.sink, "limits.max_header_bytes", v) {
                Some(n) if (1024..=1_048_575).contains(&n) => n,
                Some(n) => {
                    self.sink.error(
                        v.span(),
                        format!("limits.max_header_bytes = {n} bytes is out of range; expected 1KiB to 1048575 bytes (pingora's own limit)"),
                    );
                    d.max_header_bytes
                }
                None => d.max_header_bytes,
            },
        };
        Limits {
            header_timeout,
            body_timeout,
            max_header_bytes,
            max_headers: self.count("limits.max_headers", &l.max_headers, d.max_headers, 1..257),
        }
    }

    fn events(&mut self) -> EventSettings {
        let e = std::mem::take(&mut self.sections.events);
        let file = e
            .file
            .as_ref()
            .filter(|f| f.get_ref() != "-")
            .map(|f| self.path(f.get_ref()));
        let webhook = e.webhook.as_ref().and_then(|w| {
            let url = w.get_ref();
            let ok = url
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if ok {
                Some(url.clone())
            } else {
                self.sink.error(
                    w.span(),
                    format!("events.webhook = {url:?} must be an http:// URL (send it through a local TLS-terminating forwarder for https)"),
                );
                None
            }
        });
        EventSettings {
            file,
            repeat_interval: self.duration(
                "events.repeat_interval",
                &e.repeat_interval,
                Duration::from_secs(60),
            ),
            queue: self.count("events.queue", &e.queue, 65_536, 1..10_000_001),
            webhook,
            webhook_queue: self.count(
                "events.webhook_queue",
                &e.webhook_queue,
                10_000,
                1..10_000_001,
            ),
            webhook_timeout: self.duration(
                "events.webhook_timeout",
                &e.webhook_timeout,
                Duration::from_secs(2),
            ),
            webhook_retries: u32::try_from(self.count(
                "events.webhook_retries",
                &e.webhook_retries,
                5,
                0..101,
            ))
            .unwrap_or(5),
        }
    }

    fn rules(&mut self) -> RuleSettings {
        let r = std::mem::take(&mut self.sections.rules);
        let mut files = Vec::new();
        let mut located = Vec::new();
        if let Some(list) = &r.files {
            for f in list.get_ref() {
                let path = self.path(f.get_ref());
                if !path.exists() {
                    self.sink.error(
                        f.span(),
                        format!("rules.files: {} does not exist", path.display()),
                    );
                    continue;
                }
                let (found, diags) = rules::load_rule_file(&path);
                self.sink.diagnostics.extend(diags);
                located.extend(found);
                files.push(path);
            }
        }
        self.sink.diagnostics.extend(rules::cross_check(&located));
        let max_state_bytes = r
            .max_state_bytes
            .as_ref()
            .and_then(|v| values::bytes(&mut self.sink, "rules.max_state_bytes", v))
            .unwrap_or(256 << 20);
        RuleSettings {
            files,
            list: located.into_iter().map(|l| l.rule).collect(),
            tag_header: r
                .tag_header
                .as_ref()
                .and_then(|h| self.header_name("rules.tag_header", h))
                .unwrap_or_else(|| "x-warden-tag".to_owned()),
            max_state_bytes,
            max_bans: self.count("rules.max_bans", &r.max_bans, 1_000_000, 1..100_000_001),
        }
    }

    // === values ===

    fn duration(&mut self, field: &str, v: &Option<S<String>>, default: Duration) -> Duration {
        v.as_ref()
            .and_then(|v| values::duration(&mut self.sink, field, v))
            .unwrap_or(default)
    }

    fn count(
        &mut self,
        field: &str,
        v: &Option<S<i64>>,
        default: usize,
        range: Range<i64>,
    ) -> usize {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if range.contains(&n) {
            usize::try_from(n).unwrap_or(default)
        } else {
            self.sink.error(
                v.span(),
                format!(
                    "{field} = {n} is out of range; expected {} to {}",
                    range.start,
                    range.end - 1
                ),
            );
            default
        }
    }

    fn addr(&mut self, field: &str, v: &S<String>) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.sink.error(
                    v.span(),
                    format!(
                        "{field}: {:?} is not an address; expected IP:PORT like \"127.0.0.1:8080\" or \"[::1]:8080\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// An upstream peer: `IP:PORT`, or `HOST:PORT` with a valid host name (resolved at
    /// start, not here: `warden check` and reloads make no DNS queries).
    fn peer(&mut self, v: &S<String>) -> Option<String> {
        let s = v.get_ref();
        let named = s.rsplit_once(':').is_some_and(|(host, port)| {
            port.parse::<u16>().is_ok_and(|p| p != 0) && is_host_name(host)
        });
        if s.parse::<SocketAddr>().is_ok() || named {
            return Some(s.clone());
        }
        self.sink.error(
            v.span(),
            format!(
                "upstream.peers: {s:?} is not an address; expected IP:PORT like \"127.0.0.1:8080\" or \"[::1]:8080\", or HOST:PORT like \"web.internal:8080\""
            ),
        );
        None
    }

    fn path(&self, v: &str) -> PathBuf {
        let p = Path::new(v);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    fn one_of<T: Copy>(
        &mut self,
        field: &str,
        v: &Option<S<String>>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        v.as_ref()
            .and_then(|v| values::one_of(&mut self.sink, field, v, options))
            .unwrap_or(default)
    }

    // === sections ===

    fn server(&mut self) -> Server {
        let s = std::mem::take(&mut self.sections.server);
        let mut listen = Vec::new();
        match &s.listen {
            Some(list) => {
                for a in list.get_ref() {
                    if let Some(a) = self.addr("server.listen", a) {
                        listen.push(a);
                    }
                }
                if list.get_ref().is_empty() {
                    self.sink.error(
                        list.span(),
                        "server.listen is empty; expected at least one address",
                    );
                }
            }
            None => listen.push(SocketAddr::from(([127, 0, 0, 1], 8080))),
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Server {
            listen,
            threads: self.count("server.threads", &s.threads, cpus, 1..1025),
            work_stealing: s.work_stealing.unwrap_or(false),
            upgrade_sock: s.upgrade_sock.as_ref().map_or_else(
                || PathBuf::from("/tmp/warden_upgrade.sock"),
                |p| self.path(p.get_ref()),
            ),
            pid_file: s.pid_file.as_ref().map_or_else(
                || PathBuf::from("/tmp/warden.pid"),
                |p| self.path(p.get_ref()),
            ),
            grace_period: self.duration(
                "server.grace_period",
                &s.grace_period,
                Duration::from_secs(5),
            ),
            graceful_shutdown_timeout: self.duration(
                "server.graceful_shutdown_timeout",
                &s.graceful_shutdown_timeout,
                Duration::from_secs(10),
            ),
        }
    }

    fn admin(&mut self) -> Admin {
        let a = std::mem::take(&mut self.sections.admin);
        let default = SocketAddr::from(([127, 0, 0, 1], 9901));
        let listen = a
            .listen
            .as_ref()
            .and_then(|l| self.addr("admin.listen", l))
            .unwrap_or(default);
        let token_file = a.token_file.as_ref().map(|p| self.path(p.get_ref()));
        if let (Some(l), None) = (&a.listen, &token_file) {
            if !listen.ip().is_loopback() {
                self.sink.warn(
                    l.span(),
                    format!(
                        "admin.listen = {listen} is not loopback and admin.token_file is unset: \
                         reads are open to the network (mutating calls stay refused)"
                    ),
                );
            }
        }
        Admin { listen, token_file }
    }

    fn upstream(&mut self) -> Option<Upstream> {
        let u = std::mem::take(&mut self.sections.upstream);
        let mut peers = Vec::new();
        match &u.peers {
            Some(list) => {
                for p in list.get_ref() {
                    if let Some(a) = self.peer(p) {
                        peers.push(a);
                    }
                }
                if list.get_ref().is_empty() {
                    self.sink.error(
                        list.span(),
                        "upstream.peers is empty; expected at least one address",
                    );
                }
            }
            None if self.failed.contains(&"upstream") => return None,
            None => {
                let span = self.sections.upstream_span.clone().unwrap_or(0..0);
                self.sink.error(
                    span,
                    "upstream.peers is required: the addresses warden proxies to, like [\"127.0.0.1:8081\"]",
                );
                return None;
            }
        }
        Some(Upstream {
            peers,
            connect_timeout: self.duration(
                "upstream.connect_timeout",
                &u.connect_timeout,
                Duration::from_secs(2),
            ),
            read_timeout: self.duration(
                "upstream.read_timeout",
                &u.read_timeout,
                Duration::from_secs(30),
            ),
            write_timeout: self.duration(
                "upstream.write_timeout",
                &u.write_timeout,
                Duration::from_secs(30),
            ),
            idle_timeout: self.duration(
                "upstream.idle_timeout",
                &u.idle_timeout,
                Duration::from_secs(60),
            ),
            host_header: u.host_header.and_then(|h| {
                // A value that would split or corrupt the upstream request is refused here,
                // not found by a failed insert on every request.
                if !h.get_ref().is_empty()
                    && h.get_ref()
                        .bytes()
                        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
                {
                    Some(h.into_inner())
                } else {
                    self.sink.error(
                        h.span(),
                        format!(
                            "upstream.host_header: {:?} is not a host header value (printable \
                             ASCII, not empty)",
                            h.get_ref()
                        ),
                    );
                    None
                }
            }),
        })
    }

    /// A header name (an RFC 9110 token), lowercased; an error if it is not one.
    fn header_name(&mut self, field: &str, v: &S<String>) -> Option<String> {
        let name = v.get_ref();
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !name.is_empty() && name.bytes().all(tchar) {
            Some(name.to_ascii_lowercase())
        } else {
            self.sink.error(
                v.span(),
                format!(
                    "{field}: {name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
            );
            None
        }
    }

    fn client_ip(&mut self) -> ClientIp {
        let c = std::mem::take(&mut self.sections.client_ip);
        let mut trusted = Vec::new();
        if let Some(list) = &c.trusted_proxies {
            for t in list.get_ref() {
                match Cidr::parse(t.get_ref()) {
                    Ok(cidr) => trusted.push(cidr),
                    Err(why) => self.sink.error(
                        t.span(),
                        format!(
                            "client_ip.trusted_proxies: {why}; expected a CIDR like \"10.0.0.0/8\""
                        ),
                    ),
                }
            }
        }
        let header = self.one_of(
            "client_ip.header",
            &c.header,
            &[
                ("x-forwarded-for", ForwardedHeader::XForwardedFor),
                ("forwarded", ForwardedHeader::Forwarded),
            ],
            ForwardedHeader::XForwardedFor,
        );
        ClientIp {
            trusted_proxies: trusted,
            header,
        }
    }

    fn token(&mut self) -> (TokenSource, Policy) {
        let t = std::mem::take(&mut self.sections.token);
        let header = match &t.header {
            Some(h) if h.get_ref().is_empty() => None,
            Some(h) => Some(
                self.header_name("token.header", h)
                    .unwrap_or_else(|| "authorization".into()),
            ),
            None => Some("authorization".into()),
        };
        let cookie = t.cookie.as_ref().map(|c| c.get_ref().clone());
        if header.is_none() && cookie.is_none() {
            let span = t.header.as_ref().map_or(0..0, Spanned::span);
            self.sink.error(
                span,
                "token: neither header nor cookie is set; warden would find no token",
            );
        }
        let defaults = Policy::default();
        let policy = Policy {
            leeway_seconds: self
                .duration(
                    "token.leeway",
                    &t.leeway,
                    Duration::from_secs(defaults.leeway_seconds),
                )
                .as_secs(),
            issuer: t.issuer.map(Spanned::into_inner),
            audience: t.audience.map(Spanned::into_inner),
            account_claim: t
                .account_claim
                .map_or(defaults.account_claim, Spanned::into_inner),
            max_token_bytes: self.count(
                "token.max_bytes",
                &t.max_bytes,
                defaults.max_token_bytes,
                64..(1 << 20) + 1,
            ),
            cache_capacity: self.count(
                "token.cache_capacity",
                &t.cache_capacity,
                defaults.cache_capacity,
                0..100_000_001,
            ),
        };
        (TokenSource { header, cookie }, policy)
    }

    fn keys(&mut self) -> Vec<KeySpec> {
        let raw_keys = std::mem::take(&mut self.sections.keys);
        let jwks = std::mem::take(&mut self.sections.jwks);
        let mut specs: Vec<KeySpec> = Vec::new();
        let mut spans: HashMap<String, Range<usize>> = HashMap::new();
        let mut lifecycle: Vec<(S<String>, KeyState)> = Vec::new();
        for (k, span) in &raw_keys {
            let kid = k.kid.get_ref().clone();
            if kid.is_empty() {
                self.sink.error(k.kid.span(), "keys.kid is empty");
                continue;
            }
            let state = self.key_state(k);
            let sources = [
                k.pem_file.is_some(),
                k.pem.is_some(),
                k.secret_file.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if sources > 1 {
                self.sink.error(
                    span.clone(),
                    format!("key {kid:?}: set only one of pem_file, pem, secret_file"),
                );
                continue;
            }
            if sources == 0 {
                // A lifecycle entry for a key that comes from a JWKS file.
                if let Some(alg) = &k.alg {
                    self.sink.error(
                        alg.span(),
                        format!("key {kid:?} has alg but no material; set pem_file, pem or secret_file (or drop alg if the key comes from a JWKS file)"),
                    );
                }
                lifecycle.push((k.kid.clone(), state));
                continue;
            }
            let Some(alg_v) = &k.alg else {
                self.sink.error(
                    k.kid.span(),
                    format!("key {kid:?} needs alg (RS256, ES256, EdDSA, HS256, ...)"),
                );
                continue;
            };
            let Some(alg) = parse_alg(alg_v.get_ref()) else {
                self.sink.error(
                    alg_v.span(),
                    format!(
                        "key {kid:?}: alg {:?} is not supported; expected HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA",
                        alg_v.get_ref()
                    ),
                );
                continue;
            };
            let material = if let Some(p) = &k.pem {
                KeyMaterial::Pem(p.get_ref().as_bytes().to_vec())
            } else {
                let (field, v) = match (&k.pem_file, &k.secret_file) {
                    (Some(f), _) => ("pem_file", f),
                    (None, Some(f)) => ("secret_file", f),
                    (None, None) => continue,
                };
                let file = self.path(v.get_ref());
                self.key_files.push(file.clone());
                match std::fs::read(&file) {
                    Ok(bytes) if field == "pem_file" => KeyMaterial::Pem(bytes),
                    Ok(bytes) => KeyMaterial::Secret(trim_ascii_end(bytes)),
                    Err(e) => {
                        self.sink.error(
                            v.span(),
                            format!("key {kid:?}: cannot read {field} {}: {e}", file.display()),
                        );
                        continue;
                    }
                }
            };
            spans.insert(kid.clone(), k.kid.span());
            specs.push(KeySpec {
                kid,
                alg,
                material,
                state,
            });
        }
        if let Some(files) = &jwks.files {
            for f in files.get_ref() {
                let file = self.path(f.get_ref());
                self.key_files.push(file.clone());
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        self.sink.error(
                            f.span(),
                            format!("jwks: cannot read {}: {e}", file.display()),
                        );
                        continue;
                    }
                };
                match specs_from_jwks(&text) {
                    Ok(found) => {
                        for s in found {
                            spans.entry(s.kid.clone()).or_insert_with(|| f.span());
                            specs.push(s);
                        }
                    }
                    Err(e) => self
                        .sink
                        .error(f.span(), format!("{}: {e}", file.display())),
                }
            }
        }
        for (kid, state) in lifecycle {
            match specs.iter_mut().find(|s| s.kid == *kid.get_ref()) {
                Some(s) => s.state = state,
                None => self.sink.error(
                    kid.span(),
                    format!(
                        "key {:?} has no material and is not in any JWKS file",
                        kid.get_ref()
                    ),
                ),
            }
        }
        if let Err(errors) = KeyRegistry::build(specs.clone()) {
            for e in errors {
                let span = match &e {
                    warden_core::KeyError::Material { kid, .. }
                    | warden_core::KeyError::Alg { kid, .. } => spans.get(kid).cloned(),
                    warden_core::KeyError::DuplicateKid(kid) => spans.get(kid).cloned(),
                    _ => None,
                };
                self.sink.error(span.unwrap_or(0..0), e.to_string());
            }
        }
        if specs.is_empty() {
            self.sink.warn(0..0, "no keys are configured: every token on a protected route will be refused as unknown_kid");
        }
        specs
    }

    fn key_state(&mut self, k: &raw::Key) -> KeyState {
        let kid = k.kid.get_ref();
        let status = k.status.as_ref().map_or("active", |s| s.get_ref().as_str());
        match (status, &k.retired_at) {
            ("active", None) => KeyState::Active,
            ("revoked", None) => KeyState::Revoked,
            ("retired", Some(at)) => match humantime::parse_rfc3339_weak(at.get_ref()) {
                Ok(t) => KeyState::Retired {
                    at: t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                },
                Err(_) => {
                    self.sink.error(
                        at.span(),
                        format!("key {kid:?}: retired_at = {:?} is not a time; expected RFC 3339 like \"2025-06-01T00:00:00Z\"", at.get_ref()),
                    );
                    KeyState::Revoked
                }
            },
            ("retired", None) => {
                let span = k.status.as_ref().map_or(k.kid.span(), Spanned::span);
                self.sink.error(
                    span,
                    format!("key {kid:?} is retired but has no retired_at"),
                );
                KeyState::Revoked
            }
            ("active" | "revoked", Some(at)) => {
                self.sink.error(
                    at.span(),
                    format!("key {kid:?}: retired_at is only meaningful with status = \"retired\""),
                );
                KeyState::Active
            }
            (other, _) => {
                let span = k.status.as_ref().map_or(k.kid.span(), Spanned::span);
                self.sink.error(
                    span,
                    format!(
                        "key {kid:?}: status {other:?} is not one of: active, retired, revoked"
                    ),
                );
                KeyState::Revoked
            }
        }
    }

    fn ledger(&mut self, fleet: bool) -> Ledger {
        let l = std::mem::take(&mut self.sections.ledger);
        let backend_name = l
            .backend
            .as_ref()
            .map_or(if fleet { "redis" } else { "embedded" }, |b| {
                b.get_ref().as_str()
            });
        let backend = match backend_name {
            "redis" if fleet => Backend::Redis,
            "redis" => {
                let span = l.backend.as_ref().map_or(0..0, Spanned::span);
                self.sink.error(
                    span,
                    "ledger.backend = \"redis\" needs a [fleet] section (redis_url, node, key_file)",
                );
                Backend::Redis
            }
            "embedded" if fleet => {
                let span = l.backend.as_ref().map_or(0..0, Spanned::span);
                self.sink.error(
                    span,
                    "ledger.backend = \"embedded\" with a [fleet] section: fleet mode shares the ledger through Redis; remove ledger.backend or set it to \"redis\"",
                );
                Backend::Redis
            }
            "embedded" => Backend::Embedded {
                path: self.path(
                    l.path
                        .as_ref()
                        .map_or("ledger.redb", |p| p.get_ref().as_str()),
                ),
            },
            other => {
                let span = l.backend.as_ref().map_or(0..0, Spanned::span);
                self.sink.error(
                    span,
                    format!("ledger.backend = {other:?} is not one of: embedded, redis"),
                );
                Backend::Embedded {
                    path: PathBuf::new(),
                }
            }
        };
        Ledger {
            backend,
            timeout: self.duration("ledger.timeout", &l.timeout, Duration::from_millis(50)),
            issuance_wait: self.duration(
                "ledger.issuance_wait",
                &l.issuance_wait,
                Duration::from_millis(250),
            ),
            issuance_window: self.duration(
                "ledger.issuance_window",
                &l.issuance_window,
                Duration::from_secs(5),
            ),
            max_waiters: self.count("ledger.max_waiters", &l.max_waiters, 1024, 0..1_000_001),
            write_queue: self.count("ledger.write_queue", &l.write_queue, 65_536, 1..10_000_001),
            sweep_interval: self.duration(
                "ledger.sweep_interval",
                &l.sweep_interval,
                Duration::from_secs(60),
            ),
            expiry_grace: self.duration(
                "ledger.expiry_grace",
                &l.expiry_grace,
                Duration::from_secs(3600),
            ),
            pending_revocation_ttl: self.duration(
                "ledger.pending_revocation_ttl",
                &l.pending_revocation_ttl,
                Duration::from_secs(7 * 86_400),
            ),
            max_pending_revocations: self.count(
                "ledger.max_pending_revocations",
                &l.max_pending_revocations,
                100_000,
                0..100_000_001,
            ),
        }
    }

    fn routes(&mut self) -> Routes {
        let raw_routes = std::mem::take(&mut self.sections.routes);
        let routing = std::mem::take(&mut self.sections.routing);
        let classes = [
            ("protected", RouteClass::Protected),
            ("issuance", RouteClass::Issuance),
            ("open", RouteClass::Open),
        ];
        let default_class = self.one_of(
            "routing.default_class",
            &routing.default_class,
            &classes,
            RouteClass::Open,
        );
        let case_insensitive = routing.case_insensitive.is_some_and(|b| *b.get_ref());
        let mut list: Vec<Route> = Vec::new();
        let mut pattern_spans: Vec<(PathPattern, Vec<String>, Range<usize>)> = Vec::new();
        for (r, _span) in raw_routes {
            let name = r.name.get_ref().clone();
            if list.iter().any(|o| o.name == name) {
                self.sink
                    .error(r.name.span(), format!("route name {name:?} is used twice"));
            }
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                self.sink.error(
                    r.name.span(),
                    format!("route name {name:?} must be non-empty ASCII letters, digits, '_' or '-' (it is a metric label)"),
                );
            }
            let class = self.one_of(
                "routes.class",
                &Some(r.class.clone()),
                &classes,
                RouteClass::Open,
            );
            let mut methods = Vec::new();
            if let Some(ms) = &r.methods {
                for m in ms.get_ref() {
                    let up = m.get_ref().to_ascii_uppercase();
                    if ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
                        .contains(&up.as_str())
                    {
                        methods.push(up);
                    } else {
                        self.sink.error(m.span(), format!("method {:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS", m.get_ref()));
                    }
                }
            }
            let mut paths = Vec::new();
            if r.paths.get_ref().is_empty() {
                self.sink
                    .error(r.paths.span(), format!("route {name:?} has no paths"));
            }
            for p in r.paths.get_ref() {
                let text = p.get_ref();
                let Some(pattern) = PathPattern::parse(text, case_insensitive) else {
                    self.sink.error(
                        p.span(),
                        format!("path {text:?} must start with '/' and may only end with '*' (prefix match), like \"/account/*\""),
                    );
                    continue;
                };
                // A path an earlier route already covers, for the same methods, never reaches this one.
                let covered = pattern_spans.iter().any(|(earlier, ms, _)| {
                    let methods_covered = ms.is_empty()
                        || (!methods.is_empty() && methods.iter().all(|m| ms.contains(m)));
                    methods_covered && pattern.covered_by(earlier)
                });
                if covered {
                    self.sink.warn(p.span(), format!("path {text:?} of route {name:?} is shadowed by an earlier route and never matches"));
                }
                pattern_spans.push((pattern.clone(), methods.clone(), p.span()));
                paths.push(pattern);
            }
            let on_backend_failure = self.one_of(
                "routes.on_backend_failure",
                &r.on_backend_failure,
                &[
                    ("fail_closed", FailMode::Closed),
                    ("fail_open", FailMode::Open),
                ],
                if class == RouteClass::Protected {
                    FailMode::Closed
                } else {
                    FailMode::Open
                },
            );
            let reject_status =
                self.count("routes.reject_status", &r.reject_status, 401, 400..600) as u16;
            let capture = match (&r.token_json_field, &r.token_cookie) {
                (Some(_), Some(c)) => {
                    self.sink.error(
                        c.span(),
                        format!("route {name:?}: set only one of token_json_field, token_cookie"),
                    );
                    None
                }
                (Some(f), None) => {
                    let parts: Vec<String> = f.get_ref().split('.').map(str::to_owned).collect();
                    if parts.iter().any(String::is_empty) {
                        self.sink.error(f.span(), format!("token_json_field {:?} must be dot-separated object keys, like \"access_token\" or \"data.token\"", f.get_ref()));
                    }
                    Some(Capture::JsonField(parts))
                }
                (None, Some(c)) => Some(Capture::Cookie(c.get_ref().clone())),
                (None, None) => None,
            };
            match (class, &capture) {
                (RouteClass::Issuance, None) => self.sink.error(
                    r.class.span(),
                    format!("issuance route {name:?} needs token_json_field or token_cookie: where the login response carries the token"),
                ),
                (RouteClass::Protected | RouteClass::Open, Some(_)) => self.sink.error(
                    r.class.span(),
                    format!("route {name:?}: token_json_field and token_cookie only apply to class = \"issuance\""),
                ),
                _ => {}
            }
            list.push(Route {
                name,
                class,
                paths,
                methods,
                on_backend_failure,
                reject_status,
                capture,
            });
        }
        if !list.iter().any(|r| r.class == RouteClass::Protected)
            && default_class != RouteClass::Protected
        {
            self.sink.warn(
                0..0,
                "no protected route: warden will enforce token provenance nowhere",
            );
        }
        Routes {
            list,
            default_class,
            case_insensitive,
        }
    }
}

/// Drops one trailing line ending (as editors add), nothing else: a secret's bytes are
/// taken as they are.
/// A DNS host name (RFC 1123): dot-separated labels of 1 to 63 letters, digits and
/// hyphens, not starting or ending with a hyphen, 253 bytes at most, the last label not
/// all digits (so that a mistyped address like `10.0.0:80` is not taken for a name).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(label_ok)
        && host
            .rsplit('.')
            .next()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

fn trim_ascii_end(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    v
}

#[cfg(test)]
mod tests;

/// The embedded ledger's hand-off journal beside its store (the name
/// `warden-ledger-redb` gives it; the configuration keeps other files off it).
fn warden_ledger_journal(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_owned();
    name.push(".handoff.jsonl");
    store.with_file_name(name)
}
