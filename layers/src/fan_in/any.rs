//! The fan-in store a binary's `--store` names, one type for whichever was chosen.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use troupe_core::redact::Redacted;
use troupe_core::tls::TlsFiles;

use super::memory::MemoryFanInStore;
#[cfg(feature = "nats-kv")]
use super::nats_kv::NatsKvFanInStore;
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
    /// In a NATS KV bucket.
    #[cfg(feature = "nats-kv")]
    NatsKv(Arc<NatsKvFanInStore>),
}

impl AnyFanInStore {
    /// Connects the store `url` names (the same `--store` the idempotency records use), its
    /// keys prefixed `troupe:fanin:{scope}:` (Redis) or `fanin.{scope}.` (NATS KV), its rows
    /// in tables `troupe_fanin_*` keyed under `{scope}/` (PostgreSQL). `scope` is the
    /// aggregator's actor, so aggregators that share a store keep apart (letters, digits,
    /// `-` and `_`). A `nats-kv://BUCKET` without servers uses the local NATS: apply
    /// [`StoreUrl::with_nats_default`] first to use the broker's.
    pub async fn connect(url: &StoreUrl, tls: &TlsFiles, scope: &str) -> Result<Self, StoreError> {
        let _ = tls;
        if scope.is_empty()
            || !scope
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(StoreError::failed(
                "connect",
                format!("fan-in scope {scope:?} may hold only letters, digits, - and _"),
            ));
        }
        match url {
            StoreUrl::Memory => Ok(AnyFanInStore::Memory(Arc::default())),
            #[cfg(feature = "redis")]
            StoreUrl::Redis(url) => RedisFanInStore::connect(url, &format!("troupe:fanin:{scope}:"), tls)
                .await
                .map(AnyFanInStore::Redis),
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(url) => PostgresFanInStore::connect(url, "troupe_fanin", scope, tls)
                .await
                .map(AnyFanInStore::Postgres),
            #[cfg(feature = "nats-kv")]
            StoreUrl::NatsKv { servers, bucket } => NatsKvFanInStore::connect(
                StoreUrl::nats_servers(servers.as_deref()),
                bucket,
                &format!("fanin.{scope}."),
                tls,
            )
            .await
            .map(AnyFanInStore::NatsKv),
            #[allow(unreachable_patterns)] // Unreachable when every store is built in.
            other => Err(StoreError::failed(
                "connect",
                format!(
                    "fan-in keeps no aggregations on {}: use memory, redis://..., postgres://... or nats-kv://... (features `redis`, `postgres`, `nats-kv`)",
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
            #[cfg(feature = "nats-kv")]
            AnyFanInStore::NatsKv($store) => $call,
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
