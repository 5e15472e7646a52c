//! What the sidecar knows about its runtime's health, for `/readyz` and for the watchdog
//! that ends the process when the runtime stays unresponsive.
//!
//! Two kinds of failure count: the runtime cannot be reached (refused, connection broken,
//! health probe refused), and a call or probe got no answer in time. Only the second ends
//! the process: a runtime that is down is waited for, its deliveries held. A successful call clears both;
//! a successful health probe clears only the first, because a runtime whose handler hangs
//! still answers `/healthz` while every call times out, and that pod must not live on as
//! a zombie.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a call or probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing answered.
    Unreachable,
    /// A call was abandoned without an answer (its timeout ran out).
    TimedOut,
}

/// Shared between the handler (which reports each call) and the watchdog.
#[derive(Debug, Default)]
pub struct RuntimeHealth {
    ready: AtomicBool,
    /// When the current run of failures began, and the worst kind seen in it.
    failing: Mutex<Option<(Instant, Failure)>>,
}

impl RuntimeHealth {
    fn failing(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Failure)>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The runtime answered its health check at start.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The runtime answered at start and is not failing now.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.failing().is_none()
    }

    /// A call got an answer (any answer: a handler error is the handler's, not the runtime's).
    pub fn answered(&self) {
        *self.failing() = None;
    }

    /// The health probe answered.
    pub fn probe_answered(&self) {
        let mut failing = self.failing();
        if matches!(*failing, Some((_, Failure::Unreachable))) {
            *failing = None;
        }
    }

    /// A call or probe got no answer.
    pub fn unanswered(&self, failure: Failure) {
        let mut failing = self.failing();
        match &mut *failing {
            None => *failing = Some((Instant::now(), failure)),
            // A hang is counted from its first timeout, not from an outage before it.
            Some((since, kind)) => {
                if failure == Failure::TimedOut && *kind == Failure::Unreachable {
                    *since = Instant::now();
                    *kind = Failure::TimedOut;
                }
            }
        }
    }

    /// How long the runtime has been taking calls without answering them. An unreachable
    /// runtime (its process down, restarting) is not hung: the runner holds its deliveries
    /// until it is back.
    pub fn hung_for(&self) -> Option<Duration> {
        match *self.failing() {
            Some((since, Failure::TimedOut)) => Some(since.elapsed()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_ends_a_run_of_failures() {
        let h = RuntimeHealth::default();
        h.set_ready(true);
        assert!(h.is_ready() && h.hung_for().is_none());
        h.unanswered(Failure::Unreachable);
        h.unanswered(Failure::Unreachable);
        assert!(!h.is_ready());
        assert!(h.hung_for().is_none(), "unreachable is not hung");
        h.probe_answered();
        assert!(h.is_ready(), "a probe clears unreachability");
    }

    #[test]
    fn a_probe_does_not_clear_timeouts() {
        let h = RuntimeHealth::default();
        h.unanswered(Failure::Unreachable);
        h.unanswered(Failure::TimedOut);
        std::thread::sleep(Duration::from_millis(20));
        h.unanswered(Failure::TimedOut);
        assert!(
            h.hung_for().unwrap() >= Duration::from_millis(20),
            "a hang counts from its first timeout"
        );
        h.probe_answered();
        assert!(h.hung_for().is_some(), "the handler still hangs");
        h.answered();
        assert!(h.hung_for().is_none());
    }
}
