//! SQLite, the embedded default: one file, one writer, WAL journal; every
//! call runs on the blocking pool so the async runtime never waits on disk.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    BridgedChat, Contact, Epoch, OutboxRow, QueuedNotification, ShadowAccount, StoreError,
    StoredSubscription, now,
};

/// Each migration, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE cursors (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE subscriptions (id TEXT PRIMARY KEY, resource TEXT NOT NULL, change_type TEXT NOT NULL,
        as_user TEXT, lifetime_secs INTEGER NOT NULL, expires_at INTEGER NOT NULL);
     CREATE TABLE notifications (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL,
        received_at INTEGER NOT NULL, claimed_until INTEGER NOT NULL DEFAULT 0);
     CREATE TABLE shadow_accounts (jid TEXT PRIMARY KEY, upn TEXT NOT NULL UNIQUE, object_id TEXT NOT NULL,
        credential BLOB NOT NULL, last_used INTEGER NOT NULL);
     CREATE TABLE contacts (teams_user TEXT NOT NULL, remote_jid TEXT NOT NULL, state TEXT NOT NULL,
        PRIMARY KEY (teams_user, remote_jid));
     CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, direction TEXT NOT NULL, conversation TEXT NOT NULL,
        dedupe_key TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
     CREATE INDEX outbox_due ON outbox (next_attempt_at);
     CREATE TABLE delivered (dedupe_key TEXT PRIMARY KEY, at INTEGER NOT NULL);",
    // 2: leases (which replica runs the bridge).
    "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at INTEGER NOT NULL);",
    // 3: old dedupe keys are forgotten by age.
    "CREATE INDEX delivered_at ON delivered (at);",
    // 4: each shadow account's latest refresh token, sealed like its password,
    // and when it was created (Teams provisions new accounts for up to 24 h).
    "ALTER TABLE shadow_accounts ADD COLUMN refresh_token BLOB;
     ALTER TABLE shadow_accounts ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;",
    // 5: bridged chats get a table of their own, typed, instead of the key-value
    // cursors `conv:{chat}` → `remote|user`, `chat:{remote|user}` → chat and
    // `seen:{chat}` → read mark; the chat a conversation named is the latest.
    "CREATE TABLE bridged_chats (chat_id TEXT PRIMARY KEY, remote_jid TEXT NOT NULL, teams_user TEXT NOT NULL,
        read_from_ms INTEGER NOT NULL, bridged_at INTEGER NOT NULL);
     CREATE INDEX bridged_chats_conversation ON bridged_chats (remote_jid, teams_user, bridged_at);
     INSERT INTO bridged_chats (chat_id, remote_jid, teams_user, read_from_ms, bridged_at)
        SELECT substr(c.key, 6), substr(c.value, 1, instr(c.value, '|') - 1), substr(c.value, instr(c.value, '|') + 1),
            COALESCE((SELECT CAST(s.value AS INTEGER) FROM cursors s WHERE s.key = 'seen:' || substr(c.key, 6)), 0),
            EXISTS (SELECT 1 FROM cursors k WHERE k.key = 'chat:' || c.value AND k.value = substr(c.key, 6))
        FROM cursors c WHERE c.key >= 'conv:' AND c.key < 'conv;' AND instr(c.value, '|') > 1;
     DROP TABLE cursors;
     CREATE INDEX shadow_accounts_object_id ON shadow_accounts (object_id);",
];

/// Dedupe keys deleted per statement when old ones are forgotten.
const FORGET_BATCH: i64 = 5000;

