//! The timeout: origins that stay incomplete are merged without their missing slices.

use std::time::{Duration, SystemTime};

use troupe_core::{CancellationToken, QueueNaming, Transport, publish_one};

use super::merge::{Ending, merge};
use super::{Aggregator, FanInStore, OnTimeout};
use crate::route::route_merged;

/// Origins taken over per store query.
const BATCH: usize = 256;

/// Merges every origin of `aggregator` still incomplete `timeout` after its first slice,
/// as its config says (failed or partial), publishing each merge on `transport`, until
/// `shutdown`. Looks every quarter of the timeout (at most every 30 s). Several replicas
/// may sweep one store: a merge published twice carries the same id both times.
pub async fn sweep<St, T>(
    aggregator: Aggregator<St>,
    transport: T,
    naming: QueueNaming,
    shutdown: CancellationToken,
) where
    St: FanInStore,
    T: Transport,
{
    let config = aggregator.config().clone();
    let every = (config.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = sweep_once(&aggregator, &transport, &naming).await {
            tracing::warn!(actor = %config.actor, %error, "fan-in timeout sweep failed; trying again next round");
        }
    }
}

/// One round of [`sweep`]: returns how many origins it merged.
pub(crate) async fn sweep_once<St, T>(
    aggregator: &Aggregator<St>,
    transport: &T,
    naming: &QueueNaming,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>>
where
    St: FanInStore,
    T: Transport,
{
    let config = aggregator.config();
    let store = aggregator.store();
    let actor = &*config.actor;
    let before = SystemTime::now()
        .checked_sub(config.timeout)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let ending = match config.on_timeout {
        OnTimeout::Fail => Ending::TimedOutFailed(config.timeout),
        OnTimeout::Partial => Ending::TimedOutPartial(config.timeout),
    };
    let mut merged = 0;
    for origin in store.overdue(before, BATCH).await? {
        let Some(expired) = store.expire(&origin).await? else {
            continue;
        };
        let have = expired.slices.len();
        let env = merge(
            actor,
            &origin,
            expired.slice_count,
            expired.slices,
            ending,
            &*aggregator.merger,
        );
        let body = env.to_vec();
        publish_one(transport, naming, actor, &route_merged(actor, env)).await?;
        store.finish(&origin, body, config.retention).await?;
        tracing::warn!(actor, origin, have, of = expired.slice_count, on_timeout = ?config.on_timeout, "origin timed out incomplete; merged without its missing slices");
        merged += 1;
    }
    Ok(merged)
}
