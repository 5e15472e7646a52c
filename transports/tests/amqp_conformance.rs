//! RabbitMQ against the transport contract, on a real broker, twice: depth counted by the
//! transport itself, and depth read from the management API.
//! Addresses from `TROUPE_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`) and
//! `TROUPE_RABBITMQ_MANAGEMENT_URL` (default `http://127.0.0.1:15672`, guest/guest).
#![cfg(feature = "amqp")]

use std::time::Duration;

use troupe_transports::{AmqpConfig, AmqpTransport, ManagementApi};

async fn connect(management: Option<ManagementApi>) -> AmqpTransport {
    let url = std::env::var("TROUPE_AMQP_URL").unwrap_or_else(|_| AmqpConfig::default().url);
    let config = AmqpConfig {
        url,
        // Each run uses fresh queue names; let the broker drop them afterwards.
        queue_expires: Some(Duration::from_secs(300)),
        management,
        ..AmqpConfig::default()
    };
    match AmqpTransport::connect(config).await {
        Ok(t) => t,
        Err(e) => panic!("RabbitMQ must be running for these tests (bash .ci/run starts it): {e}"),
    }
}

async fn transport() -> AmqpTransport {
    connect(None).await
}

async fn with_management() -> AmqpTransport {
    let mut api = ManagementApi::default();
    if let Ok(url) = std::env::var("TROUPE_RABBITMQ_MANAGEMENT_URL") {
        api.url = url;
    }
    connect(Some(api)).await
}

troupe_transports::conformance_suite!(amqp, transport());
troupe_transports::conformance_suite!(amqp_management, with_management());
