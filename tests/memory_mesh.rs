//! End-to-end behaviour of runner + layers on the in-memory transport.

#![allow(clippy::unwrap_used)] // test helpers unwrap: a failure is a test failure

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::Mesh;
use serde_json::{Value, json};
use tower::ServiceExt;
use troupe::layers::{RetryPolicies, RetryPolicy};
use troupe::{
    ConsumeOptions, Consumer, Delivery, Envelope, HandlerError, MemoryTransport, Outcome, Phase, QueueAdmin,
    Reason, Route, SINK, Transport, handler_fn, payload_fn,
};

fn quick_retries(max_attempts: u32) -> RetryPolicies {
    RetryPolicies::new(RetryPolicy::constant(max_attempts, Duration::from_millis(10)))
}

fn echo()
-> impl tower::Service<Envelope, Response = Outcome, Error = HandlerError, Future: Send + 'static> + Clone + Send
{
    handler_fn(|e: Envelope| async move { Ok(Outcome::forward(e)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_redelivers_an_unacked_envelope() {
    let mut mesh = Mesh::new();
    let env = Envelope::new(Route::through(["a"]), json!("x"));
    mesh.send(&env).await;
    // A consumer takes the envelope and dies without settling it.
    let mut crashed = mesh
        .transport
        .consume(
            &mesh.queue("a"),
            ConsumeOptions {
                prefetch: 1,
                lease: Duration::from_millis(200),
            },
        )
        .await
        .unwrap();
    drop(crashed.next().await.unwrap().unwrap());
    drop(crashed);
    assert_eq!(mesh.transport.depth(&mesh.queue("a")).await.unwrap().in_flight, 1);

    mesh.spawn("a", quick_retries(3), echo());
    let out = mesh.collect(SINK, 1).await;
    assert_eq!(out[0].id, env.id);
    assert_eq!(out[0].status.as_ref().unwrap().phase, Some(Phase::Succeeded));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_twice_then_succeeds_with_attempt_3() {
    let mut mesh = Mesh::new();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    mesh.spawn(
        "flaky",
        quick_retries(5),
        handler_fn(move |e: Envelope| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n <= 2 {
                    Err(HandlerError::new(
                        "ConnectionError",
                        format!("transient failure #{n}"),
                    ))
                } else {
                    Ok(Outcome::forward(e))
                }
            }
        }),
    );
    let env = Envelope::new(Route::through(["flaky"]), json!({"k": 1}));
    mesh.send(&env).await;
    let out = mesh.collect(SINK, 1).await;
    let status = out[0].status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.reason, Some(Reason::Completed));
    assert_eq!(status.attempt, Some(3));
    assert_eq!(status.error, None);
    assert_eq!(out[0].payload, json!({"k": 1}));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(!out[0].headers.contains_key("x-asya-first-attempt"));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_fails_into_sink_or_routes_on_exhausted() {
    let mut mesh = Mesh::new();
    let always_fails = handler_fn(|_: Envelope| async move {
        Err::<Outcome, _>(HandlerError::new("ValueError", "bad input").with_mro(["ValueError", "Exception"]))
    });
    mesh.spawn("strict", quick_retries(2), always_fails);
    let routed =
        RetryPolicies::new(RetryPolicy::constant(2, Duration::from_millis(10)).on_exhausted(["dlq"]));
    mesh.spawn("lenient", routed, always_fails);
    mesh.spawn("dlq", quick_retries(1), echo());

    let failed = Envelope::new(Route::through(["strict", "never"]), json!({"keep": "me"}));
    mesh.send(&failed).await;
    let rerouted = Envelope::new(Route::through(["lenient", "never"]), json!(7));
    mesh.send(&rerouted).await;

    let mut out = mesh.collect(SINK, 2).await;
    out.sort_by_key(|e| e.id != failed.id);
    let f = out[0].status.as_ref().unwrap();
    assert_eq!(out[0].id, failed.id);
    assert_eq!(
        (f.phase, f.reason.clone()),
        (Some(Phase::Failed), Some(Reason::PolicyExhausted))
    );
    assert_eq!((f.attempt, f.max_attempts), (Some(2), Some(2)));
    let error = f.error.as_ref().unwrap();
    assert_eq!(
        (error.type_name.as_str(), error.message.as_str()),
        ("ValueError", "bad input")
    );
    assert_eq!(
        out[0].payload,
        json!({"keep": "me"}),
        "payload unchanged on failure"
    );
    assert_eq!(out[0].route.curr(), "strict", "route not advanced");

    // The rerouted one went through dlq, which completed it.
    assert_eq!(out[1].id, rerouted.id);
    assert_eq!(out[1].route.prev(), ["lenient", "dlq"]);
    assert_eq!(out[1].status.as_ref().unwrap().phase, Some(Phase::Succeeded));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_with_fan_out_and_route_rewrite() {
    let mut mesh = Mesh::new();
    // split: one envelope per word
    mesh.spawn(
        "split",
        quick_retries(1),
        handler_fn(|e: Envelope| async move {
            let words: Vec<Envelope> = e.payload["text"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .map(|w| {
                    let mut child = e.clone();
                    child.payload = json!({ "word": w }).into();
                    child
                })
                .collect();
            Ok(Outcome::Forward(words))
        }),
    );
    // judge: short words get an extra "pad" step
    mesh.spawn(
        "judge",
        quick_retries(1),
        handler_fn(|mut e: Envelope| async move {
            if e.payload["word"].as_str().is_some_and(|w| w.len() < 4) {
                e.route.next_mut().insert(0, "pad".into());
            }
            Ok(Outcome::forward(e))
        }),
    );
    mesh.spawn(
        "pad",
        quick_retries(1),
        payload_fn(|p: Value| async move {
            Ok(json!({ "word": format!("{}....", p["word"].as_str().unwrap_or("")) }))
        }),
    );
    mesh.spawn("store", quick_retries(1), echo());

    let input = Envelope::new(
        Route::through(["split", "judge", "store"]),
        json!({"text": "a mesh of actors"}),
    );
    mesh.send(&input).await;
    let out = mesh.collect(SINK, 4).await;
    mesh.assert_quiet(SINK, Duration::from_millis(200)).await;

    let first: Vec<_> = out.iter().filter(|e| e.id == input.id).collect();
    assert_eq!(first.len(), 1, "exactly one child keeps the input id");
    assert_eq!(first[0].parent_id, None);
    for child in out.iter().filter(|e| e.id != input.id) {
        assert_eq!(child.parent_id.as_deref(), Some(input.id.as_str()));
        assert!(uuid::Uuid::parse_str(&child.id).is_ok());
    }
    for e in &out {
        let word = e.payload["word"].as_str().unwrap();
        let expected: &[&str] = if word.ends_with("....") {
            &["split", "judge", "pad", "store"]
        } else {
            &["split", "judge", "store"]
        };
        assert_eq!(e.route.prev(), expected, "{word}");
        assert!(e.route.is_finished());
    }
    mesh.shutdown().await;
}

/// Processes one delivery of `actor` by hand up to the confirmed publish, then "crashes":
/// the delivery is dropped unsettled.
async fn process_then_crash<S>(mesh: &Mesh, actor: &str, mut stack: S, run_hooks: bool)
where
    S: tower::Service<Envelope, Response = troupe::Dispatch>,
    S::Error: std::fmt::Debug,
{
    let mut consumer = mesh
        .transport
        .consume(
            &mesh.queue(actor),
            ConsumeOptions {
                prefetch: 1,
                lease: Duration::from_millis(300),
            },
        )
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    let env = Envelope::from_slice(delivery.body(), &troupe::DecodeLimits::default()).unwrap();
    let mut dispatch = stack.ready().await.unwrap().call(env).await.unwrap();
    for p in dispatch.publications() {
        mesh.ensure(&p.actor);
        mesh.transport
            .publish(
                &mesh.queue(&p.actor),
                Bytes::from(p.envelope.to_vec()),
                Default::default(),
            )
            .await
            .unwrap();
    }
    if run_hooks {
        for hook in dispatch.take_hooks() {
            hook().await;
        }
    }
    drop(delivery); // killed before the ack
}

fn stack_for(
    mesh: &Mesh,
    actor: &str,
) -> impl tower::Service<Envelope, Response = troupe::Dispatch, Error = impl std::fmt::Debug> + Clone {
    troupe::layers::actor_stack(
        troupe::layers::StackConfig {
            actor: actor.into(),
            retry: quick_retries(3),
            timeout: Duration::from_secs(5),
            store: mesh.store.clone(),
            metrics: mesh.metrics.actor(actor),
        },
        echo(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_publish_and_ack_yields_no_duplicate_output() {
    let mut mesh = Mesh::new();
    let env = Envelope::new(Route::through(["a", "b"]), json!(1));
    mesh.send(&env).await;
    process_then_crash(&mesh, "a", stack_for(&mesh, "a"), true).await;

    // The redelivery comes to a live runner sharing the idempotency store.
    mesh.spawn("a", quick_retries(3), echo());
    let out = mesh.collect("b", 1).await;
    assert_eq!(out[0].id, env.id);
    // Wait until the redelivery has been settled, then check nothing more went out.
    let q = mesh.queue("a");
    let t = tokio::time::Instant::now();
    while mesh.transport.depth(&q).await.unwrap().total() > 0 {
        assert!(t.elapsed() < common::WAIT, "redelivery was never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.assert_quiet("b", Duration::from_millis(300)).await;
    let reports = mesh.shutdown().await;
    assert_eq!(reports[0].received, 1, "the redelivery reached the runner");
    assert_eq!(reports[0].published, 0, "and it published nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idempotency_the_same_crash_duplicates() {
    // The control for the test above: it shows the crash really does cause a redelivery
    // that a plain stack turns into a duplicate.
    let mut mesh = Mesh::new();
    let env = Envelope::new(Route::through(["a", "b"]), json!(1));
    mesh.send(&env).await;
    let plain = tower::ServiceBuilder::new()
        .layer(troupe::layers::RouteLayer::new("a"))
        .service(echo());
    process_then_crash(&mesh, "a", plain, false).await;
    mesh.spawn_plain("a");
    let out = mesh.collect("b", 2).await;
    assert_eq!(out[0].id, out[1].id);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_publish_confirmed_re_emits_recorded_outputs() {
    let mut mesh = Mesh::new();
    let calls = Arc::new(AtomicU32::new(0));
    let env = Envelope::new(Route::through(["a", "b"]), json!(1));
    mesh.send(&env).await;
    // Hooks not run: the hop is recorded as completed but never marked published.
    process_then_crash(&mesh, "a", stack_for(&mesh, "a"), false).await;
    let first = mesh.collect("b", 1).await;
    let seen = calls.clone();
    mesh.spawn(
        "a",
        quick_retries(3),
        handler_fn(move |e: Envelope| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Outcome::forward(e)) }
        }),
    );
    let again = mesh.collect("b", 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler did not run again");
    assert_eq!(again[0].id, first[0].id);
    assert_eq!(again[0].payload, first[0].payload);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_downstream_nacks_and_loses_nothing() {
    let transport = MemoryTransport::new(troupe::transports::MemoryConfig {
        capacity: 1,
        publish_timeout: Duration::from_millis(50),
        auto_create: true,
    });
    let mut mesh = Mesh::with_transport(transport);
    // Fill b's queue so a's publish cannot be accepted.
    mesh.send_raw("b", b"filler".to_vec()).await;
    mesh.spawn("a", quick_retries(3), echo());
    let env = Envelope::new(Route::through(["a", "b"]), json!(1));
    mesh.send(&env).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let depth = mesh.transport.depth(&mesh.queue("a")).await.unwrap();
    assert_eq!(depth.total(), 1, "the input is still held: {depth:?}");
    // Drain b: the input goes through.
    let raw = mesh.collect_raw("b", 2).await;
    assert_eq!(&raw[0][..], b"filler");
    let out = Envelope::from_slice(&raw[1], &troupe::DecodeLimits::default()).unwrap();
    assert_eq!(out.id, env.id);
    let reports = mesh.shutdown().await;
    assert!(reports[0].nacked >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bound_and_back_pressure() {
    let mut mesh = Mesh::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let mut cfg = mesh.runner_config("slow");
    cfg.concurrency = 3;
    mesh.spawn_with(
        cfg,
        quick_retries(1),
        handler_fn(move |e: Envelope| {
            let held = held.clone();
            async move {
                let _permit = held
                    .acquire()
                    .await
                    .map_err(|_| HandlerError::new("Closed", "gate"))?;
                Ok(Outcome::forward(e))
            }
        }),
    );
    for i in 0..10 {
        mesh.send(&Envelope::new(Route::through(["slow"]), json!(i)))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let depth = mesh.transport.depth(&mesh.queue("slow")).await.unwrap();
    assert_eq!((depth.in_flight, depth.ready), (3, 7), "only 3 pulled: {depth:?}");
    gate.add_permits(100);
    mesh.collect(SINK, 10).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_unfinished_work_after_grace() {
    let mut mesh = Mesh::new();
    let mut cfg = mesh.runner_config("stuck");
    cfg.shutdown_grace = Duration::from_millis(100);
    cfg.consume.lease = Duration::from_secs(60);
    mesh.spawn_with(
        cfg,
        quick_retries(1),
        handler_fn(|e: Envelope| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Outcome::forward(e))
        }),
    );
    for i in 0..4 {
        mesh.send(&Envelope::new(Route::through(["stuck"]), json!(i)))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let q = mesh.queue("stuck");
    let transport = mesh.transport.clone();
    let started = tokio::time::Instant::now();
    let reports = mesh.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown is bounded by the grace period"
    );
    assert_eq!(reports[0].nacked, 4);
    // Returned at once, not after the 60 s lease.
    let depth = transport.depth(&q).await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (4, 0), "{depth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_work_finish_within_grace() {
    let mut mesh = Mesh::new();
    mesh.spawn(
        "steady",
        quick_retries(1),
        handler_fn(|e: Envelope| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(Outcome::forward(e))
        }),
    );
    mesh.send(&Envelope::new(Route::through(["steady"]), json!(1)))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let transport = mesh.transport.clone();
    let sink = mesh.queue(SINK);
    let reports = mesh.shutdown().await;
    assert_eq!((reports[0].acked, reports[0].nacked), (1, 0));
    assert_eq!(transport.depth(&sink).await.unwrap().ready, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_ends_in_sump_after_the_redelivery_limit() {
    let mut mesh = Mesh::new();
    let mut cfg = mesh.runner_config("boom");
    cfg.max_redeliveries = Some(2);
    mesh.spawn_with(
        cfg,
        quick_retries(1),
        handler_fn(|_: Envelope| async move {
            if true {
                panic!("handler bug");
            }
            Ok(Outcome::end(Envelope::default()))
        }),
    );
    let env = Envelope::new(Route::through(["boom"]), json!({"x": 1}));
    mesh.send(&env).await;
    let sump = mesh.collect(troupe::SUMP, 1).await;
    assert_eq!(sump[0].id, env.id);
    assert_eq!(
        sump[0].status.as_ref().unwrap().reason,
        Some(Reason::RedeliveryLimit)
    );
    let original = troupe::core::sump::original_bytes(&sump[0]).unwrap();
    assert_eq!(Envelope::from_slice(&original, &Default::default()).unwrap(), env);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_hop_releases_its_claim_so_the_redelivery_runs() {
    let mut mesh = Mesh::new();
    let mut cfg = mesh.runner_config("once");
    // Few redeliveries allowed: a claim left behind would exhaust them on `InProgress`.
    cfg.max_redeliveries = Some(3);
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    mesh.spawn_with(
        cfg,
        quick_retries(1),
        handler_fn(move |e: Envelope| {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                assert!(!first, "crash on the first call");
                Ok(Outcome::forward(e))
            }
        }),
    );
    let env = Envelope::new(Route::through(["once"]), json!(1));
    mesh.send(&env).await;
    let out = mesh.collect(SINK, 1).await;
    assert_eq!(out[0].id, env.id);
    assert_eq!(out[0].status.as_ref().unwrap().phase, Some(Phase::Succeeded));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_future_stops_its_workers() {
    let mesh = Mesh::new();
    let runner = troupe::Runner::new(
        mesh.transport.clone(),
        tower::Layer::layer(&troupe::layers::RouteLayer::new("a"), echo()),
        mesh.runner_config("a"),
    );
    let running = tokio::spawn(runner.run(troupe::CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.abort(); // the caller goes away without cancelling the token
    let _ = running.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // With its workers gone, nothing consumes: the envelope stays ready in the queue.
    mesh.send(&Envelope::new(Route::through(["a"]), json!(1))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let depth = mesh.transport.depth(&mesh.queue("a")).await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (1, 0), "{depth:?}");
}

/// A transport whose consumers fail every receive after their first delivery.
#[derive(Clone)]
struct FailingReceives(MemoryTransport);

struct FailingConsumer {
    inner: troupe::transports::MemoryConsumer,
    delivered: bool,
}

impl Consumer for FailingConsumer {
    type Delivery = troupe::transports::MemoryDelivery;

    async fn next(&mut self) -> Option<Result<Self::Delivery, troupe::TransportError>> {
        if self.delivered {
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Some(Err(troupe::TransportError::Disconnected {
                detail: "test: receive fails".into(),
            }));
        }
        self.delivered = true;
        self.inner.next().await
    }
}

impl Transport for FailingReceives {
    type Consumer = FailingConsumer;

    async fn publish(
        &self,
        queue: &str,
        body: Bytes,
        options: troupe::PublishOptions,
    ) -> Result<(), troupe::TransportError> {
        self.0.publish(queue, body, options).await
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<FailingConsumer, troupe::TransportError> {
        Ok(FailingConsumer {
            inner: self.0.consume(queue, options).await?,
            delivered: false,
        })
    }
}

/// Regression: the receive-error backoff slept inside the worker loop, so in-flight
/// envelopes (and their lease heartbeats) stopped being polled for up to 6.4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_errors_do_not_stall_in_flight_work() {
    let memory = MemoryTransport::default();
    let mesh = Mesh::with_transport(memory.clone());
    let mut cfg = mesh.runner_config("steps");
    cfg.workers = 1;
    let progress = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = progress.clone();
    let handler = handler_fn(move |e: Envelope| {
        let seen = seen.clone();
        async move {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen.lock().unwrap().push(tokio::time::Instant::now());
            }
            Ok(Outcome::forward(e))
        }
    });
    let stack = tower::ServiceBuilder::new()
        .layer(troupe::layers::RouteLayer::new("steps"))
        .service(handler);
    let token = troupe::CancellationToken::new();
    let runner = troupe::Runner::new(FailingReceives(memory), stack, cfg);
    let running = tokio::spawn(runner.run(token.clone()));
    mesh.send(&Envelope::new(Route::through(["steps"]), json!(1)))
        .await;
    mesh.collect(SINK, 1).await;
    token.cancel();
    running.await.unwrap().unwrap();
    let steps = progress.lock().unwrap().clone();
    let worst = steps.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        worst < Duration::from_millis(500),
        "in-flight work stalled for {worst:?}"
    );
}

impl Mesh {
    /// An actor with only the route layer (no idempotency), for control experiments.
    fn spawn_plain(&mut self, actor: &str) {
        let cfg = self.runner_config(actor);
        let stack = tower::ServiceBuilder::new()
            .layer(troupe::layers::RouteLayer::new(actor))
            .service(echo());
        self.spawn_stack(cfg, stack);
    }
}

/// A dependency that is down (here the handler's runtime, reported as unavailable) spends
/// neither the envelope's retry attempts nor its redeliveries: with one attempt and one
/// redelivery allowed, an outage of many calls still ends in x-sink, on attempt 1, with
/// nothing nacked; readiness (the runner's availability) is false meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_outage_holds_deliveries_without_spending_their_budget() {
    let mesh = Mesh::new();
    for actor in ["held", SINK, troupe::SUMP] {
        mesh.ensure(actor);
    }
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let handler = handler_fn({
        let (down, calls) = (down.clone(), calls.clone());
        move |e: Envelope| {
            calls.fetch_add(1, Ordering::SeqCst);
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    Err(HandlerError::unavailable(
                        "RuntimeUnavailable",
                        "connection refused",
                    ))
                } else {
                    Ok(Outcome::forward(e))
                }
            }
        }
    });
    let mut cfg = mesh.runner_config("held");
    cfg.max_redeliveries = Some(1);
    cfg.redelivery_delay = Duration::from_millis(10);
    let stack = troupe::layers::actor_stack(
        troupe::layers::StackConfig {
            actor: "held".into(),
            retry: quick_retries(1),
            timeout: Duration::from_secs(5),
            store: mesh.store.clone(),
            metrics: mesh.metrics.actor("held"),
        },
        handler,
    );
    let runner = troupe::Runner::new(mesh.transport.clone(), stack, cfg);
    let availability = runner.availability();
    let token = troupe::CancellationToken::new();
    let run = tokio::spawn(runner.run(token.clone()));

    let envs: Vec<Envelope> = (0..3)
        .map(|i| Envelope::new(Route::through(["held"]), json!(i)))
        .collect();
    for env in &envs {
        mesh.send(env).await;
    }
    // Held through many failed calls, each backing off (10 ms doubling to 160 ms).
    tokio::time::timeout(Duration::from_secs(10), async {
        while calls.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the held deliveries are called again");
    assert!(
        !availability.is_available(),
        "not ready while the dependency is down"
    );
    // Held in flight (or, once the outage was seen, not taken at all): none was returned
    // to the queue with a delay, as a nack would.
    let depth = mesh.transport.depth(&mesh.queue("held")).await.unwrap();
    assert_eq!(depth.delayed, 0, "{depth:?}");
    assert_eq!(depth.total(), 3, "{depth:?}");

    down.store(false, Ordering::SeqCst);
    let out = mesh.collect(SINK, 3).await;
    let mut ids: Vec<_> = out.iter().map(|e| e.id.clone()).collect();
    let mut sent: Vec<_> = envs.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent);
    for env in &out {
        let status = env.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(Phase::Succeeded));
        assert_eq!(
            status.attempt.unwrap_or(1),
            1,
            "no retry attempt was spent on the outage"
        );
    }
    assert!(
        availability.is_available(),
        "ready again once the dependency answers"
    );
    mesh.assert_quiet(troupe::SUMP, Duration::from_millis(200)).await;
    token.cancel();
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        report.nacked, 0,
        "no redelivery was spent on the outage: {report:?}"
    );
    assert_eq!(report.acked, 3);
}
