//! Objects the operator cannot read as stored (issue 20), on the cluster
//! `KUBECONFIG` names (skipped, saying so, when none). The CRDs refuse such
//! values now, but objects stored under an older, looser CRD remain: to make
//! them here, the test loosens two CRDs for a moment, stores the objects, and
//! puts the CRDs back. Then, with the controller running: a gateway that
//! depends on none of them is reconciled as usual; the gateway a broken
//! ThrottlePolicy selects is Degraded, naming the policy and the field; the
//! broken FederationGateway says so itself, with an Event; and removing the
//! broken policy lets its gateway go on at once.
//!
//! Its own test binary: it changes cluster-wide CRDs, and test binaries run
//! one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use xmppfed_e2e::cluster::{self, eventually};
use xmppfed_operator::crd::FederationGateway;

/// Replaces each CRD's `spec` schema with one that accepts anything, runs
/// `store`, and puts the CRDs back as they were.
async fn with_loose_crds<F: std::future::Future<Output = ()>>(
    client: &Client,
    names: &[&str],
    store: F,
) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut originals = Vec::new();
    for name in names {
        let original = crds.get(name).await.unwrap();
        let mut loose = serde_json::to_value(&original).unwrap();
        for version in loose["spec"]["versions"].as_array_mut().unwrap() {
            version["schema"]["openAPIV3Schema"]["properties"]["spec"] =
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
            version["schema"]["openAPIV3Schema"]
                .as_object_mut()
                .unwrap()
                .remove("x-kubernetes-validations");
        }
        crds.replace(
            name,
            &PostParams::default(),
            &serde_json::from_value(loose).unwrap(),
        )
        .await
        .unwrap();
        originals.push(original);
    }
    // The API server takes a moment to serve the new schema.
    tokio::time::sleep(Duration::from_secs(2)).await;
    store.await;
    for original in originals {
        let name = original.metadata.name.clone().unwrap();
        let mut back = original;
        back.metadata.resource_version = crds.get(&name).await.unwrap().metadata.resource_version;
        crds.replace(&name, &PostParams::default(), &back)
            .await
            .unwrap();
    }
}

fn condition(g: &FederationGateway, type_: &str) -> Option<(String, String, String)> {
    g.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_object_stops_only_what_depends_on_it() {
    let Some(client) = cluster::client("an_unreadable_object_stops_only_what_depends_on_it").await
    else {
        return;
    };
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "xmppfed-unreadable").await;
    let (private, public) = xmppfed_licence::generate_key().unwrap();
    let mut docs = support::examples_licensed(
        &["minimal-sqlite.yaml"],
        "xmppfed-licence",
        &support::licence_text(&private, "unreadable", 4),
    );
    // A second gateway beside contoso, which no broken object concerns.
    let contoso = docs
        .iter()
        .find(|d| d["kind"] == "FederationGateway")
        .unwrap()
        .clone();
    let mut northwind = contoso.clone();
    northwind["metadata"] = json!({"name": "northwind", "labels": {"xmppfed.io/tier": "test"}});
    northwind["spec"]["domain"] = json!("teams.northwind.example");
    docs.push(northwind);
    support::apply_all(&client, &ns, "xmppfed-unreadable-test", docs).await;

    // Stored under loosened CRDs: a ThrottlePolicy selecting contoso with a
    // rate no u32 holds, and a gateway asking for more replicas than an i32.
    let mut broken_gateway = contoso.clone();
    broken_gateway["metadata"] = json!({"name": "broken"});
    broken_gateway["spec"]["replicas"] = json!(99_999_999_999_u64);
    let broken_policy = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "ThrottlePolicy",
        "metadata": {"name": "strict"},
        "spec": {"gateways": {"names": ["contoso"]},
                 "limits": {"messagesPerMinute": 99_999_999_999_u64, "bytesPerMinute": 1000,
                            "presenceUpdatesPerMinute": 10, "burst": 5}}
    });
    let names = [
        "throttlepolicies.xmppfed.io",
        "federationgateways.xmppfed.io",
    ];
    with_loose_crds(&client, &names, async {
        support::apply_all(
            &client,
            &ns,
            "xmppfed-unreadable-test",
            vec![broken_gateway, broken_policy],
        )
        .await;
    })
    .await;

    let started = Instant::now();
    let controller = support::Controller::start(client.clone(), public);
    let gateways: Api<FederationGateway> = Api::namespaced(client.clone(), &ns);
    // The gateway nothing broken concerns: reconciled as usual.
    support::condition_becomes(&gateways, "northwind", "Degraded", "False", "Applied").await;
    eprintln!(
        "beside two unreadable objects, northwind reconciled in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The gateway the broken policy selects: Degraded, naming it and the value.
    let message =
        support::condition_becomes(&gateways, "contoso", "Degraded", "True", "UnreadablePolicy")
            .await;
    assert!(
        message.contains("ThrottlePolicy strict")
            && message.contains("spec.limits.messagesPerMinute")
            && message.contains("99999999999"),
        "{message}"
    );
    eprintln!("contoso: Degraded=True UnreadablePolicy: {message}");
    // The broken gateway, read as an object: its own status and an Event say why.
    let broken = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &xmppfed_operator::reconcile::lenient::resource::<FederationGateway>(),
    );
    let said = eventually(
        "the broken gateway's Degraded condition",
        Duration::from_secs(60),
        || async {
            let o = broken.get("broken").await.ok()?;
            let conditions = o.data.pointer("/status/conditions")?.as_array()?.clone();
            conditions
                .iter()
                .find(|c| {
                    c["type"] == "Degraded" && c["status"] == "True" && c["reason"] == "Unreadable"
                })
                .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await;
    assert!(
        said.contains("FederationGateway broken") && said.contains("99999999999"),
        "{said}"
    );
    eprintln!("broken: Degraded=True Unreadable: {said}");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        "an Unreadable Event on the broken gateway",
        Duration::from_secs(30),
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("Unreadable")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                })
                .then_some(())
        },
    )
    .await;

    // The broken policy removed: contoso goes on at once.
    let removed = Instant::now();
    Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &xmppfed_operator::reconcile::lenient::resource::<xmppfed_operator::crd::ThrottlePolicy>(),
    )
    .delete("strict", &DeleteParams::default())
    .await
    .unwrap();
    eventually(
        "contoso no longer Degraded",
        Duration::from_secs(30),
        || async {
            let g = gateways.get("contoso").await.ok()?;
            let (status, _, _) = condition(&g, "Degraded")?;
            (status == "False").then_some(())
        },
    )
    .await;
    eprintln!(
        "the broken ThrottlePolicy deleted: contoso applied again {:.1} s later",
        removed.elapsed().as_secs_f64()
    );
    controller.stop().await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await;
}
