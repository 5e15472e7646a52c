//! The Redis idempotency store against a real server (`TROUPE_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Keys are namespaced per test and per run.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use troupe_core::{Envelope, Publication, Route};
use troupe_layers::idempotency::{Claim, IdempotencyStore, RedisStore, RedisStoreConfig};

async fn store(test: &str) -> Arc<RedisStore> {
    let url = std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    RedisStore::connect(RedisStoreConfig {
        url,
        prefix: format!("troupe-test:{}:{test}:", std::process::id()),
        ttl: Duration::from_secs(60),
        ..RedisStoreConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("Redis must be running for these tests (bash .ci/run starts it): {e}"))
}

mod store_suite;

use store_suite::CLAIM_TTL;

store_suite!(store);

/// A Redis that restarts without persistence forgets every claim: the worker that claimed
/// before the restart still records its outputs (nobody else holds the hop), rather than
/// failing the hop after it ran.
#[tokio::test]
async fn a_claim_lost_with_the_servers_data_still_records() {
    let s = store("lost").await;
    assert_eq!(s.claim("k", CLAIM_TTL).await.unwrap(), Claim::Acquired);
    // What a restart without persistence does to the claim.
    let url = std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("troupe-test:{}:lost:k", std::process::id());
    let deleted: i64 = redis::cmd("DEL").arg(&key).query_async(&mut raw).await.unwrap();
    assert_eq!(deleted, 1);
    let outputs: Arc<[Publication]> = vec![Publication::to(
        "b",
        Envelope::new(Route::through(["b"]), json!(1)),
    )]
    .into();
    s.complete("k", &outputs).await.unwrap();
    assert_eq!(s.claim("k", CLAIM_TTL).await.unwrap(), Claim::Completed(outputs));
}
