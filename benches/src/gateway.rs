//! `troupe-bench-gateway`: what the gateway costs, printed as a table.
//!
//! ```sh
//! cargo run --release -p troupe-bench --bin troupe-bench-gateway                                # memory broker
//! cargo run --release -p troupe-bench --features nats --bin troupe-bench-gateway -- --broker nats
//! cargo run --release -p troupe-bench --features amqp --bin troupe-bench-gateway -- --broker amqp
//! ```
//!
//! Everything runs in this process on a 2-worker runtime: a trivial 3-actor pipeline
//! (`a -> b -> c`, full layer stacks, no-op handlers) and, where measured, the gateway on a
//! SQLite file with its HTTP API on 127.0.0.1. Scenarios, `--tasks` each:
//!
//! - raw, events off: envelopes published straight to `a`, counted at `x-sink`;
//! - raw, events on: the same envelopes as gateway tasks (runners publish task events; a
//!   drain acknowledges them): the cost of events to the pipeline;
//! - gateway: tasks submitted over HTTP (`--concurrency` in flight) and recorded to their
//!   end: submitted/s, completed/s, and CPU per task against the raw run;
//! - first token: a handler in the middle streams `--tokens` upstream events per task;
//!   the latency from its send to an SSE client's receipt, p50 and p99.
//!
//! With `--python` (NATS or RabbitMQ), only the first-token latency, the way it ships: the
//! streaming handler is a Python generator (`benches/python/bench_handlers.py`) behind a
//! `troupe sidecar`, in the middle of three actors, and the latency runs from its `yield`
//! to the SSE client. It runs the release `troupe` binary next to this one:
//!
//! ```sh
//! cargo build --release -p troupe-cli --features nats,amqp
//! cargo run --release -p troupe-bench --features nats,amqp --bin troupe-bench-gateway -- --broker nats --python
//! ```

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use troupe::broker::{Broker, BrokerArgs};
use troupe::core::event::{EventHead, EventKind};
use troupe::core::headers::{MESH_STATUS, TASK};
use troupe::core::{EVENTS, EventSink};
use troupe::layers::{MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{
    CancellationToken, ConsumeOptions, Consumer, Delivery, Envelope, HandlerError, Outcome, PublishOptions,
    QueueAdmin, QueueNaming, Runner, RunnerConfig, SINK, Transport, handler_fn,
};
use troupe_bench::{cpu_time, envelope_through, noop_stack};
use troupe_gateway::{Gateway, GatewayConfig, Store, TaskState};

#[global_allocator]
static ALLOC: troupe_bench::Allocator = mimalloc::MiMalloc;

/// The gateway's throughput and overhead, and first-token latency.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The broker: memory, nats, amqp (real brokers need their Cargo feature).
    #[arg(long, default_value = "memory")]
    broker: Broker,
    #[command(flatten)]
    brokers: BrokerArgs,
    /// Tasks per scenario.
    #[arg(long, default_value_t = 5_000)]
    tasks: usize,
    /// Submissions (or raw envelopes) in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Tasks of the first-token scenario.
    #[arg(long, default_value_t = 200)]
    stream_tasks: usize,
    /// Upstream events per streaming task.
    #[arg(long, default_value_t = 5)]
    tokens: usize,
    /// Measure first-token latency with a Python generator behind `troupe sidecar`.
    #[arg(long)]
    python: bool,
    /// Keep tasks in PostgreSQL (a fresh schema per scenario on `TROUPE_POSTGRES_URL`,
    /// default `postgres://postgres@127.0.0.1:5432/test`) instead of a SQLite file.
    #[arg(long)]
    postgres: bool,
    /// Only the cost of events to the pipeline: raw with events off and on, alternated
    /// this many times, medians printed (one run of each is noisy on a shared machine).
    #[arg(long)]
    events_rounds: Option<usize>,
}

/// Where a scenario keeps its tasks: a SQLite file, or a fresh PostgreSQL schema.
async fn open_store(postgres: bool, file: &std::path::Path) -> Store {
    let store = if postgres {
        let url = troupe_gateway::testing::fresh_postgres_schema().await;
        Store::postgres(&url, &troupe::core::tls::TlsFiles::default()).await
    } else {
        Store::open(file).await
    };
    store.unwrap_or_else(|e| panic!("{e}"))
}

const LIMIT: Duration = Duration::from_secs(300);

struct Rig<T> {
    transport: T,
    naming: QueueNaming,
    stop: CancellationToken,
}

