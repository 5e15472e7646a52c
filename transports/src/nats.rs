//! NATS JetStream transport (feature `nats`).
//!
//! Mapping (facts verified on nats-server 2.9, see `docs/transports-notes.md`):
//! - one work-queue stream (`NatsConfig::stream`, e.g. one per namespace) holding subject
//!   `{subject_prefix}.{queue}` for every queue;
//! - one durable pull consumer per queue, named after it, shared by every worker of the
//!   actor (a work-queue stream allows one consumer per subject); explicit acks;
//!   `ack_wait` = the consumer's lease, `max_ack_pending` covers the prefetch;
//! - `nack(delay)` = `Nak(delay)`, `in_progress` = `Progress`, redeliveries =
//!   `delivered - 1`;
//! - depth = `num_pending + num_ack_pending` (nak-delayed messages count as ack-pending)
//!   plus messages waiting in the delay stream;
//! - poison messages: the runner sends a message delivered too often to `x-sump`; with
//!   `max_deliver` and a dead-letter queue configured, the server's max-deliveries
//!   advisory moves what it gave up on there too (`nats_poison`);
//! - `PublishOptions::dedup_id` becomes `Nats-Msg-Id`, so the stream stores a republished
//!   output once within its duplicate window (2 minutes by default);
//! - delayed publish (retries): JetStream 2.9 cannot schedule a message, so delayed
//!   messages go to a second work-queue stream, `{stream}_DELAY`. A forwarder task inside
//!   the transport holds each one back (nak with the time left) and, once due, publishes it
//!   to its queue and then acks it. The queue sees a fresh message, so its delivery count
//!   starts at zero as the contract requires. It forwards only to subjects of this
//!   transport's own queues (`{subject_prefix}.{queue}`); a delayed message with no such
//!   target goes to the dead-letter queue, or, without one, stays in the delay stream
//!   (retried every minute, logged), never dropped;
//! - a queue exists when its durable consumer does (created by `ensure_queue` or the first
//!   `consume`, and kept while its actor is scaled to zero): a subject without a consumer is
//!   stored by the work-queue stream but read by nobody, so `publish` to such a queue
//!   answers `NoSuchQueue` instead. Queues seen to exist are remembered for
//!   [`KNOWN_QUEUE_TTL`](crate::known_queues::KNOWN_QUEUE_TTL), so the check costs one API call per queue per that period.

use std::sync::Arc;
use std::time::Duration;

use crate::known_queues::KnownQueues;
use crate::queue_check::now_millis;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, AckKind, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use troupe_core::{
    ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, QueueDepth, Transport, TransportError,
};

use troupe_core::redact::{Redacted, scrub};
use troupe_core::tls::TlsFiles;
use troupe_core::wire::{NOT_BEFORE, TARGET, spellings};

/// Where and how to reach JetStream. Its `Debug` shows the URL redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server address, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The work-queue stream holding the queues (e.g. one per namespace).
    pub stream: String,
    /// Subject prefix of queues: queue `q` is subject `{subject_prefix}.q`.
    pub subject_prefix: String,
    /// Bound on deliveries of one message; -1 (the default) leaves it to the runner's poison
    /// limit, which sends such messages to `x-sump` itself. With a bound, set
    /// [`dead_letter_queue`](Self::dead_letter_queue) too: the server then stops delivering
    /// the message, and the transport moves it there (see the max-deliveries advisory).
    pub max_deliver: i64,
    /// Where messages go that reached `max_deliver` (e.g. the namespace's `x-sump` queue),
    /// wrapped as sump envelopes. `None` leaves them stored in the stream, unseen.
    pub dead_letter_queue: Option<String>,
    /// Let the server delete a queue's consumer after this long without any client (for
    /// short-lived queues such as tests); `None` keeps consumers until deleted.
    pub consumer_inactive_threshold: Option<Duration>,
    /// CA bundle and client certificate for TLS; TLS itself is on for a `tls://` URL or a
    /// server that requires it.
    pub tls: TlsFiles,
    /// Send each output's hop key as `Nats-Msg-Id`, so the stream stores a republished
    /// output once within its duplicate window (on by default). Off, the idempotency store
    /// alone absorbs republished outputs, and the server keeps no window of ids.
    pub message_ids: bool,
}

