//! Troupe layers: the `tower` middleware that turns a handler into an actor.
//!
//! Every layer is an ordinary [`tower::Layer`] over `Service<Envelope>` and usable alone:
//!
//! | layer | module | does |
//! |---|---|---|
//! | [`TraceLayer`] | [`trace`] | a span per hop; W3C `traceparent` in and out |
//! | [`MetricsLayer`](metrics::MetricsLayer) | [`metrics`] | `asya_actor_*` Prometheus metrics |
//! | [`IdempotencyLayer`] | [`idempotency`] | effectively-once hops over a store |
//! | [`RetryLayer`] | [`retry`] | failures become delayed redeliveries, then `onExhausted` or `x-sink` |
//! | [`RouteLayer`] | [`route`] | protocol §2: advance, fan-out, sink, sump, overrides, deadline |
//! | [`DeadlineLayer`] | [`deadline`] | per-call timeout `min(actor timeout, deadline_at - now)` |
//!
//! [`stack::actor_stack`] composes them in the standard order. For a concurrency limit
//! inside a stack, `tower::limit::ConcurrencyLimitLayer` fits as is; the runner already
//! bounds envelopes in flight per actor.

#![forbid(unsafe_code)]

pub mod asya_resiliency;
pub mod deadline;
pub mod fan_in;
pub mod idempotency;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod retry;
pub mod route;
pub mod stack;
pub mod state;
pub mod trace;

pub use deadline::DeadlineLayer;
pub use idempotency::{
    AnyStore, IdempotencyError, IdempotencyLayer, IdempotencyStore, MemoryStore, PassThroughStore, StoreUrl,
    UnknownStore,
};
#[cfg(feature = "nats-kv")]
pub use idempotency::{NatsKvStore, NatsKvStoreConfig};
#[cfg(feature = "postgres")]
pub use idempotency::{PostgresStore, PostgresStoreConfig};
#[cfg(feature = "redis")]
pub use idempotency::{RedisStore, RedisStoreConfig};
pub use metrics::{ActorMetrics, ActorSnapshot, MeshMetrics};
pub use retry::{Backoff, RetryLayer, RetryPolicies, RetryPolicy, RetryRule};
pub use route::RouteLayer;
pub use stack::{StackConfig, actor_stack};
pub use trace::TraceLayer;
