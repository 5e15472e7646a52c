//! `troupe-bench`: relays and pipelines on a broker, printed as a table.
//!
//! ```sh
//! cargo run --release -p troupe-bench                                   # memory broker
//! cargo run --release -p troupe-bench --features nats -- --broker nats  # NATS JetStream
//! cargo run --release -p troupe-bench --features nats -- --broker nats --rate 1000
//! cargo run --release -p troupe-bench --features amqp -- --broker amqp  # RabbitMQ
//! ```
//!
//! Each scenario pushes `--envelopes` envelopes through fresh queues `--runs` times on a
//! 2-worker tokio runtime. For each it reports the median throughput (with the spread), the
//! CPU seconds this process spent per 10,000 envelopes, and the end-to-end latency (publish
//! to arrival at the last queue) at the 50th and 99th percentiles over all runs. With
//! `--rate`, the producer offers that many envelopes per second instead of all at once.
//!
//! Scenarios, all with up to `--concurrency` messages in flight per stage:
//! - client publish: the producer alone, publishing with confirms (up to 256 unconfirmed),
//!   to a queue nobody reads: what one client of this broker sends, the relay's ceiling;
//! - raw relay: one hop of consume -> publish -> ack with the same client, no mesh logic;
//! - raw relay, task per message: the same, spawning a task per message;
//! - mesh hop: one actor with the full layer stack and a no-op handler (compare with the
//!   raw relay: same hops, same prefetch and in-flight bound);
//! - 3-actor pipeline: `a -> b -> c -> x-sink`, full layer stacks, no-op handlers.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use troupe::broker::{Broker, BrokerArgs, WithTransport};
use troupe::layers::{MemoryStore, MeshMetrics};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, DecodeLimits, Delivery, Envelope, PublishOptions,
    QueueAdmin, QueueNaming, Runner, RunnerConfig, SINK, Transport, TransportError,
};
use troupe_bench::{cpu_time, envelope_through, noop_stack};

#[global_allocator]
static ALLOC: troupe_bench::Allocator = mimalloc::MiMalloc;

/// Longest a single repetition may take before the harness reports a stall.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Throughput, CPU and latency of relays and mesh pipelines on a broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The broker to measure: memory, nats, amqp, sqs, kafka (real brokers need their Cargo feature).
    #[arg(long, default_value = "memory")]
    broker: Broker,
    #[command(flatten)]
    brokers: BrokerArgs,
    /// Repetitions of each scenario; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unreported repetitions before those, so that the process has grown its heap, queues
    /// and stores once, as a long-running actor has.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Envelopes per repetition.
    #[arg(long, default_value_t = 20_000)]
    envelopes: usize,
    /// Messages in flight per stage.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Worker tasks per actor (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Offer this many envelopes per second instead of all at once (for latency).
    #[arg(long)]
    rate: Option<u32>,
    /// Run only these scenarios (repeatable; default: all), e.g. to profile one.
    #[arg(long, value_enum)]
    only: Vec<Scenario>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Publish,
    Relay,
    RelaySpawned,
    MeshHop,
    Pipeline,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Publish,
        Scenario::Relay,
        Scenario::RelaySpawned,
        Scenario::MeshHop,
        Scenario::Pipeline,
    ];

    /// The route the scenario's envelopes carry.
    fn route(self) -> &'static [&'static str] {
        match self {
            Scenario::Pipeline => &["a", "b", "c"],
            _ => &["a"],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Scenario::Publish => "client publish (confirmed)",
            Scenario::Relay => "raw relay (1 hop)",
            Scenario::RelaySpawned => "raw relay, task per message",
            Scenario::MeshHop => "mesh hop, full stack",
            Scenario::Pipeline => "3-actor pipeline, full stack",
        }
    }
}

/// What a long-running actor process keeps across envelopes: its metric families and its
/// idempotency store. Made once, as in the binaries, so runs measure the steady state and
/// not the store growing from empty.
#[derive(Clone)]
struct Process {
    metrics: MeshMetrics,
    store: Arc<MemoryStore>,
}

