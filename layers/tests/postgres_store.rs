//! The PostgreSQL idempotency store against a real server (`TROUPE_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Keys are namespaced per test and per run.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use troupe_core::{Envelope, Publication, Route};
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

const CLAIM_TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn hop_lifecycle_records_and_returns_outputs() {
    let s = store("lifecycle").await;
    assert_eq!(s.claim("k", CLAIM_TTL).await.unwrap(), Claim::Acquired);
    assert_eq!(s.claim("k", CLAIM_TTL).await.unwrap(), Claim::InProgress);
    let out = Envelope::new(
        Route::through(["b", "c"]),
        json!({"x": [1, 2], "s": "é", "f": 0.1}),
    );
    let outputs: Arc<[Publication]> = vec![
        Publication::to("b", out.clone()),
        Publication {
            actor: "a".into(),
            envelope: out,
            delay: Some(Duration::from_millis(1500)),
        },
    ]
    .into();
    s.complete("k", &outputs).await.unwrap();
    // Another process (another store on the same table) sees the record.
    let other = store("lifecycle").await;
    assert_eq!(
        other.claim("k", CLAIM_TTL).await.unwrap(),
        Claim::Completed(outputs)
    );
    s.mark_published("k").await.unwrap();
    assert_eq!(other.claim("k", CLAIM_TTL).await.unwrap(), Claim::Published);
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
    // The lapsed owner cannot record over its successor.
    let outputs: Arc<[Publication]> = Vec::new().into();
    let err = a.complete("k", &outputs).await.unwrap_err();
    assert!(
        err.to_string().contains("taken over") && !err.unavailable,
        "{err}"
    );
    b.release("k").await.unwrap();
    assert_eq!(a.claim("k", CLAIM_TTL).await.unwrap(), Claim::Acquired);
}

#[tokio::test]
async fn chosen_by_url_and_unreachable_is_unavailable_without_the_password() {
    let store: StoreUrl = url().parse().unwrap();
    assert!(matches!(store, StoreUrl::Postgres(_)));
    let any = store
        .connect("troupe-test:any:", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        any.claim(&format!("k{}", std::process::id()), CLAIM_TTL)
            .await
            .unwrap(),
        Claim::Acquired
    );

    // Nothing listens on port 9 (discard); the password must not leak into the error.
    let down: StoreUrl = "postgres://troupe:hunter2@127.0.0.1:9/troupe".parse().unwrap();
    let err = down.connect("x:", Duration::from_secs(1)).await.unwrap_err();
    assert!(err.unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}
