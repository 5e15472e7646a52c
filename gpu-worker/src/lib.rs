//! Troupe GPU worker: TorchScript inference through libtorch, with dynamic batching.
//!
//! What exists so far:
//!
//! - [`tensor`]: a small owned tensor (dtype, shape, little-endian bytes) with `stack` and
//!   `unstack`, so the codecs and the batcher never touch libtorch.
//! - [`codec`]: per-actor codecs between an envelope's JSON payload and tensors: nested
//!   numeric arrays, or base64 little-endian bytes with `dtype` and `shape`, read at one JSON
//!   pointer and written at another, keeping the rest of the payload.
//! - [`batcher`]: a Triton-style dynamic batcher over any synchronous [`batcher::Model`],
//!   with a bounded queue (back-pressure), grouping by input shape, preferred batch sizes and
//!   Prometheus metrics.
//! - `torch_model` (feature `torch`): a TorchScript model loaded on `auto`, `cpu` or
//!   `cuda:N`, optionally in half precision, run under `no_grad`, with warm-up; it is a
//!   [`batcher::Model`]. Its outputs match Python's on the committed fixtures
//!   (`gpu-worker/fixtures/`), alone, batched, and through the batcher.
//!
//! Still to come (see `gpu-worker/README.md`): the handler that joins codec and batcher for
//! the runner, and the `troupe-gpu-worker` binary.

#![forbid(unsafe_code)]

pub mod batcher;
pub mod codec;
pub mod tensor;
#[cfg(feature = "torch")]
pub mod torch_model;
