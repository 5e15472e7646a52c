//! A dynamic batcher in the manner of Triton's: requests queue up, are grouped by input
//! dtype and shape, and go to the model as one stacked batch.
//!
//! Scheduling, one forward pass at a time (one model instance):
//!
//! - A batch of a group closes when it reaches `max_batch_size`; or, when
//!   `preferred_batch_sizes` are set, when the group reaches the largest of them (waiting
//!   longer cannot give a better batch); or when `max_queue_delay` has passed since its
//!   oldest request arrived.
//! - A closing batch takes the largest preferred size that is available, else everything up
//!   to `max_batch_size`, oldest requests first.
//! - A batch holds one dtype and shape; other shapes wait for their own batch. Among groups
//!   ready to go, the one with the oldest request goes first, and a group that is not ready
//!   becomes ready at its deadline, so none starves.
//! - While a forward pass runs, requests keep queueing: the next batch forms meanwhile.
//!
//! The model is synchronous and runs on Tokio's blocking pool (`spawn_blocking`), together
//! with stacking and unstacking, never on the async workers. Its result is split per request
//! and sent to each caller; a model error fails every request of that batch and nothing else.
//!
//! The queue is bounded by `queue_capacity` requests waiting for a batch: when it is full,
//! [`BatcherHandle::infer`] waits for room, which is the back-pressure that stops a runner
//! from pulling more envelopes off the broker ([`BatcherHandle::try_infer`] fails instead).
//! Give the runner a prefetch of at least twice `max_batch_size` so that one batch can form
//! while another runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::tensor::{DType, Tensor, TensorError, stack, unstack};

/// A model that runs a whole batch at once, synchronously.
///
/// `forward` gets the requests stacked along a new leading dimension and must answer with
/// the same leading dimension: row `i` of the output belongs to request `i`.
pub trait Model: Send + Sync + 'static {
    /// Runs one batch.
    fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError>;
}

impl<M: Model + ?Sized> Model for Arc<M> {
    fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
        (**self).forward(batch)
    }
}

/// A model's own failure, as a message for every request of the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

impl ModelError {
    /// A model error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ModelError(message.into())
    }
}

/// How batches are formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatcherConfig {
    /// The most requests in one forward pass.
    pub max_batch_size: usize,
    /// The longest the oldest request of a group waits for others to join it.
    pub max_queue_delay: Duration,
    /// Batch sizes the model runs best at; each between 1 and `max_batch_size`. Empty: none.
    pub preferred_batch_sizes: Vec<usize>,
    /// The most requests waiting for a batch; more callers of `infer` wait for room.
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(5),
            preferred_batch_sizes: Vec::new(),
            queue_capacity: 16,
        }
    }
}

/// A [`BatcherConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `max_batch_size` is 0.
    #[error("max_batch_size must be at least 1")]
    ZeroBatch,
    /// A preferred size is 0 or above `max_batch_size`.
    #[error("preferred batch size {size} must be between 1 and max_batch_size {max}")]
    Preferred {
        /// The preferred size.
        size: usize,
        /// `max_batch_size`.
        max: usize,
    },
    /// The queue cannot hold one full batch, so none would ever form.
    #[error("queue_capacity {capacity} must be at least max_batch_size {max}")]
    Capacity {
        /// `queue_capacity`.
        capacity: usize,
        /// `max_batch_size`.
        max: usize,
    },
}

impl BatcherConfig {
    /// Checks the sizes against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let max = self.max_batch_size;
        if max == 0 {
            return Err(ConfigError::ZeroBatch);
        }
        if let Some(&size) = self.preferred_batch_sizes.iter().find(|&&p| p == 0 || p > max) {
            return Err(ConfigError::Preferred { size, max });
        }
        if self.queue_capacity < max {
            return Err(ConfigError::Capacity {
                capacity: self.queue_capacity,
                max,
            });
        }
        Ok(())
    }
}

