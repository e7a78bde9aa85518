//! The edge against an independent SIP implementation: Kamailio with its TLS
//! module (Debian's packages; scripts/install-test-deps.sh installs them),
//! started on 127.0.0.1 by the test. Mutual TLS both ways with certificates
//! from the test's CA. Skipped, saying so, where Kamailio is not installed,
//! unless XMPPFED_TEST_KAMAILIO=required (CI), when that fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use xmppfed_e2e::kamailio::{self, Kamailio, NAME, VIA_HOST};
use xmppfed_e2e::prosody::TestCa;
use xmppfed_sipfed::edge::status_of;
use xmppfed_sipfed::tls::Credentials;
use xmppfed_sipfed::{Edge, EdgeError, ImEvent};

const OURS: &str = "gw.test";

async fn edge(ca: &TestCa, name: &str) -> Arc<Edge> {
    let (cert, key) = ca.issue(name).unwrap();
    let credentials = Credentials::from_pem(&cert, &key, &ca.cert).unwrap();
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let edge = Edge::bind(listen, name, credentials).await.unwrap();
    // Our edge lets in the Skype for Business stand-in's domain only.
    Arc::new(if name == OURS {
        edge.allowing(|domain| domain == "sfb.test")
    } else {
        edge
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kamailio_accepts_our_tls_sip_and_we_accept_its() {
    if !kamailio::available() {
        assert!(
            std::env::var("XMPPFED_TEST_KAMAILIO").as_deref() != Ok("required"),
            "XMPPFED_TEST_KAMAILIO=required but Kamailio with its TLS module is not installed"
        );
        eprintln!(
            "skipped: Kamailio with its TLS module is not installed (scripts/install-test-deps.sh)"
        );
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let ours = edge(&ca, OURS).await;
    let mut answered = ours.answered();
    let port = ours.local_addr().unwrap().port();
    tokio::spawn(ours.clone().serve());
    let kamailio = tokio::task::block_in_place(|| Kamailio::start(dir.path(), &ca, port)).unwrap();
    let at: SocketAddr = format!("127.0.0.1:{}", kamailio.port).parse().unwrap();

    // Kamailio answers our OPTIONS for itself: it accepted our certificate,
    // our TLS and our SIP.
    let own = ours.options((at, NAME), None, &format!("sip:{NAME}")).await;
    let own = own.unwrap_or_else(|e| panic!("{e}\nKamailio:\n{}", kamailio.log()));
    assert_eq!(
        status_of(&own),
        200,
        "{}",
        String::from_utf8_lossy(&own.to_bytes())
    );

    // OPTIONS for a user there: Kamailio relays it to our edge over a TLS
    // connection of its own, with its client certificate; we answer, and
    // our answer comes back through it.
    let relayed = ours
        .options((at, NAME), None, &format!("sip:probe@{NAME}"))
        .await;
    let relayed = relayed.unwrap_or_else(|e| panic!("{e}\nKamailio:\n{}", kamailio.log()));
    assert_eq!(
        status_of(&relayed),
        200,
        "{}",
        String::from_utf8_lossy(&relayed.to_bytes())
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), answered.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.peer.as_str(), seen.status),
        ("OPTIONS", VIA_HOST, 200),
        "our edge answered Kamailio, whose certificate proved its Via's host"
    );

    im_both_ways(&ca, &ours, at, &kamailio).await;

    // A client whose certificate no trusted CA issued: Kamailio refuses the handshake.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_ca = TestCa::new(rogue_dir.path()).unwrap();
    let (cert, key) = rogue_ca.issue("rogue.test").unwrap();
    // It trusts Kamailio's CA, so the refusal is Kamailio's, not its own.
    let rogue = Arc::new(
        Edge::bind(
            "127.0.0.1:0".parse().unwrap(),
            "rogue.test",
            Credentials::from_pem(&cert, &key, &ca.cert).unwrap(),
        )
        .await
        .unwrap(),
    );
    let refused = rogue
        .options((at, NAME), None, &format!("sip:{NAME}"))
        .await;
    assert!(
        matches!(refused, Err(EdgeError::Io(..) | EdgeError::Closed)),
        "Kamailio must refuse a certificate from an unknown CA: {refused:?}"
    );
    eprintln!(
        "Kamailio: answered our OPTIONS over mutual TLS; relayed one to our edge over its own TLS connection (its certificate proved its Via, {VIA_HOST}); refused a certificate of an unknown CA"
    );
}

async fn next_message(
    events: &mut tokio::sync::broadcast::Receiver<ImEvent>,
) -> (String, String, String) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an IM event within 10 s")
            .unwrap();
        if let ImEvent::Message { from, to, text, .. } = event {
            return (from, to, text);
        }
    }
}

