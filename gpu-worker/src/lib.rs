//! Troupe GPU worker: TorchScript inference through libtorch, with dynamic batching.
//!
//! What exists so far:
//!
//! - [`torch_model`] (feature `torch`): a TorchScript model loaded on `auto`, `cpu` or
//!   `cuda:N`, optionally in half precision, run under `no_grad`, with warm-up. Its
//!   outputs match Python's on the committed fixtures (`gpu-worker/fixtures/`).
//!
//! Still to come (see `gpu-worker/README.md`): the payload codecs, the dynamic batcher, the
//! runner integration and the `troupe-gpu-worker` binary.

#![forbid(unsafe_code)]

#[cfg(feature = "torch")]
pub mod torch_model;
