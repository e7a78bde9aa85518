//! Federation with a real Prosody: a client on Prosody talks to a user of the
//! gateway's domain, and the test bridge answers through the gateway's own
//! outbound stream. Skips, saying so, when Prosody or the Python client is
//! missing (scripts/test.sh installs both).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use common::{DOMAIN, Running};
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};

const PEER: &str = "xmpp.test";

fn skip_reason() -> Option<String> {
    common::skip_reason(prosody::available(), "prosody")
}

async fn federate(tls: bool, bidi: bool) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    common::init();
    let certs = tempfile::tempdir().unwrap();
    let gateway_tls = tls.then(|| prosody::self_signed(certs.path(), DOMAIN).unwrap());
    let prosody_s2s = prosody::free_port().unwrap();
    let gateway = Running::start(&common::config(PEER, prosody_s2s, gateway_tls)).await;
    let prosody = Prosody::start(&ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway.port)],
        tls,
        bidi,
        s2s_port: Some(prosody_s2s),
        ..ProsodyOptions::new(PEER)
    })
    .unwrap();
    prosody.register("bob", "bobpw").unwrap();
    let port = prosody.c2s_port;
    let (result, log) = common::converse(port, move || prosody.log()).await;
    gateway.check(&result.unwrap(), PEER, &log);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_plain_dialback_with_bidi() {
    federate(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_plain_dialback_without_bidi() {
    federate(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_tls_and_dialback() {
    federate(true, true).await;
}

/// Certificates from one CA on both sides, and Prosody refusing dialback
/// (s2s_secure_auth): both directions must authenticate with SASL EXTERNAL.
/// Without bidi, so that our replies need a stream of our own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_sasl_external_both_ways() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    common::init();
    let pki = tempfile::tempdir().unwrap();
    let ca = std::sync::Arc::new(prosody::TestCa::new(pki.path()).unwrap());
    let prosody_s2s = prosody::free_port().unwrap();
    let mut config = common::config(PEER, prosody_s2s, Some(ca.issue(DOMAIN).unwrap()));
    config.s2s.trust_roots_file = Some(ca.cert.clone());
    let gateway = Running::start(&config).await;
    let prosody = Prosody::start(&ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway.port)],
        tls: true,
        bidi: false,
        s2s_port: Some(prosody_s2s),
        ca: Some(ca.clone()),
        ..ProsodyOptions::new(PEER)
    })
    .unwrap();
    prosody.register("bob", "bobpw").unwrap();
    let port = prosody.c2s_port;
    let (result, log) = common::converse(port, move || prosody.log()).await;
    gateway.check(&result.unwrap(), PEER, &log);
    let text = gateway.metrics.encode();
    for direction in ["in", "out"] {
        let line = format!(
            "s2s_authentications_total{{method=\"sasl-external-{direction}\",outcome=\"valid\"}}"
        );
        assert!(
            text.contains(&line),
            "no {line}:\n{text}\nprosody log:\n{log}"
        );
    }
    assert!(
        !text.contains("method=\"dialback-in\""),
        "dialback was used:\n{text}"
    );
    gateway.stop().await;
}
