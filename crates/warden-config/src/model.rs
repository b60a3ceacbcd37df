//! The compiled configuration. Never deserialized: built only by [`crate::load`] and
//! [`crate::compile_str`], so every value here has been checked.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use warden_core::keys::KeySpec;
use warden_core::verify::Policy;
pub use warden_rules::{PathPattern, RouteClass};

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// Listeners and process settings.
    pub server: Server,
    /// The admin listener.
    pub admin: Admin,
    /// Where requests go.
    pub upstream: Upstream,
    /// How the client address is found.
    pub client_ip: ClientIp,
    /// Where the token is read from.
    pub token: TokenSource,
    /// Verification policy.
    pub policy: Policy,
    /// Keys, with their material read.
    pub keys: Vec<KeySpec>,
    /// The files the keys were read from (`pem_file`, `secret_file`, `jwks.files`), so
    /// that a change to one reloads the configuration.
    pub key_files: Vec<PathBuf>,
    /// The token ledger.
    pub ledger: Ledger,
    /// Route classes by path.
    pub routes: Routes,
    /// Behaviour rules.
    pub rules: RuleSettings,
    /// Where events go.
    pub events: EventSettings,
    /// What a client may send, and how slowly.
    pub limits: Limits,
    /// Where the rule engine's state is kept across restarts and upgrades.
    pub state: State,
    /// Fleet mode (`[fleet]`): ledger, revocations, bans and fleet-scope counters
    /// shared through Redis. `None` for a single node.
    pub fleet: Option<Fleet>,
}

/// The rule engine's snapshot (`[state]`): counters, distinct sets and bans, written on
/// SIGTERM, on SIGQUIT (graceful upgrade) and every `snapshot_interval`, restored at
/// start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The snapshot file; `None` when `snapshot = false`. Default: `warden.state` beside
    /// the ledger store.
    pub snapshot_path: Option<PathBuf>,
    /// How often to write it while running besides at stop and upgrade (a crash then
    /// loses at most this much); zero: only at stop and upgrade. Default 60 s.
    pub snapshot_interval: Duration,
}

/// Fleet mode (`[fleet]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// `redis://[user:password@]host:port[/db]` (or `redis+unix:///path`).
    pub redis_url: String,
    /// This node's name, unique in the fleet (its counters are kept apart by it).
    pub node: String,
    /// Prefix of every Redis key warden writes (several fleets can share one Redis).
    pub namespace: String,
    /// File holding the fleet's shared secret (at least 16 bytes): the key of the rule
    /// engine's hashes, the same on every node so that bans and counters match.
    pub key_file: PathBuf,
    /// How often fleet-scope counters are pushed and read back, and bans published.
    pub sync_interval: Duration,
    /// Longest wait for one Redis command (lookups also obey `ledger.timeout`).
    pub command_timeout: Duration,
    /// Longest wait to (re)connect.
    pub connect_timeout: Duration,
    /// Replicas that must acknowledge a ledger write (`WAIT`) before it is
    /// acknowledged; 0 = the primary's own durability (its `appendfsync`).
    pub min_replicas: u32,
    /// Longest `WAIT` for those replicas.
    pub replica_timeout: Duration,
    /// Entries kept in the revocation and ban stream (`XADD MAXLEN ~`).
    pub stream_max_len: usize,
    /// Most (rule, key) pairs of fleet-scope rules tracked per node.
    pub max_keys: usize,
}

/// Limits on client requests (`[limits]`). pingora's own hard limits stay below them:
/// 1 MiB of request header and 256 header fields, answered with 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte of a request's header to its end (slow headers, "slowloris").
    /// Over it, the connection is closed. Default 10 s.
    pub header_timeout: Duration,
    /// From the end of a request's header to the end of its body (slow bodies, "R.U.D.Y.").
    /// Over it, 408 and the connection is closed. Default 60 s.
    pub body_timeout: Duration,
    /// Request line plus header fields, in bytes; over it, 431. Default 32 KiB.
    pub max_header_bytes: usize,
    /// Header fields; over it, 431. Default 100, at most 256.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_header_bytes: 32 << 10,
            max_headers: 100,
        }
    }
}

