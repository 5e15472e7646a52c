//! Smoke test on a real Kafka-API broker process: tansu (`bash .ci/run` installs and starts
//! it) at `TROUPE_TANSU_BOOTSTRAP`, default `127.0.0.1:9092`. The full contract runs on
//! librdkafka's mock cluster (`kafka_conformance.rs`); this checks that the same transport
//! works over the wire with a broker that is not librdkafka's: topic creation through the
//! admin API, idempotent produce, consumer groups, committed offsets, headers.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use troupe_core::{ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, QueueDepth, Transport};
use troupe_transports::conformance::{next, publish};
use troupe_transports::{KafkaConfig, KafkaTransport};

const WAIT: Duration = Duration::from_secs(20);

fn bootstrap() -> String {
    std::env::var("TROUPE_TANSU_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

async fn transport() -> KafkaTransport {
    let mut config = KafkaConfig {
        bootstrap_servers: bootstrap(),
        partitions: 2,
        request_timeout: Duration::from_secs(5),
        ..KafkaConfig::default()
    };
    // tansu 0.6 with librdkafka 2.x mishandles produce requests whose batch holds several
    // records: it then reports a high watermark of 1 for the partition, and a group resuming
    // from a committed offset inside such a batch receives nothing more from that partition.
    // Batches of one record work, so this test's producer never batches (linger 0 is the
    // transport's default; batch.num.messages caps what queues up while a request is in
    // flight). A real Kafka cluster needs neither.
    config
        .producer_properties
        .insert("batch.num.messages".to_owned(), "1".to_owned());
    match KafkaTransport::connect(config).await {
        Ok(t) => t,
        Err(e) => panic!(
            "tansu must be answering at {} for this test (bash .ci/run installs and starts it; \
             or set TROUPE_TANSU_BOOTSTRAP): {e}",
            bootstrap()
        ),
    }
}

/// tansu may outlive a test run (CI reuses a running one): names unique per run.
fn queue(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("tansu-{name}-{}-{nanos}", std::process::id())
}

fn options(prefetch: usize) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        lease: Duration::from_secs(1),
    }
}

fn text<D: Delivery>(d: &D) -> String {
    String::from_utf8_lossy(d.body()).into_owned()
}

async fn depth_until(t: &KafkaTransport, queue: &str, ok: impl Fn(&QueueDepth) -> bool) -> QueueDepth {
    let give_up = Instant::now() + WAIT;
    loop {
        let d = t.depth(queue).await.unwrap();
        if ok(&d) {
            return d;
        }
        assert!(Instant::now() < give_up, "depth of {queue} stuck at {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_publish_consume_ack_and_depth() {
    let t = transport().await;
    let q = queue("basic");
    t.ensure_queue(&q).await.unwrap();
    t.ensure_queue(&q).await.expect("ensure_queue is idempotent");
    for i in 0..3 {
        publish(&t, &q, &format!("m{i}")).await;
    }
    depth_until(&t, &q, |d| d.total() == 3).await;
    let mut c = t.consume(&q, options(4)).await.unwrap();
    let mut seen = HashSet::new();
    let mut held = Vec::new();
    for _ in 0..3 {
        let d = next(&mut c).await;
        assert_eq!(d.redeliveries(), 0);
        seen.insert(text(&d));
        held.push(d);
    }
    assert_eq!(seen, HashSet::from(["m0".into(), "m1".into(), "m2".into()]));
    depth_until(&t, &q, |d| d.total() == 3 && d.in_flight == 3).await;
    for d in held {
        d.ack().await.unwrap();
    }
    depth_until(&t, &q, |d| d.total() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_new_consumer() {
    let t = transport().await;
    let q = queue("resume");
    t.ensure_queue(&q).await.unwrap();
    for i in 0..6 {
        publish(&t, &q, &format!("r{i}")).await;
    }
    let mut acked = HashSet::new();
    {
        let mut c = t.consume(&q, options(8)).await.unwrap();
        for _ in 0..3 {
            let d = next(&mut c).await;
            acked.insert(text(&d));
            d.ack().await.unwrap();
        }
    } // the last consumer goes: the group member commits and leaves
    let mut c = t.consume(&q, options(8)).await.unwrap();
    let mut rest = HashSet::new();
    while rest.len() < 3 {
        let d = next(&mut c).await;
        assert!(!acked.contains(&text(&d)), "acked {} came back", text(&d));
        rest.insert(text(&d));
        d.ack().await.unwrap();
    }
    depth_until(&t, &q, |d| d.total() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_expired_lease_redeliver_with_a_count() {
    let t = transport().await;
    let q = queue("again");
    t.ensure_queue(&q).await.unwrap();
    publish(&t, &q, "again").await;
    let mut c = t.consume(&q, options(4)).await.unwrap();
    next(&mut c).await.nack(None).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!((text(&d).as_str(), d.redeliveries()), ("again", 1));
    let dropped_at = Instant::now();
    drop(d); // lease runs out
    let d = next(&mut c).await;
    assert!(dropped_at.elapsed() >= Duration::from_secs(1));
    assert_eq!(d.redeliveries(), 2);
    d.ack().await.unwrap();
    depth_until(&t, &q, |d| d.total() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_publish_arrives_after_its_delay() {
    let t = transport().await;
    let q = queue("delay");
    t.ensure_queue(&q).await.unwrap();
    let delay = Duration::from_millis(1500);
    let published_at = Instant::now();
    t.publish(
        &q,
        Bytes::from_static(b"later"),
        PublishOptions {
            delay: Some(delay),
            ..PublishOptions::default()
        },
    )
    .await
    .unwrap();
    depth_until(&t, &q, |d| d.total() == 1 && d.delayed == 1).await;
    let mut c = t.consume(&q, options(4)).await.unwrap();
    let d = next(&mut c).await;
    assert!(published_at.elapsed() >= delay);
    assert_eq!((text(&d).as_str(), d.redeliveries()), ("later", 0));
    d.ack().await.unwrap();
    depth_until(&t, &q, |d| d.total() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_group_members_split_the_partitions() {
    // Two transports are two members of the queue's consumer group, as two processes would be.
    let (a, b) = (transport().await, transport().await);
    let q = queue("members");
    a.ensure_queue(&q).await.unwrap();
    let mut from_a = a.consume(&q, options(4)).await.unwrap();
    let mut from_b = b.consume(&q, options(4)).await.unwrap();
    for i in 0..20 {
        publish(&a, &q, &format!("s{i}")).await;
    }
    let (mut got_a, mut got_b) = (HashSet::new(), HashSet::new());
    let give_up = Instant::now() + WAIT * 2;
    while got_a.union(&got_b).count() < 20 {
        assert!(
            Instant::now() < give_up,
            "only {} of 20 delivered",
            got_a.union(&got_b).count()
        );
        tokio::select! {
            Some(Ok(d)) = from_a.next() => {
                got_a.insert(text(&d));
                // Settling may race a revocation while the group rebalances; the record then comes again.
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
