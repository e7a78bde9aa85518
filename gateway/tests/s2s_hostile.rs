//! Hostile peers, scripted byte by byte: each gets the stream error RFC 6120
//! prescribes, and a good peer authenticated beside them stays served.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::sync::Arc;
use std::time::Duration;

use xmpp_parsers::minidom::Element;
use xmppfed_config::{GatewayConfig, StaticRoute};
use xmppfed_e2e::xmpp_peer::{Authoritative, RawPeer};
use xmppfed_gateway::s2s::Inbox;
use xmppfed_gateway::s2s::{AllowList, AnyUser, S2s, Stanza};

const DOMAIN: &str = "teams.test";

struct Gateway {
    port: u16,
    allow: AllowList,
    rx: Inbox,
    _authoritative: Authoritative,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn gateway() -> Gateway {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let authoritative = Authoritative::start().await.unwrap();
    let mut config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n\
         max_stanza_bytes = 16384\nidle_timeout_secs = 3\nkeepalive_interval_secs = 1\nconnect_timeout_secs = 3\n\
         [allow]\nremote_domains = [\"good.test\", \"hostile.test\"]\n"
    ))
    .unwrap();
    config.s2s.static_routes = ["good.test", "hostile.test"]
        .iter()
        .map(|d| StaticRoute {
            domain: (*d).into(),
            host: "127.0.0.1".into(),
            port: authoritative.port,
        })
        .collect();
    let metrics = xmppfed_telemetry::Metrics::new("test", "0");
    let (s2s, rx) = S2s::bind(&config, Arc::new(AnyUser), &metrics)
        .await
        .unwrap();
    let port = s2s.local_addr().unwrap().port();
    let allow = s2s.allow_list();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(s2s.serve(async {
        let _ = stopped.await;
    }));
    Gateway {
        port,
        allow,
        rx,
        _authoritative: authoritative,
        _stop: stop,
    }
}

fn message(from: &str, body: &str) -> String {
    let id = &body[..body.len().min(16)];
    format!(
        "<message from='{from}' to='alice@{DOMAIN}' type='chat' id='{id}'><body>{body}</body></message>"
    )
}

/// The good peer's message reaches the bridge.
async fn good_peer_still_served(good: &mut RawPeer, rx: &mut Inbox, n: usize) {
    let body = format!("still-here-{n}");
    good.send(&message("bob@good.test/pc", &body))
        .await
        .unwrap();
    let stanza = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let Stanza::Message(m) = stanza else {
        panic!("expected a message, got {stanza:?}")
    };
    assert_eq!(m.get_best_body(vec![]).unwrap().1, &body);
}

