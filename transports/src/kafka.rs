//! Kafka transport (feature `kafka`), on rdkafka over a bundled librdkafka.
//!
//! Kafka is a log, not a queue: no per-message lease, nack, redelivery count or delay. The
//! transport provides the contract on top of it:
//!
//! - **Topics and groups.** Queue `q` is topic `{topic_prefix}q` with
//!   [`KafkaConfig::partitions`] partitions, consumed by group `{group_prefix}q`, shared by
//!   every worker of the actor. Partitions are the unit of sharing between processes: at
//!   most that many processes get work from one queue at once. Records are spread over
//!   partitions at random (no key), so every partition gets work. Queue names are checked
//!   before anything reaches the broker: Kafka's characters `[a-zA-Z0-9._-]`, room for the
//!   delay topic within 249 characters, no `__` start, no reserved `.troupe-delay` end, and
//!   (in `ensure_queue`) no `.`/`_` collision with an existing topic, which Kafka refuses.
//! - **Consumers.** The consumers of a queue in one transport share one group member, which
//!   polls in a background task and pauses its partitions while the consumers' prefetch is
//!   used up. [`KafkaConsumer`] has the details: leases, commits, rebalances.
//! - **Commits** advance only to the highest offset below which every record is settled,
//!   so concurrent work on one partition never commits past unfinished records; a process
//!   that dies leaves the rest uncommitted and the group gives it to another member.
//! - **Leases and nacks** are emulated: an expired lease or a nack publishes a copy with the
//!   `troupe-redeliveries` header raised by one, then settles the original.
//! - **Delays** (delayed publish, nack with a delay) go to a delay topic per queue,
//!   `{topic}.troupe-delay`. A forwarder in each consuming process holds each record in
//!   memory until due and then publishes it to the queue, so ready work never waits behind
//!   delayed work (a due-time header with the partition paused until the head is due would
//!   hold up every ready record behind a delayed one). `kafka/delay.rs` weighs the options.
//! - **Publishing** uses one idempotent producer (`enable.idempotence=true`, `acks=all`);
//!   `publish` resolves on the record's delivery report. [`PublishOptions::dedup_id`] is not
//!   used: Kafka only deduplicates one producer session's own retries (which idempotence
//!   covers), not publishes by different producers, so the mesh's idempotency layer stays
//!   the guard against duplicates.
//! - **Existence.** A queue exists when its topic does (`ensure_queue` creates it). A
//!   producer would have the broker create a missing topic on first use, and the record
//!   would wait where no actor reads it, so `publish` first looks the topic up through the
//!   metadata client, which never asks for creation, and answers `NoSuchQueue` for a
//!   missing one. Topics seen are remembered for
//!   [`KNOWN_QUEUE_TTL`](crate::known_queues::KNOWN_QUEUE_TTL).
//! - **Depth** = the group's lag (end offset minus committed offset, per partition), minus
//!   what this process has settled but not yet committed; `in_flight` is what this
//!   process's consumers hold (the broker cannot tell), counted out of the lag;
//!   `delayed` is the lag of the delay topic's forwarder group, likewise corrected. Work
//!   held by *other* processes counts as ready, and what they settled counts until they
//!   commit it (at most [`KafkaConfig::commit_interval`] later): the split is this
//!   process's view, the total is the group's.
//!
//! Limits:
//! - A redelivery after a crash or a rebalance (the group re-reading uncommitted records)
//!   is not counted in `redeliveries`, since nothing recorded it. A message that kills its
//!   process (not a panic, which the runner catches) is therefore not stopped by the
//!   runner's redelivery limit on Kafka.
//! - A rebalance ends the leases on the moved partitions' records at once (settling them
//!   answers `LeaseExpired` and the new owner delivers them again), so the default
//!   assignment is `cooperative-sticky`, which moves only the partitions that must move.

mod delay;
mod member;
mod names;
mod offsets;
mod publish;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use troupe_core::{ConsumeOptions, PublishOptions, QueueAdmin, QueueDepth, Transport, TransportError};

pub use member::{KafkaConsumer, KafkaDelivery};
use member::{Member, MemberSpec};
use publish::{Marks, Publisher, due_in};
/// The Kafka client this transport is built on, for what it exposes beyond the transport
/// (e.g. `rdkafka::mocking::MockCluster` for tests), at the version the transport uses.
pub use rdkafka;

