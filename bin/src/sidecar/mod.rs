//! `troupe sidecar`: serves one actor's queue with the runner and the full layer stack,
//! its handler a runtime process (Python first) behind a Unix socket (protocol §4).
//!
//! Start-up: settings (flags, `TROUPE_*`, Asya's `ASYA_*`), `/metrics` + `/healthz` +
//! `/readyz`, then the runtime: its `runtime-ready` file, then `GET /healthz`, both within
//! `--runtime-ready-timeout`. Then the broker, and the runner until SIGTERM or SIGINT.
//!
//! A runtime that stops answering is handled in three steps: a call past its timeout fails
//! into the retry policy and its connection is dropped (recycled); a call the runtime does
//! not answer at all is nacked and redelivered without spending an attempt; and once calls
//! have gone unanswered for `--runtime-unresponsive-limit`, the sidecar stops taking work,
//! nacks what is in flight and exits non-zero, so Kubernetes restarts the pod.

pub mod client;
pub mod config;
pub mod frames;
pub mod handler;
pub mod health;
pub mod sse;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::header::HOST;
use tokio_util::sync::CancellationToken;
use troupe::broker::{ConnectError, WithTransport};
use troupe::core::{
    ConsumeOptions, QueueAdmin, QueueSetupError, Runner, RunnerConfig, RunnerError, Transport,
    ensure_actor_queues,
};
use troupe::layers::idempotency::StoreError;
use troupe::layers::{AnyStore, MeshMetrics, StackConfig, actor_stack};

use self::client::{RuntimeClient, read_body};
use self::config::{ConfigError, SidecarConfig};
use self::handler::{RuntimeHandler, SidecarMetrics};
use self::health::{Failure, RuntimeHealth};
use troupe::http::{Probes, ServeError};

pub use self::config::SidecarArgs;

/// Why the sidecar stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The runtime did not come up.
    #[error(
        "the runtime at {socket} was not ready within {waited:?}: {last}; is the runtime container running with the same socket folder?"
    )]
    RuntimeNotReady {
        /// The socket.
        socket: String,
        /// How long the sidecar waited.
        waited: Duration,
        /// The last thing that went wrong.
        last: String,
    },
    /// The runtime stopped answering for too long.
    #[error(
        "the runtime has not answered for {0:?}; exiting so the pod is restarted (in-flight deliveries were nacked)"
    )]
    RuntimeUnresponsive(Duration),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The idempotency store could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The actor's queues could not be set up.
    #[error(transparent)]
    Queues(#[from] QueueSetupError),
    /// The runner could not run.
    #[error(transparent)]
    Runner(#[from] RunnerError),
}

/// Runs the sidecar until a signal or a fatal runtime failure.
pub async fn run(args: SidecarArgs, matches: &clap::ArgMatches) -> Result<(), SidecarError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = config::resolve(args, matches, &env)?;
    let shutdown = CancellationToken::new();
    troupe::signal::cancel_on_signal(shutdown.clone());

    let mut registry = prometheus_client::registry::Registry::default();
    let mesh = MeshMetrics::new(&mut registry);
    let sidecar_metrics = SidecarMetrics::new(&mut registry);
    let health = Arc::new(RuntimeHealth::default());
    let runner_alive = Arc::new(AtomicBool::new(true));
    let probes = Probes {
        live: {
            let alive = runner_alive.clone();
            Arc::new(move || alive.load(Ordering::Acquire))
        },
        ready: {
            let health = health.clone();
            let alive = runner_alive.clone();
            Arc::new(move || health.is_ready() && alive.load(Ordering::Acquire))
        },
    };
    let bound = troupe::http::serve(
        config.args.metrics_addr,
        Arc::new(registry),
        probes,
        shutdown.clone(),
    )
    .await?;
    tracing::info!(actor = %config.actor, metrics = %bound, transport = %config.args.queue.transport, "sidecar starting");

    // Before the runtime: a wrong store setting fails at once, not after the model loads.
    let store = config.args.queue.connect_store().await?;
    let client = RuntimeClient::new(config.socket(), config.args.runtime_concurrency);
    tokio::select! {
        ready = wait_for_runtime(&client, config.args.runtime_ready_timeout) => ready?,
        () = shutdown.cancelled() => return Ok(()),
    }
    health.set_ready(true);
    tracing::info!(socket = %client.socket().display(), "runtime ready");

    let fatal = Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(watchdog(
        client.clone(),
        health.clone(),
        config.args.runtime_unresponsive_limit,
        shutdown.clone(),
        fatal.clone(),
    ));
    let job = SidecarJob {
        config: &config,
        client,
        health,
        store,
        mesh,
        sidecar_metrics,
        shutdown: shutdown.clone(),
    };
    let result = config.brokers.connect(config.args.queue.transport, job).await;
    runner_alive.store(false, Ordering::Release);
    shutdown.cancel();
    result??;
    let fatal = *fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match fatal {
        Some(unresponsive) => Err(SidecarError::RuntimeUnresponsive(unresponsive)),
        None => Ok(()),
    }
}

