//! Per-delivery leases, which AMQP does not have.
//!
//! RabbitMQ keeps an unacked message with its consumer until the channel closes (or the
//! channel-wide `consumer_timeout`, 30 minutes by default, closes it). The contract wants a
//! delivery that is not settled within its lease to go back to the queue, so each consumer
//! runs a watchdog: a delivery whose lease runs out is nacked with requeue, and a late
//! `ack`/`nack` of it is refused with [`TransportError::LeaseExpired`] instead of settling
//! (or, worse, settling a delivery tag the broker has already forgotten, which would close
//! the channel).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Acker;
use lapin::options::BasicNackOptions;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PENDING: u8 = 0;
const SETTLED: u8 = 1;
const EXPIRED: u8 = 2;

/// The lease of one delivery, shared by the delivery and its consumer's watchdog.
pub(crate) struct Lease {
    pub(crate) acker: Acker,
    state: AtomicU8,
    /// Milliseconds after the watch's epoch at which the lease ends.
    deadline: AtomicU64,
    /// Unsettled deliveries of this queue in this process (part of the reported depth).
    in_flight: Arc<AtomicU64>,
}

impl Lease {
    /// Claims the right to settle: true once, for the first of settlement and expiry.
    pub(crate) fn settle(&self) -> bool {
        let won = self
            .state
            .compare_exchange(PENDING, SETTLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        won
    }

    fn expire(&self) -> bool {
        let won = self
            .state
            .compare_exchange(PENDING, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        won
    }

    pub(crate) fn pending(&self) -> bool {
        self.state.load(Ordering::Acquire) == PENDING
    }
}

/// Leases of one consumer channel, in the order they end.
///
/// Every lease of a consumer has the same length, so leases end in the order they were
/// granted or last extended: a FIFO of `(deadline, lease)` entries is enough. Extending a
/// lease queues a new entry at the back; the old entry, found at the front with a deadline
/// older than its lease's, is skipped.
pub(crate) struct LeaseWatch {
    epoch: Instant,
    length: Duration,
    queue: Mutex<VecDeque<(u64, Arc<Lease>)>>,
    wake: Notify,
    stop: CancellationToken,
    in_flight: Arc<AtomicU64>,
}

impl LeaseWatch {
    /// Starts the watchdog of a consumer whose leases last `length`.
    pub(crate) fn start(length: Duration, in_flight: Arc<AtomicU64>) -> Arc<Self> {
        let watch = Arc::new(Self {
            epoch: Instant::now(),
            length,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            in_flight,
        });
        tokio::spawn(Arc::clone(&watch).run());
        watch
    }

    /// Stops the watchdog (the channel is going away and the broker requeues what is left).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    fn millis_from_now(&self, extra: Duration) -> u64 {
        u64::try_from((Instant::now() + extra - self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn enqueue(&self, deadline: u64, lease: Arc<Lease>) {
        let was_empty = {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.push_back((deadline, lease));
            queue.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Grants a lease on a new delivery.
    /// The delivery is already counted in flight (from when it was received); settlement or
    /// expiry uncounts it.
    pub(crate) fn grant(&self, acker: Acker) -> Arc<Lease> {
        let deadline = self.millis_from_now(self.length);
        let lease = Arc::new(Lease {
            acker,
            state: AtomicU8::new(PENDING),
            deadline: AtomicU64::new(deadline),
            in_flight: Arc::clone(&self.in_flight),
        });
        self.enqueue(deadline, Arc::clone(&lease));
        lease
    }

    /// Extends `lease` by a full lease from now; false if it already ended.
    pub(crate) fn extend(&self, lease: &Arc<Lease>) -> bool {
        let deadline = self.millis_from_now(self.length);
        lease.deadline.store(deadline, Ordering::Release);
        if !lease.pending() {
            return false;
        }
        self.enqueue(deadline, Arc::clone(lease));
        true
    }

    async fn run(self: Arc<Self>) {
        loop {
            let next = self.next_deadline();
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => self.wake.notified().await,
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = wait => {}
            }
            for lease in self.take_expired() {
                // Requeued by the broker with its delivery count raised; a failure means
                // the channel is gone, and the broker requeues it anyway.
                if let Err(error) = lease
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
                {
                    tracing::debug!(%error, "lease expiry: requeue failed; the channel is gone");
                }
            }
        }
    }

    /// An entry is stale once its lease is settled or was extended after it was queued.
    fn stale(deadline: u64, lease: &Lease) -> bool {
        !lease.pending() || lease.deadline.load(Ordering::Acquire) > deadline
    }

    /// When the earliest live entry ends; drops stale ones from the front.
    fn next_deadline(&self) -> Option<Instant> {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((deadline, lease)) = queue.front() {
            if !Self::stale(*deadline, lease) {
                return Some(self.epoch + Duration::from_millis(*deadline));
            }
            queue.pop_front();
        }
        None
    }

    /// Removes and expires every lease that has ended.
    fn take_expired(&self) -> Vec<Arc<Lease>> {
        let now = self.millis_from_now(Duration::ZERO);
        let mut expired = Vec::new();
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((deadline, lease)) = queue.front() {
            if Self::stale(*deadline, lease) {
                queue.pop_front();
                continue;
            }
            if *deadline > now {
                break;
            }
            if let Some((_, lease)) = queue.pop_front()
                && lease.expire()
            {
                expired.push(lease);
            }
        }
        expired
    }
}
