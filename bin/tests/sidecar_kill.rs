//! kill -9 of sidecars mid-run: a fan-out actor's and the last actor's, each killed once
//! (SIGKILL: no shutdown, no nacks, work in flight abandoned) and restarted against its
//! still-running Python runtime, as Kubernetes restarts a crashed container.
//!
//! The pipeline is `double -> split -> audit`: `split` fans each envelope out into two
//! (ids derived from the parent's), `audit` is the last actor. Every one of the 2 × N
//! outputs reaches x-sink (0 lost), under fan-out ids that a replay reproduces, nothing
//! goes to x-sump, and x-sink is read the way a user reads results, with `troupe tail`.
//!
//! With the Redis store the copies at x-sink are bounded by the hops the killed last actor
//! had in flight: its store cannot absorb a copy of its own output that it sends again
//! after a crash between the publish's confirmation and the record of it, since x-sink is
//! a queue with no actor in front of it. `troupe tail --store` is that actor: it records
//! what it printed, so every output is printed exactly once (asserted), and it reports the
//! copies it acked without printing. With the memory store, which a restart empties, the
//! fan-out actor's replays can reach a restarted last actor too and add to that bound;
//! x-sink is read raw there and its duplicates are reported. NATS runs with `Nats-Msg-Id`
//! off (`--nats-message-ids false`), so the broker's duplicate window absorbs nothing and
//! the stores alone are tested.
//!
//! `TROUPE_KILL_ENVELOPES` sets N (10,000 by default).
#![cfg(all(feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/sidecars.rs"]
mod sidecars;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sidecars::{Broker, Mesh, Proc, amqp_url, namespace, nats_url, run_on, runtime, scratch, sidecar};
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

/// `troupe tail x-sink` as a process, as a user reads results: its lines, and its log.
struct Tail {
    proc: Proc,
    lines: std::sync::mpsc::Receiver<String>,
    log: PathBuf,
}

impl Tail {
    /// With `dedup`, the reader keeps a record of what it printed in that store.
    fn start(broker: Broker, ns: &str, dir: &Path, dedup: Option<&str>) -> Tail {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("tail.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_troupe"));
        cmd.args(["tail", "x-sink", "--namespace", ns])
            .env_remove("TROUPE_TRANSPORT")
            .env_remove("TROUPE_TAIL_STORE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        match broker {
            Broker::Nats => cmd.args(["--transport", "nats", "--nats-url", &nats_url()]),
            Broker::Amqp => cmd.args(["--transport", "amqp", "--amqp-url", &amqp_url()]),
        };
        if let Some(url) = dedup {
            cmd.args([
                "--store",
                url,
                "--store-prefix",
                &format!("troupe-kill9-tail:{ns}:"),
            ]);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tail {
            proc: Proc(child),
            lines,
            log,
        }
    }

    /// The next line within `wait`.
    async fn next(&self, wait: Duration) -> Option<Value> {
        let line = tokio::task::block_in_place(|| self.lines.recv_timeout(wait).ok())?;
        Some(serde_json::from_str(&line).unwrap())
    }

    /// Stops it as Ctrl-C does and returns the copies it acked without printing them (a
    /// reader with a store counts them; a raw one prints them).
    fn stop(mut self) -> Option<u64> {
        let pid = self.proc.0.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.proc.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "troupe tail did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&self.log).unwrap();
        let done = log.lines().find(|l| l.contains("tail done"))?;
        let copies = done.split("copies=").nth(1).unwrap();
        Some(
            copies
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap(),
        )
    }
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
    // With the Redis store, x-sink is read as an effectively-once pipeline's results are:
    // by a reader that records what it printed; with the memory store, raw.
    let redis = redis_url();
    let dedup = (store == Store::Redis).then_some(redis.as_str());
    mesh.ensure(naming.queue_for("x-sink").unwrap()).await;
    let tail = Tail::start(broker, &ns, &dir.join("tail"), dedup);
    let started = Instant::now();
    for n in 0..count {
        let env = Envelope::new(Route::through(["double", "split"]), json!({ "n": n }));
        mesh.send(naming.queue_for("double").unwrap(), env).await;
    }

