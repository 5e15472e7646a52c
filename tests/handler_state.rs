//! The actor host opens the actor's handler state in its store and hands it to the handler
//! (`HandlerContext::state`): what one process writes, another process of the actor reads
//! (PostgreSQL, `TROUPE_POSTGRES_URL`), and the embedded broker needs no server.
#![cfg(all(feature = "cli", feature = "http", feature = "postgres"))]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use troupe::broker::{Broker, BrokerConfig};
use troupe::host::ActorHost;
use troupe::layers::StoreUrl;
use troupe::layers::state::{AnyStateStore, StateLimits, StateStore};
use troupe::{Envelope, HandlerError, Outcome, handler_fn};

fn postgres() -> StoreUrl {
    StoreUrl::Postgres(
        std::env::var("TROUPE_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
    )
}

/// Starts a host for `actor` with handler state, and returns the state its handler got.
async fn state_of_a_host(actor: &str) -> AnyStateStore {
    let host = ActorHost::new(actor, Broker::Memory, BrokerConfig::from_env())
        .store(postgres(), "troupe-test:hop:")
        .handler_state(StateLimits::default())
        .start()
        .await
        .expect("the host starts (PostgreSQL must be running: bash .ci/run starts it)");
    let shutdown = host.shutdown();
    let given: Arc<Mutex<Option<AnyStateStore>>> = Arc::default();
    let slot = given.clone();
    host.serve(move |ctx| {
        *slot.lock().unwrap() = ctx.state.cloned();
        shutdown.cancel();
        handler_fn(|e: Envelope| async move { Ok::<_, HandlerError>(Outcome::forward(e)) })
    })
    .await
    .unwrap();
    let state = given.lock().unwrap().take();
    state.expect("the handler was given the actor's state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_gets_the_actors_state_shared_by_its_processes() {
    let actor = format!("tally-{}", std::process::id());
    let first = state_of_a_host(&actor).await;
    let version = first.put("totals/eu", b"42".to_vec()).await.unwrap();
    let second = state_of_a_host(&actor).await;
    let seen = second.get("totals/eu").await.unwrap().unwrap();
    assert_eq!((seen.value.as_slice(), seen.version), (&b"42"[..], version));
    let other = state_of_a_host(&format!("{actor}-other")).await;
    assert_eq!(
        other.get("totals/eu").await.unwrap(),
        None,
        "another actor's state is its own"
    );
    second.delete("totals/eu").await.unwrap();
}
