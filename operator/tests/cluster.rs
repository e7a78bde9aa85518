//! Against the cluster `KUBECONFIG` names (skipped, saying so, when none):
//! install the CRDs, run the operator's controller, apply the examples, and
//! check children, status, whitelist changes (widened, narrowed, deleted), a
//! licence shortage and a licence replaced (seen through the Secret watch), and
//! cleanup.
//!
//! The example image is not pulled here: the test checks what the operator
//! applies and reports, not that gateway pods become Ready.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{apply_all, condition_becomes, condition_within, examples_licensed, licence_text};
use xmppfed_e2e::cluster::{self, eventually};
use xmppfed_operator::crd::{DomainWhitelist, FederationGateway, ThrottlePolicy};
use xmppfed_operator::render::names;

const MANAGER: &str = "xmppfed-integration-test";
/// How soon a change to something a gateway depends on must reach it.
const REACTION: Duration = Duration::from_secs(5);

async fn config_owner(
    configmaps: &Api<ConfigMap>,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    configmaps
        .get("contoso-config")
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap_or_default()
}

/// The note of an Event with `reason` about gateway `gateway`.
async fn event_note(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    reason: &str,
    gateway: &str,
) -> Option<String> {
    events
        .list(&Default::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(gateway)
        })
        .map(|e| e.note.unwrap_or_default())
}

