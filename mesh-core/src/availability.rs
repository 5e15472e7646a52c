//! Whether what a runner's stack depends on (its idempotency store, its handler's runtime)
//! answers, and how a failure of such a dependency is told apart from a failure of the
//! envelope.
//!
//! A dependency that is down is not the envelope's fault: spending the envelope's retry
//! attempts, or its broker redeliveries, on it would send good work to `x-sump` during an
//! outage. So the runner, given an error that [`unavailable_dependency`] recognises, keeps
//! the delivery (its lease extended), stops taking new work, marks its [`Availability`]
//! down (readiness answers false) and calls again with a capped backoff until the
//! dependency answers.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::outcome::HandlerError;

/// A dependency of the layer stack did not answer. Return it (anywhere in an error's
/// `source` chain) from a layer to have the runner hold the delivery until it answers.
///
/// ```
/// use troupe_core::{Unavailable, unavailable_dependency};
/// let error = Unavailable::new("idempotency store", "connection refused");
/// assert_eq!(unavailable_dependency(&error).as_deref(), Some("idempotency store"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dependency} is unavailable: {detail}")]
pub struct Unavailable {
    /// What did not answer, for logs ("idempotency store").
    pub dependency: String,
    /// Why, as the client reported it.
    pub detail: String,
}

impl Unavailable {
    /// `dependency` did not answer, because of `detail`.
    pub fn new(dependency: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            dependency: dependency.into(),
            detail: detail.into(),
        }
    }
}

/// The dependency that `error` says is down: an [`Unavailable`] or an
/// [unavailable](HandlerError::unavailable) [`HandlerError`] anywhere in its `source` chain.
/// `None` for every other failure.
pub fn unavailable_dependency(error: &(dyn Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(u) = e.downcast_ref::<Unavailable>() {
            return Some(u.dependency.clone());
        }
        if let Some(h) = e.downcast_ref::<HandlerError>()
            && h.is_unavailable()
        {
            return Some(format!("the handler ({})", h.type_name()));
        }
        current = e.source();
    }
    None
}

/// Whether a runner's dependencies answer: shared by the runner, which marks it, and the
/// process's readiness probe, which reads it. Starts available.
#[derive(Debug, Clone)]
pub struct Availability {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    /// Read on every turn of a worker's loop: an atomic, not the channel's lock.
    up: AtomicBool,
    /// Wakes whoever waits for the end of an outage.
    changed: watch::Sender<bool>,
}

impl Default for Availability {
    fn default() -> Self {
        Self {
            state: Arc::new(State {
                up: AtomicBool::new(true),
                changed: watch::Sender::new(true),
            }),
        }
    }
}

impl Availability {
    /// Whether every dependency answered the last time it was asked.
    pub fn is_available(&self) -> bool {
        self.state.up.load(Ordering::Acquire)
    }

    /// A dependency did not answer. Returns whether this changed the state (so the caller
    /// logs an outage once, not once per held delivery).
    pub fn mark_down(&self) -> bool {
        self.set(false)
    }

    /// A call went through. Returns whether this ended an outage.
    pub fn mark_up(&self) -> bool {
        self.set(true)
    }

    fn set(&self, up: bool) -> bool {
        self.state.changed.send_if_modified(|current| {
            let changed = *current != up;
            *current = up;
            self.state.up.store(up, Ordering::Release);
            changed
        })
    }

    /// Resolves once available (at once if it is now).
    pub async fn available(&self) {
        let mut rx = self.state.changed.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|up| *up).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Box<dyn Error + Send + Sync>);

    #[test]
    fn found_anywhere_in_the_chain_and_only_there() {
        let store = Outer(Box::new(Unavailable::new("idempotency store", "refused")));
        assert_eq!(
            unavailable_dependency(&store).as_deref(),
            Some("idempotency store")
        );
        let runtime = Outer(Box::new(HandlerError::unavailable("RuntimeUnavailable", "gone")));
        assert_eq!(
            unavailable_dependency(&runtime).as_deref(),
            Some("the handler (RuntimeUnavailable)")
        );
        let ordinary = Outer(Box::new(HandlerError::new("ValueError", "bad input")));
        assert_eq!(unavailable_dependency(&ordinary), None);
    }

    #[tokio::test]
    async fn transitions_are_reported_once_and_wake_waiters() {
        let a = Availability::default();
        assert!(a.is_available());
        assert!(a.mark_down());
        assert!(!a.mark_down(), "already down");
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.available().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(a.mark_up());
        assert!(!a.mark_up(), "already up");
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
