//! The trace layer: one `tracing` span per envelope per hop, and W3C trace context carried
//! across hops in the `traceparent` header.
//!
//! The incoming `traceparent` (if valid) names this hop's parent; the hop gets a fresh span
//! id and writes it into the envelope's `traceparent` before the handler runs. The handler
//! thus sees its own context, and every envelope derived from the input (outputs, retries,
//! sink and sump envelopes) carries this hop as its parent, so a collector can stitch a
//! pipeline together. An envelope a handler builds from nothing starts a new trace.
//! `tracestate` passes through untouched.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use rand::Rng;
use serde_json::Value;
use tower::{Layer, Service};
use tracing::Instrument;
use troupe_core::headers::TRACEPARENT;
use troupe_core::{Dispatch, Envelope};

/// A W3C trace context (`traceparent`, version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id (never zero).
    pub trace_id: u128,
    /// 8-byte id of the span that is the parent of what follows (never zero).
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` header value; `None` if it is not a valid version-00 value.
    ///
    /// ```
    /// use troupe_layers::trace::TraceContext;
    /// let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    /// assert_eq!(ctx.span_id, 0x00f067aa0ba902b7);
    /// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    /// ```
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || version != "00"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let ctx = Self {
            trace_id: lower_hex(trace)?,
            span_id: u64::try_from(lower_hex(span)?).ok()?,
            flags: u8::try_from(lower_hex(flags)?).ok()?,
        };
        (ctx.trace_id != 0 && ctx.span_id != 0).then_some(ctx)
    }

    /// A new trace, sampled.
    pub fn root() -> Self {
        let mut rng = rand::rng();
        Self {
            trace_id: rng.random_range(1..=u128::MAX),
            span_id: rng.random_range(1..=u64::MAX),
            flags: 1,
        }
    }

    /// A child in the same trace, with a fresh span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::rng().random_range(1..=u64::MAX),
            ..*self
        }
    }
}

/// The value of lowercase hex digits (W3C trace context allows no other case), at most 32.
fn lower_hex(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |value, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(digit))
    })
}

/// Writes `value`'s low `out.len()` nibbles as lowercase hex, most significant first.
fn write_hex(out: &mut [u8], mut value: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value. Written by hand: it is made on every hop, and going
    /// through `fmt`'s padding machinery for 50 hex digits was a visible share of one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut out[3..35], self.trace_id);
        write_hex(&mut out[36..52], u128::from(self.span_id));
        write_hex(&mut out[53..55], u128::from(self.flags));
        // Every byte is ASCII, so this never fails.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// One span per hop and trace-context propagation for actor `actor`.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    actor: Arc<str>,
}

impl TraceLayer {
    /// Tracing for the actor named `actor`.
    pub fn new(actor: impl Into<Arc<str>>) -> Self {
        Self { actor: actor.into() }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            actor: self.actor.clone(),
        }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    actor: Arc<str>,
}

impl<S> Service<Envelope> for Trace<S>
where
    S: Service<Envelope, Response = Dispatch>,
    S::Future: Send + 'static,
{
    type Response = Dispatch;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Dispatch, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let parent = env.header_str(TRACEPARENT).and_then(TraceContext::parse);
        let hop = parent.map_or_else(TraceContext::root, |p| p.child());
        let span = tracing::info_span!(
            "hop",
            envelope.id = %env.id,
            actor = %self.actor,
            attempt = env.attempt_at(&self.actor),
            trace_id = %format_args!("{:032x}", hop.trace_id),
            span_id = %format_args!("{:016x}", hop.span_id),
            parent_span_id = parent.map(|p| p.span_id),
        );
        // The handler sees this hop's context (to pass on in its own calls), and every
        // envelope derived from its input (outputs, retries, sink) carries it onward.
        let mut env = env;
        env.headers
            .insert(TRACEPARENT.to_owned(), Value::String(hop.to_string()));
        self.inner.call(env).instrument(span).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceBuilder, ServiceExt};
    use troupe_core::{Outcome, Route, handler_fn};

    use crate::route::RouteLayer;

    #[test]
    fn parse_rejects_malformed_values() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let root = TraceContext::root();
        assert_eq!(TraceContext::parse(&root.to_string()), Some(root));
    }

    #[test]
    fn display_is_the_w3c_form() {
        let small = TraceContext {
            trace_id: 1,
            span_id: 0xab,
            flags: 1,
        };
        assert_eq!(
            small.to_string(),
            "00-00000000000000000000000000000001-00000000000000ab-01"
        );
        for _ in 0..200 {
            let c = TraceContext::root().child();
            let reference = format!("00-{:032x}-{:016x}-{:02x}", c.trace_id, c.span_id, c.flags);
            assert_eq!(c.to_string(), reference);
            assert_eq!(TraceContext::parse(&reference), Some(c));
        }
    }

    #[tokio::test]
    async fn outputs_continue_the_incoming_trace() {
        let svc = ServiceBuilder::new()
            .layer(TraceLayer::new("a"))
            .layer(RouteLayer::new("a"))
            .service(handler_fn(|e: Envelope| async move { Ok(Outcome::forward(e)) }));
        let mut env = Envelope::new(Route::through(["a", "b"]), Value::Null);
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        env.headers.insert(TRACEPARENT.into(), incoming.into());
        let d = svc.oneshot(env).await.unwrap();
        let out = TraceContext::parse(d.publications()[0].envelope.header_str(TRACEPARENT).unwrap()).unwrap();
        assert_eq!(out.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(out.span_id, 0x00f067aa0ba902b7);
    }
}
