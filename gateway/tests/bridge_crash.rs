//! Nothing lost across `kill -9`: the gateway binary carries a burst of
//! messages each way between a user on a real Prosody and a Teams user of
//! the emulated tenant, is killed with SIGKILL in the middle of each burst
//! and started again; every message arrives exactly once, in order.
//!
//! Towards Teams the gateway keeps Graph's 1 message per second per chat, so
//! that burst is 60 messages (a minute, two thirds still in the outbox at the
//! kill); from Teams it is 1,000.
//!
//! Prosody and the gateway authenticate each other with certificates (SASL
//! EXTERNAL), as in production, so Prosody enables XEP-0198 on its stream to
//! the gateway: the gateway acknowledges a stanza only once it is in the
//! outbox, and Prosody sends again what was never acknowledged. The other way
//! Prosody acknowledges what the gateway sends, and a message leaves the
//! outbox only then.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::{Duration, Instant};

use common::bridge::*;
use serde_json::json;
use xmppfed_e2e::daemon::Daemon;
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_e2e::prosody::{self, TestCa};
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;

/// XMPP → Teams: paced at one message per 1.05 s in the one chat.
const TO_TEAMS: usize = 60;
/// Teams → XMPP.
const BURST: usize = 1000;

/// The gateway as a pod whose container restarts: the same lease holder.
fn start(config: &std::path::Path) -> Daemon {
    let mut gateway = gateway_process(config, Some("gateway-0"));
    gateway
        .wait_for_log("Teams directory refreshed", Duration::from_secs(30))
        .unwrap();
    gateway
}

/// The bodies in the chat that start with `prefix`, in the chat's order.
fn in_teams(emulator: &GraphEmulator, chat: &str, prefix: &str) -> Vec<String> {
    chat_messages(emulator, chat)
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| c.starts_with(prefix))
        .collect()
}

/// The gateway's configuration, with certificates and the limits out of the
/// way (this test is about durability): its file, the gateway's s2s port and
/// Prosody's.
fn durable_config(
    dir: &std::path::Path,
    emulator: &GraphEmulator,
    ca: &TestCa,
) -> (std::path::PathBuf, u16, u16) {
    let port = || prosody::free_port().unwrap();
    let (gateway_port, prosody_s2s, webhook, admin) = (port(), port(), port(), port());
    let mut config = gateway_config(dir, emulator, gateway_port, prosody_s2s);
    with_webhook(&mut config, dir, webhook);
    config.admin.listen = format!("127.0.0.1:{admin}").parse().unwrap();
    with_certificates(&mut config, ca);
    // Limits out of the way: this test is about durability.
    config.throttle.default.messages_per_minute = 100_000;
    config.throttle.default.burst = 10_000;
    config.throttle.default.bytes_per_minute = 100_000_000;
    let config_file = dir.join("gateway.toml");
    std::fs::write(&config_file, config.to_toml_string().unwrap()).unwrap();
    (config_file, gateway_port, prosody_s2s)
}

