//! The handler state stores against real servers: Redis (`TROUPE_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), PostgreSQL (`TROUPE_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and NATS KV (`TROUPE_NATS_URL`, default
//! `nats://127.0.0.1:4222`). Each run keeps its state under an actor of
//! its own.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use troupe_layers::state::StateLimits;
use troupe_layers::state::store::conformance;

fn limits() -> StateLimits {
    StateLimits {
        max_value_bytes: conformance::MAX_VALUE,
        max_keys: conformance::MAX_KEYS,
    }
}

fn actor() -> String {
    format!("counter-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(feature = "redis")]
mod redis {
    use std::sync::Arc;

    use super::*;
    use troupe_core::tls::TlsFiles;
    use troupe_layers::state::RedisStateStore;

    async fn store(actor: &str) -> Arc<RedisStateStore> {
        let url = std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        RedisStateStore::connect(&url, "troupe-test:state:", actor, limits(), &TlsFiles::default())
            .await
            .unwrap_or_else(|e| panic!("Redis must be running for these tests (bash .ci/run starts it): {e}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_contract_and_counts_exactly() {
        conformance::run(&*store(&actor()).await).await;
        let actor = actor();
        conformance::counts_exactly(store(&actor).await, store(&actor).await, 300).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use super::*;
    use troupe_core::tls::TlsFiles;
    use troupe_layers::state::PostgresStateStore;

    async fn store(actor: &str) -> Arc<PostgresStateStore> {
        let url = std::env::var("TROUPE_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        PostgresStateStore::connect(&url, "troupe_test", actor, limits(), &TlsFiles::default())
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL must be running for these tests (bash .ci/run starts it): {e}")
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_contract_and_counts_exactly() {
        conformance::run(&*store(&actor()).await).await;
        let actor = actor();
        conformance::counts_exactly(store(&actor).await, store(&actor).await, 300).await;
    }
}

#[cfg(feature = "nats-kv")]
mod nats_kv {
    use std::sync::Arc;

    use super::*;
    use troupe_core::tls::TlsFiles;
    use troupe_layers::state::NatsKvStateStore;

    async fn store(actor: &str) -> Arc<NatsKvStateStore> {
        let url = std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        NatsKvStateStore::connect(
            &url,
            "troupe-test-state",
            "state",
            actor,
            limits(),
            &TlsFiles::default(),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("NATS with JetStream must be running for these tests (bash .ci/run starts it): {e}")
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_contract_and_counts_exactly() {
        conformance::run(&*store(&actor()).await).await;
        let actor = actor();
        conformance::counts_exactly(store(&actor).await, store(&actor).await, 300).await;
    }
}