fn condition(g: &FederationGateway, type_: &str) -> Option<(String, String)> {
    g.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Children and status: contoso applied, licensed and not degraded, its
/// StatefulSet owned by it and its configuration carrying the whitelist.
async fn contoso_applied(w: &World) {
    let World {
        gateways,
        statefulsets,
        configmaps,
        ..
    } = w;
    eventually(
        "contoso applied, licensed and not degraded",
        Duration::from_secs(90),
        || {
            let gateways = gateways.clone();
            async move {
                let g = gateways.get("contoso").await.ok()?;
                (condition(&g, "Degraded")?.0 == "False" && condition(&g, "Licensed")?.0 == "True")
                    .then_some(())
            }
        },
    )
    .await;
    let sts = statefulsets.get("contoso").await.unwrap();
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(sts.owner_references()[0].kind, "FederationGateway");
    let config = configmaps.get("contoso-config").await.unwrap();
    assert!(config.data.unwrap()["gateway.toml"].contains("xmpp.partner.example"));
}

/// The test's namespace and the API of each kind it reads or changes there.
struct World {
    client: Client,
    ns: String,
    gateways: Api<FederationGateway>,
    whitelists: Api<DomainWhitelist>,
    secrets: Api<Secret>,
    statefulsets: Api<StatefulSet>,
    configmaps: Api<ConfigMap>,
    services: Api<Service>,
    events: Api<k8s_openapi::api::events::v1::Event>,
    apply: PatchParams,
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_on_a_real_cluster() {
    let Some(client) = cluster::client("operator_on_a_real_cluster").await else {
        return;
    };
    support::install_crds(&client).await;

    // A namespace of our own.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_name = support::namespace(&client, "xmppfed-it").await;
    let ns = ns_name.as_str();

    // The operator's controller, with a licence key of this test's own.
    let (private, public) = xmppfed_licence::generate_key().unwrap();
    let gateway_role =
        support::GatewayClusterRole::make(&client, &format!("{ns_name}-gateway")).await;
    let controller = support::Controller::start_binding(client.clone(), public, &gateway_role.name);

    let w = World {
        client: client.clone(),
        ns: ns.to_owned(),
        gateways: Api::namespaced(client.clone(), ns),
        whitelists: Api::namespaced(client.clone(), ns),
        secrets: Api::namespaced(client.clone(), ns),
        statefulsets: Api::namespaced(client.clone(), ns),
        configmaps: Api::namespaced(client.clone(), ns),
        services: Api::namespaced(client.clone(), ns),
        events: Api::namespaced(client.clone(), ns),
        apply: PatchParams::apply(MANAGER).force(),
    };
    let World {
        gateways,
        secrets,
        statefulsets,
        configmaps,
        events,
        ..
    } = &w;

    // The examples, as written, into our namespace (the licence replaced by a real one).
    let docs = examples_licensed(
        &["minimal-sqlite.yaml", "domain-whitelist.yaml"],
        "xmppfed-licence",
        &licence_text(&private, "it-1", 1),
    );
    apply_all(&client, ns, MANAGER, docs).await;

    contoso_applied(&w).await;
    children_are_owned(&w).await;

    the_gateway_may_label_only_its_pod(&w).await;

    ready_and_kubectl_say_why(&w).await;

    // An Event says what was applied.
    eventually(
        "an Applied event for contoso",
        Duration::from_secs(30),
        || event_note(events, "Applied", "contoso"),
    )
    .await;

    apply_is_idempotent_and_shared(&w).await;

    whitelist_changes_reach_exactly_their_gateways(&w).await;

    licences_and_seats(&w, &private).await;

    missing_policies_are_named(&w).await;

    support::webhook_ingress_comes_and_goes(&client, ns, "contoso", "xmppfed-it-ingress").await;
    support::network_policy_comes_and_goes(&client, ns, "contoso", "xmppfed-it-netpol").await;

    // Deleting the gateway removes everything it owns.
    gateways
        .delete("contoso", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(
        "children garbage-collected",
        Duration::from_secs(120),
        || {
            let statefulsets = statefulsets.clone();
            let configmaps = configmaps.clone();
            let secrets = secrets.clone();
            async move {
                let gone = statefulsets.get_opt("contoso").await.ok()?.is_none()
                    && configmaps.get_opt("contoso-config").await.ok()?.is_none()
                    && secrets.get_opt("contoso-keys").await.ok()?.is_none();
                gone.then_some(())
            }
        },
    )
    .await;

    controller.stop().await;
    gateway_role.remove().await;
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .unwrap();
}

/// Every child exists and is owned by the gateway (so the garbage
/// collector removes it with the gateway).
async fn children_are_owned(w: &World) {
    let World {
        client,
        ns,
        secrets,
        configmaps,
        ..
    } = w;
    let owned = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        refs.iter().any(|r| {
            r.kind == "FederationGateway" && r.name == "contoso" && r.controller == Some(true)
        })
    };
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for name in [
        names::headless_service("contoso"),
        names::s2s_service("contoso"),
        names::webhook_service("contoso"),
    ] {
        let svc = services.get(&name).await.unwrap();
        assert!(owned(svc.owner_references()), "Service {name} not owned");
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account = accounts
        .get(&names::service_account("contoso"))
        .await
        .unwrap();
    assert!(owned(account.owner_references()));
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding = bindings
        .get(&names::pod_role_binding("contoso"))
        .await
        .unwrap();
    assert!(owned(binding.owner_references()));
    let keys = secrets.get(&names::keys_secret("contoso")).await.unwrap();
    assert!(owned(keys.owner_references()));
    assert!(owned(config_owner(configmaps).await.as_slice()));
}

/// The gateway's own ServiceAccount (impersonated, so the API server's
/// RBAC decides) may set its pod's role label, and neither read pods nor
/// Secrets. (Which pods, and which keys, the chart's admission policy
/// decides: chart_cluster.rs.)
async fn the_gateway_may_label_only_its_pod(w: &World) {
    let World { client, ns, .. } = w;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually("pod contoso-0 created", Duration::from_secs(60), || async {
        pods.get_opt("contoso-0").await.ok()?.map(|_| ())
    })
    .await;
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{ns}:{}",
        names::service_account("contoso")
    ));
    let gateway_account = kube::Client::try_from(config).unwrap();
    let as_gateway: Api<Pod> = Api::namespaced(gateway_account.clone(), ns);
    let label = Patch::Merge(json!({"metadata": {"labels": {
        xmppfed_config::POD_ROLE_LABEL: "leader"
    }}}));
    as_gateway
        .patch("contoso-0", &PatchParams::default(), &label)
        .await
        .expect("the gateway may label its own pod");
    let forbidden =
        |r: Result<Pod, kube::Error>| matches!(r, Err(kube::Error::Api(ref s)) if s.code == 403);
    assert!(forbidden(as_gateway.get("contoso-0").await));
    let as_gateway_secrets: Api<Secret> = Api::namespaced(gateway_account, ns);
    assert!(matches!(
        as_gateway_secrets.get(&names::keys_secret("contoso")).await,
        Err(kube::Error::Api(ref s)) if s.code == 403
    ));
}

/// No kubelet runs here: the controller-manager creates the pod, which
/// stays Pending. Ready must say so, never claim readiness.
async fn ready_and_kubectl_say_why(w: &World) {
    let World { ns, gateways, .. } = w;
    let g = gateways.get("contoso").await.unwrap();
    assert_eq!(
        condition(&g, "Ready"),
        Some(("False".into(), "ReplicasNotReady".into())),
        "{:?}",
        g.status
    );
    assert_eq!(
        condition(&g, "Progressing").map(|c| c.0),
        Some("True".into())
    );
    // And it names the pod it waits for, and why (the reconcile every 15 s
    // while pods are not ready sees the pod the controller-manager made).
    eventually(
        "Ready names contoso-0 as Pending",
        Duration::from_secs(60),
        || {
            let gateways = gateways.clone();
            async move {
                let g = gateways.get("contoso").await.ok()?;
                let ready = g
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")?
                    .message;
                ready
                    .starts_with("0/1 gateway pods ready; waiting for contoso-0 (Pending")
                    .then_some(())
            }
        },
    )
    .await;

    // `kubectl get fgw -o wide` shows the columns README describes.
    let table = support::run_ok(
        std::process::Command::new("kubectl")
            .args(["get", "fgw", "contoso", "-n", ns, "-o", "wide"]),
        "kubectl get fgw",
    );
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME", "DOMAIN", "REPLICAS", "READY", "LICENSED", "REASON", "AGE"
        ],
        "{table}"
    );
    assert_eq!(
        rows[1][..6],
        [
            "contoso",
            "teams.contoso.example",
            "1",
            "False",
            "True",
            "ReplicasNotReady"
        ],
        "{table}"
    );
}

