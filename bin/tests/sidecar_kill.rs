//! kill -9 of sidecars mid-run: a fan-out actor's and the last actor's, each killed once
//! (SIGKILL: no shutdown, no nacks, work in flight abandoned) and restarted against its
//! still-running Python runtime, as Kubernetes restarts a crashed container.
//!
//! The pipeline is `double -> split -> audit`: `split` fans each envelope out into two
//! (ids derived from the parent's), `audit` is the last actor. Every one of the 2 × N
//! outputs reaches x-sink (0 lost), under fan-out ids that a replay reproduces, nothing
//! goes to x-sump, and the duplicates at x-sink are counted and reported for each store.
//! With the Redis store they are bounded by the hops the killed last actor had in flight:
//! its store cannot absorb a copy of its own output that it sends again after a crash
//! between the publish's confirmation and the record of it (x-sink is a queue, with no
//! store in front of it), so 0 duplicates at x-sink needs a deduplicating reader of x-sink
//! (issue 15's note). With the memory store, which a restart empties, the fan-out actor's
//! replays can reach a restarted last actor too, and add to that bound. NATS runs with `Nats-Msg-Id` off (`--nats-message-ids false`), so the broker's
//! duplicate window absorbs nothing and the store alone is tested.
//!
//! `TROUPE_KILL_ENVELOPES` sets N (10,000 by default).
#![cfg(all(feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/sidecars.rs"]
mod sidecars;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use sidecars::{Broker, Mesh, Proc, namespace, run_on, runtime, scratch, sidecar};
use troupe::core::{Envelope, QueueNaming, Route};

/// Where the sidecars keep hop records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Redis,
    Memory,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Redis => "redis",
            Store::Memory => "memory",
        }
    }
}

