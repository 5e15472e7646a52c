//! RabbitMQ transport (feature `amqp`), on lapin (AMQP 0-9-1).
//!
//! Mapping (facts verified on RabbitMQ 3.10, see `docs/transports-notes.md`):
//! - every queue is a durable **quorum** queue, published to through the default exchange
//!   with `mandatory` set, so a publish to a queue that does not exist fails instead of
//!   vanishing. Quorum queues count deliveries (`x-delivery-count`), which classic queues
//!   do not, and that count is [`troupe_core::Delivery::redeliveries`];
//! - publishes go over one confirm-mode channel and resolve on the broker's confirm;
//!   concurrent publishes pipeline on it (the window is however many are in flight);
//! - each consumer has its own channel with `basic.qos(prefetch)` and manual acks;
//! - AMQP has no per-delivery lease, so each consumer runs a lease watchdog (module `lease`):
//!   an unsettled delivery is requeued when its lease ends and a late settlement is refused;
//! - delays without plugins: a delayed message waits in a classic queue per delay bucket
//!   (`{queue}.troupe-delay.{ms}`) whose queue-wide TTL dead-letters it back to `queue`.
//!   A queue-wide TTL keeps every message of a bucket expiring in arrival order, which
//!   per-message TTL does not (it only expires at the head). Delays are rounded *up* to two
//!   significant digits of milliseconds, so a delay is never cut short and there are at
//!   most 90 buckets per decade; unused buckets expire;
//! - `nack(delay)` parks a copy in a delay bucket with the redelivery count in a header,
//!   then acks the original;
//! - depth: the broker's ready count (passive declare) plus what this process's consumers
//!   hold unsettled plus what waits in the delay buckets this process used. The AMQP
//!   passive declare counts ready messages only, so a depth from a process that neither
//!   consumes nor publishes the queue would miss in-flight and delayed messages: with
//!   [`AmqpConfig::management`] set, depth comes from the management API instead, which
//!   counts them for every process;
//! - after a connection loss, the next publish or receive reconnects (with backoff) and
//!   consumers subscribe again; what was unacked on the old channel is requeued by the
//!   broker.
//!
//! `PublishOptions::dedup_id` becomes the AMQP `message-id`; RabbitMQ does not deduplicate
//! on it (the idempotency layer does).

mod consumer;
mod lease;
mod link;
mod management;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use tokio::time::Instant;
use troupe_core::{ConsumeOptions, PublishOptions, QueueAdmin, QueueDepth, Transport, TransportError};

pub use consumer::{AmqpConsumer, AmqpDelivery};
use link::Link;
use management::Management;
pub use management::ManagementApi;

/// Header on a delayed copy: the redeliveries before it was parked.
use troupe_core::tls::TlsFiles;
use troupe_core::wire::REDELIVERIES;
/// Longest queue name: delay buckets append up to 34 bytes and AMQP names end at 255.
const MAX_QUEUE_LEN: usize = 200;
/// A delay bucket is declared again when its last declaration is older than this, which
/// keeps it from expiring (`x-expires`) while messages wait in it.
const REDECLARE_AFTER: Duration = Duration::from_secs(600);

/// Where and how to reach RabbitMQ. Its `Debug` shows the URL redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// Broker URL with credentials and vhost, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// Let the broker delete a queue after this long without consumers or declarations
    /// (`x-expires`, for short-lived queues such as tests); `None` keeps queues until
    /// deleted.
    pub queue_expires: Option<Duration>,
    /// Read unacknowledged and delayed messages of every process from the management API
    /// (its statistics lag by up to RabbitMQ's `collect_statistics_interval`; ready
    /// messages are always counted live at the broker); `None` counts this process's own
    /// unsettled and delayed ones.
    pub management: Option<ManagementApi>,
    /// CA bundle and client certificate for an `amqps://` URL (the server is verified
    /// against the system roots and the CA bundle).
    pub tls: TlsFiles,
}

