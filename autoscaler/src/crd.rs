//! The `AsyncActor` custom resource (`asya.sh/v1alpha1`): which queue an actor consumes, on
//! which broker, which Deployment runs it, and how that Deployment scales.
//!
//! The CRD manifest under `deploy/` is generated from these types (`troupe-autoscaler crd`),
//! so the Rust type is the single source of truth for the schema.
//!
//! ```yaml
//! apiVersion: asya.sh/v1alpha1
//! kind: AsyncActor
//! metadata: { name: embed, namespace: ml }
//! spec:
//!   actor: embed
//!   transport: { type: nats, connectionSecretRef: { name: troupe-broker } }
//!   scaleTargetRef: { name: embed }
//!   scaling: { maxReplicaCount: 8, queueLength: 20 }
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An actor whose Deployment the autoscaler scales on its queue depth.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "asya.sh",
    version = "v1alpha1",
    kind = "AsyncActor",
    plural = "asyncactors",
    shortname = "aact",
    namespaced,
    status = "AsyncActorStatus",
    printcolumn = r#"{"name":"Actor","type":"string","jsonPath":".spec.actor"}"#,
    printcolumn = r#"{"name":"Transport","type":"string","jsonPath":".spec.transport.type"}"#,
    printcolumn = r#"{"name":"Depth","type":"integer","jsonPath":".status.lastDepth"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.lastDecisionReason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AsyncActorSpec {
    /// The actor's name; its queue is `{queuePrefix}-{queueNamespace}-{actor}`.
    #[schemars(length(min = 1, max = 63))]
    pub actor: String,
    /// The namespace part of the queue name; defaults to the resource's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_namespace: Option<String>,
    /// The first part of the queue name (Asya's is `asya`).
    #[serde(default = "default_queue_prefix")]
    pub queue_prefix: String,
    /// The broker holding the queue.
    pub transport: TransportRef,
    /// The Deployment to scale (same namespace), through its `/scale` subresource.
    pub scale_target_ref: ScaleTargetRef,
    /// How to scale it; every field has a default.
    #[serde(default)]
    pub scaling: Scaling,
}

fn default_queue_prefix() -> String {
    "asya".to_owned()
}

/// The broker of an actor's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransportRef {
    /// Which broker.
    #[serde(rename = "type")]
    pub kind: TransportKind,
    /// The Secret with the broker's connection settings (`TROUPE_*` variables). The actor's
    /// sidecar and the autoscaler both load it into their environment (`envFrom`), so the
    /// autoscaler never reads Secrets through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret_ref: Option<SecretRef>,
}

/// The brokers an actor's queue can live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// The embedded broker (tests and single-process setups).
    Memory,
    /// NATS JetStream.
    Nats,
    /// RabbitMQ (AMQP 0-9-1).
    Amqp,
    /// Amazon SQS.
    Sqs,
    /// Kafka; depth is the consumer group's lag.
    Kafka,
}

impl TransportKind {
    /// The same broker as the transports crate names it.
    pub fn broker(self) -> troupe::broker::Broker {
        use troupe::broker::Broker;
        match self {
            TransportKind::Memory => Broker::Memory,
            TransportKind::Nats => Broker::Nats,
            TransportKind::Amqp => Broker::Amqp,
            TransportKind::Sqs => Broker::Sqs,
            TransportKind::Kafka => Broker::Kafka,
        }
    }
}

/// A Secret in the resource's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}

/// The workload to scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleTargetRef {
    /// The Deployment's name, in the resource's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Scaling settings. The names and meanings follow KEDA's `ScaledObject` where KEDA has the
