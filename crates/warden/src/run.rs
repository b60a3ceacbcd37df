//! `warden run`: wire the proxy, the admin API and the background tasks into one pingora
//! server.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::LoadBalancer;
use pingora::prelude::background_service;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use warden_admin::{AdminApp, Control};
use warden_config::model::{Backend, Config};
use warden_core::keys::KeyRegistry;
use warden_core::ledger::Ledger;
use warden_core::verify::Verifier;
use warden_fleet::FleetNode;
use warden_ledger_redb::EmbeddedLedger;
use warden_metrics::{Events, Metrics, WebhookConfig};
use warden_proxy::{unix_now, Maintenance, Shared, WardenProxy};

use crate::lifecycle::{Lifecycle, LifecycleService};

/// Extra services a caller (the demo) adds to the same server.
pub type ExtraServices = Vec<Box<dyn pingora::services::ServiceWithDependents>>;

struct ControlImpl(Arc<Shared>);

impl Control for ControlImpl {
    fn verifier(&self) -> &Verifier {
        &self.0.verifier
    }
    fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.0.ledger
    }
    fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
    fn reload(&self) -> Result<u64, Vec<String>> {
        self.0
            .reload()
            .map_err(|d| d.iter().map(ToString::to_string).collect())
    }
    fn generation(&self) -> u64 {
        self.0.generation()
    }
    fn ready(&self) -> bool {
        self.0.sighup_ready.load(Ordering::Acquire)
    }
    fn now(&self) -> u64 {
        unix_now()
    }
    fn engine(&self) -> &warden_detect::Engine {
        &self.0.engine
    }
    fn events(&self) -> &Events {
        &self.0.events
    }
}

/// Loads the configuration, printing every diagnostic; `None` if it has errors.
pub fn load_config(path: &Path) -> Option<Config> {
    match warden_config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                log::warn!("{w}");
            }
            Some(loaded.config)
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            None
        }
    }
}

