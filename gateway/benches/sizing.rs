//! Sizing (README's sizing table): what one gateway process needs for N
//! contacts and M messages per second. Prints figures, asserts nothing.
//!
//! The release gateway binary runs as a process of its own, so that its
//! memory and CPU are only its own: on the embedded store seeded with N
//! shadow accounts and their subscriptions (five contacts per Teams user),
//! against the Graph emulator with Microsoft's Teams limits on and one
//! tenant-wide chat subscription (the webhook), with a Prosody and Bob on the
//! XMPP side. For each N:
//!
//! 1. start-up, until every contact's chats have been listed once;
//! 2. idle for 60 s (presence polls, keep-alives);
//! 3. Bob writes M messages a second to 40 Teams users for 60 s, for M = 5
//!    and M = 20 (Microsoft's ceiling for chat messages sent per tenant:
//!    https://learn.microsoft.com/graph/throttling-limits).
//!
//! Per phase: resident memory at its end (VmRSS), the process's peak so far
//! (VmHWM), CPU over the phase in % of one core, and messages delivered to
//! Graph of those sent.
//!
//! Needs Prosody and the Python client (scripts/test.sh installs both).
//! Run: `cargo bench -p xmppfed-gateway --bench sizing [-- N ...]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failure with its reason

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::bridge::*;
use common::scale::{calls_by_kind, limited_seed, refused, seed_shadow_accounts, until_calls};
use serde_json::json;
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_e2e::prosody::{self, ProsodyOptions};
use xmppfed_e2e::xmpp_client::XmppClient;

/// Teams users Bob writes to, round robin (each chat well under 1/s).
const TARGETS: usize = 40;
const IDLE: Duration = Duration::from_secs(60);
const LOAD: Duration = Duration::from_secs(60);
const RATES: [usize; 2] = [5, 20];
/// Linux's clock ticks per second for /proc/<pid>/stat (USER_HZ, 100 on every
/// architecture Rust targets with Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// What /proc says of the gateway process.
#[derive(Clone, Copy)]
struct Sample {
    rss: u64,
    peak: u64,
    cpu_secs: f64,
    at: Instant,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Sample {
        rss: kib("VmRSS:") * 1024,
        peak: kib("VmHWM:") * 1024,
        cpu_secs: (ticks(11) + ticks(12)) / TICKS_PER_SEC,
        at: Instant::now(),
    }
}

fn row(n: usize, phase: &str, from: Sample, to: Sample, delivered: Option<(usize, usize)>) {
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let wall = to.at.duration_since(from.at).as_secs_f64();
    let cpu = (to.cpu_secs - from.cpu_secs) / wall * 100.0;
    let delivered = delivered.map_or_else(|| "—".to_owned(), |(d, of)| format!("{d} of {of}"));
    println!(
        "| {n:>6} | {phase:<26} | {:>7.1} | {:>7.1} | {cpu:>6.1} | {delivered:>10} |",
        mib(to.rss),
        mib(to.peak)
    );
}

fn sent_messages(emulator: &GraphEmulator) -> usize {
    calls_by_kind(&emulator.tenant().log)
        .get("POST chats/…/messages")
        .copied()
        .unwrap_or(0)
}

/// Bob writes `rate` messages a second for `LOAD`; how many reached Graph
/// (given 30 s more to drain), of how many sent.
async fn load(emulator: &GraphEmulator, bob: &mut XmppClient, rate: usize) -> (usize, usize) {
    let before = sent_messages(emulator);
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < LOAD {
        let second = Instant::now();
        for _ in 0..rate {
            let to = format!("user{}@{DOMAIN}", i % TARGETS);
            let id = format!("s{rate}-{i}");
            bob.command(json!({"cmd": "message", "to": to, "body": id, "id": id}))
                .unwrap();
            i += 1;
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(second.elapsed())).await;
    }
    let drained = Instant::now();
    while sent_messages(emulator) - before < i && drained.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (sent_messages(emulator) - before, i)
}

async fn size(contacts: usize) {
    let teams_users = (contacts / 5).max(TARGETS);
    let dir = tempfile::tempdir().unwrap();
    let shadows = seed_shadow_accounts(&dir.path().join("gateway.db"), contacts, teams_users).await;
    let emulator = GraphEmulator::start(limited_seed(teams_users, shadows, None))
        .await
        .unwrap();
    let port = || prosody::free_port().unwrap();
    let (gateway_port, peer_s2s, webhook, admin) = (port(), port(), port(), port());
    let mut config = gateway_config(dir.path(), &emulator, gateway_port, peer_s2s);
    with_webhook(&mut config, dir.path(), webhook);
    without_per_contact_limits(&mut config);
    config.webhook.chat_notifications = xmppfed_config::ChatNotifications::Tenant;
    config.admin.listen = format!("127.0.0.1:{admin}").parse().unwrap();
    config.allow.internal_users = (0..teams_users)
        .map(|n| format!("user{n}@contoso.com"))
        .collect();
    config.presence.poll_interval_ms = xmppfed_config::PresenceConfig::default().poll_interval_ms;
    config.telemetry.log_level = "warn".into();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config.to_toml_string().unwrap()).unwrap();

    let started = Instant::now();
    let mut gateway = gateway_process(&file, None);
    let pid = gateway.id();
    let begin = sample(pid);
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    while !reqwest::get(&readyz)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the gateway never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_calls(
        &emulator,
        "GET users/…/chats",
        contacts,
        Duration::from_secs(1800),
    )
    .await;
    let up = sample(pid);
    row(
        contacts,
        &format!("start-up ({:.0} s)", started.elapsed().as_secs_f64()),
        begin,
        up,
        None,
    );
    tokio::time::sleep(IDLE).await;
    let idle = sample(pid);
    row(contacts, "idle, 60 s", up, idle, None);

    let (_server, mut bob) = prosody_with_bob(ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway_port)],
        s2s_port: Some(peer_s2s),
        ..ProsodyOptions::new(PEER)
    });
    let mut from = sample(pid);
    for rate in RATES {
        let delivered = load(&emulator, &mut bob, rate).await;
        let to = sample(pid);
        row(
            contacts,
            &format!("{rate} msg/s XMPP → Teams, 60 s"),
            from,
            to,
            Some(delivered),
        );
        from = to;
    }
    let throttled = refused(&emulator);
    println!("|        | 429s from Graph over the run: {throttled} | | | | |");
    assert!(gateway.is_running(), "the gateway process died");
    drop(bob);
    let _ = gateway.terminate(Duration::from_secs(20));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !prosody::available() || prosody::python().is_none() {
        println!("sizing benchmark skipped: needs Prosody and the Python client (scripts/test.sh)");
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    println!(
        "sizing: the release gateway binary as its own process; Graph emulator with Microsoft's Teams limits; loopback, 2 cores"
    );
    println!("| contacts | phase | RSS MiB | peak MiB | CPU % | delivered |");
    println!("|---|---|---|---|---|---|");
    for contacts in sizes {
        size(contacts).await;
    }
}
