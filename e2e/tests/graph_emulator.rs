//! The Graph emulator against Microsoft's OpenAPI description: every request
//! these tests send and every response they get is validated against the
//! subset (paths, methods, bodies by schema), and each behaviour is the one
//! Microsoft documents.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use xmppfed_e2e::graph::spec::spec;
use xmppfed_e2e::graph::{GraphEmulator, Seed};

const TENANT: &str = "7a1c6f5e-0000-4000-8000-00000000c0de";
const SKU: &str = "0c266dff-15dd-4b49-8397-2bb16070ed52";

fn seed(requests_per_10s: u32) -> Seed {
    serde_json::from_value(json!({
        "tenantId": TENANT,
        "requestsPer10s": requests_per_10s,
        "apps": [
            {"clientId": "gateway", "clientSecret": "s3cret",
             "roles": ["User.ReadWrite.All", "LicenseAssignment.ReadWrite.All", "Presence.ReadWrite.All", "ProfilePhoto.ReadWrite.All", "Chat.ReadBasic.All"],
             "scopes": ["Presence.ReadWrite", "Chat.ReadWrite", "Chat.Create", "ChatMessage.Send", "User.Read"]},
            {"clientId": "weak", "clientSecret": "weak", "roles": ["Presence.Read.All"]}
        ],
        "users": [
            {"id": "11111111-1111-4111-8111-111111111111", "userPrincipalName": "alice@contoso.com", "displayName": "Alice Teams",
             "givenName": "Alice", "surname": "Teams", "mail": "alice@contoso.com", "jobTitle": "Engineer", "businessPhones": ["+1 555 0100"]},
            {"userPrincipalName": "bob.xmpp@shadow.contoso.com", "displayName": "Bob (XMPP)", "password": "Sh4dow!pw"}
        ],
        "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 1}]
    }))
    .unwrap()
}

struct Client {
    http: reqwest::Client,
    base: String,
    authority: String,
}

impl Client {
    fn new(emulator: &GraphEmulator) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Self {
            http: reqwest::Client::new(),
            base: emulator.graph_url(),
            authority: emulator.authority_url(),
        }
    }

    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.authority))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn refresh(&self, token: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("client_id", "gateway"),
            ("client_secret", "s3cret"),
            ("refresh_token", token),
        ])
        .await
    }

    /// The shadow account bob's delegated token (password grant).
    async fn shadow_token(&self) -> String {
        let (status, body) = self
            .token(&[
                ("grant_type", "password"),
                ("client_id", "gateway"),
                ("client_secret", "s3cret"),
                ("username", "bob.xmpp@shadow.contoso.com"),
                ("password", "Sh4dow!pw"),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn app_token(&self, id: &str, secret: &str) -> String {
        let (status, body) = self
            .token(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A Graph call whose request and response are both held to the OpenAPI subset
    /// (operations the subset lacks are checked for Graph's error shape only).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let in_spec = spec()
            .find(method.as_str(), path.split('?').next().unwrap())
            .is_some();
        if in_spec {
            spec()
                .validate_request(
                    method.as_str(),
                    path.split('?').next().unwrap(),
                    body.as_ref(),
                )
                .unwrap_or_else(|e| panic!("request: {e}"));
        }
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        assert!(headers.contains_key("request-id"), "no request-id header");
        let text = response.text().await.unwrap();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        if in_spec {
            spec()
                .validate_response(
                    method.as_str(),
                    path.split('?').next().unwrap(),
                    status.as_u16(),
                    (!value.is_null()).then_some(&value),
                )
                .unwrap_or_else(|e| panic!("response: {e}"));
        } else if !status.is_success() {
            assert!(
                value["error"]["code"].is_string()
                    && value["error"]["innerError"]["request-id"].is_string(),
                "{value}"
            );
        }
        (status, value, headers)
    }
}

#[tokio::test]
async fn tokens_follow_the_identity_platform() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let (status, body) = c
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "gateway"),
            ("client_secret", "wrong"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215")
    );
    let (status, body) = c
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "gateway"),
            ("client_secret", "s3cret"),
            ("scope", "User.Read"),
        ])
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // The password grant for a shadow account, and refresh tokens that rotate.
    let password = [
        ("grant_type", "password"),
        ("client_id", "gateway"),
        ("client_secret", "s3cret"),
        ("username", "bob.xmpp@shadow.contoso.com"),
        ("password", "Sh4dow!pw"),
        (
            "scope",
            "https://graph.microsoft.com/.default offline_access",
        ),
    ];
    let (status, body) = c.token(&password).await;
    assert_eq!(status, 200, "{body}");
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) = c.refresh(&refresh).await;
    assert_eq!(status, 200);
    assert_ne!(rotated["refresh_token"], json!(refresh));
    let (status, again) = c.refresh(&refresh).await;
    assert_eq!(
        (status.as_u16(), again["error"].as_str()),
        (400, Some("invalid_grant")),
        "a refresh token is good once"
    );
    let mut wrong = password;
    wrong[4] = ("password", "nope");
    let (status, body) = c.token(&wrong).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // A policy refuses at every issuance, refresh included, with the
    // identity platform's body; a refused refresh token is not spent.
    let live = rotated["refresh_token"].as_str().unwrap().to_owned();
    emulator.tenant().identity = serde_json::from_value(
        json!({"conditionalAccess": [{"displayName": "Block all", "grant": "block"}]}),
    )
    .unwrap();
    for (status, body) in [c.token(&password).await, c.refresh(&live).await] {
        assert_eq!(
            (status.as_u16(), body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
        assert_eq!(body["error_codes"], json!([53003]), "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS53003: Access has been blocked by Conditional Access"),
            "{body}"
        );
        assert!(body["trace_id"].is_string() && body["correlation_id"].is_string());
    }
    emulator.tenant().identity = Default::default();
    let (status, _) = c.refresh(&live).await;
    assert_eq!(status, 200, "still good once the policy allows it");
    let log: Vec<(String, u32)> = emulator
        .tenant()
        .sign_ins
        .iter()
        .map(|s| (s.grant.clone(), s.refused))
        .collect();
    assert_eq!(
        log,
        [
            ("password".into(), 0),
            ("refresh_token".into(), 0),
            ("password".into(), 50126),
            ("password".into(), 53003),
            ("refresh_token".into(), 53003),
            ("refresh_token".into(), 0),
        ],
        "the sign-in log"
    );
}

