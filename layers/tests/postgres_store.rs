//! The PostgreSQL idempotency store against a real server (`TROUPE_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Keys are namespaced per test and per run.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use troupe_layers::StoreUrl;
use troupe_layers::idempotency::{Claim, IdempotencyStore, PostgresStore, PostgresStoreConfig};

fn url() -> String {
    std::env::var("TROUPE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn store(test: &str) -> Arc<PostgresStore> {
    PostgresStore::connect(PostgresStoreConfig {
        url: url(),
        prefix: format!("troupe-test:{}:{test}:", std::process::id()),
        ttl: Duration::from_secs(60),
        ..PostgresStoreConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL must be running for these tests (bash .ci/run starts it): {e}"))
}

mod store_suite;

use store_suite::CLAIM_TTL;

store_suite!(store);

#[tokio::test]
async fn chosen_by_url_and_unreachable_is_unavailable_without_the_password() {
    let store: StoreUrl = url().parse().unwrap();
    assert!(matches!(store, StoreUrl::Postgres(_)));
    let any = store
        .connect("troupe-test:any:", Duration::from_secs(60), &Default::default())
        .await
        .unwrap();
    assert_eq!(
        any.claim(&format!("k{}", std::process::id()), CLAIM_TTL)
            .await
            .unwrap(),
        Claim::Acquired
    );

    // Nothing listens on port 9 (discard).
    store_suite::unreachable_is_unavailable_and_redacted("postgres://troupe:hunter2@127.0.0.1:9/troupe")
        .await;
}
