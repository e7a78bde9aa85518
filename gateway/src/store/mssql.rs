//! Microsoft SQL Server 2022, for replicated gateways: several replicas share
//! one database, so every write that reads before it writes is one T-SQL
//! batch (one round trip, one transaction), queues are claimed with
//! `READPAST`, and migrations are serialised by an application lock.
//!
//! Connections (TDS over TCP, TLS through rustls) come from a small pool of
//! our own. Each session runs with `XACT_ABORT ON`: any error inside a batch
//! rolls its whole transaction back.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tiberius::{Client, Config, Row, ToSql};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::{
    Contact, Epoch, OutboxRow, QueuedNotification, ShadowAccount, StoreError, StoredSubscription,
    now,
};

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

/// Each migration, in order, as separate batches (a batch is compiled whole,
/// so a statement using a column added by an earlier one goes in a later
/// batch); the schema version is the number of migrations applied. Tables and
/// columns are named as in SQLite. Keys compare and sort by code point
/// (`_BIN2`), case-sensitively, as SQLite's TEXT does; NVARCHAR(450) keeps a
/// key within the 900-byte limit of a clustered index.
const MIGRATIONS: &[&[&str]] = &[
    // 1: the first schema.
    &[
        "CREATE TABLE cursors (
            [key] NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT cursors_pk PRIMARY KEY,
            value NVARCHAR(MAX) NOT NULL);
         CREATE TABLE subscriptions (
            id NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT subscriptions_pk PRIMARY KEY,
            resource NVARCHAR(MAX) NOT NULL,
            change_type NVARCHAR(450) NOT NULL,
            as_user NVARCHAR(450) NULL,
            lifetime_secs BIGINT NOT NULL,
            expires_at BIGINT NOT NULL);
         CREATE TABLE notifications (
            seq BIGINT IDENTITY(1,1) NOT NULL CONSTRAINT notifications_pk PRIMARY KEY,
            body NVARCHAR(MAX) NOT NULL,
            received_at BIGINT NOT NULL,
            claimed_until BIGINT NOT NULL CONSTRAINT notifications_claimed_until_default DEFAULT 0);
         CREATE TABLE shadow_accounts (
            jid NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT shadow_accounts_pk PRIMARY KEY,
            upn NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT shadow_accounts_upn UNIQUE,
            object_id NVARCHAR(450) NOT NULL,
            credential VARBINARY(MAX) NOT NULL,
            last_used BIGINT NOT NULL);
         -- Two keys: a nonclustered primary key (at most 1,700 bytes), so the
         -- Teams user is at most 320 characters (an address or a UPN).
         CREATE TABLE contacts (
            teams_user NVARCHAR(320) COLLATE Latin1_General_100_BIN2 NOT NULL,
            remote_jid NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL,
            state NVARCHAR(450) NOT NULL,
            CONSTRAINT contacts_pk PRIMARY KEY NONCLUSTERED (teams_user, remote_jid));
         CREATE TABLE outbox (
            seq BIGINT IDENTITY(1,1) NOT NULL CONSTRAINT outbox_pk PRIMARY KEY,
            direction NVARCHAR(450) NOT NULL,
            conversation NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL,
            dedupe_key NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL,
            payload NVARCHAR(MAX) NOT NULL,
            attempts BIGINT NOT NULL CONSTRAINT outbox_attempts_default DEFAULT 0,
            next_attempt_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL);
         CREATE TABLE delivered (
            dedupe_key NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT delivered_pk PRIMARY KEY,
            at BIGINT NOT NULL);",
        "CREATE UNIQUE INDEX outbox_dedupe ON outbox (dedupe_key);
         CREATE INDEX outbox_conversation ON outbox (conversation, seq) INCLUDE (next_attempt_at);
         CREATE INDEX outbox_due ON outbox (next_attempt_at);",
    ],
    // 2: leases (which replica runs the bridge).
    &["CREATE TABLE leases (
        name NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT leases_pk PRIMARY KEY,
        holder NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL,
        expires_at BIGINT NOT NULL);"],
    // 3: old dedupe keys are forgotten by age.
    &["CREATE INDEX delivered_at ON delivered (at);"],
    // 4: each shadow account's latest refresh token, sealed like its password,
    // and when it was created (Teams provisions new accounts for up to 24 h).
    &["ALTER TABLE shadow_accounts ADD refresh_token VARBINARY(MAX) NULL,
        created_at BIGINT NOT NULL CONSTRAINT shadow_accounts_created_at_default DEFAULT 0;"],
];

