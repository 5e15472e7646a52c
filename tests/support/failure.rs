//! The broker failure scenario, shared by one test file per broker: a 3-actor pipeline
//! with 10,000 envelopes whose middle actor is a separate process, killed with SIGKILL and
//! restarted twice mid-run. Every envelope must reach `x-sink`, and exactly once: the shared
//! Redis idempotency store (and, where the broker has it, broker-side deduplication) absorbs
//! the redeliveries the kills cause.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::json;
use troupe::broker::{Broker, WithTransport};
use troupe::layers::{MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{
    CancellationToken, Consumer, Delivery, Envelope, HandlerError, Outcome, QueueAdmin, QueueNaming, Runner,
    RunnerConfig, SINK, SUMP, Transport, handler_fn,
};

use super::brokers;

const ENVELOPES: usize = 10_000;

/// The middle actor, as its own process.
fn start_middle(broker: Broker, namespace: &str, env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_troupe-test-actor"))
        .args([broker.name(), "b", namespace])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .unwrap()
}

/// Runs the scenario on `broker`.
pub async fn kill_the_middle_actor_twice(broker: Broker) {
    kill_the_middle_actor_twice_with(broker, brokers::failure_test_brokers(), Vec::new()).await;
}

/// Runs the scenario on `broker` as `config` describes it; the middle actor's process gets
/// `child_env` on top of this process's environment.
pub async fn kill_the_middle_actor_twice_with(
    broker: Broker,
    config: troupe::broker::BrokerConfig,
    child_env: Vec<(String, String)>,
) {
    let namespace = format!("fail{}", std::process::id());
    config
        .connect(
            broker,
            Scenario {
                broker,
                namespace,
                child_env,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{broker} must be running (bash .ci/run starts it): {e}"));
}

struct Scenario {
    broker: Broker,
    namespace: String,
    child_env: Vec<(String, String)>,
}

impl WithTransport for Scenario {
    type Output = ();

    async fn run<T: Transport + QueueAdmin>(self, transport: T) {
        scenario(transport, self.broker, self.namespace, self.child_env).await;
    }
}

async fn scenario<T: Transport + QueueAdmin>(
    transport: T,
    broker: Broker,
    namespace: String,
    child_env: Vec<(String, String)>,
) {
    let store = brokers::shared_store(&namespace).await;
    let naming = QueueNaming::new("asya", &namespace).unwrap();
    for actor in ["a", "b", "c", SINK, SUMP] {
        transport
            .ensure_queue(&naming.queue_for(actor).unwrap())
            .await
            .unwrap();
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let token = CancellationToken::new();

    // The first and last actors run here; the middle one is a process of its own.
    let mut runners = Vec::new();
    for actor in ["a", "c"] {
        let stack = actor_stack(
            StackConfig {
                actor: actor.into(),
                retry: RetryPolicies::default(),
                timeout: Duration::from_secs(2),
                store: store.clone(),
                metrics: metrics.actor(actor),
            },
            handler_fn(|e: Envelope| async move { Ok::<_, HandlerError>(Outcome::forward(e)) }),
        );
        let mut cfg = RunnerConfig::new(actor);
        cfg.naming = naming.clone();
        cfg.consume.lease = Duration::from_secs(2);
        cfg.redelivery_delay = Duration::from_millis(200);
        runners.push(tokio::spawn(
            Runner::new(transport.clone(), stack, cfg).run(token.clone()),
        ));
    }
    let mut middle = start_middle(broker, &namespace, &child_env);

    let sent = super::common::send_through(
        &transport,
        &naming,
        &["a", "b", "c"],
        (0..ENVELOPES).map(|i| json!({ "n": i })),
    )
    .await;
    let mut sink = super::common::sink_of(&transport, &naming).await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while seen.len() < ENVELOPES {
        let next = tokio::time::timeout_at(deadline, sink.next()).await;
        let Ok(Some(Ok(d))) = next else {
            let _ = middle.kill();
            panic!(
                "only {} of {ENVELOPES} envelopes reached x-sink (after {kills} kills)",
                seen.len()
            );
        };
        let env = Envelope::from_slice(d.body(), &Default::default()).unwrap();
        d.ack().await.unwrap();
        *seen.entry(env.id).or_default() += 1;
        // Kill the middle actor (SIGKILL: no shutdown, no nacks) twice, mid-run.
        if (kills == 0 && seen.len() >= 2_000) || (kills == 1 && seen.len() >= 6_000) {
            middle.kill().unwrap();
            middle.wait().unwrap();
            kills += 1;
            middle = start_middle(broker, &namespace, &child_env);
        }
    }
    // Anything redelivered late would show up now: held-back duplicates wait at most the
    // claim ttl (4 s) plus a few redelivery delays.
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(12), sink.next()).await {
        let env = Envelope::from_slice(d.body(), &Default::default()).unwrap();
        d.ack().await.unwrap();
        *seen.entry(env.id).or_default() += 1;
    }
    let _ = middle.kill();
    let _ = middle.wait();
    token.cancel();
    for r in runners {
        r.await.unwrap().unwrap();
    }

    assert_eq!(kills, 2);
    let ids: HashSet<String> = seen.keys().cloned().collect();
    assert_eq!(ids, sent, "every envelope reached x-sink");
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} envelopes reached x-sink more than once",
        duplicated.len()
    );
}
