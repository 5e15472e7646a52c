//! Queue naming: actor `A` in namespace `N` reads queue `{prefix}-N-A` (protocol §3).

pub use crate::wire::{SINK, SUMP};

/// Longest actor name accepted; it keeps every broker's queue-name limit (SQS: 80) in reach
/// once prefix and namespace are added.
pub const MAX_ACTOR_NAME: usize = 63;

/// Why a name cannot become a queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("{what} name is empty")]
    Empty {
        /// What was being named (actor, namespace, prefix).
        what: &'static str,
    },
    /// Too long.
    #[error("{what} name {name:?} is {len} characters, over the limit of {MAX_ACTOR_NAME}")]
    TooLong {
        /// What was being named.
        what: &'static str,
        /// The name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// A character no broker accepts everywhere.
    #[error("{what} name {name:?} has {bad:?}; use ASCII letters, digits, '-', '_' or '.'")]
    BadChar {
        /// What was being named.
        what: &'static str,
        /// The name.
        name: String,
        /// The first offending character.
        bad: char,
    },
}

/// Checks that `name` can be part of a queue name on every supported broker.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_ACTOR_NAME {
        return Err(NameError::TooLong {
            what,
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NameError::BadChar {
            what,
            name: name.to_owned(),
            bad,
        });
    }
    Ok(())
}

/// Maps actor names to queue names.
///
/// ```
/// use troupe_core::QueueNaming;
/// let naming = QueueNaming::new("asya", "prod").unwrap();
/// assert_eq!(naming.queue_for("score").unwrap(), "asya-prod-score");
/// assert_eq!(naming.queue_for("x-sink").unwrap(), "asya-prod-x-sink");
/// assert!(naming.queue_for("bad name").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNaming {
    stem: String,
}

impl QueueNaming {
    /// Queues named `{prefix}-{namespace}-{actor}`.
    pub fn new(prefix: &str, namespace: &str) -> Result<Self, NameError> {
        validate_name("prefix", prefix)?;
        validate_name("namespace", namespace)?;
        Ok(Self {
            stem: format!("{prefix}-{namespace}-"),
        })
    }

    /// The queue of `actor`, or why that actor name cannot have one.
    pub fn queue_for(&self, actor: &str) -> Result<String, NameError> {
        validate_name("actor", actor)?;
        let mut q = String::with_capacity(self.stem.len() + actor.len());
        q.push_str(&self.stem);
        q.push_str(actor);
        Ok(q)
    }
}

impl Default for QueueNaming {
    /// Prefix `asya`, namespace `default`.
    fn default() -> Self {
        Self {
            stem: "asya-default-".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("actor", "model-v2.1_a").is_ok());
        assert_eq!(
            validate_name("actor", ""),
            Err(NameError::Empty { what: "actor" })
        );
        assert!(matches!(
            validate_name("actor", "a/b"),
            Err(NameError::BadChar { bad: '/', .. })
        ));
        assert!(matches!(
            validate_name("actor", &"a".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
        assert!(QueueNaming::new("", "x").is_err());
    }
}