/// What one repetition measured.
struct Measured {
    elapsed: Duration,
    cpu: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.runs == 0 || args.envelopes == 0 || args.concurrency == 0 || args.rate == Some(0) {
        return Err("--runs, --envelopes, --concurrency and --rate must be at least 1".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "{} broker, {} envelopes of ~{} B payload, {} in flight per stage, {}, median of {} runs after {} warm-up\n",
        args.broker,
        args.envelopes,
        args.payload_bytes,
        args.concurrency,
        args.rate.map_or_else(
            || "offered all at once".to_owned(),
            |r| format!("offered at {r}/s")
        ),
        args.runs,
        args.warmup
    );
    println!(
        "{:<32} {:>11} {:>21} {:>12} {:>9} {:>9}",
        "scenario", "envelopes/s", "min .. max", "CPU s / 10k", "p50 ms", "p99 ms"
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let process = Process {
        metrics: MeshMetrics::new(&mut registry),
        store: Arc::new(MemoryStore::default()),
    };
    for scenario in Scenario::ALL
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.contains(s))
    {
        let mut rates = Vec::with_capacity(args.runs);
        let mut cpu = Vec::with_capacity(args.runs);
        let latency = Arc::new(std::sync::Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .map_err(|e| format!("histogram bounds: {e}"))?,
        ));
        for run_no in 0..args.warmup + args.runs {
            let warming = run_no < args.warmup;
            let record = if warming {
                Arc::new(std::sync::Mutex::new(
                    Histogram::<u64>::new(3).map_err(|e| format!("histogram: {e}"))?,
                ))
            } else {
                latency.clone()
            };
            let measured = rt
                // The timer is created inside the runtime, which `timeout` needs.
                .block_on(async {
                    tokio::time::timeout(
                        RUN_LIMIT,
                        run_on_broker(&args, &process, scenario, run_no, record),
                    )
                    .await
                })
                .map_err(|_| format!("{} stalled: not done within {RUN_LIMIT:?}", scenario.label()))??;
            if warming {
                continue;
            }
            rates.push(args.envelopes as f64 / measured.elapsed.as_secs_f64());
            cpu.push(measured.cpu.as_secs_f64() * 10_000.0 / args.envelopes as f64);
        }
        rates.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        let latency = latency.lock().map_err(|_| "latency histogram poisoned")?;
        // Publishing alone has no arrivals, so no latency.
        let ms = |q: f64| match latency.is_empty() {
            true => "-".to_owned(),
            false => format!("{:.2}", latency.value_at_quantile(q) as f64 / 1000.0),
        };
        println!(
            "{:<32} {:>11.0} {:>9.0} .. {:<9.0} {:>12.3} {:>9} {:>9}",
            scenario.label(),
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1],
            cpu[cpu.len() / 2],
            ms(0.5),
            ms(0.99),
        );
    }
    Ok(())
}

async fn run_on_broker(
    args: &Args,
    process: &Process,
    scenario: Scenario,
    run_no: usize,
    latency: Arc<std::sync::Mutex<Histogram<u64>>>,
) -> Result<Measured, Box<dyn std::error::Error>> {
    // Fresh queue names every run: nothing left over from an earlier one is counted.
    let namespace = format!("bench{}x{run_no}", std::process::id());
    let naming = QueueNaming::new("asya", &namespace)?;
    let job = Job {
        naming,
        args,
        process: process.clone(),
        scenario,
        latency,
    };
    #[allow(unused_mut)]
    let mut config = args.brokers.config().scratch("bench");
    // Every run makes new queues: their consumers go after 10 idle seconds rather than the
    // scratch default of 5 minutes, so that a run does not share the stream with earlier
    // runs' consumers.
    #[cfg(feature = "nats")]
    {
        config.nats.consumer_inactive_threshold = Some(Duration::from_secs(10));
    }
    Ok(config.connect(args.broker, job).await??)
}

