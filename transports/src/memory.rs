//! The embedded in-memory broker: the default transport, for tests, demos and single-process
//! pipelines.
//!
//! It has the semantics of a real work queue, not of a channel:
//! - per-queue FIFO; several consumers of one queue compete for its messages;
//! - every delivery is leased; an unsettled delivery comes back (at the front of the queue)
//!   when its lease ends, with its redelivery count raised;
//! - ack removes, nack returns (at once, or after a delay), "in progress" extends the lease;
//! - publishes may be delayed;
//! - each queue holds at most `capacity` waiting (ready + delayed) messages; a publish to a
//!   full queue waits for room (back-pressure) and fails with
//!   [`TransportError::QueueFull`] after `publish_timeout`. Returned (nacked or expired)
//!   messages are never refused, so settling cannot deadlock.
//!
//! Time is [`tokio::time::Instant`], so tests can run leases on a paused clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use troupe_core::{
    ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, QueueDepth, Transport, TransportError,
};

/// Settings of the in-memory broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Most waiting (ready + delayed) messages per queue.
    pub capacity: usize,
    /// How long a publish waits for room in a full queue.
    pub publish_timeout: Duration,
    /// Create a queue on the first publish to it. Off by default: a queue exists once
    /// [`QueueAdmin::ensure_queue`] created it or a consumer consumed it (an actor is
    /// there), and a publish to any other queue is refused with `NoSuchQueue`, as on the
    /// real brokers, rather than held where nobody will read it.
    pub auto_create: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            publish_timeout: Duration::from_secs(5),
            auto_create: false,
        }
    }
}

/// The in-memory broker. Clones share the same queues.
///
/// ```
/// # tokio_test_block(async {
/// use troupe_core::{Consumer, ConsumeOptions, Delivery, PublishOptions, QueueAdmin, Transport};
/// use troupe_transports::memory::MemoryTransport;
///
/// let broker = MemoryTransport::default();
/// broker.ensure_queue("jobs").await.unwrap();
/// broker.publish("jobs", "hello".into(), PublishOptions::default()).await.unwrap();
/// let mut consumer = broker.consume("jobs", ConsumeOptions::default()).await.unwrap();
/// let delivery = consumer.next().await.unwrap().unwrap();
/// assert_eq!(&delivery.body()[..], b"hello");
/// delivery.ack().await.unwrap();
/// assert_eq!(broker.depth("jobs").await.unwrap().total(), 0);
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
}

#[derive(Default)]
struct Broker {
    config: MemoryConfig,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
}

struct Queue {
    name: String,
    capacity: usize,
    state: Mutex<QueueState>,
    /// Signalled when a message becomes ready.
    readable: Notify,
    /// Signalled when a waiting message leaves (room for publishers).
    writable: Notify,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Message>,
    delayed: BinaryHeap<Reverse<Due>>,
    in_flight: HashMap<u64, Leased>,
    /// Lease deadlines, possibly stale (an extension pushes a new entry; a settled tag is gone
    /// from `in_flight`): checked against `in_flight` when popped.
    leases: BinaryHeap<Reverse<(Instant, u64)>>,
    next_tag: u64,
    next_seq: u64,
}

struct Message {
    body: Bytes,
    /// Times delivered so far.
    deliveries: u32,
}

struct Leased {
    message: Message,
    until: Instant,
}

