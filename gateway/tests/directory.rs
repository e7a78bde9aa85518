//! The internal allow list resolved through Graph (the emulator), and what it
//! means on the wire: a Teams user off the list does not exist to XMPP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use xmppfed_config::{GatewayConfig, StaticRoute};
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_e2e::xmpp_peer::{Authoritative, RawPeer};
use xmppfed_gateway::bridge::users::directory::{AllowedUsers, Directory};
use xmppfed_gateway::bridge::users::identity::LocalPartRule;
use xmppfed_gateway::graph::RetryPolicy;
use xmppfed_gateway::s2s::{S2s, UserDirectory};

const TENANT: &str = "5c0ffee0-0000-4000-8000-0000000000dd";

fn seed() -> Seed {
    serde_json::from_value(json!({
        "tenantId": TENANT,
        "apps": [{"clientId": "gateway", "clientSecret": "s3cret", "roles": ["User.Read.All", "GroupMember.Read.All"]}],
        "users": [
            {"userPrincipalName": "alice@contoso.com", "displayName": "Alice"},
            {"userPrincipalName": "carol@contoso.com", "displayName": "Carol (not federated)"},
            {"userPrincipalName": "dave@contoso.com", "displayName": "Dave"}
        ],
        "groups": [{"id": "g-federated", "displayName": "Federated", "members": ["dave@contoso.com"]}]
    }))
    .unwrap()
}

