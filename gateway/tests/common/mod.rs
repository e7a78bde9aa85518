//! What the federation tests against real servers share: the gateway's s2s
//! layer on a loopback port, and a bridge stand-in that answers like a Teams
//! user would.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmppfed_config::{GatewayConfig, StaticRoute};
use xmppfed_gateway::s2s::Inbox;
use xmppfed_gateway::s2s::{AnyUser, S2s, S2sSender, Stanza};

pub const DOMAIN: &str = "teams.test";

/// Every step the scripted client runs against `alice@teams.test`.
pub const ALL_STEPS: &[&str] = &[
    "message",
    "disco_domain",
    "disco_user",
    "ping_domain",
    "subscribe",
    "vcard",
];

/// `bob@xmpp.test`, a client on the peer server, runs every step against
/// `alice@teams.test`; returns what it saw and the peer server's log (taken
/// before the server, owned by `peer_log`, is stopped).
pub async fn converse<L>(c2s_port: u16, peer_log: L) -> (anyhow::Result<serde_json::Value>, String)
where
    L: FnOnce() -> String + Send + 'static,
{
    let python = xmppfed_e2e::prosody::python().expect("a Python with slixmpp");
    tokio::task::spawn_blocking(move || {
        let result = xmppfed_e2e::prosody::run_client(
            &python,
            "bob@xmpp.test",
            "bobpw",
            c2s_port,
            "alice@teams.test",
            ALL_STEPS,
        );
        (result, peer_log())
    })
    .await
    .expect("the client task")
}

/// The gateway's Graph client for the emulated tenant, signed in with an app secret.
pub fn graph_client(
    emulator: &xmppfed_e2e::graph::GraphEmulator,
    client_id: &str,
    secret: &str,
    retry: xmppfed_gateway::graph::RetryPolicy,
) -> xmppfed_gateway::graph::GraphClient {
    graph_client_with(
        emulator,
        client_id,
        secret,
        retry,
        xmppfed_gateway::graph::Budgets::uniform(200),
    )
}

/// The same, spending `budgets`.
pub fn graph_client_with(
    emulator: &xmppfed_e2e::graph::GraphEmulator,
    client_id: &str,
    secret: &str,
    retry: xmppfed_gateway::graph::RetryPolicy,
    budgets: xmppfed_gateway::graph::Budgets,
) -> xmppfed_gateway::graph::GraphClient {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::new();
    let tenant = emulator.tenant().id.clone();
    let tokens = xmppfed_gateway::graph::Tokens::new(
        http.clone(),
        &emulator.authority_url(),
        &tenant,
        client_id,
        secrecy::SecretString::from(secret.to_owned()),
    );
    xmppfed_gateway::graph::GraphClient::new(http, &emulator.graph_url(), tokens, budgets, retry)
}

/// Why a test against a real server cannot run on this machine, if it cannot.
pub fn skip_reason(server_installed: bool, server: &str) -> Option<String> {
    if !server_installed {
        return Some(format!("{server} is not installed"));
    }
    if xmppfed_e2e::prosody::python().is_none() {
        return Some("no Python with slixmpp (run scripts/test.sh)".into());
    }
    None
}

pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn config(peer: &str, peer_port: u16, tls: Option<(PathBuf, PathBuf)>) -> GatewayConfig {
    let tls_files = match &tls {
        Some((cert, key)) => format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    let mut config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = {}\n{tls_files}[allow]\nremote_domains = [\"{peer}\"]\n",
        tls.is_some()
    ))
    .unwrap();
    config.s2s.static_routes = vec![StaticRoute {
        domain: peer.into(),
        host: "127.0.0.1".into(),
        port: peer_port,
    }];
    config
}

/// A running s2s layer with the echo bridge behind it.
pub struct Running {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<String>>>,
    pub metrics: xmppfed_telemetry::Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(config: &GatewayConfig) -> Self {
        let metrics = xmppfed_telemetry::Metrics::new("test", "0");
        let (s2s, rx) = S2s::bind(config, Arc::new(AnyUser), &metrics)
            .await
            .unwrap();
        let port = s2s.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(echo_bridge(rx, s2s.sender(), seen.clone()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(s2s.serve(async {
            let _ = stopped.await;
        }));
        Self {
            port,
            seen,
            metrics,
            stop: Some(stop),
            server,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server).await.unwrap();
    }

    /// Asserts what the client saw and what reached the bridge.
    pub fn check(&self, result: &serde_json::Value, peer: &str, peer_log: &str) {
        assert_eq!(
            result["ok"], true,
            "client failed: {result}\npeer log:\n{peer_log}"
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
        let seen = self.seen.lock().unwrap().clone();
        assert!(
            seen.contains(&"message:hello from the XMPP side".to_owned()),
            "{seen:?}"
        );
        assert!(
            seen.contains(&"subscribe".to_owned()) && seen.contains(&"vcard".to_owned()),
            "{seen:?}"
        );
        let text = self.metrics.encode();
        let counted =
            format!("s2s_stanzas_total{{direction=\"in\",domain=\"{peer}\",kind=\"message\"}}");
        assert!(text.contains(&counted), "{text}");
    }
}

/// Answers like a Teams user would, and records what reached the bridge.
async fn echo_bridge(mut rx: Inbox, tx: S2sSender, seen: Arc<Mutex<Vec<String>>>) {
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
                let mut reply = Presence::subscribed();
                reply.from = p.to.clone().map(|j| Jid::from(j.to_bare()));
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

pub mod bridge;
pub mod graph_tenant;
pub mod scale;

/// The bridge's way out to XMPP as a channel the test reads.
pub struct ChannelOut(pub tokio::sync::mpsc::Sender<Stanza>);

impl xmppfed_gateway::bridge::XmppOut for ChannelOut {
    fn send(
        &self,
        stanza: Stanza,
    ) -> futures::future::BoxFuture<'_, Result<(), xmppfed_gateway::s2s::SendError>> {
        Box::pin(async move {
            self.0
                .send(stanza)
                .await
                .map_err(|_| xmppfed_gateway::s2s::SendError::Closed)
        })
    }
}
