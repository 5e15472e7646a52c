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

#[allow(unused_imports)] // Used by the brokers that are compiled in.
use troupe_core::redact::Redacted;
#[allow(unused_imports)] // Used with the `cli` feature.
use troupe_core::tls::TlsFiles;
use troupe_core::{QueueAdmin, Transport, TransportError};
use troupe_transports::MemoryTransport;

pub use crate::any_transport::{AnyConsumer, AnyDelivery, AnyTransport};

/// The brokers Troupe speaks; each but `Memory` needs its Cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Broker {
    /// The embedded in-memory broker (no server; one process).
    Memory,
    /// NATS JetStream (feature `nats`).
    Nats,
    /// RabbitMQ over AMQP 0-9-1 (feature `amqp`).
    Amqp,
    /// Amazon SQS or an SQS emulator (feature `sqs`).
    Sqs,
    /// Apache Kafka or another Kafka-API broker (feature `kafka`).
    Kafka,
}

impl Broker {
    /// Every broker, compiled in or not.
    pub const ALL: [Broker; 5] = [
        Broker::Memory,
        Broker::Nats,
        Broker::Amqp,
        Broker::Sqs,
        Broker::Kafka,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Broker::Memory => "memory",
            Broker::Nats => "nats",
            Broker::Amqp => "amqp",
            Broker::Sqs => "sqs",
            Broker::Kafka => "kafka",
        }
    }

    /// The Cargo feature that compiles it in (`None` for the always-present memory broker).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Broker::Memory => None,
            Broker::Nats => Some("nats"),
            Broker::Amqp => Some("amqp"),
            Broker::Sqs => Some("sqs"),
            Broker::Kafka => Some("kafka"),
        }
    }

    /// Whether this build can connect to it.
    pub fn compiled_in(self) -> bool {
        match self {
            Broker::Memory => true,
            Broker::Nats => cfg!(feature = "nats"),
            Broker::Amqp => cfg!(feature = "amqp"),
            Broker::Sqs => cfg!(feature = "sqs"),
            Broker::Kafka => cfg!(feature = "kafka"),
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
#[error("unknown broker {0:?}; expected one of: memory, nats, amqp, sqs, kafka")]
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
    /// Amazon SQS.
    #[cfg(feature = "sqs")]
    pub sqs: troupe_transports::SqsConfig,
    /// Kafka.
    #[cfg(feature = "kafka")]
    pub kafka: troupe_transports::KafkaConfig,
}

impl BrokerConfig {
    /// Addresses from the environment where set (`TROUPE_NATS_URL`, `TROUPE_AMQP_URL`,
    /// `TROUPE_SQS_URL` for an SQS endpoint such as an emulator, `TROUPE_KAFKA_BOOTSTRAP`),
    /// the 127.0.0.1 defaults (AWS itself for SQS) otherwise.
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
        #[cfg(feature = "sqs")]
        if let Ok(url) = std::env::var("TROUPE_SQS_URL") {
            config.sqs.endpoint_url = Some(url);
        }
        #[cfg(feature = "kafka")]
        if let Ok(bootstrap) = std::env::var("TROUPE_KAFKA_BOOTSTRAP") {
            config.kafka.bootstrap_servers = bootstrap;
        }
        config
    }

    /// Settings for short-lived queues, such as a demo's or a benchmark's: NATS stream
    /// `TROUPE_{NAME}` with subjects `troupe-{name}.*` whose consumers the server drops
    /// after 5 idle minutes, RabbitMQ queues that expire after 5 unused minutes.
    #[must_use]
    pub fn scratch(self, name: &str) -> Self {
        #[allow(unused_mut)]
        let mut config = self;
        #[cfg(feature = "nats")]
        {
            config.nats.stream = format!("TROUPE_{}", name.to_uppercase());
            config.nats.subject_prefix = format!("troupe-{name}");
            config.nats.consumer_inactive_threshold = Some(std::time::Duration::from_secs(300));
        }
        #[cfg(feature = "amqp")]
        {
            config.amqp.queue_expires = Some(std::time::Duration::from_secs(300));
        }
        let _ = name;
        config
    }

    /// Points SQS at `endpoint` (an emulator such as ministack, or a VPC endpoint). When the
    /// environment has no `AWS_ACCESS_KEY_ID`, it uses the placeholder keys emulators accept.
    #[cfg(feature = "sqs")]
    #[must_use]
    pub fn sqs_endpoint(mut self, endpoint: String) -> Self {
        self.sqs.endpoint_url = Some(endpoint);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            self.sqs.credentials = Some(troupe_transports::SqsCredentials::new("test", "test"));
        }
        self
    }

    /// Where `broker` is, for messages (no credentials).
    pub fn describe(&self, broker: Broker) -> String {
        match broker {
            Broker::Memory => "the embedded in-memory broker".to_owned(),
            #[cfg(feature = "nats")]
            Broker::Nats => format!("NATS at {}", Redacted(&self.nats.url)),
            #[cfg(feature = "amqp")]
            Broker::Amqp => format!("RabbitMQ at {}", Redacted(&self.amqp.url)),
            #[cfg(feature = "sqs")]
            Broker::Sqs => match &self.sqs.endpoint_url {
                Some(url) => format!("SQS at {}", Redacted(url)),
                None => format!("SQS in {}", self.sqs.region),
            },
            #[cfg(feature = "kafka")]
            Broker::Kafka => format!("Kafka at {}", Redacted(&self.kafka.bootstrap_servers)),
            #[allow(unreachable_patterns)]
            other => other.to_string(),
        }
    }

    /// Connects to `broker`.
    pub async fn connect_any(&self, broker: Broker) -> Result<AnyTransport, ConnectError> {
        let connect_error = |source| ConnectError::Connect { broker, source };
        match broker {
            Broker::Memory => Ok(MemoryTransport::new(self.memory).into()),
            #[cfg(feature = "nats")]
            Broker::Nats => troupe_transports::NatsTransport::connect(self.nats.clone())
                .await
                .map(Into::into)
                .map_err(connect_error),
            #[cfg(feature = "amqp")]
            Broker::Amqp => troupe_transports::AmqpTransport::connect(self.amqp.clone())
                .await
                .map(Into::into)
                .map_err(connect_error),
            #[cfg(feature = "sqs")]
            Broker::Sqs => troupe_transports::SqsTransport::connect(self.sqs.clone())
                .await
                .map(Into::into)
                .map_err(connect_error),
            #[cfg(feature = "kafka")]
            Broker::Kafka => troupe_transports::KafkaTransport::connect(self.kafka.clone())
                .await
                .map(Into::into)
                .map_err(connect_error),
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
            #[cfg(feature = "sqs")]
            Broker::Sqs => {
                let transport = troupe_transports::SqsTransport::connect(self.sqs.clone())
                    .await
                    .map_err(connect_error)?;
                Ok(job.run(transport).await)
            }
            #[cfg(feature = "kafka")]
            Broker::Kafka => {
                let transport = troupe_transports::KafkaTransport::connect(self.kafka.clone())
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

/// Broker address flags for command-line programs (feature `cli`), each with an
/// environment fallback. Their values may hold credentials: `--help` does not show the
/// environment's values, and `Debug` shows every URL redacted.
#[cfg(feature = "cli")]
#[derive(Clone, clap::Args)]
pub struct BrokerArgs {
    /// NATS server (`--transport nats`).
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "TROUPE_NATS_URL",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// Send each output's hop key as `Nats-Msg-Id`, so the stream drops a republished
    /// output within its duplicate window (`--transport nats`); `false` leaves that to the
    /// idempotency store alone.
    #[arg(long, env = "TROUPE_NATS_MESSAGE_IDS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub nats_message_ids: bool,
    /// RabbitMQ URL, credentials and vhost included (`--transport amqp`).
    #[arg(
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        env = "TROUPE_AMQP_URL",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// RabbitMQ management API, e.g. `http://127.0.0.1:15672` (`--transport amqp`): depth
    /// then counts every process's unacknowledged and delayed messages, which the autoscaler
    /// needs. Unset: ready messages plus this process's own.
    #[arg(long, env = "TROUPE_AMQP_MANAGEMENT_URL", hide_env_values = true)]
    pub amqp_management_url: Option<String>,
    /// Management API user (needs the `monitoring` tag).
    #[arg(long, default_value = "guest", env = "TROUPE_AMQP_MANAGEMENT_USER")]
    pub amqp_management_user: String,
    /// Management API password.
    #[arg(
        long,
        default_value = "guest",
        env = "TROUPE_AMQP_MANAGEMENT_PASSWORD",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub amqp_management_password: String,
    /// SQS endpoint, e.g. `http://127.0.0.1:4566` for a local emulator (`--transport sqs`);
    /// unset means AWS itself, with credentials and region from the `AWS_*` variables.
    #[arg(long, env = "TROUPE_SQS_URL", hide_env_values = true)]
    pub sqs_url: Option<String>,
    /// Kafka bootstrap servers, `host:port[,host:port...]` (`--transport kafka`).
    #[arg(long, default_value = "127.0.0.1:9092", env = "TROUPE_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,
    /// librdkafka property for every Kafka client, `KEY=VALUE`; repeat for more (e.g.
    /// `security.protocol=SASL_SSL`).
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = key_value, env = "TROUPE_KAFKA_PROPERTIES", value_delimiter = ',', hide_env_values = true)]
    pub kafka_properties: Vec<(String, String)>,
    /// librdkafka property for the producer only, `KEY=VALUE` (e.g. `compression.type=lz4`,
    /// `batch.num.messages=1`); a consumer would warn that it ignores it.
    #[arg(long = "kafka-producer-property", value_name = "KEY=VALUE", value_parser = key_value, env = "TROUPE_KAFKA_PRODUCER_PROPERTIES", value_delimiter = ',', hide_env_values = true)]
    pub kafka_producer_properties: Vec<(String, String)>,
    /// librdkafka property for consumers only, `KEY=VALUE` (e.g. `fetch.wait.max.ms=10`).
    #[arg(long = "kafka-consumer-property", value_name = "KEY=VALUE", value_parser = key_value, env = "TROUPE_KAFKA_CONSUMER_PROPERTIES", value_delimiter = ',', hide_env_values = true)]
    pub kafka_consumer_properties: Vec<(String, String)>,
    /// PEM bundle of CA certificates that broker and store TLS connections trust besides
    /// the system's (`tls://` NATS, `amqps://`, `rediss://`, `sslmode=require`; Kafka's
    /// `ssl.ca.location` unless a `--kafka-property` sets it).
    #[arg(long, env = "TROUPE_TLS_CA_FILE", value_name = "PATH")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for brokers and stores that verify clients (mutual TLS);
    /// needs `--tls-key-file`.
    #[arg(
        long,
        env = "TROUPE_TLS_CERT_FILE",
        value_name = "PATH",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert-file`.
    #[arg(
        long,
        env = "TROUPE_TLS_KEY_FILE",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<std::path::PathBuf>,
}

#[cfg(feature = "cli")]
impl fmt::Debug for BrokerArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties = |list: &[(String, String)]| -> Vec<(String, &'static str)> {
            // Keys only: a property's value may be a credential.
            list.iter()
                .map(|(k, _)| (k.clone(), troupe_core::redact::MASK))
                .collect()
        };
        f.debug_struct("BrokerArgs")
            .field("nats_url", &Redacted(&self.nats_url))
            .field("nats_message_ids", &self.nats_message_ids)
            .field("amqp_url", &Redacted(&self.amqp_url))
            .field(
                "amqp_management_url",
                &self.amqp_management_url.as_deref().map(Redacted),
            )
            .field("amqp_management_user", &self.amqp_management_user)
            .field("amqp_management_password", &troupe_core::redact::MASK)
            .field("sqs_url", &self.sqs_url.as_deref().map(Redacted))
            .field("kafka_bootstrap", &Redacted(&self.kafka_bootstrap))
            .field("kafka_properties", &properties(&self.kafka_properties))
            .field(
                "kafka_producer_properties",
                &properties(&self.kafka_producer_properties),
            )
            .field(
                "kafka_consumer_properties",
                &properties(&self.kafka_consumer_properties),
            )
            .field("tls", &self.tls_files())
            .finish()
    }
}

/// Which queue a process serves and on which broker (feature `cli`): the flags an actor
/// process (`troupe sidecar`, `troupe-gpu-worker`) shares, each with a `TROUPE_*` fallback.
/// The actor's own name stays with the program, which may read it from elsewhere too.
#[cfg(feature = "cli")]
#[derive(Clone, clap::Args)]
pub struct QueueArgs {
    /// Namespace part of queue names.
    #[arg(long, env = "TROUPE_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Prefix of queue names.
    #[arg(long, env = "TROUPE_QUEUE_PREFIX", default_value = "asya")]
    pub queue_prefix: String,
    /// The broker: memory, nats, amqp (or rabbitmq), sqs, kafka.
    #[arg(long, env = "TROUPE_TRANSPORT", default_value = "memory")]
    pub transport: Broker,
    /// Broker addresses and credentials.
    #[command(flatten)]
    pub brokers: BrokerArgs,
    /// AWS region of the SQS queues.
    #[arg(long, env = "TROUPE_SQS_REGION", default_value = "us-east-1")]
    pub sqs_region: String,
    /// Where hop records are kept for effectively-once processing: `memory` (this process
    /// only: lost on restart, not shared by replicas),
    /// `redis://[user:password@]host[:port][/db]` or
    /// `postgres://[user:password@]host[:port]/database[?sslmode=require]` or `nats-kv://BUCKET`
    /// (a JetStream key-value bucket on the `--nats-url` server, or
    /// `nats-kv://[user:password@]host[:port]/BUCKET`), shared and durable.
    #[arg(long, env = "TROUPE_STORE", default_value = "memory", hide_env_values = true)]
    pub store: troupe_layers::StoreUrl,
    /// Prefix of the store's keys, so several meshes can share one server.
    #[arg(long, env = "TROUPE_STORE_PREFIX", default_value = "troupe:hop:")]
    pub store_prefix: String,
    /// Whether this actor reports the progress of gateway tasks (started, outputs, streamed
    /// upstream events) on the broker's task events queue. Off, tasks still end in their
    /// right state; only their progress misses this actor.
    #[arg(long, env = "TROUPE_TASK_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub task_events: bool,
    /// The gateway this actor learns canceled and paused tasks from (`http://host:port`),
    /// polled every half second, never per envelope. Without it, cancel and pause stop a
    /// task only at the gateway: its envelopes run to the end.
    #[arg(long, env = "TROUPE_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// The API key to send to `--gateway-url`, when the gateway asks for one.
    #[arg(long, env = "TROUPE_GATEWAY_API_KEY", hide_env_values = true)]
    pub gateway_api_key: Option<String>,
}

/// The gateway's API key is shown as set or not, never as itself.
#[cfg(feature = "cli")]
impl fmt::Debug for QueueArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueArgs")
            .field("namespace", &self.namespace)
            .field("queue_prefix", &self.queue_prefix)
            .field("transport", &self.transport)
            .field("brokers", &self.brokers)
            .field("sqs_region", &self.sqs_region)
            .field("store", &self.store)
            .field("store_prefix", &self.store_prefix)
            .field("task_events", &self.task_events)
            .field("gateway_url", &self.gateway_url.as_deref().map(Redacted))
            .field(
                "gateway_api_key",
                &self.gateway_api_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[cfg(feature = "cli")]
impl QueueArgs {
    /// The broker settings these flags name, the SQS region included.
    pub fn broker_config(&self) -> BrokerConfig {
        #[allow(unused_mut)]
        let mut config = self.brokers.config();
        #[cfg(feature = "sqs")]
        {
            config.sqs.region = self.sqs_region.clone();
        }
        config
    }

    /// Queue naming from the prefix and namespace.
    pub fn naming(&self) -> Result<troupe_core::QueueNaming, troupe_core::NameError> {
        troupe_core::QueueNaming::new(&self.queue_prefix, &self.namespace)
    }
}

/// How long a finished hop is remembered by the store `--store` names: longer than any
/// redelivery can come late (the runner gives up after about 20 minutes of failures).
#[cfg(feature = "cli")]
pub const HOP_RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[cfg(feature = "cli")]
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(feature = "cli")]
impl BrokerArgs {
    /// The TLS files the `--tls-*` flags name, for every broker and store client.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
        }
    }

    /// The broker settings these flags name.
    pub fn config(&self) -> BrokerConfig {
        #[allow(unused_mut)]
        let mut config = BrokerConfig::default();
        #[cfg(feature = "nats")]
        {
            config.nats.url = self.nats_url.clone();
            config.nats.tls = self.tls_files();
            config.nats.message_ids = self.nats_message_ids;
        }
        #[cfg(feature = "amqp")]
        {
            config.amqp.url = self.amqp_url.clone();
            config.amqp.tls = self.tls_files();
            config.amqp.management =
                self.amqp_management_url
                    .as_ref()
                    .map(|url| troupe_transports::ManagementApi {
                        url: url.clone(),
                        user: self.amqp_management_user.clone(),
                        password: self.amqp_management_password.clone(),
                    });
        }
        #[cfg(feature = "sqs")]
        if let Some(url) = &self.sqs_url {
            config = config.sqs_endpoint(url.clone());
        }
        #[cfg(feature = "kafka")]
        {
            config.kafka.bootstrap_servers = self.kafka_bootstrap.clone();
            let kafka = &mut config.kafka;
            kafka.properties.extend(self.kafka_properties.iter().cloned());
            kafka
                .producer_properties
                .extend(self.kafka_producer_properties.iter().cloned());
            kafka
                .consumer_properties
                .extend(self.kafka_consumer_properties.iter().cloned());
            // librdkafka reads the files itself; a property set explicitly wins.
            let tls = self.tls_files();
            for (key, path) in [
                ("ssl.ca.location", &tls.ca_file),
                ("ssl.certificate.location", &tls.cert_file),
                ("ssl.key.location", &tls.key_file),
            ] {
                if let Some(path) = path {
                    kafka
                        .properties
                        .entry(key.to_owned())
                        .or_insert_with(|| path.display().to_string());
                }
            }
        }
        config
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
        assert!(err.contains("memory, nats, amqp, sqs, kafka"), "{err}");
    }

    #[cfg(all(feature = "cli", feature = "kafka", feature = "nats", feature = "amqp"))]
    #[test]
    fn tls_flags_reach_every_client_and_a_kafka_property_wins() {
        use clap::Parser;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            brokers: BrokerArgs,
        }
        let cli = Cli::try_parse_from([
            "troupe",
            "--tls-ca-file",
            "/etc/troupe/ca.pem",
            "--tls-cert-file",
            "/etc/troupe/client.pem",
            "--tls-key-file",
            "/etc/troupe/client.key",
            "--kafka-property",
            "ssl.ca.location=/etc/kafka/ca.pem",
        ])
        .expect("flags parse");
        let config = cli.brokers.config();
        assert_eq!(config.nats.tls, cli.brokers.tls_files());
        assert_eq!(config.amqp.tls, cli.brokers.tls_files());
        assert_eq!(
            config.nats.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/troupe/ca.pem"))
        );
        let kafka = &config.kafka.properties;
        assert_eq!(
            kafka["ssl.ca.location"], "/etc/kafka/ca.pem",
            "the explicit property wins"
        );
        assert_eq!(kafka["ssl.certificate.location"], "/etc/troupe/client.pem");
        assert_eq!(kafka["ssl.key.location"], "/etc/troupe/client.key");

        let half = Cli::try_parse_from(["troupe", "--tls-cert-file", "/etc/troupe/client.pem"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(half.contains("--tls-key-file"), "{half}");
    }

    #[cfg(all(feature = "cli", feature = "kafka"))]
    #[test]
    fn kafka_properties_reach_the_clients_they_are_for() {
        use clap::Parser;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            brokers: BrokerArgs,
        }
        let cli = Cli::try_parse_from([
            "troupe",
            "--kafka-property",
            "security.protocol=SASL_SSL",
            "--kafka-producer-property",
            "batch.num.messages=1",
            "--kafka-producer-property",
            "compression.type = lz4",
            "--kafka-consumer-property",
            "fetch.wait.max.ms=10",
        ])
        .expect("flags parse");
        let kafka = cli.brokers.config().kafka;
        let pairs = |map: &std::collections::BTreeMap<String, String>| {
            map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()
        };
        assert_eq!(pairs(&kafka.properties), ["security.protocol=SASL_SSL"]);
        assert_eq!(
            pairs(&kafka.producer_properties),
            ["batch.num.messages=1", "compression.type=lz4"]
        );
        assert_eq!(pairs(&kafka.consumer_properties), ["fetch.wait.max.ms=10"]);

        let bad = Cli::try_parse_from(["troupe", "--kafka-consumer-property", "fetch.wait.max.ms"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(bad.contains("expected KEY=VALUE"), "{bad}");
    }
}
