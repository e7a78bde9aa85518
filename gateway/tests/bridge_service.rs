//! The bridge service against the Graph emulator and an SQLite store, with
//! stanzas fed in and read back from a channel: the subscription state
//! machine (RFC 6121 §3), probes, what users off the allow list get, remote
//! presence driving shadow accounts only when subscribed, and the removal
//! of unused shadow accounts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::presence::{Presence, Show, Type};
use xmppfed_config::GatewayConfig;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::bridge::XmppOut;
use xmppfed_gateway::bridge::contacts::credentials::CredentialCipher;
use xmppfed_gateway::bridge::contacts::roster::Subscription;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;
use xmppfed_gateway::bridge::metrics::BridgeMetrics;
use xmppfed_gateway::bridge::service::{Bridge, Settings};
use xmppfed_gateway::bridge::users::directory::{AllowedUsers, Directory};
use xmppfed_gateway::bridge::users::identity::LocalPartRule;
use xmppfed_gateway::graph::RetryPolicy;
use xmppfed_gateway::s2s::Stanza;
use xmppfed_gateway::store::Store;

const CLIENT_ID: &str = "0f0f0f0f-1111-4222-8333-444444444444";

fn seed() -> Seed {
    serde_json::from_value(json!({
        "tenantId": "5c0ffee0-0000-4000-8000-0000000000b2",
        "apps": [{"clientId": CLIENT_ID, "clientSecret": "s3cret",
                  "roles": ["User.ReadWrite.All", "Presence.ReadWrite.All", "LicenseAssignment.ReadWrite.All"]}],
        "users": [{"userPrincipalName": "alice@contoso.com", "displayName": "Alice"},
                  {"userPrincipalName": "carol@contoso.com", "displayName": "Carol"}],
        "skus": [{"skuId": "6af4b3d6-14bb-4a2a-960c-6c902aad34f3", "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 10}]
    }))
    .unwrap()
}

struct Harness {
    emulator: GraphEmulator,
    directory: Directory,
    bridge: Arc<Bridge>,
    alice: String,
    sent: mpsc::Receiver<Stanza>,
    /// Sent stanzas read while looking for something else.
    held: Vec<Stanza>,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = Arc::new(common::graph_client(
        &emulator,
        CLIENT_ID,
        "s3cret",
        RetryPolicy::default(),
    ));
    let directory = Directory::default();
    directory
        .refresh(
            &graph,
            &AllowedUsers {
                upns: vec!["alice@contoso.com".into()],
                groups: vec![],
            },
            &LocalPartRule::UpnLocalPart,
        )
        .await
        .unwrap();
    let alice = directory.id_of("alice").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::sqlite(&dir.path().join("db")).await.unwrap());
    let config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"teams.test\"\n[s2s]\nrequire_tls = false\n\
         [graph]\ntenant_id = \"5c0ffee0-0000-4000-8000-0000000000b2\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"UNUSED\" }}\n\
         [shadow_accounts]\nupn_domain = \"shadow.contoso.com\"\nlicence_sku = \"6af4b3d6-14bb-4a2a-960c-6c902aad34f3\"\nusage_location = \"GB\"\ncredential_key = {{ env = \"UNUSED\" }}\n"
    ))
    .unwrap();
    let settings = Settings::from_config(&config, config.graph.as_ref().unwrap());
    let (tx, sent) = mpsc::channel(1024);
    let out: Arc<dyn XmppOut> = Arc::new(common::ChannelOut(tx));
    let services = xmppfed_gateway::bridge::Services {
        shadow_graph: graph.clone(),
        graph,
        home_tenant: None,
        directory: directory.clone(),
        store: store.clone(),
        out,
        metrics: BridgeMetrics::detached(),
    };
    let bridge = Bridge::build(
        settings,
        services,
        CredentialCipher::new("key"),
        None,
        Arc::new(tokio::sync::Notify::new()),
    )
    .await
    .unwrap();
    Harness {
        emulator,
        directory,
        bridge,
        alice,
        sent,
        held: Vec::new(),
        store,
        _dir: dir,
    }
}

fn presence(type_: Type, from: &str, to: &str) -> Stanza {
    let mut p = Presence::new(type_);
    p.from = Some(from.parse::<Jid>().unwrap());
    p.to = Some(to.parse::<Jid>().unwrap());
    Stanza::Presence(p)
}

