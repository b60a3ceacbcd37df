//! [`Engine::snapshot`] and [`Engine::restore`]: the engine's state to bytes and back
//! (the format is in `snapshot.rs`).
//!
//! Restoring maps state by **rule fingerprint**, as a reload does (`carry_over`): a slot
//! comes back only if a rule in force has the fingerprint it was saved under (same name,
//! key, measure, window and match), whatever group or slot that rule sits in now; the
//! others are dropped and counted in [`Restored::slots_dropped`]. Bans come back if they
//! have not ended and their rule (or `manual`) is in force. Windows are timestamps, so
//! restored counts simply keep ageing: state saved an hour before a restore of a
//! ten-minute rule is idle and is not restored at all.

use std::sync::atomic::Ordering;

use warden_rules::Measure;

use super::{Ban, Engine, MANUAL};
use crate::distinct::DistinctSet;
use crate::snapshot::{Reader, SnapshotError, Writer};
use crate::state::{Slot, MAX_SLOTS};
use crate::window::SlidingCount;

const SLOT_EMPTY: u8 = 0;
const SLOT_COUNT: u8 = 1;
const SLOT_DISTINCT: u8 = 2;
/// Longest readable key kept with a ban.
const MAX_BAN_TEXT: usize = 4096;

/// What a restore brought back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Restored {
    /// When the snapshot was taken, unix milliseconds.
    pub saved_ms: u64,
    /// Key values restored (an entry restored into two groups counts twice).
    pub entries: usize,
    /// Rule slots restored.
    pub slots: usize,
    /// Slots left behind: their rule changed or is gone, or their window has passed.
    pub slots_dropped: usize,
    /// Bans restored.
    pub bans: usize,
    /// Bans left behind: ended, their rule gone, or over `max_bans`.
    pub bans_dropped: usize,
}

struct SavedGroup {
    fingerprints: Vec<u64>,
    entries: Vec<(u64, Vec<Slot>)>,
}

struct SavedBan {
    scope: u64,
    key: u64,
    placed_ms: u64,
    until_ms: u64,
    text: String,
}

struct Saved {
    saved_ms: u64,
    key: [u64; 2],
    groups: Vec<SavedGroup>,
    bans: Vec<SavedBan>,
}