/// The server's clock, in seconds since the Unix epoch: leases are compared
/// on one clock however many replicas take part.
const SERVER_NOW: &str = "DATEDIFF_BIG(SECOND, '19700101', SYSUTCDATETIME())";

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
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
            StoreError::Backend(
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
                StoreError::Backend(format!("SQL Server at {addr}: {e}"))
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
                    StoreError::Backend(format!(
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
                StoreError::Backend(format!(
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

    pub async fn get_cursor(&self, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .rows("SELECT value FROM cursors WHERE [key] = @P1", &[&key])
            .await?;
        rows.first().map(|r| text(r, 0)).transpose()
    }

    pub async fn cursors_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // A range rather than LIKE: no wildcard in the prefix to escape.
        let end = format!("{prefix}\u{10FFFF}");
        let rows = self
            .rows(
                "SELECT [key], value FROM cursors WHERE [key] >= @P1 AND [key] < @P2 ORDER BY [key]",
                &[&prefix, &end.as_str()],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((text(r, 0)?, text(r, 1)?)))
            .collect()
    }

    pub async fn set_cursor(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.run(
            "BEGIN TRAN;
             UPDATE cursors WITH (UPDLOCK, SERIALIZABLE) SET value = @P2 WHERE [key] = @P1;
             IF @@ROWCOUNT = 0 INSERT INTO cursors ([key], value) VALUES (@P1, @P2);
             COMMIT;",
            &[&key, &value],
        )
        .await
    }

    pub async fn put_subscription(&self, s: &StoredSubscription) -> Result<(), StoreError> {
        self.run(
            "BEGIN TRAN;
             UPDATE subscriptions WITH (UPDLOCK, SERIALIZABLE)
                SET expires_at = @P6, lifetime_secs = @P5 WHERE id = @P1;
             IF @@ROWCOUNT = 0
                INSERT INTO subscriptions (id, resource, change_type, as_user, lifetime_secs, expires_at)
                VALUES (@P1, @P2, @P3, @P4, @P5, @P6);
             COMMIT;",
            &[
                &s.id.as_str(),
                &s.resource.as_str(),
                &s.change_type.as_str(),
                &s.as_user.as_deref(),
                &s.lifetime_secs,
                &s.expires_at,
            ],
        )
        .await
    }

    pub async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        let rows = self
            .rows(
                "SELECT id, resource, change_type, as_user, lifetime_secs, expires_at
                 FROM subscriptions ORDER BY expires_at, id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredSubscription {
                    id: text(r, 0)?,
                    resource: text(r, 1)?,
                    change_type: text(r, 2)?,
                    as_user: opt_text(r, 3)?,
                    lifetime_secs: int(r, 4)?,
                    expires_at: int(r, 5)?,
                })
            })
            .collect()
    }

    pub async fn delete_subscription(&self, id: &str) -> Result<(), StoreError> {
        self.run("DELETE FROM subscriptions WHERE id = @P1", &[&id])
            .await
    }

    pub async fn push_notification(&self, body: &str) -> Result<i64, StoreError> {
        let rows = self
            .rows(
                "INSERT INTO notifications (body, received_at) OUTPUT inserted.seq VALUES (@P1, @P2)",
                &[&body, &now()],
            )
            .await?;
        int(first(&rows)?, 0)
    }

    pub async fn claim_notifications(
        &self,
        limit: i64,
        lease_secs: i64,
    ) -> Result<Vec<QueuedNotification>, StoreError> {
        // Rows another replica is claiming right now are skipped (READPAST),
        // not waited for; the rest are taken oldest first. READCOMMITTEDLOCK
        // lets READPAST run where READ_COMMITTED_SNAPSHOT is on (Azure SQL's
        // default); elsewhere it changes nothing.
        let sql = format!(
            "DECLARE @now BIGINT = {SERVER_NOW};
             WITH claimable AS (
                SELECT TOP (@P1) seq, body, claimed_until
                FROM notifications WITH (ROWLOCK, READPAST, UPDLOCK, READCOMMITTEDLOCK)
                WHERE claimed_until <= @now
                ORDER BY seq)
             UPDATE claimable SET claimed_until = @now + @P2
             OUTPUT inserted.seq, inserted.body;"
        );
        let rows = self.rows(&sql, &[&limit.max(0), &lease_secs]).await?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                Ok(QueuedNotification {
                    seq: int(r, 0)?,
                    body: text(r, 1)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // OUTPUT returns rows in no particular order.
        claimed.sort_by_key(|n| n.seq);
        Ok(claimed)
    }

    pub async fn ack_notification(&self, seq: i64) -> Result<(), StoreError> {
        self.run("DELETE FROM notifications WHERE seq = @P1", &[&seq])
            .await
    }

    pub async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_secs: i64,
    ) -> Result<bool, StoreError> {
        // UPDLOCK, HOLDLOCK: the key (or its absence) stays locked until the
        // commit, so two replicas cannot both take a free or lapsed lease; a
        // racing insert that still collides is a lease held by the other.
        let sql = format!(
            "DECLARE @now BIGINT = {SERVER_NOW};
             BEGIN TRAN;
             UPDATE leases WITH (UPDLOCK, HOLDLOCK)
                SET holder = @P2, expires_at = @now + @P3
                WHERE name = @P1 AND (holder = @P2 OR expires_at <= @now);
             IF @@ROWCOUNT = 0 AND NOT EXISTS (SELECT 1 FROM leases WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1)
                INSERT INTO leases (name, holder, expires_at) VALUES (@P1, @P2, @now + @P3);
             COMMIT;
             SELECT CAST(CASE WHEN holder = @P2 THEN 1 ELSE 0 END AS BIGINT) FROM leases WHERE name = @P1;"
        );
        match self.try_rows(&sql, &[&name, &holder, &ttl_secs]).await? {
            Ok(rows) => Ok(rows.first().map(|r| int(r, 0)).transpose()?.unwrap_or(0) == 1),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.run(
            "DELETE FROM leases WHERE name = @P1 AND holder = @P2",
            &[&name, &holder],
        )
        .await
    }

    pub async fn put_shadow(&self, a: &ShadowAccount) -> Result<(), StoreError> {
        // A UPN another contact holds breaks `shadow_accounts_upn`: an error.
        self.run(
            "BEGIN TRAN;
             UPDATE shadow_accounts WITH (UPDLOCK, SERIALIZABLE)
                SET upn = @P2, object_id = @P3, credential = @P4, last_used = @P5, created_at = @P6
                WHERE jid = @P1;
             IF @@ROWCOUNT = 0
                INSERT INTO shadow_accounts (jid, upn, object_id, credential, last_used, created_at)
                VALUES (@P1, @P2, @P3, @P4, @P5, @P6);
             COMMIT;",
            &[
                &a.jid.as_str(),
                &a.upn.as_str(),
                &a.object_id.as_str(),
                &a.credential.as_slice(),
                &a.last_used,
                &a.created_at,
            ],
        )
        .await
    }

    fn shadow_row(r: &Row) -> Result<ShadowAccount, StoreError> {
        Ok(ShadowAccount {
            jid: text(r, 0)?,
            upn: text(r, 1)?,
            object_id: text(r, 2)?,
            credential: bytes(r, 3)?,
            last_used: int(r, 4)?,
            created_at: int(r, 5)?,
        })
    }

    pub async fn shadow(&self, jid: &str) -> Result<Option<ShadowAccount>, StoreError> {
        let rows = self
            .rows(
                "SELECT jid, upn, object_id, credential, last_used, created_at FROM shadow_accounts WHERE jid = @P1",
                &[&jid],
            )
            .await?;
        rows.first().map(Self::shadow_row).transpose()
    }

    pub async fn touch_shadow(&self, jid: &str, at: Epoch) -> Result<(), StoreError> {
        self.run(
            "UPDATE shadow_accounts SET last_used = @P1 WHERE jid = @P2",
            &[&at, &jid],
        )
        .await
    }

    pub async fn refresh_token(&self, upn: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self
            .rows(
                "SELECT refresh_token FROM shadow_accounts WHERE upn = @P1",
                &[&upn],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.try_get::<&[u8], _>(0).ok().flatten().map(<[u8]>::to_vec)))
    }

    pub async fn set_refresh_token(
        &self,
        upn: &str,
        sealed: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.run(
            "UPDATE shadow_accounts SET refresh_token = @P1 WHERE upn = @P2",
            &[&sealed, &upn],
        )
        .await
    }

    pub async fn unused_shadows(&self, before: Epoch) -> Result<Vec<ShadowAccount>, StoreError> {
        let rows = self
            .rows(
                "SELECT jid, upn, object_id, credential, last_used, created_at FROM shadow_accounts
                 WHERE last_used < @P1 ORDER BY last_used, jid",
                &[&before],
            )
            .await?;
        rows.iter().map(Self::shadow_row).collect()
    }

    pub async fn delete_shadow(&self, jid: &str) -> Result<(), StoreError> {
        self.run("DELETE FROM shadow_accounts WHERE jid = @P1", &[&jid])
            .await
    }

    pub async fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        self.run(
            "BEGIN TRAN;
             UPDATE contacts WITH (UPDLOCK, SERIALIZABLE) SET state = @P3
                WHERE teams_user = @P1 AND remote_jid = @P2;
             IF @@ROWCOUNT = 0
                INSERT INTO contacts (teams_user, remote_jid, state) VALUES (@P1, @P2, @P3);
             COMMIT;",
            &[
                &contact.teams_user.as_str(),
                &contact.remote_jid.as_str(),
                &contact.state.as_str(),
            ],
        )
        .await
    }

    fn contact_row(r: &Row) -> Result<Contact, StoreError> {
        Ok(Contact {
            teams_user: text(r, 0)?,
            remote_jid: text(r, 1)?,
            state: text(r, 2)?,
        })
    }

    pub async fn contacts_of(&self, teams_user: &str) -> Result<Vec<Contact>, StoreError> {
        let rows = self
            .rows(
                "SELECT teams_user, remote_jid, state FROM contacts WHERE teams_user = @P1 ORDER BY remote_jid",
                &[&teams_user],
            )
            .await?;
        rows.iter().map(Self::contact_row).collect()
    }

    pub async fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let rows = self
            .rows(
                "SELECT teams_user, remote_jid, state FROM contacts ORDER BY teams_user, remote_jid",
                &[],
            )
            .await?;
        rows.iter().map(Self::contact_row).collect()
    }

    pub async fn delete_contact(
        &self,
        teams_user: &str,
        remote_jid: &str,
    ) -> Result<(), StoreError> {
        self.run(
            "DELETE FROM contacts WHERE teams_user = @P1 AND remote_jid = @P2",
            &[&teams_user, &remote_jid],
        )
        .await
    }

    pub async fn enqueue(&self, item: &OutboxRow) -> Result<Option<i64>, StoreError> {
        // The key-range locks (UPDLOCK, HOLDLOCK) keep the checked keys absent
        // until the insert commits; `outbox_dedupe` refuses a duplicate that
        // still slips through, which is then reported as one.
        let result = self
            .try_rows(
                "BEGIN TRAN;
                 INSERT INTO outbox (direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at)
                 OUTPUT inserted.seq
                 SELECT @P1, @P2, @P3, @P4, @P7, @P5, @P6
                 WHERE NOT EXISTS (SELECT 1 FROM outbox WITH (UPDLOCK, HOLDLOCK) WHERE dedupe_key = @P3)
                   AND NOT EXISTS (SELECT 1 FROM delivered WITH (UPDLOCK, HOLDLOCK) WHERE dedupe_key = @P3);
                 COMMIT;",
                &[
                    &item.direction.as_str(),
                    &item.conversation.as_str(),
                    &item.dedupe_key.as_str(),
                    &item.payload.as_str(),
                    &item.next_attempt_at,
                    &item.expires_at,
                    &item.attempts,
                ],
            )
            .await?;
        match result {
            Ok(rows) => rows.first().map(|r| int(r, 0)).transpose(),
            Err(e) if is_duplicate(&e) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    pub async fn is_known(&self, dedupe_key: &str) -> Result<bool, StoreError> {
        let rows = self
            .rows(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM outbox WHERE dedupe_key = @P1)
                          OR EXISTS (SELECT 1 FROM delivered WHERE dedupe_key = @P1)
                        THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END",
                &[&dedupe_key],
            )
            .await?;
        Ok(rows.first().map(|r| int(r, 0)).transpose()?.unwrap_or(0) == 1)
    }

    pub async fn due(&self, at: Epoch, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        // The head of each conversation, if it is due.
        let rows = self
            .rows(
                "SELECT TOP (@P2) seq, direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at
                 FROM (SELECT seq, direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at,
                              ROW_NUMBER() OVER (PARTITION BY conversation ORDER BY seq) AS place
                       FROM outbox) AS heads
                 WHERE place = 1 AND next_attempt_at <= @P1
                 ORDER BY seq",
                &[&at, &limit.max(0)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    seq: int(r, 0)?,
                    direction: text(r, 1)?,
                    conversation: text(r, 2)?,
                    dedupe_key: text(r, 3)?,
                    payload: text(r, 4)?,
                    attempts: int(r, 5)?,
                    next_attempt_at: int(r, 6)?,
                    expires_at: int(r, 7)?,
                })
            })
            .collect()
    }

    pub async fn delivered(&self, seq: i64) -> Result<(), StoreError> {
        self.run(
            "BEGIN TRAN;
             INSERT INTO delivered (dedupe_key, at)
                SELECT o.dedupe_key, @P2 FROM outbox AS o WITH (UPDLOCK)
                WHERE o.seq = @P1
                  AND NOT EXISTS (SELECT 1 FROM delivered AS d WITH (UPDLOCK, HOLDLOCK)
                                  WHERE d.dedupe_key = o.dedupe_key);
             DELETE FROM outbox WHERE seq = @P1;
             COMMIT;",
            &[&seq, &now()],
        )
        .await
    }

    pub async fn forget_delivered(&self, before: Epoch) -> Result<u64, StoreError> {
        let mut forgotten = 0;
        loop {
            let rows = self
                .rows(
                    "DELETE TOP (@P2) FROM delivered WHERE at < @P1;
                     SELECT CAST(@@ROWCOUNT AS BIGINT);",
                    &[&before, &FORGET_BATCH],
                )
                .await?;
            let n = int(first(&rows)?, 0)?;
            forgotten += n as u64;
            if n < FORGET_BATCH {
                return Ok(forgotten);
            }
        }
    }

    pub async fn retry_later(&self, seq: i64, next_attempt_at: Epoch) -> Result<(), StoreError> {
        self.run(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = @P1 WHERE seq = @P2",
            &[&next_attempt_at, &seq],
        )
        .await
    }
}

