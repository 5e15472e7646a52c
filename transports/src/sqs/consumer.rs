//! Consuming: a background long-poll task per consumer, feeding a bounded channel.
//!
//! `Consumer::next` only reads the channel, so dropping its future loses nothing. The
//! task holds one prefetch permit per message it hands over; a delivery keeps its permit
//! until it is settled or dropped, so a consumer never holds more than `prefetch`
//! unsettled messages (buffered or in the caller's hands).
//!
//! The task receives when it can take a full batch, or at once when the buffer has run down
//! to half the prefetch. Refilling one permit at a time would cost a `ReceiveMessage` per
//! message whenever the caller is the slower side.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, Message, MessageSystemAttributeName};
use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use troupe_core::{Consumer, Delivery, TransportError};

use super::batch::MAX_ENTRIES;
use troupe_core::wire::spellings;

use super::{ENCODING, Failure, NOT_BEFORE, Outgoing, QueueHandle, ceil_secs, decode_body, now_millis};

/// SQS's longest visibility timeout (12 hours).
const MAX_VISIBILITY_SECS: u64 = 43_200;

/// Added to the lease before rounding it up to SQS's whole seconds. SQS starts the
/// visibility clock when it picks the message, before the response reaches us; the slack
/// covers that transit, so a message is not given out again sooner than `lease` after
/// the caller received it.
const LEASE_SLACK: Duration = Duration::from_millis(250);

/// How long past the long-poll wait a receive may take before it counts as hung.
const RECEIVE_GRACE: Duration = Duration::from_secs(10);

/// Pause after an empty receive that came back at once.
const EMPTY_PAUSE: Duration = Duration::from_millis(100);

/// A consumer's lease, in SQS's terms.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// What the caller asked for.
    lease: Duration,
    /// The visibility timeout set on receive and on extension.
    visibility_secs: i32,
}

impl Lease {
    pub(super) fn new(lease: Duration) -> Self {
        let secs = ceil_secs(lease.saturating_add(LEASE_SLACK)).clamp(1, MAX_VISIBILITY_SECS);
        Self {
            lease,
            visibility_secs: i32::try_from(secs).unwrap_or(i32::MAX),
        }
    }

    /// Until when a buffered message may still be handed out: the caller must get at least
    /// half a lease (the runner extends the lease every half lease) plus the slack.
    fn fresh_until(&self, received_at: Instant) -> Instant {
        let visibility = Duration::from_secs(u64::try_from(self.visibility_secs).unwrap_or(0));
        received_at + visibility.saturating_sub(self.lease / 2 + LEASE_SLACK)
    }
}

/// Deliveries from one SQS queue. Dropping the consumer stops its receive task and
/// returns its buffered (never handed out) messages to the queue at once.
pub struct SqsConsumer {
    rx: mpsc::Receiver<Result<SqsDelivery, TransportError>>,
    /// Told each time `next` takes something out of the buffer.
    taken: Arc<Notify>,
    fetcher: JoinHandle<()>,
    queue: Arc<QueueHandle>,
}

impl SqsConsumer {
    pub(super) fn start(queue: Arc<QueueHandle>, prefetch: usize, lease: Duration) -> Self {
        let prefetch = prefetch.max(1);
        // Deliveries are bounded by the permits; the extra place is for an error report.
        let (tx, rx) = mpsc::channel(prefetch + 1);
        let taken = Arc::new(Notify::new());
        let fetcher = tokio::spawn(fetch(
            Arc::clone(&queue),
            tx,
            Prefetch {
                permits: Arc::new(Semaphore::new(prefetch)),
                taken: Arc::clone(&taken),
                batch: prefetch.min(MAX_ENTRIES),
                low_water: prefetch / 2,
            },
            Lease::new(lease),
        ));
        Self {
            rx,
            taken,
            fetcher,
            queue,
        }
    }
}

impl Drop for SqsConsumer {
    fn drop(&mut self) {
        self.fetcher.abort();
        self.rx.close();
        let mut receipts = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(d) = item {
                receipts.push(d.receipt);
            }
        }
        // Without a runtime they still come back, only after their visibility timeout.
        if !receipts.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release(Arc::clone(&self.queue), receipts));
        }
    }
}

impl Consumer for SqsConsumer {
    type Delivery = SqsDelivery;

