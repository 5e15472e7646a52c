//! Kafka against the transport contract: on librdkafka's mock cluster, hosted by this test
//! process, or on a real broker at `TROUPE_KAFKA_BOOTSTRAP` when that is set.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use troupe_core::{
    ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, Transport, TransportError,
};
use troupe_transports::conformance::{next, nothing_for, publish};
use troupe_transports::{KafkaConfig, KafkaTransport, TopicCreation};

/// Asks the mock cluster's thread to create a topic (name, partitions); it answers on the
/// channel sent along.
type CreateTopic = (String, i32, Sender<Result<(), String>>);

struct Mock {
    bootstrap: String,
    create: Mutex<Sender<CreateTopic>>,
}

/// One mock cluster for every test of this binary. `MockCluster` is neither `Send` nor
/// `Sync`, so it lives on a thread of its own until the process exits.
fn mock() -> &'static Mock {
    static MOCK: OnceLock<Mock> = OnceLock::new();
    MOCK.get_or_init(|| {
        let (started, bootstrap) = channel();
        let (create, requests) = channel::<CreateTopic>();
        std::thread::Builder::new()
            .name("kafka-mock-cluster".to_owned())
            .spawn(move || {
                let cluster = rdkafka::mocking::MockCluster::new(1).expect("start the mock cluster");
                started.send(cluster.bootstrap_servers()).unwrap();
                for (topic, partitions, reply) in requests {
                    let _ = reply.send(
                        cluster
                            .create_topic(&topic, partitions, 1)
                            .map_err(|e| e.to_string()),
                    );
                }
                // The sender is static: never reached while tests run.
            })
            .unwrap();
        Mock {
            bootstrap: bootstrap.recv().unwrap(),
            create: Mutex::new(create),
        }
    })
}

fn mock_bootstrap() -> String {
    mock().bootstrap.clone()
}

fn real_broker() -> Option<String> {
    std::env::var("TROUPE_KAFKA_BOOTSTRAP").ok()
}

fn config() -> KafkaConfig {
    let mut config = KafkaConfig::default();
    match real_broker() {
        Some(bootstrap) => config.bootstrap_servers = bootstrap,
        None => {
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
    connect(config()).await
}

async fn connect(config: KafkaConfig) -> KafkaTransport {
    match KafkaTransport::connect(config).await {
        Ok(t) => t,
        Err(e) => panic!("cannot start the Kafka transport: {e}"),
    }
}

troupe_transports::conformance_suite!(kafka, transport());

// Kafka-specific behaviour beyond the shared contract.

const WAIT: Duration = Duration::from_secs(20);

fn queue(check: &str) -> String {
    format!("conf-kafka-x-{check}-{}", std::process::id())
}

fn opts(prefetch: usize) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        lease: Duration::from_secs(1),
    }
}

fn text<D: Delivery>(d: &D) -> String {
    String::from_utf8_lossy(d.body()).into_owned()
}

/// A queue whose topic has one partition, so record order and commits are predictable.
async fn one_partition_queue(name: &str) -> (KafkaTransport, String) {
    let q = queue(name);
    let t = match real_broker() {
        Some(_) => {
            let t = connect(KafkaConfig {
                partitions: 1,
                ..config()
            })
            .await;
            t.ensure_queue(&q).await.unwrap();
            t
        }
        None => {
            let (reply, answer) = channel();
            mock().create.lock().unwrap().send((q.clone(), 1, reply)).unwrap();
            answer.recv().unwrap().unwrap();
            let t = transport().await;
            t.ensure_queue(&q).await.unwrap();
            t
        }
    };
    (t, q)
}

