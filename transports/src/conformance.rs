//! The transport contract, written once, run against every transport.
//!
//! Each check takes a fresh transport and a queue name no other check uses, and is bounded
//! in time. A transport's test file runs them all with [`conformance_suite!`](crate::conformance_suite):
//!
//! ```ignore
//! troupe_transports::conformance_suite!(memory, async { troupe_transports::MemoryTransport::default() });
//! ```
//!
//! Leases in these checks are short ([`LEASE`]); a broker whose minimum lease is longer
//! can still pass, only slower.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use troupe_core::{
    ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, QueueDepth, Transport, TransportError,
};

/// Lease used by the checks.
pub const LEASE: Duration = Duration::from_secs(1);
/// Longest any single wait in a check may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A transport the suite can drive: publish/consume plus queue administration.
pub trait Conformant: Transport + QueueAdmin {}
impl<T: Transport + QueueAdmin> Conformant for T {}

fn opts(prefetch: usize) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        lease: LEASE,
    }
}

/// The next delivery of `c`; panics (failing the test) on an error, a closed consumer, or
/// nothing within [`WAIT`]. For transport-specific tests beside the suite.
pub async fn next<C: Consumer>(c: &mut C) -> C::Delivery {
    match tokio::time::timeout(WAIT, c.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("receive failed: {e}"),
        Ok(None) => panic!("consumer closed"),
        Err(_) => panic!("nothing delivered within {WAIT:?}"),
    }
}

/// Asserts that `c` delivers nothing for `quiet`.
pub async fn nothing_for<C: Consumer>(c: &mut C, quiet: Duration) {
    if let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, c.next()).await {
        panic!("unexpected delivery: {:?}", String::from_utf8_lossy(d.body()));
    }
}

/// Publishes the text `body` to `queue`; panics (failing the test) if it is not confirmed.
pub async fn publish<T: Transport>(t: &T, queue: &str, body: &str) {
    t.publish(
        queue,
        Bytes::copy_from_slice(body.as_bytes()),
        PublishOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("publish to {queue} failed: {e}"));
}

/// Waits until `depth(queue)` satisfies `ok` (brokers report depth with some lag).
async fn depth_until<T: QueueAdmin>(
    t: &T,
    queue: &str,
    what: &str,
    ok: impl Fn(&QueueDepth) -> bool,
) -> QueueDepth {
    let give_up = Instant::now() + WAIT;
    loop {
        let d = t
            .depth(queue)
            .await
            .unwrap_or_else(|e| panic!("depth of {queue} failed: {e}"));
        if ok(&d) {
            return d;
        }
        assert!(
            Instant::now() < give_up,
            "depth of {queue} never became {what}; last {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publish, consume, same bytes; `publish` returned only once the message was accepted,
/// so it is counted at once.
pub async fn round_trip<T: Conformant>(t: T, queue: &str) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    publish(&t, queue, "hello").await;
    depth_until(&t, queue, "1 ready", |d| d.total() == 1).await;
    let mut c = t.consume(queue, opts(4)).await.expect("consume");
    let d = next(&mut c).await;
    assert_eq!(&d.body()[..], b"hello");
    assert_eq!(d.redeliveries(), 0);
    d.ack().await.expect("ack");
}

/// Ack removes the message for good.
pub async fn ack_removes<T: Conformant>(t: T, queue: &str) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    publish(&t, queue, "once").await;
    let mut c = t.consume(queue, opts(4)).await.expect("consume");
    next(&mut c).await.ack().await.expect("ack");
    depth_until(&t, queue, "empty", |d| d.total() == 0).await;
    nothing_for(&mut c, LEASE * 2).await;
}

/// Nack returns the message at once, with its redelivery count raised.
pub async fn nack_redelivers<T: Conformant>(t: T, queue: &str) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    publish(&t, queue, "again").await;
    let mut c = t.consume(queue, opts(4)).await.expect("consume");
    next(&mut c).await.nack(None).await.expect("nack");
    let d = next(&mut c).await;
    assert_eq!(&d.body()[..], b"again");
    assert_eq!(d.redeliveries(), 1);
    d.nack(None).await.expect("nack");
    let d = next(&mut c).await;
    assert_eq!(d.redeliveries(), 2, "the count keeps rising");
    d.ack().await.expect("ack");
}

