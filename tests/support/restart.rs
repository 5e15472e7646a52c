//! The broker restart scenario, shared by one test file per broker: a 3-actor pipeline
//! over a real broker carries 3,000 envelopes while the broker itself is stopped and
//! started again. The mesh must reconnect (publishers, consumers, the delay path) and every
//! envelope must still reach `x-sink`.
//!
//! This restarts the broker of the machine it runs on (which is why it sits behind the
//! `failure-tests` feature): the same program, with the same arguments and data directory.
#![allow(dead_code)]

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use troupe::broker::{Broker, WithTransport};
use troupe::layers::{MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{
    CancellationToken, Consumer, Delivery, Envelope, HandlerError, Outcome, QueueAdmin, QueueNaming, Runner,
    RunnerConfig, SINK, SUMP, Transport, handler_fn,
};

use super::brokers;

const ENVELOPES: usize = 3_000;

/// Runs the scenario on `broker`, restarting it with `restart` once a third has arrived.
pub async fn restart_mid_run(broker: Broker, restart: fn()) {
    let namespace = format!("restart{}", std::process::id());
    brokers::failure_test_brokers()
        .connect(broker, Scenario { namespace, restart })
        .await
        .unwrap_or_else(|e| panic!("{broker} must be running (bash .ci/run starts it): {e}"));
}

struct Scenario {
    namespace: String,
    restart: fn(),
}

impl WithTransport for Scenario {
    type Output = ();

    async fn run<T: Transport + QueueAdmin>(self, transport: T) {
        scenario(transport, self.namespace, self.restart).await;
    }
}

async fn scenario<T: Transport + QueueAdmin>(transport: T, namespace: String, restart: fn()) {
    let naming = QueueNaming::new("asya", &namespace).unwrap();
    for actor in ["a", "b", "c", SINK, SUMP] {
        transport
            .ensure_queue(&naming.queue_for(actor).unwrap())
            .await
            .unwrap();
    }
    let store = Arc::new(MemoryStore::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry);
    let token = CancellationToken::new();
    let mut runners = Vec::new();
    for actor in ["a", "b", "c"] {
        let stack = actor_stack(
            StackConfig {
                actor: actor.into(),
                retry: RetryPolicies::default(),
                timeout: Duration::from_secs(5),
                store: store.clone(),
                metrics: metrics.actor(actor),
            },
            handler_fn(|e: Envelope| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, HandlerError>(Outcome::forward(e))
            }),
        );
        let mut cfg = RunnerConfig::new(actor);
        cfg.naming = naming.clone();
        cfg.consume.lease = Duration::from_secs(5);
        cfg.redelivery_delay = Duration::from_millis(200);
        runners.push(tokio::spawn(
            Runner::new(transport.clone(), stack, cfg).run(token.clone()),
        ));
    }

    let sent = super::common::send_through(
        &transport,
        &naming,
        &["a", "b", "c"],
        (0..ENVELOPES).map(|i| json!({ "n": i })),
    )
    .await;
    let mut sink = super::common::sink_of(&transport, &naming).await;
    let mut seen = HashSet::new();
    let mut restarted = false;
    let mut receive_errors = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while seen.len() < ENVELOPES {
        match tokio::time::timeout_at(deadline, sink.next()).await {
            Ok(Some(Ok(d))) => {
                let env = Envelope::from_slice(d.body(), &Default::default()).unwrap();
                // The broker may go away between delivery and ack; the sink then sees the
                // envelope again, which this test (about loss) tolerates.
                let _ = d.ack().await;
                seen.insert(env.id);
            }
            // The sink's own subscription breaks with the broker; it re-subscribes.
            Ok(Some(Err(_))) => {
                receive_errors += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => panic!("the sink consumer closed"),
            Err(_) => panic!(
                "only {} of {ENVELOPES} envelopes reached x-sink (restarted: {restarted})",
                seen.len()
            ),
        }
        if !restarted && seen.len() >= ENVELOPES / 3 {
            tokio::task::spawn_blocking(restart).await.unwrap();
            restarted = true;
        }
    }
    token.cancel();
    for r in runners {
        let _ = r.await.unwrap();
    }
    assert!(restarted);
    // Some clients reconnect under the consumer without a receive error (async-nats does);
    // that the broker really went away is checked by `restart` itself.
    eprintln!("sink receive errors during the restart: {receive_errors}");
    assert_eq!(seen, sent, "every envelope reached x-sink");
}

/// Waits until 127.0.0.1:`port` accepts connections; panics after `within`.
pub fn wait_for_port(port: u16, within: Duration) {
    let give_up = std::time::Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < give_up,
            "nothing listens on 127.0.0.1:{port} {within:?} after the restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `program args`, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pid and command line of the running process named `name`.
pub fn find_process(name: &str) -> (u32, Vec<String>) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv
            .first()
            .is_some_and(|p| std::path::Path::new(p).file_name().is_some_and(|f| f == name))
        {
            return (pid, argv);
        }
    }
    panic!("no {name} process is running on this machine; the restart test restarts the local broker");
}
