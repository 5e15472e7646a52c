//! TLS for every broker and store client, against real servers that require it: a NATS
//! server, a Redis server and a RabbitMQ node of the test's own (mutual TLS, each with its
//! own TLS listener), Kafka (a tansu of the test's own behind a TLS terminator, `socat`,
//! since tansu has no TLS listener) and the machine's PostgreSQL (`ssl = on` with its
//! snakeoil certificate, as Debian installs it). Each client must work when it trusts the
//! server's CA, and must refuse the server when it does not: the second proves the
//! connection really is TLS and really is verified.
//!
//! The servers this test starts listen on 127.0.0.1 and are stopped by their process id.
#![cfg(all(
    feature = "nats",
    feature = "amqp",
    feature = "redis",
    feature = "postgres",
    feature = "nats-kv"
))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/local_server.rs"]
mod local_server;
#[path = "support/tls_certs.rs"]
mod tls_certs;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use bytes::Bytes;
use local_server::{free_port, spawn_listening};
use troupe::core::tls::TlsFiles;
use troupe::layers::idempotency::Claim;
use troupe::layers::{IdempotencyStore, StoreUrl};
use troupe::transports::{AmqpConfig, AmqpTransport, NatsConfig, NatsTransport};
use troupe::{ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, Transport};

/// A server this test started; stopped (by its id) when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(program: &str, args: &[&str], port: u16) -> Server {
    Server(spawn_listening(program, args, port))
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("troupe-tls-{}-{name}", std::process::id()))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Trusts nothing but the system roots, presents the client certificate.
fn untrusting(files: &TlsFiles) -> TlsFiles {
    TlsFiles {
        ca_file: None,
        ..files.clone()
    }
}

/// Publishes one message to `queue` and reads it back.
async fn round_trip<T: Transport + QueueAdmin>(transport: &T, queue: &str) {
    transport.ensure_queue(queue).await.unwrap();
    transport
        .publish(queue, Bytes::from_static(b"over tls"), PublishOptions::default())
        .await
        .unwrap();
    let mut consumer = transport.consume(queue, ConsumeOptions::default()).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("the message comes back")
        .unwrap()
        .unwrap();
    assert_eq!(&delivery.body()[..], b"over tls");
    delivery.ack().await.unwrap();
}

/// Claims a hop in `store` and finds it claimed.
async fn store_works(store: &impl IdempotencyStore, key: &str) {
    assert!(matches!(
        store.claim(key, Duration::from_secs(30)).await.unwrap(),
        Claim::Acquired
    ));
    assert!(matches!(
        store.claim(key, Duration::from_secs(30)).await.unwrap(),
        Claim::InProgress
    ));
}

