//! Broker settings shared by the broker failure tests and the actor process they kill
//! (`troupe-test-actor`), so both sides use the same streams and queues.
#![allow(dead_code)]

use std::time::Duration;

use troupe::broker::BrokerConfig;
use troupe::layers::{RedisStore, RedisStoreConfig};

/// Broker addresses from the environment, with settings for short-lived test queues.
pub fn failure_test_brokers() -> BrokerConfig {
    let mut config = BrokerConfig::from_env().scratch("failure");
    if std::env::var_os(KAFKA_MOCK).is_some() {
        kafka_mock_settings(&mut config.kafka);
    }
    // The local emulator unless told otherwise.
    let sqs = std::env::var("TROUPE_SQS_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
    config.sqs_endpoint(sqs)
}

/// Set (to anything) when `TROUPE_KAFKA_BOOTSTRAP` is librdkafka's mock cluster.
pub const KAFKA_MOCK: &str = "TROUPE_KAFKA_MOCK";

/// What librdkafka's mock cluster needs: topics auto-created on first use (it does not
/// answer CreateTopics), and a short session timeout, because it keeps a rebalance open
/// for `session.timeout.ms` - 1 s (a real broker refuses values below 6 s), and short fetch
/// waits: the mock answers an empty fetch only after `fetch.wait.max.ms` (500 ms by default),
/// which a pipeline of a few records per partition pays at every hop.
pub fn kafka_mock_settings(kafka: &mut troupe::transports::KafkaConfig) {
    kafka.topic_creation = troupe::transports::TopicCreation::AutoCreate;
    for (k, v) in [
        ("session.timeout.ms", "3000"),
        ("heartbeat.interval.ms", "500"),
        ("partition.assignment.strategy", "range"),
        ("fetch.wait.max.ms", "10"),
    ] {
        kafka.consumer_properties.insert(k.to_owned(), v.to_owned());
    }
}

/// The Redis server of the failure tests' idempotency store.
pub fn redis_url() -> String {
    std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The key prefix of one failure test's hop records.
pub fn store_prefix(namespace: &str) -> String {
    format!("troupe-failure:{namespace}:")
}

/// The idempotency store every actor of a failure test shares.
pub async fn shared_store(namespace: &str) -> std::sync::Arc<RedisStore> {
    RedisStore::connect(RedisStoreConfig {
        url: redis_url(),
        prefix: store_prefix(namespace),
        ttl: Duration::from_secs(600),
        ..RedisStoreConfig::default()
    })
    .await
    .expect("Redis must be running (bash .ci/run starts it)")
}
