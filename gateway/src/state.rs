//! A task's state and the one rule that combines updates.
//!
//! States rank `pending` (0) < `running` = `paused` (1) < `succeeded` = `failed` =
//! `canceled` (2). An update of a lower rank than the current state changes nothing, a
//! higher one wins, a terminal state is final. Between `running` and `paused` only the
//! gateway's own control commands move a task: a worker's late or redelivered "running"
//! never resumes a paused task, and a replayed event changes nothing.
//!
//! ```
//! use troupe_gateway::{TaskState, Update};
//!
//! let mut state = TaskState::Pending;
//! for update in [Update::Running, Update::Succeeded, Update::Running] {
//!     state = state.apply(update);
//! }
//! assert_eq!(state, TaskState::Succeeded, "a late running never overwrites succeeded");
//! ```

use serde::{Deserialize, Serialize};

/// Where a task stands. Serialised in lower case (`"succeeded"`), as Asya's gateway spells
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Submitted; no actor has started on it yet.
    Pending,
    /// An actor is working on it (or it waits between actors).
    Running,
    /// Held on request; its envelopes are parked where they are.
    Paused,
    /// Every branch reached the end of its route.
    Succeeded,
    /// A branch failed for good (its retries spent, or a fatal error).
    Failed,
    /// Stopped on request.
    Canceled,
}

impl TaskState {
    /// Every state, in rank order.
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Paused,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Canceled,
    ];

    /// Its rank: 0 pending, 1 running or paused, 2 finished.
    pub fn rank(self) -> u8 {
        match self {
            TaskState::Pending => 0,
            TaskState::Running | TaskState::Paused => 1,
            TaskState::Succeeded | TaskState::Failed | TaskState::Canceled => 2,
        }
    }

    /// Whether nothing changes it any more.
    pub fn is_terminal(self) -> bool {
        self.rank() == 2
    }

    /// The wire spelling, e.g. `"succeeded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Paused => "paused",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Canceled => "canceled",
        }
    }

    /// The state after `update`; see the module docs for the rule.
    #[must_use]
    pub fn apply(self, update: Update) -> TaskState {
        if self.is_terminal() {
            return self;
        }
        match update {
            Update::Running => match self {
                TaskState::Pending => TaskState::Running,
                other => other,
            },
            Update::Pause => TaskState::Paused,
            Update::Resume => match self {
                TaskState::Paused => TaskState::Running,
                other => other,
            },
            Update::Succeeded => TaskState::Succeeded,
            Update::Failed => TaskState::Failed,
            Update::Cancel => TaskState::Canceled,
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Update {
    /// A worker reports it is working on one of the task's envelopes.
    Running,
    /// The gateway was asked to pause it.
    Pause,
    /// The gateway was asked to resume it.
    Resume,
    /// Every branch ended at the end of its route ([`Ledger`](crate::Ledger)'s verdict).
    Succeeded,
    /// A branch failed for good.
    Failed,
    /// The gateway was asked to cancel it.
    Cancel,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STATES: [TaskState; 6] = TaskState::ALL;

    fn update() -> impl Strategy<Value = Update> {
        prop_oneof![
            Just(Update::Running),
            Just(Update::Pause),
            Just(Update::Resume),
            Just(Update::Succeeded),
            Just(Update::Failed),
            Just(Update::Cancel),
        ]
    }

    #[test]
    fn wire_names_are_lower_case() {
        for state in STATES {
            let json = serde_json::to_string(&state).unwrap_or_default();
            assert_eq!(json, format!("\"{state}\""));
            assert_eq!(serde_json::from_str::<TaskState>(&json).ok(), Some(state));
        }
    }

    #[test]
    fn workers_never_resume_a_paused_task_and_control_does() {
        let paused = TaskState::Running.apply(Update::Pause);
        assert_eq!(paused, TaskState::Paused);
        assert_eq!(paused.apply(Update::Running), TaskState::Paused);
        assert_eq!(paused.apply(Update::Resume), TaskState::Running);
        assert_eq!(TaskState::Pending.apply(Update::Resume), TaskState::Pending);
        assert_eq!(paused.apply(Update::Cancel), TaskState::Canceled);
    }

    proptest! {
        /// Rank never goes down, and a terminal state is final.
        #[test]
        fn rank_is_monotonic(updates in proptest::collection::vec(update(), 0..40)) {
            let mut state = TaskState::Pending;
            for u in updates {
                let next = state.apply(u);
                prop_assert!(next.rank() >= state.rank(), "{state:?} -> {next:?} on {u:?}");
                if state.is_terminal() {
                    prop_assert_eq!(next, state);
                }
                state = next;
            }
        }

        /// Applying an update twice is applying it once: a redelivered event changes nothing.
        #[test]
        fn updates_are_idempotent(start in 0..STATES.len(), u in update()) {
            let once = STATES[start].apply(u);
            prop_assert_eq!(once.apply(u), once);
        }

        /// Without control commands, the order of workers' events does not matter.
        #[test]
        fn worker_events_commute(events in proptest::collection::vec(
            prop_oneof![Just(Update::Running), Just(Update::Succeeded), Just(Update::Failed)], 0..12)) {
            let forward = events.iter().fold(TaskState::Pending, |s, u| s.apply(*u));
            let backward = events.iter().rev().fold(TaskState::Pending, |s, u| s.apply(*u));
            // The first terminal event wins; with both outcomes present the verdict comes
            // from the ledger, which merges them itself (Failed dominates).
            let outcomes: std::collections::HashSet<_> = events.iter().filter(|u| **u != Update::Running).collect();
            if outcomes.len() <= 1 {
                prop_assert_eq!(forward, backward);
            }
        }
    }
}
