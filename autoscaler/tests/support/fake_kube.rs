//! A fake Kubernetes API server on 127.0.0.1: just enough of it for the autoscaler (list and
//! watch AsyncActors, patch their status, get and patch a Deployment's `/scale`, create and
//! patch Events), recording every request so tests can check exactly what was sent.
//!
//! A real HTTP server rather than a mock service, so the requests go through kube's own
//! client stack (URL building, query parameters, JSON bodies, error decoding).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One request the autoscaler made.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// HTTP method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The JSON body (`Null` without one).
    pub body: Value,
}

#[derive(Debug, Default)]
struct World {
    actors: BTreeMap<(String, String), Value>,
    /// (replicas, resourceVersion) per Deployment.
    deployments: BTreeMap<(String, String), (i64, u64)>,
    requests: Vec<Recorded>,
    /// Scale writes to refuse with 409 after someone else's change.
    conflicts: usize,
    version: u64,
}

impl World {
    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

/// The fake server; stops when dropped.
pub struct FakeKube {
    world: Arc<Mutex<World>>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeKube {
    /// Starts a server on a free port.
    pub async fn start() -> std::io::Result<Self> {
        let world: Arc<Mutex<World>> = Arc::default();
        let app = Router::new()
            .route("/apis/asya.sh/v1alpha1/asyncactors", get(list_actors))
            .route(
                "/apis/asya.sh/v1alpha1/namespaces/{ns}/asyncactors",
                get(list_actors_in),
            )
            .route(
                "/apis/asya.sh/v1alpha1/namespaces/{ns}/asyncactors/{name}/status",
                patch(patch_actor_status),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
                get(get_scale).patch(patch_scale),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                post(create_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
                patch(patch_event),
            )
            .fallback(unknown)
            .with_state(world.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Ok(Self { world, addr, stop })
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its address, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server.
    pub fn client(&self) -> Result<kube::Client, Box<dyn std::error::Error>> {
        let url: axum::http::Uri = self.url().parse()?;
        Ok(kube::Client::try_from(kube::Config::new(url))?)
    }

    /// Adds (or replaces) an AsyncActor, given as its JSON.
    pub fn put_actor(&self, mut actor: Value) {
        let mut world = self.world();
        let version = world.next_version();
        let ns = actor["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = actor["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        actor["metadata"]["resourceVersion"] = json!(version.to_string());
        actor["metadata"]["uid"] = json!(format!("uid-{name}"));
        if actor["metadata"]["generation"].is_null() {
            actor["metadata"]["generation"] = json!(1);
        }
        world.actors.insert((ns, name), actor);
    }

    /// The AsyncActor as stored, status included.
    pub fn actor(&self, ns: &str, name: &str) -> Value {
        self.world()
            .actors
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Adds a Deployment with `replicas`.
    pub fn put_deployment(&self, ns: &str, name: &str, replicas: i64) {
        let mut world = self.world();
        let version = world.next_version();
        world
            .deployments
            .insert((ns.to_owned(), name.to_owned()), (replicas, version));
    }

    /// A Deployment's replicas, if it exists.
    pub fn replicas(&self, ns: &str, name: &str) -> Option<i64> {
        self.world()
            .deployments
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|(replicas, _)| *replicas)
    }

    /// Makes the next `n` scale writes fail with 409, as if someone scaled meanwhile.
    pub fn inject_conflicts(&self, n: usize) {
        self.world().conflicts = n;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.world().requests.clone()
    }

    /// The requests with `method` whose path ends with `suffix`.
    pub fn requests_to(&self, method: &Method, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == *method && r.path.ends_with(suffix))
            .collect()
    }

    /// Bodies of the `/scale` PATCHes so far.
    pub fn scale_patches(&self) -> Vec<Value> {
        self.requests_to(&Method::PATCH, "/scale")
            .into_iter()
            .map(|r| r.body)
            .collect()
    }

    /// Reasons of the Events sent so far: created, or patched as a repeat (a series).
    pub fn event_reasons(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains("/events"))
            .map(|r| r.body["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

type Shared = State<Arc<Mutex<World>>>;

fn lock(world: &Arc<Mutex<World>>) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records the request and returns its JSON body (`Null` without one).
fn record(world: &Arc<Mutex<World>>, method: Method, uri: &Uri, body: &Bytes) -> Value {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    lock(world).requests.push(Recorded {
        method,
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        body: body.clone(),
    });
    body
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

async fn unknown(method: Method, uri: axum::http::Uri) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the fake API has no {method} {}", uri.path()),
    )
}

fn list(world: &Arc<Mutex<World>>, ns: Option<&str>, query: Option<String>) -> Response {
    let query = query.unwrap_or_default();
    if query.split('&').any(|p| p == "watch=true" || p == "watch=1") {
        // Nothing changes in these tests after the start: hold the watch open, empty.
        let body = Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        return ([("content-type", "application/json")], body).into_response();
    }
    let world = lock(world);
    let items: Vec<Value> = world
        .actors
        .iter()
        .filter(|((actor_ns, _), _)| ns.is_none_or(|ns| ns == actor_ns))
        .map(|(_, actor)| actor.clone())
        .collect();
    axum::Json(json!({
        "apiVersion": "asya.sh/v1alpha1",
        "kind": "AsyncActorList",
        "metadata": { "resourceVersion": world.version.to_string() },
        "items": items,
    }))
    .into_response()
}

async fn list_actors(State(world): Shared, RawQuery(query): RawQuery) -> Response {
    list(&world, None, query)
}

async fn list_actors_in(State(world): Shared, Path(ns): Path<String>, RawQuery(query): RawQuery) -> Response {
    list(&world, Some(&ns), query)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

async fn patch_actor_status(
    State(world): Shared,
    Path((ns, name)): Path<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let patch = record(&world, Method::PATCH, &uri, &body);
    let mut world = lock(&world);
    let version = world.next_version();
    let Some(actor) = world.actors.get_mut(&(ns, name.clone())) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("asyncactors {name:?} not found"),
        );
    };
    if let Some(status_patch) = patch.get("status") {
        merge(&mut actor["status"], status_patch);
    }
    actor["metadata"]["resourceVersion"] = json!(version.to_string());
    axum::Json(actor.clone()).into_response()
}

fn scale_of(ns: &str, name: &str, replicas: i64, version: u64) -> Response {
    axum::Json(json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": { "name": name, "namespace": ns, "resourceVersion": version.to_string() },
        "spec": { "replicas": replicas },
        "status": { "replicas": replicas, "selector": format!("app={name}") },
    }))
    .into_response()
}

async fn get_scale(State(world): Shared, Path((ns, name)): Path<(String, String)>, uri: Uri) -> Response {
    record(&world, Method::GET, &uri, &Bytes::new());
    let world = lock(&world);
    match world.deployments.get(&(ns.clone(), name.clone())) {
        Some((replicas, version)) => scale_of(&ns, &name, *replicas, *version),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("deployments.apps {name:?} not found"),
        ),
    }
}

async fn patch_scale(
    State(world): Shared,
    Path((ns, name)): Path<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let patch = record(&world, Method::PATCH, &uri, &body);
    let mut world = lock(&world);
    let key = (ns.clone(), name.clone());
    let Some((_, seen_version)) = world.deployments.get(&key).copied() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("deployments.apps {name:?} not found"),
        );
    };
    if world.conflicts > 0 {
        world.conflicts -= 1;
        let version = world.next_version();
        if let Some(entry) = world.deployments.get_mut(&key) {
            entry.1 = version;
        }
        return status(StatusCode::CONFLICT, "Conflict", "the object has been modified");
    }
    let precondition = patch["metadata"]["resourceVersion"].as_str();
    if precondition.is_some_and(|v| v != seen_version.to_string()) {
        return status(StatusCode::CONFLICT, "Conflict", "the object has been modified");
    }
    let Some(replicas) = patch["spec"]["replicas"].as_i64() else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "spec.replicas missing");
    };
    let version = world.next_version();
    world.deployments.insert(key, (replicas, version));
    scale_of(&ns, &name, replicas, version)
}

async fn create_event(State(world): Shared, uri: Uri, body: Bytes) -> Response {
    let event = record(&world, Method::POST, &uri, &body);
    (StatusCode::CREATED, axum::Json(event)).into_response()
}

async fn patch_event(State(world): Shared, uri: Uri, body: Bytes) -> Response {
    let event = record(&world, Method::PATCH, &uri, &body);
    axum::Json(event).into_response()
}
