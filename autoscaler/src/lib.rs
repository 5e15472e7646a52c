//! Troupe autoscaler — not built yet.
//!
//! This crate will scale each actor's Deployment from zero to N on its queue depth, in
//! place of KEDA (see `autoscaler/README.md`). It deliberately exports nothing today.
//! Depth probes will use [`QueueAdmin::depth`](https://docs.rs/troupe-core), which
//! already counts in-flight and delayed work, not only ready messages.

#![forbid(unsafe_code)]