/// Server-side apply is idempotent and shares: a label another manager
/// set on the StatefulSet survives, and reconciles of the unchanged
/// gateway (every 15 s while its pods are not ready) change nothing.
async fn apply_is_idempotent_and_shared(w: &World) {
    let World {
        statefulsets,
        configmaps,
        services,
        ..
    } = w;
    statefulsets
        .patch(
            "contoso",
            &PatchParams::apply("another-team"),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "contoso", "labels": {"example.com/cost-centre": "42"}}
            })),
        )
        .await
        .unwrap();
    let versions = || async {
        let sts = statefulsets.get("contoso").await.unwrap();
        let cm = configmaps.get("contoso-config").await.unwrap();
        let svc = services.get(&names::s2s_service("contoso")).await.unwrap();
        // The StatefulSet's status is the controller-manager's to write:
        // its spec generation is what the operator must leave alone.
        (
            sts.metadata.generation,
            cm.resource_version(),
            svc.resource_version(),
        )
    };
    let before = versions().await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        versions().await,
        before,
        "an unchanged gateway's children were rewritten"
    );
    let sts = statefulsets.get("contoso").await.unwrap();
    assert_eq!(
        sts.labels()
            .get("example.com/cost-centre")
            .map(String::as_str),
        Some("42"),
        "another manager's label was taken away"
    );
}

