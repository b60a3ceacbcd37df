//! The token ledger in Redis, with a local index in front (see the crate docs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use dashmap::DashMap;
use warden_core::ledger::{
    Answer, Ledger, LedgerStats, MemIndex, Query, Record, RecordView, Retention, Revocation,
    TokenId,
};
use warden_core::LedgerError;
use warden_metrics::FleetOp;

use crate::{now_ms, Inner};

/// Marks a record revoked and returns 1; without a record, keeps the revocation waiting
/// for it (`r` alone in the record's hash, with a time to live, and the id in the
/// waiting set, first trimmed by age) and returns 0, or returns `-1 - waiting` when as
/// many wait as allowed. Appends the revocation to the stream unless refused, so that
/// no node applies a refused one.
/// KEYS: record, waiting set, stream. ARGV: token id, now (s), time to live (s), cap,
/// stream max length, node, instance.
const REVOKE_TOKEN: &str = "\
local marked = 0 \
if redis.call('HEXISTS', KEYS[1], 'a') == 1 then \
  redis.call('HSET', KEYS[1], 'r', '1') marked = 1 \
else \
  local now = tonumber(ARGV[2]) local ttl = tonumber(ARGV[3]) \
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl)) \
  local n = redis.call('ZCARD', KEYS[2]) \
  if not redis.call('ZSCORE', KEYS[2], ARGV[1]) and n >= tonumber(ARGV[4]) then return -1 - n end \
  redis.call('HSET', KEYS[1], 'r', '1') \
  redis.call('EXPIRE', KEYS[1], math.max(ttl, 1)) \
  redis.call('ZADD', KEYS[2], now, ARGV[1]) \
end \
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'n', ARGV[6], 'i', ARGV[7], 'k', 'rt', 'id', ARGV[1]) \
return marked";
/// Raises an account's revocation cut-off (never lowers it).
const REVOKE_ACCOUNT: &str = "local c = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') \
     if tonumber(ARGV[2]) > c then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end return 0";

/// How long a token revocation is remembered apart from the index (seconds): a lookup
/// that read the record from Redis just before the revocation and fills the index just
/// after must not bring it back unrevoked.
const RECENT_REVOKED_SECONDS: u64 = 60;

/// How long a token Redis did not have is answered as unknown without asking again (ms).
pub const ABSENT_MS: u64 = 500;
/// Most tokens remembered as absent (about 64 bytes each, so at most about 6 MiB); past
/// it, lookups go to Redis until expired entries are dropped.
pub const ABSENT_CAP: usize = 100_000;

/// The Redis-backed ledger. Built by [`crate::FleetNode::new`].
pub struct RedisLedger {
    inner: Arc<Inner>,
    /// Swapped for an empty one when the stream was trimmed past what this node read.
    index: ArcSwap<MemIndex>,
    recent_revoked: DashMap<TokenId, u64>,
    /// Tokens Redis did not have, until when (unix ms): the negative cache.
    absent: DashMap<TokenId, u64>,
    /// When expired entries were last dropped from `absent` (unix ms): at most once per
    /// [`ABSENT_MS`], so a full cache under a flood of new tokens is not walked per request.
    absent_swept_ms: AtomicU64,
}

fn unavailable(e: String) -> LedgerError {
    LedgerError::Unavailable(e)
}

