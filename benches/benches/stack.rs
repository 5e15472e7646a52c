//! Overhead of the layer stack around a no-op handler, JSON excluded: the envelope is
//! already decoded and the dispatch is not encoded.

#![allow(missing_docs)] // criterion_group! generates undocumented items

#[global_allocator]
static ALLOC: troupe_bench::Allocator = mimalloc::MiMalloc;

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceExt};
use troupe::layers::{MemoryStore, MeshMetrics, RouteLayer};
use troupe::{Envelope, HandlerError, Outcome, handler_fn};
use troupe_bench::{envelope_of, noop_stack};

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("stack");
    let env = envelope_of(256);

    let noop = handler_fn(|e: Envelope| async move { Ok::<_, HandlerError>(Outcome::forward(e)) });
    g.bench_function("handler only", |b| {
        b.to_async(&rt).iter_batched(
            || env.clone(),
            |e| {
                let mut h = noop;
                async move { h.ready().await?.call(e).await }
            },
            BatchSize::SmallInput,
        )
    });

    let route = tower::Layer::layer(&RouteLayer::new("a"), noop);
    g.bench_function("route layer", |b| {
        b.to_async(&rt).iter_batched(
            || (route.clone(), env.clone()),
            |(svc, e)| svc.oneshot(e),
            BatchSize::SmallInput,
        )
    });

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    // Ids are unique per iteration, as in production, so idempotency records every hop.
    let store = Arc::new(MemoryStore::default());
    let full = noop_stack("a", &metrics, store);
    g.bench_function("full stack", |b| {
        b.to_async(&rt).iter_batched(
            || {
                let mut e = env.clone();
                e.id = uuid::Uuid::new_v4().to_string();
                (full.clone(), e)
            },
            |(svc, e)| async move {
                let mut d = svc.oneshot(e).await.expect("stack answers");
                for hook in d.take_hooks() {
                    hook().await;
                }
                d
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