impl Default for AmqpConfig {
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` (RabbitMQ's out-of-the-box account, which
    /// only accepts loopback connections).
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            queue_expires: None,
            management: None,
            tls: TlsFiles::default(),
        }
    }
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &troupe_core::redact::Redacted(&self.url))
            .field("queue_expires", &self.queue_expires)
            .field("management", &self.management)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The RabbitMQ transport. Clones share one connection.
#[derive(Clone)]
pub struct AmqpTransport {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    config: AmqpConfig,
    management: Option<Management>,
    /// Unsettled deliveries per queue held by this process's consumers.
    in_flight: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Delay buckets declared by this process, per queue: bucket milliseconds and when
    /// each was last declared.
    buckets: Mutex<HashMap<String, HashMap<u64, Instant>>>,
}

fn lost(e: lapin::Error) -> TransportError {
    TransportError::Disconnected {
        detail: e.to_string(),
    }
}

/// Maps an error of an operation on `queue`: the broker's "not found" and "precondition
/// failed" (declared with other arguments) are about the queue, the rest about the link.
fn queue_error(queue: &str, e: lapin::Error) -> TransportError {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                return TransportError::NoSuchQueue {
                    queue: queue.to_owned(),
                };
            }
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::ACCESSREFUSED) => {
                return TransportError::InvalidQueue {
                    queue: queue.to_owned(),
                    detail: amqp.get_message().to_string(),
                };
            }
            _ => {}
        }
    }
    lost(e)
}

/// Names RabbitMQ would refuse, or that would break the protocol, are refused here.
fn check_queue(queue: &str) -> Result<(), TransportError> {
    let problem = if queue.is_empty() {
        Some("it is empty")
    } else if queue.len() > MAX_QUEUE_LEN {
        Some("it is longer than 200 bytes")
    } else if queue.starts_with("amq.") {
        Some("names starting with 'amq.' are reserved by RabbitMQ")
    } else if queue.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("queue names cannot contain whitespace or control characters")
    } else {
        None
    };
    crate::queue_check::refuse_if(queue, problem)
}

/// `delay` in milliseconds rounded up to two significant digits (never shorter).
fn bucket_millis(delay: Duration) -> u64 {
    let exact = u64::try_from(delay.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1);
    let mut step = 1u64;
    while exact / step >= 100 {
        step *= 10;
    }
    exact.div_ceil(step).saturating_mul(step)
}

/// A delay bucket is `{queue}{DELAY_SUFFIX}.{millis}`.
fn bucket_name(queue: &str, millis: u64) -> String {
    format!("{}{millis}", bucket_prefix(queue))
}

/// What every delay bucket of `queue` starts with.
fn bucket_prefix(queue: &str) -> String {
    format!("{queue}{}.", troupe_core::wire::DELAY_SUFFIX)
}

fn quorum_arguments(expires: Option<Duration>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    if let Some(expires) = expires {
        let millis = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX).max(1);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(millis));
    }
    args
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

impl AmqpTransport {
    /// Connects (so a wrong URL or credentials fail here, not at the first publish).
    pub async fn connect(config: AmqpConfig) -> Result<Self, TransportError> {
        let management = match &config.management {
            Some(api) => {
                let vhost = config
                    .url
                    .parse::<lapin::uri::AMQPUri>()
                    .map_err(|e| TransportError::Disconnected {
                        detail: format!("invalid RabbitMQ URL: {e}"),
                    })?
                    .vhost;
                Some(Management::new(api.clone(), vhost)?)
            }
            None => None,
        };
        let transport = Self {
            inner: Arc::new(Inner {
                link: Link::new(config.url.clone(), &config.tls)?,
                config,
                management,
                in_flight: Mutex::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
            }),
        };
        transport.inner.link.session().await?;
        Ok(transport)
    }

    fn in_flight_counter(&self, queue: &str) -> Arc<AtomicU64> {
        let mut map = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(queue.to_owned()).or_default())
    }

    /// Publishes through the confirm channel; resolves on the broker's confirm.
    async fn confirmed(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        queue: &str,
    ) -> Result<(), TransportError> {
        let session = self.inner.link.session().await?;
        let confirm = session
            .publish
            .basic_publish(
                "".into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(lost)?;
        match confirm.await.map_err(lost)? {
            Confirmation::Ack(None) => Ok(()),
            // Returned as unroutable: no queue of that name.
            Confirmation::Ack(Some(_)) => Err(TransportError::NoSuchQueue {
                queue: queue.to_owned(),
            }),
            Confirmation::Nack(_) => Err(TransportError::NotConfirmed {
                queue: queue.to_owned(),
                detail: "the broker nacked the publish (out of resources or the queue is overloaded)"
                    .to_owned(),
            }),
            Confirmation::NotRequested => Err(TransportError::NotConfirmed {
                queue: queue.to_owned(),
                detail: "the publish channel is not in confirm mode".to_owned(),
            }),
        }
    }

    /// Parks `body` in the delay bucket of `queue` for at least `delay`; `redeliveries`
    /// travels with it (0 for a delayed publish, the raised count for a delayed nack).
    async fn publish_delayed(
        &self,
        queue: &str,
        body: &[u8],
        delay: Duration,
        redeliveries: u32,
    ) -> Result<(), TransportError> {
        let millis = bucket_millis(delay);
        self.ensure_bucket(queue, millis).await?;
        let mut properties = persistent();
        if redeliveries > 0 {
            let mut headers = FieldTable::default();
            headers.insert(REDELIVERIES.into(), AMQPValue::LongUInt(redeliveries));
            properties = properties.with_headers(headers);
        }
        self.confirmed(&bucket_name(queue, millis), body, properties, queue)
            .await
    }

    async fn ensure_bucket(&self, queue: &str, millis: u64) -> Result<(), TransportError> {
        let fresh = {
            let buckets = self
                .inner
                .buckets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            buckets
                .get(queue)
                .and_then(|b| b.get(&millis))
                .is_some_and(|at| at.elapsed() < REDECLARE_AFTER)
        };
        if fresh {
            return Ok(());
        }
        // A bucket dead-letters into the queue by name; were the queue missing, the
        // default exchange would drop the message when due. Checked whenever the bucket is
        // (re)declared, so a queue deleted later is noticed within REDECLARE_AFTER.
        self.ready(queue).await?;
        let name = bucket_name(queue, millis);
        let mut args = FieldTable::default();
        let ttl = i64::try_from(millis).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        // Unused buckets go away, but never while a message can still be waiting in one:
        // it is declared again at least every REDECLARE_AFTER while in use.
        let expires = ttl.saturating_add(2 * i64::try_from(REDECLARE_AFTER.as_millis()).unwrap_or(0));
        args.insert("x-expires".into(), AMQPValue::LongLongInt(expires));
        self.declare(&name, args).await?;
        self.inner
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(queue.to_owned())
            .or_default()
            .insert(millis, Instant::now());
        Ok(())
    }

    /// Declares a durable queue on a channel of its own (a refused declaration closes the
    /// channel it was made on).
    async fn declare(&self, queue: &str, args: FieldTable) -> Result<(), TransportError> {
        let channel = self.inner.link.channel().await?;
        let declared = channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
            .await
            .map(drop)
            .map_err(|e| queue_error(queue, e));
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        declared
    }

    /// Ready messages of `queue`, by passive declaration.
    async fn ready(&self, queue: &str) -> Result<u64, TransportError> {
        let channel = self.inner.link.channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| u64::from(q.message_count()))
            .map_err(|e| queue_error(queue, e));
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        declared
    }
}

impl Transport for AmqpTransport {
    type Consumer = AmqpConsumer;

    async fn publish(&self, queue: &str, body: Bytes, options: PublishOptions) -> Result<(), TransportError> {
        check_queue(queue)?;
        if let Some(delay) = options.delay.filter(|d| !d.is_zero()) {
            return self.publish_delayed(queue, &body, delay, 0).await;
        }
        let mut properties = persistent();
        if let Some(id) = options.dedup_id.and_then(|id| ShortString::try_new(id).ok()) {
            properties = properties.with_message_id(id);
        }
        self.confirmed(queue, &body, properties, queue).await
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<AmqpConsumer, TransportError> {
        check_queue(queue)?;
        let mut consumer = AmqpConsumer::new(self.clone(), queue.to_owned(), options);
        consumer.subscribe().await?;
        Ok(consumer)
    }
}

impl QueueAdmin for AmqpTransport {
    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
        check_queue(queue)?;
        self.declare(queue, quorum_arguments(self.inner.config.queue_expires))
            .await
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, TransportError> {
        check_queue(queue)?;
        if let Some(management) = &self.inner.management {
            // The management API's statistics lag by up to `collect_statistics_interval`
            // (5 s by default); the broker counts ready messages live. Taking ready from
            // the broker lets an autoscaler see a burst on an idle queue at once.
            let stats = management.depth(queue, &bucket_prefix(queue)).await?;
            let ready = self.ready(queue).await?;
            return Ok(QueueDepth { ready, ..stats });
        }
        let ready = self.ready(queue).await?;
        let in_flight = self.in_flight_counter(queue).load(Ordering::Relaxed);
        let buckets: Vec<u64> = self
            .inner
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(queue)
            .map(|b| b.keys().copied().collect())
            .unwrap_or_default();
        let mut delayed = 0;
        for millis in buckets {
            match self.ready(&bucket_name(queue, millis)).await {
                Ok(n) => delayed += n,
                // Expired after its last message left.
                Err(TransportError::NoSuchQueue { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(QueueDepth {
            ready,
            in_flight,
            delayed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_two_significant_digits() {
        assert_eq!(bucket_millis(Duration::from_micros(1)), 1);
        assert_eq!(bucket_millis(Duration::from_millis(99)), 99);
        assert_eq!(bucket_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(bucket_millis(Duration::from_millis(1501)), 1600);
        assert_eq!(bucket_millis(Duration::from_millis(123_456)), 130_000);
        for ms in [1u64, 7, 101, 999, 1001, 59_999, 3_600_001] {
            let b = bucket_millis(Duration::from_millis(ms));
            assert!(b >= ms && b * 10 <= ms * 11 + 10, "{ms} -> {b}");
        }
    }

    #[test]
    fn queue_names_the_broker_would_refuse_are_refused_here() {
        assert!(check_queue("asya-default-score").is_ok());
        for bad in ["", "amq.foo", "has space", "new\nline", &"x".repeat(201)] {
            assert!(
                matches!(check_queue(bad), Err(TransportError::InvalidQueue { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn redeliveries_add_the_broker_count_and_the_carried_count() {
        assert_eq!(consumer::redeliveries(None), 0);
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        headers.insert(REDELIVERIES.into(), AMQPValue::LongUInt(3));
        assert_eq!(consumer::redeliveries(Some(&headers)), 5);
    }

    #[test]
    fn a_copy_parked_by_an_earlier_release_keeps_its_count() {
        // Before the wire names were unified the count travelled as x-troupe-redeliveries.
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(1));
        headers.insert("x-troupe-redeliveries".into(), AMQPValue::LongUInt(4));
        assert_eq!(consumer::redeliveries(Some(&headers)), 5);
    }
}
