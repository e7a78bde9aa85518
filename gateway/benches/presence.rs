//! Presence fan-out benchmark: prints figures, asserts nothing.
//!
//! 10,000 Teams users in the emulated tenant, 50,000 subscriptions (five
//! remote contacts each) in an SQLite store. Measures loading the roster
//! (time, memory per relationship), one poll of every user through the Graph
//! client and the emulator, and the time from a change in Teams to the last
//! presence stanza handed to the s2s layer (here a channel): every user
//! changing at once, and 1 % of them.
//!
//! Run: `cargo bench -p xmppfed-gateway --bench presence`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use xmppfed_e2e::graph::tenant::Session;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::bridge::XmppOut;
use xmppfed_gateway::bridge::contacts::cards::Cards;
use xmppfed_gateway::bridge::contacts::roster::Roster;
use xmppfed_gateway::bridge::metrics::BridgeMetrics;
use xmppfed_gateway::bridge::presence::OutOfOffice;
use xmppfed_gateway::bridge::presence::teams::{PollInterval, TeamsPresence};
use xmppfed_gateway::bridge::users::directory::Directory;
use xmppfed_gateway::bridge::users::identity::LocalPartRule;
use xmppfed_gateway::graph::api::User;
use xmppfed_gateway::graph::{Budgets, GraphClient, RetryPolicy, Tokens};
use xmppfed_gateway::s2s::Stanza;
use xmppfed_gateway::store::Store;

const TENANT: &str = "5c0ffee0-0000-4000-8000-0000000000bf";
const USERS: usize = 10_000;
const CONTACTS_PER_USER: usize = 5;

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn set_everyone(
    emulator: &GraphEmulator,
    users: std::ops::Range<usize>,
    availability: &str,
    activity: &str,
) {
    let mut tenant = emulator.tenant();
    for i in users {
        let user = tenant.user_mut(&id(i)).expect("seeded user");
        user.presence.sessions.insert(
            "teams-client".into(),
            Session {
                availability: availability.into(),
                activity: activity.into(),
                expires: Instant::now() + Duration::from_secs(3600),
                keep_alive: None,
            },
        );
    }
}

/// Counts stanzas handed over and wakes the waiter at a target.
struct Counter {
    seen: AtomicUsize,
    target: AtomicUsize,
    reached: Notify,
}

async fn wait_for(counter: &Counter, n: usize) {
    counter.target.store(n, Ordering::SeqCst);
    while counter.seen.load(Ordering::SeqCst) < n {
        counter.reached.notified().await;
    }
}

/// The tenant of `USERS` users, all Available, and a Graph client of it.
async fn tenant() -> (GraphEmulator, Arc<GraphClient>) {
    let users: Vec<serde_json::Value> = (0..USERS)
        .map(|i| json!({"id": id(i), "userPrincipalName": format!("user{i}@contoso.com"), "displayName": format!("User {i}")}))
        .collect();
    let seed: Seed = serde_json::from_value(json!({
        "tenantId": TENANT,
        "apps": [{"clientId": "bench", "clientSecret": "s", "roles": ["Presence.Read.All", "User.Read.All"]}],
        "users": users,
    }))
    .unwrap();
    let emulator = GraphEmulator::start(seed).await.unwrap();
    set_everyone(&emulator, 0..USERS, "Available", "Available");
    let http = reqwest::Client::new();
    let tokens = Tokens::new(
        http.clone(),
        &emulator.authority_url(),
        TENANT,
        "bench",
        SecretString::from("s".to_owned()),
    );
    let graph = Arc::new(GraphClient::new(
        http,
        &emulator.graph_url(),
        tokens,
        Budgets::published_limits(),
        RetryPolicy::default(),
    ));
    (emulator, graph)
}

fn directory() -> Directory {
    let directory = Directory::default();
    let profiles: Vec<User> = (0..USERS)
        .map(|i| {
            serde_json::from_value(
                json!({"id": id(i), "userPrincipalName": format!("user{i}@contoso.com")}),
            )
            .unwrap()
        })
        .collect();
    directory.set(profiles, &LocalPartRule::UpnLocalPart);
    directory
}

