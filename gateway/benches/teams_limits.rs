//! Microsoft's Teams limits at scale (issue 16): prints figures, asserts nothing.
//!
//! The Graph emulator enforces Microsoft's published limits
//! (https://learn.microsoft.com/graph/throttling-limits: POST chat message
//! 20/s per app per tenant and 1/s per chat, presence 1,500 per 30 s, other
//! Teams calls 30/s) and answers 429 with Retry-After past them. Side by side
//! in one run:
//!
//! 1. **At the ceiling.** Bob floods 40 Teams users (40 chats) from XMPP while
//!    Dave, a quiet contact, writes once a second: Bob's sustained rate
//!    against the tenant's 20/s, 429s, Graph calls per delivered message, and
//!    Dave's receipt latency (a receipt leaves once Graph has the message).
//! 2. **Presence that does not fade.** Graph times an Available application
//!    session out after 5 minutes without a setPresence; here time runs 60×
//!    (5 s for 5 minutes, the keep-alive 4 s for 240 s) and Bob stays online
//!    for 30 emulated minutes: how often Teams showed him other than
//!    Available, and setPresence calls per emulated hour.
//! 3. **10,000 contacts, 2,000 Teams users.** The store holds 10,000 shadow
//!    accounts and their subscriptions (five contacts per Teams user); the
//!    gateway starts with one tenant-wide chat subscription: its start-up
//!    (Graph calls, time), then a steady window, counted per category and
//!    given per 1,000 contacts per hour, with the periodic work longer than
//!    the window (discovery, renewals) amortised from what one of each cost.
//!
//! Needs Prosody and the Python client (scripts/test.sh installs both).
//! Run: `cargo bench -p xmppfed-gateway --bench teams_limits [-- ceiling|scale]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failure with its reason

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::bridge::*;
use common::scale::{calls_by_kind, limited_seed, refused, seed_shadow_accounts, until_calls};
use serde_json::json;
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_e2e::prosody::{self, ProsodyOptions};
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;

/// Teams users Bob floods (one chat each), and messages to each.
const FLOOD_CHATS: usize = 40;
const PER_CHAT: usize = 10;
/// Dave's messages, one a second, while Bob floods.
const QUIET: usize = 20;
/// Part 3's tenant.
const TEAMS_USERS: usize = 2_000;
const CONTACTS: usize = 10_000;
/// The steady window of part 3.
const WINDOW: Duration = Duration::from_secs(120);

struct Ceiling {
    calls: BTreeMap<String, usize>,
    bob_per_sec: f64,
    calls_per_message: f64,
    throttled: u32,
    dave: Vec<f64>,
}

