//! Many shadow accounts at once: written straight into the store (sealed as
//! the gateway seals them) and into the emulated tenant, for the tests and
//! benches about Graph's limits at tenant scale.

use secrecy::SecretString;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::bridge::contacts::credentials::CredentialCipher;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;
use xmppfed_gateway::store::{Contact, ShadowAccount, Store};

use super::bridge::{CLIENT_ID, PEER, SHADOW_DOMAIN, SKU};

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

/// A tenant with Microsoft's Teams limits on, `users` Teams users and the
/// given shadow accounts (seed users).
pub fn limited_seed(users: usize, shadows: Vec<Value>, timeout: Option<u64>) -> Seed {
    let mut all = vec![json!({"userPrincipalName": "alice@contoso.com", "displayName": "Alice"})];
    for n in 0..users {
        all.push(
            json!({"id": user_id(n), "userPrincipalName": format!("user{n}@contoso.com"),
            "displayName": format!("User {n}"), "mail": format!("user{n}@contoso.com")}),
        );
    }
    all.extend(shadows);
    serde_json::from_value(json!({
        "tenantId": "5c0ffee0-0000-4000-8000-0000000000b2",
        "apps": [{"clientId": CLIENT_ID, "clientSecret": "s3cret",
                  "roles": ["User.ReadWrite.All", "Presence.ReadWrite.All", "LicenseAssignment.ReadWrite.All",
                            "ProfilePhoto.ReadWrite.All", "Chat.Read.All", "Chat.ReadBasic.All"],
                  "scopes": ["Presence.ReadWrite", "Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"]}],
        "users": all,
        "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 20_000,
                  "servicePlans": ["TEAMS1"]}],
        "teamsLimits": {},
        "presenceTimeoutSeconds": timeout,
    }))
    .unwrap()
}

/// Graph calls the emulator answered, by the first two segments of the path.
pub fn calls_by_kind(log: &[String]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for line in log {
        let (method, rest) = line.split_once(' ').unwrap_or((line, ""));
        let path = rest.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches("/v1.0/").split('/').collect();
        let kind = match segments.as_slice() {
            ["users", _, tail, ..] => format!("{method} users/…/{tail}"),
            ["chats", _, tail, ..] => format!("{method} chats/…/{tail}"),
            [first, ..] => format!("{method} {first}"),
            [] => method.to_owned(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

pub fn refused(emulator: &GraphEmulator) -> u32 {
    emulator.tenant().throttling.refused.values().sum()
}

/// Waits until `calls` Graph calls of `kind` were made; how long it took.
pub async fn until_calls(
    emulator: &GraphEmulator,
    kind: &str,
    calls: usize,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        let seen = calls_by_kind(&emulator.tenant().log)
            .get(kind)
            .copied()
            .unwrap_or(0);
        if seen >= calls {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    started.elapsed()
}
