//! What the bridge's end-to-end tests share: the emulated tenant, the
//! gateway's configuration for it, the gateway run in the test's process,
//! and waiting for what XMPP clients and the tenant show.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xmppfed_config::{GatewayConfig, StaticRoute};
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_e2e::prosody::{Prosody, ProsodyOptions};
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_gateway::process::Gateway;

pub const DOMAIN: &str = "teams.test";
pub const PEER: &str = "xmpp.test";
pub const CLIENT_ID: &str = "0f0f0f0f-1111-4222-8333-444444444444";
pub const SKU: &str = "6af4b3d6-14bb-4a2a-960c-6c902aad34f3";
pub const SHADOW_DOMAIN: &str = "shadow.contoso.com";
pub const ALICE: &str = "alice@teams.test";
/// A 1×1 PNG.
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
];

pub fn seed() -> Seed {
    serde_json::from_value(json!({
        "tenantId": "5c0ffee0-0000-4000-8000-0000000000b1",
        "apps": [{"clientId": CLIENT_ID, "clientSecret": "s3cret",
                  "roles": ["User.ReadWrite.All", "GroupMember.Read.All", "Presence.ReadWrite.All",
                            "LicenseAssignment.ReadWrite.All", "ProfilePhoto.ReadWrite.All"],
                  "scopes": ["Presence.ReadWrite", "Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"]}],
        "users": [
            {"userPrincipalName": "alice@contoso.com", "displayName": "Alice Liddell",
             "jobTitle": "Engineer", "department": "R&D", "mail": "alice@contoso.com"},
            {"userPrincipalName": "carol@contoso.com", "displayName": "Carol Secret"}
        ],
        "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 10,
                  "servicePlans": ["TEAMS1", "EXCHANGE_S_STANDARD", "SHAREPOINTSTANDARD", "MCOSTANDARD"]}],
        // As in a real tenant: Teams works only for licensed users.
        "teams": {"requireLicence": true}
    }))
    .unwrap()
}

pub fn gateway_config(
    dir: &std::path::Path,
    emulator: &GraphEmulator,
    s2s_port: u16,
    peer_port: u16,
) -> GatewayConfig {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let key = dir.join("credential-key");
    std::fs::write(&key, "credential key of this gateway").unwrap();
    let text = format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n\
         [s2s]\nlisten = \"127.0.0.1:{s2s_port}\"\nrequire_tls = false\n\
         [webhook]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [graph]\ntenant_id = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"{}\" }}\n\
         authority_url = \"{}\"\ngraph_url = \"{}\"\n\
         [shadow_accounts]\nupn_domain = \"{SHADOW_DOMAIN}\"\nlicence_sku = \"{SKU}\"\n\
         credential_key = {{ file = \"{}\" }}\nusage_location = \"GB\"\n\
         [presence]\npoll_interval_ms = 500\n\
         [allow]\nremote_domains = [\"{PEER}\"]\ninternal_users = [\"alice@contoso.com\"]\n\
         [store]\nengine = \"sqlite\"\npath = \"{}\"\n",
        emulator.tenant().id,
        secret.display(),
        emulator.authority_url(),
        emulator.graph_url(),
        key.display(),
        dir.join("gateway.db").display(),
    );
    let mut config = GatewayConfig::from_toml_str(&text).unwrap();
    config.s2s.static_routes = vec![StaticRoute {
        domain: PEER.into(),
        host: "127.0.0.1".into(),
        port: peer_port,
    }];
    config
}

/// Turns Graph's change notifications on: the webhook on `port` of loopback.
pub fn with_webhook(config: &mut GatewayConfig, dir: &std::path::Path, port: u16) {
    let state = dir.join("client-state");
    std::fs::write(&state, "client state of this gateway").unwrap();
    config.webhook.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.webhook.public_url = Some(format!("http://127.0.0.1:{port}"));
    config.webhook.client_state = Some(xmppfed_config::SecretRef::File(state));
}

/// The gateway binary serving `config`, as the pod `pod` (a restarted
/// container takes its lease back at once) or, without one, as a process of
/// its own (holder: host name and pid).
pub fn gateway_process(config: &std::path::Path, pod: Option<&str>) -> xmppfed_e2e::daemon::Daemon {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_xmppfed-gateway"));
    command
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info");
    match pod {
        Some(pod) => command.env("POD_NAME", pod),
        None => command.env_remove("POD_NAME"),
    };
    xmppfed_e2e::daemon::Daemon::spawn(command).unwrap()
}

/// The gateway's s2s with TLS required and a certificate for our domain from
/// `ca`, which it also trusts: SASL EXTERNAL both ways with a Prosody of the same CA.
pub fn with_certificates(config: &mut GatewayConfig, ca: &xmppfed_e2e::prosody::TestCa) {
    let (cert, key) = ca.issue(DOMAIN).unwrap();
    config.s2s.require_tls = true;
    config.s2s.tls_cert_file = Some(cert);
    config.s2s.tls_key_file = Some(key);
    config.s2s.trust_roots_file = Some(ca.cert.clone());
}

