//! A bounded in-memory store with expiry, for single-process meshes and tests.
//!
//! Written here rather than taken from a cache crate because the layer needs an atomic
//! claim (compare state and set it under one lock) with per-state lifetimes, which general
//! caches do not offer without a second lock around them.
//!
//! A large store is split into shards, each under its own lock, chosen by the key's hash:
//! every hop takes a lock three times (claim, complete, published), from every worker
//! thread of every runner in the process. On the 2-core development machine one lock cost
//! nothing measurable; the shards are for machines with more cores. Keys are hashed with
//! foldhash, seeded per store: SipHash over hop keys was about 3 % of the in-memory
//! pipeline's CPU in `perf`, and replacing it was measured (docs/benchmarks.md).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::fast::RandomState;
use tokio::time::Instant;
use troupe_core::Publication;

use super::store::{Claim, IdempotencyStore, StoreError};

/// Settings of a [`MemoryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStoreConfig {
    /// Most hops remembered; the oldest are forgotten first (within a shard: see
    /// [`MemoryStore`]).
    pub max_entries: usize,
    /// How long a finished hop is remembered.
    pub ttl: Duration,
}

impl Default for MemoryStoreConfig {
    /// 100,000 hops for 1 hour.
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// Most shards a store is split into: more than the cores of the machines it runs on, so
/// two threads rarely want the same lock.
const MAX_SHARDS: usize = 16;

/// Fewest entries a shard holds, so that a small store keeps one exact eviction order.
const MIN_SHARD_ENTRIES: usize = 4096;

enum State {
    InProgress,
    Completed(Arc<[Publication]>),
    Published,
}

struct Entry {
    state: State,
    expires: Instant,
    /// Distinguishes this entry from an older one under the same key in `order`.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<str>, Entry, RandomState>,
    /// Insertion order, for eviction; stale items are skipped by generation. Shares the
    /// key allocation with `entries`.
    order: VecDeque<(Arc<str>, u64)>,
    generation: u64,
}

/// One lock's share of the store, on a cache line of its own so that threads working on
/// neighbouring shards do not invalidate each other's lines.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Inner>);

/// A bounded, expiring, in-process [`IdempotencyStore`].
///
/// A store of 8,192 entries or more is split into up to 16 shards, each bounded at its
/// share of [`MemoryStoreConfig::max_entries`], so the oldest entry forgotten is the oldest
/// of its shard; a smaller store is one shard with one exact order.
pub struct MemoryStore {
    config: MemoryStoreConfig,
    /// Entries each shard may hold.
    shard_bound: usize,
    /// Picks a key's shard; seeded per store, so a sender cannot aim keys at one shard.
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(MemoryStoreConfig::default())
    }
}

impl MemoryStore {
    /// A store with these bounds.
    pub fn new(config: MemoryStoreConfig) -> Self {
        let bound = config.max_entries.max(1);
        // A power of two (rounded down), so that the shard is picked by a mask.
        let shards = 1 << (bound / MIN_SHARD_ENTRIES).clamp(1, MAX_SHARDS).ilog2();
        Self {
            config,
            shard_bound: bound.div_ceil(shards),
            hasher: RandomState::default(),
            shards: (0..shards).map(|_| Shard::default()).collect(),
        }
    }

    /// Hops currently remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lock of `key`'s shard, held.
    fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, Inner> {
        // Truncating the hash keeps its low bits, which the mask reads.
        let index = self.hasher.hash_one(key) as usize & (self.shards.len() - 1);
        lock(&self.shards[index])
    }

    /// Writes `key` under its shard's held lock, then evicts the shard's oldest entries over
    /// its bound.
    fn put(&self, inner: &mut Inner, key: &str, state: State, lifetime: Duration) {
        let expires = Instant::now() + lifetime;
        if let Some(entry) = inner.entries.get_mut(key) {
            entry.state = state;
            entry.expires = expires;
            return;
        }
        inner.generation += 1;
        let generation = inner.generation;
        let key: Arc<str> = key.into();
        inner.entries.insert(
            key.clone(),
            Entry {
                state,
                expires,
                generation,
            },
        );
        inner.order.push_back((key, generation));
        let bound = self.shard_bound;
        while inner.entries.len() > bound {
            let Some((old, g)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&old).is_some_and(|e| e.generation == g) {
                inner.entries.remove(&old);
            }
        }
        // Keep `order` from growing without bound when keys are removed and re-added often.
        if inner.order.len() > 2 * bound {
            let Inner { entries, order, .. } = inner;
            order.retain(|(k, g)| entries.get(k).is_some_and(|e| e.generation == *g));
        }
    }
}

fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, Inner> {
    // Every mutation below is a single map operation; a poisoned lock holds valid data.
    shard.0.lock().unwrap_or_else(|p| p.into_inner())
}

impl IdempotencyStore for MemoryStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
        // Look and claim under one lock: two duplicates racing must not both acquire.
        let mut inner = self.lock(key);
        if let Some(entry) = inner.entries.get(key).filter(|e| e.expires > Instant::now()) {
            return Ok(match &entry.state {
                State::InProgress => Claim::InProgress,
                State::Completed(outputs) => Claim::Completed(outputs.clone()),
                State::Published => Claim::Published,
            });
        }
        self.put(&mut inner, key, State::InProgress, ttl);
        Ok(Claim::Acquired)
    }

    async fn complete(&self, key: &str, outputs: &Arc<[Publication]>) -> Result<(), StoreError> {
        let mut inner = self.lock(key);
        self.put(
            &mut inner,
            key,
            State::Completed(outputs.clone()),
            self.config.ttl,
        );
        Ok(())
    }

    async fn mark_published(&self, key: &str) -> Result<(), StoreError> {
        // The outputs are no longer needed once published: only the fact is kept.
        let mut inner = self.lock(key);
        self.put(&mut inner, key, State::Published, self.config.ttl);
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.lock(key).entries.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn claim_lifecycle() {
        let s = MemoryStore::default();
        assert_eq!(
            s.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
        assert_eq!(
            s.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::InProgress
        );
        s.complete("k", &Arc::from([])).await.unwrap();
        assert_eq!(
            s.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Completed(Arc::from([]))
        );
        s.mark_published("k").await.unwrap();
        assert_eq!(
            s.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Published
        );
    }

    /// Two threads claiming the same keys at the same moment: exactly one wins each key.
    #[test]
    fn claims_are_atomic_across_threads() {
        use futures_util::FutureExt;
        const KEYS: usize = 20_000;
        let store = Arc::new(MemoryStore::new(MemoryStoreConfig {
            max_entries: KEYS * 2,
            ttl: Duration::from_secs(60),
        }));
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // The store never awaits; each call completes on its first poll.
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    let _guard = rt.enter();
                    barrier.wait();
                    (0..KEYS)
                        .filter(|k| {
                            let claim = store
                                .claim(&k.to_string(), Duration::from_secs(60))
                                .now_or_never();
                            matches!(claim, Some(Ok(Claim::Acquired)))
                        })
                        .count()
                })
            })
            .collect();
        let won: usize = racers.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(won, KEYS, "every key claimed exactly once");
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_claims_lapse_and_released_ones_free_at_once() {
        let s = MemoryStore::default();
        s.claim("k", Duration::from_secs(5)).await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            s.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
        s.release("k").await.unwrap();
        assert_eq!(
            s.claim("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
    }

    /// A sharded store keeps to its bound overall and forgets old entries, not new ones.
    #[tokio::test(start_paused = true)]
    async fn sharded_store_is_bounded() {
        let s = MemoryStore::new(MemoryStoreConfig {
            max_entries: 4 * MIN_SHARD_ENTRIES,
            ttl: Duration::from_secs(10),
        });
        assert_eq!(s.shards.len(), 4);
        let keys = 3 * 4 * MIN_SHARD_ENTRIES;
        for k in 0..keys {
            s.claim(&k.to_string(), Duration::from_secs(5)).await.unwrap();
        }
        assert!(s.len() <= 4 * MIN_SHARD_ENTRIES, "{} entries kept", s.len());
        assert!(s.len() > 3 * MIN_SHARD_ENTRIES, "only {} entries kept", s.len());
        let newest = (keys - 1).to_string();
        assert_eq!(
            s.claim(&newest, Duration::from_secs(5)).await.unwrap(),
            Claim::InProgress
        );
        assert_eq!(
            s.claim("0", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired,
            "the oldest is forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_and_expiring() {
        let s = MemoryStore::new(MemoryStoreConfig {
            max_entries: 3,
            ttl: Duration::from_secs(10),
        });
        for k in ["a", "b", "c", "d"] {
            s.claim(k, Duration::from_secs(1)).await.unwrap();
            s.mark_published(k).await.unwrap();
        }
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.claim("a", Duration::from_secs(1)).await.unwrap(),
            Claim::Acquired,
            "oldest evicted"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            s.claim("d", Duration::from_secs(1)).await.unwrap(),
            Claim::Acquired,
            "expired"
        );
    }
}
