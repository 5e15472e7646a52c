//! Task events: what runners tell the gateway about the envelopes of its tasks, through the
//! broker they already use.
//!
//! An envelope submitted through the gateway carries the [`TASK`] header; for such an
//! envelope the first actor reports when it starts on it ([`EventKind::Started`]), every
//! actor where its outputs went ([`EventKind::Hop`]), and a handler what it streamed
//! upstream ([`EventKind::Fly`]). Envelopes without the header, or with Asya's
//! `x-asya-mesh-status: off`, cost nothing here.
//!
//! Events are telemetry, not results: a task's end is recorded from `x-sink` and `x-sump`,
//! whose messages are acknowledged only after the gateway stored them. So events never
//! hold up the data path: [`EventSink::send`] hands them to a background task that
//! publishes whatever has queued up as one message (one event alone when traffic is light,
//! so a streamed token is not kept waiting; hundreds per message under load), and the
//! input is acknowledged without waiting for it. Where no gateway created the events queue,
//! the sink notices the broker's "no such queue" answer and stays quiet for a while
//! instead of failing every batch.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::envelope::Envelope;
use crate::headers::{MESH_STATUS, TASK};
use crate::naming::QueueNaming;
use crate::outcome::Publication;
use crate::transport::{PublishOptions, Transport, TransportError};
use crate::wire::EVENTS;

/// One thing that happened to one envelope of a gateway task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task (the id of the submitted envelope).
    pub task: String,
    /// The envelope.
    pub id: String,
    /// The actor that reports.
    pub actor: String,
    /// The envelope's route position at that actor: with the id, it tells two visits of
    /// one actor apart.
    pub position: usize,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EventKind {
    /// The actor started on the envelope.
    Started,
    /// The actor finished with the envelope; its outputs are on the broker.
    Hop {
        /// Where each output went.
        outputs: Vec<HopOutput>,
    },
    /// The handler streamed this upstream (Asya's `FLY`): progress, a token.
    Fly {
        /// Its position among the handler's upstream events for this envelope.
        seq: u64,
        /// What the handler sent.
        data: Value,
    },
}

/// One output of a hop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HopOutput {
    /// The output's envelope id (a fan-out child has its own).
    pub id: String,
    /// The actor it was sent to (`x-sink` or `x-sump` at the end).
    pub to: String,
    /// Its phase as sent (`pending`, `retrying`, `succeeded`, `failed`), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl HopOutput {
    /// Where `publication` goes.
    pub fn of(publication: &Publication) -> Self {
        Self {
            id: publication.envelope.id.clone(),
            to: publication.actor.clone(),
            phase: publication
                .envelope
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|phase| phase.as_str().to_owned()),
        }
    }
}

impl TaskEvent {
    /// A key that is the same for every copy of this event and differs between events
    /// (redelivery, a replayed hop and the gateway's restart all bring copies).
    pub fn key(&self) -> String {
        let what = match &self.kind {
            EventKind::Started => "started".to_owned(),
            EventKind::Hop { .. } => "hop".to_owned(),
            EventKind::Fly { seq, .. } => format!("fly.{seq}"),
        };
        format!("{}/{}/{}/{what}", self.id, self.position, self.actor)
    }
}

/// What every event about one envelope at one actor shares, taken from the envelope
/// before its handler consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    task: String,
    id: String,
    actor: String,
    position: usize,
}

impl EventHead {
    /// The head of `envelope`'s events at `actor`, or `None` when it reports nothing: it
    /// belongs to no gateway task, or its `x-asya-mesh-status` header is `"off"`.
    ///
    /// ```
    /// use troupe_core::event::EventHead;
    /// use troupe_core::{Envelope, Route};
    /// let mut env = Envelope::new(Route::through(["a"]), serde_json::json!(1));
    /// assert!(EventHead::of(&env, "a").is_none(), "not a gateway task");
    /// env.headers.insert("x-troupe-task".into(), env.id.clone().into());
    /// assert!(EventHead::of(&env, "a").is_some());
    /// env.headers.insert("x-asya-mesh-status".into(), "off".into());
    /// assert!(EventHead::of(&env, "a").is_none(), "switched off");
    /// ```
    pub fn of(envelope: &Envelope, actor: &str) -> Option<Self> {
        let task = envelope.header_str(TASK)?;
        if envelope
            .header_str(MESH_STATUS)
            .is_some_and(|s| s.eq_ignore_ascii_case("off"))
        {
            return None;
        }
        Some(Self {
            task: task.to_owned(),
            id: envelope.id.clone(),
            actor: actor.to_owned(),
            position: envelope.route.position(),
        })
    }

    /// The envelope's route position at the actor (0 at the first actor).
    pub fn position(&self) -> usize {
        self.position
    }

    /// The event `kind`, happening now.
    pub fn event(&self, kind: EventKind) -> TaskEvent {
        self.clone().into_event(kind)
    }

    /// The last event of this head (the hop), taking its names instead of copying them.
    pub fn into_event(self, kind: EventKind) -> TaskEvent {
        TaskEvent {
            task: self.task,
            id: self.id,
            actor: self.actor,
            position: self.position,
            at: Utc::now(),
            kind,
        }
    }
}