/// Nack with a delay redelivers no earlier than the delay; the message counts as delayed.
pub async fn nack_with_delay_waits<T: Conformant>(t: T, queue: &str) {
    let delay = Duration::from_millis(1500);
    t.ensure_queue(queue).await.expect("ensure_queue");
    publish(&t, queue, "later").await;
    let mut c = t.consume(queue, opts(4)).await.expect("consume");
    let d = next(&mut c).await;
    let nacked_at = Instant::now();
    d.nack(Some(delay)).await.expect("nack");
    depth_until(&t, queue, "still counted", |d| d.total() == 1).await;
    let again = next(&mut c).await;
    assert!(
        nacked_at.elapsed() >= delay,
        "redelivered after {:?}, before the {delay:?} delay",
        nacked_at.elapsed()
    );
    again.ack().await.expect("ack");
}

/// A delayed publish is not delivered before its delay, counts as delayed meanwhile, and
/// arrives as a first delivery (retries are delayed publishes; their count must not drift).
pub async fn delayed_publish_waits<T: Conformant>(t: T, queue: &str) {
    let delay = Duration::from_millis(1500);
    t.ensure_queue(queue).await.expect("ensure_queue");
    let published_at = Instant::now();
    t.publish(
        queue,
        Bytes::from_static(b"retry me"),
        PublishOptions {
            delay: Some(delay),
            ..PublishOptions::default()
        },
    )
    .await
    .expect("delayed publish");
    depth_until(&t, queue, "1 counted", |d| d.total() == 1).await;
    let mut c = t.consume(queue, opts(4)).await.expect("consume");
    let d = next(&mut c).await;
    assert!(
        published_at.elapsed() >= delay,
        "delivered after {:?}, before its {delay:?} delay",
        published_at.elapsed()
    );
    assert_eq!(&d.body()[..], b"retry me");
    assert_eq!(d.redeliveries(), 0, "a delayed message is not a redelivery");
    d.ack().await.expect("ack");
}

/// An unsettled delivery comes back once its lease ends.
pub async fn unsettled_comes_back_after_lease<T: Conformant>(t: T, queue: &str) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    publish(&t, queue, "crash").await;
    let mut c = t.consume(queue, opts(4)).await.expect("consume");
    let taken_at = Instant::now();
    drop(next(&mut c).await); // a worker that died mid-way
    let d = next(&mut c).await;
    assert!(
        taken_at.elapsed() >= LEASE,
        "came back after {:?}, inside the lease",
        taken_at.elapsed()
    );
    assert_eq!(d.redeliveries(), 1);
    d.ack().await.expect("ack");
}

/// "In progress" keeps a delivery leased well past the original lease.
pub async fn lease_extension_keeps_it<T: Conformant>(t: T, queue: &str) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    publish(&t, queue, "long job").await;
    let mut c = t.consume(queue, opts(4)).await.expect("consume");
    let d = next(&mut c).await;
    let until = Instant::now() + LEASE * 3;
    while Instant::now() < until {
        tokio::time::sleep(LEASE / 3).await;
        d.in_progress().await.expect("in_progress");
    }
    nothing_for(&mut c, LEASE / 3).await;
    d.ack().await.expect("ack after a long job");
    depth_until(&t, queue, "empty", |d| d.total() == 0).await;
}

