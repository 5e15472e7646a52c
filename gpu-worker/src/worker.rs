//! The worker: an actor whose handler is the [`InferenceHandler`], run by the runner with
//! the usual layer stack on any transport. The `troupe-gpu-worker` binary loads a
//! TorchScript model and calls [`serve`]; tests and embedders can call it with any
//! [`Model`].
//!
//! How the runner is set up for batching:
//!
//! - concurrency and prefetch are [`WorkerSettings::prefetch`], at least twice the batch
//!   size, so one batch forms while another runs;
//! - the batcher's queue holds as many requests as there are envelopes in flight, so its
//!   back-pressure and the runner's agree: the runner stops pulling once `prefetch`
//!   envelopes are waiting or running;
//! - while an envelope waits for or sits in a running batch, the runner extends its lease
//!   every half [`WorkerSettings::lease`]; it is acked only after its output is published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe::core::{
    ConsumeOptions, QueueAdmin, QueueNaming, QueueSetupError, RunReport, Runner, RunnerConfig, RunnerError,
    ensure_actor_queues,
};
use troupe::layers::{IdempotencyStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{CancellationToken, Transport};

use crate::batcher::{BatcherConfig, BatcherHandle, Model, ModelError};
use crate::codec::CodecConfig;
use crate::handler::InferenceHandler;
use crate::tensor::{DType, Tensor, TensorError};

/// Everything the worker needs besides the model and the transport.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The actor served.
    pub actor: String,
    /// Actor-to-queue naming.
    pub naming: QueueNaming,
    /// Where inputs and outputs are in the payload, and their form.
    pub codec: CodecConfig,
    /// How batches are formed.
    pub batcher: BatcherConfig,
    /// Envelopes in flight (leased) at once; at least twice `batcher.max_batch_size`.
    pub prefetch: usize,
    /// Lease on each delivery; extended every half lease while the envelope is in flight.
    pub lease: Duration,
    /// Per-envelope timeout, from the call to the answer (queueing in the batcher included).
    pub timeout: Duration,
    /// Retry policies for inference failures.
    pub retry: RetryPolicies,
}

impl WorkerSettings {
    /// Settings for `actor`: batches of up to 16 run as soon as the model is free (no queue
    /// delay), a prefetch of twice the batch size, a 30 s lease, a 5 min timeout and the
    /// default retry policy; the `troupe-gpu-worker` flags' defaults.
    pub fn new(actor: impl Into<String>, codec: CodecConfig) -> Self {
        let batcher = BatcherConfig {
            max_batch_size: 16,
            max_queue_delay: Duration::ZERO,
            ..BatcherConfig::default()
        };
        let prefetch = 2 * batcher.max_batch_size;
        Self {
            actor: actor.into(),
            naming: QueueNaming::default(),
            codec,
            batcher: BatcherConfig {
                queue_capacity: prefetch,
                ..batcher
            },
            prefetch,
            lease: Duration::from_secs(30),
            timeout: Duration::from_secs(300),
            retry: RetryPolicies::default(),
        }
    }
}