/// Most events one message carries.
const MAX_BATCH: usize = 512;
/// Events waiting for the publisher before [`EventSink::send`] waits too.
const QUEUE: usize = 4096;
/// How long the sink drops events after the broker said the events queue does not exist,
/// before it tries again: a gateway deployed after the actors is heard from within it,
/// and a mesh without one pays one refused publish per interval.
const ABSENT_PAUSE: Duration = Duration::from_secs(1);

/// Where a process's runners and handlers send task events; cheap to clone. See the module
/// docs.
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Item>>,
}

/// What the publisher task is handed.
#[derive(Debug)]
enum Item {
    Event(TaskEvent),
    /// Publish everything before this, then answer.
    Flush(oneshot::Sender<()>),
}

impl EventSink {
    /// A sink that drops everything (events switched off for this actor).
    pub fn off() -> Self {
        Self::default()
    }

    /// A sink that publishes to the events queue of `naming` on `transport`. The returned
    /// task ends, having published what was sent, once every clone of the sink is dropped.
    pub fn start<T: Transport>(transport: T, naming: &QueueNaming) -> (Self, JoinHandle<()>) {
        let queue = naming.queue_for(EVENTS).unwrap_or_else(|_| EVENTS.to_owned());
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(publish_batches(transport, queue, rx));
        (Self { tx: Some(tx) }, task)
    }

    /// Whether events are sent anywhere.
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// The head of `envelope`'s events at `actor`, if this sink is on and the envelope
    /// reports (see [`EventHead::of`]).
    pub fn head(&self, envelope: &Envelope, actor: &str) -> Option<EventHead> {
        self.tx.as_ref().and_then(|_| EventHead::of(envelope, actor))
    }

    /// Queues `event` for publication; waits only while the publisher is that far behind.
    pub async fn send(&self, event: TaskEvent) {
        if let Some(tx) = &self.tx {
            // The receiver only goes when the publisher task ended (runtime shutdown).
            let _ = tx.send(Item::Event(event)).await;
        }
    }

    /// Returns once every event sent before has been published (or given up on). A
    /// handler that streams upstream events calls it before it publishes an output, so
    /// its last tokens reach the broker before its result does.
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done, published) = oneshot::channel();
            if tx.send(Item::Flush(done)).await.is_ok() {
                let _ = published.await;
            }
        }
    }
}

async fn publish_batches<T: Transport>(transport: T, queue: String, mut rx: mpsc::Receiver<Item>) {
    let mut publisher = Publisher {
        transport,
        queue,
        absent_until: None,
    };
    let mut items = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut items, MAX_BATCH).await > 0 {
        for item in items.drain(..) {
            match item {
                Item::Event(event) => batch.push(event),
                Item::Flush(done) => {
                    publisher.publish(&mut batch).await;
                    let _ = done.send(());
                }
            }
        }
        publisher.publish(&mut batch).await;
    }
}

struct Publisher<T> {
    transport: T,
    queue: String,
    /// Until when the events queue is taken not to exist.
    absent_until: Option<Instant>,
}

impl<T: Transport> Publisher<T> {
    /// Publishes `batch` as one message and empties it.
    async fn publish(&mut self, batch: &mut Vec<TaskEvent>) {
        if batch.is_empty() {
            return;
        }
        let queue = &self.queue;
        let count = batch.len();
        let encoded = serde_json::to_vec(&batch);
        batch.clear();
        if self.absent_until.is_some_and(|until| Instant::now() < until) {
            return;
        }
        let body = match encoded {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::warn!(%error, count, "task events could not be encoded; dropped");
                return;
            }
        };
        match self
            .transport
            .publish(queue, body, PublishOptions::default())
            .await
        {
            Ok(()) => self.absent_until = None,
            Err(TransportError::NoSuchQueue { .. }) => {
                if self.absent_until.is_none() {
                    tracing::info!(%queue, "no gateway has created the task events queue; task events are not sent for now");
                }
                self.absent_until = Some(Instant::now() + ABSENT_PAUSE);
            }
            Err(error) => {
                tracing::warn!(%queue, %error, count, "task events were not published; the task's progress misses them (its result is not affected)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: EventKind) -> TaskEvent {
        TaskEvent {
            task: "t".into(),
            id: "e".into(),
            actor: "a".into(),
            position: 1,
            at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            kind,
        }
    }

    #[test]
    fn events_have_a_flat_wire_form() {
        let hop = event(EventKind::Hop {
            outputs: vec![HopOutput {
                id: "e".into(),
                to: "b".into(),
                phase: Some("pending".into()),
            }],
        });
        let wire = serde_json::to_value(&hop).unwrap_or_default();
        assert_eq!(wire["kind"], "hop");
        assert_eq!(wire["outputs"][0]["to"], "b");
        let back: TaskEvent = serde_json::from_value(wire).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, hop);
        let fly = serde_json::to_value(event(EventKind::Fly {
            seq: 3,
            data: json!({"token": "hi"}),
        }))
        .unwrap_or_default();
        assert_eq!(fly["data"]["token"], "hi");
    }

    #[test]
    fn keys_tell_events_apart_and_copies_together() {
        let started = event(EventKind::Started);
        let fly = |seq| {
            event(EventKind::Fly {
                seq,
                data: Value::Null,
            })
        };
        assert_eq!(started.key(), event(EventKind::Started).key());
        assert_ne!(started.key(), fly(0).key());
        assert_ne!(fly(0).key(), fly(1).key());
        let mut elsewhere = event(EventKind::Started);
        elsewhere.position = 2;
        assert_ne!(started.key(), elsewhere.key());
    }
}
