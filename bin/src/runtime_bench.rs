//! `troupe runtime-bench`: the per-call cost of the sidecar-runtime hop, measured with the
//! sidecar's own client against a running runtime (start one with a no-op handler to see
//! the protocol's overhead, or with your handler to see its cost).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use troupe::core::{Envelope, Route};

use crate::sidecar::client::RuntimeClient;

/// Options of `troupe runtime-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeBenchArgs {
    /// Folder of the runtime's socket (`asya-runtime.sock`).
    #[arg(long, env = "TROUPE_SOCKET_DIR", default_value = "/var/run/asya")]
    pub socket_dir: PathBuf,
    /// Calls to make, after 200 warm-up calls.
    #[arg(long, default_value_t = 5_000)]
    pub calls: usize,
    /// Calls in flight at once (one kept-alive connection each); repeat the flag, or give a
    /// comma-separated list, to measure several levels.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub concurrency: Vec<usize>,
}

/// A call that failed.
#[derive(Debug, thiserror::Error)]
#[error("runtime call failed: {0}")]
pub struct BenchError(String);

/// Runs the benchmark and prints one table row per concurrency level.
pub async fn run(args: RuntimeBenchArgs) -> Result<(), BenchError> {
    let body = Bytes::from(Envelope::new(Route::through(["bench"]), serde_json::json!({"n": 1})).to_vec());
    println!("| concurrency | calls | calls/s | p50 µs | p99 µs | max µs |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &concurrency in &args.concurrency {
        let client = RuntimeClient::new(
            args.socket_dir.join(crate::sidecar::config::RUNTIME_SOCKET),
            concurrency,
        );
        let per_worker = |n: usize| n.div_ceil(concurrency.max(1));
        let _ = measure(&client, &body, concurrency, per_worker(200)).await?;
        let started = Instant::now();
        let mut latencies = measure(&client, &body, concurrency, per_worker(args.calls)).await?;
        let elapsed = started.elapsed();
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "| {concurrency} | {} | {:.0} | {} | {} | {} |",
            latencies.len(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            at(0.50).as_micros(),
            at(0.99).as_micros(),
            latencies[latencies.len() - 1].as_micros()
        );
    }
    Ok(())
}

async fn measure(
    client: &Arc<RuntimeClient>,
    body: &Bytes,
    workers: usize,
    each: usize,
) -> Result<Vec<Duration>, BenchError> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (client, body) = (client.clone(), body.clone());
        tasks.spawn(async move {
            let mut took = Vec::with_capacity(each);
            for _ in 0..each {
                let started = Instant::now();
                let answer = client
                    .invoke(&body)
                    .await
                    .map_err(|e| BenchError(e.to_string()))?;
                let status = answer.status();
                answer
                    .read_to_end()
                    .await
                    .map_err(|e| BenchError(e.to_string()))?;
                took.push(started.elapsed());
                if !status.is_success() {
                    return Err(BenchError(format!("the runtime answered {status}")));
                }
            }
            Ok(took)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.map_err(|e| BenchError(e.to_string()))??);
    }
    Ok(all)
}
