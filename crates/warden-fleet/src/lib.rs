//! Fleet mode: many warden nodes share one token ledger, their revocations, their bans
//! and the counts of fleet-scope rules through one Redis.
//!
//! ## Redis keys (under the namespace `ns`, default `warden`)
//! | key | type | what |
//! |---|---|---|
//! | `ns:tok:<token id>` | hash `a k i e [r]` | a record: account, kid, iat, exp, revoked; expires at `exp + ledger.expiry_grace` |
//! | `ns:tok:<token id>` | hash `r` alone | a token revoked before its record arrived; expires after `ledger.pending_revocation_ttl`, or becomes the record's hash when the record is written |
//! | `ns:revoked:pending` | sorted set token id by revocation time (unix s) | the revocations waiting for their record, to hold them to `ledger.max_pending_revocations`; trimmed by age at each token revocation |
//! | `ns:revoked:accounts` | hash account → cut-off | account revocations |
//! | `ns:revoked:kids` | set | key-id revocations |
//! | `ns:bans` | hash ban id → JSON | bans in force, for nodes that start later |
//! | `ns:bans:end` | sorted set ban id by end (unix ms) | ended bans are dropped from both every 20 `sync_interval`s by a script |
//! | `ns:stream` | stream, `MAXLEN ~ stream_max_len` | every revocation, ban and lift, in order |
//! | `ns:cnt:<rule>:<key>:<window index>` | hash node → count | fleet-scope counters; expire after two windows |
//! | `ns:node:<node>` | string, instance id | the running process that holds a node name; expires after three `sync_interval`s |
//!
//! ## Node names and instances
//! Each process draws a random instance id at start. Stream entries carry both the node
//! name (`n`, for people reading the stream) and the instance (`i`): a node skips only
//! the entries of its own process, so two processes given the same name by mistake still
//! apply each other's revocations and bans. Counter hashes are keyed by node name, so
//! such twins would hide each other's counts: every `sync_interval` a node claims
//! `ns:node:<node>` for its instance; a name held by another live process sets
//! `warden_fleet_node_conflict` to 1 and logs an error (once a minute). During an upgrade
//! the new process sees the old one's claim until it stops syncing: a conflict lasting no
//! longer than the drain is expected.
//!
//! ## Ledger ([`RedisLedger`])
//! A write is one `MULTI`/`EXEC` (`HSET` + `EXPIREAT` per record), acknowledged only after
//! Redis answered `OK` (and, with `min_replicas`, after `WAIT` saw that many replicas):
//! with `appendfsync always` an acknowledged record survives a Redis crash. Any failure
//! or timeout reaches the caller as [`LedgerError::Unavailable`](warden_core::LedgerError::Unavailable); nothing is queued to
//! be retried behind its back. Lookups are answered from a local [`MemIndex`](warden_core::ledger::MemIndex) when it
//! knows the token, else from Redis (`HGETALL`, whose answer fills the index).
//!
//! A token Redis does not have is remembered as absent for [`ABSENT_MS`] (at most
//! [`ABSENT_CAP`] tokens), so a forged token replayed in a flood costs one Redis lookup
//! per node and half-second, not one per request. Tokens within `ledger.issuance_window`
//! of their `iat` are never remembered (their record may be on its way, and the proxy
//! waits for it), and a record this node writes clears its token at once; a record of an
//! older token written on another node is seen here at most [`ABSENT_MS`] late.
//!
//! ## Revocations and bans
//! Applied to Redis durably (the record's `r` field, the revocation hashes, the ban hash)
//! and appended to the stream in the same `MULTI`. Every node tails the stream with
//! `XREAD BLOCK` from the last id it applied, so an entry written while a node was
//! disconnected is read when it reconnects (pub/sub would lose it). A node that finds
//! the stream trimmed past its last id (disconnected for more than `stream_max_len`
//! entries) drops its local index, which refills from Redis, and re-reads the hashes.
//!
//! ## Fleet-scope counters
//! See `warden_detect::fleet` for the accuracy. Every `sync_interval` each node pipelines
//! `HINCRBY ns:cnt:.. <node> <delta>` for what it counted, reads back the current and
//! previous windows' hashes of the keys it saw, and keeps the other nodes' sums.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ledger;
mod sync;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use thiserror::Error;
use warden_config::model::Fleet as FleetConfig;
use warden_core::verify::Verifier;
use warden_detect::fleet::FleetState;
use warden_detect::Engine;
use warden_metrics::Metrics;

pub use ledger::{RedisLedger, ABSENT_CAP, ABSENT_MS};

