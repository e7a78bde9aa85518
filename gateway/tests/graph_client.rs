//! The gateway's Graph client against the Graph emulator (which holds every
//! request to Microsoft's OpenAPI description and records any mismatch).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_gateway::graph::api::{NewUser, UserPatch};
use xmppfed_gateway::graph::{
    Budgets, GraphClient, GraphError, SignInMonitor, SignInRefusal, Tokens, UserCredential,
};

use common::graph_tenant::{TENANT, client, quick_retries, seed};

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
        .one_on_one_chat(&bob, &bob_id, alice_id, None)
        .await
        .unwrap();
    assert_eq!(
        chat.chat_type,
        xmppfed_gateway::graph::api::ChatType::OneOnOne
    );
    assert_eq!(
        graph
            .one_on_one_chat(&bob, &bob_id, alice_id, None)
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
            Budgets::uniform(100),
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
    let graph =
        xmppfed_gateway::graph::from_config(config.graph.as_ref().unwrap(), Budgets::uniform(50))
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

/// The refusal a policy is expected to cause: typed, its AADSTS code, words of its fix.
type Expected = Option<(SignInRefusal, u32, &'static str)>;

/// Each tenant policy, and what it does to a shadow account's sign-in.
fn policy_cases() -> Vec<(serde_json::Value, Expected)> {
    vec![
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
    ]
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
    for (policy, expected) in policy_cases() {
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
}

/// A user whose password never expires is not refused by the expiry, and
/// delegated permissions nobody consented to get AADSTS65001, with the fix.
#[tokio::test]
async fn created_accounts_do_not_expire_and_missing_consent_is_named() {
    let bob = UserCredential {
        upn: "bob.xmpp@shadow.contoso.com".into(),
        password: SecretString::from("Sh4dow!pw".to_owned()),
    };
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
