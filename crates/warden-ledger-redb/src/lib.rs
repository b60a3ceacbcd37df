//! The embedded, durable token ledger: [redb] on disk, [`MemIndex`] in memory.
//!
//! * Lookups never touch the disk: every record is loaded into the in-memory index at
//!   start and kept there until it expires.
//! * Writes go through one writer thread that **group-commits**: it takes every request
//!   queued since its last commit, writes them in one redb transaction, commits with
//!   `Durability::Immediate` (fsync), then applies them to the index and acknowledges.
//!   A record is visible to lookups only once it is durable, and an acknowledged record
//!   survives `kill -9` and power loss (as far as the disk honours fsync).
//! * The write queue is bounded; when it is full, writes fail fast with
//!   [`LedgerError::Unavailable`] instead of blocking the proxy.
//! * redb detects a file that was not closed cleanly and repairs it on open; a file
//!   that is corrupt or truncated fails [`EmbeddedLedger::open`] with an error naming
//!   the path (see `docs/operations.md` for recovery).
//! * **Graceful upgrade.** redb locks its file, so a new process cannot open the store
//!   while the old one holds it. [`Ledger::hand_over`] (the old process, on SIGQUIT)
//!   drains the write queue (every acknowledged record is already committed with
//!   fsync), closes the store and releases the lock; from then on the old process
//!   answers lookups from its index, and records it still receives during its drain go
//!   to a **hand-off journal** beside the store (`<store>.handoff.jsonl`, one JSON
//!   record a line, fsync'd before the record is acknowledged, the format
//!   `warden ledger import` reads). The new process opens the store with
//!   [`EmbeddedLedger::open_waiting`] (retrying while the old one still holds it),
//!   imports the journal, and keeps importing what the old process appends until that
//!   process exits (it holds an exclusive `flock` on the journal while it lives), then
//!   deletes the journal. A journal left by a crash is imported at the next start.
//!   The other way round, while the old process lives, the new one mirrors every
//!   record and revocation it commits to `<store>.handback.jsonl`, which the old one
//!   follows into its index: a token issued through the new process and used at once
//!   through the old one (both accept connections for pingora's 5 s) is known there
//!   too, and a revocation made through the new one applies in both.
//! * **A token revoked before its record arrives** (by `jti`, before a batch import
//!   brings the record) waits for it in a table of its own (`pending_revocations`: id ->
//!   time of the revocation), loaded at start like the records. The transaction that
//!   stores the record takes the id out of that table and stores the record revoked. The
//!   sweep drops a waiting revocation after `ledger.pending_revocation_ttl`; at most
//!   `ledger.max_pending_revocations` wait (see [`MemIndex`]'s docs for their memory).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::{BufRead as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_channel::oneshot;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;
use warden_core::ledger::{
    Answer, Ledger, LedgerStats, MemIndex, Query, Record, RecordView, Retention, Revocation,
    TokenId,
};
use warden_core::LedgerError;

const TOKENS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("tokens");
const REVOKED_ACCOUNTS: TableDefinition<&str, u64> = TableDefinition::new("revoked_accounts");
const REVOKED_KIDS: TableDefinition<&str, u64> = TableDefinition::new("revoked_kids");
/// Token revocations waiting for their record: id -> unix seconds of the revocation.
const PENDING: TableDefinition<[u8; 16], u64> = TableDefinition::new("pending_revocations");

/// Most requests one group commit takes.
const MAX_BATCH_OPS: usize = 4096;

