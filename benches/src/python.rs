//! `troupe-bench-python`: the 3-step pipeline of trivial Python handlers as it ships, each
//! step a `troupe sidecar` process in front of a Python runtime, and (with `--peers`) the
//! same pipeline in Dramatiq and Celery on the same RabbitMQ (issue 18).
//!
//! ```sh
//! cargo build --release -p troupe-cli --features nats,amqp
//! cargo run --release -p troupe-bench --features nats,amqp --bin troupe-bench-python -- --broker nats
//! cargo run --release -p troupe-bench --features nats,amqp --bin troupe-bench-python -- --broker amqp --peers
//! ```
//!
//! Each run starts, per step, a runtime (`handlers.noop`, `--concurrency` threads) and a
//! sidecar (`--runtime-concurrency` the same), sends one envelope through to warm them up,
//! then offers `--envelopes` envelopes at once to step 1 and waits for all of them at
//! `x-sink`. It reports envelopes/s (median of `--runs`) and, from `/proc`, the CPU the
//! processes spent: per hop for the sidecars (consume, decode, call the runtime over its
//! socket, encode, publish with confirmation, ack), per call for the runtimes, and the two
//! together per 1,000 envelopes. The harness's own publishing and reading is not counted.
//! `--peers` runs `benches/python/peers.py`, which installs Dramatiq and Celery into a
//! throwaway virtual environment and prints the same figures for them.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use troupe::broker::{Broker, BrokerArgs, WithTransport};
use troupe::{
    ConsumeOptions, Consumer, Delivery, Envelope, PublishOptions, QueueAdmin, QueueNaming, Route, SINK,
    Transport, TransportError,
};
use troupe_bench::process_cpu_time;

#[global_allocator]
static ALLOC: troupe_bench::Allocator = mimalloc::MiMalloc;

/// The pipeline's steps.
const STEPS: [&str; 3] = ["step1", "step2", "step3"];
/// Longest the warm-up envelope may take (runtimes and sidecars starting).
const WARM_UP_LIMIT: Duration = Duration::from_secs(120);
/// Longest one measured run may take.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The 3-step Python pipeline through Troupe's sidecars (and its peers).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The broker: nats or amqp.
    #[arg(long, default_value = "nats")]
    broker: Broker,
    #[command(flatten)]
    brokers: BrokerArgs,
    /// Envelopes per run.
    #[arg(long, default_value_t = 5_000)]
    envelopes: usize,
    /// Runs; the median throughput is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Calls in flight per step (runtime threads and sidecar concurrency).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Worker threads of each sidecar (`troupe --worker-threads`; default: one per core).
    #[arg(long)]
    sidecar_threads: Option<u16>,
    /// The `troupe` binary (default: the one built next to this harness).
    #[arg(long)]
    troupe: Option<PathBuf>,
    /// Also run the pipeline in Dramatiq and Celery (RabbitMQ only; installs them into a
    /// throwaway virtual environment).
    #[arg(long)]
    peers: bool,
}

/// A child process killed when dropped, however the harness ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn cpu(&self) -> Duration {
        process_cpu_time(&self.0.id().to_string())
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    per_s: f64,
    sidecar_us_per_hop: f64,
    runtime_us_per_call: f64,
    cpu_s_per_1000: f64,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

struct Run<'a> {
    args: &'a Args,
    troupe: PathBuf,
    run_no: usize,
}

impl WithTransport for Run<'_> {
    type Output = Result<Measured, String>;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
        pipeline(transport, self.args, &self.troupe, self.run_no)
            .await
            .map_err(|e| e.to_string())
    }
}

