//! The actor host (features `cli` and `http`): everything an actor process does besides its
//! handler, in one place, so every binary (the sidecar, the GPU worker, test actors, the
//! gateway) keeps the same promises.
//!
//! In order:
//!
//! 1. [`ActorHost::start`]: SIGTERM/Ctrl-C handling; `/metrics`, `/healthz` and `/readyz`
//!    (not ready yet); the idempotency store (with a warning when it is the in-memory store
//!    on a real broker, where effectively-once does not survive a restart);
//! 2. the binary's own preparation (load a model, wait for a runtime), which
//!    [`Host::shutdown`] can cut short;
//! 3. [`Host::serve`]: the broker ([`AnyTransport`]), the actor's queues and `x-sink` /
//!    `x-sump`, the standard layer stack around the handler, and the runner until shutdown,
//!    after which in-flight work finishes within the runner's grace.
//!
//! Readiness is true only while the runner runs, its dependencies answer (see
//! [`Availability`]) and every check added with [`ActorHost::ready_when`] passes; liveness
//! turns false once the runner has stopped.
//!
//! ```
//! use troupe::broker::{Broker, BrokerConfig};
//! use troupe::host::ActorHost;
//! use troupe::{CancellationToken, HandlerError, payload_fn};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let host = ActorHost::new("double", Broker::Memory, BrokerConfig::default())
//!     .start()
//!     .await?;
//! host.shutdown().cancel(); // a real process runs until SIGTERM
//! let report = host
//!     .serve(|_| {
//!         payload_fn(|p: serde_json::Value| async move {
//!             Ok::<_, HandlerError>(serde_json::json!(p.as_i64().unwrap_or(0) * 2))
//!         })
//!     })
//!     .await?;
//! assert_eq!(report.received, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;
use troupe_core::tls::TlsFiles;
use troupe_core::{
    Availability, CancellationToken, Control, Envelope, EventSink, HandlerError, NameError, Outcome,
    QueueNaming, QueueSetupError, RunReport, Runner, RunnerConfig, RunnerError, ensure_actor_queues,
};
use troupe_layers::idempotency::StoreError;
use troupe_layers::state::{AnyStateStore, StateError, StateLimits};
use troupe_layers::{
    AnyStore, MeshMetrics, PassThroughStore, RetryPolicies, StackConfig, StoreUrl, actor_stack,
};

use crate::broker::{AnyTransport, Broker, BrokerConfig, ConnectError, HOP_RECORD_TTL, QueueArgs};
use crate::http::{Probe, Probes, ServeError};

