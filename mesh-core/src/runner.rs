//! The actor runner: consume one actor's queue, run each envelope through the layer stack,
//! publish every output, and only then acknowledge the input.
//!
//! Guarantees:
//! - **ack after publish**: an input is acked only once every publication of its
//!   [`Dispatch`] is confirmed and the dispatch's hooks have run; any publish failure nacks it
//!   (with [`RunnerConfig::redelivery_delay`]) so nothing is lost;
//! - **bounded concurrency and back-pressure**: at most [`RunnerConfig::concurrency`]
//!   envelopes in flight; a worker pulls the next delivery only when it has a free slot;
//! - **leases**: while an envelope is being worked on, its lease is extended every half lease;
//! - **graceful shutdown**: on cancel it stops pulling, lets in-flight work finish for
//!   [`RunnerConfig::shutdown_grace`], then nacks what is left so it is redelivered at once,
//!   and [flushes](Transport::flush) the transport, so no ack is left in a client buffer;
//! - **poison protection**: a message delivered more than
//!   [`RunnerConfig::max_redeliveries`] times (a crash or panic loop) goes to `x-sump`;
//! - **task events never hold up the data path**: for envelopes of gateway tasks, the
//!   runner reports the start and the outputs of each hop to its [`EventSink`]
//!   ([`Runner::with_events`]), which publishes them in the background (see
//!   [`event`](crate::event));
//! - **cancel and pause without a round trip per hop**: an envelope of a gateway task that
//!   its [`Control`] says is canceled is acknowledged unprocessed, and a handler working on
//!   one is dropped when the cancel arrives; an envelope of a paused task is parked: put
//!   back on its queue for [`PARK_DELAY`], to resume at the same actor
//!   ([`Runner::with_control`]);
//! - **outages are not the envelope's fault**: when the stack reports that a dependency is
//!   down (an [`Unavailable`](crate::Unavailable) store, an
//!   [unavailable](crate::HandlerError::unavailable) handler), the runner keeps the
//!   delivery, stops pulling new work, marks its [`Availability`] down and calls again with
//!   a capped backoff until the dependency answers: neither retry attempts nor
//!   redeliveries are spent on the outage.
//!
//! Structure: [`RunnerConfig::workers`] tasks, each with its own consumer (competing
//! consumers of the actor's queue) and a bounded set of in-flight envelopes polled inside the
//! worker task. Envelopes are not spawned as tasks of their own: a spawn per message (task
//! allocation, cross-thread scheduling, waking idle workers) costs more than the relay itself:
//! on the memory broker a relay does about half as many messages per second with a spawn per
//! message (`cargo run --release -p troupe-bench`, figures in `docs/benchmarks.md`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service, ServiceExt};

use crate::availability::{Availability, unavailable_dependency};
use crate::control::{Control, Verdict};
use crate::decode::DecodeLimits;
use crate::envelope::Envelope;
use crate::event::{EventKind, EventSink, HopOutput};
use crate::fan_in::FanIn;
use crate::headers::TASK;
use crate::naming::{NameError, QueueNaming, SINK, SUMP};
use crate::outcome::{Dispatch, Publication};
use crate::status::{Phase, Reason};
use crate::sump;
use crate::transport::{ConsumeOptions, Consumer, Delivery, PublishOptions, Transport, TransportError};

/// How a runner behaves.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The actor this runner serves; its queue is `naming.queue_for(actor)`.
    pub actor: String,
    /// Actor-to-queue naming.
    pub naming: QueueNaming,
    /// Most envelopes in flight at once, over all workers (at least 1).
    pub concurrency: usize,
    /// Worker tasks, each with its own consumer, sharing `concurrency` between them
    /// (at least 1, at most `concurrency`). More workers spread one actor over more cores.
    pub workers: usize,
    /// Prefetch and lease for the consumer.
    pub consume: ConsumeOptions,
    /// How long in-flight work may finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Decoding bounds for message bodies.
    pub limits: DecodeLimits,
    /// Delay before an input is redelivered after an infrastructure failure (publish not
    /// confirmed, store down, panic). It doubles with each redelivery of the same message,
    /// up to 64 times this value, so a sustained outage or back-pressure does not spend
    /// `max_redeliveries` in seconds. It is also the first pause before a delivery held
    /// through a dependency outage is tried again; that pause doubles up to
    /// [`HOLD_BACKOFF_CAP`] times this value.
    pub redelivery_delay: Duration,
    /// A message delivered more often than this goes to `x-sump`; `None` never gives up.
    /// Every redelivery counts, whatever its cause: with the defaults (1 s doubling to 64 s,
    /// 25 redeliveries) a message survives about 20 minutes of failures before it is set aside.
    pub max_redeliveries: Option<u32>,
}

