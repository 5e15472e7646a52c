//! The idempotency layer: turns at-least-once delivery into effectively-once processing.
//!
//! Each hop is keyed by `envelope id / actor / route position / attempt / payload digest`
//! ([`Envelope::hop_key`]). The attempt is part of the key because a retry is a new
//! message to the same actor; without it the retried envelope would look like a duplicate
//! of the failed try. The payload digest is part of it because ids come from clients: two
//! different envelopes under one id are two hops, not one hop seen twice.
//!
//! The protocol of one hop:
//! 1. claim the key (for `claim_ttl`, so a crashed owner's claim lapses);
//! 2. run the inner stack; record its outputs in the store *before* they are published;
//! 3. the runner publishes them; once all are confirmed, a hook marks the hop published;
//! 4. the runner acks.
//!
//! A redelivery then finds: `Published` (crash between publish and ack) → acked with no
//! output at all, so downstream sees no duplicate; `Completed` (crash before every publish
//! was confirmed) → the *recorded* outputs are published again, same ids and payloads, the
//! handler is not run; `InProgress` (a concurrent duplicate) → an error, so the runner
//! redelivers it later.

mod any;
mod memory;
#[cfg(feature = "nats-kv")]
pub(crate) mod nats_kv;
mod pass_through;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "redis", feature = "postgres", feature = "nats-kv"))]
mod record;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod store;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tower::{BoxError, Layer, Service};
use troupe_core::{Dispatch, Envelope, Publication, Unavailable};

pub use any::{AnyStore, StoreUrl, UnknownStore};
pub use memory::{MemoryStore, MemoryStoreConfig};
#[cfg(feature = "nats-kv")]
pub use nats_kv::{NatsKvStore, NatsKvStoreConfig};
pub use pass_through::PassThroughStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreConfig};
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreConfig};
pub use store::{Claim, IdempotencyStore, StoreError};

/// Why the idempotency layer could not answer.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// Another worker holds the claim on this hop; retry later.
    #[error("hop {key} is being processed elsewhere; it will be retried after that claim settles")]
    InProgress {
        /// The hop key.
        key: String,
    },
    /// The store answered, but not as it should.
    #[error(transparent)]
    Store(StoreError),
    /// The store did not answer: the runner holds the delivery until it does.
    #[error("{0}")]
    StoreUnavailable(#[source] Unavailable),
    /// The inner stack failed.
    #[error("inner service failed: {0}")]
    Inner(#[source] BoxError),
}

impl From<StoreError> for IdempotencyError {
    fn from(error: StoreError) -> Self {
        if error.unavailable {
            IdempotencyError::StoreUnavailable(Unavailable::new("the idempotency store", error.to_string()))
        } else {
            IdempotencyError::Store(error)
        }
    }
}

/// Effectively-once processing over `store` for actor `actor`. See the module docs.
pub struct IdempotencyLayer<St> {
    actor: Arc<str>,
    store: Arc<St>,
    claim_ttl: Duration,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            store: self.store.clone(),
            claim_ttl: self.claim_ttl,
        }
    }
}

impl<St: IdempotencyStore> IdempotencyLayer<St> {
    /// Deduplication of `actor`'s hops in `store`; claims last 60 s by default (set it
    /// above the handler timeout with [`IdempotencyLayer::claim_ttl`]).
    pub fn new(actor: impl Into<Arc<str>>, store: Arc<St>) -> Self {
        Self {
            actor: actor.into(),
            store,
            claim_ttl: Duration::from_secs(60),
        }
    }

    /// How long a claim holds before a redelivery may take the hop over.
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`IdempotencyLayer`].
pub struct Idempotency<S, St> {
    inner: S,
    layer: IdempotencyLayer<St>,
}

