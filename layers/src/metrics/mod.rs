//! The metrics layer: the `asya_actor_*` family of the Asya sidecar, in `prometheus-client`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `asya_actor_messages_received_total` | counter | actor |
//! | `asya_actor_messages_processed_total` | counter | actor |
//! | `asya_actor_messages_sent_total` | counter (after publish is confirmed) | actor, destination |
//! | `asya_actor_messages_failed_total` | counter | actor, reason |
//! | `asya_actor_retries_total` | counter | actor |
//! | `asya_actor_processing_duration_seconds` | histogram (whole stack below this layer) | actor |
//! | `asya_actor_handler_duration_seconds` | histogram (handler only, see [`HandlerTimingLayer`]) | actor |
//! | `asya_actor_envelope_size_bytes` | histogram (incoming body) | actor |
//! | `asya_actor_active_messages` | gauge | actor |
//!
//! Register the families once per process with [`MeshMetrics::new`], then take one
//! [`ActorMetrics`] per actor.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::{BoxFuture, FutureExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};
use troupe_core::{Dispatch, Envelope, Outcome, Phase, SINK, SUMP};

mod histogram;

use histogram::ShardedHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActorLabel {
    actor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SentLabels {
    actor: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    actor: String,
    reason: String,
}

type Histograms = Family<ActorLabel, ShardedHistogram, fn() -> ShardedHistogram>;

fn duration_histogram() -> ShardedHistogram {
    // 100 µs .. ~104 s
    ShardedHistogram::new(exponential_buckets(0.0001, 2.0, 21))
}

fn size_histogram() -> ShardedHistogram {
    // 64 B .. 64 MiB
    ShardedHistogram::new(exponential_buckets(64.0, 4.0, 11))
}

/// Most distinct values a label taken from envelope content (destination actor, failure
/// reason) may have; later newcomers are counted as `other`. Routes and reasons come from
/// messages, so without a bound a stream of made-up names would grow the metric set forever.
pub const MAX_LABEL_VALUES: usize = 256;

/// The values admitted so far for one content-derived label.
#[derive(Default)]
struct LabelBudget {
    admitted: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl LabelBudget {
    fn admit<'a>(&self, value: &'a str) -> &'a str {
        let known = |set: &std::collections::HashSet<String>| set.contains(value);
        if self.admitted.read().is_ok_and(|set| known(&set)) {
            return value;
        }
        // A poisoned lock still holds a valid set: every write below is a single insert.
        let mut set = self.admitted.write().unwrap_or_else(|p| p.into_inner());
        if known(&set) {
            return value;
        }
        if set.len() < MAX_LABEL_VALUES {
            set.insert(value.to_owned());
            value
        } else {
            "other"
        }
    }
}

struct Families {
    destinations: LabelBudget,
    reasons: LabelBudget,
    received: Family<ActorLabel, Counter>,
    processed: Family<ActorLabel, Counter>,
    sent: Family<SentLabels, Counter>,
    failed: Family<FailedLabels, Counter>,
    retries: Family<ActorLabel, Counter>,
    active: Family<ActorLabel, Gauge>,
    processing: Histograms,
    handler: Histograms,
    size: Histograms,
}

/// The metric families of one process, registered once.
#[derive(Clone)]
pub struct MeshMetrics {
    families: Arc<Families>,
}

impl MeshMetrics {
    /// Registers the `asya_actor_*` families in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let f = Families {
            destinations: LabelBudget::default(),
            reasons: LabelBudget::default(),
            received: Family::default(),
            processed: Family::default(),
            sent: Family::default(),
            failed: Family::default(),
            retries: Family::default(),
            active: Family::default(),
            processing: Family::new_with_constructor(duration_histogram),
            handler: Family::new_with_constructor(duration_histogram),
            size: Family::new_with_constructor(size_histogram),
        };
        let r = registry;
        r.register(
            "asya_actor_messages_received",
            "Envelopes received by the actor",
            f.received.clone(),
        );
        r.register(
            "asya_actor_messages_processed",
            "Envelopes the actor's stack answered",
            f.processed.clone(),
        );
        r.register(
            "asya_actor_messages_sent",
            "Envelopes published, after broker confirmation",
            f.sent.clone(),
        );
        r.register(
            "asya_actor_messages_failed",
            "Envelopes that failed, by reason",
            f.failed.clone(),
        );
        r.register(
            "asya_actor_retries",
            "Retries scheduled by the retry policy",
            f.retries.clone(),
        );
        r.register(
            "asya_actor_active_messages",
            "Envelopes being processed now",
            f.active.clone(),
        );
        r.register(
            "asya_actor_processing_duration_seconds",
            "Time from receipt to answer, layers included",
            f.processing.clone(),
        );
        r.register(
            "asya_actor_handler_duration_seconds",
            "Time in the handler",
            f.handler.clone(),
        );
        r.register(
            "asya_actor_envelope_size_bytes",
            "Size of received envelopes",
            f.size.clone(),
        );
        Self {
            families: Arc::new(f),
        }
    }

    /// The handles of actor `actor`.
    pub fn actor(&self, actor: &str) -> ActorMetrics {
        let f = &self.families;
        let label = ActorLabel {
            actor: actor.to_owned(),
        };
        ActorMetrics {
            inner: Arc::new(Handles {
                actor: actor.to_owned(),
                sent_to: std::sync::RwLock::default(),
                received: f.received.get_or_create(&label).clone(),
                processed: f.processed.get_or_create(&label).clone(),
                retries: f.retries.get_or_create(&label).clone(),
                active: f.active.get_or_create(&label).clone(),
                processing: f.processing.get_or_create(&label).clone(),
                handler: f.handler.get_or_create(&label).clone(),
                size: f.size.get_or_create(&label).clone(),
                families: f.clone(),
            }),
        }
    }
}

