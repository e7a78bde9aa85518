//! 1:1 messages end to end: a user on a real Prosody writes to a Teams user
//! of the gateway's domain and back, through the gateway (in this process)
//! and the Graph emulator, with change notifications on a loopback webhook.
//! Receipts, HTML both ways, no echo, repeats taken once, per-user limits,
//! and a 429 storm that delays but loses nothing. Skips, saying so, when
//! Prosody or the Python client is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::{Duration, Instant};

use common::bridge::*;
use serde_json::{Value, json};
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;

struct World {
    emulator: GraphEmulator,
    gateway: Option<Running>,
    bob: XmppClient,
    _server: Prosody,
    _dir: tempfile::TempDir,
}

async fn world(configure: impl FnOnce(&mut xmppfed_config::GatewayConfig)) -> Option<World> {
    world_with(seed(), configure).await
}

async fn world_with(
    seed: xmppfed_e2e::graph::Seed,
    configure: impl FnOnce(&mut xmppfed_config::GatewayConfig),
) -> Option<World> {
    if skip(prosody::available(), "prosody") {
        return None;
    }
    common::init();
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gateway_port, prosody_s2s, webhook) = (
        prosody::free_port().unwrap(),
        prosody::free_port().unwrap(),
        prosody::free_port().unwrap(),
    );
    let mut config = gateway_config(dir.path(), &emulator, gateway_port, prosody_s2s);
    with_webhook(&mut config, dir.path(), webhook);
    configure(&mut config);
    let gateway = start_gateway(&config).await;
    let (server, bob) = prosody_with_bob(ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway_port)],
        s2s_port: Some(prosody_s2s),
        ..ProsodyOptions::new(PEER)
    });
    Some(World {
        emulator,
        gateway: Some(gateway),
        bob,
        _server: server,
        _dir: dir,
    })
}

fn shadow() -> String {
    upn_for("bob@xmpp.test", SHADOW_DOMAIN)
}

fn alice_id(emulator: &GraphEmulator) -> String {
    emulator
        .tenant()
        .user("alice@contoso.com")
        .unwrap()
        .id
        .clone()
}

fn from_alice(e: &Value) -> bool {
    e["event"] == "message"
        && e["type"] == "chat"
        && !e["body"].is_null()
        && e["from"].as_str().is_some_and(|f| f.starts_with(ALICE))
}

