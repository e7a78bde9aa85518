//! Subscriptions and the webhook receiver against the Graph emulator: the
//! validation handshake, notifications with our clientState (and forged
//! ones without), renewal, lifecycle events, lost notifications, deletion.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use tokio::sync::mpsc;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::graph::subscriptions::{Subscriptions, Want};
use xmppfed_gateway::graph::webhook::{self, Notification};
use xmppfed_gateway::graph::{GraphClient, RetryPolicy, UserCredential};

const TENANT: &str = "5c0ffee0-0000-4000-8000-000000000002";
const ALICE: &str = "11111111-1111-4111-8111-111111111111";

fn seed() -> Seed {
    serde_json::from_value(json!({
        "tenantId": TENANT,
        "apps": [{"clientId": "gateway", "clientSecret": "s3cret", "roles": ["User.ReadWrite.All"],
                  "scopes": ["Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"]}],
        "users": [
            {"id": ALICE, "userPrincipalName": "alice@contoso.com", "displayName": "Alice Teams"},
            {"userPrincipalName": "bob.xmpp@shadow.contoso.com", "displayName": "Bob (XMPP)", "password": "Sh4dow!pw"}
        ]
    }))
    .unwrap()
}

/// The gateway's client, signed in as the app.
fn graph(emulator: &GraphEmulator) -> GraphClient {
    common::graph_client(emulator, "gateway", "s3cret", RetryPolicy::default())
}

/// The shadow account Bob, as the gateway signs in for him.
fn bob() -> UserCredential {
    UserCredential {
        upn: "bob.xmpp@shadow.contoso.com".into(),
        password: SecretString::from("Sh4dow!pw".to_owned()),
    }
}

/// Our webhook receiver on a loopback port; returns its public URL.
/// A test's sink: accepted notifications straight into a channel.
struct ChannelSink(mpsc::Sender<Notification>);

impl webhook::Sink for ChannelSink {
    fn keep(
        &self,
        notification: Notification,
    ) -> futures::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.send(notification).await.map_err(|e| e.to_string()) })
    }
}

fn channel(queue: mpsc::Sender<Notification>) -> std::sync::Arc<dyn webhook::Sink> {
    std::sync::Arc::new(ChannelSink(queue))
}

