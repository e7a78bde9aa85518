//! The gateway's Graph client against the Graph emulator (which holds every
//! request to Microsoft's OpenAPI description and records any mismatch).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::json;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::graph::api::{NewUser, UserPatch};
use xmppfed_gateway::graph::{
    Budgets, GraphClient, GraphError, RetryPolicy, SignInMonitor, SignInRefusal, Tokens,
    UserCredential,
};

const TENANT: &str = "5c0ffee0-0000-4000-8000-000000000001";

fn seed() -> Seed {
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

fn client(emulator: &GraphEmulator, secret: &str, retry: RetryPolicy) -> GraphClient {
    common::graph_client(emulator, "gateway", secret, retry)
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        max_wait: Duration::from_secs(10),
        backoff: Duration::from_millis(50),
    }
}

#[tokio::test]
async fn typed_calls_with_one_cached_token() {
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = client(&emulator, "s3cret", quick_retries());
    let alice = graph.get_user("alice@contoso.com").await.unwrap();
    assert_eq!(
        (alice.display_name.as_deref(), alice.job_title.as_deref()),
        (Some("Alice Teams"), Some("Engineer"))
    );
    assert_eq!(alice.business_phones, ["+1 555 0100"]);

    let carol = graph
        .create_user(&NewUser {
            upn: "carol.xmpp@shadow.contoso.com".into(),
            display_name: "Carol (XMPP)".into(),
            mail_nickname: "carol.xmpp".into(),
            usage_location: Some("US".into()),
            password: SecretString::from("Gen3rated!pw".to_owned()),
            administrative_unit: None,
        })
        .await
        .unwrap();
    graph
        .update_user(
            &carol.id,
            &UserPatch {
                job_title: Some("Partner engineer".into()),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    graph
        .assign_licence(&carol.id, "sku-teams", &[])
        .await
        .unwrap();
    assert_eq!(graph.get_photo(&carol.id).await.unwrap(), None);
    graph
        .put_photo(&carol.id, "image/png", b"\x89PNG-bytes")
        .await
        .unwrap();
    assert_eq!(
        graph.get_photo(&carol.id).await.unwrap(),
        Some(("image/png".into(), b"\x89PNG-bytes".to_vec()))
    );

    graph
        .set_presence(
            &carol.id,
            "gateway",
            "Busy",
            "InACall",
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    graph
        .set_status_message(&carol.id, "On XMPP")
        .await
        .unwrap();
    let p = graph.get_presence(&carol.id).await.unwrap();
    assert_eq!(
        (p.availability.as_deref(), p.activity.as_deref()),
        (Some("Busy"), Some("InACall"))
    );
    assert_eq!(p.status_text(), Some("On XMPP"));
    graph.clear_presence(&carol.id, "gateway").await.unwrap();
    assert_eq!(
        graph
            .get_presence(&carol.id)
            .await
            .unwrap()
            .availability
            .as_deref(),
        Some("Offline")
    );

    graph.delete_user(&carol.id).await.unwrap();
    let gone = graph.get_user(&carol.id).await.unwrap_err();
    assert!(gone.is_not_found(), "{gone}");

    let t = emulator.tenant();
    assert_eq!(t.token_requests, 1, "one app token served every call");
    assert!(
        t.violations.is_empty(),
        "requests outside Microsoft's description: {:?}",
        t.violations
    );
}

#[tokio::test]
async fn presence_batches_are_split_at_650() {
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = client(&emulator, "s3cret", quick_retries());
    let mut ids: Vec<String> = (0..1300)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    ids.push("11111111-1111-4111-8111-111111111111".into());
    let presences = graph.presences_by_user_id(&ids).await.unwrap();
    assert_eq!(presences.len(), 1, "unknown ids are left out");
    let t = emulator.tenant();
    let batches = t
        .log
        .iter()
        .filter(|l| l.ends_with("getPresencesByUserId"))
        .count();
    assert_eq!(batches, 3, "1,301 ids → 650 + 650 + 1");
    assert!(t.violations.is_empty(), "{:?}", t.violations);
}

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

#[tokio::test]
async fn bad_credentials_and_delegated_tokens() {
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let wrong = client(&emulator, "not-the-secret", quick_retries());
    let error = wrong.get_user("alice@contoso.com").await.unwrap_err();
    assert!(
        matches!(
            &error,
            GraphError::SignInRefused {
                refusal: SignInRefusal::InvalidClientSecret,
                code: 7000215,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("create a new client secret"),
        "{error}"
    );
    assert!(
        !error.to_string().contains("not-the-secret"),
        "secrets never reach messages"
    );

    let graph = client(&emulator, "s3cret", quick_retries());
    let before = emulator.tenant().token_requests;
    let bob = UserCredential {
        upn: "bob.xmpp@shadow.contoso.com".into(),
        password: SecretString::from("Sh4dow!pw".to_owned()),
    };
    graph
        .set_own_presence(
            &bob,
            "gateway",
            "Available",
            "Available",
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    graph
        .set_own_presence(&bob, "gateway", "Away", "Away", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        emulator.tenant().token_requests,
        before + 1,
        "the delegated token is cached"
    );
    // A token lost (e.g. after a restart of the cache): the rotating refresh token is used.
    graph
        .tokens()
        .invalidate(&xmppfed_gateway::graph::Identity::User(bob.upn.clone()))
        .await;
    graph
        .set_own_presence(&bob, "gateway", "Busy", "InACall", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(emulator.tenant().token_requests, before + 2);
    assert_eq!(
        graph
            .get_presence(&bob.upn)
            .await
            .unwrap()
            .availability
            .as_deref(),
        Some("Busy")
    );
    assert!(emulator.tenant().violations.is_empty());
}

#[tokio::test]
async fn shadow_accounts_chat_with_teams_users() {
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = client(&emulator, "s3cret", quick_retries());
    let bob = UserCredential {
        upn: "bob.xmpp@shadow.contoso.com".into(),
        password: SecretString::from("Sh4dow!pw".to_owned()),
    };
    let bob_id = graph.get_user(&bob.upn).await.unwrap().id;
    let alice_id = "11111111-1111-4111-8111-111111111111";
    let chat = graph
        .one_on_one_chat(&bob, &bob_id, alice_id)
        .await
        .unwrap();
    assert_eq!(
        chat.chat_type,
        xmppfed_gateway::graph::api::ChatType::OneOnOne
    );
    assert_eq!(
        graph
            .one_on_one_chat(&bob, &bob_id, alice_id)
            .await
            .unwrap()
            .id,
        chat.id,
        "one chat per pair"
    );

    let sent = graph
        .send_chat_message(&bob, &chat.id, "hello from XMPP &lt;3")
        .await
        .unwrap();
    assert_eq!(sent.sender_id(), Some(bob_id.as_str()));
    emulator
        .control(
            &format!("/_emulator/chats/{}/messages", chat.id),
            json!({"from": "alice@contoso.com", "content": "<p>hi Bob</p>", "contentType": "html"}),
        )
        .await
        .unwrap();
    let messages = graph.chat_messages(&bob, &chat.id, 10).await.unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        (messages[0].sender_id(), messages[0].body.content.as_str()),
        (Some(alice_id), "<p>hi Bob</p>"),
        "newest first"
    );
    assert_eq!(messages[1].id, sent.id);
    assert!(
        emulator.tenant().violations.is_empty(),
        "{:?}",
        emulator.tenant().violations
    );
}

#[tokio::test]
async fn users_in_batches_of_twenty() {
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = client(&emulator, "s3cret", quick_retries());
    let mut keys: Vec<String> = (0..25).map(|i| format!("nobody{i}@contoso.com")).collect();
    keys[3] = "alice@contoso.com".into();
    keys[21] = "bob.xmpp@shadow.contoso.com".into();
    let users = graph.get_users(&keys).await.unwrap();
    assert_eq!(users.len(), 25);
    assert_eq!(
        users[3].as_ref().unwrap().display_name.as_deref(),
        Some("Alice Teams")
    );
    assert_eq!(
        users[21].as_ref().unwrap().display_name.as_deref(),
        Some("Bob (XMPP)")
    );
    assert!(users[0].as_ref().unwrap_err().is_not_found());
    let t = emulator.tenant();
    assert_eq!(
        t.log.iter().filter(|l| l.ends_with("/$batch")).count(),
        2,
        "25 users in 2 round trips: 20 + 5"
    );
    assert_eq!(t.log.len(), 27, "and every sub-request served: {:?}", t.log);
}

#[tokio::test]
async fn the_app_signs_in_with_a_certificate() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = xmppfed_e2e::prosody::rsa_self_signed(dir.path(), "gateway-app").unwrap();
    let (other_cert, other_key) =
        xmppfed_e2e::prosody::rsa_self_signed(dir.path(), "someone-else").unwrap();
    let mut seed = seed();
    seed.apps.push(
        serde_json::from_value(json!({"clientId": "certapp", "certificatePem": std::fs::read_to_string(&cert).unwrap(), "roles": ["User.Read.All"]}))
            .unwrap(),
    );
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let with = |cert: &std::path::Path, key: &std::path::Path| {
        let (der, key) = xmppfed_gateway::graph::auth::load_certificate(cert, key).unwrap();
        let http = reqwest::Client::new();
        let tokens = Tokens::with_certificate(
            http.clone(),
            &emulator.authority_url(),
            TENANT,
            "certapp",
            &der,
            key,
        )
        .unwrap();
        GraphClient::new(
            http,
            &emulator.graph_url(),
            tokens,
            Budgets::uniform(100, 10),
            quick_retries(),
        )
    };
    let alice = with(&cert, &key)
        .get_user("alice@contoso.com")
        .await
        .unwrap();
    assert_eq!(alice.display_name.as_deref(), Some("Alice Teams"));
    let error = with(&other_cert, &other_key)
        .get_user("alice@contoso.com")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, GraphError::SignInRefused { refusal: SignInRefusal::InvalidClientAssertion, description, .. } if description.starts_with("AADSTS700027")),
        "{error}"
    );
}

#[tokio::test]
async fn a_client_from_the_gateway_configuration() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut seed = seed();
    let app = "0f0f0f0f-1111-4222-8333-444444444444";
    seed.apps.push(
        serde_json::from_value(
            json!({"clientId": app, "clientSecret": "s3cret", "roles": ["User.Read.All"]}),
        )
        .unwrap(),
    );
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let config = xmppfed_config::GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"teams.test\"\n[s2s]\nrequire_tls = false\n[graph]\ntenant_id = \"{TENANT}\"\nclient_id = \"{app}\"\n\
         client_secret = {{ file = \"{}\" }}\nauthority_url = \"{}\"\ngraph_url = \"{}\"\n[shadow_accounts]\nupn_domain = \"shadow.contoso.com\"\n\
         licence_sku = \"6af4b3d6-14bb-4a2a-960c-6c902aad34f3\"\nusage_location = \"GB\"\ncredential_key = {{ file = \"{}\" }}\n",
        secret.display(),
        emulator.authority_url(),
        emulator.graph_url(),
        secret.display()
    ))
    .unwrap();
    let graph = xmppfed_gateway::graph::from_config(
        config.graph.as_ref().unwrap(),
        Budgets::uniform(50, 10),
    )
    .unwrap();
    assert_eq!(
        graph
            .get_user("alice@contoso.com")
            .await
            .unwrap()
            .job_title
            .as_deref(),
        Some("Engineer")
    );
}

