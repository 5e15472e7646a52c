//! A Redis outage mid-run, through the actor host every binary uses, on NATS: deliveries in
//! flight are held (neither retried nor redelivered), no new work is taken, `/readyz`
//! answers 503, and once Redis is back every envelope reaches x-sink exactly once with
//! nothing in x-sump and nothing nacked.
//!
//! The test runs its own `redis-server` on a free port (it stops only that process). The
//! outage lasts `TROUPE_OUTAGE_SECS` seconds (5 by default; the proof ran it with
//! 300).
#![cfg(all(feature = "nats", feature = "redis", feature = "cli", feature = "http"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;
#[path = "support/local_server.rs"]
mod local_server;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use local_server::{free_port, spawn_listening};
use serde_json::json;
use troupe::broker::{Broker, BrokerConfig};
use troupe::host::ActorHost;
use troupe::layers::StoreUrl;
use troupe::{Consumer, Delivery, Envelope, HandlerError, Outcome, QueueNaming, handler_fn};

/// A redis-server of this test's own, on `port`, keeping nothing on disk.
fn start_redis(port: u16) -> Child {
    let port_arg = port.to_string();
    let args = [
        "--port",
        &port_arg,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    spawn_listening("redis-server", &args, port)
}

/// The status code of `GET /readyz`.
fn readyz(addr: SocketAddr) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

async fn poll_readyz(addr: SocketAddr, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let code = tokio::task::spawn_blocking(move || readyz(addr)).await.unwrap();
        if code == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz answered {code}, not {want}, for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_holds_work_and_loses_nothing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let outage = Duration::from_secs(
        std::env::var("TROUPE_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let port = free_port();
    let mut redis = start_redis(port);

    let mut brokers = BrokerConfig::from_env().scratch("outage");
    // Scratch consumers are dropped after 5 idle minutes; x-sink is not read during the
    // outage, and a queue without its consumer counts as missing on NATS.
    brokers.nats.consumer_inactive_threshold = Some(outage + Duration::from_secs(600));
    let naming = QueueNaming::new("asya", &format!("outage{}", std::process::id())).unwrap();
    let host = ActorHost::new("relay", Broker::Nats, brokers.clone())
        .naming(naming.clone())
        .store(
            StoreUrl::Redis(format!("redis://127.0.0.1:{port}")),
            "troupe-outage:",
        )
        .metrics_addr("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_secs(5))
        .runner(|runner| {
            runner.concurrency = 4;
            runner.workers = 1;
            runner.redelivery_delay = Duration::from_millis(100);
            // The runner's own deliveries are held, not nacked (`report.nacked` below). The
            // few the NATS client had fetched ahead into its buffer have no lease extension,
            // but the server counts a redelivery only when it delivers one, and it delivers
            // nothing to a client that asks for nothing: they come back once, after the
            // outage. A lease of 1 s and a limit of 3 make an outage of 5 leases (or of
            // TROUPE_OUTAGE_SECS) prove it (docs/design-notes.md, "Outages are held").
            runner.consume.lease = Duration::from_secs(1);
            runner.max_redeliveries = Some(3);
        })
        .start()
        .await
        .expect("the host starts");
    let addr = host.metrics_addr().unwrap();
    let shutdown = host.shutdown();
    let served = tokio::spawn(host.serve(|_| {
        handler_fn(|e: Envelope| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, HandlerError>(Outcome::forward(e))
        })
    }));
    poll_readyz(addr, 200, Duration::from_secs(30)).await;

    let transport = brokers.connect_any(Broker::Nats).await.unwrap();
    let mut sink = common::sink_of(&transport, &naming).await;
    let mut sent = common::send_through(&transport, &naming, &["relay"], (0..100).map(|i| json!(i))).await;
    // Mid-run: some envelopes are done, some in flight, some not yet taken.
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill().unwrap();
    redis.wait().unwrap();
    let down_at = Instant::now();
    poll_readyz(addr, 503, Duration::from_secs(10)).await;
    sent.extend(common::send_through(&transport, &naming, &["relay"], (100..200).map(|i| json!(i))).await);
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    assert_eq!(readyz(addr), 503, "still not ready while Redis is down");

    let mut redis = start_redis(port);
    poll_readyz(addr, 200, Duration::from_secs(30)).await;
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    while seen.len() < sent.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(30), sink.next())
            .await
            .unwrap_or_else(|_| panic!("every envelope reaches x-sink: {} of {}", seen.len(), sent.len()))
            .unwrap()
            .unwrap();
        let env = Envelope::from_slice(delivery.body(), &Default::default()).unwrap();
        if !seen.insert(env.id) {
            duplicates += 1;
        }
        delivery.ack().await.unwrap();
    }
    assert_eq!(seen, sent);
    assert_eq!(duplicates, 0);
    let sump = naming.queue_for(troupe::SUMP).unwrap();
    assert_eq!(
        troupe::QueueAdmin::depth(&transport, &sump)
            .await
            .unwrap()
            .total(),
        0,
        "nothing in x-sump"
    );

    shutdown.cancel();
    let report = served.await.unwrap().unwrap();
    assert_eq!(report.sumped, 0, "{report:?}");
    // Redis comes back empty (no persistence here): a hop it had recorded before the kill
    // is forgotten, so a copy of that envelope still buffered by the NATS client runs again
    // after the outage and is published twice (found by CI: 201). x-sink sees it once
    // (asserted above: the broker's duplicate window drops it). At most the deliveries in
    // the runner's hands or its client's buffer at the kill can run twice.
    let in_hand = 4 + 4;
    // Held deliveries are never returned to the queue. The one nack allowed is a buffered
    // copy the server redelivered while its first copy was running: the idempotency layer
    // tells that concurrent duplicate to come back (found by CI: nacked 2 of 203 received).
    // A nack of held work would repeat once per lease for the whole outage and exceed this.
    assert!(
        report.nacked <= in_hand && report.received - report.nacked >= 200,
        "only concurrent duplicates went back to the queue: {report:?}"
    );
    assert!(
        (200..=200 + in_hand).contains(&report.published),
        "one output per envelope, plus at most {in_hand} repeated after the store lost its records: {report:?}"
    );
    redis.kill().unwrap();
    redis.wait().unwrap();
}
