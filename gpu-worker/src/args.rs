//! The `troupe-gpu-worker` command line: flags with `TROUPE_*` environment fallbacks, checked
//! into [`WorkerSettings`] and [`ModelSettings`] before anything is loaded, so a bad setting
//! fails at once with a message naming the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use troupe::broker::QueueArgs;
use troupe::core::NameError;
use troupe::layers::RetryPolicies;

use crate::batcher::{self, BatcherConfig};
use crate::codec::{CodecConfig, CodecKind, Dim, PointerError, ShapeSpec};
use crate::device::DeviceChoice;
use crate::tensor::DType;
use crate::worker::WorkerSettings;

/// `troupe-gpu-worker`: serve one actor's queue with a TorchScript model, batching envelopes
/// dynamically.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "troupe-gpu-worker", version, about)]
pub struct WorkerArgs {
    /// The TorchScript file (`torch.jit.script(model).save(...)` or `torch.jit.trace`).
    #[arg(long, env = "TROUPE_MODEL")]
    pub model: PathBuf,
    /// Where to run it: auto (CUDA when libtorch sees a GPU, else CPU), cpu, cuda, cuda:N.
    #[arg(long, env = "TROUPE_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// Run the model in float16 (floating-point inputs are converted; outputs come back as
    /// float32).
    #[arg(long, env = "TROUPE_HALF")]
    pub half: bool,
    /// Threads libtorch uses within one operation on the CPU (default: libtorch's own choice,
    /// one per core).
    #[arg(long, env = "TROUPE_TORCH_THREADS")]
    pub torch_threads: Option<usize>,

    /// The actor served (its queue is `{prefix}-{namespace}-{actor}`).
    #[arg(long, env = "TROUPE_ACTOR")]
    pub actor: String,
    /// The queue's namespace and prefix, and the broker.
    #[command(flatten)]
    pub queue: QueueArgs,

    /// How tensors are carried in the payload: json (nested arrays) or base64
    /// (`{"dtype", "shape", "data"}`).
    #[arg(long, env = "TROUPE_CODEC", default_value = "json")]
    pub codec: CodecKind,
    /// JSON pointer of the input in the payload (`""` is the whole payload).
    #[arg(long, env = "TROUPE_INPUT_POINTER", default_value = "/input")]
    pub input_pointer: String,
    /// JSON pointer the output is written at; the rest of the payload is kept.
    #[arg(long, env = "TROUPE_OUTPUT_POINTER", default_value = "/output")]
    pub output_pointer: String,
    /// Expected shape of one input, without the batch dimension, e.g. `[*, 4]`; inputs of
    /// another shape fail alone with a message saying this. Unset: any shape.
    #[arg(long, env = "TROUPE_INPUT_SHAPE")]
    pub input_shape: Option<ShapeSpec>,
    /// Expected dtype of inputs: float32, float64, int64, int32, uint8.
    #[arg(long, env = "TROUPE_INPUT_DTYPE", default_value = "float32")]
    pub input_dtype: DType,

    /// The most envelopes in one forward pass (1 turns batching off).
    #[arg(long, env = "TROUPE_MAX_BATCH_SIZE", default_value_t = 16)]
    pub max_batch_size: usize,
    /// How long the oldest envelope of a batch waits for others to join it. 0 (like
    /// Triton's default) runs a batch as soon as the model is free; batches still grow
    /// under load, from what queues while a forward pass runs (see the batching bench).
    #[arg(long, env = "TROUPE_MAX_QUEUE_DELAY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub max_queue_delay: Duration,
    /// Batch sizes the model runs best at, e.g. `4,8,16`; a batch closes early at the
    /// largest.
    #[arg(long, env = "TROUPE_PREFERRED_BATCH_SIZES", value_delimiter = ',')]
    pub preferred_batch_sizes: Vec<usize>,
    /// Envelopes in flight at once (leased from the broker, queued or running); at least
    /// twice --max-batch-size. Default: twice --max-batch-size.
    #[arg(long, env = "TROUPE_PREFETCH")]
    pub prefetch: Option<usize>,
    /// Lease on each delivery, extended every half lease while its batch runs.
    #[arg(long, env = "TROUPE_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Per-envelope timeout, waiting for a batch included.
    #[arg(long, env = "TROUPE_ACTOR_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Shape of one warm-up input, without the batch dimension, e.g. `[1, 28, 28]`.
    /// Default: --input-shape when it has no `*`; with neither, there is no warm-up.
    #[arg(long, env = "TROUPE_WARM_UP_SHAPE")]
    pub warm_up_shape: Option<ShapeSpec>,
    /// Forward passes on zeros per batch size (1, the preferred sizes and the largest)
    /// before the worker reports ready.
    #[arg(long, env = "TROUPE_WARM_UP_BATCHES", default_value_t = 2)]
    pub warm_up_batches: usize,

