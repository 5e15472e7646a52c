//! The runtime as a handler service: each envelope is one `POST /invoke` (protocol §4).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::StatusCode;
use futures_util::future::{BoxFuture, FutureExt as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tower::Service;
use troupe::core::control::Verdict;
use troupe::core::event::{EventKind, HopOutput};
use troupe::core::headers::TASK;
use troupe::core::{
    Control, Envelope, EventSink, HandlerError, Outcome, Publication, QueueNaming, Transport, publish_one,
};
use troupe::layers::route::{note_spawned, route_output};

use super::client::{Answer, RuntimeClient};
use super::frames;
use super::health::{Failure, RuntimeHealth};
use super::sse::EventReader;

/// Error type of a call the runtime did not answer; the delivery is redelivered.
pub const RUNTIME_UNAVAILABLE: &str = "RuntimeUnavailable";

/// What the runtime answered, as counted in `troupe_sidecar_runtime_answers_total`.
#[derive(Clone, Copy, Debug)]
enum AnswerKind {
    Frames,
    Stream,
    End,
    ParseError,
    HandlerError,
    Unavailable,
}

impl AnswerKind {
    const ALL: [AnswerKind; 6] = [
        AnswerKind::Frames,
        AnswerKind::Stream,
        AnswerKind::End,
        AnswerKind::ParseError,
        AnswerKind::HandlerError,
        AnswerKind::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            AnswerKind::Frames => "frames",
            AnswerKind::Stream => "stream",
            AnswerKind::End => "end",
            AnswerKind::ParseError => "parse_error",
            AnswerKind::HandlerError => "handler_error",
            AnswerKind::Unavailable => "unavailable",
        }
    }
}

/// Counts of what the runtime answered.
#[derive(Clone, Debug)]
pub struct SidecarMetrics {
    answers: Family<Vec<(String, String)>, Counter>,
    /// Each kind's counter in `answers`, looked up once: a call counts without building
    /// labels, hashing them or taking the family's lock.
    by_kind: [Counter; AnswerKind::ALL.len()],
    upstream: Counter,
}

impl Default for SidecarMetrics {
    fn default() -> Self {
        let answers = Family::<Vec<(String, String)>, Counter>::default();
        let by_kind = AnswerKind::ALL.map(|kind| {
            answers
                .get_or_create(&vec![("answer".to_owned(), kind.label().to_owned())])
                .clone()
        });
        Self {
            answers,
            by_kind,
            upstream: Counter::default(),
        }
    }
}

impl SidecarMetrics {
    /// Registers `troupe_sidecar_runtime_answers_total{answer}` and
    /// `troupe_sidecar_upstream_events_total`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "troupe_sidecar_runtime_answers",
            "Runtime answers by kind (frames, stream, end, parse_error, handler_error, unavailable)",
            metrics.answers.clone(),
        );
        registry.register(
            "troupe_sidecar_upstream_events",
            "Progress events streamed by the runtime",
            metrics.upstream.clone(),
        );
        metrics
    }

    fn answer(&self, kind: AnswerKind) {
        self.by_kind[kind as usize].inc();
    }
}

/// Calls the runtime for each envelope; see the module docs.
pub struct RuntimeHandler<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for RuntimeHandler<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    actor: Arc<str>,
    client: Arc<RuntimeClient>,
    /// Streamed frames are published from here, as they arrive.
    transport: T,
    naming: QueueNaming,
    health: Arc<RuntimeHealth>,
    metrics: SidecarMetrics,
    /// Where streamed upstream events of gateway tasks go.
    events: EventSink,
    /// Which tasks are canceled.
    control: Control,
}

/// What a handler that publishes its own outputs needs of the mesh around it.
pub struct MeshAccess<T> {
    /// The broker, to publish streamed outputs.
    pub transport: T,
    /// Actor-to-queue naming.
    pub naming: QueueNaming,
    /// Where upstream events of gateway tasks go.
    pub events: EventSink,
    /// Which gateway tasks are canceled.
    pub control: Control,
}