    // Kill the fan-out actor's sidecar at 20% of the outputs, the last actor's at 50%.
    let mut kills: Vec<(usize, &str)> = vec![(expected / 2, "audit"), (expected / 5, "split")];
    let mut killed = Vec::new();
    let mut per_output: HashMap<(u64, u64), u32> = HashMap::new();
    let mut per_id: HashMap<String, u32> = HashMap::new();
    let mut read = |env: Value| {
        let p = &env["payload"];
        *per_output
            .entry((p["n"].as_u64().unwrap(), p["part"].as_u64().unwrap()))
            .or_default() += 1;
        *per_id.entry(env["id"].as_str().unwrap().to_owned()).or_default() += 1;
        per_output.len()
    };
    let deadline = started + Duration::from_secs(600);
    let mut distinct = 0;
    while (distinct < expected || !kills.is_empty()) && Instant::now() < deadline {
        if let Some(env) = tail.next(Duration::from_secs(1)).await {
            distinct = read(env);
        }
        if let Some(&(at, actor)) = kills.last()
            && distinct >= at
        {
            kills.pop();
            let mut victim = sidecar_procs.remove(actor).unwrap();
            victim.0.kill().unwrap();
            let _ = victim.0.wait();
            killed.push(actor);
            sidecar_procs.insert(actor, start_sidecar(broker, &ns, actor, store));
        }
    }
    let elapsed = started.elapsed();
    // Anything redelivered late shows up now: NATS gives a dead consumer's deliveries out
    // again when their lease (30 s) ends, RabbitMQ as soon as the connection drops.
    let late_window = match broker {
        Broker::Nats => Duration::from_secs(35),
        Broker::Amqp => Duration::from_secs(5),
    };
    let late_end = Instant::now() + late_window;
    let mut late = 0;
    while let Some(wait) = late_end.checked_duration_since(Instant::now()) {
        if let Some(env) = tail.next(wait).await {
            read(env);
            late += 1;
        }
    }
    let copies = tail.stop();
    let sump = mesh
        .collect(
            naming.queue_for("x-sump").unwrap(),
            Duration::from_secs(2),
            Box::new(|_| false),
        )
        .await;
    drop(sidecar_procs);
    drop(runtimes);

    let printed_twice: u32 = per_output.values().map(|n| n - 1).sum();
    // Raw, every copy on x-sink is a line; read once, the copies are counted by the reader.
    let duplicates = match (store, copies) {
        (Store::Redis, Some(copies)) => copies,
        (Store::Redis, None) => panic!("`troupe tail --store` logged no summary"),
        (Store::Memory, _) => u64::from(printed_twice),
    };
    eprintln!(
        "kill -9 over {}, {} store: {count} envelopes, {} outputs expected, {} distinct, {} \
         duplicates at x-sink ({} printed twice by `troupe tail{}`; {late} late), {} in x-sump, \
         killed {killed:?}, {elapsed:.1?}",
        match broker {
            Broker::Nats => "NATS (Nats-Msg-Id off)",
            Broker::Amqp => "RabbitMQ",
        },
        store.name(),
        expected,
        per_output.len(),
        duplicates,
        printed_twice,
        if dedup.is_some() { " --store redis" } else { "" },
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
    if dedup.is_some() {
        assert_eq!(
            printed_twice, 0,
            "read with a store, every output is printed once"
        );
    }
    // With a durable store, a copy at x-sink can only come from the last actor: a copy the
    // fan-out actor sends again is dropped by the next actor's store. The last actor's
    // store cannot drop its own: killed after an output's publish was confirmed and before
    // the hop was marked published, it sends the recorded output again on the redelivery.
    // So at most the hops it had in flight come twice, and the reader absorbs them. With
    // the memory store the last actor forgets everything at its restart, so the fan-out
    // actor's replays (two children for each of its hops in flight when it was killed)
    // that reach it afterwards are new to it as well.
    let in_flight = RUNTIME_CONCURRENCY.parse::<u64>().unwrap();
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
