//! The durable store: everything the gateway must not lose across restarts,
//! failover or throttling. One interface, two backends: SQLite (the embedded
//! default, one replica) and Microsoft SQL Server 2022 (replicated
//! production; arrives next). Schema changes are versioned migrations, run at
//! startup. Every backend passes the same conformance suite (tests/store.rs).

mod sqlite;

use std::path::Path;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error(
        "store schema version {found} is newer than this gateway ({supported}): upgrade the gateway"
    )]
    TooNew { found: i64, supported: i64 },
}

/// Seconds since the Unix epoch (the store's clock unit).
pub type Epoch = i64;

pub fn now() -> Epoch {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
}

/// A subscription between a Teams user of our domain and a remote contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub teams_user: String,
    pub remote_jid: String,
    /// `pending-in`, `subscribed`, … (the bridge owns the states).
    pub state: String,
}

/// A message waiting for delivery, one direction or the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub seq: i64,
    /// `to-teams` or `to-xmpp`.
    pub direction: String,
    /// Messages of one conversation are delivered in order.
    pub conversation: String,
    /// Graph message id or XMPP id/origin-id: the same message is enqueued once.
    pub dedupe_key: String,
    pub payload: String,
    pub attempts: i64,
    pub next_attempt_at: Epoch,
    pub expires_at: Epoch,
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
}

impl Store {
    /// Opens (creating if needed) and migrates an SQLite store.
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open(path).await?))
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.schema_version().await,
        }
    }

    // Cursors and small state -------------------------------------------------

    pub async fn get_cursor(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_cursor(key).await,
        }
    }

    pub async fn set_cursor(&self, key: &str, value: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.set_cursor(key, value).await,
        }
    }

    // Graph subscriptions -------------------------------------------------------

    pub async fn put_subscription(&self, sub: &StoredSubscription) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_subscription(sub).await,
        }
    }

    pub async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        match self {
            Store::Sqlite(s) => s.subscriptions().await,
        }
    }

    pub async fn delete_subscription(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_subscription(id).await,
        }
    }

    // The notification queue ----------------------------------------------------

    /// Appends a notification batch as received; its place in the queue is returned.
    pub async fn push_notification(&self, body: &str) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.push_notification(body).await,
        }
    }

    /// Takes up to `limit` notifications for `lease_secs`: not acknowledged in
    /// that time (the process died), they are handed out again.
    pub async fn claim_notifications(
        &self,
        limit: i64,
        lease_secs: i64,
    ) -> Result<Vec<QueuedNotification>, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim_notifications(limit, lease_secs).await,
        }
    }

    pub async fn ack_notification(&self, seq: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ack_notification(seq).await,
        }
    }

    // Shadow accounts -------------------------------------------------------------

    pub async fn put_shadow(&self, account: &ShadowAccount) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_shadow(account).await,
        }
    }

    pub async fn shadow(&self, jid: &str) -> Result<Option<ShadowAccount>, StoreError> {
        match self {
            Store::Sqlite(s) => s.shadow(jid).await,
        }
    }

    pub async fn touch_shadow(&self, jid: &str, at: Epoch) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.touch_shadow(jid, at).await,
        }
    }

    /// Shadow accounts not used since `before` (candidates for removal).
    pub async fn unused_shadows(&self, before: Epoch) -> Result<Vec<ShadowAccount>, StoreError> {
        match self {
            Store::Sqlite(s) => s.unused_shadows(before).await,
        }
    }

    pub async fn delete_shadow(&self, jid: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_shadow(jid).await,
        }
    }

    // Contacts ----------------------------------------------------------------------

    pub async fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_contact(contact).await,
        }
    }

    pub async fn contacts_of(&self, teams_user: &str) -> Result<Vec<Contact>, StoreError> {
        match self {
            Store::Sqlite(s) => s.contacts_of(teams_user).await,
        }
    }

    /// Every relationship (read once at startup).
    pub async fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        match self {
            Store::Sqlite(s) => s.contacts().await,
        }
    }

    pub async fn delete_contact(
        &self,
        teams_user: &str,
        remote_jid: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_contact(teams_user, remote_jid).await,
        }
    }

    // The outbox --------------------------------------------------------------------

    /// Enqueues a message; `None` when its dedupe key is already queued or delivered.
    pub async fn enqueue(&self, item: &OutboxItem) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.enqueue(item).await,
        }
    }

    /// Messages due now, oldest first, at most one per conversation (order is
    /// kept within a conversation: the next goes only when this one is done).
    pub async fn due(&self, at: Epoch, limit: i64) -> Result<Vec<OutboxItem>, StoreError> {
        match self {
            Store::Sqlite(s) => s.due(at, limit).await,
        }
    }

    /// Delivered: removed from the queue (its dedupe key is remembered).
    pub async fn delivered(&self, seq: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delivered(seq).await,
        }
    }

    /// Not delivered this time: tried again at `next_attempt_at`.
    pub async fn retry_later(&self, seq: i64, next_attempt_at: Epoch) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.retry_later(seq, next_attempt_at).await,
        }
    }

    /// Gives up on a message (its expiry passed): removed, remembered as done.
    pub async fn expire(&self, seq: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delivered(seq).await,
        }
    }
}
