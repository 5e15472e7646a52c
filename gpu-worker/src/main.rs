//! `troupe-gpu-worker`: serves one actor's queue with a TorchScript model on libtorch,
//! batching envelopes dynamically.
//!
//! Start-up, in order: settings; the actor host (`troupe::host`): `/metrics`, `/healthz`
//! and `/readyz` (not ready yet) and the idempotency store; the model on its device; the
//! warm-up batches; then the broker and the runner until SIGTERM or Ctrl-C, after which
//! in-flight envelopes finish within `--timeout`. Ready once the model is warm and the
//! runner serves.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use troupe::host::{ActorHost, HostError};
use troupe_gpu_worker::args::{ArgsError, ModelSettings, WorkerArgs};
use troupe_gpu_worker::batcher::{self, Batcher, BatcherMetrics};
use troupe_gpu_worker::handler::InferenceHandler;
use troupe_gpu_worker::torch_model::{Cuda, TorchError, TorchModel};
use troupe_gpu_worker::worker::{self, WarmUpError};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Load(#[from] TorchError),
    #[error("warm-up: {0}")]
    WarmUp(#[from] WarmUpError),
    #[error(transparent)]
    Batcher(#[from] batcher::ConfigError),
    #[error("the model loader stopped unexpectedly: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Host(#[from] HostError),
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
    let loaded = Arc::new(AtomicBool::new(false));
    let mut host = ActorHost::from_args(&settings.actor, &args.queue, args.metrics_addr)?
        .retry(settings.retry.clone())
        .timeout(settings.timeout)
        .runner(|runner| settings.configure_runner(runner))
        .ready_when({
            let loaded = loaded.clone();
            move || loaded.load(Ordering::Acquire)
        });
    let batcher_metrics = BatcherMetrics::new(host.registry_mut());
    tracing::info!(
        actor = %settings.actor,
        transport = %args.queue.transport,
        cuda_devices = Cuda::device_count(),
        cudnn = Cuda::cudnn_is_available(),
        "gpu worker starting"
    );
    let host = host.start().await?;
    let shutdown = host.shutdown();

    let model = tokio::select! {
        loaded = tokio::task::spawn_blocking(move || load(&model_settings)) => loaded??,
        () = shutdown.cancelled() => return Ok(()),
    };
    let batcher = Batcher::start_with_metrics(model, settings.batcher.clone(), batcher_metrics)?;
    loaded.store(true, Ordering::Release);
    settings.log_serving();
    let codec = settings.codec.clone();
    host.serve(|_| InferenceHandler::new(codec, batcher)).await?;
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