#[tokio::test]
async fn only_allowed_teams_users_exist_to_xmpp() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = common::graph_client(&emulator, "gateway", "s3cret", RetryPolicy::default());
    let directory = Directory::default();
    let allowed = AllowedUsers {
        upns: vec!["alice@contoso.com".into(), "ghost@contoso.com".into()],
        groups: vec!["g-federated".into()],
    };
    let count = directory
        .refresh(&graph, &allowed, &LocalPartRule::UpnLocalPart)
        .await
        .unwrap();
    assert_eq!(
        count, 2,
        "alice by UPN, dave by group; the ghost is left out"
    );
    assert!(directory.exists("alice") && directory.exists("Dave"));
    assert!(!directory.exists("carol"));
    assert_eq!(
        directory.user("alice").unwrap().display_name.as_deref(),
        Some("Alice")
    );

    // On the wire: disco#info to an allowed user answers, to another one errs.
    let authoritative = Authoritative::start().await.unwrap();
    let mut config = GatewayConfig::from_toml_str(
        "[xmpp]\ndomain = \"teams.test\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n[allow]\nremote_domains = [\"good.test\"]\n",
    )
    .unwrap();
    config.s2s.static_routes = vec![StaticRoute {
        domain: "good.test".into(),
        host: "127.0.0.1".into(),
        port: authoritative.port,
    }];
    let metrics = xmppfed_telemetry::Metrics::new("test", "0");
    let (s2s, _rx) = S2s::bind(&config, Arc::new(directory.clone()), &metrics)
        .await
        .unwrap();
    let port = s2s.local_addr().unwrap().port();
    tokio::spawn(s2s.serve(std::future::pending()));
    let mut peer = RawPeer::authenticated(port, "good.test", "teams.test")
        .await
        .unwrap();
    for (id, user) in [("q1", "alice"), ("q2", "carol")] {
        peer.send(&format!(
            "<iq xmlns='jabber:server' type='get' id='{id}' from='bob@good.test/pc' to='{user}@teams.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        ))
        .await
        .unwrap();
    }
    // The answers go out on the gateway's own stream to good.test.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answers = loop {
        let seen = authoritative.received();
        if seen.contains("id='q1'") && seen.contains("id='q2'") {
            break seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answers; the peer got: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let answer = |id: &str| {
        let start = answers.find(&format!("id='{id}'")).unwrap();
        let open = answers[..start].rfind("<iq").unwrap();
        let close = answers[open..]
            .find("</iq>")
            .map_or(answers.len(), |i| open + i);
        answers[open..close].to_owned()
    };
    assert!(
        answer("q1").contains("type='result'") && answer("q1").contains("account"),
        "{}",
        answer("q1")
    );
    assert!(
        answer("q2").contains("type='error'") && answer("q2").contains("service-unavailable"),
        "{}",
        answer("q2")
    );
}

#[tokio::test]
async fn vcard_requests_are_answered_from_graph_profiles_and_cached() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut seed = seed();
    seed.users[0]
        .properties
        .insert("jobTitle".into(), json!("Engineer"));
    seed.users[0]
        .properties
        .insert("mail".into(), json!("alice@contoso.com"));
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let graph = common::graph_client(&emulator, "gateway", "s3cret", RetryPolicy::default());
    let directory = Directory::default();
    let allowed = AllowedUsers {
        upns: vec!["alice@contoso.com".into()],
        groups: vec![],
    };
    directory
        .refresh(&graph, &allowed, &LocalPartRule::UpnLocalPart)
        .await
        .unwrap();
    let cards =
        xmppfed_gateway::bridge::contacts::cards::Cards::new(directory, Duration::from_secs(300));
    let request = |to: &str| {
        let xml = format!(
            "<iq xmlns='jabber:server' type='get' id='v' from='bob@good.test/pc' to='{to}'><vCard xmlns='vcard-temp'/></iq>"
        );
        xmppfed_gateway::s2s::stanza::from_wire(xml.parse().unwrap()).unwrap()
    };
    let answer = cards
        .answer(&graph, &request("alice@teams.test"))
        .await
        .unwrap();
    let xmppfed_gateway::s2s::Stanza::Iq(xmpp_parsers::iq::Iq::Result {
        payload: Some(card),
        to,
        ..
    }) = answer
    else {
        panic!("not a result: {answer:?}")
    };
    assert_eq!(to.unwrap().to_string(), "bob@good.test/pc");
    assert_eq!(
        card.get_child("TITLE", "vcard-temp").unwrap().text(),
        "Engineer"
    );
    assert_eq!(card.get_child("FN", "vcard-temp").unwrap().text(), "Alice");
    let calls = emulator.tenant().log.len();
    cards
        .answer(&graph, &request("alice@teams.test"))
        .await
        .unwrap();
    assert_eq!(
        emulator.tenant().log.len(),
        calls,
        "the second answer comes from the cache"
    );
    let refused = cards
        .answer(&graph, &request("carol@teams.test"))
        .await
        .unwrap();
    assert!(
        matches!(
            refused,
            xmppfed_gateway::s2s::Stanza::Iq(xmpp_parsers::iq::Iq::Error { .. })
        ),
        "carol does not exist to XMPP"
    );
    assert!(emulator.tenant().violations.is_empty());
}

/// `$batch` items are throttled one by one (issue 16, item 5): an item
/// answered 429 is sent again after its own Retry-After, and while it stays
/// throttled the refresh fails and keeps the previous list — a throttled
/// batch never withdraws anyone.
#[tokio::test]
async fn a_throttled_batch_item_is_retried_and_never_withdraws_a_user() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let policy = RetryPolicy {
        max_attempts: 3,
        max_wait: Duration::from_secs(5),
        backoff: Duration::from_millis(50),
    };
    let graph = common::graph_client(&emulator, "gateway", "s3cret", policy);
    let directory = Directory::default();
    let allowed = AllowedUsers {
        upns: vec!["alice@contoso.com".into(), "dave@contoso.com".into()],
        groups: vec![],
    };

    // One item throttled: retried after its Retry-After, both users read.
    emulator.tenant().faults.status = Some((429, 1, 1));
    let started = std::time::Instant::now();
    let count = directory
        .refresh(&graph, &allowed, &LocalPartRule::UpnLocalPart)
        .await
        .unwrap();
    assert_eq!(count, 2, "the throttled item was sent again and answered");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry waited for the item's own Retry-After"
    );
    assert!(emulator.tenant().faults.status.is_none());
    let batches = emulator
        .tenant()
        .log
        .iter()
        .filter(|l| l.as_str() == "POST /v1.0/$batch")
        .count();
    assert_eq!(batches, 2, "one batch, then the throttled item alone");

    // Items throttled past the retry policy: the refresh fails, nobody is
    // withdrawn, and the next refresh after the throttling ends reads both.
    emulator.tenant().faults.status = Some((429, 1000, 1));
    let err = directory
        .refresh(&graph, &allowed, &LocalPartRule::UpnLocalPart)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(directory.exists("alice") && directory.exists("dave"));
    emulator.tenant().faults.clear();
    assert_eq!(
        directory
            .refresh(&graph, &allowed, &LocalPartRule::UpnLocalPart)
            .await
            .unwrap(),
        2
    );
}