/// Why the store could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// redb refused the file (corrupt, truncated, locked by another process...).
    #[error("ledger store {path}: {source}{}", recovery_hint(source))]
    Database {
        /// The file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A record in the file does not decode.
    #[error("ledger store {path}: record {id} is corrupt ({detail}); see docs/operations.md, 'A corrupt ledger store'")]
    CorruptRecord {
        /// The file.
        path: PathBuf,
        /// The record's token id.
        id: String,
        /// What is wrong.
        detail: &'static str,
    },
    /// Another process (the old warden of a graceful upgrade) kept the store locked.
    #[error("ledger store {path} is still held by another process after {waited:?}; during a graceful upgrade the old warden releases it when it gets SIGQUIT (check that it did and that its log shows no hand-over error)")]
    Busy {
        /// The file.
        path: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
    /// The hand-off journal could not be read or imported.
    #[error("ledger hand-off journal {path}: {detail}")]
    Journal {
        /// The journal.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The writer thread could not be started.
    #[error("ledger store {path}: cannot start writer thread: {source}")]
    Thread {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What to do about a file redb refused: nothing to repair if another process holds it.
fn recovery_hint(e: &redb::Error) -> &'static str {
    match e {
        redb::Error::DatabaseAlreadyOpen => {
            "; is another warden (or `warden ledger`) using it? Stop it first"
        }
        _ => "; the file is damaged: see docs/operations.md, 'A corrupt ledger store', to recover",
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> OpenError {
    OpenError::Database {
        path: path.to_owned(),
        source: Box::new(e.into()),
    }
}

type Ack = oneshot::Sender<Result<u64, LedgerError>>;

enum Op {
    Record(Vec<Record>, Ack),
    /// A revocation and when it was made (unix seconds).
    Revoke(Revocation, u64, Ack),
    /// Expired records to remove.
    Delete(Vec<TokenId>, Ack),
    /// Waiting token revocations to drop if still made before the time (unix seconds).
    DropPending(Vec<TokenId>, u64, Ack),
}

/// Bytes of page cache redb may keep for the store.
pub const STORE_CACHE_BYTES: usize = 32 << 20;

/// The open store: the database and its writer thread.
struct Store {
    db: Arc<Database>,
    tx: SyncSender<Op>,
    writer: JoinHandle<()>,
}

/// The embedded ledger backend.
pub struct EmbeddedLedger {
    index: Arc<MemIndex>,
    path: PathBuf,
    /// `None` once handed over to a new process.
    store: RwLock<Option<Store>>,
    /// The hand-off journal this process appends to, once it has handed over.
    journal: Mutex<Option<std::fs::File>>,
    /// The thread importing an old process's journal, and its stop flag.
    tail: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    /// After the hand-over: the thread applying the new process's mirror to the index.
    mirror: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

/// The new process's mirror of its commits for a draining old process:
/// `<store>.handback.jsonl`.
#[must_use]
pub fn handback_path(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_owned();
    name.push(".handback.jsonl");
    store.with_file_name(name)
}

/// The hand-off journal of a store: `<store>.handoff.jsonl`.
#[must_use]
pub fn journal_path(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_owned();
    name.push(".handoff.jsonl");
    store.with_file_name(name)
}

/// How often the new process looks for records the old one appended to the journal.
pub const JOURNAL_POLL: Duration = Duration::from_millis(50);

impl EmbeddedLedger {
    /// Like [`EmbeddedLedger::open`], but while another process holds the store (the old
    /// warden of a graceful upgrade, which releases it on SIGQUIT) retries every 50 ms for
    /// up to `wait`, then fails with [`OpenError::Busy`].
    pub fn open_waiting(path: &Path, queue: usize, wait: Duration) -> Result<Self, OpenError> {
        let start = Instant::now();
        let mut said = false;
        loop {
            match Self::open(path, queue) {
                Err(OpenError::Database { source, .. })
                    if matches!(*source, redb::Error::DatabaseAlreadyOpen) =>
                {
                    if start.elapsed() >= wait {
                        return Err(OpenError::Busy {
                            path: path.to_owned(),
                            waited: start.elapsed(),
                        });
                    }
                    if !said {
                        log::info!(
                            "ledger store {} is held by another process; waiting up to {wait:?} for it to hand over",
                            path.display()
                        );
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => {
                    if said {
                        log::info!(
                            "ledger store {} taken over after {:?}",
                            path.display(),
                            start.elapsed()
                        );
                    }
                    return other;
                }
            }
        }
    }

    /// Opens (or creates) the store at `path` and loads it into memory. `queue` bounds the
    /// number of write requests waiting for the writer. A hand-off journal beside it is
    /// imported (and followed while the process that writes it lives).
    pub fn open(path: &Path, queue: usize) -> Result<Self, OpenError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| db_err(path, redb::Error::Io(e)))?;
            }
        }
        // Lookups are answered from the in-memory index, never from the store, so redb's
        // page cache only serves the loading scan and the writer: a small one is enough.
        // (redb's default ceiling is 1 GiB, which loading a large store fills: measured at
        // 1.4 GB of RSS for 10 M records, against 0.55 GB of index.)
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)
            .map_err(|e| db_err(path, e))?;
        // Make sure the tables exist so that readers never see "table missing".
        let w = db.begin_write().map_err(|e| db_err(path, e))?;
        {
            w.open_table(TOKENS).map_err(|e| db_err(path, e))?;
            w.open_table(REVOKED_ACCOUNTS)
                .map_err(|e| db_err(path, e))?;
            w.open_table(REVOKED_KIDS).map_err(|e| db_err(path, e))?;
            w.open_table(PENDING).map_err(|e| db_err(path, e))?;
        }
        w.commit().map_err(|e| db_err(path, e))?;
        let index = Arc::new(MemIndex::new());
        load(&db, &index, path)?;
        let db = Arc::new(db);
        // Records an old process took while it drained, before this one starts.
        let journal = journal_path(path);
        let mut reading = Journal::new(&journal);
        let follow = match reading.step(&db, &index) {
            Ok(done) => !done,
            Err(detail) => {
                return Err(OpenError::Journal {
                    path: journal,
                    detail,
                })
            }
        };
        // An old process still drains: mirror this process's commits for it.
        let handback = Arc::new(Mutex::new(None));
        if follow {
            let hb = handback_path(path);
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&hb)
                .map_err(|e| OpenError::Journal {
                    path: hb.clone(),
                    detail: e.to_string(),
                })?;
            *handback
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(f);
        }
        let (tx, rx) = sync_channel(queue.max(1));
        let writer = {
            let db = Arc::clone(&db);
            let index = Arc::clone(&index);
            let handback = Arc::clone(&handback);
            std::thread::Builder::new()
                .name("warden-ledger-writer".into())
                .spawn(move || writer_loop(&db, &index, &rx, &handback))
                .map_err(|source| OpenError::Thread {
                    path: path.to_owned(),
                    source,
                })?
        };
        let tail = if follow {
            let stop = Arc::new(AtomicBool::new(false));
            let (db, index, flag) = (Arc::clone(&db), Arc::clone(&index), Arc::clone(&stop));
            let (handback, hb) = (Arc::clone(&handback), handback_path(path));
            let handle = std::thread::Builder::new()
                .name("warden-ledger-journal".into())
                .spawn(move || {
                    follow_journal(reading, &db, &index, &flag);
                    // The old process is gone (or this ledger closes): no more mirror.
                    let f = handback
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                    if f.is_some() {
                        let _ = std::fs::remove_file(&hb);
                    }
                })
                .map_err(|source| OpenError::Thread {
                    path: path.to_owned(),
                    source,
                })?;
            Some((stop, handle))
        } else {
            None
        };
        Ok(Self {
            index,
            path: path.to_owned(),
            store: RwLock::new(Some(Store { db, tx, writer })),
            journal: Mutex::new(None),
            tail: Mutex::new(tail),
            mirror: Mutex::new(None),
        })
    }

    /// The open store's write channel, or `None` once handed over.
    fn sender(&self) -> Option<SyncSender<Op>> {
        let g = self
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.as_ref().map(|s| s.tx.clone())
    }

    /// Appends records to the hand-off journal (after the hand-over), fsync'd, then
    /// makes them visible to lookups.
    fn journal_records(&self, records: &[Record]) -> Result<(), LedgerError> {
        let mut g = self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(f) = g.as_mut() else {
            return Err(LedgerError::Unavailable(
                "the ledger store is closed and no hand-off journal is open".into(),
            ));
        };
        let mut lines = String::new();
        for r in records {
            lines.push_str(&journal_line(r));
            lines.push('\n');
        }
        let path = journal_path(&self.path);
        f.write_all(lines.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| {
                LedgerError::Storage(format!("hand-off journal {}: {e}", path.display()))
            })?;
        for r in records {
            self.index.insert(r);
        }
        Ok(())
    }

    /// Whether this process has handed its store over.
    #[must_use]
    pub fn handed_over(&self) -> bool {
        self.store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none()
    }

    /// The in-memory index (for tests and the memory benchmark).
    #[must_use]
    pub fn index(&self) -> &MemIndex {
        &self.index
    }

    /// Sends an op to the writer. `Err(op)` when the store has been handed over (the
    /// caller decides what that op becomes).
    async fn submit(&self, op: Op, done: Done) -> Result<Result<u64, LedgerError>, Op> {
        let Some(tx) = self.sender() else {
            return Err(op);
        };
        let sent = tx.try_send(op);
        // No sender may outlive the hand-over: the writer ends when the last one drops.
        drop(tx);
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Ok(Err(LedgerError::Unavailable(
                    "ledger write queue is full".into(),
                )))
            }
            Err(TrySendError::Disconnected(op)) => return Err(op),
        }
        Ok(done.await.unwrap_or_else(|_| {
            Err(LedgerError::Unavailable(
                "ledger writer dropped the request".into(),
            ))
        }))
    }

    fn close(&self) {
        for thread in [&self.tail, &self.mirror] {
            let t = thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some((stop, handle)) = t {
                stop.store(true, Ordering::Relaxed);
                let _ = handle.join();
            }
        }
        let store = self
            .store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(Store { db, tx, writer }) = store {
            // Closing the channel ends the writer after it commits what is queued.
            drop(tx);
            let _ = writer.join();
            drop(db);
        }
    }
}

