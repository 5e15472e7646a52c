//! Troupe transports. The in-memory broker ([`memory`]) is always compiled and is the
//! embedded default; real brokers come behind Cargo features. The `conformance` feature
//! exposes the transport contract as a test suite (`conformance_suite!`) that every
//! transport runs.

#![forbid(unsafe_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod known_queues;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "nats")]
mod nats_poison;
mod queue_check;
#[cfg(feature = "sqs")]
pub mod sqs;

#[cfg(feature = "amqp")]
pub use amqp::{AmqpConfig, AmqpTransport, ManagementApi};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaConfig, KafkaConsumer, KafkaDelivery, KafkaTransport, TopicCreation};
pub use memory::{MemoryConfig, MemoryConsumer, MemoryDelivery, MemoryTransport};
#[cfg(feature = "nats")]
pub use nats::{NatsConfig, NatsTransport};
#[cfg(feature = "sqs")]
pub use sqs::{SqsConfig, SqsConsumer, SqsCredentials, SqsDelivery, SqsTransport};
