//! Quota counts in memory: per key, the count of the current window as the store last
//! reported it (`base`), plus what this process admitted since (`delta`, and `inflight`
//! while a sync carries it). A request is admitted while `base + inflight + delta` is
//! under the limit; every `sync_interval` the deltas are merged into the store and the
//! store's totals come back, which is how processes sharing a store see each other.
//!
//! A key seen for the first time (or evicted) is loaded from the store before its first
//! decision, so a restart or a new process starts from the durable count.

use super::window::{window_at, Window};
use crate::config::units::RateUnit;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry {
    key: Box<[u8]>,
    window: u64,
    base: u64,
    delta: i64,
    inflight: i64,
    last_used: u64,
}

impl Entry {
    fn used(&self) -> u64 {
        (self.base as i64 + self.inflight + self.delta).max(0) as u64
    }
}

/// The decision for one request, and what the `RateLimit` fields report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaVerdict {
    pub allowed: bool,
    pub remaining: u64,
    pub window: Window,
}

/// `Unknown`: the key is not in memory; load its count, then `insert` and ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Done(QuotaVerdict),
    Unknown(Window),
}

/// Removes the least used entries of `s` until `keep` remain (ties: any of them).
fn drop_least_used(s: &mut HashMap<u64, Entry>, keep: usize) {
    let excess = s.len().saturating_sub(keep);
    if excess == 0 {
        return;
    }
    let mut by_use: Vec<(u64, u64)> = s.iter().map(|(h, e)| (e.used(), *h)).collect();
    by_use.select_nth_unstable(excess - 1);
    for (_, h) in &by_use[..excess] {
        s.remove(h);
    }
}

/// One key's admissions to merge into the store.
#[derive(Debug, Clone)]
pub struct Delta {
    pub hash: u64,
    pub key: Box<[u8]>,
    pub window: u64,
    pub count: i64,
}

pub struct QuotaTable {
    pub limit: u64,
    pub unit: RateUnit,
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    hasher: RandomState,
    shard_cap: usize,
}

impl QuotaTable {
    pub fn new(limit: u64, unit: RateUnit, max_keys: usize) -> QuotaTable {
        QuotaTable {
            limit,
            unit,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_cap: (max_keys / SHARDS).max(16),
        }
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, h: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[(h >> 60) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Decides for one request (and counts it when admitted), if the key is known.
    pub fn check(&self, h: u64, now: u64) -> Check {
        let w = window_at(self.unit, now);
        let mut s = self.shard(h);
        let Some(e) = s.get_mut(&h) else {
            return Check::Unknown(w);
        };
        if e.window != w.id {
            // A new window: the old count is over. An old delta still syncing lands on
            // the old window's row, where it no longer matters.
            *e = Entry {
                key: std::mem::take(&mut e.key),
                window: w.id,
                base: 0,
                delta: 0,
                inflight: 0,
                last_used: now,
            };
        }
        e.last_used = now;
        let used = e.used();
        let allowed = used < self.limit;
        if allowed {
            e.delta += 1;
        }
        Check::Done(QuotaVerdict {
            allowed,
            remaining: self.limit.saturating_sub(used + u64::from(allowed)),
            window: w,
        })
    }

    /// The count of the current window for a key in memory, without counting anything
    /// (`None`: not in memory). An entry of a past window has used nothing of this one.
    pub fn peek(&self, h: u64, now: u64) -> Option<u64> {
        let w = window_at(self.unit, now);
        let s = self.shard(h);
        let e = s.get(&h)?;
        Some(if e.window == w.id { e.used() } else { 0 })
    }

    /// Records a key's count as loaded from the store (unless another request did first).
    pub fn insert(&self, h: u64, key: &[u8], window: u64, count: u64, now: u64) {
        let mut s = self.shard(h);
        if s.len() >= self.shard_cap && !s.contains_key(&h) {
            // Synced entries can be loaded again: dropping them loses nothing.
            s.retain(|_, e| e.delta != 0 || e.inflight != 0);
            if s.len() >= self.shard_cap {
                // Still full of unsynced counts (the store is away, or a flood came
                // within one sync interval): drop the least used, as a rate drops the
                // buckets closest to full. A dropped key loses its unsynced admissions
                // (the fewest of all), which can only admit it more, never refuse it.
                drop_least_used(&mut s, self.shard_cap * 3 / 4);
            }
        }
        s.entry(h).or_insert_with(|| Entry {
            key: key.into(),
            window,
            base: count,
            delta: 0,
            inflight: 0,
            last_used: now,
        });
    }

    /// Gives back one admission (a later limit refused the request).
    pub fn refund(&self, h: u64, window: u64) {
        if let Some(e) = self.shard(h).get_mut(&h) {
            if e.window == window {
                e.delta -= 1;
            }
        }
    }

    /// Moves every key's delta to in-flight and returns them, for a sync.
    pub fn take_deltas(&self) -> Vec<Delta> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            for (h, e) in s.iter_mut() {
                if e.delta != 0 {
                    out.push(Delta {
                        hash: *h,
                        key: e.key.clone(),
                        window: e.window,
                        count: e.delta,
                    });
                    e.inflight += e.delta;
                    e.delta = 0;
                }
            }
        }
        out
    }

    /// The store took `d` and now holds `total` for its window.
    pub fn synced(&self, d: &Delta, total: u64) {
        if let Some(e) = self.shard(d.hash).get_mut(&d.hash) {
            if e.window == d.window {
                e.inflight -= d.count;
                e.base = total;
            }
        }
    }