async fn serve_webhook(client_state: &str, sink: std::sync::Arc<dyn webhook::Sink>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = webhook::router(SecretString::from(client_state.to_owned()), sink);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

async fn next(rx: &mut mpsc::Receiver<Notification>) -> Notification {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification in time")
        .unwrap()
}

/// A tenant, our webhook, and Bob's subscription to his chats' messages
/// (after Graph refused one longer than it allows).
struct World {
    emulator: GraphEmulator,
    http: reqwest::Client,
    graph: GraphClient,
    public_url: String,
    subscriptions: Subscriptions,
    rx: mpsc::Receiver<Notification>,
    bob: UserCredential,
    chat_id: String,
    subscription_id: String,
}

impl World {
    async fn new() -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let emulator = GraphEmulator::start(seed()).await.unwrap();
        let graph = graph(&emulator);
        let (queue, rx) = mpsc::channel(64);
        let public_url = serve_webhook("c1ient-state-of-this-gateway", channel(queue)).await;
        let subscriptions = Subscriptions::new(
            &public_url,
            SecretString::from("c1ient-state-of-this-gateway".to_owned()),
        );
        let bob = bob();
        let bob_id = graph.get_user(&bob.upn).await.unwrap().id;
        let chat = graph
            .one_on_one_chat(&bob, &bob_id, ALICE, None)
            .await
            .unwrap();
        let want = Want {
            resource: format!("/users/{bob_id}/chats/getAllMessages"),
            change_type: "created".into(),
            lifetime: Duration::from_secs(55 * 60),
            as_user: Some(bob.clone()),
        };
        // Graph caps chat-message subscriptions at 60 minutes.
        let too_long = subscriptions
            .create(
                &graph,
                Want {
                    lifetime: Duration::from_secs(2 * 3600),
                    ..want.clone()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(too_long.status(), Some(400), "{too_long}");
        let sub = subscriptions.create(&graph, want).await.unwrap();
        assert_eq!(subscriptions.held().await.len(), 1);
        Self {
            emulator,
            http: reqwest::Client::new(),
            graph,
            public_url,
            subscriptions,
            rx,
            bob,
            chat_id: chat.id,
            subscription_id: sub.id,
        }
    }

    /// Alice writes in the chat.
    async fn alice_says(&self, text: &str) {
        self.emulator
            .control(
                &format!("/_emulator/chats/{}/messages", self.chat_id),
                json!({"from": "alice@contoso.com", "content": text}),
            )
            .await
            .unwrap();
    }

    /// Nothing reaches our queue for `millis`.
    async fn nothing_queued_for(&mut self, millis: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(millis), self.rx.recv())
            .await
            .is_err()
    }

    fn no_violations(&self) {
        let violations = self.emulator.tenant().violations.clone();
        assert!(violations.is_empty(), "{violations:?}");
    }
}

#[tokio::test]
async fn notifications_arrive_forged_ones_do_not_and_lost_ones_are_polled_for() {
    let mut w = World::new().await;
    // Alice writes: the notification reaches our queue.
    w.alice_says("<p>hello Bob</p>").await;
    let n = next(&mut w.rx).await;
    assert_eq!(n.subscription_id, w.subscription_id);
    assert_eq!(n.change_type.as_deref(), Some("created"));
    assert!(
        n.resource
            .as_deref()
            .unwrap()
            .starts_with(&format!("chats('{}')/messages('", w.chat_id)),
        "{n:?}"
    );
    // The notified message is read by id, as the bridge will.
    let message_id = n.resource_id.clone().unwrap();
    let message = w
        .graph
        .get_chat_message(&w.bob, &w.chat_id, &message_id)
        .await
        .unwrap();
    assert_eq!(message.body.content, "<p>hello Bob</p>");
    assert_eq!(
        w.graph.get_chat(&w.bob, &w.chat_id).await.unwrap().id,
        w.chat_id
    );

    // A forged batch (someone else's clientState) is answered and dropped.
    let forged = json!({"value": [{"subscriptionId": w.subscription_id, "changeType": "created", "clientState": "guess", "resource": "chats('x')/messages('1')"}]});
    let r = w
        .http
        .post(format!("{}/graph/notifications", w.public_url))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        w.nothing_queued_for(300).await,
        "a forged notification was queued"
    );

    // A notification Graph loses never arrives: the reconciliation poll must find the message.
    w.emulator
        .control("/_emulator/notifications/drop", json!({"count": 1}))
        .await
        .unwrap();
    w.alice_says("<p>lost in transit</p>").await;
    assert!(w.nothing_queued_for(500).await);
    let messages = w.graph.chat_messages(&w.bob, &w.chat_id, 10).await.unwrap();
    assert_eq!(
        messages[0].body.content, "<p>lost in transit</p>",
        "the message is there for the poll"
    );
    w.no_violations();
}

