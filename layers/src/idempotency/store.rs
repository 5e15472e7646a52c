//! The store contract the idempotency layer relies on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use troupe_core::Publication;

/// What a store knows about a hop when it is claimed.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Nobody has processed this hop: the caller now owns it.
    Acquired,
    /// Someone else is processing it right now (their claim has not expired).
    InProgress,
    /// It was processed and its outputs recorded, but they may not all have been published:
    /// publish these again.
    Completed(Arc<[Publication]>),
    /// It was processed and every output was confirmed published: nothing left to do.
    Published,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[error("store {operation} failed: {detail}")]
pub struct StoreError {
    /// What was being done (claim, complete, ...).
    pub operation: &'static str,
    /// What went wrong.
    pub detail: String,
    /// The store did not answer (refused, dropped or timed-out connection) rather than
    /// answering something wrong: the runner holds the delivery until it answers again
    /// instead of spending the envelope's redeliveries on the outage.
    pub unavailable: bool,
}

impl StoreError {
    /// The store answered, but not as it should (a corrupt record, a lapsed claim).
    pub fn failed(operation: &'static str, detail: impl Into<String>) -> Self {
        Self {
            operation,
            detail: detail.into(),
            unavailable: false,
        }
    }

    /// The store did not answer.
    pub fn unavailable(operation: &'static str, detail: impl Into<String>) -> Self {
        Self {
            unavailable: true,
            ..Self::failed(operation, detail)
        }
    }
}

/// Where hops are recorded. Shared stores (Redis, NATS KV) make the guarantee hold across
/// replicas; the in-memory store only within one process.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `ttl` (a crashed owner's claim lapses after it), or reports what is
    /// already known about it.
    fn claim(&self, key: &str, ttl: Duration) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records the outputs of a claimed hop, before they are published. The handle is
    /// shared with the runner; a store that keeps them in memory keeps the handle.
    fn complete(
        &self,
        key: &str,
        outputs: &Arc<[Publication]>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records that every output of the hop was confirmed published.
    fn mark_published(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives a claim up without a result (the hop failed), so a redelivery may run it.
    fn release(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}
