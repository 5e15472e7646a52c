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
    })
    .await
    .unwrap_or_else(|e| panic!("Redis must be running for these tests (bash .ci/run starts it): {e}"))
}

const CLAIM_TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn hop_lifecycle_records_and_returns_outputs() {
    let s = store("lifecycle").await;
    assert_eq!(s.claim("k", CLAIM_TTL).await.unwrap(), Claim::Acquired);
    assert_eq!(s.claim("k", CLAIM_TTL).await.unwrap(), Claim::InProgress);
    let mut out = Envelope::new(Route::through(["b", "c"]), json!({"x": [1, 2], "s": "é"}));
    out.headers.insert("traceparent".into(), "00-1-2-01".into());
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
    assert_eq!(s.claim("k", CLAIM_TTL).await.unwrap(), Claim::Completed(outputs));
    s.mark_published("k").await.unwrap();
    assert_eq!(s.claim("k", CLAIM_TTL).await.unwrap(), Claim::Published);
}

#[tokio::test]
async fn a_process_never_releases_another_ones_claim() {
    let a = store("release").await;
    let b = store("release").await; // same keys, another "process"
    assert_eq!(a.claim("k", CLAIM_TTL).await.unwrap(), Claim::Acquired);
    b.release("k").await.unwrap(); // b holds nothing: a no-op
    assert_eq!(b.claim("k", CLAIM_TTL).await.unwrap(), Claim::InProgress);
    a.release("k").await.unwrap();
    assert_eq!(b.claim("k", CLAIM_TTL).await.unwrap(), Claim::Acquired);
}

#[tokio::test]
async fn a_lapsed_claim_cannot_record_over_its_successor() {
    let slow = store("lapse").await;
    let fast = store("lapse").await;
    assert_eq!(
        slow.claim("k", Duration::from_millis(200)).await.unwrap(),
        Claim::Acquired
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fast.claim("k", CLAIM_TTL).await.unwrap(), Claim::Acquired);
    let err = slow.complete("k", &Arc::from([])).await.unwrap_err();
    assert!(err.to_string().contains("lapsed"), "{err}");
    slow.release("k").await.unwrap();
    assert_eq!(
        slow.claim("k", CLAIM_TTL).await.unwrap(),
        Claim::InProgress,
        "fast's claim survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_processes_claim_each_hop_once() {
    let keys = 300;
    let racers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                let s = store("race").await;
                let mut won = 0;
                for k in 0..keys {
                    if s.claim(&k.to_string(), CLAIM_TTL).await.unwrap() == Claim::Acquired {
                        won += 1;
                    }
                }
                won
            })
        })
        .collect();
    let mut total = 0;
    for r in racers {
        total += r.await.unwrap();
    }
    assert_eq!(total, keys);
}

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
