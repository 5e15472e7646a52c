//! `troupe demo`: a text-scoring pipeline of four actors on the embedded broker.
//!
//! `tokenize -> score -> judge` (`+ refine` when the judge asks for it):
//! - `tokenize` fans each document out into one envelope per sentence;
//! - `score` gives each sentence a score and fails transiently on some first attempts
//!   (a `ConnectionError`, retried by policy);
//! - `judge` rewrites `route.next` to add `refine` for low scores;
//! - `refine` raises the score.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use troupe::broker::{Broker, BrokerArgs, ConnectError, WithTransport};
use troupe::layers::{
    ActorSnapshot, MemoryStore, MeshMetrics, RetryPolicies, RetryPolicy, StackConfig, actor_stack,
};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, Delivery, Envelope, HandlerError, Outcome, Phase,
    PublishOptions, QueueAdmin, QueueNaming, Route, Runner, RunnerConfig, RunnerError, SINK, SUMP, Transport,
    TransportError, handler_fn,
};

const ACTORS: [&str; 4] = ["tokenize", "score", "judge", "refine"];

/// Options of `troupe demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Documents to send through the pipeline (each fans out into 1-3 sentences).
    #[arg(long, default_value_t = 200, env = "TROUPE_DEMO_COUNT")]
    count: usize,
    /// Envelopes in flight per actor.
    #[arg(long, default_value_t = 16, env = "TROUPE_DEMO_CONCURRENCY")]
    concurrency: usize,
    /// Simulated work per handler call, e.g. `2ms` or `0s`.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration, env = "TROUPE_DEMO_LATENCY")]
    latency: Duration,
    /// Fraction (0..1) of first attempts at `score` that fail transiently and are retried.
    #[arg(long, default_value_t = 0.1, env = "TROUPE_DEMO_FAIL_RATE")]
    fail_rate: f64,
    /// Print only the summary, not every finished envelope.
    #[arg(long)]
    quiet: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while the demo runs.
    #[arg(long, env = "TROUPE_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Give up if nothing reaches x-sink for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,
    /// The broker the actors talk through: memory (embedded), nats, amqp, sqs, kafka (each
    /// real broker needs this build to have its Cargo feature).
    #[arg(long, default_value = "memory", env = "TROUPE_TRANSPORT")]
    transport: Broker,
    #[command(flatten)]
    brokers: BrokerArgs,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A flag is out of range.
    #[error("invalid option: {0}")]
    InvalidArgument(String),
    /// The broker refused something.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The broker could not be reached, or this build lacks it.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An actor could not start.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Serve(#[from] troupe::http::ServeError),
    /// The pipeline stopped making progress.
    #[error(
        "the pipeline stalled: {received} of {expected} envelopes reached x-sink, then nothing for {idle:?}"
    )]
    Stalled {
        /// Envelopes that arrived.
        received: usize,
        /// Envelopes expected.
        expected: usize,
        /// How long nothing arrived.
        idle: Duration,
    },
}

const CORPUS: [&str; 12] = [
    "Actors scale from zero on their own queue depth",
    "A slow GPU step no longer blocks the fast CPU steps around it",
    "Every envelope carries its route and its history",
    "The judge may append a refine step at runtime",
    "Acks wait for confirmed publishes",
    "Idempotency turns redeliveries into no-ops",
    "Queues decouple producers from consumers",
    "Retries are delayed redeliveries not sleeping workers",
    "Fan out splits one document into many sentences",
    "Metrics expose throughput and latency per actor",
    "Dead letters land in the sump with their bytes intact",
    "Tracing follows one envelope across every hop",
];

fn document(i: usize) -> (Value, usize) {
    let sentences = 1 + i % 3;
    let text: Vec<&str> = (0..sentences)
        .map(|k| CORPUS[(i * 7 + k * 5) % CORPUS.len()])
        .collect();
    (json!({ "doc": i, "text": text.join(". ") }), sentences)
}

