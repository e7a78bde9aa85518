//! The SIP federation route end to end (issue 17): Bob on a real Prosody,
//! the gateway with `teams.mode = "sip-federation"`, and a SIP edge standing
//! in for the Microsoft side (contoso.test's Access Edge, our own
//! `xmppfed_sipfed::Edge` over mutual TLS). Messages go both ways, exactly
//! once, and again after the gateway restarts on the same store (the
//! Microsoft side's session is stale then: 481, and a new session). A
//! message sent while the Microsoft side is unreachable waits in the outbox
//! across a restart and is delivered once it is up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::bridge::{PEER, connect};
use serde_json::{Value, json};
use xmppfed_config::{GatewayConfig, StaticRoute};
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions, TestCa};
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_gateway::process::Gateway;
use xmppfed_sipfed::tls::Credentials;
use xmppfed_sipfed::{Edge, ImEvent};

const DOMAIN: &str = "teams.test";
const PARTNER: &str = "contoso.test";
const ALICE_SIP: &str = "sip:alice@contoso.test";
const BOB_SIP: &str = "sip:bob@xmpp.test";

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    sip: SocketAddr,
}

async fn start(config: &GatewayConfig) -> Running {
    let gateway = Gateway::start(config).await.unwrap();
    let sip = gateway.sip_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    Running { stop, task, sip }
}

fn config(
    dir: &std::path::Path,
    ca: &TestCa,
    s2s: u16,
    peer_s2s: u16,
    microsoft: SocketAddr,
) -> GatewayConfig {
    let (cert, key) = ca.issue("gw.test").unwrap();
    let text = format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n\
         [s2s]\nlisten = \"127.0.0.1:{s2s}\"\nrequire_tls = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [teams]\nmode = \"sip-federation\"\n\
         [sip]\nlisten = \"127.0.0.1:0\"\nedge_fqdn = \"gw.test\"\npartner_domain = \"{PARTNER}\"\n\
         cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
         routes = [{{ domain = \"{PARTNER}\", host = \"127.0.0.1\", port = {} }}]\n\
         [allow]\nremote_domains = [\"{PEER}\"]\n\
         [store]\nengine = \"sqlite\"\npath = \"{}\"\n",
        cert.display(),
        key.display(),
        ca.cert.display(),
        microsoft.port(),
        dir.join("gateway.db").display(),
    );
    let mut config = GatewayConfig::from_toml_str(&text).unwrap();
    config.s2s.static_routes = vec![StaticRoute {
        domain: PEER.into(),
        host: "127.0.0.1".into(),
        port: peer_s2s,
    }];
    config
}

/// Microsoft's side at `at`: its edge certified for its FQDN and the
/// address the gateway's static route names; `refusing`: its external
/// access allows no domain of ours.
async fn microsoft_edge(ca: &TestCa, at: SocketAddr, refusing: bool) -> Arc<Edge> {
    let (cert, key) = ca
        .issue_for("sip.contoso.test", "DNS:sip.contoso.test,IP:127.0.0.1")
        .unwrap();
    let edge = Edge::bind(
        at,
        "sip.contoso.test",
        Credentials::from_pem(&cert, &key, &ca.cert).unwrap(),
    )
    .await
    .unwrap();
    let edge = Arc::new(if refusing {
        edge.allowing(|_| false)
    } else {
        edge
    });
    tokio::spawn(edge.clone().serve());
    edge
}

/// Prosody for Bob's domain, routing ours to the gateway's s2s port.
fn prosody_with_bob(s2s: u16, peer_s2s: u16) -> (Prosody, XmppClient) {
    let server = Prosody::start(&ProsodyOptions {
        routes: vec![(DOMAIN.into(), s2s)],
        s2s_port: Some(peer_s2s),
        ..ProsodyOptions::new(PEER)
    })
    .unwrap();
    server.register("bob", "bobpw").unwrap();
    let bob = connect("bob@xmpp.test", "bobpw", server.c2s_port);
    (server, bob)
}

/// Waits for what Microsoft's side receives.
async fn at_microsoft(
    events: &mut tokio::sync::broadcast::Receiver<ImEvent>,
) -> (String, String, String) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("the Microsoft side gets a message within 20 s")
            .unwrap();
        if let ImEvent::Message { from, to, text, .. } = event {
            return (from, to, text);
        }
    }
}

fn bob_gets(bob: &mut XmppClient, text: &str) {
    tokio::task::block_in_place(|| {
        bob.wait_for(Duration::from_secs(20), |e: &Value| {
            e["event"] == "message" && e["body"] == text
        })
    })
    .unwrap_or_else(|e| panic!("Bob never got {text:?}: {e:#}"));
}

fn times_bob_got(bob: &XmppClient, text: &str) -> usize {
    bob.seen()
        .iter()
        .filter(|e| e["event"] == "message" && e["body"] == text)
        .count()
}