/// 1:1 IM as Microsoft federates it, between our edge and another edge
/// standing in for Skype for Business ("sfb.test"): its INVITE, carrying the
/// first message, and its in-dialog MESSAGE go through Kamailio, which
/// parses and relays them and our answers; our answer goes back in the
/// session it opened; and when that peer has lost the session (481), ours
/// starts a new one.
async fn im_both_ways(ca: &TestCa, ours: &Arc<Edge>, kamailio_at: SocketAddr, kamailio: &Kamailio) {
    let (alice, bob) = ("sip:alice@sfb.test", "sip:bob@gw.test");
    let mut at_ours = ours.im_events();
    let sfb = edge(ca, "sfb.test").await;
    let sfb_at = sfb.local_addr().unwrap();
    let mut at_sfb = sfb.im_events();
    tokio::spawn(sfb.clone().serve());

    for text in ["Hello from Skype for Business", "and a second line"] {
        sfb.send_im((kamailio_at, NAME), alice, bob, text)
            .await
            .unwrap_or_else(|e| panic!("{e}\nKamailio:\n{}", kamailio.log()));
        assert_eq!(
            next_message(&mut at_ours).await,
            (alice.to_owned(), bob.to_owned(), text.to_owned()),
            "through Kamailio, first in the INVITE, then in-dialog"
        );
    }
    assert_eq!(
        sfb.connections_open(),
        1,
        "INVITE, ACK and MESSAGE went on one connection to Kamailio"
    );
    ours.send_im((sfb_at, "sfb.test"), bob, alice, "Hello back from XMPP")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut at_sfb).await,
        (
            bob.to_owned(),
            alice.to_owned(),
            "Hello back from XMPP".to_owned()
        )
    );

    // The peer restarted and lost the session: 481, then a new session.
    let restarted = edge(ca, "sfb.test").await;
    let restarted_at = restarted.local_addr().unwrap();
    let mut at_restarted = restarted.im_events();
    tokio::spawn(restarted.clone().serve());
    ours.send_im((restarted_at, "sfb.test"), bob, alice, "after your restart")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut at_restarted).await,
        (
            bob.to_owned(),
            alice.to_owned(),
            "after your restart".to_owned()
        )
    );
    // A domain our allow list does not name: 403, and Microsoft's diagnostic says why.
    let blocked = edge(ca, "blocked.test").await;
    let refused = blocked
        .send_im(
            (kamailio_at, NAME),
            "sip:eve@blocked.test",
            bob,
            "let me in",
        )
        .await;
    match refused {
        Err(EdgeError::Refused {
            status: 403,
            diagnostics,
        }) => {
            assert!(diagnostics.starts_with("1002;"), "{diagnostics}")
        }
        other => {
            panic!("a domain not allowed must get 403 with ms-diagnostics-public 1002: {other:?}")
        }
    }
    eprintln!(
        "IM: two messages from the Skype for Business stand-in through Kamailio (INVITE with the first, then in-dialog MESSAGE), one back in its session, a new session after a 481, and 403 (ms-diagnostics-public 1002) for a domain not allowed"
    );
}