fn redis_url() -> String {
    std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn envelopes() -> usize {
    std::env::var("TROUPE_KILL_ENVELOPES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

/// Deliveries each sidecar works on at once.
const RUNTIME_CONCURRENCY: &str = "16";

/// The pipeline's actors: (actor, handler).
const ACTORS: [(&str, &str); 3] = [("double", "double"), ("split", "split"), ("audit", "audit")];

/// Starts `actor`'s sidecar against its runtime's socket.
fn start_sidecar(broker: Broker, ns: &str, actor: &str, store: Store) -> Proc {
    let socket_dir = std::env::temp_dir().join(ns).join(actor);
    let prefix = format!("troupe-kill9:{ns}:");
    let store_url = match store {
        Store::Redis => redis_url(),
        Store::Memory => "memory".to_owned(),
    };
    let mut extra = vec![
        "--runtime-concurrency",
        RUNTIME_CONCURRENCY,
        "--timeout",
        "10s",
        "--store",
        &store_url,
        "--store-prefix",
        &prefix,
    ];
    if matches!(broker, Broker::Nats) {
        extra.extend(["--nats-message-ids", "false"]);
    }
    sidecar(broker, ns, actor, &socket_dir, &extra)
}

async fn kill_sidecars(broker: Broker, mesh: Box<dyn Mesh>, store: Store) {
    let count = envelopes();
    let expected = 2 * count;
    let ns = namespace(&format!("kill9-{}", store.name()), broker);
    let dir = scratch(&ns);
    let naming = QueueNaming::new("asya", &ns).unwrap();
    let mut runtimes = Vec::new();
    let mut sidecar_procs: HashMap<&str, Proc> = HashMap::new();
    for (actor, handler) in ACTORS {
        runtimes.push(runtime(&dir.join(actor), handler));
        sidecar_procs.insert(actor, start_sidecar(broker, &ns, actor, store));
        mesh.ensure(naming.queue_for(actor).unwrap()).await;
    }
    let started = Instant::now();
    for n in 0..count {
        let env = Envelope::new(Route::through(["double", "split"]), json!({ "n": n }));
        mesh.send(naming.queue_for("double").unwrap(), env).await;
    }

    // Kill the fan-out actor's sidecar at 20% of the outputs, the last actor's at 50%.
    let mut kills: Vec<(usize, &str)> = vec![(expected / 2, "audit"), (expected / 5, "split")];
    let mut killed = Vec::new();
    let mut distinct: HashMap<(u64, u64), u32> = HashMap::new();
    let mut counted = 0;
    // Borrowed, not moved: the sidecars must outlive this collection, to process late
    // redeliveries in the one after it.
    let (ns_ref, killed_ref, running) = (&ns, &mut killed, &mut sidecar_procs);
    let sink = mesh
        .collect(
            naming.queue_for("x-sink").unwrap(),
            Duration::from_secs(600),
            Box::new(move |got| {
                for env in &got[counted..] {
                    let p = &env["payload"];
                    if let (Some(n), Some(part)) = (p["n"].as_u64(), p["part"].as_u64()) {
                        *distinct.entry((n, part)).or_default() += 1;
                    }
                }
                counted = got.len();
                if let Some(&(at, actor)) = kills.last()
                    && distinct.len() >= at
                {
                    kills.pop();
                    let mut victim = running.remove(actor).unwrap();
                    victim.0.kill().unwrap();
                    let _ = victim.0.wait();
                    killed_ref.push(actor);
                    running.insert(actor, start_sidecar(broker, ns_ref, actor, store));
                }
                distinct.len() >= expected && kills.is_empty()
            }),
        )
        .await;
    let elapsed = started.elapsed();
    // Anything redelivered late shows up now: NATS gives a dead consumer's deliveries out
    // again when their lease (30 s) ends, RabbitMQ as soon as the connection drops.
    let late_window = match broker {
        Broker::Nats => Duration::from_secs(35),
        Broker::Amqp => Duration::from_secs(5),
    };
    let late = mesh
        .collect(
            naming.queue_for("x-sink").unwrap(),
            late_window,
            Box::new(|_| false),
        )
        .await;
    let sump = mesh
        .collect(
            naming.queue_for("x-sump").unwrap(),
            Duration::from_secs(2),
            Box::new(|_| false),
        )
        .await;
    drop(sidecar_procs);
    drop(runtimes);

    let mut per_output: HashMap<(u64, u64), u32> = HashMap::new();
    let mut per_id: HashMap<String, u32> = HashMap::new();
    for env in sink.iter().chain(&late) {
        let p = &env["payload"];
        *per_output
            .entry((p["n"].as_u64().unwrap(), p["part"].as_u64().unwrap()))
            .or_default() += 1;
        *per_id.entry(env["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let duplicates: u32 = per_output.values().map(|n| n - 1).sum();
    eprintln!(
        "kill -9 over {}, {} store: {count} envelopes, {} outputs expected, {} distinct and {} \
         duplicates at x-sink ({} late), {} in x-sump, killed {killed:?}, {elapsed:.1?}",
        match broker {
            Broker::Nats => "NATS (Nats-Msg-Id off)",
            Broker::Amqp => "RabbitMQ",
        },
        store.name(),
        expected,
        per_output.len(),
        duplicates,
        late.len(),
        sump.len(),
    );
    assert_eq!(killed, ["split", "audit"], "both sidecars were killed mid-run");
    assert_eq!(per_output.len(), expected, "every output reached x-sink: 0 lost");
    assert_eq!(
        per_id.len(),
        expected,
        "fan-out children's ids are derived, so a replay reuses them"
    );
    assert!(sump.is_empty(), "nothing went to x-sump: {sump:?}");
    // With a durable store, a duplicate at x-sink can only come from the last actor: a copy
    // the fan-out actor sends again is dropped by the next actor's store. The last actor's
    // store cannot drop its own: killed after an output's publish was confirmed and before
    // the hop was marked published, it sends the recorded output again on the redelivery,
    // and x-sink is a queue with no store in front of it. So at most the hops it had in
    // flight come twice. With the memory store the last actor forgets everything at its
    // restart, so the fan-out actor's replays (two children for each of its hops in flight
    // when it was killed) that reach it afterwards are new to it as well.
    let in_flight = RUNTIME_CONCURRENCY.parse::<u32>().unwrap();
    let bound = match store {
        Store::Redis => in_flight,
        Store::Memory => in_flight + 2 * in_flight,
    };
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates: more than the {bound} copies the killed actors' hops in flight can explain"
    );
}

/// The four runs one after another (in parallel they would share two cores between twelve
/// processes): Redis then memory store, on NATS then on RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_fan_out_and_the_last_sidecar_loses_nothing() {
    for broker in [Broker::Nats, Broker::Amqp] {
        for store in [Store::Redis, Store::Memory] {
            run_on(broker, async |b, mesh| kill_sidecars(b, mesh, store).await).await;
        }
    }
}
