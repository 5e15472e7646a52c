//! A [`FanInStore`] on PostgreSQL (feature `postgres`), shared by every replica of an
//! aggregator and kept across restarts of the database.
//!
//! Two tables (`{prefix}_origins`, `{prefix}_slices`, created if missing) and one function,
//! `{prefix}_gather`: it locks the origin's row, adds the slice and counts them in one
//! call, so of two slices that complete an origin side by side the second waits for the
//! first and alone sees every slice (each statement of a PL/pgSQL function reads what was
//! committed before it began). One round trip per slice, pipelined on one connection.
//! Merged rows are deleted by the timeout sweep once their retention has passed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use troupe_core::tls::TlsFiles;

use super::store::{Expired, FanInStore, Gathered, StoreError, StoredSlice};
use crate::pg::{PgConnector, SharedClient, plain_identifier};

/// Connections per store: the server runs each connection's statements in turn, so
/// slices of different origins gather side by side on several.
const CONNECTIONS: usize = 4;

struct Statements {
    create: String,
    gather: String,
    finish: String,
    overdue: String,
    forget: String,
    expire: String,
    slices: String,
}

impl Statements {
    fn for_prefix(t: &str) -> Self {
        Self {
            create: format!(
                r"CREATE TABLE IF NOT EXISTS {t}_origins (
                    origin TEXT PRIMARY KEY,
                    slice_count INTEGER NOT NULL,
                    state TEXT NOT NULL,
                    opened_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    merged BYTEA,
                    keep_until TIMESTAMPTZ);
                CREATE INDEX IF NOT EXISTS {t}_origins_opened ON {t}_origins (opened_at) WHERE state <> 'merged';
                CREATE TABLE IF NOT EXISTS {t}_slices (
                    origin TEXT NOT NULL,
                    idx INTEGER NOT NULL,
                    body BYTEA NOT NULL,
                    PRIMARY KEY (origin, idx));
                CREATE OR REPLACE FUNCTION {t}_gather(p_origin TEXT, p_idx INTEGER, p_count INTEGER, p_body BYTEA)
                RETURNS TABLE (tag TEXT, n INTEGER, slice INTEGER, body BYTEA) LANGUAGE plpgsql AS $$
                #variable_conflict use_column
                DECLARE
                    o_state TEXT; o_count INTEGER; o_merged BYTEA; o_until TIMESTAMPTZ; have INTEGER;
                BEGIN
                    INSERT INTO {t}_origins (origin, slice_count, state) VALUES (p_origin, p_count, 'open')
                        ON CONFLICT (origin) DO NOTHING;
                    SELECT o.state, o.slice_count, o.merged, o.keep_until INTO o_state, o_count, o_merged, o_until
                        FROM {t}_origins o WHERE o.origin = p_origin FOR UPDATE;
                    IF o_state = 'merged' AND o_until <= now() THEN
                        UPDATE {t}_origins o SET slice_count = p_count, state = 'open', opened_at = now(),
                            merged = NULL, keep_until = NULL WHERE o.origin = p_origin;
                        o_state := 'open'; o_count := p_count;
                    END IF;
                    IF o_state = 'merged' THEN
                        RETURN QUERY SELECT 'merged'::TEXT, 0, NULL::INTEGER, o_merged; RETURN;
                    END IF;
                    IF o_state = 'expiring' THEN
                        RETURN QUERY SELECT 'expiring'::TEXT, 0, NULL::INTEGER, NULL::BYTEA; RETURN;
                    END IF;
                    IF o_count <> p_count THEN
                        RETURN QUERY SELECT 'mismatch'::TEXT, o_count, NULL::INTEGER, NULL::BYTEA; RETURN;
                    END IF;
                    INSERT INTO {t}_slices (origin, idx, body) VALUES (p_origin, p_idx, p_body)
                        ON CONFLICT DO NOTHING;
                    SELECT count(*) INTO have FROM {t}_slices s WHERE s.origin = p_origin;
                    IF have < o_count THEN
                        RETURN QUERY SELECT 'open'::TEXT, have, NULL::INTEGER, NULL::BYTEA; RETURN;
                    END IF;
                    RETURN QUERY SELECT 'complete'::TEXT, have, s.idx, s.body
                        FROM {t}_slices s WHERE s.origin = p_origin ORDER BY s.idx;
                END $$;"
            ),
            gather: format!("SELECT tag, n, slice, body FROM {t}_gather($1, $2, $3, $4)"),
            finish: format!(
                "WITH gone AS (DELETE FROM {t}_slices WHERE origin = $1) \
                 UPDATE {t}_origins SET state = 'merged', merged = $2, \
                 keep_until = now() + $3::BIGINT * interval '1 millisecond' WHERE origin = $1"
            ),
            overdue: format!(
                "SELECT substr(origin, length($3) + 1) FROM {t}_origins \
                 WHERE state <> 'merged' AND opened_at < $1 AND starts_with(origin, $3) \
                 ORDER BY opened_at LIMIT $2"
            ),
            forget: format!("DELETE FROM {t}_origins WHERE state = 'merged' AND keep_until <= now()"),
            expire: format!(
                "UPDATE {t}_origins SET state = 'expiring' WHERE origin = $1 AND state IN ('open', 'expiring') \
                 RETURNING slice_count"
            ),
            slices: format!("SELECT idx, body FROM {t}_slices WHERE origin = $1 ORDER BY idx"),
        }
    }
}

