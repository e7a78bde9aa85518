//! PostgreSQL (13 or later), for replicated gateways: several replicas share
//! one database. Every operation that reads before it writes is one
//! statement (`INSERT … ON CONFLICT`, `UPDATE … FROM (… FOR UPDATE SKIP
//! LOCKED)`) or one short transaction whose locks are named where it is
//! written; migrations are serialised by an advisory lock.
//!
//! Isolation: READ COMMITTED (PostgreSQL's default) throughout. Each statement
//! sees what was committed before it started, and a row it must lock or
//! update that another transaction changed meanwhile is re-read and its
//! condition checked again (`EvalPlanQual`), which is what the single-statement
//! upserts, claims and lease takes rely on. Deadlocks and serialization
//! failures (SQLSTATE 40P01, 40001) roll the transaction back whole, and it is
//! run again a few times.
//!
//! Connections come from a deadpool pool of `pool_size`; TLS is ours, over
//! rustls (`tls`). Each operation is bounded by `BATCH_TIMEOUT`: a connection
//! that does not answer in time is dropped, not put back, and the server
//! rolls its transaction back when the session goes.
//!
//! Here the pool and the helpers; `migrations` the schema; `state` bridged
//! chats, subscriptions, notifications and leases; `accounts` shadow accounts,
//! refresh tokens and contacts; `outbox` the outbox and its dedupe keys.

mod accounts;
mod migrations;
mod outbox;
mod state;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use xmppfed_config::{PostgresConfig, PostgresSslMode};

use super::StoreError;

type PgError = tokio_postgres::Error;
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one operation (or the wait for a connection) may take before it
/// is given up as an error the caller handles (retries, the lease's deadline).
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pooled connection's liveness check may take.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long migrating may take, waiting for another replica's migration included.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// A transaction rolled back as a deadlock victim or a serialization failure
/// is run again this many times.
const TRANSIENT_RETRIES: u32 = 3;
/// Dedupe keys deleted per statement when old ones are forgotten: short
/// transactions, so vacuum and replicas' deliveries never wait long.
const FORGET_BATCH: i64 = 5000;

/// The server's clock, in whole seconds since the Unix epoch: leases and
/// claims are compared on one clock however many replicas take part.
/// `now()`, not `clock_timestamp()`: `now()` is the start of the transaction,
/// one instant however often a statement reads it (the comparison and the
/// new expiry agree; `clock_timestamp()` is read anew at each use), and every
/// lease or claim statement here is its own transaction, so it is when the
/// statement began: after the caller asked, and before any wait for another's
/// row lock. So a lease looks lapsed no sooner than it truly is, and the
/// expiry a holder writes is no earlier than its own reckoning from when it
/// asked (less the fraction of a second `floor` drops; the bridge gives its
/// lease up two thirds in). `floor` truncates as SQL Server's DATEDIFF does
/// (a cast would round up half the time).
macro_rules! server_now {
    () => {
        "floor(extract(epoch FROM now()))::bigint"
    };
}
use server_now;

/// Runs `$body` (an async block's contents, `$conn` the pooled connection,
/// `?` on the driver's errors) within `BATCH_TIMEOUT`, again on a connection
/// taken anew when it was rolled back as a deadlock victim or a
/// serialization failure; evaluates to `Result<T, StoreError>`. A macro, not
/// a function taking an async closure: the futures of a closure called with
/// a borrowed connection are not provably `Send` for every borrow, and the
/// store's futures must be. An error inside a transaction rolls it back as
/// the transaction is dropped.
macro_rules! with_connection {
    ($store:expr, |$conn:ident| $body:block) => {{
        let store = $store;
        let mut retries = 0;
        loop {
            let mut pooled = store.take().await?;
            let $conn = &mut pooled;
            let outcome = tokio::time::timeout(
                $crate::store::postgres::BATCH_TIMEOUT,
                Box::pin(async {
                    let result: Result<_, $crate::store::postgres::PgError> =
                        (async { $body }).await;
                    result
                }),
            )
            .await;
            if let Some(value) = store.settle(pooled, outcome, &mut retries)? {
                break Ok(value);
            }
        }
    }};
}
use with_connection;

/// A PostgreSQL failure, naming the server and login (never the password).
#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL {server}: {message}")]
pub struct PostgresError {
    server: Arc<str>,
    message: String,
    #[source]
    source: Option<PgError>,
}

pub struct PostgresStore {
    pool: Pool,
    /// `user@host:port/database`, for messages.
    server: Arc<str>,
}

