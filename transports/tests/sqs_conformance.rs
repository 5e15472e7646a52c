//! SQS against the transport contract, on a local emulator (ministack; `bash .ci/run`
//! starts it). Endpoint from `TROUPE_SQS_URL` (default `http://127.0.0.1:4566`).
#![cfg(feature = "sqs")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use troupe_core::{
    ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, Transport, TransportError,
};
use troupe_transports::{SqsConfig, SqsCredentials, SqsTransport};

fn endpoint() -> String {
    std::env::var("TROUPE_SQS_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

fn config() -> SqsConfig {
    SqsConfig {
        endpoint_url: Some(endpoint()),
        // Emulators take any keys.
        credentials: Some(SqsCredentials::new("test", "test")),
        ..SqsConfig::default()
    }
}

async fn connect(config: SqsConfig) -> SqsTransport {
    match SqsTransport::connect(config).await {
        Ok(t) => t,
        Err(e) => panic!(
            "an SQS emulator must answer at {} for these tests (bash .ci/run starts ministack; \
             TROUPE_SQS_URL overrides the address): {e}",
            endpoint()
        ),
    }
}

async fn transport() -> SqsTransport {
    connect(config()).await
}

troupe_transports::conformance_suite!(sqs, transport());

/// Queue names unique per test and per run: the emulator keeps queues across runs.
fn queue(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("sqs-{test}-{}-{nanos}", std::process::id())
}

fn opts(prefetch: usize, lease: Duration) -> ConsumeOptions {
    ConsumeOptions { prefetch, lease }
}

async fn next<C: Consumer>(c: &mut C) -> C::Delivery {
    tokio::time::timeout(Duration::from_secs(20), c.next())
        .await
        .expect("nothing delivered within 20 s")
        .expect("consumer closed")
        .expect("receive failed")
}

/// `ensure_queue` creates `<queue>-dlq` and a redrive policy with the configured count,
/// and keeps an existing policy when called again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_queue_sets_up_the_dead_letter_queue() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let t = connect(SqsConfig {
        max_receive_count: Some(7),
        ..config()
    })
    .await;
    let q = queue("dlq");
    t.ensure_queue(&q).await.unwrap();
    t.ensure_queue(&q).await.unwrap();
    let url = t.client().get_queue_url().queue_name(&q).send().await.unwrap();
    let attrs = t
        .client()
        .get_queue_attributes()
        .queue_url(url.queue_url().unwrap())
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let policy = attrs.attributes().unwrap()[&QueueAttributeName::RedrivePolicy].clone();
    assert!(policy.contains(&format!("{q}-dlq")), "{policy}");
    assert!(policy.contains("\"maxReceiveCount\":7"), "{policy}");
    t.client()
        .get_queue_url()
        .queue_name(format!("{q}-dlq"))
        .send()
        .await
        .expect("the dead-letter queue exists");
}

/// Bytes that are not SQS text (binary, control characters, empty) arrive unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_empty_bodies_round_trip() {
    let t = transport().await;
    let q = queue("bin");
    t.ensure_queue(&q).await.unwrap();
    let bodies: Vec<Bytes> = vec![
        Bytes::from_static(b"\x00\x01\xfe\xff"),
        Bytes::new(),
        Bytes::from_static(b"{\"text\":\"as is\"}"),
        Bytes::from_static("ünï ✓\u{0b}".as_bytes()),
    ];
    for b in &bodies {
        t.publish(&q, b.clone(), PublishOptions::default()).await.unwrap();
    }
    let mut c = t.consume(&q, opts(8, Duration::from_secs(30))).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..bodies.len() {
        let d = next(&mut c).await;
        got.push(d.body().clone());
        d.ack().await.unwrap();
    }
    let got: HashSet<_> = got.into_iter().collect();
    assert_eq!(got, bodies.into_iter().collect::<HashSet<_>>());
}

/// A delay longer than one SQS hop (here lowered to 1 s) is chained: the message is not
/// handed out before it is due, and arrives as a first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_delays_are_chained() {
    let t = connect(SqsConfig {
        max_native_delay: Duration::from_secs(1),
        ..config()
    })
    .await;
    let q = queue("chain");
    t.ensure_queue(&q).await.unwrap();
    let delay = Duration::from_millis(3500);
    let started = tokio::time::Instant::now();
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
    let mut c = t.consume(&q, opts(4, Duration::from_secs(5))).await.unwrap();
    let d = next(&mut c).await;
    assert!(
        started.elapsed() >= delay,
        "handed out after {:?}, before its {delay:?} delay",
        started.elapsed()
    );
    assert_eq!(&d.body()[..], b"later");
    assert_eq!(d.redeliveries(), 0, "hops are not redeliveries");
    d.ack().await.unwrap();
    let depth = t.depth(&q).await.unwrap();
    assert_eq!(depth.total(), 0, "no hop left behind: {depth:?}");
}

