//! The deadline layer: bounds each handler call by `min(actor timeout, deadline_at - now)`
//! (protocol §2.8). A call that runs out of time fails with a [`HandlerError`] of type
//! `TimeoutError`, which the retry policy treats like any other failure.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use chrono::Utc;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};
use troupe_core::{Envelope, HandlerError, Outcome};

/// Bounds handler calls by the actor timeout and the envelope's deadline.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    /// Calls last at most `timeout` (less when the envelope's deadline is sooner).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

/// The time a call to `env` may take: the actor timeout, cut short by `status.deadline_at`.
pub fn budget(env: &Envelope, actor_timeout: Duration) -> Duration {
    let until_deadline = env
        .status
        .as_ref()
        .and_then(|s| s.deadline_at)
        .map(|d| (d - Utc::now()).to_std().unwrap_or(Duration::ZERO));
    match until_deadline {
        Some(left) => left.min(actor_timeout),
        None => actor_timeout,
    }
}

impl<S> Service<Envelope> for Deadline<S>
where
    S: Service<Envelope, Response = Outcome>,
    S::Error: Into<HandlerError>,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let budget = budget(&env, self.timeout);
        DeadlineFuture {
            inner: self.inner.call(env),
            sleep: tokio::time::sleep(budget),
            budget,
        }
    }
}

pin_project! {
    /// The future of a [`Deadline`] call.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        budget: Duration,
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Outcome, E>>,
    E: Into<HandlerError>,
{
    type Output = Result<Outcome, HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r.map_err(Into::into));
        }
        ready!(this.sleep.poll(cx));
        Poll::Ready(Err(HandlerError::new(
            HandlerError::TIMEOUT,
            format!("handler did not finish within {:?}", this.budget),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use tower::ServiceExt;
    use troupe_core::{Route, handler_fn};

    fn sleeper(d: Duration) -> impl Service<Envelope, Response = Outcome, Error = HandlerError> {
        handler_fn(move |e: Envelope| async move {
            tokio::time::sleep(d).await;
            Ok(Outcome::forward(e))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn slow_handler_times_out() {
        let svc = DeadlineLayer::new(Duration::from_millis(100)).layer(sleeper(Duration::from_secs(1)));
        let err = svc
            .oneshot(Envelope::new(Route::through(["a"]), Value::Null))
            .await
            .unwrap_err();
        assert_eq!(err.type_name(), HandlerError::TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_handler_passes() {
        let svc = DeadlineLayer::new(Duration::from_secs(1)).layer(sleeper(Duration::from_millis(10)));
        assert!(
            svc.oneshot(Envelope::new(Route::through(["a"]), Value::Null))
                .await
                .is_ok()
        );
    }

    #[test]
    fn envelope_deadline_shortens_the_budget() {
        let mut env = Envelope::new(Route::through(["a"]), Value::Null);
        assert_eq!(budget(&env, Duration::from_secs(30)), Duration::from_secs(30));
        env.status_mut().deadline_at = Some(Utc::now() + chrono::Duration::seconds(5));
        let b = budget(&env, Duration::from_secs(30));
        assert!(b <= Duration::from_secs(5) && b > Duration::from_secs(4), "{b:?}");
        env.status_mut().deadline_at = Some(Utc::now() - chrono::Duration::seconds(5));
        assert_eq!(budget(&env, Duration::from_secs(30)), Duration::ZERO);
    }
}
