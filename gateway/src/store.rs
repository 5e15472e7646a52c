//! The task store: tasks, their branches and their events, in SQLite.
//!
//! Every change is one transaction that also appends the events it caused, so what a
//! client streams is exactly what was stored, in the order it was stored, and a replayed
//! input (a redelivered event, an end recorded twice) changes nothing and appends nothing:
//! events are unique per task by their [key](troupe_core::TaskEvent::key), branches by id.
//!
//! The connection is synchronous; each call runs on Tokio's blocking pool so the API and
//! the consumers never stall a runtime thread on disk I/O. WAL mode lets readers go on
//! while a write commits.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::{Value, json};
use troupe_core::event::EventKind;
use troupe_core::{ControlState, TaskEvent};

use crate::ledger::{BranchEnd, Ledger};
use crate::record::{Progress, StoredEvent, TaskRecord};
use crate::state::{TaskState, Update};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (disk full, a corrupt or locked file, a schema from a newer release).
    #[error("task store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store's file holds a schema newer than this build knows.
    #[error(
        "task store: schema version {found} is newer than this build's {known}; run a newer troupe gateway"
    )]
    NewerSchema {
        /// The file's version.
        found: i64,
        /// This build's.
        known: i64,
    },
    /// A value in the store is not what this build wrote.
    #[error("task store: unreadable {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The blocking task running the query ended abnormally (the runtime is shutting down).
    #[error("task store: the query was interrupted")]
    Interrupted,
}

/// The schema, one step per release that changed it; step `i` moves version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r"
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
"];

/// How a branch of a task ended, as read from `x-sink` or `x-sump`.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchEnding {
    /// The task.
    pub task: String,
    /// The branch (the envelope's id).
    pub branch: String,
    /// How it ended.
    pub end: BranchEnd,
    /// The branches it spawned along its route.
    pub spawned: Vec<String>,
    /// Its payload when it succeeded, its error when it failed.
    pub value: Value,
}

/// Something learned from the broker, to record.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// A runner's task event.
    Event(TaskEvent),
    /// A branch's end.
    End(BranchEnding),
}

