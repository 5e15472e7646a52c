//! Queue names, the topics and groups made from them, and the checks that keep them legal.
//!
//! Kafka topic names are 1 to 249 characters of `[a-zA-Z0-9._-]`, and `.` and `..` are
//! refused. Kafka also treats `.` and `_` as the same character when it names metrics, so a
//! broker refuses to create `a_b` while `a.b` exists. The transport keeps that from
//! surprising anyone:
//! - a queue's delay topic is `{topic}.troupe-delay`, so queue names ending in
//!   `.troupe-delay` or `_troupe-delay` are refused (they would be, or collide with, the
//!   delay topic of another queue);
//! - `ensure_queue` looks for an existing topic that differs from the queue's only in `.`
//!   versus `_` and refuses the queue with an error naming that topic, the same answer a
//!   real broker gives, on brokers that do not check (the mock cluster, some
//!   Kafka-compatible servers) as well;
//! - names starting with `__` are refused: Kafka's own topics (`__consumer_offsets`) use them.

use troupe_core::TransportError;

/// Suffix of the delay topic of a queue's topic.
pub(crate) use troupe_core::wire::DELAY_SUFFIX;
/// Suffix of the forwarder's consumer group.
pub(crate) const DELAY_GROUP_SUFFIX: &str = DELAY_SUFFIX;
/// Kafka's limit on topic names.
const MAX_TOPIC: usize = 249;

fn legal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The form Kafka compares for collisions.
pub(crate) fn collision_form(topic: &str) -> String {
    topic.replace('.', "_")
}

/// Whether two different topic names collide on a Kafka broker.
pub(crate) fn collide(a: &str, b: &str) -> bool {
    a != b && collision_form(a) == collision_form(b)
}

/// Checks the configured topic prefix (it becomes part of every topic name).
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if let Some(bad) = prefix.chars().find(|&c| !legal_char(c)) {
        return Err(format!(
            "topic prefix {prefix:?} has {bad:?}; Kafka topic names allow only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    if prefix.len() + 1 + DELAY_SUFFIX.len() > MAX_TOPIC {
        return Err(format!("topic prefix {prefix:?} leaves no room for queue names"));
    }
    Ok(())
}

/// Checks `queue` (under `prefix`, already checked) and returns why it is refused.
pub(crate) fn check_queue(prefix: &str, queue: &str) -> Result<(), TransportError> {
    let refuse = |detail: String| {
        Err(TransportError::InvalidQueue {
            queue: queue.to_owned(),
            detail,
        })
    };
    if queue.is_empty() {
        return refuse("it is empty".to_owned());
    }
    if let Some(bad) = queue.chars().find(|&c| !legal_char(c)) {
        return refuse(format!(
            "it has {bad:?}; Kafka topic names allow only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    let room = MAX_TOPIC - prefix.len() - DELAY_SUFFIX.len();
    if queue.len() > room {
        return refuse(format!(
            "it is {} characters; with the topic prefix {prefix:?} and the delay topic suffix \
             {DELAY_SUFFIX:?} at most {room} fit in Kafka's 249",
            queue.len()
        ));
    }
    let topic = topic(prefix, queue);
    if topic == "." || topic == ".." {
        return refuse("Kafka refuses the topic names '.' and '..'".to_owned());
    }
    if topic.starts_with("__") {
        return refuse("topic names starting with '__' are Kafka's own (__consumer_offsets)".to_owned());
    }
    if collision_form(queue).ends_with(&collision_form(DELAY_SUFFIX)) {
        return refuse(format!(
            "names ending in {DELAY_SUFFIX:?} (or with '_' for '.') are reserved for delay topics"
        ));
    }
    Ok(())
}

/// The topic of `queue`.
pub(crate) fn topic(prefix: &str, queue: &str) -> String {
    format!("{prefix}{queue}")
}

/// The delay topic of `queue`.
pub(crate) fn delay_topic(prefix: &str, queue: &str) -> String {
    format!("{prefix}{queue}{DELAY_SUFFIX}")
}

/// The consumer group of `queue`'s workers.
pub(crate) fn group(prefix: &str, queue: &str) -> String {
    format!("{prefix}{queue}")
}

/// The consumer group of `queue`'s delay forwarders.
pub(crate) fn delay_group(prefix: &str, queue: &str) -> String {
    format!("{prefix}{queue}{DELAY_GROUP_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(prefix: &str, queue: &str) -> String {
        match check_queue(prefix, queue) {
            Err(TransportError::InvalidQueue { queue: q, detail }) => {
                assert_eq!(q, queue);
                detail
            }
            other => panic!("{queue:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn mesh_queue_names_are_accepted() {
        for q in ["asya-prod-score", "asya-default-x-sink", "model-v2.1_a", "Q9"] {
            assert!(check_queue("", q).is_ok(), "{q}");
            assert!(check_queue("troupe.", q).is_ok(), "{q}");
        }
    }

    #[test]
    fn illegal_names_are_refused_with_the_reason() {
        assert!(refused("", "").contains("empty"));
        assert!(refused("", "no spaces\nor newlines").contains("' '"));
        assert!(refused("", "a/b").contains("'/'"));
        assert!(refused("", "ü").contains("ASCII"));
        assert!(refused("", ".").contains("'.'"));
        assert!(refused("", "__consumer_offsets").contains("Kafka's own"));
        assert!(refused("", "x.troupe-delay").contains("reserved"));
        assert!(refused("", "x_troupe-delay").contains("reserved"));
    }

    #[test]
    fn length_leaves_room_for_the_delay_topic() {
        let room = 249 - DELAY_SUFFIX.len() - "p-".len();
        assert!(check_queue("p-", &"a".repeat(room)).is_ok());
        assert!(refused("p-", &"a".repeat(room + 1)).contains("at most"));
        assert_eq!(delay_topic("p-", &"a".repeat(room)).len(), 249);
    }

    #[test]
    fn dots_and_underscores_collide() {
        assert!(collide("a.b", "a_b"));
        assert!(!collide("a.b", "a.b"));
        assert!(!collide("a-b", "a_b"));
        // No accepted queue's topic collides with another queue's delay topic.
        assert!(!collide(&topic("", "q-x"), &delay_topic("", "q")));
    }

    #[test]
    fn prefix_is_checked() {
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("troupe.").is_ok());
        assert!(check_prefix("a b").is_err());
    }

    #[test]
    fn derived_names() {
        assert_eq!(topic("t.", "q"), "t.q");
        assert_eq!(delay_topic("t.", "q"), "t.q.troupe-delay");
        assert_eq!(group("g-", "q"), "g-q");
        assert_eq!(delay_group("g-", "q"), "g-q.troupe-delay");
    }
}
