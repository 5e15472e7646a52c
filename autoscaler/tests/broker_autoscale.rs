//! End to end on a real broker: the autoscaler's watch loop, a fake Kubernetes API whose
//! Deployment replicas become consumer "pods" on the broker, and 500 envelopes published to
//! an idle actor. The autoscaler must ask 0 -> N, and N -> 0 once the queue is drained and
//! the cooldown has passed.
//!
//! Needs NATS on 127.0.0.1:4222 (`--features nats`) and RabbitMQ with its management API on
//! 127.0.0.1:5672 / :15672 (`--features amqp`); `.ci/run` starts both.

#![cfg(any(feature = "nats", feature = "amqp"))]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube::Api;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use serde_json::json;
use support::fake_kube::FakeKube;
use tokio_util::sync::CancellationToken;
use troupe::broker::{Broker, BrokerConfig, WithTransport};
use troupe::{ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, Transport};
use troupe_autoscaler::controller::{self, Context, Settings};
use troupe_autoscaler::crd::AsyncActor;
use troupe_autoscaler::metrics::Metrics;
use troupe_autoscaler::probe::Probes;

const ENVELOPES: u64 = 500;
const QUEUE_LENGTH: u64 = 50;
const POD_STARTUP: Duration = Duration::from_millis(200);
const WORK: Duration = Duration::from_millis(10);
const DEADLINE: Duration = Duration::from_secs(60);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

struct Scenario {
    broker: Broker,
    config: BrokerConfig,
}

