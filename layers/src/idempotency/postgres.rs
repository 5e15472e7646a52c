//! An [`IdempotencyStore`] on PostgreSQL (feature `postgres`), shared by every process of an
//! actor and kept across restarts of the database itself.
//!
//! One row per hop in one table (`troupe_hops` by default, created if missing):
//! `key` (`{prefix}{hop key}`), `state` (see the `record` module: `p:{token}`, `c:{json}`,
//! `done`) and `expires_at`. A claim is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE
//! expired`, so two workers never both acquire a hop; recording and releasing compare the
//! claim token, as on Redis. Expired rows are read as absent and deleted by a sweep once a
//! minute.
//!
//! The connection is re-established on the next call after it breaks, so a database
//! outage makes calls fail as [unavailable](StoreError::unavailable) (the runner holds its
//! deliveries) until the database answers again.
//!
//! Connections and TLS: see [`crate::pg`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use troupe_core::Publication;
use troupe_core::redact::Redacted;

use crate::pg::{PgConnector, SharedClient, plain_identifier};
use troupe_core::tls::TlsFiles;

use super::record::{self, millis};
use super::store::{Claim, IdempotencyStore, StoreError};

/// Settings of a [`PostgresStore`]. Its `Debug` shows the URL redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresStoreConfig {
    /// Server, e.g. `postgres://troupe:secret@db:5432/troupe`.
    pub url: String,
    /// The table of hop records: lower-case letters, digits and `_`.
    pub table: String,
    /// Prefix of every key (namespace several meshes in one table).
    pub prefix: String,
    /// How long a finished hop is remembered.
    pub ttl: Duration,
    /// For `sslmode=require`: the CA bundle trusted besides the system roots and the
    /// client certificate for servers that verify clients.
    pub tls: TlsFiles,
}

impl std::fmt::Debug for PostgresStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStoreConfig")
            .field("url", &Redacted(&self.url))
            .field("table", &self.table)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for PostgresStoreConfig {
    /// `postgres://postgres@127.0.0.1:5432/postgres`, table `troupe_hops`, prefix
    /// `troupe:hop:`, one day.
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            table: "troupe_hops".to_owned(),
            prefix: "troupe:hop:".to_owned(),
            ttl: Duration::from_secs(24 * 3600),
            tls: TlsFiles::default(),
        }
    }
}

/// An idempotency store on PostgreSQL. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    config: PostgresStoreConfig,
    db: SharedClient,
    sql: Statements,
    /// Claim tokens of hops this process holds.
    tokens: Mutex<HashMap<String, String>>,
}

/// The statements, with the table name filled in (checked to be a plain identifier).
struct Statements {
    create: String,
    claim: String,
    look: String,
    complete: String,
    publish: String,
    release: String,
    sweep: String,
}

impl Statements {
    fn for_table(t: &str) -> Self {
        let expires = "now() + $3::bigint * interval '1 millisecond'";
        Self {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, state TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL); \
                 CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)"
            ),
            claim: format!(
                "INSERT INTO {t} (key, state, expires_at) VALUES ($1, $2, {expires}) \
                 ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, expires_at = EXCLUDED.expires_at \
                 WHERE {t}.expires_at <= now() RETURNING state"
            ),
            look: format!("SELECT state FROM {t} WHERE key = $1 AND expires_at > now()"),
            complete: format!(
                "UPDATE {t} SET state = $2, expires_at = {expires} WHERE key = $1 AND state = $4"
            ),
            publish: format!("UPDATE {t} SET state = $2, expires_at = {expires} WHERE key = $1"),
            release: format!("DELETE FROM {t} WHERE key = $1 AND state = $2"),
            sweep: format!("DELETE FROM {t} WHERE expires_at <= now()"),
        }
    }
}

