//! Credentials never reach the output of the shipped `troupe-autoscaler`: passwords planted
//! in its NATS and RabbitMQ URLs and in the RabbitMQ management password, while it probes
//! the queues of two AsyncActors served by a fake Kubernetes API. Each broker is tried
//! unreachable and reachable (NATS takes any credentials; RabbitMQ refuses them), at debug
//! log level; every line of stdout and stderr is searched.
//!
//! Needs NATS (4222) and RabbitMQ with its management API (5672, 15672) on 127.0.0.1:
//! `bash .ci/run` starts them.
#![cfg(all(feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../../tests/support/output_scan.rs"]
mod output_scan;
mod support;

use std::time::Duration;

use output_scan::{PASSWORD, assert_clean};
use serde_json::json;
use support::fake_kube::FakeKube;

/// A kubeconfig that points at `server`, without credentials.
fn kubeconfig(server: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("troupe-secrets-kubeconfig-{}", std::process::id()));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n    namespace: default\n\
         current-context: fake\n"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_passwords_stay_out_of_the_autoscaler_output() {
    let kube = FakeKube::start().await.unwrap();
    for broker in ["nats", "amqp"] {
        let name = format!("secret-{broker}");
        kube.put_actor(json!({
            "apiVersion": "asya.sh/v1alpha1",
            "kind": "AsyncActor",
            "metadata": { "name": name, "namespace": "default" },
            "spec": {
                "actor": name,
                "transport": { "type": broker },
                "scaleTargetRef": { "name": name },
                "scaling": { "pollingInterval": 1 },
            }
        }));
        kube.put_deployment("default", &name, 0);
    }
    let config = kubeconfig(&kube.url());
    for (case, port, management) in [("nothing listening", 1, 1), ("brokers answering", 4222, 15672)] {
        let amqp_port = if port == 1 { 1 } else { 5672 };
        let env = [
            ("KUBECONFIG", config.display().to_string()),
            (
                "TROUPE_NATS_URL",
                format!("nats://troupe:{PASSWORD}@127.0.0.1:{port}"),
            ),
            (
                "TROUPE_AMQP_URL",
                format!("amqp://guest:{PASSWORD}@127.0.0.1:{amqp_port}/%2f"),
            ),
            (
                "TROUPE_AMQP_MANAGEMENT_URL",
                format!("http://127.0.0.1:{management}"),
            ),
            ("TROUPE_AMQP_MANAGEMENT_PASSWORD", PASSWORD.to_owned()),
        ];
        // It runs until stopped: a few polling rounds, then it is stopped by its id.
        let out = tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
            output_scan::run(
                env!("CARGO_BIN_EXE_troupe-autoscaler"),
                &["run", "--metrics-addr", "127.0.0.1:0"],
                &env,
                Duration::from_secs(8),
            )
        })
        .await
        .unwrap();
        for broker in ["nats", "amqp"] {
            assert!(
                out.contains(&format!("secret-{broker}")),
                "{case}: the autoscaler probed secret-{broker}: {out}"
            );
        }
        assert_clean(case, &out, PASSWORD);
    }
    let _ = std::fs::remove_file(config);
}
