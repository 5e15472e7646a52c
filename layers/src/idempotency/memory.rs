//! A bounded in-memory store with expiry, for single-process meshes and tests.
//!
//! Written here rather than taken from a cache crate because the layer needs an atomic
//! claim (compare state and set it under one lock) with per-state lifetimes, which general
//! caches do not offer without a second lock around them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use troupe_core::Publication;

use super::store::{Claim, IdempotencyStore, StoreError};

/// Settings of a [`MemoryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStoreConfig {
    /// Most hops remembered; the oldest are forgotten first.
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
    entries: HashMap<Arc<str>, Entry>,
    /// Insertion order, for eviction; stale items are skipped by generation. Shares the
    /// key allocation with `entries`.
    order: VecDeque<(Arc<str>, u64)>,
    generation: u64,
}

/// A bounded, expiring, in-process [`IdempotencyStore`].
#[derive(Default)]
pub struct MemoryStore {
    config: MemoryStoreConfig,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// A store with these bounds.
    pub fn new(config: MemoryStoreConfig) -> Self {
        Self {
            config,
            inner: Mutex::default(),
        }
    }

    /// Hops currently remembered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation below is a single map operation; a poisoned lock holds valid data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `key` under the held lock, then evicts the oldest entries over the bound.
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
        let bound = self.config.max_entries.max(1);
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

impl IdempotencyStore for MemoryStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
        // Look and claim under one lock: two duplicates racing must not both acquire.
        let mut inner = self.lock();
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
        let mut inner = self.lock();
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
        let mut inner = self.lock();
        self.put(&mut inner, key, State::Published, self.config.ttl);
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.lock().entries.remove(key);
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
