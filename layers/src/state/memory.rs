//! State in this process: for single-process meshes and tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::store::{Expect, StateError, StateStore, Swapped, Versioned};
use super::{StateLimits, check_write};

/// A [`StateStore`] in memory: lost with the process and not shared by replicas.
pub struct MemoryStateStore {
    limits: StateLimits,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    values: BTreeMap<String, Versioned>,
    /// The last version handed out.
    last: u64,
}

impl MemoryStateStore {
    /// An empty store with these limits.
    pub fn new(limits: StateLimits) -> Self {
        Self {
            limits,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change is one insert or remove: a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn write(
        &mut self,
        limits: &StateLimits,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<Option<u64>, StateError> {
        let Some(value) = value else {
            self.values.remove(key);
            return Ok(None);
        };
        if !self.values.contains_key(key) && self.values.len() >= limits.max_keys {
            return Err(limits.too_many(key));
        }
        self.last += 1;
        let version = self.last;
        self.values.insert(key.to_owned(), Versioned { value, version });
        Ok(Some(version))
    }
}

impl StateStore for MemoryStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        Ok(self.inner().values.get(key).cloned())
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StateError> {
        check_write(&self.limits, key, Some(&value))?;
        let written = self.inner().write(&self.limits, key, Some(value))?;
        Ok(written.unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        Ok(self.inner().values.remove(key).is_some())
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StateError> {
        Ok(self
            .inner()
            .values
            .range(prefix.to_owned()..)
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> Result<Swapped, StateError> {
        check_write(&self.limits, key, value.as_deref())?;
        let mut inner = self.inner();
        let current = inner.values.get(key);
        let matches = match (expect, current) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some(now)) => now.version == v,
            _ => false,
        };
        if !matches {
            return Ok(Swapped::Conflict(current.cloned()));
        }
        inner.write(&self.limits, key, value).map(Swapped::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::store::conformance;

    fn limited() -> MemoryStateStore {
        MemoryStateStore::new(StateLimits {
            max_value_bytes: conformance::MAX_VALUE,
            max_keys: conformance::MAX_KEYS,
        })
    }

    #[tokio::test]
    async fn keeps_the_contract() {
        conformance::run(&limited()).await;
        let shared = Arc::new(limited());
        conformance::counts_exactly(shared.clone(), shared, 500).await;
    }
}
