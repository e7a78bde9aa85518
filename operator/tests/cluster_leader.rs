//! Two operator processes on the cluster `KUBECONFIG` names (skipped, saying
//! so, when none; see e2e::cluster): one holds the leader-election Lease and
//! reconciles; killed without warning, the other takes the Lease over and
//! reconciling goes on.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde::Deserialize;
use serde_json::{Value, json};
use xmppfed_e2e::cluster::{self, eventually};
use xmppfed_e2e::daemon::Daemon;

const LEASE: &str = "xmppfed-operator-it";

fn examples(file: &str) -> Vec<Value> {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

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

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_operator_takes_over_when_the_leader_dies() {
    let Some(client) = cluster::client("a_standby_operator_takes_over").await else {
        return;
    };
    cluster::install_crds(
        &client,
        xmppfed_operator::crd::all().into_iter().map(|(_, c)| c),
    )
    .await;
    let ns_name = format!("xmppfed-leader-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns_name}})).unwrap(),
        )
        .await
        .unwrap();
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
    let apply = PatchParams::apply("xmppfed-leader-test").force();
    for mut doc in examples("minimal-sqlite.yaml") {
        doc["metadata"]["namespace"] = json!(ns);
        if doc["metadata"]["name"] == "xmppfed-licence" {
            let licence = xmppfed_licence::issue(
                &xmppfed_licence::Licence {
                    id: "leader-it".into(),
                    licensee: "leader test".into(),
                    nodes: 1,
                    issued: "2026-01-01T00:00:00Z".parse().unwrap(),
                    expires: "2099-01-01T00:00:00Z".parse().unwrap(),
                    features: vec![],
                },
                &private,
            )
            .unwrap();
            doc["stringData"]["licence"] = json!(licence);
        }
        let resource = if doc["kind"] == "Secret" {
            ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&())
        } else {
            ApiResource::erase::<xmppfed_operator::crd::FederationGateway>(&())
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        api.patch(&name, &apply, &Patch::Apply(&doc)).await.unwrap();
    }
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

    // And reconciles: a whitelist reaches the gateway's configuration.
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