/// How often expired leases are looked for: the lateness of a redelivery after its lease.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// How `ensure_queue` creates missing topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TopicCreation {
    /// The CreateTopics admin API, with [`KafkaConfig::partitions`] and
    /// [`KafkaConfig::replication_factor`].
    #[default]
    Admin,
    /// The broker's automatic topic creation, triggered by a producer's metadata request:
    /// for brokers without a usable CreateTopics API, such as librdkafka's mock cluster (it
    /// names no controller, so admin requests wait until they time out). The broker picks
    /// partitions and replication (`num.partitions`, `default.replication.factor`; 4 on the
    /// mock cluster) and must allow automatic creation.
    AutoCreate,
}

/// Where Kafka is and how queues map onto it. Its `Debug` output hides the values of
/// properties that look like credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Prefix of every topic: queue `q` is topic `{topic_prefix}q`, its delay topic
    /// `{topic_prefix}q.troupe-delay`. Kafka's topic characters only.
    pub topic_prefix: String,
    /// Prefix of consumer group ids: queue `q` is consumed by group `{group_prefix}q`,
    /// its delay topic by `{group_prefix}q.troupe-delay`.
    pub group_prefix: String,
    /// Partitions of topics that `ensure_queue` creates: at most this many processes get
    /// work from one queue at once. Existing topics keep theirs.
    pub partitions: i32,
    /// Replication factor of topics that `ensure_queue` creates (1 suits a single broker;
    /// use 3 on a production cluster).
    pub replication_factor: i32,
    /// How `ensure_queue` creates topics.
    pub topic_creation: TopicCreation,
    /// `linger.ms`: how long the producer waits to batch records. `publish` waits for the
    /// delivery report, so every hop pays it; concurrent publishes batch anyway while
    /// requests are in flight. 0 also makes records without a key land on a random
    /// partition each rather than sticking to one for a while.
    pub linger: Duration,
    /// Longest a publish may take, queueing locally included (`message.timeout.ms`).
    pub publish_timeout: Duration,
    /// How often settled offsets are committed (`auto.commit.interval.ms`); they are also
    /// committed when partitions are revoked and when the last consumer goes away.
    pub commit_interval: Duration,
    /// Timeout of metadata, offset and admin requests (`ensure_queue`, `depth`).
    pub request_timeout: Duration,
    /// How long the first `consume` of a queue waits for the group to assign partitions
    /// before returning anyway.
    pub join_timeout: Duration,
    /// Most delayed records one process holds in memory waiting to be due; beyond it the
    /// delay topic is paused.
    pub delay_hold_limit: usize,
    /// librdkafka properties for every client (e.g. `security.protocol`, SASL settings,
    /// `session.timeout.ms`), applied over the transport's defaults.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (e.g. `compression.type`, `batch.num.messages`).
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only (e.g. `partition.assignment.strategy`).
    /// `group.id`, `enable.auto.commit` and `enable.auto.offset.store` are the transport's
    /// own and cannot be overridden; neither can the producer's `enable.idempotence` and `acks`.
    pub consumer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    /// `127.0.0.1:9092`, topics named as the queues, groups `troupe-<queue>`, 8 partitions,
    /// replication 1.
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topic_prefix: String::new(),
            group_prefix: "troupe-".to_owned(),
            partitions: 8,
            replication_factor: 1,
            topic_creation: TopicCreation::Admin,
            linger: Duration::ZERO,
            publish_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(30),
            delay_hold_limit: 10_000,
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field(
                "bootstrap_servers",
                &troupe_core::redact::Redacted(&self.bootstrap_servers),
            )
            .field("topic_prefix", &self.topic_prefix)
            .field("group_prefix", &self.group_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("topic_creation", &self.topic_creation)
            .field("linger", &self.linger)
            .field("publish_timeout", &self.publish_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("request_timeout", &self.request_timeout)
            .field("join_timeout", &self.join_timeout)
            .field("delay_hold_limit", &self.delay_hold_limit)
            .field("properties", &Redacted(&self.properties))
            .field("producer_properties", &Redacted(&self.producer_properties))
            .field("consumer_properties", &Redacted(&self.consumer_properties))
            .finish()
    }
}

