//! The NATS KV idempotency store against a real server (`TROUPE_NATS_URL`, default
//! `nats://127.0.0.1:4222`, with JetStream). Keys are namespaced per test and per run.
#![cfg(feature = "nats-kv")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use troupe_core::{Envelope, Publication, Route};
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
    })
    .await
    .unwrap_or_else(|e| panic!("NATS with JetStream must be running (bash .ci/run starts it): {e}"))
}

const CLAIM_TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn hop_lifecycle_records_and_returns_outputs() {
    let s = store("lifecycle").await;
    // A hop key carries a client's envelope id: any characters.
    let hop = "id with spaces/é/a.b/0/1/digest";
    assert_eq!(s.claim(hop, CLAIM_TTL).await.unwrap(), Claim::Acquired);
    assert_eq!(s.claim(hop, CLAIM_TTL).await.unwrap(), Claim::InProgress);
    let out = Envelope::new(Route::through(["b", "c"]), json!({"x": [1, 2], "f": 0.1}));
    let outputs: Arc<[Publication]> = vec![
        Publication::to("b", out.clone()),
        Publication {
            actor: "a".into(),
            envelope: out,
            delay: Some(Duration::from_millis(1500)),
        },
    ]
    .into();
    s.complete(hop, &outputs).await.unwrap();
    let other = store("lifecycle").await;
    assert_eq!(
        other.claim(hop, CLAIM_TTL).await.unwrap(),
        Claim::Completed(outputs)
    );
    s.mark_published(hop).await.unwrap();
    assert_eq!(other.claim(hop, CLAIM_TTL).await.unwrap(), Claim::Published);
}

#[tokio::test]
async fn claims_are_exclusive_across_processes_and_lapse() {
    let a = store("exclusive").await;
    let b = store("exclusive").await;
    assert_eq!(
        a.claim("k", Duration::from_millis(300)).await.unwrap(),
        Claim::Acquired
    );
    b.release("k").await.unwrap(); // b holds nothing: a no-op
    assert_eq!(b.claim("k", CLAIM_TTL).await.unwrap(), Claim::InProgress);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        b.claim("k", CLAIM_TTL).await.unwrap(),
        Claim::Acquired,
        "a lapsed claim is taken over"
    );
    let outputs: Arc<[Publication]> = Vec::new().into();
    let err = a.complete("k", &outputs).await.unwrap_err();
    assert!(
        err.to_string().contains("taken over") && !err.unavailable,
        "{err}"
    );
    b.release("k").await.unwrap();
    assert_eq!(
        a.claim("k", CLAIM_TTL).await.unwrap(),
        Claim::Acquired,
        "released: free again"
    );
}

#[tokio::test]
async fn chosen_by_url_and_unreachable_is_unavailable_without_the_password() {
    let store: StoreUrl = "nats-kv://TROUPE_TEST_HOPS".parse().unwrap();
    let any = store
        .with_nats_default(&url())
        .connect("troupe-test:any:", Duration::from_secs(600))
        .await
        .unwrap();
    let hop = format!("k{}", std::process::id());
    assert_eq!(any.claim(&hop, CLAIM_TTL).await.unwrap(), Claim::Acquired);

    let down: StoreUrl = "nats-kv://troupe:hunter2@127.0.0.1:1/HOPS".parse().unwrap();
    let err = down.connect("x:", Duration::from_secs(1)).await.unwrap_err();
    assert!(err.unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}
