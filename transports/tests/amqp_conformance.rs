//! RabbitMQ against the transport contract, on a real broker.
//! Address from `TROUPE_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
#![cfg(feature = "amqp")]

async fn transport() -> troupe_transports::AmqpTransport {
    let url =
        std::env::var("TROUPE_AMQP_URL").unwrap_or_else(|_| troupe_transports::AmqpConfig::default().url);
    let config = troupe_transports::AmqpConfig {
        url,
        // Each run uses fresh queue names; let the broker drop them afterwards.
        queue_expires: Some(std::time::Duration::from_secs(300)),
    };
    match troupe_transports::AmqpTransport::connect(config).await {
        Ok(t) => t,
        Err(e) => panic!("RabbitMQ must be running for these tests (bash .ci/run starts it): {e}"),
    }
}

troupe_transports::conformance_suite!(amqp, transport());
