//! Per-queue batching of sends (`SendMessageBatch`) and deletes (`DeleteMessageBatch`).
//!
//! SQS charges and limits per request, and a batch of 10 costs about as much as one
//! message, so concurrent callers of one queue share requests. Each caller still waits
//! for, and gets, the answer for its own entry.
//!
//! The batcher does not hold an idle caller back: a request goes out at once when nothing
//! else is in flight for the queue, so a lone sequential publisher pays no batching delay.
//! Only while other batches are in flight (the queue is busy) does it linger a little
//! (`SqsConfig::batch_linger`) for more entries to share the request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use troupe_core::TransportError;

use super::{Failure, Outgoing};

/// SQS's limit on entries in one batch request.
pub(super) const MAX_ENTRIES: usize = 10;

/// How a batcher groups entries.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchSettings {
    /// How long to wait for more entries while the queue is busy.
    pub linger: Duration,
    /// Batch requests of one kind in flight at once for one queue.
    pub max_in_flight: usize,
    /// Upper bound on the summed weight (bytes) of one batch.
    pub max_bytes: usize,
}

/// One kind of batch request.
pub(super) trait Flush: Send + Sync + 'static {
    /// What one caller submits.
    type Item: Send + 'static;

    /// Sends `items` as one request; returns one result per item, in order.
    fn flush(&self, items: Vec<Self::Item>) -> impl Future<Output = Vec<Result<(), TransportError>>> + Send;
}

struct Job<T> {
    item: T,
    weight: usize,
    done: oneshot::Sender<Result<(), TransportError>>,
}

/// The submitting side of a batcher task; the task ends when every clone is dropped.
pub(super) struct Batcher<T> {
    tx: mpsc::UnboundedSender<Job<T>>,
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the batcher task for `flush`.
    pub(super) fn spawn<F: Flush<Item = T>>(flush: F, settings: BatchSettings) -> Self {
        // Unbounded is safe: every job has a caller waiting for it, so the number of
        // queued jobs is bounded by the number of concurrent callers.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(flush), rx, settings));
        Self { tx }
    }

    /// Submits `item` (counting `weight` bytes toward the batch size) and waits for its
    /// own result.
    pub(super) async fn submit(&self, item: T, weight: usize) -> Result<(), TransportError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Job { item, weight, done })
            .map_err(|_| TransportError::Closed)?;
        answer.await.unwrap_or_else(|_| {
            Err(TransportError::Other(
                "the SQS batch carrying this request was abandoned (its task ended); the outcome is unknown"
                    .into(),
            ))
        })
    }
}

async fn run<F: Flush>(
    flush: Arc<F>,
    mut rx: mpsc::UnboundedReceiver<Job<F::Item>>,
    settings: BatchSettings,
) {
    let max_in_flight = settings.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    // An entry that did not fit the previous batch's byte budget opens the next one.
    let mut carry: Option<Job<F::Item>> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        // Entries arriving while every slot is busy queue up in the channel and fill the
        // next batch: this is where batches form under load.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let busy = max_in_flight - slots.available_permits() > 1;
        let linger_until = Instant::now() + settings.linger;
        let mut bytes = first.weight;
        let mut jobs = vec![first];
        while jobs.len() < MAX_ENTRIES {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Empty) if busy && !settings.linger.is_zero() => {
                    tokio::time::timeout_at(linger_until, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            let Some(job) = next else { break };
            if bytes.saturating_add(job.weight) > settings.max_bytes {
                carry = Some(job);
                break;
            }
            bytes = bytes.saturating_add(job.weight);
            jobs.push(job);
        }
        let flush = Arc::clone(&flush);
        tokio::spawn(async move {
            let (items, replies): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.item, j.done)).unzip();
            let results = flush.flush(items).await;
            for (reply, result) in replies.into_iter().zip(results) {
                // The caller may have stopped waiting; its entry was still handled.
                let _ = reply.send(result);
            }
            drop(slot);
        });
    }
}

