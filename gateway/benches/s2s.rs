//! s2s benchmark: prints figures, asserts nothing.
//!
//! - messages per second through one authenticated inbound stream, and through
//!   16 streams in parallel, counted when the bridge receives them typed;
//! - gateway-side latency p50/p99 (peer write → bridge receive, one at a time);
//! - memory per idle authenticated stream (RSS growth over 1,000 streams; the
//!   scripted peers live in the same process, so this is an upper bound).
//!
//! Run: `cargo bench -p xmppfed-gateway --bench s2s`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::sync::Arc;
use std::time::{Duration, Instant};

use xmppfed_config::{GatewayConfig, StaticRoute};
use xmppfed_e2e::xmpp_peer::{Authoritative, RawPeer};
use xmppfed_gateway::s2s::Inbox;
use xmppfed_gateway::s2s::{AnyUser, S2s};

const DOMAIN: &str = "teams.test";
const PARALLEL: usize = 16;

fn message(from: &str, i: usize) -> String {
    format!(
        "<message from='{from}' to='alice@{DOMAIN}' type='chat' id='m{i}'><body>benchmark message {i}: the quick brown fox jumps over the lazy dog</body></message>"
    )
}

async fn drain(rx: &mut Inbox, n: usize) {
    for _ in 0..n {
        rx.recv().await.expect("bridge channel open");
    }
}

/// The gateway's s2s listener, with static routes for `domains` to the
/// authoritative peer; its port and the bridge's inbox.
async fn gateway(domains: &[String], authoritative: u16) -> (u16, Inbox) {
    let mut config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n[allow]\nremote_domains = [\"*.bench.test\"]\n"
    ))
    .unwrap();
    config.s2s.static_routes = domains
        .iter()
        .map(|d| StaticRoute {
            domain: d.clone(),
            host: "127.0.0.1".into(),
            port: authoritative,
        })
        .collect();
    let metrics = xmppfed_telemetry::Metrics::new("bench", "0");
    let (s2s, rx) = S2s::bind(&config, Arc::new(AnyUser), &metrics)
        .await
        .unwrap();
    let port = s2s.local_addr().unwrap().port();
    tokio::spawn(s2s.serve(std::future::pending()));
    (port, rx)
}

/// Writes `n` messages from `from`, pipelined in 32 KiB batches; the peer
/// comes back when all are written.
fn pump(mut peer: RawPeer, from: String, n: usize) -> tokio::task::JoinHandle<RawPeer> {
    tokio::spawn(async move {
        let mut batch = String::new();
        for i in 0..n {
            batch.push_str(&message(&from, i));
            if batch.len() > 32 * 1024 {
                peer.send(&batch).await.unwrap();
                batch.clear();
            }
        }
        peer.send(&batch).await.unwrap();
        peer
    })
}

/// One message at a time: (p50, p99) from the peer's write to the bridge.
async fn latency(peer: &mut RawPeer, rx: &mut Inbox) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(2000);
    for i in 0..2000 {
        let t = Instant::now();
        peer.send(&message("bob@peer0.bench.test/b", i))
            .await
            .unwrap();
        rx.recv().await.unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (p(0.50), p(0.99))
}

/// RSS growth over `idle_n` idle authenticated streams: (before, after).
async fn idle_memory(port: u16, idle_n: usize) -> (u64, u64) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = xmppfed_e2e::rss_bytes();
    let mut idle = Vec::with_capacity(idle_n);
    for _ in 0..idle_n {
        idle.push(
            RawPeer::authenticated(port, "idle.bench.test", DOMAIN)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (before, xmppfed_e2e::rss_bytes())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let authoritative = Authoritative::start().await.unwrap();
    let domains: Vec<String> = (0..PARALLEL)
        .map(|i| format!("peer{i}.bench.test"))
        .chain(["idle.bench.test".into()])
        .collect();
    let (port, mut rx) = gateway(&domains, authoritative.port).await;

    // One stream, pipelined.
    let n = 50_000;
    let peer = RawPeer::authenticated(port, "peer0.bench.test", DOMAIN)
        .await
        .unwrap();
    let started = Instant::now();
    let writer = pump(peer, "bob@peer0.bench.test/b".into(), n);
    drain(&mut rx, n).await;
    let one = n as f64 / started.elapsed().as_secs_f64();
    let mut peer = writer.await.unwrap();
    println!("s2s one stream:       {one:>10.0} messages/s ({n} messages)");

    let (p50, p99) = latency(&mut peer, &mut rx).await;
    println!("s2s latency:          p50 {p50:?}  p99 {p99:?}  (peer write → bridge, loopback)");

    // 16 streams in parallel.
    let per = n / PARALLEL;
    let mut peers = Vec::new();
    for d in domains.iter().take(PARALLEL) {
        peers.push(RawPeer::authenticated(port, d, DOMAIN).await.unwrap());
    }
    let started = Instant::now();
    let writers: Vec<_> = peers
        .into_iter()
        .zip(&domains)
        .map(|(peer, domain)| pump(peer, format!("bob@{domain}/b"), per))
        .collect();
    drain(&mut rx, per * PARALLEL).await;
    let parallel = (per * PARALLEL) as f64 / started.elapsed().as_secs_f64();
    println!(
        "s2s {PARALLEL} streams:        {parallel:>10.0} messages/s ({} messages)",
        per * PARALLEL
    );
    for w in writers {
        drop(w.await.unwrap());
    }

    let idle_n = 1000;
    let (before, after) = idle_memory(port, idle_n).await;
    println!(
        "s2s idle streams:     {:.1} KiB per authenticated stream ({idle_n} streams, RSS {} → {} MiB, peers included)",
        (after.saturating_sub(before)) as f64 / idle_n as f64 / 1024.0,
        before / (1 << 20),
        after / (1 << 20)
    );
    drop(authoritative);
}
