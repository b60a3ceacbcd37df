//! The process lifecycle around pingora's: the rule engine's state snapshot (restored at
//! start, written on stop, on graceful upgrade and periodically) and the ledger's
//! hand-over to the new process of a graceful upgrade.
//!
//! Order on SIGQUIT (graceful upgrade), in the old process: pingora announces the phase
//! `GracefulUpgradeTransferringFds` and sends the listening sockets to the new process;
//! here, at the same moment, the snapshot is written, then the ledger handed over
//! (`Ledger::hand_over`: queued writes committed, the store's lock released). The new
//! process opens the ledger only once it is released, and restores the snapshot only
//! after that, so it always reads the snapshot of this hand-over. After it, this process
//! writes no more snapshots (the file now belongs to the new process); counts it makes
//! while it drains are not carried over.
//!
//! Order on SIGTERM: pingora stops the listeners, drains, stops its runtimes; then
//! [`Lifecycle::save`] writes the final snapshot, with everything counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{
    ExecutionPhase, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch, UnixShutdownSignalWatch,
};
use pingora::services::background::BackgroundService;
use tokio::sync::broadcast;
use warden_proxy::{unix_now_ms, Shared};

/// Snapshot and hand-over for one process.
pub struct Lifecycle {
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    interval: Duration,
    /// The engine's hash key is set from outside (fleet mode): a snapshot made with
    /// another key is not restored.
    same_key: bool,
    /// Set once this process has handed over (no more snapshots from here).
    handed_over: AtomicBool,
    /// One snapshot write at a time.
    writing: Mutex<()>,
}

impl Lifecycle {
    /// The lifecycle of a process over `shared`, with the configured snapshot file.
    #[must_use]
    pub fn new(shared: Arc<Shared>, state: &warden_config::model::State) -> Self {
        Self {
            shared,
            path: state.snapshot_path.clone(),
            interval: state.snapshot_interval,
            same_key: false,
            handed_over: AtomicBool::new(false),
            writing: Mutex::new(()),
        }
    }

    /// With `yes`, a snapshot made with another engine key than the engine's own is
    /// refused (fleet mode, where every node hashes with the fleet's key).
    #[must_use]
    pub fn keeping_engine_key(mut self, yes: bool) -> Self {
        self.same_key = yes;
        self
    }

    /// Restores the snapshot into the engine, if there is one. Never fails start-up: a
    /// damaged or incompatible snapshot is logged and warden starts with empty state.
    pub fn restore(&self) {
        let Some(path) = &self.path else { return };
        let bytes = match warden_detect::snapshot::read_file(path) {
            Ok(Some(b)) => b,
            Ok(None) => {
                log::info!(
                    "no state snapshot at {}; starting with empty counters and bans",
                    path.display()
                );
                return;
            }
            Err(e) => {
                log::error!(
                    "state snapshot not restored, starting with empty counters and bans: {e}"
                );
                return;
            }
        };
        let restored = if self.same_key {
            self.shared.engine.restore_same_key(&bytes, unix_now_ms())
        } else {
            self.shared.engine.restore(&bytes, unix_now_ms())
        };
        match restored {
            Ok(r) => log::info!(
                "state snapshot {} restored (taken {} ms ago): {} keys, {} rule slots, {} bans; left behind: {} slots (rule changed, gone or window passed), {} bans (ended or rule gone)",
                path.display(),
                unix_now_ms().saturating_sub(r.saved_ms),
                r.entries,
                r.slots,
                r.bans,
                r.slots_dropped,
                r.bans_dropped
            ),
            Err(e) => log::error!(
                "state snapshot {} not restored, starting with empty counters and bans: {e}",
                path.display()
            ),
        }
    }