impl Default for NatsConfig {
    /// `nats://127.0.0.1:4222`, stream `TROUPE`, subjects `troupe.<queue>`.
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream: "TROUPE".to_owned(),
            subject_prefix: "troupe".to_owned(),
            max_deliver: -1,
            dead_letter_queue: None,
            consumer_inactive_threshold: None,
            tls: TlsFiles::default(),
            message_ids: true,
        }
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &Redacted(&self.url))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("max_deliver", &self.max_deliver)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("consumer_inactive_threshold", &self.consumer_inactive_threshold)
            .field("tls", &self.tls)
            .field("message_ids", &self.message_ids)
            .finish()
    }
}

/// The NATS JetStream transport. Clones share one connection and one delay forwarder.
#[derive(Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

struct Inner {
    /// The connection under `js`, for flushing what it buffered.
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsConfig,
    stream: stream::Stream,
    delay_stream: stream::Stream,
    /// Queues whose consumer was seen.
    known: KnownQueues,
    /// Stops the delay forwarder when the last clone is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
    TransportError::Other(Box::new(e))
}

/// Queue names must be valid as one subject token and as a consumer name: the server
/// answers an API call for a bad name with a timeout, not an error, so check here.
fn check_queue(queue: &str) -> Result<(), TransportError> {
    let problem = if queue.is_empty() {
        Some("it is empty")
    } else if queue.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if queue
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        Some("NATS queue names cannot contain whitespace, control characters, '.', '*', '>', '/' or '\\'")
    } else {
        None
    };
    crate::queue_check::refuse_if(queue, problem)
}

