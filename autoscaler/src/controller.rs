//! The controller: one polling loop per `AsyncActor`.
//!
//! A watch on AsyncActors starts a loop for each new resource, wakes it when its spec
//! changes (a new `generation`, not our own status writes) and stops it when the resource
//! is deleted. Each loop probes the queue, decides with the [`policy`](crate::policy),
//! writes the Deployment's `/scale` when the decision differs, records the decision in the
//! resource's status, in metrics and (for changes and problems) in Kubernetes Events, and
//! sleeps until the policy's next poll: a second or more while replicas run, a fraction of a
//! second at zero so activation is quick.
//!
//! A loop per actor, rather than kube-runtime's `Controller`, because the work is
//! time-driven (each actor polls at its own cadence) and the status this loop writes on every
//! poll would otherwise trigger a reconcile of its own. Each actor has exactly one loop, so
//! there is one writer of its Deployment's scale.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use troupe::QueueNaming;

use crate::crd::{AsyncActor, ScaleDirection};
use crate::metrics::{ActorLabels, Metrics};
use crate::policy::{Decision, History, Observation, Policy, Reason};
use crate::probe::Probes;
use crate::scale::{ScaleError, Scaler};

/// How many times a poll re-reads and re-decides after a conflicting write.
const CONFLICT_ATTEMPTS: usize = 3;

/// Controller-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often to poll an actor at zero replicas; bounds the time from the first envelope
    /// to the scale-up.
    pub idle_poll_interval: Duration,
    /// How long to wait after a failed poll (unreachable broker or API server, bad spec).
    pub retry_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idle_poll_interval: Duration::from_millis(250),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// Monotonic time for the policy and wall time for the status; tests drive it by hand.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The real clocks.
    System(Instant),
    /// A clock that moves only when told (milliseconds since its start).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The real clocks, starting now.
    pub fn system() -> Self {
        Clock::System(Instant::now())
    }

    /// A hand-driven clock at zero, and the handle that advances it.
    pub fn manual() -> (Self, Arc<AtomicU64>) {
        let millis = Arc::new(AtomicU64::new(0));
        (Clock::Manual(millis.clone()), millis)
    }

    /// Time since the clock started.
    pub fn now(&self) -> Duration {
        match self {
            Clock::System(origin) => origin.elapsed(),
            Clock::Manual(millis) => Duration::from_millis(millis.load(Ordering::SeqCst)),
        }
    }

    /// Wall-clock time; a manual clock counts from 2026-01-01T00:00:00Z.
    pub fn wall(&self) -> Timestamp {
        match self {
            Clock::System(_) => Timestamp::now(),
            Clock::Manual(_) => {
                let start = Timestamp::from_second(1_767_225_600).unwrap_or(Timestamp::UNIX_EPOCH);
                start
                    .checked_add(SignedDuration::try_from(self.now()).unwrap_or(SignedDuration::ZERO))
                    .unwrap_or(start)
            }
        }
    }
}

/// What every actor's loop shares.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// Depth probes, one per broker.
    pub probes: Probes,
    /// Metrics.
    pub metrics: Metrics,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The clocks.
    pub clock: Clock,
    /// Settings.
    pub settings: Settings,
}

impl Context {
    /// A context that reports Events as `reporter`.
    pub fn new(
        client: kube::Client,
        probes: Probes,
        metrics: Metrics,
        reporter: Reporter,
        settings: Settings,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            probes,
            metrics,
            clock: Clock::system(),
            settings,
        }
    }
}

/// What one actor's loop remembers between polls.
#[derive(Debug, Default)]
pub struct ActorState {
    history: Option<History>,
    /// The queue created last, as (broker, name): a spec change may name another.
    queue_ensured: Option<(troupe::broker::Broker, String)>,
    problem: Option<&'static str>,
    /// When the last full poll (scale read, decision, status write) ran, and the replicas
    /// it left.
    last_full_poll: Option<(Duration, u32)>,
}

