//! `troupe gateway`: the front door of a pipeline (see the `troupe-gateway` crate): submit
//! tasks, follow them, stream their events over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use troupe::broker::{Broker, QueueArgs};
use troupe::core::CancellationToken;
use troupe::core::redact::Redacted;
use troupe_gateway::auth::ApiKeys;
use troupe_gateway::{Gateway, GatewayConfig, GatewayError, Store, StoreError};

/// `troupe gateway`.
#[derive(Clone, clap::Args)]
pub struct GatewayArgs {
    /// Where the HTTP API listens. Without API keys, loopback only: an open gateway must
    /// not be reachable from other machines.
    #[arg(long, env = "TROUPE_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// API keys, comma-separated: every API request must send `Authorization: Bearer
    /// <one of them>`.
    #[arg(
        long,
        env = "TROUPE_GATEWAY_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line (a mounted Secret), added to `--api-keys`.
    #[arg(long, env = "TROUPE_GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Where tasks and their events are kept: a SQLite file (created if missing; one
    /// gateway), or a PostgreSQL URL `postgres://user:password@host/db` (tables created or
    /// migrated at start; any number of gateway replicas; `sslmode=require` uses the
    /// `--tls-*` files).
    #[arg(
        long,
        env = "TROUPE_GATEWAY_DATABASE",
        default_value = "troupe-gateway.db",
        hide_env_values = true
    )]
    pub database: String,
    /// A JSON file of the tools `/mcp` offers: `{"tools": [{"name", "description",
    /// "route": [...], "input_schema": {...}, "timeout": "5m"}]}` (none without).
    #[arg(long, env = "TROUPE_GATEWAY_MCP_TOOLS")]
    pub mcp_tools: Option<PathBuf>,
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

/// API keys are counted, never shown.
impl std::fmt::Debug for GatewayArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayArgs")
            .field("listen", &self.listen)
            .field("database", &Redacted(&self.database))
            .field("retention", &self.retention)
            .field("max_body", &self.max_body)
            .field("api_keys", &format_args!("{} given", self.api_keys.len()))
            .field("api_keys_file", &self.api_keys_file)
            .field("mcp_tools", &self.mcp_tools)
            .field("queue", &self.queue)
            .finish()
    }
}

/// Why the gateway did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayCommandError {
    /// The flags cannot work.
    #[error("{0}")]
    Usage(String),
    /// The MCP tools file cannot be used.
    #[error(transparent)]
    Mcp(#[from] troupe_gateway::mcp::McpConfigError),
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

/// Whether `--database` names a PostgreSQL server rather than a SQLite file.
fn is_postgres(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: GatewayArgs) -> Result<(), GatewayCommandError> {
    let mut keys = args.api_keys.clone();
    if let Some(file) = &args.api_keys_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| GatewayCommandError::Usage(format!("--api-keys-file {}: {e}", file.display())))?;
        keys.extend(text.lines().map(str::to_owned));
    }
    let api_keys = ApiKeys::new(keys);
    if api_keys.is_empty() && !args.listen.ip().is_loopback() {
        return Err(GatewayCommandError::Usage(format!(
            "--listen {}: without API keys (--api-keys or --api-keys-file) the gateway listens on \
             loopback only (127.0.0.1 or ::1)",
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
    let mcp_tools = match &args.mcp_tools {
        Some(file) => troupe_gateway::mcp::McpTools::from_file(file)?,
        None => troupe_gateway::mcp::McpTools::default(),
    };
    let shutdown = CancellationToken::new();
    troupe::signal::cancel_on_signal(shutdown.clone());
    let store = if is_postgres(&args.database) {
        Store::postgres(&args.database, &args.queue.brokers.tls_files()).await?
    } else {
        Store::open(std::path::Path::new(&args.database)).await?
    };
    tracing::info!(database = %Redacted(&args.database), "task store ready");
    let brokers = args.queue.broker_config();
    tracing::info!(transport = %args.queue.transport, at = %brokers.describe(args.queue.transport), "connecting");
    let transport = brokers.connect_any(args.queue.transport).await?;
    let config = GatewayConfig {
        naming,
        max_body: args.max_body,
        retention: args.retention,
        api_keys: api_keys.clone(),
        mcp_tools: std::sync::Arc::new(mcp_tools),
        ..GatewayConfig::default()
    };
    let config_tools = config.mcp_tools.len();
    let gateway = Gateway::new(transport, store, config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| GatewayCommandError::Listen {
            addr: args.listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(args.listen);
    if api_keys.is_empty() {
        tracing::warn!(listen = %bound, "serving the gateway API without API keys, on loopback only");
    } else {
        tracing::info!(listen = %bound, keys = api_keys.len(), "serving the gateway API; requests need an API key");
    }
    tracing::info!(tools = config_tools, "MCP tools at /mcp");
    println!("troupe gateway listening on http://{bound}");
    gateway.serve(listener, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        gateway: GatewayArgs,
    }

    #[test]
    fn debug_output_shows_no_key() {
        let cli = Cli::try_parse_from([
            "troupe",
            "--api-keys",
            "k-secret-1,k-secret-2",
            "--gateway-url",
            "http://gw:8080",
            "--gateway-api-key",
            "k-secret-3",
            "--database",
            "postgres://gateway:k-secret-4@db:5432/troupe",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{:?}", cli.gateway);
        assert!(!shown.contains("k-secret"), "{shown}");
        assert!(
            shown.contains("2 given") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