#[tokio::test]
async fn subscriptions_are_renewed_reauthorized_and_deleted() {
    let mut w = World::new().await;
    let (graph, subscriptions, id) = (&w.graph, &w.subscriptions, &w.subscription_id);
    // Renewal (only when due), a lifecycle event, reauthorization, deletion.
    assert_eq!(
        subscriptions
            .renew_due(graph, Duration::from_secs(60))
            .await,
        0,
        "55 minutes left: not due"
    );
    assert_eq!(
        subscriptions
            .renew_due(graph, Duration::from_secs(3600))
            .await,
        1
    );
    let renewed = subscriptions.renew(graph, id).await.unwrap();
    assert_eq!(&renewed.id, id);
    w.emulator
        .control(
            &format!("/_emulator/subscriptions/{id}/lifecycle"),
            json!({"event": "reauthorizationRequired"}),
        )
        .await
        .unwrap();
    let lifecycle = next(&mut w.rx).await;
    assert_eq!(
        lifecycle.lifecycle_event.as_deref(),
        Some("reauthorizationRequired")
    );
    let (graph, subscriptions, id) = (&w.graph, &w.subscriptions, &w.subscription_id);
    let missed = subscriptions
        .on_lifecycle(graph, id, webhook::LifecycleEvent::ReauthorizationRequired)
        .await
        .unwrap();
    assert!(!missed);
    assert!(
        subscriptions
            .on_lifecycle(graph, id, webhook::LifecycleEvent::Missed)
            .await
            .unwrap(),
        "missed means: poll"
    );
    subscriptions.delete(graph, id).await.unwrap();
    assert!(subscriptions.held().await.is_empty());
    w.alice_says("<p>nobody listens</p>").await;
    assert!(w.nothing_queued_for(300).await);
    w.no_violations();
}

