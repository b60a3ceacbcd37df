//! The node's background tasks: the stream tail (revocations and bans made elsewhere)
//! and the counter and ban sync.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use warden_core::ledger::{Revocation, TokenId};
use warden_detect::fleet::{FleetNote, FleetState, SyncItem};
use warden_detect::Engine;
use warden_metrics::{FleetApplied, FleetOp};

use crate::ledger::RedisLedger;
use crate::{now_ms, Inner};

/// How long one `XREAD` blocks waiting for new entries: a revocation made elsewhere is
/// applied here at most this long after it was written, plus a round trip.
pub const STREAM_BLOCK: Duration = Duration::from_millis(200);
/// Wait after a failed exchange before trying again.
const RETRY: Duration = Duration::from_millis(200);
/// Most entries read per `XREAD`.
const READ_COUNT: usize = 512;
/// Most (rule, key) pairs synchronized per interval.
pub const MAX_SYNC_KEYS: usize = 20_000;

/// A ban as kept in the bans hash.
fn ban_json(
    scope: u64,
    key: u64,
    placed_ms: u64,
    until_ms: u64,
    rule: &str,
    display: &str,
) -> String {
    serde_json::json!({
        "scope": format!("{scope:016x}"), "key": format!("{key:016x}"),
        "placed_ms": placed_ms, "until_ms": until_ms, "rule": rule, "display": display,
    })
    .to_string()
}

fn ban_id(scope: u64, key: u64) -> String {
    format!("{scope:016x}{key:016x}")
}

/// Reads the stream's newest id, then the revocation and ban hashes, and applies them:
/// entries after that id are read by the tail, so nothing falls between.
async fn bootstrap(inner: &Inner, ledger: &RedisLedger, engine: &Engine) -> Result<String, String> {
    let mut conn = inner.conn.clone();
    let newest: StreamRangeReply = inner
        .timed(
            "XREVRANGE",
            redis::cmd("XREVRANGE")
                .arg(inner.keys.stream())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await?;
    let last = newest
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
    let accounts: HashMap<String, u64> = inner
        .timed(
            "HGETALL",
            redis::cmd("HGETALL")
                .arg(inner.keys.accounts())
                .query_async(&mut conn),
        )
        .await?;
    let kids: Vec<String> = inner
        .timed(
            "SMEMBERS",
            redis::cmd("SMEMBERS")
                .arg(inner.keys.kids())
                .query_async(&mut conn),
        )
        .await?;
    let bans: HashMap<String, String> = inner
        .timed(
            "HGETALL",
            redis::cmd("HGETALL")
                .arg(inner.keys.bans())
                .query_async(&mut conn),
        )
        .await?;
    let revocations: Vec<Revocation> = accounts
        .into_iter()
        .map(|(account, at)| Revocation::Account { account, at })
        .chain(kids.into_iter().map(Revocation::Kid))
        .collect();
    for r in &revocations {
        ledger.apply_index(r);
    }
    ledger.forget_cached(&revocations);
    let now = now_ms();
    // Every ban's end, for the end index that `prune` works from: `NX` adds only the bans
    // written before the index existed, and never moves the end another node has just
    // set by placing the ban again.
    let mut ends = Vec::new();
    for (id, json) in bans {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) else {
            log::warn!("fleet: ban {id} in Redis is not JSON; ignored");
            continue;
        };
        let hex = |f: &str| v[f].as_str().and_then(|s| u64::from_str_radix(s, 16).ok());
        let (Some(scope), Some(key), Some(until)) =
            (hex("scope"), hex("key"), v["until_ms"].as_u64())
        else {
            log::warn!("fleet: ban {id} in Redis lacks scope, key or until_ms; ignored");
            continue;
        };
        ends.push((until, id));
        if until <= now {
            continue;
        }
        let _ = engine.apply_fleet_ban(
            scope,
            key,
            v["placed_ms"].as_u64().unwrap_or(now),
            until,
            v["display"].as_str().unwrap_or(""),
        );
    }
    if !ends.is_empty() {
        let indexed: Result<(), String> = inner
            .timed(
                "ZADD",
                redis::cmd("ZADD")
                    .arg(inner.keys.ban_ends())
                    .arg("NX")
                    .arg(&ends)
                    .query_async(&mut conn),
            )
            .await;
        // The ended ones go the way the running fleet drops them.
        if indexed.is_ok() {
            let _ = prune(inner, now).await;
        }
    }
    if let Err(e) = warn_unless_durable(inner, &mut conn).await {
        log::debug!("fleet: cannot read Redis's persistence settings: {e}");
    }
    Ok(last)
}

