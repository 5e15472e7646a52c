//! `troupe tail --count N` exits right after its last ack. On NATS an ack is a message the
//! client buffers, so a process that exits without flushing may leave it unsent, and the
//! next reader gets the same envelope again. Each run here reads one envelope; every run
//! must get a different one and the queue must end empty.
#![cfg(all(feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/sidecars.rs"]
mod sidecars;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sidecars::{Broker, namespace, nats_url, run_on};
use troupe::core::{Envelope, QueueAdmin, QueueNaming, Route};
use troupe::transports::{NatsConfig, NatsTransport};

const READS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tail_takes_a_different_envelope_and_leaves_none_unacked() {
    let ns = namespace("tail-acks", Broker::Nats);
    let queue = QueueNaming::new("asya", &ns)
        .unwrap()
        .queue_for("x-sink")
        .unwrap();
    run_on(Broker::Nats, async |_, mesh| {
        for n in 0..READS {
            mesh.send(
                queue.clone(),
                Envelope::new(Route::through(["a"]), json!({ "n": n })),
            )
            .await;
        }
    })
    .await;

    let mut seen = HashSet::new();
    for read in 0..READS {
        let out = Command::new(env!("CARGO_BIN_EXE_troupe"))
            .args([
                "tail",
                "x-sink",
                "--namespace",
                &ns,
                "--count",
                "1",
                "--idle-timeout",
                "20s",
            ])
            .args(["--transport", "nats", "--nats-url", &nats_url()])
            .env_remove("TROUPE_TRANSPORT")
            .env_remove("TROUPE_TAIL_STORE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env: Value = serde_json::from_slice(&out.stdout).unwrap();
        let n = env["payload"]["n"].as_u64().unwrap();
        assert!(
            seen.insert(n),
            "read {read} printed envelope {n} again: its ack was lost"
        );
    }

    // Acks that never left a process would show as messages still held (in flight) until
    // their lease ran out; give the server a moment to apply the ones that did.
    let transport = NatsTransport::connect(NatsConfig {
        url: nats_url(),
        ..NatsConfig::default()
    })
    .await
    .unwrap();
    let mut depth = transport.depth(&queue).await.unwrap();
    for _ in 0..20 {
        if depth.total() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        depth = transport.depth(&queue).await.unwrap();
    }
    assert_eq!(depth.total(), 0, "left on {queue}: {depth:?}");
}
