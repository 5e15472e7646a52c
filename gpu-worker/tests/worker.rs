//! The worker under the runner on the embedded broker, with a stand-in model (no libtorch):
//! envelopes are batched across deliveries, leases outlive batches that take longer than a
//! lease, and a bad input fails alone.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use troupe::layers::MeshMetrics;
use troupe::{CancellationToken, MemoryTransport, Phase, QueueNaming, RunReport, SINK, SUMP};
use troupe_gpu_worker::batcher::{Batcher, BatcherConfig, Model, ModelError};
use troupe_gpu_worker::codec::{CodecConfig, CodecKind};
use troupe_gpu_worker::tensor::Tensor;
use troupe_gpu_worker::worker::{WorkerSettings, serve};

/// Adds one to every value, taking `pause` per batch; records each batch's size.
struct SlowPlusOne {
    pause: Duration,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Model for SlowPlusOne {
    fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
        std::thread::sleep(self.pause);
        if let Ok(mut batches) = self.batches.lock() {
            batches.push(batch.shape()[0]);
        }
        let values: Vec<f32> = batch
            .to_vec::<f32>()
            .map_err(|e| ModelError::new(e.to_string()))?
            .into_iter()
            .map(|x| x + 1.0)
            .collect();
        Tensor::from_vec(batch.shape().to_vec(), &values).map_err(|e| ModelError::new(e.to_string()))
    }
}

struct Running {
    transport: MemoryTransport,
    naming: QueueNaming,
    batches: Arc<Mutex<Vec<usize>>>,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<RunReport>,
}

fn start(pause: Duration, lease: Duration, max_batch_size: usize) -> Running {
    let transport = MemoryTransport::default();
    let codec = CodecConfig::new(CodecKind::Json, "/x", "/y")
        .expect("pointers")
        .with_shape("[2]".parse().expect("shape"));
    let mut settings = WorkerSettings::new("infer", codec);
    settings.prefetch = 2 * max_batch_size;
    settings.lease = lease;
    settings.batcher = BatcherConfig {
        max_batch_size,
        max_queue_delay: Duration::from_millis(20),
        preferred_batch_sizes: Vec::new(),
        queue_capacity: settings.prefetch,
    };
    let batches = Arc::new(Mutex::new(Vec::new()));
    let model = SlowPlusOne {
        pause,
        batches: batches.clone(),
    };
    let batcher = Batcher::start(model, settings.batcher.clone()).expect("batcher config");
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let (transport, shutdown) = (transport.clone(), shutdown.clone());
        async move {
            let mut registry = prometheus_client::registry::Registry::default();
            let mesh = MeshMetrics::new(&mut registry);
            let store = Arc::new(troupe::layers::MemoryStore::default());
            serve(transport, store, batcher, &settings, &mesh, shutdown)
                .await
                .expect("worker runs")
        }
    });
    Running {
        transport,
        naming: QueueNaming::default(),
        batches,
        shutdown,
        worker,
    }
}

impl Running {
    /// Sends `payloads` along `route`, returning the envelopes sent.
    async fn send<I>(&self, route: &[&str], payloads: I) -> Vec<troupe::Envelope>
    where
        I: IntoIterator<Item = serde_json::Value>,
    {
        support::send_through(&self.transport, &self.naming, route, payloads).await
    }

    /// Waits up to 20 s for `count` envelopes on `actor`'s queue.
    async fn collect(&self, actor: &str, count: usize) -> Vec<troupe::Envelope> {
        support::collect(
            &self.transport,
            &self.naming,
            actor,
            count,
            Duration::from_secs(20),
        )
        .await
    }

    async fn stop(self) -> (RunReport, Vec<usize>) {
        self.shutdown.cancel();
        let report = self.worker.await.expect("worker task");
        let batches = self.batches.lock().map(|b| b.clone()).unwrap_or_default();
        (report, batches)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_batched_across_deliveries_and_each_gets_its_own_row() {
    let running = start(Duration::from_millis(30), Duration::from_secs(30), 8);
    let count = 64;
    let sent = running
        .send(
            &["infer"],
            (0..count as i64).map(|i| json!({"x": [i, -i], "i": i})),
        )
        .await;
    let out = running.collect(SINK, count).await;
    for envelope in &out {
        let i = envelope.payload["i"].as_i64().expect("i kept");
        assert_eq!(
            envelope.payload["y"],
            json!([i as f64 + 1.0, 1.0 - i as f64]),
            "row of {i}"
        );
        assert_eq!(
            envelope.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Succeeded)
        );
    }
    let ids: HashSet<_> = out.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, sent.iter().map(|e| e.id.clone()).collect());
    let (report, batches) = running.stop().await;
    assert_eq!((report.received, report.acked, report.nacked), (64, 64, 0));
    assert_eq!(batches.iter().sum::<usize>(), count);
    assert!(batches.contains(&8), "a backlog fills whole batches: {batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_extended_while_a_batch_runs_longer_than_a_lease() {
    // Each batch takes three leases; without extension every envelope would be given out
    // again (and processed twice) while its batch runs.
    let lease = Duration::from_millis(200);
    let running = start(3 * lease, lease, 4);
    let count = 12;
    running
        .send(&["infer"], (0..count).map(|i| json!({"x": [i, i]})))
        .await;
    let out = running.collect(SINK, count).await;
    let ids: HashSet<_> = out.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), count);
    let (report, batches) = running.stop().await;
    assert_eq!(
        (report.received, report.acked, report.nacked),
        (12, 12, 0),
        "no delivery came back while its batch ran: {batches:?}"
    );
    assert_eq!(
        batches.iter().sum::<usize>(),
        count,
        "each envelope ran once: {batches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_input_goes_to_the_sump_with_what_was_expected_and_its_batch_mates_go_on() {
    let running = start(Duration::from_millis(10), Duration::from_secs(30), 4);
    let payloads = [
        json!({"x": [1, 2]}),
        json!({"x": [1, 2, 3]}),
        json!({"x": [3, 4]}),
        json!({"x": [[1, 2]]}),
        json!({"x": "text"}),
        json!({"x": [5, 6]}),
    ];
    let sent = running.send(&["infer", "next"], payloads).await;
    let forwarded = running.collect("next", 3).await;
    let mut outputs: Vec<_> = forwarded.iter().map(|e| e.payload["y"].clone()).collect();
    outputs.sort_by_key(|y| y[0].as_f64().map(|v| v as i64));
    assert_eq!(outputs, [json!([2.0, 3.0]), json!([4.0, 5.0]), json!([6.0, 7.0])]);

    let sumped = running.collect(SUMP, 3).await;
    let mut messages = Vec::new();
    for envelope in &sumped {
        let status = envelope.status.as_ref().expect("status");
        assert_eq!(status.phase, Some(Phase::Failed));
        let error = status.error.as_ref().expect("status.error");
        assert_eq!(error.type_name, "InputError");
        let input = sent.iter().find(|e| e.id == envelope.id).expect("one of ours");
        assert_eq!(envelope.payload, input.payload, "the payload as received");
        messages.push(error.message.clone());
    }
    messages.sort();
    assert_eq!(
        messages,
        [
            "input at /x: /x is a string, expected a number",
            "input at /x: expected shape [2] of float32, got [1, 2]",
            "input at /x: expected shape [2] of float32, got [3]",
        ]
    );
    let (report, _) = running.stop().await;
    assert_eq!((report.acked, report.nacked), (6, 0));
}
