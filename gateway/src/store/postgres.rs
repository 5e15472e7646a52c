//! The production store: PostgreSQL, shared by every gateway replica.
//!
//! Connections per gateway: up to [`WRITERS`] for changes (a transaction each, their
//! statements prepared once; submissions commit side by side, so PostgreSQL flushes many
//! commits at once) and one for reads (pipelined, so event streams do not wait behind a
//! write). A broken one is replaced on the next call.
//!
//! Replicas: every replica serves the API (submissions, records, event streams); one at a
//! time records what the broker brings, the one holding a session advisory lock (the
//! *recorder lock*). One recorder keeps a task's events in the order the broker delivered
//! them, as with a single gateway; two consuming the events queue side by side would
//! interleave one task's tokens. When the recorder dies its connection closes, the lock
//! is free, a standby takes it within a second and the broker redelivers what the dead
//! one had not acknowledged.
//!
//! Every transaction that appends events to a task ends with `NOTIFY troupe_gateway,
//! '<task id>'`. Every replica `LISTEN`s on a connection of its own and wakes its streams
//! of that task, which read the new events from the database: a client may submit on one
//! replica and follow on another. Each change also locks its task's row first, so one
//! task's changes take turns and its events' sequence numbers follow commit order: a
//! stream reading "after the last one I sent" never skips one committed later.

use std::collections::{BTreeSet, HashMap};
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Mutex, Semaphore, SemaphorePermit, broadcast, mpsc, oneshot};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, GenericClient, Statement};
use tokio_util::sync::CancellationToken;
use troupe_core::tls::TlsFiles;
use troupe_layers::pg::PgConnector;

use super::sql::{Arg, Cell, Row, Sql};
use super::{Fact, Lease, StoreError};

/// The channel replicas tell each other of new events on; the payload is the schema and
/// the task id, space-separated (gateways of other meshes may share the database).
const CHANNEL: &str = "troupe_gateway";
/// Longest a statement may take before the database counts as not answering.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Any number, the same in every replica: the lock migrations take turns on (with the
/// schema's hash as its second key, so meshes in other schemas do not wait).
const MIGRATION_LOCK: i32 = 0x7472_6f6d;
/// The lock the recording replica holds for as long as its connection lives (keyed by
/// schema too: each mesh has its own recorder).
const RECORDER_LOCK: i32 = 0x7472_6f72;
/// How often a standby tries the recorder lock, and the recorder checks it still has it.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// The schema, one step per release that changed it.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE troupe_tasks (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    route TEXT NOT NULL,
    current_actor TEXT,
    hops BIGINT NOT NULL DEFAULT 0,
    branches BIGINT NOT NULL DEFAULT 1,
    branches_ended BIGINT NOT NULL DEFAULT 0,
    branches_failed BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    result TEXT,
    error TEXT
);
CREATE INDEX troupe_tasks_by_status ON troupe_tasks (status, created_ms);
CREATE INDEX troupe_tasks_by_finish ON troupe_tasks (finished_ms) WHERE finished_ms IS NOT NULL;
CREATE TABLE troupe_branches (
    task_id TEXT NOT NULL REFERENCES troupe_tasks (id) ON DELETE CASCADE,
    branch_id TEXT NOT NULL,
    failed BIGINT NOT NULL,
    spawned TEXT NOT NULL,
    value TEXT NOT NULL,
    ended_ms BIGINT NOT NULL,
    ord BIGSERIAL,
    PRIMARY KEY (task_id, branch_id)
);
CREATE TABLE troupe_events (
    seq BIGSERIAL PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES troupe_tasks (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (task_id, key)
);
CREATE INDEX troupe_events_by_task ON troupe_events (task_id, seq);
",
    // A task's verdict waits until its events have gone quiet (see `tasks::settle`).
    r"
ALTER TABLE troupe_tasks ADD COLUMN verdict TEXT;
ALTER TABLE troupe_tasks ADD COLUMN verdict_result TEXT;
ALTER TABLE troupe_tasks ADD COLUMN verdict_error TEXT;
ALTER TABLE troupe_tasks ADD COLUMN settle_ms BIGINT;
ALTER TABLE troupe_tasks ADD COLUMN settle_by_ms BIGINT;
CREATE INDEX troupe_tasks_to_settle ON troupe_tasks (settle_ms) WHERE settle_ms IS NOT NULL;
",
];

