//! Two operator processes on the cluster `KUBECONFIG` names (skipped, saying
//! so, when none; see e2e::cluster): one holds the leader-election Lease and
//! reconciles; killed without warning, the other takes the Lease over and
//! reconciling goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::json;
use support::{apply_all, examples_licensed, licence_text};
use xmppfed_e2e::cluster::{self, eventually};
use xmppfed_e2e::daemon::Daemon;

const LEASE: &str = "xmppfed-operator-it";

fn operator(ns: &str, name: &str, public: &str) -> Daemon {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xmppfed-operator"));
    command
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--leader-election-lease", LEASE])
        .args(["--leader-election-seconds", "3"])
        .args(["--licence-public-key", public])
        // Each reconcile is logged at debug: how the test tells who reconciles.
        .args(["--log-level", "info,xmppfed_operator=debug"])
        .env("POD_NAMESPACE", ns)
        .env("POD_NAME", name)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("RUST_LOG");
    let mut daemon = Daemon::spawn(command).unwrap();
    daemon
        .wait_for_log("operator started", Duration::from_secs(30))
        .unwrap();
    daemon
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt(LEASE).await.ok()??.spec?.holder_identity
}

/// Whoever leads reconciles: a whitelist reaches the gateway's configuration.
async fn whitelist_reaches_the_config(client: &Client, ns: &str) {
    let apply = PatchParams::apply("xmppfed-leader-test").force();
    let whitelist = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "DomainWhitelist",
        "metadata": {"name": "after-failover", "namespace": ns},
        "spec": {"gateways": {"names": ["contoso"]}, "remoteDomains": ["failover.example"]}
    });
    let whitelists: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<xmppfed_operator::crd::DomainWhitelist>(&()),
    );
    whitelists
        .patch("after-failover", &apply, &Patch::Apply(&whitelist))
        .await
        .unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually(
        "the new leader renders the whitelist",
        Duration::from_secs(60),
        || async {
            configmaps
                .get_opt("contoso-config")
                .await
                .ok()??
                .data?
                .get("gateway.toml")?
                .contains("failover.example")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_operator_takes_over_when_the_leader_dies() {
    let Some(client) = cluster::client("a_standby_operator_takes_over").await else {
        return;
    };
    support::install_crds(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_name = support::namespace(&client, "xmppfed-leader").await;
    let ns = ns_name.as_str();
    let (private, public) = xmppfed_licence::generate_key().unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);

    let mut first = operator(ns, "operator-a", &public);
    eventually(
        "operator-a holds the Lease",
        Duration::from_secs(30),
        || async { (holder(&leases).await? == "operator-a").then_some(()) },
    )
    .await;
    let mut second = operator(ns, "operator-b", &public);

    // The leader reconciles the example.
    let docs = examples_licensed(
        &["minimal-sqlite.yaml"],
        "xmppfed-licence",
        &licence_text(&private, "leader-it", 1),
    );
    apply_all(&client, ns, "xmppfed-leader-test", docs).await;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    eventually(
        "the leader applies contoso",
        Duration::from_secs(60),
        || async { statefulsets.get_opt("contoso").await.ok()?.map(|_| ()) },
    )
    .await;
    let reconciled = |d: &mut Daemon| {
        d.lines_so_far()
            .iter()
            .filter(|l| l.contains("\"reconciled\""))
            .count()
    };
    eventually(
        "operator-a logs its reconciles",
        Duration::from_secs(30),
        || {
            let n = reconciled(&mut first);
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        reconciled(&mut second),
        0,
        "the standby reconciled while the leader held the Lease"
    );

    // The leader dies without giving the Lease up; the standby takes it.
    drop(first);
    let started = std::time::Instant::now();
    eventually(
        "operator-b takes the Lease",
        Duration::from_secs(30),
        || async { (holder(&leases).await? == "operator-b").then_some(()) },
    )
    .await;
    eprintln!(
        "took over {:?} after the leader was killed",
        started.elapsed()
    );

    whitelist_reaches_the_config(&client, ns).await;
    assert!(second.is_running());
    assert!(
        reconciled(&mut second) > 0,
        "the new leader logged no reconcile"
    );
    drop(second);
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .unwrap();
}
