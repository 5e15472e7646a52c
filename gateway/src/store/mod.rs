//! The task store: tasks, their branches and their events, in SQLite (embedded, the
//! default) or PostgreSQL (production, several gateway replicas).
//!
//! The rules (module `tasks`) are written once against a small SQL interface (`sql::Sql`); each
//! database runs them in one transaction per change.

mod postgres;
mod sql;
mod sqlite;
mod tasks;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::atomic::AtomicBool;

use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use troupe_core::tls::TlsFiles;
use troupe_core::{ControlState, TaskEvent};

use crate::ledger::BranchEnd;
use crate::record::{StoredEvent, TaskRecord};
use crate::state::{TaskState, Update};
use sqlite::ready;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (disk full, a corrupt or locked file, a schema from a newer release).
    #[error("task store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or did not answer (the message never holds the password).
    #[error("task store: {0}")]
    Postgres(String),
    /// The store holds a schema newer than this build knows.
    #[error(
        "task store: schema version {found} is newer than this build's {known}; run a newer troupe gateway"
    )]
    NewerSchema {
        /// The store's version.
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
    /// PostgreSQL did not answer in time.
    #[error("task store: PostgreSQL did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The query was interrupted (the runtime is shutting down).
    #[error("task store: the query was interrupted")]
    Interrupted,
}

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

impl Fact {
    /// The task it is about.
    pub fn task(&self) -> &str {
        match self {
            Fact::Event(event) => &event.task,
            Fact::End(ending) => &ending.task,
        }
    }
}

/// The right to record what the broker brings ([`Store::lead`]). Recording may go on until
/// [`Lease::token`] is canceled; dropping the lease gives the right up.
#[derive(Debug)]
pub struct Lease {
    token: CancellationToken,
    _release: Option<oneshot::Sender<()>>,
}

impl Lease {
    fn new(token: CancellationToken, release: Option<oneshot::Sender<()>>) -> Self {
        Self {
            token,
            _release: release,
        }
    }

