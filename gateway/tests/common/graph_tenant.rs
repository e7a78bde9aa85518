//! The tenant most Graph client tests run against: Alice (a Teams user), Bob's
//! shadow account, the gateway's app and a Teams SKU.

use std::time::Duration;

use serde_json::json;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::graph::{GraphClient, RetryPolicy};

pub const TENANT: &str = "5c0ffee0-0000-4000-8000-000000000001";

pub fn seed() -> Seed {
    let mut users = vec![
        json!({"id": "11111111-1111-4111-8111-111111111111", "userPrincipalName": "alice@contoso.com",
        "displayName": "Alice Teams", "givenName": "Alice", "mail": "alice@contoso.com", "jobTitle": "Engineer", "businessPhones": ["+1 555 0100"]}),
    ];
    users.push(json!({"userPrincipalName": "bob.xmpp@shadow.contoso.com", "displayName": "Bob (XMPP)", "password": "Sh4dow!pw"}));
    serde_json::from_value(json!({
        "tenantId": TENANT,
        "apps": [{"clientId": "gateway", "clientSecret": "s3cret",
                  "roles": ["User.ReadWrite.All", "LicenseAssignment.ReadWrite.All", "Presence.ReadWrite.All", "ProfilePhoto.ReadWrite.All"],
                  "scopes": ["Presence.ReadWrite", "User.Read", "Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"]}],
        "users": users,
        "skus": [{"skuId": "sku-teams", "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 5}]
    }))
    .unwrap()
}

pub fn client(emulator: &GraphEmulator, secret: &str, retry: RetryPolicy) -> GraphClient {
    super::graph_client(emulator, "gateway", secret, retry)
}

pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        max_wait: Duration::from_secs(10),
        backoff: Duration::from_millis(50),
    }
}
