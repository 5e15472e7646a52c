//! `troupe tail --store`: print each envelope of a queue once, whatever copies it holds.
//!
//! Delivery is at-least-once up to the last actor: killed between the confirmation of its
//! output and the record of it, the last actor sends that output again after its restart
//! (same id, same payload), and `x-sink` is a queue with no actor in front of it. A reader
//! that keeps, in a shared store, a record of each envelope it printed turns those copies
//! back into one line each. It uses the hop records of the idempotency layer, keyed like
//! an actor's hop ([`Envelope::hop_key`]) under the reader's own prefix: a different
//! payload under a reused id is a different envelope and is printed.
//!
//! The reader itself is the last step of the chain: killed between printing a line and
//! recording it, it prints that line again after the claim lapses. Its stdout is not a
//! transaction either.

use std::time::Duration;

use troupe::core::{DecodeLimits, Delivery, Envelope};
use troupe::layers::idempotency::{AnyStore, Claim, IdempotencyStore, StoreError};

/// How long a reader's claim on an envelope it is printing holds off other readers: past
/// it, a crashed reader's envelope is printed by the next one.
const CLAIM_TTL: Duration = Duration::from_secs(60);

/// How long a delivery another reader is printing waits before it is looked at again.
pub const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Longest wait between tries while the store does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What to do with one delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not printed before: print it, then [`PrintedOnce::printed`] with the key (none for a
    /// body that is not an envelope, which cannot be keyed and is printed as it is).
    Print(Option<String>),
    /// A copy of an envelope already printed: ack it without printing.
    Copy,
    /// Another reader is printing it right now: put it back for [`BUSY_RETRY`].
    Busy,
}

/// The record of what this queue's readers printed, in a store of hop records.
pub struct PrintedOnce<S = AnyStore> {
    store: S,
    actor: String,
    limits: DecodeLimits,
    /// Copies acked without printing, for the summary at the end.
    pub copies: u64,
}

impl<S: IdempotencyStore> PrintedOnce<S> {
    /// Records kept in `store` for the envelopes of `actor`'s queue.
    pub fn new(store: S, actor: &str) -> Self {
        Self {
            store,
            actor: actor.to_owned(),
            limits: DecodeLimits::default(),
            copies: 0,
        }
    }

    /// Looks `delivery` up, claiming it when it is new. While the store does not answer,
    /// keeps trying with backoff and keeps the delivery's lease: an outage holds the reader,
    /// it neither prints twice nor drops anything.
    pub async fn check<D: Delivery>(&mut self, delivery: &D) -> Result<Verdict, StoreError> {
        let key = match Envelope::from_slice(delivery.body(), &self.limits) {
            Ok(envelope) => envelope.hop_key(&self.actor),
            Err(_) => return Ok(Verdict::Print(None)),
        };
        let claim = held_through_outages("claim", delivery, || self.store.claim(&key, CLAIM_TTL)).await?;
        Ok(match claim {
            Claim::Acquired => Verdict::Print(Some(key)),
            Claim::Completed(_) | Claim::Published => {
                self.copies += 1;
                tracing::info!(key, "a copy of an envelope already printed: acked, not printed");
                Verdict::Copy
            }
            Claim::InProgress => Verdict::Busy,
        })
    }

    /// Records that the envelope under `key` was printed, so its copies are not.
    pub async fn printed<D: Delivery>(&self, key: &str, delivery: &D) -> Result<(), StoreError> {
        // A hop with no outputs, recorded: a later claim finds it complete, which is all a
        // reader asks (one round trip, no separate "published" mark).
        let no_outputs = std::sync::Arc::from([]);
        held_through_outages("record", delivery, || self.store.complete(key, &no_outputs)).await
    }

    /// Gives up the claim on an envelope that was not printed (stdout failed), so the next
    /// reader prints it without waiting for the claim to lapse.
    pub async fn not_printed(&self, key: &str) {
        if let Err(error) = self.store.release(key).await {
            tracing::warn!(%error, key, "could not release the claim of an unprinted envelope; it lapses by itself");
        }
    }
}

