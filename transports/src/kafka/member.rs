//! One consumer-group member per queue and process, and the leases it emulates (the
//! design is documented on [`KafkaConsumer`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use troupe_core::{Consumer, Delivery, TransportError};

use super::offsets::OffsetTracker;

/// Records received and not yet taken by a consumer, at most, before the member pauses its
/// partitions. Prefetch bounds what consumers hold; this bounds what waits for them. It is
/// large because pausing is expensive: librdkafka discards a paused partition's fetched
/// records and fetches them again on resume.
const READ_AHEAD: usize = 256;

/// The rdkafka consumer API of a member's consumer (stream or base).
trait KafkaClient: rdkafka::consumer::Consumer<MemberContext> {}
impl<T: rdkafka::consumer::Consumer<MemberContext>> KafkaClient for T {}
use super::publish::{Marks, Publisher, due_in};

/// How a member is made and where its copies go.
pub(crate) struct MemberSpec {
    /// The queue (for errors and logs).
    pub(crate) queue: String,
    /// The topic it consumes.
    pub(crate) topic: String,
    /// Where copies of expired or nacked records go.
    pub(crate) requeue_topic: String,
    /// Where nacks with a delay go.
    pub(crate) delay_topic: String,
    /// The rdkafka consumer's configuration, group included.
    pub(crate) config: ClientConfig,
    /// For copies.
    pub(crate) publisher: Publisher,
    /// How often expired leases are looked for; `None` for a member whose leases never
    /// expire (the delay forwarder).
    pub(crate) reap_every: Option<Duration>,
}

/// A consumer-group member shared by the consumers of one queue in one process.
pub(crate) struct Member {
    queue: String,
    topic: String,
    requeue_topic: String,
    delay_topic: String,
    publisher: Publisher,
    state: Mutex<State>,
    /// Wakes the polling task: budget freed, offsets to store, assignment changed.
    wake: Notify,
    /// Wakes consumers waiting in `next`.
    ready: Notify,
    /// Becomes true at the first assignment.
    assigned: watch::Sender<bool>,
    /// Ends the polling task.
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    partitions: HashMap<i32, PartitionState>,
    /// Received, not yet taken by a consumer.
    pending: VecDeque<Record>,
    /// Taken and not yet settled, over all partitions.
    leased: usize,
    /// How many records consumers may hold at once (the sum of their prefetch).
    budget: usize,
    /// The partitions are paused because `pending` filled up.
    paused: bool,
    /// Live consumers.
    consumers: usize,
    /// The polling task has ended.
    closed: bool,
    /// A commit offset moved since offsets were last stored.
    dirty: bool,
    /// Bumped on every assignment change, so the task re-applies pause or resume.
    generation: u64,
    next_epoch: u64,
}

impl State {
    fn lease_mut(&mut self, key: &Key) -> Option<&mut Lease> {
        self.partitions
            .get_mut(&key.partition)
            .filter(|p| p.epoch == key.epoch)
            .and_then(|p| p.leases.get_mut(&key.offset))
    }

    /// Ends a lease and settles its record.
    fn settle(&mut self, key: &Key) -> bool {
        let Some(partition) = self
            .partitions
            .get_mut(&key.partition)
            .filter(|p| p.epoch == key.epoch)
        else {
            return false;
        };
        if partition.leases.remove(&key.offset).is_none() {
            return false;
        }
        self.leased = self.leased.saturating_sub(1);
        if partition.tracker.settle(key.offset).is_some() {
            self.dirty = true;
        }
        true
    }

    /// Whether consumers already hold as many records as their prefetch allows.
    fn leases_full(&self) -> bool {
        self.leased >= self.budget.max(1)
    }

    /// Whether the partitions should be paused: once `READ_AHEAD` records wait, until
    /// consumers have taken half of them. The gap keeps a steady backlog from pausing and
    /// resuming on every record.
    fn want_pause(&mut self) -> bool {
        self.paused = if self.paused {
            self.pending.len() > READ_AHEAD / 2
        } else {
            self.pending.len() >= READ_AHEAD
        };
        self.paused
    }
}

