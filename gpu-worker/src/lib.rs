//! Troupe GPU worker: an actor that runs a TorchScript model with libtorch, batching
//! envelopes dynamically the way Triton's dynamic batcher does.
//!
//! - [`tensor`]: a small owned tensor (dtype, shape, little-endian bytes) with `stack` and
//!   `unstack`, so the codecs and the batcher never touch libtorch.
//! - [`codec`]: per-actor codecs between an envelope's JSON payload and tensors: nested
//!   numeric arrays, or base64 little-endian bytes with `dtype` and `shape`, read at one JSON
//!   pointer and written at another, keeping the rest of the payload.
//! - [`batcher`]: a Triton-style dynamic batcher over any synchronous [`batcher::Model`],
//!   with a bounded queue (back-pressure), grouping by input shape, preferred batch sizes and
//!   Prometheus metrics.
//! - [`handler`]: the `tower::Service` the layer stack calls: decode, infer in a batch,
//!   encode; a bad input fails its own envelope only.
//! - [`worker`]: the runner set up for batching (prefetch of at least two batches, leases
//!   extended while a batch runs, ack after publish) on any transport, and the warm-up.
//! - [`args`]: the `troupe-gpu-worker` flags, checked without libtorch.
//! - `torch_model` (feature `torch`): a TorchScript model loaded on `auto`, `cpu` or
//!   `cuda:N`, optionally in half precision, run under `no_grad`; it is a
//!   [`batcher::Model`].
//!
//! Serving a queue with any model (here a closure-free toy that doubles its input):
//!
//! ```
//! use troupe::layers::{MemoryStore, MeshMetrics};
//! use troupe::{CancellationToken, MemoryTransport};
//! use troupe_gpu_worker::batcher::{Batcher, Model, ModelError};
//! use troupe_gpu_worker::codec::{CodecConfig, CodecKind};
//! use troupe_gpu_worker::tensor::Tensor;
//! use troupe_gpu_worker::worker::{serve, WorkerSettings};
//!
//! struct Double;
//! impl Model for Double {
//!     fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
//!         let doubled: Vec<f32> = batch.to_vec::<f32>().map_err(|e| ModelError::new(e.to_string()))?
//!             .iter().map(|x| x * 2.0).collect();
//!         Tensor::from_vec(batch.shape().to_vec(), &doubled).map_err(|e| ModelError::new(e.to_string()))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let codec = CodecConfig::new(CodecKind::Json, "/input", "/output")?;
//! let settings = WorkerSettings::new("double", codec);
//! let batcher = Batcher::start(Double, settings.batcher.clone())?;
//! let mut registry = prometheus_client::registry::Registry::default();
//! let shutdown = CancellationToken::new();
//! shutdown.cancel(); // a real worker runs until SIGTERM
//! let store = std::sync::Arc::new(MemoryStore::default());
//! serve(MemoryTransport::default(), store, batcher, &settings, &MeshMetrics::new(&mut registry), shutdown).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

#![forbid(unsafe_code)]

pub mod args;
pub mod batcher;
pub mod codec;
pub mod device;
pub mod handler;
pub mod tensor;
#[cfg(feature = "torch")]
pub mod torch_model;
pub mod worker;
