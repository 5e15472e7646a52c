//! `troupe send` and `troupe tail`: inject an envelope, watch a queue. For people trying a
//! mesh by hand; pipelines publish and consume through the runner.

use std::time::Duration;

use bytes::Bytes;
use troupe::broker::{Broker, BrokerArgs, ConnectError, HOP_RECORD_TTL, WithTransport};
use troupe::core::{
    ConsumeOptions, Consumer, Delivery, Envelope, Payload, Phase, PublishOptions, QueueAdmin, QueueNaming,
    Route, Transport, TransportError,
};

use crate::tail_once::{BUSY_RETRY, PrintedOnce, Verdict};

/// Which broker and which queues.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// The broker: memory, nats, amqp (or rabbitmq), sqs, kafka.
    #[arg(long, env = "TROUPE_TRANSPORT", default_value = "nats")]
    pub transport: Broker,
    #[command(flatten)]
    pub brokers: BrokerArgs,
    /// Namespace part of queue names.
    #[arg(long, env = "TROUPE_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Prefix of queue names.
    #[arg(long, env = "TROUPE_QUEUE_PREFIX", default_value = "asya")]
    pub queue_prefix: String,
}

/// `troupe send`: publish one envelope to an actor's queue.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The actor that receives it (`route.curr`); defaults to the first of `--route`.
    #[arg(long)]
    pub actor: Option<String>,
    /// The actors after it, comma-separated (a leading entry equal to `--actor` is skipped).
    #[arg(long, value_delimiter = ',')]
    pub route: Vec<String>,
    /// The payload, JSON.
    #[arg(long, default_value = "null")]
    pub payload: String,
    /// The envelope id (default: a fresh UUIDv4).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// `troupe tail`: print the envelopes that arrive at a queue, one JSON line each.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// The actor whose queue to read, e.g. `x-sink`.
    pub actor: String,
    /// Stop after this many envelopes.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long without an envelope (e.g. `30s`); default: never.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Put each envelope back instead of removing it (it is then delivered again, so use
    /// with `--count`).
    #[arg(long, conflicts_with = "store")]
    pub keep: bool,
    /// Print each envelope once: keep a record of what was printed in this store
    /// (`redis://...`, `postgres://...`, `nats-kv://BUCKET`, or `memory` for this run only),
    /// so a copy an actor sent again after a crash is acked without being printed. Without
    /// it every copy on the queue is printed.
    #[arg(long, env = "TROUPE_TAIL_STORE", hide_env_values = true)]
    pub store: Option<troupe::layers::StoreUrl>,
    /// Prefix of the store's keys; apart from the actors' hop records.
    #[arg(long, env = "TROUPE_TAIL_STORE_PREFIX", default_value = "troupe:tail:")]
    pub store_prefix: String,
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// Why `send` or `tail` failed.
#[derive(Debug, thiserror::Error)]
pub enum ByHandError {
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The receiving actor has no queue: it was never deployed (or the name is wrong).
    #[error(
        "actor {actor:?} does not exist: its queue {queue:?} is not on the broker; deploy the actor (an actor scaled to zero keeps its queue) or fix the name"
    )]
    UnknownActor {
        /// The actor.
        actor: String,
        /// Its queue.
        queue: String,
    },
    /// The store of `troupe tail --store` could not be reached or answered wrongly (its
    /// message names the store; shown once, not again as its own cause).
    #[error(transparent)]
    Store(#[from] troupe::layers::idempotency::StoreError),
    /// Standard output failed (other than the reader going away).
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    /// The broker refused.
    #[error("{queue}: {source}")]
    Transport {
        /// The queue.
        queue: String,
        /// Why.
        #[source]
        source: TransportError,
    },
}

fn naming(args: &QueueArgs) -> Result<QueueNaming, ByHandError> {
    QueueNaming::new(&args.queue_prefix, &args.namespace).map_err(|e| ByHandError::Usage(e.to_string()))
}

/// The envelope `args` describe.
pub fn envelope(args: &SendArgs) -> Result<Envelope, ByHandError> {
    let mut actors = args
        .route
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    let first = match &args.actor {
        Some(actor) => actor.clone(),
        None => actors.next().ok_or_else(|| {
            ByHandError::Usage("name the receiving actor: --actor A or --route a,b,c".into())
        })?,
    };
    let mut rest: Vec<String> = actors.collect();
    if rest.first() == Some(&first) && args.actor.is_some() {
        rest.remove(0);
    }
    let payload = Payload::from_json(&args.payload)
        .map_err(|e| ByHandError::Usage(format!("--payload is not JSON: {e}")))?;
    let mut env = Envelope::new(Route::new(Vec::new(), first, rest), payload);
    if let Some(id) = &args.id {
        env.id.clone_from(id);
    }
    let status = env.status_mut();
    status.phase = Some(Phase::Pending);
    status.created_at = Some(chrono::Utc::now());
    Ok(env)
}