    /// The store could not take `d`: keep it for the next sync.
    pub fn unsynced(&self, d: &Delta) {
        if let Some(e) = self.shard(d.hash).get_mut(&d.hash) {
            if e.window == d.window {
                e.inflight -= d.count;
                e.delta += d.count;
            }
        }
    }

    /// Keys used since `since` with nothing in flight: their counts may have moved in
    /// another process, so a sync reads them again.
    pub fn active(&self, since: u64) -> Vec<(u64, Box<[u8]>, u64)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                s.iter()
                    .filter(|(_, e)| e.last_used >= since && e.inflight == 0)
                    .map(|(h, e)| (*h, e.key.clone(), e.window)),
            );
        }
        out
    }

    /// A fresh count read from the store (only applied when nothing is in flight).
    pub fn refreshed(&self, h: u64, window: u64, count: u64) {
        if let Some(e) = self.shard(h).get_mut(&h) {
            if e.window == window && e.inflight == 0 {
                e.base = count;
            }
        }
    }

    /// Drops synced entries idle since `before`, and entries of past windows.
    pub fn evict(&self, before: u64, now: u64) {
        let w = window_at(self.unit, now).id;
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            s.retain(|_, e| {
                let synced = e.delta == 0 && e.inflight == 0;
                !(synced && (e.last_used < before || e.window != w))
            });
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_instant;

    #[test]
    fn counts_from_the_loaded_base_and_resets_with_the_window() {
        let t = QuotaTable::new(3, RateUnit::Day, 1000);
        let now = parse_instant("2030-01-01T23:59:00Z").unwrap();
        let h = t.hash(b"k");
        let Check::Unknown(w) = t.check(h, now) else {
            panic!("an unknown key must be loaded first");
        };
        t.insert(h, b"k", w.id, 1, now);
        let v = |c| match c {
            Check::Done(v) => v,
            Check::Unknown(_) => panic!("known"),
        };
        let a = v(t.check(h, now));
        assert_eq!((a.allowed, a.remaining), (true, 1));
        assert_eq!(a.window.secs_left(now), 60);
        assert!(v(t.check(h, now)).allowed);
        let refused = v(t.check(h, now));
        assert_eq!((refused.allowed, refused.remaining), (false, 0));
        let tomorrow = parse_instant("2030-01-02T00:00:00Z").unwrap();
        let b = v(t.check(h, tomorrow));
        assert_eq!((b.allowed, b.remaining), (true, 2));
    }

    #[test]
    fn peek_reads_without_counting() {
        let t = QuotaTable::new(3, RateUnit::Day, 1000);
        let now = parse_instant("2030-01-01T10:00:00Z").unwrap();
        let h = t.hash(b"k");
        assert_eq!(t.peek(h, now), None, "not in memory");
        t.insert(h, b"k", window_at(RateUnit::Day, now).id, 1, now);
        t.check(h, now);
        assert_eq!(t.peek(h, now), Some(2));
        assert_eq!(t.peek(h, now), Some(2), "a peek counts nothing");
        let tomorrow = parse_instant("2030-01-02T00:00:00Z").unwrap();
        assert_eq!(t.peek(h, tomorrow), Some(0), "a new window starts empty");
    }

    #[test]
    fn sync_moves_deltas_and_takes_totals() {
        let t = QuotaTable::new(10, RateUnit::Day, 1000);
        let now = parse_instant("2030-01-01T10:00:00Z").unwrap();
        let h = t.hash(b"k");
        let Check::Unknown(w) = t.check(h, now) else {
            panic!()
        };
        t.insert(h, b"k", w.id, 0, now);
        for _ in 0..4 {
            t.check(h, now);
        }
        let d = t.take_deltas();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].count, 4);
        // One admitted while the sync is in flight; another process had added 3, so
        // the store answers 4 + 3.
        t.check(h, now);
        t.synced(&d[0], 7);
        let Check::Done(v) = t.check(h, now) else {
            panic!()
        };
        assert_eq!(
            v.remaining,
            10 - 7 - 2,
            "store total + 2 local since the sync"
        );
        let d = t.take_deltas();
        t.unsynced(&d[0]);
        assert_eq!(t.take_deltas()[0].count, 2, "a failed sync keeps its delta");
    }

    #[test]
    fn unsynced_keys_are_capped_and_the_least_used_go_first() {
        // 16 shards of 16 (the smallest shard): at most 256 keys, whatever is unsynced.
        let t = QuotaTable::new(10, RateUnit::Day, 256);
        let now = parse_instant("2030-01-01T10:00:00Z").unwrap();
        let w = window_at(RateUnit::Day, now).id;
        let heavy = t.hash(b"heavy");
        t.insert(heavy, b"heavy", w, 0, now);
        for _ in 0..5 {
            t.check(heavy, now);
        }
        for i in 0..10_000u32 {
            let k = i.to_le_bytes();
            let h = t.hash(&k);
            t.insert(h, &k, w, 0, now);
            t.check(h, now);
            assert!(t.len() <= 256, "{} keys after {i}", t.len());
        }
        let d = t.take_deltas();
        let kept = d.iter().find(|d| d.hash == heavy).map(|d| d.count);
        assert_eq!(kept, Some(5), "the most used key keeps its unsynced count");
    }

    #[test]
    fn eviction_keeps_unsynced_counts() {
        let t = QuotaTable::new(10, RateUnit::Day, 1000);
        let now = parse_instant("2030-01-01T10:00:00Z").unwrap();
        for k in [b"a", b"b"] {
            let h = t.hash(k);
            t.insert(h, k, window_at(RateUnit::Day, now).id, 0, now);
        }
        t.check(t.hash(b"a"), now);
        t.evict(now + 1, now + 1);
        assert_eq!(t.len(), 1, "b was synced and idle; a has a delta");
    }
}