/// Depth counts ready, in-flight and delayed messages before, during and after consumption.
pub async fn depth_counts_in_flight<T: Conformant>(t: T, queue: &str) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    for i in 0..5 {
        publish(&t, queue, &format!("m{i}")).await;
    }
    depth_until(&t, queue, "5 ready", |d| d.total() == 5 && d.in_flight == 0).await;
    let mut c = t.consume(queue, opts(2)).await.expect("consume");
    let a = next(&mut c).await;
    let b = next(&mut c).await;
    // Depth may lag (RabbitMQ's management API refreshes every 5 s): hold both deliveries,
    // extending their leases, until it shows them.
    let give_up = Instant::now() + WAIT;
    loop {
        a.in_progress().await.expect("in_progress");
        b.in_progress().await.expect("in_progress");
        let d = t.depth(queue).await.expect("depth");
        if d.total() == 5 && d.in_flight >= 2 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "depth never showed 5 with 2+ in flight; last {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.ack().await.expect("ack");
    b.nack(Some(Duration::from_secs(30))).await.expect("nack");
    depth_until(&t, queue, "4 with 1 delayed", |d| {
        d.total() == 4 && d.delayed + d.ready + d.in_flight == 4
    })
    .await;
    for _ in 0..3 {
        next(&mut c).await.ack().await.expect("ack");
    }
    depth_until(&t, queue, "only the delayed one", |d| d.total() == 1).await;
}

/// Many messages through several concurrent consumers: every one delivered, none lost.
pub async fn many_through_concurrent_consumers<T: Conformant>(t: T, queue: &str, count: usize) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    let producer = {
        let t = t.clone();
        let queue = queue.to_owned();
        tokio::spawn(async move {
            for i in 0..count {
                publish(&t, &queue, &i.to_string()).await;
            }
        })
    };
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let t = t.clone();
            let queue = queue.to_owned();
            tokio::spawn(async move {
                let mut c = t.consume(&queue, opts(32)).await.expect("consume");
                let mut seen = Vec::new();
                while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(3), c.next()).await {
                    seen.push(String::from_utf8_lossy(d.body()).into_owned());
                    d.ack().await.expect("ack");
                }
                seen
            })
        })
        .collect();
    producer.await.expect("producer");
    let mut all = HashSet::new();
    let mut busy = 0;
    for c in consumers {
        let seen = c.await.expect("consumer");
        busy += usize::from(!seen.is_empty());
        all.extend(seen);
    }
    assert_eq!(all.len(), count, "every message delivered");
    assert!(busy >= 2, "work was shared by competing consumers");
    depth_until(&t, queue, "empty", |d| d.total() == 0).await;
}

/// Two consumers of one queue compete: each message goes to one of them, both get some.
pub async fn competing_consumers_share_work<T: Conformant>(t: T, queue: &str) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    let mut c1 = t.consume(queue, opts(1)).await.expect("consume");
    let mut c2 = t.consume(queue, opts(1)).await.expect("consume");
    for i in 0..20 {
        publish(&t, queue, &format!("w{i}")).await;
    }
    let (mut got1, mut got2) = (HashSet::new(), HashSet::new());
    // Alternate, holding each delivery briefly, so neither can take everything.
    while got1.len() + got2.len() < 20 {
        let d1 = tokio::time::timeout(Duration::from_millis(500), c1.next()).await;
        if let Ok(Some(Ok(d))) = d1 {
            assert!(got1.insert(String::from_utf8_lossy(d.body()).into_owned()));
            d.ack().await.expect("ack");
        }
        let d2 = tokio::time::timeout(Duration::from_millis(500), c2.next()).await;
        if let Ok(Some(Ok(d))) = d2 {
            assert!(got2.insert(String::from_utf8_lossy(d.body()).into_owned()));
            d.ack().await.expect("ack");
        }
    }
    assert!(got1.is_disjoint(&got2), "no message went to both");
    assert!(!got1.is_empty() && !got2.is_empty(), "both consumers got work");
}

