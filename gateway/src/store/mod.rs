//! The durable store: everything the gateway must not lose across restarts,
//! failover or throttling. One interface, three backends: SQLite (the
//! embedded default, one replica), and for replicated production (several
//! replicas share one database) Microsoft SQL Server 2022 or PostgreSQL 13
//! and later. Schema changes are versioned migrations, run at startup, the
//! same versions on every backend. Every backend passes the same conformance
//! suite (tests/common/store.rs, run by tests/store.rs and
//! tests/store_postgres.rs).

mod mssql;
mod outbox;
mod postgres;
mod sqlite;

use std::path::Path;

use xmppfed_config::{ConfigError, PostgresConfig, SecretRef, StoreConfig};

pub use mssql::SqlServerStore;
pub use outbox::{Direction, OutboxItem, OutboxPayload, OutboxRow, ToTeams, ToXmpp};
pub use postgres::{PostgresError, PostgresStore};
pub use sqlite::SqliteStore;

/// A backend's own error (the driver's, or a message of ours), kept as the source.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(#[source] BackendError),
    #[error(
        "store schema version {found} is newer than this gateway ({supported}): upgrade the gateway"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("cannot encode an outbox entry: {0}")]
    Encode(#[source] serde_json::Error),
}

impl StoreError {
    /// A backend's failure: the driver's error, or a message of ours.
    pub fn backend(e: impl Into<BackendError>) -> Self {
        Self::Backend(e.into())
    }
}

pub use crate::clock::{Epoch, now};

/// A Graph subscription the gateway holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    /// The shadow account it was made as (UPN), or `None` for the app.
    pub as_user: Option<String>,
    pub lifetime_secs: i64,
    pub expires_at: Epoch,
}

/// A remote contact's shadow account in the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowAccount {
    /// The remote contact's bare JID, lower-cased.
    pub jid: String,
    pub upn: String,
    pub object_id: String,
    /// The account's password, encrypted (never stored in clear).
    pub credential: Vec<u8>,
    pub last_used: Epoch,
    /// When the gateway created it (0: before schema 4).
    pub created_at: Epoch,
}

/// A Teams chat the bridge carries: the 1:1 chat between a remote contact's
/// shadow account and a Teams user, and how far it has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgedChat {
    pub chat_id: String,
    /// The remote contact's bare JID.
    pub remote_jid: String,
    /// The Teams user's object id.
    pub teams_user: String,
    /// Messages created from here on (milliseconds since the epoch) are read.
    pub read_from_ms: i64,
}

/// A subscription between a Teams user of our domain and a remote contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub teams_user: String,
    pub remote_jid: String,
    /// `pending-in`, `subscribed`, … (the bridge owns the states).
    pub state: String,
}

/// A queued change notification (body as received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedNotification {
    pub seq: i64,
    pub body: String,
}

/// The store the configuration names.
pub enum Store {
    Sqlite(SqliteStore),
    SqlServer(SqlServerStore),
    Postgres(PostgresStore),
}

/// Forwards a call to whichever backend the store is: `backend!(self, s =>
/// s.method(args))`.
macro_rules! backend {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Sqlite($s) => $call.await,
            Store::SqlServer($s) => $call.await,
            Store::Postgres($s) => $call.await,
        }
    };
}