/// The task store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating it if needed) the store in file `path`, migrating its schema.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || Connection::open(path))
            .await
            .map_err(|_| StoreError::Interrupted)??;
        Self::prepare(conn).await
    }

    /// A store that lives in memory only (tests, demos).
    pub async fn in_memory() -> Result<Self, StoreError> {
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

    /// Records a new task, pending; returns its first event.
    pub async fn create(&self, id: String, route: Vec<String>) -> Result<Vec<StoredEvent>, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let now = Utc::now().timestamp_millis();
            let route_json = serde_json::to_string(&route).unwrap_or_else(|_| "[]".to_owned());
            tx.execute(
                "INSERT INTO tasks (id, status, route, current_actor, created_ms, updated_ms) \
                 VALUES (?1, 'pending', ?2, ?3, ?4, ?4)",
                params![id, route_json, route.first(), now],
            )?;
            let mut out = Vec::new();
            append(
                &tx,
                &id,
                "status/pending",
                "status",
                &json!({"status": "pending"}),
                &mut out,
            )?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Forgets a task (one whose envelope could not be published).
    pub async fn delete(&self, id: String) -> Result<(), StoreError> {
        self.with(move |conn| {
            conn.execute("DELETE FROM tasks WHERE id = ?1", params![id])?;
            Ok(())
        })
        .await
    }

    /// Applies a runner's event to its task; returns the events it added (none for a copy,
    /// or for a task this store does not hold).
    pub async fn apply_event(&self, event: TaskEvent) -> Result<Vec<StoredEvent>, StoreError> {
        self.record(vec![Fact::Event(event)]).await
    }

    /// Records how a branch ended; when that finishes the task, records its verdict.
    /// Returns the events it added.
    pub async fn record_end(&self, ending: BranchEnding) -> Result<Vec<StoredEvent>, StoreError> {
        self.record(vec![Fact::End(ending)]).await
    }

    /// Records `facts` in order, in one transaction (one commit for a whole batch of
    /// messages); returns the events they added.
    pub async fn record(&self, facts: Vec<Fact>) -> Result<Vec<StoredEvent>, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut out = Vec::new();
            for fact in &facts {
                match fact {
                    Fact::Event(event) => event_in(&tx, event, &mut out)?,
                    Fact::End(ending) => end_in(&tx, ending, &mut out)?,
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Applies the gateway's own command (cancel, pause, resume) to task `id`. Returns
    /// `None` for an unknown task, else its state before and after and the events added
    /// (none when the command changed nothing).
    pub async fn command(
        &self,
        id: String,
        update: Update,
    ) -> Result<Option<(TaskState, TaskState, Vec<StoredEvent>)>, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let Some(before) = status_of(&tx, &id)? else {
                return Ok(None);
            };
            let mut out = Vec::new();
            // Pause and resume may alternate, so each command's event is its own.
            let key = format!("command/{}", Utc::now().timestamp_micros());
            transition_keyed(&tx, &id, before, update, None, Some(&key), &mut out)?;
            tx.commit()?;
            Ok(Some((before, before.apply(update), out)))
        })
        .await
    }

    /// What runners need to know: tasks canceled at or after `since_ms` (Unix
    /// milliseconds) and every task paused now.
    pub async fn control(&self, since_ms: i64) -> Result<ControlState, StoreError> {
        self.with(move |conn| {
            let now_ms = Utc::now().timestamp_millis();
            Ok(ControlState {
                canceled: ids(
                    conn,
                    "SELECT id FROM tasks WHERE status = 'canceled' AND finished_ms >= ?1",
                    params![since_ms],
                )?,
                paused: ids(conn, "SELECT id FROM tasks WHERE status = 'paused'", [])?,
                now_ms,
            })
        })
        .await
    }

    /// The task `id`, if this store holds it.
    pub async fn get(&self, id: String) -> Result<Option<TaskRecord>, StoreError> {
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                params![id],
                read_task,
            )
            .optional()?
            .transpose()
        })
        .await
    }

    /// Tasks, newest first, optionally only those in `status`.
    pub async fn list(
        &self,
        status: Option<TaskState>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR status = ?1) \
                 ORDER BY created_ms DESC, id LIMIT ?2 OFFSET ?3"
            ))?;
            let rows = stmt.query_map(params![status.map(TaskState::as_str), limit, offset], read_task)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
        .await
    }

    /// The events of task `id` stored after event `after` (all of them for 0), in order.
    pub async fn events_after(&self, id: String, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, kind, data FROM events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![id, after], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, kind, data) = row?;
                out.push(StoredEvent {
                    seq,
                    task: id.clone(),
                    kind,
                    data: parse(&data, "event data")?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Deletes the tasks that finished before `cutoff`, with their branches and events;
    /// returns how many.
    pub async fn expire(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        self.with(move |conn| {
            Ok(conn.execute(
                "DELETE FROM tasks WHERE finished_ms IS NOT NULL AND finished_ms < ?1",
                params![cutoff.timestamp_millis()],
            )?)
        })
        .await
    }

    /// How many tasks are in each state.
    pub async fn counts(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM tasks GROUP BY status")?;
            let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (status, count) = row?;
                out.push((state_from(&status)?, u64::try_from(count).unwrap_or(0)));
            }
            Ok(out)
        })
        .await
    }
}

/// Applies one runner event (see [`Store::apply_event`]).
fn event_in(tx: &Transaction<'_>, event: &TaskEvent, out: &mut Vec<StoredEvent>) -> Result<(), StoreError> {
    let Some(state) = status_of(tx, &event.task)? else {
        return Ok(());
    };
    if state.is_terminal() && matches!(event.kind, EventKind::Started) {
        // A redelivered envelope started again after the task ended: stale news.
        return Ok(());
    }
    let (kind, current) = match &event.kind {
        EventKind::Started => ("started", Some(event.actor.as_str())),
        EventKind::Hop { outputs } => (
            "hop",
            outputs
                .iter()
                .map(|o| o.to.as_str())
                .find(|to| !to.starts_with("x-")),
        ),
        EventKind::Fly { .. } => ("fly", None),
    };
    let data = serde_json::to_value(event).unwrap_or(Value::Null);
    if !append(tx, &event.task, &event.key(), kind, &data, out)? {
        return Ok(());
    }
    let now = Utc::now().timestamp_millis();
    tx.execute(
        "UPDATE tasks SET hops = hops + ?2, current_actor = COALESCE(?3, current_actor), updated_ms = ?4 \
         WHERE id = ?1",
        params![event.task, i64::from(kind == "hop"), current, now],
    )?;
    transition(tx, &event.task, state, Update::Running, None, out)
}

