//! The broker contract every transport implements.
//!
//! The contract is shaped by what real brokers can promise:
//! - [`Transport::publish`] resolves only once the broker has accepted the message
//!   (JetStream publish ack, Kafka delivery report, SQS `SendMessage` response, AMQP confirm).
//! - A [`Delivery`] is settled at most once, enforced by the type system: [`Delivery::ack`]
//!   and [`Delivery::nack`] take `self`. Dropping a delivery unsettled is what a crash looks
//!   like: the broker gives it out again when its lease (ack wait, visibility timeout) ends.
//! - [`Delivery::in_progress`] extends the lease for long work (JetStream `+WPI`, SQS
//!   `ChangeMessageVisibility`).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

/// A transport failure. Transports map their client errors onto these so the runner can
/// decide what to do without knowing the broker.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The queue name is not acceptable to the broker.
    #[error("queue {queue:?} is rejected by the broker: {detail}")]
    InvalidQueue {
        /// The queue name.
        queue: String,
        /// Why.
        detail: String,
    },
    /// The queue does not exist (and the transport does not create queues on demand).
    #[error("queue {queue:?} does not exist; create it with ensure_queue or the broker's tools")]
    NoSuchQueue {
        /// The queue name.
        queue: String,
    },
    /// The queue stayed full for longer than the publish timeout.
    #[error("queue {queue:?} stayed full ({capacity} messages) for {waited:?}; consumers are not keeping up")]
    QueueFull {
        /// The queue name.
        queue: String,
        /// Its capacity.
        capacity: usize,
        /// How long the publisher waited.
        waited: Duration,
    },
    /// The broker refused or did not confirm a publish.
    #[error("publish to {queue:?} was not confirmed: {detail}")]
    NotConfirmed {
        /// The queue name.
        queue: String,
        /// The broker's answer.
        detail: String,
    },
    /// The delivery's lease ended before it was settled; the broker has given (or will give)
    /// the message out again, so this settlement no longer counts.
    #[error(
        "the lease on this delivery from {queue:?} expired before it was settled; it will be redelivered"
    )]
    LeaseExpired {
        /// The queue name.
        queue: String,
    },
    /// The connection to the broker is gone (the transport may be reconnecting).
    #[error("broker connection lost: {detail}")]
    Disconnected {
        /// What the client reported.
        detail: String,
    },
    /// The transport was shut down.
    #[error("the transport is closed")]
    Closed,
    /// The TLS settings name files that cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Anything else the broker client reported.
    #[error("broker error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Options of one publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Do not deliver before this much time has passed (delayed retries).
    pub delay: Option<Duration>,
    /// Identity of this message for broker-side deduplication (JetStream `Nats-Msg-Id`):
    /// a broker that supports it stores a second publish with the same id, within its
    /// window, only once. Brokers without it ignore it; the idempotency layer still holds.
    pub dedup_id: Option<String>,
}

/// Options of one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// How many unsettled deliveries the broker may push ahead of settlement.
    pub prefetch: usize,
    /// How long a delivery stays leased before the broker gives it out again.
    pub lease: Duration,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            prefetch: 32,
            lease: Duration::from_secs(30),
        }
    }
}

/// How many messages a queue holds, counting in-flight work (what the autoscaler needs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready to be delivered now.
    pub ready: u64,
    /// Delivered and not yet settled.
    pub in_flight: u64,
    /// Waiting for a delay to pass.
    pub delayed: u64,
}

impl QueueDepth {
    /// `ready + in_flight + delayed`.
    pub fn total(&self) -> u64 {
        self.ready + self.in_flight + self.delayed
    }
}

/// One received message, to be settled exactly once.
pub trait Delivery: Send + Sync + 'static {
    /// The message body.
    fn body(&self) -> &Bytes;

    /// How many times this message was delivered before this one (0 on first delivery).
    fn redeliveries(&self) -> u32;

    /// Removes the message from the queue.
    fn ack(self) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Returns the message to the queue, to be delivered again after `delay` (or at once).
    fn nack(self, delay: Option<Duration>) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Extends the lease: the work is still in progress.
    fn in_progress(&self) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// A stream of deliveries from one queue.
pub trait Consumer: Send + 'static {
    /// The delivery type.
    type Delivery: Delivery;

    /// The next delivery; waits while the queue is empty. `None` once the transport closed.
    ///
    /// Must be cancel-safe: if the returned future is dropped before it completes, no
    /// delivery is lost (the runner races it against shutdown and in-flight work).
    fn next(&mut self) -> impl Future<Output = Option<Result<Self::Delivery, TransportError>>> + Send;
}

/// Publishing and consuming.
pub trait Transport: Clone + Send + Sync + 'static {
    /// The consumer type.
    type Consumer: Consumer;

    /// Whether `publish` uses [`PublishOptions::dedup_id`]. The runner fills it (with the
    /// destination's hop key, which digests the payload) only for transports that do, so
    /// the others pay nothing for it.
    fn deduplicates(&self) -> bool {
        false
    }

    /// Publishes `body` to `queue`; resolves once the broker has accepted it.
    fn publish(
        &self,
        queue: &str,
        body: Bytes,
        options: PublishOptions,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Starts consuming `queue`. Several consumers of one queue compete for its messages.
    fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> impl Future<Output = Result<Self::Consumer, TransportError>> + Send;

    /// Resolves once everything this client has sent so far has reached the broker. Some
    /// brokers take acks without an answer (a NATS ack is a message the client buffers), so
    /// an ack that resolved may not have left the process yet; the runner calls this before
    /// it returns, so that a clean shutdown does not leave acknowledged messages to be
    /// delivered again. The default does nothing, for transports whose calls resolve only
    /// once the broker has them.
    fn flush(&self) -> impl Future<Output = Result<(), TransportError>> + Send {
        async { Ok(()) }
    }
}

/// The administrative side: queues and their depth.
pub trait QueueAdmin: Send + Sync + 'static {
    /// Creates `queue` if it does not exist (idempotent).
    fn ensure_queue(&self, queue: &str) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Current depth of `queue`.
    fn depth(&self, queue: &str) -> impl Future<Output = Result<QueueDepth, TransportError>> + Send;
}
