//! What the gateway keeps and serves: a task's record and the events of its life.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::state::TaskState;

/// One task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    /// The task's id (the id of the envelope that was submitted).
    pub id: String,
    /// Where it stands.
    pub status: TaskState,
    /// The route it was submitted with (handlers may have rewritten the rest since).
    pub route: Vec<String>,
    /// The actor last reported working on it, or that it was last sent to.
    pub current_actor: Option<String>,
    /// How far it got.
    pub progress: Progress,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When anything about it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it reached its final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The result: the payload that reached `x-sink`; with a fan-out, the payloads of every
    /// branch, in the order they finished.
    pub result: Option<Value>,
    /// Why it failed: the error of the first branch that did.
    pub error: Option<Value>,
}

/// How far a task got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Hops finished (an actor done with one of its envelopes), over all branches.
    pub hops: u64,
    /// Branches known: the submitted envelope plus every fan-out child seen so far.
    pub branches: u64,
    /// Branches that reached the end of their route or failed.
    pub branches_ended: u64,
    /// Branches that failed.
    pub branches_failed: u64,
}

/// One stored event of a task, in the order the gateway learned it. Its `seq` is the SSE
/// event id: a client that reconnects with `Last-Event-ID: seq` gets every later one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    /// Position among all stored events (increasing; gaps where other tasks' events are).
    pub seq: i64,
    /// The task.
    pub task: String,
    /// What kind of event: `status`, `started`, `hop`, `fly` or `branch`.
    pub kind: String,
    /// Its content.
    pub data: Value,
}
