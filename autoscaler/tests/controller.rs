//! The controller against a fake Kubernetes API: for a depth timeline, exactly which
//! `/scale` PATCHes, status updates and Events it sends.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::Method;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use support::fake_kube::FakeKube;
use troupe::broker::{Broker, BrokerConfig};
use troupe::{QueueDepth, TransportError};
use troupe_autoscaler::controller::{self, ActorState, Clock, Context, Settings};
use troupe_autoscaler::crd::AsyncActor;
use troupe_autoscaler::metrics::Metrics;
use troupe_autoscaler::probe::{DepthProbe, ProbeFuture, Probes};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A probe whose depth the test sets.
#[derive(Default)]
struct ScriptedDepth {
    depth: Mutex<QueueDepth>,
    fail: Mutex<bool>,
    queues: Mutex<Vec<String>>,
}

impl ScriptedDepth {
    fn set(&self, ready: u64, in_flight: u64) {
        *self.depth.lock().unwrap_or_else(PoisonError::into_inner) = QueueDepth {
            ready,
            in_flight,
            delayed: 0,
        };
    }
}

impl DepthProbe for ScriptedDepth {
    fn ensure_queue<'a>(&'a self, queue: &'a str) -> ProbeFuture<'a, Result<(), TransportError>> {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(queue.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn depth<'a>(&'a self, queue: &'a str) -> ProbeFuture<'a, Result<QueueDepth, TransportError>> {
        let failing = *self.fail.lock().unwrap_or_else(PoisonError::into_inner);
        let depth = *self.depth.lock().unwrap_or_else(PoisonError::into_inner);
        Box::pin(async move {
            if failing {
                Err(TransportError::NoSuchQueue {
                    queue: queue.to_owned(),
                })
            } else {
                Ok(depth)
            }
        })
    }
}

struct Harness {
    kube: FakeKube,
    probe: Arc<ScriptedDepth>,
    ctx: Context,
    clock: Arc<AtomicU64>,
    registry: Registry,
    state: ActorState,
}

impl Harness {
    async fn new(scaling: Value) -> Result<Self, Box<dyn std::error::Error>> {
        let kube = FakeKube::start().await?;
        kube.put_deployment("ml", "embed", 0);
        kube.put_actor(json!({
            "apiVersion": "asya.sh/v1alpha1",
            "kind": "AsyncActor",
            "metadata": { "name": "embed", "namespace": "ml" },
            "spec": {
                "actor": "embed",
                "transport": { "type": "memory" },
                "scaleTargetRef": { "name": "embed" },
                "scaling": scaling,
            }
        }));
        let probe = Arc::new(ScriptedDepth::default());
        let probes = Probes::new(BrokerConfig::default());
        probes.insert(Broker::Memory, probe.clone()).await;
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let mut ctx = Context::new(
            kube.client()?,
            probes,
            metrics,
            Reporter {
                controller: "troupe-autoscaler".into(),
                instance: Some("test".into()),
            },
            Settings::default(),
        );
        let (clock, handle) = Clock::manual();
        ctx.clock = clock;
        Ok(Self {
            kube,
            probe,
            ctx,
            clock: handle,
            registry,
            state: ActorState::default(),
        })
    }

    /// Sets the clock to `at` seconds and the depth, then polls once.
    async fn poll_at(&mut self, at: f64, depth: u64) -> Result<Duration, Box<dyn std::error::Error>> {
        self.clock.store((at * 1000.0) as u64, Ordering::SeqCst);
        self.probe.set(depth, 0);
        let actor: AsyncActor = serde_json::from_value(self.kube.actor("ml", "embed"))?;
        Ok(controller::poll(&actor, &mut self.state, &self.ctx).await)
    }

    fn metrics(&self) -> String {
        troupe::layers::metrics::render(&self.registry)
    }
}

fn assert_metric(metrics: &str, line: &str) {
    assert!(metrics.contains(line), "no {line} in:\n{metrics}");
}

fn scaling() -> Value {
    json!({
        "maxReplicaCount": 10,
        "queueLength": 10,
        "pollingInterval": 5,
        "cooldownPeriod": 30,
        "scaleDownStabilizationWindow": 10,
    })
}

#[tokio::test]
async fn a_depth_timeline_sends_exactly_these_scale_patches() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    let timeline = [
        (0.0, 0),     // idle at zero: nothing to write
        (0.25, 45),   // activation: ceil(45 / 10)
        (5.25, 45),   // unchanged: no write
        (10.25, 120), // up at once, capped at 10
        (15.25, 30),  // down wanted (3), held by the 10 s window
        (20.5, 30),   // the 10 left the window: 3
        (25.5, 0),    // no work: 1 wanted, the 3 is still in the window
        (36.0, 0),    // 1: cooling down
        (51.0, 0),    // 30.5 s without work > 30 s cooldown: zero
        (51.25, 0),   // idle: nothing to write
    ];
    for (at, depth) in timeline {
        h.poll_at(at, depth).await?;
    }
    let versions: Vec<Value> = h
        .kube
        .scale_patches()
        .iter()
        .map(|p| p["spec"]["replicas"].clone())
        .collect();
    assert_eq!(versions, [json!(5), json!(10), json!(3), json!(1), json!(0)]);
    // Each write carries the version it was decided on, as a precondition.
    for patch in h.kube.scale_patches() {
        assert_eq!(patch.as_object().map(|o| o.len()), Some(2), "{patch}");
        assert!(patch["metadata"]["resourceVersion"].is_string(), "{patch}");
    }
    for request in h.kube.requests_to(&Method::PATCH, "/scale") {
        assert_eq!(
            request.path,
            "/apis/apps/v1/namespaces/ml/deployments/embed/scale"
        );
        assert!(
            request.query.contains("fieldManager=troupe-autoscaler"),
            "{}",
            request.query
        );
    }
    assert_eq!(h.kube.replicas("ml", "embed"), Some(0));
    assert_eq!(
        h.kube.event_reasons(),
        [
            "Activated",
            "ScaledUp",
            "ScaledDown",
            "ScaledDown",
            "ScaledToZero"
        ]
    );
    // Metrics for every decision.
    let metrics = h.metrics();
    assert!(
        metrics.contains(
            r#"troupe_autoscaler_decisions_total{namespace="ml",name="embed",reason="Activation"} 1"#
        ),
        "{metrics}"
    );
    assert_metric(
        &metrics,
        r#"troupe_autoscaler_desired_replicas{namespace="ml",name="embed"} 0"#,
    );
    assert_metric(
        &metrics,
        r#"troupe_autoscaler_scales_total{namespace="ml",name="embed",direction="Down"} 3"#,
    );
    Ok(())
}

#[tokio::test]
async fn the_exact_first_patch_from_zero() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    let wait = h.poll_at(0.0, 0).await?;
    assert_eq!(
        wait,
        Duration::from_millis(250),
        "at zero the next poll is the fast one"
    );
    h.poll_at(0.25, 7).await?;
    let patches = h.kube.scale_patches();
    let version = patches
        .first()
        .and_then(|p| p["metadata"]["resourceVersion"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        patches,
        [json!({ "metadata": { "resourceVersion": version }, "spec": { "replicas": 1 } })]
    );
    Ok(())
}

#[tokio::test]
async fn the_status_reports_each_decision() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    h.poll_at(1.0, 45).await?;
    let status = h.kube.actor("ml", "embed")["status"].clone();
    assert_eq!(status["desiredReplicas"], 5);
    assert_eq!(status["currentReplicas"], 5);
    assert_eq!(status["lastDepth"], 45);
    assert_eq!(status["lastDecisionReason"], "Activation");
    assert_eq!(status["lastScaleDirection"], "Up");
    assert_eq!(status["lastScaleTime"], "2026-01-01T00:00:01Z");
    assert_eq!(status["lastActiveTime"], "2026-01-01T00:00:01Z");
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let find = |kind: &str| conditions.iter().find(|c| c["type"] == kind).cloned();
    assert_eq!(find("Ready").map(|c| c["status"].clone()), Some(json!("True")));
    assert_eq!(find("Active").map(|c| c["status"].clone()), Some(json!("True")));
    // The typed status deserialises (the CRD's status type matches what is written).
    let actor: AsyncActor = serde_json::from_value(h.kube.actor("ml", "embed"))?;
    assert_eq!(actor.status.and_then(|s| s.desired_replicas), Some(5));
    Ok(())
}