/// How long the new process of a graceful upgrade waits for the old one to release the
/// ledger store (it does on SIGQUIT, after writing its snapshot).
pub const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the configured ledger backend; with `wait`, retries while another process (the
/// old warden of a graceful upgrade) still holds the store.
pub fn open_ledger(
    config: &Config,
    wait: Option<std::time::Duration>,
) -> Result<Arc<EmbeddedLedger>, String> {
    match &config.ledger.backend {
        Backend::Embedded { path } => match wait {
            Some(w) => EmbeddedLedger::open_waiting(path, config.ledger.write_queue, w),
            None => EmbeddedLedger::open(path, config.ledger.write_queue),
        }
        .map(|l| {
            l.index()
                .set_pending_cap(config.ledger.max_pending_revocations);
            Arc::new(l)
        })
        .map_err(|e| e.to_string()),
        Backend::Redis => Err(
            "this configuration is in fleet mode: the ledger is in Redis; record and revoke through the admin API of any node"
                .to_owned(),
        ),
    }
}

/// Builds the verifier from the configured keys.
pub fn verifier(config: &Config) -> Result<Verifier, String> {
    KeyRegistry::build(config.keys.clone())
        .map(|r| Verifier::new(r, config.policy.clone()))
        .map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
}

pub fn run(config_path: &Path, upgrade: bool) -> ExitCode {
    let Some(config) = load_config(config_path) else {
        return ExitCode::from(2);
    };
    serve(config, upgrade, Vec::new())
}

/// The shortest admin token accepted: the admin API slows failed guesses, but only the
/// token's size makes guessing hopeless.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Starts every service; returns when the server has stopped (or start-up failed).
pub fn serve(config: Config, upgrade: bool, extra: ExtraServices) -> ExitCode {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("warden: {what}: {e}");
        ExitCode::from(2)
    };
    // Everything that can fail is checked before the bootstrap: once a new process of a
    // graceful upgrade has taken the listening sockets, the old one closes them.
    let verifier = match verifier(&config) {
        Ok(v) => Arc::new(v),
        Err(e) => return fail("keys", &e),
    };
    let metrics = Arc::new(Metrics::new());
    // Fleet mode: the ledger is Redis, and the engine's hash key is the fleet's.
    let (fleet, engine_key) = match &config.fleet {
        Some(f) => {
            let key = match warden_fleet::engine_key(&f.key_file) {
                Ok(k) => k,
                Err(e) => return fail("fleet", &e),
            };
            match FleetNode::new(
                f,
                &config.ledger,
                Arc::clone(&verifier),
                Arc::clone(&metrics),
            ) {
                Ok(node) => (Some(node), Some(key)),
                Err(e) => return fail("fleet", &e),
            }
        }
        None => (None, None),
    };
    let admin_token = match &config.admin.token_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) if t.trim().chars().count() >= MIN_ADMIN_TOKEN_CHARS => Some(t),
            Ok(t) => {
                return fail(
                    "admin.token_file",
                    &format!(
                        "{} holds {} characters; use at least {MIN_ADMIN_TOKEN_CHARS} random ones, for example `head -c 32 /dev/urandom | base64`",
                        p.display(),
                        t.trim().chars().count()
                    ),
                )
            }
            Err(e) => return fail("admin.token_file", &format!("{}: {e}", p.display())),
        },
        None => None,
    };
    let ev = &config.events;
    let events = Events::start(ev.file.as_deref(), ev.queue, metrics.events_dropped.clone())
        .and_then(|e| match &ev.webhook {
            Some(url) => e.with_webhook(
                WebhookConfig {
                    url: url.clone(),
                    queue: ev.webhook_queue,
                    timeout: ev.webhook_timeout,
                    retries: ev.webhook_retries,
                },
                metrics.webhook.clone(),
            ),
            None => Ok(e),
        });
    let events = match events {
        Ok(e) => Arc::new(e),
        Err(e) => return fail("events", &e),
    };
    // Host names are resolved here, once (`warden check` and reloads make no DNS query),
    // and before the bootstrap: a name that does not resolve must not cost an upgrade
    // the sockets the old process hands over.
    let mut peers: Vec<std::net::SocketAddr> = Vec::new();
    for p in &config.upstream.peers {
        match std::net::ToSocketAddrs::to_socket_addrs(p.as_str()) {
            Ok(found) => {
                let before = peers.len();
                peers.extend(found);
                if peers.len() == before {
                    return fail("upstream.peers", &format!("{p} resolves to no address"));
                }
            }
            Err(e) => return fail("upstream.peers", &format!("cannot resolve {p}: {e}")),
        }
    }
    let server_conf = ServerConf {
        threads: config.server.threads,
        pid_file: config.server.pid_file.display().to_string(),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        work_stealing: config.server.work_stealing,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    // On upgrade this receives the listening sockets from the old process; connections
    // wait in the kernel's backlog until the services start below.
    server.bootstrap();

    // The old process of an upgrade releases the ledger when it gets SIGQUIT (after
    // writing its snapshot): wait for it, then restore that snapshot.
    // (In fleet mode the ledger is Redis: nothing to wait for.)
    let ledger: Arc<dyn Ledger> = match &fleet {
        Some(node) => node.ledger(),
        None => match open_ledger(&config, upgrade.then_some(HANDOVER_WAIT)) {
            Ok(l) => l,
            Err(e) => return fail("ledger", &e),
        },
    };
    let shared = Arc::new(Shared::with_engine_key(
        &config,
        verifier,
        ledger,
        Arc::clone(&metrics),
        events,
        engine_key,
    ));
    let lifecycle = Arc::new(
        Lifecycle::new(Arc::clone(&shared), &config.state).keeping_engine_key(fleet.is_some()),
    );
    lifecycle.restore();
    // The fleet's synchronizer starts on the restored engine.
    if let Some(node) = &fleet {
        node.start(Arc::clone(&shared.engine));
    }
    // Sockets, ledger and state are ours: `warden upgrade` takes this as the hand-over.
    crate::lifecycle::write_pid_file(&config.server.pid_file);

    let mut lb = match LoadBalancer::try_from_iter(peers.iter().copied()) {
        Ok(lb) => lb,
        Err(e) => return fail("upstream.peers", &e),
    };
    lb.set_health_check(TcpHealthCheck::new());
    lb.health_check_frequency = Some(std::time::Duration::from_secs(1));
    let health = background_service("upstream health", lb);
    let upstreams = health.task();

    // Every connection gets a deadline on each request header (limits.header_timeout).
    let mut proxy = Service::new(
        "warden proxy".to_string(),
        warden_proxy::conn::Guarded::new(
            pingora::proxy::http_proxy(
                &server.configuration,
                WardenProxy::new(Arc::clone(&shared), upstreams),
            ),
            Arc::clone(&shared),
        )
        // Three quarters of the grace period: kept-alive clients get their next answer
        // with `Connection: close` instead of a connection dropped under their request.
        .idle_linger(config.server.grace_period * 3 / 4),
    );
    for addr in &config.server.listen {
        proxy.add_tcp(&addr.to_string());
    }
    let control: Arc<dyn Control> = Arc::new(ControlImpl(Arc::clone(&shared)));
    let mut admin = Service::new(
        "warden admin".to_string(),
        AdminApp::new(control, admin_token.as_deref()),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    let maintenance = background_service("maintenance", Maintenance::new(Arc::clone(&shared)));
    let phases = server.watch_execution_phase();
    let lifecycle_service = background_service(
        "lifecycle",
        LifecycleService::new(Arc::clone(&lifecycle), phases),
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(health);
    server.add_service(maintenance);
    server.add_service(lifecycle_service);
    for s in extra {
        server.add_boxed_service(s);
    }
    log::info!(
        "warden listening on {:?}, admin on {}, upstreams {:?} ({:?}), ledger {} entries",
        config.server.listen,
        config.admin.listen,
        config.upstream.peers,
        peers,
        shared.ledger.stats().entries
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(crate::lifecycle::NotifyingSignals),
    });
    // Stopped (SIGTERM after the drain, or SIGINT): the final snapshot, with everything
    // counted. After an upgrade the new process owns the file and this writes nothing.
    lifecycle.save("stop");
    log::info!("warden stopped");
    ExitCode::SUCCESS
}
