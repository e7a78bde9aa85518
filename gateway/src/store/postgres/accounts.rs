//! Shadow accounts, their sealed refresh tokens, and contact relationships.
//!
//! Every write is one statement, its own READ COMMITTED transaction; the
//! upserts are `INSERT … ON CONFLICT DO UPDATE`, atomic under concurrency.
//! A UPN another contact holds breaks `shadow_accounts_upn`: an error, as on
//! the other backends (`ON CONFLICT (jid)` arbitrates the key only).

use tokio_postgres::Row;

use super::{PgError, PostgresStore};
use crate::store::{Contact, Epoch, ShadowAccount, StoreError};

const SHADOW_COLUMNS: &str = "jid, upn, object_id, credential, last_used, created_at";

impl PostgresStore {
    pub async fn put_shadow(&self, a: &ShadowAccount) -> Result<(), StoreError> {
        // The refresh token is the account's own column: rewriting the account keeps it.
        self.execute(
            "INSERT INTO shadow_accounts (jid, upn, object_id, credential, last_used, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (jid) DO UPDATE SET upn = EXCLUDED.upn, object_id = EXCLUDED.object_id,
                credential = EXCLUDED.credential, last_used = EXCLUDED.last_used,
                created_at = EXCLUDED.created_at",
            &[
                &a.jid,
                &a.upn,
                &a.object_id,
                &a.credential,
                &a.last_used,
                &a.created_at,
            ],
        )
        .await
        .map(drop)
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
        self.query_opt(
            &format!("SELECT {SHADOW_COLUMNS} FROM shadow_accounts WHERE {column} = $1"),
            &[&value],
            shadow_row,
        )
        .await
    }

    pub async fn shadow_by_object_id(
        &self,
        object_id: &str,
    ) -> Result<Option<ShadowAccount>, StoreError> {
        self.shadow_where("object_id", object_id).await
    }

    pub async fn touch_shadow(&self, jid: &str, at: Epoch) -> Result<(), StoreError> {
        self.execute(
            "UPDATE shadow_accounts SET last_used = $1 WHERE jid = $2",
            &[&at, &jid],
        )
        .await
        .map(drop)
    }

    pub async fn refresh_token(&self, upn: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let token = self
            .query_opt(
                "SELECT refresh_token FROM shadow_accounts WHERE upn = $1",
                &[&upn],
                |r| r.try_get::<_, Option<Vec<u8>>>(0),
            )
            .await?;
        Ok(token.flatten())
    }

    pub async fn set_refresh_token(
        &self,
        upn: &str,
        sealed: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE shadow_accounts SET refresh_token = $1 WHERE upn = $2",
            &[&sealed, &upn],
        )
        .await
        .map(drop)
    }

    pub async fn unused_shadows(&self, before: Epoch) -> Result<Vec<ShadowAccount>, StoreError> {
        self.query(
            &format!(
                "SELECT {SHADOW_COLUMNS} FROM shadow_accounts WHERE last_used < $1 ORDER BY last_used, jid"
            ),
            &[&before],
            shadow_row,
        )
        .await
    }

    pub async fn delete_shadow(&self, jid: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM shadow_accounts WHERE jid = $1", &[&jid])
            .await
            .map(drop)
    }

    pub async fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO contacts (teams_user, remote_jid, state) VALUES ($1, $2, $3)
             ON CONFLICT (teams_user, remote_jid) DO UPDATE SET state = EXCLUDED.state",
            &[&contact.teams_user, &contact.remote_jid, &contact.state],
        )
        .await
        .map(drop)
    }

    pub async fn contacts_of(&self, teams_user: &str) -> Result<Vec<Contact>, StoreError> {
        self.query(
            "SELECT teams_user, remote_jid, state FROM contacts WHERE teams_user = $1 ORDER BY remote_jid",
            &[&teams_user],
            contact_row,
        )
        .await
    }

    pub async fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        self.query(
            "SELECT teams_user, remote_jid, state FROM contacts ORDER BY teams_user, remote_jid",
            &[],
            contact_row,
        )
        .await
    }

    pub async fn delete_contact(
        &self,
        teams_user: &str,
        remote_jid: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM contacts WHERE teams_user = $1 AND remote_jid = $2",
            &[&teams_user, &remote_jid],
        )
        .await
        .map(drop)
    }
}

fn shadow_row(r: &Row) -> Result<ShadowAccount, PgError> {
    Ok(ShadowAccount {
        jid: r.try_get(0)?,
        upn: r.try_get(1)?,
        object_id: r.try_get(2)?,
        credential: r.try_get(3)?,
        last_used: r.try_get(4)?,
        created_at: r.try_get(5)?,
    })
}

fn contact_row(r: &Row) -> Result<Contact, PgError> {
    Ok(Contact {
        teams_user: r.try_get(0)?,
        remote_jid: r.try_get(1)?,
        state: r.try_get(2)?,
    })
}
