//! `troupe gateway` in front of Python actors behind `troupe sidecar` processes, over NATS
//! and RabbitMQ: submit over HTTP, follow the task's events (progress, streamed tokens, the
//! result), a failing task, a fan-out task, and a gateway killed with SIGKILL mid-run; two
//! gateway replicas on one PostgreSQL database.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/sidecars.rs"]
mod sidecars;

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sidecars::{Broker, Proc, amqp_url, namespace, nats_url, runtime, scratch, sidecar};

const WAIT: Duration = Duration::from_secs(60);

/// A `troupe gateway` process on a free port, storing tasks in `database` (a SQLite file
/// or a PostgreSQL URL).
fn gateway(broker: Broker, ns: &str, database: impl AsRef<OsStr>, port: u16) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_troupe"));
    cmd.args([
        "gateway",
        "--namespace",
        ns,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .arg("--database")
    .arg(database)
    .env_remove("TROUPE_TRANSPORT")
    .env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
    )
    .stdout(Stdio::null());
    match broker {
        Broker::Nats => cmd.args(["--transport", "nats", "--nats-url", &nats_url()]),
        Broker::Amqp => cmd.args(["--transport", "amqp", "--amqp-url", &amqp_url()]),
    };
    Proc(cmd.spawn().unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(base: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = reqwest::get(format!("{base}/readyz")).await
            && response.status().as_u16() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway at {base} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits until the gateway takes it: an actor's queue exists once its sidecar is up.
async fn submit(base: &str, body: Value) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = reqwest::Client::new()
            .post(format!("{base}/api/v1/mesh"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        if status == 201 {
            return answer["id"].as_str().unwrap().to_owned();
        }
        assert!(
            status == 400
                && answer["error"].as_str().unwrap_or("").contains("unknown actor")
                && Instant::now() < deadline,
            "submission refused: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn record(base: &str, id: &str) -> Value {
    reqwest::get(format!("{base}/api/v1/mesh/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn finished(base: &str, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let record = record(base, id).await;
        if ["succeeded", "failed", "canceled"].contains(&record["status"].as_str().unwrap_or("")) {
            return record;
        }
        assert!(Instant::now() < deadline, "task {id} not finished: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The task's event stream, read to its end: (event name, data) in order.
async fn follow(base: &str, id: &str) -> Vec<(String, Value)> {
    let mut response = reqwest::get(format!("{base}/api/v1/mesh/{id}/events"))
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the event stream of {id} did not end: {text}"));
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            Some((field("event:")?, serde_json::from_str(&field("data:")?).ok()?))
        })
        .collect()
}

async fn front_door(broker: Broker) {
    let ns = namespace("gateway", broker);
    let dir = scratch(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let database = dir.join("tasks.db");
    let mut gw = gateway(broker, &ns, &database, port);
    wait_ready(&base).await;
    // Actors start after the gateway, as the README's order has it.
    let mut procs = Vec::new();
    for (actor, handler) in [
        ("double", "double"),
        ("tokens", "tokens"),
        ("audit", "audit"),
        ("trouble", "trouble"),
        ("split", "split"),
    ] {
        let socket_dir = dir.join(actor);
        procs.push(runtime(&socket_dir, handler));
        procs.push(sidecar(
            broker,
            &ns,
            actor,
            &socket_dir,
            &["--gateway-url", &base],
        ));
    }

    // Three actors, the middle one streaming tokens.
    let id = submit(
        &base,
        json!({"route": ["double", "tokens", "audit"], "payload": {"n": 21}}),
    )
    .await;
    let events = follow(&base, &id).await;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let statuses: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "status")
        .filter_map(|(_, data)| data["status"].as_str())
        .collect();
    assert_eq!(statuses.last(), Some(&"succeeded"), "{names:?}");
    assert!(statuses.contains(&"running"), "{names:?}");
    let tokens: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "fly")
        .filter_map(|(_, data)| data["data"]["token"].as_str())
        .collect();
    assert_eq!(
        tokens,
        ["hello", "from", "troupe"],
        "token by token, in order: {names:?}"
    );
    let final_at = names.iter().rposition(|n| *n == "status").unwrap();
    let last_token = names.iter().rposition(|n| *n == "fly").unwrap();
    assert!(
        last_token < final_at,
        "the tokens come before the result: {names:?}"
    );
    let result = &events[final_at].1["result"];
    assert_eq!(
        (
            result["doubled"].clone(),
            result["said"].clone(),
            result["audited"].clone()
        ),
        (json!(42), json!("hello from troupe"), json!(true)),
        "{result}"
    );
    let hop_actors: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "hop")
        .filter_map(|(_, data)| data["actor"].as_str())
        .collect();
    for actor in ["double", "tokens", "audit"] {
        assert!(hop_actors.contains(&actor), "progress of {actor}: {hop_actors:?}");
    }

    // A failing handler fails the task with its error.
    let id = submit(
        &base,
        json!({"route": ["trouble"], "payload": {"mode": "fatal", "key": "f1"}}),
    )
    .await;
    let failed = finished(&base, &id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("can never be processed"),
        "{failed}"
    );

    // A fan-out (split adds audit to the route) succeeds only with both branches.
    let id = submit(&base, json!({"route": ["split", "double"], "payload": {"n": 1}})).await;
    let fanned = finished(&base, &id).await;
    assert_eq!(fanned["status"], "succeeded", "{fanned}");
    assert_eq!(fanned["progress"]["branches"], 2, "{fanned}");
    let parts: Vec<i64> = fanned["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["part"].as_i64())
        .collect();
    assert_eq!(parts.len(), 2, "{fanned}");

    // Cancel mid-pipeline: the runtime call hangs (20 s) and is abandoned; `audit` never
    // sees the task.
    let id = submit(
        &base,
        json!({"route": ["trouble", "audit"], "payload": {"mode": "hang", "key": "c1"}}),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while record(&base, &id).await["status"] != "running" {
        assert!(Instant::now() < deadline, "the hanging task never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let canceled: Value = reqwest::Client::new()
        .delete(format!("{base}/api/v1/mesh/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = record(&base, &id).await;
    assert_eq!(
        (
            after["status"].as_str(),
            after["progress"]["hops"].as_u64(),
            after["progress"]["branches_ended"].as_u64()
        ),
        (Some("canceled"), Some(0), Some(0)),
        "no hop finished and nothing reached the end after the cancel: {after}"
    );

    // SIGKILL the gateway with tasks in flight; after a restart every one ends right.
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            submit(
                &base,
                json!({"route": ["double", "tokens", "audit"], "payload": {"n": n}}),
            )
            .await,
        );
    }
    gw.0.kill().unwrap();
    gw.0.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _gw = gateway(broker, &ns, &database, port);
    wait_ready(&base).await;
    for (n, id) in ids.iter().enumerate() {
        let done = finished(&base, id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"]["doubled"], json!(n * 2), "{done}");
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_in_front_of_python_actors_over_nats() {
    front_door(Broker::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_in_front_of_python_actors_over_rabbitmq() {
    front_door(Broker::Amqp).await;
}

/// Two `troupe gateway` processes on one PostgreSQL database: tasks submitted on one are
/// followed, token by token, on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_replicas_on_postgresql_over_nats() {
    let broker = Broker::Nats;
    let ns = namespace("gateway-replicas", broker);
    let dir = scratch(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    let database = troupe_gateway::testing::fresh_postgres_schema().await;
    let (port_a, port_b) = (free_port(), free_port());
    let (a, b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let gw_a = gateway(broker, &ns, &database, port_a);
    let gw_b = gateway(broker, &ns, &database, port_b);
    wait_ready(&a).await;
    wait_ready(&b).await;
    let mut procs = Vec::new();
    for actor in ["double", "tokens", "audit"] {
        let socket_dir = dir.join(actor);
        procs.push(runtime(&socket_dir, actor));
        procs.push(sidecar(broker, &ns, actor, &socket_dir, &["--gateway-url", &a]));
    }
    for n in 0..5 {
        let id = submit(
            &a,
            json!({"route": ["double", "tokens", "audit"], "payload": {"n": n}}),
        )
        .await;
        let (on_b, on_a) = tokio::join!(follow(&b, &id), follow(&a, &id));
        let tokens: Vec<&str> = on_b
            .iter()
            .filter(|(name, _)| name == "fly")
            .filter_map(|(_, data)| data["data"]["token"].as_str())
            .collect();
        assert_eq!(tokens, ["hello", "from", "troupe"], "{on_b:?}");
        let (last, data) = on_b.last().unwrap();
        assert_eq!(
            (last.as_str(), &data["status"], &data["result"]["doubled"]),
            ("status", &json!("succeeded"), &json!(n * 2)),
            "{on_b:?}"
        );
        // After the record each read when it began: the same events on both.
        assert_eq!(on_b[1..], on_a[1..], "both replicas tell the same events");
        assert_eq!(record(&b, &id).await["status"], "succeeded");
    }
    // SIGKILL the recording replica with tasks in flight: the other takes over, and every
    // task submitted on it ends right.
    let recording = |metrics: String| metrics.lines().any(|l| l == "troupe_gateway_recording 1");
    let scrape = |base: String| async move {
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let (mut gw_a, mut gw_b) = (gw_a, gw_b);
    let (killed, survivor) = if recording(scrape(a.clone()).await) {
        (&mut gw_a, b.clone())
    } else {
        assert!(recording(scrape(b.clone()).await), "one replica records");
        (&mut gw_b, a.clone())
    };
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            submit(
                &survivor,
                json!({"route": ["double", "tokens", "audit"], "payload": {"n": n}}),
            )
            .await,
        );
    }
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    for (n, id) in ids.iter().enumerate() {
        let done = finished(&survivor, id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"]["doubled"], json!(n * 2), "{done}");
    }
    assert!(recording(scrape(survivor).await), "the survivor records");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// kill -9 of the last actor's sidecar with tasks in flight, the Redis store, NATS's
/// duplicate window off: the restarted last actor may send an output it had already
/// published to x-sink again (its store cannot absorb its own copy, issue 15's note), and
/// the gateway absorbs it: it records each branch's end once, by envelope id. Every task
/// ends succeeded with exactly its two branches and their two results.
async fn last_actor_killed(broker: Broker) {
    const TASKS: usize = 300;
    let ns = namespace("gateway-kill9", broker);
    let dir = scratch(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _gw = gateway(broker, &ns, dir.join("tasks.db"), port);
    wait_ready(&base).await;
    let redis = std::env::var("TROUPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("troupe-gateway-kill9:{ns}:");
    let mut extra = vec![
        "--runtime-concurrency",
        "16",
        "--timeout",
        "10s",
        "--store",
        &redis,
        "--store-prefix",
        &prefix,
        "--gateway-url",
        &base,
    ];
    if matches!(broker, Broker::Nats) {
        extra.extend(["--nats-message-ids", "false"]);
    }
    let mut runtimes = Vec::new();
    let mut sidecars = std::collections::HashMap::new();
    for actor in ["double", "split", "audit"] {
        runtimes.push(runtime(&dir.join(actor), actor));
        sidecars.insert(actor, sidecar(broker, &ns, actor, &dir.join(actor), &extra));
    }
    let mut ids = Vec::with_capacity(TASKS);
    for n in 0..TASKS {
        ids.push(submit(&base, json!({"route": ["double", "split"], "payload": {"n": n}})).await);
    }
    // Kill the last actor's sidecar once half the tasks are done, then restart it.
    let deadline = Instant::now() + WAIT;
    loop {
        let done: Value = reqwest::get(format!("{base}/api/v1/mesh?status=succeeded&limit=1000"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done["tasks"].as_array().map_or(0, Vec::len) >= TASKS / 2 {
            break;
        }
        assert!(Instant::now() < deadline, "half the tasks never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut victim = sidecars.remove("audit").unwrap();
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    sidecars.insert("audit", sidecar(broker, &ns, "audit", &dir.join("audit"), &extra));
    for (n, id) in ids.iter().enumerate() {
        let done = finished(&base, id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(
            (&done["progress"]["branches"], &done["progress"]["branches_ended"]),
            (&json!(2), &json!(2)),
            "each branch counted once: {done}"
        );
        let mut parts: Vec<(u64, u64)> = done["result"]
            .as_array()
            .unwrap_or_else(|| panic!("two results: {done}"))
            .iter()
            .map(|r| (r["n"].as_u64().unwrap(), r["part"].as_u64().unwrap()))
            .collect();
        parts.sort_unstable();
        assert_eq!(parts, [(n as u64, 0), (n as u64, 1)], "each result once: {done}");
    }
    drop(sidecars);
    drop(runtimes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_last_actor_s_copies_count_once_through_the_gateway() {
    last_actor_killed(Broker::Nats).await;
    last_actor_killed(Broker::Amqp).await;
}
