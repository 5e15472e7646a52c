//! The state store a binary's `--store` names, one type for whichever was chosen.

use std::sync::Arc;

use troupe_core::redact::Redacted;
use troupe_core::tls::TlsFiles;

use super::StateLimits;
use super::memory::MemoryStateStore;
#[cfg(feature = "nats-kv")]
use super::nats_kv::NatsKvStateStore;
#[cfg(feature = "postgres")]
use super::postgres::PostgresStateStore;
#[cfg(feature = "redis")]
use super::redis::RedisStateStore;
use super::store::{Expect, StateError, StateStore, Swapped, Versioned};
use crate::StoreUrl;
use crate::idempotency::StoreError;

/// One of the state stores, chosen at run time. Cheap to clone.
#[derive(Clone)]
pub enum AnyStateStore {
    /// In this process.
    Memory(Arc<MemoryStateStore>),
    /// On Redis.
    #[cfg(feature = "redis")]
    Redis(Arc<RedisStateStore>),
    /// On PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(Arc<PostgresStateStore>),
    /// In a NATS KV bucket.
    #[cfg(feature = "nats-kv")]
    NatsKv(Arc<NatsKvStateStore>),
}

impl AnyStateStore {
    /// Opens `actor`'s state in the store `url` names (the `--store` of the actor host):
    /// Redis keys `troupe:state:{actor}:*`, PostgreSQL table `troupe_state`, NATS KV bucket
    /// `{BUCKET}-state` (kept apart from the hop records' bucket, whose keys expire; state
    /// does not). A `nats-kv://BUCKET` without servers uses the local NATS: apply
    /// [`StoreUrl::with_nats_default`] first to use the broker's.
    pub async fn connect(
        url: &StoreUrl,
        actor: &str,
        limits: StateLimits,
        tls: &TlsFiles,
    ) -> Result<Self, StateError> {
        // Only the shared stores scope their keys and speak TLS.
        let _ = (actor, tls);
        match url {
            StoreUrl::Memory => Ok(AnyStateStore::Memory(Arc::new(MemoryStateStore::new(limits)))),
            #[cfg(feature = "redis")]
            StoreUrl::Redis(url) => RedisStateStore::connect(url, "troupe:state:", actor, limits, tls)
                .await
                .map(AnyStateStore::Redis),
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(url) => PostgresStateStore::connect(url, "troupe", actor, limits, tls)
                .await
                .map(AnyStateStore::Postgres),
            #[cfg(feature = "nats-kv")]
            StoreUrl::NatsKv { servers, bucket } => NatsKvStateStore::connect(
                StoreUrl::nats_servers(servers.as_deref()),
                &format!("{bucket}-state"),
                "state",
                actor,
                limits,
                tls,
            )
            .await
            .map(AnyStateStore::NatsKv),
            #[allow(unreachable_patterns)] // Unreachable when every store is built in.
            other => Err(StoreError::failed(
                "connect",
                format!(
                    "handler state is not kept on {}: use memory, redis://..., postgres://... or nats-kv://... (features `redis`, `postgres`, `nats-kv`)",
                    Redacted(&other.to_string())
                ),
            )
            .into()),
        }
    }
}

macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStateStore::Memory($store) => $call,
            #[cfg(feature = "redis")]
            AnyStateStore::Redis($store) => $call,
            #[cfg(feature = "postgres")]
            AnyStateStore::Postgres($store) => $call,
            #[cfg(feature = "nats-kv")]
            AnyStateStore::NatsKv($store) => $call,
        }
    };
}

impl StateStore for AnyStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        each!(self, s => s.get(key).await)
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StateError> {
        each!(self, s => s.put(key, value).await)
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        each!(self, s => s.delete(key).await)
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StateError> {
        each!(self, s => s.list(prefix, limit).await)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> Result<Swapped, StateError> {
        each!(self, s => s.compare_and_set(key, expect, value).await)
    }
}
