//! The Troupe gateway: how people and programs use a pipeline. A *task* is one submitted
//! envelope and everything that descends from it (fan-out children included); the gateway
//! records each task's state from the events the mesh's runners publish and from the
//! pipeline's ends (`x-sink`, `x-sump`).
//!
//! This crate starts with the rules every later part relies on, kept free of I/O so they
//! can be tested exhaustively:
//!
//! - [`state`]: a task's state and how updates combine (rank-monotonic, idempotent, and
//!   the same whatever order at-least-once delivery brings them in);
//! - [`ledger`]: when a task whose envelopes fanned out is finished, and how.

#![forbid(unsafe_code)]

pub mod ledger;
pub mod state;

pub use ledger::{BranchEnd, Ledger};
pub use state::{TaskState, Update};
