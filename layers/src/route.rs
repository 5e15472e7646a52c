//! The route layer: applies protocol §2 around a handler.
//!
//! Before the handler: an envelope whose `route.curr` is not this actor (nor mapped to it by
//! `x-asya-route-override`) goes to `x-sump` as `RouteMismatch`; one whose
//! `status.deadline_at` has passed goes to `x-sink` as failed with `Timeout`.
//!
//! After the handler:
//! - [`Outcome::Forward`]: each output must keep `prev`/`curr` (only `next` is the handler's);
//!   fan-out ids are assigned (§2.5); each route advances; a finished route goes to `x-sink`
//!   as succeeded/`Completed`, others to their next actor (overrides applied);
//! - [`Outcome::End`]: to `x-sink` as succeeded, route not advanced (§2.4);
//! - [`Outcome::Published`]: nothing left to publish (the handler routed each output with
//!   [`route_output`] and published it as it was produced);
//! - [`Outcome::Merged`]: a fan-in's merge, its id kept; its route advances as for a
//!   forward, or it goes to `x-sump` when it failed (see [`route_merged`]);
//! - [`Outcome::Unprocessable`]: to `x-sump` as failed with `ParseError`, no retry (§2.7);
//! - a route defect by the handler (changed `prev`/`curr`, no outputs) is a handler failure
//!   of type `RouteViolation` / `EmptyOutcome`, left to the retry policy.

use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::Utc;
use futures_util::future::{self, BoxFuture, Either, FutureExt};
use serde_json::Value;
use tower::{Layer, Service};
use troupe_core::headers::{FIRST_ATTEMPT, SPAWNED};
use troupe_core::{
    Dispatch, Envelope, ErrorInfo, HandlerError, Outcome, Phase, Publication, Reason, Route, SINK, SUMP,
    assign_fan_out_ids, validate_name,
};

/// Error type name of a handler that changed `route.prev` or `route.curr`.
pub const ROUTE_VIOLATION: &str = "RouteViolation";
/// Error type name of a handler that forwarded no envelope at all.
pub const EMPTY_OUTCOME: &str = "EmptyOutcome";

/// Applies the routing rules for actor `actor`. See the module docs.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    actor: Arc<str>,
}

impl RouteLayer {
    /// Routing for the actor named `actor`.
    pub fn new(actor: impl Into<Arc<str>>) -> Self {
        Self { actor: actor.into() }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            actor: self.actor.clone(),
        }
    }
}

/// See [`RouteLayer`].
#[derive(Debug, Clone)]
pub struct RouteService<S> {
    inner: S,
    actor: Arc<str>,
}

impl<S> Service<Envelope> for RouteService<S>
where
    S: Service<Envelope, Response = Outcome, Error = HandlerError>,
    S::Future: Send + 'static,
{
    type Response = Dispatch;
    type Error = HandlerError;
    type Future = Either<
        future::Ready<Result<Dispatch, HandlerError>>,
        BoxFuture<'static, Result<Dispatch, HandlerError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut env: Envelope) -> Self::Future {
        let actor = self.actor.clone();
        if env.destination() != &*actor || env.route.is_finished() {
            let message = format!(
                "route.curr is {:?} (resolved to {:?}) but this is actor {:?}",
                env.route.curr(),
                env.destination(),
                actor
            );
            tracing::warn!(envelope.id = %env.id, actor = %actor, %message, "route mismatch; sending to x-sump");
            fail(&mut env, &actor, Reason::RouteMismatch, "RouteMismatch", message);
            return Either::Left(future::ready(Ok(Dispatch::one(Publication::to(SUMP, env)))));
        }
        if let Some(deadline) = env.status.as_ref().and_then(|s| s.deadline_at)
            && deadline <= Utc::now()
        {
            let message = format!("deadline {deadline} passed before actor {actor:?} could run");
            fail(&mut env, &actor, Reason::Timeout, HandlerError::TIMEOUT, message);
            return Either::Left(future::ready(Ok(Dispatch::one(Publication::to(SINK, env)))));
        }

        let attempt = env.attempt_at(&actor);
        let received = Received::of(&env);
        let call = self.inner.call(env);
        Either::Right(
            async move {
                match call.await? {
                    Outcome::Forward(outputs) => forward(&actor, attempt, &received, outputs),
                    Outcome::End(env) => end(&actor, attempt, &received, *env),
                    Outcome::Published => Ok(Dispatch::new(Vec::new())),
                    Outcome::Merged(env) => Ok(Dispatch::one(route_merged(&actor, *env))),
                    Outcome::Unprocessable { envelope, error } => {
                        Ok(Dispatch::one(unprocessable(&actor, &received, *envelope, error)))
                    }
                }
            }
            .boxed(),
        )
    }
}

