//! The cache storage engine: a sharded, byte-bounded, in-memory implementation of
//! `pingora_cache::storage::Storage`.
//!
//! Layout: entries live in `SHARDS` hash maps (one `RwLock` each) keyed by the low 64 bits
//! of the cache key hash; the entry keeps the full 128-bit hash, so a 64-bit collision is
//! a miss or a replacement, never a wrong answer. Recency and the byte bound live in one
//! weighted LRU (`pingora_lru::Lru`) with the same shard function, so an entry and its LRU
//! node are always in the same shard index.
//!
//! Why pingora-lru rather than TinyUFO: weights here are exact byte counts (`usize`), so
//! the bound `stored_bytes <= cache.memory` holds exactly; TinyUFO weighs items in `u16`,
//! which would force coarse units for bodies up to `max_object_size`, and its TinyLFU
//! admission may refuse a response that was just fetched, which makes a fill's outcome
//! depend on traffic history (surprising for operators and untestable for us). Its
//! lock-free reads do not matter at our scale: a hit takes one shard read lock and one
//! LRU shard write lock, both uncontended next to the socket work of a request.
//!
//! Writes are streamed: a fill's body is kept as the `Bytes` chunks read from the
//! upstream (shared, not copied, with the downstream write), and committed only when
//! complete. `max_object_size` is enforced on every chunk. Concurrent readers of a key
//! being filled wait under the cache lock (`support_streaming_partial_write` is false):
//! that keeps an over-size fill a clean pass-through for its client (Pingora aborts a
//! downstream that is reading a partial entry when the fill is abandoned).
//!
//! Accounting: each entry is charged its body, its header fields (+ `HEADER_FIELD_OVERHEAD`
//! each), its purge tag and a fixed `ENTRY_OVERHEAD` (+ `CHUNK_OVERHEAD` per body chunk)
//! for the map slot, `Arc`, LRU node and allocations, so many tiny entries cannot exceed
//! the bound either. The figures
//! are checked against a counting allocator in `tests/serial/cache_storage.rs`.
//!
//! A hit hands Pingora its stale windows as unbounded and keeps the stored ones in the
//! meta's extensions (`StaleWindows`): Pingora checks them on the wall clock, we decide
//! them on the gateway's clock (see `cache::phases`).
//!
//! A disk tier can be added later behind the same trait: a tiered `Storage` would look up
//! here first and fall back to disk, and receive this engine's evictions (see `evict`).

use bytes::Bytes;
use parking_lot::RwLock;
use pingora::cache::eviction::CacheEntryKey;
use pingora::cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use pingora_lru::Lru;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Number of shards of the entry maps and of the LRU.
pub const SHARDS: usize = 32;
/// Bytes charged per entry besides its body, meta and tag (map slot, `Arc<Entry>`, LRU
/// node and list slot, meta and chunk-list allocations).
pub const ENTRY_OVERHEAD: usize = 512;
/// Bytes charged per response header field besides its name and value (map slot,
/// value handle, allocation headers).
pub const HEADER_FIELD_OVERHEAD: usize = 160;
/// Bytes charged per body chunk (the `Bytes` handle and its allocation header).
pub const CHUNK_OVERHEAD: usize = 96;

/// What an entry records about where it came from, for the purge API. Carried from
/// `cache_key_callback` to the storage in `CacheKey::extensions`.
#[derive(Clone, Debug)]
pub struct EntryTag {
    pub route: Arc<str>,
    /// The client's normalised path, without the query.
    pub path: Box<str>,
}

struct Body {
    chunks: Box<[Bytes]>,
    len: usize,
}

/// The stale windows a stored response gave (RFC 5861), in seconds.
///
/// Pingora gates stale-while-revalidate and stale-if-error on `SystemTime::now()`, then
/// asks `should_serve_stale`. The gateway's clock may be a test clock standing before or
/// after the wall clock, so a looked-up meta carries each open window as `u32::MAX`
/// (Pingora's gate passes) and the real one here, where `phases::serve_stale` reads it
/// and decides on the gateway's clock. A window that is zero stays zero on both sides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaleWindows {
    pub while_revalidate: u32,
    pub if_error: u32,
}

impl StaleWindows {
    /// The real windows of `meta`: the stored ones for a looked-up entry, the meta's own
    /// for a response being stored. A window Pingora closed (`disable_serve_stale` on a
    /// forced expiry) stays closed.
    pub fn of(meta: &CacheMeta) -> StaleWindows {
        let stored = meta.extensions().get::<StaleWindows>();
        let real = |handed: u32, stored: Option<u32>| match handed {
            0 => 0,
            _ => stored.unwrap_or(handed),
        };
        StaleWindows {
            while_revalidate: real(
                meta.stale_while_revalidate_sec(),
                stored.map(|w| w.while_revalidate),
            ),
            if_error: real(meta.stale_if_error_sec(), stored.map(|w| w.if_error)),
        }
    }
}