#[tokio::test]
async fn members_of_nested_groups() {
    let mut seed = seed();
    seed.apps.push(
        serde_json::from_value(
            json!({"clientId": "dir", "clientSecret": "d", "roles": ["GroupMember.Read.All"]}),
        )
        .unwrap(),
    );
    seed.groups = serde_json::from_value(json!([
        {"id": "g-outer", "displayName": "Federated", "members": ["alice@contoso.com", "g-inner"]},
        {"id": "g-inner", "displayName": "Partners team", "members": ["bob.xmpp@shadow.contoso.com", "alice@contoso.com"]}
    ]))
    .unwrap();
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let graph = common::graph_client(&emulator, "dir", "d", quick_retries());
    let mut upns: Vec<String> = graph
        .group_users("g-outer")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|u| u.user_principal_name)
        .collect();
    upns.sort();
    assert_eq!(
        upns,
        ["alice@contoso.com", "bob.xmpp@shadow.contoso.com"],
        "nested members, once each"
    );
    let missing = graph.group_users("g-none").await.unwrap_err();
    assert!(missing.is_not_found());
    let no_role = client(&emulator, "s3cret", quick_retries())
        .group_users("g-outer")
        .await
        .unwrap_err();
    assert_eq!(no_role.status(), Some(403));
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
        Budgets::uniform(200, 50),
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

