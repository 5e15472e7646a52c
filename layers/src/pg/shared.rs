//! One PostgreSQL connection shared by every caller of a store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};
use troupe_core::redact::scrub;

use super::{PgConnector, is_unavailable};
use crate::idempotency::StoreError;

/// Longest a single statement may take before the database counts as not answering.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections that concurrent callers share, taken in turn (statements pipeline on each;
/// the server runs one connection's statements one after another, so several let it use
/// several cores). A connection is opened again by the next call after it breaks, so an
/// outage makes calls fail as [unavailable](StoreError::unavailable) until the database
/// answers again.
pub struct SharedClient {
    connector: PgConnector,
    connections: Vec<Connection>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Connection {
    client: RwLock<Option<Arc<Client>>>,
    /// One reconnection at a time; the others wait for it.
    reconnecting: tokio::sync::Mutex<()>,
}

impl SharedClient {
    /// One connection from `connector`, opened by the first call.
    pub fn new(connector: PgConnector) -> Self {
        Self::with_connections(connector, 1)
    }

    /// `n` connections (at least one) from `connector`, each opened by its first call.
    pub fn with_connections(connector: PgConnector, n: usize) -> Self {
        Self {
            connector,
            connections: (0..n.max(1)).map(|_| Connection::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A store error for `operation` from a database error, the password scrubbed.
    pub fn error(&self, operation: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        move |e| {
            let detail = scrub(&e.to_string(), self.connector.url());
            if is_unavailable(&e) {
                StoreError::unavailable(operation, detail)
            } else {
                StoreError::failed(operation, detail)
            }
        }
    }

    /// The next connection in turn, opened again if it broke.
    pub async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let connection = &self.connections[turn];
        if let Some(client) = connection.current() {
            return Ok(client);
        }
        let _one_at_a_time = connection.reconnecting.lock().await;
        if let Some(client) = connection.current() {
            return Ok(client);
        }
        let client = self
            .connector
            .connect(None)
            .await
            .map_err(|detail| StoreError::unavailable("connect", detail))?;
        let client = Arc::new(client);
        *connection.client.write().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        Ok(client)
    }

    /// Runs `statement` with `params`, bounded by [`STATEMENT_TIMEOUT`]; its rows.
    pub async fn rows(
        &self,
        operation: &'static str,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        match tokio::time::timeout(STATEMENT_TIMEOUT, client.query(statement, params)).await {
            Ok(rows) => rows.map_err(self.error(operation)),
            Err(_) => Err(timed_out(operation)),
        }
    }

    /// Runs `statement` with `params`, bounded by [`STATEMENT_TIMEOUT`]; rows it changed.
    pub async fn affected(
        &self,
        operation: &'static str,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        match tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(statement, params)).await {
            Ok(n) => n.map_err(self.error(operation)),
            Err(_) => Err(timed_out(operation)),
        }
    }

    /// Runs the statements of `sql` (no parameters), as schema setup does. Replicas that
    /// start together race to create the same objects; losing that race is no error.
    pub async fn setup(&self, sql: &str) -> Result<(), StoreError> {
        use tokio_postgres::error::SqlState;
        let client = self.client().await?;
        match client.batch_execute(sql).await {
            Ok(()) => Ok(()),
            Err(e)
                if e.code().is_some_and(|c| {
                    *c == SqlState::UNIQUE_VIOLATION
                        || *c == SqlState::DUPLICATE_TABLE
                        || *c == SqlState::DUPLICATE_OBJECT
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(self.error("create tables")(e)),
        }
    }
}

impl Connection {
    fn current(&self) -> Option<Arc<Client>> {
        let client = self.client.read().unwrap_or_else(|p| p.into_inner());
        client.as_ref().filter(|c| !c.is_closed()).cloned()
    }
}

fn timed_out(operation: &'static str) -> StoreError {
    StoreError::unavailable(
        operation,
        format!("PostgreSQL did not answer within {STATEMENT_TIMEOUT:?}"),
    )
}