/// Most connections for changes one gateway opens.
const WRITERS: usize = 8;

/// `facts`, sorted by task, cut into up to [`WRITERS`] shares of whole tasks (each task's
/// facts in one share, in order).
pub(crate) fn shares(facts: Vec<Fact>) -> Vec<Vec<Fact>> {
    let tasks = facts.windows(2).filter(|w| w[0].task() != w[1].task()).count() + 1;
    let per_share = tasks.div_ceil(WRITERS).max(1);
    let mut shares: Vec<Vec<Fact>> = Vec::new();
    let mut in_last = 0;
    for fact in facts {
        let new_task = shares
            .last()
            .and_then(|share| share.last())
            .is_none_or(|last| last.task() != fact.task());
        if new_task {
            if shares.is_empty() || in_last == per_share {
                shares.push(Vec::new());
                in_last = 0;
            }
            in_last += 1;
        }
        if let Some(share) = shares.last_mut() {
            share.push(fact);
        }
    }
    shares
}

/// A connection for changes, with the statements prepared on it.
struct Writer {
    client: Client,
    prepared: HashMap<String, Statement>,
}

/// A PostgreSQL store.
pub(crate) struct Postgres {
    connector: PgConnector,
    /// Writers not in use.
    idle: std::sync::Mutex<Vec<Writer>>,
    /// One permit per writer that may be in use.
    writers: Semaphore,
    reader: Mutex<Option<Arc<Client>>>,
}

impl Postgres {
    /// Connects to `url` and migrates the schema.
    pub(crate) async fn connect(url: &str, tls: &TlsFiles) -> Result<Self, StoreError> {
        let connector = PgConnector::new(url, tls).map_err(StoreError::Postgres)?;
        let store = Self {
            connector,
            idle: std::sync::Mutex::new(Vec::new()),
            writers: Semaphore::new(WRITERS),
            reader: Mutex::new(None),
        };
        store.migrate().await?;
        Ok(store)
    }