/// One assignment of one partition to this member.
struct PartitionState {
    /// Tells this assignment's records from those of an earlier one.
    epoch: u64,
    tracker: OffsetTracker,
    leases: HashMap<i64, Lease>,
}

struct Lease {
    state: LeaseState,
    /// Length of the lease, for extensions.
    length: Duration,
    body: Bytes,
    marks: Marks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    /// With a consumer; `None` never expires.
    Held { deadline: Option<Instant> },
    /// A nack is publishing the copy.
    Settling,
    /// The lease ran out; the copy is being published.
    Requeueing,
    /// Publishing the copy failed; try again then.
    Expired { retry_at: Instant },
}

impl LeaseState {
    fn valid(self, now: Instant) -> bool {
        matches!(self, Self::Held { deadline } if deadline.is_none_or(|d| now < d))
    }
}

/// Identifies a leased record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    partition: i32,
    offset: i64,
    epoch: u64,
}

struct Record {
    key: Key,
    body: Bytes,
    marks: Marks,
}

impl Member {
    /// Creates the rdkafka consumer, subscribes it and starts polling. Its task ends once
    /// `stop` is cancelled (a child of `parent`).
    pub(crate) fn start(spec: MemberSpec, parent: &CancellationToken) -> Result<Arc<Self>, TransportError> {
        let member = Arc::new(Self {
            queue: spec.queue,
            topic: spec.topic,
            requeue_topic: spec.requeue_topic,
            delay_topic: spec.delay_topic,
            publisher: spec.publisher,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            ready: Notify::new(),
            assigned: watch::Sender::new(false),
            stop: parent.child_token(),
        });
        let consumer: StreamConsumer<MemberContext> = spec
            .config
            .create_with_context(MemberContext {
                member: member.clone(),
            })
            .map_err(|e| {
                TransportError::Other(
                    format!("cannot create a Kafka consumer for {:?}: {e}", member.queue).into(),
                )
            })?;
        consumer.subscribe(&[&member.topic]).map_err(|e| {
            TransportError::Other(format!("cannot subscribe to topic {:?}: {e}", member.topic).into())
        })?;
        tracing::debug!(queue = %member.queue, topic = %member.topic, "group member started");
        tokio::spawn(poll(member.clone(), consumer, spec.reap_every));
        Ok(member)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a consumer with `prefetch`; `false` if this member has already stopped.
    pub(crate) fn register(&self, prefetch: usize) -> bool {
        let mut st = self.lock();
        if st.closed || self.stop.is_cancelled() {
            return false;
        }
        st.consumers += 1;
        st.budget += prefetch.max(1);
        drop(st);
        // More budget may let a waiting consumer take a record.
        self.ready.notify_one();
        true
    }

    /// Removes a consumer; stops the member when it was the last (returns `true` then).
    pub(crate) fn unregister(&self, prefetch: usize) -> bool {
        let mut st = self.lock();
        st.consumers = st.consumers.saturating_sub(1);
        st.budget = st.budget.saturating_sub(prefetch.max(1));
        let last = st.consumers == 0;
        drop(st);
        if last {
            self.stop.cancel();
        }
        last
    }

    /// Cancelling it stops the member (and members started as its children).
    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Waits (up to `limit`) until the group has given this member its first assignment,
    /// so that a new consumer is a member of the group when `consume` returns.
    pub(crate) async fn wait_assigned(&self, limit: Duration) {
        let mut assigned = self.assigned.subscribe();
        if tokio::time::timeout(limit, assigned.wait_for(|a| *a))
            .await
            .is_err()
        {
            tracing::warn!(queue = %self.queue, ?limit, "no partition assignment from the consumer group yet; consuming anyway");
        }
    }

    /// The next record for a consumer, leased for `lease`; `None` once the member stopped.
    /// Cancel-safe: a record is taken from the queue only in the step that returns it.
    pub(crate) async fn next(self: &Arc<Self>, lease: Duration) -> Option<KafkaDelivery> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut guard = self.lock();
                let st = &mut *guard;
                if st.closed {
                    return None;
                }
                // Prefetch: wait for a lease to end (settling wakes `ready`).
                while !st.leases_full()
                    && let Some(record) = st.pending.pop_front()
                {
                    let Some(partition) = st
                        .partitions
                        .get_mut(&record.key.partition)
                        .filter(|p| p.epoch == record.key.epoch)
                    else {
                        continue;
                    };
                    partition.leases.insert(
                        record.key.offset,
                        Lease {
                            state: LeaseState::Held {
                                deadline: Instant::now().checked_add(lease),
                            },
                            length: lease,
                            body: record.body.clone(),
                            marks: record.marks,
                        },
                    );
                    st.leased += 1;
                    if !st.pending.is_empty() && !st.leases_full() {
                        self.ready.notify_one();
                    }
                    if st.paused && st.pending.len() <= READ_AHEAD / 2 {
                        self.wake.notify_one();
                    }
                    return Some(KafkaDelivery {
                        member: self.clone(),
                        key: record.key,
                        body: record.body,
                        marks: record.marks,
                    });
                }
            }
            notified.await;
        }
    }

    fn ack(&self, key: &Key) -> Result<(), TransportError> {
        let mut st = self.lock();
        let valid = st.lease_mut(key).is_some_and(|l| l.state.valid(Instant::now()));
        if !valid || !st.settle(key) {
            return Err(self.expired());
        }
        drop(st);
        self.lease_ended();
        Ok(())
    }

    fn extend(&self, key: &Key) -> Result<(), TransportError> {
        let mut st = self.lock();
        let now = Instant::now();
        match st.lease_mut(key) {
            Some(lease) if lease.state.valid(now) => {
                lease.state = LeaseState::Held {
                    deadline: now.checked_add(lease.length),
                };
                Ok(())
            }
            _ => Err(self.expired()),
        }
    }

    async fn nack(
        &self,
        key: &Key,
        body: &Bytes,
        marks: Marks,
        delay: Option<Duration>,
    ) -> Result<(), TransportError> {
        let previous = {
            let mut st = self.lock();
            match st.lease_mut(key) {
                Some(lease) if lease.state.valid(Instant::now()) => {
                    std::mem::replace(&mut lease.state, LeaseState::Settling)
                }
                _ => return Err(self.expired()),
            }
        };
        let again = Marks {
            redeliveries: marks.redeliveries.saturating_add(1),
            not_before: None,
        };
        let sent = match delay.filter(|d| !d.is_zero()) {
            None => {
                self.publisher
                    .send(&self.queue, &self.requeue_topic, body, again)
                    .await
            }
            Some(delay) => {
                let delayed = Marks {
                    not_before: Some(due_in(delay)),
                    ..again
                };
                self.publisher
                    .send(&self.queue, &self.delay_topic, body, delayed)
                    .await
            }
        };
        let mut st = self.lock();
        match sent {
            Ok(()) => {
                // If the partition was revoked meanwhile, the new owner delivers the
                // original again as well: a duplicate, which at-least-once allows.
                st.settle(key);
                drop(st);
                self.lease_ended();
                Ok(())
            }
            Err(e) => {
                if let Some(lease) = st.lease_mut(key) {
                    lease.state = previous;
                }
                Err(e)
            }
        }
    }

    /// After a lease ended: the polling task may store a new commit offset, and a consumer
    /// waiting for prefetch room may take a record.
    fn lease_ended(&self) {
        self.wake.notify_one();
        self.ready.notify_one();
    }

    fn expired(&self) -> TransportError {
        TransportError::LeaseExpired {
            queue: self.queue.clone(),
        }
    }

    /// Takes a received record into tracking and queues it for the consumers.
    fn receive(&self, message: &BorrowedMessage<'_>) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.closed {
            return;
        }
        let Some(partition) = st.partitions.get_mut(&message.partition()) else {
            tracing::debug!(queue = %self.queue, partition = message.partition(), "record of a partition not assigned here; ignored");
            return;
        };
        if !partition.tracker.track(message.offset()) {
            return;
        }
        st.pending.push_back(Record {
            key: Key {
                partition: message.partition(),
                offset: message.offset(),
                epoch: partition.epoch,
            },
            body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            marks: Marks::read(message.headers()),
        });
        drop(guard);
        self.ready.notify_one();
    }

    /// Starts requeueing every record whose lease ran out.
    fn reap(self: &Arc<Self>) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut st = self.lock();
            for (&partition, state) in &mut st.partitions {
                for (&offset, lease) in &mut state.leases {
                    let expired = match lease.state {
                        LeaseState::Held { deadline: Some(d) } => d <= now,
                        LeaseState::Expired { retry_at } => retry_at <= now,
                        _ => false,
                    };
                    if expired {
                        lease.state = LeaseState::Requeueing;
                        let key = Key {
                            partition,
                            offset,
                            epoch: state.epoch,
                        };
                        due.push((key, lease.body.clone(), lease.marks));
                    }
                }
            }
        }
        for (key, body, marks) in due {
            tokio::spawn(self.clone().requeue(key, body, marks));
        }
    }

    async fn requeue(self: Arc<Self>, key: Key, body: Bytes, marks: Marks) {
        let again = Marks {
            redeliveries: marks.redeliveries.saturating_add(1),
            not_before: None,
        };
        let sent = self
            .publisher
            .send(&self.queue, &self.requeue_topic, &body, again)
            .await;
        let mut st = self.lock();
        match sent {
            Ok(()) => {
                tracing::debug!(queue = %self.queue, partition = key.partition, offset = key.offset, redeliveries = again.redeliveries, "lease expired; record returned to the queue");
                st.settle(&key);
                drop(st);
                self.lease_ended();
            }
            Err(error) => {
                tracing::warn!(queue = %self.queue, %error, "lease expired but the record could not be returned to the queue; retrying in 1 s");
                if let Some(lease) = st.lease_mut(&key) {
                    lease.state = LeaseState::Expired {
                        retry_at: Instant::now() + Duration::from_secs(1),
                    };
                }
            }
        }
    }

    /// Commit offsets of every tracked partition.
    fn commit_offsets(&self, st: &State) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (&partition, state) in &st.partitions {
            if let Some(offset) = state.tracker.commit_offset() {
                // Only fails for a negative partition, which Kafka never assigns.
                let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
            }
        }
        tpl
    }

    fn store(&self, consumer: &impl KafkaClient, tpl: &TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        if let Err(error) = consumer.store_offsets(tpl) {
            // Revoked partitions cannot be stored any more; their new owner re-reads them.
            tracing::debug!(queue = %self.queue, %error, "storing offsets failed");
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<MemberContext>, revoked: &TopicPartitionList) {
        let partitions: Vec<i32> = revoked
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let offsets = {
            let mut st = self.lock();
            // Store what is settled first: librdkafka commits it as part of the revocation.
            let mut offsets = TopicPartitionList::new();
            for p in &partitions {
                if let Some(state) = st.partitions.remove(p) {
                    st.leased = st.leased.saturating_sub(state.leases.len());
                    if let Some(offset) = state.tracker.commit_offset() {
                        let _ = offsets.add_partition_offset(&self.topic, *p, Offset::Offset(offset));
                    }
                }
            }
            st.pending.retain(|r| !partitions.contains(&r.key.partition));
            st.generation += 1;
            offsets
        };
        self.store(consumer, &offsets);
        tracing::info!(queue = %self.queue, ?partitions, "partitions revoked; their unsettled records go to the next owner");
        // Dropped leases free prefetch room.
        self.lease_ended();
    }

    fn assign(&self, assigned: &TopicPartitionList) {
        let partitions: Vec<i32> = assigned
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            for p in &partitions {
                let epoch = st.next_epoch;
                st.partitions.entry(*p).or_insert_with(|| PartitionState {
                    epoch,
                    tracker: OffsetTracker::default(),
                    leases: HashMap::new(),
                });
                st.next_epoch += 1;
            }
            st.generation += 1;
        }
        tracing::info!(queue = %self.queue, ?partitions, "partitions assigned");
        self.assigned.send_replace(true);
        self.wake.notify_one();
    }

    /// What this member knows that the group's lag does not: per partition, the records
    /// at or above `committed` (the broker's offset) already settled, and the records held
    /// by consumers.
    pub(crate) fn local_depth(&self, committed: &HashMap<i32, i64>) -> LocalDepth {
        let st = self.lock();
        let mut local = LocalDepth::default();
        for (partition, state) in &st.partitions {
            if let Some(&c) = committed.get(partition) {
                local.settled += state.tracker.settled_since(c);
            }
            local.leased += state.leases.len() as u64;
            local.unsettled += state.tracker.unsettled() as u64;
        }
        local
    }

    /// Final store of offsets; consumers waiting in `next` get `None`.
    fn close(&self, consumer: &impl KafkaClient) {
        let offsets = {
            let mut st = self.lock();
            st.closed = true;
            let offsets = self.commit_offsets(&st);
            st.partitions.clear();
            st.pending.clear();
            st.leased = 0;
            offsets
        };
        self.store(consumer, &offsets);
        self.ready.notify_waiters();
    }
}