struct Due {
    at: Instant,
    seq: u64,
    message: Message,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl QueueState {
    fn waiting(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// Moves due delayed messages and expired leases to `ready`; returns when the next one is
    /// due, if any.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse((until, tag))) = self.leases.peek().copied() {
            let live = self.in_flight.get(&tag).is_some_and(|l| l.until == until);
            if live && until > now {
                break;
            }
            // Settled or since extended: the entry is stale, whatever its time. Dropping it
            // here keeps the heap near the in-flight count instead of rate x lease.
            self.leases.pop();
            if live && let Some(expired) = self.in_flight.remove(&tag) {
                // Redelivered first: it has waited longest.
                self.ready.push_front(expired.message);
            }
        }
        while self.delayed.peek().is_some_and(|d| d.0.at <= now) {
            if let Some(Reverse(due)) = self.delayed.pop() {
                self.ready.push_back(due.message);
            }
        }
        let next_lease = self.leases.peek().map(|r| r.0.0);
        let next_due = self.delayed.peek().map(|r| r.0.at);
        match (next_lease, next_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn delay(&mut self, at: Instant, message: Message) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.delayed.push(Reverse(Due { at, seq, message }));
    }
}

impl Queue {
    fn new(name: &str, capacity: usize) -> Self {
        Self {
            name: name.to_owned(),
            capacity: capacity.max(1),
            state: Mutex::new(QueueState::default()),
            readable: Notify::new(),
            writable: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves the queue structurally valid (every
        // mutation is a single push/pop), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `message` if the queue has room, or hands it back.
    fn try_push(&self, message: Message, delay: Option<Duration>) -> Result<(), Message> {
        let state = self.lock();
        if state.waiting() >= self.capacity {
            return Err(message);
        }
        self.place(state, message, delay, End::Back);
        Ok(())
    }

    /// Puts a settled-back message where it belongs; never refused for capacity.
    fn give_back(&self, message: Message, delay: Option<Duration>) {
        self.place(self.lock(), message, delay.filter(|d| !d.is_zero()), End::Front);
    }

    /// Puts `message` among the delayed ones, or at `end` of the ready ones, then wakes
    /// whoever has to look (after letting go of the lock, so they can).
    fn place(
        &self,
        mut state: MutexGuard<'_, QueueState>,
        message: Message,
        delay: Option<Duration>,
        end: End,
    ) {
        match delay {
            Some(d) => {
                state.delay(Instant::now() + d, message);
                drop(state);
                // A sleeping consumer must recompute its wake-up time.
                self.readable.notify_waiters();
            }
            None => {
                match end {
                    End::Back => state.ready.push_back(message),
                    // Returned messages go first: they have waited longest.
                    End::Front => state.ready.push_front(message),
                }
                drop(state);
                self.readable.notify_one();
            }
        }
    }
}

/// Where a ready message joins its queue.
#[derive(Clone, Copy)]
enum End {
    /// A new message: behind the others.
    Back,
    /// A returned one (nacked): in front.
    Front,
}

/// Queue names the memory broker accepts: non-empty, at most 255 bytes, no whitespace or
/// control characters (the same names work on every real broker).
fn check_queue_name(name: &str) -> Result<(), TransportError> {
    let problem = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or control characters")
    } else {
        None
    };
    match problem {
        Some(p) => Err(TransportError::InvalidQueue {
            queue: name.to_owned(),
            detail: p.to_owned(),
        }),
        None => Ok(()),
    }
}

impl MemoryTransport {
    /// A broker with these settings.
    pub fn new(config: MemoryConfig) -> Self {
        Self {
            broker: Arc::new(Broker {
                config,
                queues: RwLock::default(),
            }),
        }
    }

    fn queue(&self, name: &str, create: bool) -> Result<Arc<Queue>, TransportError> {
        {
            let queues = self.broker.queues.read().unwrap_or_else(|p| p.into_inner());
            if let Some(q) = queues.get(name) {
                return Ok(q.clone());
            }
        }
        check_queue_name(name)?;
        if !create {
            return Err(TransportError::NoSuchQueue {
                queue: name.to_owned(),
            });
        }
        let mut queues = self.broker.queues.write().unwrap_or_else(|p| p.into_inner());
        Ok(queues
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Queue::new(name, self.broker.config.capacity)))
            .clone())
    }
}

impl Transport for MemoryTransport {
    type Consumer = MemoryConsumer;