struct Job<'a> {
    naming: QueueNaming,
    args: &'a Args,
    process: Process,
    scenario: Scenario,
    latency: Arc<std::sync::Mutex<Histogram<u64>>>,
}

impl WithTransport for Job<'_> {
    type Output = Result<Measured, TransportError>;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
        run(
            transport,
            self.naming,
            self.args,
            &self.process,
            self.scenario,
            self.latency,
        )
        .await
    }
}

/// One repetition: from the first publish until every envelope reached the last queue.
async fn run<T: Transport + QueueAdmin>(
    transport: T,
    naming: QueueNaming,
    args: &Args,
    process: &Process,
    scenario: Scenario,
    latency: Arc<std::sync::Mutex<Histogram<u64>>>,
) -> Result<Measured, TransportError> {
    let name = |a: &str| {
        naming
            .queue_for(a)
            .map_err(|e| TransportError::Other(Box::new(e)))
    };
    let count = args.envelopes;
    // Envelope `n` carries its index, so the end can look up when it was sent.
    let bodies: Vec<Bytes> = (0..count)
        .map(|n| {
            let mut env = envelope_through(scenario.route(), args.payload_bytes);
            env.payload["n"] = n.into();
            Bytes::from(env.to_vec())
        })
        .collect();
    let token = CancellationToken::new();
    let mut tasks = Vec::new();
    let (first, last) = match scenario {
        Scenario::Publish => {
            let queue = name("publish")?;
            transport.ensure_queue(&queue).await?;
            (queue.clone(), queue)
        }
        Scenario::Relay | Scenario::RelaySpawned => {
            // One hop, like the mesh hop: producer -> relay -> last queue.
            let stages = [name("relay")?, name("end")?];
            for q in &stages {
                transport.ensure_queue(q).await?;
            }
            for pair in stages.windows(2) {
                let (from, to) = (pair[0].clone(), pair[1].clone());
                let spawned = matches!(scenario, Scenario::RelaySpawned);
                tasks.push(tokio::spawn(relay(
                    transport.clone(),
                    from,
                    to,
                    args.concurrency,
                    spawned,
                    token.clone(),
                )));
            }
            (stages[0].clone(), stages[1].clone())
        }
        Scenario::MeshHop | Scenario::Pipeline => {
            for actor in scenario.route().iter().copied().chain([SINK]) {
                transport.ensure_queue(&name(actor)?).await?;
            }
            for actor in scenario.route() {
                let mut cfg = RunnerConfig::new(*actor);
                cfg.naming = naming.clone();
                cfg.concurrency = args.concurrency;
                if let Some(workers) = args.workers {
                    cfg.workers = workers;
                }
                let runner = Runner::new(
                    transport.clone(),
                    noop_stack(actor, &process.metrics, process.store.clone()),
                    cfg,
                );
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = runner.run(token).await {
                        eprintln!("runner failed: {e}");
                    }
                }));
            }
            (name(scenario.route()[0])?, name(SINK)?)
        }
    };

    // Publishing alone reads nothing: the consumer would compete with the producer.
    let mut end = match scenario {
        Scenario::Publish => None,
        _ => Some(transport.consume(&last, ConsumeOptions::default()).await?),
    };
    let epoch = Instant::now();
    let sent_at: Arc<[AtomicU64]> = (0..count).map(|_| AtomicU64::new(0)).collect();
    let cpu_before = cpu_time();
    let producer = {
        let (transport, sent_at, rate) = (transport.clone(), sent_at.clone(), args.rate);
        tokio::spawn(async move {
            let mut tick = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(r))));
            let mut pending = FuturesUnordered::new();
            for (n, body) in bodies.into_iter().enumerate() {
                if let Some(tick) = &mut tick {
                    // Publishes in flight go out only while polled: waiting for the tick
                    // alone would hold them until 256 piled up, and offer those in a burst.
                    loop {
                        tokio::select! {
                            biased;
                            _ = tick.tick() => break,
                            Some(done) = pending.next(), if !pending.is_empty() => done?,
                        }
                    }
                }
                // Publishes are pipelined (up to 256 unconfirmed), as a real producer would.
                while pending.len() >= 256 {
                    if let Some(Err(e)) = pending.next().await {
                        return Err(e);
                    }
                }
                let (transport, first, sent_at) = (transport.clone(), first.clone(), sent_at.clone());
                pending.push(async move {
                    sent_at[n].store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    transport.publish(&first, body, PublishOptions::default()).await
                });
            }
            while let Some(done) = pending.next().await {
                done?;
            }
            Ok::<(), TransportError>(())
        })
    };
    let limits = DecodeLimits::default();
    let mut samples = Vec::with_capacity(count);
    let Some(end) = end.as_mut() else {
        producer.await.map_err(|e| TransportError::Other(Box::new(e)))??;
        let measured = Measured {
            elapsed: epoch.elapsed(),
            cpu: cpu_time().saturating_sub(cpu_before),
        };
        // Untimed: messages left in a NATS work-queue stream stay there after the queue's
        // consumer is gone, and every later run on that server measured a slower stream.
        drain(&transport, &last, count).await?;
        return Ok(measured);
    };
    for _ in 0..count {
        let d = match end.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e),
            None => return Err(TransportError::Closed),
        };
        let arrived = epoch.elapsed().as_nanos() as u64;
        if let Some(n) = Envelope::from_slice(d.body(), &limits)
            .ok()
            .and_then(|e| e.payload["n"].as_u64())
            .and_then(|n| usize::try_from(n).ok())
        {
            let sent = sent_at.get(n).map_or(arrived, |s| s.load(Ordering::Relaxed));
            samples.push(arrived.saturating_sub(sent) / 1000);
        }
        d.ack().await?;
    }
    let elapsed = epoch.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    token.cancel();
    if let Ok(Err(e)) = producer.await {
        return Err(e);
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Ok(mut h) = latency.lock() {
        for us in samples {
            h.saturating_record(us.max(1));
        }
    }
    Ok(Measured { elapsed, cpu })
}

