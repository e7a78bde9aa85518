//! The schema, as versioned migrations applied under an application lock.

use super::{Connection, MIGRATION_LOCK_TIMEOUT_MS, backend, first, int};
use crate::store::{StoreError, now};

/// Each migration, in order, as separate batches (a batch is compiled whole,
/// so a statement using a column added by an earlier one goes in a later
/// batch); the schema version is the number of migrations applied. Tables and
/// columns are named as in SQLite. Keys compare and sort by code point
/// (`_BIN2`), case-sensitively, as SQLite's TEXT does; NVARCHAR(450) keeps a
/// key within the 900-byte limit of a clustered index.
pub(super) const MIGRATIONS: &[&[&str]] = &[
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
    // 5: bridged chats get a table of their own, typed, instead of the key-value
    // cursors `conv:{chat}` → `remote|user`, `chat:{remote|user}` → chat and
    // `seen:{chat}` → read mark; the chat a conversation named is the latest.
    // The index's key (1,548 bytes) is within a nonclustered index's 1,700.
    &[
        "CREATE TABLE bridged_chats (
            chat_id NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT bridged_chats_pk PRIMARY KEY,
            remote_jid NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL,
            teams_user NVARCHAR(320) COLLATE Latin1_General_100_BIN2 NOT NULL,
            read_from_ms BIGINT NOT NULL,
            bridged_at BIGINT NOT NULL);
         CREATE INDEX bridged_chats_conversation ON bridged_chats (remote_jid, teams_user, bridged_at);",
        "INSERT INTO bridged_chats (chat_id, remote_jid, teams_user, read_from_ms, bridged_at)
            SELECT SUBSTRING(c.[key], 6, 450),
                LEFT(c.value, CHARINDEX(N'|', c.value) - 1),
                SUBSTRING(c.value, CHARINDEX(N'|', c.value) + 1, 320),
                COALESCE((SELECT TRY_CAST(s.value AS BIGINT) FROM cursors s
                    WHERE s.[key] = N'seen:' + SUBSTRING(c.[key], 6, 450)), 0),
                CASE WHEN EXISTS (SELECT 1 FROM cursors k
                    WHERE k.[key] = N'chat:' + c.value AND k.value = SUBSTRING(c.[key], 6, 450)) THEN 1 ELSE 0 END
            FROM cursors c
            WHERE c.[key] >= N'conv:' AND c.[key] < N'conv;' AND CHARINDEX(N'|', c.value) > 1;
         DROP TABLE cursors;
         CREATE INDEX shadow_accounts_object_id ON shadow_accounts (object_id);",
    ],
];

/// Brings the schema up to date. Each step is one transaction holding an
/// exclusive application lock, so replicas starting together migrate once:
/// the others wait, then find the version current.
pub(super) async fn migrate(client: &mut Connection) -> Result<(), StoreError> {
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