/// Waits for the `runtime-ready` file, then for `GET /healthz` to answer 200.
async fn wait_for_runtime(client: &Arc<RuntimeClient>, limit: Duration) -> Result<(), SidecarError> {
    let started = Instant::now();
    let ready_file = client
        .socket()
        .parent()
        .map(|dir| dir.join("runtime-ready"))
        .unwrap_or_else(|| "runtime-ready".into());
    let mut last = format!("{} does not exist yet", ready_file.display());
    let mut logged = false;
    while started.elapsed() < limit {
        if tokio::fs::try_exists(&ready_file).await.unwrap_or(false) {
            match probe(client).await {
                Ok(()) => return Ok(()),
                Err(why) => last = why,
            }
        }
        if !logged && started.elapsed() > Duration::from_secs(5) {
            tracing::info!(socket = %client.socket().display(), %last, "still waiting for the runtime");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(SidecarError::RuntimeNotReady {
        socket: client.socket().display().to_string(),
        waited: limit,
        last,
    })
}

/// One `GET /healthz`, bounded to 2 s.
async fn probe(client: &Arc<RuntimeClient>) -> Result<(), String> {
    let request = Request::get("/healthz")
        .header(HOST, "runtime")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let call = async {
        let (response, lent) = client.send(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = read_body(response.into_body()).await.map_err(|e| e.to_string())?;
        lent.release();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "GET /healthz answered {status}: {}",
                String::from_utf8_lossy(&body)
            ))
        }
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .unwrap_or_else(|_| Err("GET /healthz did not answer within 2 s".to_owned()))
}

/// Probes an idle runtime every 5 s and stops the sidecar once the runtime has been failing
/// for `limit`.
async fn watchdog(
    client: Arc<RuntimeClient>,
    health: Arc<RuntimeHealth>,
    limit: Duration,
    shutdown: CancellationToken,
    fatal: Arc<std::sync::Mutex<Option<Duration>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut since_probe = 0u32;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        since_probe += 1;
        if since_probe >= 5 {
            since_probe = 0;
            match probe(&client).await {
                Ok(()) => health.probe_answered(),
                Err(why) => {
                    tracing::warn!(%why, "runtime health probe failed");
                    client.recycle();
                    health.unanswered(Failure::Unreachable);
                }
            }
        }
        if let Some(failing) = health.unresponsive_for()
            && failing >= limit
        {
            tracing::error!(?failing, ?limit, "runtime unresponsive; stopping the sidecar");
            *fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(failing);
            shutdown.cancel();
            return;
        }
    }
}

struct SidecarJob<'a> {
    config: &'a SidecarConfig,
    client: Arc<RuntimeClient>,
    health: Arc<RuntimeHealth>,
    store: AnyStore,
    mesh: MeshMetrics,
    sidecar_metrics: SidecarMetrics,
    shutdown: CancellationToken,
}

impl WithTransport for SidecarJob<'_> {
    type Output = Result<(), SidecarError>;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
        let config = self.config;
        let args = &config.args;
        let naming = args.queue.naming().map_err(RunnerError::from)?;
        ensure_actor_queues(&transport, &naming, &config.actor).await?;
        let actor: Arc<str> = config.actor.as_str().into();
        let handler = RuntimeHandler::new(
            actor.clone(),
            self.client,
            transport.clone(),
            naming.clone(),
            self.health,
            self.sidecar_metrics,
        );
        let stack = actor_stack(
            StackConfig {
                actor: actor.clone(),
                retry: config.retry.clone(),
                timeout: args.timeout,
                store: Arc::new(self.store),
                metrics: self.mesh.actor(&config.actor),
            },
            handler,
        );
        let mut rc = RunnerConfig::new(config.actor.clone());
        rc.naming = naming;
        // As many envelopes in flight (and leased) as the runtime takes calls: more would
        // only wait, holding leases that other replicas could use.
        rc.concurrency = args.runtime_concurrency;
        rc.workers = 1;
        rc.consume = ConsumeOptions {
            prefetch: args.runtime_concurrency,
            ..ConsumeOptions::default()
        };
        rc.shutdown_grace = args.timeout;
        let report = Runner::new(transport, stack, rc).run(self.shutdown).await?;
        tracing::info!(?report, "sidecar stopped");
        Ok(())
    }
}
