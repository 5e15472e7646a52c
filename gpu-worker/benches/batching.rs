//! Dynamic batching off vs on: throughput and latency of the GPU worker's inference path
//! (JSON decode, batcher, libtorch forward, JSON encode) at offered loads. Prints a markdown
//! table.
//!
//! ```sh
//! export LIBTORCH="$(bash .ci/libtorch-setup.sh | tail -1)"
//! cargo bench -p troupe-gpu-worker --features torch --bench batching
//! ```
//!
//! The model is an MLP (512 -> 1024 -> 1024 -> 10, about 1.6 M weights) traced to
//! TorchScript here with fixed seeds, so the bench needs no Python. Settings from the
//! environment: `TROUPE_BENCH_SECONDS` (per cell, default 3), `TROUPE_BENCH_DEVICE` (`auto`,
//! `cpu`, `cuda:N`; default auto).
//!
//! Method: first each configuration's capacity is measured closed-loop (64 requests always
//! outstanding, the prefetch of a batch-32 worker). Then, open-loop, requests arrive at a
//! constant rate given as a multiple of batching-off's capacity, and each request's latency
//! is measured from its scheduled arrival (so a backlog counts, with no coordinated
//! omission). Every cell is bounded: rate x seconds requests.

#![forbid(unsafe_code)]

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tch::nn::Module;
use tokio::time::Instant;
use tower::ServiceExt;
use troupe::{Envelope, Outcome, Route};
use troupe_gpu_worker::batcher::{Batcher, BatcherConfig, Model, ModelError};
use troupe_gpu_worker::codec::{CodecConfig, CodecKind};
use troupe_gpu_worker::handler::InferenceHandler;
use troupe_gpu_worker::tensor::{DType, Tensor};
use troupe_gpu_worker::torch_model::{DeviceChoice, TorchModel};
use troupe_gpu_worker::worker::warm_up;

const FEATURES: usize = 512;
const CLIENTS: usize = 64;

/// One batcher configuration under test.
struct Setup {
    name: &'static str,
    max_batch_size: usize,
    max_queue_delay: Duration,
}

const SETUPS: [Setup; 3] = [
    Setup {
        name: "off (batch 1)",
        max_batch_size: 1,
        max_queue_delay: Duration::ZERO,
    },
    Setup {
        name: "on (max 32, delay 0)",
        max_batch_size: 32,
        max_queue_delay: Duration::ZERO,
    },
    Setup {
        name: "on (max 32, delay 2 ms)",
        max_batch_size: 32,
        max_queue_delay: Duration::from_millis(2),
    },
];

/// What one cell measured.
struct Cell {
    throughput: f64,
    p50: Duration,
    p95: Duration,
    mean_batch: f64,
}