impl<T: Transport + QueueAdmin> Rig<T> {
    /// A fresh namespace with the pipeline `a -> b -> c` and, if `talk`, an actor `talk`
    /// that streams `tokens` upstream events per envelope.
    async fn start(transport: T, events: bool, tokens: usize) -> Self {
        let naming = QueueNaming::new("bench", &format!("gw{}", uuid::Uuid::new_v4().simple()))
            .unwrap_or_else(|e| panic!("naming: {e}"));
        let rig = Self {
            transport,
            naming,
            stop: CancellationToken::new(),
        };
        for actor in ["a", "b", "c", "talk", SINK, troupe::SUMP, EVENTS] {
            rig.ensure(actor).await;
        }
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = MeshMetrics::new(&mut registry);
        for actor in ["a", "b", "c"] {
            let sink = rig.sink(events);
            let runner = Runner::new(
                rig.transport.clone(),
                noop_stack(actor, &metrics, Arc::new(MemoryStore::default())),
                rig.config(actor),
            )
            .with_events(sink);
            rig.spawn(runner);
        }
        let sink = rig.sink(events);
        let talker = sink.clone();
        let talk = actor_stack(
            StackConfig {
                actor: "talk".into(),
                retry: RetryPolicies::default(),
                timeout: Duration::from_secs(30),
                store: Arc::new(MemoryStore::default()),
                metrics: metrics.actor("talk"),
            },
            handler_fn(move |e: Envelope| {
                let sink = talker.clone();
                async move {
                    // Time for the client to open its stream, so each token is live.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Some(head) = EventHead::of(&e, "talk") {
                        for seq in 0..tokens as u64 {
                            let data = json!({"token": seq});
                            sink.send(head.event(EventKind::Fly { seq, data })).await;
                            sink.flush().await;
                        }
                    }
                    Ok::<_, HandlerError>(Outcome::forward(e))
                }
            }),
        );
        let runner = Runner::new(rig.transport.clone(), talk, rig.config("talk")).with_events(sink);
        rig.spawn(runner);
        rig
    }

    fn sink(&self, on: bool) -> EventSink {
        if on {
            EventSink::start(self.transport.clone(), &self.naming).0
        } else {
            EventSink::off()
        }
    }

    fn config(&self, actor: &str) -> RunnerConfig {
        let mut config = RunnerConfig::new(actor);
        config.naming = self.naming.clone();
        config.concurrency = 64;
        config
    }

    fn spawn<S>(&self, runner: Runner<T, S>)
    where
        S: tower::Service<Envelope, Response = troupe::Dispatch> + Clone + Send + 'static,
        S::Error: Into<tower::BoxError> + Send,
        S::Future: Send,
    {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            if let Err(error) = runner.run(stop).await {
                eprintln!("runner failed: {error}");
            }
        });
    }

    async fn ensure(&self, actor: &str) {
        let queue = self.queue(actor);
        self.transport
            .ensure_queue(&queue)
            .await
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
    }

    fn queue(&self, actor: &str) -> String {
        self.naming.queue_for(actor).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Acknowledges everything on `actor`'s queue, counting it, until `stop`.
    fn drain(&self, actor: &str) -> tokio::task::JoinHandle<u64> {
        let (transport, queue, stop) = (self.transport.clone(), self.queue(actor), self.stop.clone());
        tokio::spawn(async move {
            let mut consumer = match transport.consume(&queue, ConsumeOptions::default()).await {
                Ok(consumer) => consumer,
                Err(error) => panic!("consume {queue}: {error}"),
            };
            let mut count = 0;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return count,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            count += 1;
                            let _ = delivery.ack().await;
                        }
                        _ => return count,
                    },
                }
            }
        })
    }
}

/// What the raw envelopes carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Plain envelopes: no task.
    Plain,
    /// Gateway tasks with their events switched off (`x-asya-mesh-status: off`).
    TasksQuiet,
    /// Gateway tasks reporting their events.
    Tasks,
}

