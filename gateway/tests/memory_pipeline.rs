//! The gateway in front of a pipeline on the in-memory broker, in one process: submission,
//! records, live events, fan-out, failure, refusals, and catching up after a restart.

#![allow(clippy::unwrap_used)] // test helpers unwrap: a failure is a test failure

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use troupe_core::{
    CancellationToken, ConsumeOptions, Control, ControlState, Envelope, EventSink, HandlerError, Outcome,
    QueueAdmin, QueueNaming, Runner, RunnerConfig, handler_fn, payload_fn,
};
use troupe_gateway::{Gateway, GatewayConfig, Store};
use troupe_layers::{MemoryStore, MeshMetrics, RetryPolicies, RetryPolicy, StackConfig, actor_stack};
use troupe_transports::memory::MemoryTransport;

const WAIT: Duration = Duration::from_secs(20);

/// A pipeline of three actors on one memory broker: `double`, `split` (two children) and
/// `fail` (always raises), each reporting task events.
struct Pipeline {
    transport: MemoryTransport,
    stop: CancellationToken,
    runners: Vec<JoinHandle<()>>,
    /// What every runner knows of canceled and paused tasks.
    control: Control,
    /// Calls of `slow` that ran to the end.
    slow_done: Arc<AtomicUsize>,
}

