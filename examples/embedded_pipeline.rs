//! Two actors in one process on the embedded broker: `upper -> count -> x-sink`.
//!
//! Run with `cargo run --example embedded_pipeline`. Swap `MemoryTransport` for a broker
//! transport (Cargo features, coming with the broker issue) and each actor can run in its
//! own process instead.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use troupe::layers::{MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, DecodeLimits, Delivery, Envelope, HandlerError,
    MemoryTransport, PublishOptions, QueueNaming, Route, Runner, RunnerConfig, SINK, Transport, payload_fn,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = MemoryTransport::default();
    let naming = QueueNaming::new("asya", "example")?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let store = Arc::new(MemoryStore::default());
    let shutdown = CancellationToken::new();
    // Each actor's queue (and x-sink, x-sump) exists before traffic, as in a deployment:
    // the broker refuses a publish to a queue nobody created.
    for actor in ["upper", "count"] {
        troupe::core::ensure_actor_queues(&transport, &naming, actor).await?;
    }

    let upper = payload_fn(|p: Value| async move {
        let text = p["text"].as_str().unwrap_or_default().to_uppercase();
        Ok::<_, HandlerError>(json!({ "text": text }))
    });
    let count = payload_fn(|mut p: Value| async move {
        let words = p["text"].as_str().map_or(0, |t| t.split_whitespace().count());
        p["words"] = json!(words);
        Ok::<_, HandlerError>(p)
    });

    let stack = |actor: &str| StackConfig {
        actor: actor.into(),
        retry: RetryPolicies::default(),
        timeout: Duration::from_secs(10),
        store: store.clone(),
        metrics: metrics.actor(actor),
    };
    let config = |actor: &str| {
        let mut c = RunnerConfig::new(actor);
        c.naming = naming.clone();
        c
    };
    let runners = [
        tokio::spawn(
            Runner::new(
                transport.clone(),
                actor_stack(stack("upper"), upper),
                config("upper"),
            )
            .run(shutdown.clone()),
        ),
        tokio::spawn(
            Runner::new(
                transport.clone(),
                actor_stack(stack("count"), count),
                config("count"),
            )
            .run(shutdown.clone()),
        ),
    ];

    for text in ["actors all the way down", "route rewrites at runtime"] {
        let env = Envelope::new(Route::through(["upper", "count"]), json!({ "text": text }));
        transport
            .publish(
                &naming.queue_for("upper")?,
                Bytes::from(env.to_vec()),
                PublishOptions::default(),
            )
            .await?;
    }

    let mut sink = transport
        .consume(&naming.queue_for(SINK)?, ConsumeOptions::default())
        .await?;
    for _ in 0..2 {
        let delivery = sink.next().await.ok_or("broker closed")??;
        let env = Envelope::from_slice(delivery.body(), &DecodeLimits::default())?;
        delivery.ack().await?;
        println!("{} via {:?}: {}", env.id, env.route.prev(), env.payload);
    }

    shutdown.cancel();
    for r in runners {
        r.await??;
    }
    Ok(())
}
