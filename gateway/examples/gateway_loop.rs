//! The whole loop in one process: a 3-actor pipeline on the embedded broker, the gateway in
//! front of it, a task submitted over HTTP and its live events printed as they come.
//!
//! ```sh
//! cargo run -p troupe-gateway --example gateway_loop
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use troupe_core::event::{EventHead, EventKind};
use troupe_core::{
    CancellationToken, Envelope, EventSink, HandlerError, Outcome, QueueNaming, Runner, RunnerConfig,
    handler_fn, payload_fn,
};
use troupe_gateway::{Gateway, GatewayConfig, Store};
use troupe_layers::{MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe_transports::memory::MemoryTransport;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let broker = MemoryTransport::default();
    let naming = QueueNaming::default();
    let stop = CancellationToken::new();

    // The gateway first: it creates the queues it reads (x-sink, x-sump, task events).
    let gateway = Gateway::new(
        broker.clone(),
        Store::in_memory().await?,
        GatewayConfig::default(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let serving = tokio::spawn(gateway.serve(listener, stop.clone()));
    println!("gateway on {base}");

    // Three actors, each reporting task events; `think` streams tokens upstream.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let mut runners = Vec::new();
    for actor in ["clean", "think", "shout"] {
        troupe_core::ensure_actor_queues(&broker, &naming, actor).await?;
        let (events, _) = EventSink::start(broker.clone(), &naming);
        let config = StackConfig {
            actor: actor.into(),
            retry: RetryPolicies::default(),
            timeout: Duration::from_secs(10),
            store: Arc::new(MemoryStore::default()),
            metrics: metrics.actor(actor),
        };
        let runner = RunnerConfig::new(actor);
        let stop = stop.clone();
        match actor {
            "clean" => {
                let stack = actor_stack(
                    config,
                    payload_fn(|p: Value| async move {
                        let text = p["text"].as_str().unwrap_or_default().trim().to_lowercase();
                        Ok::<_, HandlerError>(json!({"text": text}))
                    }),
                );
                let runner = Runner::new(broker.clone(), stack, runner).with_events(events);
                runners.push(tokio::spawn(async move { runner.run(stop).await.map(drop) }));
            }
            "think" => {
                let sink = events.clone();
                let stack = actor_stack(
                    config,
                    handler_fn(move |mut e: Envelope| {
                        let sink = sink.clone();
                        async move {
                            let words: Vec<String> = e.payload["text"]
                                .as_str()
                                .unwrap_or_default()
                                .split_whitespace()
                                .map(str::to_owned)
                                .collect();
                            if let Some(head) = EventHead::of(&e, "think") {
                                for (seq, word) in words.iter().enumerate() {
                                    tokio::time::sleep(Duration::from_millis(150)).await;
                                    let data = json!({"token": word});
                                    sink.send(head.event(EventKind::Fly {
                                        seq: seq as u64,
                                        data,
                                    }))
                                    .await;
                                }
                                sink.flush().await;
                            }
                            e.payload["words"] = json!(words.len());
                            Ok::<_, HandlerError>(Outcome::forward(e))
                        }
                    }),
                );
                let runner = Runner::new(broker.clone(), stack, runner).with_events(events);
                runners.push(tokio::spawn(async move { runner.run(stop).await.map(drop) }));
            }
            _ => {
                let stack = actor_stack(
                    config,
                    payload_fn(|mut p: Value| async move {
                        let loud = p["text"].as_str().unwrap_or_default().to_uppercase();
                        p["text"] = json!(loud);
                        Ok::<_, HandlerError>(p)
                    }),
                );
                let runner = Runner::new(broker.clone(), stack, runner).with_events(events);
                runners.push(tokio::spawn(async move { runner.run(stop).await.map(drop) }));
            }
        }
    }

    // What a client does: submit, then follow the task's events to the end.
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{base}/api/v1/mesh"))
        .json(&json!({"route": ["clean", "think", "shout"], "payload": {"text": "  Hello from the Troupe gateway "}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    println!("submitted task {id}\n");
    let mut stream = client
        .get(format!("{base}/api/v1/mesh/{id}/events"))
        .send()
        .await?;
    let mut pending = String::new();
    let mut result = Value::Null;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), stream.chunk()).await?? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name).map(str::trim));
            let (Some(event), Some(data)) = (field("event:"), field("data:")) else {
                continue;
            };
            let data: Value = serde_json::from_str(data)?;
            match event {
                "task" => println!(
                    "{:>8}  task {} on route {}",
                    "record", data["status"], data["route"]
                ),
                "status" => {
                    println!("{:>8}  {}", "status", data["status"]);
                    if data.get("result").is_some() {
                        result = data["result"].clone();
                    }
                }
                "started" => println!("{:>8}  {} started", "started", data["actor"]),
                "hop" => println!("{:>8}  {} -> {}", "hop", data["actor"], data["outputs"][0]["to"]),
                "fly" => println!("{:>8}  {}", "token", data["data"]["token"]),
                other => println!("{other:>8}  {data}"),
            }
        }
    }
    println!("\nresult: {result}");
    stop.cancel();
    for runner in runners {
        runner.await??;
    }
    serving.await??;
    if result["text"] != "HELLO FROM THE TROUPE GATEWAY" {
        return Err(format!("unexpected result {result}").into());
    }
    Ok(())
}
