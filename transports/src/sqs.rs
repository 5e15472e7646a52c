//! Amazon SQS transport (feature `sqs`).
//!
//! Mapping (facts verified against ministack 1.5.33, see `docs/transports-notes.md`):
//! - one standard SQS queue per Troupe queue, with the same name; names are checked here
//!   (1–80 ASCII letters, digits, `-`, `_`) because emulators accept names SQS refuses;
//! - lease = visibility timeout, set on every `ReceiveMessage` from
//!   [`ConsumeOptions::lease`](troupe_core::ConsumeOptions) (rounded up to whole seconds,
//!   plus a little slack for the time the response takes to arrive);
//!   `in_progress` and `nack(Some(delay))` use `ChangeMessageVisibility`, `nack(None)` sets
//!   the visibility to 0; `redeliveries() = ApproximateReceiveCount - 1`;
//! - receiving: a background task per consumer long-polls (`SqsConfig::wait_time`, 20 s)
//!   for up to 10 messages at a time into a channel bounded by the prefetch, so
//!   `Consumer::next` is cancel-safe;
//! - `publish` resolves once SQS answered for that message. Concurrent publishes to one
//!   queue share `SendMessageBatch` requests, and acks share `DeleteMessageBatch`
//!   requests; every caller gets its own entry's result;
//! - delayed publish: `DelaySeconds` up to SQS's 15 minutes. Longer delays are chained:
//!   the message carries `troupe-not-before` (Unix ms), and a consumer that receives it
//!   early publishes it again with the time left and deletes the original, never handing
//!   it out. Each hop is a new message, so the first real delivery has
//!   `redeliveries() == 0`;
//! - `ensure_queue` creates `<queue>-dlq` and sets a redrive policy on `<queue>`
//!   (`SqsConfig::max_receive_count`, 50 by default). That is well above the runner's poison
//!   limit, so the runner's `x-sump` sees poison first; the dead-letter queue is only a safety net;
//! - depth: `ApproximateNumberOfMessages` (ready), `…NotVisible` (in flight; SQS counts a
//!   message nacked with a delay here too) and `…Delayed` (delayed publishes);
//! - bodies are bytes, SQS bodies are text: a body that is UTF-8 without characters SQS
//!   refuses goes as it is; any other body (or an empty one) is base64-encoded and marked
//!   with the `troupe-encoding` attribute;
//! - `PublishOptions::dedup_id` is ignored: standard queues have no deduplication (the
//!   idempotency layer still holds).
//!
//! Credentials: this crate does not depend on `aws-config`. That crate brings the STS, SSO
//! and SSO-OIDC clients and roughly doubles the build of this feature. [`SqsTransport::connect`] takes
//! static credentials from [`SqsConfig::credentials`] or the `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` variables, which covers emulators and
//! plain keys. For the full default chain (instance roles, SSO, web identity), build a
//! client with `aws-config` in the application and pass it to [`SqsTransport::with_client`].
//! TLS is rustls with ring, so the build needs no C toolchain for aws-lc.

mod batch;
mod consumer;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::queue_check::now_millis;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use troupe_core::{ConsumeOptions, PublishOptions, QueueAdmin, QueueDepth, Transport, TransportError};

use batch::{BatchSettings, Batcher, DeleteFlush, SendFlush};
pub use consumer::{SqsConsumer, SqsDelivery};

/// Message attribute marking how the body was encoded (`base64`); absent for plain text.
use troupe_core::wire::ENCODING;
/// Message attribute on chained delays: when (Unix milliseconds) the message is due.
use troupe_core::wire::NOT_BEFORE;
/// Suffix of the dead-letter queue that `ensure_queue` creates.
const DLQ_SUFFIX: &str = "-dlq";
/// SQS's longest `DelaySeconds`.
const MAX_DELAY: Duration = Duration::from_secs(900);
/// SQS's longest retention, for the dead-letter queue: poison is kept for inspection.
const DLQ_RETENTION_SECS: &str = "1209600";
/// SQS's longest long-poll wait.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// A queue `connect` looks up only to see whether SQS answers and takes the credentials;
/// whether it exists does not matter.
const PROBE_QUEUE: &str = "troupe-connect-probe";