#[tokio::test]
async fn a_profile_edited_in_teams_is_read_and_the_emulator_says_what_it_holds() {
    let w = World::new().await;
    let authority = w.emulator.authority_url();
    w.http
        .patch(format!("{authority}/_emulator/users/alice@contoso.com"))
        .json(&json!({"jobTitle": "Architect"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        w.graph
            .get_user("alice@contoso.com")
            .await
            .unwrap()
            .job_title
            .as_deref(),
        Some("Architect")
    );
    let state: serde_json::Value = w
        .http
        .get(format!("{authority}/_emulator/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(state["chats"][0]["id"], json!(w.chat_id));
    w.no_violations();
}

#[tokio::test]
async fn an_endpoint_that_fails_the_handshake_gets_no_subscription() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = graph(&emulator);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let subscriptions = Subscriptions::new(
        &format!("http://{closed}"),
        SecretString::from("x".to_owned()),
    );
    let bob = bob();
    let error = subscriptions
        .create(
            &graph,
            Want {
                resource: "/users/bob.xmpp@shadow.contoso.com/chats/getAllMessages".into(),
                change_type: "created".into(),
                lifetime: Duration::from_secs(1800),
                as_user: Some(bob),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert!(error.to_string().contains("validation"), "{error}");
}

#[tokio::test]
async fn accepted_notifications_are_stored_before_the_202() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        xmppfed_gateway::store::Store::sqlite(&dir.path().join("db"))
            .await
            .unwrap(),
    );
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let sink = std::sync::Arc::new(webhook::Durable {
        store: store.clone(),
        wake: wake.clone(),
    });
    let url = format!("{}/graph/notifications", serve_webhook("state", sink).await);
    let batch = json!({"value": [
        {"subscriptionId": "s1", "changeType": "created", "clientState": "state", "resource": "chats('c')/messages('1')", "resourceData": {"id": "1"}},
        {"subscriptionId": "s1", "changeType": "created", "clientState": "forged", "resource": "chats('c')/messages('2')"}
    ]});
    let woken = wake.notified();
    let r = reqwest::Client::new()
        .post(&url)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("the consumer is woken");
    let queued = store.claim_notifications(10, 60).await.unwrap();
    assert_eq!(queued.len(), 1, "only the item with our clientState");
    let n: Notification = serde_json::from_str(&queued[0].body).unwrap();
    assert_eq!(
        (n.subscription_id.as_str(), n.resource_id.as_deref()),
        ("s1", Some("1"))
    );
    // Not acknowledged, and the process restarts: the item is still there once its lease lapses.
    drop(store);
    let store = xmppfed_gateway::store::Store::sqlite(&dir.path().join("db"))
        .await
        .unwrap();
    assert!(
        store.claim_notifications(10, 60).await.unwrap().is_empty(),
        "still leased"
    );
}

#[tokio::test]
async fn held_subscriptions_survive_a_restart() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = graph(&emulator);
    let (queue, _rx) = mpsc::channel(8);
    let public_url = serve_webhook("cs", channel(queue)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let bob = bob();
    let id = {
        let store =
            std::sync::Arc::new(xmppfed_gateway::store::Store::sqlite(&path).await.unwrap());
        let subs =
            Subscriptions::new(&public_url, SecretString::from("cs".to_owned())).with_store(store);
        let want = Want {
            resource: "/users/bob.xmpp@shadow.contoso.com/chats/getAllMessages".into(),
            change_type: "created".into(),
            lifetime: Duration::from_secs(1800),
            as_user: Some(bob.clone()),
        };
        subs.create(&graph, want).await.unwrap().id
    };
    // A new process: the subscription comes back from the store, and renews.
    let store = std::sync::Arc::new(xmppfed_gateway::store::Store::sqlite(&path).await.unwrap());
    let subs = Subscriptions::new(&public_url, SecretString::from("cs".to_owned()))
        .with_store(store.clone());
    let known = bob.clone();
    assert_eq!(
        subs.restore(move |upn| (upn == known.upn).then(|| known.clone()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(subs.held().await[0].id, id);
    assert_eq!(subs.renew_due(&graph, Duration::from_secs(3600)).await, 1);
    subs.delete(&graph, &id).await.unwrap();
    assert!(
        store.subscriptions().await.unwrap().is_empty(),
        "a deleted subscription is forgotten in the store too"
    );
}

#[tokio::test]
async fn delayed_notifications_and_an_expired_subscription() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = graph(&emulator);
    let (queue, mut rx) = mpsc::channel(8);
    let public_url = serve_webhook("cs", channel(queue)).await;
    let bob = bob();
    let bob_id = graph.get_user(&bob.upn).await.unwrap().id;
    let chat = graph
        .one_on_one_chat(&bob, &bob_id, ALICE, None)
        .await
        .unwrap();
    let subs = Subscriptions::new(&public_url, SecretString::from("cs".to_owned()));
    let want = Want {
        resource: format!("/chats/{}/messages", chat.id),
        change_type: "created".into(),
        lifetime: Duration::from_secs(1800),
        as_user: Some(bob.clone()),
    };
    let first = subs.create(&graph, want).await.unwrap();
    emulator
        .control("/_emulator/notifications/delay", json!({"ms": 800}))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    emulator
        .control(
            &format!("/_emulator/chats/{}/messages", chat.id),
            json!({"from": "alice@contoso.com", "content": "slow"}),
        )
        .await
        .unwrap();
    next(&mut rx).await;
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "delivered after the injected delay"
    );
    emulator
        .control("/_emulator/notifications/delay", json!({"ms": 0}))
        .await
        .unwrap();

    // The subscription lapses unnoticed: the next renewal finds it gone and makes a new one.
    emulator
        .control(
            &format!("/_emulator/subscriptions/{}/expire", first.id),
            json!({}),
        )
        .await
        .unwrap();
    emulator
        .control(
            &format!("/_emulator/chats/{}/messages", chat.id),
            json!({"from": "alice@contoso.com", "content": "unheard"}),
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "no notification from an expired subscription"
    );
    assert_eq!(
        subs.renew_due(&graph, Duration::from_secs(3600)).await,
        0,
        "not renewed: recreated"
    );
    let held = subs.held().await;
    assert_eq!(held.len(), 1);
    assert_ne!(held[0].id, first.id);
    emulator
        .control(
            &format!("/_emulator/chats/{}/messages", chat.id),
            json!({"from": "alice@contoso.com", "content": "heard again"}),
        )
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.subscription_id, held[0].id);
}

/// The webhook is on the internet: a body past the limit gets 413, JSON
/// nested 100,000 deep gets 400, and the receiver keeps serving.
#[tokio::test]
async fn oversized_and_deeply_nested_bodies_are_refused() {
    let (tx, mut rx) = mpsc::channel(8);
    let url = format!(
        "{}/graph/notifications",
        serve_webhook("state", channel(tx)).await
    );
    let http = reqwest::Client::new();
    let big = format!(
        "{{\"value\": [], \"pad\": \"{}\"}}",
        "x".repeat(webhook::MAX_BODY_BYTES)
    );
    let r = http.post(&url).body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let deep = format!(
        "{{\"value\": [{}{}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = http.post(&url).body(deep).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let batch = json!({"value": [{"subscriptionId": "s1", "changeType": "created", "clientState": "state",
                                  "resource": "chats('c')/messages('1')", "resourceData": {"id": "1"}}]});
    let r = http.post(&url).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(next(&mut rx).await.resource_id.as_deref(), Some("1"));
}

