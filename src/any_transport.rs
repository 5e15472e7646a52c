//! One transport type for whichever broker was chosen at run time.
//!
//! [`Transport`] is generic (its futures are not boxed), so code that picks the broker from
//! a flag would otherwise need one instantiation per broker, reached through a visitor
//! ([`WithTransport`](crate::broker::WithTransport)). [`AnyTransport`] is an enum of the
//! transports this build has; each call is one `match` on it, with no boxing and no dynamic
//! dispatch, so the runner on an `AnyTransport` runs the same code as on the transport
//! itself.
//!
//! ```
//! use troupe::broker::{Broker, BrokerConfig};
//! use troupe::{QueueAdmin, Transport};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let transport = BrokerConfig::default().connect_any(Broker::Memory).await?;
//! transport.ensure_queue("jobs").await?;
//! transport.publish("jobs", "{}".into(), Default::default()).await?;
//! assert_eq!(transport.depth("jobs").await?.ready, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use troupe_core::{
    ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, QueueDepth, Transport, TransportError,
};
use troupe_transports::MemoryTransport;

use crate::broker::Broker;

/// Runs `$body` on the value inside whichever variant `$value` is.
macro_rules! each {
    ($value:expr, $enum:ident, $inner:ident => $body:expr) => {
        match $value {
            $enum::Memory($inner) => $body,
            #[cfg(feature = "nats")]
            $enum::Nats($inner) => $body,
            #[cfg(feature = "amqp")]
            $enum::Amqp($inner) => $body,
            #[cfg(feature = "sqs")]
            $enum::Sqs($inner) => $body,
            #[cfg(feature = "kafka")]
            $enum::Kafka($inner) => $body,
        }
    };
}

/// Like `each!`, wrapping the result in the same variant of `$out`.
macro_rules! each_into {
    ($value:expr, $enum:ident => $out:ident, $inner:ident => $body:expr) => {
        match $value {
            $enum::Memory($inner) => $out::Memory($body),
            #[cfg(feature = "nats")]
            $enum::Nats($inner) => $out::Nats($body),
            #[cfg(feature = "amqp")]
            $enum::Amqp($inner) => $out::Amqp($body),
            #[cfg(feature = "sqs")]
            $enum::Sqs($inner) => $out::Sqs($body),
            #[cfg(feature = "kafka")]
            $enum::Kafka($inner) => $out::Kafka($body),
        }
    };
}

/// A transport for whichever broker was chosen at run time; see the module docs. Made by
/// [`BrokerConfig::connect_any`](crate::broker::BrokerConfig::connect_any), or from a
/// connected transport with `From`.
#[derive(Clone)]
pub enum AnyTransport {
    /// The embedded in-memory broker.
    Memory(MemoryTransport),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(troupe_transports::NatsTransport),
    /// RabbitMQ.
    #[cfg(feature = "amqp")]
    Amqp(troupe_transports::AmqpTransport),
    /// Amazon SQS.
    #[cfg(feature = "sqs")]
    Sqs(troupe_transports::SqsTransport),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(troupe_transports::KafkaTransport),
}

type ConsumerOf<T> = <T as Transport>::Consumer;
type DeliveryOf<T> = <<T as Transport>::Consumer as Consumer>::Delivery;

/// The consumer of an [`AnyTransport`].
// Not boxed: the runner holds one consumer per worker, and each is as large as the
// largest broker's anyway once it is in use.
#[allow(clippy::large_enum_variant)]
pub enum AnyConsumer {
    /// The embedded in-memory broker.
    Memory(ConsumerOf<MemoryTransport>),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(ConsumerOf<troupe_transports::NatsTransport>),
    /// RabbitMQ.
    #[cfg(feature = "amqp")]
    Amqp(ConsumerOf<troupe_transports::AmqpTransport>),
    /// Amazon SQS.
    #[cfg(feature = "sqs")]
    Sqs(ConsumerOf<troupe_transports::SqsTransport>),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(ConsumerOf<troupe_transports::KafkaTransport>),
}

