//! A Prometheus histogram that workers observe into without contending.
//!
//! `prometheus-client`'s `Histogram` takes a write lock per observation, and an actor's
//! workers share one per metric: three observations per hop made those locks the most
//! contended lines of a busy process. Here every thread observes into a shard of its own
//! (plain atomics on a cache line no other thread writes); a scrape adds the shards up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Most bucket bounds a histogram may have (the `+Inf` bucket comes on top).
pub(crate) const MAX_BOUNDS: usize = 31;

/// Shards per histogram. More threads than shards share them, which stays correct (every
/// update is atomic) and only brings back some contention.
const SHARDS: usize = 8;

/// One thread's counts. Aligned to two cache lines so that no two shards share one, even
/// with the adjacent-line prefetcher.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

struct Inner {
    bounds: Vec<f64>,
    shards: [Shard; SHARDS],
}

/// A histogram with the bucket bounds given at creation; clones share the counts.
#[derive(Clone)]
pub(crate) struct ShardedHistogram {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sum, count, _) = self.snapshot();
        f.debug_struct("ShardedHistogram")
            .field("count", &count)
            .field("sum", &sum)
            .finish()
    }
}

/// The shard of the calling thread, chosen once per thread in turn.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl ShardedHistogram {
    /// A histogram with these upper bounds (ascending), plus `+Inf`.
    ///
    /// # Panics
    ///
    /// With more than [`MAX_BOUNDS`] bounds: the bucket layouts are constants of this crate.
    pub(crate) fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.into_iter().collect();
        assert!(
            bounds.len() <= MAX_BOUNDS,
            "a histogram takes at most {MAX_BOUNDS} bounds, not {}",
            bounds.len()
        );
        Self {
            inner: Arc::new(Inner {
                bounds,
                shards: Default::default(),
            }),
        }
    }

    /// Records one observation.
    pub(crate) fn observe(&self, value: f64) {
        let inner = &*self.inner;
        let shard = &inner.shards[shard_index()];
        let bucket = inner
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(inner.bounds.len());
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // The shard is this thread's alone (while threads <= shards), so this loop runs once.
        let mut current = shard.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match shard
                .sum
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// Sum, count and per-bucket counts (upper bound, count; not cumulative), over all
    /// shards. The count is the buckets' total, so the three always agree.
    pub(crate) fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.inner;
        let mut buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .map(|bound| (bound, 0))
            .collect();
        let mut sum = 0.0;
        for shard in &inner.shards {
            for (total, count) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += count.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        (sum, count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = ShardedHistogram::new([1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 10.0, 11.0] {
            h.observe(v);
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 5);
        assert_eq!(sum, 27.5);
        assert_eq!(buckets, vec![(1.0, 2), (10.0, 2), (f64::MAX, 1)]);
    }

    #[test]
    fn threads_add_up() {
        let h = ShardedHistogram::new([1.0]);
        std::thread::scope(|s| {
            for _ in 0..(SHARDS + 3) {
                s.spawn(|| (0..1000).for_each(|_| h.observe(2.0)));
            }
        });
        let (sum, count, buckets) = h.snapshot();
        let n = (SHARDS as u64 + 3) * 1000;
        assert_eq!((sum, count), (2.0 * n as f64, n));
        assert_eq!(buckets[1], (f64::MAX, n));
    }

    #[test]
    fn it_encodes_as_a_prometheus_histogram() {
        let mut registry = prometheus_client::registry::Registry::default();
        let h = ShardedHistogram::new([0.1]);
        registry.register("latency_seconds", "test", h.clone());
        h.observe(0.05);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("latency_seconds_bucket{le=\"0.1\"} 1"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"+Inf\"} 1"), "{text}");
        assert!(text.contains("latency_seconds_count 1"), "{text}");
    }
}