/// Each identity policy Microsoft documents as refusing the password grant
/// gives its own typed refusal, with the fix; the policies that do not apply
/// (report-only, excluded users or groups, Security Defaults within the
/// grace, passwords that never expire) let the sign-in through.
#[tokio::test]
async fn each_tenant_policy_refuses_the_shadow_sign_in_with_its_fix() {
    let bob = UserCredential {
        upn: "bob.xmpp@shadow.contoso.com".into(),
        password: SecretString::from("Sh4dow!pw".to_owned()),
    };
    // (policy, the refusal expected: typed, its AADSTS code, words of its fix)
    type Expected = Option<(SignInRefusal, u32, &'static str)>;
    let cases: Vec<(serde_json::Value, Expected)> = vec![
        (json!({}), None),
        (json!({"securityDefaults": "grace"}), None),
        (
            json!({"securityDefaults": "enforced"}),
            Some((
                SignInRefusal::MfaRegistrationRequired,
                50079,
                "Security Defaults",
            )),
        ),
        (
            json!({"conditionalAccess": [{"displayName": "Block", "grant": "block"}]}),
            Some((
                SignInRefusal::ConditionalAccessBlocked,
                53003,
                "Conditional Access",
            )),
        ),
        (
            json!({"conditionalAccess": [{"displayName": "Block", "grant": "block",
                   "state": "enabledForReportingButNotEnforced"}]}),
            None,
        ),
        (
            json!({"conditionalAccess": [{"displayName": "MFA", "grant": "mfa",
                   "excludeGroups": ["shadow-accounts"]}]}),
            None,
        ),
        (
            json!({"conditionalAccess": [{"displayName": "MFA", "grant": "mfa",
                   "excludeUsers": ["alice@contoso.com"]}]}),
            Some((SignInRefusal::MfaRequired, 50076, "exclude them")),
        ),
        (
            json!({"passwordValidityDays": 0}),
            Some((
                SignInRefusal::PasswordExpired,
                50055,
                "DisablePasswordExpiration",
            )),
        ),
    ];
    for (policy, expected) in cases {
        let mut tenant = seed();
        tenant.identity = serde_json::from_value(policy.clone()).unwrap();
        tenant.groups = vec![
            serde_json::from_value(json!({"id": "shadow-accounts",
            "displayName": "Shadow accounts", "members": ["bob.xmpp@shadow.contoso.com"]}))
            .unwrap(),
        ];
        let emulator = GraphEmulator::start(tenant).await.unwrap();
        let monitor = std::sync::Arc::new(SignInMonitor::detached());
        let graph = client(&emulator, "s3cret", quick_retries()).with_sign_ins(
            std::sync::Arc::new(xmppfed_gateway::graph::auth::MemoryVault::default()),
            monitor.clone(),
        );
        let result = graph
            .set_own_presence(
                &bob,
                "gateway",
                "Available",
                "Available",
                Duration::from_secs(600),
            )
            .await;
        match expected {
            None => {
                assert!(result.is_ok(), "{policy}: {result:?}");
                assert!(monitor.in_force().is_empty(), "{policy}");
            }
            Some((refusal, code, fix)) => {
                let error = result.unwrap_err();
                assert!(
                    matches!(&error, GraphError::SignInRefused { refusal: r, code: c, .. } if *r == refusal && *c == code),
                    "{policy}: {error}"
                );
                assert!(error.to_string().contains(fix), "{policy}: {error}");
                assert_eq!(monitor.in_force(), [(bob.upn.clone(), refusal)], "{policy}");
                assert!(monitor.summary().unwrap().contains(refusal.reason()));
            }
        }
    }

    // A user whose password never expires is not refused by the expiry.
    let mut expiring = seed();
    expiring.identity = serde_json::from_value(json!({"passwordValidityDays": 0})).unwrap();
    let emulator = GraphEmulator::start(expiring).await.unwrap();
    let graph = client(&emulator, "s3cret", quick_retries());
    graph
        .create_user(&NewUser {
            upn: "dave.xmpp@shadow.contoso.com".into(),
            display_name: "Dave (XMPP)".into(),
            mail_nickname: "dave.xmpp".into(),
            usage_location: None,
            password: SecretString::from("D4ve!pw-long-enough".to_owned()),
            administrative_unit: None,
        })
        .await
        .unwrap();
    let dave = UserCredential {
        upn: "dave.xmpp@shadow.contoso.com".into(),
        password: SecretString::from("D4ve!pw-long-enough".to_owned()),
    };
    graph
        .set_own_presence(
            &dave,
            "gateway",
            "Available",
            "Available",
            Duration::from_secs(600),
        )
        .await
        .expect("created with DisablePasswordExpiration");

    // Delegated permissions nobody consented to: AADSTS65001, with the fix.
    let mut unconsented = seed();
    unconsented.apps[0].scopes.clear();
    let emulator = GraphEmulator::start(unconsented).await.unwrap();
    let error = client(&emulator, "s3cret", quick_retries())
        .set_own_presence(
            &bob,
            "gateway",
            "Available",
            "Available",
            Duration::from_secs(600),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.sign_in_refusal(),
        Some(SignInRefusal::ConsentRequired),
        "{error}"
    );
    assert!(error.to_string().contains("admin consent"), "{error}");
}

/// Microsoft's Teams limits on (issue 16, item 1): a flood of sends to 20
/// chats, several per chat, all at once, stays under the per-chat (1/s) and
/// per-tenant (20/s) ceilings — not one 429 — while the same flood spent
/// through one flat budget is refused by the emulator.
#[tokio::test]
async fn a_flood_of_chat_messages_stays_under_the_teams_limits() {
    const CHATS: usize = 20;
    const PER_CHAT: usize = 3;
    let mut users = vec![json!({"userPrincipalName": "bob.xmpp@shadow.contoso.com",
        "displayName": "Bob (XMPP)", "password": "Sh4dow!pw"})];
    for n in 0..CHATS {
        users.push(json!({"userPrincipalName": format!("user{n}@contoso.com"), "displayName": format!("User {n}")}));
    }
    let seed: xmppfed_e2e::graph::Seed = serde_json::from_value(json!({
        "tenantId": TENANT,
        "apps": [{"clientId": "gateway", "clientSecret": "s3cret",
                  "roles": ["User.Read.All"],
                  "scopes": ["User.Read", "Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"]}],
        "users": users,
        "teamsLimits": {}
    }))
    .unwrap();
    let bob = UserCredential {
        upn: "bob.xmpp@shadow.contoso.com".into(),
        password: SecretString::from("Sh4dow!pw".to_owned()),
    };

    let flood = |graph: std::sync::Arc<GraphClient>, chats: Vec<String>| {
        let bob = bob.clone();
        async move {
            let sends = chats.iter().flat_map(|chat| {
                (0..PER_CHAT).map(move |i| (chat.clone(), format!("message {i}")))
            });
            futures::future::join_all(sends.map(|(chat, text)| {
                let (graph, bob) = (graph.clone(), bob.clone());
                async move { graph.send_chat_message(&bob, &chat, &text).await }
            }))
            .await
        }
    };
    let setup = |graph: std::sync::Arc<GraphClient>| {
        let bob = bob.clone();
        async move {
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
                        .one_on_one_chat(&bob, &bob_id, &other)
                        .await
                        .unwrap()
                        .id,
                );
            }
            chats
        }
    };

    // With the gateway's budgets: every message sent, none refused.
    let emulator = GraphEmulator::start(seed.clone()).await.unwrap();
    let graph = std::sync::Arc::new(common::graph_client_with(
        &emulator,
        "gateway",
        "s3cret",
        quick_retries(),
        Budgets::published_limits(),
    ));
    let chats = setup(graph.clone()).await;
    let sent = flood(graph.clone(), chats).await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    assert_eq!(
        emulator.tenant().throttling.refused,
        Default::default(),
        "no 429 from Graph"
    );
    let m = graph.budgets().metrics();
    assert_eq!(
        m.requests(xmppfed_gateway::graph::limits::Category::ChatMessageSend),
        (CHATS * PER_CHAT) as u64
    );
    assert_eq!(
        m.throttled(xmppfed_gateway::graph::limits::Category::ChatMessageSend),
        0
    );

    // One flat budget: Graph refuses the burst.
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let graph = std::sync::Arc::new(common::graph_client_with(
        &emulator,
        "gateway",
        "s3cret",
        quick_retries(),
        Budgets::uniform(1_000, 1_000),
    ));
    let chats = setup(graph.clone()).await;
    let _ = flood(graph.clone(), chats).await;
    let refused = emulator.tenant().throttling.refused.clone();
    assert!(
        refused.get("POST chat message").copied().unwrap_or(0) > 0,
        "the emulator enforces the limits: {refused:?}"
    );
    assert!(
        graph
            .budgets()
            .metrics()
            .throttled(xmppfed_gateway::graph::limits::Category::ChatMessageSend)
            > 0
    );
}
