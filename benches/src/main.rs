//! `troupe-bench`: throughput of relays and pipelines, printed as a table.
//!
//! ```sh
//! cargo run --release -p troupe-bench -- --runs 7 --envelopes 20000
//! ```
//!
//! Each scenario pushes `--envelopes` envelopes through a fresh broker `--runs` times on a
//! 2-worker tokio runtime and reports the median and the spread. Scenarios:
//! - raw relay, inline: 3 relay hops (consume -> publish -> ack), no mesh logic at all;
//! - raw relay, task per message: the same, with a spawned task per message (what a
//!   runner that spawns per envelope pays);
//! - mesh hop: one actor, full layer stack, no-op handler;
//! - 3-actor pipeline: `a -> b -> c -> x-sink`, full layer stacks, no-op handlers.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use troupe::layers::{MemoryStore, MeshMetrics};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, Delivery, MemoryTransport, PublishOptions, QueueNaming,
    Runner, RunnerConfig, SINK, Transport, TransportError,
};
use troupe_bench::{envelope_through, noop_stack};

#[global_allocator]
static ALLOC: troupe_bench::Allocator = mimalloc::MiMalloc;

/// Throughput harness (memory broker; real brokers come with their transports).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Repetitions of each scenario; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Envelopes per repetition.
    #[arg(long, default_value_t = 20_000)]
    envelopes: usize,
    /// Envelopes in flight per actor.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Worker tasks per actor (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    RelayInline,
    RelaySpawned,
    MeshHop,
    Pipeline,
}

/// Longest a single repetition may take before the harness reports a stall.
const RUN_LIMIT: Duration = Duration::from_secs(120);

impl Scenario {
    /// The route the scenario's envelopes carry.
    fn route(self) -> &'static [&'static str] {
        match self {
            Scenario::MeshHop => &["a"],
            _ => &["a", "b", "c"],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Scenario::RelayInline => "raw relay x3, inline",
            Scenario::RelaySpawned => "raw relay x3, task per message",
            Scenario::MeshHop => "mesh hop, full stack",
            Scenario::Pipeline => "3-actor pipeline, full stack",
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.runs == 0 || args.envelopes == 0 || args.concurrency == 0 {
        return Err("--runs, --envelopes and --concurrency must be at least 1".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "memory broker, {} envelopes of ~{} B payload, {} in flight per actor over {} workers, median of {} runs\n",
        args.envelopes,
        args.payload_bytes,
        args.concurrency,
        args.workers
            .map_or_else(|| "per-core".to_owned(), |w| w.to_string()),
        args.runs
    );
    println!("{:<34} {:>12} {:>22}", "scenario", "envelopes/s", "min .. max");
    for scenario in [
        Scenario::RelayInline,
        Scenario::RelaySpawned,
        Scenario::MeshHop,
        Scenario::Pipeline,
    ] {
        let mut rates = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            // Fresh ids every run, so every hop is new work for the idempotency layer.
            let bodies: Vec<Bytes> = (0..args.envelopes)
                .map(|_| Bytes::from(envelope_through(scenario.route(), args.payload_bytes).to_vec()))
                .collect();
            let elapsed = rt
                // The timer is created inside the runtime, which `timeout` needs.
                .block_on(async { tokio::time::timeout(RUN_LIMIT, run(scenario, &bodies, &args)).await })
                .map_err(|_| format!("{} stalled: not done within {RUN_LIMIT:?}", scenario.label()))??;
            rates.push(bodies.len() as f64 / elapsed.as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{:<34} {:>12.0} {:>10.0} .. {:<10.0}",
            scenario.label(),
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1]
        );
    }
    Ok(())
}

/// One repetition: the time from the first publish until every envelope reached the end.
async fn run(scenario: Scenario, bodies: &[Bytes], args: &Args) -> Result<Duration, TransportError> {
    let transport = MemoryTransport::default();
    let naming = QueueNaming::default();
    let token = CancellationToken::new();
    let mut tasks = Vec::new();
    let (first, last) = match scenario {
        Scenario::RelayInline | Scenario::RelaySpawned => {
            let spawned = matches!(scenario, Scenario::RelaySpawned);
            for (from, to) in [("r1", "r2"), ("r2", "r3"), ("r3", "end")] {
                tasks.push(tokio::spawn(relay(
                    transport.clone(),
                    from,
                    to,
                    spawned,
                    token.clone(),
                )));
            }
            ("r1".to_owned(), "end".to_owned())
        }
        Scenario::MeshHop | Scenario::Pipeline => {
            let actors = scenario.route();
            let mut registry = prometheus_client::registry::Registry::default();
            let metrics = MeshMetrics::new(&mut registry);
            let store = Arc::new(MemoryStore::default());
            for actor in actors {
                let mut cfg = RunnerConfig::new(*actor);
                cfg.concurrency = args.concurrency;
                if let Some(workers) = args.workers {
                    cfg.workers = workers;
                }
                let runner = Runner::new(transport.clone(), noop_stack(actor, &metrics, store.clone()), cfg);
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = runner.run(token).await {
                        eprintln!("runner failed: {e}");
                    }
                }));
            }
            let queue = |a: &str| {
                naming
                    .queue_for(a)
                    .map_err(|e| TransportError::Other(Box::new(e)))
            };
            (queue("a")?, queue(SINK)?)
        }
    };
    let mut end = transport.consume(&last, ConsumeOptions::default()).await?;
    let started = Instant::now();
    let producer = {
        let transport = transport.clone();
        let bodies = bodies.to_vec();
        tokio::spawn(async move {
            for body in bodies {
                transport.publish(&first, body, PublishOptions::default()).await?;
            }
            Ok::<(), TransportError>(())
        })
    };
    for _ in 0..bodies.len() {
        match end.next().await {
            Some(Ok(d)) => d.ack().await?,
            Some(Err(e)) => return Err(e),
            None => return Err(TransportError::Closed),
        }
    }
    let elapsed = started.elapsed();
    token.cancel();
    if let Ok(Err(e)) = producer.await {
        return Err(e);
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(elapsed)
}

/// Consume `from`, publish each body to `to`, ack: a relay with no mesh logic.
async fn relay(
    transport: MemoryTransport,
    from: &'static str,
    to: &'static str,
    spawned: bool,
    stop: CancellationToken,
) {
    let Ok(mut consumer) = transport.consume(from, ConsumeOptions::default()).await else {
        return;
    };
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return,
            d = consumer.next() => match d {
                Some(Ok(d)) => d,
                _ => return,
            },
        };
        let transport = transport.clone();
        let hop = async move {
            if transport
                .publish(to, delivery.body().clone(), PublishOptions::default())
                .await
                .is_ok()
            {
                let _ = delivery.ack().await;
            }
        };
        if spawned {
            tokio::spawn(hop);
        } else {
            hop.await;
        }
    }
}