/// Why fleet mode could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The shared key file could not be read or is too short.
    #[error("fleet.key_file {path}: {detail}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The Redis URL was refused by the client.
    #[error("fleet.redis_url {url:?}: {detail}")]
    Url {
        /// The URL (password removed).
        url: String,
        /// The client's message.
        detail: String,
    },
    /// The fleet's runtime thread could not start.
    #[error("fleet: cannot start the Redis runtime: {0}")]
    Runtime(String),
}

/// The engine key of the fleet: SHA-256 of the shared secret, first 16 bytes. Every
/// node reading the same file gets the same key.
pub fn engine_key(path: &Path) -> Result<[u8; 16], FleetError> {
    let bad = |detail: String| FleetError::KeyFile {
        path: path.display().to_string(),
        detail,
    };
    let mut bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < 16 {
        return Err(bad(format!(
            "holds {} bytes; expected at least 16 random ones",
            bytes.len()
        )));
    }
    let mut h = Sha256::new();
    h.update(b"warden:fleet:engine-key:");
    h.update(&bytes);
    let d = h.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&d[..16]);
    Ok(key)
}

/// A URL with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Redis key names.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
}

impl Keys {
    pub(crate) fn tok(&self, id: &warden_core::ledger::TokenId) -> String {
        format!("{}:tok:{}", self.ns, id.to_hex())
    }
    pub(crate) fn accounts(&self) -> String {
        format!("{}:revoked:accounts", self.ns)
    }
    pub(crate) fn kids(&self) -> String {
        format!("{}:revoked:kids", self.ns)
    }
    pub(crate) fn pending(&self) -> String {
        format!("{}:revoked:pending", self.ns)
    }
    pub(crate) fn bans(&self) -> String {
        format!("{}:bans", self.ns)
    }
    /// Sorted set of ban ids by their end (unix ms), to drop ended bans from
    /// [`Keys::bans`] without reading it whole.
    pub(crate) fn ban_ends(&self) -> String {
        format!("{}:bans:end", self.ns)
    }
    pub(crate) fn stream(&self) -> String {
        format!("{}:stream", self.ns)
    }
    pub(crate) fn counter(&self, rule: u64, key: u64, epoch: u32) -> String {
        format!("{}:cnt:{rule:016x}:{key:016x}:{epoch}", self.ns)
    }
    /// Which running process holds a node name.
    pub(crate) fn node(&self, name: &str) -> String {
        format!("{}:node:{name}", self.ns)
    }
}

/// Health of the node's view of the fleet.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Unix ms of the last successful stream read.
    pub stream_ok_ms: AtomicU64,
    /// Unix ms of the last successful counter sync.
    pub sync_ok_ms: AtomicU64,
}

/// What the node's tasks share.
pub(crate) struct Inner {
    pub cfg: FleetConfig,
    /// This process's random id, on every stream entry it writes (`i`), so that it skips
    /// its own entries and no one else's, whatever the node names.
    pub instance: String,
    pub keys: Keys,
    /// Commands (lookups, writes, counters).
    pub conn: ConnectionManager,
    /// The stream tail, on its own connection: a blocking `XREAD` would hold up every
    /// command multiplexed behind it.
    pub tail: ConnectionManager,
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<Verifier>,
    pub health: Health,
    /// Seconds a record is kept past its expiry.
    pub expiry_grace: u64,
    /// `ledger.pending_revocation_ttl` in seconds.
    pub pending_revocation_ttl: u64,
    /// `ledger.max_pending_revocations`.
    pub max_pending_revocations: usize,
    /// `ledger.issuance_window` in seconds: tokens issued more recently than this may be
    /// waited for, so their absence from Redis is never remembered.
    pub issuance_window: u64,
}

impl Inner {
    pub(crate) fn ok(&self) {
        self.metrics.fleet.redis_down.set(0);
    }

    pub(crate) fn failed(&self, op: warden_metrics::FleetOp, e: &dyn std::fmt::Display) {
        self.metrics.fleet.error(op);
        self.metrics.fleet.redis_down.set(1);
        log::warn!("fleet: redis {op:?} failed: {e}");
    }

    /// Runs a Redis call under the command timeout.
    pub(crate) async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.cfg.command_timeout, fut).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(format!("redis {what}: {e}")),
            Err(_) => Err(format!(
                "redis {what}: no answer within {:?}",
                self.cfg.command_timeout
            )),
        }
    }
}

/// A random 64-bit id for this process (std's per-process random hash keys, over the pid
/// and the time), as 16 hex digits.
fn new_instance_id() -> String {
    use std::hash::BuildHasher;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now));
    format!("{h:016x}")
}

/// One node's membership of the fleet: the shared ledger and the tasks that keep the
/// node in step (stream tail, counter and ban sync), on a runtime of their own.
pub struct FleetNode {
    inner: Arc<Inner>,
    ledger: Arc<RedisLedger>,
    state: Arc<FleetState>,
    runtime: tokio::runtime::Runtime,
}

