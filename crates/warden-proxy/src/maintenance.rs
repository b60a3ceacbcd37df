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

use crate::{unix_now, Shared};

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
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = self.shared.reload();
                }
                _ = tick.tick() => {
                    let s = &self.shared;
                    let stats = s.ledger.stats();
                    s.metrics.ledger_entries.set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
                    s.metrics.verify_cache_entries.set(i64::try_from(s.verifier.cache_len()).unwrap_or(i64::MAX));
                    let settings = s.settings.load();
                    if last_sweep.elapsed() >= settings.ledger.sweep_interval {
                        last_sweep = tokio::time::Instant::now();
                        let now = unix_now();
                        let grace = settings.ledger.expiry_grace.as_secs();
                        match s.ledger.sweep(now, grace).await {
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
