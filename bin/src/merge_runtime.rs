//! A merge handler in a Python runtime: `troupe aggregate --merge-socket-dir DIR`.
//!
//! The aggregator builds each complete origin's merge as usual (the list of slice payloads,
//! by index), then hands that envelope to the runtime listening in `DIR` (the same
//! `troupe_runtime` a sidecar talks to, running a plain function such as
//! `def merge(slices): ...`), and the handler's one return value becomes the merge's
//! payload. What else the frame carries (route, headers) is ignored: the aggregator owns
//! the merge's id and route.
//!
//! - The store records the list merge, not the handler's: a slice redelivered after a
//!   crash runs the handler again on the same list, so a merge handler must be
//!   deterministic (as any handler under at-least-once delivery).
//! - The handler raising, returning nothing or returning several values fails the origin:
//!   it goes to `x-sump` with that error, as a failing Rust [`Merge`] does.
//! - A runtime that does not answer is [unavailable](HandlerError::unavailable): the
//!   slice is kept and retried when it is back, without spending its retry budget.
//! - Failed and timed-out origins skip the handler (there is nothing to merge).
//!
//! [`Merge`]: troupe::layers::fan_in::Merge

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::StatusCode;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tower::Service;
use troupe::core::{Envelope, HandlerError, Outcome, Phase};
use troupe::layers::fan_in;

use crate::sidecar::client::RuntimeClient;
use crate::sidecar::frames;

/// Error type of an origin whose merge handler did not give one value.
pub const MERGE_HANDLER_ERROR: &str = "MergeHandlerError";

/// Wraps an aggregator service: the merges it emits get their payload from the runtime.
#[derive(Clone)]
pub struct RuntimeMerge<S> {
    inner: S,
    client: Arc<RuntimeClient>,
    actor: Arc<str>,
}

impl<S> RuntimeMerge<S> {
    /// `inner` (the aggregator of `actor`) with its merges made by the runtime at `client`.
    pub fn new(inner: S, client: Arc<RuntimeClient>, actor: &str) -> Self {
        Self {
            inner,
            client,
            actor: actor.into(),
        }
    }
}

impl<S> Service<Envelope> for RuntimeMerge<S>
where
    S: Service<Envelope, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let (client, actor) = (self.client.clone(), self.actor.clone());
        let outcome = self.inner.call(env);
        async move {
            match outcome.await? {
                Outcome::Merged(merged) if !failed(&merged) => merge(&client, &actor, *merged)
                    .await
                    .map(|m| Outcome::Merged(Box::new(m))),
                other => Ok(other),
            }
        }
        .boxed()
    }
}

fn failed(env: &Envelope) -> bool {
    env.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&Phase::Failed)
}

/// Calls the handler with `merged` (its payload the list of slice payloads) and puts its
/// answer in place of that list, or fails the merge with why there is none.
async fn merge(
    client: &Arc<RuntimeClient>,
    actor: &str,
    mut merged: Envelope,
) -> Result<Envelope, HandlerError> {
    let unavailable = |why: String| {
        HandlerError::unavailable(
            "MergeRuntimeUnavailable",
            format!(
                "the merge handler's runtime at {} did not answer: {why}",
                client.socket().display()
            ),
        )
    };
    let answer = client
        .invoke(&merged.to_vec())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = answer.status();
    if answer.is_event_stream() {
        // Dropping an answer unread closes its connection: the generator is abandoned.
        drop(answer);
        let message = "the merge handler is a generator; a merge handler returns one value".to_owned();
        fan_in::fail(&mut merged, actor, MERGE_HANDLER_ERROR, message);
        return Ok(merged);
    }
    let body = answer
        .read_to_end()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let answer = match status {
        StatusCode::OK => payload(&body),
        StatusCode::NO_CONTENT => Err(HandlerError::new(
            MERGE_HANDLER_ERROR,
            "the merge handler returned nothing (None)",
        )),
        StatusCode::BAD_REQUEST => {
            let info = frames::parse_error(&body);
            Err(HandlerError::new(info.type_name, info.message))
        }
        StatusCode::INTERNAL_SERVER_ERROR => Err(frames::handler_error(&body)),
        other => {
            return Err(unavailable(format!(
                "HTTP {other}, which the runtime protocol does not use"
            )));
        }
    };
    match answer {
        Ok(payload) => merged.payload = payload.into(),
        Err(error) => {
            let info = error.into_info();
            let message = format!("the merge handler failed: {}", info.message);
            fan_in::fail(&mut merged, actor, &info.type_name, message);
        }
    }
    Ok(merged)
}

/// The payload of the one frame of a `200 {"frames": [...]}` answer.
fn payload(body: &[u8]) -> Result<Value, HandlerError> {
    let protocol = |why: String| HandlerError::new(frames::PROTOCOL_ERROR, why);
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| protocol(format!("the runtime's 200 answer is not JSON: {e}")))?;
    let frames = answer
        .get("frames")
        .and_then(Value::as_array)
        .ok_or_else(|| protocol("the runtime's 200 answer is not {\"frames\": [...]}".to_owned()))?;
    match frames.as_slice() {
        [frame] => frame
            .get("payload")
            .cloned()
            .ok_or_else(|| protocol("the runtime sent a frame without a payload".to_owned())),
        more => Err(HandlerError::new(
            MERGE_HANDLER_ERROR,
            format!("the merge handler returned {} values; a merge is one", more.len()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_frame_is_the_merge() {
        let one = json!({"frames": [{"payload": {"sum": 3}, "route": {}}]}).to_string();
        assert_eq!(payload(one.as_bytes()).unwrap(), json!({"sum": 3}));
        let two = json!({"frames": [{"payload": 1}, {"payload": 2}]}).to_string();
        let error = payload(two.as_bytes()).unwrap_err().into_info();
        assert_eq!(error.type_name, MERGE_HANDLER_ERROR);
        assert!(payload(b"{}").is_err() && payload(b"not json").is_err());
    }
}