/// Concurrent publishes share batches, yet each caller gets its own answer: an entry SQS
/// refuses fails alone, as NotConfirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_publishes_answer_each_caller() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let t = transport().await;
    let q = queue("batch");
    // A queue that takes at most 1 KiB per message.
    t.client()
        .create_queue()
        .queue_name(&q)
        .attributes(QueueAttributeName::MaximumMessageSize, "1024")
        .send()
        .await
        .unwrap();
    let publishes = (0..40).map(|i| {
        let t = t.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let body = if i == 17 {
                "x".repeat(2048)
            } else {
                format!("m{i}")
            };
            (
                i,
                t.publish(&q, Bytes::from(body), PublishOptions::default()).await,
            )
        })
    });
    let results = futures_util::future::join_all(publishes).await;
    for r in results {
        let (i, result) = r.unwrap();
        if i == 17 {
            let err = result.expect_err("an oversized message is refused");
            assert!(matches!(err, TransportError::NotConfirmed { .. }), "{err:?}");
        } else {
            result.unwrap_or_else(|e| panic!("publish {i}: {e}"));
        }
    }
    assert_eq!(t.depth(&q).await.unwrap().total(), 39);
}

/// A missing queue and a name SQS cannot take are told apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_invalid_queues_are_clear_errors() {
    let t = transport().await;
    let missing = queue("never-created");
    let err = t
        .publish(&missing, Bytes::from_static(b"x"), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::NoSuchQueue { .. }), "{err:?}");
    let err = t.depth(&missing).await.unwrap_err();
    assert!(matches!(err, TransportError::NoSuchQueue { .. }), "{err:?}");
    let err = t
        .consume(&missing, ConsumeOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, TransportError::NoSuchQueue { .. }), "{err:?}");
    let long = "q".repeat(81);
    let err = t.ensure_queue(&long).await.unwrap_err();
    assert!(matches!(err, TransportError::InvalidQueue { .. }), "{err:?}");
    // 80 characters are fine for SQS, but leave no room for the dead-letter queue's suffix.
    let err = t.ensure_queue(&"q".repeat(80)).await.unwrap_err();
    assert!(err.to_string().contains("-dlq"), "{err}");
}

/// Messages a dropped consumer had prefetched but never handed out come back at once, not
/// after their (here long) lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_consumer_releases_its_buffer() {
    let t = transport().await;
    let q = queue("release");
    t.ensure_queue(&q).await.unwrap();
    for i in 0..6 {
        t.publish(&q, Bytes::from(format!("r{i}")), PublishOptions::default())
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let held = {
        let mut c = t.consume(&q, opts(6, lease)).await.unwrap();
        let d = next(&mut c).await;
        // Let the receive task fill the buffer with the rest.
        tokio::time::sleep(Duration::from_millis(500)).await;
        d
    };
    let mut c = t.consume(&q, opts(6, lease)).await.unwrap();
    let mut rest = HashSet::new();
    while rest.len() < 5 {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("the buffered messages came back within 10 s, not after the 60 s lease")
            .unwrap()
            .unwrap();
        rest.insert(String::from_utf8_lossy(d.body()).into_owned());
        d.ack().await.unwrap();
    }
    assert!(!rest.contains(&String::from_utf8_lossy(held.body()).into_owned()));
    held.ack().await.unwrap();
}

/// `next` raced against a very short timeout, again and again, while messages arrive:
/// every message is handed out once, and none was lost to a cancelled call (a lost one
/// would come back as a redelivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_next_loses_nothing() {
    let t = transport().await;
    let q = queue("cancel");
    t.ensure_queue(&q).await.unwrap();
    let mut c = t.consume(&q, opts(4, Duration::from_secs(30))).await.unwrap();
    let producer = {
        let t = t.clone();
        let q = q.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                t.publish(&q, Bytes::from(format!("c{i}")), PublishOptions::default())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        })
    };
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = HashSet::new();
    while seen.len() < 30 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "only {} of 30 arrived",
            seen.len()
        );
        if let Ok(item) = tokio::time::timeout(Duration::from_micros(300), c.next()).await {
            let d = item.unwrap().unwrap();
            assert_eq!(d.redeliveries(), 0, "a message was lost and came back");
            assert!(seen.insert(String::from_utf8_lossy(d.body()).into_owned()));
            d.ack().await.unwrap();
        }
    }
    producer.await.unwrap();
}
