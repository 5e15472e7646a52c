//! The HTTP API: submit, status, list and live events of tasks.
//!
//! | Method and path | Answer |
//! |---|---|
//! | `POST /api/v1/mesh?actor=A` (or a body `route`) | `201 {"id", "status"}`, once the envelope is on the broker |
//! | `GET /api/v1/mesh/{id}` | the task's [record](crate::TaskRecord) |
//! | `GET /api/v1/mesh?status=&limit=&offset=` | `{"tasks": [...]}`, newest first |
//! | `GET /api/v1/mesh/{id}/events` | Server-Sent Events: the record, then every stored event |
//!
//! Every refusal is a 4xx with `{"error": "..."}` naming the problem.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use troupe_core::headers::TASK;
use troupe_core::{
    Envelope, Payload, Publication, QueueAdmin, QueueNaming, Route, Transport, TransportError, publish_one,
    validate_name,
};

use crate::metrics::GatewayMetrics;
use crate::record::StoredEvent;
use crate::state::{TaskState, Update};
use crate::store::{Store, StoreError};

/// The actor name the gateway publishes as (in logs and `x-sump` records).
pub const GATEWAY_ACTOR: &str = "gateway";
/// Most tasks one list answer holds.
pub const MAX_LIST: u32 = 1000;

/// What every handler shares.
pub struct Api<T> {
    /// The broker.
    pub transport: T,
    /// Actor-to-queue naming.
    pub naming: QueueNaming,
    /// The task store.
    pub store: Store,
    /// The task of every event as it is stored (here or, with PostgreSQL, by another
    /// replica), to wake the streams that follow it.
    pub live: broadcast::Sender<String>,
    /// Cancelled when the gateway stops: event streams end.
    pub closing: CancellationToken,
    /// Whether the gateway records what the broker brings (its consumers run).
    pub recording: Arc<AtomicBool>,
    /// Whether the gateway waits for the recorder lock while another replica records
    /// (PostgreSQL): it serves the API meanwhile.
    pub standby: Arc<AtomicBool>,
    /// What `/metrics` shows.
    pub metrics: GatewayMetrics,
    /// Actor queues recently found on the broker.
    pub known_queues: KnownQueues,
}

/// How long a queue found on the broker is taken to exist without asking again: an actor
/// deleted meanwhile is still caught, at its hop (its envelopes go to `x-sump` as
/// `UnknownActor`).
const KNOWN_FOR: Duration = Duration::from_secs(30);

/// Actor queues recently found on the broker, so a submission does not ask the broker
/// about every actor of its route every time.
#[derive(Debug, Default)]
pub struct KnownQueues(std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>);

impl KnownQueues {
    fn recently_seen(&self, queue: &str) -> bool {
        let known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.get(queue).is_some_and(|at| at.elapsed() < KNOWN_FOR)
    }

    fn seen(&self, queue: String) {
        let mut known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.insert(queue, tokio::time::Instant::now());
    }
}

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// No such task (never submitted here, or expired).
    #[error("unknown task id {0:?} (never submitted, or expired)")]
    UnknownTask(String),
    /// The task is not in a state the request can change.
    #[error("{0}")]
    Conflict(String),
    /// The broker or the store did not answer; try again.
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownTask(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "task store failed");
        ApiError::Unavailable(error.to_string())
    }
}

/// The body of a submission.
#[derive(Debug, Deserialize)]
pub struct Submission {
    /// The handler's input (any JSON), passed on as the text it came in.
    pub payload: Payload,
    /// Envelope headers to send with it (`x-asya-mesh-status: off` switches events off).
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// Seconds the whole task may take; past it, actors drop it as timed out.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// The actors to visit, in order (instead of `?actor=`).
    #[serde(default)]
    pub route: Option<Vec<String>>,
}

/// The query of a submission.
#[derive(Debug, Deserialize)]
pub struct SubmitQuery {
    /// The one actor to send the payload to.
    pub actor: Option<String>,
}