/// Part 1: Bob floods, Dave writes once a second.
fn at_the_ceiling(
    emulator: &GraphEmulator,
    bob: &mut XmppClient,
    dave: &mut XmppClient,
) -> Ceiling {
    let to = |n: usize| format!("user{n}@teams.test");
    // Warm: every chat exists and both shadow accounts are signed in.
    for n in 0..FLOOD_CHATS {
        let id = format!("warm{n}");
        bob.command(json!({"cmd": "message", "to": to(n), "body": "warm-up", "id": id}))
            .unwrap();
    }
    for n in 0..FLOOD_CHATS {
        let id = format!("warm{n}");
        bob.wait_for(Duration::from_secs(120), |e| e["received"] == id.as_str())
            .unwrap();
    }
    dave.command(json!({"cmd": "message", "to": ALICE, "body": "warm-up", "id": "dwarm"}))
        .unwrap();
    dave.wait_for(Duration::from_secs(60), |e| e["received"] == "dwarm")
        .unwrap();

    let log_before = emulator.tenant().log.len();
    let refused_before = refused(emulator);
    let total = FLOOD_CHATS * PER_CHAT;
    let (bob_times, dave) = std::thread::scope(|s| {
        let quiet = s.spawn(|| {
            let mut latencies = Vec::new();
            for i in 0..QUIET {
                let id = format!("d{i}");
                dave.command(json!({"cmd": "message", "to": ALICE, "body": id, "id": id}))
                    .unwrap();
                let e = dave
                    .wait_for(Duration::from_secs(120), |e| e["received"] == id.as_str())
                    .unwrap();
                latencies.push(e["latency_ms"].as_f64().unwrap_or(f64::NAN));
                std::thread::sleep(Duration::from_secs(1));
            }
            latencies
        });
        for i in 0..total {
            let id = format!("b{i}");
            bob.command(json!({"cmd": "message", "to": to(i % FLOOD_CHATS), "body": id, "id": id}))
                .unwrap();
        }
        let mut times = Vec::with_capacity(total);
        for _ in 0..total {
            bob.wait_for(Duration::from_secs(300), |e| {
                e["received"].as_str().is_some_and(|r| r.starts_with('b'))
            })
            .unwrap();
            times.push(Instant::now());
        }
        (times, quiet.join().unwrap())
    });
    let span = bob_times[total - 1] - bob_times[0];
    // Each request Graph throttles, a $batch's items each (not its envelope).
    let calls = calls_by_kind(
        &emulator.tenant().log[log_before..]
            .iter()
            .filter(|l| !l.ends_with("/$batch"))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let count: usize = calls.values().sum();
    println!(
        "   Dave's latencies in the order sent (ms): {:?}",
        dave.iter().map(|l| l.round()).collect::<Vec<_>>()
    );
    let mut dave = dave;
    dave.sort_by(|a, b| a.total_cmp(b));
    Ceiling {
        bob_per_sec: (total - 1) as f64 / span.as_secs_f64(),
        calls_per_message: count as f64 / (total + QUIET) as f64,
        calls,
        throttled: refused(emulator) - refused_before,
        dave,
    }
}

/// Part 2: Bob online for 30 emulated minutes (60× time): samples of what
/// Teams shows and the setPresence calls made.
async fn thirty_minutes(emulator: &GraphEmulator, bob: &mut XmppClient) -> (usize, usize, usize) {
    let upn = upn_for("bob@xmpp.test", SHADOW_DOMAIN);
    // Prosody sends Bob's presence to those he shares it with: Alice.
    bob.command(json!({"cmd": "subscribe", "to": ALICE}))
        .unwrap();
    wait(bob, 30, |e| {
        e["event"] == "presence" && e["type"] == "subscribed" && e["from"] == ALICE
    });
    bob.command(json!({"cmd": "presence", "show": "", "status": ""}))
        .unwrap();
    let shown = || {
        let mut t = emulator.tenant();
        t.user_mut(&upn)
            .map(|u| u.presence.aggregate(Instant::now()).0)
            .unwrap_or_default()
    };
    until(30, "Bob Available in Teams", || {
        (shown() == "Available").then_some(())
    })
    .await;
    let id = emulator.tenant().user(&upn).map(|u| u.id.clone()).unwrap();
    let set_presence = || {
        emulator
            .tenant()
            .log
            .iter()
            .filter(|l| l.starts_with("POST") && l.contains(&id) && l.ends_with("/setPresence"))
            .count()
    };
    let before = set_presence();
    let (mut samples, mut faded) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        samples += 1;
        if shown() != "Available" {
            faded += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (samples, faded, set_presence() - before)
}

/// Part 1 and 2's world: Bob and Dave on Prosody, the gateway in this
/// process, Microsoft's limits on, time 60× for presence.
async fn small_world() {
    let emulator = GraphEmulator::start(limited_seed(FLOOD_CHATS, Vec::new(), Some(5)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = || prosody::free_port().unwrap();
    let (gateway_port, peer_s2s, webhook) = (port(), port(), port());
    let mut config = gateway_config(dir.path(), &emulator, gateway_port, peer_s2s);
    // As in production: change notifications, one subscription for the tenant.
    with_webhook(&mut config, dir.path(), webhook);
    config.webhook.chat_notifications = xmppfed_config::ChatNotifications::Tenant;
    config.allow.internal_users = (0..FLOOD_CHATS)
        .map(|n| format!("user{n}@contoso.com"))
        .chain(["alice@contoso.com".to_owned()])
        .collect();
    without_per_contact_limits(&mut config);
    config.presence.keep_alive_secs = 4;
    let gateway = start_gateway(&config).await;
    let (server, mut bob) = prosody_with_bob(ProsodyOptions {
        routes: vec![(DOMAIN.into(), gateway_port)],
        s2s_port: Some(peer_s2s),
        ..ProsodyOptions::new(PEER)
    });
    server.register("dave", "davepw").unwrap();
    let mut dave = connect("dave@xmpp.test", "davepw", server.c2s_port);

    let c = tokio::task::block_in_place(|| at_the_ceiling(&emulator, &mut bob, &mut dave));
    println!(
        "1. at the ceiling: Bob floods {} messages to {FLOOD_CHATS} chats; Dave writes one a second",
        FLOOD_CHATS * PER_CHAT
    );
    println!(
        "   Bob sustained {:.1} msg/s = {:.2} of Microsoft's 20/s per tenant; 429s from Graph: {}; Graph calls per delivered message: {:.3}",
        c.bob_per_sec,
        c.bob_per_sec / 20.0,
        c.throttled,
        c.calls_per_message
    );
    println!(
        "   Dave (quiet, {QUIET} messages): receipt latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&c.dave, 0.5),
        percentile(&c.dave, 0.99),
        c.dave.last().copied().unwrap_or(f64::NAN)
    );

    for (kind, n) in &c.calls {
        println!("      {kind:<40} {n:>7}");
    }

    let (samples, faded, calls) = thirty_minutes(&emulator, &mut bob).await;
    println!(
        "2. presence: Bob online 30 emulated minutes (60×): {faded} of {samples} samples not Available; {calls} setPresence = {:.1} per hour online",
        calls as f64 * 2.0
    );
    drop((bob, dave, server));
    gateway.stop().await;
}

fn print_per_hour(title: &str, kinds: &BTreeMap<String, usize>, over: Duration) {
    let scale = 3600.0 / over.as_secs_f64() * 1000.0 / CONTACTS as f64;
    let total: usize = kinds.values().sum();
    println!(
        "   {title}: {total} calls in {:.0} s = {:.0} per 1,000 contacts per hour",
        over.as_secs_f64(),
        total as f64 * scale
    );
    for (kind, n) in kinds {
        println!(
            "      {kind:<40} {n:>7}  ({:.0} /1,000 contacts/h)",
            *n as f64 * scale
        );
    }
}

/// Part 3: 10,000 contacts and 2,000 Teams users.
async fn at_scale() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("gateway.db");
    let seeding = Instant::now();
    let shadows = seed_shadow_accounts(&store_path, CONTACTS, TEAMS_USERS).await;
    let emulator = GraphEmulator::start(limited_seed(TEAMS_USERS, shadows, None))
        .await
        .unwrap();
    let seeded = seeding.elapsed();
    let port = || prosody::free_port().unwrap();
    let (gateway_port, peer_s2s, webhook) = (port(), port(), port());
    let mut config = gateway_config(dir.path(), &emulator, gateway_port, peer_s2s);
    with_webhook(&mut config, dir.path(), webhook);
    config.webhook.chat_notifications = xmppfed_config::ChatNotifications::Tenant;
    config.allow.internal_users = (0..TEAMS_USERS)
        .map(|n| format!("user{n}@contoso.com"))
        .collect();
    config.presence.poll_interval_ms = xmppfed_config::PresenceConfig::default().poll_interval_ms;

    let started = Instant::now();
    let gateway = start_gateway(&config).await;
    let ready = started.elapsed();
    // Start-up ends when every shadow account's chats were listed once.
    let discovery = until_calls(
        &emulator,
        "GET users/…/chats",
        CONTACTS,
        Duration::from_secs(900),
    )
    .await;
    let (startup_log, startup_sign_ins) = {
        let t = emulator.tenant();
        (t.log.clone(), t.sign_ins.len())
    };
    tokio::time::sleep(WINDOW).await;
    let (window_log, window_sign_ins) = {
        let t = emulator.tenant();
        (
            t.log[startup_log.len()..].to_vec(),
            t.sign_ins.len() - startup_sign_ins,
        )
    };
    let throttled = refused(&emulator);
    gateway.stop().await;

    let startup_kinds = calls_by_kind(&startup_log);
    println!(
        "3. {CONTACTS} contacts, {TEAMS_USERS} Teams users (store and tenant seeded in {:.1} s), one tenant-wide chat subscription",
        seeded.as_secs_f64()
    );
    println!(
        "   start-up: ready in {:.1} s; every shadow account's chats listed after {:.1} s; {} Graph calls and {startup_sign_ins} user sign-ins; {throttled} 429s over the whole run",
        ready.as_secs_f64(),
        (ready + discovery).as_secs_f64(),
        startup_log.len(),
    );
    for (kind, n) in &startup_kinds {
        println!("      {kind:<40} {n:>7}");
    }
    print_per_hour("steady window", &calls_by_kind(&window_log), WINDOW);
    println!("      user sign-ins (token endpoint)            {window_sign_ins:>7}");
    // Periodic work longer than the window, amortised from start-up's one
    // round: discovery (chats listed, tokens) every 6 h while notifications
    // flow; the tenant subscription renewed every 55 minutes.
    let discovery_calls = startup_kinds.get("GET users/…/chats").copied().unwrap_or(0);
    println!(
        "   amortised: discovery {discovery_calls} listings every 6 h = {:.0} per 1,000 contacts per hour (plus one sign-in each when its refresh token has lapsed); subscription renewal 1 per 55 min = {:.2}",
        discovery_calls as f64 / 6.0 * 1000.0 / CONTACTS as f64,
        60.0 / 55.0 * 1000.0 / CONTACTS as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !prosody::available() || prosody::python().is_none() {
        println!(
            "teams_limits benchmark skipped: needs Prosody and the Python client (scripts/test.sh)"
        );
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    println!(
        "teams_limits: Microsoft's Teams limits enforced by the emulator; loopback, release build, 2 cores"
    );
    // `-- ceiling` or `-- scale` runs one part (1–2, or 3); both by default.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    if runs("ceiling") {
        small_world().await;
    }
    if runs("scale") {
        at_scale().await;
    }
}