    async fn next(&mut self) -> Option<Result<SqsDelivery, TransportError>> {
        loop {
            let item = self.rx.recv().await?;
            self.taken.notify_one();
            match item {
                Ok(d) if Instant::now() >= d.fresh_until => {
                    // Too little of its lease is left for the caller to finish and ack it;
                    // handing it out would end in LeaseExpired. Let it go to whoever is next.
                    tracing::debug!(queue = %self.queue.name, "a prefetched message waited too long in the buffer; releasing it");
                    tokio::spawn(release(Arc::clone(&self.queue), vec![d.receipt]));
                }
                item => return Some(item),
            }
        }
    }
}

/// Makes messages visible again at once (visibility 0), ten per request.
async fn release(queue: Arc<QueueHandle>, receipts: Vec<String>) {
    for chunk in receipts.chunks(10) {
        let entries: Result<Vec<_>, _> = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .visibility_timeout(0)
                    .build()
            })
            .collect();
        let Ok(entries) = entries else { continue };
        let released = queue
            .client
            .change_message_visibility_batch()
            .queue_url(&queue.url)
            .set_entries(Some(entries))
            .send()
            .await;
        if let Err(error) = released {
            let failure = Failure::of(&error, "ChangeMessageVisibilityBatch");
            tracing::debug!(queue = %queue.name, error = %failure.detail, "could not release prefetched messages; they come back after their visibility timeout");
        }
    }
}

/// A consumer's prefetch accounting, as the receive task sees it.
struct Prefetch {
    /// One per unsettled message (buffered or handed out).
    permits: Arc<Semaphore>,
    /// Poked when the consumer takes from the buffer.
    taken: Arc<Notify>,
    /// Messages per receive when the buffer is comfortably full.
    batch: usize,
    /// Buffer level at or below which the task receives with whatever permits it has.
    low_water: usize,
}

impl Prefetch {
    /// Waits until a receive is worth making: a full batch of permits, or at least one
    /// permit while the buffer is at or below its low-water mark.
    async fn room<T>(&self, tx: &mpsc::Sender<T>) -> Option<OwnedSemaphorePermit> {
        let mut permits = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        loop {
            let free = self
                .permits
                .available_permits()
                .min(self.batch - permits.num_permits());
            if free > 0
                && let Ok(more) = Arc::clone(&self.permits).try_acquire_many_owned(u32::try_from(free).ok()?)
            {
                permits.merge(more);
            }
            let buffered = tx.max_capacity() - tx.capacity();
            if permits.num_permits() >= self.batch || buffered <= self.low_water {
                return Some(permits);
            }
            tokio::select! {
                more = Arc::clone(&self.permits).acquire_owned() => permits.merge(more.ok()?),
                () = self.taken.notified() => {}
            }
        }
    }
}