#[tokio::test]
async fn a_conflicting_write_is_read_again_and_retried() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    h.kube.inject_conflicts(1);
    h.poll_at(0.0, 30).await?;
    let patches = h.kube.scale_patches();
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert_ne!(
        patches[0]["metadata"]["resourceVersion"], patches[1]["metadata"]["resourceVersion"],
        "the retry uses the version read again"
    );
    assert_eq!(h.kube.replicas("ml", "embed"), Some(3));
    Ok(())
}

#[tokio::test]
async fn repeated_conflicts_fail_the_poll_without_a_write() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    h.kube.inject_conflicts(10);
    let wait = h.poll_at(0.0, 30).await?;
    assert_eq!(wait, Settings::default().retry_after);
    assert_eq!(h.kube.replicas("ml", "embed"), Some(0));
    assert_eq!(h.kube.event_reasons(), ["ScaleFailed"]);
    Ok(())
}

#[tokio::test]
async fn a_scale_someone_else_made_is_respected_as_current() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    h.poll_at(0.0, 30).await?;
    // A person scales to 6 by hand; depth still asks for 3, but the window holds only 3s.
    h.kube.put_deployment("ml", "embed", 6);
    h.poll_at(5.0, 30).await?;
    assert_eq!(h.kube.replicas("ml", "embed"), Some(3));
    let patches = h.kube.scale_patches();
    assert_eq!(patches.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_missing_deployment_is_a_condition_and_one_warning() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    h.kube.put_actor(json!({
        "apiVersion": "asya.sh/v1alpha1",
        "kind": "AsyncActor",
        "metadata": { "name": "embed", "namespace": "ml" },
        "spec": {
            "actor": "embed",
            "transport": { "type": "memory" },
            "scaleTargetRef": { "name": "nope" },
        }
    }));
    for at in [0.0, 5.0, 10.0] {
        h.poll_at(at, 10).await?;
    }
    assert!(h.kube.scale_patches().is_empty());
    assert_eq!(
        h.kube.event_reasons(),
        ["ScaleTargetNotFound"],
        "one Event, not one per poll"
    );
    let conditions = h.kube.actor("ml", "embed")["status"]["conditions"].clone();
    let ready = conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ScaleTargetNotFound");
    assert!(
        ready["message"].as_str().unwrap_or_default().contains("ml/nope"),
        "{ready}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_queue_keeps_the_replicas_and_says_why() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    h.poll_at(0.0, 30).await?;
    *h.probe.fail.lock().unwrap_or_else(PoisonError::into_inner) = true;
    // The probe was forgotten after the failure; put it back as a reconnect would.
    h.ctx.probes.insert(Broker::Memory, h.probe.clone()).await;
    let wait = h.poll_at(100.0, 0).await?;
    assert_eq!(wait, Settings::default().retry_after);
    assert_eq!(h.kube.replicas("ml", "embed"), Some(3), "fail static");
    assert_eq!(h.kube.event_reasons(), ["Activated", "ProbeFailed"]);
    let metrics = h.metrics();
    assert_metric(
        &metrics,
        r#"troupe_autoscaler_errors_total{namespace="ml",name="embed",kind="probe"} 1"#,
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_spec_is_reported_not_acted_on() -> TestResult {
    let mut h = Harness::new(json!({ "minReplicaCount": 5, "maxReplicaCount": 2 })).await?;
    h.poll_at(0.0, 100).await?;
    assert!(h.kube.scale_patches().is_empty());
    let message = h.kube.actor("ml", "embed")["status"]["conditions"][0]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap_or_default()
            .contains("minReplicaCount (5) is above scaling.maxReplicaCount (2)"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn the_queue_is_created_once_under_its_asya_name() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    for at in [0.0, 1.0, 2.0] {
        h.poll_at(at, 0).await?;
    }
    let queues = h
        .probe
        .queues
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(queues, ["asya-ml-embed"]);
    Ok(())
}

#[tokio::test]
async fn a_restarted_autoscaler_keeps_the_cooldown_from_status() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    h.poll_at(0.0, 20).await?; // 2 replicas, active at t=0
    h.poll_at(20.0, 0).await?; // cooling down: 1
    // A new autoscaler process: fresh state; the cooldown still counts from t=0.
    h.state = ActorState::default();
    h.poll_at(25.0, 0).await?;
    assert_eq!(h.kube.replicas("ml", "embed"), Some(1), "25 s < 30 s cooldown");
    h.poll_at(31.0, 0).await?; // cooled down; the stabilisation window still holds the 1
    h.poll_at(42.0, 0).await?;
    assert_eq!(h.kube.replicas("ml", "embed"), Some(0));
    Ok(())
}

#[tokio::test]
async fn idle_polls_at_zero_read_only_the_queue() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    // A full poll at t=0, then fast polls every 250 ms for 4.75 s: the queue only.
    for i in 0..20u32 {
        h.poll_at(f64::from(i) * 0.25, 0).await?;
    }
    assert_eq!(h.kube.requests_to(&Method::GET, "/scale").len(), 1);
    assert_eq!(h.kube.requests_to(&Method::PATCH, "/status").len(), 1);
    // pollingInterval (5 s) later, a full poll again.
    h.poll_at(5.0, 0).await?;
    assert_eq!(h.kube.requests_to(&Method::GET, "/scale").len(), 2);
    // Work arriving is acted on at the next fast poll, not at the next full one.
    h.poll_at(5.25, 3).await?;
    assert_eq!(h.kube.replicas("ml", "embed"), Some(1));
    Ok(())
}

#[tokio::test]
async fn a_changed_queue_name_is_created_too() -> TestResult {
    let mut h = Harness::new(scaling()).await?;
    h.poll_at(0.0, 0).await?;
    let mut actor = h.kube.actor("ml", "embed");
    actor["spec"]["actor"] = json!("embed-v2");
    actor["metadata"]["generation"] = json!(2);
    h.kube.put_actor(actor);
    h.poll_at(5.0, 0).await?;
    let queues = h
        .probe
        .queues
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(queues, ["asya-ml-embed", "asya-ml-embed-v2"]);
    Ok(())
}
