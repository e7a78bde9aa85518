//! Federation with a real ejabberd 23.01 (no XEP-0288 bidi there): the same
//! conversation as with Prosody, over plain dialback and over TLS. Skips,
//! saying so, when ejabberd or the Python client is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use common::{DOMAIN, Running};
use xmppfed_e2e::ejabberd::{self, Ejabberd, EjabberdOptions};
use xmppfed_e2e::prosody;

const PEER: &str = "xmpp.test";

fn skip_reason() -> Option<String> {
    common::skip_reason(ejabberd::available(), "ejabberd (and erl)")
}

async fn federate(tls: bool) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    common::init();
    let certs = tempfile::tempdir().unwrap();
    let gateway_tls = tls.then(|| prosody::self_signed(certs.path(), DOMAIN).unwrap());
    let ejabberd_s2s = prosody::free_port().unwrap();
    let gateway = Running::start(&common::config(PEER, ejabberd_s2s, gateway_tls)).await;
    let port = gateway.port;
    let server = tokio::task::spawn_blocking(move || {
        Ejabberd::start(&EjabberdOptions {
            domain: PEER.into(),
            route: (DOMAIN.into(), port),
            tls,
            s2s_port: Some(ejabberd_s2s),
        })
    })
    .await
    .unwrap()
    .unwrap();
    server.register("bob", "bobpw").unwrap();
    let port = server.c2s_port;
    let (result, log) = common::converse(port, move || server.log()).await;
    gateway.check(&result.unwrap(), PEER, &log);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_plain_dialback() {
    federate(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_tls_and_dialback() {
    federate(true).await;
}
