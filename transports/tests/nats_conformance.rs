//! NATS JetStream against the transport contract, on a real server.
//! Address from `TROUPE_NATS_URL` (default `nats://127.0.0.1:4222`).
#![cfg(feature = "nats")]

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
