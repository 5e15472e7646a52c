//! Delayed delivery: a delay topic per queue and a forwarder that moves records when due.
//!
//! Kafka cannot hold one record back while later ones flow. Options considered:
//! - a due-time header on the queue's own topic, pausing the partition until the head is
//!   due: a record delayed by a minute would stop every ready record behind it
//!   (head-of-line blocking);
//! - holding early records of the queue's topic in memory and reading on: no blocking, but
//!   the partition's commit offset stays behind the oldest held record for its whole delay,
//!   so a rebalance or crash replays all the ready work done since;
//! - **a delay topic per queue** (`{topic}.troupe-delay`), chosen. A delayed publish, or a
//!   nack with a delay, goes there with a `troupe-not-before` header. A forwarder (one
//!   group member per process that consumes the queue, group `{group}.troupe-delay`) reads
//!   it, holds each record in memory until due, without stopping the records behind it,
//!   then publishes it to the queue's topic and settles it. Ready work in the queue's topic
//!   is never held up by delayed work, and replays after a crash are limited to delayed
//!   records (forwarded again: duplicates, which at-least-once allows).
//!
//! The forwarder holds at most `KafkaConfig::delay_hold_limit` records; beyond that it
//! pauses the delay topic until some are forwarded (then, and only then, a long delay can
//! hold up shorter ones). Delayed records keep their redelivery count, and a forwarded
//! record arrives as a new record of the queue, so a delayed publish arrives with 0
//! redeliveries. Records wait in the delay topic while no process consumes their queue;
//! they count in the queue's depth as delayed meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use troupe_core::Delivery;

use super::member::{KafkaDelivery, Member};
use super::publish::{Marks, Publisher, now_millis};

/// Forwarder leases never run out: it holds records on purpose.
const HOLD: Duration = Duration::MAX;
/// Wait before retrying a failed forward (milliseconds).
const RETRY_MS: u64 = 1000;

/// Forwards records of `member` (consuming a delay topic) to `topic` when due, until
/// `stop` is cancelled or the member stops. `member` must already count this forwarder as
/// its consumer (registered with the hold limit).
pub(crate) async fn forward(
    member: Arc<Member>,
    publisher: Publisher,
    queue: String,
    topic: String,
    stop: CancellationToken,
) {
    // Ordered by due time, then by arrival.
    let mut held: BTreeMap<(u64, u64), KafkaDelivery> = BTreeMap::new();
    let mut arrivals = 0u64;
    loop {
        let next_due = held.first_key_value().map(|(&(due, _), _)| due);
        let wait = async {
            match next_due {
                Some(due) => {
                    tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_millis()))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = wait => {
                let now = now_millis();
                while let Some(entry) = held.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let delivery = entry.remove();
                    if let Err(delivery) = forward_one(&publisher, &queue, &topic, delivery).await {
                        arrivals += 1;
                        held.insert((now_millis().saturating_add(RETRY_MS), arrivals), delivery);
                    }
                }
            }
            next = member.next(HOLD) => {
                let Some(delivery) = next else { break };
                arrivals += 1;
                held.insert((delivery.not_before().unwrap_or(0), arrivals), delivery);
            }
        }
    }
    tracing::debug!(%queue, held = held.len(), "delay forwarder stopped; held records stay in the delay topic");
}

/// Publishes `delivery` to its queue and settles it; gives it back if publishing failed.
async fn forward_one(
    publisher: &Publisher,
    queue: &str,
    topic: &str,
    delivery: KafkaDelivery,
) -> Result<(), KafkaDelivery> {
    let marks = Marks {
        redeliveries: delivery.marks().redeliveries,
        not_before: None,
    };
    match publisher.send(queue, topic, delivery.body(), marks).await {
        Ok(()) => {
            if let Err(error) = delivery.ack().await {
                // The partition moved to another forwarder, which forwards it again.
                tracing::debug!(%queue, %error, "forwarded a delayed record whose partition was revoked; it may arrive twice");
            }
            Ok(())
        }
        Err(error) => {
            tracing::warn!(%queue, %error, "forwarding a delayed record failed; retrying in 1 s");
            Err(delivery)
        }
    }
}
