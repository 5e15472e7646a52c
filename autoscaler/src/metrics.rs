//! The autoscaler's Prometheus metrics: every poll's depth and decision, every scale.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::crd::ScaleDirection;
use crate::policy::Reason;

/// One actor: the AsyncActor's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActorLabels {
    /// The AsyncActor's namespace.
    pub namespace: String,
    /// The AsyncActor's name.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    namespace: String,
    name: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelValue)]
enum Direction {
    Up,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ScaleLabels {
    namespace: String,
    name: String,
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    namespace: String,
    name: String,
    kind: &'static str,
}

/// The autoscaler's metrics, registered under `troupe_autoscaler_*`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    desired: Family<ActorLabels, Gauge>,
    current: Family<ActorLabels, Gauge>,
    depth: Family<ActorLabels, Gauge>,
    in_flight: Family<ActorLabels, Gauge>,
    decisions: Family<ReasonLabels, Counter>,
    scales: Family<ScaleLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("troupe_autoscaler");
        registry.register(
            "desired_replicas",
            "Replicas the autoscaler last asked for",
            metrics.desired.clone(),
        );
        registry.register(
            "current_replicas",
            "The Deployment's replicas at the last poll",
            metrics.current.clone(),
        );
        registry.register(
            "queue_depth",
            "Queue depth at the last poll (ready + in flight + delayed)",
            metrics.depth.clone(),
        );
        registry.register(
            "queue_in_flight",
            "Messages delivered and not yet settled at the last poll",
            metrics.in_flight.clone(),
        );
        registry.register(
            "decisions",
            "Scaling decisions, by reason",
            metrics.decisions.clone(),
        );
        registry.register(
            "scales",
            "Changes written to a Deployment's /scale, by direction",
            metrics.scales.clone(),
        );
        registry.register(
            "errors",
            "Polls that failed, by kind (probe, kube, spec)",
            metrics.errors.clone(),
        );
        metrics
    }

    /// Records one poll's observation and decision.
    pub fn decided(
        &self,
        actor: &ActorLabels,
        depth: u64,
        in_flight: u64,
        current: u32,
        desired: u32,
        reason: Reason,
    ) {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.depth.get_or_create(actor).set(as_i64(depth));
        self.in_flight.get_or_create(actor).set(as_i64(in_flight));
        self.current.get_or_create(actor).set(i64::from(current));
        self.desired.get_or_create(actor).set(i64::from(desired));
        self.decisions
            .get_or_create(&ReasonLabels {
                namespace: actor.namespace.clone(),
                name: actor.name.clone(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Records a change written to the Deployment.
    pub fn scaled(&self, actor: &ActorLabels, direction: ScaleDirection) {
        let direction = match direction {
            ScaleDirection::Up => Direction::Up,
            ScaleDirection::Down => Direction::Down,
        };
        self.scales
            .get_or_create(&ScaleLabels {
                namespace: actor.namespace.clone(),
                name: actor.name.clone(),
                direction,
            })
            .inc();
    }

    /// Records a failed poll; `kind` is `probe`, `kube` or `spec`.
    pub fn failed(&self, actor: &ActorLabels, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                namespace: actor.namespace.clone(),
                name: actor.name.clone(),
                kind,
            })
            .inc();
    }

    /// Drops a deleted actor's series.
    pub fn forget(&self, actor: &ActorLabels) {
        for family in [&self.desired, &self.current, &self.depth, &self.in_flight] {
            family.remove(actor);
        }
    }
}