/// A directory and a test CA, or `None` (saying why) without Prosody and
/// the Python client.
fn prepared() -> Option<(tempfile::TempDir, TestCa)> {
    if common::bridge::skip(
        prosody::available() && prosody::python().is_some(),
        "sip_federation",
    ) {
        return None;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    Some((dir, ca))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_to_skype_for_business_and_back_exactly_once_across_a_restart() {
    let Some((dir, ca)) = prepared() else {
        return;
    };
    let port = || prosody::free_port().unwrap();
    let (s2s, peer_s2s, microsoft_port) = (port(), port(), port());
    let microsoft_at: SocketAddr = format!("127.0.0.1:{microsoft_port}").parse().unwrap();
    let config = config(dir.path(), &ca, s2s, peer_s2s, microsoft_at);
    let mut gateway = start(&config).await;
    let (_server, mut bob) = prosody_with_bob(s2s, peer_s2s);

    // The Microsoft side is down: Bob's message waits in the outbox, and the
    // gateway restarts meanwhile.
    let waited = "Sent while Skype for Business was unreachable";
    bob.command(
        json!({"cmd": "message", "to": "alice@teams.test", "body": waited, "id": "m-down"}),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = gateway.stop.send(());
    gateway.task.await.unwrap().unwrap();

    // Microsoft's side comes up.
    let microsoft = microsoft_edge(&ca, microsoft_at, false).await;
    let mut received = microsoft.im_events();
    gateway = start(&config).await;
    assert_eq!(
        at_microsoft(&mut received).await,
        (BOB_SIP.to_owned(), ALICE_SIP.to_owned(), waited.to_owned()),
        "the message kept across the restart is delivered once the Microsoft side is up"
    );

    for round in ["before", "after"] {
        let to_teams = format!("Hello Skype for Business ({round} the restart)");
        bob.command(json!({"cmd": "message", "to": "alice@teams.test", "body": to_teams, "id": format!("m-{round}")}))
            .unwrap();
        assert_eq!(
            at_microsoft(&mut received).await,
            (BOB_SIP.to_owned(), ALICE_SIP.to_owned(), to_teams.clone())
        );
        let to_xmpp = format!("Hello XMPP ({round} the restart)");
        microsoft
            .send_im((gateway.sip, "gw.test"), ALICE_SIP, BOB_SIP, &to_xmpp)
            .await
            .unwrap();
        bob_gets(&mut bob, &to_xmpp);
        if round == "before" {
            // The gateway restarts on the same store: new process state, new SIP port.
            let _ = gateway.stop.send(());
            gateway.task.await.unwrap().unwrap();
            gateway = start(&config).await;
        }
    }
    // Exactly once, both ways: nothing more arrives in a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| bob.drain(Duration::from_millis(500)));
    for round in ["before", "after"] {
        assert_eq!(
            times_bob_got(&bob, &format!("Hello XMPP ({round} the restart)")),
            1
        );
    }
    assert!(
        received.try_recv().is_err(),
        "the Microsoft side got nothing twice"
    );
    let _ = gateway.stop.send(());
    let _ = gateway.task.await;
    eprintln!(
        "SIP federation: a message kept across a restart while the Microsoft side was down, then Bob ⇄ Alice both ways before and after another restart, each message once"
    );
}

/// The Microsoft side refuses the sender's domain (403 with its
/// diagnostic): Bob's message comes back to him as an error saying so,
/// not silence, and is not tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_the_microsoft_side_comes_back_to_the_sender() {
    let Some((dir, ca)) = prepared() else {
        return;
    };
    // Its external access allows no domain of ours.
    let microsoft = microsoft_edge(&ca, "127.0.0.1:0".parse().unwrap(), true).await;
    let port = || prosody::free_port().unwrap();
    let (s2s, peer_s2s) = (port(), port());
    let config = config(
        dir.path(),
        &ca,
        s2s,
        peer_s2s,
        microsoft.local_addr().unwrap(),
    );
    let gateway = start(&config).await;
    let (_server, mut bob) = prosody_with_bob(s2s, peer_s2s);
    bob.command(json!({"cmd": "message", "to": "alice@teams.test", "body": "are we federated?", "id": "m-refused"}))
        .unwrap();
    let bounced = tokio::task::block_in_place(|| {
        bob.wait_for(Duration::from_secs(20), |e: &Value| {
            e["event"] == "message" && e["id"] == "m-refused" && e["error"].is_string()
        })
    })
    .unwrap_or_else(|e| panic!("no error came back to Bob: {e:#}"));
    let text = bounced["error_text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(bounced["error"], "forbidden", "{bounced}");
    assert!(text.contains("403") && text.contains("1002"), "{text}");
    eprintln!("SIP federation: refused by the Microsoft side, Bob read: {text}");
    let _ = gateway.stop.send(());
    let _ = gateway.task.await;
}