/// Collects per-entry answers of a batch response into one result per entry, in order.
/// Entry ids are the entries' indexes; an entry the response does not mention is an error.
pub(super) fn per_entry(
    n: usize,
    ok_ids: impl IntoIterator<Item = String>,
    failed: impl IntoIterator<Item = (String, Result<(), TransportError>)>,
    missing: impl Fn() -> TransportError,
) -> Vec<Result<(), TransportError>> {
    let mut results: Vec<Option<Result<(), TransportError>>> = (0..n).map(|_| None).collect();
    let index = |id: &str| id.parse::<usize>().ok().filter(|i| *i < n);
    for id in ok_ids {
        if let Some(i) = index(&id) {
            results[i] = Some(Ok(()));
        }
    }
    for (id, error) in failed {
        if let Some(i) = index(&id) {
            results[i] = Some(error);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(missing())))
        .collect()
}

/// `SendMessageBatch` for one queue.
pub(super) struct SendFlush {
    pub client: Client,
    pub queue: String,
    pub url: String,
}

impl Flush for SendFlush {
    type Item = Outgoing;

    async fn flush(&self, items: Vec<Outgoing>) -> Vec<Result<(), TransportError>> {
        let n = items.len();
        let not_confirmed = |detail: String| TransportError::NotConfirmed {
            queue: self.queue.clone(),
            detail,
        };
        let entries: Result<Vec<SendMessageBatchRequestEntry>, _> =
            items.iter().enumerate().map(|(i, o)| o.entry(i)).collect();
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                return (0..n)
                    .map(|_| Err(not_confirmed(format!("cannot build the request: {e}"))))
                    .collect();
            }
        };
        let sent = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) => per_entry(
                n,
                out.successful().iter().map(|s| s.id().to_owned()),
                out.failed().iter().map(|f| {
                    let detail = format!(
                        "SQS refused this entry ({}{}): {}",
                        f.code(),
                        if f.sender_fault() {
                            ", sender fault"
                        } else {
                            ", service fault: retry"
                        },
                        f.message().unwrap_or("no message"),
                    );
                    (f.id().to_owned(), Err(not_confirmed(detail)))
                }),
                || not_confirmed("SQS answered the batch without mentioning this entry".to_owned()),
            ),
            Err(e) => {
                let failure = Failure::of(&e, "SendMessageBatch");
                (0..n)
                    .map(|_| Err(failure.clone().publish_error(&self.queue)))
                    .collect()
            }
        }
    }
}

/// `DeleteMessageBatch` for one queue; items are receipt handles.
pub(super) struct DeleteFlush {
    pub client: Client,
    pub queue: String,
    pub url: String,
}

impl Flush for DeleteFlush {
    type Item = String;

    async fn flush(&self, receipts: Vec<String>) -> Vec<Result<(), TransportError>> {
        let n = receipts.len();
        let entries: Result<Vec<DeleteMessageBatchRequestEntry>, _> = receipts
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
            })
            .collect();
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                let detail = format!("cannot build the DeleteMessageBatch request: {e}");
                return (0..n)
                    .map(|_| Err(TransportError::Other(detail.clone().into())))
                    .collect();
            }
        };
        let deleted = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match deleted {
            Ok(out) => per_entry(
                n,
                out.successful().iter().map(|s| s.id().to_owned()),
                out.failed().iter().map(|f| {
                    let failure = Failure::of_entry(f.code(), f.message(), "DeleteMessageBatch");
                    (f.id().to_owned(), Err(failure.into_error(&self.queue)))
                }),
                || {
                    TransportError::Other(
                        format!(
                            "SQS answered DeleteMessageBatch on {:?} without mentioning this entry",
                            self.queue
                        )
                        .into(),
                    )
                },
            ),
            Err(e) => {
                let failure = Failure::of(&e, "DeleteMessageBatch");
                (0..n)
                    .map(|_| Err(failure.clone().into_error(&self.queue)))
                    .collect()
            }
        }
    }
}