/// Graph allows one subscription per app, resource and change type (409 on a
/// duplicate), and counts Teams subscriptions against the organisation's
/// quota (403 past it). A gateway that lost its record of a subscription
/// takes the existing one on; one whose public URL changed replaces it; the
/// quota's refusal comes back as a 403 the bridge can act on.
#[tokio::test]
async fn a_duplicate_is_taken_on_and_the_quota_is_a_403() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut seed = seed();
    seed.apps[0].roles.push("Chat.Read.All".into());
    seed.teams_subscription_quota = Some(2);
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let graph = graph(&emulator);
    let state = SecretString::from("c1ient-state-of-this-gateway".to_owned());
    let (queue, _rx) = mpsc::channel(64);
    let url = serve_webhook("c1ient-state-of-this-gateway", channel(queue.clone())).await;
    let tenant = Want {
        resource: "/chats/getAllMessages".into(),
        change_type: "created".into(),
        lifetime: Duration::from_secs(55 * 60),
        as_user: None,
    };
    let first = Subscriptions::new(&url, state.clone())
        .create(&graph, tenant.clone())
        .await
        .unwrap();
    // A replica (or a restart) without a record of it: Graph says 409, and
    // the existing subscription is taken on.
    let again = Subscriptions::new(&url, state.clone());
    let taken = again.create(&graph, tenant.clone()).await.unwrap();
    assert_eq!(taken.id, first.id);
    assert_eq!(again.held().await.len(), 1);
    assert_eq!(emulator.tenant().subscriptions.len(), 1);
    // Moved to another public URL: the stale one is replaced.
    let moved_url = serve_webhook("c1ient-state-of-this-gateway", channel(queue)).await;
    let moved = Subscriptions::new(&moved_url, state.clone());
    let replaced = moved.create(&graph, tenant).await.unwrap();
    assert_ne!(replaced.id, first.id);
    let notify: Vec<String> = emulator
        .tenant()
        .subscriptions
        .iter()
        .map(|s| s.notification_url.clone())
        .collect();
    assert_eq!(notify, [format!("{moved_url}/graph/notifications")]);

    // The organisation's quota of Teams subscriptions (2 here): the third is refused.
    let bob = bob();
    let bob_id = graph.get_user(&bob.upn).await.unwrap().id;
    let per_account = |id: &str| Want {
        resource: format!("/users/{id}/chats/getAllMessages"),
        change_type: "created".into(),
        lifetime: Duration::from_secs(55 * 60),
        as_user: Some(bob.clone()),
    };
    moved.create(&graph, per_account(&bob_id)).await.unwrap();
    let refused = moved.create(&graph, per_account(ALICE)).await.unwrap_err();
    assert_eq!(refused.status(), Some(403), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("maximum number of subscriptions"),
        "{refused}"
    );
    let violations = emulator.tenant().violations.clone();
    assert!(violations.is_empty(), "{violations:?}");
}
