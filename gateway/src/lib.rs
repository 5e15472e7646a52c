//! The Troupe gateway: how people and programs use a pipeline. A *task* is one submitted
//! envelope and everything that descends from it (fan-out children included).
//!
//! How it works:
//!
//! - a submission is recorded ([`Store`]) and its envelope, carrying the task id in the
//!   `x-troupe-task` header, is published before the `201` answer;
//! - runners report the hops of such envelopes as task events on the broker
//!   ([`troupe_core::event`]); the gateway consumes them, and the ends of the pipeline
//!   (`x-sink`, `x-sump`), acknowledging each message once it is stored ([`ingest`]);
//! - a task's state combines updates by [`state`]'s rules, and a task that fanned out
//!   ends when every branch has ([`ledger`]);
//! - clients read records and follow events over HTTP ([`api`]).
//!
//! ```no_run
//! use troupe_gateway::{Gateway, GatewayConfig, Store};
//! # async fn run(transport: troupe_transports::memory::MemoryTransport) -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open(std::path::Path::new("tasks.db")).await?;
//! let gateway = Gateway::new(transport, store, GatewayConfig::default()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! gateway.serve(listener, troupe_core::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod ingest;
pub mod ledger;
pub mod mcp;
pub mod metrics;
pub mod record;
pub mod state;
pub mod store;
pub mod testing;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use troupe_core::{QueueAdmin, QueueNaming, Transport, TransportError};

pub use api::{Api, ApiError};
pub use ledger::{BranchEnd, Ledger};
pub use record::{Progress, StoredEvent, TaskRecord};
pub use state::{TaskState, Update};
pub use store::{Lease, Store, StoreError};

/// How a gateway behaves.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Actor-to-queue naming (the pipeline's).
    pub naming: QueueNaming,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Longest a request may take to be answered (an event stream's body is not limited).
    pub request_timeout: Duration,
    /// How long a finished task is kept.
    pub retention: Duration,
    /// The API keys every API request must bear (none: the API is open).
    pub api_keys: auth::ApiKeys,
    /// The tools `/mcp` offers (none by default).
    pub mcp_tools: Arc<mcp::McpTools>,
}

