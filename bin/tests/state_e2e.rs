//! Handler state with the shipped binaries on NATS and Redis: a Python handler counts words
//! across envelopes in state (`troupe_runtime.state`, compare-and-set), served by its
//! sidecar (`--state`); two replicas of the actor, one killed with SIGKILL mid-run and
//! restarted. The final counts are exact: no update lost between replicas, none counted
//! twice when the killed replica's envelopes are handled again.
//!
//! `TROUPE_STATE_ENVELOPES` sets the number of envelopes (10,000 by default).
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/sidecars.rs"]
mod sidecars;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::json;
use sidecars::{Broker, Proc, namespace, run_on, runtime_with, scratch, sidecar};
use troupe::core::tls::TlsFiles;
use troupe::core::{Envelope, QueueNaming, Route};
use troupe::layers::state::{RedisStateStore, StateLimits, StateStore};

fn redis_url() -> String {
    std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// One replica of the counting actor: its runtime and its sidecar, in `dir`.
fn replica(ns: &str, dir: &Path) -> (Proc, Proc) {
    let state_dir = dir.join("state");
    let state_socket = state_dir.join("troupe.sock").display().to_string();
    let runtime = runtime_with(dir, "count_words", &[("TROUPE_STATE_SOCKET", &state_socket)]);
    let state_dir = state_dir.display().to_string();
    let prefix = format!("troupe-state-e2e:{ns}:");
    let redis = redis_url();
    let sidecar = sidecar(
        Broker::Nats,
        ns,
        "count",
        dir,
        &[
            "--runtime-concurrency",
            "8",
            "--timeout",
            "10s",
            "--store",
            &redis,
            "--store-prefix",
            &prefix,
            "--state",
            "true",
            "--state-socket-dir",
            &state_dir,
        ],
    );
    (runtime, sidecar)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_count_exactly_through_a_kill_9() {
    run_on(Broker::Nats, async |_, mesh| {
        let count = std::env::var("TROUPE_STATE_ENVELOPES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000usize);
        // The actor's name is fixed, so its state is keyed by it: a namespace per run keeps
        // queues apart, and the counted words carry the run in their name.
        let ns = namespace("state", Broker::Nats);
        let dir = scratch(&ns);
        let naming = QueueNaming::new("asya", &ns).unwrap();
        for actor in ["count", "x-sink", "x-sump"] {
            mesh.ensure(naming.queue_for(actor).unwrap()).await;
        }
        let run = uuid::Uuid::new_v4().simple().to_string();
        let vocabulary: Vec<String> = (0..200).map(|i| format!("w{i}-{}", &run[..8])).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
        let mut replicas = vec![replica(&ns, &dir.join("a")), replica(&ns, &dir.join("b"))];
        let started = Instant::now();
        for _ in 0..count {
            let words: Vec<&str> = (0..rng.random_range(1..=5))
                .map(|_| vocabulary[rng.random_range(0..vocabulary.len())].as_str())
                .collect();
            for word in &words {
                *expected.entry(word).or_default() += 1;
            }
            let env = Envelope::new(Route::through(["count"]), json!({ "text": words.join(" ") }));
            mesh.send(naming.queue_for("count").unwrap(), env).await;
        }

        // Kill -9 replica a's sidecar at 40% of the envelopes, and restart it.
        let mut seen: HashSet<String> = HashSet::new();
        let mut counted = 0;
        let mut killed = false;
        let (replicas_ref, killed_ref, ns_ref, dir_ref) = (&mut replicas, &mut killed, &ns, &dir);
        mesh.collect(
            naming.queue_for("x-sink").unwrap(),
            Duration::from_secs(600),
            Box::new(move |got| {
                for env in &got[counted..] {
                    seen.insert(env["id"].as_str().unwrap().to_owned());
                }
                counted = got.len();
                if !*killed_ref && seen.len() >= count * 2 / 5 {
                    let (runtime, mut victim) = replicas_ref.remove(0);
                    victim.0.kill().unwrap();
                    let _ = victim.0.wait();
                    drop(runtime);
                    *killed_ref = true;
                    replicas_ref.push(replica(ns_ref, &dir_ref.join("a")));
                }
                seen.len() >= count && *killed_ref
            }),
        )
        .await;
        let elapsed = started.elapsed();
        let sump = mesh
            .collect(
                naming.queue_for("x-sump").unwrap(),
                Duration::from_secs(1),
                Box::new(|_| false),
            )
            .await;
        drop(replicas);

        let store = RedisStateStore::connect(
            &redis_url(),
            "troupe:state:",
            "count",
            StateLimits::default(),
            &TlsFiles::default(),
        )
        .await
        .unwrap();
        let mut wrong = Vec::new();
        for (word, n) in &expected {
            let found = store.get(&format!("troupe/words/{word}")).await.unwrap();
            let got = found
                .map(|v| {
                    serde_json::from_slice::<serde_json::Value>(&v.value).unwrap()["n"]
                        .as_u64()
                        .unwrap()
                })
                .unwrap_or(0);
            if got != *n {
                wrong.push(format!("{word}: {got} counted, {n} expected"));
            }
            store.delete(&format!("troupe/words/{word}")).await.unwrap();
        }
        let words: u64 = expected.values().sum();
        eprintln!(
            "state over NATS + Redis: {count} envelopes, {words} words counted by 2 replicas (one killed), \
             {} wrong counts, {} in x-sump, {elapsed:.1?} ({:.0} envelopes/s)",
            wrong.len(),
            sump.len(),
            count as f64 / elapsed.as_secs_f64()
        );
        assert!(killed, "a replica was killed mid-run");
        assert!(sump.is_empty(), "nothing failed: {sump:?}");
        assert!(wrong.is_empty(), "every count exact: {wrong:?}");
    })
    .await;
}

/// A handler written for Asya's state proxy (plain `open`, `os.listdir`, `os.stat`,
/// `os.unlink`, xattrs under a mounted path) runs unchanged behind the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asya_state_mounts_work_as_files() {
    run_on(Broker::Nats, async |_, mesh| {
        let ns = namespace("state-files", Broker::Nats);
        let dir = scratch(&ns);
        let naming = QueueNaming::new("asya", &ns).unwrap();
        for actor in ["notes", "x-sink", "x-sump"] {
            mesh.ensure(naming.queue_for(actor).unwrap()).await;
        }
        let state_dir = dir.join("state").display().to_string();
        let mounts = "notes:/state/notes:write=buffered";
        let _runtime = runtime_with(
            &dir,
            "notes",
            &[
                ("ASYA_STATE_PROXY_MOUNTS", mounts),
                ("TROUPE_STATE_SOCKET_DIR", &state_dir),
            ],
        );
        let redis = redis_url();
        let _sidecar = sidecar(
            Broker::Nats,
            &ns,
            "notes",
            &dir,
            &[
                "--store",
                &redis,
                "--state-mounts",
                mounts,
                "--state-socket-dir",
                &state_dir,
            ],
        );
        let name = format!("run-{}", uuid::Uuid::new_v4().simple());
        let env = Envelope::new(Route::through(["notes"]), json!({"name": name, "text": "hello"}));
        mesh.send(naming.queue_for("notes").unwrap(), env).await;
        let sink = mesh
            .collect(
                naming.queue_for("x-sink").unwrap(),
                Duration::from_secs(60),
                Box::new(|got| !got.is_empty()),
            )
            .await;
        let sump = mesh
            .collect(
                naming.queue_for("x-sump").unwrap(),
                Duration::from_secs(1),
                Box::new(|got| !got.is_empty()),
            )
            .await;
        assert!(sump.is_empty(), "{sump:?}");
        assert_eq!(
            sink.first().map(|e| e["payload"].clone()),
            Some(json!({
                "read": "hello!", "size": 6, "is_dir": true, "listing": ["today.txt"], "root": true,
                "lang": "en", "created_twice": false, "exists_after_unlink": false
            }))
        );
    })
    .await;
}