impl World {
    async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_both_ways_with_receipts_and_no_echo() {
    let Some(mut w) = world(|_| {}).await else {
        return;
    };
    // XMPP → Teams, with a receipt once Graph has it.
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "hello <b>Teams</b> & co\nline two", "id": "m1"}))
        .unwrap();
    wait(&mut w.bob, 20, |e| {
        e["event"] == "message" && e["received"] == "m1"
    });
    let chat = until(10, "the chat", || {
        chat_between(&w.emulator, "alice@contoso.com", &shadow())
    })
    .await;
    let messages = chat_messages(&w.emulator, &chat);
    assert_eq!(
        messages.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        ["hello &lt;b&gt;Teams&lt;/b&gt; &amp; co<br>line two"]
    );

    // The same message again (same origin-id): taken once.
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "hello <b>Teams</b> & co\nline two", "id": "m1"}))
        .unwrap();

    // Teams → XMPP, learned from the change notification, as plain text.
    let sent = Instant::now();
    alice_writes(
        &w.emulator,
        &chat,
        "<p>Hi <b>Bob</b>,</p><p>see <a href=\"https://example.org/doc\">the doc</a></p>",
        "html",
    )
    .await;
    let got = wait(&mut w.bob, 10, from_alice);
    let latency = sent.elapsed();
    assert_eq!(
        got["body"], "Hi Bob,\nsee the doc (https://example.org/doc)",
        "{got}"
    );
    assert_eq!(got["from"], "alice@teams.test/teams");
    assert_eq!(got["id"], got["origin_id"]);
    assert!(
        latency < Duration::from_secs(3),
        "{latency:?}: notifications, not the 60 s poll"
    );

    // A second exchange, then check: nothing echoed, nothing doubled.
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "thanks", "id": "m2"}))
        .unwrap();
    wait(&mut w.bob, 20, |e| {
        e["event"] == "message" && e["received"] == "m2"
    });
    tokio::task::block_in_place(|| w.bob.drain(Duration::from_millis(800)));
    let from_alice_count = w.bob.seen.iter().filter(|e| from_alice(e)).count();
    assert_eq!(
        from_alice_count, 1,
        "Bob's own messages are not echoed back: {:?}",
        w.bob.seen
    );
    let contents: Vec<String> = chat_messages(&w.emulator, &chat)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(contents.len(), 3, "{contents:?}");
    assert_eq!(contents[2], "thanks");
    assert!(
        w.emulator.tenant().violations.is_empty(),
        "{:?}",
        w.emulator.tenant().violations
    );
    eprintln!("Teams → XMPP latency through a change notification: {latency:?}");
    let log = w._server.log();
    eprintln!("PROSODY LOG LINES {}", log.lines().count());
    for line in log.lines().take(400) {
        eprintln!("PROSODY {line}");
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_errors_for_the_excess_and_the_rest_arrives() {
    let Some(mut w) = world(|c| {
        c.throttle.default.messages_per_minute = 6;
        c.throttle.default.burst = 5;
    })
    .await
    else {
        return;
    };
    for i in 0..10 {
        w.bob
            .command(json!({"cmd": "message", "to": ALICE, "body": format!("n{i}"), "id": format!("t{i}")}))
            .unwrap();
    }
    let mut refused = Vec::new();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused.len() + received.len() < 10 && Instant::now() < deadline {
        let e = wait(&mut w.bob, 20, |e| {
            e["event"] == "message" && (e["type"] == "error" || !e["received"].is_null())
        });
        if e["type"] == "error" {
            assert_eq!(e["error"], "resource-constraint", "{e}");
            assert!(
                e["error_text"]
                    .as_str()
                    .unwrap()
                    .contains("6 messages per minute"),
                "{e}"
            );
            refused.push(e["id"].as_str().unwrap().to_owned());
        } else {
            received.push(e["received"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(received, ["t0", "t1", "t2", "t3", "t4"]);
    assert_eq!(refused, ["t5", "t6", "t7", "t8", "t9"]);
    let chat = chat_between(&w.emulator, "alice@contoso.com", &shadow()).unwrap();
    let contents: Vec<String> = chat_messages(&w.emulator, &chat)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(contents, ["n0", "n1", "n2", "n3", "n4"]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_delays_messages_but_loses_none() {
    // Limits high enough that only Graph holds messages back.
    let Some(mut w) = world(|c| c.throttle.default.burst = 100).await else {
        return;
    };
    // The chat exists first, so the storm hits the messages themselves.
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "before", "id": "s-before"}))
        .unwrap();
    wait(&mut w.bob, 20, |e| e["received"] == "s-before");
    let chat = chat_between(&w.emulator, "alice@contoso.com", &shadow()).unwrap();
    w.emulator
        .control(
            "/_emulator/faults",
            json!({"status": 429, "count": 15, "retryAfter": 1}),
        )
        .await
        .unwrap();
    for i in 0..20 {
        w.bob
            .command(json!({"cmd": "message", "to": ALICE, "body": format!("s{i}"), "id": format!("s{i}")}))
            .unwrap();
    }
    alice_writes(&w.emulator, &chat, "during the storm", "html").await;
    for i in 0..20 {
        let id = format!("s{i}");
        wait(&mut w.bob, 60, |e| e["received"] == id.as_str());
    }
    let got = wait(&mut w.bob, 60, from_alice);
    assert_eq!(got["body"], "during the storm");
    let contents: Vec<String> = chat_messages(&w.emulator, &chat)
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| c.starts_with('s') && c != "s-before")
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    assert_eq!(contents, expected, "each once, in order");
    assert!(
        w.bob.seen.iter().all(|e| e["type"] != "error"),
        "no error reached Bob: {:?}",
        w.bob.seen
    );
    let _ = alice_id(&w.emulator);
    w.stop().await;
}

/// Bob subscribes to Alice, so his shadow account exists, and nobody has
/// written yet; returns once its chats are watched.
/// Bob asks for Alice's presence and is approved.
fn bob_asks_alice(w: &mut World) {
    w.bob
        .command(json!({"cmd": "subscribe", "to": ALICE}))
        .unwrap();
    wait(&mut w.bob, 20, |e| {
        e["event"] == "presence" && e["type"] == "subscribed" && e["from"] == ALICE
    });
}

async fn bob_subscribed_to_alice(w: &mut World) {
    bob_asks_alice(w);
    let shadow_id = until(20, "Bob's shadow account", || {
        w.emulator.tenant().user(&shadow()).map(|u| u.id.clone())
    })
    .await;
    let resource = format!("/users/{shadow_id}/chats/getAllMessages");
    until(20, "a subscription to the shadow account's chats", || {
        w.emulator
            .tenant()
            .subscriptions
            .iter()
            .any(|s| s.resource == resource)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_started_in_teams_reaches_the_contact_and_only_from_the_allow_list() {
    let Some(mut w) = world(|_| {}).await else {
        return;
    };
    bob_subscribed_to_alice(&mut w).await;

    // Alice finds "Bob (XMPP)" in Teams and writes first.
    let chat = teams_user_starts_chat(&w.emulator, "alice@contoso.com", &shadow()).await;
    let sent = Instant::now();
    alice_writes(&w.emulator, &chat, "Bob, are you there?", "text").await;
    let got = wait(&mut w.bob, 20, from_alice);
    assert_eq!(got["body"], "Bob, are you there?");
    eprintln!(
        "a chat started in Teams: first message at Bob in {:?}",
        sent.elapsed()
    );

    // Carol is in the tenant but not on the allow list: she writes to Bob's
    // shadow account too, and nothing of it reaches XMPP.
    let carols = teams_user_starts_chat(&w.emulator, "carol@contoso.com", &shadow()).await;
    w.emulator
        .control(
            &format!("/_emulator/chats/{carols}/messages"),
            json!({"from": "carol@contoso.com", "content": "psst", "contentType": "text"}),
        )
        .await
        .unwrap();

    // Bob's answer goes into the chat Alice started.
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "Yes!", "id": "first-answer"}))
        .unwrap();
    wait(&mut w.bob, 20, |e| e["received"] == "first-answer");
    assert_eq!(
        chat_between(&w.emulator, "alice@contoso.com", &shadow()).as_deref(),
        Some(chat.as_str()),
        "one chat between them"
    );
    let contents: Vec<String> = chat_messages(&w.emulator, &chat)
        .into_iter()
        .map(|(_, c)| shown(&c))
        .collect();
    assert_eq!(contents, ["Bob, are you there?", "Yes!"]);

    tokio::task::block_in_place(|| w.bob.drain(Duration::from_secs(3)));
    let leaked: Vec<&Value> = w
        .bob
        .seen
        .iter()
        .filter(|e| e["event"] == "message" && e["body"] == "psst")
        .collect();
    assert!(
        leaked.is_empty(),
        "Carol's message reached XMPP: {leaked:?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_started_in_teams_while_the_gateway_was_down_arrives_after_the_restart() {
    let mut config = None;
    let Some(mut w) = world(|c| config = Some(c.clone())).await else {
        return;
    };
    bob_subscribed_to_alice(&mut w).await;
    w.gateway.take().unwrap().stop().await;

    // Its change notification finds nobody listening and is not sent again.
    let chat = teams_user_starts_chat(&w.emulator, "alice@contoso.com", &shadow()).await;
    alice_writes(&w.emulator, &chat, "Written while you were away", "text").await;
    until(10, "the notification attempt", || {
        w.emulator
            .tenant()
            .delivered
            .iter()
            .any(|(_, status)| *status == 0)
            .then_some(())
    })
    .await;

    w.gateway = Some(start_gateway(&config.unwrap()).await);
    let got = wait(&mut w.bob, 30, from_alice);
    assert_eq!(got["body"], "Written while you were away");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_teams_user_wrote_first_arrives_though_its_notification_was_lost() {
    let Some(mut w) = world(|c| c.messages.reconcile_interval_secs = 1).await else {
        return;
    };
    bob_subscribed_to_alice(&mut w).await;
    // Alice writes first; Graph's notification of it is lost.
    w.emulator
        .control("/_emulator/notifications/drop", json!({"count": 1}))
        .await
        .unwrap();
    let chat = teams_user_starts_chat(&w.emulator, "alice@contoso.com", &shadow()).await;
    alice_writes(&w.emulator, &chat, "Written before you wrote", "text").await;
    // Bob writes before any listing of the shadow account's chats: the
    // gateway learns the chat from Graph then, and reads it from before.
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "Hello?", "id": "hello"}))
        .unwrap();
    wait(&mut w.bob, 20, |e| e["received"] == "hello");
    let got = wait(&mut w.bob, 20, from_alice);
    assert_eq!(got["body"], "Written before you wrote");
    w.stop().await;
}

/// The sweep asks Graph only for what changed since each chat's mark
/// (`$filter=lastModifiedDateTime gt …`, which the emulator applies as
/// chat-list-messages documents), and what it finds is what a lost
/// notification missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_reads_only_what_changed_and_finds_what_a_lost_notification_missed() {
    let Some(mut w) = world(|c| c.messages.reconcile_interval_secs = 1).await else {
        return;
    };
    bob_subscribed_to_alice(&mut w).await;
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "Hello", "id": "h"}))
        .unwrap();
    wait(&mut w.bob, 20, |e| e["received"] == "h");
    let chat = until(10, "the chat", || {
        chat_between(&w.emulator, "alice@contoso.com", &shadow())
    })
    .await;
    let reads = |w: &World| -> Vec<String> {
        let listing = format!("GET /v1.0/chats/{chat}/messages?");
        w.emulator
            .tenant()
            .log
            .iter()
            .filter(|l| l.starts_with(&listing))
            .cloned()
            .collect()
    };
    // Once the chat has a mark, every sweep read is filtered on it.
    let filtered = until(15, "two filtered sweep reads", || {
        let r = reads(&w);
        let tail: Vec<String> = r.iter().rev().take(2).cloned().collect();
        (tail.len() == 2
            && tail.iter().all(|l| {
                l.contains("$orderby=lastModifiedDateTime%20desc")
                    && l.contains("$filter=lastModifiedDateTime%20gt%20")
            }))
        .then_some(tail)
    })
    .await;
    assert!(!filtered.is_empty());

    // A message whose notification is lost arrives through the filtered sweep.
    w.emulator
        .control("/_emulator/notifications/drop", json!({"count": 1}))
        .await
        .unwrap();
    alice_writes(&w.emulator, &chat, "Only the sweep sees this", "text").await;
    let got = wait(&mut w.bob, 20, from_alice);
    assert_eq!(got["body"], "Only the sweep sees this");
    // And only once, though every sweep until the mark passes it reads it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| w.bob.drain(Duration::from_secs(1)));
    let repeats = w
        .bob
        .seen
        .iter()
        .filter(|e| from_alice(e) && e["body"] == "Only the sweep sees this")
        .count();
    assert_eq!(repeats, 1, "taken once");
    w.stop().await;
}

