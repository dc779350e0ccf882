//! Two counts over a sliding window of ten buckets, with atomics: what outlier
//! ejection (attempts, failures per target) and the retry budget (requests, retries per
//! upstream) count. A bucket holds the slot (time / bucket length) it counts for; the
//! first count of a newer slot empties it. A racing reset may lose a count or two at a
//! bucket's turn, which a ratio or a budget can afford.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: usize = 10;

/// The length of one bucket, in nanoseconds, for a window of `window`.
pub fn bucket_ns(window: Duration) -> u64 {
    (window.as_nanos() as u64 / BUCKETS as u64).max(1)
}

#[derive(Default)]
pub struct Window {
    /// (slot, first count, second count) per bucket.
    buckets: [(AtomicU64, AtomicU64, AtomicU64); BUCKETS],
}

impl Window {
    /// Counts one in the first and/or the second count of `slot`'s bucket.
    pub fn add(&self, slot: u64, first: bool, second: bool) {
        let b = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = b.0.load(Relaxed);
        if seen != slot && b.0.compare_exchange(seen, slot, Relaxed, Relaxed).is_ok() {
            b.1.store(0, Relaxed);
            b.2.store(0, Relaxed);
        }
        if first {
            b.1.fetch_add(1, Relaxed);
        }
        if second {
            b.2.fetch_add(1, Relaxed);
        }
    }

    /// Both counts over the window that ends with `slot`.
    pub fn sums(&self, slot: u64) -> (u64, u64) {
        let oldest = slot.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=slot).contains(&b.0.load(Relaxed)))
            .fold((0, 0), |(a, b2), b| {
                (a + b.1.load(Relaxed), b2 + b.2.load(Relaxed))
            })
    }

    pub fn clear(&self) {
        for b in &self.buckets {
            b.1.store(0, Relaxed);
            b.2.store(0, Relaxed);
        }
    }
}
