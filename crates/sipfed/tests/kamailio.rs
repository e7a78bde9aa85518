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
use xmppfed_sipfed::{Edge, EdgeError};

const OURS: &str = "gw.test";

async fn edge(ca: &TestCa, name: &str) -> Arc<Edge> {
    let (cert, key) = ca.issue(name).unwrap();
    let credentials = Credentials::from_pem(&cert, &key, &ca.cert).unwrap();
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Arc::new(Edge::bind(listen, name, credentials).await.unwrap())
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
    let own = ours.options(at, NAME, &format!("sip:{NAME}")).await;
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
    let relayed = ours.options(at, NAME, &format!("sip:probe@{NAME}")).await;
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

    // A client whose certificate no trusted CA issued: Kamailio refuses the handshake.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_ca = TestCa::new(rogue_dir.path()).unwrap();
    let (cert, key) = rogue_ca.issue("rogue.test").unwrap();
    // It trusts Kamailio's CA, so the refusal is Kamailio's, not its own.
    let rogue = Edge::bind(
        "127.0.0.1:0".parse().unwrap(),
        "rogue.test",
        Credentials::from_pem(&cert, &key, &ca.cert).unwrap(),
    )
    .await
    .unwrap();
    let refused = rogue.options(at, NAME, &format!("sip:{NAME}")).await;
    assert!(
        matches!(refused, Err(EdgeError::Io(..) | EdgeError::Closed)),
        "Kamailio must refuse a certificate from an unknown CA: {refused:?}"
    );
    eprintln!(
        "Kamailio: answered our OPTIONS over mutual TLS; relayed one to our edge over its own TLS connection (its certificate proved its Via, {VIA_HOST}); refused a certificate of an unknown CA"
    );
}