impl Engine {
    /// The engine's state as a snapshot file's bytes: every tracked key's counters and
    /// distinct sets, the bans in force at `now_ms`, and the hash key. Walks each table
    /// one shard at a time (requests keep flowing; a request counted during the walk may
    /// or may not be in it).
    #[must_use]
    pub fn snapshot(&self, now_ms: u64) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(now_ms);
        w.u64(self.key[0].load(Ordering::Relaxed));
        w.u64(self.key[1].load(Ordering::Relaxed));
        let set = self.set.load();
        w.u32(u32::try_from(set.groups.len()).unwrap_or(u32::MAX));
        for g in &set.groups {
            let fps = &g.state.fingerprints;
            w.u8(u8::try_from(fps.len()).unwrap_or(u8::MAX));
            for fp in fps {
                w.u64(*fp);
            }
            let count_at = w.len();
            w.u64(0);
            let mut n = 0u64;
            g.state.map.for_each(|key, slots| {
                if slots.iter().all(|s| matches!(s, Slot::Empty)) {
                    return;
                }
                w.u64(key);
                for s in slots {
                    write_slot(&mut w, s);
                }
                n += 1;
            });
            w.patch_u64(count_at, n);
        }
        let bans: Vec<((u64, u64), Ban)> = self
            .bans
            .iter()
            .filter(|e| e.value().until_ms > now_ms)
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        w.u32(u32::try_from(bans.len()).unwrap_or(u32::MAX));
        for ((scope, key), b) in &bans {
            w.u64(*scope);
            w.u64(*key);
            w.u64(b.placed_ms);
            w.u64(b.until_ms);
            let text = truncate(&b.key, MAX_BAN_TEXT);
            w.u16(u16::try_from(text.len()).unwrap_or(u16::MAX));
            w.bytes(text.as_bytes());
        }
        w.finish()
    }

    /// Restores a snapshot into this engine, which must hold no state yet (call it at
    /// start, after [`Engine::set_rules`], before serving). The whole file is checked
    /// before anything is applied: on any error the engine is left as it was.
    pub fn restore(&self, bytes: &[u8], now_ms: u64) -> Result<Restored, SnapshotError> {
        self.restore_with(bytes, now_ms, false)
    }

    /// [`Engine::restore`] for an engine whose hash key was given from outside
    /// ([`Engine::with_key`]; fleet mode: the fleet's shared key): a snapshot made with
    /// another key is refused whole ([`SnapshotError::OtherKey`]), because its digests,
    /// ban ids and counter names would no longer match the other nodes'.
    pub fn restore_same_key(&self, bytes: &[u8], now_ms: u64) -> Result<Restored, SnapshotError> {
        self.restore_with(bytes, now_ms, true)
    }

    fn restore_with(
        &self,
        bytes: &[u8],
        now_ms: u64,
        same_key: bool,
    ) -> Result<Restored, SnapshotError> {
        let saved = decode(bytes)?;
        if same_key
            && saved.key
                != [
                    self.key[0].load(Ordering::Relaxed),
                    self.key[1].load(Ordering::Relaxed),
                ]
        {
            return Err(SnapshotError::OtherKey);
        }
        let (keys, bans) = (self.tracked_keys(), self.bans.len());
        if keys > 0 || bans > 0 {
            return Err(SnapshotError::NotEmpty { keys, bans });
        }
        self.key[0].store(saved.key[0], Ordering::Relaxed);
        self.key[1].store(saved.key[1], Ordering::Relaxed);
        let set = self.set.load();
        let mut report = Restored {
            saved_ms: saved.saved_ms,
            ..Restored::default()
        };
        for sg in saved.groups {
            // Where each saved slot goes now: (group, slot, window, whether it counts
            // distinct values), by fingerprint.
            let targets: Vec<Option<(usize, usize, u64, bool)>> = sg
                .fingerprints
                .iter()
                .map(|fp| {
                    set.rules.iter().find(|c| c.fingerprint == *fp).map(|c| {
                        let distinct = matches!(c.rule.measure, Measure::Distinct(_));
                        (c.group, c.slot, c.window_ms, distinct)
                    })
                })
                .collect();
            for (key, slots) in sg.entries {
                let mut restored_any = false;
                for (slot, target) in slots.into_iter().zip(&targets) {
                    if matches!(slot, Slot::Empty) {
                        continue;
                    }
                    let Some((gi, ns, window_ms, distinct)) = *target else {
                        report.slots_dropped += 1;
                        continue;
                    };
                    let kind_matches = matches!(
                        (&slot, distinct),
                        (Slot::Count(_), false) | (Slot::Distinct(_), true)
                    );
                    if !kind_matches || slot.is_idle(now_ms, window_ms) {
                        report.slots_dropped += 1;
                        continue;
                    }
                    let g = &set.groups[gi];
                    let heap = slot.heap_bytes();
                    g.state.map.update(key, |s| {
                        if let Some(s) = s.get_mut(ns) {
                            *s = slot;
                        }
                    });
                    if heap > 0 {
                        g.state.heap.fetch_add(heap as isize, Ordering::Relaxed);
                    }
                    report.slots += 1;
                    restored_any = true;
                }
                report.entries += usize::from(restored_any);
            }
        }
        let mut manual = 0;
        for b in saved.bans {
            let rule: Option<&'static str> = if b.scope == MANUAL {
                Some(super::MANUAL_NAME)
            } else {
                set.rules
                    .iter()
                    .find(|c| c.fingerprint == b.scope)
                    .map(|c| c.name)
            };
            let Some(rule) =
                rule.filter(|_| b.until_ms > now_ms && self.bans.len() < self.max_bans)
            else {
                report.bans_dropped += 1;
                continue;
            };
            manual += usize::from(b.scope == MANUAL);
            self.note_ban_key(b.scope, b.key);
            self.bans.insert(
                (b.scope, b.key),
                Ban {
                    until_ms: b.until_ms,
                    placed_ms: b.placed_ms,
                    rule,
                    key: b.text,
                },
            );
            report.bans += 1;
        }
        self.manual_bans.store(manual, Ordering::Relaxed);
        self.ban_count.store(self.bans.len(), Ordering::Relaxed);
        Ok(report)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn write_slot(w: &mut Writer, s: &Slot) {
    match s {
        Slot::Empty => w.u8(SLOT_EMPTY),
        Slot::Count(c) => {
            let (epoch, prev, curr) = c.parts();
            w.u8(SLOT_COUNT);
            w.u32(epoch);
            w.u32(prev);
            w.u32(curr);
        }
        Slot::Distinct(d) => {
            w.u8(SLOT_DISTINCT);
            d.write_to(w);
        }
    }
}