impl Harness {
    /// A presence stanza from a remote server, handled by the bridge.
    async fn receive(&self, type_: Type, from: &str, to: &str) {
        self.bridge.handle(presence(type_, from, to)).await;
    }

    /// The presences sent within `wait` as (type, from, to, show).
    async fn sent(&mut self, wait: Duration) -> Vec<(Type, String, String, Option<Show>)> {
        let mut out = Vec::new();
        let mut stanzas: Vec<Stanza> = std::mem::take(&mut self.held);
        while let Ok(Some(stanza)) = tokio::time::timeout(wait, self.sent.recv()).await {
            stanzas.push(stanza);
        }
        for stanza in stanzas {
            if let Stanza::Presence(p) = stanza {
                out.push((
                    p.type_,
                    p.from.map(|j| j.to_string()).unwrap_or_default(),
                    p.to.map(|j| j.to_string()).unwrap_or_default(),
                    p.show,
                ));
            }
        }
        out
    }

    /// Answers the gateway's vCard request to a contact, as its server would.
    async fn answer_vcard(&mut self, card: &str) {
        loop {
            let stanza = tokio::time::timeout(Duration::from_secs(5), self.sent.recv())
                .await
                .expect("a vCard request")
                .unwrap();
            if let Stanza::Iq(Iq::Get {
                from,
                to,
                id,
                payload,
            }) = &stanza
                && payload.is("vCard", "vcard-temp")
            {
                let answer = Iq::Result {
                    from: to.clone(),
                    to: from.clone(),
                    id: id.clone(),
                    payload: Some(card.parse().unwrap()),
                };
                self.bridge.handle(Stanza::Iq(answer)).await;
                return;
            }
            self.held.push(stanza);
        }
    }

