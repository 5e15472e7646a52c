//! `troupe gateway`: the front door of a pipeline (see the `troupe-gateway` crate): submit
//! tasks, follow them, stream their events over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use troupe::broker::{Broker, QueueArgs};
use troupe::core::CancellationToken;
use troupe_gateway::{Gateway, GatewayConfig, GatewayError, Store, StoreError};

/// `troupe gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Where the HTTP API listens. Loopback only: API keys are not implemented yet, and an
    /// open gateway must not be reachable from other machines.
    #[arg(long, env = "TROUPE_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The SQLite file that holds tasks and their events (created if missing).
    #[arg(long, env = "TROUPE_GATEWAY_DATABASE", default_value = "troupe-gateway.db")]
    pub database: PathBuf,
    /// How long a finished task is kept (e.g. `24h`, `30m`).
    #[arg(long, env = "TROUPE_GATEWAY_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TROUPE_GATEWAY_MAX_BODY", default_value_t = 8 << 20)]
    pub max_body: usize,
    /// The broker and queue naming of the pipeline (`--store` and `--task-events` do not
    /// apply to the gateway).
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// Why the gateway did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayCommandError {
    /// The flags cannot work.
    #[error("{0}")]
    Usage(String),
    /// The task store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] troupe::broker::ConnectError),
    /// The gateway failed.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: GatewayArgs) -> Result<(), GatewayCommandError> {
    if !args.listen.ip().is_loopback() {
        return Err(GatewayCommandError::Usage(format!(
            "--listen {}: API keys are not implemented yet, so the gateway listens on loopback only \
             (127.0.0.1 or ::1); put an authenticating proxy in front of it to expose it",
            args.listen
        )));
    }
    if args.queue.transport == Broker::Memory {
        return Err(GatewayCommandError::Usage(
            "--transport memory: the embedded broker lives inside one process, and no pipeline runs in \
             this one; run the gateway against the pipeline's broker (--transport nats|amqp|sqs|kafka)"
                .to_owned(),
        ));
    }
    let naming = args
        .queue
        .naming()
        .map_err(|e| GatewayCommandError::Usage(e.to_string()))?;
    let shutdown = CancellationToken::new();
    troupe::signal::cancel_on_signal(shutdown.clone());
    let store = Store::open(&args.database).await?;
    tracing::info!(database = %args.database.display(), "task store ready");
    let brokers = args.queue.broker_config();
    tracing::info!(transport = %args.queue.transport, at = %brokers.describe(args.queue.transport), "connecting");
    let transport = brokers.connect_any(args.queue.transport).await?;
    let config = GatewayConfig {
        naming,
        max_body: args.max_body,
        retention: args.retention,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(transport, store, config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| GatewayCommandError::Listen {
            addr: args.listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(args.listen);
    tracing::warn!(listen = %bound, "serving the gateway API without API keys, on loopback only");
    println!("troupe gateway listening on http://{bound}");
    gateway.serve(listener, shutdown).await?;
    Ok(())
}