type Done = oneshot::Receiver<Result<u64, LedgerError>>;

impl Drop for EmbeddedLedger {
    fn drop(&mut self) {
        self.close();
    }
}

/// The refusal of a write the old process cannot take after handing over.
fn handed_over_error(what: &str) -> LedgerError {
    LedgerError::Unavailable(format!(
        "this warden has handed its ledger to a new process (graceful upgrade) and cannot {what}; send it to the new process"
    ))
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn check_local(&self, query: &Query<'_>) -> Option<Answer> {
        Some(self.index.answer(query))
    }

    fn revision(&self) -> Option<u64> {
        Some(self.index.revision())
    }

    fn still_issued(&self, stamp: u64, id: &TokenId) -> bool {
        self.index.still_issued(stamp, id)
    }

    async fn check(&self, query: &Query<'_>) -> Result<Answer, LedgerError> {
        Ok(self.index.answer(query))
    }

    async fn record(&self, records: Vec<Record>) -> Result<(), LedgerError> {
        for r in &records {
            r.validate()?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        match self.submit(Op::Record(records, ack), done).await {
            Ok(r) => r.map(|_| ()),
            // Handed over: the journal takes it, durably, for the new process.
            Err(Op::Record(records, _)) => self.journal_records(&records),
            Err(_) => Err(handed_over_error("record")),
        }
    }

    async fn revoke(&self, revocation: Revocation, now: u64) -> Result<u64, LedgerError> {
        let (ack, done) = oneshot::channel();
        self.submit(Op::Revoke(revocation, now, ack), done)
            .await
            .unwrap_or_else(|_| Err(handed_over_error("revoke")))
    }

    async fn get(&self, id: &TokenId) -> Result<Option<RecordView>, LedgerError> {
        let storage = |e: redb::Error| LedgerError::Storage(e.to_string());
        let db = self
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|s| Arc::clone(&s.db));
        let Some(db) = db else {
            return Err(handed_over_error("read records"));
        };
        let r = db.begin_read().map_err(|e| storage(e.into()))?;
        let t = r.open_table(TOKENS).map_err(|e| storage(e.into()))?;
        let Some(v) = t.get(id.0).map_err(|e| storage(e.into()))? else {
            return Ok(None);
        };
        decode(*id, v.value())
            .map(Some)
            .map_err(|d| LedgerError::Storage(format!("record {} is corrupt: {d}", id.to_hex())))
    }

    fn stats(&self) -> LedgerStats {
        self.index.stats()
    }

    async fn sweep(&self, now: u64, retention: Retention) -> Result<u64, LedgerError> {
        let before = now.saturating_sub(retention.pending_revocation_ttl);
        let stale = self.index.stale_pending(before, MAX_BATCH_OPS * 16);
        if !stale.is_empty() {
            let (ack, done) = oneshot::channel();
            // After the hand-over the new process sweeps.
            self.submit(Op::DropPending(stale, before, ack), done)
                .await
                .unwrap_or(Ok(0))?;
        }
        let ids = self.index.expired(
            now.saturating_sub(retention.expiry_grace),
            MAX_BATCH_OPS * 16,
        );
        if ids.is_empty() {
            return Ok(0);
        }
        let (ack, done) = oneshot::channel();
        self.submit(Op::Delete(ids, ack), done)
            .await
            .unwrap_or(Ok(0))
    }

    fn hand_over(&self) -> Result<(), LedgerError> {
        let path = journal_path(&self.path);
        let io = |e: std::io::Error| {
            LedgerError::Storage(format!("hand-off journal {}: {e}", path.display()))
        };
        {
            let mut g = self
                .journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if g.is_some() {
                return Ok(());
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io)?;
            // Held until this process exits: the new process deletes the journal only
            // once it can take this lock, after importing everything in it.
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io(std::io::Error::other(
                        "locked by a process still draining from an earlier upgrade; try again when it has exited",
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
            // The directory entry must be durable before a record is acknowledged in it.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            *g = Some(f);
        }
        // A mirror left from an earlier upgrade must not be read as the new one's: the
        // new process creates its mirror only after it gets the store, below.
        let hb = handback_path(&self.path);
        match std::fs::remove_file(&hb) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        self.close();
        let stop = Arc::new(AtomicBool::new(false));
        let (index, flag) = (Arc::clone(&self.index), Arc::clone(&stop));
        match std::thread::Builder::new()
            .name("warden-ledger-mirror".into())
            .spawn(move || follow_mirror(&hb, &index, &flag))
        {
            Ok(h) => {
                *self
                    .mirror
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stop, h));
            }
            Err(e) => log::error!(
                "cannot follow the new process's records ({e}); tokens it issues are unknown here until this process exits"
            ),
        }
        log::info!(
            "ledger store {} handed over; records taken from now on go to {}",
            self.path.display(),
            path.display()
        );
        Ok(())
    }
}

