//! A small in-process mesh for end-to-end tests on the memory transport.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tower::Service;
use troupe::layers::{MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, DecodeLimits, Delivery, Envelope, HandlerError,
    MemoryTransport, Outcome, PublishOptions, QueueNaming, RunReport, Runner, RunnerConfig, Transport,
};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Mesh {
    pub transport: MemoryTransport,
    pub naming: QueueNaming,
    pub store: Arc<MemoryStore>,
    pub metrics: MeshMetrics,
    pub registry: prometheus_client::registry::Registry,
    token: CancellationToken,
    runners: Vec<JoinHandle<RunReport>>,
}

impl Mesh {
    pub fn new() -> Self {
        Self::with_transport(MemoryTransport::default())
    }

    pub fn with_transport(transport: MemoryTransport) -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = MeshMetrics::new(&mut registry);
        Self {
            transport,
            naming: QueueNaming::default(),
            store: Arc::new(MemoryStore::default()),
            metrics,
            registry,
            token: CancellationToken::new(),
            runners: Vec::new(),
        }
    }

    pub fn runner_config(&self, actor: &str) -> RunnerConfig {
        let mut cfg = RunnerConfig::new(actor);
        cfg.naming = self.naming.clone();
        cfg.consume = ConsumeOptions {
            prefetch: 32,
            lease: Duration::from_millis(500),
        };
        cfg.redelivery_delay = Duration::from_millis(20);
        cfg.shutdown_grace = Duration::from_secs(2);
        cfg
    }

    /// Starts `actor` with the standard stack around `handler`.
    pub fn spawn<H>(&mut self, actor: &str, retry: RetryPolicies, handler: H)
    where
        H: Service<Envelope, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
        H::Future: Send + 'static,
    {
        let cfg = self.runner_config(actor);
        self.spawn_with(cfg, retry, handler);
    }

    pub fn spawn_with<H>(&mut self, cfg: RunnerConfig, retry: RetryPolicies, handler: H)
    where
        H: Service<Envelope, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
        H::Future: Send + 'static,
    {
        let stack = actor_stack(
            StackConfig {
                actor: cfg.actor.as_str().into(),
                retry,
                timeout: Duration::from_secs(5),
                store: self.store.clone(),
                metrics: self.metrics.actor(&cfg.actor),
            },
            handler,
        );
        self.spawn_stack(cfg, stack);
    }

    /// Starts a runner over any stack.
    pub fn spawn_stack<S>(&mut self, cfg: RunnerConfig, stack: S)
    where
        S: Service<Envelope, Response = troupe::Dispatch> + Clone + Send + 'static,
        S::Error: Into<tower::BoxError> + Send,
        S::Future: Send,
    {
        // As an actor process does (ensure_actor_queues), before anything is sent: the
        // memory broker refuses a publish to a queue that does not exist.
        for actor in [cfg.actor.as_str(), troupe::SINK, troupe::SUMP] {
            self.ensure(actor);
        }
        let runner = Runner::new(self.transport.clone(), stack, cfg);
        let token = self.token.clone();
        self.runners.push(tokio::spawn(async move {
            runner.run(token).await.expect("runner starts")
        }));
    }

    pub fn queue(&self, actor: &str) -> String {
        self.naming.queue_for(actor).expect("valid actor name")
    }

    /// Creates `actor`'s queue (the memory broker answers at once, so no await is needed).
    pub fn ensure(&self, actor: &str) {
        use futures_util::FutureExt;
        troupe::QueueAdmin::ensure_queue(&self.transport, &self.queue(actor))
            .now_or_never()
            .expect("the memory broker answers at once")
            .expect("ensure_queue");
    }

    /// Publishes `env` to the queue of its current actor.
    pub async fn send(&self, env: &Envelope) {
        self.ensure(env.destination());
        let q = self.queue(env.destination());
        self.transport
            .publish(&q, Bytes::from(env.to_vec()), PublishOptions::default())
            .await
            .expect("publish");
    }

    pub async fn send_raw(&self, actor: &str, body: Vec<u8>) {
        self.ensure(actor);
        self.transport
            .publish(&self.queue(actor), Bytes::from(body), PublishOptions::default())
            .await
            .expect("publish");
    }

    /// Takes `n` envelopes off `actor`'s queue (acking them), failing after [`WAIT`].
    pub async fn collect(&self, actor: &str, n: usize) -> Vec<Envelope> {
        let raw = self.collect_raw(actor, n).await;
        raw.iter()
            .map(|b| Envelope::from_slice(b, &DecodeLimits::default()).expect("mesh output decodes"))
            .collect()
    }

    pub async fn collect_raw(&self, actor: &str, n: usize) -> Vec<Bytes> {
        let mut consumer = self
            .transport
            .consume(&self.queue(actor), ConsumeOptions::default())
            .await
            .expect("consume");
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + WAIT;
        while out.len() < n {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let Ok(Some(Ok(d))) = next else {
                panic!(
                    "only {} of {n} envelopes reached {actor} within {WAIT:?}",
                    out.len()
                );
            };
            out.push(d.body().clone());
            d.ack().await.expect("ack");
        }
        out
    }

    /// Asserts that nothing more arrives on `actor`'s queue for `quiet`.
    pub async fn assert_quiet(&self, actor: &str, quiet: Duration) {
        let mut consumer = self
            .transport
            .consume(&self.queue(actor), ConsumeOptions::default())
            .await
            .expect("consume");
        if let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, consumer.next()).await {
            let body = String::from_utf8_lossy(d.body()).into_owned();
            panic!("unexpected extra envelope on {actor}: {body}");
        }
    }

    pub async fn shutdown(self) -> Vec<RunReport> {
        self.token.cancel();
        let mut reports = Vec::new();
        for r in self.runners {
            reports.push(r.await.expect("runner task"));
        }
        reports
    }
}

/// Publishes one envelope per payload, routed through `actors`, to the first actor's queue on
/// any transport; returns their ids. Every actor's queue (and x-sink, x-sump) is created
/// first, as a deployment does: an envelope reaching an actor whose runner has not started
/// yet would otherwise go to x-sump as `UnknownActor`.
pub async fn send_through<T: Transport + troupe::QueueAdmin>(
    transport: &T,
    naming: &QueueNaming,
    actors: &[&str],
    payloads: impl IntoIterator<Item = serde_json::Value>,
) -> std::collections::HashSet<String> {
    for actor in actors {
        troupe::core::ensure_actor_queues(transport, naming, actor)
            .await
            .expect("ensure the actor's queues");
    }
    let first = naming.queue_for(actors[0]).expect("valid actor name");
    let mut sent = std::collections::HashSet::new();
    for payload in payloads {
        let env = Envelope::new(troupe::Route::through(actors.iter().copied()), payload);
        sent.insert(env.id.clone());
        transport
            .publish(&first, Bytes::from(env.to_vec()), PublishOptions::default())
            .await
            .expect("publish");
    }
    sent
}

/// A consumer of `x-sink` on any transport.
pub async fn sink_of<T: Transport>(transport: &T, naming: &QueueNaming) -> T::Consumer {
    transport
        .consume(
            &naming.queue_for(troupe::SINK).expect("valid"),
            ConsumeOptions::default(),
        )
        .await
        .expect("consume x-sink")
}