/// `POST /api/v1/mesh`: checks the route, records the task, publishes its envelope.
pub async fn submit<T: Transport + QueueAdmin>(
    State(api): State<Arc<Api<T>>>,
    Query(query): Query<SubmitQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let submission: Submission = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a valid submission: {e}")))?;
    let route = match (query.actor, submission.route) {
        (Some(actor), None) => vec![actor],
        (None, Some(route)) if !route.is_empty() => route,
        (None, Some(_)) => return Err(ApiError::BadRequest("the route is empty".into())),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either ?actor= or a body route, not both".into(),
            ));
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "no destination: add ?actor=NAME or a body route: [\"a\", \"b\"]".into(),
            ));
        }
    };
    let id = submit_task(
        &api,
        route,
        submission.payload,
        submission.headers,
        submission.timeout,
    )
    .await?;
    let location = format!("/api/v1/mesh/{id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(json!({"id": id, "status": TaskState::Pending})),
    )
        .into_response())
}

/// Every actor of `route` is a legal name with a queue on the broker.
async fn check_route<T: QueueAdmin>(api: &Api<T>, route: &[String]) -> Result<(), ApiError> {
    for actor in route {
        validate_name("actor", actor).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let queue = api
            .naming
            .queue_for(actor)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if api.known_queues.recently_seen(&queue) {
            continue;
        }
        match api.transport.depth(&queue).await {
            Ok(_) => api.known_queues.seen(queue),
            Err(TransportError::NoSuchQueue { .. }) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown actor {actor:?}: its queue {queue:?} is not on the broker"
                )));
            }
            Err(error) => {
                return Err(ApiError::Unavailable(format!(
                    "cannot check actor {actor:?} on the broker: {error}"
                )));
            }
        }
    }
    Ok(())
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> StatusCode {
    StatusCode::OK
}

/// Submits a task: checks the route, records the task and publishes its envelope. The
/// id it returns is of a task on the broker (the REST API's `201`, an MCP tool call).
pub async fn submit_task<T: Transport + QueueAdmin>(
    api: &Api<T>,
    route: Vec<String>,
    payload: impl Into<Payload>,
    headers: Map<String, Value>,
    timeout: Option<f64>,
) -> Result<String, ApiError> {
    check_route(api, &route).await?;
    let mut envelope = Envelope::new(Route::through(route.iter().cloned()), payload);
    envelope.headers = headers;
    envelope
        .headers
        .insert(TASK.to_owned(), Value::String(envelope.id.clone()));
    if let Some(seconds) = timeout {
        let timeout = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .ok_or_else(|| {
                ApiError::BadRequest(format!("timeout {seconds} is not a positive number of seconds"))
            })?;
        envelope.status_mut().deadline_at = Some(chrono::Utc::now() + timeout);
    }
    let id = envelope.id.clone();
    let first = route[0].clone();
    let events = api.store.create(id.clone(), route).await?;
    let publication = Publication::to(first, envelope);
    if let Err(error) = publish_one(&api.transport, &api.naming, GATEWAY_ACTOR, &publication).await {
        tracing::warn!(task = %id, %error, "submission not published; the task is dropped");
        if let Err(error) = api.store.delete(id.clone()).await {
            tracing::warn!(task = %id, %error, "could not drop an unpublished task; it stays pending");
        }
        return Err(ApiError::Unavailable(format!(
            "the broker did not take the task: {error}"
        )));
    }
    for event in events {
        let _ = api.live.send(event.task);
    }
    api.metrics.submitted.inc();
    tracing::info!(task = %id, "task submitted");
    Ok(id)
}

/// The page at `/`: the task list with live states and one task's event stream. It holds
/// no data (it reads the API like any client, with the key typed into it), so it is
/// served without a key.
const PAGE: &str = include_str!("web/index.html");
/// The page's script, served apart so the page's policy admits no inline script.
const PAGE_SCRIPT: &str = include_str!("web/app.js");
/// What the page may load: itself and the API, nothing else.
const PAGE_POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

/// `GET /`: the web page.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /app.js`: the page's script.
pub async fn page_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
        ],
        PAGE_SCRIPT,
    )
        .into_response()
}