#[tokio::test]
async fn nats_transport_and_kv_store_over_mutual_tls() {
    let dir = scratch("nats");
    let certs = tls_certs::generate(&dir);
    let port = free_port();
    let jetstream = dir.join("js");
    let _nats = start(
        "nats-server",
        &[
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            path(&jetstream),
            "--tlsverify",
            "--tlscert",
            path(&certs.server_cert),
            "--tlskey",
            path(&certs.server_key),
            "--tlscacert",
            path(&certs.ca),
        ],
        port,
    );
    let url = format!("tls://127.0.0.1:{port}");
    let config = |tls: TlsFiles| NatsConfig {
        url: url.clone(),
        tls,
        ..NatsConfig::default()
    };

    let transport = NatsTransport::connect(config(certs.client_files()))
        .await
        .unwrap();
    round_trip(&transport, "tls-check").await;
    let store: StoreUrl = format!("nats-kv://127.0.0.1:{port}/TLS_HOPS").parse().unwrap();
    let store = store
        .connect("tls:", Duration::from_secs(60), &certs.client_files())
        .await
        .unwrap();
    store_works(&store, "nats-kv").await;

    let untrusted = NatsTransport::connect(config(untrusting(&certs.client_files())))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        untrusted.contains("cannot connect to NATS"),
        "a server whose CA is not trusted is refused: {untrusted}"
    );
    let anonymous = NatsTransport::connect(config(TlsFiles {
        ca_file: Some(certs.ca.clone()),
        ..TlsFiles::default()
    }))
    .await;
    assert!(
        anonymous.is_err(),
        "the server refuses a client without a certificate"
    );
    let missing = NatsTransport::connect(config(TlsFiles {
        ca_file: Some(dir.join("nowhere.pem")),
        ..TlsFiles::default()
    }))
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        missing.contains("nowhere.pem"),
        "a missing file is named: {missing}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn redis_store_over_mutual_tls() {
    let dir = scratch("redis");
    let certs = tls_certs::generate(&dir);
    let port = free_port();
    let _redis = start(
        "redis-server",
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-cert-file",
            path(&certs.server_cert),
            "--tls-key-file",
            path(&certs.server_key),
            "--tls-ca-cert-file",
            path(&certs.ca),
            "--tls-auth-clients",
            "yes",
        ],
        port,
    );
    let url: StoreUrl = format!("rediss://127.0.0.1:{port}").parse().unwrap();
    let store = url
        .connect("tls:", Duration::from_secs(60), &certs.client_files())
        .await
        .unwrap();
    store_works(&store, "redis").await;

    let untrusted = url
        .connect(
            "tls:",
            Duration::from_secs(60),
            &untrusting(&certs.client_files()),
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        untrusted.contains("cannot connect to Redis"),
        "a server whose CA is not trusted is refused: {untrusted}"
    );
    let plain: StoreUrl = format!("redis://127.0.0.1:{port}").parse().unwrap();
    assert!(
        plain
            .connect("tls:", Duration::from_secs(60), &TlsFiles::default())
            .await
            .is_err(),
        "the TLS port does not speak plain text"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A RabbitMQ node of the test's own beside the machine's, in its own process group so
/// that the test stops exactly what it started (the server script runs the Erlang VM as
/// a child, not by exec).
struct RabbitNode(Child);

impl RabbitNode {
    /// Starts a node named `name` whose only listener is TLS on `port`, with `config`,
    /// its files under `dir` (owned by the `rabbitmq` user, as the server runs as it).
    fn start(name: &str, dir: &Path, config: &str, port: u16) -> RabbitNode {
        use std::os::unix::process::CommandExt;
        let conf = dir.join("rabbitmq.conf");
        std::fs::write(&conf, config).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let owned = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", path(dir)])
            .status()
            .unwrap();
        assert!(
            owned.success(),
            "chown to the rabbitmq user (RabbitMQ must be installed)"
        );
        let child = std::process::Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "/usr/lib/rabbitmq/bin/rabbitmq-server"])
            .env("RABBITMQ_NODENAME", format!("{name}@localhost"))
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("mnesia/feature_flags"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("RabbitMQ must be installed (bash .ci/run installs it): {e}"));
        let mut node = RabbitNode(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(dir.join(format!("log/{name}@localhost.log")));
            assert!(
                std::time::Instant::now() < deadline && node.0.try_wait().unwrap().is_none(),
                "the RabbitMQ node did not listen on 127.0.0.1:{port}: {log:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // The whole group: runuser, the server script and the Erlang VM under it.
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

/// RabbitMQ's own TLS listener (a node of the test's own, since the machine's would need
/// its configuration changed and a restart), requiring a client certificate.
#[tokio::test]
async fn rabbitmq_transport_over_mutual_tls() {
    let dir = scratch("amqp");
    let certs = tls_certs::generate(&dir);
    let port = free_port();
    let config = format!(
        "listeners.tcp = none\n\
         listeners.ssl.default = 127.0.0.1:{port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = true\n\
         loopback_users = none\n",
        path(&certs.ca),
        path(&certs.server_cert),
        path(&certs.server_key)
    );
    let _node = RabbitNode::start(&format!("troupe-tls-{}", std::process::id()), &dir, &config, port);
    let config = |tls: TlsFiles| AmqpConfig {
        url: format!("amqps://guest:guest@127.0.0.1:{port}/%2f"),
        queue_expires: Some(Duration::from_secs(60)),
        tls,
        ..AmqpConfig::default()
    };
    let transport = AmqpTransport::connect(config(certs.client_files()))
        .await
        .unwrap();
    round_trip(&transport, &format!("tls-check-{}", std::process::id())).await;

    let untrusted = AmqpTransport::connect(config(untrusting(&certs.client_files())))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        untrusted.contains("cannot connect to RabbitMQ") && !untrusted.contains("guest:guest"),
        "a server whose CA is not trusted is refused, the password not shown: {untrusted}"
    );
    let no_certificate = TlsFiles {
        cert_file: None,
        key_file: None,
        ..certs.client_files()
    };
    let anonymous = AmqpTransport::connect(config(no_certificate)).await;
    assert!(
        anonymous.is_err(),
        "the listener requires a client certificate, so a client without one is refused"
    );
    drop(transport);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tansu binary `.ci/run` installs (`TROUPE_TANSU`), else `tansu` on the `PATH`.
#[cfg(all(feature = "kafka", feature = "cli"))]
fn tansu() -> String {
    std::env::var("TROUPE_TANSU").unwrap_or_else(|_| "tansu".to_owned())
}

/// Kafka over mutual TLS, configured by the binaries' own flags (`--tls-*` and
/// `--kafka-property security.protocol=ssl`). tansu speaks no TLS itself, so a tansu of the
/// test's own sits behind a TLS terminator and advertises the terminator's port: every
/// connection librdkafka makes, the bootstrap one and the broker ones its metadata names,
/// is TLS and verified.
#[cfg(all(feature = "kafka", feature = "cli"))]
#[tokio::test]
async fn kafka_transport_over_mutual_tls() {
    use clap::Parser;
    use troupe::broker::BrokerArgs;
    use troupe::transports::KafkaTransport;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        brokers: BrokerArgs,
    }

    let dir = scratch("kafka");
    let certs = tls_certs::generate(&dir);
    let (plain, tls) = (free_port(), free_port());
    let _tansu = start(
        &tansu(),
        &[
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{plain}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{tls}"),
            "--storage-engine",
            "memory://tansu/",
        ],
        plain,
    );
    let listen = format!(
        "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
        path(&certs.server_cert),
        path(&certs.server_key),
        path(&certs.ca)
    );
    let _proxy = start("socat", &[&listen, &format!("TCP:127.0.0.1:{plain}")], tls);
    let connect = |ca: &Path| {
        let flags = Flags::parse_from([
            "troupe",
            "--kafka-bootstrap",
            &format!("127.0.0.1:{tls}"),
            "--kafka-property",
            "security.protocol=ssl",
            // tansu takes one record per produce batch (see transports/tests/kafka_tansu.rs).
            "--kafka-producer-property",
            "batch.num.messages=1",
            "--tls-ca-file",
            path(ca),
            "--tls-cert-file",
            path(&certs.client_cert),
            "--tls-key-file",
            path(&certs.client_key),
        ]);
        let mut config = flags.brokers.config().kafka;
        config.request_timeout = Duration::from_secs(5);
        KafkaTransport::connect(config)
    };
    let transport = connect(&certs.ca).await.unwrap();
    round_trip(&transport, &format!("tls-check-{}", std::process::id())).await;

    // A CA of its own that signed nothing the server shows: the handshake must fail.
    let other = tls_certs::generate(&dir.join("other"));
    let refused = match connect(&other.ca).await {
        Err(error) => error.to_string(),
        Ok(untrusting) => untrusting
            .ensure_queue("tls-refused")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    };
    // librdkafka reports a failed handshake as a transport failure; the same server with
    // the right CA worked above, so the CA is what was refused.
    assert!(
        refused.contains("cannot reach Kafka"),
        "a server whose certificate the CA did not sign is refused: {refused:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The machine's PostgreSQL, reached as `host`.
fn postgres_url(host: &str, query: &str) -> String {
    let url = std::env::var("TROUPE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    format!("{}?{query}", url.replace("@127.0.0.1:", &format!("@{host}:")))
}

/// Debian's self-signed certificate for `localhost`, which its PostgreSQL serves.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

#[tokio::test]
async fn postgres_store_with_sslmode_require_verifies_the_server() {
    assert!(
        Path::new(SNAKEOIL).exists(),
        "this test needs PostgreSQL with ssl = on and Debian's snakeoil certificate at {SNAKEOIL}"
    );
    let trusting = TlsFiles {
        ca_file: Some(SNAKEOIL.into()),
        ..TlsFiles::default()
    };
    // `require` refuses a server that does not speak TLS, so a working store is a TLS one.
    let require: StoreUrl = postgres_url("localhost", "sslmode=require").parse().unwrap();
    let store = require
        .connect("tls:", Duration::from_secs(60), &trusting)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL over TLS (ssl = on in postgresql.conf): {e}"));
    store_works(&store, &format!("postgres-{}", std::process::id())).await;

    // Debian also lists the snakeoil certificate among the system's (/etc/ssl/certs), so
    // the verification shown here is of the name: the certificate is for `localhost` only.
    let by_address: StoreUrl = postgres_url("127.0.0.1", "sslmode=require").parse().unwrap();
    let mismatch = by_address
        .connect("tls:", Duration::from_secs(60), &trusting)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        mismatch.contains("cannot connect to PostgreSQL") && mismatch.contains("certificate"),
        "a certificate for another name is refused: {mismatch}"
    );
}
