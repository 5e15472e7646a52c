//! `troupe sidecar`: serves one actor's queue with the runner and the full layer stack,
//! its handler a runtime process (Python first) behind a Unix socket (protocol §4).
//!
//! Start-up: settings (flags, `TROUPE_*`, Asya's `ASYA_*`), `/metrics` + `/healthz` +
//! `/readyz`, then the runtime: its `runtime-ready` file, then `GET /healthz`, both within
//! `--runtime-ready-timeout`. Then the broker, and the runner until SIGTERM or SIGINT.
//!
//! A runtime that stops answering is handled by how it fails. A call past its timeout fails
//! into the retry policy and its connection is dropped (recycled). A runtime that cannot be
//! reached (its process is down or restarting) is waited for: the runner holds the
//! deliveries in flight, takes no new work and answers `/readyz` false, then resumes when
//! the runtime answers, spending neither retry attempts nor redeliveries. A runtime that
//! takes calls but answers none (hung) for `--runtime-unresponsive-limit` stops the
//! sidecar: in-flight deliveries are nacked and it exits non-zero, so Kubernetes restarts
//! the pod.

pub mod client;
pub mod config;
pub mod frames;
pub mod handler;
pub mod health;
pub mod sse;
pub mod state_proxy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use troupe::core::ConsumeOptions;
use troupe::host::{ActorHost, HostError};

use self::client::RuntimeClient;
use self::config::ConfigError;
use self::handler::{MeshAccess, RuntimeHandler, SidecarMetrics};
use self::health::{Failure, RuntimeHealth};

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
    /// The runtime accepted calls but answered none for too long.
    #[error(
        "the runtime has not answered for {0:?}; exiting so the pod is restarted (in-flight deliveries were nacked)"
    )]
    RuntimeUnresponsive(Duration),
    /// The process around the handler (metrics, store, broker, queues, runner) failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A state socket could not be made.
    #[error("cannot serve handler state in {dir}: {source}")]
    StateSocket {
        /// The state socket folder.
        dir: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the sidecar until a signal or a fatal runtime failure.
pub async fn run(args: SidecarArgs, matches: &clap::ArgMatches) -> Result<(), SidecarError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = config::resolve(args, matches, &env)?;
    let args = &config.args;
    let health = Arc::new(RuntimeHealth::default());
    let mut host = ActorHost::from_args(&config.actor, &args.queue, args.metrics_addr)?
        .retry(config.retry.clone())
        .timeout(args.timeout)
        .runner(|runner| {
            // As many envelopes in flight (and leased) as the runtime takes calls: more
            // would only wait, holding leases that other replicas could use.
            runner.concurrency = args.runtime_concurrency;
            runner.workers = 1;
            runner.consume = ConsumeOptions {
                prefetch: args.runtime_concurrency,
                ..ConsumeOptions::default()
            };
        })
        .ready_when({
            let health = health.clone();
            move || health.is_ready()
        });
    let spaces = config.state_spaces();
    if !spaces.is_empty() {
        host = host.handler_state(config.state_limits());
    }
    let sidecar_metrics = SidecarMetrics::new(host.registry_mut());
    tracing::info!(actor = %config.actor, transport = %args.queue.transport, "sidecar starting");
    // The store is connected here, before the runtime: a wrong store setting fails at once,
    // not after the model loads.
    let host = host.start().await?;
    let shutdown = host.shutdown();

    if let Some(state) = host.handler_state() {
        let sockets = state_proxy::serve(
            &args.state_socket_dir,
            &spaces,
            state.clone(),
            config.state_limits(),
            shutdown.clone(),
        )
        .await
        .map_err(|source| SidecarError::StateSocket {
            dir: args.state_socket_dir.display().to_string(),
            source,
        })?;
        tracing::info!(actor = %config.actor, sockets = ?sockets, "serving handler state to the runtime");
    }

    let client = RuntimeClient::new(config.socket(), args.runtime_concurrency);
    tokio::select! {
        ready = wait_for_runtime(&client, args.runtime_ready_timeout) => ready?,
        () = shutdown.cancelled() => return Ok(()),
    }
    health.set_ready(true);
    tracing::info!(socket = %client.socket().display(), "runtime ready");

    let fatal = Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(watchdog(
        client.clone(),
        health.clone(),
        args.runtime_unresponsive_limit,
        shutdown.clone(),
        fatal.clone(),
    ));
    host.serve(|ctx| {
        RuntimeHandler::new(
            ctx.actor.into(),
            client,
            MeshAccess {
                transport: ctx.transport.clone(),
                naming: ctx.naming.clone(),
                events: ctx.events.clone(),
                control: ctx.control.clone(),
            },
            health,
            sidecar_metrics,
        )
    })
    .await?;
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

/// What [`probe`] says when the runtime took the request but did not answer.
const PROBE_TIMED_OUT: &str = "GET /healthz did not answer within 2 s";

/// One `GET /healthz`, bounded to 2 s.
async fn probe(client: &Arc<RuntimeClient>) -> Result<(), String> {
    let call = async {
        let answer = client.get("/healthz").await.map_err(|e| e.to_string())?;
        let status = answer.status();
        let body = answer.read_to_end().await.map_err(|e| e.to_string())?;
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
        .unwrap_or_else(|_| Err(PROBE_TIMED_OUT.to_owned()))
}

/// Probes an idle runtime every 5 s and stops the sidecar once the runtime has been hung
/// (taking requests, answering none) for `limit`.
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
                    let failure = if why == PROBE_TIMED_OUT {
                        Failure::TimedOut
                    } else {
                        Failure::Unreachable
                    };
                    health.unanswered(failure);
                }
            }
        }
        if let Some(failing) = health.hung_for()
            && failing >= limit
        {
            tracing::error!(?failing, ?limit, "runtime hung; stopping the sidecar");
            *fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(failing);
            shutdown.cancel();
            return;
        }
    }
}