async fn expect_stream_error(peer: &mut RawPeer, condition: &str) {
    let text = peer.read_to_close(Duration::from_secs(10)).await.unwrap();
    assert!(
        text.contains(&format!(
            "<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'"
        )) || text.contains(&format!(
            "<{condition} xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\""
        )),
        "expected stream error {condition}, got: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_get_stream_errors_and_a_good_peer_stays_served() {
    let mut gw = gateway().await;
    let port = gw.port;
    let mut good = RawPeer::authenticated(port, "good.test", DOMAIN)
        .await
        .unwrap();
    good_peer_still_served(&mut good, &mut gw.rx, 0).await;

    // A domain not on the allow list.
    let mut evil = RawPeer::start(port, "evil.test", DOMAIN).await.unwrap();
    expect_stream_error(&mut evil, "policy-violation").await;
    good_peer_still_served(&mut good, &mut gw.rx, 1).await;

    // A stream for a domain we do not serve.
    let mut lost = RawPeer::connect(port).await.unwrap();
    lost.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='good.test' to='elsewhere.test' version='1.0'>").await.unwrap();
    expect_stream_error(&mut lost, "host-unknown").await;

    // Garbage bytes instead of XML.
    let mut garbage = RawPeer::connect(port).await.unwrap();
    garbage
        .send("\u{1}\u{2}GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    expect_stream_error(&mut garbage, "not-well-formed").await;
    good_peer_still_served(&mut good, &mut gw.rx, 2).await;

    // A DTD with an entity declaration (the billion-laughs vector).
    let mut dtd = RawPeer::connect(port).await.unwrap();
    dtd.send("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='teams.test' version='1.0'>").await.unwrap();
    expect_stream_error(&mut dtd, "restricted-xml").await;

    // Stanzas before authentication.
    let mut eager = RawPeer::open(port, "hostile.test", DOMAIN).await.unwrap();
    eager
        .send(&message("x@hostile.test", "early"))
        .await
        .unwrap();
    expect_stream_error(&mut eager, "not-authorized").await;

    // A spoofed sender: authenticated as hostile.test, claiming good.test.
    let mut spoof = RawPeer::authenticated(port, "hostile.test", DOMAIN)
        .await
        .unwrap();
    spoof
        .send(&message("mallory@good.test", "spoofed"))
        .await
        .unwrap();
    expect_stream_error(&mut spoof, "invalid-from").await;
    good_peer_still_served(&mut good, &mut gw.rx, 3).await;

    // An oversized stanza (limit 16 KiB).
    let mut big = RawPeer::authenticated(port, "hostile.test", DOMAIN)
        .await
        .unwrap();
    big.send(&message("x@hostile.test", &"A".repeat(200_000)))
        .await
        .unwrap();
    expect_stream_error(&mut big, "policy-violation").await;

    // Malformed XML after a good start ends only that stream.
    let mut broken = RawPeer::authenticated(port, "hostile.test", DOMAIN)
        .await
        .unwrap();
    broken
        .send("<message from='x@hostile.test' to='alice@teams.test'><body>a</wrong></message>")
        .await
        .unwrap();
    expect_stream_error(&mut broken, "not-well-formed").await;

    // A connection that never sends a stream header is closed (connect timeout 3 s).
    let mut silent = RawPeer::connect(port).await.unwrap();
    silent.read_to_close(Duration::from_secs(10)).await.unwrap();

    // A peer that stalls mid-stanza.
    let mut stalled = RawPeer::authenticated(port, "hostile.test", DOMAIN)
        .await
        .unwrap();
    stalled
        .send("<message from='x@hostile.test' to='alice@teams.test'><bo")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Silence in the middle of a stanza for one keepalive interval (1 s here) ends it.
    expect_stream_error(&mut stalled, "connection-timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stalled peer held for {:?}",
        started.elapsed()
    );
    // The good peer has been idle longer than idle_timeout_secs meanwhile: it reconnects and is served.
    let mut good = RawPeer::authenticated(port, "good.test", DOMAIN)
        .await
        .unwrap();
    good_peer_still_served(&mut good, &mut gw.rx, 4).await;

    // Nothing from the hostile peers reached the bridge.
    assert!(gw.rx.try_recv().is_err(), "a hostile stanza was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_reloads_without_a_restart() {
    let mut gw = gateway().await;
    let mut good = RawPeer::authenticated(gw.port, "good.test", DOMAIN)
        .await
        .unwrap();
    good_peer_still_served(&mut good, &mut gw.rx, 0).await;

    gw.allow.replace(vec!["hostile.test".parse().unwrap()]);
    // The open stream's next stanza meets the new list…
    good.send(&message("bob@good.test/pc", "after-reload"))
        .await
        .unwrap();
    expect_stream_error(&mut good, "policy-violation").await;
    // …and so does a new stream.
    let mut again = RawPeer::start(gw.port, "good.test", DOMAIN).await.unwrap();
    expect_stream_error(&mut again, "policy-violation").await;
    assert!(
        gw.rx.try_recv().is_err(),
        "a stanza from a removed domain was delivered"
    );

    gw.allow.replace(vec!["good.test".parse().unwrap()]);
    let mut back = RawPeer::authenticated(gw.port, "good.test", DOMAIN)
        .await
        .unwrap();
    good_peer_still_served(&mut back, &mut gw.rx, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_domains_bounce_and_unlisted_ones_get_nothing() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // A route to a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\nconnect_timeout_secs = 2\n\
         [allow]\nremote_domains = [\"down.test\"]\n"
    ))
    .unwrap();
    config.s2s.static_routes = vec![StaticRoute {
        domain: "down.test".into(),
        host: "127.0.0.1".into(),
        port: closed,
    }];
    let metrics = xmppfed_telemetry::Metrics::new("test", "0");
    let (s2s, mut rx) = S2s::bind(&config, Arc::new(AnyUser), &metrics)
        .await
        .unwrap();
    let sender = s2s.sender();
    tokio::spawn(s2s.serve(std::future::pending()));

    let msg = |to: &str, id: &str| {
        let xml = format!(
            "<message xmlns='jabber:server' from='alice@{DOMAIN}' to='{to}' type='chat' id='{id}'><body>hi</body></message>"
        );
        xmppfed_gateway::s2s::stanza::from_wire(xml.parse().unwrap()).unwrap()
    };
    // Nothing is ever sent to a domain off the allow list.
    assert_eq!(
        sender.send(msg("eve@elsewhere.test", "x")).await,
        Err(xmppfed_gateway::s2s::SendError::NotAllowed(
            "elsewhere.test".into()
        ))
    );
    // Every stanza queued for an unreachable domain comes back as an error.
    for i in 0..3 {
        sender
            .send(msg("bob@down.test", &format!("m{i}")))
            .await
            .unwrap();
    }
    let mut bounced = Vec::new();
    for _ in 0..3 {
        let stanza = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let Stanza::Message(m) = stanza else {
            panic!("expected a message bounce")
        };
        assert_eq!(m.type_, xmpp_parsers::message::MessageType::Error);
        assert_eq!(
            m.to.as_ref().unwrap().to_string(),
            format!("alice@{DOMAIN}")
        );
        let error: Element = m
            .payloads
            .iter()
            .find(|p| p.name() == "error")
            .cloned()
            .expect("an <error/>");
        assert!(
            error.has_child(
                "remote-server-not-found",
                "urn:ietf:params:xml:ns:xmpp-stanzas"
            ),
            "{error:?}"
        );
        bounced.push(m.id.unwrap().0);
    }
    bounced.sort();
    assert_eq!(bounced, ["m0", "m1", "m2"]);
    assert!(
        metrics
            .encode()
            .contains("s2s_bounced_stanzas_total{condition=\"remote-server-not-found\"} 3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_its_authoritative_server_rejects_authenticates_nobody() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let authoritative = Authoritative::start_with("invalid").await.unwrap();
    let mut config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n\
         [allow]\nremote_domains = [\"good.test\"]\n"
    ))
    .unwrap();
    config.s2s.static_routes = vec![StaticRoute {
        domain: "good.test".into(),
        host: "127.0.0.1".into(),
        port: authoritative.port,
    }];
    let metrics = xmppfed_telemetry::Metrics::new("test", "0");
    let (s2s, mut rx) = S2s::bind(&config, Arc::new(AnyUser), &metrics)
        .await
        .unwrap();
    let port = s2s.local_addr().unwrap().port();
    tokio::spawn(s2s.serve(std::future::pending()));

    let mut forger = RawPeer::open(port, "good.test", DOMAIN).await.unwrap();
    forger
        .send("<db:result from='good.test' to='teams.test'>forged-key</db:result>")
        .await
        .unwrap();
    let text = forger.read_to_close(Duration::from_secs(15)).await.unwrap();
    assert!(
        text.contains("type='invalid'"),
        "no invalid verdict: {text}"
    );
    assert!(
        text.contains("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'"),
        "{text}"
    );
    assert!(
        metrics
            .encode()
            .contains("s2s_authentications_total{method=\"dialback-in\",outcome=\"invalid\"} 1")
    );
    assert!(rx.try_recv().is_err());
}

/// An s2s layer whose outbound streams to `good.test` go to `port`.
async fn sender_to(port: u16) -> xmppfed_gateway::s2s::S2sSender {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\nconnect_timeout_secs = 3\n\
         [allow]\nremote_domains = [\"good.test\"]\n"
    ))
    .unwrap();
    config.s2s.static_routes = vec![StaticRoute {
        domain: "good.test".into(),
        host: "127.0.0.1".into(),
        port,
    }];
    let metrics = xmppfed_telemetry::Metrics::new("test", "0");
    let (s2s, rx) = S2s::bind(&config, Arc::new(AnyUser), &metrics)
        .await
        .unwrap();
    let sender = s2s.sender();
    tokio::spawn(async move {
        let _inbox = rx;
        s2s.serve(std::future::pending()).await
    });
    sender
}

/// Sends a message to bob@good.test and says whether it went out (Ok once
/// the outbound stream says so), waiting at most `secs`.
async fn went(sender: &xmppfed_gateway::s2s::S2sSender, id: &str, secs: u64) -> Result<(), String> {
    let xml = format!(
        "<message xmlns='jabber:server' from='alice@{DOMAIN}' to='bob@good.test' type='chat' id='{id}'><body>hi</body></message>"
    );
    let stanza = xmppfed_gateway::s2s::stanza::from_wire(xml.parse().unwrap()).unwrap();
    let went = sender
        .send_written(stanza)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(secs), went)
        .await
        .map_err(|_| format!("no answer in {secs} s"))?
        .map_err(|_| "not delivered".to_owned())
}

/// XEP-0198 on our outbound streams: a stanza whose sender waits (the
/// bridge's outbox) counts as sent only once the peer acknowledges it. A
/// peer that drops the connection with it unacknowledged makes the sender
/// hear so (it sends again); the next stream carries what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_counts_as_sent_only_once_the_peer_acknowledges_it() {
    // Its first stream acknowledges one stanza, then dies on the next <r/>.
    let peer = Authoritative::with_stream_management(1).await.unwrap();
    let sender = sender_to(peer.port).await;
    // Acknowledged: done.
    assert_eq!(went(&sender, "m1", 10).await, Ok(()));
    assert!(
        peer.received().contains("<enable"),
        "stream management asked for"
    );
    // Written, then the peer is gone without acknowledging it: not done.
    assert_eq!(
        went(&sender, "m2", 10).await,
        Err("not delivered".to_owned()),
        "written is not delivered"
    );
    // Sent again, on a new stream that acknowledges it.
    assert_eq!(went(&sender, "m2", 10).await, Ok(()));
    let received = peer.received();
    assert_eq!(received.matches("id='m2'").count(), 2, "{received}");
}

/// A peer that stops acknowledging, though its stream stays open, is taken as
/// dead once the acknowledgement is overdue: the waiter hears so in time to
/// send again on a new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_acknowledging_is_given_up_on_in_time() {
    let peer = Authoritative::with_silent_stream_management(1)
        .await
        .unwrap();
    let sender = sender_to(peer.port).await;
    assert_eq!(went(&sender, "m1", 10).await, Ok(()));
    // No acknowledgement ever comes for m2: within the bridge's 60 s wait the
    // stream is given up on, and the waiter told.
    assert_eq!(
        went(&sender, "m2", 40).await,
        Err("not delivered".to_owned())
    );
    // The next stream acknowledges.
    assert_eq!(went(&sender, "m2", 10).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_past_the_depth_limit_ends_only_that_stream() {
    let mut gw = gateway().await;
    let port = gw.port;
    let mut good = RawPeer::authenticated(port, "good.test", DOMAIN)
        .await
        .unwrap();
    // Before authentication, as the attacker of issue 12 did.
    let mut deep = RawPeer::start(port, "good.test", DOMAIN).await.unwrap();
    deep.send(&"<a>".repeat(100_000)).await.ok();
    let text = deep.read_to_close(Duration::from_secs(10)).await.unwrap();
    assert!(text.contains("nested deeper than 32 levels"), "{text}");
    expect_stream_error(&mut deep, "policy-violation").await;
    good_peer_still_served(&mut good, &mut gw.rx, 0).await;
}