/// With one app-only subscription for the tenant (`webhook.chat_notifications
/// = "tenant"`, Chat.Read.All) the tenant's Teams subscription quota is not
/// spent per contact: here the quota is 1, the gateway holds that one, and a
/// chat Alice starts with Bob's shadow account reaches Bob through it (the
/// poll is an hour away, so only the notification can bring it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_for_the_tenant_carries_a_chat_started_in_teams() {
    if skip(prosody::available(), "prosody") {
        return;
    }
    let mut seed = seed();
    seed.apps[0].roles.push("Chat.Read.All".into());
    seed.teams_subscription_quota = Some(1);
    let Some(mut w) = world_with(seed, |config| {
        config.webhook.chat_notifications = xmppfed_config::ChatNotifications::Tenant;
        config.messages.reconcile_interval_secs = 3600;
    })
    .await
    else {
        return;
    };
    bob_asks_alice(&mut w);
    until(20, "Bob's shadow account", || {
        w.emulator.tenant().user(&shadow()).map(|_| ())
    })
    .await;
    let held = until(20, "the tenant's subscription", || {
        let t = w.emulator.tenant();
        (!t.subscriptions.is_empty()).then(|| {
            t.subscriptions
                .iter()
                .map(|s| (s.resource.clone(), s.creator_id.clone()))
                .collect::<Vec<_>>()
        })
    })
    .await;
    assert_eq!(
        held,
        [("/chats/getAllMessages".to_owned(), CLIENT_ID.to_owned())],
        "one app-only subscription, none per shadow account"
    );

    let chat = teams_user_starts_chat(&w.emulator, "alice@contoso.com", &shadow()).await;
    let sent = Instant::now();
    alice_writes(
        &w.emulator,
        &chat,
        "Bob, over the tenant's subscription",
        "text",
    )
    .await;
    let got = wait(&mut w.bob, 20, from_alice);
    assert_eq!(got["body"], "Bob, over the tenant's subscription");
    eprintln!(
        "tenant subscription: a chat started in Teams at Bob in {:?}",
        sent.elapsed()
    );
    // Chats without a shadow account are notified too; they cost no Graph read.
    let reads_before = w.emulator.tenant().log.len();
    let others =
        teams_user_starts_chat(&w.emulator, "alice@contoso.com", "carol@contoso.com").await;
    w.emulator
        .control(
            &format!("/_emulator/chats/{others}/messages"),
            json!({"from": "carol@contoso.com", "content": "not for XMPP", "contentType": "text"}),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read: Vec<String> = w.emulator.tenant().log[reads_before..]
        .iter()
        .filter(|l| l.contains(&others))
        .cloned()
        .collect();
    assert!(
        read.is_empty(),
        "a chat without a shadow account was read: {read:?}"
    );
    w.stop().await;
}