/// `GET /readyz`: the gateway records what the broker brings, or stands by while another
/// replica does, so tasks it accepts finish.
pub async fn readyz<T>(State(api): State<Arc<Api<T>>>) -> StatusCode {
    if api.recording.load(Ordering::Acquire) || api.standby.load(Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `GET /metrics`.
pub async fn metrics<T>(State(api): State<Arc<Api<T>>>) -> Response {
    api.metrics
        .recording
        .set(i64::from(api.recording.load(Ordering::Acquire)));
    match api.store.counts().await {
        Ok(counts) => api.metrics.set_tasks(&counts),
        Err(error) => tracing::warn!(%error, "task counts for /metrics failed"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(),
    )
        .into_response()
}

/// `GET /api/v1/mesh/{id}`.
pub async fn status<T>(State(api): State<Arc<Api<T>>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match api.store.get(id.clone()).await? {
        Some(task) => Ok(Json(task).into_response()),
        None => Err(ApiError::UnknownTask(id)),
    }
}

/// `DELETE /api/v1/mesh/{id}`: cancel. Runners learn it at their next look at the
/// gateway (`--gateway-url`): the task's envelopes are dropped at their next hop and its
/// running handlers stopped.
pub async fn cancel<T>(state: State<Arc<Api<T>>>, id: Path<String>) -> Result<Response, ApiError> {
    command(state, id, Update::Cancel).await
}

/// `POST /api/v1/mesh/{id}/pause`: its envelopes are parked at their next hop.
pub async fn pause<T>(state: State<Arc<Api<T>>>, id: Path<String>) -> Result<Response, ApiError> {
    command(state, id, Update::Pause).await
}

/// `POST /api/v1/mesh/{id}/resume`: parked envelopes go on from where they stopped.
pub async fn resume<T>(state: State<Arc<Api<T>>>, id: Path<String>) -> Result<Response, ApiError> {
    command(state, id, Update::Resume).await
}

async fn command<T>(
    State(api): State<Arc<Api<T>>>,
    Path(id): Path<String>,
    update: Update,
) -> Result<Response, ApiError> {
    let (before, after, events) = api
        .store
        .command(id.clone(), update)
        .await?
        .ok_or_else(|| ApiError::UnknownTask(id.clone()))?;
    // Repeating a command is fine (a client retrying); changing a finished task is not.
    let refused = before.is_terminal() && !(update == Update::Cancel && before == TaskState::Canceled);
    if refused {
        return Err(ApiError::Conflict(format!(
            "task {id:?} is {before}: there is nothing to {}",
            match update {
                Update::Cancel => "cancel",
                Update::Pause => "pause",
                _ => "resume",
            }
        )));
    }
    for event in events {
        let _ = api.live.send(event.task);
    }
    tracing::info!(task = %id, from = %before, to = %after, "task command");
    status(State(api), Path(id)).await
}

/// The query of `GET /api/v1/control`.
#[derive(Debug, Deserialize)]
pub struct ControlQuery {
    /// Unix milliseconds: cancels at or after it (the `now_ms` of the previous answer).
    #[serde(default)]
    pub since: i64,
}

/// `GET /api/v1/control`: what runners poll: tasks canceled since `since` and every task
/// paused now.
pub async fn control<T>(
    State(api): State<Arc<Api<T>>>,
    Query(query): Query<ControlQuery>,
) -> Result<Response, ApiError> {
    Ok(Json(api.store.control(query.since).await?).into_response())
}

/// The query of a list.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Only tasks in this state.
    pub status: Option<String>,
    /// At most this many (default 50, at most [`MAX_LIST`]).
    pub limit: Option<u32>,
    /// Skip this many.
    pub offset: Option<u32>,
}

/// `GET /api/v1/mesh`.
pub async fn list<T>(
    State(api): State<Arc<Api<T>>>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|s| {
            serde_json::from_value::<TaskState>(Value::String(s.to_owned())).map_err(|_| {
                ApiError::BadRequest(format!(
                    "unknown status {s:?}: use pending, running, paused, succeeded, failed or canceled"
                ))
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {MAX_LIST}")));
    }
    let tasks = api.store.list(status, limit, query.offset.unwrap_or(0)).await?;
    Ok(Json(json!({"tasks": tasks})).into_response())
}

/// `GET /api/v1/mesh/{id}/events`: the task's record, then its stored events from the one
/// after `Last-Event-ID` on, live, until it finishes.
pub async fn events<T: Send + Sync + 'static>(
    State(api): State<Arc<Api<T>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::BadRequest("Last-Event-ID must be an event id this gateway sent".into())
            })?,
    };
    // Subscribed before the record is read, so nothing stored in between is missed.
    let wake = api.live.subscribe();
    let record = api
        .store
        .get(id.clone())
        .await?
        .ok_or_else(|| ApiError::UnknownTask(id.clone()))?;
    let (tx, rx) = mpsc::channel(64);
    let first = Event::default()
        .event("task")
        .json_data(&record)
        .unwrap_or_default();
    let _ = tx.send(first).await;
    // A task that finished moments ago may still have events on their way.
    let finished = record.finished_at.map(|at| {
        let since = (chrono::Utc::now() - at).to_std().unwrap_or_default();
        tokio::time::Instant::now() + LINGER.saturating_sub(since)
    });
    let follower = follow(api.store.clone(), wake, id, after, finished, tx);
    let closing = api.closing.clone();
    let clients = api.metrics.sse_clients.clone();
    tokio::spawn(async move {
        clients.inc();
        tokio::select! {
            () = follower => {}
            () = closing.cancelled() => {}
        }
        clients.dec();
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// How long a stream waits for a wake-up before it looks at the store anyway.
const RECHECK: Duration = Duration::from_secs(2);
/// How long a stream stays open after the final status, for events that travelled on
/// another queue and were stored after it (a handler's last upstream events).
const LINGER: Duration = Duration::from_millis(300);

/// Sends task `id`'s stored events after `last` to `tx` until [`LINGER`] after its final
/// status (`close_at`, when it had finished before the stream began) or until the client
/// has gone. The store is the source of each event: a wake-up only
/// says "look", so events arrive in stored order and without gaps whatever order the
/// wake-ups come in.
async fn follow(
    store: Store,
    mut wake: broadcast::Receiver<String>,
    id: String,
    mut last: i64,
    mut close_at: Option<tokio::time::Instant>,
    tx: mpsc::Sender<Event>,
) {
    let mut done = false;
    loop {
        let events = match store.events_after(id.clone(), last).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(task = %id, %error, "event stream ended: the store failed");
                return;
            }
        };
        for event in events {
            last = event.seq;
            if done && event.kind != "fly" {
                // Progress that arrived after the result (an earlier actor's report,
                // overtaken): counted in the record, not told after the end. A handler's
                // late tokens are content and still go out.
                continue;
            }
            done |= is_final(&event);
            let sse = Event::default()
                .id(event.seq.to_string())
                .event(event.kind.as_str())
                .json_data(&event.data)
                .unwrap_or_default();
            if tx.send(sse).await.is_err() {
                return;
            }
        }
        let now = tokio::time::Instant::now();
        if done && close_at.is_none() {
            close_at = Some(now + LINGER);
        }
        if close_at.is_some_and(|at| now >= at) {
            return;
        }
        let recheck = close_at.unwrap_or(now + RECHECK);
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep_until(recheck) => {}
            woken = wait_for(&mut wake, &id) => if !woken { return },
        }
    }
}

/// Waits until an event of task `id` is stored (or the receiver lagged, which may have
/// hidden one); false once the gateway is shutting down.
pub(crate) async fn wait_for(wake: &mut broadcast::Receiver<String>, id: &str) -> bool {
    loop {
        match wake.recv().await {
            Ok(task) if task == id => return true,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

fn is_final(event: &StoredEvent) -> bool {
    event.kind == "status"
        && event
            .data
            .get("status")
            .and_then(|s| serde_json::from_value::<TaskState>(s.clone()).ok())
            .is_some_and(TaskState::is_terminal)
}