// === hand-off journal ===

/// Appends a committed batch to the mirror a draining old process follows (no fsync:
/// the store has the data; the mirror only feeds the old process's memory).
fn mirror_batch(handback: &Mutex<Option<std::fs::File>>, batch: &[Op], counts: &Counts) {
    let mut g = handback
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(f) = g.as_mut() else { return };
    let mut lines = String::new();
    for (op, _) in batch.iter().zip(counts).filter(|(_, c)| c.is_ok()) {
        match op {
            Op::Record(records, _) => {
                for r in records {
                    lines.push_str(&journal_line(r));
                    lines.push('\n');
                }
            }
            Op::Revoke(rev, _, _) => {
                let v = match rev {
                    Revocation::Token(id) => {
                        serde_json::json!({"revoke": "token", "token_id": id.to_hex()})
                    }
                    Revocation::Account { account, at } => {
                        serde_json::json!({"revoke": "account", "account": account, "at": at})
                    }
                    Revocation::Kid(kid) => serde_json::json!({"revoke": "kid", "kid": kid}),
                };
                lines.push_str(&v.to_string());
                lines.push('\n');
            }
            Op::Delete(..) | Op::DropPending(..) => {}
        }
    }
    if lines.is_empty() {
        return;
    }
    if let Err(e) = f.write_all(lines.as_bytes()) {
        log::warn!("ledger mirror for the draining old process: {e}; it stops here");
        *g = None;
    }
}