/// A poll that could not decide.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error("{0}")]
    Probe(#[from] crate::probe::ProbeError),
    #[error("{0}")]
    Scale(#[from] ScaleError),
}

impl PollError {
    /// The condition reason and metric kind.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            PollError::Spec(_) => ("InvalidSpec", "spec"),
            PollError::Probe(_) => ("ProbeFailed", "probe"),
            PollError::Scale(ScaleError::NotFound { .. }) => ("ScaleTargetNotFound", "kube"),
            PollError::Scale(_) => ("ScaleFailed", "kube"),
        }
    }
}

/// Polls `actor` once: probe, decide, scale, report. Returns how long to wait before the
/// next poll. Failures are reported (status condition, Event, metric, log), not returned.
pub async fn poll(actor: &AsyncActor, state: &mut ActorState, ctx: &Context) -> Duration {
    let labels = ActorLabels {
        namespace: actor.namespace().unwrap_or_default(),
        name: actor.name_any(),
    };
    match try_poll(actor, state, ctx, &labels).await {
        Ok(outcome) => {
            state.problem = None;
            outcome.decision.next_poll
        }
        Err(error) => {
            let (reason, kind) = error.kind();
            ctx.metrics.failed(&labels, kind);
            tracing::warn!(namespace = %labels.namespace, actor = %labels.name, %error, "poll failed");
            if let PollError::Probe(_) = &error {
                ctx.probes.reset(actor.spec.transport.kind.broker()).await;
            }
            if state.problem != Some(reason) {
                state.problem = Some(reason);
                publish_event(ctx, actor, EventType::Warning, reason, error.to_string()).await;
            }
            let condition = condition("Ready", false, reason, &error.to_string(), ctx, actor);
            patch_status(
                ctx,
                actor,
                serde_json::json!({ "conditions": merge_conditions(actor, [condition]) }),
            )
            .await;
            ctx.settings.retry_after
        }
    }
}

struct Outcome {
    decision: Decision,
}

