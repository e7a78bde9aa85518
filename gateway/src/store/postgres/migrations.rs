//! The schema, as versioned migrations applied under an advisory lock.
//!
//! Each step is one transaction (PostgreSQL's DDL is transactional): it takes
//! `pg_advisory_xact_lock(SCHEMA_LOCK)` first, so replicas starting together
//! migrate one at a time, then reads the version. READ COMMITTED makes that
//! read, a statement after the lock was granted, see what the replica that
//! held the lock before committed: the others find the version current.
//! Advisory locks belong to one database, so stores of different databases
//! on one server never wait for each other.

use deadpool_postgres::Object;

use super::PgError;
use crate::store::now;

/// The advisory lock that serialises migrations ("xmppfed1").
const SCHEMA_LOCK: i64 = 0x786d_7070_6665_6431;
/// How long a replica waits for another one's migration to finish.
pub(super) const LOCK_TIMEOUT: &str = "120s";

/// Each migration, in order, as one batch; the schema version is the number
/// applied. Tables and columns are named as in SQLite and SQL Server, times
/// are BIGINT seconds since the epoch (read marks milliseconds). Keys are
/// `COLLATE "C"`: compared and sorted by code point, case-sensitively, as
/// SQLite's TEXT and SQL Server's `_BIN2` are, whatever the database's locale.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"CREATE TABLE cursors (
        key TEXT COLLATE "C" NOT NULL CONSTRAINT cursors_pk PRIMARY KEY,
        value TEXT NOT NULL);
     CREATE TABLE subscriptions (
        id TEXT COLLATE "C" NOT NULL CONSTRAINT subscriptions_pk PRIMARY KEY,
        resource TEXT NOT NULL,
        change_type TEXT NOT NULL,
        as_user TEXT NULL,
        lifetime_secs BIGINT NOT NULL,
        expires_at BIGINT NOT NULL);
     CREATE TABLE notifications (
        seq BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT notifications_pk PRIMARY KEY,
        body TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        claimed_until BIGINT NOT NULL DEFAULT 0);
     CREATE TABLE shadow_accounts (
        jid TEXT COLLATE "C" NOT NULL CONSTRAINT shadow_accounts_pk PRIMARY KEY,
        upn TEXT COLLATE "C" NOT NULL CONSTRAINT shadow_accounts_upn UNIQUE,
        object_id TEXT COLLATE "C" NOT NULL,
        credential BYTEA NOT NULL,
        last_used BIGINT NOT NULL);
     CREATE TABLE contacts (
        teams_user TEXT COLLATE "C" NOT NULL,
        remote_jid TEXT COLLATE "C" NOT NULL,
        state TEXT NOT NULL,
        CONSTRAINT contacts_pk PRIMARY KEY (teams_user, remote_jid));
     CREATE TABLE outbox (
        seq BIGINT GENERATED ALWAYS AS IDENTITY CONSTRAINT outbox_pk PRIMARY KEY,
        direction TEXT NOT NULL,
        conversation TEXT COLLATE "C" NOT NULL,
        dedupe_key TEXT COLLATE "C" NOT NULL,
        payload TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL);
     CREATE UNIQUE INDEX outbox_dedupe ON outbox (dedupe_key);
     CREATE INDEX outbox_conversation ON outbox (conversation, seq) INCLUDE (next_attempt_at);
     CREATE INDEX outbox_due ON outbox (next_attempt_at);
     CREATE TABLE delivered (
        dedupe_key TEXT COLLATE "C" NOT NULL CONSTRAINT delivered_pk PRIMARY KEY,
        at BIGINT NOT NULL);"#,
    // 2: leases (which replica runs the bridge).
    r#"CREATE TABLE leases (
        name TEXT COLLATE "C" NOT NULL CONSTRAINT leases_pk PRIMARY KEY,
        holder TEXT COLLATE "C" NOT NULL,
        expires_at BIGINT NOT NULL);"#,
    // 3: old dedupe keys are forgotten by age.
    "CREATE INDEX delivered_at ON delivered (at);",
    // 4: each shadow account's latest refresh token, sealed like its password,
    // and when it was created (Teams provisions new accounts for up to 24 h).
    "ALTER TABLE shadow_accounts ADD COLUMN refresh_token BYTEA NULL,
        ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;",
    // 5: bridged chats get a table of their own, typed, instead of the key-value
    // cursors `conv:{chat}` → `remote|user`, `chat:{remote|user}` → chat and
    // `seen:{chat}` → read mark; the chat a conversation named is the latest.
    // A read mark that is not a number reads as 0 (SQL Server's TRY_CAST).
    r#"CREATE TABLE bridged_chats (
        chat_id TEXT COLLATE "C" NOT NULL CONSTRAINT bridged_chats_pk PRIMARY KEY,
        remote_jid TEXT COLLATE "C" NOT NULL,
        teams_user TEXT COLLATE "C" NOT NULL,
        read_from_ms BIGINT NOT NULL,
        bridged_at BIGINT NOT NULL);
     CREATE INDEX bridged_chats_conversation ON bridged_chats (remote_jid, teams_user, bridged_at);
     INSERT INTO bridged_chats (chat_id, remote_jid, teams_user, read_from_ms, bridged_at)
        SELECT substr(c.key, 6),
            substr(c.value, 1, strpos(c.value, '|') - 1),
            substr(c.value, strpos(c.value, '|') + 1),
            COALESCE((SELECT CASE WHEN s.value ~ '^-?[0-9]{1,18}$' THEN s.value::bigint END
                FROM cursors s WHERE s.key = 'seen:' || substr(c.key, 6)), 0),
            CASE WHEN EXISTS (SELECT 1 FROM cursors k
                WHERE k.key = 'chat:' || c.value AND k.value = substr(c.key, 6)) THEN 1 ELSE 0 END
        FROM cursors c
        WHERE c.key >= 'conv:' AND c.key < 'conv;' AND strpos(c.value, '|') > 1;
     DROP TABLE cursors;
     CREATE INDEX shadow_accounts_object_id ON shadow_accounts (object_id);"#,
];

/// Why the schema could not be brought up to date.
pub(super) enum Failed {
    TooNew { found: i64, supported: i64 },
    Pg(PgError),
}

impl From<PgError> for Failed {
    fn from(e: PgError) -> Self {
        Failed::Pg(e)
    }
}

/// Brings the schema up to date, one migration (one transaction) at a time.
pub(super) async fn migrate(client: &mut Object) -> Result<(), Failed> {
    let supported = MIGRATIONS.len() as i64;
    loop {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';
             -- The table exists after the first start: PostgreSQL's NOTICE
             -- saying so would be logged at every start.
             SET LOCAL client_min_messages = warning;
             SELECT pg_advisory_xact_lock({SCHEMA_LOCK});
             CREATE TABLE IF NOT EXISTS schema_version (
                version BIGINT NOT NULL CONSTRAINT schema_version_pk PRIMARY KEY,
                applied_at BIGINT NOT NULL);"
        ))
        .await?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_version",
                &[],
            )
            .await?
            .try_get(0)?;
        if current > supported {
            tx.rollback().await?;
            return Err(Failed::TooNew {
                found: current,
                supported,
            });
        }
        let Some(step) = usize::try_from(current)
            .ok()
            .and_then(|index| MIGRATIONS.get(index))
        else {
            tx.commit().await?;
            return Ok(());
        };
        tx.batch_execute(step).await?;
        let version = current + 1;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[&version, &now()],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "store migrated");
    }
}