/// Warns when Redis is not set to fsync every write: an acknowledged record could then
/// be lost in a Redis crash. (Managed Redis often refuses `CONFIG`: then nothing is said.)
async fn warn_unless_durable(
    inner: &Inner,
    conn: &mut redis::aio::ConnectionManager,
) -> Result<(), String> {
    let aof: Vec<String> = inner
        .timed(
            "CONFIG GET",
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendonly")
                .query_async(conn),
        )
        .await?;
    let fsync: Vec<String> = inner
        .timed(
            "CONFIG GET",
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendfsync")
                .query_async(conn),
        )
        .await?;
    let on = aof.get(1).is_some_and(|v| v == "yes");
    let always = fsync.get(1).is_some_and(|v| v == "always");
    if !(on && always) && inner.cfg.min_replicas == 0 {
        log::warn!(
            "fleet: Redis has appendonly={} appendfsync={}: an acknowledged ledger write can be lost if Redis crashes; set `appendonly yes` and `appendfsync always`, or fleet.min_replicas",
            aof.get(1).map_or("?", String::as_str),
            fsync.get(1).map_or("?", String::as_str)
        );
    }
    Ok(())
}

/// Compares stream ids (`ms-seq`).
fn id_parts(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// Applies one stream entry; returns what it was, if it was applied. Revocations go to
/// the index at once and into `revoked`, for one walk of the verifier caches per batch.
fn apply(
    inner: &Inner,
    ledger: &RedisLedger,
    engine: &Engine,
    e: &StreamId,
    revoked: &mut Vec<Revocation>,
) -> Option<FleetApplied> {
    let kind: String = e.get("k")?;
    // Written by this process (not merely under this node name: see "Node names and
    // instances" in the crate docs). Entries without `i` come from an older warden.
    let own = match e.get::<String>("i") {
        Some(instance) => instance == inner.instance,
        None => e.get::<String>("n").as_deref() == Some(inner.cfg.node.as_str()),
    };
    match kind.as_str() {
        "rt" => {
            let id = TokenId::from_hex(&e.get::<String>("id")?).ok()?;
            // Our own revocations were applied when they were made; applying again is
            // harmless (idempotent) and keeps the code path one.
            if own {
                // Applied when it was made.
                return None;
            }
            let r = Revocation::Token(id);
            ledger.apply_index(&r);
            revoked.push(r);
            Some(FleetApplied::Revocation)
        }
        "ra" if !own => {
            let account: String = e.get("a")?;
            let at: u64 = e.get::<String>("at")?.parse().ok()?;
            let r = Revocation::Account { account, at };
            ledger.apply_index(&r);
            revoked.push(r);
            Some(FleetApplied::Revocation)
        }
        "rk" if !own => {
            let r = Revocation::Kid(e.get("kid")?);
            ledger.apply_index(&r);
            revoked.push(r);
            Some(FleetApplied::Revocation)
        }
        "ban" if !own => {
            let hex = |f: &str| {
                e.get::<String>(f)
                    .and_then(|s| u64::from_str_radix(&s, 16).ok())
            };
            let num = |f: &str| e.get::<String>(f).and_then(|s| s.parse::<u64>().ok());
            let applied = engine.apply_fleet_ban(
                hex("s")?,
                hex("key")?,
                num("p")?,
                num("u")?,
                &e.get::<String>("d").unwrap_or_default(),
            );
            applied.then_some(FleetApplied::Ban)
        }
        "lift" if !own => {
            let id: String = e.get("id")?;
            engine.lift_fleet(&id);
            Some(FleetApplied::Lift)
        }
        _ => None,
    }
}

/// Tails the stream for ever, applying what other nodes wrote.
pub(crate) async fn tail(inner: Arc<Inner>, ledger: Arc<RedisLedger>, engine: Arc<Engine>) {
    let mut last: Option<String> = None;
    let block_ms = u64::try_from(STREAM_BLOCK.as_millis()).unwrap_or(200);
    loop {
        let from = match &last {
            Some(id) => id.clone(),
            None => match bootstrap(&inner, &ledger, &engine).await {
                Ok(id) => {
                    inner.ok();
                    inner.health.stream_ok_ms.store(now_ms(), Ordering::Relaxed);
                    last = Some(id.clone());
                    id
                }
                Err(e) => {
                    inner.failed(FleetOp::Stream, &e);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        let mut conn = inner.tail.clone();
        let read = tokio::time::timeout(
            STREAM_BLOCK + inner.cfg.command_timeout,
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(inner.keys.stream())
                .arg(&from)
                .query_async::<Option<StreamReadReply>>(&mut conn),
        )
        .await;
        let reply = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                inner.failed(FleetOp::Stream, &e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(_) => {
                inner.failed(FleetOp::Stream, &"XREAD did not return in time");
                continue;
            }
        };
        inner.ok();
        inner.health.stream_ok_ms.store(now_ms(), Ordering::Relaxed);
        let entries: Vec<StreamId> = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        let Some(first) = entries.first() else {
            continue;
        };
        // A gap: the stream was trimmed past the last entry this node read (it was away
        // for more than `stream_max_len` entries). Token revocations may have been
        // missed: start the index afresh and re-read the hashes.
        if from != "0-0" && first_is_after_gap(&inner, &from).await {
            log::warn!("fleet: the stream was trimmed past entry {from} while this node was away; reloading the ledger index and revocations");
            ledger.reset_index();
            last = None;
            continue;
        }
        let _ = first;
        let mut counts = [0u64; 3];
        let mut revoked = Vec::new();
        for e in &entries {
            if let Some(kind) = apply(&inner, &ledger, &engine, e, &mut revoked) {
                counts[kind as usize] += 1;
            }
        }
        if !revoked.is_empty() {
            ledger.forget_cached(&revoked);
        }
        for (kind, n) in [
            (FleetApplied::Revocation, counts[0]),
            (FleetApplied::Ban, counts[1]),
            (FleetApplied::Lift, counts[2]),
        ] {
            if n > 0 {
                inner.metrics.fleet.applied(kind, n);
            }
        }
        if let Some(e) = entries.last() {
            last = Some(e.id.clone());
        }
    }
}

/// Whether the stream's oldest entry is newer than `from` (entries were trimmed unread).
async fn first_is_after_gap(inner: &Inner, from: &str) -> bool {
    let mut conn = inner.conn.clone();
    let oldest: Result<StreamRangeReply, String> = inner
        .timed(
            "XRANGE",
            redis::cmd("XRANGE")
                .arg(inner.keys.stream())
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await;
    match oldest {
        Ok(r) => r
            .ids
            .first()
            .is_some_and(|o| id_parts(&o.id) > id_parts(from)),
        Err(_) => false,
    }
}

/// Ended bans are dropped from Redis every this many `sync_interval`s (5 s by default).
const PRUNE_EVERY_SYNCS: u32 = 20;
/// Most ended bans dropped by one prune.
const PRUNE_BATCH: usize = 1000;

/// Drops up to [`PRUNE_BATCH`] ended bans from the bans hash and its end index, in one
/// script so that a ban placed again under the same id in between (its end moved past
/// `now` by `ZADD`) is never dropped. Every node runs it; running it twice is harmless.
const PRUNE_SCRIPT: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('HDEL', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
return #ids
";

/// Drops ended bans from Redis; returns how many.
async fn prune(inner: &Inner, now: u64) -> Result<usize, String> {
    let mut conn = inner.conn.clone();
    inner
        .timed(
            "prune bans",
            redis::cmd("EVAL")
                .arg(PRUNE_SCRIPT)
                .arg(2)
                .arg(inner.keys.bans())
                .arg(inner.keys.ban_ends())
                .arg(now)
                .arg(PRUNE_BATCH)
                .query_async(&mut conn),
        )
        .await
}

/// How often a node name conflict is logged again while it lasts.
const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Takes or refreshes `ns:node:<node>` for this process, unless another live process
/// holds it: then its instance id. The claim expires after three sync intervals, so a
/// stopped process releases the name by itself.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

async fn claim(inner: &Inner) -> Result<Option<String>, String> {
    let ttl_ms = u64::try_from(inner.cfg.sync_interval.as_millis())
        .unwrap_or(u64::MAX / 4)
        .saturating_mul(3)
        .max(1_000);
    let mut conn = inner.conn.clone();
    inner
        .timed(
            "node claim",
            redis::cmd("EVAL")
                .arg(CLAIM)
                .arg(1)
                .arg(inner.keys.node(&inner.cfg.node))
                .arg(&inner.instance)
                .arg(ttl_ms)
                .query_async::<Option<String>>(&mut conn),
        )
        .await
}

/// Every `sync_interval`: publishes this node's bans and lifts, pushes its fleet-scope
/// counts and reads back the other nodes'; every [`PRUNE_EVERY_SYNCS`], drops ended bans
/// from Redis (a ban's end is in its record, so nothing depends on the drop but Redis's
/// memory and the next node's start-up read).
pub(crate) async fn counters(inner: Arc<Inner>, state: Arc<FleetState>) {
    let mut tick = tokio::time::interval(inner.cfg.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut conflict_logged: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        match claim(&inner).await {
            Ok(None) => inner.metrics.fleet.node_conflict.set(0),
            Ok(Some(other)) => {
                inner.metrics.fleet.node_conflict.set(1);
                if conflict_logged.is_none_or(|t| t.elapsed() >= CONFLICT_LOG_EVERY) {
                    conflict_logged = Some(tokio::time::Instant::now());
                    log::error!(
                        "fleet: node name {:?} is held by another running warden (instance {other}, this one is {}): \
                         fleet.node must be unique, or the two hide each other's counts of fleet-scope rules \
                         (expected only for the length of an upgrade's drain)",
                        inner.cfg.node,
                        inner.instance
                    );
                }
            }
            Err(e) => inner.failed(FleetOp::Sync, &e),
        }
        publish(&inner, &state).await;
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(PRUNE_EVERY_SYNCS) {
            match prune(&inner, now_ms()).await {
                Ok(n) if n > 0 => log::debug!("fleet: dropped {n} ended bans from Redis"),
                Ok(_) => {}
                Err(e) => inner.failed(FleetOp::Publish, &e),
            }
        }
        let now = now_ms();
        let items = state.take_sync(now, MAX_SYNC_KEYS);
        if items.is_empty() {
            inner.health.sync_ok_ms.store(now, Ordering::Relaxed);
        } else {
            match push_and_read(&inner, &items).await {
                Ok(remote) => {
                    for (item, (prev, curr)) in items.iter().zip(remote) {
                        state.set_remote(item.rule, item.key, item.epoch, prev, curr);
                    }
                    inner.ok();
                    inner.health.sync_ok_ms.store(now, Ordering::Relaxed);
                }
                Err(e) => {
                    state.restore(&items);
                    inner.failed(FleetOp::Sync, &e);
                }
            }
        }
        let h = &inner.health;
        let oldest = h
            .stream_ok_ms
            .load(Ordering::Relaxed)
            .min(h.sync_ok_ms.load(Ordering::Relaxed));
        inner
            .metrics
            .fleet
            .sync_lag_seconds
            .set(now_ms().saturating_sub(oldest) as f64 / 1000.0);
    }
}

/// Sum of the other nodes' counts in a counter hash.
fn others(inner: &Inner, h: &HashMap<String, u64>) -> u32 {
    let sum: u64 = h
        .iter()
        .filter(|(node, _)| **node != inner.cfg.node)
        .map(|(_, n)| *n)
        .fold(0u64, u64::saturating_add);
    u32::try_from(sum).unwrap_or(u32::MAX)
}

async fn push_and_read(inner: &Inner, items: &[SyncItem]) -> Result<Vec<(u32, u32)>, String> {
    let mut pipe = redis::pipe();
    for item in items {
        // Two windows and a margin: the previous window is still read during the next.
        let ttl_ms = item.window_ms.saturating_mul(2).saturating_add(10_000);
        for &(epoch, n) in &item.deltas {
            let key = inner.keys.counter(item.rule, item.key, epoch);
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg(&inner.cfg.node)
                .arg(n)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        }
        pipe.cmd("HGETALL").arg(inner.keys.counter(
            item.rule,
            item.key,
            item.epoch.saturating_sub(1),
        ));
        pipe.cmd("HGETALL")
            .arg(inner.keys.counter(item.rule, item.key, item.epoch));
    }
    let mut conn = inner.conn.clone();
    let hashes: Vec<HashMap<String, u64>> = inner
        .timed("counter sync", pipe.query_async(&mut conn))
        .await?;
    if hashes.len() != items.len() * 2 {
        return Err(format!(
            "counter sync: {} replies for {} keys",
            hashes.len(),
            items.len()
        ));
    }
    Ok(hashes
        .chunks(2)
        .map(|pair| (others(inner, &pair[0]), others(inner, &pair[1])))
        .collect())
}

/// Sends this node's ban notes to the stream and the bans hash.
async fn publish(inner: &Inner, state: &FleetState) {
    let notes = state.take_notes();
    if notes.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for note in &notes {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(inner.keys.stream())
            .arg("MAXLEN")
            .arg("~")
            .arg(inner.cfg.stream_max_len)
            .arg("*")
            .arg("n")
            .arg(&inner.cfg.node)
            .arg("i")
            .arg(&inner.instance);
        match note {
            FleetNote::Ban {
                scope,
                key,
                placed_ms,
                until_ms,
                rule,
                display,
            } => {
                xadd.arg("k")
                    .arg("ban")
                    .arg("s")
                    .arg(format!("{scope:016x}"))
                    .arg("key")
                    .arg(format!("{key:016x}"))
                    .arg("p")
                    .arg(placed_ms.to_string())
                    .arg("u")
                    .arg(until_ms.to_string())
                    .arg("r")
                    .arg(*rule)
                    .arg("d")
                    .arg(display);
                let id = ban_id(*scope, *key);
                pipe.cmd("HSET")
                    .arg(inner.keys.bans())
                    .arg(&id)
                    .arg(ban_json(*scope, *key, *placed_ms, *until_ms, rule, display))
                    .ignore();
                pipe.cmd("ZADD")
                    .arg(inner.keys.ban_ends())
                    .arg(*until_ms)
                    .arg(&id)
                    .ignore();
            }
            FleetNote::Lift { id } => {
                xadd.arg("k").arg("lift").arg("id").arg(id);
                pipe.cmd("HDEL").arg(inner.keys.bans()).arg(id).ignore();
                pipe.cmd("ZREM").arg(inner.keys.ban_ends()).arg(id).ignore();
            }
        }
        pipe.add_command(xadd).ignore();
    }
    let mut conn = inner.conn.clone();
    match inner
        .timed("publish", pipe.query_async::<()>(&mut conn))
        .await
    {
        Ok(()) => inner.ok(),
        Err(e) => {
            inner.failed(FleetOp::Publish, &e);
            state.restore_notes(notes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(id_parts("1700000000000-10") > id_parts("1700000000000-9"));
        assert!(id_parts("1700000000001-0") > id_parts("1700000000000-99"));
        assert_eq!(id_parts("0-0"), (0, 0));
    }
}