/// Publishes `tasks` envelopes through `a -> b -> c` (as `kind` says) and waits for them
/// at `x-sink`; returns (seconds, CPU seconds).
async fn raw<T: Transport + QueueAdmin>(rig: &Rig<T>, args: &Args, kind: Raw) -> (f64, f64) {
    let events = rig.drain(EVENTS);
    let mut sink = rig
        .transport
        .consume(&rig.queue(SINK), ConsumeOptions::default())
        .await
        .unwrap_or_else(|e| panic!("consume x-sink: {e}"));
    let bodies: Vec<Bytes> = (0..args.tasks)
        .map(|_| {
            let mut env = envelope_through(&["a", "b", "c"], 256);
            if kind != Raw::Plain {
                env.headers.insert(TASK.into(), Value::String(env.id.clone()));
            }
            if kind == Raw::TasksQuiet {
                env.headers
                    .insert(MESH_STATUS.into(), Value::String("off".into()));
            }
            Bytes::from(env.to_vec())
        })
        .collect();
    let (cpu, start) = (cpu_time(), Instant::now());
    let queue = rig.queue("a");
    let producer = {
        let (transport, concurrency) = (rig.transport.clone(), args.concurrency);
        tokio::spawn(async move {
            futures_util::stream::iter(bodies)
                .for_each_concurrent(concurrency, |body| {
                    let (transport, queue) = (&transport, &queue);
                    async move {
                        if let Err(error) = transport.publish(queue, body, PublishOptions::default()).await {
                            panic!("publish: {error}");
                        }
                    }
                })
                .await;
        })
    };
    let mut arrived = 0;
    while arrived < args.tasks {
        match tokio::time::timeout(LIMIT, sink.next()).await {
            Ok(Some(Ok(delivery))) => {
                arrived += 1;
                let _ = delivery.ack().await;
            }
            other => panic!(
                "x-sink stalled after {arrived}: {:?}",
                other.map(|o| o.map(|r| r.err()))
            ),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu).as_secs_f64();
    let _ = producer.await;
    rig.stop.cancel();
    let _ = events.await;
    (elapsed, cpu)
}

struct GatewayRun {
    submitted_s: f64,
    completed_s: f64,
    cpu: f64,
}

async fn serve<T: Transport + QueueAdmin>(
    rig: &Rig<T>,
    args: &Args,
    database: &std::path::Path,
) -> (String, Store) {
    let store = open_store(args.postgres, database).await;
    let config = GatewayConfig {
        naming: rig.naming.clone(),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(rig.transport.clone(), store.clone(), config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let base = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let stop = rig.stop.clone();
    tokio::spawn(async move {
        if let Err(error) = gateway.serve(listener, stop).await {
            eprintln!("gateway: {error}");
        }
    });
    (base, store)
}

async fn through_gateway<T: Transport + QueueAdmin>(
    rig: &Rig<T>,
    args: &Args,
    database: &std::path::Path,
) -> GatewayRun {
    let (base, store) = serve(rig, args, database).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/api/v1/mesh");
    let body = json!({"route": ["a", "b", "c"], "payload": troupe_bench::payload_of(256)});
    let (cpu, start) = (cpu_time(), Instant::now());
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < args.tasks || !in_flight.is_empty() {
        while sent < args.tasks && in_flight.len() < args.concurrency {
            let request = client.post(&url).json(&body).send();
            in_flight.push(async move {
                match request.await {
                    Ok(response) if response.status().as_u16() == 201 => {}
                    Ok(response) => panic!("submission refused: {}", response.status()),
                    Err(error) => panic!("submission failed: {error}"),
                }
            });
            sent += 1;
        }
        in_flight.next().await;
    }
    let submitted_s = start.elapsed().as_secs_f64();
    loop {
        let counts = store.counts().await.unwrap_or_default();
        let done = counts
            .iter()
            .filter(|(s, _)| *s == TaskState::Succeeded)
            .map(|(_, n)| *n)
            .sum::<u64>();
        if done as usize >= args.tasks {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "only {done} of {} tasks finished",
            args.tasks
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let completed_s = start.elapsed().as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu).as_secs_f64();
    rig.stop.cancel();
    GatewayRun {
        submitted_s,
        completed_s,
        cpu,
    }
}

/// Milliseconds from each streamed token's send to its arrival at an SSE client.
async fn first_tokens<T: Transport + QueueAdmin>(
    rig: &Rig<T>,
    args: &Args,
    database: &std::path::Path,
) -> Histogram<u64> {
    let (base, _store) = serve(rig, args, database).await;
    let client = reqwest::Client::new();
    let mut latencies = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..args.stream_tasks {
        let created: Value = client
            .post(format!("{base}/api/v1/mesh"))
            .json(&json!({"route": ["a", "talk", "c"], "payload": 1}))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let id = created["id"].as_str().unwrap_or_default();
        follow_fly(&client, &base, id, |now, event| {
            if let Some(at) = event["at"]
                .as_str()
                .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
            {
                let sent = at.timestamp_micros() as f64 / 1e6;
                let _ = latencies.record(((now - sent).max(0.0) * 1e6) as u64);
            }
        })
        .await;
    }
    rig.stop.cancel();
    latencies
}

async fn transport(args: &Args) -> troupe::any_transport::AnyTransport {
    let config = args.brokers.config();
    config
        .connect_any(args.broker)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", args.broker))
}

/// Reads task `id`'s event stream to its end, calling `each` with the arrival time (Unix
/// seconds) and the data of every `fly` event.
async fn follow_fly(client: &reqwest::Client, base: &str, id: &str, mut each: impl FnMut(f64, &Value)) {
    let mut stream = client
        .get(format!("{base}/api/v1/mesh/{id}/events"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut text = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(LIMIT, stream.chunk())
        .await
        .unwrap_or_else(|_| panic!("stream of {id} stalled"))
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if !block.contains("event: fly") {
                continue;
            }
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .unwrap_or("{}");
            let event: Value = serde_json::from_str(data.trim()).unwrap_or_default();
            each(now, &event);
        }
    }
}

/// A child process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// First-token latency through Python runtimes behind `troupe sidecar` processes.
async fn python_tokens(args: &Args) -> (Histogram<u64>, Histogram<u64>) {
    let broker = args.broker;
    let namespace = format!("benchpy{}", std::process::id());
    let naming = QueueNaming::new("asya", &namespace).unwrap_or_else(|e| panic!("{e}"));
    let transport = transport(args).await;
    let dir = std::env::temp_dir().join(&namespace);
    let _ = std::fs::create_dir_all(&dir);
    let store = open_store(args.postgres, &dir.join("tasks.db")).await;
    let config = GatewayConfig {
        naming,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(transport, store, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let base = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let stop = CancellationToken::new();
    let serving = tokio::spawn(gateway.serve(listener, stop.clone()));

    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("no repository root"))
        .to_owned();
    let troupe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("troupe")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("build the troupe binary first: cargo build --release -p troupe-cli --features nats,amqp")
        });
    let pythonpath = format!(
        "{}:{}",
        repo.join("python").display(),
        repo.join("benches/python").display()
    );
    let mut children = Vec::new();
    for (actor, handler) in [("a", "passthrough"), ("talk", "talk"), ("c", "passthrough")] {
        let socket_dir = dir.join(actor);
        let _ = std::fs::create_dir_all(&socket_dir);
        let runtime = std::process::Command::new("python3")
            .args(["-m", "troupe_runtime"])
            .env("PYTHONPATH", &pythonpath)
            .env("ASYA_HANDLER", format!("bench_handlers.{handler}"))
            .env("ASYA_SOCKET_DIR", &socket_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3: {e}"));
        children.push(Child(runtime));
        let mut sidecar = std::process::Command::new(&troupe);
        sidecar
            .args([
                "sidecar",
                "--actor",
                actor,
                "--namespace",
                &namespace,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .arg("--socket-dir")
            .arg(&socket_dir)
            .args(["--transport", broker.name()])
            .env("RUST_LOG", "error");
        let config = args.brokers.config();
        let _ = &config;
        #[cfg(feature = "nats")]
        sidecar.args(["--nats-url", &config.nats.url]);
        #[cfg(feature = "amqp")]
        sidecar.args(["--amqp-url", &config.amqp.url]);
        children.push(Child(
            sidecar.spawn().unwrap_or_else(|e| panic!("troupe sidecar: {e}")),
        ));
    }

    let client = reqwest::Client::new();
    let mut latencies = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("{e}"));
    let mut firsts = latencies.clone();
    let body = json!({"route": ["a", "talk", "c"], "payload": {"tokens": args.tokens}});
    let ready_by = Instant::now() + Duration::from_secs(60);
    let mut done = 0;
    while done < args.stream_tasks {
        let response = client
            .post(format!("{base}/api/v1/mesh"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if response.status().as_u16() == 400 && Instant::now() < ready_by {
            // An actor's queue appears once its sidecar is up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let created: Value = response
            .error_for_status()
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let id = created["id"].as_str().unwrap_or_default();
        follow_fly(&client, &base, id, |now, event| {
            if let Some(yielded) = event["data"]["yielded_at"].as_f64() {
                let micros = ((now - yielded).max(0.0) * 1e6) as u64;
                let _ = latencies.record(micros);
                if event["data"]["token"] == 0 {
                    let _ = firsts.record(micros);
                }
            }
        })
        .await;
        done += 1;
    }
    stop.cancel();
    let _ = serving.await;
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
    (firsts, latencies)
}

fn main() {
    let args = Args::parse();
    if args.python {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let (firsts, all) = runtime.block_on(python_tokens(&args));
        println!(
            "Python yield -> SSE client on {}, {} tasks x {} tokens",
            args.broker, args.stream_tasks, args.tokens
        );
        for (what, h) in [("first token", &firsts), ("every token", &all)] {
            println!(
                "  {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.max() as f64 / 1e3
            );
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let dir = std::env::temp_dir().join(format!("troupe-bench-gateway-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    if let Some(rounds) = args.events_rounds {
        runtime.block_on(events_cost(&args, rounds.max(1)));
        return;
    }
    runtime.block_on(async {
        let t = transport(&args).await;
        let rig = Rig::start(t.clone(), false, args.tokens).await;
        let (off_s, off_cpu) = raw(&rig, &args, Raw::Plain).await;
        let rig = Rig::start(t.clone(), true, args.tokens).await;
        let (on_s, on_cpu) = raw(&rig, &args, Raw::Tasks).await;
        let rig = Rig::start(t.clone(), true, args.tokens).await;
        let gw = through_gateway(&rig, &args, &dir.join("tasks.db")).await;
        let rig = Rig::start(t.clone(), true, args.tokens).await;
        let tokens = first_tokens(&rig, &args, &dir.join("stream.db")).await;

        let n = args.tasks as f64;
        println!(
            "broker: {}, {} tasks, {} in flight, 2 runtime workers, {}",
            args.broker,
            args.tasks,
            args.concurrency,
            if args.postgres { "PostgreSQL" } else { "SQLite" }
        );
        println!();
        println!("| scenario | tasks/s | CPU ms per task |");
        println!("|---|---:|---:|");
        println!("| raw, events off | {:.0} | {:.3} |", n / off_s, off_cpu * 1e3 / n);
        println!("| raw, events on | {:.0} | {:.3} |", n / on_s, on_cpu * 1e3 / n);
        println!(
            "| gateway: submitted | {:.0} | |",
            n / gw.submitted_s
        );
        println!(
            "| gateway: completed | {:.0} | {:.3} |",
            n / gw.completed_s,
            gw.cpu * 1e3 / n
        );
        println!();
        println!(
            "events on keep {:.0} % of the raw throughput; the gateway completes tasks at {:.2}x the raw rate \
             and costs {:.3} CPU ms per task more",
            100.0 * off_s / on_s,
            off_s / gw.completed_s,
            (gw.cpu - off_cpu) * 1e3 / n
        );
        println!(
            "first token (handler send -> SSE client), {} tasks x {} tokens: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            args.stream_tasks,
            args.tokens,
            tokens.value_at_quantile(0.5) as f64 / 1e3,
            tokens.value_at_quantile(0.99) as f64 / 1e3,
            tokens.max() as f64 / 1e3
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Raw runs, alternated `rounds` times: plain envelopes, gateway tasks with events off
/// (`x-asya-mesh-status: off`) and with events on; prints each round and the medians.
async fn events_cost(args: &Args, rounds: usize) {
    let t = transport(args).await;
    let n = args.tasks as f64;
    let kinds = [Raw::Plain, Raw::TasksQuiet, Raw::Tasks];
    let mut runs: [Vec<(f64, f64)>; 3] = Default::default();
    println!(
        "broker: {}, {} tasks per run, {} in flight, 2 runtime workers; tasks/s (CPU µs per task)",
        args.broker, args.tasks, args.concurrency
    );
    println!();
    println!("| round | plain envelopes | tasks, events off | tasks, events on | on / off | on / plain |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let row = |label: &str, r: [(f64, f64); 3]| {
        println!(
            "| {label} | {:.0} ({:.1}) | {:.0} ({:.1}) | {:.0} ({:.1}) | {:.0} % | {:.0} % |",
            r[0].0,
            r[0].1,
            r[1].0,
            r[1].1,
            r[2].0,
            r[2].1,
            100.0 * r[2].0 / r[1].0,
            100.0 * r[2].0 / r[0].0
        );
    };
    for round in 1..=rounds {
        let mut r = [(0.0, 0.0); 3];
        for (i, kind) in kinds.into_iter().enumerate() {
            let rig = Rig::start(t.clone(), kind != Raw::Plain, args.tokens).await;
            let (secs, cpu) = raw(&rig, args, kind).await;
            r[i] = (n / secs, cpu * 1e6 / n);
            runs[i].push(r[i]);
        }
        row(&round.to_string(), r);
    }
    let median = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(pick).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let m = |i: usize| (median(&runs[i], |x| x.0), median(&runs[i], |x| x.1));
    let medians = [m(0), m(1), m(2)];
    row("median", medians);
    println!();
    println!(
        "events on keep {:.0} % of the throughput with them off ({:.0} % of plain envelopes'); medians of {rounds} rounds",
        100.0 * medians[2].0 / medians[1].0,
        100.0 * medians[2].0 / medians[0].0
    );
}
