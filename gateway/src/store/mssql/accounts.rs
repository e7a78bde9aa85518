//! Shadow accounts, their sealed refresh tokens, and contact relationships.

use tiberius::Row;

use super::{SqlServerStore, bytes, int, text};
use crate::store::{Contact, Epoch, ShadowAccount, StoreError};

impl SqlServerStore {
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
        self.shadow_where("jid", jid).await
    }

    /// The shadow account whose `column` (a key: jid or object_id) is `value`.
    async fn shadow_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<ShadowAccount>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT jid, upn, object_id, credential, last_used, created_at FROM shadow_accounts WHERE {column} = @P1"),
                &[&value],
            )
            .await?;
        rows.first().map(Self::shadow_row).transpose()
    }

    pub async fn shadow_by_object_id(
        &self,
        object_id: &str,
    ) -> Result<Option<ShadowAccount>, StoreError> {
        self.shadow_where("object_id", object_id).await
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
}
