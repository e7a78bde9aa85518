//! Bridged chats, Graph subscriptions, the webhook's notification queue, and leases.

use crate::store::{BridgedChat, QueuedNotification, StoreError, StoredSubscription, now};

use super::{SERVER_NOW, SqlServerStore, backend, first, int, is_duplicate, opt_text, text};

impl SqlServerStore {
    pub async fn bridge_chat(&self, chat: &BridgedChat) -> Result<(), StoreError> {
        self.run(
            &format!(
                "BEGIN TRAN;
                 UPDATE bridged_chats WITH (UPDLOCK, SERIALIZABLE)
                    SET remote_jid = @P2, teams_user = @P3, bridged_at = {SERVER_NOW} WHERE chat_id = @P1;
                 IF @@ROWCOUNT = 0
                    INSERT INTO bridged_chats (chat_id, remote_jid, teams_user, read_from_ms, bridged_at)
                    VALUES (@P1, @P2, @P3, @P4, {SERVER_NOW});
                 COMMIT;"
            ),
            &[
                &chat.chat_id.as_str(),
                &chat.remote_jid.as_str(),
                &chat.teams_user.as_str(),
                &chat.read_from_ms,
            ],
        )
        .await
    }

    pub async fn bridged_chat(&self, chat_id: &str) -> Result<Option<BridgedChat>, StoreError> {
        let rows = self
            .rows(
                "SELECT chat_id, remote_jid, teams_user, read_from_ms FROM bridged_chats WHERE chat_id = @P1",
                &[&chat_id],
            )
            .await?;
        rows.first().map(bridged_chat).transpose()
    }

    pub async fn chat_between(
        &self,
        remote_jid: &str,
        teams_user: &str,
    ) -> Result<Option<String>, StoreError> {
        let rows = self
            .rows(
                "SELECT TOP (1) chat_id FROM bridged_chats WHERE remote_jid = @P1 AND teams_user = @P2
                 ORDER BY bridged_at DESC, chat_id DESC",
                &[&remote_jid, &teams_user],
            )
            .await?;
        rows.first().map(|r| text(r, 0)).transpose()
    }

    pub async fn bridged_chats(&self) -> Result<Vec<BridgedChat>, StoreError> {
        let rows = self
            .rows(
                "SELECT chat_id, remote_jid, teams_user, read_from_ms FROM bridged_chats ORDER BY chat_id",
                &[],
            )
            .await?;
        rows.iter().map(bridged_chat).collect()
    }

    pub async fn set_read_mark(&self, chat_id: &str, read_from_ms: i64) -> Result<(), StoreError> {
        self.run(
            "UPDATE bridged_chats SET read_from_ms = @P2 WHERE chat_id = @P1",
            &[&chat_id, &read_from_ms],
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
}

fn bridged_chat(r: &tiberius::Row) -> Result<BridgedChat, StoreError> {
    Ok(BridgedChat {
        chat_id: text(r, 0)?,
        remote_jid: text(r, 1)?,
        teams_user: text(r, 2)?,
        read_from_ms: int(r, 3)?,
    })
}
