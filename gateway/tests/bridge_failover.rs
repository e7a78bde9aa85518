//! Failover: two gateway processes (replicas) share one store. One holds the
//! bridge lease and runs the bridge; the other stands by, and takes over when
//! the first is killed with SIGKILL. While both run, a message from Teams
//! reaches the XMPP user once (one bridge); after the kill, the standby
//! carries the next one.
//!
//! Certificates both ways (SASL EXTERNAL): Prosody accepts the standby's
//! stream without calling back the domain's (dead) first replica.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::{Duration, Instant};

use common::bridge::*;
use serde_json::json;
use xmppfed_e2e::daemon::Daemon;
use xmppfed_e2e::graph::GraphEmulator;
use xmppfed_e2e::prosody::{self, TestCa};
use xmppfed_gateway::bridge::contacts::shadow::upn_for;

const LEASE_SECS: u64 = 6;

/// Two processes on one host: each its own lease holder.
fn start(config: &std::path::Path) -> Daemon {
    gateway_process(config, None)
}

/// The `xmppfed_bridge_leader` gauge of the replica whose admin port is `admin`.
async fn leader_gauge(admin: u16) -> String {
    let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("xmppfed_bridge_leader "))
        .unwrap_or("absent")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_takes_over_when_the_bridge_replica_dies() {
    if skip(prosody::available(), "prosody") {
        return;
    }
    common::init();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = std::sync::Arc::new(TestCa::new(dir.path()).unwrap());

    let port = || prosody::free_port().unwrap();
    let prosody_s2s = port();
    // Two replicas: the same domain, certificate and store; ports of their own.
    let replica = |name: &str| {
        let (s2s, webhook, admin) = (port(), port(), port());
        let mut config = gateway_config(dir.path(), &emulator, s2s, prosody_s2s);
        with_webhook(&mut config, dir.path(), webhook);
        config.admin.listen = format!("127.0.0.1:{admin}").parse().unwrap();
        with_certificates(&mut config, &ca);
        config.leader.lease_secs = LEASE_SECS;
        // Notifications go to the first replica's webhook (as Graph would to
        // one URL, here a dead one after the kill): the standby reads chats.
        config.messages.reconcile_interval_secs = 1;
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, config.to_toml_string().unwrap()).unwrap();
        (file, s2s, admin)
    };
    let (a_config, a_s2s, a_admin) = replica("a");
    let (b_config, _, b_admin) = replica("b");

    let mut a = start(&a_config);
    a.wait_for_log("this replica runs the bridge", Duration::from_secs(30))
        .unwrap();
    let mut b = start(&b_config);
    b.wait_for_log(
        "standing by: another replica runs the bridge",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        (leader_gauge(a_admin).await, leader_gauge(b_admin).await),
        ("1".to_owned(), "0".to_owned())
    );

    let (server, mut bob) = prosody_with_certificates(a_s2s, prosody_s2s, &ca);
    bob.command(json!({"cmd": "message", "to": ALICE, "body": "hello", "id": "hello"}))
        .unwrap();
    wait(&mut bob, 60, |e| e["received"] == "hello");
    let shadow = upn_for("bob@xmpp.test", SHADOW_DOMAIN);
    let chat = chat_between(&emulator, "alice@contoso.com", &shadow).unwrap();
    let from_alice = |body: &'static str| {
        move |e: &serde_json::Value| e["event"] == "message" && e["body"] == body
    };

    // One bridge runs: Alice's message reaches Bob once, though both replicas
    // read the store and the chats every second.
    alice_writes(&emulator, &chat, "only once", "text").await;
    wait(&mut bob, 30, from_alice("only once"));
    tokio::task::block_in_place(|| bob.drain(Duration::from_secs(3)));
    let copies = |bob: &xmppfed_e2e::xmpp_client::XmppClient, body: &str| {
        bob.seen
            .iter()
            .filter(|e| e["event"] == "message" && e["body"] == body)
            .count()
    };
    assert_eq!(copies(&bob, "only once"), 1);

    // The bridge replica dies; the standby takes the lapsed lease.
    let killed = Instant::now();
    drop(a); // SIGKILL
    b.wait_for_log("this replica runs the bridge", Duration::from_secs(30))
        .unwrap();
    let takeover = killed.elapsed();
    assert_eq!(leader_gauge(b_admin).await, "1");

    alice_writes(&emulator, &chat, "after the failover", "text").await;
    let sent = Instant::now();
    wait(&mut bob, 30, from_alice("after the failover"));
    let carried = sent.elapsed();
    tokio::task::block_in_place(|| bob.drain(Duration::from_secs(2)));
    assert_eq!(copies(&bob, "after the failover"), 1);
    assert_eq!(copies(&bob, "only once"), 1, "nothing carried twice");
    eprintln!(
        "failover with a {LEASE_SECS} s lease: the standby ran the bridge {takeover:?} after the kill; \
         the next message from Teams reached XMPP in {carried:?}"
    );
    drop(bob);
    drop(b);
    drop(server);
}
