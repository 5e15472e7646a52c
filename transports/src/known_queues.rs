//! Which queues were recently seen to exist, so a transport that must check existence
//! before a publish (NATS, Kafka: their brokers would otherwise store a message nobody
//! reads, or create the queue) asks the broker once per queue per [`KNOWN_QUEUE_TTL`]
//! rather than on every publish.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a queue seen to exist is taken to exist without asking the broker again. A
/// queue deleted by an operator is noticed within this time.
pub const KNOWN_QUEUE_TTL: Duration = Duration::from_secs(30);

/// Queues seen to exist, and when.
#[derive(Debug, Default)]
#[allow(dead_code)] // unused when neither NATS nor Kafka is compiled in
pub(crate) struct KnownQueues {
    seen: Mutex<HashMap<String, Instant>>,
}

#[allow(dead_code)] // unused when neither NATS nor Kafka is compiled in
impl KnownQueues {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // Single inserts and look-ups: a poisoned map is still consistent.
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `queue` was seen to exist within the last [`KNOWN_QUEUE_TTL`].
    pub(crate) fn is_fresh(&self, queue: &str) -> bool {
        self.seen()
            .get(queue)
            .is_some_and(|at| at.elapsed() < KNOWN_QUEUE_TTL)
    }

    /// `queue` exists as of now.
    pub(crate) fn remember(&self, queue: &str) {
        self.seen().insert(queue.to_owned(), Instant::now());
    }

    /// `queue` was found missing.
    pub(crate) fn forget(&self, queue: &str) {
        self.seen().remove(queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_forgotten() {
        let known = KnownQueues::default();
        assert!(!known.is_fresh("q"));
        known.remember("q");
        assert!(known.is_fresh("q") && !known.is_fresh("other"));
        known.forget("q");
        assert!(!known.is_fresh("q"));
    }
}
