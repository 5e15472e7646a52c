//! A [`StateStore`] on PostgreSQL (feature `postgres`), shared by every replica of an actor
//! and kept with the database.
//!
//! One table, `{prefix}_state (scope, key, value, version)`, and a sequence that hands out
//! versions, so a key deleted and written again never reuses one. Writes that check
//! something (the key limit, a compare-and-set) are one PL/pgSQL function each, which
//! locks the key's row; a new key's row cannot be locked before it exists, so of two
//! replicas creating one key the second finds it there on insert and reports a conflict.

use std::sync::Arc;

use troupe_core::tls::TlsFiles;

use super::store::{Expect, StateError, StateStore, Swapped, Versioned};
use super::{StateLimits, check_write};
use crate::idempotency::StoreError;
use crate::pg::{PgConnector, SharedClient, plain_identifier};

/// Connections per store: the server runs each connection's statements in turn.
const CONNECTIONS: usize = 4;

struct Statements {
    create: String,
    get: String,
    put: String,
    delete: String,
    list: String,
    cas: String,
}

impl Statements {
    fn for_prefix(t: &str) -> Self {
        Self {
            create: format!(
                r"CREATE TABLE IF NOT EXISTS {t}_state (
                    scope TEXT NOT NULL,
                    key TEXT NOT NULL,
                    value BYTEA NOT NULL,
                    version BIGINT NOT NULL,
                    PRIMARY KEY (scope, key));
                CREATE SEQUENCE IF NOT EXISTS {t}_state_version;
                CREATE OR REPLACE FUNCTION {t}_state_cas(
                    p_scope TEXT, p_key TEXT, p_expected BIGINT, p_delete BOOLEAN, p_value BYTEA, p_max BIGINT)
                RETURNS TABLE (tag TEXT, value BYTEA, version BIGINT) LANGUAGE plpgsql AS $$
                #variable_conflict use_column
                DECLARE
                    now_value BYTEA; now_version BIGINT; written BIGINT;
                BEGIN
                    SELECT s.value, s.version INTO now_value, now_version FROM {t}_state s
                        WHERE s.scope = p_scope AND s.key = p_key FOR UPDATE;
                    IF p_expected >= 0 AND COALESCE(now_version, 0) <> p_expected THEN
                        RETURN QUERY SELECT 'conflict'::TEXT, now_value, now_version; RETURN;
                    END IF;
                    IF p_delete THEN
                        DELETE FROM {t}_state s WHERE s.scope = p_scope AND s.key = p_key;
                        RETURN QUERY SELECT 'done'::TEXT, NULL::BYTEA, NULL::BIGINT; RETURN;
                    END IF;
                    IF now_version IS NULL THEN
                        IF (SELECT count(*) FROM {t}_state s WHERE s.scope = p_scope) >= p_max THEN
                            RETURN QUERY SELECT 'full'::TEXT, NULL::BYTEA, NULL::BIGINT; RETURN;
                        END IF;
                        INSERT INTO {t}_state (scope, key, value, version)
                            VALUES (p_scope, p_key, p_value, nextval('{t}_state_version'))
                            ON CONFLICT (scope, key) DO NOTHING RETURNING version INTO written;
                        IF written IS NULL THEN
                            -- Created by another writer since the look above.
                            IF p_expected < 0 THEN
                                UPDATE {t}_state s SET value = p_value, version = nextval('{t}_state_version')
                                    WHERE s.scope = p_scope AND s.key = p_key RETURNING s.version INTO written;
                            ELSE
                                RETURN QUERY SELECT 'conflict'::TEXT, s.value, s.version FROM {t}_state s
                                    WHERE s.scope = p_scope AND s.key = p_key;
                                RETURN;
                            END IF;
                        END IF;
                    ELSE
                        UPDATE {t}_state s SET value = p_value, version = nextval('{t}_state_version')
                            WHERE s.scope = p_scope AND s.key = p_key RETURNING s.version INTO written;
                    END IF;
                    RETURN QUERY SELECT 'done'::TEXT, NULL::BYTEA, written;
                END $$;"
            ),
            get: format!("SELECT value, version FROM {t}_state WHERE scope = $1 AND key = $2"),
            // A put is a compare-and-set that expects anything (-1).
            put: format!("SELECT tag, value, version FROM {t}_state_cas($1, $2, -1, false, $3, $4)"),
            delete: format!("DELETE FROM {t}_state WHERE scope = $1 AND key = $2"),
            list: format!(
                "SELECT key FROM {t}_state WHERE scope = $1 AND starts_with(key, $2) ORDER BY key COLLATE \"C\" LIMIT $3"
            ),
            cas: format!("SELECT tag, value, version FROM {t}_state_cas($1, $2, $3, $4, $5, $6)"),
        }
    }
}