impl<T: Transport> RuntimeHandler<T> {
    /// A handler for actor `actor` that calls the runtime through `client`.
    pub fn new(
        actor: Arc<str>,
        client: Arc<RuntimeClient>,
        mesh: MeshAccess<T>,
        health: Arc<RuntimeHealth>,
        metrics: SidecarMetrics,
    ) -> Self {
        let MeshAccess {
            transport,
            naming,
            events,
            control,
        } = mesh;
        Self {
            inner: Arc::new(Inner {
                actor,
                client,
                transport,
                naming,
                health,
                metrics,
                events,
                control,
            }),
        }
    }
}

impl<T: Transport> Service<Envelope> for RuntimeHandler<T> {
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let inner = self.inner.clone();
        async move { inner.invoke(env).await }.boxed()
    }
}

/// Reports a call that ends without an answer (dropped by its timeout, say) as timed out,
/// unless its task was canceled: the runner dropped it on purpose, and the runtime is
/// not to blame.
struct CallWatch<'a> {
    health: &'a RuntimeHealth,
    settled: bool,
    task: Option<(&'a Control, String)>,
}

impl CallWatch<'_> {
    fn answered(&mut self) {
        self.settled = true;
        self.health.answered();
    }

    fn unreachable(&mut self, error: impl std::fmt::Display) -> HandlerError {
        self.settled = true;
        self.health.unanswered(Failure::Unreachable);
        HandlerError::unavailable(
            RUNTIME_UNAVAILABLE,
            format!("the runtime did not answer: {error}"),
        )
    }
}

impl Drop for CallWatch<'_> {
    fn drop(&mut self) {
        let canceled = self
            .task
            .as_ref()
            .is_some_and(|(control, task)| control.verdict(task) == Verdict::Drop);
        if !self.settled && !canceled {
            self.health.unanswered(Failure::TimedOut);
        }
    }
}

