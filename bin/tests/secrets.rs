//! Credentials never reach the output of the shipped `troupe` binary: a password planted in
//! every broker and store URL, through failed connects (nobody listening, credentials
//! refused) and successful ones, at debug log level, and in `--help` with the URLs in the
//! environment. Every line of stdout and stderr is searched for it.
//!
//! Needs NATS (4222), RabbitMQ (5672) and Redis (6379) on 127.0.0.1: `bash .ci/run` starts
//! them.
#![cfg(all(feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../../tests/support/output_scan.rs"]
mod output_scan;

use std::time::Duration;

use output_scan::{PASSWORD, assert_clean};

/// Runs `troupe args` with `env` at debug log level; returns stdout and stderr together.
/// Bounded: every case here ends by itself (an error, or a refusal) well within the limit.
fn run(args: &[&str], env: &[(&str, String)]) -> String {
    output_scan::run(env!("CARGO_BIN_EXE_troupe"), args, env, Duration::from_secs(60))
}

fn ghost() -> String {
    format!("ghost{}", std::process::id())
}

#[test]
fn nats_passwords_stay_out_of_send_and_tail() {
    let unreachable = format!("nats://troupe:{PASSWORD}@127.0.0.1:1");
    let reachable = format!("nats://troupe:{PASSWORD}@127.0.0.1:4222");
    let ghost = ghost();
    let out = run(
        &[
            "send",
            "--transport",
            "nats",
            "--nats-url",
            &unreachable,
            "--actor",
            "a",
        ],
        &[],
    );
    assert!(out.contains("127.0.0.1:1"), "{out}");
    assert_clean("send, nothing listening", &out, PASSWORD);
    // A server without authentication takes any credentials: the connect succeeds, and
    // the unknown actor is refused.
    let out = run(
        &[
            "send",
            "--transport",
            "nats",
            "--nats-url",
            &reachable,
            "--actor",
            &ghost,
        ],
        &[],
    );
    assert!(out.contains("does not exist"), "{out}");
    assert_clean("send, connected", &out, PASSWORD);
    let out = run(
        &["tail", "--transport", "nats", "x-sink", "--count", "0"],
        &[("TROUPE_NATS_URL", unreachable.clone())],
    );
    assert_clean("tail, nothing listening", &out, PASSWORD);
    // `tail --store`: a store that refuses, then one that takes any password (Redis
    // without authentication accepts the default user's), given by flag and by variable.
    for (redis, what) in [
        (
            format!("redis://troupe:{PASSWORD}@127.0.0.1:1"),
            "tail --store, nothing listening",
        ),
        (
            format!("redis://:{PASSWORD}@127.0.0.1:6379"),
            "tail --store, connected",
        ),
    ] {
        let args = ["tail", "--transport", "nats", "x-sink", "--count", "0"];
        let out = run(&[&args[..], &["--store", &redis]].concat(), &[]);
        assert_clean(what, &out, PASSWORD);
        let out = run(&args, &[("TROUPE_TAIL_STORE", redis.clone())]);
        assert_clean(what, &out, PASSWORD);
    }
    let out = run(
        &["tail", "--help"],
        &[("TROUPE_TAIL_STORE", format!("redis://:{PASSWORD}@h"))],
    );
    assert!(out.contains("--store"), "{out}");
    assert_clean("tail --help", &out, PASSWORD);
    let out = run(&["send", "--help"], &[("TROUPE_NATS_URL", reachable)]);
    assert!(out.contains("--nats-url"), "{out}");
    assert_clean("send --help", &out, PASSWORD);
}

/// `troupe send` to `actor` over RabbitMQ at `url`.
fn send_over_amqp(url: &str, actor: &str) -> String {
    run(
        &["send", "--transport", "amqp", "--amqp-url", url, "--actor", actor],
        &[],
    )
}

/// `troupe sidecar` for actor `a` over NATS with `extra` flags and `env`; the runtime it
/// waits for never comes.
fn sidecar(extra: &[&str], env: &[(&str, String)]) -> String {
    let mut args = vec![
        "sidecar",
        "--actor",
        "a",
        "--transport",
        "nats",
        "--metrics-addr",
        "127.0.0.1:0",
        "--socket-dir",
        "/nonexistent",
    ];
    args.extend_from_slice(extra);
    run(&args, env)
}