    fn error(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Postgres(self.connector.describe(e))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let (_permit, mut writer) = self.checkout().await?;
        let tx = writer.client.transaction().await.map_err(|e| self.error(&e))?;
        let steps = async {
            // Replicas starting together take turns; the second finds the work done.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
                &[&MIGRATION_LOCK],
            )
            .await?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS troupe_gateway_schema (version BIGINT NOT NULL)")
                .await?;
            let found: i64 = tx
                .query_opt("SELECT version FROM troupe_gateway_schema", &[])
                .await?
                .map_or(0, |row| row.get(0));
            Ok::<_, tokio_postgres::Error>(found)
        };
        let found = steps.await.map_err(|e| self.error(&e))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::NewerSchema { found, known });
        }
        for (version, step) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            tx.batch_execute(step).await.map_err(|e| self.error(&e))?;
            tracing::info!(version = version + 1, "task store schema migrated");
        }
        if found < known {
            let update = async {
                tx.execute("DELETE FROM troupe_gateway_schema", &[]).await?;
                tx.execute(
                    "INSERT INTO troupe_gateway_schema (version) VALUES ($1)",
                    &[&known],
                )
                .await
            };
            update.await.map_err(|e| self.error(&e))?;
        }
        tx.commit().await.map_err(|e| self.error(&e))?;
        self.checkin(writer);
        Ok(())
    }

    /// A writer, idle or new, and the permit to use it.
    async fn checkout(&self) -> Result<(SemaphorePermit<'_>, Writer), StoreError> {
        let permit = self
            .writers
            .acquire()
            .await
            .map_err(|_| StoreError::Interrupted)?;
        let idle = {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.retain(|w| !w.client.is_closed());
            idle.pop()
        };
        let writer = match idle {
            Some(writer) => writer,
            None => {
                let client = self.connector.connect(None).await.map_err(StoreError::Postgres)?;
                // The server gives up too, rather than run on behind a client that did.
                bounded(client.batch_execute("SET statement_timeout = 10000; SET lock_timeout = 10000"))
                    .await
                    .map_err(|e| self.failed(e))?;
                Writer {
                    client,
                    prepared: HashMap::new(),
                }
            }
        };
        Ok((permit, writer))
    }

    /// Puts `writer` back for the next change (a broken one is dropped).
    fn checkin(&self, writer: Writer) {
        if !writer.client.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(writer);
        }
    }

    /// Runs `op` in one transaction, committed when it succeeds; tells the other
    /// replicas which tasks got events.
    pub(crate) async fn write<R>(
        &self,
        op: impl AsyncFnOnce(&mut Pg<'_, tokio_postgres::Transaction<'_>>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let (_permit, mut writer) = self.checkout().await?;
        let out = self.write_on(&mut writer, op).await;
        // A failed transaction rolls back when dropped, and the connection is still good;
        // not after a timeout, when the server may still be running the statement.
        if !matches!(out, Err(StoreError::Timeout(_))) {
            self.checkin(writer);
        }
        out
    }

    async fn write_on<R>(
        &self,
        writer: &mut Writer,
        op: impl AsyncFnOnce(&mut Pg<'_, tokio_postgres::Transaction<'_>>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let tx = writer.client.transaction().await.map_err(|e| self.error(&e))?;
        let mut db = Pg {
            client: &tx,
            prepared: Some(&mut writer.prepared),
            connector: &self.connector,
            touched: BTreeSet::new(),
        };
        let out = op(&mut db).await?;
        let touched = std::mem::take(&mut db.touched);
        for task in &touched {
            db.exec(
                "SELECT pg_notify($1, current_schema() || ' ' || $2)",
                &[CHANNEL.into(), task.as_str().into()],
            )
            .await?;
        }
        drop(db);
        tx.commit().await.map_err(|e| self.error(&e))?;
        Ok(out)
    }

    /// Runs `op` on the reading connection, outside a transaction.
    pub(crate) async fn read<R>(
        &self,
        op: impl AsyncFnOnce(&mut Pg<'_, Client>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let client = {
            let mut slot = self.reader.lock().await;
            match slot.as_ref().filter(|c| !c.is_closed()) {
                Some(client) => client.clone(),
                None => {
                    let client = Arc::new(self.connector.connect(None).await.map_err(StoreError::Postgres)?);
                    *slot = Some(client.clone());
                    client
                }
            }
        };
        let mut db = Pg {
            client: &*client,
            prepared: None,
            connector: &self.connector,
            touched: BTreeSet::new(),
        };
        op(&mut db).await
    }

    /// Waits until this replica holds the recorder lock (or `shutdown`: `None`), setting
    /// `standby` while another replica holds it. Recording may go on until the lease's
    /// token is canceled (the lock's connection broke, so another replica may take over,
    /// or `shutdown`); the lock is held until the lease is dropped, so a stopping recorder
    /// finishes its batch before a standby starts.
    pub(crate) async fn lead(&self, shutdown: &CancellationToken, standby: &AtomicBool) -> Option<Lease> {
        // One connection for every try of a standby, not one a second.
        let mut slot = None;
        loop {
            match self.try_lock(&mut slot).await {
                Ok(true) => {
                    if let Some(client) = slot.take() {
                        let token = shutdown.child_token();
                        let (release, released) = oneshot::channel();
                        tokio::spawn(hold(client, token.clone(), released));
                        return Some(Lease::new(token, Some(release)));
                    }
                }
                Ok(false) => standby.store(true, Ordering::Release),
                Err(error) => {
                    // Neither recording nor sure another replica is: not ready.
                    standby.store(false, Ordering::Release);
                    slot = None;
                    tracing::warn!(%error, "cannot try the recorder lock");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(LEASE_CHECK) => {}
            }
        }
    }

    /// Tries the recorder lock on the connection in `slot` (opened if needed).
    async fn try_lock(&self, slot: &mut Option<Client>) -> Result<bool, StoreError> {
        let client = match slot.take().filter(|c| !c.is_closed()) {
            Some(client) => client,
            None => {
                let client = self.connector.connect(None).await.map_err(StoreError::Postgres)?;
                // The lock lives as long as this session: a recorder whose host vanished
                // must lose it within seconds, not after the system's two-hour keepalive.
                bounded(client.batch_execute(
                    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3",
                ))
                .await
                .map_err(|e| self.failed(e))?;
                client
            }
        };
        let row = bounded(client.query_one(
            "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
            &[&RECORDER_LOCK],
        ))
        .await
        .map_err(|e| self.failed(e))?;
        *slot = Some(client);
        Ok(row.get::<_, bool>(0))
    }

    fn failed(&self, e: Result<tokio_postgres::Error, StoreError>) -> StoreError {
        match e {
            Ok(e) => self.error(&e),
            Err(timeout) => timeout,
        }
    }

    /// Sends the id of each task another replica (or this one) added events to on
    /// `wake`, until `shutdown`. Reconnects after a broken connection; a wake-up lost
    /// meanwhile only delays a stream until its next look at the database.
    pub(crate) async fn listen(&self, wake: broadcast::Sender<String>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let (tx, mut notes) = mpsc::unbounded_channel();
            let listening = match self.connector.connect(Some(tx)).await {
                Ok(client) => {
                    let listen = async {
                        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
                        let schema: String = client.query_one("SELECT current_schema()", &[]).await?.get(0);
                        Ok::<_, tokio_postgres::Error>(format!("{schema} "))
                    };
                    match listen.await {
                        Ok(ours) => Some((client, ours)),
                        Err(e) => {
                            tracing::warn!(error = %self.connector.describe(&e), "cannot listen for other replicas' events");
                            None
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for other replicas' events");
                    None
                }
            };
            if let Some((_client, ours)) = listening {
                backoff = Duration::from_millis(200);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        note = notes.recv() => match note {
                            Some(note) => if let Some(task) = note.payload().strip_prefix(&ours) {
                                let _ = wake.send(task.to_owned());
                            },
                            None => break,
                        },
                    }
                }
                tracing::warn!("lost the connection that hears other replicas' events; reconnecting");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Keeps `client` (and with it the recorder lock) until the lease is dropped; cancels
/// `held` when the connection stops answering.
async fn hold(client: Client, held: CancellationToken, mut released: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            // The lease was dropped (or its owner is gone): recording has stopped.
            _ = &mut released => return,
            () = tokio::time::sleep(LEASE_CHECK) => {}
        }
        if !held.is_cancelled() && bounded(client.simple_query("SELECT 1")).await.is_err() {
            tracing::warn!("lost the connection that holds the recorder lock; standing by");
            held.cancel();
        }
    }
}

/// A PostgreSQL connection (or a transaction on one) the rules run on.
pub(crate) struct Pg<'a, C> {
    client: &'a C,
    /// Statements prepared on this connection (the writer's); none: prepared per call.
    prepared: Option<&'a mut HashMap<String, Statement>>,
    connector: &'a PgConnector,
    touched: BTreeSet<String>,
}

impl ToSql for Arg<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Arg::Text(text) if <&str as ToSql>::accepts(ty) => text.to_sql(ty, out),
            Arg::Int(value) if <i64 as ToSql>::accepts(ty) => value.to_sql(ty, out),
            Arg::Null => Ok(IsNull::Yes),
            other => Err(format!("{other:?} does not fit a {ty} column").into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty) || <i64 as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl<C: GenericClient + Sync> Pg<'_, C> {
    fn failed(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Postgres(self.connector.describe(e))
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        let client = self.client;
        match self.prepared.as_deref_mut() {
            Some(prepared) => {
                if let Some(statement) = prepared.get(sql) {
                    return Ok(statement.clone());
                }
                let statement = bounded(client.prepare(sql))
                    .await
                    .map_err(|e| self.failed_or(e))?;
                if let Some(prepared) = self.prepared.as_deref_mut() {
                    prepared.insert(sql.to_owned(), statement.clone());
                }
                Ok(statement)
            }
            None => bounded(client.prepare(sql)).await.map_err(|e| self.failed_or(e)),
        }
    }

    fn failed_or(&self, e: Result<tokio_postgres::Error, StoreError>) -> StoreError {
        match e {
            Ok(e) => self.failed(&e),
            Err(timeout) => timeout,
        }
    }
}

/// `call`, failing after [`STATEMENT_TIMEOUT`].
async fn bounded<T>(
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Result<tokio_postgres::Error, StoreError>> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, call).await {
        Ok(result) => result.map_err(Ok),
        Err(_) => Err(Err(StoreError::Timeout(STATEMENT_TIMEOUT))),
    }
}

