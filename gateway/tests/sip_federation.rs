//! The SIP federation route end to end (issue 17): Bob on a real Prosody,
//! the gateway with `teams.mode = "sip-federation"`, and contoso.test's
//! Skype for Business Access Edge: the fake edge of `xmppfed_e2e::access_edge`,
//! written apart from the gateway's SIP code and enforcing Microsoft's
//! documented rules (mutual TLS, the partner's FQDN in its certificate,
//! allowed and blocked domains, diagnostics, the IM dialog flow). Messages
//! go both ways, exactly once, and again after the gateway restarts on the
//! same store (the Microsoft side's session is stale then: 481, and a new
//! session). A message sent while the Microsoft side is unreachable waits
//! in the outbox across a restart and is delivered once it is up. Typing
//! crosses both ways as XEP-0085 chat states. With two replicas on one
//! store only the lease holder runs the route.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::bridge::{PEER, connect};
use serde_json::{Value, json};
use xmppfed_config::{GatewayConfig, StaticRoute};
use xmppfed_e2e::access_edge::policy::{AllowedDomain, Policy};
use xmppfed_e2e::access_edge::{AccessEdge, Received};
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions, TestCa};
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_gateway::process::Gateway;

const DOMAIN: &str = "teams.test";
const PARTNER: &str = "contoso.test";
const ALICE_SIP: &str = "sip:alice@contoso.test";
const BOB_SIP: &str = "sip:bob@xmpp.test";

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    sip: SocketAddr,
    admin: SocketAddr,
}

