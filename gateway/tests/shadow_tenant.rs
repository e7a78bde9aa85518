//! The shadow-tenant topology: Teams users in their own tenant (MFA for
//! everyone untouched), the XMPP contacts' shadow accounts in a tenant kept
//! for federation alone. Two Graph emulators, one per tenant, each with its
//! own app registration; a real Prosody; the gateway in this process. The
//! contact's account, its sign-ins, its presence and the chat live in the
//! shadow tenant, the chat binding the Teams user as a cross-tenant member;
//! the allow list and the Teams user's presence come from the home tenant.
//! Skips, saying so, without Prosody or the Python client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::Instant;

use common::bridge::*;
use serde_json::{Value, json};
use xmppfed_config::{GatewayConfig, SecretRef};
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_e2e::prosody::{self, ProsodyOptions};
use xmppfed_gateway::bridge::contacts::shadow::upn_for;

const HOME: &str = "5c0ffee0-0000-4000-8000-0000000000d1";
const SHADOW_TENANT: &str = "5c0ffee0-0000-4000-8000-0000000000d2";
const SHADOW_APP: &str = "0f0f0f0f-2222-4333-8444-555555555555";
const ALICE_ID: &str = "a11ce000-0000-4000-8000-00000000a11c";

/// The Teams users' tenant: Alice, and an app that only reads.
fn home() -> Seed {
    serde_json::from_value(json!({
        "tenantId": HOME,
        "apps": [{"clientId": CLIENT_ID, "clientSecret": "s3cret",
                  "roles": ["User.Read.All", "Presence.Read.All"]}],
        "users": [{"id": ALICE_ID, "userPrincipalName": "alice@contoso.com",
                   "displayName": "Alice Liddell", "mail": "alice@contoso.com"}],
        // The home tenant keeps MFA for everyone: no shadow account signs in here.
        "identity": {"conditionalAccess": [{"displayName": "MFA for all", "grant": "mfa"}]}
    }))
    .unwrap()
}

/// The shadow accounts' tenant, whose external access allows `allowed`.
fn shadow_tenant(allowed: &[&str]) -> Seed {
    serde_json::from_value(json!({
        "tenantId": SHADOW_TENANT,
        "apps": [{"clientId": SHADOW_APP, "clientSecret": "shadow s3cret",
                  "roles": ["User.ReadWrite.All", "Presence.ReadWrite.All",
                            "LicenseAssignment.ReadWrite.All", "ProfilePhoto.ReadWrite.All"],
                  "scopes": ["Chat.ReadWrite", "Presence.ReadWrite"]}],
        "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 10}],
        "teams": {"requireLicence": true},
        "federation": {"allowedTenants": allowed, "users": [
            {"id": ALICE_ID, "tenantId": HOME, "displayName": "Alice Liddell",
             "userPrincipalName": "alice@contoso.com"}]}
    }))
    .unwrap()
}

/// The gateway's configuration: `graph` the home tenant, the shadow accounts' own.
fn two_tenants(config: &mut GatewayConfig, dir: &std::path::Path, shadow: &GraphEmulator) {
    let secret = dir.join("shadow-client-secret");
    std::fs::write(&secret, "shadow s3cret").unwrap();
    let mut tenant = config.graph.clone().unwrap();
    tenant.tenant_id = SHADOW_TENANT.into();
    tenant.client_id = SHADOW_APP.into();
    tenant.client_secret = Some(SecretRef::File(secret));
    tenant.authority_url = Some(shadow.authority_url());
    tenant.graph_url = Some(shadow.graph_url());
    config.shadow_accounts.tenant = Some(tenant);
}

fn shadow() -> String {
    upn_for("bob@xmpp.test", SHADOW_DOMAIN)
}

/// The shadow account's presence as the shadow tenant shows it.
fn availability(emulator: &GraphEmulator, upn: &str) -> Option<String> {
    let mut tenant = emulator.tenant();
    let user = tenant.user_mut(upn)?;
    Some(user.presence.aggregate(Instant::now()).0)
}

fn message_from<'a>(from: &'a str, body: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |e| {
        e["event"] == "message"
            && e["from"].as_str().is_some_and(|f| f.starts_with(from))
            && e["body"] == body
    }
}

/// Both tenants' emulators, the gateway between them (with the webhook when
/// `webhook`), and Bob on a real Prosody; `None` (skipped) without Prosody.
struct World {
    home: GraphEmulator,
    shadow: GraphEmulator,
    config: GatewayConfig,
    gateway: Running,
    bob: xmppfed_e2e::xmpp_client::XmppClient,
    _server: xmppfed_e2e::prosody::Prosody,
    _dir: tempfile::TempDir,
}

