//! GPU inference in a pipeline, on the embedded broker: `preprocess` (a Rust handler that
//! scales raw readings) -> `infer` (the GPU worker: a TorchScript MLP on libtorch, batching
//! envelopes dynamically) -> `postprocess` (a Rust handler that picks the label).
//!
//! ```sh
//! export LIBTORCH="$(bash .ci/libtorch-setup.sh | tail -1)"
//! cargo run -p troupe-gpu-worker --features torch --example gpu_inference
//! ```
//!
//! The same worker runs as its own deployable process, on a real broker, with
//! `troupe-gpu-worker --model model.pt --actor infer --transport nats ...`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use troupe::layers::{MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, DecodeLimits, Delivery, Envelope, HandlerError,
    MemoryTransport, Outcome, PublishOptions, QueueNaming, Route, Runner, RunnerConfig, SINK, Transport,
    handler_fn,
};
use troupe_gpu_worker::batcher::{Batcher, BatcherMetrics};
use troupe_gpu_worker::codec::{CodecConfig, CodecKind};
use troupe_gpu_worker::torch_model::{DeviceChoice, TorchModel};
use troupe_gpu_worker::worker::{WorkerSettings, serve, warm_up};

const LABELS: [&str; 3] = ["low", "medium", "high"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = MemoryTransport::default();
    let naming = QueueNaming::default();
    let mut registry = prometheus_client::registry::Registry::default();
    let mesh = MeshMetrics::new(&mut registry);
    let shutdown = CancellationToken::new();
    // Each actor's queue (and x-sink, x-sump) exists before traffic, as in a deployment:
    // the broker refuses a publish to a queue nobody created.
    for actor in ["preprocess", "infer", "postprocess"] {
        troupe::core::ensure_actor_queues(&transport, &naming, actor).await?;
    }

    // The inference actor: the model on the GPU when libtorch sees one, else the CPU.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mlp.pt");
    let model = TorchModel::load(&path, DeviceChoice::Auto, false)?;
    warm_up(&model, troupe_gpu_worker::tensor::DType::F32, &[4], &[1, 8], 2)?;
    println!("model {} on {:?}", path.display(), model.device());
    let codec = CodecConfig::new(CodecKind::Json, "/features", "/scores")?.with_shape("[4]".parse()?);
    let settings = WorkerSettings::new("infer", codec);
    let batcher = Batcher::start_with_metrics(
        model,
        settings.batcher.clone(),
        BatcherMetrics::new(&mut registry),
    )?;
    let infer = tokio::spawn({
        let (transport, shutdown, mesh) = (transport.clone(), shutdown.clone(), mesh.clone());
        let store = Arc::new(troupe::layers::MemoryStore::default());
        async move { serve(transport, store, batcher, &settings, &mesh, shutdown).await }
    });

    // Plain Rust actors around it.
    let preprocess = handler_fn(|mut e: Envelope| async move {
        let raw = e.payload["raw"]
            .as_array()
            .ok_or_else(|| HandlerError::new("ValueError", "payload has no raw readings"))?;
        // A reading that is not a number fails the envelope rather than being dropped.
        let features = raw
            .iter()
            .map(|x| x.as_f64().map(|x| x / 5.0))
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| HandlerError::new("ValueError", "raw readings must all be numbers"))?;
        e.payload["features"] = json!(features);
        Ok(Outcome::forward(e))
    });
    let postprocess = handler_fn(|mut e: Envelope| async move {
        let scores: Vec<f64> = e.payload["scores"]
            .as_array()
            .ok_or_else(|| HandlerError::new("ValueError", "payload has no scores"))?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let best = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        e.payload["label"] = json!(best.and_then(|i| LABELS.get(i)));
        Ok(Outcome::forward(e))
    });
    let runners = [
        spawn_actor(&transport, &mesh, "preprocess", preprocess, &shutdown),
        spawn_actor(&transport, &mesh, "postprocess", postprocess, &shutdown),
    ];

    // Send readings; read what reaches the end of the pipeline.
    let count = 40;
    let first = naming.queue_for("preprocess")?;
    for i in 0..count {
        let raw: Vec<f64> = (0..4).map(|j| f64::from((i * 7 + j * 13) % 50) - 25.0).collect();
        let envelope = Envelope::new(
            Route::through(["preprocess", "infer", "postprocess"]),
            json!({"reading": i, "raw": raw}),
        );
        transport
            .publish(&first, Bytes::from(envelope.to_vec()), PublishOptions::default())
            .await?;
    }
    let mut sink = transport
        .consume(&naming.queue_for(SINK)?, ConsumeOptions::default())
        .await?;
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), sink.next())
            .await?
            .ok_or("the sink closed")??;
        let envelope = Envelope::from_slice(delivery.body(), &DecodeLimits::default())?;
        delivery.ack().await?;
        let p = &envelope.payload;
        println!(
            "reading {:>2}: scores {} -> {}",
            p["reading"], p["scores"], p["label"]
        );
    }

    shutdown.cancel();
    infer.await??;
    for runner in runners {
        runner.await??;
    }
    println!(
        "\nmetrics (batch sizes among them):\n{}",
        troupe::layers::metrics::render(&registry)
            .lines()
            .filter(|l| l.starts_with("troupe_gpu_batch_size"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// Runs `actor` with the standard layer stack around `handler`.
fn spawn_actor<H>(
    transport: &MemoryTransport,
    mesh: &MeshMetrics,
    actor: &str,
    handler: H,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<troupe::RunReport, troupe::RunnerError>>
where
    H: tower::Service<Envelope, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    H::Future: Send + 'static,
{
    let stack = actor_stack(
        StackConfig {
            actor: actor.into(),
            retry: RetryPolicies::default(),
            timeout: Duration::from_secs(30),
            store: Arc::new(MemoryStore::default()),
            metrics: mesh.actor(actor),
        },
        handler,
    );
    let runner = Runner::new(transport.clone(), stack, RunnerConfig::new(actor));
    tokio::spawn(runner.run(shutdown.clone()))
}
