//! Where cached answers live: in this replica's memory (moka: bounded by bytes, a time to live
//! per entry) or in the quota store's Redis, shared by replicas (`{ns}:cache:MODEL:SHA` with
//! a `PX` time to live, in a compact binary form).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};

use crate::ledger::TokenUsage;
use crate::quota::redis::SharedIo;

/// A stored answer: its chunks with their original boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub status: u16,
    pub content_type: Option<String>,
    /// The model it answered for (`POST /api/ai/cache/clear` may clear one model's entries).
    pub model: String,
    /// Unix ms.
    pub stored_at_ms: i64,
    pub ttl_ms: u64,
    /// The usage Google reported: what a hit saves.
    pub usage: TokenUsage,
    pub chunks: Vec<Bytes>,
}

/// The longest an admin clear of the Redis backend runs before it answers with what it did.
pub const CLEAR_DEADLINE: Duration = Duration::from_secs(10);

/// What a clear did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleared {
    /// Entries dropped.
    pub count: u64,
    /// Every matching entry was reached (false: the time ran out; clear again).
    pub complete: bool,
}

/// Fixed bytes of an encoded entry besides its chunks and strings.
const OVERHEAD: usize = 4 + 2 + 8 + 8 + 5 * 8 + 4 + 4 + 4;
const MAGIC: &[u8; 4] = b"GQC1";

impl Entry {
    /// The answer's bytes.
    pub fn body_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Bytes it takes (the memory backend's weight).
    pub fn weight(&self) -> usize {
        OVERHEAD
            + self.chunks.len() * (4 + std::mem::size_of::<Bytes>())
            + self.body_len()
            + self.model.len()
            + self.content_type.as_ref().map_or(0, String::len)
    }

    /// Still fresh at `now_ms`, and younger than `max_age` when the request set one.
    pub fn fresh(&self, now_ms: i64, max_age: Option<Duration>) -> bool {
        let age = now_ms.saturating_sub(self.stored_at_ms).max(0) as u64;
        age < self.ttl_ms && max_age.is_none_or(|m| age <= m.as_millis() as u64)
    }

    /// The compact form kept in Redis.
    pub fn encode(&self) -> Vec<u8> {
        let ct = self.content_type.as_deref().unwrap_or("").as_bytes();
        let mut out = Vec::with_capacity(self.weight());
        out.put_slice(MAGIC);
        out.put_u16(self.status);
        out.put_i64(self.stored_at_ms);
        out.put_u64(self.ttl_ms);
        let u = &self.usage;
        for v in [u.input, u.cached, u.output, u.thinking, u.tool] {
            out.put_u64(v);
        }
        out.put_u32(ct.len() as u32);
        out.put_slice(ct);
        out.put_u32(self.model.len() as u32);
        out.put_slice(self.model.as_bytes());
        out.put_u32(self.chunks.len() as u32);
        for c in &self.chunks {
            out.put_u32(c.len() as u32);
            out.put_slice(c);
        }
        out
    }

    /// The inverse of [`Entry::encode`]; anything else (another version's form, a cut value)
    /// is `None` and reads as a miss.
    pub fn decode(raw: &[u8]) -> Option<Entry> {
        Self::decode_owned(&Bytes::copy_from_slice(raw))
    }

    /// [`Entry::decode`] of a value already owned (a Redis reply): the chunks are views of
    /// `raw`, not copies.
    pub fn decode_owned(raw: &Bytes) -> Option<Entry> {
        let mut b = &raw[..];
        if b.len() < OVERHEAD || &b[..4] != MAGIC {
            return None;
        }
        b.advance(4);
        let status = b.get_u16();
        let stored_at_ms = b.get_i64();
        let ttl_ms = b.get_u64();
        let mut u = [0u64; 5];
        for v in &mut u {
            *v = b.get_u64();
        }
        let ct = take(&mut b)?;
        let model = take(&mut b)?;
        if b.remaining() < 4 {
            return None;
        }
        let n = b.get_u32() as usize;
        let mut chunks = Vec::with_capacity(n.min(b.remaining() / 4));
        for _ in 0..n {
            chunks.push(raw.slice_ref(take(&mut b)?));
        }
        if b.has_remaining() {
            return None;
        }
        Some(Entry {
            status,
            content_type: (!ct.is_empty())
                .then(|| String::from_utf8(ct.to_vec()).ok())
                .flatten(),
            model: String::from_utf8(model.to_vec()).ok()?,
            stored_at_ms,
            ttl_ms,
            usage: TokenUsage {
                input: u[0],
                cached: u[1],
                output: u[2],
                thinking: u[3],
                tool: u[4],
                // Cached answers are of token-billed calls only.
                ..TokenUsage::default()
            },
            chunks,
        })
    }
}

/// A length-prefixed slice.
fn take<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    if b.remaining() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

/// Each entry expires after its own time to live (the configured one, or a request's max-age).
struct PerEntry;

impl moka::Expiry<[u8; 32], Arc<Entry>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(value.ttl_ms))
    }

    fn expire_after_update(
        &self,
        _key: &[u8; 32],
        value: &Arc<Entry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(value.ttl_ms))
    }
}