    fn state(&self, remote: &str) -> Subscription {
        self.bridge.roster().get(&self.alice, remote)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_rfc_6121_and_survive_in_the_store() {
    let mut h = harness().await;
    common::bridge::set_teams_presence(
        &h.emulator,
        json!({"availability": "Busy", "activity": "InACall"}),
    )
    .await;
    let bob = "bob@xmpp.test";

    // A probe before any subscription: `unsubscribed`, no presence.
    h.receive(Type::Probe, "bob@xmpp.test", "alice@teams.test")
        .await;
    let sent = h.sent(Duration::from_millis(300)).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, Type::Unsubscribed);

    // Subscribe: approved from the bare JID, presence from the fixed resource,
    // and a request for Bob's presence.
    h.receive(Type::Subscribe, "bob@xmpp.test/pc", "alice@teams.test")
        .await;
    let sent = h.sent(Duration::from_millis(500)).await;
    let types: Vec<Type> = sent.iter().map(|s| s.0.clone()).collect();
    assert_eq!(
        types,
        [Type::Subscribed, Type::None, Type::Subscribe],
        "{sent:?}"
    );
    assert_eq!(sent[0].1, "alice@teams.test");
    assert_eq!(sent[1].1, "alice@teams.test/teams");
    assert_eq!(sent[1].3, Some(Show::Dnd));
    assert_eq!(
        h.state(bob),
        Subscription {
            from: true,
            to: false,
            pending_out: true
        }
    );
    // Stored, not only in memory.
    let stored = h.store.contacts_of(&h.alice).await.unwrap();
    assert_eq!(stored[0].state, "from+pending-out");

    // Bob's presence before he approved ours is not ours to show.
    h.receive(Type::None, "bob@xmpp.test/pc", "alice@teams.test")
        .await;
    // Approved: now it is.
    h.receive(Type::Subscribed, "bob@xmpp.test", "alice@teams.test")
        .await;
    assert_eq!(
        h.state(bob),
        Subscription {
            from: true,
            to: true,
            pending_out: false
        }
    );
    // A probe now gets Alice's presence.
    h.receive(Type::Probe, "bob@xmpp.test", "alice@teams.test")
        .await;
    let sent = h.sent(Duration::from_millis(300)).await;
    assert!(
        sent.iter()
            .any(|s| s.0 == Type::None && s.1 == "alice@teams.test/teams" && s.2 == bob),
        "{sent:?}"
    );

    // Unsubscribe: Bob gets Alice's unavailable presence and no longer her presence.
    h.receive(Type::Unsubscribe, "bob@xmpp.test", "alice@teams.test")
        .await;
    let sent = h.sent(Duration::from_millis(300)).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, Type::Unavailable);
    assert!(!h.state(bob).from && h.state(bob).to);
    // Unsubscribed: nothing left, in memory or the store.
    h.receive(Type::Unsubscribed, "bob@xmpp.test", "alice@teams.test")
        .await;
    assert_eq!(h.state(bob), Subscription::default());
    assert!(h.store.contacts_of(&h.alice).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_off_the_allow_list_do_not_exist() {
    let mut h = harness().await;
    for type_ in [Type::Subscribe, Type::Probe] {
        h.receive(type_, "bob@xmpp.test/pc", "carol@teams.test")
            .await;
    }
    let sent = h.sent(Duration::from_millis(300)).await;
    assert_eq!(
        sent.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
        [Type::Unsubscribed, Type::Unsubscribed],
        "the same answer as for a user who refuses: {sent:?}"
    );
    // Nobody was recorded and no shadow account made.
    assert!(h.store.contacts().await.unwrap().is_empty());
    assert!(h.store.shadow("bob@xmpp.test").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_drives_its_shadow_account_until_it_unsubscribes() {
    let mut h = harness().await;
    let (_inbox_open, inbox) = xmppfed_gateway::s2s::Inbox::channel(1);
    let run = tokio::spawn(h.bridge.clone().run(inbox));
    for type_ in [Type::Subscribe, Type::Subscribed] {
        h.receive(type_, "bob@xmpp.test/pc", "alice@teams.test")
            .await;
    }
    let mut dnd = Presence::new(Type::None);
    dnd.show = Some(Show::Dnd);
    dnd.from = Some("bob@xmpp.test/pc".parse().unwrap());
    dnd.to = Some("alice@teams.test".parse().unwrap());
    dnd.set_status("", "Focusing");
    h.bridge.handle(Stanza::Presence(dnd)).await;
    h.answer_vcard("<vCard xmlns='vcard-temp'/>").await;
    let upn = upn_for("bob@xmpp.test", "shadow.contoso.com");
    let shows = |h: &Harness| {
        let mut t = h.emulator.tenant();
        t.user_mut(&upn)
            .map(|u| u.presence.aggregate(Instant::now()))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while shows(&h) != Some(("DoNotDisturb".into(), "Presenting".into())) {
        assert!(
            Instant::now() < deadline,
            "shadow presence: {:?}",
            shows(&h)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bob withdraws his presence: the shadow account goes offline.
    h.receive(Type::Unsubscribed, "bob@xmpp.test", "alice@teams.test")
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while shows(&h) != Some(("Offline".into(), "Offline".into())) {
        assert!(
            Instant::now() < deadline,
            "shadow presence: {:?}",
            shows(&h)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = h.sent(Duration::from_millis(10)).await;
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_shadow_accounts_are_removed_from_tenant_and_store() {
    let mut h = harness().await;
    h.receive(Type::Subscribe, "bob@xmpp.test/pc", "alice@teams.test")
        .await;
    h.answer_vcard("<vCard xmlns='vcard-temp'><FN>Bob Builder</FN></vCard>")
        .await;
    let upn = upn_for("bob@xmpp.test", "shadow.contoso.com");
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.store.shadow("bob@xmpp.test").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no shadow account");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.emulator.tenant().user(&upn).unwrap().properties["displayName"],
        "Bob Builder (XMPP)"
    );
    // Used a moment ago: kept.
    let an_hour_ago = xmppfed_gateway::store::now() - 3600;
    assert_eq!(h.bridge.remove_unused_since(an_hour_ago).await.unwrap(), 0);
    // Unused, but Bob still receives Alice's presence: kept.
    let later = xmppfed_gateway::store::now() + 1;
    assert_eq!(h.bridge.remove_unused_since(later).await.unwrap(), 0);
    // No relationship left: removed, in the tenant and the store.
    for type_ in [Type::Unsubscribe, Type::Unsubscribed] {
        h.receive(type_, "bob@xmpp.test", "alice@teams.test").await;
    }
    assert_eq!(h.bridge.remove_unused_since(later).await.unwrap(), 1);
    assert!(h.emulator.tenant().user(&upn).is_none());
    assert!(h.store.shadow("bob@xmpp.test").await.unwrap().is_none());
    let _ = h.sent(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_leaving_the_allow_list_goes_offline_for_subscribers() {
    let mut h = harness().await;
    common::bridge::set_teams_presence(
        &h.emulator,
        json!({"availability": "Available", "activity": "Available"}),
    )
    .await;
    h.receive(Type::Subscribe, "bob@xmpp.test/pc", "alice@teams.test")
        .await;
    h.bridge.teams_presence().poll_once().await.unwrap();
    let sent = h.sent(Duration::from_millis(300)).await;
    assert!(
        sent.iter()
            .any(|s| s.0 == Type::None && s.1 == "alice@teams.test/teams"),
        "{sent:?}"
    );
    // Alice is taken off the allow list: Bob sees her go offline, once, and
    // nothing more of her.
    h.directory.set(Vec::new(), &LocalPartRule::UpnLocalPart);
    for _ in 0..2 {
        h.bridge.teams_presence().poll_once().await.unwrap();
    }
    let sent = h.sent(Duration::from_millis(300)).await;
    let from_alice: Vec<_> = sent.iter().filter(|s| s.1.starts_with("alice@")).collect();
    assert_eq!(from_alice.len(), 1, "{sent:?}");
    assert_eq!(from_alice[0].0, Type::Unavailable);
    assert_eq!(from_alice[0].2, "bob@xmpp.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_account_that_cannot_be_created_is_not_asked_for_again_at_once() {
    let mut h = harness().await;
    // The tenant refuses every call for a while (an outage, no licences left).
    h.emulator
        .control(
            "/_emulator/faults",
            json!({"status": 503, "count": 10_000, "retryAfter": 0}),
        )
        .await
        .unwrap();
    h.receive(Type::Subscribe, "bob@xmpp.test/pc", "alice@teams.test")
        .await;
    h.answer_vcard("<vCard xmlns='vcard-temp'><FN>Bob Builder</FN></vCard>")
        .await;
    let contacts = h.bridge.contacts().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !contacts.is_backing_off("bob@xmpp.test") {
        assert!(
            Instant::now() < deadline,
            "the failed creation was not noted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob's next stanzas need his shadow account: no call to the tenant
    // until the pause is over, and a clear error meanwhile.
    let calls = h.emulator.tenant().log.len();
    for _ in 0..5 {
        let e = contacts
            .shadow_of("bob@xmpp.test", "alice")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("trying again in"), "{e}");
    }
    assert_eq!(
        h.emulator.tenant().log.len(),
        calls,
        "the tenant was asked again"
    );
    assert!(h.store.shadow("bob@xmpp.test").await.unwrap().is_none());
    let _ = h.sent(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_card_requests_is_answered_within_a_bounded_amount_of_work() {
    let mut h = harness().await;
    // Graph is slow to answer (throttled): card reads pile up.
    h.emulator
        .control(
            "/_emulator/faults",
            json!({"status": 429, "count": 10_000, "retryAfter": 3}),
        )
        .await
        .unwrap();
    for i in 0..40 {
        let get = Iq::Get {
            from: Some("bob@xmpp.test/pc".parse().unwrap()),
            to: Some("alice@teams.test".parse().unwrap()),
            id: format!("card-{i}"),
            payload: xmpp_parsers::minidom::Element::builder("vCard", "vcard-temp").build(),
        };
        h.bridge.handle(Stanza::Iq(get)).await;
    }
    // 32 are being worked on; the other 8 are told at once to ask again.
    let mut told_to_wait = Vec::new();
    while let Ok(Some(stanza)) = tokio::time::timeout(Duration::from_secs(1), h.sent.recv()).await {
        if let Stanza::Iq(Iq::Error { id, error, .. }) = stanza {
            assert_eq!(
                error.defined_condition,
                xmpp_parsers::stanza_error::DefinedCondition::ResourceConstraint
            );
            told_to_wait.push(id);
        }
    }
    let expected: Vec<String> = (32..40).map(|i| format!("card-{i}")).collect();
    assert_eq!(told_to_wait, expected);
}