impl Pipeline {
    async fn start() -> Self {
        let transport = MemoryTransport::default();
        // As deployed, the gateway's queues come first (an actor that starts before them
        // drops its events until they exist).
        for actor in [troupe_core::EVENTS, troupe_core::SINK, troupe_core::SUMP] {
            transport
                .ensure_queue(&QueueNaming::default().queue_for(actor).unwrap())
                .await
                .unwrap();
        }
        let mut pipeline = Self {
            transport,
            stop: CancellationToken::new(),
            runners: Vec::new(),
            control: Control::on(),
            slow_done: Arc::new(AtomicUsize::new(0)),
        };
        let done = pipeline.slow_done.clone();
        pipeline
            .spawn(
                "slow",
                payload_fn(move |p: Value| {
                    let done = done.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, HandlerError>(p)
                    }
                }),
            )
            .await;
        pipeline
            .spawn(
                "double",
                payload_fn(
                    |p: Value| async move { Ok::<_, HandlerError>(json!(p.as_i64().unwrap_or(0) * 2)) },
                ),
            )
            .await;
        pipeline
            .spawn(
                "wrap",
                payload_fn(|p: Value| async move { Ok::<_, HandlerError>(json!({"got": p})) }),
            )
            .await;
        pipeline
            .spawn(
                "split",
                handler_fn(|e: Envelope| async move {
                    let children = (1..=2)
                        .map(|i| {
                            let mut child = e.clone();
                            child.payload = json!(e.payload.as_i64().unwrap_or(0) + i).into();
                            child
                        })
                        .collect();
                    Ok(Outcome::Forward(children))
                }),
            )
            .await;
        pipeline
            .spawn(
                "rejoin",
                handler_fn(|e: Envelope| async move {
                    let mut children: Vec<Envelope> = (1..=3)
                        .map(|i| {
                            let mut child = e.clone();
                            child.payload = json!(e.payload.as_i64().unwrap_or(0) + i).into();
                            child
                        })
                        .collect();
                    troupe_core::fan_in::mark_for_rejoin(&e, "join", &mut children);
                    Ok(Outcome::Forward(children))
                }),
            )
            .await;
        pipeline
            .spawn(
                "join",
                troupe_layers::fan_in::Aggregator::new(
                    troupe_layers::fan_in::AggregatorConfig::new("join"),
                    Arc::new(troupe_layers::fan_in::MemoryFanInStore::default()),
                ),
            )
            .await;
        pipeline
            .spawn(
                "fail",
                payload_fn(|_: Value| async move {
                    Err::<Value, _>(HandlerError::new("ValueError", "bad input"))
                }),
            )
            .await;
        pipeline
    }

    async fn spawn<H>(&mut self, actor: &str, handler: H)
    where
        H: tower::Service<Envelope, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
        H::Future: Send + 'static,
    {
        let naming = QueueNaming::default();
        troupe_core::ensure_actor_queues(&self.transport, &naming, actor)
            .await
            .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let stack = actor_stack(
            StackConfig {
                actor: actor.into(),
                retry: RetryPolicies::new(RetryPolicy::constant(1, Duration::from_millis(10))),
                timeout: Duration::from_secs(5),
                store: Arc::new(MemoryStore::default()),
                metrics: MeshMetrics::new(&mut registry).actor(actor),
            },
            handler,
        );
        let mut config = RunnerConfig::new(actor);
        config.consume = ConsumeOptions {
            prefetch: 16,
            lease: Duration::from_secs(5),
        };
        let (events, _) = EventSink::start(self.transport.clone(), &naming);
        let runner = Runner::new(self.transport.clone(), stack, config)
            .with_events(events)
            .with_control(self.control.clone());
        let stop = self.stop.clone();
        self.runners.push(tokio::spawn(async move {
            runner.run(stop).await.unwrap();
        }));
    }

    /// Has the runners learn canceled and paused tasks from the gateway at `base`, as an
    /// actor process with `--gateway-url` does.
    fn follow_gateway(&mut self, base: &str) {
        let (control, url, stop) = (
            self.control.clone(),
            format!("{base}/api/v1/control"),
            self.stop.clone(),
        );
        self.runners.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(response) = reqwest::get(&url).await
                    && let Ok(state) = response.json::<ControlState>().await
                {
                    control.apply(&state);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    async fn shutdown(self) {
        self.stop.cancel();
        for runner in self.runners {
            runner.await.unwrap();
        }
    }
}

/// A gateway serving on a free local port.
struct Running {
    base: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn gateway(transport: &MemoryTransport, store: Store) -> Running {
    let config = GatewayConfig {
        max_body: 64 << 10,
        ..GatewayConfig::default()
    };
    gateway_with(transport, store, config).await
}

async fn gateway_with(transport: &MemoryTransport, store: Store, config: GatewayConfig) -> Running {
    let gateway = Gateway::new(transport.clone(), store, config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { gateway.serve(listener, token).await.unwrap() });
    Running { base, stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task).await.unwrap().unwrap();
    }
}

async fn submit(base: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/mesh"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn task(base: &str, id: &str) -> Value {
    reqwest::get(format!("{base}/api/v1/mesh/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the record until it is final.
async fn finished(base: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let record = task(base, id).await;
        if ["succeeded", "failed", "canceled"].contains(&record["status"].as_str().unwrap_or("")) {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} not finished: {record}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One Server-Sent Event: its id, name and data.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// Reads the task's event stream to its end (the gateway closes it after the final status).
async fn follow(base: &str, id: &str, last_event_id: Option<&str>) -> Vec<Sse> {
    let mut request = reqwest::Client::new().get(format!("{base}/api/v1/mesh/{id}/events"));
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last);
    }
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut text = String::new();
    tokio::time::timeout(WAIT, async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream of {id} did not end: {text}"));
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("data:")))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_owned()))
            };
            Sse {
                id: field("id:"),
                event: field("event:").unwrap_or_default(),
                data: serde_json::from_str(&field("data:").unwrap_or_default()).unwrap(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_followed_from_submission_to_its_result() {
    let pipeline = Pipeline::start().await;
    let gw = gateway(&pipeline.transport, Store::in_memory().await.unwrap()).await;
    let (status, created) = submit(&gw.base, json!({"route": ["double", "double"], "payload": 3})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let events = follow(&gw.base, &id, None).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"task"), "the record comes first: {names:?}");
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "status")
        .filter_map(|e| e.data["status"].as_str())
        .collect();
    assert_eq!(statuses, ["pending", "running", "succeeded"], "{names:?}");
    let final_status = events.iter().rposition(|e| e.event == "status").unwrap();
    assert_eq!(events[final_status].data["result"], 12);
    assert_eq!(
        final_status,
        events.len() - 1,
        "the result ends the stream: {names:?}"
    );
    // The last actor's progress is told by the end itself, so it always precedes the
    // result. An earlier actor's report may be overtaken by a faster later actor (here
    // every hop takes microseconds): then it counts in the record, not in the stream.
    let last_hop = events
        .iter()
        .position(|e| e.event == "hop" && e.data["position"] == 1);
    assert!(last_hop.is_some_and(|at| at < final_status), "{names:?}");
    until(&gw.base, &id, "counted both hops", |r| r["progress"]["hops"] == 2).await;

    let record = task(&gw.base, &id).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["result"], 12);
    assert_eq!(record["progress"]["hops"], 2);

    // A client that reconnects after the second event gets exactly the rest.
    let second = events[2].id.clone().unwrap();
    let rest = follow(&gw.base, &id, Some(&second)).await;
    let resumed: Vec<&str> = rest[1..].iter().filter_map(|e| e.id.as_deref()).collect();
    let expected: Vec<&str> = events[3..].iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(resumed, expected);
    gw.stop().await;
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_ends_with_its_last_branch_and_a_failure_fails_the_task() {
    let pipeline = Pipeline::start().await;
    let gw = gateway(&pipeline.transport, Store::in_memory().await.unwrap()).await;
    let (_, created) = submit(&gw.base, json!({"route": ["split", "double"], "payload": 10})).await;
    let record = finished(&gw.base, created["id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let mut results: Vec<i64> = record["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    results.sort_unstable();
    assert_eq!(results, [22, 24], "both children's results");
    assert_eq!(record["progress"]["branches"], 2);
    assert_eq!(record["progress"]["branches_ended"], 2);

    let (_, created) = submit(&gw.base, json!({"route": ["double", "fail"], "payload": 1})).await;
    let record = finished(&gw.base, created["id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["message"], "bad input", "{record}");
    gw.stop().await;
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_rejoined_by_an_aggregator_ends_with_the_merge() {
    let pipeline = Pipeline::start().await;
    let gw = gateway(&pipeline.transport, Store::in_memory().await.unwrap()).await;
    let (_, created) = submit(
        &gw.base,
        json!({"route": ["rejoin", "double", "join", "wrap"], "payload": 10}),
    )
    .await;
    let record = finished(&gw.base, created["id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(
        record["result"],
        json!({"got": [22, 24, 26]}),
        "the merge, in slice order: {record}"
    );
    gw.stop().await;
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_that_names_the_problem() {
    let pipeline = Pipeline::start().await;
    let gw = gateway(&pipeline.transport, Store::in_memory().await.unwrap()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/mesh", gw.base);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client
                .post(format!("{url}?actor=nobody"))
                .json(&json!({"payload": 1})),
            400,
            "unknown actor \"nobody\"",
        ),
        (
            client.post(format!("{url}?actor=double")).body("{not json"),
            400,
            "not a valid submission",
        ),
        (
            client.post(&url).json(&json!({"payload": 1})),
            400,
            "no destination",
        ),
        (
            client
                .post(&url)
                .json(&json!({"payload": 1, "route": ["bad name"]})),
            400,
            "actor name \"bad name\"",
        ),
        (
            client
                .post(format!("{url}?actor=double"))
                .json(&json!({"payload": 1, "timeout": -1})),
            400,
            "timeout",
        ),
        (client.get(format!("{url}/no-such-task")), 404, "unknown task id"),
        (
            client.get(format!("{url}/no-such-task/events")),
            404,
            "unknown task id",
        ),
        (
            client.get(format!("{url}?status=done")),
            400,
            "unknown status \"done\"",
        ),
    ];
    for (request, code, message) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), code);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap_or("").contains(message),
            "{body} should say {message}"
        );
    }
    let big = client
        .post(format!("{url}?actor=double"))
        .json(&json!({"payload": "x".repeat(100 << 10)}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 413, "over the body limit");
    assert_eq!(
        pipeline
            .transport
            .depth("asya-default-double")
            .await
            .unwrap()
            .total(),
        0,
        "nothing refused was published"
    );
    gw.stop().await;
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_was_down_catches_up_on_restart() {
    let pipeline = Pipeline::start().await;
    let dir = std::env::temp_dir().join(format!("troupe-gateway-restart-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tasks.db");
    let gw = gateway(&pipeline.transport, Store::open(&path).await.unwrap()).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let (status, created) = submit(
            &gw.base,
            json!({"route": ["double", "split", "double"], "payload": n}),
        )
        .await;
        assert_eq!(status, 201);
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // Down while the pipeline runs: ends and events wait in their queues.
    gw.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gw = gateway(&pipeline.transport, Store::open(&path).await.unwrap()).await;
    for id in &ids {
        let record = finished(&gw.base, id).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["progress"]["branches_ended"], 2, "{record}");
    }
    gw.stop().await;
    pipeline.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the task's record satisfies `ready`.
async fn until(base: &str, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let record = task(base, id).await;
        if ready(&record) {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never {what}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn command(base: &str, id: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{base}/api/v1/mesh/{id}{path}"))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_handler_and_the_rest_of_the_route() {
    let mut pipeline = Pipeline::start().await;
    let gw = gateway(&pipeline.transport, Store::in_memory().await.unwrap()).await;
    pipeline.follow_gateway(&gw.base);
    let (_, created) = submit(
        &gw.base,
        json!({"route": ["double", "slow", "double"], "payload": 1}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    until(&gw.base, &id, "reached slow", |r| {
        r["current_actor"] == "slow" && r["progress"]["hops"] == 1
    })
    .await;
    let (code, record) = command(&gw.base, &id, reqwest::Method::DELETE, "").await;
    assert_eq!(
        (code, record["status"].as_str()),
        (200, Some("canceled")),
        "{record}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        pipeline.slow_done.load(Ordering::SeqCst),
        0,
        "the handler was dropped mid-call"
    );
    let record = task(&gw.base, &id).await;
    assert_eq!(record["status"], "canceled");
    assert_eq!(
        record["progress"]["hops"], 1,
        "no actor finished a hop after the cancel: {record}"
    );
    assert_eq!(
        record["progress"]["branches_ended"], 0,
        "nothing reached the end: {record}"
    );
    let (code, again) = command(&gw.base, &id, reqwest::Method::DELETE, "").await;
    assert_eq!(code, 200, "canceling twice is fine: {again}");
    let (code, refused) = command(&gw.base, &id, reqwest::Method::POST, "/resume").await;
    assert_eq!(code, 409, "{refused}");
    gw.stop().await;
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_task_waits_at_its_next_hop_and_resumes_there() {
    let mut pipeline = Pipeline::start().await;
    let gw = gateway(&pipeline.transport, Store::in_memory().await.unwrap()).await;
    pipeline.follow_gateway(&gw.base);
    let (_, created) = submit(&gw.base, json!({"route": ["slow", "double"], "payload": 4})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    until(&gw.base, &id, "started", |r| r["status"] == "running").await;
    let (code, record) = command(&gw.base, &id, reqwest::Method::POST, "/pause").await;
    assert_eq!(
        (code, record["status"].as_str()),
        (200, Some("paused")),
        "{record}"
    );
    // `slow` finishes the hop it was in; its output is parked at `double`.
    until(&gw.base, &id, "finished the slow hop", |r| {
        r["progress"]["hops"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let record = task(&gw.base, &id).await;
    assert_eq!(
        (record["status"].as_str(), record["progress"]["hops"].as_u64()),
        (Some("paused"), Some(1)),
        "{record}"
    );
    let (code, record) = command(&gw.base, &id, reqwest::Method::POST, "/resume").await;
    assert_eq!(
        (code, record["status"].as_str()),
        (200, Some("running")),
        "{record}"
    );
    let record = finished(&gw.base, &id).await;
    assert_eq!(
        (record["status"].as_str(), &record["result"]),
        (Some("succeeded"), &json!(8)),
        "{record}"
    );
    gw.stop().await;
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_every_api_route_wants_one() {
    let pipeline = Pipeline::start().await;
    let config = GatewayConfig {
        api_keys: troupe_gateway::auth::ApiKeys::new(["k-one", "k-two"]),
        ..GatewayConfig::default()
    };
    let gw = gateway_with(&pipeline.transport, Store::in_memory().await.unwrap(), config).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/mesh?actor=double", gw.base);
    let body = json!({"payload": 2});
    for key in [None, Some("k-on"), Some("k-one2"), Some("")] {
        let mut request = client.post(&url).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "key {key:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    for path in ["/api/v1/mesh", "/api/v1/control", "/api/v1/mesh/x/events"] {
        let response = client.get(format!("{}{path}", gw.base)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
    }
    let created = client
        .post(&url)
        .bearer_auth("k-two")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let record: Value = client
        .get(format!("{}/api/v1/mesh/{id}", gw.base))
        .bearer_auth("k-one")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["id"], id.as_str());
    assert_eq!(
        reqwest::get(format!("{}/healthz", gw.base))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    gw.stop().await;
    pipeline.shutdown().await;
}

/// Two replicas on one PostgreSQL database, sharing the broker's messages: a client that
/// submits on one and follows on the other sees every event, live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgresql_serve_the_same_tasks() {
    let pipeline = Pipeline::start().await;
    let url = troupe_gateway::testing::fresh_postgres_schema().await;
    let tls = troupe_core::tls::TlsFiles::default();
    let a = gateway(&pipeline.transport, Store::postgres(&url, &tls).await.unwrap()).await;
    let b = gateway(&pipeline.transport, Store::postgres(&url, &tls).await.unwrap()).await;
    for round in 0..5 {
        // `slow` first, so the follower is watching before the task moves.
        let (status, created) = submit(
            &a.base,
            json!({"route": ["slow", "double", "double"], "payload": round}),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let on_b = follow(&b.base, &id, None).await;
        let on_a = follow(&a.base, &id, None).await;
        let statuses: Vec<&str> = on_b
            .iter()
            .filter(|e| e.event == "status")
            .filter_map(|e| e.data["status"].as_str())
            .collect();
        assert_eq!(statuses, ["pending", "running", "succeeded"], "{on_b:?}");
        assert_eq!(on_b.last().unwrap().data["result"], round * 4);
        let ids = |events: &[Sse]| events.iter().filter_map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&on_b), ids(&on_a), "both replicas tell the same events");
    }
    a.stop().await;
    b.stop().await;
    pipeline.shutdown().await;
}

mod mcp {
    //! `/mcp` with a real MCP client (the official SDK's, over Streamable HTTP).

    use futures_util::StreamExt;
    use rmcp::handler::client::progress::ProgressDispatcher;
    use rmcp::model::{
        CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam, Request,
        ServerResult,
    };
    use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::{ClientHandler, RoleClient, ServiceExt};
    use troupe_gateway::auth::ApiKeys;
    use troupe_gateway::mcp::McpTools;

    use super::*;

    /// An agent that hears progress notifications.
    #[derive(Clone, Default)]
    struct Agent {
        progress: ProgressDispatcher,
    }

    impl ClientHandler for Agent {
        async fn on_progress(&self, params: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
            self.progress.handle_notification(params).await;
        }
    }

    const TOOLS: &str = r#"{"tools": [
        {"name": "wrap_slowly", "description": "Waits, then wraps its input",
         "route": ["slow", "wrap"],
         "input_schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}},
                          "required": ["n"], "additionalProperties": false},
         "timeout": "20s"},
        {"name": "always_fails", "description": "Raises", "route": ["fail"]}
    ]}"#;

    async fn connect(base: &str, key: Option<&str>) -> Result<RunningService<RoleClient, Agent>, String> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp"));
        if let Some(key) = key {
            config = config.auth_header(key);
        }
        Agent::default()
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .map_err(|e| e.to_string())
    }

    /// Calls `tool` with `arguments`; its result and the progress messages heard.
    async fn call(
        client: &RunningService<RoleClient, Agent>,
        tool: &'static str,
        arguments: Value,
    ) -> (CallToolResult, Vec<String>) {
        let Value::Object(arguments) = arguments else {
            panic!("arguments are an object")
        };
        let handle = client
            .send_cancellable_request(
                ClientRequest::CallToolRequest(Request::new(
                    CallToolRequestParams::new(tool).with_arguments(arguments),
                )),
                PeerRequestOptions::no_options(),
            )
            .await
            .unwrap();
        let mut heard = client
            .service()
            .progress
            .subscribe(handle.progress_token.clone())
            .await;
        let messages = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listening = tokio::spawn({
            let messages = messages.clone();
            async move {
                while let Some(note) = heard.next().await {
                    messages.lock().unwrap().push(note.message.unwrap_or_default());
                }
            }
        });
        let response = tokio::time::timeout(WAIT, handle.await_response())
            .await
            .unwrap()
            .unwrap();
        let ServerResult::CallToolResult(result) = response else {
            panic!("not a tool result: {response:?}")
        };
        // The dispatcher keeps the subscription open; what came before the result is in.
        tokio::time::sleep(Duration::from_millis(200)).await;
        listening.abort();
        let messages = messages.lock().unwrap().clone();
        (result, messages)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tool_call_runs_the_pipeline_and_reports_progress() {
        let pipeline = Pipeline::start().await;
        let config = GatewayConfig {
            mcp_tools: Arc::new(McpTools::from_json(TOOLS).unwrap()),
            ..GatewayConfig::default()
        };
        let gw = gateway_with(&pipeline.transport, Store::in_memory().await.unwrap(), config).await;
        let client = connect(&gw.base, None).await.unwrap();
        let tools = client.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, ["wrap_slowly", "always_fails"]);
        assert_eq!(tools[0].input_schema["required"], json!(["n"]));

        let (result, progress) = call(&client, "wrap_slowly", json!({"n": 7})).await;
        assert_ne!(result.is_error, Some(true), "{result:?}");
        let answer = result.structured_content.clone().unwrap();
        assert_eq!(
            (&answer["status"], &answer["result"]),
            (&json!("succeeded"), &json!({"got": {"n": 7}}))
        );
        assert!(
            progress.iter().any(|m| m == "status: running") && progress.iter().any(|m| m == "slow: hop"),
            "progress told the task's steps: {progress:?}"
        );
        let id = answer["id"].as_str().unwrap();
        assert_eq!(
            task(&gw.base, id).await["status"],
            "succeeded",
            "a task like any other"
        );

        let (refused, _) = call(&client, "wrap_slowly", json!({"n": -1, "extra": true})).await;
        assert_eq!(refused.is_error, Some(true));
        let text = format!("{:?}", refused.content);
        assert!(
            text.contains("/n") && text.contains("extra"),
            "each mismatch named: {text}"
        );
        let listed = reqwest::get(format!("{}/api/v1/mesh", gw.base))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(
            listed["tasks"].as_array().unwrap().len(),
            1,
            "refused input submits nothing"
        );

        let (failed, _) = call(&client, "always_fails", json!({})).await;
        assert_eq!(failed.is_error, Some(true));
        let error = failed.structured_content.unwrap();
        assert_eq!(error["status"], "failed");
        assert!(error["error"].to_string().contains("bad input"), "{error}");

        client.cancel().await.unwrap();
        gw.stop().await;
        pipeline.shutdown().await;
    }

    /// A call without a progress token sends nothing before its result: it must outlast
    /// the API's request timeout (before the fix: 408 at the timeout, the task canceled).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tool_call_may_outlast_the_request_timeout() {
        let pipeline = Pipeline::start().await;
        let config = GatewayConfig {
            mcp_tools: Arc::new(McpTools::from_json(TOOLS).unwrap()),
            request_timeout: Duration::from_millis(500),
            ..GatewayConfig::default()
        };
        let gw = gateway_with(&pipeline.transport, Store::in_memory().await.unwrap(), config).await;
        let client = connect(&gw.base, None).await.unwrap();
        let Value::Object(arguments) = json!({"n": 1}) else {
            unreachable!()
        };
        // `slow` takes 1.5 s, three times the request timeout.
        let result = tokio::time::timeout(
            WAIT,
            client.call_tool(CallToolRequestParams::new("wrap_slowly").with_arguments(arguments)),
        )
        .await
        .unwrap()
        .unwrap();
        assert_ne!(result.is_error, Some(true), "{result:?}");
        assert_eq!(
            result.structured_content.unwrap()["result"],
            json!({"got": {"n": 1}})
        );
        client.cancel().await.unwrap();
        gw.stop().await;
        pipeline.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mcp_needs_an_api_key_when_keys_are_set() {
        let pipeline = Pipeline::start().await;
        let config = GatewayConfig {
            mcp_tools: Arc::new(McpTools::from_json(TOOLS).unwrap()),
            api_keys: ApiKeys::new(["k-mcp".to_owned()]),
            ..GatewayConfig::default()
        };
        let gw = gateway_with(&pipeline.transport, Store::in_memory().await.unwrap(), config).await;
        assert!(connect(&gw.base, None).await.is_err(), "no key, no session");
        assert!(connect(&gw.base, Some("k-wrong")).await.is_err());
        let client = connect(&gw.base, Some("k-mcp")).await.unwrap();
        assert_eq!(client.list_all_tools().await.unwrap().len(), 2);
        client.cancel().await.unwrap();
        gw.stop().await;
        pipeline.shutdown().await;
    }

    #[test]
    fn bad_tool_files_are_refused_with_the_reason() {
        for (text, reason) in [
            (
                r#"{"tools": [{"name": "a", "description": "", "route": []}]}"#,
                "route is empty",
            ),
            (
                r#"{"tools": [{"name": "a", "description": "", "route": ["x"], "input_schema": {"type": 3}}]}"#,
                "not a valid JSON Schema",
            ),
            (
                r#"{"tools": [{"name": "a", "description": "", "route": ["x"]}, {"name": "a", "description": "", "route": ["y"]}]}"#,
                "declared twice",
            ),
            (
                r#"{"tools": [{"name": "a", "description": "", "route": ["x"], "timeout": "soon"}]}"#,
                "expected a duration",
            ),
            (r#"{"tool": []}"#, "unknown field"),
        ] {
            let error = McpTools::from_json(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}

mod web {
    //! The page at `/`, rendered by headless Chromium (`TROUPE_CHROMIUM`, default
    //! `chromium` on the PATH; `.ci/run` installs the Debian package).

    use super::*;

    /// The page's DOM after Chromium ran its script for a while.
    async fn rendered(url: &str) -> String {
        let chromium = std::env::var("TROUPE_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let profile = std::env::temp_dir().join(format!("troupe-chromium-{}", uuid::Uuid::new_v4()));
        let run = tokio::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("Chromium finished within a minute")
            .unwrap_or_else(|e| panic!("cannot run {chromium} (install the chromium package): {e}"));
        let _ = std::fs::remove_dir_all(&profile);
        assert!(
            output.status.success(),
            "{chromium}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_page_lists_tasks_and_streams_one() {
        let pipeline = Pipeline::start().await;
        let gw = gateway(&pipeline.transport, Store::in_memory().await.unwrap()).await;
        let (_, ok) = submit(&gw.base, json!({"route": ["double", "double"], "payload": 3})).await;
        let (_, bad) = submit(&gw.base, json!({"route": ["fail"], "payload": 1})).await;
        let (ok, bad) = (ok["id"].as_str().unwrap(), bad["id"].as_str().unwrap());
        finished(&gw.base, ok).await;
        finished(&gw.base, bad).await;

        let dom = rendered(&format!("{}/?task={ok}", gw.base)).await;
        for (id, status) in [(ok, "succeeded"), (bad, "failed")] {
            let row = dom
                .split("<tr ")
                .find(|row| row.contains(&format!("data-id=\"{id}\"")))
                .unwrap_or_else(|| panic!("no row for task {id}: {dom}"));
            assert!(
                row.contains(&format!("<td class=\"{status}\">{status}</td>")),
                "{row}"
            );
        }
        let events: Vec<&str> = dom
            .split("data-event=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(events.first(), Some(&"task"), "{events:?}");
        assert!(events.contains(&"hop"), "{events:?}");
        assert!(dom.contains("status: succeeded 12"), "the result is shown: {dom}");
        gw.stop().await;
        pipeline.shutdown().await;
    }
}
