//! Throughput of a 3-actor pipeline (`a -> b -> c -> x-sink`) on the in-memory transport,
//! full layer stack and no-op handlers, all runners in one process on a multi-thread runtime.

#![allow(missing_docs)] // criterion_group! generates undocumented items

#[global_allocator]
static ALLOC: troupe_bench::Allocator = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use troupe::layers::{MemoryStore, MeshMetrics};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, Delivery, MemoryTransport, PublishOptions, QueueNaming,
    Runner, RunnerConfig, SINK, Transport,
};
use troupe_bench::{envelope_of, noop_stack};

const ENVELOPES: usize = 20_000;

/// Pushes `n` envelopes into `a` and returns the time until all reached `x-sink`.
async fn run_pipeline(n: usize, bodies: &[Bytes]) -> Duration {
    let transport = MemoryTransport::default();
    let naming = QueueNaming::default();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let store = Arc::new(MemoryStore::default());
    let token = CancellationToken::new();
    let mut runners = Vec::new();
    for actor in ["a", "b", "c"] {
        let mut cfg = RunnerConfig::new(actor);
        cfg.concurrency = 64;
        let runner = Runner::new(transport.clone(), noop_stack(actor, &metrics, store.clone()), cfg);
        runners.push(tokio::spawn(runner.run(token.clone())));
    }
    let queue_a = naming.queue_for("a").expect("valid");
    let mut sink = transport
        .consume(&naming.queue_for(SINK).expect("valid"), ConsumeOptions::default())
        .await
        .expect("consume");
    let start = Instant::now();
    let t = transport.clone();
    let bodies = bodies[..n].to_vec();
    tokio::spawn(async move {
        for body in bodies {
            t.publish(&queue_a, body, PublishOptions::default())
                .await
                .expect("publish");
        }
    });
    for _ in 0..n {
        let d = sink.next().await.expect("open").expect("delivery");
        d.ack().await.expect("ack");
    }
    let elapsed = start.elapsed();
    token.cancel();
    for r in runners {
        let _ = r.await;
    }
    elapsed
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Unique ids, so that every hop is new work for the idempotency layer.
    let bodies: Vec<Bytes> = (0..ENVELOPES)
        .map(|_| Bytes::from(envelope_of(256).to_vec()))
        .collect();
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ENVELOPES as u64));
    g.bench_function("3 actors, memory, 256B", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let bodies = bodies.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run_pipeline(ENVELOPES, &bodies).await;
                }
                total
            }
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