impl RunnerConfig {
    /// Defaults for `actor`: 16 in flight over one worker per core, prefetch 32, 30 s lease
    /// and grace, 16 MiB bodies, 1 s redelivery delay, 25 redeliveries.
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            naming: QueueNaming::default(),
            concurrency: 16,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            consume: ConsumeOptions::default(),
            shutdown_grace: Duration::from_secs(30),
            limits: DecodeLimits::default(),
            redelivery_delay: Duration::from_secs(1),
            max_redeliveries: Some(25),
        }
    }
}

/// A delivery held through a dependency outage is tried again at most every
/// `HOLD_BACKOFF_CAP` × [`RunnerConfig::redelivery_delay`] (16 s by default), so the runner
/// notices within seconds that the dependency is back.
pub const HOLD_BACKOFF_CAP: u32 = 16;

/// Why a runner could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The actor's name cannot be a queue name.
    #[error("actor name is not usable: {0}")]
    ActorName(#[from] NameError),
    /// The transport refused to start consuming.
    #[error("cannot consume the actor's queue {queue:?}: {source}")]
    Consume {
        /// The queue.
        queue: String,
        /// The transport's error.
        #[source]
        source: TransportError,
    },
}

/// Counts of what a runner did, for tests, demos and shutdown logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Deliveries received.
    pub received: u64,
    /// Inputs acknowledged (after their outputs were confirmed).
    pub acked: u64,
    /// Inputs returned to the queue (infrastructure failure, shutdown).
    pub nacked: u64,
    /// Messages published.
    pub published: u64,
    /// Undecodable or poison messages sent to `x-sump` by the runner itself.
    pub sumped: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    published: AtomicU64,
    sumped: AtomicU64,
}

impl Counters {
    fn report(&self) -> RunReport {
        RunReport {
            received: self.received.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            sumped: self.sumped.load(Ordering::Relaxed),
        }
    }
}

struct Shared<T> {
    transport: T,
    config: RunnerConfig,
    queue: String,
    counters: Counters,
    availability: Availability,
    events: EventSink,
    control: Control,
}

/// Runs one actor. See the module docs for its guarantees.
pub struct Runner<T, S> {
    transport: T,
    service: S,
    config: RunnerConfig,
    availability: Availability,
    events: EventSink,
    control: Control,
}

enum Settle {
    Ack,
    Nack(Option<Duration>),
}

