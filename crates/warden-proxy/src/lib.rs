//! Warden's pingora glue.
//!
//! [`WardenProxy`] implements pingora's `ProxyHttp`: it classifies each request by route,
//! finds the client address and the token, enforces token provenance on protected routes
//! (verification, then the ledger, under a timeout, with the route's fail mode), and
//! records the tokens that login responses carry on issuance routes.
//!
//! Everything reloadable lives in [`Settings`], swapped atomically; requests in flight
//! keep the settings they started with.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client_ip;
pub mod conn;
pub mod limits;
mod maintenance;
mod proxy;
pub mod token_src;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use warden_config::model::{
    ClientIp, Config, Ledger as LedgerCfg, Limits, Routes, RuleSettings, TokenSource, Upstream,
};
use warden_config::Diagnostic;
use warden_core::keys::KeyRegistry;
use warden_core::ledger::Ledger;
use warden_core::verify::Verifier;
use warden_detect::Engine;
use warden_metrics::{Event, Events, Metrics};

pub use maintenance::Maintenance;
pub use proxy::{Ctx, WardenProxy};
/// Request path normalization (in `warden-config`, so that log replay runs the same code).
pub use warden_config::path;

/// The part of the configuration that a reload replaces.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Route table.
    pub routes: Routes,
    /// Where tokens are read.
    pub token: TokenSource,
    /// Client address resolution.
    pub client_ip: ClientIp,
    /// Ledger timings.
    pub ledger: LedgerCfg,
    /// Upstream settings (peers are fixed at start; timeouts reload).
    pub upstream: Upstream,
    /// Behaviour rules (the rules themselves live in the engine).
    pub rules: RuleSettings,
    /// `rules.tag_header` parsed once, so that no request parses the name. The
    /// configuration refuses a name that is not a header name, so `None` only for a
    /// `Config` built by hand with one (tags are then not sent).
    pub tag_header: Option<http::HeaderName>,
    /// Files whose change triggers a reload: the configuration, the rule files and the
    /// key files.
    pub watched: Vec<std::path::PathBuf>,
    /// Request limits (header and body timeouts, header size and count).
    pub limits: Limits,
}

impl Settings {
    /// The reloadable part of a configuration.
    #[must_use]
    pub fn from_config(c: &Config) -> Self {
        Self {
            routes: c.routes.clone(),
            token: c.token.clone(),
            client_ip: c.client_ip.clone(),
            ledger: c.ledger.clone(),
            upstream: c.upstream.clone(),
            rules: RuleSettings {
                list: Vec::new(),
                ..c.rules.clone()
            },
            tag_header: http::HeaderName::from_bytes(c.rules.tag_header.as_bytes()).ok(),
            watched: std::iter::once(c.source.clone())
                .chain(c.rules.files.iter().cloned())
                .chain(c.key_files.iter().cloned())
                .collect(),
            limits: c.limits.clone(),
        }
    }
}

/// State shared by the proxy, the admin API and the maintenance task.
pub struct Shared {
    /// Token verification with its key registry and cache.
    pub verifier: Arc<Verifier>,
    /// The token ledger.
    pub ledger: Arc<dyn Ledger>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event sink.
    pub events: Arc<Events>,
    /// Which rejection events are written (`events.repeat_interval`, fixed at start).
    pub repeats: warden_metrics::RepeatFilter,
    /// The behaviour engine.
    pub engine: Arc<Engine>,
    /// Reloadable settings.
    pub settings: ArcSwap<Settings>,
    /// Bounds the requests waiting for a just-issued token's record.
    pub waiters: tokio::sync::Semaphore,
    /// Set once the SIGHUP handler is installed; readiness waits for it.
    pub sighup_ready: AtomicBool,
    generation: AtomicU64,
    config_path: std::path::PathBuf,
}

impl Shared {
    /// Wires the shared state from a loaded configuration.
    #[must_use]
    pub fn new(
        config: &Config,
        verifier: Arc<Verifier>,
        ledger: Arc<dyn Ledger>,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
    ) -> Self {
        Self::with_engine_key(config, verifier, ledger, metrics, events, None)
    }