/// Without Chat.Read.All Graph refuses the tenant-wide subscription: asked
/// for once (not once per contact or per discovery), and the poll carries the
/// chat meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tenant_subscription_is_asked_for_once_and_the_poll_stands_in() {
    let Some(mut w) = world(|config| {
        config.webhook.chat_notifications = xmppfed_config::ChatNotifications::Tenant;
        // The poll's pace, not the safety net's, once Graph refused.
        config.messages.reconcile_interval_secs = 3600;
        config.messages.poll_interval_secs = 1;
        config.allow.internal_users.push("carol@contoso.com".into());
    })
    .await
    else {
        return;
    };
    bob_asks_alice(&mut w);
    w.bob
        .command(json!({"cmd": "message", "to": ALICE, "body": "Anyone?", "id": "q1"}))
        .unwrap();
    wait(&mut w.bob, 20, |e| e["received"] == "q1");
    let chat = until(10, "the chat", || {
        chat_between(&w.emulator, "alice@contoso.com", &shadow())
    })
    .await;
    alice_writes(&w.emulator, &chat, "Here, through the poll", "text").await;
    let got = wait(&mut w.bob, 20, from_alice);
    assert_eq!(got["body"], "Here, through the poll");
    // A second Teams user approved: the contact is watched again.
    w.bob
        .command(json!({"cmd": "subscribe", "to": "carol@teams.test"}))
        .unwrap();
    wait(&mut w.bob, 20, |e| {
        e["event"] == "presence" && e["type"] == "subscribed" && e["from"] == "carol@teams.test"
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (asked, held) = {
        let t = w.emulator.tenant();
        let asked: Vec<String> = t
            .log
            .iter()
            .filter(|l| l.starts_with("POST /v1.0/subscriptions"))
            .cloned()
            .collect();
        (asked, t.subscriptions.len())
    };
    assert_eq!(asked.len(), 1, "asked once: {asked:?}");
    assert_eq!(held, 0);
    w.stop().await;
}