/// What the route layer remembers of the input while the handler runs.
struct Received {
    id: String,
    parent_id: Option<String>,
    route: Route,
}

impl Received {
    fn of(env: &Envelope) -> Self {
        Self {
            id: env.id.clone(),
            parent_id: env.parent_id.clone(),
            // Only `prev` and `curr` are checked against the outputs; `next` is the handler's.
            route: Route::new(env.route.prev().to_vec(), env.route.curr(), Vec::new()),
        }
    }
}

/// Routes one output of a handler that publishes its outputs itself, each as soon as it is
/// produced (a streaming runtime; see [`Outcome::Published`]), by the rules
/// [`Outcome::Forward`] follows: the route checked and advanced, the status updated, `x-sink`
/// for a finished route. `index` is the output's position in the stream: the first keeps
/// the input's id, later ones are fan-out children with fresh ids and `parent_id` = the
/// input's id (§2.5).
///
/// ```
/// use troupe_core::{Envelope, Route};
/// use troupe_layers::route::route_output;
/// let input = Envelope::new(Route::through(["split", "embed"]), serde_json::json!("a b"));
/// let mut second = input.clone();
/// second.payload = serde_json::json!("b").into();
/// let publication = route_output("split", &input, 1, second).unwrap();
/// assert_eq!(publication.actor, "embed");
/// assert_eq!(publication.envelope.parent_id.as_deref(), Some(input.id.as_str()));
/// ```
pub fn route_output(
    actor: &str,
    input: &Envelope,
    index: usize,
    mut output: Envelope,
) -> Result<Publication, HandlerError> {
    let received = Received::of(input);
    check_route(&output, &received)?;
    if index == 0 {
        output.id.clone_from(&received.id);
        output.parent_id.clone_from(&received.parent_id);
    } else {
        output.id = troupe_core::fan_out_id(&received.id, actor, received.route.position(), index);
        output.parent_id = Some(received.id);
        output.headers.shift_remove(SPAWNED);
    }
    Ok(advanced(actor, input.attempt_at(actor), output))
}

/// Routes the merge of a fan-in at aggregator `actor`: under its own id (the origin's), its
/// route advanced past `actor` as for a forward (`x-sink` when finished), or to `x-sump`
/// when its status says it failed.
pub fn route_merged(actor: &str, mut env: Envelope) -> Publication {
    if env.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&Phase::Failed) {
        env.headers.shift_remove(FIRST_ATTEMPT);
        return Publication::to(SUMP, env);
    }
    let attempt = env.attempt_at(actor);
    advanced(actor, attempt, env)
}

fn unprocessable(actor: &str, input: &Received, mut env: Envelope, error: ErrorInfo) -> Publication {
    env.id.clone_from(&input.id);
    let status = env.status_mut();
    status.error = Some(error);
    status.mark(Phase::Failed, Some(Reason::ParseError), actor);
    tracing::warn!(envelope.id = %env.id, actor, "the handler cannot process this envelope; sending to x-sump");
    Publication::to(SUMP, env)
}

/// The publication of a checked output: route advanced, status updated, to `x-sink` when the
/// route is finished.
fn advanced(actor: &str, attempt: u32, mut env: Envelope) -> Publication {
    // Cannot fail: the caller checked that curr equals the (unfinished) input's curr.
    let _ = env.route.advance();
    env.headers.shift_remove(FIRST_ATTEMPT);
    let finished = env.route.is_finished();
    let status = env.status_mut();
    status.attempt = Some(attempt);
    status.error = None;
    if finished {
        status.mark(Phase::Succeeded, Some(Reason::Completed), actor);
        return Publication::to(SINK, env);
    }
    status.mark(Phase::Pending, None, actor);
    to_destination(actor, env)
}