impl<T, S> Runner<T, S>
where
    T: Transport,
    S: Service<Envelope, Response = Dispatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
{
    /// A runner of `service` (the layer stack) over `transport`.
    pub fn new(transport: T, service: S, config: RunnerConfig) -> Self {
        Self {
            transport,
            service,
            config,
            availability: Availability::default(),
            events: EventSink::off(),
            control: Control::default(),
        }
    }

    /// Follows `control` for canceled and paused tasks (by default, nothing is ever
    /// canceled or paused).
    #[must_use]
    pub fn with_control(mut self, control: Control) -> Self {
        self.control = control;
        self
    }

    /// Reports the hops of gateway tasks to `events` (by default, nowhere).
    #[must_use]
    pub fn with_events(mut self, events: EventSink) -> Self {
        self.events = events;
        self
    }

    /// Shares `availability` (created beforehand, say, for a readiness probe) instead of a
    /// fresh one.
    #[must_use]
    pub fn with_availability(mut self, availability: Availability) -> Self {
        self.availability = availability;
        self
    }

    /// Whether the stack's dependencies answer, as this runner sees them: false while it
    /// holds deliveries through an outage. Serve it as readiness.
    pub fn availability(&self) -> Availability {
        self.availability.clone()
    }

    /// Runs until `shutdown` is cancelled or the transport closes, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport, RunnerError> {
        let queue = self.config.naming.queue_for(&self.config.actor)?;
        let concurrency = self.config.concurrency.max(1);
        let workers = self.config.workers.clamp(1, concurrency);
        let mut consumers = Vec::with_capacity(workers);
        for i in 0..workers {
            // A worker's consumer prefetches no more than the worker can work on: a message
            // waiting in a client buffer gets no lease extension, and would expire there.
            let slots = concurrency / workers + usize::from(i < concurrency % workers);
            let options = ConsumeOptions {
                prefetch: self.config.consume.prefetch.min(slots).max(1),
                ..self.config.consume
            };
            let consumer =
                self.transport
                    .consume(&queue, options)
                    .await
                    .map_err(|source| RunnerError::Consume {
                        queue: queue.clone(),
                        source,
                    })?;
            consumers.push(consumer);
        }
        let grace = self.config.shutdown_grace;
        let shared = Arc::new(Shared {
            transport: self.transport,
            queue,
            config: self.config,
            counters: Counters::default(),
            availability: self.availability,
            events: self.events,
            control: self.control,
        });
        tracing::info!(actor = %shared.config.actor, queue = %shared.queue, concurrency, workers, "runner started");

        let abandon = CancellationToken::new();
        // Workers stop on `shutdown`, and also if this future is dropped rather than
        // awaited to the end: they are spawned tasks and would otherwise outlive it.
        let stop = shutdown.child_token();
        let _stop_when_dropped = stop.clone().drop_guard();
        let mut tasks: Vec<_> = consumers
            .into_iter()
            .enumerate()
            .map(|(i, consumer)| {
                // Split `concurrency` exactly: the first `concurrency % workers` get one more.
                let slots = concurrency / workers + usize::from(i < concurrency % workers);
                let worker = Worker {
                    shared: shared.clone(),
                    service: self.service.clone(),
                    slots,
                };
                tokio::spawn(worker.run(consumer, stop.clone(), abandon.clone()))
            })
            .collect();
        let all_done = futures_util::future::join_all(tasks.iter_mut());
        tokio::pin!(all_done);
        let finished = tokio::select! {
            done = &mut all_done => Some(done),
            () = shutdown.cancelled() => None,
        };
        let results = match finished {
            Some(done) => done,
            None => match tokio::time::timeout(grace, &mut all_done).await {
                Ok(done) => done,
                Err(_) => {
                    tracing::warn!(queue = %shared.queue, "grace period over; returning unfinished work to the queue");
                    abandon.cancel();
                    all_done.await
                }
            },
        };
        for r in results {
            if let Err(e) = r {
                // `process` catches handler panics itself; this is a bug in the runner.
                tracing::error!(error = %e, "runner worker ended abnormally");
            }
        }
        // The process may exit as soon as this returns: the last acks must have left it.
        if let Err(error) = shared.transport.flush().await {
            tracing::warn!(queue = %shared.queue, %error, "flushing acknowledgements failed; the last messages may be delivered again");
        }
        let report = shared.counters.report();
        tracing::info!(queue = %shared.queue, ?report, "runner stopped");
        Ok(report)
    }
}

/// One worker: a consumer and up to `slots` envelopes in flight.
struct Worker<T, S> {
    shared: Arc<Shared<T>>,
    service: S,
    slots: usize,
}

impl<T, S> Worker<T, S>
where
    T: Transport,
    S: Service<Envelope, Response = Dispatch> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
{
    async fn run(self, mut consumer: T::Consumer, shutdown: CancellationToken, abandon: CancellationToken) {
        let shared = &*self.shared;
        let mut in_flight = FuturesUnordered::new();
        let mut consecutive_errors = 0u32;
        // Registered once, not per loop turn: the token's waiter list is behind a mutex.
        let stop = shutdown.cancelled();
        tokio::pin!(stop);
        // After a receive error, receiving pauses until this timer fires; in-flight work
        // (and its lease heartbeats) keeps being polled meanwhile.
        let resume = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(resume);
        let mut paused = false;
        let availability = &shared.availability;
        loop {
            let available = availability.is_available();
            tokio::select! {
                biased;
                () = &mut stop => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                () = &mut resume, if paused => paused = false,
                // While a dependency is down, new work would only be held too.
                () = availability.available(), if !available => {}
                // `Consumer::next` is cancel-safe, so losing this race loses no delivery.
                next = consumer.next(), if available && !paused && in_flight.len() < self.slots => match next {
                    None => {
                        tracing::info!(queue = %shared.queue, "transport closed the consumer");
                        break;
                    }
                    Some(Err(error)) => {
                        consecutive_errors += 1;
                        let backoff = Duration::from_millis(100 << consecutive_errors.min(6));
                        tracing::warn!(queue = %shared.queue, %error, ?backoff, "receive failed");
                        resume.as_mut().reset(tokio::time::Instant::now() + backoff);
                        paused = true;
                    }
                    Some(Ok(delivery)) => {
                        consecutive_errors = 0;
                        in_flight.push(process(shared, self.service.clone(), delivery, &shutdown, &abandon));
                    }
                },
            }
        }
        drop(consumer);
        if !in_flight.is_empty() {
            tracing::info!(queue = %shared.queue, in_flight = in_flight.len(), "draining in-flight work");
        }
        while in_flight.next().await.is_some() {}
    }
}