    /// Address of `/metrics`, `/healthz` (liveness) and `/readyz` (readiness: model loaded
    /// and warmed up).
    #[arg(long, env = "TROUPE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
}

/// How the model is loaded and warmed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSettings {
    /// The TorchScript file.
    pub path: PathBuf,
    /// Where it runs.
    pub device: DeviceChoice,
    /// Float16.
    pub half: bool,
    /// libtorch's intra-op threads, if set.
    pub torch_threads: Option<usize>,
    /// The warm-up, if an input shape is known.
    pub warm_up: Option<WarmUp>,
}

/// Forward passes on zeros before the worker reports ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmUp {
    /// One input's shape.
    pub item_shape: Vec<usize>,
    /// Its dtype.
    pub dtype: DType,
    /// Batch sizes to run.
    pub sizes: Vec<usize>,
    /// Passes per size.
    pub batches: usize,
}

/// A setting the worker cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A JSON pointer flag is not a pointer.
    #[error("--{which}-pointer: {source}", which = .0.which, source = .0)]
    Pointer(#[from] PointerError),
    /// The batch sizes do not fit together.
    #[error("batching: {0}; check --max-batch-size, --preferred-batch-sizes and --prefetch")]
    Batcher(#[from] batcher::ConfigError),
    /// The prefetch cannot hold two batches.
    #[error(
        "--prefetch {prefetch} must be at least twice --max-batch-size {max_batch_size}, so that a batch can form while another runs"
    )]
    Prefetch {
        /// `--prefetch`.
        prefetch: usize,
        /// `--max-batch-size`.
        max_batch_size: usize,
    },
    /// The warm-up shape has a `*` or disagrees with the input shape.
    #[error("--warm-up-shape {warm_up}: {reason}")]
    WarmUpShape {
        /// The shape given.
        warm_up: ShapeSpec,
        /// What is wrong with it.
        reason: String,
    },
    /// The actor, namespace or prefix cannot be part of a queue name.
    #[error("queue naming: {0}")]
    Naming(#[from] NameError),
    /// `--torch-threads 0`.
    #[error("--torch-threads must be at least 1")]
    TorchThreads,
}

impl WorkerArgs {
    /// Checks every setting and splits them into the worker's and the model's.
    pub fn settings(&self) -> Result<(WorkerSettings, ModelSettings), ArgsError> {
        let mut codec = CodecConfig::new(self.codec, &self.input_pointer, &self.output_pointer)?
            .with_dtype(self.input_dtype);
        if let Some(shape) = &self.input_shape {
            codec = codec.with_shape(shape.clone());
        }
        let max_batch_size = self.max_batch_size;
        let prefetch = self.prefetch.unwrap_or(2 * max_batch_size);
        let batcher = BatcherConfig {
            max_batch_size,
            max_queue_delay: self.max_queue_delay,
            preferred_batch_sizes: self.preferred_batch_sizes.clone(),
            queue_capacity: prefetch,
        };
        batcher.validate()?;
        if prefetch < 2 * max_batch_size {
            return Err(ArgsError::Prefetch {
                prefetch,
                max_batch_size,
            });
        }
        if self.torch_threads == Some(0) {
            return Err(ArgsError::TorchThreads);
        }
        let naming = self.queue.naming()?;
        naming.queue_for(&self.actor)?;
        let worker = WorkerSettings {
            actor: self.actor.clone(),
            naming,
            codec,
            batcher,
            prefetch,
            lease: self.lease,
            timeout: self.timeout,
            retry: RetryPolicies::default(),
        };
        let model = ModelSettings {
            path: self.model.clone(),
            device: self.device,
            half: self.half,
            torch_threads: self.torch_threads,
            warm_up: self.warm_up()?,
        };
        Ok((worker, model))
    }