impl PostgresStore {
    /// Connects, creates the table if it is missing and starts the sweep of expired rows.
    pub async fn connect(config: PostgresStoreConfig) -> Result<Arc<Self>, StoreError> {
        if !plain_identifier(&config.table, 48) {
            return Err(StoreError::failed(
                "connect",
                format!(
                    "table name {:?} is not a plain identifier (lower-case letters, digits, _)",
                    config.table
                ),
            ));
        }
        let connector = PgConnector::new(&config.url, &config.tls)
            .map_err(|detail| StoreError::failed("connect", detail))?;
        let store = Arc::new(Self {
            sql: Statements::for_table(&config.table),
            db: SharedClient::new(connector),
            config,
            tokens: Mutex::default(),
        });
        store.db.setup(&store.sql.create).await?;
        tokio::spawn(sweep(Arc::downgrade(&store)));
        Ok(store)
    }

    fn key(&self, hop: &str) -> String {
        format!("{}{hop}", self.config.prefix)
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Single inserts and removals: a poisoned map is still consistent.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn rows(
        &self,
        operation: &'static str,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.db.rows(operation, statement, params).await
    }

    async fn affected(
        &self,
        operation: &'static str,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.db.affected(operation, statement, params).await
    }

    fn ttl_millis(d: Duration) -> i64 {
        i64::try_from(millis(d)).unwrap_or(i64::MAX)
    }
}

/// Deletes expired rows once a minute while the store lives.
async fn sweep(store: Weak<PostgresStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        if let Err(error) = store.affected("sweep", &store.sql.sweep, &[]).await {
            tracing::debug!(%error, "sweeping expired hop records failed; next minute again");
        }
    }
}

impl IdempotencyStore for PostgresStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
        // As on Redis: a duplicate inside this process waits while this process works on
        // the hop, so one token per hop per process.
        if self.tokens().contains_key(key) {
            return Ok(Claim::InProgress);
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (row_key, state) = (self.key(key), record::claimed(&token));
        let acquired = self
            .rows(
                "claim",
                &self.sql.claim,
                &[&row_key, &state, &Self::ttl_millis(ttl)],
            )
            .await?;
        if !acquired.is_empty() {
            self.tokens().insert(key.to_owned(), token);
            return Ok(Claim::Acquired);
        }
        let found = self.rows("claim", &self.sql.look, &[&row_key]).await?;
        match found.first() {
            Some(row) => record::found(&row.try_get::<_, String>(0).map_err(self.db.error("claim"))?),
            // Expired between the two statements: let the redelivery claim it.
            None => Ok(Claim::InProgress),
        }
    }

    async fn complete(&self, key: &str, outputs: &Arc<[Publication]>) -> Result<(), StoreError> {
        let token = self.tokens().remove(key).ok_or_else(|| {
            StoreError::failed("record", format!("this process holds no claim on hop {key}"))
        })?;
        let state = record::completed(outputs)?;
        let ttl = Self::ttl_millis(self.config.ttl);
        let own = record::claimed(&token);
        let updated = self
            .affected(
                "record",
                &self.sql.complete,
                &[&self.key(key), &state, &ttl, &own],
            )
            .await?;
        if updated == 1 {
            Ok(())
        } else {
            Err(StoreError::failed(
                "record",
                format!("the claim on hop {key} lapsed and was taken over; its outputs are not recorded"),
            ))
        }
    }

    async fn mark_published(&self, key: &str) -> Result<(), StoreError> {
        let ttl = Self::ttl_millis(self.config.ttl);
        self.affected(
            "mark published",
            &self.sql.publish,
            &[&self.key(key), &record::PUBLISHED, &ttl],
        )
        .await
        .map(drop)
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let Some(token) = self.tokens().remove(key) else {
            return Ok(());
        };
        self.affected(
            "release",
            &self.sql.release,
            &[&self.key(key), &record::claimed(&token)],
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_table_names_reach_sql() {
        for ok in ["troupe_hops", "_t", "hops2"] {
            assert!(plain_identifier(ok, 48), "{ok}");
        }
        for bad in ["", "Hops", "2hops", "hops; drop table x", "a.b", "hops\""] {
            assert!(!plain_identifier(bad, 48), "{bad}");
        }
    }
}