/// librdkafka properties with credential values hidden (SASL passwords, key material).
struct Redacted<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = troupe_core::redact::is_secret_key;
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if secret(k) {
                    troupe_core::redact::MASK
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

fn other(context: impl std::fmt::Display, e: impl std::fmt::Display) -> TransportError {
    TransportError::Other(format!("{context}: {e}").into())
}

/// The Kafka transport. Clones share one producer, one admin client and the group members.
#[derive(Clone)]
pub struct KafkaTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    publisher: Publisher,
    admin: AdminClient<DefaultClientContext>,
    /// Metadata and watermarks. A consumer-type client, so its metadata requests never
    /// ask the broker to create a topic (librdkafka's `allow.auto.create.topics` is off
    /// for consumers unless a property turns it on).
    meta: Arc<BaseConsumer>,
    /// Queues whose topic was seen.
    known: crate::known_queues::KnownQueues,
    /// Committed offsets are read per group, through a client of that group id that never joins.
    offset_readers: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    members: Arc<Registry>,
}

/// The group members of each queue consumed in this process.
type Registry = Mutex<HashMap<String, Members>>;

#[derive(Clone)]
struct Members {
    main: Arc<Member>,
    delay: Arc<Member>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a consumer closes it, which blocks briefly: not on a runtime thread.
        let readers: Vec<_> = lock(&self.offset_readers).drain().map(|(_, r)| r).collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || drop(readers));
        }
    }
}

impl KafkaTransport {
    /// Creates the clients and checks that the cluster answers.
    pub async fn connect(config: KafkaConfig) -> Result<Self, TransportError> {
        names::check_prefix(&config.topic_prefix).map_err(|e| TransportError::Other(e.into()))?;
        let base = Self::base_config(&config);
        let mut producer_config = base.clone();
        producer_config
            .set("linger.ms", millis(config.linger))
            .set("message.timeout.ms", millis(config.publish_timeout));
        for (k, v) in &config.producer_properties {
            producer_config.set(k, v);
        }
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all");
        let producer: FutureProducer = producer_config.create().map_err(|e| {
            other(
                "cannot create the Kafka producer (check the librdkafka properties)",
                e,
            )
        })?;
        let admin: AdminClient<DefaultClientContext> = base
            .create()
            .map_err(|e| other("cannot create the Kafka admin client", e))?;
        let meta: BaseConsumer = base
            .create()
            .map_err(|e| other("cannot create the Kafka metadata client", e))?;
        let meta = Arc::new(meta);
        let probe = meta.clone();
        let timeout = config.request_timeout;
        let reached = tokio::task::spawn_blocking(move || probe.fetch_metadata(None, timeout).map(drop))
            .await
            .map_err(|e| other("metadata request panicked", e))?;
        if let Err(e) = reached {
            return Err(TransportError::Disconnected {
                detail: format!(
                    "cannot reach Kafka at {} within {timeout:?}: {}; is the broker running and the address right?",
                    troupe_core::redact::Redacted(&config.bootstrap_servers),
                    troupe_core::redact::scrub(&e.to_string(), &config.bootstrap_servers)
                ),
            });
        }
        tracing::info!(bootstrap = %troupe_core::redact::Redacted(&config.bootstrap_servers), "connected to Kafka");
        Ok(Self {
            inner: Arc::new(Inner {
                publisher: Publisher {
                    producer,
                    queue_timeout: config.publish_timeout,
                },
                config,
                admin,
                meta,
                known: crate::known_queues::KnownQueues::default(),
                offset_readers: Mutex::new(HashMap::new()),
                members: Arc::new(Mutex::new(HashMap::new())),
            }),
        })
    }

