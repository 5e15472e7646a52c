//! Choosing a broker at run time: one place that knows every transport the build has, so
//! binaries (the demo, the benchmark harness, test actors) take a `--transport` flag and run
//! the same generic code on whichever broker it names.
//!
//! [`Transport`] is generic (its futures are not boxed), so a run-time choice hands the
//! connected transport to a [`WithTransport`] visitor rather than returning it:
//!
//! ```
//! use troupe::broker::{Broker, BrokerConfig, WithTransport};
//! use troupe::{QueueAdmin, Transport, TransportError};
//!
//! struct Depth;
//! impl WithTransport for Depth {
//!     type Output = Result<u64, TransportError>;
//!     async fn run<T: Transport + QueueAdmin>(self, transport: T) -> Self::Output {
//!         transport.ensure_queue("jobs").await?;
//!         Ok(transport.depth("jobs").await?.total())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let depth = BrokerConfig::default().connect(Broker::Memory, Depth).await??;
//! assert_eq!(depth, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use troupe_core::{QueueAdmin, Transport, TransportError};
use troupe_transports::MemoryTransport;

/// The brokers Troupe speaks; each but `Memory` needs its Cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Broker {
    /// The embedded in-memory broker (no server; one process).
    Memory,
    /// NATS JetStream (feature `nats`).
    Nats,
    /// RabbitMQ over AMQP 0-9-1 (feature `amqp`).
    Amqp,
}

impl Broker {
    /// Every broker, compiled in or not.
    pub const ALL: [Broker; 3] = [Broker::Memory, Broker::Nats, Broker::Amqp];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Broker::Memory => "memory",
            Broker::Nats => "nats",
            Broker::Amqp => "amqp",
        }
    }

    /// The Cargo feature that compiles it in (`None` for the always-present memory broker).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Broker::Memory => None,
            Broker::Nats => Some("nats"),
            Broker::Amqp => Some("amqp"),
        }
    }

    /// Whether this build can connect to it.
    pub fn compiled_in(self) -> bool {
        match self {
            Broker::Memory => true,
            Broker::Nats => cfg!(feature = "nats"),
            Broker::Amqp => cfg!(feature = "amqp"),
        }
    }
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A broker name that is not one of [`Broker::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown broker {0:?}; expected one of: memory, nats, amqp")]
pub struct UnknownBroker(String);

impl FromStr for Broker {
    type Err = UnknownBroker;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Broker::ALL
            .into_iter()
            .find(|b| {
                b.name().eq_ignore_ascii_case(s) || (s.eq_ignore_ascii_case("rabbitmq") && *b == Broker::Amqp)
            })
            .ok_or_else(|| UnknownBroker(s.to_owned()))
    }
}

/// Why a broker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// This build lacks the broker's feature.
    #[error("this build has no {broker} support; rebuild with `--features {feature}`")]
    NotCompiledIn {
        /// The broker asked for.
        broker: Broker,
        /// The Cargo feature to enable.
        feature: &'static str,
    },
    /// The broker did not answer or refused the connection.
    #[error("cannot connect to {broker}: {source}")]
    Connect {
        /// The broker.
        broker: Broker,
        /// What the transport reported.
        #[source]
        source: TransportError,
    },
}

/// Code to run on whichever transport was chosen.
pub trait WithTransport {
    /// What the run returns.
    type Output;

    /// Runs on the connected transport.
    fn run<T: Transport + QueueAdmin>(self, transport: T) -> impl Future<Output = Self::Output> + Send;
}

/// How to reach each broker. Fields exist for the brokers this build has.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    /// The embedded broker's settings.
    pub memory: troupe_transports::MemoryConfig,
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    pub nats: troupe_transports::NatsConfig,
    /// RabbitMQ.
    #[cfg(feature = "amqp")]
    pub amqp: troupe_transports::AmqpConfig,
}

impl BrokerConfig {
    /// Addresses from the environment where set (`TROUPE_NATS_URL`, `TROUPE_AMQP_URL`),
    /// the 127.0.0.1 defaults otherwise.
    pub fn from_env() -> Self {
        #[allow(unused_mut)]
        let mut config = Self::default();
        #[cfg(feature = "nats")]
        if let Ok(url) = std::env::var("TROUPE_NATS_URL") {
            config.nats.url = url;
        }
        #[cfg(feature = "amqp")]
        if let Ok(url) = std::env::var("TROUPE_AMQP_URL") {
            config.amqp.url = url;
        }
        config
    }

    /// Where `broker` is, for messages (no credentials).
    pub fn describe(&self, broker: Broker) -> String {
        match broker {
            Broker::Memory => "the embedded in-memory broker".to_owned(),
            #[cfg(feature = "nats")]
            Broker::Nats => format!("NATS at {}", self.nats.url),
            #[cfg(feature = "amqp")]
            Broker::Amqp => "RabbitMQ".to_owned(),
            #[allow(unreachable_patterns)]
            other => other.to_string(),
        }
    }

    /// Connects to `broker` and runs `job` on it.
    pub async fn connect<J: WithTransport>(&self, broker: Broker, job: J) -> Result<J::Output, ConnectError> {
        let connect_error = |source| ConnectError::Connect { broker, source };
        match broker {
            Broker::Memory => Ok(job.run(MemoryTransport::new(self.memory)).await),
            #[cfg(feature = "nats")]
            Broker::Nats => {
                let transport = troupe_transports::NatsTransport::connect(self.nats.clone())
                    .await
                    .map_err(connect_error)?;
                Ok(job.run(transport).await)
            }
            #[cfg(feature = "amqp")]
            Broker::Amqp => {
                let transport = troupe_transports::AmqpTransport::connect(self.amqp.clone())
                    .await
                    .map_err(connect_error)?;
                Ok(job.run(transport).await)
            }
            #[allow(unreachable_patterns)]
            other => {
                let _ = connect_error;
                Err(ConnectError::NotCompiledIn {
                    broker: other,
                    feature: other.feature().unwrap_or("none"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_listed() {
        for b in Broker::ALL {
            assert_eq!(b.name().parse::<Broker>().ok(), Some(b));
        }
        assert_eq!("RabbitMQ".parse::<Broker>().ok(), Some(Broker::Amqp));
        let err = "kafkaa"
            .parse::<Broker>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("memory, nats"), "{err}");
    }
}