/// Connects a NATS client to `url` (servers separated by commas, credentials in the first
/// URL that has them). The credentials go apart from the server list: async-nats logs the
/// servers it dials (at debug level) with whatever userinfo they carry. Errors show the
/// URL redacted.
///
/// TLS is used for `tls://` URLs (and servers that require it), verifying the server
/// against the system roots and `tls.ca_file`; `tls.cert_file` and `tls.key_file` are the
/// client's certificate for servers that verify clients.
pub async fn connect_client(url: &str, tls: &TlsFiles) -> Result<async_nats::Client, TransportError> {
    let mut credentials = None;
    let servers: Vec<String> = url
        .split(',')
        .map(|server| {
            let (userinfo, bare) = troupe_core::redact::split_userinfo(server.trim());
            credentials = credentials.take().or(userinfo);
            bare
        })
        .collect();
    let mut options = match credentials {
        Some((user, Some(password))) => async_nats::ConnectOptions::with_user_and_password(user, password),
        Some((token, None)) => async_nats::ConnectOptions::with_token(token),
        None => async_nats::ConnectOptions::new(),
    };
    // async-nats reads the files itself when it dials; reading them here first turns a
    // missing file into an error that names it, before any connection attempt.
    if let Some(ca) = &tls.ca_file {
        tls.ca_pem()?;
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    tls.client_identity_pem()?;
    options
        .connect(servers.join(",").as_str())
        .await
        .map_err(|e| TransportError::Disconnected {
            detail: format!(
                "cannot connect to NATS at {}: {}",
                Redacted(url),
                scrub(&e.to_string(), url)
            ),
        })
}

impl NatsTransport {
    /// Connects and makes sure both streams exist.
    pub async fn connect(config: NatsConfig) -> Result<Self, TransportError> {
        let client = connect_client(&config.url, &config.tls).await?;
        let js = jetstream::new(client.clone());
        let stream = Self::work_queue(&js, &config.stream, &format!("{}.>", config.subject_prefix)).await?;
        let delay_stream = Self::work_queue(
            &js,
            &format!("{}_DELAY", config.stream),
            &format!("{}-delay.>", config.subject_prefix),
        )
        .await?;
        // Every process forwards due messages (they share one durable), so nothing left in
        // the delay stream by a process that went away waits for a new delayed publish.
        let stop = CancellationToken::new();
        if let Some(queue) = &config.dead_letter_queue {
            check_queue(queue)?;
        }
        tokio::spawn(supervise_forwarder(
            js.clone(),
            delay_stream.clone(),
            Targets {
                prefix: format!("{}.", config.subject_prefix),
                dead_letter: config
                    .dead_letter_queue
                    .as_ref()
                    .map(|q| format!("{}.{q}", config.subject_prefix)),
            },
            stop.clone(),
        ));
        if config.max_deliver > 0
            && let Some(queue) = &config.dead_letter_queue
        {
            tokio::spawn(crate::nats_poison::supervise(
                js.clone(),
                stream.clone(),
                config.stream.clone(),
                format!("{}.{queue}", config.subject_prefix),
                stop.clone(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                stream,
                delay_stream,
                known: KnownQueues::default(),
                stop,
            }),
        })
    }

    /// `Ok` if `queue`'s consumer exists (see the module docs), `NoSuchQueue` if not.
    async fn require_queue(&self, queue: &str) -> Result<(), TransportError> {
        if self.inner.known.is_fresh(queue) {
            return Ok(());
        }
        match self.inner.stream.consumer_info(queue).await {
            Ok(_) => {
                self.inner.known.remember(queue);
                Ok(())
            }
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                self.inner.known.forget(queue);
                Err(TransportError::NoSuchQueue {
                    queue: queue.to_owned(),
                })
            }
            Err(e) => Err(TransportError::Disconnected {
                detail: format!("cannot look up the consumer of {queue:?}: {e}"),
            }),
        }
    }

    async fn work_queue(
        js: &jetstream::Context,
        name: &str,
        subjects: &str,
    ) -> Result<stream::Stream, TransportError> {
        js.get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .map_err(|e| TransportError::Disconnected {
            detail: format!("cannot create or open JetStream stream {name:?}: {e}"),
        })
    }

    fn subject(&self, queue: &str) -> String {
        format!("{}.{queue}", self.inner.config.subject_prefix)
    }

    fn delay_subject(&self, queue: &str) -> String {
        format!("{}-delay.{queue}", self.inner.config.subject_prefix)
    }

    /// Creates the queue's durable consumer, or updates its lease.
    async fn durable(&self, queue: &str, options: ConsumeOptions) -> Result<PullConsumer, TransportError> {
        check_queue(queue)?;
        let prefetch = i64::try_from(options.prefetch.max(1)).unwrap_or(i64::MAX);
        let consumer = self
            .inner
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(queue.to_owned()),
                filter_subject: self.subject(queue),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: options.lease,
                max_deliver: self.inner.config.max_deliver,
                // Every worker of the actor pulls from this one consumer.
                max_ack_pending: prefetch.saturating_mul(64).max(1024),
                inactive_threshold: self.inner.config.consumer_inactive_threshold.unwrap_or_default(),
                ..Default::default()
            })
            .await
            .map_err(other)?;
        self.inner.known.remember(queue);
        Ok(consumer)
    }

    /// The queue's durable consumer (created or updated) as a stream of messages, pulled in
    /// batches of `prefetch`.
    async fn pull(&self, queue: &str, options: ConsumeOptions) -> Result<pull::Stream, TransportError> {
        let consumer = self.durable(queue, options).await?;
        consumer
            .stream()
            .max_messages_per_batch(options.prefetch.max(1))
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(other)
    }

    async fn confirmed(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
        queue: &str,
    ) -> Result<(), TransportError> {
        let ack = self
            .inner
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(|e| TransportError::NotConfirmed {
                queue: queue.to_owned(),
                detail: e.to_string(),
            })?;
        ack.await.map(drop).map_err(|e| TransportError::NotConfirmed {
            queue: queue.to_owned(),
            detail: e.to_string(),
        })
    }
}

/// How long one pull request waits on the server. async-nats asks for more only when it
/// counts fewer than half a batch still to come, and under load that count can end above
/// what the server will send (a request's messages may arrive before the client adds the
/// request to its count, and the count stops at zero). The consumer then waits until the
/// client's safety timer, this expiry plus 5 s, sends a fresh request. On a busy stream a
/// burst of 20,000 envelopes stalled about once in 16-24 runs: for 35 s with the client's
/// default of 30 s, for 10 s with 5 s (docs/benchmarks.md). A 1 s expiry made stalls more
/// frequent and no shorter than 6 s, so 5 s it is; an idle consumer pays one small request
/// per period.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Where the delay forwarder may send messages.
struct Targets {
    /// Every queue subject of this transport starts with it (`{subject_prefix}.`).
    prefix: String,
    /// The dead-letter queue's subject, for delayed messages without a valid target.
    dead_letter: Option<String>,
}

impl Targets {
    /// The target subject if it is one of this transport's queues.
    fn valid<'a>(&self, target: Option<&'a str>) -> Result<&'a str, String> {
        let target = target.ok_or("it has no troupe-target header")?;
        let queue = target.strip_prefix(self.prefix.as_str()).ok_or_else(|| {
            format!(
                "its target {target:?} is not under this mesh's prefix {:?}",
                self.prefix
            )
        })?;
        check_queue(queue).map_err(|e| format!("its target {target:?} is not a queue: {e}"))?;
        Ok(target)
    }
}

