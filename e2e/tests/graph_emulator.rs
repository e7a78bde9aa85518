//! The Graph emulator against Microsoft's OpenAPI description: every request
//! these tests send and every response they get is validated against the
//! subset (paths, methods, bodies by schema), and each behaviour is the one
//! Microsoft documents.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod support;

use reqwest::Method;
use serde_json::json;
use support::{Client, SKU, seed};
use xmppfed_e2e::graph::GraphEmulator;

#[tokio::test]
async fn app_credentials_and_scopes_follow_the_identity_platform() {
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
}

#[tokio::test]
async fn shadow_sign_ins_rotate_refresh_tokens_and_policies_refuse_them() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
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
async fn user_read_basic_all_reads_the_basic_profile_only() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let basic = c.app_token("basic", "basic").await;
    let (status, alice, _) = c
        .call(
            Method::GET,
            "/users/alice@contoso.com?$select=displayName,jobTitle,businessPhones,mail",
            &basic,
            None,
        )
        .await;
    assert_eq!(status, 200, "{alice}");
    assert_eq!(alice["displayName"], "Alice Teams");
    assert_eq!(alice["mail"], "alice@contoso.com");
    assert!(alice.get("jobTitle").is_none(), "{alice}");
    assert!(alice.get("businessPhones").is_none(), "{alice}");
    let (status, all, _) = c.call(Method::GET, "/users", &basic, None).await;
    assert_eq!(status, 200, "{all}");
    let alice = &all["value"][0];
    assert_eq!(alice["givenName"], "Alice");
    assert!(alice.get("jobTitle").is_none(), "{alice}");
    // The full profile with User.ReadWrite.All.
    let full = c.app_token("gateway", "s3cret").await;
    let (_, alice, _) = c
        .call(
            Method::GET,
            "/users/alice@contoso.com?$select=jobTitle",
            &full,
            None,
        )
        .await;
    assert_eq!(alice["jobTitle"], "Engineer");
}

/// Carol's shadow account, created as the gateway creates one; a second
/// creation is refused. Returns its id.
async fn create_carol(c: &Client, t: &str) -> String {
    let shadow = json!({"accountEnabled": true, "displayName": "Carol (XMPP)", "mailNickname": "carol.xmpp",
        "userPrincipalName": "carol.xmpp@shadow.contoso.com", "passwordProfile": {"forceChangePasswordNextSignIn": false, "password": "Gen3rated!"},
        "usageLocation": "US"});
    let (status, created, _) = c
        .call(Method::POST, "/users", t, Some(shadow.clone()))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, dup, _) = c.call(Method::POST, "/users", t, Some(shadow)).await;
    assert_eq!(
        (status.as_u16(), dup["error"]["code"].as_str()),
        (400, Some("Request_BadRequest"))
    );
    let (status, _, _) = c
        .call(
            Method::PATCH,
            &format!("/users/{id}"),
            t,
            Some(json!({"jobTitle": "Partner"})),
        )
        .await;
    assert_eq!(status, 204);
    id
}

#[tokio::test]
async fn users_are_selected_created_photographed_and_deleted() {
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

    let id = create_carol(&c, &t).await;
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
async fn licences_need_a_free_seat_and_a_usage_location() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let t = c.app_token("gateway", "s3cret").await;
    let id = create_carol(&c, &t).await;
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
}

#[tokio::test]
async fn a_password_reset_needs_a_directory_role_over_the_user() {
    let emulator = GraphEmulator::start(seed(0)).await.unwrap();
    let c = Client::new(&emulator);
    let t = c.app_token("gateway", "s3cret").await;
    let bob = emulator
        .tenant()
        .user("bob.xmpp@shadow.contoso.com")
        .unwrap()
        .id
        .clone();
    let reset = json!({"passwordProfile": {"forceChangePasswordNextSignIn": false, "password": "N3w-Sh4dow!"}});
    // User.ReadWrite.All alone changes the profile, not the password.
    let (status, body, _) = c
        .call(
            Method::PATCH,
            &format!("/users/{bob}"),
            &t,
            Some(reset.clone()),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (403, Some("Authorization_RequestDenied")),
        "{body}"
    );
    let (status, _, _) = c
        .call(
            Method::PATCH,
            &format!("/users/{bob}"),
            &t,
            Some(json!({"jobTitle": "Partner"})),
        )
        .await;
    assert_eq!(status, 204);
    // User Administrator scoped to a unit Bob is in: the reset goes through.
    {
        let mut tenant = emulator.tenant();
        tenant.administrative_units = serde_json::from_value(
            json!([{"id": "a0a0a0a0-0000-4000-8000-00000000a001", "displayName": "XMPP contacts", "members": [bob]}]),
        )
        .unwrap();
        tenant.apps[0].scoped_roles = serde_json::from_value(json!([
            {"roleName": "User Administrator", "administrativeUnitId": "a0a0a0a0-0000-4000-8000-00000000a001"}
        ]))
        .unwrap();
    }
    let (status, body, _) = c
        .call(Method::PATCH, &format!("/users/{bob}"), &t, Some(reset))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        emulator.tenant().user(&bob).unwrap().password.as_deref(),
        Some("N3w-Sh4dow!")
    );
}