/// Records acked out of order are committed only up to the first unsettled one: after a
/// crash (the last consumer gone with work unsettled) the group delivers again from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_never_pass_unsettled_work() {
    let (t, q) = one_partition_queue("commit").await;
    for body in ["a", "b", "c"] {
        publish(&t, &q, body).await;
    }
    let held = {
        let mut c = t.consume(&q, opts(8)).await.unwrap();
        let a = next(&mut c).await;
        assert_eq!(text(&a), "a");
        for expected in ["b", "c"] {
            let d = next(&mut c).await;
            assert_eq!(text(&d), expected);
            d.ack().await.unwrap();
        }
        a
    }; // "a" is still being worked on when the consumer goes
    let mut c = t.consume(&q, opts(8)).await.unwrap();
    for expected in ["a", "b", "c"] {
        let d = next(&mut c).await;
        assert_eq!(text(&d), expected, "delivered again from the unsettled record on");
        assert_eq!(d.redeliveries(), 0, "a replay after a crash is not counted");
        d.ack().await.unwrap();
    }
    assert!(
        matches!(held.ack().await, Err(TransportError::LeaseExpired { .. })),
        "settling after the group moved on is refused"
    );
    drop(c);
    let mut c = t.consume(&q, opts(8)).await.unwrap();
    nothing_for(&mut c, Duration::from_secs(2)).await;
}

/// A consumer is given at most `prefetch` unsettled records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_unsettled_records() {
    let t = transport().await;
    let q = queue("prefetch");
    t.ensure_queue(&q).await.unwrap();
    for i in 0..6 {
        publish(&t, &q, &format!("p{i}")).await;
    }
    // Leases long enough to outlast the waits below.
    let options = ConsumeOptions {
        prefetch: 2,
        lease: Duration::from_secs(30),
    };
    let mut c = t.consume(&q, options).await.unwrap();
    let first = next(&mut c).await;
    let second = next(&mut c).await;
    nothing_for(&mut c, Duration::from_millis(500)).await;
    first.ack().await.unwrap();
    let third = next(&mut c).await;
    nothing_for(&mut c, Duration::from_millis(300)).await;
    second.ack().await.unwrap();
    third.ack().await.unwrap();
    let mut seen = 3;
    while seen < 6 {
        next(&mut c).await.ack().await.unwrap();
        seen += 1;
    }
}

/// Settling after the lease ran out is refused, and the record comes back counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_after_the_lease_is_refused() {
    let t = transport().await;
    let q = queue("late");
    t.ensure_queue(&q).await.unwrap();
    publish(&t, &q, "late").await;
    let mut c = t.consume(&q, opts(4)).await.unwrap();
    let d = next(&mut c).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(matches!(
        d.in_progress().await,
        Err(TransportError::LeaseExpired { .. })
    ));
    assert!(matches!(d.ack().await, Err(TransportError::LeaseExpired { .. })));
    let again = next(&mut c).await;
    assert_eq!((text(&again).as_str(), again.redeliveries()), ("late", 1));
    again.ack().await.unwrap();
}

/// Consumers of a queue in one process share its group member: one that goes away while
/// another stays hands its unsettled work over through the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_leaving_hands_work_to_the_others() {
    let t = transport().await;
    let q = queue("handover");
    t.ensure_queue(&q).await.unwrap();
    let mut stays = t.consume(&q, opts(1)).await.unwrap();
    let mut leaves = t.consume(&q, opts(1)).await.unwrap();
    publish(&t, &q, "work").await;
    let d = next(&mut leaves).await;
    drop(leaves);
    drop(d);
    let d = next(&mut stays).await;
    assert_eq!((text(&d).as_str(), d.redeliveries()), ("work", 1));
    d.ack().await.unwrap();
}

/// Kafka refuses topics that differ only in '.' versus '_'; the transport says so up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_topic_names_are_refused() {
    let t = transport().await;
    let dotted = queue("a.b");
    let underscored = queue("a_b");
    t.ensure_queue(&dotted).await.unwrap();
    let err = t.ensure_queue(&underscored).await.unwrap_err();
    assert!(matches!(err, TransportError::InvalidQueue { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dotted),
        "names the existing topic: {err}"
    );
    let reserved = t
        .publish("q.troupe-delay", Bytes::new(), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(reserved, TransportError::InvalidQueue { .. }),
        "{reserved:?}"
    );
}

/// Depth of a queue that was never created is a clear error, and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_of_a_missing_queue() {
    let t = transport().await;
    let q = queue("missing");
    for _ in 0..2 {
        let err = t.depth(&q).await.unwrap_err();
        assert!(matches!(err, TransportError::NoSuchQueue { .. }), "{err:?}");
    }
}