impl<S: Clone, St> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, St> Service<Envelope> for Idempotency<S, St>
where
    S: Service<Envelope, Response = Dispatch> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    St: IdempotencyStore,
{
    type Response = Dispatch;
    type Error = IdempotencyError;
    type Future = BoxFuture<'static, Result<Dispatch, IdempotencyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), IdempotencyError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| IdempotencyError::Inner(e.into()))
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        let key = env.hop_key(&self.layer.actor);
        let store = self.layer.store.clone();
        let ttl = self.layer.claim_ttl;
        // The readied service runs this call; a fresh clone takes its place (tower's
        // clone-and-swap idiom), since the claim must be awaited before the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        async move {
            match store.claim(&key, ttl).await? {
                Claim::Acquired => {}
                Claim::InProgress => return Err(IdempotencyError::InProgress { key }),
                Claim::Published => {
                    tracing::info!(envelope.id = %env.id, hop = %key, "duplicate of a published hop; acknowledging without output");
                    return Ok(Dispatch::default());
                }
                Claim::Completed(outputs) => {
                    tracing::info!(envelope.id = %env.id, hop = %key, outputs = outputs.len(), "duplicate of a completed hop; re-emitting its recorded outputs");
                    let mut dispatch = Dispatch::shared(outputs);
                    dispatch.on_published(mark_published(store, key));
                    return Ok(dispatch);
                }
            }
            // Until the outputs are recorded, any way out of this hop (an error, a panic
            // unwinding through here, the runner dropping the work at shutdown, a failed
            // record) gives the claim back, so the redelivery can run the hop.
            let claim = ClaimGuard {
                store: store.clone(),
                key: Some(key),
            };
            // A failed or panicked hop gives its claim back before the runner sees the
            // failure: released afterwards (by the guard's task), the claim could still be
            // held when the nack's redelivery arrives, which then spends a redelivery on
            // `InProgress` (found under CI load with a 20 ms redelivery delay).
            let called = AssertUnwindSafe(inner.call(env))
                .catch_unwind()
                .await
                .map(|r| r.map_err(|e| IdempotencyError::Inner(e.into())));
            let mut dispatch = match called {
                Ok(Ok(dispatch)) => dispatch,
                Ok(Err(error)) => {
                    claim.release().await;
                    return Err(error);
                }
                Err(panic) => {
                    claim.release().await;
                    std::panic::resume_unwind(panic);
                }
            };
            let key = claim.recorded(dispatch.share_publications()).await?;
            dispatch.on_published(mark_published(store, key));
            Ok(dispatch)
        }
        .boxed()
    }
}

/// Releases a claim when dropped before the hop's outputs were recorded.
struct ClaimGuard<St: IdempotencyStore> {
    store: Arc<St>,
    key: Option<String>,
}

impl<St: IdempotencyStore> ClaimGuard<St> {
    /// Records the outputs; from then on the claim is the record and is kept.
    async fn recorded(mut self, outputs: Arc<[Publication]>) -> Result<String, StoreError> {
        let key = self.key.as_deref().unwrap_or_default();
        self.store.complete(key, &outputs).await?;
        Ok(self.key.take().unwrap_or_default())
    }

    /// Gives the claim back now, so that a redelivery finds the hop free.
    async fn release(mut self) {
        let Some(key) = self.key.take() else { return };
        if let Err(error) = self.store.release(&key).await {
            tracing::warn!(hop = %key, %error, "could not release a failed hop's claim; it lapses with its ttl");
        }
    }
}

impl<St: IdempotencyStore> Drop for ClaimGuard<St> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let store = self.store.clone();
        // Drop cannot await; the release runs as its own small task. Outside a runtime
        // (nothing to run it on) the claim simply lapses with its ttl.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = store.release(&key).await {
                    tracing::warn!(hop = %key, %error, "could not release an unfinished hop's claim; it lapses with its ttl");
                }
            });
        }
    }
}

