//! Sending envelopes into a mesh and collecting what comes out, on any transport.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use troupe::{
    ConsumeOptions, Consumer, DecodeLimits, Delivery, Envelope, PublishOptions, QueueNaming, Route, Transport,
};

/// Publishes one envelope per payload, routed through `actors`, to the first actor's queue;
/// returns them as sent. Every actor's queue (and x-sink, x-sump) is created first, as a
/// deployment does: an envelope reaching an actor whose runner has not started yet would
/// otherwise go to x-sump as `UnknownActor`.
pub async fn send_through<T: Transport + troupe::QueueAdmin>(
    transport: &T,
    naming: &QueueNaming,
    actors: &[&str],
    payloads: impl IntoIterator<Item = serde_json::Value>,
) -> Vec<Envelope> {
    for actor in actors {
        troupe::core::ensure_actor_queues(transport, naming, actor)
            .await
            .expect("ensure the actor's queues");
    }
    let first = naming.queue_for(actors[0]).expect("valid actor name");
    let mut sent = Vec::new();
    for payload in payloads {
        let envelope = Envelope::new(Route::through(actors.iter().copied()), payload);
        transport
            .publish(&first, Bytes::from(envelope.to_vec()), PublishOptions::default())
            .await
            .expect("publish");
        sent.push(envelope);
    }
    sent
}

/// Takes `n` envelopes off `actor`'s queue, acking each; panics with the count seen if they
/// do not all come within `wait`.
pub async fn collect<T: Transport>(
    transport: &T,
    naming: &QueueNaming,
    actor: &str,
    n: usize,
    wait: Duration,
) -> Vec<Envelope> {
    let queue = naming.queue_for(actor).expect("valid actor name");
    let mut consumer = transport
        .consume(&queue, ConsumeOptions::default())
        .await
        .expect("consume");
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await else {
            panic!(
                "only {} of {n} envelopes reached {queue} within {wait:?}",
                out.len()
            );
        };
        let envelope = Envelope::from_slice(delivery.body(), &DecodeLimits::default()).expect("decodes");
        delivery.ack().await.expect("ack");
        out.push(envelope);
    }
    out
}
