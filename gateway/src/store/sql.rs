//! What the task rules need of a database: run a statement, read rows. Written once
//! against this, the rules ([`super::tasks`]) run unchanged on SQLite and PostgreSQL.
//!
//! Statements use PostgreSQL's `$1` placeholders and SQL both databases read the same way
//! (`ON CONFLICT`, `RETURNING`, `CAST`); the two differences are constants of the trait.

use super::StoreError;

/// One statement argument.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
    Null,
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(text: &'a str) -> Self {
        Arg::Text(text)
    }
}

impl From<i64> for Arg<'_> {
    fn from(value: i64) -> Self {
        Arg::Int(value)
    }
}

impl<'a, T: Into<Arg<'a>>> From<Option<T>> for Arg<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Arg::Null, Into::into)
    }
}

/// One value read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// One row read, its cells in the statement's column order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> &Cell {
        self.0.get(i).unwrap_or(&Cell::Null)
    }

    fn unexpected(&self, i: usize, wanted: &str) -> StoreError {
        StoreError::Corrupt {
            what: "column",
            detail: format!("column {i} holds {:?}, not {wanted}", self.cell(i)),
        }
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i) {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(*v)),
            Cell::Text(_) => Err(self.unexpected(i, "an integer")),
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?.ok_or_else(|| self.unexpected(i, "an integer"))
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        match self.cell(i) {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v)),
            Cell::Int(_) => Err(self.unexpected(i, "text")),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<&str, StoreError> {
        self.opt_text(i)?.ok_or_else(|| self.unexpected(i, "text"))
    }
}

/// A connection, or a transaction on one, that the task rules run on.
pub(crate) trait Sql {
    /// Appended to the read of a task's row inside a transaction: on PostgreSQL it locks
    /// the row, so changes to one task (from any gateway replica) take turns and its
    /// events' sequence numbers are in commit order. SQLite has one writer at a time.
    const LOCK: &'static str;
    /// The column that orders a task's branches as they were recorded.
    const BRANCH_ORDER: &'static str;

    /// Runs `sql`; returns how many rows it changed.
    async fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError>;

    /// Runs `sql`; returns the rows it read.
    async fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError>;

    /// Notes that events of `task` were appended in this transaction.
    fn appended(&mut self, _task: &str) {}
}