/// The cache's backend.
pub enum Store {
    Memory(moka::sync::Cache<[u8; 32], Arc<Entry>>),
    Redis(SharedIo),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend())
    }
}

impl Store {
    /// A memory cache of at most `max_bytes`.
    pub fn memory(max_bytes: u64) -> Store {
        Store::Memory(
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, e: &Arc<Entry>| u32::try_from(e.weight()).unwrap_or(u32::MAX))
                .expire_after(PerEntry)
                .support_invalidation_closures()
                .build(),
        )
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    fn redis_key(io: &SharedIo, model: &str, key: &[u8; 32]) -> String {
        format!("{}:cache:{model}:{}", io.prefix(), hex::encode(key))
    }

    /// The entry under `key`, if any (a Redis that fails reads as a miss).
    pub async fn get(&self, model: &str, key: &[u8; 32]) -> Option<Arc<Entry>> {
        match self {
            Store::Memory(c) => c.get(key),
            Store::Redis(io) => {
                let mut conn = io.connection();
                let cmd = redis::cmd("GET")
                    .arg(Self::redis_key(io, model, key))
                    .to_owned();
                let got = tokio::time::timeout(
                    io.timeout(),
                    cmd.query_async::<Option<Vec<u8>>>(&mut conn),
                )
                .await;
                match got {
                    Ok(Ok(Some(raw))) => Entry::decode_owned(&Bytes::from(raw)).map(Arc::new),
                    Ok(Ok(None)) => None,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "cache read failed: served as a miss");
                        None
                    }
                    Err(_) => {
                        tracing::debug!("cache read timed out: served as a miss");
                        None
                    }
                }
            }
        }
    }

    /// Keep `entry` under `key` for its time to live.
    pub async fn put(&self, key: [u8; 32], entry: Arc<Entry>) {
        match self {
            Store::Memory(c) => c.insert(key, entry),
            Store::Redis(io) => {
                let mut conn = io.connection();
                let cmd = redis::cmd("SET")
                    .arg(Self::redis_key(io, &entry.model, &key))
                    .arg(entry.encode())
                    .arg("PX")
                    .arg(entry.ttl_ms.max(1))
                    .to_owned();
                // Writing up to an entry's limit may take longer than a quota call.
                let deadline = io.timeout() * 4;
                match tokio::time::timeout(deadline, cmd.query_async::<()>(&mut conn)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cache write failed"),
                    Err(_) => tracing::warn!("cache write timed out"),
                }
            }
        }
    }

    /// Drop every entry, or one model's; how many went (memory: the entries held before), and
    /// whether it got through them all. In Redis each call has the store's time limit and the
    /// whole clear [`CLEAR_DEADLINE`]: a clear that runs out stops and says so (ask again).
    pub async fn clear(&self, model: Option<&str>) -> Result<Cleared, String> {
        match self {
            Store::Memory(c) => {
                c.run_pending_tasks();
                let before = c.entry_count();
                match model {
                    None => c.invalidate_all(),
                    Some(m) => {
                        let m = m.to_string();
                        c.invalidate_entries_if(move |_, e| e.model == m)
                            .map_err(|e| e.to_string())?;
                    }
                }
                c.run_pending_tasks();
                Ok(Cleared {
                    count: before.saturating_sub(c.entry_count()),
                    complete: true,
                })
            }
            Store::Redis(io) => {
                let pattern = format!("{}:cache:{}:*", io.prefix(), model.unwrap_or("*"));
                let mut conn = io.connection();
                let mut cursor: u64 = 0;
                let mut gone = 0u64;
                let deadline = tokio::time::Instant::now() + CLEAR_DEADLINE;
                let partial = |count| {
                    Ok(Cleared {
                        count,
                        complete: false,
                    })
                };
                loop {
                    if tokio::time::Instant::now() >= deadline {
                        return partial(gone);
                    }
                    let cmd = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .to_owned();
                    // SCAN names no key: sent to the node that holds the namespace's slot
                    // (in a Cluster any other node would scan its own keys).
                    let scanned =
                        tokio::time::timeout(io.timeout() * 4, conn.query_at(io.prefix(), &cmd))
                            .await;
                    let (next, keys): (u64, Vec<String>) = match scanned {
                        Ok(r) => r.map_err(|e| e.to_string())?,
                        // Nothing cleared yet: say Redis failed; else say how far it got.
                        Err(_) if gone == 0 => {
                            return Err("Redis did not answer in time".to_string());
                        }
                        Err(_) => return partial(gone),
                    };
                    if !keys.is_empty() {
                        let cmd = redis::cmd("UNLINK").arg(&keys).to_owned();
                        match tokio::time::timeout(io.timeout(), cmd.query_async::<u64>(&mut conn))
                            .await
                        {
                            Ok(Ok(n)) => gone += n,
                            Ok(Err(e)) if gone == 0 => return Err(e.to_string()),
                            Ok(Err(_)) | Err(_) => return partial(gone),
                        }
                    }
                    cursor = next;
                    if cursor == 0 {
                        return Ok(Cleared {
                            count: gone,
                            complete: true,
                        });
                    }
                }
            }
        }
    }

    /// Bytes the memory backend holds (0 for Redis), after pending evictions ran.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            Store::Memory(c) => {
                c.run_pending_tasks();
                c.weighted_size()
            }
            Store::Redis(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(chunks: &[&str], ttl_ms: u64) -> Entry {
        Entry {
            status: 200,
            content_type: Some("text/event-stream".into()),
            model: "gemini-2.5-flash".into(),
            stored_at_ms: 1_000,
            ttl_ms,
            usage: TokenUsage {
                input: 5,
                output: 7,
                ..TokenUsage::default()
            },
            chunks: chunks.iter().map(|c| Bytes::from(c.to_string())).collect(),
        }
    }

    #[test]
    fn entries_round_trip_with_their_boundaries() {
        let e = entry(&["data: a\r\n\r\n", "data: b", "\r\n\r\n"], 60_000);
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        let raw = e.encode();
        assert_eq!(Entry::decode(&raw[..raw.len() - 1]), None);
        assert_eq!(
            Entry::decode(b"GQC0 something else entirely........................"),
            None
        );
    }

    #[test]
    fn freshness_follows_ttl_and_max_age() {
        let e = entry(&["x"], 10_000);
        assert!(e.fresh(5_000, None));
        assert!(!e.fresh(11_000, None));
        assert!(e.fresh(5_000, Some(Duration::from_secs(4))));
        assert!(!e.fresh(5_000, Some(Duration::from_secs(3))));
    }

    #[tokio::test]
    async fn memory_keeps_within_its_byte_limit() {
        let s = Store::memory(64 * 1024);
        let big = "x".repeat(1000);
        for i in 0..200u8 {
            s.put([i; 32], Arc::new(entry(&[&big], 60_000))).await;
        }
        assert!(s.memory_bytes() <= 64 * 1024, "{}", s.memory_bytes());
    }

    #[tokio::test]
    async fn memory_clears_by_model_then_whole() {
        // Room for everything: an entry missing afterwards was cleared, not evicted.
        let s = Store::memory(16 * 1024 * 1024);
        let big = "x".repeat(1000);
        for i in 0..10u8 {
            s.put([i; 32], Arc::new(entry(&[&big], 60_000))).await;
        }
        let mut other = entry(&["y"], 60_000);
        other.model = "other".into();
        s.put([255; 32], Arc::new(other)).await;
        assert!(s.get("gemini-2.5-flash", &[9; 32]).await.is_some());
        assert!(s.get("other", &[255; 32]).await.is_some());
        let c = s.clear(Some("gemini-2.5-flash")).await.unwrap();
        assert_eq!(
            c,
            Cleared {
                count: 10,
                complete: true
            }
        );
        assert!(s.get("other", &[255; 32]).await.is_some());
        assert!(s.get("gemini-2.5-flash", &[9; 32]).await.is_none());
        assert_eq!(s.clear(None).await.unwrap().count, 1);
        assert!(s.get("other", &[255; 32]).await.is_none());
    }
}