async fn try_poll(
    actor: &AsyncActor,
    state: &mut ActorState,
    ctx: &Context,
    labels: &ActorLabels,
) -> Result<Outcome, PollError> {
    let spec = &actor.spec;
    let policy = Policy::new(&spec.scaling, ctx.settings.idle_poll_interval)
        .map_err(|e| PollError::Spec(e.to_string()))?;
    let queue_namespace = spec.queue_namespace.as_deref().unwrap_or(&labels.namespace);
    let queue = QueueNaming::new(&spec.queue_prefix, queue_namespace)
        .and_then(|naming| naming.queue_for(&spec.actor))
        .map_err(|e| PollError::Spec(e.to_string()))?;
    let broker = spec.transport.kind.broker();
    let ensured = (broker, queue.clone());
    if state.queue_ensured.as_ref() != Some(&ensured) {
        ctx.probes.ensure_queue(broker, &queue).await?;
        state.queue_ensured = Some(ensured);
    }
    let depth = ctx.probes.depth(broker, &queue).await?;

    // The fast polls of an idle actor at zero only look at the queue. Reading /scale and
    // writing status 4 times a second per idle actor would load the API server for
    // nothing; a full poll still runs every pollingInterval (someone may have scaled by
    // hand, or the warm pool may need filling).
    if let Some((at, 0)) = state.last_full_poll
        && depth.total() <= u64::from(policy.activation)
        && ctx.clock.now().saturating_sub(at) < policy.polling_interval
    {
        ctx.metrics
            .decided(labels, depth.total(), depth.in_flight, 0, 0, Reason::Idle);
        return Ok(Outcome {
            decision: Decision {
                desired: 0,
                reason: Reason::Idle,
                active: false,
                next_poll: policy.idle_polling_interval,
            },
        });
    }
    let scaler = Scaler::new(ctx.client.clone(), &labels.namespace);
    let target = &spec.scale_target_ref.name;

    let mut attempt = 0;
    let (decision, current, written) = loop {
        attempt += 1;
        let seen = scaler.get(target).await?;
        let now = ctx.clock.now();
        let history = state
            .history
            .get_or_insert_with(|| History::since(restored_last_active(actor, ctx)));
        let decision = policy.decide(
            history,
            Observation {
                depth: depth.total(),
                in_flight: depth.in_flight,
                current: seen.replicas,
                now,
            },
        );
        if decision.desired == seen.replicas {
            break (decision, seen.replicas, seen.replicas);
        }
        match scaler.set(target, &seen, decision.desired).await {
            Ok(written) => break (decision, seen.replicas, written.replicas),
            Err(ScaleError::Conflict { .. }) if attempt < CONFLICT_ATTEMPTS => {
                tracing::debug!(namespace = %labels.namespace, actor = %labels.name, "scale conflict; reading again");
            }
            Err(e) => return Err(e.into()),
        }
    };
    ctx.metrics.decided(
        labels,
        depth.total(),
        depth.in_flight,
        current,
        decision.desired,
        decision.reason,
    );
    tracing::debug!(
        namespace = %labels.namespace, actor = %labels.name, queue = %queue,
        depth = depth.total(), in_flight = depth.in_flight, current, desired = decision.desired,
        reason = %decision.reason, "decided"
    );

    let mut status = serde_json::json!({
        "desiredReplicas": decision.desired,
        "currentReplicas": written,
        "lastDepth": depth.total(),
        "lastInFlight": depth.in_flight,
        "lastDecisionReason": decision.reason.as_str(),
        "observedGeneration": actor.metadata.generation,
    });
    if let Some(last_active) = state.history.as_ref().and_then(|h| h.last_active) {
        let ago = ctx.clock.now().saturating_sub(last_active);
        let at = ctx
            .clock
            .wall()
            .checked_sub(SignedDuration::try_from(ago).unwrap_or(SignedDuration::ZERO))
            .unwrap_or_else(|_| ctx.clock.wall());
        status["lastActiveTime"] = serde_json::to_value(Time(at)).unwrap_or_default();
    }
    if written != current {
        let direction = if written > current {
            ScaleDirection::Up
        } else {
            ScaleDirection::Down
        };
        ctx.metrics.scaled(labels, direction);
        status["lastScaleTime"] = serde_json::to_value(Time(ctx.clock.wall())).unwrap_or_default();
        status["lastScaleDirection"] = serde_json::to_value(direction).unwrap_or_default();
        tracing::info!(
            namespace = %labels.namespace, actor = %labels.name, queue = %queue,
            from = current, to = written, reason = %decision.reason, depth = depth.total(), "scaled"
        );
        let note = format!(
            "{current} -> {written} replicas: {} (depth {}, {} in flight)",
            decision.reason,
            depth.total(),
            depth.in_flight
        );
        publish_event(
            ctx,
            actor,
            EventType::Normal,
            event_reason(decision.reason, direction),
            note,
        )
        .await;
    }
    state.last_full_poll = Some((ctx.clock.now(), written));
    let ready = condition(
        "Ready",
        true,
        "Polling",
        &format!("polling queue {queue}"),
        ctx,
        actor,
    );
    let active = condition(
        "Active",
        decision.active,
        if decision.active {
            "QueueHasWork"
        } else {
            "QueueIdle"
        },
        &format!("depth {} (activation above {})", depth.total(), policy.activation),
        ctx,
        actor,
    );
    status["conditions"] = merge_conditions(actor, [ready, active]);
    patch_status(ctx, actor, status).await;
    Ok(Outcome { decision })
}

fn event_reason(reason: Reason, direction: ScaleDirection) -> &'static str {
    match (reason, direction) {
        (Reason::Activation | Reason::WarmPool, _) => "Activated",
        (Reason::ScaleToZero, _) => "ScaledToZero",
        (_, ScaleDirection::Up) => "ScaledUp",
        (_, ScaleDirection::Down) => "ScaledDown",
    }
}

