//! An echo actor with the Redis idempotency store: the process the broker failure tests
//! kill and restart. `troupe-test-actor BROKER ACTOR NAMESPACE` (addresses from
//! `TROUPE_NATS_URL`, `TROUPE_AMQP_URL`, `TROUPE_REDIS_URL`). Not for production: the real
//! actor process is `troupe sidecar`. Like every actor binary, it is an actor host
//! (`troupe::host`) around its handler.

#![forbid(unsafe_code)]

#[path = "brokers.rs"]
mod brokers;

use std::time::Duration;

use troupe::broker::Broker;
use troupe::host::ActorHost;
use troupe::layers::StoreUrl;
use troupe::{Envelope, HandlerError, Outcome, QueueNaming, handler_fn};

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
    let host = ActorHost::new(actor, broker, brokers::failure_test_brokers())
        .naming(QueueNaming::new("asya", &namespace)?)
        .store(
            StoreUrl::Redis(brokers::redis_url()),
            &brokers::store_prefix(&namespace),
        )
        .timeout(Duration::from_secs(2))
        .runner(|runner| {
            runner.concurrency = 32;
            runner.consume.lease = Duration::from_secs(2);
            runner.redelivery_delay = Duration::from_millis(200);
        })
        .start()
        .await?;
    host.serve(|_| {
        // A little work per envelope, so kills land while envelopes are in flight.
        handler_fn(|e: Envelope| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, HandlerError>(Outcome::forward(e))
        })
    })
    .await?;
    Ok(())
}