/// FNV-1a: a stable, dependency-free hash, so the demo is reproducible run to run.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn work(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    if args.count == 0 || args.concurrency == 0 {
        return Err(DemoError::InvalidArgument(
            "--count and --concurrency must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&args.fail_rate) {
        return Err(DemoError::InvalidArgument(format!(
            "--fail-rate must be in [0, 1), got {}",
            args.fail_rate
        )));
    }
    let broker = args.transport;
    let brokers = args.brokers.config().scratch("demo");
    // A namespace per run on a real broker, so what an interrupted earlier run left behind
    // is not counted.
    let naming = if broker == Broker::Memory {
        QueueNaming::default()
    } else {
        let namespace = format!("demo{}", std::process::id());
        eprintln!(
            "running over {} (namespace {namespace})",
            brokers.describe(broker)
        );
        QueueNaming::new("asya", &namespace).map_err(RunnerError::from)?
    };
    brokers.connect(broker, DemoJob { naming, args: &args }).await?
}

struct DemoJob<'a> {
    naming: QueueNaming,
    args: &'a DemoArgs,
}

impl WithTransport for DemoJob<'_> {
    type Output = Result<(), DemoError>;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
        run_on(transport, self.naming, self.args).await
    }
}

async fn run_on<T: Transport + QueueAdmin>(
    transport: T,
    naming: QueueNaming,
    args: &DemoArgs,
) -> Result<(), DemoError> {
    // Brokers that need it get every queue (and its consumer) before anything is sent.
    for actor in ACTORS.into_iter().chain([SINK, SUMP]) {
        transport
            .ensure_queue(&naming.queue_for(actor).map_err(RunnerError::from)?)
            .await?;
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let store = Arc::new(MemoryStore::default());
    let shutdown = CancellationToken::new();

    if let Some(addr) = args.metrics_addr {
        let bound = troupe::http::serve(
            addr,
            Arc::new(registry),
            troupe::http::Probes::default(),
            shutdown.clone(),
        )
        .await?;
        eprintln!("metrics at http://{bound}/metrics");
    }

    let mut runners = JoinSet::new();
    let latency = args.latency;
    let fail_rate = args.fail_rate;
    let transient = RetryPolicies::new(RetryPolicy::constant(1, Duration::ZERO)).with_rule(
        ["OSError"],
        "transient",
        RetryPolicy {
            max_attempts: 4,
            backoff: troupe::layers::Backoff::Exponential {
                initial: Duration::from_millis(5),
                multiplier: 2.0,
            },
            jitter: 0.2,
            ..RetryPolicy::default()
        },
    );
    for actor in ACTORS {
        let config = StackConfig {
            actor: actor.into(),
            retry: transient.clone(),
            timeout: Duration::from_secs(10),
            store: store.clone(),
            metrics: metrics.actor(actor),
        };
        let mut rc = RunnerConfig::new(actor);
        rc.concurrency = args.concurrency;
        rc.naming = naming.clone();
        let token = shutdown.clone();
        let t = transport.clone();
        match actor {
            "tokenize" => {
                let h = handler_fn(move |e: Envelope| async move {
                    work(latency).await;
                    Ok(Outcome::Forward(tokenize(&e)))
                });
                runners.spawn(Runner::new(t, actor_stack(config, h), rc).run(token));
            }
            "score" => {
                let h = handler_fn(move |mut e: Envelope| async move {
                    work(latency).await;
                    let sentence = e.payload["sentence"].as_str().unwrap_or_default();
                    let h = fnv(sentence);
                    let flaky = ((h >> 32) % 1000) as f64 / 1000.0 < fail_rate;
                    if flaky && e.attempt_at("score") == 1 {
                        return Err(HandlerError::new(
                            "ConnectionError",
                            "model server reset the connection",
                        )
                        .with_mro(["ConnectionError", "OSError", "Exception"]));
                    }
                    e.payload["score"] = json!((h % 1000) as f64 / 1000.0);
                    Ok(Outcome::forward(e))
                });
                runners.spawn(Runner::new(t, actor_stack(config, h), rc).run(token));
            }
            "judge" => {
                let h = handler_fn(move |mut e: Envelope| async move {
                    work(latency).await;
                    let low = e.payload["score"].as_f64().unwrap_or(0.0) < 0.5;
                    if low {
                        e.route.next_mut().insert(0, "refine".to_owned());
                    }
                    e.payload["verdict"] = json!(if low { "refine" } else { "accept" });
                    Ok(Outcome::forward(e))
                });
                runners.spawn(Runner::new(t, actor_stack(config, h), rc).run(token));
            }
            _ => {
                let h = handler_fn(move |mut e: Envelope| async move {
                    work(latency).await;
                    let score = e.payload["score"].as_f64().unwrap_or(0.0);
                    e.payload["score"] = json!((score + 0.4).min(1.0));
                    e.payload["refined"] = json!(true);
                    Ok(Outcome::forward(e))
                });
                runners.spawn(Runner::new(t, actor_stack(config, h), rc).run(token));
            }
        }
    }

    let started = Instant::now();
    let tokenize_queue = naming.queue_for("tokenize").map_err(RunnerError::from)?;
    let mut expected = 0;
    for i in 0..args.count {
        let (payload, sentences) = document(i);
        expected += sentences;
        let mut env = Envelope::new(Route::through(["tokenize", "score", "judge"]), payload);
        let status = env.status_mut();
        status.phase = Some(Phase::Pending);
        status.created_at = Some(Utc::now());
        transport
            .publish(
                &tokenize_queue,
                Bytes::from(env.to_vec()),
                PublishOptions::default(),
            )
            .await?;
    }

    let sink = collect_sink(&transport, &naming, expected, args).await;
    let elapsed = started.elapsed();
    shutdown.cancel();
    while let Some(done) = runners.join_next().await {
        match done {
            Ok(report) => {
                report?;
            }
            Err(e) => tracing::error!(error = %e, "an actor task ended abnormally"),
        }
    }
    let sink = sink?;
    let sumped = transport
        .depth(&naming.queue_for(SUMP).map_err(RunnerError::from)?)
        .await?
        .total();
    let snapshots: Vec<(&str, ActorSnapshot)> =
        ACTORS.iter().map(|a| (*a, metrics.actor(a).snapshot())).collect();
    print_summary(args, &sink, sumped, elapsed, &snapshots);
    Ok(())
}

fn tokenize(e: &Envelope) -> Vec<Envelope> {
    let doc = e.payload["doc"].clone();
    e.payload["text"]
        .as_str()
        .unwrap_or_default()
        .split(". ")
        .map(|sentence| {
            let mut child = e.clone();
            let tokens: Vec<String> = sentence.split_whitespace().map(str::to_lowercase).collect();
            child.payload = json!({ "doc": doc, "sentence": sentence, "tokens": tokens }).into();
            child
        })
        .collect()
}

struct SinkStats {
    finished: usize,
    failed: usize,
    refined: usize,
    children: usize,
    latency_us: Histogram<u64>,
}

async fn collect_sink<T: Transport>(
    transport: &T,
    naming: &QueueNaming,
    expected: usize,
    args: &DemoArgs,
) -> Result<SinkStats, DemoError> {
    let queue = naming.queue_for(SINK).map_err(RunnerError::from)?;
    let mut consumer = transport.consume(&queue, ConsumeOptions::default()).await?;
    let bar = ProgressBar::new(expected as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40}] {pos}/{len} envelopes at x-sink ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut stats = SinkStats {
        finished: 0,
        failed: 0,
        refined: 0,
        children: 0,
        // 1 µs .. 1 h at 3 significant figures: fixed bounds, so recording never resizes.
        latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}")),
    };
    let mut received = 0;
    let mut stdout_open = true;
    while received < expected {
        let next = tokio::time::timeout(args.stall_timeout, consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => {
                bar.abandon();
                return Err(DemoError::Stalled {
                    received,
                    expected,
                    idle: args.stall_timeout,
                });
            }
        };
        let env = Envelope::from_slice(delivery.body(), &Default::default());
        delivery.ack().await?;
        received += 1;
        bar.inc(1);
        let Ok(env) = env else { continue };
        let status = env.status.clone().unwrap_or_default();
        if let Some(created) = status.created_at {
            let us = (Utc::now() - created).num_microseconds().unwrap_or(0).max(1) as u64;
            stats.latency_us.saturating_record(us);
        }
        if status.phase == Some(Phase::Succeeded) {
            stats.finished += 1;
        } else {
            stats.failed += 1;
        }
        if env.payload["refined"] == json!(true) {
            stats.refined += 1;
        }
        if env.parent_id.is_some() {
            stats.children += 1;
        }
        if !args.quiet && stdout_open {
            // indicatif drops println output when the bar is hidden (stderr not a terminal).
            if bar.is_hidden() {
                stdout_open = emit(&describe(&env));
            } else {
                bar.println(describe(&env));
            }
        }
    }
    bar.finish_and_clear();
    // The acks above may still sit in the client's buffer; the demo exits next.
    transport.flush().await?;
    Ok(stats)
}

