//! Broker settings shared by the broker failure tests and the actor process they kill
//! (`troupe-test-actor`), so both sides use the same streams and queues.
#![allow(dead_code)]

use std::time::Duration;

use troupe::broker::BrokerConfig;
use troupe::layers::{RedisStore, RedisStoreConfig};

/// Broker addresses from the environment, with settings for short-lived test queues.
pub fn failure_test_brokers() -> BrokerConfig {
    let mut config = BrokerConfig::from_env();
    config.nats.stream = "TROUPE_FAILURE".to_owned();
    config.nats.subject_prefix = "troupe-failure".to_owned();
    // Each run uses its own namespace; let the brokers drop what it leaves behind.
    config.nats.consumer_inactive_threshold = Some(Duration::from_secs(300));
    config.amqp.queue_expires = Some(Duration::from_secs(300));
    config
}

/// The idempotency store every actor of a failure test shares.
pub async fn shared_store(namespace: &str) -> std::sync::Arc<RedisStore> {
    let url = std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    RedisStore::connect(RedisStoreConfig {
        url,
        prefix: format!("troupe-failure:{namespace}:"),
        ttl: Duration::from_secs(600),
    })
    .await
    .expect("Redis must be running (bash .ci/run starts it)")
}
