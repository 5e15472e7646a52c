//! Troupe's autoscaler: scales each actor's Deployment from zero to N on its own queue
//! depth, in place of KEDA.
//!
//! - [`crd`]: the `AsyncActor` resource (`asya.sh/v1alpha1`) it reads and reports on;
//! - [`policy`]: the decision, a pure function with KEDA's semantics plus a warm pool, a
//!   separate delay before zero, an in-flight floor and fast activation;
//! - [`probe`]: queue depth on every broker, in-flight work included;
//! - [`controller`]: one polling loop per actor that probes, decides and writes the
//!   Deployment's `/scale` subresource;
//! - [`simulate`]: replays an arrival trace against the policy and KEDA's default.

#![forbid(unsafe_code)]

pub mod controller;
pub mod crd;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod scale;
pub mod simulate;
