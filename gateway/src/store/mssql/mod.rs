//! Microsoft SQL Server 2022, for replicated gateways: several replicas share
//! one database, so every write that reads before it writes is one T-SQL
//! batch (one round trip, one transaction), queues are claimed with
//! `READPAST`, and migrations are serialised by an application lock.
//!
//! Connections (TDS over TCP, TLS through rustls) come from a small pool of
//! our own. Each session runs with `XACT_ABORT ON`: any error inside a batch
//! rolls its whole transaction back.
//!
//! Here the pool and the helpers; `migrations` the schema; `state` bridged chats,
//! subscriptions, notifications and leases; `accounts` shadow accounts,
//! refresh tokens and contacts; `outbox` the outbox and its dedupe keys.

mod accounts;
mod migrations;
mod outbox;
mod state;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tiberius::{Client, Config, Row, ToSql};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use self::migrations::migrate;
use super::StoreError;

type Connection = Client<Compat<TcpStream>>;
type SqlResult<T> = Result<T, tiberius::error::Error>;

/// Connections open at once, at most.
const POOL_SIZE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a replica waits for another one's migration to finish.
const MIGRATION_LOCK_TIMEOUT_MS: i64 = 120_000;
/// A batch chosen as a deadlock victim was rolled back whole: it is run again
/// this many times.
const DEADLOCK_RETRIES: u32 = 3;
/// Dedupe keys deleted per statement when old ones are forgotten: below the
/// lock-escalation threshold (5,000 locks), so the table is never locked
/// whole while messages are delivered.
const FORGET_BATCH: i64 = 4000;
/// How long one batch (or the wait for a connection) may take before it is
/// given up as an error the caller handles (retries, the lease's deadline).
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The server's clock, in seconds since the Unix epoch: leases are compared
/// on one clock however many replicas take part.
const SERVER_NOW: &str = "DATEDIFF_BIG(SECOND, '19700101', SYSUTCDATETIME())";

fn backend(e: impl Into<super::BackendError>) -> StoreError {
    StoreError::backend(e)
}

/// A unique index or constraint refused a row (errors 2601 and 2627).
fn is_duplicate(e: &tiberius::error::Error) -> bool {
    matches!(e.code(), Some(2601 | 2627))
}

pub struct SqlServerStore {
    /// Boxed: `Config` is large, and `Store` holds either backend inline.
    config: Box<Config>,
    /// Idle connections. A std mutex: it is never held across an await.
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection in use (idle ones hold none).
    permits: Semaphore,
}

/// A connection taken from the pool, with its permit. Dropped (a failed or
/// cancelled request), it is closed; `SqlServerStore::put_back` returns it.
struct Pooled<'a> {
    client: Connection,
    _permit: SemaphorePermit<'a>,
}

impl SqlServerStore {
    /// Connects to the server an ADO.NET connection string names (e.g.
    /// `server=tcp:db.example,1433;database=xmppfed;user=…;password=…`), and
    /// migrates the schema. TLS is on unless `encrypt=false`; the server's
    /// certificate is checked unless `TrustServerCertificate=true`.
    pub async fn connect(connection_string: &str) -> Result<Self, StoreError> {
        // The parser's message can quote the string, which holds a password.
        let config = Config::from_ado_string(connection_string).map_err(|_| {
            StoreError::backend(
                "the SQL Server connection string cannot be parsed (it is not shown): \
                 it is `key=value` pairs separated by `;`, a value holding `;` or `=` quoted"
                    .to_owned(),
            )
        })?;
        let store = Self {
            config: Box::new(config),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(POOL_SIZE),
        };
        let mut conn = store.take().await?;
        Box::pin(migrate(&mut conn.client)).await?;
        store.put_back(conn);
        Ok(store)
    }