/// setting; the defaults are Troupe's (see `docs/autoscaler.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scaling {
    /// When false the autoscaler leaves the Deployment's replicas alone.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fewest replicas; 0 allows scaling to zero.
    #[serde(default)]
    pub min_replica_count: u32,
    /// Most replicas.
    #[serde(default = "default_max")]
    #[schemars(range(min = 1))]
    pub max_replica_count: u32,
    /// Target queue depth per replica: desired = ceil(depth / queueLength).
    #[serde(default = "default_queue_length")]
    #[schemars(range(min = 1))]
    pub queue_length: u32,
    /// The actor is active (leaves zero, restarts the cooldown) while depth exceeds this.
    #[serde(default)]
    pub activation_queue_length: u32,
    /// Seconds between depth polls while the Deployment has replicas. At zero replicas the
    /// autoscaler polls much faster (its `--idle-poll-interval`), so activation is quick.
    #[serde(default = "default_polling_interval")]
    #[schemars(range(min = 1))]
    pub polling_interval: u32,
    /// Seconds without activity before scaling down to the idle level (idleReplicaCount,
    /// else minReplicaCount).
    #[serde(default = "default_cooldown")]
    pub cooldown_period: u32,
    /// Replicas to keep warm while there is no work (a warm pool); unset means
    /// minReplicaCount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_replica_count: Option<u32>,
    /// Seconds without activity before the last replica goes (a separate, usually longer,
    /// delay than the cooldown); unset means the cooldown alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_delay: Option<u32>,
    /// Seconds of scale-down stabilisation: a scale-down goes only to the highest
    /// recommendation of this window (as the HPA's `stabilizationWindowSeconds`).
    #[serde(default = "default_stabilization")]
    pub scale_down_stabilization_window: u32,
    /// No metric-driven change while depth per replica is within this percentage of the
    /// target (the HPA's 10 % tolerance).
    #[serde(default = "default_tolerance")]
    #[schemars(range(max = 100))]
    pub tolerance_percent: u32,
}

fn yes() -> bool {
    true
}
fn default_max() -> u32 {
    10
}
fn default_queue_length() -> u32 {
    5
}
fn default_polling_interval() -> u32 {
    5
}
fn default_cooldown() -> u32 {
    60
}
fn default_stabilization() -> u32 {
    // 120 s rather than the HPA's 300 s: long enough that a steady load, whose depth falls
    // to what is in flight once the queue is caught up, does not flap (see
    // docs/autoscaler/simulation.md), short enough to give pods back soon after a burst.
    120
}
fn default_tolerance() -> u32 {
    10
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            enabled: true,
            min_replica_count: 0,
            max_replica_count: default_max(),
            queue_length: default_queue_length(),
            activation_queue_length: 0,
            polling_interval: default_polling_interval(),
            cooldown_period: default_cooldown(),
            idle_replica_count: None,
            scale_to_zero_delay: None,
            scale_down_stabilization_window: default_stabilization(),
            tolerance_percent: default_tolerance(),
        }
    }
}

/// What the autoscaler last saw and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AsyncActorStatus {
    /// The replicas the autoscaler last asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<u32>,
    /// The Deployment's replicas when it last looked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<u32>,
    /// Queue depth at the last poll: ready + in flight + delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_depth: Option<u64>,
    /// Of that depth, messages delivered and not yet settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_in_flight: Option<u64>,
    /// When the autoscaler last changed the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// `Up` or `Down`: the last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_direction: Option<ScaleDirection>,
    /// Why the last decision was what it was (e.g. `Activation`, `Stabilizing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_reason: Option<String>,
    /// When the queue last had work above the activation threshold; restores the cooldown
    /// clock when the autoscaler restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_time: Option<Time>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the queue can be probed and the target scaled) and `Active` (there is work).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Which way a scale went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ScaleDirection {
    /// More replicas.
    Up,
    /// Fewer replicas.
    Down,
}

/// The header of the committed CRD manifest.
pub const CRD_HEADER: &str =
    "# Generated by `troupe-autoscaler crd` from autoscaler/src/crd.rs; do not edit.\n";

/// The CRD manifest as committed under `deploy/base/asyncactor-crd.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    Ok(format!(
        "{CRD_HEADER}{}",
        serde_yaml_ng::to_string(&AsyncActor::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_is_the_generated_one() -> Result<(), Box<dyn std::error::Error>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/asyncactor-crd.yaml");
        let committed = std::fs::read_to_string(path)?;
        assert!(
            committed == crd_yaml()?,
            "{path} is stale: regenerate it with `cargo run -p troupe-autoscaler -- crd > deploy/base/asyncactor-crd.yaml`"
        );
        Ok(())
    }

    #[test]
    fn a_minimal_spec_takes_every_default() -> Result<(), serde_json::Error> {
        let spec: AsyncActorSpec = serde_json::from_value(serde_json::json!({
            "actor": "embed",
            "transport": {"type": "nats"},
            "scaleTargetRef": {"name": "embed"}
        }))?;
        assert_eq!(spec.scaling, Scaling::default());
        assert_eq!(spec.queue_prefix, "asya");
        assert_eq!(spec.transport.kind.broker(), troupe::broker::Broker::Nats);
        Ok(())
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let error = serde_json::from_value::<AsyncActorSpec>(serde_json::json!({
            "actor": "embed",
            "transport": {"type": "nats"},
            "scaleTargetRef": {"name": "embed"},
            "scaling": {"maxReplicas": 3}
        }))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(error.contains("maxReplicas"), "{error}");
    }
}
