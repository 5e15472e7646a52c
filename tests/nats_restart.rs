//! NATS JetStream restart: the local `nats-server` is stopped and started again (same
//! arguments, same JetStream store) while a 3-actor pipeline runs; nothing may be lost.
//! See `support/restart.rs`.
#![cfg(feature = "failure-tests")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/brokers.rs"]
mod brokers;
mod common;
#[path = "support/restart.rs"]
mod restart;

use std::time::Duration;

fn restart_nats_server() {
    let (pid, argv) = restart::find_process("nats-server");
    restart::run("kill", &["-TERM", &pid.to_string()]);
    let gone_by = std::time::Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < gone_by,
            "nats-server {pid} did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Down for a moment, as in a real restart, then the same server again.
    std::thread::sleep(Duration::from_secs(1));
    let (program, args) = argv.split_first().unwrap();
    let mut daemon = vec!["--start", "--background", "--exec", program.as_str(), "--"];
    daemon.extend(args.iter().map(String::as_str));
    restart::run("start-stop-daemon", &daemon);
    restart::wait_for_port(4222, Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_mid_run_loses_nothing() {
    restart::restart_mid_run(troupe::broker::Broker::Nats, restart_nats_server).await;
}