/// Why one inference request got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// [`BatcherHandle::try_infer`] found the queue full.
    #[error("inference queue is full ({capacity} requests waiting)")]
    QueueFull {
        /// `queue_capacity`.
        capacity: usize,
    },
    /// The batcher has stopped.
    #[error("the batcher has stopped")]
    Closed,
    /// The model failed on the batch this request was in.
    #[error("model failed on a batch of {batch}: {message}")]
    Model {
        /// Requests in the batch.
        batch: usize,
        /// The model's message.
        message: String,
    },
    /// The model's output cannot be split back into one row per request.
    #[error(
        "model answered a batch of shape {input_shape:?} with shape {output_shape:?}: expected leading dimension {batch}"
    )]
    BatchOutput {
        /// Requests in the batch.
        batch: usize,
        /// The stacked input's shape.
        input_shape: Vec<usize>,
        /// The output's shape.
        output_shape: Vec<usize>,
    },
    /// The model panicked on the batch this request was in.
    #[error("model panicked on a batch of {batch}")]
    Panicked {
        /// Requests in the batch.
        batch: usize,
    },
    /// The batch could not be stacked (cannot happen for batches of one group).
    #[error("cannot stack the batch: {0}")]
    Stack(TensorError),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// The batcher's Prometheus metrics.
///
/// - `troupe_gpu_batch_size`: requests per forward pass (histogram);
/// - `troupe_gpu_queue_delay_seconds`: time from enqueue to dispatch, per request;
/// - `troupe_gpu_forward_seconds`: stacking, forward pass and unstacking, per batch;
/// - `troupe_gpu_inferences_total{outcome="ok"|"error"}`: requests answered; its rate is
///   the envelopes per second.
#[derive(Clone, Debug)]
pub struct BatcherMetrics {
    batch_size: Histogram,
    queue_delay: Histogram,
    forward: Histogram,
    inferences: Family<OutcomeLabels, Counter>,
}

impl BatcherMetrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        registry.register(
            "troupe_gpu_batch_size",
            "Requests per forward pass",
            m.batch_size.clone(),
        );
        registry.register(
            "troupe_gpu_queue_delay_seconds",
            "Time a request waited in the batcher's queue before its batch was dispatched",
            m.queue_delay.clone(),
        );
        registry.register(
            "troupe_gpu_forward_seconds",
            "Time of one batch: stacking, the model's forward pass and unstacking",
            m.forward.clone(),
        );
        registry.register(
            "troupe_gpu_inferences",
            "Inference requests answered, by outcome",
            m.inferences.clone(),
        );
        m
    }

    /// Metrics that no registry exposes.
    pub fn unregistered() -> Self {
        BatcherMetrics {
            // 1 .. 1024
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 50 µs .. ~26 s
            queue_delay: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            forward: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            inferences: Family::default(),
        }
    }

    fn answered(&self, outcome: &str, n: usize) {
        self.inferences
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc_by(n as u64);
    }
}

type Reply = oneshot::Sender<Result<Tensor, InferError>>;

struct Request {
    input: Tensor,
    enqueued: Instant,
    reply: Reply,
    // Held while the request waits for a batch: the room it takes in the bounded queue.
    permit: OwnedSemaphorePermit,
}

/// The dynamic batcher; see the module documentation.
pub struct Batcher;

impl Batcher {
    /// Starts the batcher's scheduling task with unregistered metrics. Must be called
    /// inside a Tokio runtime. The task ends when every [`BatcherHandle`] is dropped, after
    /// running the requests still queued.
    pub fn start<M: Model>(model: M, config: BatcherConfig) -> Result<BatcherHandle, ConfigError> {
        Self::start_with_metrics(model, config, BatcherMetrics::unregistered())
    }

    /// Starts the batcher, recording into `metrics`.
    pub fn start_with_metrics<M: Model>(
        model: M,
        mut config: BatcherConfig,
        metrics: BatcherMetrics,
    ) -> Result<BatcherHandle, ConfigError> {
        config.validate()?;
        config.preferred_batch_sizes.sort_unstable();
        config.preferred_batch_sizes.dedup();
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = config.queue_capacity;
        let scheduler = Scheduler {
            model: Arc::new(model),
            config,
            metrics,
            groups: Vec::new(),
        };
        tokio::spawn(scheduler.run(rx));
        Ok(BatcherHandle {
            tx,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        })
    }
}