fn describe(env: &Envelope) -> String {
    let status = env.status.clone().unwrap_or_default();
    let id: String = env.id.chars().take(8).collect();
    let parent = env
        .parent_id
        .as_deref()
        .map(|p| format!(" (fan-out of {})", p.chars().take(8).collect::<String>()))
        .unwrap_or_default();
    format!(
        "{} {id} doc {:>5}  {:<38} score {:.2}  {}{parent}",
        if status.phase == Some(Phase::Succeeded) {
            "ok  "
        } else {
            "FAIL"
        },
        env.payload["doc"]
            .as_u64()
            .map_or_else(|| "?".to_owned(), |d| d.to_string()),
        env.route.prev().join(" -> "),
        env.payload["score"].as_f64().unwrap_or(f64::NAN),
        status.phase.map_or("?", |p| p.as_str()),
    )
}

fn print_summary(
    args: &DemoArgs,
    sink: &SinkStats,
    sumped: u64,
    elapsed: Duration,
    snapshots: &[(&str, ActorSnapshot)],
) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let total = sink.finished + sink.failed;
    let retries: u64 = snapshots.iter().map(|(_, s)| s.retries).sum();
    let p = |q: f64| sink.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let mut out = String::new();
    out.push('\n');
    let _ = writeln!(
        out,
        "troupe demo: {} documents, concurrency {} per actor, {:?} per handler call",
        args.count, args.concurrency, args.latency
    );
    let _ = writeln!(out, "  envelopes in (documents)       {:>8}", args.count);
    let _ = writeln!(
        out,
        "  envelopes out (x-sink)         {:>8}  ({} succeeded, {} failed)",
        total, sink.finished, sink.failed
    );
    let _ = writeln!(out, "  fan-out children               {:>8}", sink.children);
    let _ = writeln!(out, "  routed through refine          {:>8}", sink.refined);
    let _ = writeln!(out, "  retries                        {:>8}", retries);
    let _ = writeln!(out, "  undeliverable (x-sump)         {:>8}", sumped);
    let _ = writeln!(
        out,
        "  wall time                      {:>8.3} s  ({:.0} envelopes/s out)",
        secs,
        total as f64 / secs
    );
    let _ = writeln!(
        out,
        "  latency created -> x-sink      p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        p(0.5),
        p(0.99),
        sink.latency_us.max() as f64 / 1000.0
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "  {:<10} {:>10} {:>10} {:>8} {:>12}",
        "actor", "received", "processed", "retries", "throughput"
    );
    for (actor, s) in snapshots {
        let _ = writeln!(
            out,
            "  {:<10} {:>10} {:>10} {:>8} {:>10.0}/s",
            actor,
            s.received,
            s.processed,
            s.retries,
            s.processed as f64 / secs
        );
    }
    emit(out.trim_end());
}

/// Writes a line to stdout; false once stdout is closed (e.g. piped into `head`).
fn emit(line: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_ok()
}