#[derive(serde::Deserialize)]
#[serde(tag = "revoke", rename_all = "lowercase", deny_unknown_fields)]
enum MirrorRevocation {
    Token { token_id: String },
    Account { account: String, at: u64 },
    Kid { kid: String },
}

fn apply_mirror_line(line: &str, index: &MemIndex) -> Result<(), String> {
    if line.contains("\"revoke\"") {
        let rev = match serde_json::from_str::<MirrorRevocation>(line).map_err(|e| e.to_string())? {
            MirrorRevocation::Token { token_id } => {
                Revocation::Token(TokenId::from_hex(&token_id).map_err(|e| e.to_string())?)
            }
            MirrorRevocation::Account { account, at } => Revocation::Account { account, at },
            MirrorRevocation::Kid { kid } => Revocation::Kid(kid),
        };
        // A mirrored token revocation carries no time (the mirror's lines are the
        // hand-over's format between two versions): the old process, which keeps it
        // only until it exits, dates it when it reads it, a moment after it was made.
        index.revoke_kept(&rev, unix_now());
    } else {
        index.insert(&parse_journal_line(line)?);
    }
    Ok(())
}

/// In the old process after the hand-over: applies the new process's mirror to the
/// index until this process exits.
fn follow_mirror(path: &Path, index: &MemIndex, stop: &AtomicBool) {
    let mut offset = 0u64;
    let mut file: Option<std::io::BufReader<std::fs::File>> = None;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        if file.is_none() {
            file = std::fs::File::open(path).ok().map(std::io::BufReader::new);
        }
        if let Some(reader) = file.as_mut() {
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(n) if n > 0 && line.ends_with('\n') => {
                        offset += n as u64;
                        if let Err(e) = apply_mirror_line(line.trim(), index) {
                            log::error!("ledger mirror {}: {e}", path.display());
                        }
                    }
                    Ok(_) => {
                        // Nothing more, or half a line: read it again next time.
                        if reader.seek(std::io::SeekFrom::Start(offset)).is_err() {
                            file = None;
                        }
                        break;
                    }
                    Err(e) => {
                        log::error!("ledger mirror {}: {e}", path.display());
                        file = None;
                        break;
                    }
                }
            }
        }
        std::thread::sleep(JOURNAL_POLL);
    }
}

