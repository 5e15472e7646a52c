//! NATS JetStream against the transport contract, on a real server.
//! Address from `TROUPE_NATS_URL` (default `nats://127.0.0.1:4222`).
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

async fn transport() -> troupe_transports::NatsTransport {
    let url = std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let config = troupe_transports::NatsConfig {
        url,
        stream: "TROUPE_CONFORMANCE".to_owned(),
        subject_prefix: "troupe-conformance".to_owned(),
        // Each run uses fresh queue names; let the server drop their consumers afterwards.
        consumer_inactive_threshold: Some(std::time::Duration::from_secs(300)),
        ..Default::default()
    };
    match troupe_transports::NatsTransport::connect(config).await {
        Ok(t) => t,
        Err(e) => panic!("NATS with JetStream must be running for these tests (bash .ci/run starts it): {e}"),
    }
}

troupe_transports::conformance_suite!(nats, transport());

/// Broker-side deduplication: the same `dedup_id` twice is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_dedup_id_is_stored_once() {
    use troupe_core::{PublishOptions, QueueAdmin, Transport};
    let t = transport().await;
    // Unique per run: the server keeps its store across runs, and these are never consumed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let queue = format!("conf-nats-dedup-{}-{nanos}", std::process::id());
    t.ensure_queue(&queue).await.unwrap();
    let options = PublishOptions {
        dedup_id: Some(format!("{queue}/once")),
        ..PublishOptions::default()
    };
    for _ in 0..3 {
        t.publish(&queue, bytes::Bytes::from_static(b"x"), options.clone())
            .await
            .unwrap();
    }
    let other = PublishOptions {
        dedup_id: Some(format!("{queue}/other")),
        ..PublishOptions::default()
    };
    t.publish(&queue, bytes::Bytes::from_static(b"y"), other)
        .await
        .unwrap();
    assert_eq!(t.depth(&queue).await.unwrap().total(), 2);
}

/// A message the server stops delivering (`max_deliver`) lands in the dead-letter queue as
/// a sump envelope with its bytes intact, and leaves the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_deliveries_go_to_the_dead_letter_queue() {
    use std::time::Duration;
    use troupe_core::{ConsumeOptions, Consumer, Delivery, Envelope, QueueAdmin, Reason, Transport};

    let url = std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let pid = std::process::id();
    let (queue, dlq) = (format!("conf-nats-poison-{pid}"), format!("conf-nats-dlq-{pid}"));
    let t = troupe_transports::NatsTransport::connect(troupe_transports::NatsConfig {
        url,
        stream: "TROUPE_CONFORMANCE".to_owned(),
        subject_prefix: "troupe-conformance".to_owned(),
        consumer_inactive_threshold: Some(Duration::from_secs(300)),
        max_deliver: 2,
        dead_letter_queue: Some(dlq.clone()),
        ..troupe_transports::NatsConfig::default()
    })
    .await
    .unwrap();
    t.ensure_queue(&queue).await.unwrap();
    t.ensure_queue(&dlq).await.unwrap();
    let original = br#"{"id":"poison-1","route":{"prev":[],"curr":"a","next":[]},"payload":1}"#;
    t.publish(&queue, bytes::Bytes::from_static(original), Default::default())
        .await
        .unwrap();
    let options = ConsumeOptions {
        prefetch: 1,
        lease: Duration::from_secs(1),
    };
    let mut c = t.consume(&queue, options).await.unwrap();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.nack(None).await.unwrap();
    }
    // Not delivered a third time. (Pulling is also what makes the server notice: it checks
    // the delivery count when it picks the next message for a pull request.)
    assert!(
        tokio::time::timeout(Duration::from_secs(3), c.next())
            .await
            .is_err(),
        "delivered again after max_deliver"
    );
    let mut dead = t.consume(&dlq, options).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("the poison message reached the dead-letter queue")
        .unwrap()
        .unwrap();
    let sump = Envelope::from_slice(d.body(), &Default::default()).unwrap();
    assert_eq!(
        sump.status.as_ref().unwrap().reason,
        Some(Reason::RedeliveryLimit)
    );
    assert_eq!(troupe_core::sump::original_bytes(&sump).unwrap(), original);
    d.ack().await.unwrap();
    assert_eq!(t.depth(&queue).await.unwrap().total(), 0, "gone from its queue");
}

/// The delay forwarder, fed raw messages on the delay stream: one written by an earlier
/// release (headers `Troupe-Not-Before`, `Troupe-Target`) still reaches its queue; one whose
/// target lies outside the mesh's subjects goes to the dead-letter queue as a sump envelope
/// instead of being forwarded (or, before, dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_forwarder_reads_earlier_headers_and_sets_foreign_targets_aside() {
    use std::time::Duration;
    use troupe_core::{ConsumeOptions, Consumer, Delivery, Envelope, QueueAdmin, Reason, Transport};

    let url = std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let pid = std::process::id();
    let (queue, dlq) = (format!("conf-nats-fwd-{pid}"), format!("conf-nats-fwd-dlq-{pid}"));
    let t = troupe_transports::NatsTransport::connect(troupe_transports::NatsConfig {
        url: url.clone(),
        stream: "TROUPE_CONFORMANCE".to_owned(),
        subject_prefix: "troupe-conformance".to_owned(),
        consumer_inactive_threshold: Some(Duration::from_secs(300)),
        dead_letter_queue: Some(dlq.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    t.ensure_queue(&queue).await.unwrap();
    t.ensure_queue(&dlq).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    let due = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    for (target, body) in [
        (format!("troupe-conformance.{queue}"), "earlier release"),
        ("elsewhere.secrets".to_owned(), "foreign target"),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Troupe-Not-Before", due.as_str());
        headers.insert("Troupe-Target", target.as_str());
        js.publish_with_headers(format!("troupe-conformance-delay.{queue}"), headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let next = |q: String| {
        let t = t.clone();
        async move {
            let mut c = t.consume(&q, ConsumeOptions::default()).await.unwrap();
            let d = tokio::time::timeout(Duration::from_secs(30), c.next())
                .await
                .unwrap_or_else(|_| panic!("nothing reached {q}"))
                .unwrap()
                .unwrap();
            let body = d.body().clone();
            d.ack().await.unwrap();
            body
        }
    };
    assert_eq!(&next(queue.clone()).await[..], b"earlier release");
    let sumped = Envelope::from_slice(&next(dlq.clone()).await, &Default::default()).unwrap();
    let status = sumped.status.as_ref().unwrap();
    assert_eq!(status.reason, Some(Reason::InvalidRoute));
    let message = &status.error.as_ref().unwrap().message;
    assert!(message.contains("elsewhere.secrets"), "{message}");
    assert_eq!(
        troupe_core::sump::original_bytes(&sumped).as_deref(),
        Some(&b"foreign target"[..])
    );
}