impl<T: Transport> Inner<T> {
    async fn invoke(&self, env: Envelope) -> Result<Outcome, HandlerError> {
        let mut watch = CallWatch {
            health: &self.health,
            settled: false,
            task: env
                .header_str(TASK)
                .filter(|_| self.control.is_on())
                .map(|task| (&self.control, task.to_owned())),
        };
        let answer = match self.client.invoke(&env.to_vec()).await {
            Ok(answer) => answer,
            Err(error) => {
                self.metrics.answer(AnswerKind::Unavailable);
                return Err(watch.unreachable(error));
            }
        };
        let status = answer.status();
        if status == StatusCode::OK && answer.is_event_stream() {
            self.metrics.answer(AnswerKind::Stream);
            return self.stream(env, answer, &mut watch).await;
        }
        let body = match answer.read_to_end().await {
            Ok(body) => body,
            Err(error) => return Err(watch.unreachable(error)),
        };
        match status {
            StatusCode::OK => {
                watch.answered();
                self.metrics.answer(AnswerKind::Frames);
                let outputs = frames::outputs(&env, &body)?;
                if outputs.is_empty() {
                    return Ok(Outcome::end(env));
                }
                Ok(Outcome::Forward(outputs))
            }
            StatusCode::NO_CONTENT => {
                watch.answered();
                self.metrics.answer(AnswerKind::End);
                Ok(Outcome::end(env))
            }
            StatusCode::BAD_REQUEST => {
                watch.answered();
                self.metrics.answer(AnswerKind::ParseError);
                Ok(Outcome::unprocessable(env, frames::parse_error(&body)))
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                watch.answered();
                self.metrics.answer(AnswerKind::HandlerError);
                Err(frames::handler_error(&body))
            }
            other => {
                self.metrics.answer(AnswerKind::Unavailable);
                Err(watch.unreachable(format!(
                    "HTTP {other}, which the runtime protocol does not use: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                )))
            }
        }
    }

    /// Routes each `downstream` frame the moment it arrives, except the first, which keeps
    /// the input's id: it goes when the stream ends, naming the children routed before it.
    async fn stream(
        &self,
        env: Envelope,
        mut answer: Answer,
        watch: &mut CallWatch<'_>,
    ) -> Result<Outcome, HandlerError> {
        let mut reader = EventReader::default();
        let head = self.events.head(&env, &self.actor);
        let mut upstream_seq = 0;
        let mut flushed = 0;
        let mut routed = Vec::new();
        let mut first = None;
        let mut spawned = Vec::new();
        let mut emitted = 0;
        let mut done = false;
        loop {
            let chunk = match answer.next_chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => return Err(watch.unreachable(error)),
            };
            for event in reader.push(&chunk) {
                match event.name.as_str() {
                    "downstream" => {
                        let output = frames::output(&env, frames::frame(&event.data)?)?;
                        let publication = route_output(&self.actor, &env, emitted, output)?;
                        emitted += 1;
                        if emitted == 1 {
                            // The output that keeps the input's id goes last, naming its
                            // siblings (see `note_spawned`): the branch's end then tells
                            // whoever counts branches how many there are.
                            first = Some(publication);
                            continue;
                        }
                        spawned.push(publication.envelope.id.clone());
                        self.publish_streamed(&publication, upstream_seq, &mut flushed)
                            .await?;
                        if head.is_some() {
                            routed.push(HopOutput::of(&publication));
                        }
                    }
                    "upstream" => {
                        self.metrics.upstream.inc();
                        if let Some(head) = &head {
                            // Asya's FLY payload is JSON; anything else is passed on as text.
                            let data = serde_json::from_str(&event.data)
                                .unwrap_or_else(|_| Value::String(event.data.clone()));
                            self.events
                                .send(head.event(EventKind::Fly {
                                    seq: upstream_seq,
                                    data,
                                }))
                                .await;
                            upstream_seq += 1;
                        }
                        tracing::info!(envelope.id = %env.id, actor = %self.actor, progress = %event.data, "runtime progress");
                    }
                    "error" => {
                        watch.answered();
                        return Err(frames::handler_error(event.data.as_bytes()));
                    }
                    "done" => done = true,
                    other => {
                        tracing::debug!(envelope.id = %env.id, event = other, "unknown stream event ignored")
                    }
                }
            }
        }
        if !done || reader.is_mid_event() {
            return Err(watch.unreachable("the event stream ended without a done event"));
        }
        watch.answered();
        answer.release();
        let Some(mut first) = first else {
            return Ok(Outcome::end(env));
        };
        note_spawned(&mut first.envelope, spawned);
        self.publish_streamed(&first, upstream_seq, &mut flushed).await?;
        if let Some(head) = head {
            routed.insert(0, HopOutput::of(&first));
            // The runner sees no publications for a streamed answer: the hop is told here.
            self.events
                .send(head.into_event(EventKind::Hop { outputs: routed }))
                .await;
        }
        Ok(Outcome::Published)
    }

    /// Publishes one streamed output, after the upstream events streamed so far (so a
    /// client sees the tokens before the result they led to).
    async fn publish_streamed(
        &self,
        publication: &Publication,
        upstream_seq: u64,
        flushed: &mut u64,
    ) -> Result<(), HandlerError> {
        if upstream_seq > *flushed {
            self.events.flush().await;
            *flushed = upstream_seq;
        }
        publish_one(&self.transport, &self.naming, &self.actor, publication)
            .await
            .map_err(|e| {
                HandlerError::unavailable(
                    "PublishFailed",
                    format!("a streamed frame was not published: {e}"),
                )
            })?;
        tracing::debug!(envelope.id = %publication.envelope.id, actor = %self.actor, to = %publication.actor, "streamed frame routed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_counts_under_its_own_label() {
        let mut registry = Registry::default();
        let metrics = SidecarMetrics::new(&mut registry);
        metrics.answer(AnswerKind::Frames);
        metrics.answer(AnswerKind::Frames);
        metrics.answer(AnswerKind::HandlerError);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"troupe_sidecar_runtime_answers_total{answer="frames"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"troupe_sidecar_runtime_answers_total{answer="handler_error"} 1"#),
            "{text}"
        );
        // Every kind is there from the start, so a rate over it never starts from nothing.
        assert!(
            text.contains(r#"troupe_sidecar_runtime_answers_total{answer="unavailable"} 0"#),
            "{text}"
        );
    }
}
