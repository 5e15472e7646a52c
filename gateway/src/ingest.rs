//! What the gateway reads from the broker: the ends of the pipeline (`x-sink`, `x-sump`)
//! and the runners' task events, each recorded in the store before it is acknowledged.
//!
//! Nothing is lost while the gateway is down: the three queues keep what arrives, and on
//! restart the gateway records it all. Nothing is counted twice: the store ignores copies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use troupe_core::event::{EventKind, HopOutput};
use troupe_core::headers::{SPAWNED, TASK};
use troupe_core::{
    ConsumeOptions, Consumer, DecodeLimits, Delivery, EVENTS, Envelope, Phase, SINK, SUMP, TaskEvent,
    Transport, TransportError,
};

use crate::api::Api;
use crate::ledger::BranchEnd;
use crate::metrics::GatewayMetrics;
use crate::store::{BranchEnding, Fact};

/// Which queue a message came from, and so how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Finished branches.
    Sink,
    /// Failed branches.
    Sump,
    /// Runners' task events (a JSON array per message).
    Events,
}

impl Source {
    /// Every source, with its pseudo-actor.
    pub const ALL: [(Source, &'static str); 3] = [
        (Source::Sink, SINK),
        (Source::Sump, SUMP),
        (Source::Events, EVENTS),
    ];
}

/// What one message from `source` says, to record. A message that is not what the queue
/// should hold is logged and yields nothing (it would never become readable).
pub fn facts(source: Source, body: &Bytes, metrics: &GatewayMetrics) -> Vec<Fact> {
    match source {
        Source::Sink | Source::Sump => {
            let Some((ending, last_hop)) = branch_ending(source, body) else {
                return Vec::new();
            };
            // The last actor's hop, told by the end itself: its own report travels on
            // another queue and may come later, but the task's last progress event must
            // come before its final status. Whichever copy comes second is ignored.
            last_hop
                .map(Fact::Event)
                .into_iter()
                .chain([Fact::End(ending)])
                .collect()
        }
        Source::Events => {
            let events: Vec<TaskEvent> = match serde_json::from_slice(body) {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%error, "a task events message is not a list of events; skipped");
                    return Vec::new();
                }
            };
            let now = chrono::Utc::now();
            events
                .into_iter()
                .inspect(|event| {
                    metrics
                        .event_lag
                        .observe((now - event.at).to_std().unwrap_or_default().as_secs_f64());
                })
                .map(Fact::Event)
                .collect()
        }
    }
}

/// How the branch in an `x-sink` or `x-sump` message ended, if it belongs to a task, and
/// the hop event of the actor that sent it there.
fn branch_ending(source: Source, body: &Bytes) -> Option<(BranchEnding, Option<TaskEvent>)> {
    let env = match Envelope::from_slice(body, &DecodeLimits::default()) {
        Ok(env) => env,
        Err(error) => {
            tracing::debug!(%error, ?source, "an end-of-pipeline message is not an envelope; not a task's");
            return None;
        }
    };
    let task = env.header_str(TASK)?.to_owned();
    let spawned = match env.headers.get(SPAWNED) {
        Some(Value::Array(ids)) => ids.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    let failed = source == Source::Sump || env.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed);
    let last_hop = last_hop(&task, &env, if source == Source::Sump { SUMP } else { SINK });
    let (end, value) = match failed {
        false => (BranchEnd::Succeeded, env.payload.into_value()),
        true => {
            let error = env
                .status
                .as_ref()
                .and_then(|s| s.error.as_ref())
                .and_then(|e| serde_json::to_value(e).ok())
                .unwrap_or_else(|| json!({"message": "the envelope was set aside without an error"}));
            (BranchEnd::Failed, error)
        }
    };
    let ending = BranchEnding {
        task,
        branch: env.id,
        end,
        spawned,
        value,
    };
    Some((ending, last_hop))
}

/// The hop event the actor that ended `env` reported (or will) for sending it to `to`:
/// the same event, so the same key.
fn last_hop(task: &str, env: &Envelope, to: &str) -> Option<TaskEvent> {
    let status = env.status.as_ref()?;
    let actor = status.actor.clone()?;
    // A finished route was advanced past that actor; an early end or a failure was not.
    let position = env.route.position() - usize::from(env.route.is_finished() && env.route.position() > 0);
    Some(TaskEvent {
        task: task.to_owned(),
        id: env.id.clone(),
        actor,
        position,
        at: status.updated_at.unwrap_or_else(chrono::Utc::now),
        kind: EventKind::Hop {
            outputs: vec![HopOutput {
                id: env.id.clone(),
                to: to.to_owned(),
                phase: status.phase.map(|p| p.as_str().to_owned()),
            }],
        },
    })
}