/// The receive loop: long polls while there is room, hands messages over, reports errors
/// (with backoff) through the channel. Runs until the consumer is dropped (aborted).
async fn fetch(
    queue: Arc<QueueHandle>,
    tx: mpsc::Sender<Result<SqsDelivery, TransportError>>,
    prefetch: Prefetch,
    lease: Lease,
) {
    let wait = queue.settings.wait_time;
    let wait_secs = i32::try_from(wait.as_secs()).unwrap_or(20);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(mut permits) = prefetch.room(&tx).await else {
            return;
        };
        let want = i32::try_from(permits.num_permits()).unwrap_or(1);
        let receive = queue
            .client
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(want)
            .visibility_timeout(lease.visibility_secs)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send();
        let asked_at = Instant::now();
        let failure = match tokio::time::timeout(wait + RECEIVE_GRACE, receive).await {
            Ok(Ok(out)) => {
                backoff = Duration::from_millis(100);
                let received_at = Instant::now();
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() && received_at - asked_at < EMPTY_PAUSE {
                    // Short polling (wait_time 0), or a server that does not hold the poll:
                    // without a pause this loop would hammer an empty queue.
                    drop(permits);
                    tokio::time::sleep(EMPTY_PAUSE).await;
                    continue;
                }
                for message in messages {
                    let Some(delivery) = accept(&queue, message, lease, received_at) else {
                        continue;
                    };
                    let Some(slot) = permits.split(1) else {
                        // More than asked for: leave it, it comes back after the timeout.
                        break;
                    };
                    if tx.send(Ok(delivery(slot))).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(Err(error)) => Failure::of(&error, "ReceiveMessage"),
            Err(_) => Failure::unreachable(format!(
                "ReceiveMessage on {:?} got no answer within {:?}",
                queue.name,
                wait + RECEIVE_GRACE
            )),
        };
        drop(permits);
        tracing::warn!(queue = %queue.name, error = %failure.detail, ?backoff, "receive failed; retrying");
        if tx.send(Err(failure.into_error(&queue.name))).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Turns a received message into a delivery (still missing its prefetch permit), or
/// `None` if it must not be handed out: malformed, or a chained delay that is not due yet
/// (then it is re-delayed in the background).
fn accept(
    queue: &Arc<QueueHandle>,
    message: Message,
    lease: Lease,
    received_at: Instant,
) -> Option<impl FnOnce(OwnedSemaphorePermit) -> SqsDelivery> {
    let Some(receipt) = message.receipt_handle else {
        tracing::warn!(queue = %queue.name, "SQS returned a message without a receipt handle; skipping it");
        return None;
    };
    let attribute = |name: &str| {
        message
            .message_attributes
            .as_ref()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
    };
    let attribute = |name| spellings(name).find_map(attribute);
    let encoding = attribute(ENCODING).map(str::to_owned);
    let not_before = attribute(NOT_BEFORE).and_then(|v| v.parse::<u64>().ok());
    let body = message.body.unwrap_or_default();
    if let Some(due) = not_before {
        let now = now_millis();
        if due > now {
            tokio::spawn(chain(Arc::clone(queue), body, encoding, due, receipt));
            return None;
        }
    }
    let redeliveries = message
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(0, |count| count.saturating_sub(1));
    let body = decode_body(&queue.name, body, encoding.as_deref());
    let queue = Arc::clone(queue);
    Some(move |slot| SqsDelivery {
        queue,
        receipt,
        body,
        redeliveries,
        visibility_secs: lease.visibility_secs,
        fresh_until: lease.fresh_until(received_at),
        _slot: slot,
    })
}

/// Moves a not-yet-due message on by another hop of at most SQS's longest delay, then
/// deletes the original. A crash in between leaves two copies (at-least-once), never none.
async fn chain(queue: Arc<QueueHandle>, body: String, encoding: Option<String>, due: u64, receipt: String) {
    let remaining = Duration::from_millis(due.saturating_sub(now_millis()));
    let next = Outgoing::hop(body, encoding, remaining, due, queue.settings.max_native_delay);
    let weight = next.weight();
    match queue.sends.submit(next, weight).await {
        Ok(()) => {
            tracing::debug!(queue = %queue.name, ?remaining, "delayed message moved on by another hop");
            if let Err(error) = queue.deletes.submit(receipt, 0).await {
                tracing::warn!(queue = %queue.name, %error, "could not delete a re-delayed message; it will be delivered twice");
            }
        }
        Err(error) => {
            tracing::warn!(queue = %queue.name, %error, "could not re-delay a message; it comes back after its visibility timeout and is tried again");
        }
    }
}

/// One SQS message, leased to this consumer until acked, nacked or its visibility ends.
pub struct SqsDelivery {
    queue: Arc<QueueHandle>,
    receipt: String,
    body: Bytes,
    redeliveries: u32,
    visibility_secs: i32,
    fresh_until: Instant,
    /// The consumer's prefetch place, given back when the delivery is settled or dropped.
    _slot: OwnedSemaphorePermit,
}

impl SqsDelivery {
    async fn change_visibility(&self, secs: i32, op: &'static str) -> Result<(), TransportError> {
        self.queue
            .client
            .change_message_visibility()
            .queue_url(&self.queue.url)
            .receipt_handle(&self.receipt)
            .visibility_timeout(secs)
            .send()
            .await
            .map(drop)
            .map_err(|e| Failure::of(&e, op).into_error(&self.queue.name))
    }
}

impl Delivery for SqsDelivery {
    fn body(&self) -> &Bytes {
        &self.body
    }

    fn redeliveries(&self) -> u32 {
        self.redeliveries
    }

    async fn ack(self) -> Result<(), TransportError> {
        self.queue.deletes.submit(self.receipt, 0).await
    }

    async fn nack(self, delay: Option<Duration>) -> Result<(), TransportError> {
        let secs = match delay.filter(|d| !d.is_zero()) {
            None => 0,
            Some(d) => {
                let secs = ceil_secs(d);
                if secs > MAX_VISIBILITY_SECS {
                    tracing::warn!(queue = %self.queue.name, ?d, "SQS cannot hold a message back longer than 12 h; nacking with 12 h");
                }
                secs.min(MAX_VISIBILITY_SECS)
            }
        };
        self.change_visibility(
            i32::try_from(secs).unwrap_or(i32::MAX),
            "ChangeMessageVisibility (nack)",
        )
        .await
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        self.change_visibility(self.visibility_secs, "ChangeMessageVisibility (in progress)")
            .await
    }
}
