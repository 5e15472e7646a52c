//! The embedded store: one SQLite file (or memory), no server.
//!
//! The connection is synchronous; each call runs on Tokio's blocking pool so the API and
//! the consumers never stall a runtime thread on disk I/O. WAL mode lets readers go on
//! while a write commits.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, params_from_iter};

use super::StoreError;
use super::sql::{Arg, Cell, Row, Sql};

/// The schema, one step per release that changed it; step `i` moves version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    route TEXT NOT NULL,
    current_actor TEXT,
    hops INTEGER NOT NULL DEFAULT 0,
    branches INTEGER NOT NULL DEFAULT 1,
    branches_ended INTEGER NOT NULL DEFAULT 0,
    branches_failed INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    result TEXT,
    error TEXT
);
CREATE INDEX tasks_by_status ON tasks (status, created_ms);
CREATE INDEX tasks_by_finish ON tasks (finished_ms) WHERE finished_ms IS NOT NULL;
CREATE TABLE branches (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    branch_id TEXT NOT NULL,
    failed INTEGER NOT NULL,
    spawned TEXT NOT NULL,
    value TEXT NOT NULL,
    ended_ms INTEGER NOT NULL,
    PRIMARY KEY (task_id, branch_id)
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (task_id, key)
);
",
    // The same table names as on PostgreSQL, where the gateway may share a database.
    r"
ALTER TABLE tasks RENAME TO troupe_tasks;
ALTER TABLE branches RENAME TO troupe_branches;
ALTER TABLE events RENAME TO troupe_events;
CREATE INDEX troupe_events_by_task ON troupe_events (task_id, seq);
",
    // A task's verdict waits until its events have gone quiet (see `tasks::settle`).
    r"
ALTER TABLE troupe_tasks ADD COLUMN verdict TEXT;
ALTER TABLE troupe_tasks ADD COLUMN verdict_result TEXT;
ALTER TABLE troupe_tasks ADD COLUMN verdict_error TEXT;
ALTER TABLE troupe_tasks ADD COLUMN settle_ms INTEGER;
ALTER TABLE troupe_tasks ADD COLUMN settle_by_ms INTEGER;
CREATE INDEX troupe_tasks_to_settle ON troupe_tasks (settle_ms) WHERE settle_ms IS NOT NULL;
",
];

/// A SQLite store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Sqlite {
    conn: Arc<Mutex<Connection>>,
}

impl Sqlite {
    /// Opens (creating it if needed) the file at `path`, migrating its schema.
    pub(crate) async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || Connection::open(path))
            .await
            .map_err(|_| StoreError::Interrupted)??;
        Self::prepare(conn).await
    }

    /// A store in memory only.
    pub(crate) async fn in_memory() -> Result<Self, StoreError> {
        Self::prepare(Connection::open_in_memory()?).await
    }

    async fn prepare(conn: Connection) -> Result<Self, StoreError> {
        let store = Self {
            conn: Arc::new(Mutex::new(conn)),
        };
        store
            .with(|conn| {
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                     PRAGMA busy_timeout = 5000;",
                )?;
                migrate(conn)
            })
            .await?;
        Ok(store)
    }

    /// Runs `op` on the connection, on the blocking pool.
    async fn with<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite consistent (the transaction
            // rolls back when dropped), so a poisoned lock is still usable.
            let mut conn = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            op(&mut conn)
        })
        .await
        .map_err(|_| StoreError::Interrupted)?
    }

    /// Runs `op` in one transaction, committed when it succeeds.
    pub(crate) async fn write<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Lite<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let out = op(&mut Lite(&tx))?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Runs `op` outside a transaction (reads, single statements).
    pub(crate) async fn read<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Lite<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.with(move |conn| op(&mut Lite(conn))).await
    }
}

/// Completes a rule run on SQLite. Its statements never wait (each runs to its end on the
/// calling thread), so the future is ready at its first poll.
pub(crate) fn ready<R>(rule: impl Future<Output = Result<R, StoreError>>) -> Result<R, StoreError> {
    rule.now_or_never().unwrap_or(Err(StoreError::Interrupted))
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    for (version, step) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "task store schema migrated");
    }
    Ok(())
}

/// A SQLite connection (or a transaction on one) the rules run on.
pub(crate) struct Lite<'c>(&'c Connection);

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Arg::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Arg::Int(value) => ToSqlOutput::Borrowed(ValueRef::Integer(value)),
            Arg::Null => ToSqlOutput::Borrowed(ValueRef::Null),
        })
    }
}

/// The statement with SQLite's `?1` placeholders for PostgreSQL's `$1` (the statements
/// hold no other `$`).
fn placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

impl Sql for Lite<'_> {
    const LOCK: &'static str = "";
    const BRANCH_ORDER: &'static str = "rowid";

    async fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let mut statement = self.0.prepare_cached(&placeholders(sql))?;
        Ok(statement.execute(params_from_iter(args))? as u64)
    }

    async fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut statement = self.0.prepare_cached(&placeholders(sql))?;
        let columns = statement.column_count();
        let mut rows = statement.query(params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(columns);
            for i in 0..columns {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(value) => Cell::Int(value),
                    ValueRef::Text(text) => Cell::Text(String::from_utf8_lossy(text).into_owned()),
                    other => {
                        return Err(StoreError::Corrupt {
                            what: "column",
                            detail: format!("column {i} holds a {:?}", other.data_type()),
                        });
                    }
                });
            }
            out.push(Row(cells));
        }
        Ok(out)
    }
}