fn backend(e: impl Into<super::BackendError>) -> StoreError {
    StoreError::backend(e)
}

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::backend(format!("{}: {e}", dir.display())))?;
            }
            let mut conn = Connection::open(&path)
                .map_err(|e| StoreError::backend(format!("{}: {e}", path.display())))?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(backend)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(backend)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(backend)?;
            migrate(&mut conn)?;
            Ok(Self {
                conn: Arc::new(Mutex::new(conn)),
            })
        })
        .await
        .map_err(backend)?
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.with(|c| c.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0)))
            .await
    }

    pub async fn bridge_chat(&self, chat: &BridgedChat) -> Result<(), StoreError> {
        let chat = chat.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO bridged_chats (chat_id, remote_jid, teams_user, read_from_ms, bridged_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(chat_id) DO UPDATE SET remote_jid = excluded.remote_jid, teams_user = excluded.teams_user,
                    bridged_at = excluded.bridged_at",
                params![chat.chat_id, chat.remote_jid, chat.teams_user, chat.read_from_ms, now()],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn bridged_chat(&self, chat_id: &str) -> Result<Option<BridgedChat>, StoreError> {
        let chat_id = chat_id.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT chat_id, remote_jid, teams_user, read_from_ms FROM bridged_chats WHERE chat_id = ?1",
                [chat_id],
                bridged_chat,
            )
            .optional()
        })
        .await
    }

    pub async fn chat_between(
        &self,
        remote_jid: &str,
        teams_user: &str,
    ) -> Result<Option<String>, StoreError> {
        let (remote_jid, teams_user) = (remote_jid.to_owned(), teams_user.to_owned());
        self.with(move |c| {
            c.query_row(
                "SELECT chat_id FROM bridged_chats WHERE remote_jid = ?1 AND teams_user = ?2
                 ORDER BY bridged_at DESC, chat_id DESC LIMIT 1",
                [remote_jid, teams_user],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    pub async fn bridged_chats(&self) -> Result<Vec<BridgedChat>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT chat_id, remote_jid, teams_user, read_from_ms FROM bridged_chats ORDER BY chat_id",
            )?;
            let rows = stmt.query_map([], bridged_chat)?;
            rows.collect()
        })
        .await
    }

    pub async fn set_read_mark(&self, chat_id: &str, read_from_ms: i64) -> Result<(), StoreError> {
        let chat_id = chat_id.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE bridged_chats SET read_from_ms = ?2 WHERE chat_id = ?1",
                params![chat_id, read_from_ms],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn put_subscription(&self, s: &StoredSubscription) -> Result<(), StoreError> {
        let s = s.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO subscriptions (id, resource, change_type, as_user, lifetime_secs, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET expires_at = excluded.expires_at, lifetime_secs = excluded.lifetime_secs",
                params![s.id, s.resource, s.change_type, s.as_user, s.lifetime_secs, s.expires_at],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id, resource, change_type, as_user, lifetime_secs, expires_at FROM subscriptions ORDER BY expires_at")?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredSubscription {
                    id: r.get(0)?,
                    resource: r.get(1)?,
                    change_type: r.get(2)?,
                    as_user: r.get(3)?,
                    lifetime_secs: r.get(4)?,
                    expires_at: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn delete_subscription(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.execute("DELETE FROM subscriptions WHERE id = ?1", [id])
                .map(|_| ())
        })
        .await
    }

    pub async fn push_notification(&self, body: &str) -> Result<i64, StoreError> {
        let body = body.to_owned();
        self.with(move |c| {
            c.execute(
                "INSERT INTO notifications (body, received_at) VALUES (?1, ?2)",
                params![body, now()],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    pub async fn claim_notifications(
        &self,
        limit: i64,
        lease_secs: i64,
    ) -> Result<Vec<QueuedNotification>, StoreError> {
        self.with(move |c| {
            let at = now();
            let tx = c.transaction()?;
            let claimed: Vec<QueuedNotification> = {
                let mut stmt = tx.prepare("SELECT seq, body FROM notifications WHERE claimed_until <= ?1 ORDER BY seq LIMIT ?2")?;
                let rows = stmt.query_map(params![at, limit], |r| Ok(QueuedNotification { seq: r.get(0)?, body: r.get(1)? }))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for n in &claimed {
                tx.execute("UPDATE notifications SET claimed_until = ?1 WHERE seq = ?2", params![at + lease_secs, n.seq])?;
            }
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    pub async fn ack_notification(&self, seq: i64) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute("DELETE FROM notifications WHERE seq = ?1", [seq])
                .map(|_| ())
        })
        .await
    }

    pub async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_secs: i64,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with(move |c| {
            let at = now();
            // One statement: taken when free, lapsed or already ours.
            c.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
                params![name, holder, at + ttl_secs, at],
            )?;
            let current: String =
                c.query_row("SELECT holder FROM leases WHERE name = ?1", [&name], |r| r.get(0))?;
            Ok(current == holder)
        })
        .await
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn put_shadow(&self, a: &ShadowAccount) -> Result<(), StoreError> {
        let a = a.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO shadow_accounts (jid, upn, object_id, credential, last_used, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(jid) DO UPDATE SET upn = excluded.upn, object_id = excluded.object_id,
                    credential = excluded.credential, last_used = excluded.last_used,
                    created_at = excluded.created_at",
                params![a.jid, a.upn, a.object_id, a.credential, a.last_used, a.created_at],
            )
            .map(|_| ())
        })
        .await
    }

    fn shadow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ShadowAccount> {
        Ok(ShadowAccount {
            jid: r.get(0)?,
            upn: r.get(1)?,
            object_id: r.get(2)?,
            credential: r.get(3)?,
            last_used: r.get(4)?,
            created_at: r.get(5)?,
        })
    }

    pub async fn shadow(&self, jid: &str) -> Result<Option<ShadowAccount>, StoreError> {
        self.shadow_where("jid", jid).await
    }

    /// The shadow account whose `column` (a key: jid or object_id) is `value`.
    async fn shadow_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<ShadowAccount>, StoreError> {
        let value = value.to_owned();
        self.with(move |c| {
            c.query_row(&format!("SELECT jid, upn, object_id, credential, last_used, created_at FROM shadow_accounts WHERE {column} = ?1"), [value], Self::shadow_row)
                .optional()
        })
        .await
    }

    pub async fn shadow_by_object_id(
        &self,
        object_id: &str,
    ) -> Result<Option<ShadowAccount>, StoreError> {
        self.shadow_where("object_id", object_id).await
    }

    pub async fn touch_shadow(&self, jid: &str, at: Epoch) -> Result<(), StoreError> {
        let jid = jid.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE shadow_accounts SET last_used = ?1 WHERE jid = ?2",
                params![at, jid],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn refresh_token(&self, upn: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let upn = upn.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT refresh_token FROM shadow_accounts WHERE upn = ?1",
                [upn],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()
            .map(Option::flatten)
        })
        .await
    }

    pub async fn set_refresh_token(
        &self,
        upn: &str,
        sealed: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let upn = upn.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE shadow_accounts SET refresh_token = ?1 WHERE upn = ?2",
                params![sealed, upn],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn unused_shadows(&self, before: Epoch) -> Result<Vec<ShadowAccount>, StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT jid, upn, object_id, credential, last_used, created_at FROM shadow_accounts WHERE last_used < ?1 ORDER BY last_used")?;
            let rows = stmt.query_map([before], Self::shadow_row)?;
            rows.collect()
        })
        .await
    }

    pub async fn delete_shadow(&self, jid: &str) -> Result<(), StoreError> {
        let jid = jid.to_owned();
        self.with(move |c| {
            c.execute("DELETE FROM shadow_accounts WHERE jid = ?1", [jid])
                .map(|_| ())
        })
        .await
    }

    pub async fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        let ct = contact.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO contacts (teams_user, remote_jid, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT(teams_user, remote_jid) DO UPDATE SET state = excluded.state",
                params![ct.teams_user, ct.remote_jid, ct.state],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn contacts_of(&self, teams_user: &str) -> Result<Vec<Contact>, StoreError> {
        let user = teams_user.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT teams_user, remote_jid, state FROM contacts WHERE teams_user = ?1 ORDER BY remote_jid")?;
            let rows = stmt.query_map([user], |r| Ok(Contact { teams_user: r.get(0)?, remote_jid: r.get(1)?, state: r.get(2)? }))?;
            rows.collect()
        })
        .await
    }

    pub async fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT teams_user, remote_jid, state FROM contacts ORDER BY teams_user, remote_jid")?;
            let rows = stmt.query_map([], |r| Ok(Contact { teams_user: r.get(0)?, remote_jid: r.get(1)?, state: r.get(2)? }))?;
            rows.collect()
        })
        .await
    }

    pub async fn delete_contact(
        &self,
        teams_user: &str,
        remote_jid: &str,
    ) -> Result<(), StoreError> {
        let (u, j) = (teams_user.to_owned(), remote_jid.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM contacts WHERE teams_user = ?1 AND remote_jid = ?2",
                [u, j],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn enqueue(&self, item: &OutboxRow) -> Result<Option<i64>, StoreError> {
        let i = item.clone();
        self.with(move |c| {
            let tx = c.transaction()?;
            let known: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE dedupe_key = ?1) OR EXISTS (SELECT 1 FROM delivered WHERE dedupe_key = ?1)",
                [&i.dedupe_key],
                |r| r.get(0),
            )?;
            if known {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO outbox (direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?7, ?5, ?6)",
                params![i.direction, i.conversation, i.dedupe_key, i.payload, i.next_attempt_at, i.expires_at, i.attempts],
            )?;
            let seq = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Some(seq))
        })
        .await
    }

    pub async fn is_known(&self, dedupe_key: &str) -> Result<bool, StoreError> {
        let key = dedupe_key.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE dedupe_key = ?1) OR EXISTS (SELECT 1 FROM delivered WHERE dedupe_key = ?1)",
                [key],
                |r| r.get(0),
            )
        })
        .await
    }

    pub async fn due(&self, at: Epoch, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        self.with(move |c| {
            // The head of each conversation, if it is due.
            let mut stmt = c.prepare(
                "SELECT seq, direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at
                 FROM outbox o WHERE seq = (SELECT MIN(seq) FROM outbox WHERE conversation = o.conversation)
                   AND next_attempt_at <= ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![at, limit], |r| {
                Ok(OutboxRow {
                    seq: r.get(0)?,
                    direction: r.get(1)?,
                    conversation: r.get(2)?,
                    dedupe_key: r.get(3)?,
                    payload: r.get(4)?,
                    attempts: r.get(5)?,
                    next_attempt_at: r.get(6)?,
                    expires_at: r.get(7)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn delivered(&self, seq: i64) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute("INSERT OR IGNORE INTO delivered (dedupe_key, at) SELECT dedupe_key, ?2 FROM outbox WHERE seq = ?1", params![seq, now()])?;
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
            tx.commit()
        })
        .await
    }

    pub async fn forget_delivered(&self, before: Epoch) -> Result<u64, StoreError> {
        let mut forgotten = 0;
        loop {
            // Small batches: the write lock is never held long.
            let n = self
                .with(move |c| {
                    c.execute(
                        "DELETE FROM delivered WHERE rowid IN
                            (SELECT rowid FROM delivered WHERE at < ?1 LIMIT ?2)",
                        params![before, FORGET_BATCH],
                    )
                })
                .await? as u64;
            forgotten += n;
            if n < FORGET_BATCH as u64 {
                return Ok(forgotten);
            }
        }
    }

    pub async fn retry_later(&self, seq: i64, next_attempt_at: Epoch) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?1 WHERE seq = ?2",
                params![next_attempt_at, seq],
            )
            .map(|_| ())
        })
        .await
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        .map_err(backend)?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::TooNew {
            found: current,
            supported,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![version, now()],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        tracing::info!(version, "store migrated");
    }
    Ok(())
}

fn bridged_chat(r: &rusqlite::Row<'_>) -> rusqlite::Result<BridgedChat> {
    Ok(BridgedChat {
        chat_id: r.get(0)?,
        remote_jid: r.get(1)?,
        teams_user: r.get(2)?,
        read_from_ms: r.get(3)?,
    })
}
