//! Rates: GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp)
//! per key, exact, in memory.
//!
//! A limit of N per period with burst B admits one request every T = period / N and
//! lets a key run up to B requests ahead of that pace: a request at `now` is admitted
//! when `max(tat, now) + T - now <= B * T`, where `tat` is the key's theoretical
//! arrival time. An idle key's `tat` is in the past, and then its bucket is full: such an
//! entry carries no information, so it is dropped (idle eviction) without changing any
//! decision. Live entries are bounded by `max_keys` per limit; past that the entries
//! closest to full are dropped first, which can only let those keys burst again — never
//! refuse anyone.
//!
//! Keys are hashed with a per-process random SipHash key, so a client cannot aim
//! collisions; a table holds only 64-bit hashes and timestamps (16 bytes per live key).
//! For a shared store (`store::redis`) the table also records, per key, what it
//! admitted since the last sync, and takes back the shared state each sync.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

const SHARDS: usize = 64;
/// A shard is swept for idle entries when it grows past this, then at twice its size.
const MIN_SWEEP: usize = 256;

/// The decision for one request, and what the `RateLimit` fields report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests that could be admitted right now, after this one.
    pub remaining: u64,
    /// Until `remaining` grows by one (0 when the bucket is full).
    pub next_ns: u64,
    /// When refused: until this request would be admitted.
    pub retry_ns: u64,
}

/// The algorithm's parameters; pure functions of (tat, now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// T: nanoseconds per admitted request.
    pub interval: u64,
    pub burst: u64,
    /// B * T.
    pub tolerance: u64,
}

impl Gcra {
    /// `count` per `period_ns`, `burst` at once. Both are at least 1 (validated).
    pub fn new(count: u64, period_ns: u64, burst: u64) -> Gcra {
        let interval = (period_ns / count.max(1)).max(1);
        let burst = burst.max(1);
        Gcra {
            interval,
            burst,
            tolerance: interval.saturating_mul(burst),
        }
    }

    /// The decision at `now` for a key whose state is `tat`, and its new state.
    #[inline]
    pub fn decide(&self, tat: u64, now: u64) -> (Verdict, u64) {
        let new_tat = tat.max(now).saturating_add(self.interval);
        if new_tat - now <= self.tolerance {
            (self.state(new_tat, now, true), new_tat)
        } else {
            let mut v = self.state(tat.max(now), now, false);
            v.retry_ns = new_tat - now - self.tolerance;
            (v, tat)
        }
    }

    /// What a key with state `tat` (not in the past) looks like at `now`.
    #[inline]
    pub fn state(&self, tat: u64, now: u64, allowed: bool) -> Verdict {
        let tat = tat.max(now);
        let room = now.saturating_add(self.tolerance).saturating_sub(tat);
        let remaining = (room / self.interval).min(self.burst);
        let next_ns = if remaining >= self.burst {
            0
        } else {
            // remaining grows when now' + B*T - tat >= (remaining + 1) * T.
            tat.saturating_add((remaining + 1).saturating_mul(self.interval))
                .saturating_sub(now.saturating_add(self.tolerance))
        };
        Verdict {
            allowed,
            remaining,
            next_ns,
            retry_ns: 0,
        }
    }
}

/// Requests a table admitted for one key since the last sync with a shared store.
#[derive(Debug, Clone)]
pub struct Pending {
    pub count: u32,
    /// When the first of them was admitted (the shared state charges from there).
    pub first: u64,
    /// The key as the client sent it, to name the shared entry.
    pub key: Box<[u8]>,
}