/// 50,000 relationships written in one transaction, then read as the gateway
/// does at start: the roster, how long it took, and RSS per relationship.
async fn roster(path: &std::path::Path) -> (Roster, Duration, f64) {
    drop(Store::sqlite(path).await.unwrap());
    {
        let mut conn = rusqlite::Connection::open(path).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..USERS {
            for c in 0..CONTACTS_PER_USER {
                tx.execute(
                    "INSERT INTO contacts (teams_user, remote_jid, state) VALUES (?1, ?2, 'both')",
                    (id(i), format!("contact{i}-{c}@xmpp{}.example", c % 3)),
                )
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let store = Arc::new(Store::sqlite(path).await.unwrap());
    let before = xmppfed_e2e::rss_bytes();
    let started = Instant::now();
    let roster = Roster::load(store).await.unwrap();
    let load = started.elapsed();
    let per_contact =
        (xmppfed_e2e::rss_bytes().saturating_sub(before)) as f64 / roster.len() as f64;
    (roster, load, per_contact)
}

/// An s2s layer that counts the stanzas handed to it.
fn counting_out() -> (Arc<dyn XmppOut>, Arc<Counter>) {
    let (tx, mut rx) = mpsc::channel::<Stanza>(65_536);
    let counter = Arc::new(Counter {
        seen: AtomicUsize::new(0),
        target: AtomicUsize::new(usize::MAX),
        reached: Notify::new(),
    });
    let c = counter.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let seen = c.seen.fetch_add(1, Ordering::SeqCst) + 1;
            if seen >= c.target.load(Ordering::SeqCst) {
                c.reached.notify_one();
            }
        }
    });
    (Arc::new(common::ChannelOut(tx)), counter)
}

/// One poll, timed until the stanzas counted reach `until`.
async fn poll_until(teams: &TeamsPresence, counter: &Counter, until: usize) -> Duration {
    let t = Instant::now();
    teams.poll_once().await.unwrap();
    wait_for(counter, until).await;
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (emulator, graph) = tenant().await;
    let directory = directory();
    let dir = tempfile::tempdir().unwrap();
    let (roster, load, per_contact) = roster(&dir.path().join("bench.db")).await;
    let (out, counter) = counting_out();
    let cards = Arc::new(Cards::new(directory.clone(), Duration::from_secs(3600)));
    let interval = PollInterval::new(Duration::from_secs(1), Duration::from_secs(30));
    let teams = TeamsPresence::new(
        graph,
        directory,
        roster.clone(),
        cards,
        out,
        xmppfed_gateway::bridge::presence::teams::Settings {
            domain: "teams.example".into(),
            resource: "teams".into(),
            out_of_office: OutOfOffice::default(),
            interval: interval.clone(),
        },
        BridgeMetrics::detached(),
    );

    let stanzas = USERS * CONTACTS_PER_USER;
    // 1: the first poll after a start sends every user's presence to every contact.
    let first = poll_until(&teams, &counter, stanzas).await;
    // 2: nothing changed: the cost of reading 10,000 presences.
    let idle = poll_until(&teams, &counter, stanzas).await;
    let quiet = counter.seen.load(Ordering::SeqCst) == stanzas;
    // 3: everyone changes at once.
    set_everyone(&emulator, 0..USERS, "Busy", "InACall");
    let all = poll_until(&teams, &counter, 2 * stanzas).await;
    // 4: 1 % change.
    set_everyone(&emulator, 0..USERS / 100, "Away", "Away");
    let some = poll_until(&teams, &counter, 2 * stanzas + stanzas / 100).await;

    let interval_for = interval.next(USERS);
    println!(
        "presence fan-out: {USERS} Teams users, {} subscriptions",
        roster.len()
    );
    println!(
        "roster load:                    {:>8.1} ms, {per_contact:.0} bytes RSS per relationship",
        load.as_secs_f64() * 1e3
    );
    println!(
        "poll, nothing changed:          {:>8.1} ms ({} getPresencesByUserId calls; no stanza sent: {quiet})",
        idle.as_secs_f64() * 1e3,
        USERS.div_ceil(650)
    );
    println!(
        "first poll, all sent:           {:>8.1} ms for {stanzas} stanzas",
        first.as_secs_f64() * 1e3
    );
    println!(
        "all users change → last stanza: {:>8.1} ms for {stanzas} stanzas ({:.0} stanzas/s)",
        all.as_secs_f64() * 1e3,
        stanzas as f64 / all.as_secs_f64()
    );
    println!(
        "1 % change → last stanza:       {:>8.1} ms for {} stanzas",
        some.as_secs_f64() * 1e3,
        stanzas / 100
    );
    println!(
        "adaptive poll interval for {USERS} users: {:.1} s, so a change shows within interval + poll ≈ {:.1} s",
        interval_for.as_secs_f64(),
        (interval_for + all).as_secs_f64()
    );
}
