//! `troupe-gpu-worker`: serves one actor's queue with a TorchScript model on libtorch,
//! batching envelopes dynamically.
//!
//! Start-up, in order: settings; `/metrics`, `/healthz` and `/readyz` (not ready yet); the
//! model on its device; the warm-up batches; then ready, the broker and the runner until
//! SIGTERM or Ctrl-C, after which in-flight envelopes finish within `--timeout`.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use prometheus_client::registry::Registry;
use troupe::broker::{ConnectError, WithTransport};
use troupe::http::{Probes, ServeError};
use troupe::layers::MeshMetrics;
use troupe::{CancellationToken, QueueAdmin, Transport};
use troupe_gpu_worker::args::{ArgsError, ModelSettings, WorkerArgs};
use troupe_gpu_worker::batcher::{self, Batcher, BatcherHandle, BatcherMetrics};
use troupe_gpu_worker::torch_model::{Cuda, TorchError, TorchModel};
use troupe_gpu_worker::worker::{self, WarmUpError, WorkerError, WorkerSettings};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Load(#[from] TorchError),
    #[error("warm-up: {0}")]
    WarmUp(#[from] WarmUpError),
    #[error(transparent)]
    Batcher(#[from] batcher::ConfigError),
    #[error("the model loader stopped unexpectedly: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Store(#[from] troupe::layers::idempotency::StoreError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

fn main() -> ExitCode {
    troupe::logging::init("info");
    let args = WorkerArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("troupe-gpu-worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "troupe-gpu-worker stopped");
            eprintln!("troupe-gpu-worker: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: WorkerArgs) -> Result<(), Error> {
    let (settings, model_settings) = args.settings()?;
    let shutdown = CancellationToken::new();
    troupe::signal::cancel_on_signal(shutdown.clone());

    let mut registry = Registry::default();
    let mesh = MeshMetrics::new(&mut registry);
    let batcher_metrics = BatcherMetrics::new(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicBool::new(true));
    let probes = Probes {
        live: {
            let alive = alive.clone();
            Arc::new(move || alive.load(Ordering::Acquire))
        },
        ready: {
            let (ready, alive) = (ready.clone(), alive.clone());
            Arc::new(move || ready.load(Ordering::Acquire) && alive.load(Ordering::Acquire))
        },
    };
    let bound = troupe::http::serve(args.metrics_addr, Arc::new(registry), probes, shutdown.clone()).await?;
    tracing::info!(
        actor = %settings.actor,
        metrics = %bound,
        transport = %args.queue.transport,
        cuda_devices = Cuda::device_count(),
        cudnn = Cuda::cudnn_is_available(),
        "gpu worker starting"
    );

    let model = tokio::select! {
        loaded = tokio::task::spawn_blocking(move || load(&model_settings)) => loaded??,
        () = shutdown.cancelled() => return Ok(()),
    };
    let batcher = Batcher::start_with_metrics(model, settings.batcher.clone(), batcher_metrics)?;
    ready.store(true, Ordering::Release);

    let store = Arc::new(args.queue.connect_store().await?);
    let job = Job {
        settings: &settings,
        store,
        batcher,
        mesh,
        shutdown: shutdown.clone(),
    };
    let result = args
        .queue
        .broker_config()
        .connect(args.queue.transport, job)
        .await;
    alive.store(false, Ordering::Release);
    shutdown.cancel();
    result??;
    Ok(())
}

/// Loads the model and runs the warm-up; blocking (libtorch).
fn load(settings: &ModelSettings) -> Result<TorchModel, Error> {
    if let Some(threads) = settings.torch_threads {
        // Checked non-zero by the settings; the cast cannot truncate a thread count.
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    }
    let model = TorchModel::load(&settings.path, settings.device, settings.half)?;
    match &settings.warm_up {
        Some(warm) => {
            let took = worker::warm_up(&model, warm.dtype, &warm.item_shape, &warm.sizes, warm.batches)?;
            tracing::info!(shape = ?warm.item_shape, sizes = ?warm.sizes, ?took, "warmed up");
        }
        None => tracing::warn!(
            "no warm-up: pass --warm-up-shape (or a fixed --input-shape) so the first envelopes do not pay for it"
        ),
    }
    Ok(model)
}

struct Job<'a> {
    settings: &'a WorkerSettings,
    store: Arc<troupe::layers::AnyStore>,
    batcher: BatcherHandle,
    mesh: MeshMetrics,
    shutdown: CancellationToken,
}

impl WithTransport for Job<'_> {
    type Output = Result<(), WorkerError>;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
        let report = worker::serve(
            transport,
            self.store,
            self.batcher,
            self.settings,
            &self.mesh,
            self.shutdown,
        )
        .await?;
        tracing::info!(?report, "gpu worker stopped");
        Ok(())
    }
}