/// Where structured events go.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// A file to append JSON lines to; `None` for standard output.
    pub file: Option<PathBuf>,
    /// Events waiting to be written, at most.
    pub queue: usize,
    /// An `http://` URL that receives batches of events as a JSON array, if set.
    pub webhook: Option<String>,
    /// Events waiting for the webhook, at most; beyond, the oldest are dropped.
    pub webhook_queue: usize,
    /// Time allowed for one delivery.
    pub webhook_timeout: Duration,
    /// Attempts per batch before it is dropped.
    pub webhook_retries: u32,
    /// A rejection event (same client address, token and reason) is written once per
    /// this interval, its repeats counted in `warden_events_suppressed_total`; zero
    /// writes every one. Default 60 s.
    pub repeat_interval: Duration,
}

/// Behaviour rules and the bounds of their state.
#[derive(Debug, Clone)]
pub struct RuleSettings {
    /// Rule files, in order.
    pub files: Vec<PathBuf>,
    /// The rules of all files.
    pub list: Vec<warden_rules::Rule>,
    /// Header that `tag` rules add to the upstream request.
    pub tag_header: String,
    /// Cap on rule state (counters and sets); beyond it the lowest-scoring keys go.
    pub max_state_bytes: usize,
    /// Most bans in force at once.
    pub max_bans: usize,
}

/// Listeners and process settings.
#[derive(Debug, Clone)]
pub struct Server {
    /// Proxy listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Whether idle worker threads take tasks from busy ones (tokio's multi-thread
    /// scheduler). Off by default: each thread then runs its own single-threaded runtime
    /// and keeps the connections it accepted, which measured about 10 % less CPU per
    /// proxied request on the load benchmark (benches/RESULTS.md); turn it on when a few
    /// long connections would otherwise crowd one thread.
    pub work_stealing: bool,
    /// Socket for graceful upgrade handover.
    pub upgrade_sock: PathBuf,
    /// PID file.
    pub pid_file: PathBuf,
    /// How long an old process keeps serving after an upgrade or SIGTERM before closing
    /// its listeners.
    pub grace_period: Duration,
    /// How long in-flight requests get to finish after that.
    pub graceful_shutdown_timeout: Duration,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Listen address (loopback by default).
    pub listen: SocketAddr,
    /// File holding the bearer token for mutating endpoints; without it they are
    /// refused.
    pub token_file: Option<PathBuf>,
}

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Upstream servers, used round-robin: `IP:PORT`, or `HOST:PORT` resolved once at
    /// start (every address the name has becomes a peer), as nginx does without a
    /// `resolver`.
    pub peers: Vec<String>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time to wait for each read from the upstream.
    pub read_timeout: Duration,
    /// Time to wait for each write to the upstream.
    pub write_timeout: Duration,
    /// How long an idle keepalive connection is kept.
    pub idle_timeout: Duration,
    /// Host header to send, if it must be rewritten.
    pub host_header: Option<String>,
}

/// An IP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the network. IPv4-mapped IPv6 addresses match IPv4 networks.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a host network).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix {p:?} is not a number from 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

/// Which header carries the original client address when the peer is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
}

/// How the client address is found.
#[derive(Debug, Clone)]
pub struct ClientIp {
    /// Peers whose forwarding header is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The header they set.
    pub header: ForwardedHeader,
}

/// Where the token is read from.
#[derive(Debug, Clone)]
pub struct TokenSource {
    /// Header carrying `Bearer <token>` (lower-case name).
    pub header: Option<String>,
    /// Cookie carrying the token.
    pub cookie: Option<String>,
}

/// Ledger backend choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// redb file on local disk.
    Embedded {
        /// The file.
        path: PathBuf,
    },
    /// Redis, shared by the fleet (settings in [`Config::fleet`]).
    Redis,
}