/// Records one branch end (see [`Store::record_end`]).
fn end_in(tx: &Transaction<'_>, ending: &BranchEnding, out: &mut Vec<StoredEvent>) -> Result<(), StoreError> {
    let Some(state) = status_of(tx, &ending.task)? else {
        return Ok(());
    };
    let failed = ending.end == BranchEnd::Failed;
    let spawned = serde_json::to_string(&ending.spawned).unwrap_or_else(|_| "[]".to_owned());
    let value = ending.value.to_string();
    let now = Utc::now().timestamp_millis();
    // A copy changes nothing, except that a failure outranks a success.
    let changed = tx.execute(
        "INSERT INTO branches (task_id, branch_id, failed, spawned, value, ended_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (task_id, branch_id) DO UPDATE SET failed = 1, value = excluded.value \
         WHERE excluded.failed = 1 AND branches.failed = 0",
        params![ending.task, ending.branch, failed, spawned, value, now],
    )?;
    if changed == 0 {
        return Ok(());
    }
    let end = if failed { "failed" } else { "succeeded" };
    append(
        tx,
        &ending.task,
        &format!("branch/{}/{end}", ending.branch),
        "branch",
        &json!({"id": ending.branch, "end": end}),
        out,
    )?;
    let (ledger, values) = ledger_of(tx, &ending.task)?;
    let open = ledger.open_branches().len() as i64;
    let ended = values.len() as i64;
    let failed_count = values.iter().filter(|(end, _)| *end == BranchEnd::Failed).count() as i64;
    tx.execute(
        "UPDATE tasks SET branches = ?2, branches_ended = ?3, branches_failed = ?4, updated_ms = ?5 \
         WHERE id = ?1",
        params![ending.task, open + ended, ended, failed_count, now],
    )?;
    if let Some(verdict) = ledger.verdict() {
        let outcome = outcome_of(&values, verdict);
        let update = match verdict {
            BranchEnd::Succeeded => Update::Succeeded,
            BranchEnd::Failed => Update::Failed,
        };
        transition(tx, &ending.task, state, update, Some(outcome), out)?;
    }
    Ok(())
}

/// The first column of every row `sql` selects.
fn ids(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |row| row.get(0))?;
    Ok(rows.collect::<Result<Vec<String>, _>>()?)
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

/// Appends an event unless one with `key` exists; returns whether it did.
fn append(
    tx: &Transaction<'_>,
    task: &str,
    key: &str,
    kind: &str,
    data: &Value,
    out: &mut Vec<StoredEvent>,
) -> Result<bool, StoreError> {
    let inserted = tx.execute(
        "INSERT INTO events (task_id, key, kind, data) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        params![task, key, kind, data.to_string()],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    out.push(StoredEvent {
        seq: tx.last_insert_rowid(),
        task: task.to_owned(),
        kind: kind.to_owned(),
        data: data.clone(),
    });
    Ok(true)
}

/// Moves the task from `state` by `update`; on a change, stores it (with the result or
/// error when it finishes) and appends a `status` event.
fn transition(
    tx: &Transaction<'_>,
    task: &str,
    state: TaskState,
    update: Update,
    outcome: Option<(Option<Value>, Option<Value>)>,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    transition_keyed(tx, task, state, update, outcome, None, out)
}

