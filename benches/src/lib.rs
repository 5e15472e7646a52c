//! Shared fixtures for Troupe's benchmarks.

#![forbid(unsafe_code)]

/// The allocator the `troupe` binaries use, so benchmarks measure what ships.
pub type Allocator = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use troupe::layers::{IdempotencyError, MemoryStore, MeshMetrics, RetryPolicies, StackConfig, actor_stack};
use troupe::{Dispatch, Envelope, HandlerError, Outcome, Route, handler_fn};

/// A payload whose JSON encoding is about `bytes` long: a realistic mix of fields plus
/// filler text.
pub fn payload_of(bytes: usize) -> Value {
    let mut v = json!({"doc": 42, "lang": "en", "scores": [0.12, 0.5, 0.97], "meta": {"source": "bench", "ok": true}});
    let room = bytes.saturating_sub(v.to_string().len() + 12);
    v["text"] = Value::String("lorem ipsum ".repeat(room / 12 + 1)[..room].to_owned());
    v
}

/// An envelope at the start of `a -> b -> c` with a payload of about `bytes`.
pub fn envelope_of(bytes: usize) -> Envelope {
    envelope_through(&["a", "b", "c"], bytes)
}

/// An envelope at the start of a route through `actors` with a payload of about `bytes`.
pub fn envelope_through(actors: &[&str], bytes: usize) -> Envelope {
    let mut env = Envelope::new(Route::through(actors.iter().copied()), payload_of(bytes));
    env.headers.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    env
}

/// The standard stack for `actor` around a handler that forwards its input unchanged.
pub fn noop_stack(
    actor: &str,
    metrics: &MeshMetrics,
    store: Arc<MemoryStore>,
) -> impl tower::Service<Envelope, Response = Dispatch, Error = IdempotencyError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    actor_stack(
        StackConfig {
            actor: actor.into(),
            retry: RetryPolicies::default(),
            timeout: Duration::from_secs(30),
            store,
            metrics: metrics.actor(actor),
        },
        handler_fn(|e: Envelope| async move { Ok::<_, HandlerError>(Outcome::forward(e)) }),
    )
}

/// CPU time this process has used so far (user + system), from `/proc/self/stat`.
pub fn cpu_time() -> Duration {
    process_cpu_time("self")
}

/// CPU time process `pid` (all its threads) has used so far (user + system), from
/// `/proc/{pid}/stat`; zero when it cannot be read.
pub fn process_cpu_time(pid: &str) -> Duration {
    // Fields 14 and 15 (utime, stime), in clock ticks of USER_HZ = 100 on Linux.
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        });
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}