/// Runs `troupe send`.
pub async fn send(args: SendArgs) -> Result<(), ByHandError> {
    let env = envelope(&args)?;
    let queue = naming(&args.queue)?
        .queue_for(env.route.curr())
        .map_err(|e| ByHandError::Usage(e.to_string()))?;
    let job = SendJob {
        queue,
        actor: env.route.curr().to_owned(),
        env,
    };
    args.queue
        .brokers
        .config()
        .connect(args.queue.transport, job)
        .await?
}

struct SendJob {
    queue: String,
    actor: String,
    env: Envelope,
}

impl WithTransport for SendJob {
    type Output = Result<(), ByHandError>;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
        let fail = |source| ByHandError::Transport {
            queue: self.queue.clone(),
            source,
        };
        // No ensure_queue: a queue created here would hold the envelope where no actor reads
        // it. Every transport refuses a publish to a queue that does not exist.
        let published = transport
            .publish(
                &self.queue,
                Bytes::from(self.env.to_vec()),
                PublishOptions::default(),
            )
            .await;
        match published {
            Err(TransportError::NoSuchQueue { .. }) => {
                return Err(ByHandError::UnknownActor {
                    actor: self.actor,
                    queue: self.queue,
                });
            }
            other => other.map_err(fail)?,
        }
        println!("{}", self.env.id);
        Ok(())
    }
}

/// Runs `troupe tail`.
pub async fn tail(args: TailArgs) -> Result<(), ByHandError> {
    let queue = naming(&args.queue)?
        .queue_for(&args.actor)
        .map_err(|e| ByHandError::Usage(e.to_string()))?;
    let once = match &args.store {
        None => None,
        Some(url) => {
            let store = url
                .clone()
                .with_nats_default(&args.queue.brokers.nats_url)
                .connect(
                    &args.store_prefix,
                    HOP_RECORD_TTL,
                    &args.queue.brokers.tls_files(),
                )
                .await?;
            Some(PrintedOnce::new(store, &args.actor))
        }
    };
    let config = args.queue.brokers.config();
    config
        .connect(args.queue.transport, TailJob { queue, args, once })
        .await?
}

struct TailJob {
    queue: String,
    args: TailArgs,
    /// With `--store`: what was printed, so copies are not.
    once: Option<PrintedOnce>,
}

impl WithTransport for TailJob {
    type Output = Result<(), ByHandError>;

    async fn run<T: Transport + QueueAdmin>(mut self, transport: T) -> Self::Output {
        let fail = |source| ByHandError::Transport {
            queue: self.queue.clone(),
            source,
        };
        transport.ensure_queue(&self.queue).await.map_err(fail)?;
        // One at a time: a delivery waits for stdout with its lease extended; more
        // prefetched ones would sit with leases running out, and come back as duplicates.
        let options = ConsumeOptions {
            prefetch: 1,
            ..ConsumeOptions::default()
        };
        let mut consumer = transport.consume(&self.queue, options).await.map_err(fail)?;
        let mut stdout = tokio::io::stdout();
        let mut seen = 0u64;
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        while self.args.count.is_none_or(|n| seen < n) {
            let next = async {
                match self.args.idle_timeout {
                    Some(limit) => tokio::time::timeout(limit, consumer.next()).await.ok().flatten(),
                    None => consumer.next().await,
                }
            };
            let delivery = tokio::select! {
                d = next => d,
                _ = &mut stop => None,
            };
            let Some(delivery) = delivery else { break };
            let delivery = delivery.map_err(fail)?;
            let key = match self.once.as_mut() {
                None => None,
                Some(once) => {
                    let verdict = tokio::select! {
                        verdict = once.check(&delivery) => verdict?,
                        _ = &mut stop => {
                            delivery.nack(None).await.map_err(fail)?;
                            break;
                        }
                    };
                    match verdict {
                        Verdict::Print(key) => key,
                        Verdict::Copy => {
                            delivery.ack().await.map_err(fail)?;
                            continue;
                        }
                        Verdict::Busy => {
                            delivery.nack(Some(BUSY_RETRY)).await.map_err(fail)?;
                            continue;
                        }
                    }
                }
            };
            let mut line = delivery.body().to_vec();
            line.push(b'\n');
            match print_holding_lease(&mut stdout, &line, &delivery, options.lease).await {
                Ok(()) => {}
                Err(error) => {
                    // Not printed, so not taken: it goes back to the queue, free for the
                    // next reader.
                    if let (Some(once), Some(key)) = (&self.once, &key) {
                        once.not_printed(key).await;
                    }
                    delivery.nack(None).await.map_err(fail)?;
                    transport.flush().await.map_err(fail)?;
                    if error.kind() == std::io::ErrorKind::BrokenPipe {
                        // The reader went away (`troupe tail x-sink | head -3`): done.
                        return Ok(());
                    }
                    return Err(ByHandError::Stdout(error));
                }
            }
            seen += 1;
            if let (Some(once), Some(key)) = (&self.once, &key) {
                once.printed(key, &delivery).await?;
            }
            let settled = if self.args.keep {
                delivery.nack(None).await
            } else {
                delivery.ack().await
            };
            settled.map_err(fail)?;
        }
        if let Some(once) = &self.once {
            tracing::info!(
                queue = %self.queue,
                printed = seen,
                copies = once.copies,
                "tail done: copies of envelopes already printed were acked, not printed"
            );
        }
        // The process exits next: an ack still in the client's buffer would be lost, and
        // the envelope printed again by the next reader.
        transport.flush().await.map_err(fail)?;
        Ok(())
    }
}