/// Submits requests to a running [`Batcher`]. Cheap to clone; the batcher stops when the
/// last clone is dropped.
#[derive(Clone, Debug)]
pub struct BatcherHandle {
    // Unbounded because the semaphore is the bound: a request enters the channel only with
    // a permit.
    tx: mpsc::UnboundedSender<Request>,
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl BatcherHandle {
    /// Runs `input` in some batch and returns its own row of the output.
    ///
    /// Waits for room first when the queue is full (back-pressure). Dropping the future
    /// withdraws the request if its batch has not been dispatched yet.
    pub async fn infer(&self, input: Tensor) -> Result<Tensor, InferError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| InferError::Closed)?;
        self.submit(input, permit).await
    }

    /// Like [`infer`](Self::infer), but fails at once with [`InferError::QueueFull`] instead
    /// of waiting for room.
    pub async fn try_infer(&self, input: Tensor) -> Result<Tensor, InferError> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|e| match e {
                TryAcquireError::NoPermits => InferError::QueueFull {
                    capacity: self.capacity,
                },
                TryAcquireError::Closed => InferError::Closed,
            })?;
        self.submit(input, permit).await
    }

    async fn submit(&self, input: Tensor, permit: OwnedSemaphorePermit) -> Result<Tensor, InferError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            input,
            enqueued: Instant::now(),
            reply,
            permit,
        };
        self.tx.send(request).map_err(|_| InferError::Closed)?;
        answer.await.map_err(|_| InferError::Closed)?
    }

    /// Requests waiting for a batch now (not counting the batch being run).
    pub fn queued(&self) -> usize {
        self.capacity.saturating_sub(self.permits.available_permits())
    }

    /// The most requests that can wait for a batch.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Requests of one dtype and shape, oldest first.
struct Group {
    dtype: DType,
    shape: Vec<usize>,
    requests: VecDeque<Request>,
}

struct InFlight {
    replies: Vec<Reply>,
    task: JoinHandle<Result<Vec<Tensor>, InferError>>,
}

enum Event {
    Received(Option<Request>),
    Done(Result<Result<Vec<Tensor>, InferError>, JoinError>),
    Deadline,
}

struct Scheduler<M> {
    model: Arc<M>,
    config: BatcherConfig,
    metrics: BatcherMetrics,
    groups: Vec<Group>,
}

/// How many of `available` requests of one group to send now, or `None` to keep waiting.
/// `preferred` is sorted.
fn batch_size(available: usize, max: usize, preferred: &[usize], expired: bool) -> Option<usize> {
    let n = available.min(max);
    if n == 0 {
        return None;
    }
    let best_preferred = preferred.iter().copied().filter(|&p| p <= n).max();
    let full = n == max || preferred.last().is_some_and(|&p| n >= p);
    (full || expired).then_some(best_preferred.unwrap_or(n))
}