impl RedisLedger {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self {
            index: ArcSwap::from_pointee(Self::new_index(&inner)),
            inner,
            recent_revoked: DashMap::new(),
            absent: DashMap::new(),
            absent_swept_ms: AtomicU64::new(0),
        }
    }

    /// Whether Redis said, within the last [`ABSENT_MS`], that it does not have `id`.
    fn known_absent(&self, id: &TokenId, now_ms: u64) -> bool {
        self.absent.get(id).is_some_and(|until| *until > now_ms)
    }

    fn remember_absent(&self, id: TokenId, now_ms: u64) {
        if self.absent.len() >= ABSENT_CAP {
            let last = self.absent_swept_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) < ABSENT_MS
                || self
                    .absent_swept_ms
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return;
            }
            self.absent.retain(|_, until| *until > now_ms);
            if self.absent.len() >= ABSENT_CAP {
                return;
            }
        }
        self.absent.insert(id, now_ms.saturating_add(ABSENT_MS));
    }

    /// Applies a revocation to this node's index and recently-revoked set (the
    /// verifier's caches: [`RedisLedger::forget_cached`]). A token revocation waiting for
    /// its record that the index has no room for is kept in Redis all the same, where
    /// the record's writer and readers find it.
    pub(crate) fn apply_index(&self, r: &Revocation) -> u64 {
        let now = now_ms() / 1000;
        if let Revocation::Token(id) = r {
            self.recent_revoked.insert(*id, now);
        }
        self.index.load().revoke(r, now).unwrap_or(0)
    }

    /// A new, empty local index, holding as many waiting revocations as configured.
    fn new_index(inner: &Inner) -> MemIndex {
        let index = MemIndex::new();
        index.set_pending_cap(inner.max_pending_revocations);
        index
    }

    /// Drops the tokens these revocations cover from the verifier's caches, in one walk.
    pub(crate) fn forget_cached(&self, rs: &[Revocation]) {
        self.inner.verifier.forget_revoked(rs);
    }

    /// Replaces the index with an empty one (it refills from Redis on lookups).
    pub(crate) fn reset_index(&self) {
        self.index.store(Arc::new(Self::new_index(&self.inner)));
    }

    /// A record's fields as stored, or `None` if Redis has none (nothing, or only a
    /// revocation waiting for the record).
    fn parse(id: TokenId, h: &HashMap<String, String>) -> Result<Option<RecordView>, LedgerError> {
        if h.keys().all(|k| k == "r") {
            return Ok(None);
        }
        let bad = |what: &str| {
            LedgerError::Storage(format!("redis record {} has no valid {what}", id.to_hex()))
        };
        let num = |f: &str| {
            h.get(f)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad(f))
        };
        let record = Record {
            id,
            account: h.get("a").cloned().ok_or_else(|| bad("account"))?,
            kid: h.get("k").cloned().ok_or_else(|| bad("kid"))?,
            issued_at: num("i")?,
            expires_at: num("e")?,
        };
        Ok(Some(RecordView {
            record,
            revoked: h.get("r").is_some_and(|v| v == "1"),
        }))
    }

    async fn fetch(&self, id: &TokenId) -> Result<Option<RecordView>, LedgerError> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.keys.tok(id);
        let h: HashMap<String, String> = match self
            .inner
            .timed(
                "HGETALL",
                redis::cmd("HGETALL").arg(&key).query_async(&mut conn),
            )
            .await
        {
            Ok(h) => {
                self.inner.ok();
                h
            }
            Err(e) => {
                self.inner.failed(FleetOp::Lookup, &e);
                return Err(unavailable(e));
            }
        };
        let view = Self::parse(*id, &h)?;
        if let Some(v) = &view {
            let revoked = v.revoked || self.recent_revoked.contains_key(id);
            self.index.load().insert_with(&v.record, revoked);
        }
        Ok(view)
    }

    /// `WAIT` for `min_replicas`, when configured.
    async fn replicas(&self, conn: &mut redis::aio::ConnectionManager) -> Result<(), LedgerError> {
        let want = self.inner.cfg.min_replicas;
        if want == 0 {
            return Ok(());
        }
        let ms = u64::try_from(self.inner.cfg.replica_timeout.as_millis()).unwrap_or(u64::MAX);
        let got: u64 = self
            .inner
            .timed(
                "WAIT",
                redis::cmd("WAIT").arg(want).arg(ms).query_async(conn),
            )
            .await
            .map_err(unavailable)?;
        if got < u64::from(want) {
            return Err(unavailable(format!(
                "only {got} of fleet.min_replicas = {want} Redis replicas acknowledged within {:?}",
                self.inner.cfg.replica_timeout
            )));
        }
        Ok(())
    }

    /// Appends an entry to the stream (in a pipeline being built).
    pub(crate) fn xadd(&self, pipe: &mut redis::Pipeline, fields: &[(&str, String)]) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.inner.keys.stream())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.inner.cfg.stream_max_len)
            .arg("*")
            .arg("n")
            .arg(&self.inner.cfg.node)
            .arg("i")
            .arg(&self.inner.instance);
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        pipe.add_command(cmd).ignore();
    }
}