#[test]
fn amqp_passwords_stay_out_of_send() {
    let ghost = ghost();
    for (case, url) in [
        (
            "nothing listening",
            format!("amqp://guest:{PASSWORD}@127.0.0.1:1/%2f"),
        ),
        (
            "credentials refused",
            format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/%2f"),
        ),
    ] {
        let out = send_over_amqp(&url, &ghost);
        assert!(out.contains("RabbitMQ"), "{case}: {out}");
        assert_clean(case, &out, PASSWORD);
    }
    // Connected with the broker's real account: even its user name is not shown.
    let out = send_over_amqp("amqp://guest:guest@127.0.0.1:5672/%2f", &ghost);
    assert!(out.contains("does not exist"), "{out}");
    assert_clean("connected", &out, "guest");
}

#[test]
fn store_passwords_stay_out_of_the_sidecar() {
    // This Redis has no password, so one in the URL is refused at AUTH; the port-1 one is
    // unreachable. Either way the sidecar stops at start with the store's error.
    for url in [
        format!("redis://:{PASSWORD}@127.0.0.1:6379"),
        format!("redis://troupe:{PASSWORD}@127.0.0.1:1"),
    ] {
        let out = sidecar(&[], &[("TROUPE_STORE", url.clone())]);
        assert!(out.contains("Redis"), "{out}");
        assert_clean("sidecar --store", &out, PASSWORD);
    }
    // A role this PostgreSQL does not have is refused at start-up; port 1 is unreachable.
    for url in [
        format!(
            "postgres://nobody{}:{PASSWORD}@127.0.0.1:5432/test",
            std::process::id()
        ),
        format!("postgresql://troupe:{PASSWORD}@127.0.0.1:1/troupe"),
    ] {
        let out = sidecar(&[], &[("TROUPE_STORE", url.clone())]);
        assert!(out.contains("PostgreSQL"), "{out}");
        assert_clean("sidecar --store", &out, PASSWORD);
    }
}

#[test]
fn the_memory_store_on_a_real_broker_is_warned_about_at_start() {
    let out = sidecar(&["--runtime-ready-timeout", "1s"], &[]);
    assert!(
        out.contains("effectively-once does not survive a restart"),
        "{out}"
    );
}

/// A SASL password among the Kafka properties: refused by a broker without SASL (tansu on
/// 9092), and nobody listening on port 1.
#[cfg(feature = "kafka")]
#[test]
fn kafka_sasl_passwords_stay_out_of_send() {
    let ghost = ghost();
    let properties = format!(
        "security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN,sasl.username=troupe,sasl.password={PASSWORD}"
    );
    for bootstrap in ["127.0.0.1:1", "127.0.0.1:9092"] {
        let out = run(
            &[
                "send",
                "--transport",
                "kafka",
                "--kafka-bootstrap",
                bootstrap,
                "--actor",
                &ghost,
            ],
            &[("TROUPE_KAFKA_PROPERTIES", properties.clone())],
        );
        assert!(out.to_lowercase().contains("kafka"), "{bootstrap}: {out}");
        assert_clean(&format!("kafka at {bootstrap}"), &out, PASSWORD);
    }
}

/// An AWS secret key in the environment, with nobody listening and with the local SQS
/// emulator (which takes any key).
#[cfg(feature = "sqs")]
#[test]
fn sqs_secret_keys_stay_out_of_send() {
    let ghost = ghost();
    let emulator = std::env::var("TROUPE_SQS_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
    for endpoint in ["http://127.0.0.1:1".to_owned(), emulator] {
        let out = run(
            &[
                "send",
                "--transport",
                "sqs",
                "--sqs-url",
                &endpoint,
                "--actor",
                &ghost,
            ],
            &[
                ("AWS_ACCESS_KEY_ID", "AKIATROUPETEST".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", PASSWORD.to_owned()),
                ("AWS_REGION", "us-east-1".to_owned()),
            ],
        );
        assert!(
            out.contains("SQS") || out.contains("does not exist"),
            "{endpoint}: {out}"
        );
        assert_clean(&format!("sqs at {endpoint}"), &out, PASSWORD);
    }
}