/// Waits until Bob has every one of Alice's messages, by origin-id.
fn wait_for_every_origin_id(bob: &mut XmppClient) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (distinct, _) = from_teams_by_origin_id(&bob.seen);
        if distinct.len() >= BURST {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {BURST} arrived",
            distinct.len()
        );
        wait(bob, 180, |e| {
            e["event"] == "message"
                && e["type"] == "chat"
                && e["body"].as_str().is_some_and(|b| b.starts_with('t'))
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_each_way_survives_kill_9_exactly_once_in_order() {
    if skip(prosody::available(), "prosody") {
        return;
    }
    common::init();
    let graph_addr = format!("127.0.0.1:{}", prosody::free_port().unwrap())
        .parse()
        .unwrap();
    let emulator = GraphEmulator::start_on(seed(), graph_addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = std::sync::Arc::new(TestCa::new(dir.path()).unwrap());

    let (config_file, gateway_port, prosody_s2s) = durable_config(dir.path(), &emulator, &ca);

    let mut gateway = Some(start(&config_file));
    let (server, mut bob) = prosody_with_certificates(gateway_port, prosody_s2s, &ca);
    bob.command(json!({"cmd": "message", "to": ALICE, "body": "warm-up", "id": "warm"}))
        .unwrap();
    wait(&mut bob, 60, |e| e["received"] == "warm");
    // Prosody took our stream with SASL EXTERNAL and acknowledges what we
    // send it (XEP-0198): a message leaves the outbox once Prosody has it.
    gateway
        .as_mut()
        .unwrap()
        .wait_for_log(
            "stream management enabled: stanzas count once acknowledged",
            Duration::from_secs(10),
        )
        .unwrap();
    let shadow = upn_for("bob@xmpp.test", SHADOW_DOMAIN);
    let chat = chat_between(&emulator, "alice@contoso.com", &shadow).unwrap();

    // XMPP → Teams: killed once a third has arrived.
    let started = Instant::now();
    bob.command(json!({"cmd": "burst", "to": ALICE, "count": TO_TEAMS, "prefix": "x"}))
        .unwrap();
    let at_kill = until(120, "a third of the burst in Teams", || {
        let n = in_teams(&emulator, &chat, "x").len();
        (n >= TO_TEAMS / 3).then_some(n)
    })
    .await;
    drop(gateway.take()); // SIGKILL
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway = Some(start(&config_file));
    until(180, "the whole burst in Teams", || {
        (in_teams(&emulator, &chat, "x").len() >= TO_TEAMS).then_some(())
    })
    .await;
    let to_teams = started.elapsed();
    // Anything doubled would come in now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected: Vec<String> = (0..TO_TEAMS).map(|i| format!("x{i}")).collect();
    assert_eq!(
        in_teams(&emulator, &chat, "x"),
        expected,
        "XMPP → Teams: each exactly once, in order (killed at {at_kill})"
    );

    // Teams → XMPP: Alice writes 1,000 messages; the gateway is killed a third in.
    let started = Instant::now();
    let mut killed_at = 0;
    for i in 0..BURST {
        alice_writes(&emulator, &chat, &format!("t{i}"), "text").await;
        if i == BURST / 3 {
            drop(gateway.take());
            killed_at = i;
        }
        if i == BURST / 2 {
            gateway = Some(start(&config_file));
        }
    }
    // The gateway lets an outbox entry go once it is written to Prosody's
    // stream; a kill between that write and the outbox update sends it again
    // with the same id and origin-id (XEP-0359), which the receiving client
    // drops. The test is that client: it keeps the first of each origin-id.
    wait_for_every_origin_id(&mut bob);
    let from_teams = started.elapsed();
    tokio::task::block_in_place(|| bob.drain(Duration::from_secs(2)));
    let (distinct, repeats) = from_teams_by_origin_id(&bob.seen);
    let expected: Vec<String> = (0..BURST).map(|i| format!("t{i}")).collect();
    assert_eq!(
        distinct, expected,
        "Teams → XMPP: each exactly once by origin-id, in order (killed after {killed_at})"
    );
    // One conversation has one message in flight: one kill, at most one repeat.
    assert!(repeats <= 1, "{repeats} messages sent again after one kill");
    eprintln!(
        "kill -9 mid-burst: {TO_TEAMS} XMPP → Teams in {to_teams:?} (killed at {at_kill}); {BURST} Teams → XMPP in {from_teams:?} ({repeats} sent again after the kill, same origin-id)"
    );
    drop(bob);
    drop(gateway);
    drop(server);
}

/// Alice's messages as a client that honours XEP-0359 sees them: the first of
/// each origin-id, in order, and how many repeats it dropped. A repeat must be
/// the same message (same body, id equal to the origin-id), or it would be a
/// different message passed off as a repeat.
fn from_teams_by_origin_id(seen: &[serde_json::Value]) -> (Vec<String>, usize) {
    let mut first: std::collections::HashMap<String, String> = Default::default();
    let (mut distinct, mut repeats) = (Vec::new(), 0);
    for e in seen
        .iter()
        .filter(|e| e["event"] == "message" && e["type"] == "chat")
    {
        let Some(body) = e["body"].as_str().filter(|b| b.starts_with('t')) else {
            continue;
        };
        let origin = e["origin_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{body} came without an origin-id"));
        assert_eq!(e["id"], origin, "{body}: the id is the origin-id");
        match first.get(origin) {
            Some(earlier) => {
                assert_eq!(
                    earlier, body,
                    "origin-id {origin} reused for another message"
                );
                repeats += 1;
            }
            None => {
                first.insert(origin.to_owned(), body.to_owned());
                distinct.push(body.to_owned());
            }
        }
    }
    (distinct, repeats)
}