/// Static AWS credentials (an emulator's dummy keys, or plain access keys).
#[derive(Clone, PartialEq, Eq)]
pub struct SqsCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl SqsCredentials {
    /// Long-term keys without a session token.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (optional) `AWS_SESSION_TOKEN`;
    /// `None` unless both keys are set and non-empty.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Self {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }
}

impl fmt::Debug for SqsCredentials {
    // Configs get logged; the secret must not be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &troupe_core::redact::MASK)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| troupe_core::redact::MASK),
            )
            .finish()
    }
}

/// Where and how to reach SQS, and how the transport uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsConfig {
    /// Endpoint, e.g. `http://127.0.0.1:4566` for a local emulator; `None` for the
    /// region's AWS endpoint.
    pub endpoint_url: Option<String>,
    /// AWS region, e.g. `eu-west-1` (emulators accept any).
    pub region: String,
    /// Static credentials; `None` reads them from the `AWS_*` environment variables at
    /// `connect`. For instance roles, SSO and the rest of the default chain, use
    /// [`SqsTransport::with_client`].
    pub credentials: Option<SqsCredentials>,
    /// Receives after which SQS moves a message to `<queue>-dlq` (the redrive policy that
    /// `ensure_queue` sets; SQS takes 1–1000); `None` creates no dead-letter queue. Keep it well above the
    /// runner's poison limit (25), so poison reaches the runner's `x-sump` first.
    pub max_receive_count: Option<u32>,
    /// Long-poll wait of each receive (at most 20 s, SQS's limit; longer is cut to 20 s).
    pub wait_time: Duration,
    /// Longest delay given to SQS as `DelaySeconds` in one hop (at most 15 min, SQS's
    /// limit); longer delays are chained. Lower only to test the chaining.
    pub max_native_delay: Duration,
    /// How long a batch waits for more entries, only while other batches to the same queue
    /// are in flight. An idle queue's request goes out at once.
    pub batch_linger: Duration,
    /// Batch requests of one kind (sends, deletes) in flight at once per queue.
    pub max_batches_in_flight: usize,
    /// Upper bound on the bodies in one `SendMessageBatch` (SQS refuses more than 1 MiB
    /// in one request).
    pub max_batch_bytes: usize,
}

impl Default for SqsConfig {
    /// AWS's `us-east-1` endpoint, credentials from the environment, a dead-letter queue
    /// after 50 receives, 20 s long polls, 1 ms batch linger.
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: "us-east-1".to_owned(),
            credentials: None,
            max_receive_count: Some(50),
            wait_time: MAX_WAIT,
            max_native_delay: MAX_DELAY,
            batch_linger: Duration::from_millis(1),
            max_batches_in_flight: 8,
            max_batch_bytes: 256 * 1024,
        }
    }
}

/// What SQS and the transport agreed on for one queue: its URL and its batchers.
struct QueueHandle {
    name: String,
    url: String,
    client: Client,
    settings: Arc<SqsConfig>,
    sends: Batcher<Outgoing>,
    deletes: Batcher<String>,
}

/// The SQS transport. Clones share one client, the queue URL cache and the batchers.
#[derive(Clone)]
pub struct SqsTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: Arc<SqsConfig>,
    /// Queue name → URL and batchers. URLs are stable (they are derived from account and
    /// name), so an entry never goes stale; a deleted queue answers `NoSuchQueue`.
    queues: Mutex<HashMap<String, Arc<QueueHandle>>>,
}

