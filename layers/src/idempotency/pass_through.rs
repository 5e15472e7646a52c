//! No hop records, for handlers that are idempotent by their own store.

use std::sync::Arc;
use std::time::Duration;

use troupe_core::Publication;

use super::store::{Claim, IdempotencyStore, StoreError};

/// Records nothing: every hop is claimed at once, so the idempotency layer passes every
/// delivery through. Only for handlers that are idempotent by construction, whose own
/// store already answers a redelivery correctly (the fan-in aggregator: a slice counts once,
/// a merged origin answers its merge). It spares them the store round trips and, after a
/// crash, the wait for their claims to lapse.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThroughStore;

impl IdempotencyStore for PassThroughStore {
    async fn claim(&self, _: &str, _: Duration) -> Result<Claim, StoreError> {
        Ok(Claim::Acquired)
    }

    async fn complete(&self, _: &str, _: &Arc<[Publication]>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn mark_published(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn release(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