/// A delivery from an [`AnyConsumer`].
// Not boxed: that would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum AnyDelivery {
    /// The embedded in-memory broker.
    Memory(DeliveryOf<MemoryTransport>),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(DeliveryOf<troupe_transports::NatsTransport>),
    /// RabbitMQ.
    #[cfg(feature = "amqp")]
    Amqp(DeliveryOf<troupe_transports::AmqpTransport>),
    /// Amazon SQS.
    #[cfg(feature = "sqs")]
    Sqs(DeliveryOf<troupe_transports::SqsTransport>),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(DeliveryOf<troupe_transports::KafkaTransport>),
}

impl AnyTransport {
    /// The broker this transport speaks to.
    pub fn broker(&self) -> Broker {
        match self {
            AnyTransport::Memory(_) => Broker::Memory,
            #[cfg(feature = "nats")]
            AnyTransport::Nats(_) => Broker::Nats,
            #[cfg(feature = "amqp")]
            AnyTransport::Amqp(_) => Broker::Amqp,
            #[cfg(feature = "sqs")]
            AnyTransport::Sqs(_) => Broker::Sqs,
            #[cfg(feature = "kafka")]
            AnyTransport::Kafka(_) => Broker::Kafka,
        }
    }
}

impl fmt::Debug for AnyTransport {
    /// The broker only: a transport's settings may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AnyTransport").field(&self.broker()).finish()
    }
}

impl From<MemoryTransport> for AnyTransport {
    fn from(t: MemoryTransport) -> Self {
        AnyTransport::Memory(t)
    }
}

#[cfg(feature = "nats")]
impl From<troupe_transports::NatsTransport> for AnyTransport {
    fn from(t: troupe_transports::NatsTransport) -> Self {
        AnyTransport::Nats(t)
    }
}

#[cfg(feature = "amqp")]
impl From<troupe_transports::AmqpTransport> for AnyTransport {
    fn from(t: troupe_transports::AmqpTransport) -> Self {
        AnyTransport::Amqp(t)
    }
}

#[cfg(feature = "sqs")]
impl From<troupe_transports::SqsTransport> for AnyTransport {
    fn from(t: troupe_transports::SqsTransport) -> Self {
        AnyTransport::Sqs(t)
    }
}

#[cfg(feature = "kafka")]
impl From<troupe_transports::KafkaTransport> for AnyTransport {
    fn from(t: troupe_transports::KafkaTransport) -> Self {
        AnyTransport::Kafka(t)
    }
}

impl Transport for AnyTransport {
    type Consumer = AnyConsumer;

    fn deduplicates(&self) -> bool {
        each!(self, AnyTransport, t => t.deduplicates())
    }

    async fn publish(&self, queue: &str, body: Bytes, options: PublishOptions) -> Result<(), TransportError> {
        each!(self, AnyTransport, t => t.publish(queue, body, options).await)
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<AnyConsumer, TransportError> {
        Ok(each_into!(self, AnyTransport => AnyConsumer, t => t.consume(queue, options).await?))
    }

    async fn flush(&self) -> Result<(), TransportError> {
        each!(self, AnyTransport, t => t.flush().await)
    }
}

impl QueueAdmin for AnyTransport {
    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
        each!(self, AnyTransport, t => t.ensure_queue(queue).await)
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, TransportError> {
        each!(self, AnyTransport, t => t.depth(queue).await)
    }
}

impl Consumer for AnyConsumer {
    type Delivery = AnyDelivery;

    async fn next(&mut self) -> Option<Result<AnyDelivery, TransportError>> {
        let next = each_into!(self, AnyConsumer => AnyDelivery, c => match c.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Some(Err(error)),
            None => return None,
        });
        Some(Ok(next))
    }
}

impl Delivery for AnyDelivery {
    fn body(&self) -> &Bytes {
        each!(self, AnyDelivery, d => d.body())
    }

    fn redeliveries(&self) -> u32 {
        each!(self, AnyDelivery, d => d.redeliveries())
    }

    async fn ack(self) -> Result<(), TransportError> {
        each!(self, AnyDelivery, d => d.ack().await)
    }

    async fn nack(self, delay: Option<Duration>) -> Result<(), TransportError> {
        each!(self, AnyDelivery, d => d.nack(delay).await)
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        each!(self, AnyDelivery, d => d.in_progress().await)
    }
}