impl Store {
    /// Opens the store the configuration names (the SQL Server connection
    /// string and the PostgreSQL password are secrets, read here).
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        match config {
            StoreConfig::Sqlite { path } => Self::sqlite(path).await,
            StoreConfig::Sqlserver { connection_string } => {
                let secret = connection_string.resolve().map_err(|e| {
                    unreadable_secret("SQL Server connection string", connection_string, e)
                })?;
                Self::sqlserver(secret.expose()).await
            }
            StoreConfig::Postgres(config) => Self::postgres(config).await,
        }
    }

    /// Opens (creating if needed) and migrates an SQLite store.
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open(path).await?))
    }

    /// Connects to SQL Server (an ADO.NET connection string) and migrates
    /// the database.
    pub async fn sqlserver(connection_string: &str) -> Result<Self, StoreError> {
        Ok(Store::SqlServer(
            SqlServerStore::connect(connection_string).await?,
        ))
    }

    /// Connects to PostgreSQL (its password read from where the
    /// configuration says) and migrates the database.
    pub async fn postgres(config: &PostgresConfig) -> Result<Self, StoreError> {
        let password = config
            .password
            .resolve()
            .map_err(|e| unreadable_secret("PostgreSQL password", &config.password, e))?;
        Ok(Store::Postgres(
            PostgresStore::connect(config, password.expose()).await?,
        ))
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        backend!(self, s => s.schema_version())
    }

    // Bridged chats ----------------------------------------------------------

    /// Records a bridged chat, or names its conversation again; an existing
    /// read mark is kept (the chat is read on from where it was).
    pub async fn bridge_chat(&self, chat: &BridgedChat) -> Result<(), StoreError> {
        backend!(self, s => s.bridge_chat(chat))
    }

    pub async fn bridged_chat(&self, chat_id: &str) -> Result<Option<BridgedChat>, StoreError> {
        backend!(self, s => s.bridged_chat(chat_id))
    }

    /// The chat bridged last between a remote contact and a Teams user.
    pub async fn chat_between(
        &self,
        remote_jid: &str,
        teams_user: &str,
    ) -> Result<Option<String>, StoreError> {
        backend!(self, s => s.chat_between(remote_jid, teams_user))
    }

    /// Every bridged chat, by chat id.
    pub async fn bridged_chats(&self) -> Result<Vec<BridgedChat>, StoreError> {
        backend!(self, s => s.bridged_chats())
    }

    /// Moves a chat's read mark (milliseconds since the epoch).
    pub async fn set_read_mark(&self, chat_id: &str, read_from_ms: i64) -> Result<(), StoreError> {
        backend!(self, s => s.set_read_mark(chat_id, read_from_ms))
    }

    // Graph subscriptions -------------------------------------------------------

    pub async fn put_subscription(&self, sub: &StoredSubscription) -> Result<(), StoreError> {
        backend!(self, s => s.put_subscription(sub))
    }

    pub async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        backend!(self, s => s.subscriptions())
    }

    pub async fn delete_subscription(&self, id: &str) -> Result<(), StoreError> {
        backend!(self, s => s.delete_subscription(id))
    }

    // The notification queue ----------------------------------------------------

    /// Appends a notification batch as received; its place in the queue is returned.
    pub async fn push_notification(&self, body: &str) -> Result<i64, StoreError> {
        backend!(self, s => s.push_notification(body))
    }

    /// Takes up to `limit` notifications for `lease_secs`: not acknowledged in
    /// that time (the process died), they are handed out again.
    pub async fn claim_notifications(
        &self,
        limit: i64,
        lease_secs: i64,
    ) -> Result<Vec<QueuedNotification>, StoreError> {
        backend!(self, s => s.claim_notifications(limit, lease_secs))
    }

    pub async fn ack_notification(&self, seq: i64) -> Result<(), StoreError> {
        backend!(self, s => s.ack_notification(seq))
    }

    // Shadow accounts -------------------------------------------------------------

    pub async fn put_shadow(&self, account: &ShadowAccount) -> Result<(), StoreError> {
        backend!(self, s => s.put_shadow(account))
    }

    pub async fn shadow(&self, jid: &str) -> Result<Option<ShadowAccount>, StoreError> {
        backend!(self, s => s.shadow(jid))
    }

    /// The shadow account with this object id in the tenant.
    pub async fn shadow_by_object_id(
        &self,
        object_id: &str,
    ) -> Result<Option<ShadowAccount>, StoreError> {
        backend!(self, s => s.shadow_by_object_id(object_id))
    }

    pub async fn touch_shadow(&self, jid: &str, at: Epoch) -> Result<(), StoreError> {
        backend!(self, s => s.touch_shadow(jid, at))
    }

    /// The shadow account's latest refresh token, sealed.
    pub async fn refresh_token(&self, upn: &str) -> Result<Option<Vec<u8>>, StoreError> {
        backend!(self, s => s.refresh_token(upn))
    }

    /// Keeps (or with `None` forgets) the account's refresh token; a no-op
    /// for an account the store does not hold.
    pub async fn set_refresh_token(
        &self,
        upn: &str,
        sealed: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        backend!(self, s => s.set_refresh_token(upn, sealed))
    }

    /// Shadow accounts not used since `before` (candidates for removal).
    pub async fn unused_shadows(&self, before: Epoch) -> Result<Vec<ShadowAccount>, StoreError> {
        backend!(self, s => s.unused_shadows(before))
    }

    pub async fn delete_shadow(&self, jid: &str) -> Result<(), StoreError> {
        backend!(self, s => s.delete_shadow(jid))
    }

    // Leases ------------------------------------------------------------------------

    /// Takes the lease `name` for `holder` for `ttl_secs`, or renews it if
    /// `holder` has it; `false` while another holder's lease runs. Replicas
    /// sharing the store agree on one holder (the store's clock decides).
    pub async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_secs: i64,
    ) -> Result<bool, StoreError> {
        backend!(self, s => s.hold_lease(name, holder, ttl_secs))
    }

    /// Gives the lease up if `holder` has it (another may take it at once).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        backend!(self, s => s.release_lease(name, holder))
    }

    // Contacts ----------------------------------------------------------------------

    pub async fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        backend!(self, s => s.put_contact(contact))
    }

    pub async fn contacts_of(&self, teams_user: &str) -> Result<Vec<Contact>, StoreError> {
        backend!(self, s => s.contacts_of(teams_user))
    }

    /// Every relationship (read once at startup).
    pub async fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        backend!(self, s => s.contacts())
    }

    pub async fn delete_contact(
        &self,
        teams_user: &str,
        remote_jid: &str,
    ) -> Result<(), StoreError> {
        backend!(self, s => s.delete_contact(teams_user, remote_jid))
    }

    // The outbox --------------------------------------------------------------------

    /// Enqueues a message; `None` when its dedupe key is already queued or delivered.
    pub async fn enqueue(&self, item: &OutboxItem) -> Result<Option<i64>, StoreError> {
        let row = item.to_row()?;
        backend!(self, s => s.enqueue(&row))
    }

    /// Whether a dedupe key is queued or was delivered.
    pub async fn is_known(&self, dedupe_key: &str) -> Result<bool, StoreError> {
        backend!(self, s => s.is_known(dedupe_key))
    }

    /// Messages due now, oldest first, at most one per conversation (order is
    /// kept within a conversation: the next goes only when this one is done).
    ///
    /// A row that is no entry this gateway can read (damaged, or written by a
    /// newer version) is logged with its place and given up on, like an
    /// expired one, so that it cannot hold up its conversation for ever.
    pub async fn due(&self, at: Epoch, limit: i64) -> Result<Vec<OutboxItem>, StoreError> {
        let rows = backend!(self, s => s.due(at, limit))?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = row.seq;
            match row.decode() {
                Ok(item) => items.push(item),
                Err(why) => {
                    tracing::error!(seq, %why, "unreadable outbox entry given up on");
                    self.expire(seq).await?;
                }
            }
        }
        Ok(items)
    }

    /// Delivered: removed from the queue (its dedupe key is remembered).
    pub async fn delivered(&self, seq: i64) -> Result<(), StoreError> {
        backend!(self, s => s.delivered(seq))
    }

    /// Forgets the dedupe keys of messages delivered (or given up on) before
    /// `before`, in batches; returns how many went. Repeats come within
    /// minutes (a peer resending, a chat read again), so keys need not live
    /// for ever.
    pub async fn forget_delivered(&self, before: Epoch) -> Result<u64, StoreError> {
        backend!(self, s => s.forget_delivered(before))
    }

    /// Not delivered this time: tried again at `next_attempt_at`.
    pub async fn retry_later(&self, seq: i64, next_attempt_at: Epoch) -> Result<(), StoreError> {
        backend!(self, s => s.retry_later(seq, next_attempt_at))
    }

    /// Gives up on a message (its expiry passed): removed, remembered as done.
    pub async fn expire(&self, seq: i64) -> Result<(), StoreError> {
        backend!(self, s => s.delivered(seq))
    }
}

/// Why a secret (`what`) could not be read, without its value: std's
/// message for an environment variable that is not Unicode quotes the value.
fn unreadable_secret(what: &str, source: &SecretRef, error: ConfigError) -> StoreError {
    let reason = match error {
        ConfigError::Secret { reason, .. } if !reason.contains("not valid unicode") => reason,
        ConfigError::Secret { .. } => "it is not valid Unicode".to_owned(),
        _ => "it cannot be read".to_owned(),
    };
    StoreError::backend(format!(
        "cannot read the {what} from {}: {reason}",
        source.describe()
    ))
}