/// One journal line: the facts form of `warden ledger import`.
fn journal_line(r: &Record) -> String {
    serde_json::json!({
        "token_id": r.id.to_hex(),
        "account": r.account,
        "issued_at": r.issued_at,
        "expires_at": r.expires_at,
        "kid": r.kid,
    })
    .to_string()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalLine {
    token_id: String,
    account: String,
    issued_at: u64,
    expires_at: u64,
    kid: String,
}

fn parse_journal_line(line: &str) -> Result<Record, String> {
    let l: JournalLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let r = Record {
        id: TokenId::from_hex(&l.token_id).map_err(|e| e.to_string())?,
        account: l.account,
        issued_at: l.issued_at,
        expires_at: l.expires_at,
        kid: l.kid,
    };
    r.validate().map_err(|e| e.to_string())?;
    Ok(r)
}

/// Reading position in a journal another process may still append to.
struct Journal {
    path: PathBuf,
    offset: u64,
    line_no: usize,
    rejected: usize,
}

impl Journal {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            line_no: 0,
            rejected: 0,
        }
    }

    /// Imports the complete lines appended since the last step. Returns `true` when the
    /// journal is finished with: absent, or its writer gone (its lock is free), in which
    /// case everything in it is imported and the file removed (renamed aside if a line
    /// was refused).
    fn step(&mut self, db: &Database, index: &MemIndex) -> Result<bool, String> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e.to_string()),
        };
        // Take the lock first: once it is ours, nobody appends any more, and the read
        // below sees everything.
        let writer_gone = match f.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(e)) => return Err(e.to_string()),
        };
        self.import(&mut f, db, index)?;
        if !writer_gone {
            return Ok(false);
        }
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if len > self.offset {
            // The writer died while writing this line, so never acknowledged it; keep
            // it for inspection all the same.
            self.rejected += 1;
            log::error!(
                "ledger hand-off journal {}: {} bytes of an unfinished last line",
                self.path.display(),
                len - self.offset
            );
        }
        if self.rejected > 0 {
            let mut aside = self.path.as_os_str().to_owned();
            aside.push(".rejected");
            std::fs::rename(&self.path, &aside).map_err(|e| e.to_string())?;
            log::error!(
                "ledger hand-off journal: {} lines refused; the file is kept as {} for inspection",
                self.rejected,
                Path::new(&aside).display()
            );
        } else {
            std::fs::remove_file(&self.path).map_err(|e| e.to_string())?;
        }
        Ok(true)
    }

    fn import(
        &mut self,
        f: &mut std::fs::File,
        db: &Database,
        index: &MemIndex,
    ) -> Result<(), String> {
        f.seek(std::io::SeekFrom::Start(self.offset))
            .map_err(|e| e.to_string())?;
        let mut reader = std::io::BufReader::new(f);
        let mut records = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
            // A line without its newline is still being written: next time.
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse_journal_line(line.trim()) {
                Ok(r) => records.push(r),
                Err(e) => {
                    self.rejected += 1;
                    log::error!(
                        "ledger hand-off journal {}:{}: {e}",
                        self.path.display(),
                        self.line_no
                    );
                }
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let (ack, _done) = oneshot::channel();
        let n = records.len();
        let op = Op::Record(records, ack);
        write_batch(db, index, std::slice::from_ref(&op)).map_err(|e| e.to_string())?;
        let _ = apply(index, op);
        log::info!(
            "ledger hand-off journal {}: imported {n} records",
            self.path.display()
        );
        Ok(())
    }
}

