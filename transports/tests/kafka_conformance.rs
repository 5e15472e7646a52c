//! Kafka against the transport contract: on librdkafka's mock cluster, hosted by this test
//! process, or on a real broker at `TROUPE_KAFKA_BOOTSTRAP` when that is set.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::OnceLock;

use troupe_transports::{KafkaConfig, KafkaTransport, TopicCreation};

/// One mock cluster for every test of this binary. `MockCluster` is neither `Send` nor
/// `Sync`, so it lives on a thread of its own until the process exits.
fn mock_bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("kafka-mock-cluster".to_owned())
                .spawn(move || {
                    let cluster = rdkafka::mocking::MockCluster::new(1).expect("start the mock cluster");
                    tx.send(cluster.bootstrap_servers()).unwrap();
                    loop {
                        std::thread::park();
                    }
                })
                .unwrap();
            rx.recv().unwrap()
        })
        .clone()
}

fn config() -> KafkaConfig {
    let mut config = KafkaConfig::default();
    match std::env::var("TROUPE_KAFKA_BOOTSTRAP") {
        Ok(bootstrap) => config.bootstrap_servers = bootstrap,
        Err(_) => {
            config.bootstrap_servers = mock_bootstrap();
            // The mock cluster has no usable CreateTopics; it creates topics on request,
            // with 4 partitions.
            config.topic_creation = TopicCreation::AutoCreate;
            // The mock broker keeps a rebalance open for session.timeout.ms - 1 s once a
            // group has members (a real broker closes it when all members rejoined); the
            // default 45 s would outlast the suite's waits. Real brokers refuse values
            // below group.min.session.timeout.ms (6 s), hence only here.
            for (k, v) in [("session.timeout.ms", "3000"), ("heartbeat.interval.ms", "500")] {
                config.consumer_properties.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    config
}

async fn transport() -> KafkaTransport {
    match KafkaTransport::connect(config()).await {
        Ok(t) => t,
        Err(e) => panic!("cannot start the Kafka transport: {e}"),
    }
}

troupe_transports::conformance_suite!(kafka, transport());
