//! Composing Troupe's layers in your own tower service, without the runner or a broker.
//!
//! Run with `cargo run --example compose_layers`. The stack below turns one incoming
//! envelope into the publications the runner would send: here the handler fails once with a
//! retryable error, so the first call answers "retry me in 50 ms" and the second forwards
//! the envelope to its next actor.

use std::time::Duration;

use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};
use troupe::layers::{
    DeadlineLayer, MeshMetrics, RetryLayer, RetryPolicies, RetryPolicy, RouteLayer, TraceLayer,
};
use troupe::{Envelope, HandlerError, Outcome, Route, handler_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = MeshMetrics::new(&mut registry).actor("enrich");

    // A handler that fails on its first attempt, as a flaky model server would.
    let handler = handler_fn(|mut env: Envelope| async move {
        if env.attempt_at("enrich") == 1 {
            return Err(HandlerError::new("ConnectionError", "model server reset")
                .with_mro(["ConnectionError", "OSError"]));
        }
        env.payload["enriched"] = json!(true);
        Ok(Outcome::forward(env))
    });

    let retry = RetryPolicies::new(RetryPolicy::constant(1, Duration::ZERO)).with_rule(
        ["OSError"],
        "transient",
        RetryPolicy::constant(3, Duration::from_millis(50)),
    );
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new("enrich"))
        .layer(metrics.layer())
        .layer(RetryLayer::new("enrich", retry))
        .layer(RouteLayer::new("enrich"))
        .layer(DeadlineLayer::new(Duration::from_secs(5)))
        .service(handler);

    let input = Envelope::new(Route::through(["enrich", "store"]), json!({"text": "hello"}));
    let first = stack.clone().oneshot(input).await?;
    let retry = &first.publications()[0];
    println!(
        "attempt 1 -> publish to {:?} after {:?}, status {:?}",
        retry.actor,
        retry.delay,
        retry.envelope.status.as_ref().and_then(|s| s.phase)
    );

    let second = stack.oneshot(retry.envelope.clone()).await?;
    let next = &second.publications()[0];
    println!(
        "attempt 2 -> publish to {:?}: route {:?} -> {:?}, payload {}",
        next.actor,
        next.envelope.route.prev(),
        next.envelope.route.curr(),
        next.envelope.payload
    );
    println!(
        "\n{}",
        troupe::layers::metrics::render(&registry)
            .lines()
            .filter(|l| l.contains("_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