    fn base_config(config: &KafkaConfig) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &config.bootstrap_servers)
            .set("client.id", "troupe");
        for (k, v) in &config.properties {
            c.set(k, v);
        }
        c
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let config = &self.inner.config;
        let mut c = Self::base_config(config);
        c.set("auto.offset.reset", "earliest")
            .set("auto.commit.interval.ms", millis(config.commit_interval))
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.partition.eof", "false");
        for (k, v) in &config.consumer_properties {
            c.set(k, v);
        }
        // The commit logic relies on these: only offsets the tracker stored get committed.
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false");
        c
    }

    /// Creates the queue's topic and delay topic where missing.
    async fn create_topics(&self, queue: &str) -> Result<(), TransportError> {
        self.check(queue)?;
        let config = &self.inner.config;
        let topics = [self.topic(queue), self.delay_topic(queue)];
        let meta = self.inner.meta.clone();
        let timeout = config.request_timeout;
        let existing: Vec<String> = tokio::task::spawn_blocking(move || {
            meta.fetch_metadata(None, timeout)
                .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
        })
        .await
        .map_err(|e| other("metadata request panicked", e))?
        .map_err(|e| TransportError::Disconnected {
            detail: format!("listing topics failed: {e}"),
        })?;
        for topic in &topics {
            if let Some(clash) = existing.iter().find(|e| names::collide(e, topic)) {
                return Err(TransportError::InvalidQueue {
                    queue: queue.to_owned(),
                    detail: format!(
                        "its topic {topic:?} collides with the existing topic {clash:?}: Kafka treats '.' \
                         and '_' in topic names as the same character"
                    ),
                });
            }
        }
        if topics.iter().all(|t| existing.contains(t)) {
            return Ok(());
        }
        if config.topic_creation == TopicCreation::AutoCreate {
            return self.auto_create(queue, &topics).await;
        }
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    config.partitions,
                    TopicReplication::Fixed(config.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        let results = match self.inner.admin.create_topics(&new, &options).await {
            Ok(results) => results,
            Err(KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature)) => {
                return self.auto_create(queue, &topics).await;
            }
            Err(e) => {
                return Err(TransportError::Disconnected {
                    detail: format!("creating topics for {queue:?} failed: {e}"),
                });
            }
        };
        for result in results {
            match result {
                Ok(topic) => tracing::info!(%queue, %topic, partitions = config.partitions, "topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code @ RDKafkaErrorCode::InvalidTopic)) => {
                    return Err(TransportError::InvalidQueue {
                        queue: queue.to_owned(),
                        detail: format!("the broker refused topic {topic:?}: {code}"),
                    });
                }
                Err((topic, code)) => {
                    return Err(other(
                        format!(
                            "creating topic {topic:?} ({} partitions, replication {}) failed",
                            config.partitions, config.replication_factor
                        ),
                        code,
                    ));
                }
            }
        }
        Ok(())
    }

    /// `Ok` if `queue`'s topic exists (see the module docs), `NoSuchQueue` if not.
    async fn require_topic(&self, queue: &str) -> Result<(), TransportError> {
        if self.inner.known.is_fresh(queue) {
            return Ok(());
        }
        let topic = self.topic(queue);
        let meta = self.inner.meta.clone();
        let timeout = self.inner.config.request_timeout;
        let lookup = topic.clone();
        let found = tokio::task::spawn_blocking(move || {
            meta.fetch_metadata(Some(&lookup), timeout).map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == lookup && t.error().is_none() && !t.partitions().is_empty())
            })
        })
        .await
        .map_err(|e| other("metadata request panicked", e))?;
        match found {
            Ok(true) => {
                self.inner.known.remember(queue);
                Ok(())
            }
            Ok(false) => {
                self.inner.known.forget(queue);
                Err(TransportError::NoSuchQueue {
                    queue: queue.to_owned(),
                })
            }
            Err(e) => Err(TransportError::Disconnected {
                detail: format!("cannot look up topic {topic:?}: {e}"),
            }),
        }
    }

    fn check(&self, queue: &str) -> Result<(), TransportError> {
        names::check_queue(&self.inner.config.topic_prefix, queue)
    }

    fn topic(&self, queue: &str) -> String {
        names::topic(&self.inner.config.topic_prefix, queue)
    }

    fn delay_topic(&self, queue: &str) -> String {
        names::delay_topic(&self.inner.config.topic_prefix, queue)
    }

    /// Starts the queue's group member and its delay forwarder.
    fn start_members(&self, queue: &str) -> Result<Members, TransportError> {
        let config = &self.inner.config;
        let topic = self.topic(queue);
        let delay_topic = self.delay_topic(queue);
        let main = Member::start(
            MemberSpec {
                queue: queue.to_owned(),
                topic: topic.clone(),
                requeue_topic: topic.clone(),
                delay_topic: delay_topic.clone(),
                config: self.consumer_config(&names::group(&config.group_prefix, queue)),
                publisher: self.inner.publisher.clone(),
                reap_every: Some(REAP_EVERY),
            },
            &CancellationToken::new(),
        )?;
        let delay = Member::start(
            MemberSpec {
                queue: queue.to_owned(),
                topic: delay_topic.clone(),
                requeue_topic: delay_topic.clone(),
                delay_topic,
                config: self.consumer_config(&names::delay_group(&config.group_prefix, queue)),
                publisher: self.inner.publisher.clone(),
                reap_every: None,
            },
            main.stop_token(),
        );
        let delay = match delay {
            Ok(d) => d,
            Err(e) => {
                main.stop_token().cancel();
                return Err(e);
            }
        };
        delay.register(config.delay_hold_limit);
        tokio::spawn(delay::forward(
            delay.clone(),
            self.inner.publisher.clone(),
            queue.to_owned(),
            topic,
            delay.stop_token().clone(),
        ));
        Ok(Members { main, delay })
    }

    /// A client of `group` for reading its committed offsets.
    fn offset_reader(&self, group: &str) -> Result<Arc<BaseConsumer>, TransportError> {
        let mut readers = lock(&self.inner.offset_readers);
        if let Some(r) = readers.get(group) {
            return Ok(r.clone());
        }
        let mut c = Self::base_config(&self.inner.config);
        c.set("group.id", group).set("enable.auto.commit", "false");
        let reader: BaseConsumer = c
            .create()
            .map_err(|e| other("cannot create a Kafka offset reader", e))?;
        let reader = Arc::new(reader);
        readers.insert(group.to_owned(), reader.clone());
        Ok(reader)
    }

    /// The lag of `group` on `topic`, with the offsets it was counted from per partition;
    /// `None` if the topic does not exist.
    async fn lag(&self, topic: &str, group: &str) -> Result<Option<Lag>, TransportError> {
        let meta = self.inner.meta.clone();
        let reader = self.offset_reader(group)?;
        let timeout = self.inner.config.request_timeout;
        let topic = topic.to_owned();
        let read = move || -> Result<Option<Lag>, KafkaError> {
            let metadata = meta.fetch_metadata(Some(&topic), timeout)?;
            let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Ok(None);
            };
            if t.error().is_some() || t.partitions().is_empty() {
                return Ok(None);
            }
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition(&topic, p.id());
            }
            let committed = reader.committed_offsets(tpl, timeout)?;
            let mut lag = Lag::default();
            for p in t.partitions() {
                let (low, high) = meta.fetch_watermarks(&topic, p.id(), timeout)?;
                // No commit yet: the group starts at the earliest record (auto.offset.reset).
                let from = match committed.find_partition(&topic, p.id()).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o.max(low),
                    _ => low,
                };
                lag.total += u64::try_from(high.saturating_sub(from)).unwrap_or(0);
                lag.from.insert(p.id(), from);
            }
            Ok(Some(lag))
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| other("offset request panicked", e))?
            .map_err(|e| TransportError::Disconnected {
                detail: format!("reading offsets of {group:?} failed: {e}"),
            })
    }

    /// Creates topics through the broker's automatic creation (see [`TopicCreation::AutoCreate`]).
    async fn auto_create(&self, queue: &str, topics: &[String]) -> Result<(), TransportError> {
        let producer = self.inner.publisher.producer.clone();
        let timeout = self.inner.config.request_timeout;
        let topics = topics.to_vec();
        let created = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
            let mut missing = Vec::new();
            for topic in &topics {
                // A producer's metadata request asks the broker to create unknown topics.
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(topic), timeout)
                    .map_err(|e| e.to_string())?;
                let ok = metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
                if !ok {
                    missing.push(topic.clone());
                }
            }
            Ok(missing)
        })
        .await
        .map_err(|e| other("metadata request panicked", e))?;
        match created {
            Ok(missing) if missing.is_empty() => {
                tracing::info!(%queue, "topics auto-created by the broker, with its default partition count");
                Ok(())
            }
            Ok(missing) => Err(TransportError::Other(
                format!(
                    "cannot create topics {missing:?} for queue {queue:?}: the broker did not create them \
                     automatically; enable auto.create.topics.enable on it, use TopicCreation::Admin, or \
                     create them with the broker's tools"
                )
                .into(),
            )),
            Err(e) => Err(TransportError::Disconnected {
                detail: format!("creating topics for {queue:?}: {e}"),
            }),
        }
    }
}