impl FleetNode {
    /// Prepares the node. Does not wait for Redis: the connections are made lazily and
    /// remade after failures, so a node starts while Redis is down (its routes then get
    /// their fail mode) and joins when Redis is back.
    pub fn new(
        cfg: &FleetConfig,
        ledger_cfg: &warden_config::model::Ledger,
        verifier: Arc<Verifier>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FleetError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("warden-fleet")
            .enable_all()
            .build()
            .map_err(|e| FleetError::Runtime(e.to_string()))?;
        let url_err = |e: redis::RedisError| FleetError::Url {
            url: redact(&cfg.redis_url),
            detail: e.to_string(),
        };
        let client = redis::Client::open(cfg.redis_url.as_str()).map_err(url_err)?;
        let manager = |response: Duration| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.connect_timeout))
                .set_response_timeout(Some(response))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500))
        };
        let (conn, tail) = {
            let _enter = runtime.enter();
            let conn = ConnectionManager::new_lazy_with_config(
                client.clone(),
                manager(cfg.command_timeout),
            )
            .map_err(url_err)?;
            let tail = ConnectionManager::new_lazy_with_config(
                client,
                manager(sync::STREAM_BLOCK + cfg.command_timeout),
            )
            .map_err(url_err)?;
            (conn, tail)
        };
        // Connect now if Redis answers within connect_timeout, so that the first lookups
        // after start do not pay for the connection (and time out under ledger.timeout);
        // if it does not, start anyway: the connections are made when Redis is back.
        let warm = runtime.block_on(async {
            let ping = |mut c: ConnectionManager| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            };
            let both = async { tokio::try_join!(ping(conn.clone()), ping(tail.clone())) };
            tokio::time::timeout(cfg.connect_timeout, both).await
        });
        match warm {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!(
                "fleet: Redis at {} does not answer yet ({e}); starting, routes get their fail mode until it does",
                redact(&cfg.redis_url)
            ),
            Err(_) => log::warn!(
                "fleet: Redis at {} did not answer within {:?}; starting, routes get their fail mode until it does",
                redact(&cfg.redis_url),
                cfg.connect_timeout
            ),
        }
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            instance: new_instance_id(),
            keys: Keys {
                ns: cfg.namespace.clone(),
            },
            conn,
            tail,
            metrics,
            verifier,
            health: Health::default(),
            expiry_grace: ledger_cfg.expiry_grace.as_secs(),
            pending_revocation_ttl: ledger_cfg.pending_revocation_ttl.as_secs(),
            max_pending_revocations: ledger_cfg.max_pending_revocations,
            issuance_window: ledger_cfg.issuance_window.as_secs(),
        });
        Ok(Self {
            ledger: Arc::new(RedisLedger::new(Arc::clone(&inner))),
            state: Arc::new(FleetState::new(cfg.max_keys)),
            inner,
            runtime,
        })
    }

    /// The shared ledger.
    #[must_use]
    pub fn ledger(&self) -> Arc<RedisLedger> {
        Arc::clone(&self.ledger)
    }

    /// Attaches the engine (fleet-scope counters, bans) and starts the node's tasks.
    pub fn start(&self, engine: Arc<Engine>) {
        if !engine.attach_fleet(Arc::clone(&self.state)) {
            log::warn!("fleet: the engine was already attached");
        }
        let now = now_ms();
        self.inner.health.stream_ok_ms.store(now, Ordering::Relaxed);
        self.inner.health.sync_ok_ms.store(now, Ordering::Relaxed);
        self.runtime.spawn(sync::tail(
            Arc::clone(&self.inner),
            Arc::clone(&self.ledger),
            Arc::clone(&engine),
        ));
        self.runtime.spawn(sync::counters(
            Arc::clone(&self.inner),
            Arc::clone(&self.state),
        ));
        log::info!(
            "fleet: node {:?} on {} (namespace {:?}, sync every {:?})",
            self.inner.cfg.node,
            redact(&self.inner.cfg.redis_url),
            self.inner.cfg.namespace,
            self.inner.cfg.sync_interval
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_key_is_stable_and_needs_16_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        std::fs::write(&p, b"0123456789abcdef\n").expect("write");
        let a = engine_key(&p).expect("key");
        std::fs::write(&p, b"0123456789abcdef").expect("write");
        assert_eq!(engine_key(&p).expect("key"), a);
        std::fs::write(&p, b"short").expect("write");
        let e = engine_key(&p).expect_err("too short");
        assert!(e.to_string().contains("holds 5 bytes"), "{e}");
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://user:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
