//! Shadow-account sign-ins against a tenant that behaves like a real one:
//! a restart goes on with the stored refresh token instead of the password,
//! and a tenant whose policies refuse the password grant (MFA required by
//! Conditional Access) keeps the messages waiting and tells the
//! administrator what to change, until it is changed. A real Prosody, the
//! gateway in this process, the Graph emulator; skips, saying so, without
//! Prosody or the Python client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::Duration;

use common::bridge::*;
use serde_json::{Value, json};
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_e2e::graph::tenant::SignIn;
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;

struct World {
    emulator: GraphEmulator,
    config: xmppfed_config::GatewayConfig,
    admin: String,
    bob: XmppClient,
    _server: Prosody,
    _dir: tempfile::TempDir,
}

async fn world(seed: xmppfed_e2e::graph::Seed) -> Option<(World, Running)> {
    if skip(prosody::available(), "prosody") {
        return None;
    }
    common::init();
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = || prosody::free_port().unwrap();
    let (gateway_port, prosody_s2s, webhook, admin) = (port(), port(), port(), port());
    let mut config = gateway_config(dir.path(), &emulator, gateway_port, prosody_s2s);
    with_webhook(&mut config, dir.path(), webhook);
    config.admin.listen = format!("127.0.0.1:{admin}").parse().unwrap();
    let gateway = start_gateway(&config).await;
    let (server, bob) = prosody_with_bob(ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway_port)],
        s2s_port: Some(prosody_s2s),
        ..ProsodyOptions::new(PEER)
    });
    let world = World {
        emulator,
        config,
        admin: format!("http://127.0.0.1:{admin}"),
        bob,
        _server: server,
        _dir: dir,
    };
    Some((world, gateway))
}

fn shadow() -> String {
    upn_for("bob@xmpp.test", SHADOW_DOMAIN)
}

/// The emulator's sign-in log for Bob's shadow account.
fn shadow_sign_ins(emulator: &GraphEmulator) -> Vec<SignIn> {
    emulator
        .tenant()
        .sign_ins
        .iter()
        .filter(|s| s.user_principal_name.eq_ignore_ascii_case(&shadow()))
        .cloned()
        .collect()
}