async fn pipeline<T: Transport + QueueAdmin>(
    transport: T,
    args: &Args,
    troupe: &Path,
    run_no: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let namespace = format!("pybench{}x{run_no}", std::process::id());
    let naming = QueueNaming::new("asya", &namespace)?;
    for actor in STEPS.iter().copied().chain([SINK]) {
        transport.ensure_queue(&naming.queue_for(actor)?).await?;
    }
    let scratch = std::env::temp_dir().join(&namespace);
    let concurrency = args.concurrency.to_string();
    let mut runtimes = Vec::new();
    let mut sidecars = Vec::new();
    for step in STEPS {
        let dir = scratch.join(step);
        std::fs::create_dir_all(&dir)?;
        runtimes.push(Proc(
            Command::new("python3")
                .args(["-m", "troupe_runtime"])
                .env(
                    "PYTHONPATH",
                    format!(
                        "{}:{}",
                        repo().join("python").display(),
                        repo().join("python/examples").display()
                    ),
                )
                .env("ASYA_HANDLER", "handlers.noop")
                .env("ASYA_SOCKET_DIR", &dir)
                .env("ASYA_RUNTIME_CONCURRENCY", &concurrency)
                .env("ASYA_LOG_LEVEL", "WARNING")
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("python3: {e}"))?,
        ));
        let mut sidecar = Command::new(troupe);
        sidecar
            .args(["sidecar", "--actor", step, "--namespace", &namespace])
            .arg("--socket-dir")
            .arg(&dir)
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--runtime-concurrency",
                &concurrency,
            ])
            .env("RUST_LOG", "warn");
        if let Some(threads) = args.sidecar_threads {
            sidecar.args(["--worker-threads", &threads.to_string()]);
        }
        match args.broker {
            Broker::Nats => sidecar.args(["--transport", "nats", "--nats-url", &args.brokers.nats_url]),
            Broker::Amqp => sidecar.args(["--transport", "amqp", "--amqp-url", &args.brokers.amqp_url]),
            other => return Err(format!("--broker {other}: this harness runs nats or amqp").into()),
        };
        sidecars.push(Proc(
            sidecar
                .spawn()
                .map_err(|e| format!("{}: {e}", troupe.display()))?,
        ));
    }

    let first = naming.queue_for(STEPS[0])?;
    let mut sink = transport
        .consume(&naming.queue_for(SINK)?, ConsumeOptions::default())
        .await?;
    let body = |n: usize| {
        let mut env = Envelope::new(
            Route::through(STEPS),
            serde_json::json!({"n": n, "text": "hello"}),
        );
        env.id = format!("{namespace}-{n}");
        Bytes::from(env.to_vec())
    };
    transport
        .publish(&first, body(usize::MAX), PublishOptions::default())
        .await?;
    arrive(&mut sink, 1, WARM_UP_LIMIT).await?;

    let cpu = |procs: &[Proc]| procs.iter().map(Proc::cpu).sum::<Duration>();
    let (sidecar_cpu, runtime_cpu) = (cpu(&sidecars), cpu(&runtimes));
    let started = Instant::now();
    let publishing = {
        let (transport, first) = (transport.clone(), first.clone());
        let bodies: Vec<Bytes> = (0..args.envelopes).map(body).collect();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            for body in bodies {
                // Pipelined, up to 256 unconfirmed, as a real producer would.
                while pending.len() >= 256 {
                    if let Some(Err(e)) = pending.next().await {
                        return Err(e);
                    }
                }
                let (transport, first) = (transport.clone(), first.clone());
                pending.push(async move { transport.publish(&first, body, PublishOptions::default()).await });
            }
            while let Some(done) = pending.next().await {
                done?;
            }
            Ok::<(), TransportError>(())
        })
    };
    arrive(&mut sink, args.envelopes, RUN_LIMIT).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let sidecar_cpu = (cpu(&sidecars) - sidecar_cpu).as_secs_f64();
    let runtime_cpu = (cpu(&runtimes) - runtime_cpu).as_secs_f64();
    publishing.await??;
    drop((sidecars, runtimes));
    let _ = std::fs::remove_dir_all(&scratch);
    let n = args.envelopes as f64;
    let hops = n * STEPS.len() as f64;
    Ok(Measured {
        per_s: n / elapsed,
        sidecar_us_per_hop: sidecar_cpu * 1e6 / hops,
        runtime_us_per_call: runtime_cpu * 1e6 / hops,
        cpu_s_per_1000: (sidecar_cpu + runtime_cpu) * 1e3 / n,
    })
}

/// Reads and acks `count` envelopes at `x-sink` within `limit`.
async fn arrive<C: Consumer>(sink: &mut C, count: usize, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    for got in 0..count {
        match tokio::time::timeout_at(deadline, sink.next()).await {
            Ok(Some(Ok(delivery))) => delivery.ack().await.map_err(|e| e.to_string())?,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("x-sink's consumer ended".into()),
            Err(_) => return Err(format!("{got} of {count} envelopes reached x-sink in {limit:?}")),
        }
    }
    Ok(())
}

/// One row of the peers' harness.
#[derive(serde::Deserialize)]
struct PeerRow {
    peer: String,
    per_s: f64,
    cpu_s_per_1000: f64,
}

fn peers(args: &Args) -> Result<Vec<PeerRow>, String> {
    let script = repo().join("benches/python/peers.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--url", &args.brokers.amqp_url])
        .args(["--envelopes", &args.envelopes.to_string()])
        .args(["--threads", &args.concurrency.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("python3 {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed ({})", script.display(), output.status));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{l}: {e}")))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let troupe = match &args.troupe {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("troupe"),
    };
    if !troupe.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p troupe-cli --features nats,amqp) or give --troupe",
            troupe.display()
        )
        .into());
    }
    if args.peers && !matches!(args.broker, Broker::Amqp) {
        return Err("--peers runs on RabbitMQ: add --broker amqp".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for run_no in 0..args.runs.max(1) {
        let run = Run {
            args: &args,
            troupe: troupe.clone(),
            run_no,
        };
        let measured = runtime.block_on(args.brokers.config().connect(args.broker, run))??;
        eprintln!("run {}: {measured:?}", run_no + 1);
        runs.push(measured);
    }
    runs.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
    let median = runs[runs.len() / 2];
    println!(
        "broker: {}, {} envelopes through 3 steps of no-op Python handlers, {} concurrent per step; Troupe: median of {} runs, sidecar worker threads: {}",
        args.broker,
        args.envelopes,
        args.concurrency,
        runs.len(),
        args.sidecar_threads
            .map_or_else(|| "one per core".to_owned(), |t| t.to_string())
    );
    println!();
    println!(
        "| system | envelopes/s | CPU s per 1,000 envelopes | sidecar CPU µs per hop | runtime CPU µs per call |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| Troupe (sidecar + runtime) | {:.0} | {:.2} | {:.0} | {:.0} |",
        median.per_s, median.cpu_s_per_1000, median.sidecar_us_per_hop, median.runtime_us_per_call
    );
    if args.peers {
        for row in peers(&args)? {
            println!(
                "| {} | {:.0} | {:.2} | | |",
                row.peer, row.per_s, row.cpu_s_per_1000
            );
            println!(
                "| Troupe vs {} | {:.1}x the throughput | {:.2}x the CPU per envelope | | |",
                row.peer,
                median.per_s / row.per_s,
                median.cpu_s_per_1000 / row.cpu_s_per_1000
            );
        }
    }
    Ok(())
}
