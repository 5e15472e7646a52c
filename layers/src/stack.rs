//! The standard actor stack, in the order the data path needs:
//! `trace > metrics > idempotency > retry > route > deadline > handler timing > handler`.
//!
//! - trace is outermost so every log line of the hop carries the envelope id and trace id;
//! - metrics sees what the runner gets (including duplicates answered by idempotency);
//! - idempotency wraps retry, so a retry decision is recorded and re-emitted like any other
//!   output;
//! - retry wraps route, so route defects of a handler are retried like handler errors;
//! - the deadline bounds only the handler call.
//!
//! Each layer is usable on its own; this module only fixes a sensible composition.

use std::sync::Arc;
use std::time::Duration;

use tower::{Service, ServiceBuilder};
use troupe_core::{Dispatch, Envelope, HandlerError, Outcome};

use crate::deadline::DeadlineLayer;
use crate::idempotency::{IdempotencyError, IdempotencyLayer, IdempotencyStore};
use crate::metrics::ActorMetrics;
use crate::retry::{RetryLayer, RetryPolicies};
use crate::route::RouteLayer;
use crate::trace::TraceLayer;

/// Everything the standard stack needs to know about one actor.
pub struct StackConfig<St> {
    /// The actor's name.
    pub actor: Arc<str>,
    /// Retry policies and rules.
    pub retry: RetryPolicies,
    /// Per-call handler timeout (cut short by an envelope's deadline).
    pub timeout: Duration,
    /// Where hops are recorded for effectively-once processing.
    pub store: Arc<St>,
    /// The actor's metric handles.
    pub metrics: ActorMetrics,
}

/// Builds the standard stack around `handler`.
pub fn actor_stack<H, St>(
    config: StackConfig<St>,
    handler: H,
) -> impl Service<Envelope, Response = Dispatch, Error = IdempotencyError, Future: Send + 'static>
+ Clone
+ Send
+ 'static
where
    H: Service<Envelope, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    H::Future: Send + 'static,
    St: IdempotencyStore,
{
    let actor = config.actor;
    ServiceBuilder::new()
        .layer(TraceLayer::new(actor.clone()))
        .layer(config.metrics.layer())
        .layer(IdempotencyLayer::new(actor.clone(), config.store).claim_ttl(config.timeout * 2))
        .layer(RetryLayer::new(actor.clone(), config.retry))
        .layer(RouteLayer::new(actor))
        .layer(DeadlineLayer::new(config.timeout))
        .layer(config.metrics.handler_layer())
        .service(handler)
}
