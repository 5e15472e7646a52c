//! The fan-in store a binary's `--store` names, one type for whichever was chosen.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use troupe_core::redact::Redacted;
use troupe_core::tls::TlsFiles;

use super::memory::MemoryFanInStore;
#[cfg(feature = "postgres")]
use super::postgres::PostgresFanInStore;
#[cfg(feature = "redis")]
use super::redis::RedisFanInStore;
use super::store::{Expired, FanInStore, Gathered, StoreError, StoredSlice};
use crate::StoreUrl;

/// One of the fan-in stores, chosen at run time. Cheap to clone.
#[derive(Clone)]
pub enum AnyFanInStore {
    /// In this process.
    Memory(Arc<MemoryFanInStore>),
    /// On Redis.
    #[cfg(feature = "redis")]
    Redis(Arc<RedisFanInStore>),
    /// On PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(Arc<PostgresFanInStore>),
}

impl AnyFanInStore {
    /// Connects the store `url` names (the same `--store` the idempotency records use),
    /// its keys or tables prefixed with `prefix` (`troupe:fanin:` / `troupe_fanin`).
    pub async fn connect(url: &StoreUrl, tls: &TlsFiles) -> Result<Self, StoreError> {
        let _ = tls;
        match url {
            StoreUrl::Memory => Ok(AnyFanInStore::Memory(Arc::default())),
            #[cfg(feature = "redis")]
            StoreUrl::Redis(url) => RedisFanInStore::connect(url, "troupe:fanin:", tls)
                .await
                .map(AnyFanInStore::Redis),
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(url) => PostgresFanInStore::connect(url, "troupe_fanin", tls)
                .await
                .map(AnyFanInStore::Postgres),
            other => Err(StoreError::failed(
                "connect",
                format!(
                    "fan-in keeps no aggregations on {}: use memory, redis://... or postgres://... (features `redis`, `postgres`)",
                    Redacted(&other.to_string())
                ),
            )),
        }
    }
}

macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyFanInStore::Memory($store) => $call,
            #[cfg(feature = "redis")]
            AnyFanInStore::Redis($store) => $call,
            #[cfg(feature = "postgres")]
            AnyFanInStore::Postgres($store) => $call,
        }
    };
}

impl FanInStore for AnyFanInStore {
    async fn gather(
        &self,
        origin: &str,
        slice_count: u32,
        slice: StoredSlice,
    ) -> Result<Gathered, StoreError> {
        each!(self, s => s.gather(origin, slice_count, slice).await)
    }

    async fn finish(&self, origin: &str, merged: Vec<u8>, retention: Duration) -> Result<(), StoreError> {
        each!(self, s => s.finish(origin, merged, retention).await)
    }

    async fn overdue(&self, opened_before: SystemTime, limit: usize) -> Result<Vec<String>, StoreError> {
        each!(self, s => s.overdue(opened_before, limit).await)
    }

    async fn expire(&self, origin: &str) -> Result<Option<Expired>, StoreError> {
        each!(self, s => s.expire(origin).await)
    }
}