/// [`transition`], its event keyed `key` instead of by the new state.
fn transition_keyed(
    tx: &Transaction<'_>,
    task: &str,
    state: TaskState,
    update: Update,
    outcome: Option<(Option<Value>, Option<Value>)>,
    key: Option<&str>,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    let next = state.apply(update);
    if next == state {
        return Ok(());
    }
    let now = Utc::now().timestamp_millis();
    let (result, error) = outcome.unwrap_or_default();
    let finished = next.is_terminal().then_some(now);
    tx.execute(
        "UPDATE tasks SET status = ?2, updated_ms = ?3, finished_ms = COALESCE(?4, finished_ms), \
         result = COALESCE(?5, result), error = COALESCE(?6, error) WHERE id = ?1",
        params![
            task,
            next.as_str(),
            now,
            finished,
            result.as_ref().map(Value::to_string),
            error.as_ref().map(Value::to_string),
        ],
    )?;
    let mut data = json!({"status": next});
    if let Some(result) = result {
        data["result"] = result;
    }
    if let Some(error) = error {
        data["error"] = error;
    }
    let key = key.map_or_else(|| format!("status/{next}"), str::to_owned);
    append(tx, task, &key, "status", &data, out)?;
    Ok(())
}

fn status_of(tx: &Transaction<'_>, task: &str) -> Result<Option<TaskState>, StoreError> {
    let status: Option<String> = tx
        .query_row("SELECT status FROM tasks WHERE id = ?1", params![task], |row| {
            row.get(0)
        })
        .optional()?;
    status.as_deref().map(state_from).transpose()
}

/// The task's ledger and each ended branch's end and value, in the order they ended.
fn ledger_of(tx: &Transaction<'_>, task: &str) -> Result<(Ledger, Vec<(BranchEnd, Value)>), StoreError> {
    let mut ledger = Ledger::new(task);
    let mut values = Vec::new();
    let mut stmt = tx.prepare_cached(
        "SELECT branch_id, failed, spawned, value FROM branches WHERE task_id = ?1 ORDER BY ended_ms, rowid",
    )?;
    let rows = stmt.query_map(params![task], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, bool>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (branch, failed, spawned, value) = row?;
        let spawned: Vec<String> = serde_json::from_str(&spawned).map_err(|e| StoreError::Corrupt {
            what: "spawned branches",
            detail: e.to_string(),
        })?;
        let end = if failed {
            BranchEnd::Failed
        } else {
            BranchEnd::Succeeded
        };
        ledger.record(&branch, end, spawned);
        values.push((end, parse(&value, "branch value")?));
    }
    Ok((ledger, values))
}

/// The task's result and error once every branch ended: one branch's payload as it is,
/// several as a list; the first failure's error.
fn outcome_of(values: &[(BranchEnd, Value)], verdict: BranchEnd) -> (Option<Value>, Option<Value>) {
    let succeeded: Vec<&Value> = values
        .iter()
        .filter(|(end, _)| *end == BranchEnd::Succeeded)
        .map(|(_, v)| v)
        .collect();
    let result = match (verdict, succeeded.as_slice()) {
        (BranchEnd::Failed, []) => None,
        (_, [one]) if values.len() == 1 => Some((*one).clone()),
        (_, many) => Some(Value::Array(many.iter().map(|v| (*v).clone()).collect())),
    };
    let error = values
        .iter()
        .find(|(end, _)| *end == BranchEnd::Failed)
        .map(|(_, v)| v.clone());
    (result, error)
}

const TASK_COLUMNS: &str = "id, status, route, current_actor, hops, branches, branches_ended, branches_failed, \
     created_ms, updated_ms, finished_ms, result, error";

type RowResult = Result<TaskRecord, StoreError>;