#[derive(Debug, Default)]
struct Lag {
    total: u64,
    /// Per partition, the offset the lag was counted from.
    from: HashMap<i32, i64>,
}

impl Transport for KafkaTransport {
    type Consumer = KafkaConsumer;

    async fn publish(&self, queue: &str, body: Bytes, options: PublishOptions) -> Result<(), TransportError> {
        self.check(queue)?;
        self.require_topic(queue).await?;
        match options.delay.filter(|d| !d.is_zero()) {
            None => {
                self.inner
                    .publisher
                    .send(queue, &self.topic(queue), &body, Marks::default())
                    .await
            }
            Some(delay) => {
                let marks = Marks {
                    redeliveries: 0,
                    not_before: Some(due_in(delay)),
                };
                self.inner
                    .publisher
                    .send(queue, &self.delay_topic(queue), &body, marks)
                    .await
            }
        }
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<KafkaConsumer, TransportError> {
        self.check(queue)?;
        let prefetch = options.prefetch.max(1);
        let members = {
            let mut map = lock(&self.inner.members);
            match map.get(queue) {
                Some(m) if m.main.register(prefetch) => m.clone(),
                _ => {
                    let m = self.start_members(queue)?;
                    m.main.register(prefetch);
                    map.insert(queue.to_owned(), m.clone());
                    m
                }
            }
        };
        let registry = self.inner.members.clone();
        let main = members.main.clone();
        let name = queue.to_owned();
        let on_drop = move || {
            let mut map = lock(&registry);
            if main.unregister(prefetch) && map.get(&name).is_some_and(|m| Arc::ptr_eq(&m.main, &main)) {
                map.remove(&name);
            }
        };
        // A consumer that exists but is dropped on error must still unregister.
        let consumer = KafkaConsumer {
            member: members.main.clone(),
            lease: options.lease,
            on_drop: Some(Box::new(on_drop)),
        };
        members.main.wait_assigned(self.inner.config.join_timeout).await;
        Ok(consumer)
    }
}

impl QueueAdmin for KafkaTransport {
    /// Creates the queue's topic and its delay topic with the configured partitions and
    /// replication (or as [`KafkaConfig::topic_creation`] says). Refuses a queue whose topic
    /// collides with an existing one (`a.b` vs `a_b`), naming it. Existing topics are left
    /// as they are.
    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
        self.create_topics(queue).await?;
        // Metadata may lag behind a creation: the next publish need not look it up.
        self.inner.known.remember(queue);
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, TransportError> {
        self.check(queue)?;
        let config = &self.inner.config;
        let main = self
            .lag(&self.topic(queue), &names::group(&config.group_prefix, queue))
            .await?
            .ok_or_else(|| TransportError::NoSuchQueue {
                queue: queue.to_owned(),
            })?;
        let delayed = self
            .lag(
                &self.delay_topic(queue),
                &names::delay_group(&config.group_prefix, queue),
            )
            .await?
            .unwrap_or_default();
        let members = lock(&self.inner.members).get(queue).cloned();
        let (local, local_delay) = match &members {
            Some(m) => (m.main.local_depth(&main.from), m.delay.local_depth(&delayed.from)),
            None => Default::default(),
        };
        let in_flight = local.leased.min(main.total.saturating_sub(local.settled));
        Ok(QueueDepth {
            ready: main.total.saturating_sub(local.settled).saturating_sub(in_flight),
            in_flight,
            delayed: delayed.total.saturating_sub(local_delay.settled),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_built_in() {
        // Without OpenSSL at build time librdkafka refuses the property outright.
        let producer: Result<rdkafka::producer::BaseProducer, _> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("security.protocol", "ssl")
            .create();
        assert!(producer.is_ok(), "security.protocol=ssl: {:?}", producer.err());
    }

    #[test]
    fn debug_output_hides_credentials() {
        let mut config = KafkaConfig::default();
        for (k, v) in [
            ("sasl.username", "troupe"),
            ("sasl.password", "hunter2"),
            ("ssl.key.pem", "-----BEGIN"),
        ] {
            config.properties.insert(k.to_owned(), v.to_owned());
        }
        let shown = format!("{config:?}");
        assert!(
            shown.contains("troupe") && shown.contains(troupe_core::redact::MASK),
            "{shown}"
        );
        assert!(!shown.contains("hunter2") && !shown.contains("BEGIN"), "{shown}");
    }
}