async fn get(url: String) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn received(id: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == "message" && e["received"] == id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_goes_on_with_the_stored_refresh_token_not_the_password() {
    let Some((mut w, gateway)) = world(seed()).await else {
        return;
    };
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "before", "id": "m1"}))
        .unwrap();
    wait(&mut w.bob, 30, received("m1"));
    let first = shadow_sign_ins(&w.emulator);
    assert_eq!(
        first.iter().map(|s| s.grant.as_str()).collect::<Vec<_>>(),
        ["password"],
        "a new shadow account signs in once, with its password"
    );
    // The account is made for a password the gateway cannot renew by hand.
    {
        let tenant = w.emulator.tenant();
        let account = tenant.user(&shadow()).unwrap();
        assert_eq!(
            account.properties["passwordPolicies"],
            "DisablePasswordExpiration"
        );
        assert_eq!(
            account.properties["employeeType"],
            "XMPP federation contact"
        );
        assert_eq!(
            account.properties["onPremisesExtensionAttributes"]["extensionAttribute15"],
            "xmppfed-shadow-account"
        );
        // Licensed for Teams only: no mailbox, no SharePoint.
        assert_eq!(account.licences, [SKU]);
        assert_eq!(
            account.disabled_plans,
            ["EXCHANGE_S_STANDARD", "SHAREPOINTSTANDARD"]
        );
    }

    gateway.stop().await;
    let gateway = start_gateway(&w.config).await;
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "after", "id": "m2"}))
        .unwrap();
    wait(&mut w.bob, 30, received("m2"));
    let all = shadow_sign_ins(&w.emulator);
    let grants: Vec<&str> = all.iter().map(|s| s.grant.as_str()).collect();
    assert_eq!(
        grants.iter().filter(|g| **g == "password").count(),
        1,
        "the restarted gateway used the refresh token it stored: {grants:?}"
    );
    assert!(
        grants[1..].iter().all(|g| *g == "refresh_token"),
        "{grants:?}"
    );
    assert!(all.iter().all(|s| s.refused == 0), "{all:?}");
    let chat = chat_between(&w.emulator, "alice@contoso.com", &shadow()).unwrap();
    let bodies: Vec<String> = chat_messages(&w.emulator, &chat)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(bodies, ["before", "after"]);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_required_by_conditional_access_keeps_messages_and_names_the_fix() {
    let mut seed = seed();
    seed.identity = serde_json::from_value(json!({"conditionalAccess": [
        {"displayName": "Require MFA for all users", "grant": "mfa"}
    ]}))
    .unwrap();
    let Some((mut w, gateway)) = world(seed).await else {
        return;
    };
    w.bob
        .command(
            json!({"cmd": "message", "to": ALICE, "body": "waiting for the admin", "id": "m1"}),
        )
        .unwrap();
    // The refusal is reported: ready (XMPP works) but degraded, with the fix.
    let readyz = until(30, "the refusal on /readyz", || {
        let (status, body) = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(get(format!("{}/readyz", w.admin)))
        });
        body.contains("tenant: degraded").then_some((status, body))
    })
    .await;
    assert_eq!(readyz.0, 200, "{}", readyz.1);
    assert!(
        readyz.1.contains(&shadow())
            && readyz.1.contains("MfaRequired")
            && readyz.1.contains("Conditional Access"),
        "{}",
        readyz.1
    );
    let (_, metrics) = get(format!("{}/metrics", w.admin)).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("xmppfed_graph_sign_in_refusals_total{")
                && l.contains("reason=\"MfaRequired\"")
                && l.contains("who=\"shadow\"")),
        "{metrics}"
    );
    let refused = shadow_sign_ins(&w.emulator);
    assert!(
        !refused.is_empty() && refused.iter().all(|s| s.refused == 50076),
        "{refused:?}"
    );
    // Nothing bounced to Bob: the message waits in the outbox.
    tokio::task::block_in_place(|| w.bob.drain(Duration::from_secs(2)));
    assert!(
        !w.bob
            .seen
            .iter()
            .any(|e| e["event"] == "message" && e["type"] == "error"),
        "{:?}",
        w.bob.seen
    );

    // The administrator excludes the shadow accounts: the message arrives,
    // and /readyz says ok again.
    let excluded = w.emulator.tenant().user(&shadow()).unwrap().id.clone();
    w.emulator
        .control(
            "/_emulator/identity",
            json!({"conditionalAccess": [{"displayName": "Require MFA for all users", "grant": "mfa",
                   "excludeUsers": [excluded]}]}),
        )
        .await
        .unwrap();
    wait(&mut w.bob, 60, received("m1"));
    let chat = chat_between(&w.emulator, "alice@contoso.com", &shadow()).unwrap();
    assert_eq!(
        chat_messages(&w.emulator, &chat)
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Vec<_>>(),
        ["waiting for the admin"]
    );
    assert_eq!(
        get(format!("{}/readyz", w.admin)).await,
        (200, "ok\n".into())
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_shadow_account_waits_for_teams_provisioning_and_loses_nothing() {
    let mut seed = seed();
    seed.teams =
        serde_json::from_value(json!({"requireLicence": true, "provisioningDelaySeconds": 4}))
            .unwrap();
    let Some((mut w, gateway)) = world(seed).await else {
        return;
    };
    for (id, body) in [("p1", "first"), ("p2", "second")] {
        w.bob
            .command(json!({"cmd": "message", "to": ALICE, "body": body, "id": id}))
            .unwrap();
    }
    // Teams refuses the new account for a while: Bob hears once that his
    // messages are delayed — a notice, not an error.
    let notice = wait(&mut w.bob, 20, |e| {
        e["event"] == "message"
            && e["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("[delivery delayed]"))
    });
    assert_eq!(notice["type"], "chat", "{notice}");
    assert!(
        notice["from"]
            .as_str()
            .is_some_and(|f| f.starts_with(ALICE)),
        "{notice}"
    );
    // Then both arrive, in order, with receipts.
    wait(&mut w.bob, 60, received("p1"));
    wait(&mut w.bob, 30, received("p2"));
    let chat = chat_between(&w.emulator, "alice@contoso.com", &shadow()).unwrap();
    assert_eq!(
        chat_messages(&w.emulator, &chat)
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Vec<_>>(),
        ["first", "second"]
    );
    let seen = &w.bob.seen;
    let notices = seen
        .iter()
        .filter(|e| {
            e["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("[delivery delayed]"))
        })
        .count();
    assert_eq!(notices, 1, "one notice, not one per attempt: {seen:?}");
    assert!(
        !seen.iter().any(|e| e["type"] == "error"),
        "nothing bounced: {seen:?}"
    );
    gateway.stop().await;
}
