//! Envelopes that used to vanish without a trace, on every broker the build has, through a
//! real runner and layer stack:
//!
//! - routed to an actor that does not exist: before, it sat in the NATS stream forever and
//!   looped on RabbitMQ (`publish failed; input will be redelivered`); now it reaches
//!   `x-sump` with reason `UnknownActor` naming the actor, and the input is acked;
//! - two different envelopes under one id: before, the second was acked and dropped as a
//!   duplicate (NATS and RabbitMQ); now both are processed and reach `x-sink`.
//!
//! Broker addresses from the environment (`bash .ci/run` starts the brokers).
#![cfg(all(feature = "nats", feature = "amqp", feature = "sqs"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use troupe::broker::{Broker, BrokerConfig, WithTransport};
use troupe::core::ensure_actor_queues;
use troupe::layers::{MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, Delivery, Envelope, Outcome, PublishOptions, QueueAdmin,
    QueueNaming, Reason, Route, Runner, RunnerConfig, Transport, handler_fn,
};

const WAIT: Duration = Duration::from_secs(30);

fn brokers() -> BrokerConfig {
    let sqs = std::env::var("TROUPE_SQS_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
    BrokerConfig::from_env().scratch("silent").sqs_endpoint(sqs)
}

/// A namespace of its own per broker, check and run: the queues are fresh.
fn naming(broker: Broker, check: &str) -> QueueNaming {
    QueueNaming::new("asya", &format!("{check}{}{}", broker.name(), std::process::id())).unwrap()
}

/// Runs actor `a` (forwards what it gets) on `transport` while `check` runs.
async fn with_actor_a<T, F, Fut>(transport: T, naming: QueueNaming, check: F)
where
    T: Transport + QueueAdmin,
    F: FnOnce(T, QueueNaming) -> Fut,
    Fut: Future<Output = ()>,
{
    ensure_actor_queues(&transport, &naming, "a").await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let stack = actor_stack(
        StackConfig {
            actor: "a".into(),
            retry: RetryPolicies::default(),
            timeout: Duration::from_secs(10),
            store: Arc::new(MemoryStore::default()),
            metrics: MeshMetrics::new(&mut registry).actor("a"),
        },
        handler_fn(|e: Envelope| async move { Ok(Outcome::forward(e)) }),
    );
    let mut config = RunnerConfig::new("a");
    config.naming = naming.clone();
    config.redelivery_delay = Duration::from_millis(100);
    let token = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(transport.clone(), stack, config).run(token.clone()));
    check(transport, naming).await;
    token.cancel();
    runner.await.unwrap().unwrap();
}

async fn send<T: Transport>(transport: &T, naming: &QueueNaming, env: &Envelope) {
    let queue = naming.queue_for(env.route.curr()).unwrap();
    transport
        .publish(&queue, Bytes::from(env.to_vec()), PublishOptions::default())
        .await
        .unwrap();
}

/// The next `n` envelopes on `actor`'s queue, acked.
async fn take<T: Transport>(transport: &T, naming: &QueueNaming, actor: &str, n: usize) -> Vec<Envelope> {
    let queue = naming.queue_for(actor).unwrap();
    let mut consumer = transport
        .consume(&queue, ConsumeOptions::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{queue}: only {} of {n} within {WAIT:?}", got.len()))
            .unwrap()
            .unwrap();
        got.push(Envelope::from_slice(delivery.body(), &Default::default()).unwrap());
        delivery.ack().await.unwrap();
    }
    got
}

struct UnknownActorGoesToSump(QueueNaming);

impl WithTransport for UnknownActorGoesToSump {
    type Output = ();

    async fn run<T: Transport + QueueAdmin>(self, transport: T) {
        with_actor_a(transport, self.0, |transport, naming| async move {
            let env = Envelope::new(Route::through(["a", "ghost"]), json!({"n": 1}));
            send(&transport, &naming, &env).await;
            let sumped = take(&transport, &naming, "x-sump", 1).await;
            let status = sumped[0].status.as_ref().unwrap();
            assert_eq!(sumped[0].id, env.id);
            assert_eq!(status.reason, Some(Reason::UnknownActor));
            let error = status.error.as_ref().unwrap();
            assert!(error.message.contains("\"ghost\""), "{}", error.message);
            assert_eq!(status.actor.as_deref(), Some("a"));
            // The input was acked, not left to loop.
            let queue = naming.queue_for("a").unwrap();
            let deadline = tokio::time::Instant::now() + WAIT;
            while transport.depth(&queue).await.unwrap().total() > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the input stayed on {queue}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Nothing was created for the ghost.
            let ghost = naming.queue_for("ghost").unwrap();
            assert!(transport.depth(&ghost).await.is_err(), "{ghost} exists");
        })
        .await;
    }
}

struct SameIdTwoPayloads(QueueNaming);

impl WithTransport for SameIdTwoPayloads {
    type Output = ();

    async fn run<T: Transport + QueueAdmin>(self, transport: T) {
        with_actor_a(transport, self.0, |transport, naming| async move {
            let first = Envelope::new(Route::through(["a"]), json!({"text": "first"}));
            let mut second = Envelope::new(Route::through(["a"]), json!({"text": "second"}));
            second.id.clone_from(&first.id);
            send(&transport, &naming, &first).await;
            send(&transport, &naming, &second).await;
            let mut texts: Vec<String> = take(&transport, &naming, "x-sink", 2)
                .await
                .into_iter()
                .map(|e| {
                    assert_eq!(e.id, first.id);
                    e.payload["text"].as_str().unwrap().to_owned()
                })
                .collect();
            texts.sort();
            assert_eq!(texts, ["first", "second"]);
        })
        .await;
    }
}

async fn on(broker: Broker, job: impl WithTransport<Output = ()>) {
    brokers()
        .connect(broker, job)
        .await
        .unwrap_or_else(|e| panic!("{broker} must be running (bash .ci/run starts it): {e}"));
}

macro_rules! on_every_broker {
    ($($broker:ident => $name:ident),+) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_unknown_actor_goes_to_sump_naming_it() {
                let broker = Broker::$broker;
                on(broker, UnknownActorGoesToSump(naming(broker, "ghost"))).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_same_id_with_another_payload_is_not_dropped() {
                let broker = Broker::$broker;
                on(broker, SameIdTwoPayloads(naming(broker, "sameid"))).await;
            }
        }
    )+};
}

on_every_broker!(Memory => memory, Nats => nats, Amqp => amqp, Sqs => sqs);
