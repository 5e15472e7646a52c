//! What every shared idempotency store must do, run against each real server by
//! `store_suite!(open)`, where `open(test)` connects a store whose keys are namespaced by
//! `test` and the run: two calls with the same name are two processes sharing records.
#![allow(dead_code)] // each test file uses the suite through the macro
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use troupe_core::{Envelope, Publication, Route};
use troupe_layers::idempotency::{Claim, IdempotencyStore};

pub const CLAIM_TTL: Duration = Duration::from_secs(30);

/// A store `url` (with the password `hunter2`) that nobody answers: connecting fails as
/// unavailable (the runner holds its work), and the password shows in neither the error
/// nor its `Debug`.
pub async fn unreachable_is_unavailable_and_redacted(url: &str) {
    let down: troupe_layers::StoreUrl = url.parse().unwrap();
    let err = down
        .connect("x:", Duration::from_secs(1), &Default::default())
        .await
        .unwrap_err();
    assert!(err.unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

/// Claim, record, publish, seen from another process; the hop key carries characters a
/// client's envelope id may hold.
pub async fn lifecycle<S: IdempotencyStore>(s: Arc<S>, other: Arc<S>) {
    let hop = "id with spaces/é/a.b:c/0/1/digest";
    assert_eq!(s.claim(hop, CLAIM_TTL).await.unwrap(), Claim::Acquired);
    assert_eq!(s.claim(hop, CLAIM_TTL).await.unwrap(), Claim::InProgress);
    assert_eq!(other.claim(hop, CLAIM_TTL).await.unwrap(), Claim::InProgress);
    let mut out = Envelope::new(
        Route::through(["b", "c"]),
        json!({"x": [1, 2], "s": "é", "f": 0.1}),
    );
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
    s.complete(hop, &outputs).await.unwrap();
    assert_eq!(
        other.claim(hop, CLAIM_TTL).await.unwrap(),
        Claim::Completed(outputs)
    );
    s.mark_published(hop).await.unwrap();
    assert_eq!(other.claim(hop, CLAIM_TTL).await.unwrap(), Claim::Published);
}

/// A claim excludes other processes until it lapses; a process never releases or records
/// over a claim that is not its own.
pub async fn exclusive_and_lapse<S: IdempotencyStore>(a: Arc<S>, b: Arc<S>) {
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
    let err = a.complete("k", &Arc::from([])).await.unwrap_err();
    assert!(
        err.to_string().contains("taken over") && !err.unavailable,
        "{err}"
    );
    a.release("k").await.unwrap();
    assert_eq!(
        a.claim("k", CLAIM_TTL).await.unwrap(),
        Claim::InProgress,
        "b's claim survives"
    );
    b.release("k").await.unwrap();
    assert_eq!(
        a.claim("k", CLAIM_TTL).await.unwrap(),
        Claim::Acquired,
        "released: free again"
    );
}

/// Two processes racing over the same hops acquire each exactly once.
pub async fn racing<S: IdempotencyStore>(a: Arc<S>, b: Arc<S>) {
    let keys = 300;
    let race = |s: Arc<S>| {
        tokio::spawn(async move {
            let mut won = 0;
            for k in 0..keys {
                if s.claim(&k.to_string(), CLAIM_TTL).await.unwrap() == Claim::Acquired {
                    won += 1;
                }
            }
            won
        })
    };
    let (a, b) = (race(a), race(b));
    assert_eq!(a.await.unwrap() + b.await.unwrap(), keys);
}

/// The suite's tests, on the stores `$open` connects.
#[macro_export]
macro_rules! store_suite {
    ($open:path) => {
        #[tokio::test]
        async fn hop_lifecycle_records_and_returns_outputs() {
            store_suite::lifecycle($open("lifecycle").await, $open("lifecycle").await).await;
        }

        #[tokio::test]
        async fn claims_are_exclusive_across_processes_and_lapse() {
            store_suite::exclusive_and_lapse($open("exclusive").await, $open("exclusive").await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn racing_processes_claim_each_hop_once() {
            store_suite::racing($open("race").await, $open("race").await).await;
        }
    };
}
