//! Reconcile 1,000 FederationGateways against an in-memory API server and print
//! how long they take to converge and what the operator's memory does.
//! Run: `cargo bench -p xmppfed-operator --bench reconcile` (figures are printed,
//! not asserted).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use xmppfed_e2e::kube_api::FakeKubeApi;
use xmppfed_operator::crd::FederationGateway;
use xmppfed_operator::reconcile::{Context, reconcile};

const GATEWAYS: usize = 1_000;
const NAMESPACES: usize = 10;
const CONCURRENCY: usize = 32;

fn memory_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn gateway(ns: usize, i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
        "metadata": {"name": format!("gw{i}"), "namespace": format!("ns{ns}"),
                     "uid": format!("00000000-0000-4000-8000-{i:012}"), "generation": 1,
                     "labels": {"tier": "prod"}},
        "spec": {
            "domain": format!("teams{i}.example.com"), "image": "ghcr.io/xmppfed/gateway:0.1.0",
            "tenant": {"tenantId": "8f0d2a8e-1b2c-4d5e-9f00-112233445566",
                       "clientId": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                       "clientSecret": {"name": "graph-app", "key": "client-secret"}},
            "shadowAccounts": {"upnDomain": "xmpp.example.com",
                "licenceSku": "3b555118-da6a-4418-894f-7df1e2096870", "usageLocation": "GB"},
            "s2s": {"tlsSecret": "tls"}, "database": {"engine": "sqlite"},
            "licenceSecret": {"name": "licence", "key": "licence"}
        }
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn pass(
    ctx: &Arc<Context>,
    gateways: &[FederationGateway],
) -> (Duration, Vec<Duration>, usize) {
    let start = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(gateways.iter().cloned())
        .map(|g| {
            let ctx = ctx.clone();
            async move {
                let t = Instant::now();
                let ok = reconcile(Arc::new(g), ctx).await.is_ok();
                (t.elapsed(), ok)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    let mut latencies: Vec<Duration> = results.into_iter().map(|(d, _)| d).collect();
    latencies.sort();
    (start.elapsed(), latencies, failed)
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (private, public) = xmppfed_licence::generate_key().expect("key");
        let licence = xmppfed_licence::issue(
            &xmppfed_licence::Licence {
                id: "bench".into(),
                licensee: "bench".into(),
                nodes: 10_000,
                issued: "2026-01-01T00:00:00Z".parse().expect("time"),
                expires: "2099-01-01T00:00:00Z".parse().expect("time"),
                features: vec![],
            },
            &private,
        )
        .expect("licence");

        let api = FakeKubeApi::new();
        let mut gateways = Vec::new();
        for ns in 0..NAMESPACES {
            let base = format!("/apis/xmppfed.io/v1alpha1/namespaces/ns{ns}");
            api.insert(
                &format!("{base}/domainwhitelists/partners"),
                json!({"apiVersion": "xmppfed.io/v1alpha1", "kind": "DomainWhitelist",
                       "metadata": {"name": "partners", "namespace": format!("ns{ns}")},
                       "spec": {"gateways": {"matchLabels": {"tier": "prod"}},
                                "remoteDomains": ["partner.example", "*.allies.example"]}}),
            );
            use base64::Engine;
            api.insert(
                &format!("/api/v1/namespaces/ns{ns}/secrets/licence"),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "licence"},
                       "data": {"licence": base64::engine::general_purpose::STANDARD.encode(&licence)}}),
            );
            for i in (ns..GATEWAYS).step_by(NAMESPACES) {
                let g = gateway(ns, i);
                api.insert(&format!("{base}/federationgateways/gw{i}"), g.clone());
                gateways.push(serde_json::from_value::<FederationGateway>(g).expect("gateway"));
            }
        }
        let ctx = Arc::new(Context::new(api.client(), Some(public)));
        let rss_before = memory_kib("VmRSS:");

        let (total, latencies, failed) = pass(&ctx, &gateways).await;
        let requests = api.request_count();
        println!("reconcile benchmark: {GATEWAYS} FederationGateways in {NAMESPACES} namespaces, {CONCURRENCY} reconciles at once, in-memory API server");
        println!(
            "  first pass (create everything): {:.2} s to converge, {:.0} gateways/s, {failed} failed, {requests} API requests",
            total.as_secs_f64(),
            GATEWAYS as f64 / total.as_secs_f64()
        );
        println!(
            "  per reconcile: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );

        // Steady state: re-read the gateways with their status and reconcile again.
        let refreshed: Vec<FederationGateway> = gateways
            .iter()
            .map(|g| {
                let ns = g.metadata.namespace.clone().unwrap_or_default();
                let name = g.metadata.name.clone().unwrap_or_default();
                let path = format!("/apis/xmppfed.io/v1alpha1/namespaces/{ns}/federationgateways/{name}");
                serde_json::from_value(api.get(&path).expect("stored")).expect("gateway")
            })
            .collect();
        let (total, latencies, failed) = pass(&ctx, &refreshed).await;
        println!(
            "  resync pass (nothing changed): {:.2} s, p50 {:.2} ms, p99 {:.2} ms, {failed} failed",
            total.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
        println!(
            "  memory: RSS {} MiB before, {} MiB after, peak {} MiB (the fake API's store of ~{} objects included)",
            rss_before / 1024,
            memory_kib("VmRSS:") / 1024,
            memory_kib("VmHWM:") / 1024,
            GATEWAYS * 8
        );
    });
}
