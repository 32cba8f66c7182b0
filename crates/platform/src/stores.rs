//! Postgres and Redis clients.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::CommonConfig;

/// A service's pool settings. sqlx tests a connection with a round trip each time it goes back
/// to the pool, and by default again each time it is taken out: two round trips beside every
/// query, about a seventh of dispatch's CPU under load (perf). The test on release stays (it cannot
/// be turned off, and it already drops a connection that broke in use); the one on acquire
/// is off, so a connection that broke while idle (Postgres restarted) fails one query, which
/// the caller treats like any store failure (`UNAVAILABLE` with retry, a batch redone), and
/// is then dropped.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
}

pub async fn postgres(config: &CommonConfig) -> Result<PgPool, sqlx::Error> {
    pool_options(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&config.database_url)
        .await
}

/// A reconnecting Redis connection with bounded waits: a hung Redis must turn into an error
/// (callers fall back to Postgres or retry), never into a request that waits forever.
/// A pool that connects on first use: a service starts (and reports `NOT_SERVING`) while
/// Postgres is still down, instead of exiting.
pub fn postgres_lazy(config: &CommonConfig) -> Result<PgPool, sqlx::Error> {
    pool_options(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&config.database_url)
}

pub async fn redis(config: &CommonConfig) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(config.redis_url.as_str())?;
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(config.redis_timeout)
        .set_number_of_retries(3);
    redis::aio::ConnectionManager::new_with_config(client, settings).await
}

/// Runs `migrator` inside `schema`: the schema is created if missing and sqlx's bookkeeping
/// table lands in it, so each service's migrations are versioned independently in one
/// database.
pub async fn migrate_schema(
    pool: &PgPool,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    if !schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(sqlx::Error::Configuration(
            format!("schema name {schema:?} must be lowercase letters and '_'").into(),
        ));
    }
    let mut conn = pool.acquire().await?.detach();
    // Two processes may migrate at once (tests, replicas): serialise schema creation.
    sqlx::query!("SELECT pg_advisory_lock(hashtext('finestra-migrate'))")
        .execute(&mut conn)
        .await?;
    let result = async {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("SET search_path TO {schema}"))
            .execute(&mut conn)
            .await?;
        migrator.run(&mut conn).await.map_err(sqlx::Error::from)
    }
    .await;
    // It returns a boolean: fetched (a query with a result has no `execute`), then ignored.
    let _ = sqlx::query_scalar!("SELECT pg_advisory_unlock(hashtext('finestra-migrate'))")
        .fetch_one(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}