/// The parts of a `CacheMeta` that matter, kept decoded: a hit rebuilds the meta from
/// them (a header clone) instead of decoding the serialized form (a zstd frame and an
/// HTTP parse, about 4x the cost). Not kept: `updated` (our metas always carry an epoch
/// override, which is what age and freshness use) and a provenance older than `created`
/// (rebuilt as `created`: a primary refreshed by a full response then retires its older
/// variants one lookup early, the conservative direction).
struct StoredMeta {
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    epoch_override: Option<SystemTime>,
    variance: Option<HashBinary>,
    status: http::StatusCode,
    headers: http::HeaderMap,
}

impl StoredMeta {
    fn from_meta(m: &CacheMeta) -> Self {
        let h = m.response_header();
        let mut headers = http::HeaderMap::with_capacity(h.headers.len());
        for (k, v) in h.headers.iter() {
            // Copies: a parsed value may be a slice of the whole upstream read buffer, which
            // must not stay pinned (and uncounted) for the life of the entry.
            let name = http::HeaderName::from_bytes(k.as_str().as_bytes());
            let value = http::HeaderValue::from_bytes(v.as_bytes());
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        let windows = StaleWindows::of(m);
        StoredMeta {
            fresh_until: m.fresh_until(),
            created: m.created(),
            stale_while_revalidate: windows.while_revalidate,
            stale_if_error: windows.if_error,
            epoch_override: m.epoch_override(),
            variance: m.variance(),
            status: h.status,
            headers,
        }
    }

    fn to_meta(&self) -> CacheMeta {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = self.status;
        parts.headers = self.headers.clone();
        let open = |w: u32| if w == 0 { 0 } else { u32::MAX };
        let mut m = CacheMeta::new(
            self.fresh_until,
            self.created,
            open(self.stale_while_revalidate),
            open(self.stale_if_error),
            ResponseHeader::from(parts),
        );
        if self.stale_while_revalidate != 0 || self.stale_if_error != 0 {
            // Only then: most responses have no window, and their hits allocate nothing.
            m.extensions_mut().insert(StaleWindows {
                while_revalidate: self.stale_while_revalidate,
                if_error: self.stale_if_error,
            });
        }
        if let Some(e) = self.epoch_override {
            m.set_epoch_override(e);
        }
        if let Some(v) = self.variance {
            m.set_variance(v);
        }
        m
    }

    /// Bytes the header holds: names, values and a map slot each.
    fn weight(&self) -> usize {
        self.headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + HEADER_FIELD_OVERHEAD)
            .sum::<usize>()
    }
}

struct Entry {
    full: u128,
    id: u64,
    meta: StoredMeta,
    body: Arc<Body>,
    tag: Option<EntryTag>,
    weight: usize,
}

impl Entry {
    fn weigh(meta: &StoredMeta, body: &Body, tag: &Option<EntryTag>) -> usize {
        let tag_len = tag.as_ref().map_or(0, |t| t.path.len() + 16);
        ENTRY_OVERHEAD + meta.weight() + body.len + body.chunks.len() * CHUNK_OVERHEAD + tag_len
    }
}

fn split_key(hash: [u8; 16]) -> (u64, u128) {
    let full = u128::from_be_bytes(hash);
    (full as u64, full)
}

fn shard_of(k: u64) -> usize {
    // Same function as pingora_lru's, so an entry and its LRU node share a shard index.
    (k % SHARDS as u64) as usize
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub stored_bytes: usize,
    pub entries: usize,
    pub evictions: u64,
    pub evicted_bytes: u64,
    /// Bytes of fills in progress (not yet entries, not in `stored_bytes`).
    pub filling_bytes: usize,
}

type Shard = RwLock<HashMap<u64, Arc<Entry>>>;

pub struct MemoryStorage {
    shards: Box<[Shard]>,
    lru: Lru<(u64, u64), SHARDS>,
    next_id: AtomicU64,
    max_object: AtomicUsize,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    filling: AtomicUsize,
    /// The last `created` stamp given (ns since the Unix epoch), see `admission_stamp`.
    last_created: AtomicU64,
}

