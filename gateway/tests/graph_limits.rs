//! The Graph client at Graph's limits: throttling storms waited out and then
//! given up, replies too large refused before they are buffered, and a flood
//! of chat messages kept under Microsoft's Teams limits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::{Duration, Instant};

use common::graph_tenant::{TENANT, client, quick_retries, seed};
use secrecy::SecretString;
use serde_json::json;
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_gateway::graph::{Budgets, GraphClient, GraphError, Tokens, UserCredential};

#[tokio::test]
async fn storms_are_waited_out_and_then_given_up() {
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = client(&emulator, "s3cret", quick_retries());
    graph.get_presence("alice@contoso.com").await.unwrap();
    let faults = |status: u16, count: u32, retry_after: u64| {
        emulator.control(
            "/_emulator/faults",
            json!({"status": status, "count": count, "retryAfter": retry_after}),
        )
    };
    // Two 429s with Retry-After: 1 s: the call waits them out and succeeds.
    faults(429, 2, 1).await.unwrap();
    let started = Instant::now();
    graph.get_presence("alice@contoso.com").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured: {:?}",
        started.elapsed()
    );
    // A 503 storm longer than the attempts: a typed error that says so.
    faults(503, 10, 0).await.unwrap();
    let error = graph.get_presence("alice@contoso.com").await.unwrap_err();
    assert!(
        matches!(error, GraphError::Exhausted { attempts: 4, .. }),
        "{error}"
    );
    assert_eq!(error.status(), Some(503));
    // Errors that retrying cannot fix come back at once.
    faults(0, 0, 0).await.unwrap();
    let error = graph.get_user("nobody@contoso.com").await.unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (Some(404), Some("Request_ResourceNotFound"))
    );
}