/// Many delayed records with different delays: each is held until due, none blocks the
/// others, and each arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_records_do_not_block_each_other() {
    let t = transport().await;
    let q = queue("delays");
    t.ensure_queue(&q).await.unwrap();
    let mut c = t.consume(&q, opts(8)).await.unwrap();
    let start = std::time::Instant::now();
    for (body, ms) in [("slow", 30_000), ("fast", 500), ("medium", 1500)] {
        t.publish(
            &q,
            Bytes::from_static(body.as_bytes()),
            PublishOptions {
                delay: Some(Duration::from_millis(ms)),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
    }
    publish(&t, &q, "now").await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = next(&mut c).await;
        order.push((text(&d), start.elapsed()));
        d.ack().await.unwrap();
    }
    let at = |name: &str| {
        order
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{name} not delivered: {order:?}"))
    };
    assert!(at("fast") >= Duration::from_millis(500), "{order:?}");
    assert!(at("medium") >= Duration::from_millis(1500), "{order:?}");
    assert!(
        at("now") < at("medium"),
        "ready work waited behind delayed work: {order:?}"
    );
    assert!(
        at("medium") < Duration::from_secs(15),
        "medium waited behind slow: {order:?}"
    );
    let depth = t.depth(&q).await.unwrap();
    assert_eq!((depth.delayed, depth.total()), (1, 1), "slow is still waiting");
    let seen: HashSet<_> = order.into_iter().map(|(n, _)| n).collect();
    assert_eq!(seen.len(), 3);
}

/// Two processes (two transports, so two group members) split the queue's partitions and
/// both get work; nothing is lost while the group rebalances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_partitions() {
    let (a, b) = (transport().await, transport().await);
    let q = queue("processes");
    a.ensure_queue(&q).await.unwrap();
    let mut from_a = a.consume(&q, opts(4)).await.unwrap();
    let mut from_b = b.consume(&q, opts(4)).await.unwrap();
    for i in 0..40 {
        publish(&a, &q, &format!("s{i}")).await;
    }
    let (mut got_a, mut got_b) = (HashSet::new(), HashSet::new());
    let give_up = std::time::Instant::now() + WAIT * 2;
    while got_a.union(&got_b).count() < 40 {
        assert!(
            std::time::Instant::now() < give_up,
            "only {} of 40 delivered",
            got_a.union(&got_b).count()
        );
        tokio::select! {
            Some(Ok(d)) = from_a.next() => {
                got_a.insert(text(&d));
                // Settling may race a revocation during the rebalance; the record then comes again.
                let _ = d.ack().await;
            }
            Some(Ok(d)) = from_b.next() => {
                got_b.insert(text(&d));
                let _ = d.ack().await;
            }
        }
    }
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "a: {got_a:?}, b: {got_b:?}"
    );
}

/// A consumer with a small prefetch drains a backlog at the broker's pace. Regression: the
/// member paused its partitions whenever prefetch was used up and resumed them at every
/// settle; librdkafka drops a paused partition's fetched records, so each resume fetched
/// again and this backlog took over two minutes (about 15 records/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_prefetch_does_not_throttle_a_backlog() {
    const COUNT: usize = 2_000;
    let t = transport().await;
    let q = queue("backlog");
    t.ensure_queue(&q).await.unwrap();
    let publishes = (0..COUNT).map(|i| {
        let (t, q) = (t.clone(), q.clone());
        async move { publish(&t, &q, &i.to_string()).await }
    });
    futures_util::future::join_all(publishes).await;

    let mut c = t.consume(&q, opts(8)).await.unwrap();
    let started = std::time::Instant::now();
    let mut seen = HashSet::new();
    while seen.len() < COUNT {
        let d = next(&mut c).await;
        seen.insert(text(&d));
        d.ack().await.unwrap();
    }
    let took = started.elapsed();
    // Generous for a loaded CI machine: about 6 s here, 140 s when throttled.
    assert!(
        took < Duration::from_secs(20),
        "draining {COUNT} records took {took:?}"
    );
}