/// Brings the schema up to date. Each step is one transaction holding an
/// exclusive application lock, so replicas starting together migrate once:
/// the others wait, then find the version current.
async fn migrate(client: &mut Connection) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len() as i64;
    loop {
        batch(
            client,
            &format!(
                "BEGIN TRAN;
                 DECLARE @lock INT;
                 EXEC @lock = sp_getapplock @Resource = N'xmppfed-store-schema', @LockMode = N'Exclusive',
                    @LockOwner = N'Transaction', @LockTimeout = {MIGRATION_LOCK_TIMEOUT_MS};
                 IF @lock < 0
                 BEGIN
                    THROW 51000, N'another gateway holds the schema migration lock (sp_getapplock)', 1;
                 END;
                 IF OBJECT_ID(N'schema_version', N'U') IS NULL
                    CREATE TABLE schema_version (
                        version BIGINT NOT NULL CONSTRAINT schema_version_pk PRIMARY KEY,
                        applied_at BIGINT NOT NULL);"
            ),
        )
        .await?;
        let current = int(
            first(
                &client
                    .simple_query(
                        "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_version",
                    )
                    .await
                    .map_err(backend)?
                    .into_first_result()
                    .await
                    .map_err(backend)?,
            )?,
            0,
        )?;
        if current > supported {
            batch(client, "ROLLBACK").await?;
            return Err(StoreError::TooNew {
                found: current,
                supported,
            });
        }
        let Some(steps) = usize::try_from(current)
            .ok()
            .and_then(|index| MIGRATIONS.get(index))
        else {
            batch(client, "COMMIT").await?;
            return Ok(());
        };
        for sql in *steps {
            batch(client, sql).await?;
        }
        let version = current + 1;
        client
            .execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (@P1, @P2)",
                &[&version, &now()],
            )
            .await
            .map_err(backend)?;
        batch(client, "COMMIT").await?;
        tracing::info!(version, "store migrated");
    }
}

/// Runs a batch without parameters, reading its whole answer.
async fn batch(client: &mut Connection, sql: &str) -> Result<(), StoreError> {
    client
        .simple_query(sql)
        .await
        .map_err(backend)?
        .into_results()
        .await
        .map_err(backend)?;
    Ok(())
}

fn first(rows: &[Row]) -> Result<&Row, StoreError> {
    rows.first()
        .ok_or_else(|| StoreError::Backend("SQL Server returned no row".to_owned()))
}

fn null(index: usize) -> StoreError {
    StoreError::Backend(format!("SQL Server returned NULL in column {index}"))
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
