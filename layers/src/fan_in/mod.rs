//! Fan-in: the aggregator that rejoins the slices of a fan-out into one merge.
//!
//! A fan-out marked for rejoin ([`troupe_core::fan_in`]) sends each slice, by whatever
//! route, to the aggregator actor. The [`Aggregator`] (a handler: serve it like any other,
//! or run `troupe aggregate`) keeps each slice in a [`FanInStore`] and, once every slice of
//! an origin is in, answers the merge ([`Outcome::Merged`]): under the origin's id, its
//! payload built by a [`Merge`] from the slices by index, its route continuing after the
//! aggregator. A slice that does not complete its origin is absorbed: nothing is
//! published for it.
//!
//! Exactly one merge per origin over at-least-once brokers:
//!
//! - a redelivered slice counts once (the store keeps one body per index);
//! - of two slices that complete an origin side by side (two replicas), exactly one sees
//!   it complete (the store's add is atomic per origin);
//! - the merge is recorded before it is answered and kept for `retention`, so a crash
//!   between the last slice and the publish, or a slice redelivered later, publishes the
//!   same merge again, with the same id, which brokers that deduplicate and the next
//!   actor's idempotency absorb.
//!
//! A slice that ends in `x-sump` anywhere on its way is reported to its aggregator by the
//! runner; the origin then merges as failed, naming its failed slices. An origin that is
//! not complete after `timeout` is merged by the [`sweep`] as failed (naming the missing
//! slices) or, with [`OnTimeout::Partial`], partial (`null` for each missing slice, their
//! indices in the `x-troupe-fan-in-missing` header). Failed merges go to `x-sump`.
//!
//! ```
//! use std::sync::Arc;
//! use serde_json::json;
//! use tower::ServiceExt;
//! use troupe_core::fan_in::mark_for_rejoin;
//! use troupe_core::{Envelope, Outcome, Route};
//! use troupe_layers::fan_in::{Aggregator, AggregatorConfig, MemoryFanInStore};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let join = Aggregator::new(AggregatorConfig::new("join"), Arc::new(MemoryFanInStore::default()));
//! let doc = Envelope::new(Route::through(["split", "join"]), json!("a b"));
//! let mut words = vec![doc.clone(), doc.clone()];
//! mark_for_rejoin(&doc, "join", &mut words);
//! for (word, text) in words.iter_mut().zip(["a", "b"]) {
//!     word.payload = json!(text).into();
//!     word.route.advance().unwrap(); // split -> join
//! }
//! assert_eq!(join.clone().oneshot(words[1].clone()).await.unwrap(), Outcome::Published);
//! let Outcome::Merged(merged) = join.oneshot(words[0].clone()).await.unwrap() else { panic!() };
//! assert_eq!((merged.id.as_str(), &*merged.payload), (doc.id.as_str(), &json!(["a", "b"])));
//! # });
//! ```

mod any;
mod memory;
mod merge;
#[cfg(feature = "nats-kv")]
mod nats_kv;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
pub mod store;
mod sweep;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tower::Service;
use troupe_core::{DecodeLimits, Envelope, ErrorInfo, FanIn, HandlerError, Outcome};

pub use any::AnyFanInStore;
pub use memory::MemoryFanInStore;
pub use merge::{Ending, FAN_IN_FAILED, FAN_IN_TIMEOUT, ListMerge, Merge, fail, merge};
#[cfg(feature = "nats-kv")]
pub use nats_kv::{BUCKET_MAX_AGE, NatsKvFanInStore};
#[cfg(feature = "postgres")]
pub use postgres::PostgresFanInStore;
#[cfg(feature = "redis")]
pub use redis::RedisFanInStore;
pub use store::{Expired, FanInStore, Gathered, StoreError, StoredSlice};
pub use sweep::sweep;

/// Error type of an envelope that reached an aggregator without usable fan-in metadata.
pub const NOT_A_SLICE: &str = "NotASlice";

/// What a timed-out origin's merge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// It fails (to `x-sump`), naming the missing slices.
    #[default]
    Fail,
    /// It continues the route with what arrived, `null` for each missing slice.
    Partial,
}

impl std::str::FromStr for OnTimeout {
    type Err = String;

    /// `fail` or `partial`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(OnTimeout::Fail),
            "partial" => Ok(OnTimeout::Partial),
            other => Err(format!("{other:?} is neither fail nor partial")),
        }
    }
}

/// How an [`Aggregator`] behaves.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// The aggregator actor (slices addressed to another are refused).
    pub actor: Arc<str>,
    /// How long an origin may stay incomplete, from its first slice.
    pub timeout: Duration,
    /// What a timed-out origin's merge is.
    pub on_timeout: OnTimeout,
    /// How long a merge is kept to answer slices redelivered after it.
    pub retention: Duration,
}

