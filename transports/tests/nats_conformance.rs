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