struct Handles {
    actor: String,
    /// `sent` counters by destination, resolved once: a confirmed publish then costs a
    /// read-locked lookup, not two label strings and a family lookup.
    sent_to: std::sync::RwLock<std::collections::HashMap<String, Counter>>,
    received: Counter,
    processed: Counter,
    retries: Counter,
    active: Gauge,
    processing: ShardedHistogram,
    handler: ShardedHistogram,
    size: ShardedHistogram,
    families: Arc<Families>,
}

impl Handles {
    fn failed(&self, reason: &str) {
        self.families
            .failed
            .get_or_create(&FailedLabels {
                actor: self.actor.clone(),
                reason: self.families.reasons.admit(reason).to_owned(),
            })
            .inc();
    }

    fn sent(&self, destination: &str) {
        if let Some(counter) = self.sent_to.read().ok().and_then(|m| m.get(destination).cloned()) {
            counter.inc();
            return;
        }
        let admitted = self.families.destinations.admit(destination);
        let counter = self
            .families
            .sent
            .get_or_create(&SentLabels {
                actor: self.actor.clone(),
                destination: admitted.to_owned(),
            })
            .clone();
        counter.inc();
        // Only admitted destinations are cached: the map stays within the label budget.
        if admitted == destination {
            // A poisoned map still holds valid counters: every write is a single insert.
            let mut map = self.sent_to.write().unwrap_or_else(|p| p.into_inner());
            map.entry(destination.to_owned()).or_insert(counter);
        }
    }

    /// Counts what a dispatch means: failures by reason, scheduled retries.
    fn classify(&self, dispatch: &Dispatch) {
        for p in dispatch.publications() {
            let status = p.envelope.status.as_ref();
            let phase = status.and_then(|s| s.phase);
            let reason = || {
                status
                    .and_then(|s| s.reason.as_ref())
                    .map_or("unknown", |r| r.as_str())
            };
            if p.actor == SUMP || (p.actor == SINK && phase == Some(Phase::Failed)) {
                self.failed(reason());
            } else if phase == Some(Phase::Retrying) && p.actor == self.actor {
                self.retries.inc();
            }
        }
    }
}

/// One actor's metric handles; cheap to clone.
#[derive(Clone)]
pub struct ActorMetrics {
    inner: Arc<Handles>,
}

/// Current values of an actor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActorSnapshot {
    /// Envelopes received.
    pub received: u64,
    /// Envelopes answered by the stack.
    pub processed: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Envelopes in progress now.
    pub active: i64,
}

impl ActorMetrics {
    /// The actor's counters now.
    pub fn snapshot(&self) -> ActorSnapshot {
        let h = &self.inner;
        ActorSnapshot {
            received: h.received.get(),
            processed: h.processed.get(),
            retries: h.retries.get(),
            active: h.active.get(),
        }
    }

    /// The layer recording received/processed/sent/failed/retries, sizes and durations.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer {
            metrics: self.clone(),
        }
    }

    /// The layer timing the handler alone; place it right above the handler.
    pub fn handler_layer(&self) -> HandlerTimingLayer {
        HandlerTimingLayer {
            metrics: self.clone(),
        }
    }
}

/// See [`ActorMetrics::layer`].
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: ActorMetrics,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    metrics: ActorMetrics,
}