    /// Canceled when recording must stop.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// The task store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(Arc<postgres::Postgres>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("Store")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// Runs rule call `$call` (an expression using `$db`) on the store's database: `write` in
/// one transaction, `read` outside one.
macro_rules! on_db {
    ($store:expr, $mode:ident, |$db:ident| $call:expr) => {
        match &$store.backend {
            Backend::Sqlite(lite) => lite.$mode(move |$db| ready($call)).await,
            Backend::Postgres(pg) => pg.$mode(async move |$db| $call.await).await,
        }
    };
}

impl Store {
    /// Opens (creating it if needed) the SQLite store in file `path`, migrating its schema.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(sqlite::Sqlite::open(path).await?),
        })
    }

    /// A store that lives in memory only (tests, demos).
    pub async fn in_memory() -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(sqlite::Sqlite::in_memory().await?),
        })
    }

    /// Connects to the PostgreSQL database at `url`, creating or migrating its tables
    /// (`troupe_tasks`, `troupe_branches`, `troupe_events`, `troupe_gateway_schema`, in
    /// the connection's schema: `?options=-c search_path=NAME` picks another). `tls` is
    /// used for `sslmode=require`.
    pub async fn postgres(url: &str, tls: &TlsFiles) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Postgres(Arc::new(postgres::Postgres::connect(url, tls).await?)),
        })
    }

    /// Sends the id of each task other gateway replicas add events to on `wake` until
    /// `shutdown` (PostgreSQL; a SQLite store has one gateway and returns at once).
    pub async fn listen(&self, wake: broadcast::Sender<String>, shutdown: CancellationToken) {
        if let Backend::Postgres(pg) = &self.backend {
            pg.listen(wake, shutdown).await;
        }
    }

    /// Waits until this gateway may record what the broker brings: at once with SQLite
    /// (one gateway), once it holds the recorder lock with PostgreSQL (one replica at a
    /// time, see the `postgres` module; `standby` is set while another replica holds it).
    /// `None` at `shutdown`.
    pub async fn lead(&self, shutdown: &CancellationToken, standby: &AtomicBool) -> Option<Lease> {
        match &self.backend {
            Backend::Sqlite(_) => {
                (!shutdown.is_cancelled()).then(|| Lease::new(shutdown.child_token(), None))
            }
            Backend::Postgres(pg) => pg.lead(shutdown, standby).await,
        }
    }

    /// Records a new task, pending; returns its first event.
    pub async fn create(&self, id: String, route: Vec<String>) -> Result<Vec<StoredEvent>, StoreError> {
        on_db!(self, write, |db| tasks::create(db, &id, &route))
    }

    /// Forgets a task (one whose envelope could not be published).
    pub async fn delete(&self, id: String) -> Result<(), StoreError> {
        on_db!(self, write, |db| tasks::delete(db, &id))
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

    /// Records `facts`, each task's in the order given, in one transaction (SQLite) or one
    /// per share of the tasks (PostgreSQL); returns the events they added.
    pub async fn record(&self, mut facts: Vec<Fact>) -> Result<Vec<StoredEvent>, StoreError> {
        // Grouped by task (a stable sort keeps each task's order): transactions lock tasks
        // in the same order. A deadlock with another kind of change (expiry deletes in
        // another order) is still possible: PostgreSQL then fails one side, and a failed
        // batch is redelivered and recorded again.
        facts.sort_by(|a, b| a.task().cmp(b.task()));
        match &self.backend {
            Backend::Sqlite(_) => on_db!(self, write, |db| tasks::record(db, &facts)),
            Backend::Postgres(pg) => {
                // Each statement is a round trip to the server: tasks are independent, so
                // their facts are recorded side by side, one transaction per share. A
                // failed share fails the batch, which the broker redelivers; the shares
                // that committed then change nothing (recording is idempotent).
                let shares = postgres::shares(facts);
                let recorded = futures_util::future::try_join_all(
                    shares
                        .into_iter()
                        .map(|share| pg.write(async move |db| tasks::record(db, &share).await)),
                )
                .await?;
                Ok(recorded.into_iter().flatten().collect())
            }
        }
    }

    /// Tells the verdicts of finished tasks whose events have been quiet long enough by
    /// `now` (a quarter second, at most two after the verdict): the task moves to
    /// succeeded or failed and its stream gets the final status after every event that
    /// was still on its way. Returns the events added.
    pub async fn settle(&self, now: DateTime<Utc>) -> Result<Vec<StoredEvent>, StoreError> {
        let now_ms = now.timestamp_millis();
        on_db!(self, write, |db| tasks::settle(db, now_ms))
    }

    /// Applies the gateway's own command (cancel, pause, resume) to task `id`. Returns
    /// `None` for an unknown task, else its state before and after and the events added
    /// (none when the command changed nothing).
    pub async fn command(
        &self,
        id: String,
        update: Update,
    ) -> Result<Option<(TaskState, TaskState, Vec<StoredEvent>)>, StoreError> {
        on_db!(self, write, |db| tasks::command(db, &id, update))
    }

    /// What runners need to know: tasks canceled at or after `since_ms` (Unix
    /// milliseconds) and every task paused now.
    pub async fn control(&self, since_ms: i64) -> Result<ControlState, StoreError> {
        on_db!(self, read, |db| tasks::control(db, since_ms))
    }

    /// The task `id`, if this store holds it.
    pub async fn get(&self, id: String) -> Result<Option<TaskRecord>, StoreError> {
        on_db!(self, read, |db| tasks::get(db, &id))
    }

    /// Tasks, newest first, optionally only those in `status`.
    pub async fn list(
        &self,
        status: Option<TaskState>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        on_db!(self, read, |db| tasks::list(db, status, limit, offset))
    }

    /// The events of task `id` stored after event `after` (all of them for 0), in order.
    pub async fn events_after(&self, id: String, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        on_db!(self, read, |db| tasks::events_after(db, &id, after))
    }

    /// Deletes the tasks that finished before `cutoff`, with their branches and events;
    /// returns how many.
    pub async fn expire(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        on_db!(self, write, |db| tasks::expire(db, cutoff))
    }

    /// How many tasks are in each state.
    pub async fn counts(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        on_db!(self, read, |db| tasks::counts(db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use troupe_core::event::{EventKind, HopOutput};

    /// A PostgreSQL store in a schema of its own on the real server.
    async fn postgres_store() -> Store {
        let url = crate::testing::fresh_postgres_schema().await;
        Store::postgres(&url, &TlsFiles::default()).await.expect("store")
    }

    /// The same rules on both databases: each test runs once on each.
    async fn stores() -> [Store; 2] {
        [Store::in_memory().await.expect("store"), postgres_store().await]
    }

    /// Past every verdict's hold.
    fn later() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(3)
    }

    async fn with_task(store: Store, task: &str) -> Store {
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
        for store in stores().await {
            let store = with_task(store, "t1").await;
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
            store
                .record_end(ending("t1", "t1", BranchEnd::Succeeded, &[]))
                .await
                .expect("end");
            let waiting = store.get("t1".into()).await.expect("get").expect("task");
            assert_eq!(waiting.status, TaskState::Running, "the verdict waits for quiet");
            assert!(
                store.settle(Utc::now()).await.expect("settle").is_empty(),
                "not quiet yet"
            );
            let done = store.settle(later()).await.expect("settle");
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
    }

    #[tokio::test]
    async fn a_fan_out_succeeds_when_its_last_branch_ends_and_fails_if_one_fails() {
        for store in stores().await {
            let store = with_task(store, "t2").await;
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
            store.settle(later()).await.expect("settle");
            let task = store.get("t2".into()).await.expect("get").expect("task");
            assert_eq!(task.status, TaskState::Failed);
            assert_eq!(task.error, Some(json!({"from": "c2"})));
            assert_eq!(task.result, Some(json!([{"from": "c1"}, {"from": "t2"}])));
        }
    }

    #[tokio::test]
    async fn unknown_tasks_are_ignored_and_finished_ones_expire() {
        for store in stores().await {
            let store = with_task(store, "t3").await;
            let none = store
                .record_end(ending("elsewhere", "elsewhere", BranchEnd::Succeeded, &[]))
                .await
                .expect("end");
            assert!(none.is_empty());
            store
                .record_end(ending("t3", "t3", BranchEnd::Succeeded, &[]))
                .await
                .expect("end");
            store.settle(later()).await.expect("settle");
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
    }

    #[tokio::test]
    async fn commands_move_a_task_and_runners_learn_of_them() {
        for store in stores().await {
            let store = with_task(store, "t6").await;
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
    }

    #[tokio::test]
    async fn a_replica_hears_of_the_events_another_one_stores() {
        let url = crate::testing::fresh_postgres_schema().await;
        let a = Store::postgres(&url, &TlsFiles::default()).await.expect("store");
        let b = Store::postgres(&url, &TlsFiles::default()).await.expect("store");
        let (wake, mut heard) = broadcast::channel(16);
        let stop = CancellationToken::new();
        let listening = tokio::spawn({
            let stop = stop.clone();
            async move { b.listen(wake, stop).await }
        });
        // The listener connects in the background: write until it hears one.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut n = 0;
        let task = loop {
            n += 1;
            a.create(format!("r{n}"), vec!["a".into()]).await.expect("create");
            match tokio::time::timeout(std::time::Duration::from_millis(200), heard.recv()).await {
                Ok(Ok(task)) => break task,
                _ => assert!(tokio::time::Instant::now() < deadline, "no notification heard"),
            }
        };
        assert!(task.starts_with('r'), "{task}");
        stop.cancel();
        listening.await.expect("listener stops");
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
