//! The HTTP side of a troupe process (feature `http`): `/metrics` for Prometheus,
//! `/healthz` (liveness) and `/readyz` (readiness). The sidecar, the demo and the autoscaler
//! all serve these.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use troupe_core::CancellationToken;

/// Binding the metrics address failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for /metrics on {addr}: {source}")]
pub struct ServeError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// A yes/no health answer.
pub type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// What `/healthz` and `/readyz` answer.
#[derive(Clone)]
pub struct Probes {
    /// Liveness: restart the process when false.
    pub live: Probe,
    /// Readiness: it may take work.
    pub ready: Probe,
}

impl Default for Probes {
    /// Always live and ready.
    fn default() -> Self {
        Self {
            live: Arc::new(|| true),
            ready: Arc::new(|| true),
        }
    }
}

fn answer(ok: bool) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`; returns the bound
/// address.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    probes: Probes,
    shutdown: CancellationToken,
) -> Result<SocketAddr, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError { addr, source })?;
    let ready = probes.ready.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        troupe_layers::metrics::render(&registry),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(move || async move { answer((probes.live)()) }))
        .route("/readyz", get(move || async move { answer((ready)()) }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    Ok(bound)
}