impl<M: Model> Scheduler<M> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut open = true;
        let mut in_flight: Option<InFlight> = None;
        loop {
            if in_flight.is_none() {
                // Once every handle is gone nobody can join a batch: waiting is pointless.
                if let Some(batch) = self.next_batch(Instant::now(), !open) {
                    in_flight = Some(self.dispatch(batch));
                    continue;
                }
                if !open {
                    return;
                }
            }
            // Deadlines only matter when a batch could be dispatched.
            let deadline = if in_flight.is_none() {
                self.next_deadline()
            } else {
                None
            };
            let event = tokio::select! {
                request = rx.recv(), if open => Event::Received(request),
                done = wait(&mut in_flight) => Event::Done(done),
                () = sleep(deadline) => Event::Deadline,
            };
            match event {
                Event::Received(Some(request)) => {
                    self.add(request);
                    // Take everything already queued before deciding, so a burst forms one
                    // batch instead of a batch of one followed by the rest.
                    while let Ok(request) = rx.try_recv() {
                        self.add(request);
                    }
                }
                Event::Received(None) => open = false,
                Event::Done(result) => {
                    if let Some(done) = in_flight.take() {
                        self.finish(done, result);
                    }
                }
                Event::Deadline => {}
            }
        }
    }

    fn add(&mut self, request: Request) {
        let (dtype, shape) = (request.input.dtype(), request.input.shape());
        match self
            .groups
            .iter_mut()
            .find(|g| g.dtype == dtype && g.shape == shape)
        {
            Some(group) => group.requests.push_back(request),
            None => {
                let group = Group {
                    dtype,
                    shape: shape.to_vec(),
                    requests: VecDeque::from([request]),
                };
                self.groups.push(group);
            }
        }
    }

    fn deadline_of(&self, group: &Group) -> Option<Instant> {
        group
            .requests
            .front()
            .and_then(|r| r.enqueued.checked_add(self.config.max_queue_delay))
    }

    /// The earliest time a waiting group expires.
    fn next_deadline(&self) -> Option<Instant> {
        self.groups.iter().filter_map(|g| self.deadline_of(g)).min()
    }

    /// The batch to run now, if any: from the ready group with the oldest request.
    fn next_batch(&mut self, now: Instant, flush: bool) -> Option<Vec<Request>> {
        // Callers that gave up need no batch slot.
        for group in &mut self.groups {
            group.requests.retain(|r| !r.reply.is_closed());
        }
        self.groups.retain(|g| !g.requests.is_empty());

        let mut chosen: Option<(Instant, usize, usize)> = None;
        for (index, group) in self.groups.iter().enumerate() {
            let Some(oldest) = group.requests.front().map(|r| r.enqueued) else {
                continue;
            };
            let expired = flush || self.deadline_of(group).is_some_and(|d| now >= d);
            let size = batch_size(
                group.requests.len(),
                self.config.max_batch_size,
                &self.config.preferred_batch_sizes,
                expired,
            );
            if let Some(size) = size
                && chosen.is_none_or(|(o, _, _)| oldest < o)
            {
                chosen = Some((oldest, index, size));
            }
        }
        let (_, index, size) = chosen?;
        let batch: Vec<Request> = self.groups[index].requests.drain(..size).collect();
        if self.groups[index].requests.is_empty() {
            self.groups.swap_remove(index);
        }
        Some(batch)
    }

    fn dispatch(&self, batch: Vec<Request>) -> InFlight {
        let now = Instant::now();
        let n = batch.len();
        let mut inputs = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        for Request {
            input,
            enqueued,
            reply,
            permit,
        } in batch
        {
            self.metrics
                .queue_delay
                .observe(now.duration_since(enqueued).as_secs_f64());
            inputs.push(input);
            replies.push(reply);
            // Leaving the queue frees its room for the next caller.
            drop(permit);
        }
        self.metrics.batch_size.observe(n as f64);
        let model = Arc::clone(&self.model);
        let forward = self.metrics.forward.clone();
        let task = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let result = run_batch(&*model, inputs);
            forward.observe(started.elapsed().as_secs_f64());
            result
        });
        InFlight { replies, task }
    }

    fn finish(&self, done: InFlight, result: Result<Result<Vec<Tensor>, InferError>, JoinError>) {
        let n = done.replies.len();
        let result = result.unwrap_or(Err(InferError::Panicked { batch: n }));
        match result {
            Ok(outputs) => {
                self.metrics.answered("ok", n);
                for (reply, output) in done.replies.into_iter().zip(outputs) {
                    // A caller that gave up meanwhile just does not read its answer.
                    let _ = reply.send(Ok(output));
                }
            }
            Err(error) => {
                tracing::warn!(batch = n, %error, "inference batch failed");
                self.metrics.answered("error", n);
                for reply in done.replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Stacks, runs and unstacks one batch; on the blocking pool.
fn run_batch<M: Model>(model: &M, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferError> {
    let n = inputs.len();
    let batch = stack(&inputs).map_err(InferError::Stack)?;
    drop(inputs);
    let input_shape = batch.shape().to_vec();
    let output = model.forward(batch).map_err(|e| InferError::Model {
        batch: n,
        message: e.0,
    })?;
    let output_shape = output.shape().to_vec();
    unstack(output, n).map_err(|_| InferError::BatchOutput {
        batch: n,
        input_shape,
        output_shape,
    })
}

/// The running batch's result; never ready when there is none.
async fn wait(in_flight: &mut Option<InFlight>) -> Result<Result<Vec<Tensor>, InferError>, JoinError> {
    match in_flight {
        Some(f) => (&mut f.task).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; forever when there is none.
async fn sleep(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Doubles every element and records the batch shapes it saw. A value of 0.25 poisons
    /// the batch; 0.75 panics.
    #[derive(Default)]
    struct Doubler {
        batches: Mutex<Vec<Vec<usize>>>,
        // When set, each forward pass first waits for a token, and reports it started.
        gate: Option<(Mutex<std::sync::mpsc::Receiver<()>>, mpsc::UnboundedSender<()>)>,
    }

    impl Model for Doubler {
        fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
            if let Some((gate, started)) = &self.gate {
                let _ = started.send(());
                gate.lock()
                    .unwrap()
                    .recv()
                    .map_err(|_| ModelError::new("gate closed"))?;
            }
            self.batches.lock().unwrap().push(batch.shape().to_vec());
            let values = batch
                .to_vec::<f32>()
                .map_err(|e| ModelError::new(e.to_string()))?;
            if values.contains(&0.25) {
                return Err(ModelError::new("poisoned"));
            }
            assert!(!values.contains(&0.75), "boom");
            let doubled: Vec<f32> = values.iter().map(|x| x * 2.0).collect();
            Tensor::from_vec(batch.shape().to_vec(), &doubled).map_err(|e| ModelError::new(e.to_string()))
        }
    }

    impl Doubler {
        fn sizes(&self) -> Vec<usize> {
            self.batches.lock().unwrap().iter().map(|s| s[0]).collect()
        }
    }

    fn row(values: &[f32]) -> Tensor {
        Tensor::from_vec(vec![values.len()], values).unwrap()
    }

    fn config(max: usize, delay_ms: u64) -> BatcherConfig {
        BatcherConfig {
            max_batch_size: max,
            max_queue_delay: Duration::from_millis(delay_ms),
            preferred_batch_sizes: Vec::new(),
            queue_capacity: 4 * max,
        }
    }

    /// Sends each input from its own task; returns each result with the time it took.
    async fn infer_all(
        h: &BatcherHandle,
        inputs: Vec<Tensor>,
    ) -> Vec<(Result<Tensor, InferError>, Duration)> {
        let start = Instant::now();
        let tasks: Vec<_> = inputs
            .into_iter()
            .map(|input| {
                let h = h.clone();
                tokio::spawn(async move {
                    let r = h.infer(input).await;
                    (r, start.elapsed())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[test]
    fn batch_size_decisions() {
        // No preferred sizes: full at max, else only when expired.
        assert_eq!(batch_size(3, 8, &[], false), None);
        assert_eq!(batch_size(3, 8, &[], true), Some(3));
        assert_eq!(batch_size(8, 8, &[], false), Some(8));
        assert_eq!(batch_size(20, 8, &[], false), Some(8));
        assert_eq!(batch_size(0, 8, &[], true), None);
        // Preferred: ready at the largest, taking the largest that fits.
        assert_eq!(batch_size(3, 8, &[2, 4], false), None);
        assert_eq!(batch_size(5, 8, &[2, 4], false), Some(4));
        assert_eq!(batch_size(3, 8, &[2, 4], true), Some(2));
        assert_eq!(batch_size(1, 8, &[2, 4], true), Some(1));
        assert_eq!(batch_size(8, 8, &[3], false), Some(3));
    }

    #[test]
    fn config_is_checked() {
        assert!(BatcherConfig::default().validate().is_ok());
        let bad = BatcherConfig {
            max_batch_size: 0,
            ..BatcherConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::ZeroBatch));
        let bad = BatcherConfig {
            preferred_batch_sizes: vec![4, 9],
            ..BatcherConfig::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "preferred batch size 9 must be between 1 and max_batch_size 8"
        );
        let bad = BatcherConfig {
            queue_capacity: 7,
            ..BatcherConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::Capacity { capacity: 7, max: 8 }));
    }

    #[tokio::test(start_paused = true)]
    async fn max_batch_size_is_respected() {
        let model = Arc::new(Doubler::default());
        let h = Batcher::start(Arc::clone(&model), config(8, 1000)).unwrap();
        let results = infer_all(&h, (0..20).map(|i| row(&[i as f32])).collect()).await;
        for (i, (r, _)) in results.iter().enumerate() {
            assert_eq!(r.as_ref().unwrap().to_vec::<f32>().unwrap(), vec![2.0 * i as f32]);
        }
        assert_eq!(model.sizes(), vec![8, 8, 4]);
        // The two full batches went at once; the rest waited for the delay.
        assert!(results[..16].iter().all(|(_, t)| *t < Duration::from_millis(1)));
        assert!(results[16..].iter().all(|(_, t)| *t >= Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn lone_request_is_flushed_after_the_delay() {
        let model = Arc::new(Doubler::default());
        let h = Batcher::start(Arc::clone(&model), config(8, 50)).unwrap();
        let start = Instant::now();
        let out = h.infer(row(&[1.0, 2.0])).await.unwrap();
        let waited = start.elapsed();
        assert_eq!(out.to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
        assert!(
            waited >= Duration::from_millis(50) && waited <= Duration::from_millis(52),
            "{waited:?}"
        );
        assert_eq!(*model.batches.lock().unwrap(), vec![vec![1, 2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn mixed_shapes_never_share_a_batch() {
        let model = Arc::new(Doubler::default());
        let h = Batcher::start(Arc::clone(&model), config(4, 10)).unwrap();
        let inputs: Vec<Tensor> = (0..15)
            .map(|i| {
                let x = i as f32;
                match i % 3 {
                    0 => row(&[x, x]),
                    1 => row(&[x, x, x]),
                    _ => Tensor::from_vec(vec![], &[x]).unwrap(),
                }
            })
            .collect();
        let results = infer_all(&h, inputs.clone()).await;
        for (input, (r, _)) in inputs.iter().zip(&results) {
            let out = r.as_ref().unwrap();
            assert_eq!(out.shape(), input.shape());
            let want: Vec<f32> = input.to_vec::<f32>().unwrap().iter().map(|x| x * 2.0).collect();
            assert_eq!(out.to_vec::<f32>().unwrap(), want);
        }
        // 5 of each shape: a batch of 4 and one of 1 per shape.
        let mut batches = model.batches.lock().unwrap().clone();
        batches.sort();
        assert_eq!(
            batches,
            vec![vec![1], vec![1, 2], vec![1, 3], vec![4], vec![4, 2], vec![4, 3]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn oldest_group_goes_first() {
        let model = Arc::new(Doubler::default());
        let h = Batcher::start(Arc::clone(&model), config(4, 10)).unwrap();
        let a = tokio::spawn({
            let h = h.clone();
            async move { h.infer(row(&[1.0])).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Expires 5 ms after the first one: both are ready then, the older runs first.
        let b = tokio::spawn({
            let h = h.clone();
            async move { h.infer(row(&[1.0, 1.0])).await }
        });
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert_eq!(*model.batches.lock().unwrap(), vec![vec![1, 1], vec![1, 2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn preferred_sizes_close_batches_early() {
        let model = Arc::new(Doubler::default());
        let cfg = BatcherConfig {
            preferred_batch_sizes: vec![4, 2],
            ..config(8, 1000)
        };
        let h = Batcher::start(Arc::clone(&model), cfg).unwrap();
        // 5 waiting: the largest preferred size goes at once, the last one at the deadline.
        let results = infer_all(&h, (0..5).map(|i| row(&[i as f32])).collect()).await;
        assert_eq!(model.sizes(), vec![4, 1]);
        assert!(
            results[..4]
                .iter()
                .all(|(r, t)| r.is_ok() && *t < Duration::from_millis(1))
        );
        assert!(results[4].1 >= Duration::from_secs(1));

        // 3 waiting: at the deadline, the largest preferred size that fits, then the rest.
        model.batches.lock().unwrap().clear();
        let results = infer_all(&h, (0..3).map(|i| row(&[i as f32])).collect()).await;
        assert_eq!(model.sizes(), vec![2, 1]);
        assert!(
            results
                .iter()
                .all(|(r, t)| r.is_ok() && *t >= Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forward_error_fails_only_its_batch() {
        let model = Arc::new(Doubler::default());
        let h = Batcher::start(Arc::clone(&model), config(4, 10)).unwrap();
        let results = infer_all(&h, vec![row(&[1.0]), row(&[0.25]), row(&[3.0]), row(&[4.0])]).await;
        for (r, _) in &results {
            assert_eq!(
                r.as_ref().unwrap_err(),
                &InferError::Model {
                    batch: 4,
                    message: "poisoned".into()
                }
            );
        }
        assert_eq!(
            results[0].0.as_ref().unwrap_err().to_string(),
            "model failed on a batch of 4: poisoned"
        );
        let results = infer_all(&h, vec![row(&[5.0]), row(&[6.0])]).await;
        assert_eq!(
            results[1].0.as_ref().unwrap().to_vec::<f32>().unwrap(),
            vec![12.0]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_model_fails_its_batch_and_the_batcher_goes_on() {
        let model = Arc::new(Doubler::default());
        let h = Batcher::start(Arc::clone(&model), config(2, 10)).unwrap();
        let results = infer_all(&h, vec![row(&[0.75]), row(&[1.0])]).await;
        assert!(
            results
                .iter()
                .all(|(r, _)| r == &Err(InferError::Panicked { batch: 2 }))
        );
        assert_eq!(
            h.infer(row(&[2.0])).await.unwrap().to_vec::<f32>().unwrap(),
            vec![4.0]
        );
    }

    /// Answers every batch with a single row.
    struct OneRow;

    impl Model for OneRow {
        fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
            Ok(Tensor::zeros(batch.dtype(), vec![1, 3]).unwrap())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_leading_dimension_fails_the_batch() {
        let h = Batcher::start(OneRow, config(3, 10)).unwrap();
        let results = infer_all(&h, vec![row(&[1.0, 2.0]); 3]).await;
        for (r, _) in results {
            assert_eq!(
                r.unwrap_err().to_string(),
                "model answered a batch of shape [3, 2] with shape [1, 3]: expected leading dimension 3"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_pushes_back() {
        let (open_gate, gate) = std::sync::mpsc::channel();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let model = Doubler {
            gate: Some((Mutex::new(gate), started_tx)),
            ..Doubler::default()
        };
        let cfg = BatcherConfig {
            queue_capacity: 2,
            ..config(1, 0)
        };
        let h = Batcher::start(model, cfg).unwrap();
        let spawn = |x: f32| {
            let h = h.clone();
            tokio::spawn(async move { h.infer(row(&[x])).await })
        };

        // The first request is dispatched (the queue is empty again) and holds the model.
        let first = spawn(1.0);
        started.recv().await.unwrap();
        assert_eq!(h.queued(), 0);
        let queued = [spawn(2.0), spawn(3.0)];
        for _ in 0..100 {
            if h.queued() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(h.queued(), 2);

        // Full: try_infer refuses, infer waits.
        assert_eq!(
            h.try_infer(row(&[4.0])).await,
            Err(InferError::QueueFull { capacity: 2 })
        );
        let waiting = spawn(5.0);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        assert_eq!(h.queued(), 2);

        for _ in 0..4 {
            open_gate.send(()).unwrap();
        }
        assert_eq!(first.await.unwrap().unwrap().to_vec::<f32>().unwrap(), vec![2.0]);
        for (task, want) in queued.into_iter().zip([4.0, 6.0]) {
            assert_eq!(task.await.unwrap().unwrap().to_vec::<f32>().unwrap(), vec![want]);
        }
        assert_eq!(
            waiting.await.unwrap().unwrap().to_vec::<f32>().unwrap(),
            vec![10.0]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawn_requests_take_no_batch_slot() {
        let model = Arc::new(Doubler::default());
        let h = Batcher::start(Arc::clone(&model), config(4, 10)).unwrap();
        let gone = tokio::spawn({
            let h = h.clone();
            async move { h.infer(row(&[1.0])).await }
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(
            h.infer(row(&[2.0])).await.unwrap().to_vec::<f32>().unwrap(),
            vec![4.0]
        );
        assert_eq!(model.sizes(), vec![1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_concurrent_requests_get_their_own_results() {
        let model = Arc::new(Doubler::default());
        let mut registry = Registry::default();
        let metrics = BatcherMetrics::new(&mut registry);
        let cfg = BatcherConfig {
            max_batch_size: 32,
            max_queue_delay: Duration::from_millis(2),
            preferred_batch_sizes: vec![16],
            queue_capacity: 64,
        };
        let h = Batcher::start_with_metrics(Arc::clone(&model), cfg, metrics).unwrap();
        let inputs: Vec<Tensor> = (0..1000)
            .map(|i| {
                let x = i as f32;
                if i % 3 == 0 {
                    row(&[x, -x, 0.5])
                } else {
                    row(&[x, -x])
                }
            })
            .collect();
        let results = infer_all(&h, inputs.clone()).await;
        for (input, (r, _)) in inputs.iter().zip(results) {
            let want: Vec<f32> = input.to_vec::<f32>().unwrap().iter().map(|x| x * 2.0).collect();
            assert_eq!(r.unwrap().to_vec::<f32>().unwrap(), want);
        }
        let sizes = model.sizes();
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
        // With 1000 callers and a 64-request queue, batches do form.
        assert!(sizes.len() < 500, "{} batches", sizes.len());

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("troupe_gpu_inferences_total{outcome=\"ok\"} 1000"),
            "{text}"
        );
        assert!(
            text.contains(&format!("troupe_gpu_batch_size_count {}", sizes.len())),
            "{text}"
        );
        assert!(
            text.contains("troupe_gpu_queue_delay_seconds_count 1000"),
            "{text}"
        );
        assert!(
            text.contains(&format!("troupe_gpu_forward_seconds_count {}", sizes.len())),
            "{text}"
        );
    }
}