/// Runs `op` until the store answers; while it does not, extends `delivery`'s lease and
/// waits (1 s doubling to [`MAX_BACKOFF`]).
async fn held_through_outages<D, F, Fut, T>(what: &str, delivery: &D, mut op: F) -> Result<T, StoreError>
where
    D: Delivery,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut wait = Duration::from_secs(1);
    loop {
        match op().await {
            Err(error) if error.unavailable => {
                tracing::warn!(%error, "store not answering ({what}); holding the envelope until it does");
                if let Err(error) = delivery.in_progress().await {
                    tracing::warn!(%error, "could not extend the lease while the store is down");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            answered => return answered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use troupe::MemoryTransport;
    use troupe::core::{ConsumeOptions, Consumer, PublishOptions, QueueAdmin, Route, Transport};
    use troupe::layers::StoreUrl;

    async fn deliveries(bodies: &[Bytes]) -> impl Consumer {
        let transport = MemoryTransport::default();
        transport.ensure_queue("q").await.unwrap();
        for body in bodies {
            transport
                .publish("q", body.clone(), PublishOptions::default())
                .await
                .unwrap();
        }
        transport.consume("q", ConsumeOptions::default()).await.unwrap()
    }

    async fn memory() -> AnyStore {
        StoreUrl::Memory
            .connect("t:", Duration::from_secs(60), &Default::default())
            .await
            .unwrap()
    }

    fn body(envelope: &Envelope) -> Bytes {
        Bytes::from(serde_json::to_vec(envelope).unwrap())
    }

    /// A copy (same id, same payload) is not printed; the same id with another payload,
    /// and a body that is not an envelope, are.
    #[tokio::test]
    async fn copies_are_printed_once() {
        let first = Envelope::new(Route::through(["x-sink"]), serde_json::json!({"n": 1}));
        let mut reused_id = first.clone();
        reused_id.payload = serde_json::json!({"n": 2}).into();
        let bodies = [
            body(&first),
            body(&first),
            body(&reused_id),
            Bytes::from_static(b"not json"),
        ];
        let mut consumer = deliveries(&bodies).await;
        let mut once = PrintedOnce::new(memory().await, "x-sink");
        let mut verdicts = Vec::new();
        for _ in &bodies {
            let delivery = consumer.next().await.unwrap().unwrap();
            let verdict = once.check(&delivery).await.unwrap();
            if let Verdict::Print(Some(key)) = &verdict {
                once.printed(key, &delivery).await.unwrap();
            }
            verdicts.push(matches!(verdict, Verdict::Print(_)));
            delivery.ack().await.unwrap();
        }
        assert_eq!(verdicts, [true, false, true, true]);
        assert_eq!(once.copies, 1);
    }

    /// An envelope claimed by a reader that has not printed it yet is busy for another;
    /// released unprinted, it is printed by the next look.
    #[tokio::test]
    async fn a_claim_in_flight_is_busy_and_a_release_frees_it() {
        let env = Envelope::new(Route::through(["x-sink"]), serde_json::json!(null));
        let mut consumer = deliveries(&[body(&env), body(&env)]).await;
        let store = memory().await;
        let mut a = PrintedOnce::new(store.clone(), "x-sink");
        let mut b = PrintedOnce::new(store, "x-sink");
        let one = consumer.next().await.unwrap().unwrap();
        let two = consumer.next().await.unwrap().unwrap();
        let Verdict::Print(Some(key)) = a.check(&one).await.unwrap() else {
            panic!("the first look claims it")
        };
        assert_eq!(b.check(&two).await.unwrap(), Verdict::Busy);
        a.not_printed(&key).await;
        assert_eq!(b.check(&two).await.unwrap(), Verdict::Print(Some(key)));
    }

    /// A store that does not answer its first `down` calls.
    struct Outage {
        inner: AnyStore,
        down: std::sync::atomic::AtomicU32,
    }

    impl Outage {
        fn answers(&self, operation: &'static str) -> Result<(), StoreError> {
            use std::sync::atomic::Ordering;
            match self
                .down
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            {
                Ok(_) => Err(StoreError::unavailable(operation, "connection refused")),
                Err(_) => Ok(()),
            }
        }
    }

    impl IdempotencyStore for Outage {
        async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
            self.answers("claim")?;
            self.inner.claim(key, ttl).await
        }
        async fn complete(
            &self,
            key: &str,
            outputs: &std::sync::Arc<[troupe::core::Publication]>,
        ) -> Result<(), StoreError> {
            self.answers("complete")?;
            self.inner.complete(key, outputs).await
        }
        async fn mark_published(&self, key: &str) -> Result<(), StoreError> {
            self.answers("mark_published")?;
            self.inner.mark_published(key).await
        }
        async fn release(&self, key: &str) -> Result<(), StoreError> {
            self.answers("release")?;
            self.inner.release(key).await
        }
    }

    /// A store that does not answer holds the reader: it neither prints a copy nor gives
    /// up, and goes on when the store is back.
    #[tokio::test(start_paused = true)]
    async fn an_outage_holds_the_reader_until_the_store_answers() {
        let env = Envelope::new(Route::through(["x-sink"]), serde_json::json!(1));
        let mut consumer = deliveries(&[body(&env), body(&env)]).await;
        let store = Outage {
            inner: memory().await,
            down: 3.into(),
        };
        let mut once = PrintedOnce::new(store, "x-sink");
        let first = consumer.next().await.unwrap().unwrap();
        let started = tokio::time::Instant::now();
        let Verdict::Print(Some(key)) = once.check(&first).await.unwrap() else {
            panic!("new, once the store answers")
        };
        assert!(
            started.elapsed() >= Duration::from_secs(1 + 2 + 4),
            "backed off 1, 2, 4 s"
        );
        once.store.down.store(2, std::sync::atomic::Ordering::SeqCst);
        once.printed(&key, &first).await.unwrap();
        first.ack().await.unwrap();
        let copy = consumer.next().await.unwrap().unwrap();
        assert_eq!(once.check(&copy).await.unwrap(), Verdict::Copy);
    }
}
