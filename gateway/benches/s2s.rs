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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let authoritative = Authoritative::start().await.unwrap();
    let domains: Vec<String> = (0..PARALLEL)
        .map(|i| format!("peer{i}.bench.test"))
        .chain(["idle.bench.test".into()])
        .collect();
    let mut config = GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"{DOMAIN}\"\n[s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n[allow]\nremote_domains = [\"*.bench.test\"]\n"
    ))
    .unwrap();
    config.s2s.static_routes = domains
        .iter()
        .map(|d| StaticRoute {
            domain: d.clone(),
            host: "127.0.0.1".into(),
            port: authoritative.port,
        })
        .collect();
    let metrics = xmppfed_telemetry::Metrics::new("bench", "0");
    let (s2s, mut rx) = S2s::bind(&config, Arc::new(AnyUser), &metrics)
        .await
        .unwrap();
    let port = s2s.local_addr().unwrap().port();
    tokio::spawn(s2s.serve(std::future::pending()));

    // One stream, pipelined.
    let n = 50_000;
    let mut peer = RawPeer::authenticated(port, "peer0.bench.test", DOMAIN)
        .await
        .unwrap();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut batch = String::new();
        for i in 0..n {
            batch.push_str(&message("bob@peer0.bench.test/b", i));
            if batch.len() > 32 * 1024 {
                peer.send(&batch).await.unwrap();
                batch.clear();
            }
        }
        peer.send(&batch).await.unwrap();
        peer
    });
    drain(&mut rx, n).await;
    let one = n as f64 / started.elapsed().as_secs_f64();
    let mut peer = writer.await.unwrap();
    println!("s2s one stream:       {one:>10.0} messages/s ({n} messages)");

    // Latency, one message at a time.
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
    println!(
        "s2s latency:          p50 {:?}  p99 {:?}  (peer write → bridge, loopback)",
        p(0.50),
        p(0.99)
    );

    // 16 streams in parallel.
    let per = n / PARALLEL;
    let mut peers = Vec::new();
    for d in domains.iter().take(PARALLEL) {
        peers.push(RawPeer::authenticated(port, d, DOMAIN).await.unwrap());
    }
    let started = Instant::now();
    let mut writers = Vec::new();
    for (i, mut peer) in peers.into_iter().enumerate() {
        let from = format!("bob@{}/b", domains[i]);
        writers.push(tokio::spawn(async move {
            let mut batch = String::new();
            for j in 0..per {
                batch.push_str(&message(&from, j));
                if batch.len() > 32 * 1024 {
                    peer.send(&batch).await.unwrap();
                    batch.clear();
                }
            }
            peer.send(&batch).await.unwrap();
            peer
        }));
    }
    drain(&mut rx, per * PARALLEL).await;
    let parallel = (per * PARALLEL) as f64 / started.elapsed().as_secs_f64();
    println!(
        "s2s {PARALLEL} streams:        {parallel:>10.0} messages/s ({} messages)",
        per * PARALLEL
    );
    for w in writers {
        drop(w.await.unwrap());
    }

    // Memory per idle authenticated stream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = xmppfed_e2e::rss_bytes();
    let idle_n = 1000;
    let mut idle = Vec::with_capacity(idle_n);
    for _ in 0..idle_n {
        idle.push(
            RawPeer::authenticated(port, "idle.bench.test", DOMAIN)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = xmppfed_e2e::rss_bytes();
    println!(
        "s2s idle streams:     {:.1} KiB per authenticated stream ({idle_n} streams, RSS {} → {} MiB, peers included)",
        (after.saturating_sub(before)) as f64 / idle_n as f64 / 1024.0,
        before / (1 << 20),
        after / (1 << 20)
    );
    drop(idle);
    drop(authoritative);
}
