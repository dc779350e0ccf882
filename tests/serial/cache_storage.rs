//! The cache storage engine on its own, under a counting allocator: the bytes it charges
//! (`stored_bytes`, bounded by `cache.memory`) must cover what it really allocates, for
//! small and large entries alike, so the bound holds however many distinct keys arrive.
//! Also: eviction order, streaming fills, ranges over chunks, replacement and update.

// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to the
// system allocator and adds up sizes.
#![allow(unsafe_code)]

use bytes::Bytes;
use gatehouse::cache::storage::EntryTag;
use gatehouse::cache::MemoryStorage;
use pingora::cache::storage::{MissFinishType, Storage};
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// What glibc malloc really uses for a request: an 8-byte header, 16-byte granules,
/// 32 bytes at least.
fn chunk(size: usize) -> isize {
    ((size + 8 + 15) & !15).max(32) as isize
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(l.size()), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(chunk(l.size()), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(chunk(new) - chunk(l.size()), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

// The allocation counter is process-wide: the tests of this binary (this file's and
// limits_flood's) run one at a time.
use super::SERIAL;

fn storage(memory: usize, max_object: usize) -> &'static MemoryStorage {
    Box::leak(Box::new(MemoryStorage::new(memory, max_object)))
}

fn meta() -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header("content-type", "application/json").unwrap();
    h.insert_header("cache-control", "max-age=60").unwrap();
    h.insert_header("etag", "\"0123456789\"").unwrap();
    h.insert_header("x-upstream-server", "orders-7f9c").unwrap();
    h.insert_header("x-trace-context", "00-4bf92f3577b34da6-00f067aa0ba902b7-01")
        .unwrap();
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
}

fn key(i: usize) -> CacheKey {
    let mut k = CacheKey::new(format!("http|9:localhost|12:/items/{i:06}|0:."), "");
    k.extensions.insert(EntryTag {
        route: Arc::from("items"),
        path: format!("/items/{i:06}").into(),
    });
    k
}

async fn fill(s: &'static MemoryStorage, k: &CacheKey, chunks: &[Bytes]) -> usize {
    let span = Span::inactive().handle();
    let mut miss = s.get_miss_handler(k, &meta(), &span).await.unwrap();
    for c in chunks {
        miss.write_body(c.clone(), false).await.unwrap();
    }
    match miss.finish().await.unwrap() {
        MissFinishType::Created(w) => w,
        MissFinishType::Appended(..) => panic!("appended"),
    }
}

async fn body_of(s: &'static MemoryStorage, k: &CacheKey) -> Option<Vec<u8>> {
    let span = Span::inactive().handle();
    let (_, mut hit) = s.lookup(k, &span).await.unwrap()?;
    let mut out = Vec::new();
    while let Some(b) = hit.read_body().await.unwrap() {
        out.extend_from_slice(&b);
    }
    Some(out)
}

/// Real allocations stay within what is charged, and the charge is not wildly above them.
async fn check_accounting(n: usize, chunk: usize, chunks: usize) {
    let s = storage(1 << 30, 1 << 24);
    let data: Vec<Bytes> = (0..chunks).map(|_| Bytes::from(vec![7u8; chunk])).collect();
    // Keys and chunk payloads are built before the baseline: the body bytes are charged
    // by length and counted here once per entry below.
    let keys: Vec<CacheKey> = (0..n).map(key).collect();
    let before = LIVE.load(Ordering::SeqCst);
    for k in &keys {
        // Each entry owns its body (as a fill from the network does).
        let owned: Vec<Bytes> = data.iter().map(|b| Bytes::copy_from_slice(b)).collect();
        fill(s, k, &owned).await;
    }
    let real = (LIVE.load(Ordering::SeqCst) - before) as usize;
    let charged = s.stats().stored_bytes;
    assert_eq!(s.stats().entries, n);
    println!(
        "{n} entries of {chunks}x{chunk} B: real {real} B, charged {charged} B ({:.2})",
        charged as f64 / real as f64
    );
    assert!(
        real <= charged,
        "allocated {real} B but charged only {charged} B"
    );
    assert!(
        charged <= real * 2,
        "charged {charged} B for {real} B allocated"
    );
}

#[tokio::test]
async fn charged_bytes_cover_real_allocations() {
    let _one_at_a_time = SERIAL.lock().await;
    check_accounting(20_000, 16, 1).await;
    check_accounting(5_000, 1024, 1).await;
    check_accounting(200, 16 * 1024, 8).await;
}

#[tokio::test]
async fn eviction_holds_the_bound_for_tiny_and_large_entries_and_drops_the_least_recent() {
    let _one_at_a_time = SERIAL.lock().await;
    let s = storage(256 * 1024, 64 * 1024);
    for i in 0..5_000 {
        fill(s, &key(i), &[Bytes::from_static(b"tiny")]).await;
        assert!(s.stats().stored_bytes <= 256 * 1024);
    }
    assert!(s.stats().evictions > 4_000);
    // Recency is kept per shard (the LRU is sharded like the maps): use keys of one shard.
    let shard_of = |i: usize| {
        use pingora::cache::key::CacheHashKey;
        (u128::from_be_bytes(key(i).combined_bin()) as u64)
            % gatehouse::cache::storage::SHARDS as u64
    };
    let same: Vec<usize> = (0..10_000)
        .filter(|i| shard_of(*i) == shard_of(0))
        .take(9)
        .collect();
    let s = storage(256 * 1024, 64 * 1024);
    for &i in &same[..8] {
        fill(s, &key(i), &[Bytes::from(vec![1u8; 30 * 1024])]).await;
    }
    // Touch the first so that the second is now the least recently used.
    assert!(body_of(s, &key(same[0])).await.is_some());
    fill(s, &key(same[8]), &[Bytes::from(vec![1u8; 30 * 1024])]).await;
    assert!(s.stats().stored_bytes <= 256 * 1024);
    assert!(
        body_of(s, &key(same[0])).await.is_some(),
        "recently used entry evicted"
    );
    assert!(
        body_of(s, &key(same[1])).await.is_none(),
        "least recently used entry kept"
    );
    assert!(body_of(s, &key(same[8])).await.is_some());
}

#[tokio::test]
async fn fills_stream_chunks_enforce_max_object_and_commit_only_when_finished() {
    let _one_at_a_time = SERIAL.lock().await;
    let s = storage(1 << 20, 1000);
    let span = Span::inactive().handle();
    let k = key(1);
    let mut miss = s.get_miss_handler(&k, &meta(), &span).await.unwrap();
    miss.write_body(Bytes::from_static(b"hello "), false)
        .await
        .unwrap();
    assert!(
        body_of(s, &k).await.is_none(),
        "a fill in progress is not an entry"
    );
    assert_eq!(s.stats().filling_bytes, 6);
    miss.write_body(Bytes::from_static(b"world"), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
    assert_eq!(body_of(s, &k).await.as_deref(), Some(&b"hello world"[..]));
    assert_eq!(s.stats().filling_bytes, 0);
    // Over max_object: refused while streaming, nothing stored, nothing held.
    let k2 = key(2);
    let mut miss = s.get_miss_handler(&k2, &meta(), &span).await.unwrap();
    miss.write_body(Bytes::from(vec![0u8; 600]), false)
        .await
        .unwrap();
    assert!(miss
        .write_body(Bytes::from(vec![0u8; 600]), false)
        .await
        .is_err());
    assert_eq!(s.stats().filling_bytes, 0);
    assert!(miss.finish().await.is_err());
    assert!(body_of(s, &k2).await.is_none());
    // A dropped fill (upstream failed) leaves nothing behind.
    let mut miss = s.get_miss_handler(&k2, &meta(), &span).await.unwrap();
    miss.write_body(Bytes::from(vec![0u8; 100]), false)
        .await
        .unwrap();
    drop(miss);
    assert_eq!(s.stats().filling_bytes, 0);
    assert!(body_of(s, &k2).await.is_none());
}

#[tokio::test]
async fn seeks_span_chunks_and_updates_keep_the_body() {
    let _one_at_a_time = SERIAL.lock().await;
    let s = storage(1 << 20, 1 << 20);
    let span = Span::inactive().handle();
    let k = key(3);
    let chunks: Vec<Bytes> = ["0123", "4567", "89ab"]
        .iter()
        .map(|c| Bytes::from(*c))
        .collect();
    fill(s, &k, &chunks).await;
    let (_, mut hit) = s.lookup(&k, &span).await.unwrap().unwrap();
    assert!(hit.can_seek());
    hit.seek(2, Some(10)).unwrap();
    let mut out = Vec::new();
    while let Some(b) = hit.read_body().await.unwrap() {
        out.extend_from_slice(&b);
    }
    assert_eq!(out, b"23456789");
    assert!(hit.seek(12, None).is_err());
    let mut m = meta();
    m.response_header_mut().insert_header("x-new", "1").unwrap();
    assert!(s.update_meta(&k, &m, &span).await.unwrap());
    let (m2, _) = s.lookup(&k, &span).await.unwrap().unwrap();
    assert_eq!(m2.headers()["x-new"], "1");
    assert_eq!(body_of(s, &k).await.as_deref(), Some(&b"0123456789ab"[..]));
    assert!(!s.update_meta(&key(999), &m, &span).await.unwrap());
    // Purge by tag.
    let (n, _) = s.purge_where(|t| t.path.starts_with("/items/000003"));
    assert_eq!(n, 1);
    assert!(body_of(s, &k).await.is_none());
    assert_eq!(s.stats().stored_bytes, 0);
}

/// What a hit hands Pingora: open stale windows (it checks them on the wall clock) with
/// the real ones kept for the gateway, and `created` stamps that order admissions even
/// when the clock stands still.
#[tokio::test]
async fn hits_carry_the_real_stale_windows_and_admissions_stay_ordered() {
    use gatehouse::cache::storage::StaleWindows;
    let _one_at_a_time = SERIAL.lock().await;
    let s = storage(1 << 20, 1 << 20);
    let span = Span::inactive().handle();
    let frozen = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    let header = ResponseHeader::build(200, None).unwrap();
    let windowed = CacheMeta::new(frozen + Duration::from_secs(10), frozen, 30, 60, header);
    let (a, b) = (key(10), key(11));
    for k in [&a, &b] {
        let mut miss = s.get_miss_handler(k, &windowed, &span).await.unwrap();
        miss.write_body(Bytes::from_static(b"x"), false)
            .await
            .unwrap();
        miss.finish().await.unwrap();
    }
    let (ma, _) = s.lookup(&a, &span).await.unwrap().unwrap();
    let (mb, _) = s.lookup(&b, &span).await.unwrap().unwrap();
    assert_eq!(
        (ma.stale_while_revalidate_sec(), ma.stale_if_error_sec()),
        (u32::MAX, u32::MAX),
        "Pingora's wall-clock gates pass"
    );
    let real = StaleWindows {
        while_revalidate: 30,
        if_error: 60,
    };
    assert_eq!(StaleWindows::of(&ma), real);
    assert_eq!(StaleWindows::of(&windowed), real, "a meta not looked up");
    assert!(
        ma.created() >= frozen && mb.created() > ma.created(),
        "two admissions at one instant are still ordered"
    );
    assert_eq!(ma.fresh_until(), frozen + Duration::from_secs(10));
    // Writing a looked-up meta back keeps the real windows, not the open ones.
    assert!(s.update_meta(&a, &ma, &span).await.unwrap());
    let (again, _) = s.lookup(&a, &span).await.unwrap().unwrap();
    assert_eq!(StaleWindows::of(&again), real);
    // A meta without windows stays without them.
    let (plain, _) = {
        fill(s, &key(12), &[Bytes::from_static(b"y")]).await;
        s.lookup(&key(12), &span).await.unwrap().unwrap()
    };
    assert_eq!(StaleWindows::of(&plain), StaleWindows::default());
    assert_eq!(plain.stale_while_revalidate_sec(), 0);
}