/// The last activity recorded in status, on this clock (after an autoscaler restart).
fn restored_last_active(actor: &AsyncActor, ctx: &Context) -> Option<Duration> {
    let Time(at) = actor.status.as_ref()?.last_active_time.as_ref()?;
    let ago = Duration::try_from(ctx.clock.wall().duration_since(*at)).unwrap_or(Duration::ZERO);
    Some(ctx.clock.now().saturating_sub(ago))
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    ctx: &Context,
    actor: &AsyncActor,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let previous = actor
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind));
    // The transition time changes only when the status does.
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(ctx.clock.wall()),
    };
    Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time,
        observed_generation: actor.metadata.generation,
    }
}

/// Status conditions with `updates` replacing those of the same type.
fn merge_conditions<const N: usize>(actor: &AsyncActor, updates: [Condition; N]) -> serde_json::Value {
    let mut conditions: Vec<Condition> = actor
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    for update in updates {
        match conditions.iter_mut().find(|c| c.type_ == update.type_) {
            Some(existing) => *existing = update,
            None => conditions.push(update),
        }
    }
    serde_json::to_value(conditions).unwrap_or_default()
}

async fn patch_status(ctx: &Context, actor: &AsyncActor, status: serde_json::Value) {
    let (Some(namespace), name) = (actor.namespace(), actor.name_any()) else {
        return;
    };
    let api: Api<AsyncActor> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({ "status": status });
    if let Err(error) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        ctx.metrics.failed(
            &ActorLabels {
                namespace: namespace.clone(),
                name: name.clone(),
            },
            "status",
        );
        tracing::warn!(%namespace, actor = %name, %error, "status update failed");
    }
}

async fn publish_event(ctx: &Context, actor: &AsyncActor, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Scale".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &actor.object_ref(&())).await {
        tracing::warn!(actor = %actor.name_any(), %error, "event not published");
    }
}

/// Watches AsyncActors through `api` (one namespace or all) and runs a polling loop for
/// each until `shutdown`.
pub async fn run(api: Api<AsyncActor>, ctx: Context, shutdown: CancellationToken) {
    let ctx = Arc::new(ctx);
    let mut loops: HashMap<(String, String), watch::Sender<Arc<AsyncActor>>> = HashMap::new();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.next() => event,
        };
        let Some(event) = event else { break };
        match event {
            Ok(watcher::Event::Apply(actor) | watcher::Event::InitApply(actor)) => {
                let key = (actor.namespace().unwrap_or_default(), actor.name_any());
                let actor = Arc::new(actor);
                match loops.get(&key) {
                    // Only a new generation (a spec change) wakes the loop early.
                    Some(sender) if !sender.is_closed() => {
                        sender.send_if_modified(|current| {
                            let changed = current.metadata.generation != actor.metadata.generation;
                            *current = actor.clone();
                            changed
                        });
                    }
                    _ => {
                        tracing::info!(namespace = %key.0, actor = %key.1, "watching actor");
                        let (sender, receiver) = watch::channel(actor);
                        tokio::spawn(actor_loop(receiver, ctx.clone(), shutdown.child_token()));
                        loops.insert(key, sender);
                    }
                }
            }
            Ok(watcher::Event::Delete(actor)) => {
                let key = (actor.namespace().unwrap_or_default(), actor.name_any());
                tracing::info!(namespace = %key.0, actor = %key.1, "actor deleted; its Deployment keeps its replicas");
                loops.remove(&key);
                ctx.metrics.forget(&ActorLabels {
                    namespace: key.0,
                    name: key.1,
                });
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(error) => tracing::warn!(%error, "watching AsyncActors"),
        }
    }
}

async fn actor_loop(
    mut actor: watch::Receiver<Arc<AsyncActor>>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    let mut state = ActorState::default();
    loop {
        let current = actor.borrow_and_update().clone();
        let wait = poll(&current, &mut state, &ctx).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            changed = actor.changed() => if changed.is_err() {
                return; // deleted
            },
        }
    }
}