fn params<'p>(args: &'p [Arg<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
    args.iter().map(|arg| arg as &(dyn ToSql + Sync)).collect()
}

impl<C: GenericClient + Sync> Sql for Pg<'_, C> {
    const LOCK: &'static str = " FOR UPDATE";
    const BRANCH_ORDER: &'static str = "ord";

    async fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let statement = self.statement(sql).await?;
        bounded(self.client.execute(&statement, &params(args)))
            .await
            .map_err(|e| self.failed_or(e))
    }

    async fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        let rows = bounded(self.client.query(&statement, &params(args)))
            .await
            .map_err(|e| self.failed_or(e))?;
        rows.iter().map(|row| self.row(row)).collect()
    }

    fn appended(&mut self, task: &str) {
        self.touched.insert(task.to_owned());
    }
}

impl<C: GenericClient + Sync> Pg<'_, C> {
    fn row(&self, row: &tokio_postgres::Row) -> Result<Row, StoreError> {
        let mut cells = Vec::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            let ty = column.type_();
            let cell = if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)
                    .map(|v| v.map_or(Cell::Null, Cell::Int))
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)
                    .map(|v| v.map_or(Cell::Null, |v| Cell::Int(v.into())))
            } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                row.try_get::<_, Option<String>>(i)
                    .map(|v| v.map_or(Cell::Null, Cell::Text))
            } else if *ty == Type::VOID {
                Ok(Cell::Null)
            } else {
                return Err(StoreError::Corrupt {
                    what: "column",
                    detail: format!("column {} is of type {ty}", column.name()),
                });
            };
            cells.push(cell.map_err(|e| self.failed(&e))?);
        }
        Ok(Row(cells))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::BranchEnd;
    use crate::store::BranchEnding;

    fn end(task: &str, branch: &str) -> Fact {
        Fact::End(BranchEnding {
            task: task.into(),
            branch: branch.into(),
            end: BranchEnd::Succeeded,
            spawned: Vec::new(),
            value: serde_json::Value::Null,
        })
    }

    #[test]
    fn shares_keep_each_task_whole_and_in_order() {
        let mut facts = Vec::new();
        for task in 0..20 {
            for branch in 0..3 {
                facts.push(end(&format!("t{task:02}"), &format!("b{branch}")));
            }
        }
        let shares = shares(facts.clone());
        assert!(shares.len() <= WRITERS, "{}", shares.len());
        let mut seen = std::collections::BTreeSet::new();
        for share in &shares {
            let tasks: std::collections::BTreeSet<&str> = share.iter().map(Fact::task).collect();
            for task in tasks {
                assert!(seen.insert(task.to_owned()), "task {task} split over shares");
            }
        }
        assert_eq!(shares.concat(), facts, "every fact, in order");
        assert_eq!(super::shares(vec![end("t", "a")]).len(), 1);
        assert!(super::shares(Vec::new()).is_empty());
    }
}
