//! More shadow accounts than Microsoft lets a tenant hold Teams subscriptions
//! (issue 16): 12,000 contacts' accounts against the emulator's 10,000-
//! subscription quota are covered by the one tenant-wide subscription, and a
//! chat a Teams user starts with the last of them is taken on through it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::{Duration, Instant};

use common::bridge::*;
use common::scale::seed_shadow_accounts;
use serde_json::json;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_e2e::prosody::{self, ProsodyOptions};
use xmppfed_gateway::bridge::contacts::shadow::upn_for;
use xmppfed_gateway::store::Store;

const ACCOUNTS: usize = 12_000;

/// The bridge tests' tenant with Chat.Read.All, the seeded accounts, and
/// Microsoft's quota of Teams subscriptions.
fn seed_with(accounts: Vec<serde_json::Value>) -> Seed {
    let mut seed = seed();
    seed.apps[0].roles.push("Chat.Read.All".into());
    seed.teams_subscription_quota = Some(10_000);
    // Licences are another test's subject: the seeded accounts have none.
    seed.teams.require_licence = false;
    let accounts: Vec<xmppfed_e2e::graph::tenant::UserSeed> =
        serde_json::from_value(serde_json::Value::Array(accounts)).unwrap();
    seed.users.extend(accounts);
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_thousand_shadow_accounts_under_one_subscription() {
    if skip(prosody::available(), "prosody") {
        return;
    }
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let accounts = seed_shadow_accounts(&dir.path().join("gateway.db"), ACCOUNTS, 0).await;
    let emulator = GraphEmulator::start(seed_with(accounts)).await.unwrap();
    let port = || prosody::free_port().unwrap();
    let (gateway_port, peer_s2s, webhook) = (port(), port(), port());
    let mut config = gateway_config(dir.path(), &emulator, gateway_port, peer_s2s);
    with_webhook(&mut config, dir.path(), webhook);
    config.webhook.chat_notifications = xmppfed_config::ChatNotifications::Tenant;
    config.messages.reconcile_interval_secs = 3600;
    // The emulator enforces no Teams limits here: the start-up listing of
    // 12,000 accounts' chats takes seconds, not Graph's minutes.
    let limits = &mut config.graph.as_mut().unwrap().limits;
    limits.teams_other_per_second = 5_000;
    limits.directory_per_second = 5_000;
    let started = Instant::now();
    let gateway = start_gateway(&config).await;
    let (_server, mut bob) = prosody_with_bob(ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway_port)],
        s2s_port: Some(peer_s2s),
        ..ProsodyOptions::new(PEER)
    });

    // The last seeded account: a Teams user starts a chat with it.
    let last = upn_for(&format!("contact{}@{PEER}", ACCOUNTS - 1), SHADOW_DOMAIN);
    let chat = teams_user_starts_chat(&emulator, "alice@contoso.com", &last).await;
    alice_writes(&emulator, &chat, "to the 12,000th", "text").await;
    let store = Store::sqlite(&dir.path().join("gateway.db")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while store.bridged_chat(&chat).await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the chat with the last account was not taken on"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{ACCOUNTS} accounts: the chat with the last one taken on {:?} after start",
        started.elapsed()
    );

    // Bob, contact 12,001, messages Alice and hears back through it too.
    bob.command(json!({"cmd": "message", "to": ALICE, "body": "hi", "id": "h1"}))
        .unwrap();
    wait(&mut bob, 30, |e| e["received"] == "h1");
    let bobs = until(20, "the chat with Bob", || {
        chat_between(
            &emulator,
            "alice@contoso.com",
            &upn_for("bob@xmpp.test", SHADOW_DOMAIN),
        )
    })
    .await;
    alice_writes(&emulator, &bobs, "hello Bob", "text").await;
    let got = wait(&mut bob, 30, |e| {
        e["event"] == "message" && e["from"].as_str().is_some_and(|f| f.starts_with(ALICE))
    });
    assert_eq!(got["body"], "hello Bob");

    let (resources, asked, refused) = {
        let t = emulator.tenant();
        let asked = t
            .log
            .iter()
            .filter(|l| l.starts_with("POST /v1.0/subscriptions"))
            .count();
        let resources: Vec<String> = t.subscriptions.iter().map(|s| s.resource.clone()).collect();
        (resources, asked, t.throttling.refused.clone())
    };
    assert_eq!(
        resources,
        ["/chats/getAllMessages"],
        "one subscription for all"
    );
    assert_eq!(asked, 1, "asked for once");
    assert!(refused.is_empty(), "{refused:?}");
    gateway.stop().await;
}
