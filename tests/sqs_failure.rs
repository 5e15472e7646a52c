//! Broker failure test on SQS (the ministack emulator): the middle actor of a 3-actor pipeline is killed with
//! SIGKILL and restarted twice during 10,000 envelopes; see `support/failure.rs`.
#![cfg(feature = "failure-tests")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/brokers.rs"]
mod brokers;
mod common;
#[path = "support/failure.rs"]
mod failure;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_middle_actor_twice_loses_and_duplicates_nothing() {
    failure::kill_the_middle_actor_twice(troupe::broker::Broker::Sqs).await;
}
