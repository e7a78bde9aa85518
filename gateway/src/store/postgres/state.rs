//! Bridged chats, Graph subscriptions, the webhook's notification queue, and leases.
//!
//! Every write here is one statement, its own READ COMMITTED transaction:
//! - upserts are `INSERT … ON CONFLICT DO UPDATE`, atomic however many
//!   replicas race (the loser of an insert race waits for the winner's
//!   commit, then updates the row it made);
//! - a claim locks the rows it takes `FOR UPDATE SKIP LOCKED`: rows another
//!   replica is claiming are skipped, not waited for, and a row it claimed
//!   and committed meanwhile is re-read and fails `claimed_until <= now`, so
//!   no notification is handed to two replicas within its lease;
//! - a lease is taken by an upsert whose update runs only when the lease is
//!   ours or lapsed, judged on the row as it stands once locked (a racing
//!   taker waits for the row lock, then finds the winner's holder).

use tokio_postgres::Row;

use super::{PgError, PostgresStore, server_now};
use crate::store::{BridgedChat, QueuedNotification, StoreError, StoredSubscription, now};

impl PostgresStore {
    pub async fn bridge_chat(&self, chat: &BridgedChat) -> Result<(), StoreError> {
        self.execute(
            concat!(
                "INSERT INTO bridged_chats (chat_id, remote_jid, teams_user, read_from_ms, bridged_at)
                 VALUES ($1, $2, $3, $4, ",
                server_now!(),
                ")
                 ON CONFLICT (chat_id) DO UPDATE SET remote_jid = EXCLUDED.remote_jid,
                    teams_user = EXCLUDED.teams_user, bridged_at = EXCLUDED.bridged_at"
            ),
            &[
                &chat.chat_id,
                &chat.remote_jid,
                &chat.teams_user,
                &chat.read_from_ms,
            ],
        )
        .await
        .map(drop)
    }

    pub async fn bridged_chat(&self, chat_id: &str) -> Result<Option<BridgedChat>, StoreError> {
        self.query_opt(
            "SELECT chat_id, remote_jid, teams_user, read_from_ms FROM bridged_chats WHERE chat_id = $1",
            &[&chat_id],
            bridged_chat,
        )
        .await
    }

    pub async fn chat_between(
        &self,
        remote_jid: &str,
        teams_user: &str,
    ) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT chat_id FROM bridged_chats WHERE remote_jid = $1 AND teams_user = $2
             ORDER BY bridged_at DESC, chat_id DESC LIMIT 1",
            &[&remote_jid, &teams_user],
            |r| r.try_get(0),
        )
        .await
    }

    pub async fn bridged_chats(&self) -> Result<Vec<BridgedChat>, StoreError> {
        self.query(
            "SELECT chat_id, remote_jid, teams_user, read_from_ms FROM bridged_chats ORDER BY chat_id",
            &[],
            bridged_chat,
        )
        .await
    }

    pub async fn set_read_mark(&self, chat_id: &str, read_from_ms: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE bridged_chats SET read_from_ms = $2 WHERE chat_id = $1",
            &[&chat_id, &read_from_ms],
        )
        .await
        .map(drop)
    }

    pub async fn put_subscription(&self, s: &StoredSubscription) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO subscriptions (id, resource, change_type, as_user, lifetime_secs, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at,
                lifetime_secs = EXCLUDED.lifetime_secs",
            &[
                &s.id,
                &s.resource,
                &s.change_type,
                &s.as_user,
                &s.lifetime_secs,
                &s.expires_at,
            ],
        )
        .await
        .map(drop)
    }

    pub async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        self.query(
            "SELECT id, resource, change_type, as_user, lifetime_secs, expires_at
             FROM subscriptions ORDER BY expires_at, id",
            &[],
            |r| {
                Ok(StoredSubscription {
                    id: r.try_get(0)?,
                    resource: r.try_get(1)?,
                    change_type: r.try_get(2)?,
                    as_user: r.try_get(3)?,
                    lifetime_secs: r.try_get(4)?,
                    expires_at: r.try_get(5)?,
                })
            },
        )
        .await
    }

    pub async fn delete_subscription(&self, id: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM subscriptions WHERE id = $1", &[&id])
            .await
            .map(drop)
    }

    pub async fn push_notification(&self, body: &str) -> Result<i64, StoreError> {
        let seq = self
            .query_opt(
                "INSERT INTO notifications (body, received_at) VALUES ($1, $2) RETURNING seq",
                &[&body, &now()],
                |r| r.try_get(0),
            )
            .await?;
        seq.ok_or_else(|| self.fail("INSERT … RETURNING returned no row".to_owned()))
    }

    pub async fn claim_notifications(
        &self,
        limit: i64,
        lease_secs: i64,
    ) -> Result<Vec<QueuedNotification>, StoreError> {
        // The row locks are taken below the LIMIT: skipped rows do not count.
        let mut claimed = self
            .query(
                concat!(
                    "WITH claimable AS (
                        SELECT seq FROM notifications
                        WHERE claimed_until <= ",
                    server_now!(),
                    "
                        ORDER BY seq LIMIT $1
                        FOR UPDATE SKIP LOCKED)
                     UPDATE notifications AS n SET claimed_until = ",
                    server_now!(),
                    " + $2
                     FROM claimable WHERE n.seq = claimable.seq
                     RETURNING n.seq, n.body"
                ),
                &[&limit.max(0), &lease_secs],
                |r| {
                    Ok(QueuedNotification {
                        seq: r.try_get(0)?,
                        body: r.try_get(1)?,
                    })
                },
            )
            .await?;
        // RETURNING gives rows in no particular order.
        claimed.sort_by_key(|n| n.seq);
        Ok(claimed)
    }

    pub async fn ack_notification(&self, seq: i64) -> Result<(), StoreError> {
        self.execute("DELETE FROM notifications WHERE seq = $1", &[&seq])
            .await
            .map(drop)
    }

    pub async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_secs: i64,
    ) -> Result<bool, StoreError> {
        // A row comes back only when it was inserted or updated: the lease is ours.
        let held = self
            .query_opt(
                concat!(
                    "INSERT INTO leases AS l (name, holder, expires_at) VALUES ($1, $2, ",
                    server_now!(),
                    " + $3)
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                        WHERE l.holder = EXCLUDED.holder OR l.expires_at <= ",
                    server_now!(),
                    "
                     RETURNING 1"
                ),
                &[&name, &holder, &ttl_secs],
                |r| r.try_get::<_, i32>(0),
            )
            .await?;
        Ok(held.is_some())
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )
        .await
        .map(drop)
    }
}

fn bridged_chat(r: &Row) -> Result<BridgedChat, PgError> {
    Ok(BridgedChat {
        chat_id: r.try_get(0)?,
        remote_jid: r.try_get(1)?,
        teams_user: r.try_get(2)?,
        read_from_ms: r.try_get(3)?,
    })
}