fn read_slot(r: &mut Reader<'_>) -> Result<Slot, SnapshotError> {
    match r.u8()? {
        SLOT_EMPTY => Ok(Slot::Empty),
        SLOT_COUNT => Ok(Slot::Count(SlidingCount::from_parts(
            r.u32()?,
            r.u32()?,
            r.u32()?,
        ))),
        SLOT_DISTINCT => Ok(Slot::Distinct(DistinctSet::read_from(r)?)),
        other => Err(r.bad(format!("unknown slot kind {other}"))),
    }
}

fn decode(bytes: &[u8]) -> Result<Saved, SnapshotError> {
    let mut r = Reader::open(bytes)?;
    let saved_ms = r.u64()?;
    let key = [r.u64()?, r.u64()?];
    let n_groups = r.u32()?;
    // A group takes at least 1 + 8 + 8 bytes.
    let n_groups = r.count(u64::from(n_groups), 17)?;
    let mut groups = Vec::with_capacity(n_groups);
    for _ in 0..n_groups {
        let n_slots = usize::from(r.u8()?);
        if n_slots == 0 || n_slots > MAX_SLOTS {
            return Err(r.bad(format!(
                "a group of {n_slots} rules, expected 1 to {MAX_SLOTS}"
            )));
        }
        let mut fingerprints = Vec::with_capacity(n_slots);
        for _ in 0..n_slots {
            fingerprints.push(r.u64()?);
        }
        let n = r.u64()?;
        // An entry takes at least its key and one byte per slot.
        let n = r.count(n, 8 + n_slots)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let key = r.u64()?;
            let mut slots = Vec::with_capacity(n_slots);
            for _ in 0..n_slots {
                slots.push(read_slot(&mut r)?);
            }
            entries.push((key, slots));
        }
        groups.push(SavedGroup {
            fingerprints,
            entries,
        });
    }
    let n_bans = r.u32()?;
    let n_bans = r.count(u64::from(n_bans), 34)?;
    let mut bans = Vec::with_capacity(n_bans);
    for _ in 0..n_bans {
        let scope = r.u64()?;
        let key = r.u64()?;
        let placed_ms = r.u64()?;
        let until_ms = r.u64()?;
        let len = usize::from(r.u16()?);
        let text = std::str::from_utf8(r.bytes(len)?)
            .map_err(|e| r.bad(format!("ban key text is not UTF-8: {e}")))?
            .to_owned();
        bans.push(SavedBan {
            scope,
            key,
            placed_ms,
            until_ms,
            text,
        });
    }
    if r.remaining() != 0 {
        return Err(r.bad(format!("{} bytes after the last ban", r.remaining())));
    }
    Ok(Saved {
        saved_ms,
        key,
        groups,
        bans,
    })
}
