//! Troupe: a routing mesh for async actors.
//!
//! Each step of a pipeline is an actor with its own queue; a JSON [`Envelope`] carries its
//! route (`prev`/`curr`/`next`) from actor to actor. This facade re-exports the pieces:
//!
//! - [`core`]: envelope, route, status, queue naming, the [`Transport`] contract, the
//!   [`Runner`];
//! - [`transports`]: the embedded in-memory broker (always on) and, behind Cargo features,
//!   real brokers;
//! - [`layers`]: the tower middleware (route, retry, idempotency, metrics, trace, deadline).
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use troupe::layers::{actor_stack, MemoryStore, MeshMetrics, RetryPolicies, StackConfig};
//! use troupe::{payload_fn, HandlerError};
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let metrics = MeshMetrics::new(&mut registry);
//! let stack = actor_stack(
//!     StackConfig {
//!         actor: "double".into(),
//!         retry: RetryPolicies::default(),
//!         timeout: Duration::from_secs(30),
//!         store: Arc::new(MemoryStore::default()),
//!         metrics: metrics.actor("double"),
//!     },
//!     payload_fn(|p: serde_json::Value| async move {
//!         Ok::<_, HandlerError>(serde_json::json!(p.as_i64().unwrap_or(0) * 2))
//!     }),
//! );
//! # let _ = stack;
//! ```

#![forbid(unsafe_code)]

pub mod any_transport;
pub mod broker;
#[cfg(all(feature = "cli", feature = "http"))]
pub mod control;
#[cfg(all(feature = "cli", feature = "http"))]
pub mod host;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "cli")]
pub mod logging;
#[cfg(feature = "http")]
pub mod signal;

pub use troupe_core as core;
pub use troupe_layers as layers;
pub use troupe_transports as transports;

pub use troupe_core::{
    CancellationToken, ConsumeOptions, Consumer, DecodeError, DecodeLimits, Delivery, Dispatch, Envelope,
    HandlerError, Outcome, Phase, Publication, PublishOptions, QueueAdmin, QueueDepth, QueueNaming, Reason,
    Route, RunReport, Runner, RunnerConfig, RunnerError, SINK, SUMP, Status, Transport, TransportError,
    handler_fn, payload_fn,
};
pub use troupe_transports::MemoryTransport;