impl PostgresStore {
    /// Connects (a first connection is opened at once, so that a wrong
    /// address, certificate or password is reported at startup) and migrates.
    pub async fn connect(config: &PostgresConfig, password: &str) -> Result<Self, StoreError> {
        let server: Arc<str> = format!(
            "{}@{}:{}/{}",
            config.user, config.host, config.port, config.database
        )
        .into();
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.host)
            .port(config.port)
            .dbname(&config.database)
            .user(&config.user)
            .password(password)
            .application_name("xmppfed-gateway")
            .connect_timeout(CONNECT_TIMEOUT)
            // A peer gone without a FIN (a node lost) is noticed in about a minute.
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let manager_config = ManagerConfig {
            // A closed connection is not handed out; one that died silently
            // fails its statement, or times out and is dropped.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match config.sslmode {
            PostgresSslMode::Disable => {
                pg.ssl_mode(SslMode::Disable);
                Manager::from_config(pg, NoTls, manager_config)
            }
            PostgresSslMode::VerifyFull => {
                pg.ssl_mode(SslMode::Require);
                let tls = tls::RustlsConnect::new(config.ca_file.as_deref())
                    .map_err(|message| StoreError::backend(failure(&server, message, None)))?;
                Manager::from_config(pg, tls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(usize::from(config.pool_size.max(1)))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(BATCH_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .map_err(|e| StoreError::backend(failure(&server, e.to_string(), None)))?;
        let store = Self { pool, server };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.take().await?;
        let migrated =
            tokio::time::timeout(MIGRATION_TIMEOUT, Box::pin(migrations::migrate(&mut conn))).await;
        match migrated {
            Ok(Ok(())) => Ok(()),
            Ok(Err(migrations::Failed::TooNew { found, supported })) => {
                Err(StoreError::TooNew { found, supported })
            }
            Ok(Err(migrations::Failed::Pg(e)))
                if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) =>
            {
                Err(self.fail(format!(
                    "another gateway has held the schema migration lock (pg_advisory_xact_lock) \
                     for over {}: {}",
                    migrations::LOCK_TIMEOUT,
                    describe(&e)
                )))
            }
            Ok(Err(migrations::Failed::Pg(e))) => Err(self.error(e)),
            Err(_) => {
                drop(Object::take(conn));
                Err(self.fail(format!(
                    "migrating took longer than {}s",
                    MIGRATION_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// A connection from the pool: an idle one that is still open, or a new one.
    async fn take(&self) -> Result<Object, StoreError> {
        Box::pin(self.pool.get()).await.map_err(|e| match e {
            PoolError::Backend(e) => self.error(e),
            PoolError::Timeout(TimeoutType::Wait) => self.fail(format!(
                "no connection free within {}s (all {} in use)",
                BATCH_TIMEOUT.as_secs(),
                self.pool.status().max_size
            )),
            PoolError::Timeout(TimeoutType::Create) => self.fail(format!(
                "no connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            )),
            other => self.fail(other.to_string()),
        })
    }

    /// What became of one try of an operation (`with_connection!`): its
    /// value, `None` to run it again (rolled back as a deadlock victim or a
    /// serialization failure), or the error. A connection that did not
    /// answer in time is dropped, not put back: its session, and any
    /// transaction open in it, end with it.
    fn settle<T>(
        &self,
        conn: Object,
        outcome: Result<Result<T, PgError>, tokio::time::error::Elapsed>,
        retries: &mut u32,
    ) -> Result<Option<T>, StoreError> {
        match outcome {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(e)) if is_transient(&e) && *retries < TRANSIENT_RETRIES => {
                *retries += 1;
                tracing::debug!(retries, error = %describe(&e), "store: transaction rolled back, running it again");
                Ok(None)
            }
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => {
                drop(Object::take(conn));
                Err(self.fail(format!(
                    "no answer within {}s (the connection is dropped)",
                    BATCH_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Runs one statement (prepared once per connection); the rows it changed.
    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        with_connection!(self, |c| {
            let statement = c.prepare_cached(sql).await?;
            c.execute(&statement, params).await
        })
    }

    /// Runs one query and reads each row with `read`.
    async fn query<T>(
        &self,
        sql: &str,
        params: Params<'_>,
        read: impl Fn(&Row) -> Result<T, PgError>,
    ) -> Result<Vec<T>, StoreError> {
        with_connection!(self, |c| {
            let statement = c.prepare_cached(sql).await?;
            c.query(&statement, params)
                .await?
                .iter()
                .map(&read)
                .collect()
        })
    }

    /// The first row of a query, read with `read`, if there is one.
    async fn query_opt<T>(
        &self,
        sql: &str,
        params: Params<'_>,
        read: impl Fn(&Row) -> Result<T, PgError>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.query(sql, params, read).await?.into_iter().next())
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let version = self
            .query_opt("SELECT MAX(version) FROM schema_version", &[], |r| {
                r.try_get::<_, Option<i64>>(0)
            })
            .await?;
        Ok(version.flatten().unwrap_or(0))
    }

    fn error(&self, e: PgError) -> StoreError {
        StoreError::backend(failure(&self.server, describe(&e), Some(e)))
    }

    fn fail(&self, message: String) -> StoreError {
        StoreError::backend(failure(&self.server, message, None))
    }
}

fn failure(server: &Arc<str>, message: String, source: Option<PgError>) -> PostgresError {
    PostgresError {
        server: server.clone(),
        message,
        source,
    }
}

/// Rolled back whole by the server, and worth running again.
fn is_transient(e: &PgError) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED | &SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

/// What went wrong, in one line: the server's own message and SQLSTATE, or
/// the driver's error with its causes (tokio-postgres' own `Display` is only
/// "db error", "error performing TLS handshake", …).
fn describe(e: &PgError) -> String {
    if let Some(db) = e.as_db_error() {
        let mut line = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            line.push_str(&format!(" ({detail})"));
        }
        return line;
    }
    let mut line = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}