async fn start(config: &GatewayConfig) -> Running {
    let gateway = Gateway::start(config).await.unwrap();
    let (sip, admin) = (gateway.sip_addr().unwrap(), gateway.admin_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    Running {
        stop,
        task,
        sip,
        admin,
    }
}

async fn admin_get(gateway: &Running, path: &str) -> String {
    let url = format!("http://{}{path}", gateway.admin);
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// `/readyz` once `until` holds of it (the partner is probed as the route
/// starts, and again after a message once it had refused).
async fn readyz(gateway: &Running, what: &str, until: impl Fn(&str) -> bool) -> String {
    // The probe waits 5 s between two rounds, and each round may follow a
    // message it is woken for: 30 s is two rounds and then some.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = admin_get(gateway, "/readyz").await;
        if until(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: /readyz says {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sample's value on `/metrics` (0 when absent), matching `labels`.
async fn metric(gateway: &Running, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = admin_get(gateway, "/metrics").await;
    let scrape = xmppfed_e2e::metrics::parse(&text).unwrap();
    let samples = xmppfed_e2e::metrics::samples(&scrape, name);
    let sample = samples
        .iter()
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    use prometheus_parse::Value;
    match sample.map(|s| &s.value) {
        // A counter's `_total` sample reads as untyped to this parser.
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(other) => panic!("{name}: {other:?}"),
        None => 0.0,
    }
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

/// Contoso's Access Edge as its admin set it up for us: federation on,
/// `New-CsAllowedDomain -Identity xmpp.test -ProxyFqdn gw.test`, Alice its
/// user; `diagnostics`: `-SendToExternalNetworks` (off by default).
fn contoso_policy(diagnostics: bool) -> Policy {
    Policy {
        allow_federated_users: true,
        enable_partner_discovery: false,
        allowed: vec![AllowedDomain {
            domain: PEER.into(),
            proxy_fqdn: Some("gw.test".into()),
        }],
        blocked: Vec::new(),
        send_diagnostics_to_external: diagnostics,
        users: vec![ALICE_SIP.into()],
    }
}

/// Microsoft's side at `at`: its edge certified for its FQDN and the
/// address the gateway's static route names.
async fn microsoft_edge(ca: &TestCa, at: SocketAddr, policy: Policy) -> AccessEdge {
    let (cert, key) = ca
        .issue_for("sip.contoso.test", "DNS:sip.contoso.test,IP:127.0.0.1")
        .unwrap();
    AccessEdge::start(at, "sip.contoso.test", (&cert, &key, &ca.cert), policy)
        .await
        .unwrap()
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

/// The messages Microsoft's side received, in order.
fn messages(received: &[Received]) -> Vec<(String, String, String)> {
    received
        .iter()
        .filter_map(|r| match r {
            Received::Message { from, to, text } => Some((from.clone(), to.clone(), text.clone())),
            _ => None,
        })
        .collect()
}

/// Waits until Microsoft's side has received `text`.
async fn at_microsoft(microsoft: &AccessEdge, text: &str) {
    microsoft
        .wait_for(Duration::from_secs(20), |r| {
            messages(r).iter().any(|(_, _, t)| t == text)
        })
        .await
        .unwrap_or_else(|e| panic!("the Microsoft side never got {text:?}: {e:#}"));
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

async fn stop(gateway: Running) {
    let _ = gateway.stop.send(());
    gateway.task.await.unwrap().unwrap();
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
    let down = readyz(&gateway, "the partner's edge is down", |t| {
        t.contains("sip-partner: degraded: PartnerUnreachable")
    })
    .await;
    assert!(down.starts_with("ok\n"), "degraded, still ready: {down}");

    // The Microsoft side is down: Bob's message waits in the outbox, and the
    // gateway restarts meanwhile.
    let waited = "Sent while Skype for Business was unreachable";
    bob.command(
        json!({"cmd": "message", "to": "alice@teams.test", "body": waited, "id": "m-down"}),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(gateway).await;

    // Microsoft's side comes up.
    let microsoft = microsoft_edge(&ca, microsoft_at, contoso_policy(false)).await;
    gateway = start(&config).await;
    microsoft.route(PEER, gateway.sip);
    at_microsoft(&microsoft, waited).await;
    readyz(&gateway, "the partner takes us", |t| t == "ok\n").await;
    let reachable = metric(&gateway, "xmppfed_sip_partner_reachable", &[]).await;
    assert_eq!(reachable, 1.0);

    for round in ["before", "after"] {
        let to_teams = format!("Hello Skype for Business ({round} the restart)");
        bob.command(json!({"cmd": "message", "to": "alice@teams.test", "body": to_teams, "id": format!("m-{round}")}))
            .unwrap();
        at_microsoft(&microsoft, &to_teams).await;
        let to_xmpp = format!("Hello XMPP ({round} the restart)");
        let status = microsoft
            .send_im(ALICE_SIP, BOB_SIP, &to_xmpp)
            .await
            .unwrap();
        assert_eq!(status, 200, "the gateway takes Alice's message");
        bob_gets(&mut bob, &to_xmpp);
        if round == "before" {
            // The gateway restarts on the same store: new process state, new SIP port.
            stop(gateway).await;
            gateway = start(&config).await;
            microsoft.route(PEER, gateway.sip);
        }
    }

    typing_crosses_both_ways(&microsoft, &mut bob).await;
    assert!(
        microsoft.ping(PEER).await.unwrap(),
        "the gateway answers a double-CRLF keep-alive with a CRLF"
    );

    // Exactly once, both ways: nothing more arrives in a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| bob.drain(Duration::from_millis(500)));
    for round in ["before", "after"] {
        assert_eq!(
            times_bob_got(&bob, &format!("Hello XMPP ({round} the restart)")),
            1
        );
    }
    let got = messages(&microsoft.received());
    let expected: Vec<_> = [
        waited.to_owned(),
        "Hello Skype for Business (before the restart)".to_owned(),
        "Hello Skype for Business (after the restart)".to_owned(),
    ]
    .into_iter()
    .map(|text| (BOB_SIP.to_owned(), ALICE_SIP.to_owned(), text))
    .collect();
    assert_eq!(
        got, expected,
        "the Microsoft side got each message once, in order"
    );
    // Since the last restart: one message each way, counted as Graph's are.
    for direction in ["to-teams", "to-xmpp"] {
        for (outcome, count) in [("accepted", 1.0), ("delivered", 1.0), ("failed", 0.0)] {
            let labels = [("direction", direction), ("outcome", outcome)];
            let counted = metric(&gateway, "xmppfed_messages_total", &labels).await;
            assert_eq!(counted, count, "{direction} {outcome}");
        }
    }
    stop(gateway).await;
    eprintln!(
        "SIP federation: a message kept across a restart while the Microsoft side was down, then Bob ⇄ Alice both ways before and after another restart, each message once; typing both ways"
    );
}

async fn bob_types_and_alice_sees_it(microsoft: &AccessEdge, bob: &mut XmppClient) {
    bob.command(json!({"cmd": "chat_state", "to": "alice@teams.test", "state": "composing"}))
        .unwrap();
    microsoft
        .wait_for(Duration::from_secs(20), |r| {
            r.contains(&Received::Typing {
                from: BOB_SIP.into(),
                to: ALICE_SIP.into(),
                active: true,
            })
        })
        .await
        .expect("Alice sees Bob typing");
}

/// XEP-0085 ⇄ `KeyboardActivity`, inside the session the messages opened,
/// and Alice leaving the session (BYE) is `gone` for Bob.
async fn typing_crosses_both_ways(microsoft: &AccessEdge, bob: &mut XmppClient) {
    bob_types_and_alice_sees_it(microsoft, bob).await;
    assert_eq!(
        microsoft
            .send_typing(ALICE_SIP, BOB_SIP, true)
            .await
            .unwrap(),
        200
    );
    bob_sees_state(bob, "composing");
    assert_eq!(microsoft.bye(ALICE_SIP, BOB_SIP).await.unwrap(), 200);
    bob_sees_state(bob, "gone");
}

fn bob_sees_state(bob: &mut XmppClient, state: &str) {
    tokio::task::block_in_place(|| {
        bob.wait_for(Duration::from_secs(20), |e: &Value| {
            e["event"] == "message" && e["chat_state"] == state && e["from"] == "alice@teams.test"
        })
    })
    .unwrap_or_else(|e| panic!("Bob never saw Alice {state}: {e:#}"));
}

/// Bob sends to `to`, and returns the error that comes back.
fn bounced(bob: &mut XmppClient, to: &str, id: &str) -> (String, String) {
    bob.command(json!({"cmd": "message", "to": to, "body": "are we federated?", "id": id}))
        .unwrap();
    let bounced = tokio::task::block_in_place(|| {
        bob.wait_for(Duration::from_secs(20), |e: &Value| {
            e["event"] == "message" && e["id"] == id && e["error"].is_string()
        })
    })
    .unwrap_or_else(|e| panic!("no error came back to Bob: {e:#}"));
    let text = bounced["error_text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (
        bounced["error"].as_str().unwrap_or_default().to_owned(),
        text,
    )
}

/// The Microsoft side refuses: Bob's message comes back to him as an error
/// saying why, not silence, and is not tried again. A blocked domain is
/// 403, with [MS-OCER] 1002 when the edge tells external networks (and
/// only "Forbidden" when it does not, Skype for Business' default); a
/// user the edge does not have is 404, item-not-found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_the_microsoft_side_comes_back_to_the_sender() {
    let Some((dir, ca)) = prepared() else {
        return;
    };
    let mut policy = contoso_policy(true);
    policy.blocked = vec![PEER.into()];
    let microsoft = microsoft_edge(&ca, "127.0.0.1:0".parse().unwrap(), policy).await;
    let port = || prosody::free_port().unwrap();
    let (s2s, peer_s2s) = (port(), port());
    let config = config(dir.path(), &ca, s2s, peer_s2s, microsoft.addr);
    let gateway = start(&config).await;
    let (_server, mut bob) = prosody_with_bob(s2s, peer_s2s);
    // Before anyone writes, the probe says what contoso.test must change.
    let refused = readyz(&gateway, "the partner blocks xmpp.test", |t| {
        t.contains("sip-partner: degraded: PartnerRefusesDomain")
    })
    .await;
    assert!(
        refused.contains("1002")
            && refused.contains("New-CsAllowedDomain -Identity xmpp.test -ProxyFqdn gw.test"),
        "{refused}"
    );
    eprintln!("SIP federation: /readyz before any message: {refused}");
    let reachable = metric(&gateway, "xmppfed_sip_partner_reachable", &[]).await;
    assert_eq!(reachable, 0.0);

    let (condition, text) = bounced(&mut bob, "alice@teams.test", "m-blocked");
    assert_eq!(condition, "forbidden", "{text}");
    assert!(text.contains("403") && text.contains("1002"), "{text}");
    eprintln!("SIP federation: blocked by the Microsoft side, Bob read: {text}");

    microsoft.policy(|p| p.send_diagnostics_to_external = false);
    let (condition, quiet) = bounced(&mut bob, "alice@teams.test", "m-blocked-quiet");
    assert_eq!(condition, "forbidden", "{quiet}");
    assert!(quiet.contains("403") && !quiet.contains("1002"), "{quiet}");

    microsoft.policy(|p| {
        p.blocked.clear();
        p.send_diagnostics_to_external = true;
    });
    let (condition, text) = bounced(&mut bob, "carol@teams.test", "m-nobody");
    assert_eq!(condition, "item-not-found", "{text}");
    assert!(text.contains("404") && text.contains("1003"), "{text}");
    assert!(
        messages(&microsoft.received()).is_empty(),
        "nothing refused reached a user"
    );
    // The refusal answered after the fix (404, a user) asks the partner again.
    readyz(&gateway, "contoso.test unblocked xmpp.test", |t| {
        t == "ok\n"
    })
    .await;
    let failed = [("direction", "to-teams"), ("outcome", "failed")];
    assert_eq!(
        metric(&gateway, "xmppfed_messages_total", &failed).await,
        3.0
    );

    // Someone with a valid certificate for a name of their own, claiming
    // to be contoso.test: refused, since the certificate does not prove a
    // name that speaks for the partner (403, [MS-OCER] 1010), and nothing
    // reaches Bob.
    let (cert, key) = ca.issue_for("sip.evil.test", "DNS:sip.evil.test").unwrap();
    let impostor = AccessEdge::start(
        "127.0.0.1:0".parse().unwrap(),
        "sip.evil.test",
        (&cert, &key, &ca.cert),
        contoso_policy(false),
    )
    .await
    .unwrap();
    impostor.route(PEER, gateway.sip);
    let status = impostor
        .send_im(ALICE_SIP, BOB_SIP, "I am Alice, really")
        .await
        .unwrap();
    assert_eq!(status, 403, "an impostor's IM is refused");
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| bob.drain(Duration::from_millis(500)));
    assert_eq!(times_bob_got(&bob, "I am Alice, really"), 0);
    stop(gateway).await;
}

/// Two replicas on one store: only the lease holder serves the SIP edge and
/// delivers the outbox; when it stops, the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_runs_the_route() {
    let Some((dir, ca)) = prepared() else {
        return;
    };
    let microsoft =
        microsoft_edge(&ca, "127.0.0.1:0".parse().unwrap(), contoso_policy(false)).await;
    let port = || prosody::free_port().unwrap();
    let (s2s_a, s2s_b, peer_s2s) = (port(), port(), port());
    // What the operator's s2s Service does: it points at the leader.
    let service = Service::start(s2s_a).await;
    let replica = |s2s, holder: &str| {
        let mut config = config(dir.path(), &ca, s2s, peer_s2s, microsoft.addr);
        config.leader.holder = Some(holder.into());
        config
    };
    let a = start(&replica(s2s_a, "replica-a")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = start(&replica(s2s_b, "replica-b")).await;
    let (_server, mut bob) = prosody_with_bob(service.port, peer_s2s);

    for i in 0..5 {
        bob.command(json!({"cmd": "message", "to": "alice@teams.test", "body": format!("burst {i}"), "id": format!("b{i}")}))
            .unwrap();
    }
    at_microsoft(&microsoft, "burst 4").await;
    // The standby's edge takes no TLS session while A leads.
    let standby = tokio::net::TcpStream::connect(b.sip).await.unwrap();
    let mut probe = [0u8; 1];
    let refused = tokio::time::timeout(Duration::from_secs(1), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut standby = standby;
        let _ = standby.write_all(b"\x16\x03\x01\x00\x05hello").await;
        standby.read(&mut probe).await
    })
    .await;
    assert!(
        refused.is_err(),
        "the standby's SIP edge answered while A leads"
    );

    // A stops cleanly: B takes the lease at once and runs the route.
    stop(a).await;
    service.point_at(s2s_b);
    microsoft.route(PEER, b.sip);
    let mut status = 0;
    for _ in 0..40 {
        status = microsoft
            .send_im(ALICE_SIP, BOB_SIP, "via the new leader")
            .await
            .map_or(0, |s| s);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status, 200, "the standby took over the edge");
    bob_gets(&mut bob, "via the new leader");
    // B has sent nothing yet: Bob's typing goes into the session Alice opened.
    bob_types_and_alice_sees_it(&microsoft, &mut bob).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = messages(&microsoft.received());
    for i in 0..5 {
        let text = format!("burst {i}");
        assert_eq!(
            got.iter().filter(|(_, _, t)| *t == text).count(),
            1,
            "{text}: {got:?}"
        );
    }
    stop(b).await;
}

/// A TCP forwarder standing in for a Kubernetes Service: new connections go
/// to the port it points at now.
struct Service {
    port: u16,
    target: Arc<std::sync::atomic::AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(std::sync::atomic::AtomicU16::new(target));
        let pointing = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = pointing.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, target, task }
    }

    fn point_at(&self, port: u16) {
        self.target.store(port, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `sip.ca_file` with no certificate in it stops the start, naming the
/// file, rather than an edge that trusts no partner.
#[tokio::test]
async fn an_empty_ca_file_is_named_at_start() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let port = || prosody::free_port().unwrap();
    let mut config = config(
        dir.path(),
        &ca,
        port(),
        port(),
        "127.0.0.1:5061".parse().unwrap(),
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    config.sip.as_mut().unwrap().ca_file = Some(empty.clone());
    let Err(e) = Gateway::start(&config).await else {
        panic!("a gateway trusting no partner started");
    };
    let message = e.to_string();
    assert!(
        message.contains("sip.ca_file")
            && message.contains(&empty.display().to_string())
            && message.contains("no certificate"),
        "{message}"
    );
}
