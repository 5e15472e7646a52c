//! Consuming a RabbitMQ queue: one channel per consumer, manual acks, leases enforced by a
//! watchdog, and a fresh channel after a connection loss.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::mpsc;
use troupe_core::{ConsumeOptions, Consumer, Delivery, TransportError};

use super::lease::{Lease, LeaseWatch};
use super::{AmqpTransport, REDELIVERIES};

/// Closes its channel when the last user (the consumer or a delivery still in the
/// runner's hands) lets go; the broker then requeues whatever was not acked.
struct ChannelGuard {
    channel: Channel,
    watch: Arc<LeaseWatch>,
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.watch.stop();
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if channel.status().connected() {
                    let _ = channel.close(200, "consumer closed".into()).await;
                }
            });
        }
    }
}

struct Subscription {
    guard: Arc<ChannelGuard>,
    deliveries: mpsc::Receiver<Result<lapin::message::Delivery, lapin::Error>>,
    in_flight: Arc<AtomicU64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Received but never handed out: the broker requeues them with the channel.
        self.deliveries.close();
        while let Ok(received) = self.deliveries.try_recv() {
            if received.is_ok() {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Moves deliveries from lapin's stream into the consumer's buffer, counting each as in
/// flight the moment the broker hands it over (prefetched messages are unacked at the
/// broker, so depth must count them). Ends with the stream or the consumer.
async fn pump(
    mut stream: lapin::Consumer,
    buffer: mpsc::Sender<Result<lapin::message::Delivery, lapin::Error>>,
    in_flight: Arc<AtomicU64>,
) {
    while let Some(received) = stream.next().await {
        let failed = received.is_err();
        if received.is_ok() {
            in_flight.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(mpsc::error::SendError(unsent)) = buffer.send(received).await {
            if unsent.is_ok() {
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        if failed {
            return;
        }
    }
}

/// Deliveries from one queue.
pub struct AmqpConsumer {
    transport: AmqpTransport,
    queue: String,
    options: ConsumeOptions,
    in_flight: Arc<AtomicU64>,
    /// `None` after the channel or connection was lost: the next call opens a new one.
    subscription: Option<Subscription>,
}

impl AmqpConsumer {
    pub(super) fn new(transport: AmqpTransport, queue: String, options: ConsumeOptions) -> Self {
        let in_flight = transport.in_flight_counter(&queue);
        Self {
            transport,
            queue,
            options,
            in_flight,
            subscription: None,
        }
    }

    pub(super) async fn subscribe(&mut self) -> Result<(), TransportError> {
        let channel = self.transport.inner.link.channel().await?;
        let prefetch = u16::try_from(self.options.prefetch.max(1)).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(super::lost)?;
        let deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| super::queue_error(&self.queue, e))?;
        let watch = LeaseWatch::start(self.options.lease, Arc::clone(&self.in_flight));
        let (tx, rx) = mpsc::channel(usize::from(prefetch));
        tokio::spawn(pump(deliveries, tx, Arc::clone(&self.in_flight)));
        self.subscription = Some(Subscription {
            guard: Arc::new(ChannelGuard { channel, watch }),
            deliveries: rx,
            in_flight: Arc::clone(&self.in_flight),
        });
        Ok(())
    }
}

/// A header's integer value, whatever integer type the sender chose.
fn integer(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// Earlier deliveries of a message: the quorum queue's own count (`x-delivery-count`, set
/// on redelivery) plus the count carried by a copy that went through a delay queue.
pub(super) fn redeliveries(headers: Option<&FieldTable>) -> u32 {
    let Some(headers) = headers else { return 0 };
    let count = |name: &str| {
        headers
            .inner()
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| integer(v))
            .unwrap_or(0)
    };
    let ours = troupe_core::wire::spellings(REDELIVERIES)
        .map(count)
        .fold(0u64, u64::saturating_add);
    u32::try_from(count("x-delivery-count").saturating_add(ours)).unwrap_or(u32::MAX)
}

impl Consumer for AmqpConsumer {
    type Delivery = AmqpDelivery;

    async fn next(&mut self) -> Option<Result<AmqpDelivery, TransportError>> {
        if self.subscription.is_none()
            && let Err(e) = self.subscribe().await
        {
            return Some(Err(e));
        }
        let subscription = self.subscription.as_mut()?;
        let received = subscription.deliveries.recv().await;
        let delivery = match received {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.subscription = None;
                return Some(Err(TransportError::Disconnected {
                    detail: format!("receiving from {:?}: {e}; re-subscribing", self.queue),
                }));
            }
            None => {
                // The broker cancelled the subscription (queue deleted) or the channel
                // closed; not the end of the transport.
                self.subscription = None;
                return Some(Err(TransportError::Disconnected {
                    detail: format!("the subscription to {:?} ended; re-subscribing", self.queue),
                }));
            }
        };
        let guard = Arc::clone(&subscription.guard);
        let lease = guard.watch.grant(delivery.acker);
        Some(Ok(AmqpDelivery {
            redeliveries: redeliveries(delivery.properties.headers().as_ref()),
            body: Bytes::from(delivery.data),
            queue: self.queue.clone(),
            transport: self.transport.clone(),
            lease,
            guard,
        }))
    }
}

/// One RabbitMQ delivery.
pub struct AmqpDelivery {
    body: Bytes,
    redeliveries: u32,
    queue: String,
    transport: AmqpTransport,
    lease: Arc<Lease>,
    guard: Arc<ChannelGuard>,
}

impl AmqpDelivery {
    fn expired(&self) -> TransportError {
        TransportError::LeaseExpired {
            queue: self.queue.clone(),
        }
    }

    fn settled(&self, sent: Result<bool, lapin::Error>) -> Result<(), TransportError> {
        match sent {
            Ok(true) => Ok(()),
            // The channel closed under it: the broker requeues the message.
            Ok(false) => Err(TransportError::Disconnected {
                detail: format!(
                    "the channel of {:?} closed before this delivery was settled; it will be redelivered",
                    self.queue
                ),
            }),
            Err(e) => Err(super::lost(e)),
        }
    }
}

impl Delivery for AmqpDelivery {
    fn body(&self) -> &Bytes {
        &self.body
    }

    fn redeliveries(&self) -> u32 {
        self.redeliveries
    }

    async fn ack(self) -> Result<(), TransportError> {
        if !self.lease.settle() {
            return Err(self.expired());
        }
        let sent = self.lease.acker.ack(BasicAckOptions::default()).await;
        self.settled(sent)
    }

    async fn nack(self, delay: Option<Duration>) -> Result<(), TransportError> {
        match delay.filter(|d| !d.is_zero()) {
            None => {
                if !self.lease.settle() {
                    return Err(self.expired());
                }
                let sent = self
                    .lease
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
                self.settled(sent)
            }
            Some(delay) => {
                // AMQP cannot requeue with a delay: park a copy (with its count raised) in
                // a delay queue, then ack the original. If the copy cannot be parked the
                // original stays unsettled and comes back when its lease ends.
                if !self.lease.pending() {
                    return Err(self.expired());
                }
                self.transport
                    .publish_delayed(
                        &self.queue,
                        &self.body,
                        delay,
                        self.redeliveries.saturating_add(1),
                    )
                    .await?;
                if !self.lease.settle() {
                    // Expired while the copy was parked: both will be delivered, which
                    // at-least-once allows and the idempotency layer absorbs.
                    return Err(self.expired());
                }
                let sent = self.lease.acker.ack(BasicAckOptions::default()).await;
                self.settled(sent)
            }
        }
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        if self.guard.watch.extend(&self.lease) {
            Ok(())
        } else {
            Err(self.expired())
        }
    }
}
