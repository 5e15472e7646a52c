//! RabbitMQ restart: the local node is stopped and started again while a 3-actor pipeline
//! runs; the mesh must reconnect and lose nothing. See `support/restart.rs`.
#![cfg(feature = "failure-tests")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/brokers.rs"]
mod brokers;
mod common;
#[path = "support/restart.rs"]
mod restart;

use std::time::Duration;

fn restart_rabbitmq() {
    restart::find_process("beam.smp");
    restart::run("rabbitmqctl", &["stop"]);
    restart::run("rabbitmq-server", &["-detached"]);
    restart::wait_for_port(5672, Duration::from_secs(90));
    restart::run("rabbitmqctl", &["await_startup", "--timeout", "90"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_rabbitmq_mid_run_loses_nothing() {
    restart::restart_mid_run(troupe::broker::Broker::Amqp, restart_rabbitmq).await;
}
