//! `troupe-bench-fan-in`: the aggregator's throughput and CPU per slice on each store.
//!
//! ```sh
//! cargo run --release -p troupe-bench --bin troupe-bench-fan-in                 # memory, Redis, PostgreSQL, NATS KV
//! cargo run --release -p troupe-bench --bin troupe-bench-fan-in -- --stores memory
//! ```
//!
//! Each run gathers `--origins` origins of `--slices` slices each through the aggregator
//! service (the same `Aggregator` `troupe aggregate` serves, with the default list merge),
//! `--concurrency` slices in flight, slices of different origins interleaved as they come
//! from a busy pipeline. No broker: this is the aggregator's own cost (store round trips,
//! merge), which bounds what one aggregator process can rejoin. Reported per store: the
//! median slices per second over `--runs`, the CPU this process spent per 1,000 slices
//! (the store server's own CPU is not in it), and the time to gather one slice at the 50th
//! and 99th percentiles.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use serde_json::json;
use tower::ServiceExt;
use troupe::core::fan_in::mark_for_rejoin;
use troupe::layers::StoreUrl;
use troupe::layers::fan_in::{Aggregator, AggregatorConfig, AnyFanInStore};
use troupe::{Envelope, Outcome, Route};
use troupe_bench::cpu_time;

#[global_allocator]
static ALLOC: troupe_bench::Allocator = mimalloc::MiMalloc;

/// The aggregator's slices per second and CPU per slice, per store.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Stores to measure, comma-separated: memory, a redis://, postgres:// or nats-kv:// URL.
    #[arg(long, value_delimiter = ',', default_values_t = [
        "memory".to_owned(),
        "redis://127.0.0.1:6379".to_owned(),
        "postgres://postgres@127.0.0.1:5432/test".to_owned(),
        "nats-kv://127.0.0.1:4222/troupe-bench-fanin".to_owned(),
    ])]
    stores: Vec<String>,
    /// Origins per run.
    #[arg(long, default_value_t = 200)]
    origins: usize,
    /// Slices per origin.
    #[arg(long, default_value_t = 50)]
    slices: usize,
    /// Slices in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// The slices of `origins` fan-outs, interleaved: slice 0 of each, then slice 1 of each...
fn workload(origins: usize, slices: usize) -> Vec<Envelope> {
    let docs: Vec<Vec<Envelope>> = (0..origins)
        .map(|_| {
            let doc = Envelope::new(
                Route::through(["split", "join", "store"]),
                json!({"text": "a document"}),
            );
            let mut chunks: Vec<Envelope> = (0..slices)
                .map(|i| {
                    let mut chunk = doc.clone();
                    chunk.payload = json!({"chunk": i, "vector": [0.25, 0.5, 0.75, 1.0]}).into();
                    chunk.route = Route::new(vec!["split".into()], "join", vec!["store".into()]);
                    chunk
                })
                .collect();
            mark_for_rejoin(&doc, "join", &mut chunks);
            chunks
        })
        .collect();
    (0..slices)
        .flat_map(|i| docs.iter().map(move |chunks| chunks[i].clone()))
        .collect()
}

struct Run {
    per_second: f64,
    cpu_per_thousand: Duration,
}

async fn run(store: &AnyFanInStore, args: &Args, latency: &mut Histogram<u64>) -> Result<Run, String> {
    let aggregator = Aggregator::new(AggregatorConfig::new("join"), Arc::new(store.clone()));
    let slices = workload(args.origins, args.slices);
    let total = slices.len();
    let (cpu, started) = (cpu_time(), Instant::now());
    let mut pending = slices.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let mut merges = 0;
    loop {
        while in_flight.len() < args.concurrency {
            let Some(slice) = pending.next() else { break };
            let service = aggregator.clone();
            in_flight.push(async move {
                let at = Instant::now();
                let outcome = service.oneshot(slice).await;
                (outcome, at.elapsed())
            });
        }
        let Some((outcome, took)) = in_flight.next().await else {
            break;
        };
        match outcome.map_err(|e| e.to_string())? {
            Outcome::Merged(_) => merges += 1,
            Outcome::Published => {}
            other => return Err(format!("unexpected answer {other:?}")),
        }
        latency
            .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))
            .ok();
    }
    let elapsed = started.elapsed();
    if merges != args.origins {
        return Err(format!("{merges} merges for {} origins", args.origins));
    }
    Ok(Run {
        per_second: total as f64 / elapsed.as_secs_f64(),
        cpu_per_thousand: (cpu_time().saturating_sub(cpu)) * 1000 / u32::try_from(total).unwrap_or(u32::MAX),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "fan-in: {} origins x {} slices, {} in flight, median of {} runs",
        args.origins, args.slices, args.concurrency, args.runs
    );
    println!("| store | slices/s (min-max) | CPU ms / 1,000 slices | gather p50 | gather p99 |");
    println!("|---|---|---|---|---|");
    for url in &args.stores {
        let parsed: StoreUrl = url.parse()?;
        let store = runtime.block_on(AnyFanInStore::connect(&parsed, &Default::default(), "bench"))?;
        let mut latency = Histogram::<u64>::new(3)?;
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(runtime.block_on(run(&store, &args, &mut latency))?);
        }
        runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        let median = &runs[runs.len() / 2];
        println!(
            "| {} | {:.0} ({:.0}-{:.0}) | {:.1} | {:.2} ms | {:.2} ms |",
            parsed,
            median.per_second,
            runs[0].per_second,
            runs[runs.len() - 1].per_second,
            median.cpu_per_thousand.as_secs_f64() * 1000.0,
            latency.value_at_quantile(0.5) as f64 / 1000.0,
            latency.value_at_quantile(0.99) as f64 / 1000.0,
        );
    }
    Ok(())
}
