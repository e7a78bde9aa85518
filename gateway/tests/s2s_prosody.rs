//! Federation with a real Prosody: a client on Prosody talks to a user of the
//! gateway's domain, and a test handler in the gateway answers through the
//! gateway's own outbound stream. Skips, saying so, when Prosody or the
//! Python client is missing (scripts/test.sh installs both).

use std::sync::{Arc, Mutex};

use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmppfed_config::{GatewayConfig, StaticRoute};
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};
use xmppfed_gateway::s2s::{AnyUser, S2s, S2sSender, Stanza};

const DOMAIN: &str = "teams.test";
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

fn gateway_config(
    prosody_s2s: u16,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> GatewayConfig {
    let tls_files = match &tls {
        Some((cert, key)) => format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    let mut config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = {}\n{tls_files}[allow]\nremote_domains = [\"{PEER}\"]\n",
        tls.is_some()
    ))
    .unwrap();
    config.s2s.static_routes = vec![StaticRoute {
        domain: PEER.into(),
        host: "127.0.0.1".into(),
        port: prosody_s2s,
    }];
    config
}

/// Answers like a Teams user would, and records what reached the bridge.
async fn echo_bridge(
    mut rx: tokio::sync::mpsc::Receiver<Stanza>,
    tx: S2sSender,
    seen: Arc<Mutex<Vec<String>>>,
) {
    while let Some(stanza) = rx.recv().await {
        let reply: Option<Stanza> = match &stanza {
            Stanza::Message(m) if m.type_ == MessageType::Chat => {
                let body = m
                    .get_best_body(vec![])
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                seen.lock().unwrap().push(format!("message:{body}"));
                let mut reply = Message::new_with_type(MessageType::Chat, m.from.clone())
                    .with_body(Lang::default(), format!("echo: {body}"));
                reply.from = m.to.clone();
                Some(Stanza::Message(reply))
            }
            Stanza::Presence(p) if p.type_ == PresenceType::Subscribe => {
                seen.lock().unwrap().push("subscribe".into());
                let from = p.to.clone().map(|j| Jid::from(j.to_bare()));
                let mut reply = Presence::subscribed();
                reply.from = from;
                reply.to = p.from.clone().map(|j| Jid::from(j.to_bare()));
                Some(Stanza::Presence(reply))
            }
            Stanza::Iq(Iq::Get {
                from,
                to,
                id,
                payload,
            }) if payload.is("vCard", "vcard-temp") => {
                seen.lock().unwrap().push("vcard".into());
                let card: Element = "<vCard xmlns='vcard-temp'><FN>Alice Teams</FN></vCard>"
                    .parse()
                    .unwrap();
                Some(Stanza::Iq(Iq::Result {
                    from: to.clone(),
                    to: from.clone(),
                    id: id.clone(),
                    payload: Some(card),
                }))
            }
            other => {
                seen.lock().unwrap().push(format!("other:{other:?}"));
                None
            }
        };
        if let Some(reply) = reply {
            tx.send(reply).await.unwrap();
        }
    }
}

async fn federate(tls: bool, bidi: bool) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let certs = tempfile::tempdir().unwrap();
    let gateway_tls = tls.then(|| prosody::self_signed(certs.path(), DOMAIN).unwrap());
    let prosody_s2s = prosody::free_port().unwrap();
    let metrics = xmppfed_telemetry::Metrics::new("test", "0");
    let (s2s, rx) = S2s::bind(
        &gateway_config(prosody_s2s, gateway_tls),
        Arc::new(AnyUser),
        &metrics,
    )
    .await
    .unwrap();
    let port = s2s.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(echo_bridge(rx, s2s.sender(), seen.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(s2s.serve(async {
        let _ = stopped.await;
    }));

    let prosody = Prosody::start(&ProsodyOptions {
        routes: vec![(DOMAIN.into(), port)],
        tls,
        bidi,
        s2s_port: Some(prosody_s2s),
        ..ProsodyOptions::new(PEER)
    })
    .unwrap();
    prosody.register("bob", "bobpw").unwrap();
    let python = prosody::python().unwrap();
    let result = tokio::task::spawn_blocking(move || {
        prosody::run_client(
            &python,
            "bob@xmpp.test",
            "bobpw",
            prosody.c2s_port,
            "alice@teams.test",
            &[
                "message",
                "disco_domain",
                "disco_user",
                "ping_domain",
                "subscribe",
                "vcard",
            ],
        )
        .map(|r| (r, prosody.log()))
    })
    .await
    .unwrap();
    let (result, log) = result.unwrap();
    if std::env::var_os("XMPPFED_TEST_SHOW_PEER_LOG").is_some() {
        eprintln!("{log}");
    }
    assert_eq!(
        result["ok"], true,
        "client failed: {result}\nprosody log:\n{log}"
    );
    assert_eq!(result["message"]["body"], "echo: hello from the XMPP side");
    assert_eq!(result["message"]["from"], "alice@teams.test");
    assert!(
        result["disco_domain"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "urn:xmpp:ping"),
        "{result}"
    );
    assert_eq!(result["disco_user"][0][0], "account");
    assert_eq!(result["ping_domain"], true);
    assert_eq!(result["subscribed"], "alice@teams.test");
    assert_eq!(result["vcard_fn"], "Alice Teams");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&"message:hello from the XMPP side".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"subscribe".to_owned()) && seen.contains(&"vcard".to_owned()),
        "{seen:?}"
    );
    let text = metrics.encode();
    assert!(
        text.contains("s2s_stanzas_total{direction=\"in\",domain=\"xmpp.test\",kind=\"message\"}"),
        "{text}"
    );
    let _ = stop.send(());
    server.await.unwrap();
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