    fn warm_up(&self) -> Result<Option<WarmUp>, ArgsError> {
        if self.warm_up_batches == 0 {
            return Ok(None);
        }
        let item_shape = match (&self.warm_up_shape, &self.input_shape) {
            (Some(warm_up), input) => {
                let shape = fixed(warm_up).ok_or_else(|| ArgsError::WarmUpShape {
                    warm_up: warm_up.clone(),
                    reason: "every dimension must be a number".into(),
                })?;
                if let Some(input) = input.as_ref().filter(|input| !input.matches(&shape)) {
                    return Err(ArgsError::WarmUpShape {
                        warm_up: warm_up.clone(),
                        reason: format!("does not match --input-shape {input}"),
                    });
                }
                shape
            }
            (None, Some(input)) => match fixed(input) {
                Some(shape) => shape,
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let mut sizes = vec![1];
        sizes.extend(&self.preferred_batch_sizes);
        sizes.push(self.max_batch_size);
        sizes.sort_unstable();
        sizes.dedup();
        Ok(Some(WarmUp {
            item_shape,
            dtype: self.input_dtype,
            sizes,
            batches: self.warm_up_batches,
        }))
    }
}

/// The shape, when no dimension is `*`.
fn fixed(spec: &ShapeSpec) -> Option<Vec<usize>> {
    spec.0
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Any => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(extra: &[&str]) -> Result<WorkerArgs, clap::Error> {
        let mut argv = vec!["troupe-gpu-worker", "--model", "m.pt", "--actor", "infer"];
        argv.extend_from_slice(extra);
        WorkerArgs::try_parse_from(argv)
    }

    fn settings(extra: &[&str]) -> Result<(WorkerSettings, ModelSettings), String> {
        parse(extra)
            .map_err(|e| e.to_string())?
            .settings()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_batch_sixteen_with_two_batches_in_flight_and_no_warm_up_without_a_shape() {
        let (worker, model) = settings(&[]).expect("defaults");
        assert_eq!(worker.batcher.max_batch_size, 16);
        assert_eq!(worker.prefetch, 32);
        assert_eq!(worker.batcher.queue_capacity, 32);
        assert_eq!(worker.codec.input_pointer(), "/input");
        assert_eq!(model.device, DeviceChoice::Auto);
        assert_eq!(model.warm_up, None);
        // The library's defaults are the binary's.
        let library = WorkerSettings::new("infer", worker.codec.clone());
        assert_eq!(
            (&library.batcher, library.prefetch),
            (&worker.batcher, worker.prefetch)
        );
    }

    #[test]
    fn the_warm_up_covers_one_the_preferred_sizes_and_the_largest() {
        let (_, model) = settings(&[
            "--input-shape",
            "[1, 28, 28]",
            "--preferred-batch-sizes",
            "4,8",
            "--max-batch-size",
            "8",
        ])
        .expect("settings");
        let warm_up = model.warm_up.expect("a fixed input shape gives a warm-up");
        assert_eq!(warm_up.item_shape, [1, 28, 28]);
        assert_eq!(warm_up.sizes, [1, 4, 8]);
        assert_eq!(warm_up.batches, 2);
    }

    #[test]
    fn a_wildcard_input_shape_needs_an_explicit_warm_up_shape_that_matches_it() {
        let (_, model) = settings(&["--input-shape", "*,4"]).expect("settings");
        assert_eq!(model.warm_up, None);
        let (_, model) = settings(&["--input-shape", "*,4", "--warm-up-shape", "2,4"]).expect("settings");
        assert_eq!(model.warm_up.map(|w| w.item_shape), Some(vec![2, 4]));
        assert_eq!(
            settings(&["--input-shape", "*,4", "--warm-up-shape", "2,5"])
                .err()
                .as_deref(),
            Some("--warm-up-shape [2, 5]: does not match --input-shape [*, 4]")
        );
        assert_eq!(
            settings(&["--warm-up-shape", "*,5"]).err().as_deref(),
            Some("--warm-up-shape [*, 5]: every dimension must be a number")
        );
    }

    #[test]
    fn bad_settings_name_the_flag_to_fix() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["--prefetch", "20"],
                "--prefetch 20 must be at least twice --max-batch-size 16, so that a batch can form while another runs",
            ),
            (
                &["--max-batch-size", "0"],
                "batching: max_batch_size must be at least 1; check --max-batch-size, --preferred-batch-sizes and --prefetch",
            ),
            (
                &["--preferred-batch-sizes", "32"],
                "batching: preferred batch size 32 must be between 1 and max_batch_size 16; check --max-batch-size, --preferred-batch-sizes and --prefetch",
            ),
            (
                &["--output-pointer", "output"],
                "--output-pointer: output pointer \"output\" is not a JSON pointer: it must be empty or start with /",
            ),
            (&["--torch-threads", "0"], "--torch-threads must be at least 1"),
        ];
        for (flags, message) in cases {
            assert_eq!(settings(flags).err().as_deref(), Some(message), "{flags:?}");
        }
        let error = parse(&["--device", "gpu"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("expected auto, cpu, cuda or cuda:N"), "{error}");
        let error = parse(&["--input-dtype", "float8"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("float8"), "{error}");
    }

    #[test]
    fn batching_off_is_a_batch_of_one() {
        let (worker, _) = settings(&["--max-batch-size", "1"]).expect("settings");
        assert_eq!((worker.batcher.max_batch_size, worker.prefetch), (1, 2));
    }
}
