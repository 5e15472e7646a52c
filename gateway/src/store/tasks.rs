//! The task rules as SQL, once for every database: how an event, a branch's end or a
//! command changes a task, and how tasks are read.
//!
//! Every change runs in one transaction that also appends the events it caused, so what a
//! client streams is exactly what was stored, in the order it was stored, and a replayed
//! input (a redelivered event, an end recorded twice) changes nothing and appends nothing:
//! events are unique per task by their [key](troupe_core::TaskEvent::key), branches by id.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use troupe_core::event::EventKind;
use troupe_core::{ControlState, TaskEvent};

use super::sql::{Row, Sql};
use super::{BranchEnding, Fact, StoreError};
use crate::ledger::{BranchEnd, Ledger};
use crate::record::{Progress, StoredEvent, TaskRecord};
use crate::state::{TaskState, Update};

/// Records a new task, pending; returns its first event.
pub(crate) async fn create<S: Sql>(
    db: &mut S,
    id: &str,
    route: &[String],
) -> Result<Vec<StoredEvent>, StoreError> {
    let now = Utc::now().timestamp_millis();
    let route_json = serde_json::to_string(route).unwrap_or_else(|_| "[]".to_owned());
    db.exec(
        "INSERT INTO troupe_tasks (id, status, route, current_actor, created_ms, updated_ms) \
         VALUES ($1, 'pending', $2, $3, $4, $4)",
        &[
            id.into(),
            route_json.as_str().into(),
            route.first().map(String::as_str).into(),
            now.into(),
        ],
    )
    .await?;
    let mut out = Vec::new();
    append(
        db,
        id,
        "status/pending",
        "status",
        &json!({"status": "pending"}),
        &mut out,
    )
    .await?;
    Ok(out)
}

/// Forgets a task (one whose envelope could not be published).
pub(crate) async fn delete<S: Sql>(db: &mut S, id: &str) -> Result<(), StoreError> {
    db.exec("DELETE FROM troupe_tasks WHERE id = $1", &[id.into()])
        .await?;
    Ok(())
}

/// Records `facts` in order; returns the events they added.
pub(crate) async fn record<S: Sql>(db: &mut S, facts: &[Fact]) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::new();
    for fact in facts {
        match fact {
            Fact::Event(event) => event_in(db, event, &mut out).await?,
            Fact::End(ending) => end_in(db, ending, &mut out).await?,
        }
    }
    Ok(out)
}

/// Applies the gateway's own command to task `id`: `None` for an unknown task, else its
/// state before and after and the events added.
pub(crate) async fn command<S: Sql>(
    db: &mut S,
    id: &str,
    update: Update,
) -> Result<Option<(TaskState, TaskState, Vec<StoredEvent>)>, StoreError> {
    let Some(before) = status_of(db, id).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    // Pause and resume may alternate, so each command's event is its own.
    let key = format!("command/{}", Utc::now().timestamp_micros());
    transition_keyed(db, id, before, update, None, Some(&key), &mut out).await?;
    Ok(Some((before, before.apply(update), out)))
}

/// Tasks canceled at or after `since_ms` and every task paused now.
pub(crate) async fn control<S: Sql>(db: &mut S, since_ms: i64) -> Result<ControlState, StoreError> {
    let now_ms = Utc::now().timestamp_millis();
    let canceled = db
        .rows(
            "SELECT id FROM troupe_tasks WHERE status = 'canceled' AND finished_ms >= $1",
            &[since_ms.into()],
        )
        .await?;
    let paused = db
        .rows("SELECT id FROM troupe_tasks WHERE status = 'paused'", &[])
        .await?;
    let ids = |rows: Vec<Row>| -> Result<Vec<String>, StoreError> {
        rows.iter().map(|row| row.text(0).map(str::to_owned)).collect()
    };
    Ok(ControlState {
        canceled: ids(canceled)?,
        paused: ids(paused)?,
        now_ms,
    })
}

/// The task `id`, if stored.
pub(crate) async fn get<S: Sql>(db: &mut S, id: &str) -> Result<Option<TaskRecord>, StoreError> {
    let rows = db
        .rows(
            &format!("SELECT {TASK_COLUMNS} FROM troupe_tasks WHERE id = $1"),
            &[id.into()],
        )
        .await?;
    rows.first().map(read_task).transpose()
}

