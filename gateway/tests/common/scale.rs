//! Many shadow accounts at once: written straight into the store (sealed as
//! the gateway seals them) and into the emulated tenant, for the tests and
//! benches about Graph's limits at tenant scale.

use secrecy::SecretString;
use serde_json::{Value, json};
use xmppfed_gateway::bridge::contacts::credentials::CredentialCipher;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;
use xmppfed_gateway::store::{Contact, ShadowAccount, Store};

use super::bridge::{PEER, SHADOW_DOMAIN};

/// The object id of seeded shadow account `n`.
pub fn shadow_id(n: usize) -> String {
    format!("00000000-0000-4000-9000-{n:012}")
}

/// The object id of seeded Teams user `n` (`user{n}@contoso.com`).
pub fn user_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// `count` shadow accounts for `contact{n}@xmpp.test` in the store at `path`
/// (sealed with the key `gateway_config` writes), each subscribed both ways
/// to Teams user `n % teams_users` when `teams_users` is not 0; returns the
/// same accounts as the emulator's seed users.
pub async fn seed_shadow_accounts(
    path: &std::path::Path,
    count: usize,
    teams_users: usize,
) -> Vec<Value> {
    let cipher = CredentialCipher::new("credential key of this gateway");
    let store = Store::sqlite(path).await.unwrap();
    let now = xmppfed_gateway::clock::now();
    let mut users = Vec::with_capacity(count);
    for n in 0..count {
        let jid = format!("contact{n}@{PEER}");
        let upn = upn_for(&jid, SHADOW_DOMAIN);
        let password = format!("Sh4dow!pw-{n}");
        let credential = cipher
            .seal(&jid, &SecretString::from(password.clone()))
            .unwrap();
        let account = ShadowAccount {
            jid: jid.clone(),
            upn: upn.clone(),
            object_id: shadow_id(n),
            credential,
            last_used: now,
            created_at: now,
        };
        store.put_shadow(&account).await.unwrap();
        if teams_users > 0 {
            let contact = Contact {
                teams_user: user_id(n % teams_users),
                remote_jid: jid,
                state: "both".into(),
            };
            store.put_contact(&contact).await.unwrap();
        }
        users.push(json!({"id": shadow_id(n), "userPrincipalName": upn,
            "displayName": format!("Contact {n} (XMPP)"), "password": password}));
    }
    users
}
