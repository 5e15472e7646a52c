//! Producing records, and the headers the transport keeps its bookkeeping in.
//!
//! Kafka has no redelivery count or delivery time of its own, so both travel as headers:
//! - `troupe-redeliveries`: how often the record was given out before (absent = 0). A nack
//!   or an expired lease republishes the record with this raised by one.
//! - `troupe-not-before`: Unix milliseconds before which a record in a delay topic must not
//!   be forwarded to its queue.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use troupe_core::TransportError;

pub(crate) use troupe_core::wire::{NOT_BEFORE, REDELIVERIES};

/// The transport's bookkeeping carried by one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    /// Deliveries before this one.
    pub(crate) redeliveries: u32,
    /// Due time of a delayed record (Unix milliseconds).
    pub(crate) not_before: Option<u64>,
}

impl Marks {
    /// Reads the marks; headers that do not parse (written by someone else) count as absent
    /// rather than failing the record.
    pub(crate) fn read(headers: Option<&BorrowedHeaders>) -> Self {
        let mut marks = Self::default();
        let Some(headers) = headers else {
            return marks;
        };
        for header in headers.iter() {
            let value = header.value.and_then(|v| std::str::from_utf8(v).ok());
            match header.key {
                REDELIVERIES => {
                    if let Some(n) = value.and_then(|v| v.parse().ok()) {
                        marks.redeliveries = n;
                    }
                }
                NOT_BEFORE => marks.not_before = value.and_then(|v| v.parse().ok()),
                _ => {}
            }
        }
        marks
    }

    fn headers(self) -> Option<OwnedHeaders> {
        if self == Self::default() {
            return None;
        }
        let mut headers = OwnedHeaders::new_with_capacity(2);
        if self.redeliveries > 0 {
            headers = headers.insert(Header {
                key: REDELIVERIES,
                value: Some(&self.redeliveries.to_string()),
            });
        }
        if let Some(due) = self.not_before {
            headers = headers.insert(Header {
                key: NOT_BEFORE,
                value: Some(&due.to_string()),
            });
        }
        Some(headers)
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The due time of something delayed by `delay` from now. Rounded up by a millisecond so
/// that truncating "now" to milliseconds can never make it due early.
pub(crate) fn due_in(delay: Duration) -> u64 {
    now_millis()
        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
        .saturating_add(1)
}

/// The idempotent producer shared by everything one transport publishes.
#[derive(Clone)]
pub(crate) struct Publisher {
    pub(crate) producer: FutureProducer,
    /// How long to wait for room in the producer's local queue.
    pub(crate) queue_timeout: Duration,
}

impl Publisher {
    /// Produces one record and waits for its delivery report (acks=all: every in-sync
    /// replica has it). `queue` names the queue in errors.
    pub(crate) async fn send(
        &self,
        queue: &str,
        topic: &str,
        body: &[u8],
        marks: Marks,
    ) -> Result<(), TransportError> {
        let mut record = FutureRecord::<(), [u8]>::to(topic).payload(body);
        if let Some(headers) = marks.headers() {
            record = record.headers(headers);
        }
        match self.producer.send(record, self.queue_timeout).await {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(produce_error(queue, topic, &error)),
        }
    }
}

fn produce_error(queue: &str, topic: &str, error: &KafkaError) -> TransportError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            TransportError::NoSuchQueue {
                queue: queue.to_owned(),
            }
        }
        Some(RDKafkaErrorCode::InvalidTopic) => TransportError::InvalidQueue {
            queue: queue.to_owned(),
            detail: format!("the broker refused topic {topic:?}: {error}"),
        },
        Some(RDKafkaErrorCode::MessageTimedOut) => TransportError::NotConfirmed {
            queue: queue.to_owned(),
            detail: format!(
                "no delivery report for topic {topic:?} within the publish timeout; is the broker reachable \
                 and are all in-sync replicas up? ({error})"
            ),
        },
        _ => TransportError::NotConfirmed {
            queue: queue.to_owned(),
            detail: format!("producing to topic {topic:?} failed: {error}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_through_headers() {
        let marks = Marks {
            redeliveries: 3,
            not_before: Some(1_700_000_000_123),
        };
        let headers = marks.headers().expect("headers");
        assert_eq!(Marks::read(Some(headers.as_borrowed())), marks);
        assert_eq!(Marks::default().headers().map(|h| h.count()), None);
        assert_eq!(Marks::read(None), Marks::default());
    }

    #[test]
    fn foreign_or_broken_headers_count_as_absent() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: REDELIVERIES,
                value: Some("many"),
            })
            .insert(Header {
                key: "traceparent",
                value: Some("00-abc"),
            })
            .insert(Header::<&str> {
                key: NOT_BEFORE,
                value: None,
            });
        assert_eq!(Marks::read(Some(headers.as_borrowed())), Marks::default());
    }

    #[test]
    fn due_time_is_never_early() {
        let before = now_millis();
        assert!(due_in(Duration::from_millis(1500)) > before + 1500);
    }
}
