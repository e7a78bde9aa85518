//! The s2s listener of the gateway binary under attack: nesting past the
//! limit, huge attributes, namespace floods, entity tricks, invalid UTF-8 at
//! every position, bytes dripped slowly, thousands of half-open connections
//! and a flood of valid stanzas. After each the process is alive, a good
//! peer is served, and its memory comes back near where it started.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use xmppfed_e2e::daemon::Daemon;
use xmppfed_e2e::xmpp_peer::{Authoritative, RawPeer};

const BIN: &str = env!("CARGO_BIN_EXE_xmppfed-gateway");
const DOMAIN: &str = "teams.test";
/// The limits the gateway under test runs with.
const MAX_DEPTH: usize = 32;
const MAX_UNAUTHENTICATED: usize = 1000;
const PER_ADDRESS: usize = 16;
/// How far above its baseline the gateway's memory may stay after an attack.
const RSS_MARGIN: u64 = 24 << 20;

struct Target {
    gateway: Daemon,
    port: u16,
    admin: String,
    authoritative: Authoritative,
    baseline: u64,
    checks: usize,
    _dir: tempfile::TempDir,
}

fn header(from: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{from}' to='{DOMAIN}' version='1.0'>"
    )
}

fn ping(id: &str) -> String {
    format!(
        "<iq type='get' id='{id}' from='good.test' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
}

impl Target {
    async fn start() -> Self {
        let authoritative = Authoritative::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        let routes = ["good.test", "hostile.test"]
            .map(|d| {
                format!(
                    "{{ domain = \"{d}\", host = \"127.0.0.1\", port = {} }}",
                    authoritative.port
                )
            })
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "[xmpp]\ndomain = \"{DOMAIN}\"\n\
                 [s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\nidle_timeout_secs = 120\n\
                 keepalive_interval_secs = 1\nconnect_timeout_secs = 5\nstanza_timeout_secs = 2\n\
                 auth_timeout_secs = 30\nmax_stanza_depth = {MAX_DEPTH}\n\
                 max_unauthenticated = {MAX_UNAUTHENTICATED}\nmax_unauthenticated_per_address = {PER_ADDRESS}\n\
                 static_routes = [{routes}]\n\
                 [allow]\nremote_domains = [\"good.test\", \"hostile.test\"]\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n[webhook]\nlisten = \"127.0.0.1:0\"\n\
                 [store]\nengine = \"sqlite\"\npath = \"{}\"\n",
                dir.path().join("gw.db").display()
            ),
        )
        .unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn,xmppfed_gateway=info");
        let mut gateway = Daemon::spawn(command).unwrap();
        let started = gateway
            .wait_for_log("gateway started", Duration::from_secs(30))
            .unwrap();
        let s2s: SocketAddr = started["s2s"].as_str().unwrap().parse().unwrap();
        let admin = started["admin"].as_str().unwrap().to_owned();
        let mut target = Self {
            gateway,
            port: s2s.port(),
            admin,
            authoritative,
            baseline: 0,
            checks: 0,
            _dir: dir,
        };
        // Warm up what a good peer costs, then take the baseline.
        for _ in 0..3 {
            target.good_peer_served().await;
        }
        target.baseline = target.rss();
        eprintln!("baseline RSS {} KiB", target.baseline >> 10);
        target
    }

    fn rss(&self) -> u64 {
        xmppfed_e2e::rss_bytes_of(self.gateway.id())
    }

    /// A good peer authenticates and its ping is answered.
    async fn good_peer_served(&mut self) -> RawPeer {
        let mut good = RawPeer::authenticated(self.port, "good.test", DOMAIN)
            .await
            .expect("a good peer authenticates");
        self.ping_on(&mut good).await;
        good
    }

    async fn ping_on(&mut self, peer: &mut RawPeer) {
        self.checks += 1;
        let id = format!("check-{}", self.checks);
        peer.send(&ping(&id)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.authoritative.received().contains(&id) {
            assert!(
                Instant::now() < deadline,
                "the good peer's ping {id} was not answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After an attack: alive, serving, and memory back near the baseline.
    async fn survived(&mut self, attack: &str) {
        assert!(self.gateway.is_running(), "the gateway died after {attack}");
        self.good_peer_served().await;
        let peak = self.rss();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut now = peak;
        while now > self.baseline + RSS_MARGIN && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            now = self.rss();
        }
        eprintln!(
            "after {attack}: RSS {} KiB (baseline {} KiB)",
            now >> 10,
            self.baseline >> 10
        );
        assert!(
            now <= self.baseline + RSS_MARGIN,
            "after {attack} the gateway holds {} KiB, baseline {} KiB",
            now >> 10,
            self.baseline >> 10
        );
        assert!(self.gateway.is_running(), "the gateway died after {attack}");
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn has_stream_error(text: &str, condition: &str) -> bool {
    text.contains(&format!(
        "<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'"
    )) || text.contains(&format!(
        "<{condition} xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\""
    ))
}

/// Sends `bytes` on a new connection and reads until the gateway closes it.
async fn send_raw(port: u16, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    read_to_close(&mut tcp, Duration::from_secs(15)).await
}

async fn read_to_close(tcp: &mut TcpStream, timeout: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the gateway held the connection open for {timeout:?}: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection from `source` (any loopback address) to the gateway.
async fn connect_from(source: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

fn nested(depth: usize) -> String {
    format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_survives_hostile_input_and_keeps_serving() {
    let mut t = Target::start().await;
    // A good peer authenticated before the attacks stays served throughout.
    let mut steady = t.good_peer_served().await;

    nesting(&mut t).await;
    huge_attributes(&mut t).await;
    namespace_floods(&mut t).await;
    entity_tricks(&mut t).await;
    invalid_utf8(&mut t).await;
    slow_drip(&mut t).await;
    half_open_connections(&mut t, &mut steady).await;
    valid_flood(&mut t).await;
    t.ping_on(&mut steady).await;
}

/// Nesting. 100,000 levels before authentication (the crash of issue
/// 12), and inside a stanza on an authenticated stream; exactly the limit
/// is accepted and the stream goes on.
async fn nesting(t: &mut Target) {
    let port = t.port;
    let text = send_raw(
        port,
        format!("{}{}", header("good.test"), "<a>".repeat(100_000)).as_bytes(),
    )
    .await;
    assert!(has_stream_error(&text, "policy-violation"), "{text}");
    assert!(
        text.contains(&format!("nested deeper than {MAX_DEPTH} levels")),
        "{text}"
    );
    let mut deep = RawPeer::authenticated(port, "hostile.test", DOMAIN)
        .await
        .unwrap();
    deep.send(&format!(
        "<message from='x@hostile.test' to='alice@{DOMAIN}'>{}</message>",
        "<a>".repeat(100_000)
    ))
    .await
    .ok();
    let text = deep.read_to_close(Duration::from_secs(15)).await.unwrap();
    assert!(has_stream_error(&text, "policy-violation"), "{text}");
    let mut at_limit = t.good_peer_served().await;
    at_limit
        .send(&format!(
            "<message from='bob@good.test' to='alice@{DOMAIN}'>{}</message>",
            nested(MAX_DEPTH - 1)
        ))
        .await
        .unwrap();
    t.ping_on(&mut at_limit).await;
    t.survived("100,000 levels of nesting").await;
}

/// Huge attributes: one of 1 MB ends the stream (size); ten thousand
/// small ones within the size limit are parsed and the stream goes on.
async fn huge_attributes(t: &mut Target) {
    let port = t.port;
    let mut huge = RawPeer::authenticated(port, "hostile.test", DOMAIN)
        .await
        .unwrap();
    huge.send(&format!(
        "<message from='x@hostile.test' to='alice@{DOMAIN}' x='{}'/>",
        "A".repeat(1 << 20)
    ))
    .await
    .ok();
    let text = huge.read_to_close(Duration::from_secs(15)).await.unwrap();
    // rxml bounds a single value itself ("long name or reference").
    assert!(
        has_stream_error(&text, "policy-violation") || has_stream_error(&text, "restricted-xml"),
        "{text}"
    );
    let mut many = t.good_peer_served().await;
    let attrs: String = (0..10_000).map(|i| format!(" a{i}='v'")).collect();
    many.send(&format!(
        "<message from='bob@good.test' to='alice@{DOMAIN}'{attrs}/>"
    ))
    .await
    .unwrap();
    t.ping_on(&mut many).await;
    t.survived("huge attributes").await;
}

/// Namespace floods: thousands of prefixes on one element, and a new
/// default namespace on every element of a wide tree.
async fn namespace_floods(t: &mut Target) {
    let mut flood = t.good_peer_served().await;
    let prefixes: String = (0..5_000)
        .map(|i| format!(" xmlns:p{i}='urn:flood:{i}'"))
        .collect();
    let defaults: String = (0..2_000)
        .map(|i| format!("<x xmlns='urn:default:{i}'/>"))
        .collect();
    flood
        .send(&format!(
            "<message from='bob@good.test' to='alice@{DOMAIN}'{prefixes}>{defaults}</message>"
        ))
        .await
        .unwrap();
    t.ping_on(&mut flood).await;
    t.survived("namespace floods").await;
}

/// Entity tricks: each ends its stream with an error, never a crash.
async fn entity_tricks(t: &mut Target) {
    let port = t.port;
    for trick in [
        "<body>&#0;</body>",
        "<body>&#xD800;</body>",
        "<body>&#x110000;</body>",
        "<body>&#99999999999999999999999;</body>",
        "<body>&undefined;</body>",
        "<body>&lt</body>",
        "<body>&#x;</body>",
        "<body x='&#1;'/>",
    ] {
        let mut peer = RawPeer::authenticated(port, "hostile.test", DOMAIN)
            .await
            .unwrap();
        peer.send(&format!(
            "<message from='x@hostile.test' to='alice@{DOMAIN}'>{trick}</message>"
        ))
        .await
        .ok();
        let text = peer.read_to_close(Duration::from_secs(15)).await.unwrap();
        assert!(
            has_stream_error(&text, "not-well-formed"),
            "{trick}: {text}"
        );
    }
    t.survived("entity tricks").await;
}

/// Invalid UTF-8 at every position of a stream header and a stanza.
async fn invalid_utf8(t: &mut Target) {
    let port = t.port;
    let good = format!(
        "{}<db:result from='hostile.test' to='{DOMAIN}'>key</db:result>\
         <message from='x@hostile.test' to='alice@{DOMAIN}'><body>h\u{e9}llo</body></message>",
        header("hostile.test")
    );
    let positions: Vec<usize> = (0..good.len()).collect();
    for batch in positions.chunks(PER_ADDRESS) {
        let runs = batch.iter().map(|&i| {
            let mut bytes = good.clone().into_bytes();
            bytes[i] = 0xFF;
            tokio::spawn(async move { send_raw(port, &bytes).await })
        });
        for run in runs {
            run.await.expect("every broken stream is closed in time");
        }
    }
    t.survived(&format!(
        "invalid UTF-8 at each of {} positions",
        good.len()
    ))
    .await;
}

/// A stanza dripped a byte at a time, fast enough to beat the
/// keepalive, ends once it has taken longer than stanza_timeout_secs.
async fn slow_drip(t: &mut Target) {
    let port = t.port;
    let mut drip = RawPeer::authenticated(port, "hostile.test", DOMAIN)
        .await
        .unwrap();
    let started = Instant::now();
    let stanza = format!(
        "<message from='x@hostile.test' to='alice@{DOMAIN}'><body>{}</body></message>",
        "z".repeat(200)
    );
    for byte in stanza.as_bytes() {
        if drip.tcp.write_all(&[*byte]).await.is_err() {
            break;
        }
        // The pause between bytes doubles as the wait for the gateway's answer.
        let _ = drip.read_more(Duration::from_millis(300)).await;
        if drip.received.contains("</stream:stream>") || started.elapsed() > Duration::from_secs(20)
        {
            break;
        }
    }
    let text = drip.read_to_close(Duration::from_secs(15)).await.unwrap();
    assert!(has_stream_error(&text, "policy-violation"), "{text}");
    assert!(text.contains("not complete within"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "dripped for {:?}",
        started.elapsed()
    );
    t.survived("a slow drip").await;
}

/// Half-open connections. From one address: only PER_ADDRESS are
/// held, the rest refused at once, and a peer elsewhere still gets in.
async fn half_open_connections(t: &mut Target, steady: &mut RawPeer) {
    let port = t.port;
    let one = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    for _ in 0..PER_ADDRESS {
        let mut tcp = connect_from(one, port).await.unwrap();
        tcp.write_all(b"<?xml version='1.0'?><stream:str")
            .await
            .unwrap();
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..50 {
        let mut tcp = connect_from(one, port).await.unwrap();
        let text = read_to_close(&mut tcp, Duration::from_secs(5)).await;
        assert!(has_stream_error(&text, "policy-violation"), "{text}");
    }
    t.good_peer_served().await;
    from_many_addresses(t, steady, held).await;
}

/// From many addresses: thousands of unauthenticated streams, past the
/// total; those beyond it are refused with resource-constraint while the
/// authenticated peer is served. `held`: what is already held.
async fn from_many_addresses(t: &mut Target, steady: &mut RawPeer, mut held: Vec<TcpStream>) {
    let port = t.port;
    let started = Instant::now();
    let mut refused = 0;
    // Each sends its stream header and then nothing: unauthenticated, held
    // until auth_timeout_secs (30 s). Opened in batches side by side. (With a
    // half header, the 2 s header deadline closed them on a loaded CI machine
    // faster than they were opened, and the limit was never reached.)
    let ids: Vec<u32> = (0..2_000).collect();
    for batch in ids.chunks(100) {
        let opened = futures::future::join_all(batch.iter().map(|&i| async move {
            let source = Ipv4Addr::new(127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8);
            let mut tcp = connect_from(source, port).await?;
            let _ = tcp.write_all(header("hostile.test").as_bytes()).await;
            Ok::<_, std::io::Error>(tcp)
        }))
        .await;
        for tcp in opened {
            match tcp {
                Ok(tcp) => held.push(tcp),
                Err(_) => refused += 1,
            }
        }
    }
    let opened_in = started.elapsed();
    t.ping_on(steady).await;
    // On a loaded machine the gateway may still be accepting: count once it
    // has refused what lies beyond the limit (the assertion below decides).
    let beyond = (2_000 + PER_ADDRESS - MAX_UNAUTHENTICATED) as f64;
    let settle = Instant::now() + Duration::from_secs(60);
    while t.metric("xmppfed_s2s_connections_refused_total").await < beyond
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open = held.len();
    let mut closed_at_once = 0;
    for tcp in held.iter_mut() {
        let mut byte = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_millis(5), tcp.read(&mut byte)).await;
        if let Ok(Ok(n)) = read
            && (n == 0 || String::from_utf8_lossy(&byte[..n]).contains("resource-constraint"))
        {
            closed_at_once += 1;
        }
    }
    eprintln!(
        "{open} unauthenticated connections opened in {opened_in:?}, refusals settled in {:?} ({refused} failed to connect); {closed_at_once} refused at once",
        started.elapsed()
    );
    assert!(
        closed_at_once >= 2_000 + PER_ADDRESS - MAX_UNAUTHENTICATED - 50,
        "only {closed_at_once} of {open} were refused beyond the limit of {MAX_UNAUTHENTICATED}"
    );
    assert!(t.metric("xmppfed_s2s_connections_refused_total").await >= 1_000.0);
    let logged = t
        .gateway
        .lines_so_far()
        .iter()
        .filter(|l| l.contains("inbound s2s connection refused"))
        .count();
    assert!((1..=10).contains(&logged), "refusals logged {logged} times");
    drop(held);
    t.survived("2,000 half-open connections").await;
}

/// A flood of valid stanzas on one authenticated stream, every one answered.
async fn valid_flood(t: &mut Target) {
    let mut flooder = t.good_peer_served().await;
    let n = 20_000;
    let started = Instant::now();
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&ping(&format!("flood-{i}-")));
        if burst.len() > 64 * 1024 {
            flooder.send(&burst).await.unwrap();
            burst.clear();
        }
    }
    flooder.send(&burst).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answered = t.authoritative.received().matches("flood-").count();
        if answered >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{answered} of {n} pings answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{n} pings answered in {:?} ({:.0}/s), RSS peak {} KiB",
        started.elapsed(),
        n as f64 / started.elapsed().as_secs_f64(),
        t.rss() >> 10
    );
    t.survived("a flood of 20,000 valid stanzas").await;
}