async fn process<T, S>(
    shared: &Shared<T>,
    service: S,
    delivery: <T::Consumer as Consumer>::Delivery,
    shutdown: &CancellationToken,
    abandon: &CancellationToken,
) where
    T: Transport,
    S: Service<Envelope, Response = Dispatch> + Send,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
{
    shared.counters.received.fetch_add(1, Ordering::Relaxed);
    let lease = shared.config.consume.lease;
    let heartbeat = async {
        let every = lease / 2;
        loop {
            tokio::time::sleep(every).await;
            if let Err(error) = delivery.in_progress().await {
                tracing::warn!(queue = %shared.queue, %error, "lease extension failed");
            }
        }
    };
    let work = AssertUnwindSafe(handle(shared, service, &delivery, shutdown)).catch_unwind();
    // Work is polled first: most envelopes finish in one poll, and then neither the shared
    // cancellation token (a mutex-guarded waiter list) nor the heartbeat timer is touched.
    let settle = tokio::select! {
        biased;
        r = work => r.unwrap_or_else(|panic| {
            let msg = panic_message(&panic);
            tracing::error!(queue = %shared.queue, panic = %msg, "handler stack panicked; the message will be redelivered");
            Settle::Nack(Some(infra_delay(&shared.config, delivery.redeliveries())))
        }),
        () = abandon.cancelled() => Settle::Nack(None),
        () = heartbeat => unreachable!("the heartbeat never ends"),
    };
    let result = match settle {
        Settle::Ack => {
            shared.counters.acked.fetch_add(1, Ordering::Relaxed);
            delivery.ack().await
        }
        Settle::Nack(delay) => {
            shared.counters.nacked.fetch_add(1, Ordering::Relaxed);
            delivery.nack(delay).await
        }
    };
    if let Err(error) = result {
        tracing::warn!(queue = %shared.queue, %error, "settling a delivery failed; the broker will redeliver it");
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

async fn handle<T, S, D>(
    shared: &Shared<T>,
    mut service: S,
    delivery: &D,
    shutdown: &CancellationToken,
) -> Settle
where
    T: Transport,
    D: Delivery,
    S: Service<Envelope, Response = Dispatch>,
    S::Error: Into<BoxError> + Send,
{
    let body = delivery.body();
    let actor = shared.config.actor.as_str();
    let infra_delay = Some(infra_delay(&shared.config, delivery.redeliveries()));

    if let Some(max) = shared.config.max_redeliveries
        && delivery.redeliveries() > max
    {
        let message = format!(
            "delivered {} times, over the limit of {max}",
            delivery.redeliveries() + 1
        );
        tracing::error!(queue = %shared.queue, %message, "giving up on a poison message");
        let env = sump::wrap_body(body, Reason::RedeliveryLimit, "RedeliveryLimit", &message, actor);
        return publish_to_sump(shared, env, delivery.redeliveries()).await;
    }

    let mut hold = shared.config.redelivery_delay;
    let mut held = false;
    let dispatch = loop {
        // Decoded again for each call of a held delivery: the stack owns what it is given,
        // and keeping a copy for the rare outage would cost every envelope a clone.
        let envelope = match Envelope::from_slice(body, &shared.config.limits) {
            Ok(env) => env,
            Err(error) => {
                tracing::warn!(queue = %shared.queue, %error, "undecodable message goes to x-sump");
                let env = sump::wrap_body(body, Reason::ParseError, "DecodeError", &error.to_string(), actor);
                return publish_to_sump(shared, env, delivery.redeliveries()).await;
            }
        };
        // Only a process that hears from a gateway looks at the task (and pays for it).
        let task = envelope
            .header_str(TASK)
            .filter(|_| shared.control.is_on())
            .map(str::to_owned);
        if let Some(task) = &task {
            match shared.control.verdict(task) {
                Verdict::Go => {}
                Verdict::Drop => {
                    tracing::info!(envelope.id = %envelope.id, task = %task, queue = %shared.queue, "task canceled: acknowledged unprocessed");
                    return Settle::Ack;
                }
                Verdict::Park => return park(shared, body, delivery.redeliveries()).await,
            }
        }
        let head = shared.events.head(&envelope, actor);
        // Only the first actor says it started (the task is running from then on); later
        // actors' progress is in the hop events, at half the events per hop.
        if let Some(head) = head.as_ref().filter(|head| head.position() == 0) {
            shared.events.send(head.event(EventKind::Started)).await;
        }
        let call = async {
            match service.ready().await {
                Ok(ready) => ready.call(envelope).await,
                Err(e) => Err(e),
            }
        };
        let dispatch = match &task {
            None => call.await,
            Some(task) => {
                let watch = shared.control.watch(task);
                tokio::select! {
                    biased;
                    dispatch = call => dispatch,
                    () = watch.canceled() => {
                        tracing::info!(task = %task, queue = %shared.queue, "task canceled: its handler was stopped");
                        return Settle::Ack;
                    }
                }
            }
        };
        let error: BoxError = match dispatch {
            Ok(dispatch) => break Ok((dispatch, head)),
            Err(error) => error.into(),
        };
        let Some(dependency) = unavailable_dependency(&*error) else {
            break Err(error);
        };
        if shared.availability.mark_down() {
            tracing::warn!(queue = %shared.queue, %dependency, %error, "a dependency is down: holding in-flight deliveries and taking no new work until it answers");
        } else {
            tracing::debug!(envelope.id = ?sump::readable_id(body), queue = %shared.queue, %dependency, "still down; holding the delivery");
        }
        held = true;
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            // Back to the queue at once: shutting down is not this envelope's fault either.
            () = shutdown.cancelled() => return Settle::Nack(None),
        }
        hold = (hold * 2).min(shared.config.redelivery_delay * HOLD_BACKOFF_CAP);
    };
    if held && dispatch.is_ok() && shared.availability.mark_up() {
        tracing::info!(queue = %shared.queue, "dependencies answer again; taking new work");
    }
    match dispatch {
        Ok((dispatch, head)) => {
            // A handler that published its outputs itself reports its hop itself.
            let hop = head
                .filter(|_| !dispatch.publications().is_empty())
                .map(|head| (head, hop_outputs(&dispatch)));
            match publish(shared, dispatch).await {
                Ok(()) => {
                    if let Some((head, outputs)) = hop {
                        shared
                            .events
                            .send(head.into_event(EventKind::Hop { outputs }))
                            .await;
                    }
                    Settle::Ack
                }
                Err(error) => {
                    tracing::warn!(envelope.id = ?sump::readable_id(body), queue = %shared.queue, %error, "publish failed; input will be redelivered");
                    Settle::Nack(infra_delay)
                }
            }
        }
        Err(error) => {
            // The id is read back from the body only here, on the failure path.
            tracing::warn!(envelope.id = ?sump::readable_id(body), queue = %shared.queue, %error, "layer stack failed; input will be redelivered");
            Settle::Nack(infra_delay)
        }
    }
}

async fn publish_to_sump<T: Transport>(shared: &Shared<T>, env: Envelope, redeliveries: u32) -> Settle {
    match publish(shared, Dispatch::one(Publication::to(SUMP, env))).await {
        Ok(()) => {
            shared.counters.sumped.fetch_add(1, Ordering::Relaxed);
            Settle::Ack
        }
        Err(error) => {
            tracing::warn!(queue = %shared.queue, %error, "publish to x-sump failed; input will be redelivered");
            Settle::Nack(Some(infra_delay(&shared.config, redeliveries)))
        }
    }
}

/// Where each publication of `dispatch` goes, for a hop event.
fn hop_outputs(dispatch: &Dispatch) -> Vec<HopOutput> {
    dispatch.publications().iter().map(HopOutput::of).collect()
}

/// How long a parked envelope (its task paused) waits before it is looked at again.
pub const PARK_DELAY: Duration = Duration::from_secs(1);

/// Puts `body` back on the actor's queue for [`PARK_DELAY`]: a copy, so parking spends
/// no redelivery.
async fn park<T: Transport>(shared: &Shared<T>, body: &Bytes, redeliveries: u32) -> Settle {
    let options = PublishOptions {
        delay: Some(PARK_DELAY),
        dedup_id: None,
    };
    match shared
        .transport
        .publish(&shared.queue, body.clone(), options)
        .await
    {
        Ok(()) => Settle::Ack,
        Err(error) => {
            tracing::warn!(queue = %shared.queue, %error, "parking a paused task's envelope failed; it will be redelivered");
            Settle::Nack(Some(infra_delay(&shared.config, redeliveries)))
        }
    }
}

/// The redelivery delay after an infrastructure failure: doubling per redelivery, capped.
fn infra_delay(config: &RunnerConfig, redeliveries: u32) -> Duration {
    config.redelivery_delay.saturating_mul(1 << redeliveries.min(6))
}

/// Publishes every publication concurrently; runs the hooks once all are confirmed.
async fn publish<T: Transport>(shared: &Shared<T>, mut dispatch: Dispatch) -> Result<(), TransportError> {
    let hooks = dispatch.take_hooks();
    let publications = dispatch.publications();
    let (naming, actor) = (&shared.config.naming, shared.config.actor.as_str());
    match publications {
        [] => {}
        [p] => publish_one(&shared.transport, naming, actor, p).await?,
        many => {
            let sends = many
                .iter()
                .map(|p| publish_one(&shared.transport, naming, actor, p));
            futures_util::future::try_join_all(sends).await?;
        }
    }
    shared
        .counters
        .published
        .fetch_add(publications.len() as u64, Ordering::Relaxed);
    for hook in hooks {
        hook().await;
    }
    Ok(())
}

/// Resolves the destination queue and encodes. A destination with no possible queue is a
/// route defect: the envelope goes to `x-sump` with `InvalidRoute` rather than looping, and
/// that envelope is returned too.
fn prepare_publication(
    naming: &QueueNaming,
    actor: &str,
    p: &Publication,
    dedup: bool,
) -> (String, Bytes, PublishOptions, Option<Envelope>) {
    // The hop key the destination's idempotency layer will use: a broker that deduplicates
    // drops exactly the duplicates that layer would otherwise absorb.
    let options = PublishOptions {
        delay: p.delay,
        dedup_id: dedup.then(|| p.envelope.hop_key(&p.actor)),
    };
    match naming.queue_for(&p.actor) {
        Ok(queue) => (queue, Bytes::from(p.envelope.to_vec()), options, None),
        Err(error) => {
            tracing::warn!(envelope.id = %p.envelope.id, %error, "destination has no queue; sending to x-sump");
            let env = undeliverable(&p.envelope, actor, Reason::InvalidRoute, error.to_string());
            (
                sump_queue(naming),
                Bytes::from(env.to_vec()),
                PublishOptions::default(),
                Some(env),
            )
        }
    }
}

fn sump_queue(naming: &QueueNaming) -> String {
    naming.queue_for(SUMP).unwrap_or_else(|_| SUMP.to_owned())
}

/// `envelope` marked failed at `actor` for `reason`, with `message` as its error, for x-sump.
fn undeliverable(envelope: &Envelope, actor: &str, reason: Reason, message: String) -> Envelope {
    let mut env = envelope.clone();
    let type_name = reason.as_str().to_owned();
    let status = env.status_mut();
    status.error = Some(crate::status::ErrorInfo {
        message,
        mro: vec![type_name.clone()],
        type_name,
        traceback: None,
    });
    status.mark(Phase::Failed, Some(reason), actor);
    env
}

/// Publishes one publication of actor `actor` the way the runner does, and returns once the
/// broker confirmed it. For handlers that publish their own outputs as they produce them
/// (see [`Outcome::Published`](crate::Outcome::Published)).
///
/// - The queue comes from `naming`; for a transport that deduplicates
///   ([`Transport::deduplicates`]), the dedup id is the destination's hop key.
/// - A destination that cannot be a queue (an illegal name) goes to `x-sump` as
///   `InvalidRoute`.
/// - A destination whose queue does not exist on the broker goes to `x-sump` as
///   `UnknownActor`, naming the actor, rather than being retried forever or left where no
///   consumer will ever read it. Every transport answers
///   [`TransportError::NoSuchQueue`] for such a queue (what "exists" means per broker is in
///   `docs/transports-notes.md`).
/// - A slice of a fan-in (see [`crate::fan_in`]) that fails for good (to `x-sump`, or to
///   `x-sink` as failed) is also sent to its aggregator, so the aggregator does not wait
///   for it forever.
pub async fn publish_one<T: Transport>(
    transport: &T,
    naming: &QueueNaming,
    actor: &str,
    publication: &Publication,
) -> Result<(), TransportError> {
    let (queue, body, options, redirected) =
        prepare_publication(naming, actor, publication, transport.deduplicates());
    let sumped = match transport.publish(&queue, body, options).await {
        Err(TransportError::NoSuchQueue { queue: missing })
            if missing == queue && publication.actor != SUMP =>
        {
            let message = format!(
                "actor {:?} does not exist: its queue {queue:?} is not on the broker (deploy the actor, or fix the route)",
                publication.actor
            );
            tracing::warn!(envelope.id = %publication.envelope.id, actor, destination = %publication.actor, %queue, "unknown actor; sending to x-sump");
            let env = undeliverable(&publication.envelope, actor, Reason::UnknownActor, message);
            transport
                .publish(
                    &sump_queue(naming),
                    Bytes::from(env.to_vec()),
                    PublishOptions::default(),
                )
                .await?;
            env
        }
        Err(error) => return Err(error),
        Ok(()) => match redirected {
            Some(env) => env,
            None if ends_failed(publication) => {
                return report_failed_slice(transport, naming, actor, &publication.envelope).await;
            }
            None => return Ok(()),
        },
    };
    report_failed_slice(transport, naming, actor, &sumped).await
}

/// Whether `publication` ends its envelope's route as a failure: to `x-sump`, or to `x-sink`
/// as failed (retries used up, a deadline passed).
fn ends_failed(publication: &Publication) -> bool {
    publication.actor == SUMP
        || (publication.actor == SINK
            && publication
                .envelope
                .status
                .as_ref()
                .and_then(|s| s.phase.as_ref())
                == Some(&Phase::Failed))
}

/// Tells the aggregator of a fan-in that one of its slices failed for good, so it does not
/// wait for that slice forever: the failed envelope goes to the aggregator's queue as well,
/// its route pointing there. Nothing for an envelope that is no slice, or a slice that
/// failed at its aggregator (which records that itself).
async fn report_failed_slice<T: Transport>(
    transport: &T,
    naming: &QueueNaming,
    actor: &str,
    failed: &Envelope,
) -> Result<(), TransportError> {
    let Some(Ok(fan_in)) = FanIn::of(failed) else {
        return Ok(());
    };
    if fan_in.actor == actor {
        return Ok(());
    }
    let Ok(queue) = naming.queue_for(&fan_in.actor) else {
        return Ok(());
    };
    let mut notice = failed.clone();
    let mut prev = notice.route.prev().to_vec();
    if !notice.route.curr().is_empty() {
        prev.push(notice.route.curr().to_owned());
    }
    notice.route = crate::Route::new(prev, fan_in.actor.as_str(), Vec::new());
    let options = PublishOptions {
        delay: None,
        dedup_id: transport.deduplicates().then(|| notice.hop_key(&fan_in.actor)),
    };
    match transport
        .publish(&queue, Bytes::from(notice.to_vec()), options)
        .await
    {
        Err(TransportError::NoSuchQueue { .. }) => {
            tracing::warn!(envelope.id = %failed.id, aggregator = %fan_in.actor, %queue, "a fan-in slice failed, but its aggregator has no queue to be told");
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infrastructure_delay_doubles_and_is_capped() {
        let mut c = RunnerConfig::new("a");
        c.redelivery_delay = Duration::from_millis(100);
        let delays: Vec<u64> = [0, 1, 2, 6, 7, 1000]
            .iter()
            .map(|&r| infra_delay(&c, r).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 6400, 6400, 6400]);
    }
}
