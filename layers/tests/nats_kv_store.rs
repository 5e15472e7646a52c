//! The NATS KV idempotency store against a real server (`TROUPE_NATS_URL`, default
//! `nats://127.0.0.1:4222`, with JetStream). Keys are namespaced per test and per run.
#![cfg(feature = "nats-kv")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use troupe_layers::StoreUrl;
use troupe_layers::idempotency::{Claim, IdempotencyStore, NatsKvStore, NatsKvStoreConfig};

fn url() -> String {
    std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

async fn store(test: &str) -> Arc<NatsKvStore> {
    NatsKvStore::connect(NatsKvStoreConfig {
        url: url(),
        bucket: "TROUPE_TEST_HOPS".to_owned(),
        prefix: format!("troupe-test:{}:{test}:", std::process::id()),
        ttl: Duration::from_secs(600),
        tls: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("NATS with JetStream must be running (bash .ci/run starts it): {e}"))
}

mod store_suite;

use store_suite::CLAIM_TTL;

store_suite!(store);

#[tokio::test]
async fn chosen_by_url_and_unreachable_is_unavailable_without_the_password() {
    let store: StoreUrl = "nats-kv://TROUPE_TEST_HOPS".parse().unwrap();
    let any = store
        .with_nats_default(&url())
        .connect("troupe-test:any:", Duration::from_secs(600), &Default::default())
        .await
        .unwrap();
    let hop = format!("k{}", std::process::id());
    assert_eq!(any.claim(&hop, CLAIM_TTL).await.unwrap(), Claim::Acquired);

    store_suite::unreachable_is_unavailable_and_redacted("nats-kv://troupe:hunter2@127.0.0.1:1/HOPS").await;
}