/// A gateway the whitelist does not select (no tier label); its rendered
/// configuration, without the whitelist's domains.
async fn add_northwind(w: &World) -> ConfigMap {
    let World {
        client,
        ns,
        configmaps,
        ..
    } = w;
    let mut northwind = support::examples("minimal-sqlite.yaml")
        .into_iter()
        .find(|d| d["kind"] == "FederationGateway")
        .unwrap();
    northwind["metadata"] = json!({"name": "northwind"});
    northwind["spec"]["domain"] = json!("teams.northwind.example");
    apply_all(client, ns, MANAGER, vec![northwind]).await;
    let northwind_config = || {
        let configmaps = configmaps.clone();
        async move { configmaps.get_opt("northwind-config").await.ok()? }
    };
    eventually(
        "northwind-config rendered",
        Duration::from_secs(60),
        || async { northwind_config().await.map(|_| ()) },
    )
    .await;
    let northwind_before = northwind_config().await.unwrap();
    assert!(
        !northwind_before.data.as_ref().unwrap()["gateway.toml"].contains("xmpp.partner.example"),
        "the production whitelist reached a gateway it does not select"
    );
    northwind_before
}

/// The whitelist `partners`, with two domains, for the gateways `gateways` selects.
async fn set_partners(w: &World, gateways: serde_json::Value) {
    let whitelist = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "DomainWhitelist",
        "metadata": {"name": "partners"},
        "spec": {"gateways": gateways,
                 "remoteDomains": ["xmpp.partner.example", "new-partner.example"]}
    });
    w.whitelists
        .patch("partners", &w.apply, &Patch::Apply(whitelist))
        .await
        .unwrap();
}

/// A whitelist change reaches the gateway's configuration, and exactly the
/// gateways it selects: one it does not select keeps its own configuration.
async fn whitelist_changes_reach_exactly_their_gateways(w: &World) {
    let World {
        gateways,
        whitelists: _,
        configmaps,
        events,
        apply: _,
        ..
    } = w;
    let northwind_before = add_northwind(w).await;
    let northwind_config = || {
        let configmaps = configmaps.clone();
        async move { configmaps.get_opt("northwind-config").await.ok()? }
    };
    // A whitelist change reaches the gateway's configuration.
    set_partners(w, json!({"matchLabels": {"xmppfed.io/tier": "production"}})).await;
    eventually(
        "the new domain in contoso-config",
        Duration::from_secs(60),
        || {
            let configmaps = configmaps.clone();
            async move {
                let cm = configmaps.get("contoso-config").await.ok()?;
                cm.data?
                    .get("gateway.toml")?
                    .contains("new-partner.example")
                    .then_some(())
            }
        },
    )
    .await;

    // ... and exactly the gateways it selects: northwind's configuration was not rewritten.
    let northwind_after = northwind_config().await.unwrap();
    assert_eq!(
        northwind_after.resource_version(),
        northwind_before.resource_version(),
        "a whitelist change rewrote a gateway it does not select"
    );
    assert!(!northwind_after.data.unwrap()["gateway.toml"].contains("new-partner.example"));
    let g = gateways.get("contoso").await.unwrap();
    assert_eq!(
        g.status.unwrap().whitelists,
        ["partners"],
        "status names the whitelists applied"
    );

    // Narrowed to northwind alone: both gateways follow at once (the one it
    // no longer selects too), and contoso says which whitelist left it.
    let narrowed = std::time::Instant::now();
    set_partners(w, json!({"names": ["northwind"]})).await;
    let renders = |name: &'static str, wanted: bool| {
        let configmaps = configmaps.clone();
        async move {
            let cm = configmaps.get(&format!("{name}-config")).await.ok()?;
            (cm.data?
                .get("gateway.toml")?
                .contains("new-partner.example")
                == wanted)
                .then_some(())
        }
    };
    // Within 5 s, a third of the 15 s a not-ready gateway waits between
    // reconciles: only the watches can have done it.
    eventually("contoso-config without the whitelist", REACTION, || {
        renders("contoso", false)
    })
    .await;
    eventually("northwind-config with the whitelist", REACTION, || {
        renders("northwind", true)
    })
    .await;
    eprintln!(
        "reaction: whitelist selector narrowed to another gateway, both configurations in {:?}",
        narrowed.elapsed()
    );
    let note = eventually("a WhitelistRemoved event for contoso", REACTION, || {
        event_note(events, "WhitelistRemoved", "contoso")
    })
    .await;
    assert!(
        note.contains("partners") && note.ends_with("whitelists now: none"),
        "{note}"
    );
}