/// A consumer that goes away mid-stream (prefetched and unsettled deliveries included)
/// loses nothing: another consumer receives everything that was not acked.
pub async fn dropped_consumer_loses_nothing<T: Conformant>(t: T, queue: &str) {
    t.ensure_queue(queue).await.expect("ensure_queue");
    for i in 0..10 {
        publish(&t, queue, &format!("d{i}")).await;
    }
    let mut acked = HashSet::new();
    {
        let mut c = t.consume(queue, opts(8)).await.expect("consume");
        for _ in 0..3 {
            let d = next(&mut c).await;
            acked.insert(String::from_utf8_lossy(d.body()).into_owned());
            d.ack().await.expect("ack");
        }
        let _held = next(&mut c).await; // taken, never settled
    }
    let mut c = t.consume(queue, opts(8)).await.expect("consume");
    let mut rest = HashSet::new();
    while rest.len() < 7 {
        let d = next(&mut c).await;
        rest.insert(String::from_utf8_lossy(d.body()).into_owned());
        d.ack().await.expect("ack");
    }
    assert!(acked.is_disjoint(&rest), "acked messages do not come back");
    assert_eq!(acked.len() + rest.len(), 10);
}

/// A queue name the broker cannot take is refused with an error that names it.
pub async fn bad_queue_name_is_a_clear_error<T: Conformant>(t: T) {
    let bad = "no spaces\nor newlines allowed";
    let err = match t
        .publish(bad, Bytes::from_static(b"x"), PublishOptions::default())
        .await
    {
        Ok(()) => panic!("publishing to {bad:?} was accepted"),
        Err(e) => e,
    };
    assert!(matches!(err, TransportError::InvalidQueue { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no spaces"),
        "the error names the queue: {err}"
    );
}

/// A queue that was never created (no actor has it) is refused on publish with
/// `NoSuchQueue` naming it, immediate and delayed alike, and nothing is created: the runner
/// relies on this to send an envelope for an unknown actor to `x-sump` instead of leaving it
/// where nobody reads it. Once the queue is ensured, the same publish goes through.
pub async fn publish_to_missing_queue_is_refused<T: Conformant>(t: T, queue: &str) {
    for delay in [None, Some(Duration::from_millis(200))] {
        let options = PublishOptions {
            delay,
            ..PublishOptions::default()
        };
        match t.publish(queue, Bytes::from_static(b"lost?"), options).await {
            Err(TransportError::NoSuchQueue { queue: named }) => assert_eq!(named, queue),
            other => panic!("publish to the never-created {queue:?} (delay {delay:?}) gave {other:?}"),
        }
    }
    t.ensure_queue(queue).await.expect("ensure_queue");
    publish(&t, queue, "found").await;
    let mut c = t.consume(queue, opts(8)).await.expect("consume");
    let d = next(&mut c).await;
    assert_eq!(&d.body()[..], b"found");
    d.ack().await.expect("ack");
}

/// Runs `check` with a deadline so a hung broker fails the test instead of the CI job.
pub async fn bounded<F: Future<Output = ()>>(check: F) {
    if tokio::time::timeout(Duration::from_secs(120), check)
        .await
        .is_err()
    {
        panic!("conformance check did not finish within 120 s");
    }
}

/// Generates one `#[tokio::test]` per contract check for the transport that `$make`
/// (an async expression) builds. Queue names are unique per test and per run.
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $make:expr) => {
        $crate::conformance_suite!(@checks $name, $make;
            round_trip,
            ack_removes,
            nack_redelivers,
            nack_with_delay_waits,
            delayed_publish_waits,
            unsettled_comes_back_after_lease,
            lease_extension_keeps_it,
            depth_counts_in_flight,
            competing_consumers_share_work,
            dropped_consumer_loses_nothing,
            publish_to_missing_queue_is_refused
        );
    };
    (@checks $name:ident, $make:expr; $($check:ident),+) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance as c;

            fn queue(check: &str) -> String {
                format!("conf-{}-{}-{}", stringify!($name), check, std::process::id())
            }

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    c::bounded(c::$check($make.await, &queue(stringify!($check)))).await
                }
            )+

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ten_thousand_through_concurrent_consumers() {
                c::bounded(c::many_through_concurrent_consumers($make.await, &queue("10k"), 10_000)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_queue_name_is_a_clear_error() {
                c::bounded(c::bad_queue_name_is_a_clear_error($make.await)).await
            }
        }
    };
}