async fn world(allowed: &[&str], webhook: bool) -> Option<World> {
    if skip(prosody::available(), "prosody") {
        return None;
    }
    common::init();
    let home = GraphEmulator::start(home()).await.unwrap();
    let shadow = GraphEmulator::start(shadow_tenant(allowed)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = || prosody::free_port().unwrap();
    let (gateway_port, prosody_s2s) = (port(), port());
    let mut config = gateway_config(dir.path(), &home, gateway_port, prosody_s2s);
    if webhook {
        with_webhook(&mut config, dir.path(), port());
    }
    two_tenants(&mut config, dir.path(), &shadow);
    let gateway = start_gateway(&config).await;
    let (server, bob) = prosody_with_bob(ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway_port)],
        s2s_port: Some(prosody_s2s),
        ..ProsodyOptions::new(PEER)
    });
    Some(World {
        home,
        shadow,
        config,
        gateway,
        bob,
        _server: server,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_live_in_the_shadow_tenant_and_chat_with_teams_users_across_tenants() {
    let Some(World {
        home,
        shadow: shadow_graph,
        gateway,
        mut bob,
        // Bound, not `..`: Prosody and the files live until the test ends.
        _server: _prosody,
        _dir: _files,
        ..
    }) = world(&[HOME], true).await
    else {
        return;
    };

    // XMPP → Teams: the contact's account and the chat are made in the shadow tenant.
    bob.command(json!({"cmd": "message", "to": ALICE, "body": "hello from XMPP", "id": "m1"}))
        .unwrap();
    wait(&mut bob, 30, |e| {
        e["event"] == "message" && e["received"] == "m1"
    });
    let chat = {
        let tenant = shadow_graph.tenant();
        let account = tenant
            .user(&shadow())
            .expect("the shadow account, in the shadow tenant");
        let chat = tenant
            .chats
            .iter()
            .find(|c| c.members.contains(&account.id))
            .expect("the chat, in the shadow tenant");
        assert_eq!(chat.chat_type, "oneOnOne");
        // Alice is no user of this tenant: she is a member only through the
        // cross-tenant binding (her own tenant's id on the member).
        assert!(
            chat.members.iter().any(|m| m == ALICE_ID),
            "{:?}",
            chat.members
        );
        let bodies: Vec<String> = chat
            .messages
            .iter()
            .map(|m| shown(m["body"]["content"].as_str().unwrap()))
            .collect();
        assert_eq!(bodies, ["hello from XMPP"]);
        assert!(
            tenant
                .sign_ins
                .iter()
                .any(|s| s.user_principal_name.eq_ignore_ascii_case(&shadow()) && s.refused == 0),
            "the shadow account signs in to its own tenant: {:?}",
            tenant.sign_ins
        );
        // Made by the gateway, not by a Teams client.
        assert!(
            tenant.log.iter().any(|l| l.starts_with("POST /v1.0/chats")),
            "{:?}",
            tenant.log
        );
        chat.id.clone()
    };
    {
        let tenant = home.tenant();
        assert!(
            tenant.user(&shadow()).is_none(),
            "no shadow account in the home tenant"
        );
        assert!(tenant.chats.is_empty());
        assert!(
            tenant.sign_ins.is_empty(),
            "no user signs in to the home tenant: {:?}",
            tenant.sign_ins
        );
        // The allow list was read in the home tenant.
        assert!(
            tenant.log.iter().any(|l| l.contains("/users")),
            "{:?}",
            tenant.log
        );
    }

    // Teams → XMPP: Alice answers from her tenant, in the cross-tenant chat.
    shadow_graph
        .control(
            &format!("/_emulator/chats/{chat}/messages"),
            json!({"from": "alice@contoso.com", "content": "hello from Teams", "contentType": "text"}),
        )
        .await
        .unwrap();
    wait(&mut bob, 30, message_from(ALICE, "hello from Teams"));

    // Presence: Alice's read in the home tenant, Bob's set in the shadow tenant.
    set_teams_presence(
        &home,
        json!({"availability": "Busy", "activity": "InACall"}),
    )
    .await;
    bob.command(json!({"cmd": "subscribe", "to": ALICE}))
        .unwrap();
    wait(&mut bob, 20, |e| {
        e["event"] == "presence" && e["type"] == "subscribed" && e["from"] == ALICE
    });
    wait(&mut bob, 20, |e| {
        e["event"] == "presence"
            && e["from"].as_str().is_some_and(|f| f.starts_with(ALICE))
            && e["show"] == "dnd"
    });
    until(
        20,
        "Bob's shadow account online in the shadow tenant",
        || availability(&shadow_graph, &shadow()).filter(|a| a == "Available"),
    )
    .await;
    assert!(home.tenant().user(&shadow()).is_none());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_tenant_whose_external_access_refuses_the_home_tenant_loses_nothing() {
    let Some(World {
        shadow: shadow_graph,
        config,
        gateway,
        mut bob,
        _server: _prosody,
        _dir: _files,
        ..
    }) = world(&[], false).await
    else {
        return;
    };
    bob.command(json!({"cmd": "message", "to": ALICE, "body": "are you there?", "id": "m1"}))
        .unwrap();
    // The chat is refused; the message is neither bounced nor delivered.
    until(30, "the cross-tenant chat refused", || {
        let tenant = shadow_graph.tenant();
        tenant
            .log
            .iter()
            .any(|l| l.starts_with("POST /v1.0/chats"))
            .then_some(())
    })
    .await;
    bob.drain(std::time::Duration::from_secs(3));
    assert!(
        !bob.seen()
            .iter()
            .any(|e| e["type"] == "error" || e["received"] == "m1"),
        "{:?}",
        bob.seen()
    );
    assert!(shadow_graph.tenant().chats.is_empty());
    let store = xmppfed_gateway::store::Store::open(&config.store)
        .await
        .unwrap();
    let waiting = store.due(i64::MAX, 10).await.unwrap();
    assert_eq!(waiting.len(), 1, "the message waits in the outbox");
    gateway.stop().await;
}