fn forward(
    actor: &str,
    attempt: u32,
    input: &Received,
    mut outputs: Vec<Envelope>,
) -> Result<Dispatch, HandlerError> {
    if outputs.is_empty() {
        return Err(HandlerError::new(
            EMPTY_OUTCOME,
            "the handler forwarded no envelope; return Outcome::End to finish the pipeline early",
        ));
    }
    for out in &outputs {
        check_route(out, input)?;
    }
    assign_fan_out_ids(
        &input.id,
        input.parent_id.as_deref(),
        actor,
        input.route.position(),
        &mut outputs,
    );
    record_spawned(&mut outputs);
    let publications = outputs
        .into_iter()
        .map(|env| advanced(actor, attempt, env))
        .collect();
    Ok(Dispatch::new(publications))
}

/// Appends the ids of a fan-out's other children to the [`SPAWNED`] list of the child
/// that keeps the input's id, so the branch's end record names every branch it spawned.
fn record_spawned(outputs: &mut [Envelope]) {
    let Some((first, others)) = outputs.split_first_mut() else {
        return;
    };
    for child in others.iter_mut() {
        // A child starts a branch of its own: the list it was cloned with is its parent's.
        child.headers.shift_remove(SPAWNED);
    }
    note_spawned(first, others.iter().map(|child| child.id.clone()));
}

/// Appends `children` to the [`SPAWNED`] list of `continuing`, the output of a fan-out
/// that keeps the input's id, so whoever records the end of its branch learns every branch
/// it spawned. A handler that streams its outputs publishes that one last, once it knows
/// its siblings.
pub fn note_spawned(continuing: &mut Envelope, children: impl IntoIterator<Item = String>) {
    let mut children = children.into_iter().peekable();
    if children.peek().is_none() {
        return;
    }
    let spawned = continuing
        .headers
        .entry(SPAWNED)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !spawned.is_array() {
        // Not ours to interpret: a handler wrote something else there. Ours replaces it.
        *spawned = Value::Array(Vec::new());
    }
    if let Value::Array(list) = spawned {
        list.extend(children.map(Value::String));
    }
}

fn end(actor: &str, attempt: u32, input: &Received, mut env: Envelope) -> Result<Dispatch, HandlerError> {
    check_route(&env, input)?;
    env.id.clone_from(&input.id);
    env.parent_id.clone_from(&input.parent_id);
    env.headers.shift_remove(FIRST_ATTEMPT);
    let status = env.status_mut();
    status.attempt = Some(attempt);
    status.error = None;
    status.mark(Phase::Succeeded, Some(Reason::Completed), actor);
    Ok(Dispatch::one(Publication::to(SINK, env)))
}

fn check_route(out: &Envelope, input: &Received) -> Result<(), HandlerError> {
    out.route
        .check_rewrite_of(&input.route)
        .map_err(|e| HandlerError::new(ROUTE_VIOLATION, e.to_string()))
}

/// The publication of `env` to its current actor (overrides applied). A name that cannot be
/// a queue is a route defect: the envelope goes to `x-sump` as `InvalidRoute`.
pub fn to_destination(actor: &str, mut env: Envelope) -> Publication {
    let dest = env.destination().to_owned();
    match validate_name("actor", &dest) {
        Ok(()) => Publication::to(dest, env),
        Err(e) => {
            fail(
                &mut env,
                actor,
                Reason::InvalidRoute,
                "InvalidRoute",
                e.to_string(),
            );
            Publication::to(SUMP, env)
        }
    }
}

