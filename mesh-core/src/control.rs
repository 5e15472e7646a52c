//! Cancel and pause, as a runner knows them: which gateway tasks were canceled or are
//! paused, learned from the gateway every so often (see the host's `--gateway-url`), never
//! asked per envelope.
//!
//! At each hop the runner asks [`Control::verdict`] about the envelope's task: a canceled
//! task's envelope is acknowledged without being processed, a paused one is parked (put
//! back on its queue for later, where it resumes from the same actor), and while a handler
//! works on an envelope, [`Control::watch`] tells it to stop if its task is canceled
//! meanwhile: the handler's future is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What the gateway says about its tasks, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// Tasks canceled since the time the runner asked about (ids).
    #[serde(default)]
    pub canceled: Vec<String>,
    /// Every task paused now (ids).
    #[serde(default)]
    pub paused: Vec<String>,
    /// The gateway's clock (Unix milliseconds), to ask "since" next time.
    #[serde(default)]
    pub now_ms: i64,
}

/// What to do with an envelope of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Go,
    /// Acknowledge it without processing: its task was canceled.
    Drop,
    /// Park it: its task is paused.
    Park,
}

/// How long a canceled task is remembered: longer than any of its envelopes can wait in a
/// queue in practice, so a late one is still dropped.
const REMEMBER_CANCELED: Duration = Duration::from_secs(24 * 3600);

/// Which tasks are canceled or paused; cheap to clone, shared by a process's runners.
///
/// A control is *on* ([`Control::on`]) in a process that learns from a gateway, and *off*
/// (the default) in one that does not: then every verdict is [`Verdict::Go`] and watches
/// never fire, at no cost per envelope (no lock, no allocation).
#[derive(Debug, Clone, Default)]
pub struct Control {
    inner: Option<Arc<Mutex<State>>>,
}

#[derive(Debug, Default)]
struct State {
    canceled: HashMap<String, Instant>,
    paused: HashSet<String>,
    /// Tasks with envelopes in a handler now: a token to cancel them, and how many.
    watched: HashMap<String, (CancellationToken, usize)>,
}

impl Control {
    /// A control that [`Control::apply`] updates.
    pub fn on() -> Self {
        Self {
            inner: Some(Arc::default()),
        }
    }

    /// A control that lets everything go: no gateway tells this process anything.
    pub fn off() -> Self {
        Self::default()
    }

    /// Whether a gateway's word reaches this control.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    fn state(&self) -> Option<MutexGuard<'_, State>> {
        // Every update leaves the state whole, so a panic elsewhere cannot corrupt it.
        self.inner
            .as_ref()
            .map(|inner| inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// What to do with an envelope of `task`.
    pub fn verdict(&self, task: &str) -> Verdict {
        let Some(state) = self.state() else {
            return Verdict::Go;
        };
        if state.canceled.contains_key(task) {
            Verdict::Drop
        } else if state.paused.contains(task) {
            Verdict::Park
        } else {
            Verdict::Go
        }
    }

    /// Learns what the gateway said: new cancellations (stopping the handlers working on
    /// them) and the full set of paused tasks. An off control ignores it.
    pub fn apply(&self, update: &ControlState) {
        let Some(mut state) = self.state() else {
            return;
        };
        let now = Instant::now();
        state
            .canceled
            .retain(|_, seen| now.duration_since(*seen) < REMEMBER_CANCELED);
        for task in &update.canceled {
            state.canceled.entry(task.clone()).or_insert(now);
            if let Some((token, _)) = state.watched.get(task) {
                tracing::info!(task = %task, "task canceled: stopping its handlers");
                token.cancel();
            }
        }
        state.paused = update.paused.iter().cloned().collect();
    }

    /// A token cancelled when `task` is canceled, for as long as the returned guard lives.
    pub fn watch(&self, task: &str) -> Watch {
        let Some(mut state) = self.state() else {
            return Watch {
                control: self.clone(),
                task: String::new(),
                token: None,
            };
        };
        let canceled = state.canceled.contains_key(task);
        let (token, count) = state
            .watched
            .entry(task.to_owned())
            .or_insert_with(|| (CancellationToken::new(), 0));
        *count += 1;
        if canceled {
            token.cancel();
        }
        Watch {
            control: self.clone(),
            task: task.to_owned(),
            token: Some(token.clone()),
        }
    }
}

/// A handler's watch on its task; see [`Control::watch`].
#[derive(Debug)]
pub struct Watch {
    control: Control,
    task: String,
    /// None from an off control: never canceled.
    token: Option<CancellationToken>,
}

impl Watch {
    /// Resolves when the task is canceled.
    pub async fn canceled(&self) {
        match &self.token {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(mut state) = self.control.state() else {
            return;
        };
        if let Some((_, count)) = state.watched.get_mut(&self.task) {
            *count -= 1;
            if *count == 0 {
                state.watched.remove(&self.task);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(canceled: &[&str], paused: &[&str]) -> ControlState {
        ControlState {
            canceled: canceled.iter().map(|s| (*s).to_owned()).collect(),
            paused: paused.iter().map(|s| (*s).to_owned()).collect(),
            now_ms: 0,
        }
    }

    #[test]
    fn verdicts_follow_what_the_gateway_said() {
        let control = Control::on();
        assert_eq!(control.verdict("t"), Verdict::Go);
        control.apply(&update(&[], &["t"]));
        assert_eq!(control.verdict("t"), Verdict::Park);
        control.apply(&update(&[], &[]));
        assert_eq!(
            control.verdict("t"),
            Verdict::Go,
            "resumed: the paused set is complete"
        );
        control.apply(&update(&["t"], &[]));
        control.apply(&update(&[], &[]));
        assert_eq!(control.verdict("t"), Verdict::Drop, "a cancel is remembered");
    }

    #[tokio::test]
    async fn a_cancel_stops_the_handlers_of_its_task_only() {
        let control = Control::on();
        let mine = control.watch("t");
        let other = control.watch("u");
        control.apply(&update(&["t"], &[]));
        tokio::time::timeout(Duration::from_secs(1), mine.canceled())
            .await
            .unwrap_or_else(|_| panic!("the watch of a canceled task fires"));
        let still = tokio::time::timeout(Duration::from_millis(20), other.canceled()).await;
        assert!(still.is_err(), "another task's handler goes on");
        drop((mine, other));
        assert!(
            control.state().unwrap().watched.is_empty(),
            "watches clean up after themselves"
        );
        let late = control.watch("t");
        tokio::time::timeout(Duration::from_secs(1), late.canceled())
            .await
            .unwrap_or_else(|_| panic!("a watch begun after the cancel fires at once"));
    }

    #[tokio::test]
    async fn an_off_control_lets_everything_go() {
        let control = Control::off();
        control.apply(&update(&["t"], &["u"]));
        assert_eq!(control.verdict("t"), Verdict::Go);
        assert_eq!(control.verdict("u"), Verdict::Go);
        let watch = control.watch("t");
        let fired = tokio::time::timeout(Duration::from_millis(20), watch.canceled()).await;
        assert!(fired.is_err(), "nothing cancels a handler without a gateway");
    }
}
