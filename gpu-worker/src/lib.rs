//! Troupe GPU worker — not built yet.
//!
//! This crate will hold the libtorch (`tch`) inference actor with dynamic batching
//! (see `gpu-worker/README.md`). It deliberately exports nothing today: nothing here
//! pretends to work before it does.

#![forbid(unsafe_code)]