    /// [`Shared::new`] with the rule engine's hash key given (fleet mode: the fleet's
    /// shared key, so that bans and counters match across nodes) instead of drawn.
    #[must_use]
    pub fn with_engine_key(
        config: &Config,
        verifier: Arc<Verifier>,
        ledger: Arc<dyn Ledger>,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
        engine_key: Option<[u8; 16]>,
    ) -> Self {
        metrics.config_generation.set(1);
        verifier.keep_claims(claims_used(&config.rules.list));
        let (state, bans) = (config.rules.max_state_bytes, config.rules.max_bans);
        let engine = Arc::new(match engine_key {
            Some(key) => Engine::with_key(state, bans, key),
            None => Engine::new(state, bans),
        });
        engine.set_rules(config.rules.list.clone(), config.rules.max_state_bytes);
        metrics.declare_rules(config.rules.list.iter().map(|r| r.name.as_str()));
        Self {
            verifier,
            ledger,
            metrics,
            events,
            repeats: warden_metrics::RepeatFilter::new(config.events.repeat_interval),
            engine,
            waiters: tokio::sync::Semaphore::new(config.ledger.max_waiters),
            settings: ArcSwap::from_pointee(Settings::from_config(config)),
            sighup_ready: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            config_path: config.source.clone(),
        }
    }

    /// The configuration generation in force.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Re-reads the configuration file and applies keys, routes and timings. On any
    /// error nothing changes and the errors are returned (and logged, and counted).
    /// Listeners, upstream peers and the ledger backend need a restart (or a graceful
    /// upgrade) to change; a reload that changes them warns.
    pub fn reload(&self) -> Result<u64, Vec<Diagnostic>> {
        let result = warden_config::load(&self.config_path).and_then(|loaded| {
            let registry = KeyRegistry::build(loaded.config.keys.clone()).map_err(|errs| {
                errs.into_iter()
                    .map(|e| Diagnostic {
                        severity: warden_config::Severity::Error,
                        file: self.config_path.clone(),
                        line: 1,
                        column: 1,
                        message: e.to_string(),
                    })
                    .collect::<Vec<_>>()
            })?;
            Ok((loaded, registry))
        });
        let mut event = Event::new("reload");
        match result {
            Ok((loaded, registry)) => {
                for w in &loaded.warnings {
                    log::warn!("{w}");
                }
                let old = self.settings.load();
                if old.upstream.peers != loaded.config.upstream.peers {
                    log::warn!(
                        "reload: upstream.peers changed; peers apply after a restart or upgrade"
                    );
                }
                self.verifier.swap_registry(registry);
                let rules = &loaded.config.rules;
                self.verifier.keep_claims(claims_used(&rules.list));
                self.engine
                    .set_rules(rules.list.clone(), rules.max_state_bytes);
                self.metrics
                    .declare_rules(rules.list.iter().map(|r| r.name.as_str()));
                self.settings
                    .store(Arc::new(Settings::from_config(&loaded.config)));
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics
                    .config_generation
                    .set(i64::try_from(generation).unwrap_or(i64::MAX));
                self.metrics.reload(true);
                event.action = Some("applied");
                event.detail = Some(format!("generation {generation}"));
                self.events.emit(&event);
                log::info!("configuration reloaded, generation {generation}");
                Ok(generation)
            }
            Err(diags) => {
                for d in &diags {
                    log::error!("reload refused: {d}");
                }
                self.metrics.reload(false);
                event.action = Some("refused");
                event.detail = Some(
                    diags
                        .iter()
                        .filter(|d| d.severity == warden_config::Severity::Error)
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                );
                self.events.emit(&event);
                Err(diags)
            }
        }
    }
}

/// Every claim the rules read, so that verified tokens keep those and no others.
fn claims_used(rules: &[warden_rules::Rule]) -> Vec<String> {
    let mut all: Vec<String> = rules
        .iter()
        .flat_map(warden_rules::Rule::claims_used)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Unix milliseconds now.
#[must_use]
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix seconds now: the one place the proxy reads the wall clock for the core.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