/// Follows an old process's journal until it exits (or this ledger closes).
fn follow_journal(mut j: Journal, db: &Database, index: &MemIndex, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match j.step(db, index) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => log::error!("ledger hand-off journal {}: {e}", j.path.display()),
        }
        std::thread::sleep(JOURNAL_POLL);
    }
}

// === encoding ===
// value = issued_at u64 LE | expires_at u64 LE | revoked u8 | kid_len u8 | kid | account

fn encode(r: &Record, revoked: bool) -> Vec<u8> {
    let kid = &r.kid.as_bytes()[..r.kid.len().min(255)];
    let mut v = Vec::with_capacity(18 + kid.len() + r.account.len());
    v.extend_from_slice(&r.issued_at.to_le_bytes());
    v.extend_from_slice(&r.expires_at.to_le_bytes());
    v.push(u8::from(revoked));
    v.push(kid.len() as u8);
    v.extend_from_slice(kid);
    v.extend_from_slice(r.account.as_bytes());
    v
}

fn decode(id: TokenId, v: &[u8]) -> Result<RecordView, &'static str> {
    if v.len() < 18 {
        return Err("value shorter than its header");
    }
    let u = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    let issued_at = u(&v[0..8]);
    let expires_at = u(&v[8..16]);
    let revoked = match v[16] {
        0 => false,
        1 => true,
        _ => return Err("bad revoked flag"),
    };
    let kid_len = usize::from(v[17]);
    if v.len() < 18 + kid_len {
        return Err("kid runs past the value");
    }
    let kid = std::str::from_utf8(&v[18..18 + kid_len]).map_err(|_| "kid is not UTF-8")?;
    let account = std::str::from_utf8(&v[18 + kid_len..]).map_err(|_| "account is not UTF-8")?;
    Ok(RecordView {
        record: Record {
            id,
            account: account.to_owned(),
            issued_at,
            expires_at,
            kid: kid.to_owned(),
        },
        revoked,
    })
}

fn load(db: &Database, index: &MemIndex, path: &Path) -> Result<(), OpenError> {
    let r = db.begin_read().map_err(|e| db_err(path, e))?;
    let tokens = r.open_table(TOKENS).map_err(|e| db_err(path, e))?;
    for item in tokens.iter().map_err(|e| db_err(path, e))? {
        let (k, v) = item.map_err(|e| db_err(path, e))?;
        let id = TokenId(k.value());
        let view = decode(id, v.value()).map_err(|detail| OpenError::CorruptRecord {
            path: path.to_owned(),
            id: id.to_hex(),
            detail,
        })?;
        index.insert_with(&view.record, view.revoked);
    }
    let accounts = r
        .open_table(REVOKED_ACCOUNTS)
        .map_err(|e| db_err(path, e))?;
    for item in accounts.iter().map_err(|e| db_err(path, e))? {
        let (k, v) = item.map_err(|e| db_err(path, e))?;
        let _ = index.revoke(
            &Revocation::Account {
                account: k.value().to_owned(),
                at: v.value(),
            },
            0,
        );
    }
    let kids = r.open_table(REVOKED_KIDS).map_err(|e| db_err(path, e))?;
    for item in kids.iter().map_err(|e| db_err(path, e))? {
        let (k, _) = item.map_err(|e| db_err(path, e))?;
        let _ = index.revoke(&Revocation::Kid(k.value().to_owned()), 0);
    }
    let pending = r.open_table(PENDING).map_err(|e| db_err(path, e))?;
    for item in pending.iter().map_err(|e| db_err(path, e))? {
        let (k, at) = item.map_err(|e| db_err(path, e))?;
        index.restore_pending(TokenId(k.value()), at.value());
    }
    Ok(())
}

// === writer ===

fn writer_loop(
    db: &Database,
    index: &MemIndex,
    rx: &Receiver<Op>,
    handback: &Mutex<Option<std::fs::File>>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_OPS {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match write_batch(db, index, &batch) {
            Ok(counts) => {
                mirror_batch(handback, &batch, &counts);
                for (op, count) in batch.into_iter().zip(counts) {
                    // A refused op changed nothing in the store: nothing to apply.
                    let ack = match count {
                        Ok(_) => apply(index, op),
                        Err(_) => ack_of(op),
                    };
                    let _ = ack.send(count);
                }
            }
            Err(e) => {
                log::error!(
                    "ledger commit failed, {} requests refused: {e}",
                    batch.len()
                );
                for op in batch {
                    let _ = ack_of(op).send(Err(LedgerError::Storage(e.to_string())));
                }
            }
        }
    }
}

