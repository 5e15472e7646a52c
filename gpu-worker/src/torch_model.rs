//! TorchScript models run by libtorch through `tch` (feature `torch`).
//!
//! The model is loaded once on the chosen device, optionally converted to half precision,
//! and run under `no_grad`. Inputs and outputs cross this boundary as `f32` data with a
//! shape, so the rest of the worker (codecs, batcher) never touches libtorch.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::{CModule, Kind, TchError, Tensor};
/// libtorch's device and CUDA queries, for callers that report or test the device.
pub use tch::{Cuda, Device};

pub use crate::device::DeviceChoice;

/// What went wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    /// The TorchScript file could not be loaded.
    #[error("cannot load TorchScript model {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// libtorch's error.
        #[source]
        source: TchError,
    },
    /// CUDA was asked for and libtorch sees no such device.
    #[error(
        "device {requested} asked for, but libtorch sees {available} CUDA device(s); use --device cpu or auto"
    )]
    NoCuda {
        /// The device asked for.
        requested: DeviceChoice,
        /// CUDA devices libtorch sees.
        available: usize,
    },
    /// The input's data does not fill its shape.
    #[error("input of {len} values cannot have shape {shape:?} ({expected} values)")]
    Shape {
        /// Values given.
        len: usize,
        /// The shape given.
        shape: Vec<usize>,
        /// Values that shape holds.
        expected: usize,
    },
    /// The forward pass failed (usually an input of the wrong shape for the model).
    #[error("forward pass failed: {0}")]
    Forward(#[source] TchError),
    /// The model returned something other than one tensor.
    #[error("the model returned {0}, expected one tensor")]
    Output(String),
}

/// A TorchScript model on one device.
pub struct TorchModel {
    module: CModule,
    device: Device,
    half: bool,
}

impl fmt::Debug for TorchModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorchModel")
            .field("device", &self.device)
            .field("half", &self.half)
            .finish_non_exhaustive()
    }
}

impl TorchModel {
    /// Loads `path` on `device`; `half` runs it in float16 (GPUs).
    pub fn load(path: &Path, device: DeviceChoice, half: bool) -> Result<Self, TorchError> {
        let available = tch::Cuda::device_count().max(0) as usize;
        let device = match device {
            DeviceChoice::Auto if available > 0 => Device::Cuda(0),
            DeviceChoice::Auto | DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda(n) if n < available => Device::Cuda(n),
            requested @ DeviceChoice::Cuda(_) => return Err(TorchError::NoCuda { requested, available }),
        };
        let mut module = CModule::load_on_device(path, device).map_err(|source| TorchError::Load {
            path: path.to_owned(),
            source,
        })?;
        module.set_eval();
        if half {
            module.to(device, Kind::Half, false);
        }
        tracing::info!(model = %path.display(), ?device, half, "model loaded");
        Ok(Self { module, device, half })
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs the model on `data` of `shape` (batch dimension first); returns the output's
    /// data and shape.
    pub fn forward(&self, data: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Vec<usize>), TorchError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(TorchError::Shape {
                len: data.len(),
                shape: shape.to_vec(),
                expected,
            });
        }
        let size: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        tch::no_grad(|| {
            let input = Tensor::from_slice(data)
                .f_reshape(&size)
                .map_err(TorchError::Forward)?;
            let output = self.run(input)?.to_kind(Kind::Float).contiguous();
            let shape: Vec<usize> = output.size().iter().map(|&d| d.max(0) as usize).collect();
            let values = Vec::<f32>::try_from(output.flatten(0, -1)).map_err(TorchError::Forward)?;
            Ok((values, shape))
        })
    }

    /// One forward pass of a CPU tensor, on the model's device (in half precision when
    /// asked, for floating-point input); the output comes back to the CPU. Call under
    /// `no_grad`.
    fn run(&self, input: Tensor) -> Result<Tensor, TorchError> {
        let mut input = input.to_device(self.device);
        if self.half && input.is_floating_point() {
            input = input.to_kind(Kind::Half);
        }
        let output = self
            .module
            .forward_is(&[tch::IValue::Tensor(input)])
            .map_err(TorchError::Forward)?;
        match output {
            tch::IValue::Tensor(output) => Ok(output.to_device(Device::Cpu)),
            other => Err(TorchError::Output(format!("{other:?}"))),
        }
    }

    /// Runs `batches` forward passes on zeros of `shape` (first calls allocate and pick
    /// kernels); returns how long they took.
    pub fn warm_up(&self, shape: &[usize], batches: usize) -> Result<Duration, TorchError> {
        let zeros = vec![0.0f32; shape.iter().product()];
        let started = Instant::now();
        for _ in 0..batches {
            self.forward(&zeros, shape)?;
        }
        Ok(started.elapsed())
    }
}

impl TorchModel {
    /// Runs the model on a batch of any supported dtype; float16 outputs come back as
    /// float32.
    pub fn forward_tensor(&self, batch: &crate::tensor::Tensor) -> Result<crate::tensor::Tensor, TorchError> {
        use crate::tensor::{DType, Tensor as Owned};
        let kind = match batch.dtype() {
            DType::F32 => Kind::Float,
            DType::F64 => Kind::Double,
            DType::I64 => Kind::Int64,
            DType::I32 => Kind::Int,
            DType::U8 => Kind::Uint8,
        };
        let size: Vec<i64> = batch.shape().iter().map(|&d| d as i64).collect();
        tch::no_grad(|| {
            let input =
                Tensor::f_from_data_size(batch.as_le_bytes(), &size, kind).map_err(TorchError::Forward)?;
            let output = self.run(input)?;
            let (output, dtype) = match output.kind() {
                Kind::Float => (output, DType::F32),
                Kind::Double => (output, DType::F64),
                Kind::Int64 => (output, DType::I64),
                Kind::Int => (output, DType::I32),
                Kind::Uint8 => (output, DType::U8),
                Kind::Half | Kind::BFloat16 => (output.to_kind(Kind::Float), DType::F32),
                other => return Err(TorchError::Output(format!("a tensor of {other:?}"))),
            };
            let output = output.contiguous();
            let shape: Vec<usize> = output.size().iter().map(|&d| d.max(0) as usize).collect();
            let numel = output.numel();
            let mut bytes = vec![0u8; numel * output.kind().elt_size_in_bytes()];
            output
                .f_copy_data_u8(&mut bytes, numel)
                .map_err(TorchError::Forward)?;
            Owned::from_le_bytes(dtype, shape, bytes).map_err(|e| TorchError::Output(e.to_string()))
        })
    }
}

impl crate::batcher::Model for TorchModel {
    fn forward(
        &self,
        batch: crate::tensor::Tensor,
    ) -> Result<crate::tensor::Tensor, crate::batcher::ModelError> {
        self.forward_tensor(&batch)
            .map_err(|e| crate::batcher::ModelError::new(e.to_string()))
    }
}