impl Default for GatewayConfig {
    /// Default naming, 8 MiB bodies, 30 s per request, finished tasks kept a day.
    fn default() -> Self {
        Self {
            naming: QueueNaming::default(),
            max_body: 8 << 20,
            request_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            api_keys: auth::ApiKeys::default(),
            mcp_tools: Arc::default(),
        }
    }
}

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The broker refused a queue the gateway needs.
    #[error("cannot set up queue {queue:?}: {source}")]
    Queue {
        /// The queue.
        queue: String,
        /// What the broker said.
        #[source]
        source: TransportError,
    },
    /// A queue name could not be made.
    #[error(transparent)]
    Naming(#[from] troupe_core::NameError),
    /// Recording stopped: the broker refused a consumer or closed it.
    #[error("cannot consume queue {queue:?}: {source}")]
    Consume {
        /// The queue.
        queue: String,
        /// What the broker said.
        #[source]
        source: TransportError,
    },
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(#[from] std::io::Error),
}

/// A gateway over one broker and one store.
pub struct Gateway<T> {
    api: Arc<Api<T>>,
    config: GatewayConfig,
}

impl<T: Transport + QueueAdmin> Gateway<T> {
    /// A gateway on `transport` and `store`; creates the queues it reads (`x-sink`,
    /// `x-sump` and the task events queue) where missing.
    pub async fn new(transport: T, store: Store, config: GatewayConfig) -> Result<Self, GatewayError> {
        for (_, actor) in ingest::Source::ALL {
            let queue = config.naming.queue_for(actor)?;
            transport
                .ensure_queue(&queue)
                .await
                .map_err(|source| GatewayError::Queue { queue, source })?;
        }
        let (live, _) = broadcast::channel(4096);
        Ok(Self {
            api: Arc::new(Api {
                transport,
                naming: config.naming.clone(),
                store,
                live,
                closing: CancellationToken::new(),
                recording: Arc::new(AtomicBool::new(false)),
                standby: Arc::new(AtomicBool::new(false)),
                metrics: metrics::GatewayMetrics::default(),
                known_queues: api::KnownQueues::default(),
            }),
            config,
        })
    }

    /// The HTTP API, with API keys (when configured), body limit, timeout and request
    /// traces; the probes and the web page (which holds no data) answer without a key.
    /// `/mcp` is not under the request timeout: a tool call lasts as long as its task, up
    /// to the tool's own `timeout`.
    pub fn router(&self) -> Router {
        let timeout = TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            self.config.request_timeout,
        );
        let api = Router::new()
            .route("/api/v1/mesh", post(api::submit::<T>).get(api::list::<T>))
            .route(
                "/api/v1/mesh/{id}",
                get(api::status::<T>).delete(api::cancel::<T>),
            )
            .route("/api/v1/mesh/{id}/pause", post(api::pause::<T>))
            .route("/api/v1/mesh/{id}/resume", post(api::resume::<T>))
            .route("/api/v1/mesh/{id}/events", get(api::events::<T>))
            .route("/api/v1/control", get(api::control::<T>))
            .layer(timeout)
            .nest_service("/mcp", self.mcp_service())
            .route_layer(axum::middleware::from_fn_with_state(
                self.config.api_keys.clone(),
                auth::require_key,
            ));
        let open = Router::new()
            .route("/", get(api::page))
            .route("/app.js", get(api::page_script))
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(api::readyz::<T>))
            .route("/metrics", get(api::metrics::<T>))
            .layer(timeout);
        Router::new()
            .merge(api)
            .merge(open)
            .with_state(self.api.clone())
            .layer(RequestBodyLimitLayer::new(self.config.max_body))
            .layer(TraceLayer::new_for_http())
    }

    /// `/mcp`: stateless Streamable HTTP, so any replica answers any request. With API
    /// keys every request bears one, so the SDK's `Host` check (against DNS rebinding of
    /// an open local server) is left to the keys; without keys it admits loopback names.
    fn mcp_service(
        &self,
    ) -> StreamableHttpService<
        mcp::McpServer<T>,
        rmcp::transport::streamable_http_server::session::never::NeverSessionManager,
    > {
        let (api, tools) = (self.api.clone(), self.config.mcp_tools.clone());
        let mut config = StreamableHttpServerConfig::default();
        config.legacy_session_mode = false;
        config.cancellation_token = self.api.closing.child_token();
        config.max_request_body_bytes = self.config.max_body;
        if !self.config.api_keys.is_empty() {
            config.allowed_hosts = Vec::new();
        }
        StreamableHttpService::new(
            move || Ok(mcp::McpServer::new(api.clone(), tools.clone())),
            Arc::default(),
            config,
        )
    }

    /// The task store.
    pub fn store(&self) -> &Store {
        &self.api.store
    }

    /// Records what the broker brings and expires old tasks until `shutdown`, without
    /// serving HTTP (for a process that serves [`Gateway::router`] itself).
    pub async fn record(&self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let mut tasks = JoinSet::new();
        let api = self.api.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let Some(lease) = api.store.lead(&stop, &api.standby).await else {
                    return Ok(());
                };
                api.standby.store(false, std::sync::atomic::Ordering::Release);
                let recorded = ingest::consume(&api, lease.token()).await;
                // Given up only now that nothing is being recorded any more.
                drop(lease);
                recorded.map_err(|(queue, source)| GatewayError::Consume { queue, source })?;
                if stop.is_cancelled() {
                    return Ok(());
                }
            }
        });
        tasks.spawn(expire(
            self.api.store.clone(),
            self.config.retention,
            shutdown.clone(),
        ));
        let (store, live, stop) = (self.api.store.clone(), self.api.live.clone(), shutdown.clone());
        tasks.spawn(async move {
            store.listen(live, stop).await;
            Ok(())
        });
        let mut outcome = Ok(());
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(error)) = joined {
                // Without recording, tasks would silently stop finishing: stop it all.
                shutdown.cancel();
                outcome = Err(error);
            }
        }
        outcome
    }

    /// Serves the API on `listener` and records until `shutdown`.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let router = self.router();
        let closing = self.api.closing.clone();
        let stop = shutdown.clone();
        tokio::spawn({
            let shutdown = shutdown.clone();
            // Open event streams end too, or the server would wait for them forever.
            async move {
                shutdown.cancelled().await;
                closing.cancel()
            }
        });
        let server =
            axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await });
        let (served, recorded) = tokio::join!(
            async {
                let served = server.await;
                shutdown.cancel();
                served
            },
            self.record(shutdown.clone())
        );
        served?;
        recorded
    }
}

/// Deletes finished tasks older than `retention`, once a minute.
async fn expire(store: Store, retention: Duration, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    loop {
        // None: a retention longer than the calendar reaches back keeps everything.
        if let Some(cutoff) = chrono::Utc::now().checked_sub_signed(retention) {
            match store.expire(cutoff).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "expired finished tasks"),
                Err(error) => tracing::warn!(%error, "expiring finished tasks failed; will try again"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
