//! The fan-in stores against real servers: Redis (`TROUPE_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), PostgreSQL (`TROUPE_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and NATS KV (`TROUPE_NATS_URL`, default
//! `nats://127.0.0.1:4222`). Origins are named per run.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use troupe_layers::fan_in::MemoryFanInStore;
use troupe_layers::fan_in::store::conformance;

#[tokio::test]
async fn memory_keeps_the_contract_and_completes_once() {
    let store = Arc::new(MemoryFanInStore::default());
    conformance::run(&*store, "memory").await;
    conformance::races_complete_once(store.clone(), store, "memory", 50).await;
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use troupe_core::tls::TlsFiles;
    use troupe_layers::fan_in::RedisFanInStore;

    fn url() -> String {
        std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    async fn store() -> Arc<RedisFanInStore> {
        scoped("a").await
    }

    async fn scoped(scope: &str) -> Arc<RedisFanInStore> {
        let prefix = format!("troupe-test:fanin:{}:{scope}:", std::process::id());
        RedisFanInStore::connect(&url(), &prefix, &TlsFiles::default())
            .await
            .unwrap_or_else(|e| panic!("Redis must be running for these tests (bash .ci/run starts it): {e}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_contract_and_two_replicas_complete_once() {
        conformance::run(&*store().await, "redis").await;
        // Two connections: two replicas of one aggregator.
        conformance::races_complete_once(store().await, store().await, "redis", 200).await;
        conformance::scopes_keep_apart(&*scoped("a").await, &*scoped("b").await, "redis").await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use troupe_core::tls::TlsFiles;
    use troupe_layers::fan_in::PostgresFanInStore;

    fn url() -> String {
        std::env::var("TROUPE_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    async fn store() -> Arc<PostgresFanInStore> {
        scoped("a").await
    }

    async fn scoped(scope: &str) -> Arc<PostgresFanInStore> {
        PostgresFanInStore::connect(&url(), "troupe_fanin_test", scope, &TlsFiles::default())
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL must be running for these tests (bash .ci/run starts it): {e}")
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_contract_and_two_replicas_complete_once() {
        conformance::run(&*store().await, "postgres").await;
        conformance::races_complete_once(store().await, store().await, "postgres", 200).await;
        conformance::scopes_keep_apart(&*scoped("a").await, &*scoped("b").await, "postgres").await;
    }
}

#[cfg(feature = "nats-kv")]
mod nats_kv {
    use super::*;
    use troupe_core::tls::TlsFiles;
    use troupe_layers::fan_in::NatsKvFanInStore;

    fn url() -> String {
        std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
    }

    async fn store() -> Arc<NatsKvFanInStore> {
        scoped("a").await
    }

    async fn scoped(scope: &str) -> Arc<NatsKvFanInStore> {
        let prefix = format!("fanin-test-{}.{scope}", std::process::id());
        NatsKvFanInStore::connect(&url(), "troupe-test-fanin", &prefix, &TlsFiles::default())
            .await
            .unwrap_or_else(|e| {
                panic!("NATS with JetStream must be running for these tests (bash .ci/run starts it): {e}")
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_contract_and_two_replicas_complete_once() {
        conformance::run(&*store().await, "nats-kv").await;
        // Two connections: two replicas of one aggregator.
        conformance::races_complete_once(store().await, store().await, "nats-kv", 200).await;
        conformance::scopes_keep_apart(&*scoped("a").await, &*scoped("b").await, "nats-kv").await;
    }
}
