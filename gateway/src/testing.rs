//! Helpers for tests that run the gateway on the real PostgreSQL server.

/// The URL of a new, empty schema on the PostgreSQL server at `TROUPE_POSTGRES_URL`
/// (default `postgres://postgres@127.0.0.1:5432/test`): every store opened on it sees only
/// what tests using the same URL wrote. Panics when the server does not answer: a test
/// that needs it cannot go on.
pub async fn fresh_postgres_schema() -> String {
    let url = std::env::var("TROUPE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("gateway_test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => panic!("PostgreSQL does not answer at TROUPE_POSTGRES_URL: {e}"),
    };
    tokio::spawn(connection);
    if let Err(e) = client.batch_execute(&format!("CREATE SCHEMA {schema}")).await {
        panic!("cannot create schema {schema}: {e}");
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}
