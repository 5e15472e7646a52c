//! Broker failure test on Kafka: the middle actor of a 3-actor pipeline is killed with
//! SIGKILL and restarted twice during 10,000 envelopes; see `support/failure.rs`. The broker
//! is librdkafka's mock cluster, hosted by this test process on a loopback port that the
//! actor process reaches too (the same broker the Kafka conformance suite runs on).
#![cfg(feature = "failure-tests")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/brokers.rs"]
mod brokers;
mod common;
#[path = "support/failure.rs"]
mod failure;

/// Starts the mock cluster on a thread of its own (it is neither `Send` nor `Sync`), which
/// keeps it until the process exits; returns its bootstrap address.
fn mock_cluster() -> String {
    let (started, bootstrap) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let cluster =
            troupe::transports::kafka::rdkafka::mocking::MockCluster::new(1).expect("start the mock cluster");
        started.send(cluster.bootstrap_servers()).unwrap();
        loop {
            std::thread::park();
        }
    });
    bootstrap.recv().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_middle_actor_twice_loses_and_duplicates_nothing() {
    let bootstrap = mock_cluster();
    let mut config = brokers::failure_test_brokers();
    config.kafka.bootstrap_servers = bootstrap.clone();
    brokers::kafka_mock_settings(&mut config.kafka);
    let child_env = vec![
        ("TROUPE_KAFKA_BOOTSTRAP".to_owned(), bootstrap),
        (brokers::KAFKA_MOCK.to_owned(), "1".to_owned()),
    ];
    failure::kill_the_middle_actor_twice_with(troupe::broker::Broker::Kafka, config, child_env).await;
}