impl AggregatorConfig {
    /// Aggregator `actor`: a 10 minute timeout that fails the origin, merges kept an hour.
    pub fn new(actor: impl Into<Arc<str>>) -> Self {
        Self {
            actor: actor.into(),
            timeout: Duration::from_secs(600),
            on_timeout: OnTimeout::Fail,
            retention: Duration::from_secs(3600),
        }
    }
}

/// The aggregator handler. Cheap to clone (it is shared).
pub struct Aggregator<St> {
    config: Arc<AggregatorConfig>,
    store: Arc<St>,
    merger: Arc<dyn Merge>,
}

impl<St> Clone for Aggregator<St> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            store: self.store.clone(),
            merger: self.merger.clone(),
        }
    }
}

impl<St: FanInStore> Aggregator<St> {
    /// An aggregator over `store` with the default merge ([`ListMerge`]).
    pub fn new(config: AggregatorConfig, store: Arc<St>) -> Self {
        Self {
            config: Arc::new(config),
            store,
            merger: Arc::new(ListMerge),
        }
    }

    /// The same aggregator with `merger` building the merges.
    #[must_use]
    pub fn with_merge(mut self, merger: impl Merge) -> Self {
        self.merger = Arc::new(merger);
        self
    }

    /// Its settings.
    pub fn config(&self) -> &AggregatorConfig {
        &self.config
    }

    /// Its store.
    pub fn store(&self) -> &Arc<St> {
        &self.store
    }

    async fn gather(self, env: Envelope) -> Result<Outcome, HandlerError> {
        let actor = &*self.config.actor;
        let fan_in = match FanIn::of(&env) {
            Some(Ok(fan_in)) if fan_in.actor == actor => fan_in,
            Some(Ok(fan_in)) => {
                let message = format!(
                    "the slice is addressed to aggregator {:?}, not {actor:?}",
                    fan_in.actor
                );
                return Ok(refuse(env, message));
            }
            Some(Err(error)) => return Ok(refuse(env, error.to_string())),
            None => {
                let message = format!(
                    "the envelope carries no {} header: only slices of a fan-out marked for rejoin belong at an aggregator",
                    troupe_core::headers::FAN_IN
                );
                return Ok(refuse(env, message));
            }
        };
        let origin = fan_in.origin_id.as_str();
        let slice = StoredSlice {
            index: fan_in.slice_index,
            body: env.to_vec(),
        };
        match self
            .store
            .gather(origin, fan_in.slice_count, slice)
            .await
            .map_err(store_failed)?
        {
            Gathered::Open { have, of } => {
                tracing::debug!(envelope.id = %env.id, origin, have, of, "slice gathered");
                Ok(Outcome::Published)
            }
            Gathered::Expiring => {
                tracing::info!(envelope.id = %env.id, origin, "slice arrived after its origin timed out; dropped");
                Ok(Outcome::Published)
            }
            Gathered::CountMismatch { stored } => {
                let message = format!(
                    "origin {origin} was opened with {stored} slices, this slice says {}",
                    fan_in.slice_count
                );
                Ok(refuse(env, message))
            }
            Gathered::Merged(merged) => {
                let limits = DecodeLimits {
                    max_body_bytes: usize::MAX,
                };
                let merged = Envelope::from_slice(&merged, &limits).map_err(|e| {
                    HandlerError::new("FanInStoreError", format!("the stored merge of {origin}: {e}"))
                })?;
                tracing::info!(envelope.id = %env.id, origin, "slice of a merged origin; publishing its merge again");
                Ok(Outcome::Merged(Box::new(merged)))
            }
            Gathered::Complete(slices) => {
                let merged = merge(
                    actor,
                    origin,
                    fan_in.slice_count,
                    slices,
                    Ending::Complete,
                    &*self.merger,
                );
                self.store
                    .finish(origin, merged.to_vec(), self.config.retention)
                    .await
                    .map_err(store_failed)?;
                tracing::info!(envelope.id = %env.id, origin, slices = fan_in.slice_count, "origin merged");
                Ok(Outcome::Merged(Box::new(merged)))
            }
        }
    }
}

fn refuse(env: Envelope, message: String) -> Outcome {
    tracing::warn!(envelope.id = %env.id, %message, "not a slice for this aggregator; sending to x-sump");
    Outcome::unprocessable(
        env,
        ErrorInfo {
            message,
            type_name: NOT_A_SLICE.to_owned(),
            mro: vec![NOT_A_SLICE.to_owned()],
            traceback: None,
        },
    )
}

/// A store that did not answer holds the slice (the runner waits for it); one that
/// answered wrongly is a failure for the retry policy.
fn store_failed(error: StoreError) -> HandlerError {
    if error.unavailable {
        HandlerError::unavailable("FanInStoreUnavailable", error.to_string())
    } else {
        HandlerError::new("FanInStoreError", error.to_string())
    }
}

impl<St: FanInStore> Service<Envelope> for Aggregator<St> {
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        self.clone().gather(env).boxed()
    }
}
