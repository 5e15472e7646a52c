//! An echo actor with the Redis idempotency store: the process the broker failure tests
//! kill and restart. `troupe-test-actor BROKER ACTOR NAMESPACE` (addresses from
//! `TROUPE_NATS_URL`, `TROUPE_AMQP_URL`, `TROUPE_REDIS_URL`). Not for production: the real
//! actor process is `troupe sidecar`.

#![forbid(unsafe_code)]

#[path = "brokers.rs"]
mod brokers;

use std::time::Duration;

use troupe::broker::{Broker, WithTransport};
use troupe::layers::{MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{
    CancellationToken, Envelope, HandlerError, Outcome, QueueAdmin, QueueNaming, Runner, RunnerConfig,
    RunnerError, Transport, handler_fn,
};

struct EchoActor {
    actor: String,
    namespace: String,
}

impl WithTransport for EchoActor {
    type Output = Result<(), RunnerError>;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
        let store = brokers::shared_store(&self.namespace).await;
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = MeshMetrics::new(&mut registry);
        let stack = actor_stack(
            StackConfig {
                actor: self.actor.as_str().into(),
                retry: RetryPolicies::default(),
                timeout: Duration::from_secs(2),
                store,
                metrics: metrics.actor(&self.actor),
            },
            // A little work per envelope, so kills land while envelopes are in flight.
            handler_fn(|e: Envelope| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, HandlerError>(Outcome::forward(e))
            }),
        );
        let mut config = RunnerConfig::new(self.actor.as_str());
        config.naming = QueueNaming::new("asya", &self.namespace)?;
        config.concurrency = 32;
        config.consume.lease = Duration::from_secs(2);
        config.redelivery_delay = Duration::from_millis(200);
        Runner::new(transport, stack, config)
            .run(CancellationToken::new())
            .await
            .map(drop)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(broker), Some(actor), Some(namespace)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: troupe-test-actor BROKER ACTOR NAMESPACE".into());
    };
    // Logs only when asked (RUST_LOG), to stderr, which the test passes through.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let broker: Broker = broker.parse()?;
    brokers::failure_test_brokers()
        .connect(broker, EchoActor { actor, namespace })
        .await??;
    Ok(())
}