/// Writes `line` to `out` and flushes it, extending `delivery`'s lease every half `lease`
/// while a slow reader keeps the pipe full, so the delivery is neither redelivered to
/// someone else meanwhile nor acknowledged before it was printed.
async fn print_holding_lease<W, D>(
    out: &mut W,
    line: &[u8],
    delivery: &D,
    lease: Duration,
) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    D: Delivery,
{
    use tokio::io::AsyncWriteExt;
    let write = async {
        out.write_all(line).await?;
        out.flush().await
    };
    tokio::pin!(write);
    let every = (lease / 2).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            written = &mut write => return written,
            () = tokio::time::sleep(every) => {
                if let Err(error) = delivery.in_progress().await {
                    tracing::warn!(%error, "tail: could not extend the lease while stdout is full");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        send: SendArgs,
    }

    fn parse(argv: &[&str]) -> SendArgs {
        Cli::parse_from(std::iter::once("send").chain(argv.iter().copied())).send
    }

    #[test]
    fn route_and_actor_combine() {
        let env = envelope(&parse(&[
            "--actor",
            "a",
            "--route",
            "b,c",
            "--payload",
            "{\"x\": 1}",
        ]))
        .unwrap();
        assert_eq!(env.route, Route::new(vec![], "a", vec!["b".into(), "c".into()]));
        assert_eq!(env.payload["x"], 1);
        let env = envelope(&parse(&["--actor", "a", "--route", "a,b"])).unwrap();
        assert_eq!(env.route, Route::new(vec![], "a", vec!["b".into()]));
        let env = envelope(&parse(&["--route", "a,b,c"])).unwrap();
        assert_eq!(env.route.curr(), "a");
        assert!(envelope(&parse(&["--payload", "{}"])).is_err());
        assert!(envelope(&parse(&["--actor", "a", "--payload", "{nope"])).is_err());
    }

    /// A reader slower than several leases: the line is printed whole, the lease held the
    /// whole time (no redelivery), and the ack after it goes through.
    #[tokio::test]
    async fn a_slow_reader_does_not_lose_the_lease() {
        use tokio::io::AsyncReadExt;
        use troupe::MemoryTransport;

        let transport = MemoryTransport::default();
        transport.ensure_queue("q").await.unwrap();
        transport
            .publish(
                "q",
                Bytes::from_static(b"0123456789abcdef"),
                PublishOptions::default(),
            )
            .await
            .unwrap();
        let lease = Duration::from_millis(100);
        let options = ConsumeOptions { prefetch: 1, lease };
        let mut consumer = transport.consume("q", options).await.unwrap();
        let delivery = consumer.next().await.unwrap().unwrap();

        // A 4-byte pipe whose reader starts after five leases.
        let (mut out, mut reader) = tokio::io::duplex(4);
        let read = tokio::spawn(async move {
            tokio::time::sleep(lease * 5).await;
            let mut all = Vec::new();
            reader.read_to_end(&mut all).await.map(|_| all)
        });
        print_holding_lease(&mut out, b"0123456789abcdef\n", &delivery, lease)
            .await
            .unwrap();
        drop(out);
        assert_eq!(read.await.unwrap().unwrap(), b"0123456789abcdef\n");
        assert_eq!(delivery.redeliveries(), 0);
        delivery
            .ack()
            .await
            .expect("the lease was held, so the ack goes through");
        let again = tokio::time::timeout(lease * 3, consumer.next()).await;
        assert!(
            again.is_err(),
            "redelivered: {:?}",
            again.map(|d| d.map(|d| d.map(|d| d.redeliveries())))
        );
    }

    #[tokio::test]
    async fn a_reader_gone_is_a_broken_pipe() {
        use troupe::MemoryTransport;
        let transport = MemoryTransport::default();
        transport.ensure_queue("q").await.unwrap();
        transport
            .publish("q", Bytes::from_static(b"x"), PublishOptions::default())
            .await
            .unwrap();
        let mut consumer = transport.consume("q", ConsumeOptions::default()).await.unwrap();
        let delivery = consumer.next().await.unwrap().unwrap();
        let (mut out, reader) = tokio::io::duplex(4);
        drop(reader);
        let error = print_holding_lease(&mut out, b"x\n", &delivery, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