/// Decrements the active gauge however the call ends (including cancellation).
struct Active(Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<S> Service<Envelope> for Metrics<S>
where
    S: Service<Envelope, Response = Dispatch>,
    S::Future: Send + 'static,
{
    type Response = Dispatch;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Dispatch, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let h = self.metrics.inner.clone();
        h.received.inc();
        h.size.observe(env.wire_len() as f64);
        h.active.inc();
        let active = Active(h.active.clone());
        let start = Instant::now();
        let call = self.inner.call(env);
        async move {
            let result = call.await;
            drop(active);
            h.processing.observe(start.elapsed().as_secs_f64());
            match result {
                Ok(mut dispatch) => {
                    h.processed.inc();
                    h.classify(&dispatch);
                    if !dispatch.publications().is_empty() {
                        let sent = dispatch.share_publications();
                        dispatch.on_published(Box::new(move || {
                            async move {
                                for p in sent.iter() {
                                    h.sent(&p.actor);
                                }
                            }
                            .boxed()
                        }));
                    }
                    Ok(dispatch)
                }
                Err(e) => {
                    h.failed("infrastructure");
                    Err(e)
                }
            }
        }
        .boxed()
    }
}

/// See [`ActorMetrics::handler_layer`].
#[derive(Clone)]
pub struct HandlerTimingLayer {
    metrics: ActorMetrics,
}

impl<S> Layer<S> for HandlerTimingLayer {
    type Service = HandlerTiming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HandlerTiming {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`HandlerTimingLayer`].
#[derive(Clone)]
pub struct HandlerTiming<S> {
    inner: S,
    metrics: ActorMetrics,
}

impl<S> Service<Envelope> for HandlerTiming<S>
where
    S: Service<Envelope, Response = Outcome>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Outcome, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let histogram = self.metrics.inner.handler.clone();
        let start = Instant::now();
        let call = self.inner.call(env);
        async move {
            let r = call.await;
            histogram.observe(start.elapsed().as_secs_f64());
            r
        }
        .boxed()
    }
}

/// The registry in the Prometheus text format, for a `/metrics` endpoint.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceBuilder, ServiceExt};
    use troupe_core::{HandlerError, Route, handler_fn};

    use crate::retry::{RetryLayer, RetryPolicies, RetryPolicy};
    use crate::route::RouteLayer;

    #[test]
    fn content_derived_labels_are_bounded() {
        let budget = LabelBudget::default();
        for i in 0..MAX_LABEL_VALUES {
            assert_eq!(budget.admit(&format!("actor-{i}")), format!("actor-{i}"));
        }
        assert_eq!(budget.admit("one-too-many"), "other");
        assert_eq!(budget.admit("actor-7"), "actor-7", "admitted values stay");
    }

    #[tokio::test]
    async fn counts_processed_sent_retries_and_failures() {
        let mut registry = Registry::default();
        let mesh = MeshMetrics::new(&mut registry);
        let m = mesh.actor("a");
        let handler = handler_fn(|e: Envelope| async move {
            if e.payload == serde_json::json!("fail") {
                Err(HandlerError::new("ValueError", "no"))
            } else {
                Ok(Outcome::forward(e))
            }
        });
        let svc = ServiceBuilder::new()
            .layer(m.layer())
            .layer(RetryLayer::new(
                "a",
                RetryPolicies::new(RetryPolicy::constant(2, std::time::Duration::ZERO)),
            ))
            .layer(RouteLayer::new("a"))
            .layer(m.handler_layer())
            .service(handler);
        let mut ok = svc
            .clone()
            .oneshot(Envelope::new(Route::through(["a", "b"]), serde_json::json!("ok")))
            .await
            .unwrap();
        for hook in ok.take_hooks() {
            hook().await;
        }
        let failing = Envelope::new(Route::through(["a"]), serde_json::json!("fail"));
        let retry = svc.clone().oneshot(failing).await.unwrap();
        let again = retry.publications()[0].envelope.clone();
        svc.oneshot(again).await.unwrap();

        let text = render(&registry);
        for line in [
            r#"asya_actor_messages_received_total{actor="a"} 3"#,
            r#"asya_actor_messages_processed_total{actor="a"} 3"#,
            r#"asya_actor_messages_sent_total{actor="a",destination="b"} 1"#,
            r#"asya_actor_retries_total{actor="a"} 1"#,
            r#"asya_actor_messages_failed_total{actor="a",reason="PolicyExhausted"} 1"#,
            r#"asya_actor_active_messages{actor="a"} 0"#,
            r#"asya_actor_handler_duration_seconds_count{actor="a"} 3"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