    /// Opens a session: TCP (and the login's redirection, as Azure SQL does),
    /// then TLS and login inside tiberius.
    async fn open(&self) -> Result<Connection, StoreError> {
        let mut config = Config::clone(&self.config);
        let mut redirected = false;
        loop {
            let addr = config.get_addr();
            let fail = |e: &dyn std::fmt::Display| {
                StoreError::backend(format!("SQL Server at {addr}: {e}"))
            };
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
                .await
                .map_err(|_| fail(&"connection timed out"))?
                .map_err(|e| fail(&e))?;
            tcp.set_nodelay(true).map_err(|e| fail(&e))?;
            match Client::connect(config.clone(), tcp.compat_write()).await {
                Ok(mut client) => {
                    client
                        .simple_query("SET XACT_ABORT ON")
                        .await
                        .map_err(|e| fail(&e))?
                        .into_results()
                        .await
                        .map_err(|e| fail(&e))?;
                    return Ok(client);
                }
                Err(tiberius::error::Error::Routing { host, port }) if !redirected => {
                    redirected = true;
                    config.host(host);
                    config.port(port);
                }
                Err(e) => return Err(fail(&e)),
            }
        }
    }

    async fn take(&self) -> Result<Pooled<'_>, StoreError> {
        let permit = self.permits.acquire().await.map_err(backend)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let client = match idle {
            Some(client) => client,
            // Boxed, as is each request: tiberius' futures are large, and
            // every `Store` future would otherwise be as large as they are.
            None => Box::pin(self.open()).await?,
        };
        Ok(Pooled {
            client,
            _permit: permit,
        })
    }

    /// Returns a connection that finished its request cleanly; its permit is
    /// released after, so a waiter finds it idle.
    fn put_back(&self, conn: Pooled<'_>) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn.client);
    }

    /// Runs one batch (its own transaction, or one it opens and commits) and
    /// returns the rows of its first result set. A connection that failed is
    /// not reused.
    async fn try_rows(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
    ) -> Result<SqlResult<Vec<Row>>, StoreError> {
        let mut deadlocks = 0;
        loop {
            let mut conn = tokio::time::timeout(BATCH_TIMEOUT, self.take())
                .await
                .map_err(|_| {
                    StoreError::backend(format!(
                        "no SQL Server connection within {}s",
                        BATCH_TIMEOUT.as_secs()
                    ))
                })??;
            // A batch that hangs (a half-open connection, a blocked lock) is
            // given up: its connection is dropped, and with it the session,
            // whose open transaction the server rolls back.
            let result = tokio::time::timeout(
                BATCH_TIMEOUT,
                Box::pin(async {
                    conn.client
                        .query(sql, params)
                        .await?
                        .into_first_result()
                        .await
                }),
            )
            .await
            .map_err(|_| {
                StoreError::backend(format!(
                    "SQL Server did not answer within {}s",
                    BATCH_TIMEOUT.as_secs()
                ))
            })?;
            match result {
                Ok(rows) => {
                    self.put_back(conn);
                    return Ok(Ok(rows));
                }
                Err(e) if e.is_deadlock() && deadlocks < DEADLOCK_RETRIES => {
                    deadlocks += 1;
                    tracing::debug!(deadlocks, "store: deadlock victim, running the batch again");
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    async fn rows(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>, StoreError> {
        self.try_rows(sql, params).await?.map_err(backend)
    }

    async fn run(&self, sql: &str, params: &[&dyn ToSql]) -> Result<(), StoreError> {
        self.rows(sql, params).await.map(drop)
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let rows = self
            .rows(
                "SELECT CAST(MAX(version) AS BIGINT) FROM schema_version",
                &[],
            )
            .await?;
        int(first(&rows)?, 0)
    }
}

fn first(rows: &[Row]) -> Result<&Row, StoreError> {
    rows.first()
        .ok_or_else(|| StoreError::Backend("SQL Server returned no row".into()))
}

fn null(index: usize) -> StoreError {
    StoreError::backend(format!("SQL Server returned NULL in column {index}"))
}

fn text(row: &Row, index: usize) -> Result<String, StoreError> {
    opt_text(row, index)?.ok_or_else(|| null(index))
}

fn opt_text(row: &Row, index: usize) -> Result<Option<String>, StoreError> {
    Ok(row
        .try_get::<&str, _>(index)
        .map_err(backend)?
        .map(str::to_owned))
}

fn int(row: &Row, index: usize) -> Result<i64, StoreError> {
    row.try_get::<i64, _>(index)
        .map_err(backend)?
        .ok_or_else(|| null(index))
}

fn bytes(row: &Row, index: usize) -> Result<Vec<u8>, StoreError> {
    row.try_get::<&[u8], _>(index)
        .map_err(backend)?
        .map(<[u8]>::to_vec)
        .ok_or_else(|| null(index))
}