impl MemoryStorage {
    /// A storage bounded to `memory` bytes that refuses bodies over `max_object` bytes.
    pub fn new(memory: usize, max_object: usize) -> Self {
        let shards = (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect();
        MemoryStorage {
            shards,
            lru: Lru::with_capacity(memory, 1024),
            next_id: AtomicU64::new(1),
            max_object: AtomicUsize::new(max_object),
            evictions: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            filling: AtomicUsize::new(0),
            last_created: AtomicU64::new(0),
        }
    }

    /// `created` orders admissions: Pingora retires a variant created before its URL's
    /// primary entry (`valid_after`), which is how deleting the primary retires every
    /// variant (see `key`). On a test clock that stands still, or a wall clock stepped
    /// back, two admissions would share or reverse their instants, so each stored meta
    /// is stamped strictly after the previous one (one nanosecond at least). Age and
    /// freshness never read `created` (our metas carry an epoch override).
    fn admission_stamp(&self, created: SystemTime) -> SystemTime {
        let want = created
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let stamp = |last: u64| want.max(last.saturating_add(1));
        let before = self
            .last_created
            .fetch_update(Relaxed, Relaxed, |last| Some(stamp(last)))
            .unwrap_or_else(|last| last);
        UNIX_EPOCH + Duration::from_nanos(stamp(before))
    }

    fn admit_meta(&self, meta: &CacheMeta) -> StoredMeta {
        let mut stored = StoredMeta::from_meta(meta);
        stored.created = self.admission_stamp(stored.created);
        stored
    }

    /// Applies new bounds (config reload); shrinking evicts at once.
    pub fn set_limits(&self, memory: usize, max_object: usize) {
        self.lru.set_weight_limit(memory);
        self.max_object.store(max_object, Relaxed);
        self.evict();
    }

    pub fn limit(&self) -> usize {
        self.lru.weight_limit()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            stored_bytes: self.lru.weight(),
            entries: self.lru.len(),
            evictions: self.evictions.load(Relaxed),
            evicted_bytes: self.evicted_bytes.load(Relaxed),
            filling_bytes: self.filling.load(Relaxed),
        }
    }

    fn commit(&self, k: u64, entry: Arc<Entry>) {
        {
            let mut map = self.shards[shard_of(k)].write();
            // LRU admit under the map lock: an evictor checks the map under the same lock,
            // so it can never remove this entry while it is untracked (see `evict`).
            self.lru.admit(k, (k, entry.id), entry.weight);
            map.insert(k, entry);
        }
        self.evict();
    }

    /// Brings the stored bytes back under the limit. An evicted LRU node names the entry
    /// generation it tracked; the map entry goes only if it is still that generation (a
    /// newer fill of the same key has its own node).
    fn evict(&self) {
        for ((k, id), weight) in self.lru.evict_to_limit() {
            let mut map = self.shards[shard_of(k)].write();
            if map.get(&k).is_some_and(|e| e.id == id) {
                map.remove(&k);
            }
            self.evictions.fetch_add(1, Relaxed);
            self.evicted_bytes.fetch_add(weight as u64, Relaxed);
        }
    }

    /// Removes the entry stored under this key hash; returns its weight.
    pub fn remove_hash(&self, hash: [u8; 16]) -> Option<usize> {
        let (k, full) = split_key(hash);
        let mut map = self.shards[shard_of(k)].write();
        if map.get(&k).is_none_or(|e| e.full != full) {
            return None;
        }
        let e = map.remove(&k)?;
        self.lru.remove(k);
        Some(e.weight)
    }

    /// Removes every entry.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut map = shard.write();
            for k in map.keys() {
                self.lru.remove(*k);
            }
            map.clear();
        }
    }

    /// Removes every entry whose tag satisfies `pred` (the admin purge). Returns how many
    /// entries and bytes went. Entries without a tag are never matched.
    pub fn purge_where(&self, pred: impl Fn(&EntryTag) -> bool) -> (usize, usize) {
        let (mut n, mut bytes) = (0, 0);
        for shard in self.shards.iter() {
            let mut map = shard.write();
            let doomed: Vec<u64> = map
                .iter()
                .filter(|(_, e)| e.tag.as_ref().is_some_and(&pred))
                .map(|(k, _)| *k)
                .collect();
            for k in doomed {
                if let Some(e) = map.remove(&k) {
                    self.lru.remove(k);
                    n += 1;
                    bytes += e.weight;
                }
            }
        }
        (n, bytes)
    }

    fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let (k, full) = split_key(key.combined_bin());
        let e = self.shards[shard_of(k)].read().get(&k).cloned()?;
        if e.full != full {
            return None;
        }
        self.lru.promote(k);
        Some(e)
    }
}

