//! What the sidecar end-to-end tests share: Python runtimes and `troupe sidecar` processes
//! that die with the test, and an object-safe view of the NATS and RabbitMQ transports.
#![allow(dead_code)] // Each test file uses part of it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use troupe::core::{ConsumeOptions, Consumer, Delivery, Envelope, PublishOptions, QueueAdmin, Transport};
use troupe::transports::{AmqpConfig, AmqpTransport, NatsConfig, NatsTransport};

/// Kills the process when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

pub fn runtime(dir: &Path, handler: &str) -> Proc {
    runtime_with(dir, handler, &[])
}

/// A runtime with extra environment variables.
pub fn runtime_with(dir: &Path, handler: &str, env: &[(&str, &str)]) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let pythonpath = format!(
        "{}:{}",
        repo().join("python").display(),
        repo().join("bin/tests/python").display()
    );
    let child = Command::new("python3")
        .args(["-m", "troupe_runtime"])
        .env("PYTHONPATH", pythonpath)
        .env("ASYA_HANDLER", format!("e2e_handlers.{handler}"))
        .env("ASYA_SOCKET_DIR", dir)
        .env("E2E_HANG_S", "20")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    Proc(child)
}

#[derive(Clone, Copy)]
pub enum Broker {
    Nats,
    Amqp,
}

pub fn nats_url() -> String {
    std::env::var("TROUPE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub fn amqp_url() -> String {
    std::env::var("TROUPE_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub fn sidecar(broker: Broker, namespace: &str, actor: &str, dir: &Path, extra: &[&str]) -> Proc {
    sidecar_at("127.0.0.1:0", broker, namespace, actor, dir, extra)
}

/// A sidecar serving `/metrics`, `/healthz` and `/readyz` on `metrics`.
pub fn sidecar_at(
    metrics: &str,
    broker: Broker,
    namespace: &str,
    actor: &str,
    dir: &Path,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_troupe"));
    cmd.args(["sidecar", "--actor", actor, "--namespace", namespace])
        .arg("--socket-dir")
        .arg(dir)
        .args(["--metrics-addr", metrics, "--runtime-ready-timeout", "60s"])
        .args(extra)
        .env_remove("TROUPE_TRANSPORT")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        );
    match broker {
        Broker::Nats => cmd.args(["--transport", "nats", "--nats-url", &nats_url()]),
        Broker::Amqp => cmd.args(["--transport", "amqp", "--amqp-url", &amqp_url()]),
    };
    Proc(cmd.spawn().unwrap())
}

pub async fn run_on(broker: Broker, test: impl AsyncFnOnce(Broker, Box<dyn Mesh>)) {
    match broker {
        Broker::Nats => {
            let t = NatsTransport::connect(NatsConfig {
                url: nats_url(),
                ..NatsConfig::default()
            })
            .await
            .unwrap();
            test(broker, Box::new(t)).await;
        }
        Broker::Amqp => {
            let t = AmqpTransport::connect(AmqpConfig {
                url: amqp_url(),
                ..AmqpConfig::default()
            })
            .await
            .unwrap();
            test(broker, Box::new(t)).await;
        }
    }
}

/// Sees every envelope that arrived so far; says when to stop.
pub type Done<'a> = Box<dyn FnMut(&[Value]) -> bool + Send + 'a>;

/// What the tests need of a transport, object-safe.
pub trait Mesh {
    /// Creates `queue`, as a deployment does for every declared actor before traffic.
    fn ensure(&self, queue: String) -> futures_util::future::BoxFuture<'_, ()>;
    fn send(&self, queue: String, env: Envelope) -> futures_util::future::BoxFuture<'_, ()>;
    /// Envelopes arriving at `queue` until `done` says stop or `limit` passes.
    fn collect<'a>(
        &'a self,
        queue: String,
        limit: Duration,
        done: Done<'a>,
    ) -> futures_util::future::BoxFuture<'a, Vec<Value>>;
}

impl<T: Transport + QueueAdmin> Mesh for T {
    fn ensure(&self, queue: String) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move { self.ensure_queue(&queue).await.unwrap() })
    }

    fn send(&self, queue: String, env: Envelope) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            self.ensure_queue(&queue).await.unwrap();
            self.publish(&queue, Bytes::from(env.to_vec()), PublishOptions::default())
                .await
                .unwrap();
        })
    }

    fn collect<'a>(
        &'a self,
        queue: String,
        limit: Duration,
        mut done: Done<'a>,
    ) -> futures_util::future::BoxFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.ensure_queue(&queue).await.unwrap();
            let mut consumer = self.consume(&queue, ConsumeOptions::default()).await.unwrap();
            let deadline = Instant::now() + limit;
            let mut got = Vec::new();
            while !done(&got) && Instant::now() < deadline {
                let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
                else {
                    continue;
                };
                got.push(serde_json::from_slice(d.body()).unwrap());
                d.ack().await.unwrap();
            }
            got
        })
    }
}

pub fn namespace(test: &str, broker: Broker) -> String {
    let b = match broker {
        Broker::Nats => "nats",
        Broker::Amqp => "amqp",
    };
    format!("e2e-{test}-{b}-{}", std::process::id())
}

pub fn scratch(ns: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(ns);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The status code of the sidecar's `GET /readyz` (0 when it does not answer).
pub fn readyz(port: u16) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = String::new();
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: test\r\n\r\n")
        .is_err()
        || stream.read_to_string(&mut answer).is_err()
    {
        return 0;
    }
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

pub async fn wait_for_readyz(port: u16, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let code = tokio::task::spawn_blocking(move || readyz(port)).await.unwrap();
        if code == want {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz answered {code}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