/// Marks `env` failed by `actor` with `reason` and an error of type `type_name`.
fn fail(env: &mut Envelope, actor: &str, reason: Reason, type_name: &str, message: String) {
    let status = env.status_mut();
    status.error = Some(ErrorInfo {
        message,
        type_name: type_name.to_owned(),
        mro: vec![type_name.to_owned()],
        traceback: None,
    });
    status.mark(Phase::Failed, Some(reason), actor);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tower::ServiceExt;
    use troupe_core::handler_fn;
    use troupe_core::headers::ROUTE_OVERRIDE;

    fn env(route: Route) -> Envelope {
        Envelope::new(route, json!({"n": 1}))
    }

    async fn run<H>(actor: &str, handler: H, input: Envelope) -> Result<Dispatch, HandlerError>
    where
        H: Service<Envelope, Response = Outcome, Error = HandlerError> + Send + 'static,
        H::Future: Send + 'static,
    {
        RouteLayer::new(actor).layer(handler).oneshot(input).await
    }

    fn echo() -> impl Service<Envelope, Response = Outcome, Error = HandlerError, Future: Send> + Clone {
        handler_fn(|e: Envelope| async move { Ok(Outcome::forward(e)) })
    }

    #[tokio::test]
    async fn advances_to_next_actor() {
        let input = env(Route::through(["a", "b", "c"]));
        let d = run("a", echo(), input.clone()).await.unwrap();
        let [p] = d.publications() else { panic!("{d:?}") };
        assert_eq!(p.actor, "b");
        assert_eq!(p.envelope.id, input.id);
        assert_eq!(
            p.envelope.route,
            Route::new(vec!["a".into()], "b", vec!["c".into()])
        );
        assert_eq!(p.envelope.status.as_ref().unwrap().phase, Some(Phase::Pending));
    }

    #[tokio::test]
    async fn finished_route_goes_to_sink_succeeded() {
        let d = run(
            "c",
            echo(),
            env(Route::new(vec!["a".into(), "b".into()], "c", vec![])),
        )
        .await
        .unwrap();
        let p = &d.publications()[0];
        assert_eq!(p.actor, SINK);
        let s = p.envelope.status.as_ref().unwrap();
        assert_eq!(
            (s.phase, s.reason.clone()),
            (Some(Phase::Succeeded), Some(Reason::Completed))
        );
        assert_eq!(p.envelope.route.prev(), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn early_end_goes_to_sink_without_advancing() {
        let h = handler_fn(|e: Envelope| async move { Ok(Outcome::end(e)) });
        let input = env(Route::through(["a", "b"]));
        let d = run("a", h, input.clone()).await.unwrap();
        let p = &d.publications()[0];
        assert_eq!(p.actor, SINK);
        assert_eq!(p.envelope.route, input.route);
        assert_eq!(p.envelope.status.as_ref().unwrap().phase, Some(Phase::Succeeded));
    }

    #[tokio::test]
    async fn fan_out_children_get_protocol_ids() {
        let h = handler_fn(|e: Envelope| async move {
            let kids = (0..3)
                .map(|i| {
                    let mut k = e.clone();
                    k.payload = json!(i).into();
                    k
                })
                .collect();
            Ok(Outcome::Forward(kids))
        });
        let input = env(Route::through(["split", "next"]));
        let d = run("split", h, input.clone()).await.unwrap();
        assert_eq!(d.publications().len(), 3);
        assert_eq!(d.publications()[0].envelope.id, input.id);
        assert_eq!(d.publications()[0].envelope.parent_id, None);
        for p in &d.publications()[1..] {
            assert_ne!(p.envelope.id, input.id);
            assert_eq!(p.envelope.parent_id.as_deref(), Some(input.id.as_str()));
            assert_eq!(p.actor, "next");
            assert!(
                p.envelope.headers.get(SPAWNED).is_none(),
                "a child's own list starts empty"
            );
        }
        let spawned: Vec<&str> = d.publications()[1..]
            .iter()
            .map(|p| p.envelope.id.as_str())
            .collect();
        assert_eq!(
            d.publications()[0].envelope.headers[SPAWNED],
            json!(spawned),
            "the branch that keeps the id names the others"
        );
    }

    #[tokio::test]
    async fn streamed_outputs_follow_the_forward_rules() {
        let input = env(Route::through(["split", "next"]));
        let first = route_output("split", &input, 0, input.clone()).unwrap();
        assert_eq!(
            (first.actor.as_str(), first.envelope.id.as_str()),
            ("next", input.id.as_str())
        );
        let mut last = input.clone();
        last.route.next_mut().clear();
        let last = route_output("split", &input, 1, last).unwrap();
        assert_eq!(last.actor, SINK, "a finished route goes to x-sink");
        assert_ne!(last.envelope.id, input.id);
        assert_eq!(last.envelope.parent_id.as_deref(), Some(input.id.as_str()));
        let mut moved = input.clone();
        moved.route = Route::through(["elsewhere"]);
        let err = route_output("split", &input, 2, moved).unwrap_err();
        assert_eq!(err.type_name(), ROUTE_VIOLATION);

        let h = handler_fn(|_: Envelope| async move { Ok(Outcome::Published) });
        let d = run("split", h, input).await.unwrap();
        assert!(d.publications().is_empty(), "nothing left to publish");
    }

    #[tokio::test]
    async fn unprocessable_goes_to_sump_without_retry() {
        let h = handler_fn(|e: Envelope| async move {
            let error = ErrorInfo {
                message: "payload is not an object".into(),
                type_name: "msg_parsing_error".into(),
                mro: vec![],
                traceback: None,
            };
            Ok(Outcome::unprocessable(e, error))
        });
        let input = env(Route::through(["parse", "next"]));
        let d = run("parse", h, input.clone()).await.unwrap();
        let p = &d.publications()[0];
        assert_eq!(
            (p.actor.as_str(), p.envelope.id.as_str()),
            (SUMP, input.id.as_str())
        );
        let status = p.envelope.status.as_deref().unwrap();
        assert_eq!(status.reason, Some(Reason::ParseError));
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(status.error.as_ref().unwrap().type_name, "msg_parsing_error");
    }

    #[tokio::test]
    async fn handler_may_rewrite_next_but_not_prev_or_curr() {
        let add_refine = handler_fn(|mut e: Envelope| async move {
            e.route.next_mut().push("refine".into());
            Ok(Outcome::forward(e))
        });
        let d = run("judge", add_refine, env(Route::through(["judge"])))
            .await
            .unwrap();
        assert_eq!(d.publications()[0].actor, "refine");

        let tamper = handler_fn(|mut e: Envelope| async move {
            e.route = Route::through(["elsewhere"]);
            Ok(Outcome::forward(e))
        });
        let err = run("judge", tamper, env(Route::through(["judge"])))
            .await
            .unwrap_err();
        assert_eq!(err.type_name(), ROUTE_VIOLATION);
    }

    #[tokio::test]
    async fn mismatch_goes_to_sump_and_override_is_honoured() {
        let d = run("b", echo(), env(Route::through(["a", "b"]))).await.unwrap();
        let p = &d.publications()[0];
        assert_eq!(p.actor, SUMP);
        assert_eq!(
            p.envelope.status.as_ref().unwrap().reason,
            Some(Reason::RouteMismatch)
        );

        let mut input = env(Route::through(["model", "store"]));
        input.headers.insert(
            ROUTE_OVERRIDE.into(),
            json!({"model": "model-v2", "store": "store-eu"}),
        );
        let d = run("model-v2", echo(), input).await.unwrap();
        assert_eq!(d.publications()[0].actor, "store-eu");
    }

    #[tokio::test]
    async fn past_deadline_ends_as_timeout_without_running() {
        let h = handler_fn(|_: Envelope| async move { panic!("must not run") });
        let mut input = env(Route::through(["a"]));
        input.status_mut().deadline_at = Some(Utc::now() - chrono::Duration::seconds(1));
        let d = run("a", h, input).await.unwrap();
        let s = d.publications()[0].envelope.status.as_ref().unwrap();
        assert_eq!(d.publications()[0].actor, SINK);
        assert_eq!(
            (s.phase, s.reason.clone()),
            (Some(Phase::Failed), Some(Reason::Timeout))
        );
    }

    #[tokio::test]
    async fn illegal_next_actor_goes_to_sump() {
        let h = handler_fn(|mut e: Envelope| async move {
            e.route.set_next(vec!["no spaces allowed".into()]);
            Ok(Outcome::forward(e))
        });
        let d = run("a", h, env(Route::through(["a"]))).await.unwrap();
        assert_eq!(d.publications()[0].actor, SUMP);
        assert_eq!(
            d.publications()[0].envelope.status.as_ref().unwrap().reason,
            Some(Reason::InvalidRoute)
        );
    }
}
