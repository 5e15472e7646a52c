//! Turning async Rust closures into handler services.

use std::future::Future;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;
use tower::Service;

use crate::envelope::Envelope;
use crate::outcome::{HandlerError, Outcome};

/// A handler from an async closure over the whole envelope; it may rewrite `route.next`,
/// fan out, or end the pipeline.
///
/// ```
/// use troupe_core::{handler_fn, Envelope, Outcome, HandlerError};
/// let judge = handler_fn(|mut env: Envelope| async move {
///     if env.payload["score"].as_f64().unwrap_or(0.0) < 0.5 {
///         env.route.next_mut().insert(0, "refine".to_string());
///     }
///     Ok::<_, HandlerError>(Outcome::forward(env))
/// });
/// # let _ = judge;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Envelope) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    HandlerFn { f }
}

/// See [`handler_fn`].
#[derive(Clone, Copy, Debug)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F, Fut> Service<Envelope> for HandlerFn<F>
where
    F: Fn(Envelope) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, env: Envelope) -> Fut {
        (self.f)(env)
    }
}

/// A handler from an async closure over the payload only: the returned value replaces the
/// payload and the envelope moves on along its route.
///
/// ```
/// use troupe_core::{payload_fn, HandlerError};
/// use serde_json::{json, Value};
/// let double = payload_fn(|p: Value| async move {
///     Ok::<_, HandlerError>(json!({ "x": p["x"].as_i64().unwrap_or(0) * 2 }))
/// });
/// # let _ = double;
/// ```
pub fn payload_fn<F, Fut>(f: F) -> PayloadFn<F>
where
    F: Fn(Value) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    PayloadFn { f }
}

/// See [`payload_fn`].
#[derive(Clone, Copy, Debug)]
pub struct PayloadFn<F> {
    f: F,
}

impl<F, Fut> Service<Envelope> for PayloadFn<F>
where
    F: Fn(Value) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut env: Envelope) -> Self::Future {
        let fut = (self.f)(std::mem::take(&mut env.payload).into_value());
        async move {
            env.payload = fut.await?.into();
            Ok(Outcome::forward(env))
        }
        .boxed()
    }
}
