//! The webhook listener against a flood, on the gateway binary: 20,000
//! half-sent requests held by two client processes, a slow drip of
//! headers, and a flood of valid notifications, all at once. A good
//! notification from another address is still accepted within Graph's
//! deadline, the drip is closed at the header deadline, the process lives,
//! and its memory after the flood is back near its baseline. Figures are
//! printed (`--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::bridge::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmppfed_e2e::graph::GraphEmulator;

/// Half-sent requests, over two processes (a process may hold 20,000
/// descriptors at most here).
const HALF_OPEN: usize = 20_000;
/// How long the clients hold their connections.
const HOLD_SECS: u64 = 8;
/// Microsoft Graph waits this long for a notification's answer.
const GRAPH_DEADLINE: Duration = Duration::from_secs(3);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A client process holding `n` half-sent requests to `port` for HOLD_SECS.
fn half_open_clients(port: u16, n: usize) -> std::process::Child {
    let script = format!(
        "import socket, time, resource\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)\n\
         held = []\n\
         for i in range({n}):\n\
         \x20   try:\n\
         \x20       s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n\
         \x20       s.sendall(b'POST /graph/notifications HTTP/1.1\\r\\nhost: gw\\r\\ncontent-type: appl')\n\
         \x20       held.append(s)\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print(len(held), flush=True)\n\
         time.sleep({HOLD_SECS})\n"
    );
    std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn notification(state: &str, n: usize) -> serde_json::Value {
    json!({"value": [{"subscriptionId": format!("flood-{n}"), "clientState": state,
        "changeType": "created", "resource": format!("chats('19:x')/messages('{n}')"),
        "resourceData": {"id": n.to_string()}, "tenantId": "5c0ffee0-0000-4000-8000-0000000000b1"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_holds_nothing_and_a_good_notification_gets_through() {
    common::init();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = || xmppfed_e2e::prosody::free_port().unwrap();
    let (webhook, admin, s2s, peer) = (port(), port(), port(), port());
    let mut config = gateway_config(dir.path(), &emulator, s2s, peer);
    with_webhook(&mut config, dir.path(), webhook);
    config.admin.listen = format!("127.0.0.1:{admin}").parse().unwrap();
    config.webhook.limits.header_read_timeout_secs = 2;
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config.to_toml_string().unwrap()).unwrap();
    let mut gateway = gateway_process(&file, None);
    let pid = gateway.id();
    let state = "client state of this gateway";
    let url = format!("http://127.0.0.1:{webhook}/graph/notifications");
    // A good client from another loopback address (the flood's share of
    // connections is per address).
    let good = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while good
        .post(&url)
        .json(&notification(state, 0))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the webhook never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..50 {
        good.post(&url)
            .json(&notification(state, n))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_kib(pid);

    // A drip of header bytes from its own address, connected before the flood.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut s = socket
        .connect(format!("127.0.0.1:{webhook}").parse().unwrap())
        .await
        .unwrap();
    // The flood: half-sent requests, the drip, valid notifications.
    let flood_started = Instant::now();
    let clients = [
        half_open_clients(webhook, HALF_OPEN / 2),
        half_open_clients(webhook, HALF_OPEN / 2),
    ];
    let drip = tokio::spawn(async move {
        let started = Instant::now();
        for b in b"POST /graph/notifications HTTP/1.1\r\nhost: gw\r\n"
            .iter()
            .cycle()
        {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut rest)).await;
        started.elapsed()
    });
    let valid = {
        let url = url.clone();
        tokio::spawn(async move {
            let flood = reqwest::Client::builder()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)))
                .build()
                .unwrap();
            let mut accepted = 0usize;
            for round in 0..40 {
                let posts = (0..50).map(|i| {
                    flood
                        .post(&url)
                        .json(&notification(state, 1000 + round * 50 + i))
                        .send()
                });
                for r in futures::future::join_all(posts).await {
                    accepted += usize::from(r.is_ok_and(|r| r.status() == 202));
                }
            }
            accepted
        })
    };
    // Meanwhile Graph's own notification and handshake get through in time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut peak = baseline;
    let mut worst = Duration::ZERO;
    while flood_started.elapsed() < Duration::from_secs(HOLD_SECS) {
        peak = peak.max(rss_kib(pid));
        let asked = Instant::now();
        let answer = tokio::time::timeout(
            GRAPH_DEADLINE,
            good.post(&url).json(&notification(state, 99)).send(),
        )
        .await
        .expect("a good notification answered within Graph's deadline during the flood")
        .unwrap();
        assert_eq!(answer.status(), 202);
        let echoed = tokio::time::timeout(
            GRAPH_DEADLINE,
            good.post(format!("{url}?validationToken=handshake-during-flood"))
                .send(),
        )
        .await
        .expect("the validation handshake answered within Graph's deadline")
        .unwrap();
        assert_eq!(echoed.text().await.unwrap(), "handshake-during-flood");
        worst = worst.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut held = 0usize;
    for mut c in clients {
        let mut out = String::new();
        use std::io::Read as _;
        c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        held += out.trim().parse::<usize>().unwrap_or(0);
        c.wait().unwrap();
    }
    if !gateway.is_running() {
        panic!("the gateway died:\n{}", gateway.lines_so_far().join("\n"));
    }
    let drip_closed = drip.await.unwrap();
    let valid = valid.await.unwrap();
    assert!(gateway.is_running(), "the gateway survived the flood");
    assert!(
        drip_closed < Duration::from_secs(5),
        "the drip was closed at the 2 s header deadline, not after {drip_closed:?}"
    );

    // Memory back near the baseline once the flood is over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = |reason: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("xmppfed_listener_refused_total")
                    && l.contains("listener=\"webhook\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    eprintln!(
        "webhook flood: {held} of {HALF_OPEN} half-sent requests connected, {valid} of 2000 valid \
         notifications accepted; Graph's notification and handshake answered in {:.0} ms at worst; \
         refused: {} over the per-address share, {} over the total, {} closed at the header deadline; \
         the drip closed after {:.1} s; RSS {} KiB before, {} KiB at the peak, {} KiB after",
        worst.as_secs_f64() * 1000.0,
        refused("per_source"),
        refused("connections"),
        refused("header_timeout"),
        drip_closed.as_secs_f64(),
        baseline,
        peak,
        after
    );
    assert!(refused("per_source") > 0.0, "{metrics}");
    assert!(refused("header_timeout") > 0.0, "{metrics}");
    assert!(
        after <= baseline + 16 * 1024,
        "RSS {after} KiB after the flood, {baseline} KiB before"
    );
    gateway.terminate(Duration::from_secs(10)).unwrap();
}