/// A server posing as Graph that answers with more than any Graph reply can
/// be: the client refuses it after 16 MiB instead of buffering it all, whether
/// the length is announced or the body just keeps coming.
#[tokio::test]
async fn a_reply_too_large_is_refused_not_buffered() {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::{get, post};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sent = Arc::new(AtomicUsize::new(0));
    let endless = {
        let sent = sent.clone();
        move || {
            let sent = sent.clone();
            async move {
                let chunk = bytes::Bytes::from(vec![b' '; 64 << 10]);
                let stream = futures::stream::repeat_with(move || {
                    sent.fetch_add(chunk.len(), Ordering::Relaxed);
                    Ok::<_, std::io::Error>(chunk.clone())
                });
                Body::from_stream(stream)
            }
        }
    };
    let app = Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(|| async {
                axum::Json(json!({"token_type": "Bearer", "expires_in": 3600, "access_token": "t"}))
            }),
        )
        .route("/v1.0/users/{id}", get(endless))
        .route(
            "/v1.0/users/{id}/photo/$value",
            get(|| async { vec![0u8; 17 << 20] }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::new();
    let tokens = Tokens::new(
        http.clone(),
        &format!("http://{addr}"),
        TENANT,
        "gateway",
        SecretString::from("s3cret".to_owned()),
    );
    let graph = GraphClient::new(
        http,
        &format!("http://{addr}/v1.0"),
        tokens,
        Budgets::uniform(200),
        quick_retries(),
    );
    let error = graph.get_user("alice@contoso.com").await.unwrap_err();
    assert!(
        matches!(&error, GraphError::Decode(m) if m.contains("larger than 16777216 bytes")),
        "{error}"
    );
    let streamed = sent.load(Ordering::Relaxed);
    assert!(
        streamed < 64 << 20,
        "the client read {streamed} bytes before giving up"
    );
    let error = graph.get_photo("some-id").await.unwrap_err();
    assert!(
        matches!(&error, GraphError::Decode(m) if m.contains("larger than")),
        "{error}"
    );
}

/// Microsoft's Teams limits on (issue 16, item 1): a flood of sends to 20
/// chats, several per chat, all at once, stays under the per-chat (1/s) and
/// per-tenant (20/s) ceilings — not one 429 — while the same flood spent
/// through one flat budget is refused by the emulator.
const CHATS: usize = 20;
const PER_CHAT: usize = 3;

/// Bob's shadow account and `CHATS` Teams users, with Microsoft's Teams limits on.
fn flood_seed() -> xmppfed_e2e::graph::Seed {
    let mut users = vec![json!({"userPrincipalName": "bob.xmpp@shadow.contoso.com",
        "displayName": "Bob (XMPP)", "password": "Sh4dow!pw"})];
    for n in 0..CHATS {
        users.push(json!({"userPrincipalName": format!("user{n}@contoso.com"), "displayName": format!("User {n}")}));
    }
    serde_json::from_value(json!({
        "tenantId": TENANT,
        "apps": [{"clientId": "gateway", "clientSecret": "s3cret",
                  "roles": ["User.Read.All"],
                  "scopes": ["User.Read", "Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"]}],
        "users": users,
        "teamsLimits": {}
    }))
    .unwrap()
}

fn bob() -> UserCredential {
    UserCredential {
        upn: "bob.xmpp@shadow.contoso.com".into(),
        password: SecretString::from("Sh4dow!pw".to_owned()),
    }
}

/// Bob's 1:1 chats with each of the users.
async fn chats(graph: &GraphClient) -> Vec<String> {
    let bob = bob();
    let bob_id = graph.get_user(&bob.upn).await.unwrap().id;
    let mut chats = Vec::new();
    for n in 0..CHATS {
        let other = graph
            .get_user(&format!("user{n}@contoso.com"))
            .await
            .unwrap()
            .id;
        chats.push(
            graph
                .one_on_one_chat(&bob, &bob_id, &other, None)
                .await
                .unwrap()
                .id,
        );
    }
    chats
}

/// `PER_CHAT` messages to every chat, all at once, through `budgets`: the
/// emulator and the client, after the flood.
async fn flood(budgets: Budgets) -> (GraphEmulator, GraphClient, Vec<Result<(), GraphError>>) {
    let emulator = GraphEmulator::start(flood_seed()).await.unwrap();
    let graph = common::graph_client_with(&emulator, "gateway", "s3cret", quick_retries(), budgets);
    let chats = chats(&graph).await;
    let bob = bob();
    let sends = chats
        .iter()
        .flat_map(|chat| (0..PER_CHAT).map(move |i| (chat.clone(), format!("message {i}"))));
    let sent = futures::future::join_all(sends.map(|(chat, text)| {
        let (graph, bob) = (&graph, &bob);
        async move { graph.send_chat_message(bob, &chat, &text).await.map(drop) }
    }))
    .await;
    (emulator, graph, sent)
}

/// Microsoft's Teams limits on (issue 16, item 1): a flood of sends to 20
/// chats, several per chat, all at once, stays under the per-chat (1/s) and
/// per-tenant (20/s) ceilings — not one 429 — while the same flood spent
/// through one flat budget is refused by the emulator.
#[tokio::test]
async fn a_flood_of_chat_messages_stays_under_the_teams_limits() {
    use xmppfed_gateway::graph::limits::Category::ChatMessageSend;
    // With the gateway's budgets: every message sent, none refused.
    let (emulator, graph, sent) = flood(Budgets::published_limits()).await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    assert_eq!(
        emulator.tenant().throttling.refused,
        Default::default(),
        "no 429 from Graph"
    );
    let m = graph.budgets().metrics();
    assert_eq!(m.requests(ChatMessageSend), (CHATS * PER_CHAT) as u64);
    assert_eq!(m.throttled(ChatMessageSend), 0);

    // One flat budget: Graph refuses the burst.
    let (emulator, graph, _) = flood(Budgets::uniform(1_000)).await;
    let refused = emulator.tenant().throttling.refused.clone();
    assert!(
        refused.get("POST chat message").copied().unwrap_or(0) > 0,
        "the emulator enforces the limits: {refused:?}"
    );
    assert!(graph.budgets().metrics().throttled(ChatMessageSend) > 0);
}