fn main() -> Result<(), Box<dyn Error>> {
    let seconds: f64 = std::env::var("TROUPE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let device: DeviceChoice = std::env::var("TROUPE_BENCH_DEVICE")
        .unwrap_or_else(|_| "auto".into())
        .parse()?;
    let dir = std::env::temp_dir().join(format!("troupe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("mlp512.pt");
    trace_model(&path)?;
    let model = Arc::new(Counted {
        model: TorchModel::load(&path, device, false)?,
        passes: AtomicU64::new(0),
    });
    let _ = std::fs::remove_dir_all(&dir);
    warm_up(&*model, DType::F32, &[FEATURES], &[1, 8, 32], 5)?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        println!(
            "device {:?}, libtorch threads {}, {seconds} s per cell, model {FEATURES}->1024->1024->10\n",
            model.model.device(),
            tch::get_num_threads()
        );
        let mut capacity = Vec::new();
        println!("| configuration | load | throughput (env/s) | p50 | p95 | mean batch |");
        println!("|---|---|---:|---:|---:|---:|");
        for setup in &SETUPS {
            let cell = closed_loop(&model, setup, seconds).await?;
            print_row(setup, "saturated (64 outstanding)", &cell);
            capacity.push(cell.throughput);
        }
        let base = capacity[0];
        for factor in [0.5, 0.9, 2.0, 4.0] {
            let rate = factor * base;
            for setup in &SETUPS {
                let cell = open_loop(&model, setup, rate, seconds).await?;
                print_row(setup, &format!("{factor} x off's capacity = {rate:.0}/s"), &cell);
            }
        }
        println!(
            "\nbatching on (delay 0) / off, saturated: {:.1}x",
            capacity[1] / capacity[0]
        );
        Ok::<(), Box<dyn Error>>(())
    })
}

fn print_row(setup: &Setup, load: &str, cell: &Cell) {
    println!(
        "| {} | {load} | {:.0} | {:.2} ms | {:.2} ms | {:.1} |",
        setup.name,
        cell.throughput,
        cell.p50.as_secs_f64() * 1e3,
        cell.p95.as_secs_f64() * 1e3,
        cell.mean_batch
    );
}

/// Traces a seeded MLP into a TorchScript file.
fn trace_model(path: &Path) -> Result<(), Box<dyn Error>> {
    tch::manual_seed(11);
    let mut store = tch::nn::VarStore::new(tch::Device::Cpu);
    let root = store.root();
    let net = tch::nn::seq()
        .add(tch::nn::linear(
            &root / "l1",
            FEATURES as i64,
            1024,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(tch::nn::linear(&root / "l2", 1024, 1024, Default::default()))
        .add_fn(|x| x.relu())
        .add(tch::nn::linear(&root / "l3", 1024, 10, Default::default()));
    // Traced weights become constants, which must not require gradients.
    store.freeze();
    let example = tch::Tensor::zeros([1, FEATURES as i64], (tch::Kind::Float, tch::Device::Cpu));
    let module = tch::CModule::create_by_tracing(
        "Mlp512",
        "forward",
        &[example],
        &mut |inputs: &[tch::Tensor]| vec![net.forward(&inputs[0])],
    )?;
    module.save(path)?;
    Ok(())
}

fn handler(model: &Arc<Counted>, setup: &Setup) -> Result<InferenceHandler, Box<dyn Error>> {
    let config = BatcherConfig {
        max_batch_size: setup.max_batch_size,
        max_queue_delay: setup.max_queue_delay,
        preferred_batch_sizes: Vec::new(),
        queue_capacity: CLIENTS,
    };
    let codec = CodecConfig::new(CodecKind::Json, "/input", "/output")?;
    Ok(InferenceHandler::new(
        codec,
        Batcher::start(Arc::clone(model), config)?,
    ))
}

fn envelope(i: usize) -> Envelope {
    let input: Vec<f32> = (0..FEATURES)
        .map(|j| ((i * 31 + j * 17) % 97) as f32 / 97.0)
        .collect();
    Envelope::new(Route::through(["infer"]), json!({ "input": input }))
}

/// Calls the handler once; the time from `since` to its answer.
async fn call(handler: InferenceHandler, envelope: Envelope, since: Instant) -> Result<Duration, String> {
    match handler.oneshot(envelope).await {
        Ok(Outcome::Forward(_)) => Ok(since.elapsed()),
        other => Err(format!("inference failed: {other:?}")),
    }
}

/// `CLIENTS` requests always outstanding for `seconds`.
async fn closed_loop(model: &Arc<Counted>, setup: &Setup, seconds: f64) -> Result<Cell, Box<dyn Error>> {
    let handler = handler(model, setup)?;
    let forwards = Forwards::start(model);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let handler = handler.clone();
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while Instant::now() < end {
                latencies.push(call(handler.clone(), envelope(i), Instant::now()).await?);
                i += CLIENTS;
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = clients.join_next().await {
        latencies.extend(joined??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    summarize(&latencies, elapsed, forwards.finish(model, latencies.len()))
}

/// Requests arriving at `rate` per second for `seconds`.
async fn open_loop(
    model: &Arc<Counted>,
    setup: &Setup,
    rate: f64,
    seconds: f64,
) -> Result<Cell, Box<dyn Error>> {
    let handler = handler(model, setup)?;
    let forwards = Forwards::start(model);
    let count = (rate * seconds).round().max(1.0) as usize;
    let start = Instant::now() + Duration::from_millis(20);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..count {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        requests.spawn(call(handler.clone(), envelope(i), at));
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(joined) = requests.join_next().await {
        latencies.push(joined??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    summarize(&latencies, elapsed, forwards.finish(model, count))
}

/// The model, counting forward passes (for the mean batch size of a cell).
struct Counted {
    model: TorchModel,
    passes: AtomicU64,
}

impl Model for Counted {
    fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
        self.passes.fetch_add(1, Ordering::Relaxed);
        Model::forward(&self.model, batch)
    }
}

/// Forward passes over a cell.
struct Forwards(u64);

impl Forwards {
    fn start(model: &Counted) -> Self {
        Forwards(model.passes.load(Ordering::Relaxed))
    }

    fn finish(self, model: &Counted, requests: usize) -> f64 {
        let passes = model.passes.load(Ordering::Relaxed).saturating_sub(self.0).max(1);
        requests as f64 / passes as f64
    }
}

fn summarize(latencies: &[Duration], elapsed: f64, mean_batch: f64) -> Result<Cell, Box<dyn Error>> {
    let mut histogram = Histogram::<u64>::new(3)?;
    for latency in latencies {
        histogram.record(latency.as_micros().max(1) as u64)?;
    }
    let micros = |q: f64| Duration::from_micros(histogram.value_at_quantile(q));
    Ok(Cell {
        throughput: latencies.len() as f64 / elapsed,
        p50: micros(0.50),
        p95: micros(0.95),
        mean_batch,
    })
}