/// Counts one member knows about.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalDepth {
    /// Settled here and not yet committed on the broker.
    pub(crate) settled: u64,
    /// Held by consumers.
    pub(crate) leased: u64,
    /// Received and not settled (queued, held, being requeued).
    pub(crate) unsettled: u64,
}

/// Polls the rdkafka consumer until the member stops, then closes it.
async fn poll(member: Arc<Member>, consumer: StreamConsumer<MemberContext>, reap_every: Option<Duration>) {
    let reaping = reap_every.is_some();
    let mut reap = tokio::time::interval(reap_every.unwrap_or(Duration::from_secs(3600)));
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // (generation, paused) last applied to the assignment.
    let mut applied: Option<(u64, bool)> = None;
    loop {
        let (offsets, wanted) = {
            let mut st = member.lock();
            let offsets = std::mem::take(&mut st.dirty).then(|| member.commit_offsets(&st));
            let pause = st.want_pause();
            (offsets, (st.generation, pause))
        };
        if let Some(offsets) = offsets {
            member.store(&consumer, &offsets);
        }
        if applied != Some(wanted) {
            flow(&member, &consumer, wanted.1);
            applied = Some(wanted);
        }
        tokio::select! {
            () = member.stop.cancelled() => break,
            () = member.wake.notified() => {}
            _ = reap.tick(), if reaping => member.reap(),
            received = consumer.recv() => match received {
                Ok(message) => member.receive(&message),
                Err(error) => {
                    tracing::warn!(queue = %member.queue, %error, "Kafka consumer error");
                    // Errors repeat until their cause goes away; do not spin on them.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
    member.close(&consumer);
    tracing::debug!(queue = %member.queue, topic = %member.topic, "group member stopping");
    // Closing commits the stored offsets and leaves the group: blocking librdkafka calls.
    if let Err(error) = tokio::task::spawn_blocking(move || drop(consumer)).await {
        tracing::warn!(%error, "closing a Kafka consumer failed");
    }
}

/// Pauses the assignment while the read-ahead is full, resumes it otherwise. A paused
/// partition's already-fetched records are dropped by librdkafka and fetched again on resume
/// from the last one handed out, so nothing is skipped.
fn flow(member: &Member, consumer: &StreamConsumer<MemberContext>, pause: bool) {
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(error) => {
            tracing::debug!(queue = %member.queue, %error, "no assignment to pause or resume");
            return;
        }
    };
    if assignment.count() == 0 {
        return;
    }
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(error) = result {
        tracing::warn!(queue = %member.queue, %error, pause, "pausing or resuming partitions failed");
    }
}

/// Connects rebalance callbacks (run inside the polling task's `recv`) to the member.
struct MemberContext {
    member: Arc<Member>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            self.member.revoke(consumer, revoked);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => self.member.assign(assigned),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(queue = %self.member.queue, %error, "consumer group rebalance failed");
            }
        }
    }
}

