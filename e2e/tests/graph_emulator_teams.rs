//! The emulator's Teams side against Microsoft's description: presence
//! sessions and batches, throttling with Retry-After, and 1:1 chats.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Client, seed};
use xmppfed_e2e::graph::GraphEmulator;

#[tokio::test]
async fn presence_sessions_preferred_presence_and_batches() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let t = c.app_token("gateway", "s3cret").await;
    let alice = "/users/11111111-1111-4111-8111-111111111111/presence";
    let (_, p, _) = c.call(Method::GET, alice, &t, None).await;
    assert_eq!(p["availability"], "Offline");
    // The Teams client says Away; our session says Busy: Busy wins.
    emulator
        .control(
            "/_emulator/users/alice@contoso.com/presence",
            json!({"availability": "Away", "activity": "Away"}),
        )
        .await
        .unwrap();
    let (status, _, _) = c.call(Method::POST, &format!("{alice}/setPresence"), &t,
        Some(json!({"sessionId": "gateway", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H"}))).await;
    assert_eq!(status, 200);
    let (_, p, _) = c.call(Method::GET, alice, &t, None).await;
    assert_eq!(
        (p["availability"].as_str(), p["activity"].as_str()),
        (Some("Busy"), Some("InACall"))
    );
    // Preferred presence overrides every session until cleared.
    let (status, _, _) = c.call(Method::POST, &format!("{alice}/setUserPreferredPresence"), &t,
        Some(json!({"availability": "DoNotDisturb", "activity": "DoNotDisturb", "expirationDuration": "PT8H"}))).await;
    assert_eq!(status, 200);
    // Object ids only, as Graph: a UPN names nobody here.
    let bob_id = emulator
        .tenant()
        .user("bob.xmpp@shadow.contoso.com")
        .unwrap()
        .id
        .clone();
    let batch = json!({"ids": ["11111111-1111-4111-8111-111111111111", bob_id, "bob.xmpp@shadow.contoso.com"]});
    let (status, all, _) = c
        .call(
            Method::POST,
            "/communications/getPresencesByUserId",
            &t,
            Some(batch),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(all["value"][0]["availability"], "DoNotDisturb");
    assert_eq!(all["value"][1]["availability"], "Offline");
    assert_eq!(all["value"].as_array().unwrap().len(), 2, "{all}");
    let (status, _, _) = c
        .call(
            Method::POST,
            &format!("{alice}/clearUserPreferredPresence"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = c.call(Method::POST, &format!("{alice}/setStatusMessage"), &t,
        Some(json!({"statusMessage": {"message": {"content": "Chatting from XMPP", "contentType": "text"}}}))).await;
    assert_eq!(status, 200);
    let (_, p, _) = c.call(Method::GET, alice, &t, None).await;
    assert_eq!(p["availability"], "Busy");
    assert_eq!(
        p["statusMessage"]["message"]["content"],
        "Chatting from XMPP"
    );
}

#[tokio::test]
async fn presence_requests_graph_refuses_are_refused_and_recorded() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let t = c.app_token("gateway", "s3cret").await;
    let alice = "/users/11111111-1111-4111-8111-111111111111/presence";
    // Only the pairs Graph accepts, only our own session id, only 5 min to 4 h.
    for bad in [
        json!({"sessionId": "gateway", "availability": "Busy", "activity": "Busy"}),
        json!({"sessionId": "someone-else", "availability": "Away", "activity": "Away"}),
        json!({"sessionId": "gateway", "availability": "Away", "activity": "Away", "expirationDuration": "PT5H"}),
    ] {
        let (status, body, _) = c
            .call(
                Method::POST,
                &format!("{alice}/setPresence"),
                &t,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad} → {body}");
    }
    assert!(
        emulator.tenant().violations.is_empty(),
        "bodies the schema accepts are no violation: {:?}",
        emulator.tenant().violations
    );
    // A body the schema rejects (a duration that is not ISO 8601) is answered
    // and recorded against the caller, for tests of the gateway to see.
    let status = reqwest::Client::new()
        .post(format!("{}{alice}/setPresence", emulator.graph_url()))
        .bearer_auth(&t)
        .json(&json!({"sessionId": "gateway", "availability": "Away", "activity": "Away", "expirationDuration": "one hour"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);
    let violations = std::mem::take(&mut emulator.tenant().violations);
    assert!(
        matches!(violations.as_slice(), [v] if v.starts_with("request: request body of POST") && v.contains("setPresence") && v.contains("expirationDuration")),
        "{violations:?}"
    );
}

#[tokio::test]
async fn presence_batches_are_bounded_and_a_shadow_sets_only_its_own() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let t = c.app_token("gateway", "s3cret").await;
    let alice = "/users/11111111-1111-4111-8111-111111111111/presence";
    let too_many: Vec<String> = (0..651).map(|i| format!("id-{i}")).collect();
    let (status, _, _) = c
        .call(
            Method::POST,
            "/communications/getPresencesByUserId",
            &t,
            Some(json!({"ids": too_many})),
        )
        .await;
    assert_eq!(status, 400, "at most 650 ids");

    // A shadow account's own delegated token sets its own presence, not Alice's.
    let bob_token = c.shadow_token().await;
    let set = json!({"sessionId": "gateway", "availability": "Available", "activity": "Available"});
    let (status, _, _) = c
        .call(
            Method::POST,
            "/users/bob.xmpp@shadow.contoso.com/presence/setPresence",
            &bob_token,
            Some(set.clone()),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = c
        .call(
            Method::POST,
            &format!("{alice}/setPresence"),
            &bob_token,
            Some(set),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn throttling_and_injected_faults_say_when_to_retry() {
    let emulator = GraphEmulator::start(seed(3)).await.unwrap();
    let c = Client::new(&emulator);
    let t = c.app_token("gateway", "s3cret").await;
    for _ in 0..3 {
        let (status, _, _) = c
            .call(Method::GET, "/users/alice@contoso.com", &t, None)
            .await;
        assert_eq!(status, 200);
    }
    let (status, body, headers) = c
        .call(Method::GET, "/users/alice@contoso.com", &t, None)
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (429, Some("TooManyRequests"))
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");

    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let t = c.app_token("gateway", "s3cret").await;
    emulator
        .control(
            "/_emulator/faults",
            json!({"status": 503, "count": 2, "retryAfter": 3}),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, _, headers) = c
            .call(Method::GET, "/users/alice@contoso.com/presence", &t, None)
            .await;
        assert_eq!(
            (status.as_u16(), headers["retry-after"].to_str().unwrap()),
            (503, "3")
        );
    }
    let (status, _, _) = c
        .call(Method::GET, "/users/alice@contoso.com/presence", &t, None)
        .await;
    assert_eq!(status, 200, "the storm has passed");
}

/// The tenant, the app's token, Bob's (the shadow account's) token and his
/// user resource, and the 1:1 chat Bob starts with Alice.
async fn bob_and_alice_chat() -> (GraphEmulator, Client, String, String, Value, String) {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let app = c.app_token("gateway", "s3cret").await;
    let bob = c.shadow_token().await;
    let (_, bob_user, _) = c
        .call(
            Method::GET,
            "/users/bob.xmpp@shadow.contoso.com",
            &app,
            None,
        )
        .await;
    let member = |id: &str| {
        json!({"@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"],
        "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('{id}')")})
    };
    let new_chat = json!({"chatType": "oneOnOne", "members": [member(bob_user["id"].as_str().unwrap()), member("11111111-1111-4111-8111-111111111111")]});
    let (status, chat, _) = c.call(Method::POST, "/chats", &bob, Some(new_chat)).await;
    assert_eq!(status, 201, "{chat}");
    let chat_id = chat["id"].as_str().unwrap().to_owned();
    assert!(
        chat_id.starts_with("19:") && chat_id.ends_with("@unq.gbl.spaces"),
        "{chat_id}"
    );
    (emulator, c, app, bob, bob_user, chat_id)
}

#[tokio::test]
async fn one_on_one_chats_as_documented() {
    let (emulator, c, app, bob, bob_user, chat_id) = bob_and_alice_chat().await;
    let message = json!({"body": {"contentType": "html", "content": "hello <b>Alice</b>"}});
    let (status, sent, _) = c
        .call(
            Method::POST,
            &format!("/chats/{chat_id}/messages"),
            &bob,
            Some(message.clone()),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["from"]["user"]["id"], bob_user["id"]);
    let (status, _, _) = c
        .call(
            Method::POST,
            &format!("/chats/{chat_id}/messages"),
            &app,
            Some(message),
        )
        .await;
    assert_eq!(status, 403, "application permissions send no chat messages");
    let (status, list, _) = c
        .call(
            Method::GET,
            &format!("/chats/{chat_id}/messages?$top=5"),
            &bob,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), list["value"].as_array().unwrap().len()),
        (200, 1)
    );
    let (status, _, _) = c
        .call(Method::GET, &format!("/chats/{chat_id}"), &bob, None)
        .await;
    assert_eq!(status, 200);
    let (status, chats, _) = c
        .call(Method::GET, "/users/alice@contoso.com/chats", &app, None)
        .await;
    assert_eq!(
        (status.as_u16(), chats["value"][0]["id"].as_str()),
        (200, Some(chat_id.as_str()))
    );
    assert!(
        emulator.tenant().violations.is_empty(),
        "{:?}",
        emulator.tenant().violations
    );
}

#[tokio::test]
async fn chats_are_listed_for_their_members_only() {
    let (emulator, c, app, bob, bob_user, chat_id) = bob_and_alice_chat().await;
    let _ = &app;
    // A user lists their own chats, with members when asked, and no one else's.
    let bob_id = bob_user["id"].as_str().unwrap();
    let (status, mine, _) = c
        .call(
            Method::GET,
            &format!("/users/{bob_id}/chats?$expand=members&$top=50"),
            &bob,
            None,
        )
        .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(
        mine["value"][0]["members"].as_array().map(Vec::len),
        Some(2),
        "{mine}"
    );
    let (status, _, _) = c
        .call(Method::GET, "/users/alice@contoso.com/chats", &bob, None)
        .await;
    assert_eq!(status, 403);
    // Its members, as a member sees them (aadUserConversationMember).
    let (status, members, _) = c
        .call(
            Method::GET,
            &format!("/chats/{chat_id}/members"),
            &bob,
            None,
        )
        .await;
    assert_eq!(status, 200, "{members}");
    let mut ids: Vec<&str> = members["value"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|m| {
            assert_eq!(
                m["@odata.type"],
                "#microsoft.graph.aadUserConversationMember"
            )
        })
        .filter_map(|m| m["userId"].as_str())
        .collect();
    ids.sort();
    let mut expected = vec![
        bob_user["id"].as_str().unwrap(),
        "11111111-1111-4111-8111-111111111111",
    ];
    expected.sort();
    assert_eq!(ids, expected);
    let (status, _, _) = c
        .call(
            Method::GET,
            "/chats/19:nobody@unq.gbl.spaces/members",
            &bob,
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert!(
        emulator.tenant().violations.is_empty(),
        "{:?}",
        emulator.tenant().violations
    );
}