impl WithTransport for Scenario {
    type Output = TestResult;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> TestResult {
        let kube = Arc::new(FakeKube::start().await?);
        let namespace = format!("e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let queue = format!("asya-{namespace}-embed");
        kube.put_deployment(&namespace, "embed", 0);
        kube.put_actor(json!({
            "apiVersion": "asya.sh/v1alpha1",
            "kind": "AsyncActor",
            "metadata": { "name": "embed", "namespace": namespace },
            "spec": {
                "actor": "embed",
                "transport": { "type": self.broker.name() },
                "scaleTargetRef": { "name": "embed" },
                "scaling": {
                    "maxReplicaCount": 20,
                    "queueLength": QUEUE_LENGTH,
                    "pollingInterval": 1,
                    "cooldownPeriod": 2,
                    "scaleDownStabilizationWindow": 1,
                },
            }
        }));

        let stop = CancellationToken::new();
        let _stop_on_exit = stop.clone().drop_guard();
        let client = kube.client().map_err(|e| e.to_string())?;
        let mut registry = Registry::default();
        let ctx = Context::new(
            client.clone(),
            Probes::new(self.config.clone()),
            Metrics::new(&mut registry),
            Reporter {
                controller: "troupe-autoscaler".into(),
                instance: None,
            },
            Settings {
                idle_poll_interval: Duration::from_millis(100),
                retry_after: Duration::from_millis(500),
            },
        );
        tokio::spawn(controller::run(
            Api::<AsyncActor>::all(client),
            ctx,
            stop.child_token(),
        ));

        // The autoscaler creates the queue of a declared actor; wait for it to idle at zero.
        let started = Instant::now();
        while let Err(error) = transport.depth(&queue).await {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("the autoscaler did not create {queue}: {error}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(kube.scale_patches().is_empty(), "nothing to do while idle");

        let processed = Arc::new(AtomicU64::new(0));
        tokio::spawn(kubelet(
            kube.clone(),
            namespace.clone(),
            transport.clone(),
            queue.clone(),
            processed.clone(),
            stop.child_token(),
        ));

        let published_at = Instant::now();
        for i in 0..ENVELOPES {
            transport
                .publish(&queue, format!("{{\"n\":{i}}}").into(), PublishOptions::default())
                .await?;
        }
        let publishing = published_at.elapsed();

        let mut first_patch = None;
        let mut timeline = Vec::new();
        loop {
            let patches = kube.scale_patches();
            if first_patch.is_none() && !patches.is_empty() {
                first_patch = Some(published_at.elapsed());
            }
            if patches.len() > timeline.len() {
                for patch in &patches[timeline.len()..] {
                    timeline.push((
                        published_at.elapsed(),
                        patch["spec"]["replicas"].as_u64().unwrap_or(0),
                    ));
                }
            }
            let done = processed.load(Ordering::SeqCst) >= ENVELOPES;
            if done && kube.replicas(&namespace, "embed") == Some(0) {
                break;
            }
            if published_at.elapsed() > DEADLINE {
                return Err(format!(
                    "not back at zero after {DEADLINE:?}: processed {}, replicas {:?}, patches {timeline:?}",
                    processed.load(Ordering::SeqCst),
                    kube.replicas(&namespace, "embed")
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        eprintln!(
            "{}: published {ENVELOPES} in {publishing:?}; first scale after {:?}; scale writes {:?}",
            self.broker,
            first_patch.unwrap_or_default(),
            timeline
        );
        // Activation polls every 100 ms here. The bound is loose (a loaded CI machine); it
        // catches depth that lags, such as RabbitMQ's management statistics (5 s).
        let activation = first_patch.unwrap_or_default();
        assert!(
            activation < publishing + Duration::from_secs(2),
            "the first scale came {activation:?} after the first envelope"
        );
        let replicas: Vec<u64> = timeline.iter().map(|(_, r)| *r).collect();
        assert!(
            replicas.first().is_some_and(|r| *r >= 1),
            "0 -> N first: {replicas:?}"
        );
        // The first poll may see the burst half published; later ones see what is left.
        let peak = replicas.iter().copied().max().unwrap_or(0);
        assert!(
            (2..=ENVELOPES / QUEUE_LENGTH).contains(&peak),
            "N between 2 and ceil(500 / queueLength): {replicas:?}"
        );
        assert_eq!(replicas.last(), Some(&0), "N -> 0 after the drain: {replicas:?}");
        assert_eq!(transport.depth(&queue).await?.total(), 0);
        assert_eq!(processed.load(Ordering::SeqCst), ENVELOPES, "each envelope once");
        assert_eq!(
            kube.event_reasons().first().map(String::as_str),
            Some("Activated")
        );
        assert!(kube.event_reasons().iter().any(|r| r == "ScaledToZero"));
        Ok(())
    }
}

/// Plays the cluster: keeps as many consumer pods running as the Deployment's replicas.
/// A pod starts after [`POD_STARTUP`]; a stopped pod finishes its current envelope first.
async fn kubelet<T: Transport>(
    kube: Arc<FakeKube>,
    namespace: String,
    transport: T,
    queue: String,
    processed: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut pods: Vec<CancellationToken> = Vec::new();
    while !stop.is_cancelled() {
        let desired = usize::try_from(kube.replicas(&namespace, "embed").unwrap_or(0)).unwrap_or(0);
        while pods.len() < desired {
            let pod = stop.child_token();
            tokio::spawn(run_pod(
                transport.clone(),
                queue.clone(),
                processed.clone(),
                pod.clone(),
            ));
            pods.push(pod);
        }
        while pods.len() > desired {
            if let Some(pod) = pods.pop() {
                pod.cancel();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_pod<T: Transport>(
    transport: T,
    queue: String,
    processed: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    tokio::time::sleep(POD_STARTUP).await;
    let options = ConsumeOptions {
        prefetch: 1,
        lease: Duration::from_secs(30),
    };
    let Ok(mut consumer) = transport.consume(&queue, options).await else {
        return;
    };
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return,
            next = consumer.next() => next,
        };
        let Some(Ok(delivery)) = delivery else { return };
        tokio::time::sleep(WORK).await;
        if delivery.ack().await.is_ok() {
            processed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_burst_scales_from_zero_to_n_and_back() -> TestResult {
    let config = BrokerConfig::from_env().scratch("autoscaler");
    config
        .clone()
        .connect(
            Broker::Nats,
            Scenario {
                broker: Broker::Nats,
                config,
            },
        )
        .await?
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_burst_scales_from_zero_to_n_and_back() -> TestResult {
    let mut config = BrokerConfig::from_env().scratch("autoscaler");
    // Depth must count every consumer's unacknowledged messages, not this process's.
    let mut management = troupe::transports::ManagementApi::default();
    if let Ok(url) = std::env::var("TROUPE_RABBITMQ_MANAGEMENT_URL") {
        management.url = url;
    }
    config.amqp.management = Some(management);
    config
        .clone()
        .connect(
            Broker::Amqp,
            Scenario {
                broker: Broker::Amqp,
                config,
            },
        )
        .await?
}