    async fn publish(&self, queue: &str, body: Bytes, options: PublishOptions) -> Result<(), TransportError> {
        let q = self.queue(queue, self.broker.config.auto_create)?;
        let delay = options.delay.filter(|d| !d.is_zero());
        // Most publishes find room: they take the queue lock once and never register as a
        // waiter (which takes the `Notify`'s own lock twice) nor read the clock.
        let mut message = match q.try_push(Message { body, deliveries: 0 }, delay) {
            Ok(()) => return Ok(()),
            Err(full) => full,
        };
        let timeout = self.broker.config.publish_timeout;
        let give_up = Instant::now() + timeout;
        loop {
            let mut room = pin!(q.writable.notified());
            room.as_mut().enable();
            // Tried again once registered, so room made in between is not missed.
            message = match q.try_push(message, delay) {
                Ok(()) => return Ok(()),
                Err(full) => full,
            };
            if tokio::time::timeout_at(give_up, room).await.is_err() {
                return Err(TransportError::QueueFull {
                    queue: queue.to_owned(),
                    capacity: q.capacity,
                    waited: timeout,
                });
            }
        }
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<MemoryConsumer, TransportError> {
        // A consumer is the actor being there: its queue exists from now on.
        let q = self.queue(queue, true)?;
        Ok(MemoryConsumer { queue: q, options })
    }
}

impl QueueAdmin for MemoryTransport {
    async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
        self.queue(queue, true).map(drop)
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, TransportError> {
        let q = self.queue(queue, self.broker.config.auto_create)?;
        let mut state = q.lock();
        state.promote(Instant::now());
        Ok(QueueDepth {
            ready: state.ready.len() as u64,
            in_flight: state.in_flight.len() as u64,
            delayed: state.delayed.len() as u64,
        })
    }
}

/// A consumer of one memory queue.
pub struct MemoryConsumer {
    queue: Arc<Queue>,
    options: ConsumeOptions,
}

impl MemoryConsumer {
    /// Leases the first ready message, or says when the next delayed message or lease end
    /// is due (`None`: nothing is).
    fn try_lease(&self) -> Result<MemoryDelivery, Option<Instant>> {
        let q = &self.queue;
        let mut state = q.lock();
        let now = Instant::now();
        let wake = state.promote(now);
        let Some(mut message) = state.ready.pop_front() else {
            return Err(wake);
        };
        message.deliveries += 1;
        let tag = state.next_tag;
        state.next_tag += 1;
        let lease = self.options.lease;
        let until = now + lease;
        let delivery = MemoryDelivery {
            queue: q.clone(),
            tag,
            body: message.body.clone(),
            redeliveries: message.deliveries - 1,
            lease,
        };
        // Sleeping consumers computed their wake-up from the earliest deadline they saw; if
        // this lease ends sooner, they must look again, or nobody would be awake to
        // redeliver it should its holder hang.
        let sooner = state.leases.peek().is_none_or(|r| until < r.0.0);
        state.leases.push(Reverse((until, tag)));
        state.in_flight.insert(tag, Leased { message, until });
        let more = !state.ready.is_empty();
        drop(state);
        q.writable.notify_one();
        if sooner {
            q.readable.notify_waiters();
        } else if more {
            // Keep other idle consumers going.
            q.readable.notify_one();
        }
        Ok(delivery)
    }
}

impl Consumer for MemoryConsumer {
    type Delivery = MemoryDelivery;

    async fn next(&mut self) -> Option<Result<MemoryDelivery, TransportError>> {
        loop {
            // A busy queue has a message ready: take it without registering as a waiter,
            // which costs the `Notify`'s own lock twice.
            if let Ok(delivery) = self.try_lease() {
                return Some(Ok(delivery));
            }
            let mut arrival = pin!(self.queue.readable.notified());
            arrival.as_mut().enable();
            // Looked at again once registered, so an arrival in between is not missed.
            let wake = match self.try_lease() {
                Ok(delivery) => return Some(Ok(delivery)),
                Err(wake) => wake,
            };
            match wake {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, arrival).await;
                }
                None => arrival.await,
            }
        }
    }
}

/// One delivery from a memory queue.
pub struct MemoryDelivery {
    queue: Arc<Queue>,
    tag: u64,
    body: Bytes,
    redeliveries: u32,
    lease: Duration,
}

impl MemoryDelivery {
    fn expired(&self) -> TransportError {
        TransportError::LeaseExpired {
            queue: self.queue.name.clone(),
        }
    }
}

impl Delivery for MemoryDelivery {
    fn body(&self) -> &Bytes {
        &self.body
    }

    fn redeliveries(&self) -> u32 {
        self.redeliveries
    }

    async fn ack(self) -> Result<(), TransportError> {
        let removed = self.queue.lock().in_flight.remove(&self.tag);
        removed.map(drop).ok_or_else(|| self.expired())
    }