/// Prosody for the peer domain with `bob` signed in, its s2s on
/// `prosody_s2s`, routing our domain to `gateway_port` over TLS with
/// certificates from `ca` (SASL EXTERNAL: Prosody enables XEP-0198).
pub fn prosody_with_certificates(
    gateway_port: u16,
    prosody_s2s: u16,
    ca: &std::sync::Arc<xmppfed_e2e::prosody::TestCa>,
) -> (Prosody, XmppClient) {
    prosody_with_bob(ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway_port)],
        tls: true,
        bidi: false,
        s2s_port: Some(prosody_s2s),
        ca: Some(ca.clone()),
        ..ProsodyOptions::new(PEER)
    })
}

/// The 1:1 chat between a Teams user and a shadow account, once it exists.
pub fn chat_between(emulator: &GraphEmulator, upn: &str, shadow_upn: &str) -> Option<String> {
    let tenant = emulator.tenant();
    let (a, b) = (
        tenant.user(upn)?.id.clone(),
        tenant.user(shadow_upn)?.id.clone(),
    );
    tenant
        .chats
        .iter()
        .find(|c| c.members.contains(&a) && c.members.contains(&b))
        .map(|c| c.id.clone())
}

/// The messages of a chat as (sender object id, HTML content), oldest first.
/// What a Teams user sees of an HTML body: the text, tags dropped and the
/// common entities decoded (written here, not taken from the gateway, so a
/// misunderstanding of Teams' HTML is not shared by the test).
pub fn shown(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

pub fn chat_messages(emulator: &GraphEmulator, chat_id: &str) -> Vec<(String, String)> {
    let tenant = emulator.tenant();
    tenant
        .chats
        .iter()
        .find(|c| c.id == chat_id)
        .map(|c| {
            c.messages
                .iter()
                .map(|m| {
                    (
                        m["from"]["user"]["id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        m["body"]["content"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Lifts the per-contact XMPP throttle, for benchmarks that flood on purpose.
pub fn without_per_contact_limits(config: &mut GatewayConfig) {
    config.throttle.default.messages_per_minute = 1_000_000;
    config.throttle.default.burst = 100_000;
    config.throttle.default.bytes_per_minute = 1 << 30;
}

/// The value at quantile `p` of `sorted` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The gateway, in this process, until `stop`.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn start_gateway(config: &GatewayConfig) -> Running {
    let gateway = Gateway::start(config).await.unwrap();
    let admin: SocketAddr = gateway.admin_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    // Ready once the internal allow list has been read.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = reqwest::get(format!("http://{admin}/readyz")).await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Running { stop, task }
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Waits for a client event without holding up the runtime's other tasks.
pub fn wait(client: &mut XmppClient, secs: u64, what: impl Fn(&Value) -> bool) -> Value {
    tokio::task::block_in_place(|| client.wait_for(Duration::from_secs(secs), what))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

pub async fn until<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn skip(installed: bool, name: &str) -> bool {
    match super::skip_reason(installed, name) {
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

/// Alice changes her presence in Teams.
pub async fn set_teams_presence(emulator: &GraphEmulator, body: Value) {
    emulator
        .control("/_emulator/users/alice@contoso.com/presence", body)
        .await
        .unwrap();
}

/// Alice writes in her chat with a shadow account (as the Teams client would);
/// `content_type` is `html` or `text`.
pub async fn alice_writes(emulator: &GraphEmulator, chat: &str, content: &str, content_type: &str) {
    emulator
        .control(
            &format!("/_emulator/chats/{chat}/messages"),
            json!({"from": "alice@contoso.com", "content": content, "contentType": content_type}),
        )
        .await
        .unwrap();
}

/// A Teams user starts a 1:1 chat (through the Teams client) with `with`;
/// returns its id.
pub async fn teams_user_starts_chat(emulator: &GraphEmulator, from: &str, with: &str) -> String {
    let chat = emulator
        .control("/_emulator/chats", json!({"from": from, "with": with}))
        .await
        .unwrap();
    chat["id"].as_str().unwrap().to_owned()
}

/// Prosody for the peer domain, started as `options` say, with `bob` signed in
/// through the slixmpp client.
pub fn prosody_with_bob(options: ProsodyOptions) -> (Prosody, XmppClient) {
    let server = Prosody::start(&options).unwrap();
    server.register("bob", "bobpw").unwrap();
    let bob = connect(&format!("bob@{}", options.domain), "bobpw", server.c2s_port);
    (server, bob)
}

/// A slixmpp client signed in on a server's c2s port.
pub fn connect(jid: &str, password: &str, c2s_port: u16) -> XmppClient {
    let python = xmppfed_e2e::prosody::python().expect("a Python with slixmpp");
    tokio::task::block_in_place(|| XmppClient::connect(&python, jid, password, c2s_port)).unwrap()
}
