//! Handler state: keyed values that survive restarts and are shared by every replica of an
//! actor, on the stores the actor host already uses (memory, Redis, PostgreSQL, NATS KV).
//!
//! A store is opened for one actor (its scope): actors sharing a server never see each
//! other's keys. Every value carries a version, and [`StateStore::compare_and_set`] writes
//! only over the version read, so replicas updating one key (a counter, a running total)
//! lose no update:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use troupe_layers::state::{Expect, MemoryStateStore, StateLimits, StateStore, Swapped};
//!
//! let store = MemoryStateStore::new(StateLimits::default());
//! let mut seen = store.get("words/hello").await.unwrap();
//! loop {
//!     let (expect, count) = match &seen {
//!         None => (Expect::Absent, 0),
//!         Some(v) => (Expect::Version(v.version), String::from_utf8_lossy(&v.value).parse().unwrap()),
//!     };
//!     let next = (count + 1u64).to_string().into_bytes();
//!     match store.compare_and_set("words/hello", expect, Some(next)).await.unwrap() {
//!         Swapped::Done(_) => break,
//!         Swapped::Conflict(now) => seen = now, // another replica wrote first: again
//!     }
//! }
//! assert_eq!(store.get("words/hello").await.unwrap().unwrap().value, b"1");
//! # });
//! ```
//!
//! Limits ([`StateLimits`]) are checked before anything is written, and a write past them
//! is refused with an error that names the limit ([`StateError::ValueTooLarge`],
//! [`StateError::TooManyKeys`]); nothing is ever cut short. The key count is checked when
//! a key is added, atomically with the write on Redis and in memory; on PostgreSQL and NATS
//! KV two replicas adding keys at the same moment can pass the limit by one each.

mod any;
mod error;
mod memory;
#[cfg(feature = "nats-kv")]
mod nats_kv;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
pub mod store;

pub use any::AnyStateStore;
pub use error::StateError;
pub use memory::MemoryStateStore;
#[cfg(feature = "nats-kv")]
pub use nats_kv::NatsKvStateStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStateStore;
#[cfg(feature = "redis")]
pub use redis::RedisStateStore;
pub use store::{Expect, StateStore, Swapped, Versioned};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// What one actor's state may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// The largest value, in bytes (1 MiB by default).
    pub max_value_bytes: usize,
    /// The most keys (100,000 by default).
    pub max_keys: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            max_value_bytes: 1 << 20,
            max_keys: 100_000,
        }
    }
}

impl StateLimits {
    /// Refuses a value over the size limit.
    pub fn check_value(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        if value.len() > self.max_value_bytes {
            return Err(StateError::ValueTooLarge {
                key: shown(key),
                size: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// The error for a key that would pass the key limit.
    pub fn too_many(&self, key: &str) -> StateError {
        StateError::TooManyKeys {
            key: shown(key),
            max: self.max_keys,
        }
    }
}

/// Refuses a key that is empty, longer than [`MAX_KEY_BYTES`] or holds a control
/// character (keys are file-like paths: `models/v2/weights.bin`).
pub fn check_key(key: &str) -> Result<(), StateError> {
    let why = if key.is_empty() {
        "it is empty"
    } else if key.len() > MAX_KEY_BYTES {
        "it is longer than 512 bytes"
    } else if key.chars().any(char::is_control) {
        "it holds a control character"
    } else {
        return Ok(());
    };
    Err(StateError::InvalidKey { key: shown(key), why })
}

fn shown(key: &str) -> String {
    key.chars().take(80).collect()
}

/// Checks a write's key and value (`None`: a delete) against `limits`.
pub(crate) fn check_write(limits: &StateLimits, key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
    check_key(key)?;
    match value {
        Some(value) => limits.check_value(key, value),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("models/v2/weights.bin").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a\nb").is_err());
        assert!(check_key(&"k".repeat(513)).is_err());
        let error = StateLimits::default()
            .check_value("k", &vec![0; (1 << 20) + 1])
            .unwrap_err();
        assert!(
            error.to_string().contains("over the limit of 1048576 bytes"),
            "{error}"
        );
    }
}
