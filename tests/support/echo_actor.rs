//! An echo actor over NATS with the Redis idempotency store: the process the failure tests
//! kill and restart. `troupe-test-actor ACTOR NAMESPACE` (addresses from `TROUPE_NATS_URL`
//! and `TROUPE_REDIS_URL`). Not for production: the real actor process is `troupe sidecar`.

#![forbid(unsafe_code)]

use std::time::Duration;

use troupe::layers::{MeshMetrics, RedisStore, RedisStoreConfig, RetryPolicies, StackConfig, actor_stack};
use troupe::transports::{NatsConfig, NatsTransport};
use troupe::{
    CancellationToken, Envelope, HandlerError, Outcome, QueueNaming, Runner, RunnerConfig, handler_fn,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(actor), Some(namespace)) = (args.next(), args.next()) else {
        return Err("usage: troupe-test-actor ACTOR NAMESPACE".into());
    };
    let nats = std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let redis = std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let transport = NatsTransport::connect(failure_test_nats(nats)).await?;
    let store = RedisStore::connect(RedisStoreConfig {
        url: redis,
        prefix: format!("troupe-failure:{namespace}:"),
        ttl: Duration::from_secs(600),
    })
    .await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let stack = actor_stack(
        StackConfig {
            actor: actor.as_str().into(),
            retry: RetryPolicies::default(),
            timeout: Duration::from_secs(2),
            store,
            metrics: metrics.actor(&actor),
        },
        // A little work per envelope, so kills land while envelopes are in flight.
        handler_fn(|e: Envelope| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, HandlerError>(Outcome::forward(e))
        }),
    );
    let mut config = RunnerConfig::new(actor.as_str());
    config.naming = QueueNaming::new("asya", &namespace)?;
    config.concurrency = 32;
    config.consume.lease = Duration::from_secs(2);
    config.redelivery_delay = Duration::from_millis(200);
    Runner::new(transport, stack, config)
        .run(CancellationToken::new())
        .await?;
    Ok(())
}

/// The streams the failure tests use (shared with the test process).
fn failure_test_nats(url: String) -> NatsConfig {
    NatsConfig {
        url,
        stream: "TROUPE_FAILURE".to_owned(),
        subject_prefix: "troupe-failure".to_owned(),
        consumer_inactive_threshold: Some(Duration::from_secs(300)),
        ..NatsConfig::default()
    }
}
