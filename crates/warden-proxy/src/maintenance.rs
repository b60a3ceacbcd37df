//! The maintenance task: sweeps expired ledger records and cached tokens, refreshes
//! gauges, and reloads the configuration on SIGHUP (pingora itself does not handle
//! SIGHUP, whose default action would kill the process).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use warden_core::ledger::Retention;

use crate::{unix_now, unix_now_ms, Shared};

/// Modification times of the watched files (a missing file counts as a state too).
fn modified(files: &[std::path::PathBuf]) -> Vec<Option<std::time::SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// The maintenance background service.
pub struct Maintenance {
    shared: Arc<Shared>,
}

impl Maintenance {
    /// A maintenance task over the shared state.
    #[must_use]
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!(
                    "cannot install the SIGHUP handler, reload only through the admin API: {e}"
                );
                None
            }
        };
        self.shared.sighup_ready.store(true, Ordering::Release);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut fast = tokio::time::interval(Duration::from_millis(100));
        let mut last_sweep = tokio::time::Instant::now();
        let mut mtimes = modified(&self.shared.settings.load().watched);
        let mut last_watch = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = fast.tick() => {
                    let s = &self.shared;
                    let report = s.engine.sweep(unix_now_ms());
                    if report.evicted > 0 {
                        s.metrics.state_evictions.inc_by(report.evicted as u64);
                    }
                    for ban in &report.ended {
                        let mut e = warden_metrics::Event::new("ban_expired");
                        e.rule = Some(ban.rule.to_string());
                        e.key = Some(ban.key.clone());
                        e.action = Some("expire");
                        s.events.emit(&e);
                    }
                    if last_watch.elapsed() >= Duration::from_millis(500) {
                        last_watch = tokio::time::Instant::now();
                        let now = modified(&s.settings.load().watched);
                        if now != mtimes {
                            log::info!("configuration or rule file changed; reloading");
                            let _ = s.reload();
                            mtimes = modified(&s.settings.load().watched);
                        }
                    }
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = self.shared.reload();
                }
                _ = tick.tick() => {
                    let s = &self.shared;
                    let stats = s.ledger.stats();
                    s.metrics.ledger_entries.set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
                    s.metrics.ledger_pending_revocations.set(i64::try_from(stats.pending_revocations).unwrap_or(i64::MAX));
                    s.metrics.verify_cache_entries.set(i64::try_from(s.verifier.cache_len()).unwrap_or(i64::MAX));
                    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                    s.metrics.active_bans.set(gauge(s.engine.active_bans(unix_now_ms())));
                    s.metrics.tracked_keys.set(gauge(s.engine.tracked_keys()));
                    s.metrics.state_bytes.set(gauge(s.engine.state_bytes()));
                    let settings = s.settings.load();
                    if last_sweep.elapsed() >= settings.ledger.sweep_interval {
                        last_sweep = tokio::time::Instant::now();
                        let now = unix_now();
                        let retention = Retention {
                            expiry_grace: settings.ledger.expiry_grace.as_secs(),
                            pending_revocation_ttl: settings.ledger.pending_revocation_ttl.as_secs(),
                        };
                        match s.ledger.sweep(now, retention).await {
                            Ok(n) if n > 0 => log::info!("ledger sweep removed {n} expired records"),
                            Ok(_) => {}
                            Err(e) => log::warn!("ledger sweep failed: {e}"),
                        }
                        let dropped = s.verifier.sweep_cache(now);
                        if dropped > 0 {
                            log::debug!("verification cache sweep dropped {dropped} tokens");
                        }
                    }
                }
            }
        }
    }
}