/// Reads one row of [`TASK_COLUMNS`]; a value this build cannot read is the inner error.
fn read_task(row: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let id: String = row.get(0)?;
    let status: String = row.get(1)?;
    let route: String = row.get(2)?;
    let current_actor: Option<String> = row.get(3)?;
    let counts: [i64; 4] = [row.get(4)?, row.get(5)?, row.get(6)?, row.get(7)?];
    let times: (i64, i64, Option<i64>) = (row.get(8)?, row.get(9)?, row.get(10)?);
    let result: Option<String> = row.get(11)?;
    let error: Option<String> = row.get(12)?;
    Ok((|| {
        let count = |i: usize| u64::try_from(counts[i]).unwrap_or(0);
        Ok(TaskRecord {
            status: state_from(&status)?,
            route: serde_json::from_str(&route).map_err(|e| StoreError::Corrupt {
                what: "route",
                detail: e.to_string(),
            })?,
            current_actor,
            progress: Progress {
                hops: count(0),
                branches: count(1),
                branches_ended: count(2),
                branches_failed: count(3),
            },
            created_at: time(times.0),
            updated_at: time(times.1),
            finished_at: times.2.map(time),
            result: result.as_deref().map(|v| parse(v, "result")).transpose()?,
            error: error.as_deref().map(|v| parse(v, "error")).transpose()?,
            id,
        })
    })())
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn parse(text: &str, what: &'static str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn state_from(text: &str) -> Result<TaskState, StoreError> {
    serde_json::from_value(Value::String(text.to_owned())).map_err(|e| StoreError::Corrupt {
        what: "status",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_core::event::HopOutput;

    async fn store_with(task: &str) -> Store {
        let store = Store::in_memory().await.expect("store");
        store
            .create(task.to_owned(), vec!["a".into(), "b".into()])
            .await
            .expect("create");
        store
    }

    fn event(task: &str, actor: &str, kind: EventKind) -> TaskEvent {
        TaskEvent {
            task: task.into(),
            id: task.into(),
            actor: actor.into(),
            position: 0,
            at: Utc::now(),
            kind,
        }
    }

    fn ending(task: &str, branch: &str, end: BranchEnd, spawned: &[&str]) -> BranchEnding {
        BranchEnding {
            task: task.into(),
            branch: branch.into(),
            end,
            spawned: spawned.iter().map(|s| (*s).to_owned()).collect(),
            value: json!({"from": branch}),
        }
    }

    #[tokio::test]
    async fn a_task_runs_and_succeeds_once() {
        let store = store_with("t1").await;
        let added = store
            .apply_event(event("t1", "a", EventKind::Started))
            .await
            .expect("event");
        let kinds: Vec<_> = added.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["started", "status"], "started, then the move to running");
        let again = store
            .apply_event(event("t1", "a", EventKind::Started))
            .await
            .expect("event");
        assert!(again.is_empty(), "a copy adds nothing");
        let hop = EventKind::Hop {
            outputs: vec![HopOutput {
                id: "t1".into(),
                to: "b".into(),
                phase: None,
            }],
        };
        store.apply_event(event("t1", "a", hop)).await.expect("hop");
        let task = store.get("t1".into()).await.expect("get").expect("task");
        assert_eq!(
            (task.status, task.current_actor.as_deref(), task.progress.hops),
            (TaskState::Running, Some("b"), 1)
        );
        let done = store
            .record_end(ending("t1", "t1", BranchEnd::Succeeded, &[]))
            .await
            .expect("end");
        assert_eq!(
            done.last().map(|e| e.data["status"].clone()),
            Some(json!("succeeded"))
        );
        // A copy of the end (a crash between the last actor's publish and its ack sends
        // its output to x-sink twice) is recorded once: the result is effectively-once.
        let copy = store
            .record_end(ending("t1", "t1", BranchEnd::Succeeded, &[]))
            .await
            .expect("end");
        assert!(copy.is_empty(), "{copy:?}");
        // A late "started" of a redelivered envelope changes nothing.
        let mut late = event("t1", "b", EventKind::Started);
        late.position = 1;
        store.apply_event(late).await.expect("late");
        let task = store.get("t1".into()).await.expect("get").expect("task");
        assert_eq!(task.status, TaskState::Succeeded);
        assert_eq!(task.result, Some(json!({"from": "t1"})));
        assert!(task.finished_at.is_some());
        assert_eq!((task.progress.branches, task.progress.branches_ended), (1, 1));
        let all = store.events_after("t1".into(), 0).await.expect("events");
        let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let tail = store.events_after("t1".into(), seqs[2]).await.expect("events");
        assert_eq!(
            tail.len(),
            all.len() - 3,
            "resuming after an event skips exactly what came before"
        );
    }

    #[tokio::test]
    async fn a_fan_out_succeeds_when_its_last_branch_ends_and_fails_if_one_fails() {
        let store = store_with("t2").await;
        store
            .record_end(ending("t2", "c1", BranchEnd::Succeeded, &[]))
            .await
            .expect("end");
        store
            .record_end(ending("t2", "t2", BranchEnd::Succeeded, &["c1", "c2"]))
            .await
            .expect("end");
        let task = store.get("t2".into()).await.expect("get").expect("task");
        assert_eq!(task.status, TaskState::Pending, "c2 is still open");
        assert_eq!((task.progress.branches, task.progress.branches_ended), (3, 2));
        store
            .record_end(ending("t2", "c2", BranchEnd::Failed, &[]))
            .await
            .expect("end");
        let task = store.get("t2".into()).await.expect("get").expect("task");
        assert_eq!(task.status, TaskState::Failed);
        assert_eq!(task.error, Some(json!({"from": "c2"})));
        assert_eq!(task.result, Some(json!([{"from": "c1"}, {"from": "t2"}])));
    }

    #[tokio::test]
    async fn unknown_tasks_are_ignored_and_finished_ones_expire() {
        let store = store_with("t3").await;
        let none = store
            .record_end(ending("elsewhere", "elsewhere", BranchEnd::Succeeded, &[]))
            .await
            .expect("end");
        assert!(none.is_empty());
        store
            .record_end(ending("t3", "t3", BranchEnd::Succeeded, &[]))
            .await
            .expect("end");
        store.create("t4".into(), vec!["a".into()]).await.expect("create");
        let gone = store
            .expire(Utc::now() + chrono::Duration::seconds(1))
            .await
            .expect("expire");
        assert_eq!(gone, 1, "only the finished task expires");
        assert!(store.get("t3".into()).await.expect("get").is_none());
        assert!(
            store
                .events_after("t3".into(), 0)
                .await
                .expect("events")
                .is_empty()
        );
        let listed = store.list(Some(TaskState::Pending), 10, 0).await.expect("list");
        assert_eq!(listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t4"]);
    }

    #[tokio::test]
    async fn commands_move_a_task_and_runners_learn_of_them() {
        let store = store_with("t6").await;
        store.create("t7".into(), vec!["a".into()]).await.expect("create");
        let since = Utc::now().timestamp_millis();
        let paused = store.command("t6".into(), Update::Pause).await.expect("pause");
        assert_eq!(paused.map(|(_, after, _)| after), Some(TaskState::Paused));
        store.command("t7".into(), Update::Cancel).await.expect("cancel");
        let control = store.control(since).await.expect("control");
        assert_eq!(
            (control.canceled, control.paused),
            (vec!["t7".to_owned()], vec!["t6".to_owned()])
        );
        let later = store.control(control.now_ms + 1_000).await.expect("control");
        assert!(
            later.canceled.is_empty(),
            "only cancels since the time asked about"
        );
        store.command("t6".into(), Update::Resume).await.expect("resume");
        store.command("t6".into(), Update::Pause).await.expect("pause");
        let (_, _, events) = store
            .command("t6".into(), Update::Resume)
            .await
            .expect("resume")
            .expect("task");
        assert_eq!(events.len(), 1, "a second resume is an event of its own");
        let unchanged = store.command("t7".into(), Update::Resume).await.expect("resume");
        assert!(
            unchanged.is_some_and(|(_, after, events)| after == TaskState::Canceled && events.is_empty())
        );
        assert!(
            store
                .command("nope".into(), Update::Cancel)
                .await
                .expect("cancel")
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_file_store_survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("troupe-gateway-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tasks.db");
        {
            let store = Store::open(&path).await.expect("open");
            store.create("t5".into(), vec!["a".into()]).await.expect("create");
        }
        let store = Store::open(&path).await.expect("reopen");
        assert!(store.get("t5".into()).await.expect("get").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