    async fn nack(self, delay: Option<Duration>) -> Result<(), TransportError> {
        let removed = self.queue.lock().in_flight.remove(&self.tag);
        let leased = removed.ok_or_else(|| self.expired())?;
        self.queue.give_back(leased.message, delay);
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        let mut state = self.queue.lock();
        let until = Instant::now() + self.lease;
        let leased = state.in_flight.get_mut(&self.tag).ok_or_else(|| self.expired())?;
        leased.until = until;
        state.leases.push(Reverse((until, self.tag)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(lease_ms: u64) -> ConsumeOptions {
        ConsumeOptions {
            prefetch: 8,
            lease: Duration::from_millis(lease_ms),
        }
    }

    async fn publish(t: &MemoryTransport, q: &str, body: &'static str) {
        t.ensure_queue(q).await.unwrap();
        t.publish(q, Bytes::from_static(body.as_bytes()), PublishOptions::default())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_ack_and_depth() {
        let t = MemoryTransport::default();
        for b in ["1", "2", "3"] {
            publish(&t, "q", b).await;
        }
        assert_eq!(
            t.depth("q").await.unwrap(),
            QueueDepth {
                ready: 3,
                in_flight: 0,
                delayed: 0
            }
        );
        let mut c = t.consume("q", opts(1000)).await.unwrap();
        let d1 = c.next().await.unwrap().unwrap();
        assert_eq!(&d1.body()[..], b"1");
        assert_eq!(
            t.depth("q").await.unwrap(),
            QueueDepth {
                ready: 2,
                in_flight: 1,
                delayed: 0
            }
        );
        d1.ack().await.unwrap();
        let d2 = c.next().await.unwrap().unwrap();
        assert_eq!(&d2.body()[..], b"2");
        d2.ack().await.unwrap();
        assert_eq!(t.depth("q").await.unwrap().total(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_redelivers_and_counts() {
        let t = MemoryTransport::default();
        publish(&t, "q", "x").await;
        let mut c = t.consume("q", opts(100)).await.unwrap();
        let first = c.next().await.unwrap().unwrap();
        assert_eq!(first.redeliveries(), 0);
        // A crash: the delivery is never settled.
        drop(first);
        let again = c.next().await.unwrap().unwrap();
        assert_eq!(again.redeliveries(), 1);
        assert_eq!(&again.body()[..], b"x");
        again.ack().await.unwrap();
    }

    /// Regression: a consumer asleep before a lease existed must still notice it expire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_consumer_takes_over_an_expired_lease() {
        let t = MemoryTransport::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for who in ["first", "second"] {
            let t = t.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut c = t.consume("q", opts(300)).await.unwrap();
                while let Some(Ok(d)) = c.next().await {
                    let redelivered = d.redeliveries() > 0;
                    let _ = tx.send((who, redelivered));
                    if redelivered {
                        d.ack().await.unwrap();
                    } else {
                        // A hung worker: it holds the delivery, never extends the lease and
                        // never asks for more.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // both consumers are asleep now
        publish(&t, "q", "x").await;
        let (taker, redelivered) = rx.recv().await.unwrap();
        assert!(!redelivered);
        // Nothing else is published: only the lease's expiry can wake the other consumer.
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        let Ok(Some((other, true))) = got else {
            panic!("expired lease taken by {taker} was never redelivered: {got:?}")
        };
        assert_ne!(other, taker);
    }

    #[tokio::test(start_paused = true)]
    async fn settling_after_lease_expiry_is_refused() {
        let t = MemoryTransport::default();
        publish(&t, "q", "x").await;
        let mut c = t.consume("q", opts(100)).await.unwrap();
        let stale = c.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let fresh = c.next().await.unwrap().unwrap();
        assert!(matches!(
            stale.ack().await,
            Err(TransportError::LeaseExpired { .. })
        ));
        fresh.ack().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn in_progress_keeps_the_lease() {
        let t = MemoryTransport::default();
        publish(&t, "q", "x").await;
        let mut c = t.consume("q", opts(100)).await.unwrap();
        let d = c.next().await.unwrap().unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            d.in_progress().await.unwrap();
        }
        assert_eq!(t.depth("q").await.unwrap().in_flight, 1);
        assert_eq!(t.depth("q").await.unwrap().ready, 0);
        d.ack().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn nack_with_delay_waits() {
        let t = MemoryTransport::default();
        publish(&t, "q", "x").await;
        let mut c = t.consume("q", opts(10_000)).await.unwrap();
        let d = c.next().await.unwrap().unwrap();
        let start = Instant::now();
        d.nack(Some(Duration::from_millis(500))).await.unwrap();
        assert_eq!(t.depth("q").await.unwrap().delayed, 1);
        let again = c.next().await.unwrap().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert_eq!(again.redeliveries(), 1);
        again.ack().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_applies_back_pressure_then_fails() {
        let t = MemoryTransport::new(MemoryConfig {
            capacity: 2,
            publish_timeout: Duration::from_secs(1),
            auto_create: true,
        });
        publish(&t, "q", "1").await;
        publish(&t, "q", "2").await;
        let t2 = t.clone();
        let blocked = tokio::spawn(async move {
            t2.publish("q", Bytes::from_static(b"3"), PublishOptions::default())
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!blocked.is_finished());
        let mut c = t.consume("q", opts(1000)).await.unwrap();
        c.next().await.unwrap().unwrap().ack().await.unwrap();
        blocked.await.unwrap().unwrap();
        let err = t
            .publish("q", Bytes::from_static(b"4"), PublishOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::QueueFull { capacity: 2, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_queue_names_are_rejected_clearly() {
        let t = MemoryTransport::default();
        let err = t
            .publish("has space", Bytes::new(), PublishOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("whitespace"), "{err}");
        let strict = MemoryTransport::default();
        assert!(matches!(
            strict
                .publish("missing", Bytes::new(), PublishOptions::default())
                .await,
            Err(TransportError::NoSuchQueue { .. })
        ));
        assert!(matches!(
            strict.depth("missing").await,
            Err(TransportError::NoSuchQueue { .. })
        ));
    }
}
