//! Federation with a real Prosody: a client on Prosody talks to a user of the
//! gateway's domain, and the test bridge answers through the gateway's own
//! outbound stream. Skips, saying so, when Prosody or the Python client is
//! missing (scripts/test.sh installs both).

mod common;

use common::{ALL_STEPS, DOMAIN, Running};
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};

const PEER: &str = "xmpp.test";

fn skip_reason() -> Option<String> {
    if !prosody::available() {
        return Some("prosody is not installed".into());
    }
    if prosody::python().is_none() {
        return Some("no Python with slixmpp (run scripts/test.sh)".into());
    }
    None
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
    let python = prosody::python().unwrap();
    let (result, log) = tokio::task::spawn_blocking(move || {
        let result = prosody::run_client(
            &python,
            "bob@xmpp.test",
            "bobpw",
            prosody.c2s_port,
            "alice@teams.test",
            ALL_STEPS,
        );
        (result, prosody.log())
    })
    .await
    .unwrap();
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