/// Keeps a delay forwarder running until `stop`: if its consumer or stream goes away, it is
/// created again (with backoff), so delayed messages are never stranded.
async fn supervise_forwarder(
    js: jetstream::Context,
    delay_stream: stream::Stream,
    targets: Targets,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let start = async {
            let consumer: PullConsumer = delay_stream
                .create_consumer(pull::Config {
                    durable_name: Some("troupe-delay-forwarder".to_owned()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    // Long delays held back here must not block short ones behind them.
                    max_ack_pending: -1,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        };
        let started = tokio::select! {
            () = stop.cancelled() => return,
            r = start => r,
        };
        match started {
            Ok(messages) => {
                backoff = Duration::from_millis(100);
                forward_when_due(&js, messages, &targets, &stop).await;
                if stop.is_cancelled() {
                    return;
                }
                tracing::warn!("delay forwarder: its stream ended; starting it again");
            }
            Err(error) => tracing::warn!(%error, ?backoff, "delay forwarder: cannot start; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Holds delayed messages back until due, then moves each to its queue.
async fn forward_when_due(
    js: &jetstream::Context,
    mut messages: pull::Stream,
    targets: &Targets,
    stop: &CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            m = messages.next() => m,
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(error)) => {
                tracing::warn!(%error, "delay forwarder: receive failed");
                continue;
            }
            None => return,
        };
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name| spellings(name).find_map(|n| headers.get(n)).map(|v| v.as_str());
        let due = header(NOT_BEFORE)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let target = match targets.valid(header(TARGET)) {
            Ok(target) => target.to_owned(),
            Err(why) => {
                set_aside(js, message, targets, &why).await;
                continue;
            }
        };
        let now = now_millis();
        if now < due {
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_millis(due - now))))
                .await;
            continue;
        }
        // The queue gets the user's headers, not the forwarder's bookkeeping.
        let mut out = HeaderMap::new();
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if spellings(NOT_BEFORE).chain(spellings(TARGET)).any(|n| n == name) {
                continue;
            }
            for value in values {
                out.append(name, value.as_str());
            }
        }
        let published = match js
            .publish_with_headers(target.clone(), out, message.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match published {
            // Acked only once the queue holds the message: a crash in between duplicates
            // it (at-least-once), never loses it.
            Ok(()) => {
                if let Err(error) = message.double_ack().await {
                    tracing::warn!(%error, subject = %target, "delay forwarder: ack failed; the message may be forwarded twice");
                }
            }
            Err(error) => {
                tracing::warn!(%error, subject = %target, "delay forwarder: publish failed; retrying in 1 s");
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
}

/// A delayed message the forwarder must not forward: to the dead-letter queue, wrapped as a
/// sump envelope, or (without one) back to the delay stream for a minute.
async fn set_aside(js: &jetstream::Context, message: jetstream::Message, targets: &Targets, why: &str) {
    let Some(dead_letter) = &targets.dead_letter else {
        tracing::error!(%why, "delay forwarder: cannot forward a delayed message and no dead-letter queue is set; keeping it");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(60))))
            .await;
        return;
    };
    let wrapped = troupe_core::sump::wrap_body(
        &message.payload,
        troupe_core::Reason::InvalidRoute,
        "InvalidDelayTarget",
        &format!("the delay forwarder cannot forward this message: {why}"),
        "troupe-delay-forwarder",
    );
    let published = match js.publish(dead_letter.clone(), wrapped.to_vec().into()).await {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
        Ok(()) => {
            tracing::warn!(%why, subject = %dead_letter, "delay forwarder: moved a delayed message to the dead-letter queue");
            let _ = message.double_ack().await;
        }
        Err(error) => {
            tracing::warn!(%error, "delay forwarder: dead-letter publish failed; retrying in 1 s");
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

impl Transport for NatsTransport {
    type Consumer = NatsConsumer;

    fn deduplicates(&self) -> bool {
        self.inner.config.message_ids
    }

    async fn publish(&self, queue: &str, body: Bytes, options: PublishOptions) -> Result<(), TransportError> {
        check_queue(queue)?;
        self.require_queue(queue).await?;
        let mut headers = HeaderMap::new();
        if let Some(id) = &options.dedup_id {
            // The forwarder copies it onto the forwarded message, so a delayed message is
            // deduplicated in both streams.
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        match options.delay.filter(|d| !d.is_zero()) {
            None => self.confirmed(self.subject(queue), headers, body, queue).await,
            Some(delay) => {
                let due = now_millis().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                headers.insert(NOT_BEFORE, due.to_string().as_str());
                headers.insert(TARGET, self.subject(queue).as_str());
                self.confirmed(self.delay_subject(queue), headers, body, queue)
                    .await
            }
        }
    }

    async fn flush(&self) -> Result<(), TransportError> {
        // Acks, nacks and lease extensions are fire-and-forget messages in the client's
        // write buffer until the connection writes them out.
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| TransportError::Disconnected {
                detail: format!("cannot flush acknowledgements to NATS: {e}"),
            })
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<NatsConsumer, TransportError> {
        let messages = self.pull(queue, options).await?;
        Ok(NatsConsumer {
            transport: self.clone(),
            queue: queue.to_owned(),
            options,
            messages: Some(messages),
        })
    }
}

impl QueueAdmin for NatsTransport {
    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
        check_queue(queue)?;
        // Create only: an existing consumer keeps the lease its workers set.
        if self
            .inner
            .stream
            .get_consumer::<pull::Config>(queue)
            .await
            .is_ok()
        {
            self.inner.known.remember(queue);
            return Ok(());
        }
        self.durable(queue, ConsumeOptions::default()).await.map(drop)
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, TransportError> {
        check_queue(queue)?;
        let mut consumer: PullConsumer =
            self.inner
                .stream
                .get_consumer(queue)
                .await
                .map_err(|_| TransportError::NoSuchQueue {
                    queue: queue.to_owned(),
                })?;
        let info = consumer.info().await.map_err(other)?;
        let mut delayed = 0u64;
        let mut subjects = self
            .inner
            .delay_stream
            .info_with_subjects(self.delay_subject(queue))
            .await
            .map_err(other)?;
        while let Some(entry) = subjects.next().await {
            let (_, count) = entry.map_err(other)?;
            delayed += count as u64;
        }
        Ok(QueueDepth {
            ready: info.num_pending,
            in_flight: u64::try_from(info.num_ack_pending).unwrap_or(0),
            delayed,
        })
    }
}

/// Deliveries from one queue's durable consumer.
pub struct NatsConsumer {
    transport: NatsTransport,
    queue: String,
    options: ConsumeOptions,
    /// `None` after the pull stream ended (e.g. the consumer was deleted): the next call
    /// creates it again.
    messages: Option<pull::Stream>,
}

impl Consumer for NatsConsumer {
    type Delivery = NatsDelivery;

    async fn next(&mut self) -> Option<Result<NatsDelivery, TransportError>> {
        let messages = match &mut self.messages {
            Some(m) => m,
            None => match self.transport.pull(&self.queue, self.options).await {
                Ok(m) => self.messages.insert(m),
                Err(e) => return Some(Err(e)),
            },
        };
        let message = match messages.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                return Some(Err(TransportError::Disconnected {
                    detail: format!("receiving from {:?}: {e}", self.queue),
                }));
            }
            None => {
                // Not the end of the transport: the consumer went away (deleted by an
                // operator or for inactivity). Report it; the next call re-creates it.
                self.messages = None;
                return Some(Err(TransportError::Disconnected {
                    detail: format!("the consumer of {:?} went away; re-creating it", self.queue),
                }));
            }
        };
        let redeliveries = message.info().map_or(0, |i| {
            u32::try_from(i.delivered.saturating_sub(1)).unwrap_or(u32::MAX)
        });
        Some(Ok(NatsDelivery {
            body: message.payload.clone(),
            message,
            redeliveries,
        }))
    }
}

/// One JetStream message.
pub struct NatsDelivery {
    message: jetstream::Message,
    body: Bytes,
    redeliveries: u32,
}

impl Delivery for NatsDelivery {
    fn body(&self) -> &Bytes {
        &self.body
    }

    fn redeliveries(&self) -> u32 {
        self.redeliveries
    }

    async fn ack(self) -> Result<(), TransportError> {
        self.message.ack().await.map_err(TransportError::Other)
    }

    async fn nack(self, delay: Option<Duration>) -> Result<(), TransportError> {
        self.message
            .ack_with(AckKind::Nak(delay.filter(|d| !d.is_zero())))
            .await
            .map_err(TransportError::Other)
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(TransportError::Other)
    }
}