/// Spreads an already-random 64-bit hash over both ends of the word (hashbrown uses
/// the low bits for the slot and the high bits for its tag; the shard index took the
/// top bits).
#[derive(Default)]
struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        (self.0 ^ (self.0 >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<Mix>>;

struct Shard {
    tats: Map<u64>,
    pending: Map<Pending>,
    next_sweep: usize,
}

impl Shard {
    fn new(cap: usize) -> Shard {
        Shard {
            tats: Map::default(),
            pending: Map::default(),
            next_sweep: MIN_SWEEP.min(cap),
        }
    }
}

pub struct RateTable {
    pub gcra: Gcra,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    shard_cap: usize,
    /// Record what is admitted, for a shared store.
    shared: bool,
}

impl RateTable {
    pub fn new(gcra: Gcra, max_keys: usize, shared: bool) -> RateTable {
        let shard_cap = (max_keys / SHARDS).max(16);
        RateTable {
            gcra,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(shard_cap)))
                .collect(),
            hasher: RandomState::new(),
            shard_cap,
            shared,
        }
    }

    /// The key's hash in this table (per-process random key).
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, h: u64) -> std::sync::MutexGuard<'_, Shard> {
        let s = &self.shards[(h >> 58) as usize % SHARDS];
        s.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides for one request and records it when admitted.
    #[inline]
    pub fn check(&self, h: u64, key: &[u8], now: u64) -> Verdict {
        let mut s = self.shard(h);
        let tat = s.tats.get(&h).copied().unwrap_or(0);
        let (v, new_tat) = self.gcra.decide(tat, now);
        if v.allowed {
            s.tats.insert(h, new_tat);
            // Past the cap (a flood of distinct keys within one sync interval, or a
            // store that is away) a new key's admissions are not recorded for the shared
            // store: other instances then see less of it, which can only admit it more.
            if self.shared && (s.pending.len() < self.shard_cap || s.pending.contains_key(&h)) {
                s.pending
                    .entry(h)
                    .and_modify(|p| p.count = p.count.saturating_add(1))
                    .or_insert_with(|| Pending {
                        count: 1,
                        first: now,
                        key: key.into(),
                    });
            }
            if s.tats.len() >= s.next_sweep {
                self.sweep(&mut s, now);
            }
        }
        v
    }

    /// Gives back one admission (a later limit refused the request).
    pub fn refund(&self, h: u64) {
        let mut s = self.shard(h);
        if let Some(t) = s.tats.get_mut(&h) {
            *t = t.saturating_sub(self.gcra.interval);
        }
        if let Some(p) = s.pending.get_mut(&h) {
            p.count = p.count.saturating_sub(1);
        }
    }

    /// Drops idle entries; past the cap, drops the entries closest to full.
    fn sweep(&self, s: &mut Shard, now: u64) {
        s.tats.retain(|_, tat| *tat > now);
        let mut pass = 0u32;
        while s.tats.len() > self.shard_cap * 3 / 4 {
            // Thresholds now + tolerance/16, /8, /4, /2, then everything.
            let cut = match pass {
                0..=3 => now.saturating_add(self.gcra.tolerance >> (4 - pass)),
                _ => u64::MAX,
            };
            s.tats.retain(|_, tat| *tat > cut);
            pass += 1;
        }
        s.next_sweep = (s.tats.len() * 2).max(MIN_SWEEP).min(self.shard_cap);
    }

    /// Live entries (for tests and the flood bound).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.tats.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes what was admitted since the last call, per key.
    pub fn take_pending(&self) -> Vec<(u64, Pending)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(s.pending.drain().filter(|(_, p)| p.count > 0));
        }
        out
    }

    /// Adopts the shared state of a key: its shared `tat`, plus what this table admitted
    /// since the sync was sent. Never moves a key's state backwards.
    pub fn adopt(&self, h: u64, shared_tat: u64, now: u64) {
        let mut s = self.shard(h);
        let since = s.pending.get(&h).map_or(0, |p| u64::from(p.count));
        let merged = shared_tat.saturating_add(since.saturating_mul(self.gcra.interval));
        let local = s.tats.get(&h).copied().unwrap_or(0);
        if merged > local && merged > now {
            s.tats.insert(h, merged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_steady_rate() {
        let t = RateTable::new(Gcra::new(10, S, 5), 1 << 20, false);
        let h = t.hash(b"k");
        let now = 1_000 * S;
        let admitted = (0..20).filter(|_| t.check(h, b"k", now).allowed).count();
        assert_eq!(admitted, 5, "a full bucket admits exactly the burst");
        let v = t.check(h, b"k", now);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_ns, S / 10, "one interval until the next token");
        // Over 10 s at 3x the rate: rate * 10 s more.
        let mut ok = 0;
        for i in 1..=300u64 {
            if t.check(h, b"k", now + i * S / 30).allowed {
                ok += 1;
            }
        }
        assert_eq!(ok, 100);
    }

    #[test]
    fn remaining_and_next_token() {
        let g = Gcra::new(1, 60 * S, 3);
        let (v, tat) = g.decide(0, 100 * S);
        assert_eq!((v.allowed, v.remaining), (true, 2));
        assert_eq!(
            v.next_ns,
            60 * S,
            "the token used comes back in one interval"
        );
        let (v, tat) = g.decide(tat, 130 * S);
        assert_eq!((v.allowed, v.remaining, v.next_ns), (true, 1, 30 * S));
        let (v, tat) = g.decide(tat, 130 * S);
        assert_eq!((v.allowed, v.remaining), (true, 0));
        let (v, _) = g.decide(tat, 130 * S);
        assert!(!v.allowed);
        assert_eq!(v.retry_ns, 30 * S);
        assert_eq!(v.next_ns, 30 * S);
        let full = g.state(tat, 1_000 * S, true);
        assert_eq!((full.remaining, full.next_ns), (3, 0));
    }

    #[test]
    fn refund_gives_the_token_back() {
        let t = RateTable::new(Gcra::new(1, S, 1), 1 << 20, false);
        let h = t.hash(b"a");
        assert!(t.check(h, b"a", 5 * S).allowed);
        assert!(!t.check(h, b"a", 5 * S).allowed);
        t.refund(h);
        assert!(t.check(h, b"a", 5 * S).allowed);
    }

    #[test]
    fn live_keys_are_capped() {
        let t = RateTable::new(Gcra::new(10, S, 10), 64 * 100, false);
        let now = 10 * S;
        for i in 0..100_000u32 {
            let k = i.to_le_bytes();
            // Every bucket stays live for 100 ms: only the cap bounds the table.
            assert!(t.check(t.hash(&k), &k, now + u64::from(i)).allowed);
        }
        assert!(t.len() <= 64 * 100, "capped: {}", t.len());
    }

    #[test]
    fn idle_keys_are_evicted() {
        let t = RateTable::new(Gcra::new(10, S, 10), 1 << 20, false);
        let mut now = 10 * S;
        for i in 0..100_000u32 {
            let k = i.to_le_bytes();
            t.check(t.hash(&k), &k, now);
        }
        assert_eq!(t.len(), 100_000, "all live: nothing may be dropped");
        now += S;
        for i in 100_000..200_000u32 {
            let k = i.to_le_bytes();
            t.check(t.hash(&k), &k, now);
        }
        assert!(t.len() < 150_000, "idle buckets stay: {}", t.len());
    }

    #[test]
    fn pending_and_adopt() {
        let t = RateTable::new(Gcra::new(10, S, 10), 1 << 20, true);
        let h = t.hash(b"x");
        let now = 50 * S;
        for _ in 0..3 {
            t.check(h, b"x", now);
        }
        let p = t.take_pending();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].1.count, p[0].1.first, &*p[0].1.key),
            (3, now, &b"x"[..])
        );
        // Another instance admitted 7 more: the shared state is 10 intervals ahead.
        t.check(h, b"x", now);
        t.adopt(h, now + 10 * (S / 10), now);
        let v = t.check(h, b"x", now);
        assert!(
            !v.allowed,
            "10 shared + 1 local since the sync fill the burst"
        );
    }
}