/// Tasks, newest first, optionally only those in `status`.
pub(crate) async fn list<S: Sql>(
    db: &mut S,
    status: Option<TaskState>,
    limit: u32,
    offset: u32,
) -> Result<Vec<TaskRecord>, StoreError> {
    let rows = db
        .rows(
            &format!(
                "SELECT {TASK_COLUMNS} FROM troupe_tasks \
                 WHERE (CAST($1 AS TEXT) IS NULL OR status = CAST($1 AS TEXT)) \
                 ORDER BY created_ms DESC, id LIMIT $2 OFFSET $3"
            ),
            &[
                status.map(TaskState::as_str).into(),
                i64::from(limit).into(),
                i64::from(offset).into(),
            ],
        )
        .await?;
    rows.iter().map(read_task).collect()
}

/// The events of task `id` stored after event `after` (all of them for 0), in order.
pub(crate) async fn events_after<S: Sql>(
    db: &mut S,
    id: &str,
    after: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = db
        .rows(
            "SELECT seq, kind, data FROM troupe_events WHERE task_id = $1 AND seq > $2 ORDER BY seq",
            &[id.into(), after.into()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredEvent {
                seq: row.int(0)?,
                task: id.to_owned(),
                kind: row.text(1)?.to_owned(),
                data: parse(row.text(2)?, "event data")?,
            })
        })
        .collect()
}

/// Deletes the tasks that finished before `cutoff`, with their branches and events.
pub(crate) async fn expire<S: Sql>(db: &mut S, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
    db.exec(
        "DELETE FROM troupe_tasks WHERE finished_ms IS NOT NULL AND finished_ms < $1",
        &[cutoff.timestamp_millis().into()],
    )
    .await
}

/// How many tasks are in each state.
pub(crate) async fn counts<S: Sql>(db: &mut S) -> Result<Vec<(TaskState, u64)>, StoreError> {
    let rows = db
        .rows("SELECT status, COUNT(*) FROM troupe_tasks GROUP BY status", &[])
        .await?;
    rows.iter()
        .map(|row| Ok((state_from(row.text(0)?)?, u64::try_from(row.int(1)?).unwrap_or(0))))
        .collect()
}