/// Deliveries from one Kafka queue.
///
/// Kafka gives a partition to one member of a group and remembers one offset per
/// partition; it has no per-message lease, nack or redelivery. The transport's group
/// member provides them:
///
/// - **One member per queue per process.** Every consumer of a queue in one
///   transport shares one rdkafka consumer. Workers in a process share its records through
///   one in-process queue; processes share the topic's partitions through the group. A
///   runner that starts eight workers therefore joins the group once, not eight times (each
///   join is a group-wide rebalance that stops everyone's fetching for a while).
/// - **Polling in a task.** A background task polls the rdkafka consumer and queues what it
///   receives; [`next`](Consumer::next) only takes from that queue, so dropping it loses
///   nothing. Rebalance callbacks run in that task too.
/// - **Prefetch and read-ahead.** Consumers together hold at most the sum of their
///   prefetch; `next` waits for a lease to end beyond that. Records received meanwhile wait
///   in the member, up to a read-ahead of 256; the task then pauses the member's partitions
///   and resumes them once half of those were taken. Pausing is kept rare on purpose:
///   librdkafka drops a paused partition's fetched records and fetches them again, and
///   pausing at every prefetch boundary cut a backlog's throughput to a few records per
///   second. The task keeps polling while paused, so the member stays in the group however
///   long the work takes (librdkafka drops a member that stops polling for
///   `max.poll.interval.ms`).
/// - **Commits.** Settled offsets go through an offset tracker per partition; only its
///   commit offset (below which every record is settled) is stored, and librdkafka commits
///   stored offsets every `auto.commit.interval.ms`, on revocation and on close. A process
///   that dies commits nothing more, so the group gives its unsettled records to another
///   member.
/// - **Leases.** A record taken by a consumer is leased for `ConsumeOptions::lease`.
///   `in_progress` extends it. When it runs out, or on `nack`, a copy is published to the
///   queue's topic (or its delay topic) with the redelivery count raised, and only then is
///   the original settled, so a crash in between duplicates the record and never loses it.
///   Settling a record whose lease ran out answers [`TransportError::LeaseExpired`].
/// - **Revocation.** When the group takes a partition away, its tracking is dropped: its
///   queued records are discarded, settling its leased ones answers `LeaseExpired`, and
///   expired leases are not republished (the new owner reads everything uncommitted again).
pub struct KafkaConsumer {
    pub(crate) member: Arc<Member>,
    pub(crate) lease: Duration,
    /// Runs when the consumer is dropped (unregisters it from its member).
    pub(crate) on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Consumer for KafkaConsumer {
    type Delivery = KafkaDelivery;

    async fn next(&mut self) -> Option<Result<KafkaDelivery, TransportError>> {
        self.member.next(self.lease).await.map(Ok)
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}

/// One Kafka record, leased to a worker.
pub struct KafkaDelivery {
    member: Arc<Member>,
    key: Key,
    body: Bytes,
    marks: Marks,
}

impl KafkaDelivery {
    /// Due time of a record in a delay topic.
    pub(crate) fn not_before(&self) -> Option<u64> {
        self.marks.not_before
    }

    pub(crate) fn marks(&self) -> Marks {
        self.marks
    }
}

impl Delivery for KafkaDelivery {
    fn body(&self) -> &Bytes {
        &self.body
    }

    fn redeliveries(&self) -> u32 {
        self.marks.redeliveries
    }

    async fn ack(self) -> Result<(), TransportError> {
        self.member.ack(&self.key)
    }

    async fn nack(self, delay: Option<Duration>) -> Result<(), TransportError> {
        self.member.nack(&self.key, &self.body, self.marks, delay).await
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        self.member.extend(&self.key)
    }
}