/// The answer of each op of a batch: a count, or why it was refused alone.
type Counts = Vec<Result<u64, LedgerError>>;

/// Writes a batch in one durable transaction; returns a count per op, or the refusal of
/// an op that cannot be kept (a token revocation waiting for its record, over the cap:
/// `index` says how many wait, and only this thread adds to them).
fn write_batch(db: &Database, index: &MemIndex, batch: &[Op]) -> Result<Counts, redb::Error> {
    let w = db.begin_write()?;
    let mut counts = Vec::with_capacity(batch.len());
    {
        let mut tokens = w.open_table(TOKENS)?;
        let mut accounts = w.open_table(REVOKED_ACCOUNTS)?;
        let mut kids = w.open_table(REVOKED_KIDS)?;
        let mut pending = w.open_table(PENDING)?;
        // Ids this batch set waiting, not yet in the index.
        let mut waiting = std::collections::HashSet::new();
        for op in batch {
            let n = match op {
                Op::Record(records, _) => {
                    for r in records {
                        // A token revoked earlier stays revoked if it is recorded again;
                        // one revoked before its record arrives is recorded revoked.
                        let revoked = match tokens.get(r.id.0)? {
                            Some(old) => old.value().get(16) == Some(&1),
                            None => false,
                        };
                        let waited = pending.remove(r.id.0)?.is_some();
                        waiting.remove(&r.id);
                        tokens.insert(r.id.0, encode(r, revoked || waited).as_slice())?;
                    }
                    Ok(records.len() as u64)
                }
                Op::Revoke(Revocation::Token(id), now, _) => {
                    let old = tokens.get(id.0)?.map(|v| v.value().to_vec());
                    match old {
                        Some(mut v) if v.len() > 16 => {
                            v[16] = 1;
                            tokens.insert(id.0, v.as_slice())?;
                            Ok(1)
                        }
                        _ => {
                            let prev = pending.get(id.0)?.map(|v| v.value());
                            if prev.is_none()
                                && !waiting.contains(id)
                                && !index.room_to_wait(waiting.len())
                            {
                                Err(index.pending_full(waiting.len()))
                            } else {
                                pending.insert(id.0, prev.unwrap_or(0).max(*now))?;
                                waiting.insert(*id);
                                Ok(0)
                            }
                        }
                    }
                }
                Op::Revoke(Revocation::Account { account, at }, _, _) => {
                    let prev = accounts.get(account.as_str())?.map(|v| v.value());
                    accounts.insert(account.as_str(), prev.unwrap_or(0).max(*at))?;
                    Ok(0)
                }
                Op::Revoke(Revocation::Kid(kid), _, _) => {
                    kids.insert(kid.as_str(), 1)?;
                    Ok(0)
                }
                Op::Delete(ids, _) => {
                    let mut n = 0;
                    for id in ids {
                        if tokens.remove(id.0)?.is_some() {
                            n += 1;
                        }
                    }
                    Ok(n)
                }
                Op::DropPending(ids, before, _) => {
                    for id in ids {
                        // Revoked again since it was listed: it waits on.
                        let at = pending.get(id.0)?.map(|v| v.value());
                        if at.is_some_and(|at| at < *before) {
                            pending.remove(id.0)?;
                        }
                    }
                    Ok(0)
                }
            };
            counts.push(n);
        }
    }
    w.commit()?;
    Ok(counts)
}

/// An op's acknowledgement channel.
fn ack_of(op: Op) -> Ack {
    match op {
        Op::Record(_, a) | Op::Revoke(_, _, a) | Op::Delete(_, a) | Op::DropPending(_, _, a) => a,
    }
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Applies a committed op to the index; returns its acknowledgement channel.
fn apply(index: &MemIndex, op: Op) -> Ack {
    match op {
        Op::Record(records, ack) => {
            for r in &records {
                index.insert(r);
            }
            ack
        }
        Op::Revoke(rev, now, ack) => {
            index.revoke_kept(&rev, now);
            ack
        }
        Op::Delete(ids, ack) => {
            index.remove_all(&ids);
            ack
        }
        Op::DropPending(ids, before, ack) => {
            index.drop_stale_pending(&ids, before);
            ack
        }
    }
}

#[cfg(test)]
mod tests;
