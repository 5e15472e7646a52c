//! Fan-out and fan-in through runners on the memory broker: documents split into chunks,
//! each chunk worked on, the chunks rejoined into one merge per document by the
//! aggregator, failed chunks reported to it, incomplete documents timed out.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::Mesh;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use troupe::core::fan_in::mark_for_rejoin;
use troupe::core::headers::FAN_IN_MISSING;
use troupe::layers::fan_in::{
    Aggregator, AggregatorConfig, FAN_IN_FAILED, FAN_IN_TIMEOUT, MemoryFanInStore, OnTimeout, sweep,
};
use troupe::layers::{RetryPolicies, RetryPolicy};
use troupe::{CancellationToken, Envelope, HandlerError, Outcome, Phase, Route, SINK, SUMP, handler_fn};

fn quick_retries(max_attempts: u32) -> RetryPolicies {
    RetryPolicies::new(RetryPolicy::constant(max_attempts, Duration::from_millis(10)))
}

/// Splits `{"chunks": n}` into chunks 0..n, marked for rejoin at `join`; with `lose`, the
/// last chunk is never sent (a crashed splitter), so its document cannot complete.
fn splitter(
    lose: bool,
) -> impl tower::Service<Envelope, Response = Outcome, Error = HandlerError, Future: Send + 'static> + Clone + Send
{
    handler_fn(move |doc: Envelope| async move {
        let n = doc.payload["chunks"].as_u64().unwrap_or(1) as usize;
        let mut chunks: Vec<Envelope> = (0..n)
            .map(|i| {
                let mut chunk = doc.clone();
                chunk.payload = json!(i).into();
                chunk
            })
            .collect();
        mark_for_rejoin(&doc, "join", &mut chunks);
        if lose {
            chunks.pop();
        }
        Ok(Outcome::Forward(chunks))
    })
}

/// Squares each chunk; a chunk of 13 fails for good.
fn worker()
-> impl tower::Service<Envelope, Response = Outcome, Error = HandlerError, Future: Send + 'static> + Clone + Send
{
    handler_fn(|mut chunk: Envelope| async move {
        let n = chunk.payload.as_u64().unwrap_or(0);
        if n == 13 {
            return Err(HandlerError::new("ValueError", "13 is unlucky"));
        }
        chunk.payload = json!(n * n).into();
        Ok(Outcome::forward(chunk))
    })
}

fn doc(chunks: usize) -> Envelope {
    Envelope::new(
        Route::through(["split", "square", "join", "tally"]),
        json!({"chunks": chunks}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_document_is_merged_once_in_order_and_failed_chunks_fail_their_document() {
    let mut mesh = Mesh::new();
    let store = Arc::new(MemoryFanInStore::default());
    mesh.spawn("split", quick_retries(1), splitter(false));
    mesh.spawn("square", quick_retries(2), worker());
    mesh.spawn(
        "join",
        quick_retries(1),
        Aggregator::new(AggregatorConfig::new("join"), store.clone()),
    );
    mesh.spawn(
        "tally",
        quick_retries(1),
        handler_fn(|e: Envelope| async move { Ok(Outcome::forward(e)) }),
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let docs: Vec<(Envelope, usize)> = (0..60)
        .map(|_| {
            let n = rng.random_range(1..=30);
            (doc(n), n)
        })
        .collect();
    for (d, _) in &docs {
        mesh.send(d).await;
    }
    let failing: HashMap<&str, usize> = docs
        .iter()
        .filter(|(_, n)| *n > 13)
        .map(|(d, n)| (d.id.as_str(), *n))
        .collect();
    // x-sink gets each merge, and each failed chunk (retries used up).
    let (failed_chunks, merged): (Vec<Envelope>, Vec<Envelope>) = mesh
        .collect(SINK, docs.len())
        .await
        .into_iter()
        .partition(|e| e.status.as_ref().unwrap().phase == Some(Phase::Failed));
    assert_eq!(failed_chunks.len(), failing.len());
    assert!(failed_chunks.iter().all(|c| c.payload == json!(13)));
    for m in &merged {
        let (_, n) = docs
            .iter()
            .find(|(d, _)| d.id == m.id)
            .expect("a merge carries its document's id");
        let squares: Vec<Value> = (0..*n as u64).map(|i| json!(i * i)).collect();
        assert_eq!(m.payload, Value::Array(squares), "document {}", m.id);
        assert_eq!(m.status.as_ref().unwrap().phase, Some(Phase::Succeeded));
        assert!(!failing.contains_key(m.id.as_str()));
    }
    let mut ids: Vec<&str> = merged.iter().map(|m| m.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), merged.len(), "one merge per document");

    // A document with a failed chunk goes to x-sump, naming it.
    let sumped = mesh.collect(SUMP, failing.len()).await;
    for s in &sumped {
        assert!(failing.contains_key(s.id.as_str()), "{}", s.id);
        let error = s.status.as_ref().unwrap().error.as_ref().unwrap();
        assert_eq!(error.type_name, FAN_IN_FAILED);
        assert_eq!(s.payload["failed_slices"][0]["index"], 13);
        assert_eq!(s.payload["failed_slices"][0]["error"]["message"], "13 is unlucky");
    }
    mesh.assert_quiet(SINK, Duration::from_millis(300)).await;
    mesh.assert_quiet(SUMP, Duration::from_millis(10)).await;
    assert_eq!(store.open_origins(), 0, "only open aggregations are kept");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_document_times_out_failed_or_partial() {
    for on_timeout in [OnTimeout::Fail, OnTimeout::Partial] {
        let mut mesh = Mesh::new();
        let store = Arc::new(MemoryFanInStore::default());
        let config = AggregatorConfig {
            timeout: Duration::from_millis(300),
            on_timeout,
            ..AggregatorConfig::new("join")
        };
        let join = Aggregator::new(config, store.clone());
        mesh.spawn("split", quick_retries(1), splitter(true));
        mesh.spawn("square", quick_retries(1), worker());
        mesh.spawn("join", quick_retries(1), join.clone());
        mesh.spawn(
            "tally",
            quick_retries(1),
            handler_fn(|e: Envelope| async move { Ok(Outcome::forward(e)) }),
        );
        let stop = CancellationToken::new();
        let sweeping = tokio::spawn(sweep(
            join,
            mesh.transport.clone(),
            mesh.naming.clone(),
            stop.clone(),
        ));

        let d = doc(4);
        mesh.send(&d).await;
        let out = match on_timeout {
            OnTimeout::Fail => mesh.collect(SUMP, 1).await,
            OnTimeout::Partial => mesh.collect(SINK, 1).await,
        };
        let merged = &out[0];
        assert_eq!(merged.id, d.id);
        match on_timeout {
            OnTimeout::Fail => {
                let error = merged.status.as_ref().unwrap().error.as_ref().unwrap();
                assert_eq!(error.type_name, FAN_IN_TIMEOUT);
                assert_eq!(merged.payload["missing_slices"], json!([3]));
            }
            OnTimeout::Partial => {
                assert_eq!(merged.payload, json!([0, 1, 4, null]));
                assert_eq!(merged.headers[FAN_IN_MISSING], json!([3]));
                assert_eq!(merged.route.prev(), ["split", "square", "join", "tally"]);
            }
        }
        // The sweep records the merge only after its publish is confirmed, so the merge
        // can reach its queue a moment before the origin is closed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.open_origins() != 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.open_origins(), 0, "the timed-out origin is closed");
        stop.cancel();
        sweeping.await.unwrap();
        mesh.shutdown().await;
    }
}