#[async_trait::async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(e) = self.get(key) else {
            return Ok(None);
        };
        let meta = e.meta.to_meta();
        let end = e.body.len;
        Ok(Some((meta, Box::new(Hit::new(e.body.clone(), 0, end)))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (k, full) = split_key(key.combined_bin());
        Ok(Box::new(Fill {
            storage: self,
            k,
            full,
            meta: Some(self.admit_meta(meta)),
            tag: key.extensions.get::<EntryTag>().cloned(),
            chunks: Vec::new(),
            len: 0,
            max: self.max_object.load(Relaxed),
            failed: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // This engine does not assign entry ids, so an identified target is not ours.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        Ok(match self.remove_hash(target.key().combined_bin()) {
            Some(_) => PurgeOutcome::Purged(None),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let stored = self.admit_meta(meta);
        let (k, full) = split_key(key.combined_bin());
        {
            let mut map = self.shards[shard_of(k)].write();
            let Some(old) = map.get(&k).filter(|e| e.full == full).cloned() else {
                // Evicted or purged while it was being revalidated: nothing to update.
                return Ok(false);
            };
            let weight = Entry::weigh(&stored, &old.body, &old.tag);
            let e = Arc::new(Entry {
                full,
                id: old.id,
                meta: stored,
                body: old.body.clone(),
                tag: old.tag.clone(),
                weight,
            });
            self.lru.admit(k, (k, e.id), weight);
            map.insert(k, e);
        }
        self.evict();
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Reads a stored body, chunk by chunk, within `[pos, end)`.
struct Hit {
    body: Arc<Body>,
    pos: usize,
    end: usize,
    /// Index and start offset of the chunk holding `pos`.
    chunk: usize,
    chunk_start: usize,
}

impl Hit {
    fn new(body: Arc<Body>, pos: usize, end: usize) -> Self {
        let mut h = Hit {
            body,
            pos: 0,
            end,
            chunk: 0,
            chunk_start: 0,
        };
        h.position(pos);
        h
    }

    fn position(&mut self, pos: usize) {
        let (mut chunk, mut start) = (0, 0);
        while chunk < self.body.chunks.len() && start + self.body.chunks[chunk].len() <= pos {
            start += self.body.chunks[chunk].len();
            chunk += 1;
        }
        self.pos = pos;
        self.chunk = chunk;
        self.chunk_start = start;
    }
}

#[async_trait::async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let Some(c) = self.body.chunks.get(self.chunk) else {
            return Ok(None);
        };
        let from = self.pos - self.chunk_start;
        let to = c.len().min(self.end - self.chunk_start);
        let out = c.slice(from..to);
        self.pos += out.len();
        if to == c.len() {
            self.chunk_start += c.len();
            self.chunk += 1;
        }
        Ok(Some(out))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} beyond body length {}", self.body.len),
            );
        }
        self.end = end.map_or(self.body.len, |e| e.min(self.body.len));
        self.position(start);
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A fill in progress: the body's chunks, committed by `finish`. Dropping it without
/// `finish` (upstream error, client gone, over-size) discards it.
struct Fill {
    storage: &'static MemoryStorage,
    k: u64,
    full: u128,
    meta: Option<StoredMeta>,
    tag: Option<EntryTag>,
    chunks: Vec<Bytes>,
    len: usize,
    max: usize,
    failed: bool,
}

impl Fill {
    fn release(&mut self) {
        self.storage.filling.fetch_sub(self.len, Relaxed);
        self.len = 0;
        self.chunks = Vec::new();
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.release();
    }
}

#[async_trait::async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.failed {
            return Error::e_explain(ErrorType::InternalError, "fill already abandoned");
        }
        if self.len + data.len() > self.max {
            // Over max_object_size: free what we hold now; the response still reaches the
            // client (Pingora disables caching for this request and carries on).
            self.failed = true;
            self.release();
            return Error::e_explain(
                pingora::cache::max_file_size::ERR_RESPONSE_TOO_LARGE,
                format!("body exceeds max_object_size ({} bytes)", self.max),
            );
        }
        if !data.is_empty() {
            self.len += data.len();
            self.storage.filling.fetch_add(data.len(), Relaxed);
            self.chunks.push(data);
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        if self.failed {
            return Error::e_explain(ErrorType::InternalError, "fill was abandoned");
        }
        let chunks = std::mem::take(&mut self.chunks).into_boxed_slice();
        let body = Body {
            chunks,
            len: self.len,
        };
        self.release();
        let Some(meta) = self.meta.take() else {
            return Error::e_explain(ErrorType::InternalError, "fill finished twice");
        };
        let weight = Entry::weigh(&meta, &body, &self.tag);
        let id = self.storage.next_id.fetch_add(1, Relaxed);
        let entry = Arc::new(Entry {
            full: self.full,
            id,
            meta,
            body: Arc::new(body),
            tag: self.tag.take(),
            weight,
        });
        self.storage.commit(self.k, entry);
        Ok(MissFinishType::Created(weight))
    }
}