/// A licence from another key holder: no seat, nothing runs, Licensed=False says why.
async fn licences_and_seats(w: &World, private: &str) {
    let World {
        client,
        ns,
        gateways,
        statefulsets,
        ..
    } = w;
    let (foreign, _) = xmppfed_licence::generate_key().unwrap();
    let relicensed = std::time::Instant::now();
    support::relicense(
        client,
        ns,
        "xmppfed-licence",
        &licence_text(&foreign, "it-5", 5),
    )
    .await;
    let unlicensed = ("Licensed", "False", "NoValidLicence");
    condition_within(gateways, "contoso", unlicensed, REACTION).await;
    eprintln!(
        "reaction: licence Secret replaced, Licensed=False in {:?}",
        relicensed.elapsed()
    );
    assert_eq!(
        statefulsets
            .get("contoso")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(0)
    );

    // Seats: a licence for 2 nodes and a gateway of 3 replicas runs 2 and
    // says which replica has no seat; a licence for 3 then runs all of them.
    let docs = examples_licensed(
        &["production-sqlserver.yaml", "throttle-policy.yaml"],
        "fabrikam-licence",
        &licence_text(private, "it-2", 2),
    );
    apply_all(client, ns, MANAGER, docs).await;
    let message = condition_becomes(
        gateways,
        "fabrikam",
        "Licensed",
        "False",
        "InsufficientSeats",
    )
    .await;
    assert!(
        message.contains("2 of 3") && message.contains("fabrikam-2"),
        "{message}"
    );
    assert_eq!(
        statefulsets
            .get("fabrikam")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(2)
    );
    let relicensed = std::time::Instant::now();
    support::relicense(
        client,
        ns,
        "fabrikam-licence",
        &licence_text(private, "it-3", 3),
    )
    .await;
    eventually("fabrikam Licensed=True with 3 replicas", REACTION, || {
        let gateways = gateways.clone();
        let statefulsets = statefulsets.clone();
        async move {
            let g = gateways.get("fabrikam").await.ok()?;
            let replicas = statefulsets.get("fabrikam").await.ok()?.spec?.replicas;
            (condition(&g, "Licensed")?.0 == "True" && replicas == Some(3)).then_some(())
        }
    })
    .await;

    eprintln!(
        "reaction: licence Secret with more seats, 3 replicas in {:?}",
        relicensed.elapsed()
    );
}

/// A policy a gateway names, deleted: the gateway's status says so.
async fn missing_policies_are_named(w: &World) {
    let World {
        client,
        ns,
        gateways,
        whitelists,
        ..
    } = w;
    let throttles: Api<ThrottlePolicy> = Api::namespaced(client.clone(), ns);
    throttles
        .delete("standard", &DeleteParams::default())
        .await
        .unwrap();
    let message =
        condition_becomes(gateways, "fabrikam", "Degraded", "True", "MissingPolicy").await;
    assert!(message.contains("`standard`"), "{message}");

    // Likewise a DomainWhitelist a gateway names.
    gateways
        .patch(
            "northwind",
            &PatchParams::apply("northwind-owner"),
            &Patch::Apply(json!({
                "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
                "metadata": {"name": "northwind"},
                "spec": {"policies": {"domainWhitelists": ["partners"]}}
            })),
        )
        .await
        .unwrap();
    whitelists
        .delete("partners", &DeleteParams::default())
        .await
        .unwrap();
    let missing = ("Degraded", "True", "MissingPolicy");
    let message = condition_within(gateways, "northwind", missing, REACTION).await;
    assert!(message.contains("`partners`"), "{message}");
}