/// Consumes the three queues until `shutdown`, recording each message and announcing what
/// it added on `live`; a message is acknowledged only once recorded. One loop, events
/// first: a runner's report that is already on the broker is recorded before a branch end
/// that came after it, so a task's progress precedes its final status wherever the broker
/// keeps that order.
pub async fn consume<T: Transport>(
    api: &Api<T>,
    shutdown: CancellationToken,
) -> Result<(), (String, TransportError)> {
    let (transport, naming, store, live) = (&api.transport, &api.naming, &api.store, &api.live);
    let recording = &*api.recording;
    let mut consumers = Vec::with_capacity(Source::ALL.len());
    for (source, actor) in Source::ALL {
        let queue = naming.queue_for(actor).unwrap_or_else(|_| actor.to_owned());
        let consumer = transport
            .consume(&queue, CONSUME)
            .await
            .map_err(|e| (queue.clone(), e))?;
        tracing::info!(%queue, "recording");
        consumers.push((source, queue, consumer));
    }
    let [
        (_, sink_queue, mut sink),
        (_, sump_queue, mut sump),
        (_, events_queue, mut events),
    ] = <[_; 3]>::try_from(consumers).map_err(|_| (String::new(), TransportError::Closed))?;
    recording.store(true, Ordering::Release);
    // Not ready once this loop ends, whatever the reason.
    let _not_recording = NotRecording(recording);
    let mut backoff = Duration::from_millis(100);
    // Verdicts waiting for their tasks' events to go quiet are told on this beat.
    let mut settling = tokio::time::interval(SETTLE_EVERY);
    settling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // `Consumer::next` is cancel-safe: the branches that lose lose no delivery.
        let (source, queue, next) = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            _ = settling.tick() => {
                settle(api).await;
                continue;
            }
            next = events.next() => (Source::Events, &events_queue, next),
            next = sink.next() => (Source::Sink, &sink_queue, next),
            next = sump.next() => (Source::Sump, &sump_queue, next),
        };
        let first = match next {
            None => return Err((queue.clone(), TransportError::Closed)),
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::warn!(%queue, %error, "receive failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Whatever else is ready now joins this one transaction: under load, one commit
        // records many messages. Events first, as above.
        let mut batch = vec![(source, first)];
        while batch.len() < MAX_BATCH {
            let more = [
                (Source::Events, events.next().now_or_never()),
                (Source::Sink, sink.next().now_or_never()),
                (Source::Sump, sump.next().now_or_never()),
            ];
            let before = batch.len();
            for (source, next) in more {
                match next {
                    Some(Some(Ok(delivery))) => batch.push((source, delivery)),
                    Some(Some(Err(error))) => tracing::warn!(?source, %error, "receive failed"),
                    _ => {}
                }
            }
            if batch.len() == before {
                break;
            }
        }
        let facts: Vec<Fact> = batch
            .iter()
            .flat_map(|(source, delivery)| facts(*source, delivery.body(), &api.metrics))
            .collect();
        match store.record(facts).await {
            Ok(added) => {
                for event in added {
                    // No subscriber is fine: nobody is watching.
                    let _ = live.send(event.task);
                }
                for (source, delivery) in batch {
                    if let Err(error) = delivery.ack().await {
                        tracing::warn!(?source, %error, "acknowledging a recorded message failed; it will come again and change nothing");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, messages = batch.len(), "could not record messages; they will be redelivered");
                for (source, delivery) in batch {
                    if let Err(error) = delivery.nack(Some(Duration::from_secs(1))).await {
                        tracing::warn!(?source, %error, "returning an unrecorded message failed; the broker will redeliver it");
                    }
                }
            }
        }
    }
}

/// Most messages recorded in one transaction.
const MAX_BATCH: usize = 256;

/// Enough prefetched for a full batch; a short lease, because a message is recorded within
/// milliseconds, so what a crashed gateway had taken comes back within seconds (at the
/// default 30 s, a restarted gateway waited that long for the last tasks' ends).
const CONSUME: ConsumeOptions = ConsumeOptions {
    prefetch: MAX_BATCH,
    lease: Duration::from_secs(5),
};

/// How often verdicts waiting for quiet are looked at.
const SETTLE_EVERY: Duration = Duration::from_millis(50);

/// Tells the verdicts that are due and wakes their streams; a failure is retried on the
/// next beat.
async fn settle<T>(api: &Api<T>) {
    match api.store.settle(chrono::Utc::now()).await {
        Ok(added) => {
            for event in added {
                let _ = api.live.send(event.task);
            }
        }
        Err(error) => tracing::warn!(%error, "telling finished tasks' verdicts failed; will try again"),
    }
}

/// Clears the readiness flag when recording stops.
struct NotRecording<'a>(&'a AtomicBool);

impl Drop for NotRecording<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
