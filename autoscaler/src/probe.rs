//! Depth probes: how deep an actor's queue is, on whichever broker holds it.
//!
//! Every probe reports [`QueueDepth`] from the transport's own [`QueueAdmin::depth`], which
//! counts in-flight work (NATS ack-pending, RabbitMQ unacknowledged through the management
//! API, SQS not-visible, Kafka lag from the committed offset) and delayed retries, never
//! ready messages alone: scaling on ready-only depth would take pods away mid-work.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Mutex;
use troupe::broker::{Broker, BrokerConfig, ConnectError, WithTransport};
use troupe::{QueueAdmin, QueueDepth, Transport, TransportError};

/// A boxed future, so probes on different brokers share one object type.
pub type ProbeFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Reads a queue's depth on one broker.
pub trait DepthProbe: Send + Sync + 'static {
    /// Creates `queue` if it does not exist (idempotent), so envelopes sent to an actor at
    /// zero replicas wait in its queue.
    fn ensure_queue<'a>(&'a self, queue: &'a str) -> ProbeFuture<'a, Result<(), TransportError>>;

    /// The depth of `queue`, in-flight work included.
    fn depth<'a>(&'a self, queue: &'a str) -> ProbeFuture<'a, Result<QueueDepth, TransportError>>;
}

/// A probe over any transport's [`QueueAdmin`].
#[derive(Debug, Clone)]
pub struct AdminProbe<T>(pub T);

impl<T: QueueAdmin> DepthProbe for AdminProbe<T> {
    fn ensure_queue<'a>(&'a self, queue: &'a str) -> ProbeFuture<'a, Result<(), TransportError>> {
        Box::pin(self.0.ensure_queue(queue))
    }

    fn depth<'a>(&'a self, queue: &'a str) -> ProbeFuture<'a, Result<QueueDepth, TransportError>> {
        Box::pin(self.0.depth(queue))
    }
}

/// Why a probe could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The broker could not be reached, or this build lacks its feature.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The broker answered with an error.
    #[error("depth of queue {queue:?}: {source}")]
    Depth {
        /// The queue.
        queue: String,
        /// The broker's error.
        #[source]
        source: TransportError,
    },
}

/// One probe per broker, connected on first use and shared by every actor on that broker.
#[derive(Clone)]
pub struct Probes {
    config: BrokerConfig,
    connected: Arc<Mutex<HashMap<Broker, Arc<dyn DepthProbe>>>>,
}

impl Probes {
    /// Probes that connect with `config`.
    pub fn new(config: BrokerConfig) -> Self {
        Self {
            config,
            connected: Arc::default(),
        }
    }

    /// Uses `probe` for `broker` instead of connecting (tests; the embedded broker).
    pub async fn insert(&self, broker: Broker, probe: Arc<dyn DepthProbe>) {
        self.connected.lock().await.insert(broker, probe);
    }

    /// The probe for `broker`, connecting if there is none yet.
    pub async fn get(&self, broker: Broker) -> Result<Arc<dyn DepthProbe>, ProbeError> {
        let mut connected = self.connected.lock().await;
        if let Some(probe) = connected.get(&broker) {
            return Ok(probe.clone());
        }
        let probe = self.config.connect(broker, MakeProbe).await?;
        tracing::info!(broker = %broker, at = %self.config.describe(broker), "connected depth probe");
        connected.insert(broker, probe.clone());
        Ok(probe)
    }

    /// Forgets `broker`'s probe after an error, so the next poll reconnects.
    pub async fn reset(&self, broker: Broker) {
        self.connected.lock().await.remove(&broker);
    }

    /// The depth of `queue` on `broker`.
    pub async fn depth(&self, broker: Broker, queue: &str) -> Result<QueueDepth, ProbeError> {
        let probe = self.get(broker).await?;
        probe.depth(queue).await.map_err(|source| ProbeError::Depth {
            queue: queue.to_owned(),
            source,
        })
    }

    /// Creates `queue` on `broker` if it does not exist.
    pub async fn ensure_queue(&self, broker: Broker, queue: &str) -> Result<(), ProbeError> {
        let probe = self.get(broker).await?;
        probe
            .ensure_queue(queue)
            .await
            .map_err(|source| ProbeError::Depth {
                queue: queue.to_owned(),
                source,
            })
    }
}

struct MakeProbe;

impl WithTransport for MakeProbe {
    type Output = Arc<dyn DepthProbe>;

    async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
        Arc::new(AdminProbe(transport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe::{ConsumeOptions, Consumer, MemoryTransport, PublishOptions};

    #[tokio::test]
    async fn depth_counts_work_in_flight() -> Result<(), Box<dyn std::error::Error>> {
        let transport = MemoryTransport::default();
        let probes = Probes::new(BrokerConfig::default());
        probes
            .insert(Broker::Memory, Arc::new(AdminProbe(transport.clone())))
            .await;
        probes.ensure_queue(Broker::Memory, "asya-ml-embed").await?;
        for _ in 0..3 {
            transport
                .publish("asya-ml-embed", "{}".into(), PublishOptions::default())
                .await?;
        }
        let mut consumer = transport
            .consume("asya-ml-embed", ConsumeOptions::default())
            .await?;
        let _held = consumer.next().await.ok_or("closed")??;
        let depth = probes.depth(Broker::Memory, "asya-ml-embed").await?;
        assert_eq!((depth.total(), depth.in_flight), (3, 1));
        Ok(())
    }
}