/// The token ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// Which backend.
    pub backend: Backend,
    /// Longest wait for a backend answer before the fail mode applies.
    pub timeout: Duration,
    /// How long a request with a just-issued, unknown token waits for its record.
    pub issuance_wait: Duration,
    /// A token counts as just-issued if its `iat` is at most this old.
    pub issuance_window: Duration,
    /// Most requests waiting for a record at once; beyond, unknown tokens are refused
    /// at once.
    pub max_waiters: usize,
    /// Most write requests queued for the store.
    pub write_queue: usize,
    /// How often expired records are removed.
    pub sweep_interval: Duration,
    /// Records are kept this long past their expiry (so late requests get `expired`,
    /// not `forged`).
    pub expiry_grace: Duration,
    /// A token revoked before its record arrived stays revoked-in-waiting this long.
    pub pending_revocation_ttl: Duration,
    /// Most token revocations waiting for their record at once.
    pub max_pending_revocations: usize,
}

/// What happens when the ledger cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse the request (503).
    Closed,
    /// Let it through, with a loud event and metric.
    Open,
}

/// Where a login response carries the token it issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// A field of a JSON body, as a path of object keys (`data.access_token`).
    JsonField(Vec<String>),
    /// A `Set-Cookie` of this name.
    Cookie(String),
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name (metrics label, events).
    pub name: String,
    /// Its class.
    pub class: RouteClass,
    /// Paths it covers.
    pub paths: Vec<PathPattern>,
    /// Methods it covers (upper-case); empty = all.
    pub methods: Vec<String>,
    /// Behaviour when the ledger cannot answer.
    pub on_backend_failure: FailMode,
    /// Status for a refused token (401 by default).
    pub reject_status: u16,
    /// For issuance routes, where the issued token is.
    pub capture: Option<Capture>,
}

/// The route table; the first route that matches wins.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Routes in file order.
    pub list: Vec<Route>,
    /// Class of paths no route matches.
    pub default_class: RouteClass,
    /// Match paths without regard to ASCII case (for upstreams that route that way).
    pub case_insensitive: bool,
}

impl Routes {
    /// The route of a request (its index and itself) and the request's class: the first
    /// route whose methods (all, when empty) and paths match, else the default class.
    /// `path` must be normalized ([`crate::path::normalize`]). The proxy and log replay
    /// both classify requests with this.
    #[must_use]
    pub fn find(&self, path: &str, method: &str) -> (Option<(usize, &Route)>, RouteClass) {
        for (i, r) in self.list.iter().enumerate() {
            if (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
                && r.paths.iter().any(|p| p.matches(path))
            {
                return (Some((i, r)), r.class);
            }
        }
        (None, self.default_class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, class: RouteClass, path: &str, methods: &[&str]) -> Route {
        Route {
            name: name.into(),
            class,
            paths: vec![PathPattern::parse(path, false).expect("pattern")],
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            on_backend_failure: FailMode::Closed,
            reject_status: 401,
            capture: None,
        }
    }

    #[test]
    fn first_matching_route_wins_and_methods_filter() {
        let routes = Routes {
            list: vec![
                route("login", RouteClass::Issuance, "/account/login", &["POST"]),
                route("account", RouteClass::Protected, "/account/*", &[]),
            ],
            default_class: RouteClass::Open,
            case_insensitive: false,
        };
        let name = |p: &str, m: &str| {
            let (r, class) = routes.find(p, m);
            (r.map(|(i, r)| (i, r.name.clone())), class)
        };
        assert_eq!(
            name("/account/login", "POST"),
            (Some((0, "login".into())), RouteClass::Issuance)
        );
        assert_eq!(
            name("/account/login", "GET"),
            (Some((1, "account".into())), RouteClass::Protected)
        );
        assert_eq!(name("/static/x", "GET"), (None, RouteClass::Open));
    }
}