/// Takes `count` messages off `queue` and acks them.
async fn drain<T: Transport>(transport: &T, queue: &str, count: usize) -> Result<(), TransportError> {
    let options = ConsumeOptions {
        prefetch: 256,
        ..ConsumeOptions::default()
    };
    let mut consumer = transport.consume(queue, options).await?;
    for _ in 0..count {
        match consumer.next().await {
            Some(Ok(d)) => d.ack().await?,
            Some(Err(e)) => return Err(e),
            None => return Err(TransportError::Closed),
        }
    }
    // The transport is dropped next: buffered acks must reach the broker first.
    transport.flush().await
}

/// Consume `from`, publish each body to `to`, ack: a relay with no mesh logic, keeping up to
/// `limit` messages in flight (inline, or a task per message).
async fn relay<T: Transport>(
    transport: T,
    from: String,
    to: String,
    limit: usize,
    spawned: bool,
    stop: CancellationToken,
) {
    let options = ConsumeOptions {
        prefetch: limit.min(256),
        ..ConsumeOptions::default()
    };
    let Ok(mut consumer) = transport.consume(&from, options).await else {
        return;
    };
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            d = consumer.next(), if in_flight.len() < limit => {
                let Some(Ok(delivery)) = d else { return };
                let (transport, to) = (transport.clone(), to.clone());
                let hop = async move {
                    if transport.publish(&to, delivery.body().clone(), PublishOptions::default()).await.is_ok() {
                        let _ = delivery.ack().await;
                    }
                };
                if spawned {
                    tokio::spawn(hop);
                } else {
                    in_flight.push(hop);
                }
            }
        }
    }
}
