//! `troupe aggregate`: the built-in aggregator actor. Rejoins the slices of fan-outs marked
//! for rejoin into one merge per origin (see `troupe_layers::fan_in`), keeping open
//! aggregations in the `--store` the idempotency records use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use troupe::broker::{Broker, QueueArgs};
use troupe::host::{ActorHost, HandlerContext, HostError};
use troupe::layers::fan_in::{self, Aggregator, AggregatorConfig, AnyFanInStore, OnTimeout};

use crate::merge_runtime::RuntimeMerge;
use crate::sidecar::client::RuntimeClient;
use crate::sidecar::config::RUNTIME_SOCKET;

/// `troupe aggregate`.
#[derive(Debug, Clone, clap::Args)]
pub struct AggregateArgs {
    /// The aggregator actor served (slices name it in their `x-asya-fan-in` header).
    #[arg(long, env = "TROUPE_ACTOR", default_value = "aggregate")]
    pub actor: String,
    /// How long an origin may wait for its slices, from its first one.
    #[arg(long, env = "TROUPE_FAN_IN_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// What an origin still incomplete at its timeout becomes: `fail` (to x-sump, naming
    /// the missing slices) or `partial` (continues, `null` for each missing slice).
    #[arg(long, env = "TROUPE_FAN_IN_ON_TIMEOUT", default_value = "fail")]
    pub on_timeout: OnTimeout,
    /// How long a merge is kept to answer slices redelivered after it.
    #[arg(long, env = "TROUPE_FAN_IN_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Slices handled at once.
    #[arg(long, env = "TROUPE_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// The socket directory of a Python runtime whose handler makes each merge's payload
    /// from the list of slice payloads (`def merge(slices)`); see `merge_runtime`.
    /// Unset: the merge's payload is that list.
    #[arg(long, env = "TROUPE_MERGE_SOCKET_DIR", value_name = "DIR")]
    pub merge_socket_dir: Option<PathBuf>,
    /// Address of `/metrics`, `/healthz` (liveness) and `/readyz` (readiness).
    #[arg(long, env = "TROUPE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// The broker, queue naming and store.
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// Why `troupe aggregate` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// The host could not start or serve.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The fan-in store could not be reached.
    #[error("fan-in {0}")]
    Store(fan_in::StoreError),
    /// Flags that do not go together.
    #[error("{0}")]
    Usage(&'static str),
}

/// Serves the aggregator until SIGTERM.
pub async fn run(args: AggregateArgs) -> Result<(), AggregateError> {
    if args.merge_socket_dir.is_some() && args.on_timeout == OnTimeout::Partial {
        // The timeout's merges are published by the sweep, which has no runtime to call:
        // they would go on as the plain list, unlike every other merge.
        return Err(AggregateError::Usage(
            "--merge-socket-dir with --on-timeout partial: a partial merge would skip the merge handler; \
             use --on-timeout fail, or merge in the actor after the aggregator",
        ));
    }
    let store_url = args
        .queue
        .store
        .clone()
        .with_nats_default(&args.queue.brokers.nats_url);
    let store = AnyFanInStore::connect(&store_url, &args.queue.brokers.tls_files(), &args.actor)
        .await
        .map_err(AggregateError::Store)?;
    if matches!(store, AnyFanInStore::Memory(_)) && args.queue.transport != Broker::Memory {
        tracing::warn!(
            actor = %args.actor,
            "--store memory: open aggregations are lost when this process stops, and replicas do not share them; \
             set --store redis://..., postgres://... or nats-kv://BUCKET (TROUPE_STORE)"
        );
    }
    let config = AggregatorConfig {
        timeout: args.timeout,
        on_timeout: args.on_timeout,
        retention: args.retention,
        ..AggregatorConfig::new(args.actor.as_str())
    };
    let aggregator = Aggregator::new(config, Arc::new(store));
    let concurrency = args.concurrency.max(1);
    // The fan-in store is the aggregator's record: a redelivered slice counts once and a
    // merged origin answers its merge, so hop records would only add round trips.
    let host = ActorHost::from_args(&args.actor, &args.queue, args.metrics_addr)?
        .hop_records(false)
        .runner(|runner| runner.concurrency = concurrency)
        .start()
        .await?;
    let sweep = |ctx: &HandlerContext<'_>| {
        tokio::spawn(fan_in::sweep(
            aggregator.clone(),
            ctx.transport.clone(),
            ctx.naming.clone(),
            ctx.shutdown.clone(),
        ));
    };
    match &args.merge_socket_dir {
        Some(dir) => {
            let client = RuntimeClient::new(dir.join(RUNTIME_SOCKET), concurrency);
            tracing::info!(actor = %args.actor, runtime = %client.socket().display(), "merges made by the runtime's handler");
            host.serve(|ctx| {
                sweep(ctx);
                RuntimeMerge::new(aggregator.clone(), client, &args.actor)
            })
            .await?
        }
        None => {
            host.serve(|ctx| {
                sweep(ctx);
                aggregator.clone()
            })
            .await?
        }
    };
    Ok(())
}