impl fmt::Debug for SqsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsTransport")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SqsTransport {
    /// Builds a client from `config` and checks that the endpoint answers and takes the
    /// credentials.
    pub async fn connect(config: SqsConfig) -> Result<Self, TransportError> {
        let credentials = config
            .credentials
            .clone()
            .or_else(SqsCredentials::from_env)
            .ok_or_else(|| {
                TransportError::Other(
                    "no AWS credentials for SQS: set SqsConfig::credentials or AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or build a client with aws-config's default chain and pass it \
                     to SqsTransport::with_client"
                        .into(),
                )
            })?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            // The longest call is a long poll; anything longer is a hung connection.
            .operation_attempt_timeout(config.wait_time.min(MAX_WAIT) + Duration::from_secs(10))
            .build();
        let mut sdk = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(
                credentials.access_key_id,
                credentials.secret_access_key,
                credentials.session_token,
                None,
                "troupe-sqs-config",
            ))
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(url) = &config.endpoint_url {
            sdk = sdk.endpoint_url(url);
        }
        let where_ = config.endpoint_url.as_deref().map_or_else(
            || format!("the AWS endpoint of {}", config.region),
            troupe_core::redact::redact_url,
        );
        let transport = Self::with_client(Client::from_conf(sdk.build()), config);
        match transport
            .inner
            .client
            .get_queue_url()
            .queue_name(PROBE_QUEUE)
            .send()
            .await
        {
            Ok(_) => Ok(transport),
            Err(e) => {
                let failure = Failure::of(&e, "GetQueueUrl");
                match failure.kind {
                    // It answered, and knew who we are.
                    FailureKind::NoSuchQueue | FailureKind::Rejected | FailureKind::ReceiptInvalid => {
                        Ok(transport)
                    }
                    FailureKind::Unreachable => Err(TransportError::Disconnected {
                        detail: format!("cannot reach SQS at {where_}: {}", failure.detail),
                    }),
                    FailureKind::Credentials => Err(TransportError::Other(
                        format!("SQS at {where_} refused the credentials: {}", failure.detail).into(),
                    )),
                }
            }
        }
    }

    /// Uses a client built elsewhere (e.g. with `aws-config`'s default credential chain);
    /// `config`'s endpoint, region and credentials are then ignored. Does not call SQS.
    pub fn with_client(client: Client, mut config: SqsConfig) -> Self {
        config.wait_time = config.wait_time.min(MAX_WAIT);
        config.max_native_delay = config.max_native_delay.clamp(Duration::from_secs(1), MAX_DELAY);
        Self {
            inner: Arc::new(Inner {
                client,
                config: Arc::new(config),
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The SQS client, for administration the transport does not cover.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn cached(&self, queue: &str) -> Option<Arc<QueueHandle>> {
        let queues = self.inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues.get(queue).cloned()
    }

    /// Caches `url` for `queue`, starting its batchers (once, even under a race).
    fn remember(&self, queue: &str, url: String) -> Arc<QueueHandle> {
        let mut queues = self.inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let config = &self.inner.config;
        let client = &self.inner.client;
        let handle = queues.entry(queue.to_owned()).or_insert_with(|| {
            let settings = BatchSettings {
                linger: config.batch_linger,
                max_in_flight: config.max_batches_in_flight,
                max_bytes: config.max_batch_bytes,
            };
            let sends = Batcher::spawn(
                SendFlush {
                    client: client.clone(),
                    queue: queue.to_owned(),
                    url: url.clone(),
                },
                settings,
            );
            let deletes = Batcher::spawn(
                DeleteFlush {
                    client: client.clone(),
                    queue: queue.to_owned(),
                    url: url.clone(),
                },
                settings,
            );
            Arc::new(QueueHandle {
                name: queue.to_owned(),
                url,
                client: client.clone(),
                settings: Arc::clone(config),
                sends,
                deletes,
            })
        });
        Arc::clone(handle)
    }

    /// The queue's handle, looking its URL up once (`GetQueueUrl`).
    async fn queue(&self, queue: &str) -> Result<Arc<QueueHandle>, TransportError> {
        check_queue(queue)?;
        if let Some(handle) = self.cached(queue) {
            return Ok(handle);
        }
        let out = self
            .inner
            .client
            .get_queue_url()
            .queue_name(queue)
            .send()
            .await
            .map_err(|e| Failure::of(&e, "GetQueueUrl").into_error(queue))?;
        let url = out.queue_url.ok_or_else(|| {
            TransportError::Other(format!("SQS answered GetQueueUrl for {queue:?} without a URL").into())
        })?;
        Ok(self.remember(queue, url))
    }

    /// `CreateQueue` (idempotent): the queue's URL.
    async fn create(
        &self,
        name: &str,
        attributes: &[(QueueAttributeName, &str)],
    ) -> Result<String, TransportError> {
        let mut request = self.inner.client.create_queue().queue_name(name);
        for (key, value) in attributes {
            request = request.attributes(key.clone(), *value);
        }
        match request.send().await {
            Ok(out) => out.queue_url.ok_or_else(|| {
                TransportError::Other(format!("SQS answered CreateQueue for {name:?} without a URL").into())
            }),
            // It exists with other attributes (set by an operator): keep them.
            Err(e)
                if e.code()
                    .is_some_and(|c| c.contains("QueueAlreadyExists") || c.contains("QueueNameExists")) =>
            {
                tracing::info!(queue = name, "queue exists with other attributes; keeping them");
                let out = self
                    .inner
                    .client
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|e| Failure::of(&e, "GetQueueUrl").into_error(name))?;
                out.queue_url.ok_or_else(|| {
                    TransportError::Other(
                        format!("SQS answered GetQueueUrl for {name:?} without a URL").into(),
                    )
                })
            }
            Err(e) => Err(Failure::of(&e, "CreateQueue").into_error(name)),
        }
    }

    async fn attributes(
        &self,
        queue: &str,
        url: &str,
        names: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, String>, TransportError> {
        let out = self
            .inner
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| Failure::of(&e, "GetQueueAttributes").into_error(queue))?;
        Ok(out.attributes.unwrap_or_default())
    }

    /// Creates `<queue>-dlq` and points `queue`'s redrive policy at it, unless `queue`
    /// already has a redrive policy (an operator's choice is kept).
    async fn ensure_dead_letter(
        &self,
        queue: &str,
        url: &str,
        max_receive_count: u32,
    ) -> Result<(), TransportError> {
        let existing = self
            .attributes(queue, url, &[QueueAttributeName::RedrivePolicy])
            .await?;
        if existing.contains_key(&QueueAttributeName::RedrivePolicy) {
            return Ok(());
        }
        let dlq = format!("{queue}{DLQ_SUFFIX}");
        let dlq_url = self
            .create(
                &dlq,
                &[(QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECS)],
            )
            .await?;
        let arn = self
            .attributes(&dlq, &dlq_url, &[QueueAttributeName::QueueArn])
            .await?
            .remove(&QueueAttributeName::QueueArn)
            .ok_or_else(|| {
                TransportError::Other(
                    format!("SQS did not report the ARN of dead-letter queue {dlq:?}").into(),
                )
            })?;
        let policy = format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":{max_receive_count}}}"#);
        self.inner
            .client
            .set_queue_attributes()
            .queue_url(url)
            .attributes(QueueAttributeName::RedrivePolicy, policy)
            .send()
            .await
            .map_err(|e| Failure::of(&e, "SetQueueAttributes (RedrivePolicy)").into_error(queue))?;
        tracing::info!(queue, dlq, max_receive_count, "dead-letter queue set");
        Ok(())
    }
}

impl Transport for SqsTransport {
    type Consumer = SqsConsumer;

    async fn publish(&self, queue: &str, body: Bytes, options: PublishOptions) -> Result<(), TransportError> {
        let handle = self.queue(queue).await?;
        let outgoing = Outgoing::new(&body, options.delay, self.inner.config.max_native_delay);
        let weight = outgoing.weight();
        handle.sends.submit(outgoing, weight).await
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<SqsConsumer, TransportError> {
        let handle = self.queue(queue).await?;
        Ok(SqsConsumer::start(handle, options.prefetch, options.lease))
    }
}

impl QueueAdmin for SqsTransport {
    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
        check_queue(queue)?;
        let max_receive_count = self.inner.config.max_receive_count;
        if max_receive_count.is_some() && queue.len() + DLQ_SUFFIX.len() > 80 {
            return Err(TransportError::InvalidQueue {
                queue: queue.to_owned(),
                detail: format!(
                    "its dead-letter queue {queue}{DLQ_SUFFIX} would be longer than SQS's 80 characters; \
                     shorten the name or set SqsConfig::max_receive_count to None"
                ),
            });
        }
        let url = self.create(queue, &[]).await?;
        if let Some(count) = max_receive_count {
            self.ensure_dead_letter(queue, &url, count).await?;
        }
        self.remember(queue, url);
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, TransportError> {
        let handle = self.queue(queue).await?;
        let attributes = self
            .attributes(
                queue,
                &handle.url,
                &[
                    QueueAttributeName::ApproximateNumberOfMessages,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                ],
            )
            .await?;
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            ready: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

/// SQS accepts 1–80 ASCII letters, digits, `-` and `_` (a `.fifo` suffix is for FIFO
/// queues, which this transport does not use). Emulators accept more, so check here.
fn check_queue(queue: &str) -> Result<(), TransportError> {
    let problem = if queue.is_empty() {
        Some("it is empty")
    } else if queue.len() > 80 {
        Some("SQS queue names are at most 80 characters")
    } else if !queue
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Some("SQS queue names may contain only ASCII letters, digits, '-' and '_'")
    } else {
        None
    };
    crate::queue_check::refuse_if(queue, problem)
}

/// Whole seconds, rounded up: SQS delays and visibility are in seconds, and a message
/// must never come back before the time asked for.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A message on its way to `SendMessageBatch`, already in SQS's terms.
struct Outgoing {
    body: String,
    encoding: Option<String>,
    delay_secs: i32,
    not_before: Option<u64>,
}

impl Outgoing {
    fn new(body: &Bytes, delay: Option<Duration>, max_native_delay: Duration) -> Self {
        let (body, encoding) = encode_body(body);
        let mut out = Self {
            body,
            encoding,
            delay_secs: 0,
            not_before: None,
        };
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            let due = now_millis().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            out.set_delay(delay, due, max_native_delay);
        }
        out
    }

    /// The next hop of a chained delay, from a received message's body and encoding.
    fn hop(
        body: String,
        encoding: Option<String>,
        remaining: Duration,
        due: u64,
        max_native_delay: Duration,
    ) -> Self {
        let mut out = Self {
            body,
            encoding,
            delay_secs: 0,
            not_before: None,
        };
        out.set_delay(remaining, due, max_native_delay);
        out
    }

    fn set_delay(&mut self, delay: Duration, due: u64, max_native_delay: Duration) {
        if delay <= max_native_delay {
            // The last hop: SQS itself holds it for the rest.
            self.delay_secs = i32::try_from(ceil_secs(delay)).unwrap_or(i32::MAX);
        } else {
            self.delay_secs = i32::try_from(max_native_delay.as_secs()).unwrap_or(900);
            self.not_before = Some(due);
        }
    }

    /// Bytes toward the batch's size limit (body plus a generous allowance for attributes).
    fn weight(&self) -> usize {
        self.body.len() + 128
    }

    fn entry(&self, id: usize) -> Result<SendMessageBatchRequestEntry, BuildError> {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(&self.body)
            .delay_seconds(self.delay_secs);
        if let Some(encoding) = &self.encoding {
            entry = entry.message_attributes(ENCODING, string_attribute(encoding.clone())?);
        }
        if let Some(due) = self.not_before {
            entry = entry.message_attributes(NOT_BEFORE, string_attribute(due.to_string())?);
        }
        entry.build()
    }
}

fn string_attribute(value: String) -> Result<MessageAttributeValue, BuildError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
}

/// Characters SQS accepts in a body (XML 1.0's `Char`).
fn sqs_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Text bodies go as they are; anything SQS would refuse (binary, forbidden characters,
/// empty) is base64-encoded. Empty bodies get a one-character stand-in, since SQS refuses
/// an empty `MessageBody`.
fn encode_body(body: &Bytes) -> (String, Option<String>) {
    if body.is_empty() {
        return ("=".to_owned(), Some("empty".to_owned()));
    }
    match std::str::from_utf8(body) {
        Ok(text) if text.chars().all(sqs_char) => (text.to_owned(), None),
        _ => (BASE64.encode(body), Some("base64".to_owned())),
    }
}

fn decode_body(queue: &str, body: String, encoding: Option<&str>) -> Bytes {
    match encoding {
        None => Bytes::from(body),
        Some("empty") => Bytes::new(),
        Some("base64") => match BASE64.decode(body.as_bytes()) {
            Ok(bytes) => Bytes::from(bytes),
            Err(error) => {
                tracing::warn!(queue, %error, "a body marked base64 does not decode; handing it out as it is");
                Bytes::from(body)
            }
        },
        Some(other) => {
            tracing::warn!(
                queue,
                encoding = other,
                "unknown body encoding; handing the body out as it is"
            );
            Bytes::from(body)
        }
    }
}

/// What went wrong with an SQS call, in terms the transport maps onto [`TransportError`].
/// Clonable, so one failed batch request can answer every caller in it.
#[derive(Debug, Clone)]
struct Failure {
    kind: FailureKind,
    detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The queue does not exist.
    NoSuchQueue,
    /// No answer: connection, DNS, timeout.
    Unreachable,
    /// The receipt handle no longer holds the message: its visibility ended.
    ReceiptInvalid,
    /// Credentials missing, wrong or not allowed.
    Credentials,
    /// Anything else SQS refused.
    Rejected,
}

impl Failure {
    fn of<E, R>(error: &SdkError<E, R>, op: &str) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug,
    {
        match error {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Self::unreachable(format!(
                "{op}: {}; is the endpoint right and SQS (or the emulator) up?",
                DisplayErrorContext(error)
            )),
            // No error code: a response that did not parse, or a request not built.
            _ if error.code().is_none() => Self {
                kind: FailureKind::Rejected,
                detail: format!("{op}: {}", DisplayErrorContext(error)),
            },
            _ => Self::of_entry(error.code().unwrap_or("unknown"), error.message(), op),
        }
    }

    fn unreachable(detail: String) -> Self {
        Self {
            kind: FailureKind::Unreachable,
            detail,
        }
    }

    /// From an error code and message (a whole call's, or one batch entry's).
    fn of_entry(code: &str, message: Option<&str>, op: &str) -> Self {
        let message = message.unwrap_or("no message");
        let kind = match code {
            "QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue" => FailureKind::NoSuchQueue,
            "ReceiptHandleIsInvalid"
            | "InvalidReceiptHandle"
            | "MessageNotInflight"
            | "AWS.SimpleQueueService.MessageNotInflight" => FailureKind::ReceiptInvalid,
            // SQS reports an expired handle on ChangeMessageVisibility this way.
            "InvalidParameterValue" if message.contains("ReceiptHandle") => FailureKind::ReceiptInvalid,
            "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "SignatureDoesNotMatch"
            | "InvalidSecurity"
            | "MissingAuthenticationToken"
            | "IncompleteSignature"
            | "AccessDenied"
            | "AccessDeniedException" => FailureKind::Credentials,
            _ => FailureKind::Rejected,
        };
        let detail = match kind {
            FailureKind::Credentials => format!(
                "{op} refused ({code}): {message}; check the access key and secret, and that the identity \
                 may call sqs:{}",
                op.split_whitespace().next().unwrap_or(op)
            ),
            FailureKind::Rejected if code.contains("Throttl") || code == "OverLimit" => {
                format!("{op} throttled ({code}): {message}; slow down or raise the account's SQS limits")
            }
            _ => format!("{op} failed ({code}): {message}"),
        };
        Self { kind, detail }
    }

    fn into_error(self, queue: &str) -> TransportError {
        match self.kind {
            FailureKind::NoSuchQueue => TransportError::NoSuchQueue {
                queue: queue.to_owned(),
            },
            FailureKind::Unreachable => TransportError::Disconnected { detail: self.detail },
            FailureKind::ReceiptInvalid => TransportError::LeaseExpired {
                queue: queue.to_owned(),
            },
            FailureKind::Credentials | FailureKind::Rejected => TransportError::Other(self.detail.into()),
        }
    }

    /// A failed send: the message was not confirmed, unless the queue is missing.
    fn publish_error(self, queue: &str) -> TransportError {
        match self.kind {
            FailureKind::NoSuchQueue => TransportError::NoSuchQueue {
                queue: queue.to_owned(),
            },
            _ => TransportError::NotConfirmed {
                queue: queue.to_owned(),
                detail: self.detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_sqs_rules() {
        assert!(check_queue("orders-v2_eu").is_ok());
        assert!(check_queue(&"q".repeat(80)).is_ok());
        for bad in ["", "has space", "dot.ted", "orders.fifo", "ünï", &"q".repeat(81)] {
            let err = check_queue(bad).expect_err(bad);
            assert!(matches!(err, TransportError::InvalidQueue { .. }), "{err:?}");
        }
    }

    #[test]
    fn bodies_round_trip_through_sqs_text() {
        for body in [
            &b"plain json {\"a\":1}"[..],
            b"",
            b"\x00\x01binary\xff",
            b"tab\tok",
            "ünïcode ✓".as_bytes(),
            b"\x0b",
        ] {
            let bytes = Bytes::copy_from_slice(body);
            let (text, encoding) = encode_body(&bytes);
            assert!(!text.is_empty(), "SQS refuses empty bodies");
            assert!(text.chars().all(sqs_char));
            assert_eq!(decode_body("q", text, encoding.as_deref()), bytes);
        }
        assert_eq!(
            encode_body(&Bytes::from_static(b"{}")).1,
            None,
            "text goes as it is"
        );
    }

    #[test]
    fn delays_round_up_and_chain_past_the_native_limit() {
        let o = Outgoing::new(
            &Bytes::from_static(b"x"),
            Some(Duration::from_millis(1500)),
            MAX_DELAY,
        );
        assert_eq!((o.delay_secs, o.not_before), (2, None));
        let o = Outgoing::new(
            &Bytes::from_static(b"x"),
            Some(Duration::from_secs(3600)),
            MAX_DELAY,
        );
        assert_eq!(o.delay_secs, 900);
        let due = o.not_before.expect("chained");
        assert!(due >= now_millis() + 3_599_000);
        let o = Outgoing::new(&Bytes::from_static(b"x"), None, MAX_DELAY);
        assert_eq!((o.delay_secs, o.not_before), (0, None));
    }

    #[test]
    fn receipt_and_queue_errors_are_recognised() {
        let f = Failure::of_entry("ReceiptHandleIsInvalid", None, "DeleteMessageBatch");
        assert!(matches!(f.into_error("q"), TransportError::LeaseExpired { .. }));
        let f = Failure::of_entry(
            "InvalidParameterValue",
            Some("Value x for parameter ReceiptHandle is invalid. Reason: Message does not exist"),
            "ChangeMessageVisibility",
        );
        assert!(matches!(f.into_error("q"), TransportError::LeaseExpired { .. }));
        let f = Failure::of_entry("AWS.SimpleQueueService.NonExistentQueue", None, "GetQueueUrl");
        assert!(matches!(f.into_error("q"), TransportError::NoSuchQueue { .. }));
        let f = Failure::of_entry("InvalidClientTokenId", Some("bad key"), "SendMessageBatch");
        assert!(f.detail.contains("sqs:SendMessageBatch"), "{}", f.detail);
    }

    #[test]
    fn credentials_are_not_printed() {
        let c = SqsCredentials {
            session_token: Some("token".to_owned()),
            ..SqsCredentials::new("AKID", "very-secret")
        };
        let printed = format!("{c:?}");
        assert!(printed.contains("AKID") && !printed.contains("very-secret") && !printed.contains("token\""));
    }
}