/// One actor's state on PostgreSQL. Cheap to share behind an `Arc`.
pub struct PostgresStateStore {
    db: SharedClient,
    sql: Statements,
    scope: String,
    limits: StateLimits,
}

impl PostgresStateStore {
    /// Connects to `url` (see [`crate::pg`] for TLS), creates the table, sequence and
    /// function named after `prefix` (lower-case letters, digits, `_`) if missing, and
    /// keeps `actor`'s state there.
    pub async fn connect(
        url: &str,
        prefix: &str,
        actor: &str,
        limits: StateLimits,
        tls: &TlsFiles,
    ) -> Result<Arc<Self>, StateError> {
        if !plain_identifier(prefix, 40) {
            return Err(StoreError::failed(
                "connect",
                format!("table prefix {prefix:?} is not a plain identifier (lower-case letters, digits, _)"),
            )
            .into());
        }
        let connector = PgConnector::new(url, tls).map_err(|detail| StoreError::failed("connect", detail))?;
        let store = Self {
            db: SharedClient::with_connections(connector, CONNECTIONS),
            sql: Statements::for_prefix(prefix),
            scope: actor.to_owned(),
            limits,
        };
        // Replicas starting together would both replace the function: one at a time.
        let client = store.db.client().await?;
        let setup = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('{prefix}_state_setup')); {} COMMIT;",
            store.sql.create
        );
        if let Err(error) = client.batch_execute(&setup).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(store.db.error("create tables")(error).into());
        }
        Ok(Arc::new(store))
    }

    fn max_keys(&self) -> i64 {
        i64::try_from(self.limits.max_keys).unwrap_or(i64::MAX)
    }

    /// Runs the compare-and-set function and reads its one row.
    async fn swap(
        &self,
        operation: &'static str,
        key: &str,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Swapped, StateError> {
        let rows = self.db.rows(operation, statement, params).await?;
        let error = self.db.error(operation);
        let row = rows
            .first()
            .ok_or_else(|| StoreError::failed(operation, "the store answered nothing"))?;
        let tag: String = row.try_get(0).map_err(&error)?;
        let value: Option<Vec<u8>> = row.try_get(1).map_err(&error)?;
        let version: Option<i64> = row.try_get(2).map_err(&error)?;
        let version = version.map(|v| u64::try_from(v).unwrap_or_default());
        match tag.as_str() {
            "done" => Ok(Swapped::Done(version)),
            "conflict" => Ok(Swapped::Conflict(
                value
                    .zip(version)
                    .map(|(value, version)| Versioned { value, version }),
            )),
            "full" => Err(self.limits.too_many(key)),
            other => Err(StoreError::failed(operation, format!("the store answered {other:?}")).into()),
        }
    }
}

impl StateStore for PostgresStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let rows = self.db.rows("get", &self.sql.get, &[&self.scope, &key]).await?;
        let error = self.db.error("get");
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let version: i64 = row.try_get(1).map_err(&error)?;
        Ok(Some(Versioned {
            value: row.try_get(0).map_err(&error)?,
            version: u64::try_from(version).unwrap_or_default(),
        }))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StateError> {
        check_write(&self.limits, key, Some(&value))?;
        let max = self.max_keys();
        match self
            .swap("put", key, &self.sql.put, &[&self.scope, &key, &value, &max])
            .await?
        {
            Swapped::Done(Some(version)) => Ok(version),
            other => Err(StoreError::failed("put", format!("the store answered {other:?}")).into()),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let gone = self
            .db
            .affected("delete", &self.sql.delete, &[&self.scope, &key])
            .await?;
        Ok(gone > 0)
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .rows("list", &self.sql.list, &[&self.scope, &prefix, &limit])
            .await?;
        rows.iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| self.db.error("list")(e).into())
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> Result<Swapped, StateError> {
        check_write(&self.limits, key, value.as_deref())?;
        let expected = i64::try_from(expect.version()).unwrap_or(i64::MAX);
        let delete = value.is_none();
        let value = value.unwrap_or_default();
        let max = self.max_keys();
        self.swap(
            "compare-and-set",
            key,
            &self.sql.cas,
            &[&self.scope, &key, &expected, &delete, &value, &max],
        )
        .await
    }
}
