//! A 3-actor pipeline over a real NATS JetStream server: runners, full layer stacks,
//! delayed retries through the delay stream. Address from `TROUPE_NATS_URL`.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use troupe::layers::{MemoryStore, MeshMetrics, RetryPolicies, RetryPolicy, StackConfig, actor_stack};
use troupe::transports::{NatsConfig, NatsTransport};
use troupe::{
    CancellationToken, Consumer, Delivery, Envelope, HandlerError, Outcome, Phase, QueueNaming, Runner,
    RunnerConfig, handler_fn,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_over_nats_delivers_every_envelope_once() {
    let url = std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let transport = NatsTransport::connect(NatsConfig {
        url,
        stream: "TROUPE_E2E".to_owned(),
        subject_prefix: "troupe-e2e".to_owned(),
        consumer_inactive_threshold: Some(Duration::from_secs(300)),
        ..NatsConfig::default()
    })
    .await
    .expect("NATS with JetStream must be running (bash .ci/run starts it)");
    // A namespace of its own per run: queues (and so durable consumers) are fresh.
    let naming = QueueNaming::new("asya", &format!("e2e{}", std::process::id())).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let store = Arc::new(MemoryStore::default());
    let token = CancellationToken::new();
    // id -> when its first attempt at `b` failed; and how many retries came back no earlier
    // than the retry delay (i.e. really went through the delay stream).
    let failed_at = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let delayed_retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let mut runners = Vec::new();
    for actor in ["a", "b", "c"] {
        let (failed_at, delayed_retries) = (failed_at.clone(), delayed_retries.clone());
        // `b` fails the first attempt of every fifth envelope: a delayed retry over NATS.
        let handler = handler_fn(move |e: Envelope| {
            let mut failed = failed_at.lock().unwrap();
            let fail =
                actor == "b" && e.payload.as_u64().is_some_and(|n| n % 5 == 0) && !failed.contains_key(&e.id);
            if fail {
                failed.insert(e.id.clone(), std::time::Instant::now());
            } else if let Some(at) = failed.get(&e.id).filter(|_| actor == "b")
                && at.elapsed() >= Duration::from_millis(300)
            {
                delayed_retries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            drop(failed);
            async move {
                if fail {
                    return Err(HandlerError::new("ConnectionError", "transient"));
                }
                Ok(Outcome::forward(e))
            }
        });
        let stack = actor_stack(
            StackConfig {
                actor: actor.into(),
                retry: RetryPolicies::new(RetryPolicy::constant(3, Duration::from_millis(300))),
                timeout: Duration::from_secs(10),
                store: store.clone(),
                metrics: metrics.actor(actor),
            },
            handler,
        );
        let mut cfg = RunnerConfig::new(actor);
        cfg.naming = naming.clone();
        cfg.consume.lease = Duration::from_secs(5);
        runners.push(tokio::spawn(
            Runner::new(transport.clone(), stack, cfg).run(token.clone()),
        ));
    }

    let count = 300;
    let sent = common::send_through(
        &transport,
        &naming,
        &["a", "b", "c"],
        (0..count).map(|i| json!(i)),
    )
    .await;
    let mut sink = common::sink_of(&transport, &naming).await;
    let mut arrived = HashSet::new();
    while arrived.len() < count {
        let d = tokio::time::timeout(Duration::from_secs(30), sink.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} reached x-sink", arrived.len()))
            .unwrap()
            .unwrap();
        let env = Envelope::from_slice(d.body(), &Default::default()).unwrap();
        d.ack().await.unwrap();
        assert_eq!(env.status.as_ref().unwrap().phase, Some(Phase::Succeeded));
        assert_eq!(env.route.prev(), ["a", "b", "c"]);
        assert!(arrived.insert(env.id), "each envelope reaches x-sink once");
    }
    assert_eq!(arrived, sent);
    assert_eq!(failed_at.lock().unwrap().len(), count / 5);
    assert_eq!(
        delayed_retries.load(std::sync::atomic::Ordering::SeqCst),
        count / 5,
        "every retry came back through the delay stream, no earlier than its delay"
    );
    token.cancel();
    for r in runners {
        r.await.unwrap().unwrap();
    }
}

/// A runner stopped while it works acks what it finished, and those acks reach the server
/// before `run` returns: a process that exits right after a clean shutdown leaves nothing
/// to be delivered again (async-nats buffers acks; the runner flushes them). The runner runs
/// on a runtime of its own, dropped as soon as `run` returns, as a process exit drops it.
#[test]
fn a_clean_shutdown_leaves_no_ack_unsent() {
    use troupe::{QueueAdmin, Transport};
    let url = std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let config = NatsConfig {
        url,
        stream: "TROUPE_E2E".to_owned(),
        subject_prefix: "troupe-e2e".to_owned(),
        consumer_inactive_threshold: Some(Duration::from_secs(300)),
        ..NatsConfig::default()
    };
    let naming = QueueNaming::new("asya", &format!("e2e-flush{}", std::process::id())).unwrap();
    let count = 8;
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };

    let process = runtime();
    let report = process.block_on(async {
        let transport = NatsTransport::connect(config.clone()).await.unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = MeshMetrics::new(&mut registry);
        // Every envelope is in flight when the shutdown comes, and finishes in the grace.
        let started = Arc::new(tokio::sync::Semaphore::new(0));
        let handler = {
            let started = started.clone();
            handler_fn(move |e: Envelope| {
                started.add_permits(1);
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(Outcome::forward(e))
                }
            })
        };
        let stack = actor_stack(
            StackConfig {
                actor: "a".into(),
                retry: RetryPolicies::new(RetryPolicy::constant(1, Duration::from_millis(100))),
                timeout: Duration::from_secs(10),
                store: Arc::new(MemoryStore::default()),
                metrics: metrics.actor("a"),
            },
            handler,
        );
        let mut cfg = RunnerConfig::new("a");
        cfg.naming = naming.clone();
        cfg.concurrency = count;
        common::send_through(&transport, &naming, &["a"], (0..count).map(|i| json!(i))).await;
        let token = CancellationToken::new();
        let runner = tokio::spawn(Runner::new(transport.clone(), stack, cfg).run(token.clone()));
        let all_started = started.acquire_many(u32::try_from(count).unwrap());
        tokio::time::timeout(Duration::from_secs(30), all_started)
            .await
            .expect("every envelope reached the handler")
            .unwrap()
            .forget();
        token.cancel();
        runner.await.unwrap().unwrap()
    });
    // The process exits: its tasks, the connection's among them, go with the runtime.
    drop(process);
    assert_eq!(report.acked, count as u64);

    runtime().block_on(async {
        let fresh = NatsTransport::connect(config).await.unwrap();
        let queue = naming.queue_for("a").unwrap();
        let mut depth = fresh.depth(&queue).await.unwrap();
        for _ in 0..20 {
            if depth.total() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            depth = fresh.depth(&queue).await.unwrap();
        }
        assert_eq!(depth.total(), 0, "acked inputs still held on {queue}: {depth:?}");
        // The outputs reached x-sink; take them off it.
        let mut sink = common::sink_of(&fresh, &naming).await;
        for _ in 0..count {
            let d = tokio::time::timeout(Duration::from_secs(10), sink.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            d.ack().await.unwrap();
        }
        fresh.flush().await.unwrap();
    });
}