/// Applies one runner event.
async fn event_in<S: Sql>(
    db: &mut S,
    event: &TaskEvent,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    let Some(state) = status_of(db, &event.task).await? else {
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
    if !append(db, &event.task, &event.key(), kind, &data, out).await? {
        return Ok(());
    }
    let now = Utc::now().timestamp_millis();
    // A task whose verdict waits for quiet waits on (see `settle`), within its hold.
    db.exec(
        "UPDATE troupe_tasks SET hops = hops + $2, current_actor = COALESCE($3, current_actor), \
         updated_ms = $4, settle_ms = CASE WHEN settle_ms IS NULL THEN NULL \
         WHEN $5 < settle_by_ms THEN $5 ELSE settle_by_ms END WHERE id = $1",
        &[
            event.task.as_str().into(),
            i64::from(kind == "hop").into(),
            current.into(),
            now.into(),
            (now + QUIET_MS).into(),
        ],
    )
    .await?;
    transition(db, &event.task, state, Update::Running, None, out).await
}

/// Records one branch end.
async fn end_in<S: Sql>(
    db: &mut S,
    ending: &BranchEnding,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    // Read (and locked) for its existence: the verdict is told later, by `settle`.
    if status_of(db, &ending.task).await?.is_none() {
        return Ok(());
    }
    let failed = ending.end == BranchEnd::Failed;
    let spawned = serde_json::to_string(&ending.spawned).unwrap_or_else(|_| "[]".to_owned());
    let value = ending.value.to_string();
    let now = Utc::now().timestamp_millis();
    // A copy changes nothing, except that a failure outranks a success.
    let changed = db
        .exec(
            "INSERT INTO troupe_branches (task_id, branch_id, failed, spawned, value, ended_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (task_id, branch_id) DO UPDATE SET failed = 1, value = excluded.value \
             WHERE excluded.failed = 1 AND troupe_branches.failed = 0",
            &[
                ending.task.as_str().into(),
                ending.branch.as_str().into(),
                i64::from(failed).into(),
                spawned.as_str().into(),
                value.as_str().into(),
                now.into(),
            ],
        )
        .await?;
    if changed == 0 {
        return Ok(());
    }
    let end = if failed { "failed" } else { "succeeded" };
    append(
        db,
        &ending.task,
        &format!("branch/{}/{end}", ending.branch),
        "branch",
        &json!({"id": ending.branch, "end": end}),
        out,
    )
    .await?;
    let (ledger, values) = ledger_of(db, &ending.task).await?;
    let open = ledger.open_branches().len() as i64;
    let ended = values.len() as i64;
    let failed_count = values.iter().filter(|(end, _)| *end == BranchEnd::Failed).count() as i64;
    db.exec(
        "UPDATE troupe_tasks SET branches = $2, branches_ended = $3, branches_failed = $4, updated_ms = $5 \
         WHERE id = $1",
        &[
            ending.task.as_str().into(),
            (open + ended).into(),
            ended.into(),
            failed_count.into(),
            now.into(),
        ],
    )
    .await?;
    if let Some(verdict) = ledger.verdict() {
        // Recorded now, told once the task's events have gone quiet (`settle`).
        let (result, error) = outcome_of(&values, verdict);
        let update = match verdict {
            BranchEnd::Succeeded => Update::Succeeded,
            BranchEnd::Failed => Update::Failed,
        };
        let (result, error) = (result.map(|v| v.to_string()), error.map(|v| v.to_string()));
        db.exec(
            "UPDATE troupe_tasks SET verdict = $2, verdict_result = $3, verdict_error = $4, \
             settle_ms = $5, settle_by_ms = $6 WHERE id = $1",
            &[
                ending.task.as_str().into(),
                update_name(update).into(),
                result.as_deref().into(),
                error.as_deref().into(),
                (now + QUIET_MS).into(),
                (now + HOLD_MS).into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// How long a task's events must stay quiet before its verdict is told: an event that
/// travelled on the events queue (a handler's last token, an earlier actor's report)
/// can reach the gateway after the end that travelled on `x-sink`; told later, it would
/// come after the result in the task's stream.
pub(crate) const QUIET_MS: i64 = 250;
/// The longest a verdict waits for quiet.
pub(crate) const HOLD_MS: i64 = 2_000;

fn update_name(update: Update) -> &'static str {
    match update {
        Update::Failed => "failed",
        _ => "succeeded",
    }
}

/// Tells the verdicts whose tasks have been quiet long enough (or waited [`HOLD_MS`]) by
/// `now_ms`: each moves its task to succeeded or failed, with the final status event.
/// Returns the events added.
pub(crate) async fn settle<S: Sql>(db: &mut S, now_ms: i64) -> Result<Vec<StoredEvent>, StoreError> {
    let due = db
        .rows(
            &format!(
                "SELECT id, status, verdict, verdict_result, verdict_error FROM troupe_tasks \
                 WHERE settle_ms IS NOT NULL AND settle_ms <= $1 ORDER BY id{}",
                S::LOCK
            ),
            &[now_ms.into()],
        )
        .await?;
    let mut out = Vec::new();
    for task in &due {
        let id = task.text(0)?.to_owned();
        let state = state_from(task.text(1)?)?;
        let update = match task.opt_text(2)? {
            Some("failed") => Update::Failed,
            _ => Update::Succeeded,
        };
        let result = task.opt_text(3)?.map(|v| parse(v, "result")).transpose()?;
        let error = task.opt_text(4)?.map(|v| parse(v, "error")).transpose()?;
        db.exec(
            "UPDATE troupe_tasks SET settle_ms = NULL, settle_by_ms = NULL WHERE id = $1",
            &[id.as_str().into()],
        )
        .await?;
        transition(db, &id, state, update, Some((result, error)), &mut out).await?;
    }
    Ok(out)
}

/// Appends an event unless one with `key` exists; returns whether it did.
async fn append<S: Sql>(
    db: &mut S,
    task: &str,
    key: &str,
    kind: &str,
    data: &Value,
    out: &mut Vec<StoredEvent>,
) -> Result<bool, StoreError> {
    let text = data.to_string();
    let rows = db
        .rows(
            "INSERT INTO troupe_events (task_id, key, kind, data) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING seq",
            &[task.into(), key.into(), kind.into(), text.as_str().into()],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(false);
    };
    db.appended(task);
    out.push(StoredEvent {
        seq: row.int(0)?,
        task: task.to_owned(),
        kind: kind.to_owned(),
        data: data.clone(),
    });
    Ok(true)
}

/// Moves the task from `state` by `update`; on a change, stores it (with the result or
/// error when it finishes) and appends a `status` event.
async fn transition<S: Sql>(
    db: &mut S,
    task: &str,
    state: TaskState,
    update: Update,
    outcome: Option<(Option<Value>, Option<Value>)>,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    transition_keyed(db, task, state, update, outcome, None, out).await
}

/// [`transition`], its event keyed `key` instead of by the new state.
async fn transition_keyed<S: Sql>(
    db: &mut S,
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
    let (result_text, error_text) = (
        result.as_ref().map(Value::to_string),
        error.as_ref().map(Value::to_string),
    );
    db.exec(
        "UPDATE troupe_tasks SET status = $2, updated_ms = $3, finished_ms = COALESCE($4, finished_ms), \
         result = COALESCE($5, result), error = COALESCE($6, error) WHERE id = $1",
        &[
            task.into(),
            next.as_str().into(),
            now.into(),
            finished.into(),
            result_text.as_deref().into(),
            error_text.as_deref().into(),
        ],
    )
    .await?;
    let mut data = json!({"status": next});
    if let Some(result) = result {
        data["result"] = result;
    }
    if let Some(error) = error {
        data["error"] = error;
    }
    let key = key.map_or_else(|| format!("status/{next}"), str::to_owned);
    append(db, task, &key, "status", &data, out).await?;
    Ok(())
}

/// The task's state, its row locked for the rest of the transaction (see [`Sql::LOCK`]).
async fn status_of<S: Sql>(db: &mut S, task: &str) -> Result<Option<TaskState>, StoreError> {
    let rows = db
        .rows(
            &format!("SELECT status FROM troupe_tasks WHERE id = $1{}", S::LOCK),
            &[task.into()],
        )
        .await?;
    rows.first().map(|row| state_from(row.text(0)?)).transpose()
}

/// The task's ledger and each ended branch's end and value, in the order they ended.
async fn ledger_of<S: Sql>(db: &mut S, task: &str) -> Result<(Ledger, Vec<(BranchEnd, Value)>), StoreError> {
    let rows = db
        .rows(
            &format!(
                "SELECT branch_id, failed, spawned, value FROM troupe_branches WHERE task_id = $1 \
                 ORDER BY ended_ms, {}",
                S::BRANCH_ORDER
            ),
            &[task.into()],
        )
        .await?;
    let mut ledger = Ledger::new(task);
    let mut values = Vec::new();
    for row in &rows {
        let spawned: Vec<String> = serde_json::from_str(row.text(2)?).map_err(|e| StoreError::Corrupt {
            what: "spawned branches",
            detail: e.to_string(),
        })?;
        let end = if row.int(1)? != 0 {
            BranchEnd::Failed
        } else {
            BranchEnd::Succeeded
        };
        ledger.record(row.text(0)?, end, spawned);
        values.push((end, parse(row.text(3)?, "branch value")?));
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

/// Reads one row of [`TASK_COLUMNS`].
fn read_task(row: &Row) -> Result<TaskRecord, StoreError> {
    let count = |i: usize| -> Result<u64, StoreError> { Ok(u64::try_from(row.int(i)?).unwrap_or(0)) };
    Ok(TaskRecord {
        id: row.text(0)?.to_owned(),
        status: state_from(row.text(1)?)?,
        route: serde_json::from_str(row.text(2)?).map_err(|e| StoreError::Corrupt {
            what: "route",
            detail: e.to_string(),
        })?,
        current_actor: row.opt_text(3)?.map(str::to_owned),
        progress: Progress {
            hops: count(4)?,
            branches: count(5)?,
            branches_ended: count(6)?,
            branches_failed: count(7)?,
        },
        created_at: time(row.int(8)?),
        updated_at: time(row.int(9)?),
        finished_at: row.opt_int(10)?.map(time),
        result: row.opt_text(11)?.map(|v| parse(v, "result")).transpose()?,
        error: row.opt_text(12)?.map(|v| parse(v, "error")).transpose()?,
    })
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