#[async_trait]
impl Ledger for RedisLedger {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check_local(&self, query: &Query<'_>) -> Option<Answer> {
        match self.index.load().answer(query) {
            Answer::Unknown if self.known_absent(&query.id, now_ms()) => Some(Answer::Unknown),
            Answer::Unknown => None,
            a => Some(a),
        }
    }

    /// The local index's: revocations from any node reach it through the sync task
    /// (the same path that makes `check_local` refuse them), and a reset starts an index
    /// whose revisions no earlier index had.
    fn revision(&self) -> Option<u64> {
        Some(self.index.load().revision())
    }

    fn still_issued(&self, stamp: u64, id: &TokenId) -> bool {
        self.index.load().still_issued(stamp, id)
    }

    async fn check(&self, query: &Query<'_>) -> Result<Answer, LedgerError> {
        let found = self.fetch(&query.id).await?;
        let now = now_ms();
        // Not a just-issued token: the proxy waits for its record and must see it arrive.
        if found.is_none() && !query.just_issued(self.inner.issuance_window, now / 1000) {
            self.remember_absent(query.id, now);
        }
        Ok(self.index.load().answer(query))
    }

    async fn record(&self, records: Vec<Record>) -> Result<(), LedgerError> {
        for r in &records {
            r.validate()?;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in &records {
            let key = self.inner.keys.tok(&r.id);
            pipe.cmd("HSET")
                .arg(&key)
                .arg("a")
                .arg(&r.account)
                .arg("k")
                .arg(&r.kid)
                .arg("i")
                .arg(r.issued_at)
                .arg("e")
                .arg(r.expires_at)
                .ignore();
            pipe.cmd("EXPIREAT")
                .arg(&key)
                .arg(r.expires_at.saturating_add(self.inner.expiry_grace))
                .ignore();
            // Revoked already: before it arrived (a waiting revocation), or earlier.
            pipe.cmd("HGET").arg(&key).arg("r");
        }
        let mut conn = self.inner.conn.clone();
        let written = self
            .inner
            .timed(
                "MULTI/EXEC",
                pipe.query_async::<Vec<Option<String>>>(&mut conn),
            )
            .await;
        let written = match written {
            Ok(flags) => self.replicas(&mut conn).await.map(|()| flags),
            Err(e) => Err(unavailable(e)),
        };
        let flags = match written {
            Ok(flags) => flags,
            Err(e) => {
                self.inner.failed(FleetOp::Record, &e);
                return Err(e);
            }
        };
        self.inner.ok();
        let index = self.index.load();
        let mut waited = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let stored = flags.get(i).is_some_and(|f| f.as_deref() == Some("1"));
            if stored {
                waited.push(r.id.to_hex());
            }
            index.insert_with(r, stored || self.recent_revoked.contains_key(&r.id));
            self.absent.remove(&r.id);
        }
        if !waited.is_empty() {
            // No longer waiting; if this fails they leave the set when they age out.
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(self.inner.keys.pending()).arg(&waited);
            if let Err(e) = self
                .inner
                .timed("ZREM", zrem.query_async::<()>(&mut conn))
                .await
            {
                log::warn!(
                    "fleet: {e}; {} waiting revocations stay counted until they age out",
                    waited.len()
                );
            }
        }
        Ok(())
    }