fn mark_published<St: IdempotencyStore>(store: Arc<St>, key: String) -> troupe_core::PublishedHook {
    Box::new(move || {
        async move {
            if let Err(error) = store.mark_published(&key).await {
                // The outputs stay recorded as Completed: a redelivery re-emits the same
                // envelopes (same ids), which the next hop's idempotency absorbs.
                tracing::warn!(hop = %key, %error, "could not mark hop published");
            }
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;
    use troupe_core::{Outcome, Route, handler_fn};

    use crate::route::RouteLayer;

    fn counting_stack(
        calls: Arc<AtomicUsize>,
        store: Arc<MemoryStore>,
    ) -> impl Service<Envelope, Response = Dispatch, Error = IdempotencyError> + Clone {
        let handler = handler_fn(move |e: Envelope| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Outcome::forward(e)) }
        });
        tower::ServiceBuilder::new()
            .layer(IdempotencyLayer::new("a", store))
            .layer(RouteLayer::new("a"))
            .service(handler)
    }

    async fn run_hooks(d: &mut Dispatch) {
        for hook in d.take_hooks() {
            hook().await;
        }
    }

    #[tokio::test]
    async fn duplicates_after_publish_emit_nothing_and_before_publish_re_emit() {
        let calls = Arc::new(AtomicUsize::new(0));
        let store = Arc::new(MemoryStore::default());
        let svc = counting_stack(calls.clone(), store);
        let env = Envelope::new(Route::through(["a", "b"]), serde_json::json!(1));

        // First delivery: processed, but "crash" before the publish is confirmed.
        let first = svc.clone().oneshot(env.clone()).await.unwrap();
        assert_eq!(first.publications().len(), 1);
        // Redelivery: the recorded output again, handler not run.
        let mut second = svc.clone().oneshot(env.clone()).await.unwrap();
        assert_eq!(second.publications(), first.publications());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // This time the publish is confirmed...
        run_hooks(&mut second).await;
        // ...so a further redelivery emits nothing.
        let third = svc.oneshot(env).await.unwrap();
        assert!(third.publications().is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_retry_is_not_a_duplicate() {
        let store = Arc::new(MemoryStore::default());
        let env = Envelope::new(Route::through(["a"]), serde_json::Value::Null);
        let mut retried = env.clone();
        let s = retried.status_mut();
        s.phase = Some(troupe_core::Phase::Retrying);
        s.actor = Some("a".into());
        s.attempt = Some(2);
        assert_ne!(env.hop_key("a"), retried.hop_key("a"));
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = counting_stack(calls.clone(), store);
        svc.clone().oneshot(env).await.unwrap();
        svc.oneshot(retried).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A stack whose handler fails (or panics) on every call.
    fn failing_stack(
        store: Arc<MemoryStore>,
        panics: bool,
    ) -> impl Service<Envelope, Response = Dispatch, Error = IdempotencyError> + Clone {
        let handler = handler_fn(move |_: Envelope| async move {
            assert!(!panics, "the handler panics");
            Err::<Outcome, _>(troupe_core::HandlerError::new("Broken", "the handler fails"))
        });
        tower::ServiceBuilder::new()
            .layer(IdempotencyLayer::new("a", store))
            .layer(RouteLayer::new("a"))
            .service(handler)
    }

    // On the current-thread test runtime a spawned release has not run when the call
    // returns, so these fail if the claim is given back only after the failure is seen.
    #[tokio::test]
    async fn a_failed_hop_has_released_its_claim_when_the_error_is_seen() {
        let store = Arc::new(MemoryStore::default());
        let env = Envelope::new(Route::through(["a"]), serde_json::Value::Null);
        let key = env.hop_key("a");
        let result = failing_stack(store.clone(), false).oneshot(env).await;
        assert!(matches!(result, Err(IdempotencyError::Inner(_))));
        let claim = store.claim(&key, Duration::from_secs(60)).await.unwrap();
        assert_eq!(claim, Claim::Acquired);
    }

    #[tokio::test]
    async fn a_panicked_hop_has_released_its_claim_when_the_panic_is_seen() {
        let store = Arc::new(MemoryStore::default());
        let env = Envelope::new(Route::through(["a"]), serde_json::Value::Null);
        let key = env.hop_key("a");
        let result = AssertUnwindSafe(failing_stack(store.clone(), true).oneshot(env))
            .catch_unwind()
            .await;
        assert!(result.is_err(), "the panic reaches the caller");
        let claim = store.claim(&key, Duration::from_secs(60)).await.unwrap();
        assert_eq!(claim, Claim::Acquired);
    }

    #[tokio::test]
    async fn concurrent_duplicate_is_told_to_come_back() {
        let store = Arc::new(MemoryStore::default());
        let env = Envelope::new(Route::through(["a"]), serde_json::Value::Null);
        store
            .claim(&env.hop_key("a"), Duration::from_secs(60))
            .await
            .unwrap();
        let svc = counting_stack(Arc::new(AtomicUsize::new(0)), store);
        assert!(matches!(
            svc.oneshot(env).await,
            Err(IdempotencyError::InProgress { .. })
        ));
    }
}
