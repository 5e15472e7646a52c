//! Why a state operation did not happen.

use crate::idempotency::StoreError;

/// A state operation that did not happen: nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The key is empty, too long or holds a control character.
    #[error("state key {key:?} is invalid: {why}")]
    InvalidKey {
        /// The key (cut to 80 characters).
        key: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The value is over the store's size limit.
    #[error("state value for {key:?} is {size} bytes, over the limit of {max} bytes (--state-max-value)")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A new key would take the actor's state past its key limit.
    #[error(
        "state for this actor holds {max} keys, its limit (--state-max-keys): delete some before adding {key:?}"
    )]
    TooManyKeys {
        /// The key that was to be added.
        key: String,
        /// The limit.
        max: usize,
    },
    /// The store did not answer, or answered wrongly.
    #[error("state {0}")]
    Store(#[from] StoreError),
}

impl StateError {
    /// Whether the store did not answer (worth waiting for) rather than refusing.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StateError::Store(e) if e.unavailable)
    }
}
