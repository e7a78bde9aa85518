//! Graph client and emulator benchmark: prints figures, asserts nothing.
//!
//! - client overhead per call: the same presence GET through the gateway's
//!   `GraphClient` (token cache, budget, span, typed decode) and through bare
//!   reqwest with a fixed token, against the emulator on loopback;
//! - emulator capacity: requests/s with 16 concurrent callers.
//!
//! Run: `cargo bench -p xmppfed-gateway --bench graph`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::time::Instant;

use secrecy::SecretString;
use serde_json::json;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::graph::{Budgets, GraphClient, RetryPolicy, Tokens};

const TENANT: &str = "5c0ffee0-0000-4000-8000-0000000000be";

fn seed() -> Seed {
    serde_json::from_value(json!({
        "tenantId": TENANT,
        "apps": [{"clientId": "bench", "clientSecret": "s", "roles": ["Presence.ReadWrite.All", "User.Read.All"]}],
        "users": [{"id": "11111111-1111-4111-8111-111111111111", "userPrincipalName": "alice@contoso.com", "displayName": "Alice"}]
    }))
    .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let http = reqwest::Client::new();
    let tokens = Tokens::new(
        http.clone(),
        &emulator.authority_url(),
        TENANT,
        "bench",
        SecretString::from("s".to_owned()),
    );
    let graph = GraphClient::new(
        http.clone(),
        &emulator.graph_url(),
        tokens,
        Budgets::uniform(1_000_000),
        RetryPolicy::default(),
    );
    let n = 5_000;
    graph.get_presence("alice@contoso.com").await.unwrap();

    let started = Instant::now();
    for _ in 0..n {
        graph.get_presence("alice@contoso.com").await.unwrap();
    }
    let through_client = started.elapsed() / n;

    let token: String = {
        let body = format!(
            "grant_type=client_credentials&client_id=bench&client_secret=s&scope={}",
            "https%3A%2F%2Fgraph.microsoft.com%2F.default"
        );
        let r: serde_json::Value = http
            .post(format!(
                "{}/{TENANT}/oauth2/v2.0/token",
                emulator.authority_url()
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["access_token"].as_str().unwrap().to_owned()
    };
    let url = format!("{}/users/alice@contoso.com/presence", emulator.graph_url());
    let started = Instant::now();
    for _ in 0..n {
        let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
        let _: serde_json::Value = r.json().await.unwrap();
    }
    let bare = started.elapsed() / n;
    println!(
        "graph client:     {through_client:?} per call through GraphClient, {bare:?} with bare reqwest → overhead {:?} per call ({n} calls)",
        through_client.saturating_sub(bare)
    );

    let callers = 16;
    let per = 1_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "graph emulator:   {:.0} requests/s with {callers} concurrent callers ({} requests in {:?}, client and emulator sharing 2 cores)",
        (callers * per) as f64 / elapsed.as_secs_f64(),
        callers * per,
        elapsed
    );
}