/// Why the worker could not serve its queue.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The actor's queues could not be set up.
    #[error(transparent)]
    Queues(#[from] QueueSetupError),
    /// The runner could not run (a bad actor name, a refused consumer).
    #[error(transparent)]
    Runner(#[from] RunnerError),
}

/// Serves the actor's queue on `transport`, inferring through `batcher` and recording hops
/// in `store`, until `shutdown`;
/// then finishes what is in flight (for up to the timeout) and returns what it did.
///
/// Creates the actor's queue and `x-sink`/`x-sump` if missing. Records the usual actor
/// metrics in `mesh`.
pub async fn serve<T: Transport + QueueAdmin, St: IdempotencyStore>(
    transport: T,
    store: Arc<St>,
    batcher: BatcherHandle,
    settings: &WorkerSettings,
    mesh: &MeshMetrics,
    shutdown: CancellationToken,
) -> Result<RunReport, WorkerError> {
    ensure_actor_queues(&transport, &settings.naming, &settings.actor).await?;
    let actor: Arc<str> = settings.actor.as_str().into();
    let stack = actor_stack(
        StackConfig {
            actor: actor.clone(),
            retry: settings.retry.clone(),
            timeout: settings.timeout,
            store,
            metrics: mesh.actor(&settings.actor),
        },
        InferenceHandler::new(settings.codec.clone(), batcher),
    );
    let mut config = RunnerConfig::new(settings.actor.clone());
    config.naming = settings.naming.clone();
    settings.configure_runner(&mut config);
    settings.log_serving();
    Ok(Runner::new(transport, stack, config).run(shutdown).await?)
}

impl WorkerSettings {
    /// Sets up a runner for batching (see the module docs): concurrency and prefetch
    /// [`WorkerSettings::prefetch`] on one consumer, the lease, and the timeout as the
    /// shutdown grace.
    pub fn configure_runner(&self, config: &mut RunnerConfig) {
        config.concurrency = self.prefetch;
        // One consumer: a second would split the prefetch, and batches form across all of it.
        config.workers = 1;
        config.consume = ConsumeOptions {
            prefetch: self.prefetch,
            lease: self.lease,
        };
        config.shutdown_grace = self.timeout;
    }

    /// Logs how the worker batches, once, as it starts serving.
    pub fn log_serving(&self) {
        tracing::info!(
            actor = %self.actor,
            queue = ?self.naming.queue_for(&self.actor).ok(),
            max_batch_size = self.batcher.max_batch_size,
            max_queue_delay = ?self.batcher.max_queue_delay,
            prefetch = self.prefetch,
            "serving"
        );
    }
}

/// Runs `batches` forward passes on zeros for each batch size in `sizes` (each input of
/// `item_shape` and `dtype`), so that the first envelopes do not pay for allocation and
/// kernel selection; returns how long it took. Call it before reporting ready.
pub fn warm_up<M: Model + ?Sized>(
    model: &M,
    dtype: DType,
    item_shape: &[usize],
    sizes: &[usize],
    batches: usize,
) -> Result<Duration, WarmUpError> {
    let started = Instant::now();
    for &size in sizes {
        let mut shape = Vec::with_capacity(item_shape.len() + 1);
        shape.push(size);
        shape.extend_from_slice(item_shape);
        let zeros = Tensor::zeros(dtype, shape.clone()).map_err(WarmUpError::Input)?;
        for _ in 0..batches {
            let output = model
                .forward(zeros.clone())
                .map_err(|source| WarmUpError::Model {
                    shape: shape.clone(),
                    source,
                })?;
            if output.shape().first() != Some(&size) {
                return Err(WarmUpError::BatchOutput {
                    shape,
                    output: output.shape().to_vec(),
                });
            }
        }
    }
    Ok(started.elapsed())
}

/// Why the warm-up failed; the model would fail real envelopes the same way.
#[derive(Debug, thiserror::Error)]
pub enum WarmUpError {
    /// The warm-up input could not be built.
    #[error("cannot build a warm-up input: {0}")]
    Input(#[source] TensorError),
    /// The model failed on a warm-up batch.
    #[error(
        "the model failed on a warm-up batch of shape {shape:?}: {source}; check --warm-up-shape and --input-dtype"
    )]
    Model {
        /// The batch's shape.
        shape: Vec<usize>,
        /// The model's error.
        #[source]
        source: ModelError,
    },
    /// The model's output has another leading dimension than its input.
    #[error(
        "the model answered a warm-up batch of shape {shape:?} with shape {output:?}; its first dimension must be the batch"
    )]
    BatchOutput {
        /// The batch's shape.
        shape: Vec<usize>,
        /// The output's shape.
        output: Vec<usize>,
    },
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Record(Mutex<Vec<Vec<usize>>>);

    impl Model for Record {
        fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
            self.0
                .lock()
                .map_err(|_| ModelError::new("poisoned"))?
                .push(batch.shape().to_vec());
            Ok(batch)
        }
    }

    #[test]
    fn warm_up_runs_every_size_the_asked_number_of_times() {
        let model = Record::default();
        warm_up(&model, DType::F32, &[3, 2], &[1, 8], 2).expect("warm-up");
        let seen = model.0.lock().expect("lock").clone();
        assert_eq!(seen, [vec![1, 3, 2], vec![1, 3, 2], vec![8, 3, 2], vec![8, 3, 2]]);
    }

    #[test]
    fn warm_up_reports_a_model_that_does_not_keep_the_batch_dimension() {
        struct Sum;
        impl Model for Sum {
            fn forward(&self, _: Tensor) -> Result<Tensor, ModelError> {
                Tensor::from_vec(vec![1], &[0.0f32]).map_err(|e| ModelError::new(e.to_string()))
            }
        }
        let error = warm_up(&Sum, DType::F32, &[4], &[4], 1)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "the model answered a warm-up batch of shape [4, 4] with shape [1]; its first dimension must be the batch"
            )
        );
    }

    #[test]
    fn default_settings_prefetch_two_batches_and_queue_them_all() {
        let codec = CodecConfig::new(crate::codec::CodecKind::Json, "/input", "/output").expect("pointers");
        let settings = WorkerSettings::new("infer", codec);
        assert_eq!(settings.prefetch, 2 * settings.batcher.max_batch_size);
        assert_eq!(settings.batcher.queue_capacity, settings.prefetch);
        assert_eq!(settings.batcher.validate(), Ok(()));
    }
}