    /// Writes the snapshot (unless this process has handed over); `why` names the
    /// occasion in the log. Returns whether one was written.
    pub fn save(&self, why: &str) -> bool {
        let Some(path) = &self.path else { return false };
        let _one = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.handed_over.load(Ordering::Acquire) {
            return false;
        }
        let start = Instant::now();
        let bytes = self.shared.engine.snapshot(unix_now_ms());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                log::error!("state snapshot ({why}) not written: {}: {e}", dir.display());
                return false;
            }
        }
        match warden_detect::snapshot::write_file(path, &bytes) {
            Ok(()) => {
                let level = if why == "periodic" {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                log::log!(
                    level,
                    "state snapshot ({why}) written to {}: {} bytes in {:?}",
                    path.display(),
                    bytes.len(),
                    start.elapsed()
                );
                true
            }
            Err(e) => {
                log::error!("state snapshot ({why}) not written: {e}");
                false
            }
        }
    }

    /// Graceful upgrade: the last snapshot, then the ledger to the new process.
    pub fn hand_over(&self) {
        let _ = self.save("graceful upgrade");
        {
            let _one = self
                .writing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.handed_over.store(true, Ordering::Release);
        }
        match self.shared.ledger.hand_over() {
            Ok(()) => log::info!("ledger handed over to the new process"),
            Err(e) => log::error!(
                "ledger hand-over failed, the new process cannot open the ledger and will give up: {e}"
            ),
        }
    }
}

/// The background service that reacts to pingora's phases and writes periodic
/// snapshots.
pub struct LifecycleService {
    lifecycle: Arc<Lifecycle>,
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

impl LifecycleService {
    /// Watches `phases` (from `Server::watch_execution_phase`, taken before `run`).
    #[must_use]
    pub fn new(lifecycle: Arc<Lifecycle>, phases: broadcast::Receiver<ExecutionPhase>) -> Self {
        Self {
            lifecycle,
            phases: Mutex::new(Some(phases)),
        }
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) something about this process, if
/// it was started with a `NOTIFY_SOCKET`; errors are logged, never fatal. `MAINPID=` in
/// the message makes the new process of a graceful upgrade the unit's main process.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let send = || -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        if let Some(name) = bytes.strip_prefix(b"@") {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
                return Ok(());
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(std::io::Error::other("abstract sockets are Linux only"));
            }
        }
        sock.send_to(state.as_bytes(), &path)?;
        Ok(())
    };
    if let Err(e) = send() {
        log::warn!("cannot notify systemd ({}): {e}", path.to_string_lossy());
    }
}

/// pingora's signal handling (SIGTERM graceful stop, SIGINT fast stop, SIGQUIT upgrade)
/// that tells systemd `STOPPING=1` the moment a stop begins, before pingora acts on it
/// (from a service, the message could be lost to the runtimes' shutdown). An upgrade
/// sends nothing: the new process announces itself as the main process instead.
pub struct NotifyingSignals;

#[async_trait]
impl ShutdownSignalWatch for NotifyingSignals {
    async fn recv(&self) -> ShutdownSignal {
        let signal = UnixShutdownSignalWatch.recv().await;
        if !matches!(signal, ShutdownSignal::GracefulUpgrade) {
            sd_notify("STOPPING=1");
        }
        signal
    }
}

/// Writes this process's id to `server.pid_file` (`warden upgrade` reads it); a failure
/// is only a warning.
pub fn write_pid_file(path: &std::path::Path) {
    if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
        log::warn!("cannot write the pid file {}: {e}", path.display());
    }
}

#[async_trait]
impl BackgroundService for LifecycleService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Services start in order; the listeners (bound, or inherited on an upgrade)
        // accept as soon as theirs start, a moment after this.
        sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        let phases = self
            .phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut phases) = phases else { return };
        let periodic = !self.lifecycle.interval.is_zero();
        let mut tick = tokio::time::interval(self.lifecycle.interval.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: skip it, the state was just restored.
        tick.tick().await;
        loop {
            tokio::select! {
                phase = phases.recv() => match phase {
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                        let lc = Arc::clone(&self.lifecycle);
                        let _ = tokio::task::spawn_blocking(move || lc.hand_over()).await;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if periodic => {
                    let lc = Arc::clone(&self.lifecycle);
                    let _ = tokio::task::spawn_blocking(move || lc.save("periodic")).await;
                }
                // The final snapshot is written after the drain (run.rs), not here.
                _ = shutdown.changed() => return,
            }
        }
    }
}
