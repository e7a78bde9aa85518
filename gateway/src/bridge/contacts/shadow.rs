//! Shadow accounts: one tenant user per remote XMPP contact, created through
//! Graph the first time the contact needs one, licensed, its password kept
//! encrypted in the store, its profile taken from the contact's vCard.

use xmpp_parsers::minidom::Element;
use xmpp_parsers::sha1::{Digest, Sha1};

use crate::bridge::contacts::credentials::{CredentialCipher, CredentialError, generate_password};
use crate::graph::api::{NewUser, PasswordProfile, UserPatch};
use crate::graph::{GraphClient, GraphError, UserCredential};
use crate::store::{ShadowAccount, Store, StoreError, now};

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("the shadow account could not be created lately; trying again in {}s", retry_in.as_secs())]
    BackingOff { retry_in: std::time::Duration },
    /// The account is in the tenant but not in the store (a lost or new
    /// store), and Graph refuses to reset its password: an app resets
    /// passwords only through a directory role (user-update, passwordProfile).
    #[error(
        "shadow account {upn} exists in the tenant but not in the gateway's store, and Graph refuses to reset its password ({source}): assign the app the User Administrator role scoped to the shadow accounts' administrative unit, or delete the account so that the gateway creates it again"
    )]
    TakeOverRefused { upn: String, source: GraphError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// From `[shadow_accounts]`.
#[derive(Debug, Clone)]
pub struct ShadowSettings {
    pub upn_domain: String,
    pub licence_sku: Option<String>,
    pub display_name_suffix: String,
    /// Required by Graph before a licence can be assigned.
    pub usage_location: Option<String>,
    /// The administrative unit shadow accounts are created in.
    pub administrative_unit: Option<String>,
}

/// The UPN of a contact's shadow account: readable, within the 64-character
/// local part, and unique (a hash of the JID tells apart `x@a-b.c` and `x@a.b.c`).
pub fn upn_for(jid: &str, upn_domain: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches('-')
            .to_owned()
    };
    let (local, domain) = jid.split_once('@').unwrap_or(("", jid));
    let digest: String = Sha1::digest(jid.to_lowercase().as_bytes())[..3]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut readable = format!("{}.{}", clean(local), clean(domain));
    readable.truncate(64 - 7);
    format!(
        "{}.{digest}@{upn_domain}",
        readable.trim_matches(|c| c == '.' || c == '-')
    )
}

/// The shadow account of `jid` (a bare JID, lower-cased), created on first need.
/// `card` is the contact's vcard-temp, when we have it.
pub async fn ensure(
    graph: &GraphClient,
    store: &Store,
    cipher: &CredentialCipher,
    settings: &ShadowSettings,
    jid: &str,
    card: Option<&Element>,
) -> Result<(ShadowAccount, UserCredential), ShadowError> {
    if let Some(account) = store.shadow(jid).await? {
        store.touch_shadow(jid, now()).await?;
        let password = cipher.open(jid, &account.credential)?;
        let credential = UserCredential {
            upn: account.upn.clone(),
            password,
        };
        return Ok((account, credential));
    }
    let upn = upn_for(jid, &settings.upn_domain);
    let local = jid.split('@').next().unwrap_or(jid);
    let (profile, photo) = match card {
        Some(card) => crate::bridge::contacts::vcard::to_shadow_profile(
            card,
            local,
            &settings.display_name_suffix,
        ),
        None => (
            UserPatch {
                display_name: Some(format!("{local}{}", settings.display_name_suffix)),
                ..UserPatch::default()
            },
            None,
        ),
    };
    let password = generate_password();
    let new = NewUser {
        upn: upn.clone(),
        display_name: profile
            .display_name
            .clone()
            .unwrap_or_else(|| local.to_owned()),
        mail_nickname: upn.split('@').next().unwrap_or(local).to_owned(),
        usage_location: settings.usage_location.clone(),
        password: password.clone(),
        administrative_unit: settings.administrative_unit.clone(),
    };
    let object_id = match graph.create_user(&new).await {
        Ok(user) => user.id,
        // The tenant has it but our store lost it: take it over with a new password.
        Err(e) if e.status() == Some(400) && e.to_string().contains("already exists") => {
            let user = graph.get_user(&upn).await?;
            let reset = UserPatch {
                password_profile: Some(PasswordProfile {
                    password: password.clone(),
                }),
                ..UserPatch::default()
            };
            match graph.update_user(&user.id, &reset).await {
                Ok(()) => {}
                Err(source) if source.status() == Some(403) => {
                    return Err(ShadowError::TakeOverRefused { upn, source });
                }
                Err(e) => return Err(e.into()),
            }
            tracing::warn!(%upn, "shadow account existed in the tenant but not in the store: taken over");
            user.id
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(sku) = &settings.licence_sku {
        graph
            .assign_licence(&object_id, sku, &plans_to_disable(graph, sku).await)
            .await?;
    }
    // The name went with the creation; the rest of the card follows.
    let details = UserPatch {
        display_name: None,
        ..profile
    };
    if !details.is_empty() {
        graph.update_user(&object_id, &details).await?;
    }
    if let Some((content_type, bytes)) = &photo {
        graph.put_photo(&object_id, content_type, bytes).await?;
    }
    let account = ShadowAccount {
        jid: jid.to_owned(),
        upn: upn.clone(),
        object_id,
        credential: cipher.seal(jid, &password)?,
        last_used: now(),
        created_at: now(),
    };
    store.put_shadow(&account).await?;
    tracing::info!(%jid, %upn, "shadow account created");
    Ok((account, UserCredential { upn, password }))
}

/// The SKU's service plans a shadow account does not need; none (the whole
/// SKU) when the tenant's SKUs cannot be read, which is logged.
async fn plans_to_disable(graph: &GraphClient, sku: &str) -> Vec<String> {
    match graph.subscribed_skus().await {
        Ok(skus) => skus
            .iter()
            .find(|s| s.sku_id.eq_ignore_ascii_case(sku))
            .map(|s| s.plans_to_disable())
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the tenant's SKUs: the licence is assigned with every service plan on");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn upns_are_readable_bounded_and_unique() {
        let a = super::upn_for("x@a-b.c", "shadow.test");
        let b = super::upn_for("x@a.b.c", "shadow.test");
        assert_ne!(a, b);
        assert!(
            a.starts_with("x.a-b-c.") && a.ends_with("@shadow.test"),
            "{a}"
        );
        let long = super::upn_for(&format!("{}@example.org", "n".repeat(200)), "shadow.test");
        assert!(long.split('@').next().unwrap().len() <= 64, "{long}");
        assert_eq!(
            super::upn_for("Bob@XMPP.test", "s.test"),
            super::upn_for("bob@xmpp.test", "s.test")
        );
    }
}
