//! Wire names: the one place that spells every name the mesh puts on a broker, so every
//! transport writes and reads the same bytes.
//!
//! Two kinds of names live here:
//! - the protocol's terminal actors ([`SINK`], [`SUMP`]), which Asya defines;
//! - transport bookkeeping carried beside a message body (broker message headers or
//!   attributes) and the suffix of the queues that hold delayed messages. These are
//!   Troupe's own, read only by Troupe transports. They are lower-case ASCII with `-`, which
//!   every broker accepts as a header or attribute name and compares byte for byte (Kafka
//!   and NATS headers and SQS attribute names are case-sensitive).
//!
//! Envelope headers (inside the JSON body) are protocol names and live in
//! [`headers`](crate::headers).

/// Terminal actor for finished and failed pipelines.
pub const SINK: &str = "x-sink";
/// Last-resort actor for what cannot be processed at all.
pub const SUMP: &str = "x-sump";
/// Troupe's own pseudo-actor whose queue carries task events (see
/// [`event`](crate::event)) from every runner to the gateway. It exists only where a
/// gateway created it; runners publish nothing to it otherwise.
pub const EVENTS: &str = "x-troupe-events";

/// Message header: the Unix time in milliseconds before which a delayed message must not be
/// delivered.
pub const NOT_BEFORE: &str = "troupe-not-before";
/// Message header on a delayed message: where it is due (a NATS subject).
pub const TARGET: &str = "troupe-target";
/// Message header: redeliveries counted by the transport itself, for brokers whose own
/// count restarts when a message is republished (a nack with delay, a lease copy).
pub const REDELIVERIES: &str = "troupe-redeliveries";
/// Message attribute: how a body that is not valid UTF-8 was encoded (SQS bodies are text).
pub const ENCODING: &str = "troupe-encoding";
/// Suffix of the queue or topic that holds a queue's delayed messages.
pub const DELAY_SUFFIX: &str = ".troupe-delay";

/// Earlier spellings of the bookkeeping names (NATS and SQS wrote `Troupe-Not-Before`,
/// `Troupe-Target` and `Troupe-Encoding`; RabbitMQ `x-troupe-redeliveries`). Messages written
/// before the names were unified can still be waiting in a broker (a delayed retry, a long
/// SQS delay, a base64 body) when a new release starts, so readers accept both.
const EARLIER: [(&str, &str); 4] = [
    (NOT_BEFORE, "Troupe-Not-Before"),
    (TARGET, "Troupe-Target"),
    (ENCODING, "Troupe-Encoding"),
    (REDELIVERIES, "x-troupe-redeliveries"),
];

/// Every spelling a reader accepts for bookkeeping name `name`: the current one first.
///
/// ```
/// use troupe_core::wire::{NOT_BEFORE, spellings};
/// assert_eq!(spellings(NOT_BEFORE).collect::<Vec<_>>(), ["troupe-not-before", "Troupe-Not-Before"]);
/// ```
pub fn spellings(name: &'static str) -> impl Iterator<Item = &'static str> {
    std::iter::once(name).chain(
        EARLIER
            .iter()
            .filter(move |(current, _)| *current == name)
            .map(|(_, earlier)| *earlier),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_names_are_lower_case_ascii_that_every_broker_takes() {
        for name in [NOT_BEFORE, TARGET, REDELIVERIES, ENCODING] {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name:?}"
            );
        }
    }
}