#[tokio::test]
async fn permissions_are_checked_per_operation() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let (status, body, _) = c.call(Method::GET, "/users", "not-a-token", None).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
    let weak = c.app_token("weak", "weak").await;
    let (status, body, _) = c
        .call(Method::GET, "/users/alice@contoso.com", &weak, None)
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (403, Some("Authorization_RequestDenied"))
    );
    let (status, _, _) = c
        .call(
            Method::GET,
            "/users/alice@contoso.com/presence",
            &weak,
            None,
        )
        .await;
    assert_eq!(status, 200, "Presence.Read.All reads presence");
    let (status, _, _) = c
        .call(
            Method::POST,
            "/users/alice@contoso.com/presence/setPresence",
            &weak,
            Some(json!({"sessionId": "weak", "availability": "Busy", "activity": "InACall"})),
        )
        .await;
    assert_eq!(status, 403, "but does not write it");
}

#[tokio::test]
async fn users_licences_and_photos() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let t = c.app_token("gateway", "s3cret").await;
    let (status, alice, _) = c
        .call(
            Method::GET,
            "/users/alice@contoso.com?$select=displayName,jobTitle",
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (alice["displayName"].as_str(), alice["jobTitle"].as_str()),
        (Some("Alice Teams"), Some("Engineer"))
    );
    assert!(
        alice.get("mail").is_none(),
        "$select returns only what it names: {alice}"
    );

    let shadow = json!({"accountEnabled": true, "displayName": "Carol (XMPP)", "mailNickname": "carol.xmpp",
        "userPrincipalName": "carol.xmpp@shadow.contoso.com", "passwordProfile": {"forceChangePasswordNextSignIn": false, "password": "Gen3rated!"},
        "usageLocation": "US"});
    let (status, created, _) = c
        .call(Method::POST, "/users", &t, Some(shadow.clone()))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, dup, _) = c.call(Method::POST, "/users", &t, Some(shadow)).await;
    assert_eq!(
        (status.as_u16(), dup["error"]["code"].as_str()),
        (400, Some("Request_BadRequest"))
    );
    let (status, _, _) = c
        .call(
            Method::PATCH,
            &format!("/users/{id}"),
            &t,
            Some(json!({"jobTitle": "Partner"})),
        )
        .await;
    assert_eq!(status, 204);
    let assign =
        json!({"addLicenses": [{"skuId": SKU, "disabledPlans": []}], "removeLicenses": []});
    let (status, _, _) = c
        .call(
            Method::POST,
            &format!("/users/{id}/assignLicense"),
            &t,
            Some(assign.clone()),
        )
        .await;
    assert_eq!(status, 200);
    let (status, full, _) = c
        .call(
            Method::POST,
            "/users/alice@contoso.com/assignLicense",
            &t,
            Some(assign),
        )
        .await;
    assert_eq!(status, 400, "one seat only: {full}");
    assert!(
        full["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no available licenses"),
        "{full}"
    );
    // With the seat free again, Alice still needs a usage location.
    let release = json!({"addLicenses": [], "removeLicenses": [SKU]});
    let (status, _, _) = c
        .call(
            Method::POST,
            &format!("/users/{id}/assignLicense"),
            &t,
            Some(release),
        )
        .await;
    assert_eq!(status, 200);
    let assign_alice =
        json!({"addLicenses": [{"skuId": SKU, "disabledPlans": []}], "removeLicenses": []});
    let (status, refused, _) = c
        .call(
            Method::POST,
            "/users/alice@contoso.com/assignLicense",
            &t,
            Some(assign_alice.clone()),
        )
        .await;
    assert_eq!(
        (status.as_u16(), refused["error"]["message"].as_str()),
        (
            400,
            Some("License assignment cannot be done for user with invalid usage location.")
        )
    );
    let (status, _, _) = c
        .call(
            Method::PATCH,
            "/users/alice@contoso.com",
            &t,
            Some(json!({"usageLocation": "GB"})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = c
        .call(
            Method::POST,
            "/users/alice@contoso.com/assignLicense",
            &t,
            Some(assign_alice),
        )
        .await;
    assert_eq!(status, 200);

    let (status, body, _) = c
        .call(Method::GET, &format!("/users/{id}/photo/$value"), &t, None)
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (404, Some("ImageNotFound"))
    );
    let png = vec![0x89, b'P', b'N', b'G', 1, 2, 3];
    let put = c
        .http
        .put(format!("{}/users/{id}/photo/$value", c.base))
        .bearer_auth(&t)
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let got = c
        .http
        .get(format!("{}/users/{id}/photo/$value", c.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(got.bytes().await.unwrap().to_vec(), png);

    let (status, _, _) = c
        .call(Method::DELETE, &format!("/users/{id}"), &t, None)
        .await;
    assert_eq!(status, 204);
    let (status, body, _) = c.call(Method::GET, &format!("/users/{id}"), &t, None).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
}

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

#[tokio::test]
async fn one_on_one_chats_as_documented() {
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