    async fn revoke(&self, revocation: Revocation, now: u64) -> Result<u64, LedgerError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        match &revocation {
            Revocation::Token(id) => {
                pipe.cmd("EVAL")
                    .arg(REVOKE_TOKEN)
                    .arg(3)
                    .arg(self.inner.keys.tok(id))
                    .arg(self.inner.keys.pending())
                    .arg(self.inner.keys.stream())
                    .arg(id.to_hex())
                    .arg(now)
                    .arg(self.inner.pending_revocation_ttl)
                    .arg(self.inner.max_pending_revocations)
                    .arg(self.inner.cfg.stream_max_len)
                    .arg(&self.inner.cfg.node)
                    .arg(&self.inner.instance);
            }
            Revocation::Account { account, at } => {
                pipe.cmd("EVAL")
                    .arg(REVOKE_ACCOUNT)
                    .arg(1)
                    .arg(self.inner.keys.accounts())
                    .arg(account)
                    .arg(*at);
                self.xadd(
                    &mut pipe,
                    &[
                        ("k", "ra".into()),
                        ("a", account.clone()),
                        ("at", at.to_string()),
                    ],
                );
            }
            Revocation::Kid(kid) => {
                pipe.cmd("SADD").arg(self.inner.keys.kids()).arg(kid);
                self.xadd(&mut pipe, &[("k", "rk".into()), ("kid", kid.clone())]);
            }
        }
        let mut conn = self.inner.conn.clone();
        let result = self
            .inner
            .timed("MULTI/EXEC", pipe.query_async::<(i64,)>(&mut conn))
            .await;
        let marked = match result {
            Ok((n,)) => self.replicas(&mut conn).await.map(|()| n),
            Err(e) => Err(unavailable(e)),
        };
        let marked = match marked {
            Ok(n) => n,
            Err(e) => {
                self.inner.failed(FleetOp::Revoke, &e);
                return Err(e);
            }
        };
        self.inner.ok();
        // Refused by the script: nothing was changed or announced.
        let Ok(marked) = u64::try_from(marked) else {
            return Err(LedgerError::Full {
                waiting: usize::try_from(-1 - marked).unwrap_or(usize::MAX),
                cap: self.inner.max_pending_revocations,
            });
        };
        let local = self.apply_index(&revocation);
        self.forget_cached(std::slice::from_ref(&revocation));
        Ok(match revocation {
            Revocation::Token(_) => marked.max(local),
            _ => local,
        })
    }

    async fn get(&self, id: &TokenId) -> Result<Option<RecordView>, LedgerError> {
        self.fetch(id).await
    }

    fn stats(&self) -> LedgerStats {
        self.index.load().stats()
    }

    /// Redis expires records itself; this drops expired entries and revocations that
    /// waited too long from the local index, and forgets old entries of the
    /// recently-revoked set.
    async fn sweep(&self, now: u64, retention: Retention) -> Result<u64, LedgerError> {
        let index = self.index.load();
        let mut total = 0u64;
        loop {
            let ids = index.expired(now.saturating_sub(retention.expiry_grace), 10_000);
            if ids.is_empty() {
                break;
            }
            total += ids.len() as u64;
            index.remove_all(&ids);
        }
        let before = now.saturating_sub(retention.pending_revocation_ttl);
        loop {
            let ids = index.stale_pending(before, 10_000);
            if ids.is_empty() {
                break;
            }
            index.drop_stale_pending(&ids, before);
        }
        self.recent_revoked
            .retain(|_, at| now.saturating_sub(*at) < RECENT_REVOKED_SECONDS);
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stored_records_and_refuses_broken_ones() {
        let id = TokenId::from_jti("x");
        let mut h: HashMap<String, String> =
            [("a", "alice"), ("k", "k1"), ("i", "10"), ("e", "20")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        let v = RedisLedger::parse(id, &h).expect("parses").expect("some");
        assert_eq!(v.record.account, "alice");
        assert!(!v.revoked);
        h.insert("r".into(), "1".into());
        assert!(
            RedisLedger::parse(id, &h)
                .expect("parses")
                .expect("some")
                .revoked
        );
        h.insert("e".into(), "soon".into());
        let e = RedisLedger::parse(id, &h).expect_err("bad expiry");
        assert!(e.to_string().contains("no valid e"), "{e}");
        assert_eq!(
            RedisLedger::parse(id, &HashMap::new()).expect("empty"),
            None
        );
        // A revocation waiting for its record is no record.
        let waiting: HashMap<String, String> = [("r".to_owned(), "1".to_owned())].into();
        assert_eq!(RedisLedger::parse(id, &waiting).expect("waiting"), None);
    }
}