/// Open aggregations on PostgreSQL. Cheap to share behind an `Arc`.
pub struct PostgresFanInStore {
    db: SharedClient,
    sql: Statements,
    /// `{scope}/`, before every origin: aggregators sharing the tables keep apart.
    scope: String,
}

impl PostgresFanInStore {
    /// Connects to `url` (see [`crate::pg`] for TLS) and creates the tables and function
    /// named after `prefix` (lower-case letters, digits, `_`) if they are missing. Origins
    /// are kept under `scope` (the aggregator's actor): aggregators sharing the tables see
    /// only their own.
    pub async fn connect(
        url: &str,
        prefix: &str,
        scope: &str,
        tls: &TlsFiles,
    ) -> Result<Arc<Self>, StoreError> {
        if !plain_identifier(prefix, 40) {
            return Err(StoreError::failed(
                "connect",
                format!("table prefix {prefix:?} is not a plain identifier (lower-case letters, digits, _)"),
            ));
        }
        let connector = PgConnector::new(url, tls).map_err(|detail| StoreError::failed("connect", detail))?;
        let store = Self {
            db: SharedClient::with_connections(connector, CONNECTIONS),
            sql: Statements::for_prefix(prefix),
            scope: format!("{scope}/"),
        };
        // Replicas starting together would both replace the function; one at a time, in
        // one transaction on one connection.
        let client = store.db.client().await?;
        let setup = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('{prefix}_setup')); {} COMMIT;",
            store.sql.create
        );
        if let Err(error) = client.batch_execute(&setup).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(store.db.error("create tables")(error));
        }
        Ok(Arc::new(store))
    }
}

fn slice_of(row: &tokio_postgres::Row, index_column: usize) -> Result<StoredSlice, tokio_postgres::Error> {
    let index: i32 = row.try_get(index_column)?;
    Ok(StoredSlice {
        index: u32::try_from(index).unwrap_or_default(),
        body: row.try_get(index_column + 1)?,
    })
}

impl PostgresFanInStore {
    fn key(&self, origin: &str) -> String {
        format!("{}{origin}", self.scope)
    }
}

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or_default()
}

impl FanInStore for PostgresFanInStore {
    async fn gather(
        &self,
        origin: &str,
        slice_count: u32,
        slice: StoredSlice,
    ) -> Result<Gathered, StoreError> {
        let (index, of) = (i32::try_from(slice.index), i32::try_from(slice_count));
        let (Ok(index), Ok(of)) = (index, of) else {
            return Err(StoreError::failed("gather", "slice index or count out of range"));
        };
        let rows = self
            .db
            .rows(
                "gather",
                &self.sql.gather,
                &[&self.key(origin), &index, &of, &slice.body],
            )
            .await?;
        let error = self.db.error("gather");
        let first = rows
            .first()
            .ok_or_else(|| StoreError::failed("gather", "the store answered nothing"))?;
        let tag: String = first.try_get(0).map_err(&error)?;
        let n: i32 = first.try_get(1).map_err(&error)?;
        match tag.as_str() {
            "open" => Ok(Gathered::Open {
                have: count(n),
                of: slice_count,
            }),
            "complete" => rows
                .iter()
                .map(|row| slice_of(row, 2))
                .collect::<Result<_, _>>()
                .map(Gathered::Complete)
                .map_err(&error),
            "merged" => Ok(Gathered::Merged(first.try_get(3).map_err(&error)?)),
            "expiring" => Ok(Gathered::Expiring),
            "mismatch" => Ok(Gathered::CountMismatch { stored: count(n) }),
            other => Err(StoreError::failed(
                "gather",
                format!("the store answered {other:?}"),
            )),
        }
    }

    async fn finish(&self, origin: &str, merged: Vec<u8>, retention: Duration) -> Result<(), StoreError> {
        let keep = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self.db
            .affected("finish", &self.sql.finish, &[&self.key(origin), &merged, &keep])
            .await
            .map(drop)
    }

    async fn overdue(&self, opened_before: SystemTime, limit: usize) -> Result<Vec<String>, StoreError> {
        // The sweep asks regularly: a good moment to forget merges past their retention.
        self.db.affected("forget merged", &self.sql.forget, &[]).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .rows(
                "overdue",
                &self.sql.overdue,
                &[&opened_before, &limit, &self.scope],
            )
            .await?;
        rows.iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(self.db.error("overdue"))
    }

    async fn expire(&self, origin: &str) -> Result<Option<Expired>, StoreError> {
        let error = self.db.error("expire");
        let origin = self.key(origin);
        let rows = self.db.rows("expire", &self.sql.expire, &[&origin]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let slice_count = count(row.try_get(0).map_err(&error)?);
        let slices = self
            .db
            .rows("expire", &self.sql.slices, &[&origin])
            .await?
            .iter()
            .map(|row| slice_of(row, 0))
            .collect::<Result<_, _>>()
            .map_err(&error)?;
        Ok(Some(Expired { slice_count, slices }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_prefixes_reach_sql() {
        assert!(plain_identifier("troupe_fanin", 40));
        for bad in ["", "Fan", "1x", "x; drop table y", "a.b"] {
            assert!(!plain_identifier(bad, 40), "{bad}");
        }
    }
}
