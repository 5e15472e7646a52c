//! `preprocess (Rust handler) -> infer (the troupe-gpu-worker binary, the MLP fixture on
//! libtorch) -> postprocess (Rust handler)` over a real NATS JetStream server: 1,000
//! envelopes reach `x-sink`, each with Python's output for its input and the right label.
//! Address from `TROUPE_NATS_URL`.
#![cfg(all(feature = "torch", feature = "nats"))]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use troupe::layers::{MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::transports::{NatsConfig, NatsTransport};
use troupe::{
    CancellationToken, Envelope, HandlerError, Outcome, Phase, QueueNaming, Runner, RunnerConfig, SINK,
    handler_fn,
};

const COUNT: usize = 1_000;
const TOLERANCE: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// The MLP's inputs and Python's outputs, from `fixtures/expected.json`.
fn mlp_cases() -> Vec<(Vec<f64>, Vec<f64>)> {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    let expected: Value = serde_json::from_str(&text).expect("expected.json is JSON");
    let numbers = |v: &Value| -> Vec<f64> {
        v.as_array()
            .expect("an array")
            .iter()
            .map(|x| x.as_f64().expect("a number"))
            .collect()
    };
    expected["mlp"]
        .as_array()
        .expect("mlp cases")
        .iter()
        .map(|case| (numbers(&case["input"]), numbers(&case["output"])))
        .collect()
}

fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Runs `actor` in-process with the standard stack.
fn spawn_actor<F, Fut>(
    transport: &NatsTransport,
    naming: &QueueNaming,
    actor: &str,
    f: F,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Envelope) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let stack = actor_stack(
        StackConfig {
            actor: actor.into(),
            retry: RetryPolicies::default(),
            timeout: Duration::from_secs(30),
            store: std::sync::Arc::new(MemoryStore::default()),
            metrics: metrics.actor(actor),
        },
        handler_fn(f),
    );
    let mut config = RunnerConfig::new(actor);
    config.naming = naming.clone();
    let runner = Runner::new(transport.clone(), stack, config);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        runner.run(shutdown).await.expect("runner starts");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preprocess_infer_postprocess_over_nats_delivers_a_thousand_correct_outputs() {
    let url = std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let transport = NatsTransport::connect(NatsConfig {
        url: url.clone(),
        ..NatsConfig::default()
    })
    .await
    .expect("NATS with JetStream must be running (bash .ci/run starts it)");
    let namespace = format!("gpu{}", std::process::id());
    let naming = QueueNaming::new("asya", &namespace).expect("naming");

    let port = free_port();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_troupe-gpu-worker"))
        .args(["--model", &fixture("mlp.pt").display().to_string()])
        .args(["--device", "cpu", "--actor", "infer", "--namespace", &namespace])
        .args(["--transport", "nats", "--nats-url", &url])
        .args([
            "--input-shape",
            "[4]",
            "--max-batch-size",
            "16",
            "--max-queue-delay",
            "2ms",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn,troupe_gpu_worker=info")
        .env("TROUPE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts");
    // Read all the time, so that the worker never blocks on a full pipe.
    let logs = {
        let mut stderr = worker.stderr.take().expect("stderr piped");
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
            text
        })
    };
    let started = Instant::now();
    loop {
        if let Some((200, _)) = get(&format!("http://127.0.0.1:{port}/readyz")).await {
            break;
        }
        if let Ok(Some(status)) = worker.try_wait() {
            panic!("the worker exited before it was ready: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the worker was not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let shutdown = CancellationToken::new();
    // The raw input is twice the model's: halving is exact in binary floating point, so the
    // model sees exactly the fixture's input.
    let preprocess = spawn_actor(
        &transport,
        &naming,
        "preprocess",
        |mut e: Envelope| async move {
            let raw = e.payload["raw"]
                .as_array()
                .ok_or_else(|| HandlerError::new("ValueError", "no raw"))?;
            let input: Vec<f64> = raw.iter().filter_map(Value::as_f64).map(|x| x / 2.0).collect();
            e.payload["input"] = json!(input);
            Ok(Outcome::forward(e))
        },
        &shutdown,
    );
    let postprocess = spawn_actor(
        &transport,
        &naming,
        "postprocess",
        |mut e: Envelope| async move {
            let output: Vec<f64> = e.payload["output"]
                .as_array()
                .ok_or_else(|| HandlerError::new("ValueError", "no output"))?
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            e.payload["label"] = json!(argmax(&output));
            Ok(Outcome::forward(e))
        },
        &shutdown,
    );

    let cases = mlp_cases();
    let payloads = (0..COUNT).map(|i| {
        let (input, _) = &cases[i % cases.len()];
        json!({"case": i % cases.len(), "raw": input.iter().map(|x| x * 2.0).collect::<Vec<_>>()})
    });
    let sent = support::send_through(
        &transport,
        &naming,
        &["preprocess", "infer", "postprocess"],
        payloads,
    )
    .await;
    let arrived = support::collect(&transport, &naming, SINK, COUNT, Duration::from_secs(180)).await;

    let mut ids = HashSet::new();
    for envelope in &arrived {
        assert!(
            ids.insert(envelope.id.clone()),
            "{} reached x-sink twice",
            envelope.id
        );
        assert_eq!(
            envelope.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Succeeded)
        );
        assert_eq!(envelope.route.prev(), ["preprocess", "infer", "postprocess"]);
        let case = envelope.payload["case"].as_u64().expect("case kept") as usize;
        let (_, expected) = &cases[case];
        let output: Vec<f64> = envelope.payload["output"]
            .as_array()
            .expect("output")
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert_eq!(output.len(), expected.len(), "case {case}");
        for (got, want) in output.iter().zip(expected) {
            assert!(
                (got - want).abs() <= TOLERANCE,
                "case {case}: got {output:?}, Python gave {expected:?}"
            );
        }
        assert_eq!(envelope.payload["label"], json!(argmax(expected)), "case {case}");
    }
    assert_eq!(ids, sent.iter().map(|e| e.id.clone()).collect::<HashSet<_>>());

    // The worker batched: more envelopes than forward passes.
    let (_, metrics) = get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("/metrics answers");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let (envelopes, batches) = (
        value("troupe_gpu_batch_size_sum"),
        value("troupe_gpu_batch_size_count"),
    );
    // The warm-up runs the model directly, not through the batcher.
    assert_eq!(envelopes, COUNT as f64, "{metrics}");
    assert!(
        batches < envelopes,
        "{batches} forward passes for {envelopes} envelopes"
    );

    // SIGTERM: the worker drains and exits cleanly.
    let pid = worker.id().expect("running").to_string();
    let signalled = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    assert!(signalled.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    let exit = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops within 30 s of SIGTERM")
        .expect("wait");
    assert!(exit.success(), "the worker exits 0 after SIGTERM: {exit}");

    // It said where the model runs, and warmed it up at batch sizes 1 and the largest.
    let logs = logs.await.expect("stderr reader");
    let events: Vec<Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .collect();
    let event = |message: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} event in:\n{logs}"))
    };
    assert_eq!(event("model loaded")["fields"]["device"], "Cpu", "{logs}");
    assert_eq!(event("warmed up")["fields"]["sizes"], "[1, 16]", "{logs}");
    shutdown.cancel();
    let _ = tokio::join!(preprocess, postprocess);
}