/// Why an actor process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The actor's name or the queue prefix cannot make queue names.
    #[error(transparent)]
    Naming(#[from] NameError),
    /// `/metrics` could not listen.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The idempotency store could not be reached.
    #[error("idempotency {0}")]
    Store(StoreError),
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The actor's queues could not be set up.
    #[error(transparent)]
    Queues(#[from] QueueSetupError),
    /// The runner could not run.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// The handler state's store could not be opened.
    #[error("handler {0}")]
    State(#[from] StateError),
}

impl From<StoreError> for HostError {
    fn from(error: StoreError) -> Self {
        HostError::Store(error)
    }
}

/// An actor process being set up; see the module docs.
pub struct ActorHost {
    actor: String,
    broker: Broker,
    brokers: BrokerConfig,
    store: StoreUrl,
    store_prefix: String,
    store_tls: TlsFiles,
    hop_records: bool,
    metrics_addr: Option<SocketAddr>,
    registry: Registry,
    mesh: MeshMetrics,
    ready_checks: Vec<Probe>,
    retry: RetryPolicies,
    timeout: Duration,
    runner: RunnerConfig,
    task_events: bool,
    gateway: Option<crate::control::GatewayLink>,
    state_limits: Option<StateLimits>,
}

impl ActorHost {
    /// A host for `actor` on `broker`: default queue naming, the in-memory store, no HTTP
    /// endpoint, the default retry policy, a 5 minute handler timeout, the runner's
    /// defaults.
    pub fn new(actor: impl Into<String>, broker: Broker, brokers: BrokerConfig) -> Self {
        let actor = actor.into();
        let mut registry = Registry::default();
        let mesh = MeshMetrics::new(&mut registry);
        let timeout = Duration::from_secs(300);
        let mut runner = RunnerConfig::new(actor.clone());
        runner.shutdown_grace = timeout;
        Self {
            actor,
            broker,
            brokers,
            store: StoreUrl::Memory,
            store_prefix: "troupe:hop:".to_owned(),
            store_tls: TlsFiles::default(),
            hop_records: true,
            metrics_addr: None,
            registry,
            mesh,
            ready_checks: Vec::new(),
            retry: RetryPolicies::default(),
            timeout,
            runner,
            task_events: true,
            gateway: None,
            state_limits: None,
        }
    }

    /// A host for `actor` as the shared actor flags ([`QueueArgs`]) say: broker, naming and
    /// store; `/metrics` on `metrics_addr`.
    pub fn from_args(
        actor: impl Into<String>,
        args: &QueueArgs,
        metrics_addr: SocketAddr,
    ) -> Result<Self, HostError> {
        let naming = args.naming()?;
        Ok(Self::new(actor, args.transport, args.broker_config())
            .naming(naming)
            .store(args.store.clone(), &args.store_prefix)
            .store_tls(args.brokers.tls_files())
            .task_events(args.task_events)
            .gateway(args.gateway_url.clone(), args.gateway_api_key.clone())
            .metrics_addr(metrics_addr))
    }

    /// Actor-to-queue naming.
    #[must_use]
    pub fn naming(mut self, naming: QueueNaming) -> Self {
        self.runner.naming = naming;
        self
    }

    /// Where hop records are kept, and the prefix of their keys.
    #[must_use]
    pub fn store(mut self, store: StoreUrl, prefix: &str) -> Self {
        self.store = store;
        prefix.clone_into(&mut self.store_prefix);
        self
    }

    /// What the store's TLS connection trusts and presents (the brokers' is in their
    /// [`BrokerConfig`]).
    #[must_use]
    pub fn store_tls(mut self, tls: TlsFiles) -> Self {
        self.store_tls = tls;
        self
    }

    /// Whether hops are recorded in the store for effectively-once processing (on by
    /// default). Off only for a handler idempotent by its own store, such as the fan-in
    /// aggregator: it then skips the records' round trips, and after a crash its
    /// redeliveries need not wait for the crashed process's claims to lapse.
    #[must_use]
    pub fn hop_records(mut self, on: bool) -> Self {
        self.hop_records = on;
        self
    }

    /// Opens the actor's handler state (see [`troupe_layers::state`]) in the host's store,
    /// with these limits: handlers reach it through [`HandlerContext::state`].
    #[must_use]
    pub fn handler_state(mut self, limits: StateLimits) -> Self {
        self.state_limits = Some(limits);
        self
    }

    /// Whether the actor reports the progress of gateway tasks (on by default; see
    /// [`troupe_core::event`]).
    #[must_use]
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
        self
    }

    /// The gateway to learn canceled and paused tasks from (see [`troupe_core::control`]),
    /// and the API key it asks for, if any.
    #[must_use]
    pub fn gateway(mut self, url: Option<String>, api_key: Option<String>) -> Self {
        self.gateway = url.map(|url| crate::control::GatewayLink { url, api_key });
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr`.
    #[must_use]
    pub fn metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// Retry policies for handler failures.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicies) -> Self {
        self.retry = retry;
        self
    }

    /// The per-call handler timeout; also how long in-flight work may finish at shutdown.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.runner.shutdown_grace = timeout;
        self
    }

    /// Adjusts the runner's settings (concurrency, prefetch, lease, ...); its actor and
    /// naming are the host's.
    #[must_use]
    pub fn runner(mut self, adjust: impl FnOnce(&mut RunnerConfig)) -> Self {
        adjust(&mut self.runner);
        self
    }

    /// Readiness also requires `check` (a model loaded, a runtime answering).
    #[must_use]
    pub fn ready_when(mut self, check: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.ready_checks.push(Arc::new(check));
        self
    }

    /// The registry `/metrics` serves, to register the binary's own metrics before
    /// [`ActorHost::start`].
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Starts the process around the actor: signals, the HTTP endpoint, the store. See the
    /// module docs.
    pub async fn start(self) -> Result<Host, HostError> {
        let shutdown = CancellationToken::new();
        crate::signal::cancel_on_signal(shutdown.clone());
        let state = Arc::new(State::default());
        let availability = Availability::default();
        let probes = Probes {
            live: {
                let state = state.clone();
                Arc::new(move || !state.stopped.load(Ordering::Acquire))
            },
            ready: {
                let (state, availability) = (state.clone(), availability.clone());
                let checks = self.ready_checks;
                Arc::new(move || {
                    state.serving.load(Ordering::Acquire)
                        && availability.is_available()
                        && checks.iter().all(|check| check())
                })
            },
        };
        let mut metrics_addr = None;
        if let Some(addr) = self.metrics_addr {
            let bound = crate::http::serve(addr, Arc::new(self.registry), probes, shutdown.clone()).await?;
            tracing::info!(actor = %self.actor, metrics = %bound, "serving /metrics, /healthz and /readyz");
            metrics_addr = Some(bound);
        }
        #[cfg(feature = "nats")]
        let store_url = self.store.clone().with_nats_default(&self.brokers.nats.url);
        #[cfg(not(feature = "nats"))]
        let store_url = self.store.clone();
        let handler_state = match self.state_limits {
            Some(limits) => {
                let state = AnyStateStore::connect(&store_url, &self.actor, limits, &self.store_tls).await?;
                tracing::info!(actor = %self.actor, store = %store_url, "handler state ready");
                Some(state)
            }
            None => None,
        };
        let store = if self.hop_records {
            if self.store.is_memory() && self.broker != Broker::Memory {
                tracing::warn!(
                    actor = %self.actor,
                    transport = %self.broker,
                    "--store memory: effectively-once does not survive a restart and is not shared by replicas; \
                     set --store redis://... (TROUPE_STORE) for durable effectively-once"
                );
            }
            let store = store_url
                .connect(&self.store_prefix, HOP_RECORD_TTL, &self.store_tls)
                .await?;
            tracing::info!(actor = %self.actor, store = %store_url, "idempotency store ready");
            store
        } else {
            tracing::info!(actor = %self.actor, "no hop records: the handler is idempotent by its own store");
            AnyStore::PassThrough(PassThroughStore)
        };
        Ok(Host {
            actor: self.actor,
            broker: self.broker,
            brokers: self.brokers,
            store: Arc::new(store),
            mesh: self.mesh,
            retry: self.retry,
            timeout: self.timeout,
            runner: self.runner,
            task_events: self.task_events,
            gateway: self.gateway,
            availability,
            state,
            shutdown,
            metrics_addr,
            handler_state,
        })
    }
}

#[derive(Default)]
struct State {
    /// The runner is consuming.
    serving: AtomicBool,
    /// The runner has stopped (liveness false).
    stopped: AtomicBool,
}

/// A started actor process, ready to [`serve`](Host::serve) its handler.
pub struct Host {
    actor: String,
    broker: Broker,
    brokers: BrokerConfig,
    store: Arc<AnyStore>,
    mesh: MeshMetrics,
    retry: RetryPolicies,
    timeout: Duration,
    runner: RunnerConfig,
    task_events: bool,
    gateway: Option<crate::control::GatewayLink>,
    availability: Availability,
    state: Arc<State>,
    shutdown: CancellationToken,
    metrics_addr: Option<SocketAddr>,
    handler_state: Option<AnyStateStore>,
}

/// What a handler may need from its host when it is made.
pub struct HandlerContext<'a> {
    /// The actor served.
    pub actor: &'a str,
    /// The connected broker, for handlers that publish their own outputs.
    pub transport: &'a AnyTransport,
    /// Actor-to-queue naming.
    pub naming: &'a QueueNaming,
    /// Cancelled when the process is asked to stop.
    pub shutdown: &'a CancellationToken,
    /// Where the handler reports what it streams upstream for gateway tasks.
    pub events: &'a EventSink,
    /// Which gateway tasks are canceled or paused.
    pub control: &'a Control,
    /// The actor's handler state, if the host opened it ([`ActorHost::handler_state`]).
    pub state: Option<&'a AnyStateStore>,
}

impl Host {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (the bound address, when the
    /// host was given port 0), if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The actor's handler state, if it was asked for ([`ActorHost::handler_state`]).
    pub fn handler_state(&self) -> Option<&AnyStateStore> {
        self.handler_state.as_ref()
    }

    /// Cancelled on SIGTERM or Ctrl-C; cancel it to stop the process.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Connects the broker, sets up the actor's queues and serves `make(..)`'s handler with
    /// the standard layer stack until shutdown; returns what the runner did.
    pub async fn serve<H, F>(self, make: F) -> Result<RunReport, HostError>
    where
        F: FnOnce(&HandlerContext<'_>) -> H,
        H: tower::Service<Envelope, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
        H::Future: Send + 'static,
    {
        let result = self.run(make).await;
        self.state.serving.store(false, Ordering::Release);
        self.state.stopped.store(true, Ordering::Release);
        self.shutdown.cancel();
        result
    }

    async fn run<H, F>(&self, make: F) -> Result<RunReport, HostError>
    where
        F: FnOnce(&HandlerContext<'_>) -> H,
        H: tower::Service<Envelope, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
        H::Future: Send + 'static,
    {
        tracing::info!(actor = %self.actor, transport = %self.broker, at = %self.brokers.describe(self.broker), "connecting");
        let transport = tokio::select! {
            connected = self.brokers.connect_any(self.broker) => connected?,
            () = self.shutdown.cancelled() => return Ok(RunReport::default()),
        };
        let naming = &self.runner.naming;
        ensure_actor_queues(&transport, naming, &self.actor).await?;
        let (events, publisher) = if self.task_events {
            let (sink, task) = EventSink::start(transport.clone(), naming);
            (sink, Some(task))
        } else {
            (EventSink::off(), None)
        };
        // Off without a gateway: then no envelope pays for cancel and pause.
        let control = if self.gateway.is_some() {
            Control::on()
        } else {
            Control::off()
        };
        if let Some(link) = &self.gateway {
            tokio::spawn(crate::control::poll(
                link.clone(),
                control.clone(),
                self.shutdown.clone(),
            ));
        }
        let handler = make(&HandlerContext {
            actor: &self.actor,
            transport: &transport,
            naming,
            shutdown: &self.shutdown,
            events: &events,
            control: &control,
            state: self.handler_state.as_ref(),
        });
        let actor: Arc<str> = self.actor.as_str().into();
        let stack = actor_stack(
            StackConfig {
                actor: actor.clone(),
                retry: self.retry.clone(),
                timeout: self.timeout,
                store: self.store.clone(),
                metrics: self.mesh.actor(&self.actor),
            },
            handler,
        );
        let runner = Runner::new(transport, stack, self.runner.clone())
            .with_availability(self.availability.clone())
            .with_events(events)
            .with_control(control);
        self.state.serving.store(true, Ordering::Release);
        let report = runner.run(self.shutdown.clone()).await?;
        if let Some(publisher) = publisher {
            // Every sink is dropped once the runner and its handler are: what they sent
            // is published before the process ends.
            if tokio::time::timeout(Duration::from_secs(5), publisher)
                .await
                .is_err()
            {
                tracing::warn!(actor = %self.actor, "task events still unpublished after 5 s at shutdown; dropped");
            }
        }
        tracing::info!(actor = %self.actor, ?report, "stopped");
        Ok(report)
    }
}
