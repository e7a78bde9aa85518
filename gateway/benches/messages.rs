//! Message benchmark, side by side in one run: prints figures, asserts nothing.
//!
//! 1. XMPP → Teams: a client on Prosody sends a burst to a Teams user through
//!    the gateway (in this process) to the Graph emulator; each message
//!    requests an XEP-0184 receipt, which the gateway sends once Graph has
//!    the message, so a receipt's round trip is the message's latency.
//! 2. The same burst from Prosody to a second Prosody over s2s, to a client
//!    that answers receipts: the baseline. The ratio of the two is the figure
//!    we track.
//! 3. Teams → XMPP: a Teams user writes a burst (through the emulator's
//!    control API); throughput until the last message reaches the client.
//!
//! Needs Prosody and the Python client (scripts/test.sh installs both).
//! Run: `cargo bench -p xmppfed-gateway --bench messages`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::bridge::*;
use serde_json::{Value, json};
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;

/// Messages per burst. Microsoft allows one message a second per chat
/// (https://learn.microsoft.com/graph/throttling-limits), and a burst to one
/// Teams user is one chat: the gateway paces it so, and a burst this size
/// takes about a minute (`teams_limits` measures the tenant-wide rate).
const N: usize = 60;

struct Figures {
    per_sec: f64,
    p50: f64,
    p99: f64,
}

/// Sends a burst and collects every receipt's latency.
fn burst(client: &mut XmppClient, to: &str, prefix: &str) -> Figures {
    let started = Instant::now();
    client
        .command(json!({"cmd": "burst", "to": to, "count": N, "prefix": prefix}))
        .unwrap();
    let mut latencies = Vec::with_capacity(N);
    for _ in 0..N {
        let e = client
            .wait_for(Duration::from_secs(300), |e| {
                e["received"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(prefix))
            })
            .unwrap();
        latencies.push(e["latency_ms"].as_f64().unwrap_or(f64::NAN));
    }
    let elapsed = started.elapsed();
    latencies.sort_by(|a, b| a.total_cmp(b));
    Figures {
        per_sec: N as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

/// One message at a time: the latency of the path itself, without queueing.
fn one_by_one(client: &mut XmppClient, to: &str, prefix: &str, n: usize) -> (f64, f64) {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}{i}");
        client
            .command(json!({"cmd": "message", "to": to, "body": id, "id": id}))
            .unwrap();
        let e = client
            .wait_for(Duration::from_secs(60), |e| e["received"] == id.as_str())
            .unwrap();
        latencies.push(e["latency_ms"].as_f64().unwrap_or(f64::NAN));
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

/// Warms both paths (stream set-up, the shadow account, the chat).
fn warm_up(bob: &mut XmppClient) {
    tokio::task::block_in_place(|| {
        for (to, id) in [(ALICE, "warm-gw"), ("carol@xmpp2.test", "warm-s2s")] {
            bob.command(json!({"cmd": "message", "to": to, "body": "warm-up", "id": id}))
                .unwrap();
            bob.wait_for(Duration::from_secs(60), |e| e["received"] == id)
                .unwrap();
        }
    });
}

/// Teams → XMPP: Alice writes N messages in Teams; how long writing them
/// took, and how long until Bob had them all.
async fn from_teams(emulator: &GraphEmulator, bob: &mut XmppClient) -> (Duration, Duration) {
    let shadow = upn_for("bob@xmpp.test", SHADOW_DOMAIN);
    let chat = chat_between(emulator, "alice@contoso.com", &shadow).unwrap();
    let started = Instant::now();
    for i in 0..N {
        alice_writes(emulator, &chat, &format!("t{i}"), "text").await;
    }
    let written = started.elapsed();
    tokio::task::block_in_place(|| {
        for _ in 0..N {
            bob.wait_for(Duration::from_secs(300), |e: &Value| {
                e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.starts_with('t'))
            })
            .unwrap();
        }
    });
    (written, started.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !prosody::available() || prosody::python().is_none() {
        println!(
            "messages benchmark skipped: needs Prosody and the Python client (scripts/test.sh)"
        );
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = || prosody::free_port().unwrap();
    let (gateway_port, s2s_a, s2s_b, webhook) = (port(), port(), port(), port());
    let mut config = gateway_config(dir.path(), &emulator, gateway_port, s2s_a);
    with_webhook(&mut config, dir.path(), webhook);
    without_per_contact_limits(&mut config);
    let gateway = start_gateway(&config).await;

    // Two Prosody servers that federate with each other, one also with the gateway.
    // Kept for the run: dropping a server stops it.
    let (_server_a, mut bob) = prosody_with_bob(ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway_port), ("xmpp2.test".into(), s2s_b)],
        s2s_port: Some(s2s_a),
        // Prosody offers STARTTLS even without a certificate, and two
        // Prosody servers then fail: give both one.
        tls: true,
        ..ProsodyOptions::new(PEER)
    });
    let b = Prosody::start(&ProsodyOptions {
        routes: vec![(PEER.into(), s2s_a)],
        s2s_port: Some(s2s_b),
        tls: true,
        ..ProsodyOptions::new("xmpp2.test")
    })
    .unwrap();
    b.register("carol", "carolpw").unwrap();
    let _carol = connect("carol@xmpp2.test", "carolpw", b.c2s_port);

    warm_up(&mut bob);

    let (gw_one, s2s_one) = tokio::task::block_in_place(|| {
        (
            one_by_one(&mut bob, ALICE, "og", 50),
            one_by_one(&mut bob, "carol@xmpp2.test", "op", 50),
        )
    });
    let gw = tokio::task::block_in_place(|| burst(&mut bob, ALICE, "g"));
    let s2s = tokio::task::block_in_place(|| burst(&mut bob, "carol@xmpp2.test", "p"));

    let (written, from_teams) = from_teams(&emulator, &mut bob).await;

    println!(
        "messages: bursts of {N}, loopback, release build, 2 cores; the gateway paces a chat at one message per 1.05 s (Microsoft's 1/s per chat)"
    );
    println!(
        "XMPP → Teams (Prosody → gateway → Graph emulator): {:>7.1} msg/s, receipt latency p50 {:>7.1} ms, p99 {:>7.1} ms",
        gw.per_sec, gw.p50, gw.p99
    );
    println!(
        "Prosody → Prosody over s2s (baseline):            {:>7.1} msg/s, receipt latency p50 {:>7.1} ms, p99 {:>7.1} ms",
        s2s.per_sec, s2s.p50, s2s.p99
    );
    println!(
        "one message at a time (50): gateway p50 {:.1} ms, p99 {:.1} ms; Prosody → Prosody p50 {:.1} ms, p99 {:.1} ms",
        gw_one.0, gw_one.1, s2s_one.0, s2s_one.1
    );
    println!(
        "ratio gateway / baseline: throughput {:.2}, p50 latency {:.1}×",
        gw.per_sec / s2s.per_sec,
        gw.p50 / s2s.p50
    );
    println!(
        "Teams → XMPP: {:>7.1} msg/s ({N} written in {:.2} s, all received after {:.2} s)",
        N as f64 / from_teams.as_secs_f64(),
        written.as_secs_f64(),
        from_teams.as_secs_f64()
    );
    drop(bob);
    gateway.stop().await;
}
