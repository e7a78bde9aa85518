//! The Helm chart against the cluster `KUBECONFIG` names (skipped, saying so,
//! when there is none, or when no `helm` binary is at hand: scripts/check-chart.sh
//! installs one under target/tools/helm3, or set XMPPFED_TEST_HELM).
//!
//! Installs the chart into a namespace of its own, runs the operator's
//! controller in this process *as the chart's ServiceAccount* (impersonated,
//! so every call is held to the chart's RBAC), applies the examples, follows a
//! whitelist change into the rendered configuration, and uninstalls: the
//! chart's objects go, the CRDs stay (crds.keep). Then installs it again
//! under another release, which adopts the kept CRDs (--take-ownership).
//!
//! Gateway pods do not become Ready here: their image is not published yet.
//! The test checks what the operator applies and reports.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod chart_privilege;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use chart_privilege::allowed;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Config};
use serde_json::json;
use support::{apply_all, examples_licensed, licence_text};
use xmppfed_e2e::cluster::eventually;
use xmppfed_operator::crd::{DomainWhitelist, FederationGateway};

/// CRDs already there (kept by an earlier release, or applied with
/// kubectl) carry someone else's ownership: Helm refuses them unless told
/// to take them over (`--take-ownership`), as README says.
/// Returns the operator's ServiceAccount once it exists, and the CRDs' API
/// once they are established.
async fn install(
    admin: &Client,
    helm: &PathBuf,
    ns: &str,
    release: &str,
    chart: &str,
    public: &str,
    extra: &[&str],
) -> (String, Api<CustomResourceDefinition>) {
    let (ns, chart) = (ns.to_owned(), chart.to_owned());
    let existing: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let crds_exist = existing
        .get_opt("federationgateways.xmppfed.io")
        .await
        .unwrap()
        .is_some();
    let key = format!("licence.publicKey={public}");
    let mut args = vec![
        "install",
        release,
        &chart,
        "--namespace",
        &ns,
        "--create-namespace",
        "--set",
        &key,
    ];
    // CRDs kept by an earlier release (crds.keep) carry its ownership: Helm
    // 3.17+ adopts them with --take-ownership, as README tells users to.
    if crds_exist {
        args.push("--take-ownership");
    }
    args.extend_from_slice(extra);
    support::helm_run(helm, &args);

    // The chart's objects, and CRDs established.
    let sa: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let sa_name = eventually(
        "the operator's ServiceAccount",
        Duration::from_secs(60),
        || {
            let sa = sa.clone();
            async move {
                sa.list(&Default::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find_map(|s| s.metadata.name.filter(|n| n.contains(release)))
            }
        },
    )
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in [
        "federationgateways.xmppfed.io",
        "domainwhitelists.xmppfed.io",
        "throttlepolicies.xmppfed.io",
    ] {
        eventually(&format!("CRD {name}"), Duration::from_secs(60), || {
            let crds = crds.clone();
            async move {
                let crd = crds.get(name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
    (sa_name, crds)
}

/// A whitelist change reaches the rendered configuration.
async fn whitelist_change_reaches_the_config(admin: &Client, ns: &str, gw: &str) {
    let ns = ns.to_owned();
    let whitelists: Api<DomainWhitelist> = Api::namespaced(admin.clone(), &ns);
    let wl = kube::ResourceExt::name_any(
        &whitelists
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .remove(0),
    );
    whitelists
        .patch(
            &wl,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"remoteDomains": ["xmpp.partner.example", "chart-test.example"]}}),
            ),
        )
        .await
        .unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    eventually(
        "chart-test.example in the gateway's configuration",
        Duration::from_secs(60),
        || {
            let configmaps = configmaps.clone();
            let name = format!("{gw}-config");
            async move {
                configmaps
                    .get(&name)
                    .await
                    .ok()?
                    .data?
                    .get("gateway.toml")?
                    .contains("chart-test.example")
                    .then_some(())
            }
        },
    )
    .await;
}

/// Uninstall: the chart's objects go, the CRDs stay.
async fn uninstall(
    admin: &Client,
    helm: &PathBuf,
    ns: &str,
    release: &str,
    gw: &str,
    controller: support::Controller,
    crds: &Api<CustomResourceDefinition>,
) {
    let ns = ns.to_owned();
    let gateways: Api<FederationGateway> = Api::namespaced(admin.clone(), &ns);
    controller.stop().await;
    gateways
        .delete(gw, &DeleteParams::foreground())
        .await
        .unwrap();
    support::helm_run(helm, &["uninstall", release, "--namespace", &ns, "--wait"]);
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    eventually("the ClusterRole removed", Duration::from_secs(60), || {
        let roles = roles.clone();
        async move {
            (!roles
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .any(|r| {
                    r.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.contains(release))
                }))
            .then_some(())
        }
    })
    .await;
    assert!(
        crds.get("federationgateways.xmppfed.io").await.is_ok(),
        "crds.keep: the CRDs outlive the release"
    );
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_on_a_real_cluster() {
    let Some((admin, helm)) = support::cluster_and_helm("the_chart_on_a_real_cluster").await else {
        return;
    };
    let ns = format!("xmppfed-chart-{}", std::process::id());
    let release = "xmppfed-it";
    let chart = format!("{}/../charts/xmppfed-operator", env!("CARGO_MANIFEST_DIR"));
    let (private, public) = xmppfed_licence::generate_key().unwrap();
    let (sa_name, crds) = install(&admin, &helm, &ns, release, &chart, &public, &[]).await;

    // The controller, in this process, as the chart's ServiceAccount.
    let mut config = Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{sa_name}"));
    let operator = Client::try_from(config).unwrap();
    let gateway_role = format!("{sa_name}-gateway");
    let controller = support::Controller::start_binding(operator, public.clone(), &gateway_role);

    // Every example, contoso's with a real licence (fabrikam keeps its placeholder).
    let docs = examples_licensed(
        &[
            "minimal-sqlite.yaml",
            "domain-whitelist.yaml",
            "production-sqlserver.yaml",
            "throttle-policy.yaml",
        ],
        "xmppfed-licence",
        &licence_text(&private, "chart-it", 1),
    );
    apply_all(&admin, &ns, "xmppfed-chart-test", docs).await;
    let gateways: Api<FederationGateway> = Api::namespaced(admin.clone(), &ns);
    let gw = "contoso".to_owned();
    // The production example is reconciled too: applied, and its placeholder
    // licence refused by name.
    let message =
        support::condition_becomes(&gateways, "fabrikam", "Licensed", "False", "NoValidLicence")
            .await;
    assert!(message.starts_with("0 of 3 replicas licensed"), "{message}");
    let fabrikam = gateways.get("fabrikam").await.unwrap();
    assert!(
        fabrikam
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "False"),
        "the production example applies as written"
    );
    eventually(
        "the gateway licensed and not degraded",
        Duration::from_secs(120),
        || {
            let gateways = gateways.clone();
            let gw = gw.clone();
            async move {
                let g = gateways.get(&gw).await.ok()?;
                let conditions = g.status?.conditions;
                let is =
                    |t: &str, s: &str| conditions.iter().any(|c| c.type_ == t && c.status == s);
                (is("Licensed", "True") && is("Degraded", "False")).then_some(())
            }
        },
    )
    .await;

    let operator_account = format!("system:serviceaccount:{ns}:{sa_name}");
    chart_privilege::operator_holds_least(&admin, &ns, &operator_account, &gateway_role).await;
    chart_privilege::gateway_touches_only_its_own_label(&admin, &ns, &gw).await;

    whitelist_change_reaches_the_config(&admin, &ns, &gw).await;

    // A replaced licence reaches the gateway through the chart's own RBAC
    // (Secrets watched by metadata), long before its next reconcile (15 s).
    let (foreign, _) = xmppfed_licence::generate_key().unwrap();
    let relicensed = std::time::Instant::now();
    support::relicense(
        &admin,
        &ns,
        "xmppfed-licence",
        &licence_text(&foreign, "chart-foreign", 1),
    )
    .await;
    support::condition_within(
        &gateways,
        &gw,
        ("Licensed", "False", "NoValidLicence"),
        Duration::from_secs(5),
    )
    .await;
    eprintln!(
        "reaction as the chart's ServiceAccount: licence Secret replaced, Licensed=False in {:?}",
        relicensed.elapsed()
    );

    uninstall(&admin, &helm, &ns, release, &gw, controller, &crds).await;

    // Installed again after the uninstall, under another release: the kept
    // CRDs are adopted, and the operator runs.
    installed_again(&admin, &helm, &chart, (&private, &public), &crds).await;
}

/// A second release on the same cluster after the first was uninstalled:
/// it takes the CRDs the first kept, and uninstalls cleanly in its turn. It
/// runs in namespaced mode, watching one namespace only.
async fn installed_again(
    admin: &Client,
    helm: &PathBuf,
    chart: &str,
    (private, public): (&str, &str),
    crds: &Api<CustomResourceDefinition>,
) {
    let ns = format!("xmppfed-chart-again-{}", std::process::id());
    let watched = format!("xmppfed-chart-watched-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": watched}})).unwrap(),
        )
        .await
        .unwrap();
    let release = "xmppfed-it-again";
    let watch = format!("watchNamespaces={{{watched}}}");
    let (sa_name, _) = install(admin, helm, &ns, release, chart, public, &["--set", &watch]).await;
    let crd = crds.get("federationgateways.xmppfed.io").await.unwrap();
    let annotations = crd.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("meta.helm.sh/release-name")
            .map(String::as_str),
        Some(release),
        "the kept CRDs adopted by the new release"
    );
    assert_eq!(
        annotations
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep")
    );
    eprintln!(
        "installed again after an uninstall, as {release}: the kept CRDs adopted ({sa_name})"
    );
    let operator_account = format!("system:serviceaccount:{ns}:{sa_name}");
    let gateway_role = format!("{sa_name}-gateway");
    chart_privilege::namespaced_operator_holds_nothing_elsewhere(
        admin,
        &operator_account,
        &watched,
        &ns,
        &gateway_role,
    )
    .await;
    only_the_watched_namespace_is_reconciled(
        admin,
        &ns,
        &watched,
        &operator_account,
        (private, public),
        &gateway_role,
    )
    .await;
    support::helm_run(helm, &["uninstall", release, "--namespace", &ns, "--wait"]);
    assert!(
        crds.get("federationgateways.xmppfed.io").await.is_ok(),
        "the CRDs outlive the second release too"
    );
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let _ = namespaces.delete(&watched, &DeleteParams::default()).await;
}

/// The operator in namespaced mode, as the chart's ServiceAccount: the
/// example gateway in the watched namespace is reconciled (licensed), the
/// same gateway in the release namespace is left alone (no status at all).
async fn only_the_watched_namespace_is_reconciled(
    admin: &Client,
    ns: &str,
    watched: &str,
    operator_account: &str,
    (private, public): (&str, &str),
    gateway_role: &str,
) {
    let mut config = Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(operator_account.to_owned());
    let operator = Client::try_from(config).unwrap();
    let controller = support::Controller::start_in(
        operator,
        public.to_owned(),
        gateway_role,
        vec![watched.to_owned()],
    );
    let docs = || {
        examples_licensed(
            &["minimal-sqlite.yaml"],
            "xmppfed-licence",
            &licence_text(private, "chart-namespaced", 1),
        )
    };
    apply_all(admin, watched, "xmppfed-chart-test", docs()).await;
    apply_all(admin, ns, "xmppfed-chart-test", docs()).await;
    let in_watched: Api<FederationGateway> = Api::namespaced(admin.clone(), watched);
    let started = std::time::Instant::now();
    support::condition_becomes(&in_watched, "contoso", "Licensed", "True", "Licensed").await;
    eprintln!(
        "namespaced mode: the gateway in {watched} licensed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Given the same time again, the one outside is still untouched.
    tokio::time::sleep(started.elapsed().max(Duration::from_secs(3))).await;
    let outside = Api::<FederationGateway>::namespaced(admin.clone(), ns)
        .get("contoso")
        .await
        .unwrap();
    assert!(
        outside.status.is_none(),
        "namespaced mode: a gateway outside the watched namespace was reconciled: {:?}",
        outside.status
    );
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(admin.clone(), ns);
    assert!(
        sets.get_opt("contoso").await.unwrap().is_none(),
        "namespaced mode: nothing made outside the watched namespace"
    );
    controller.stop().await;
}

/// The operator's pod as the values made it: its account, arguments, the
/// licence key from the Secret, its memory limit.
fn pod_carries_the_values(spec: &k8s_openapi::api::apps::v1::DeploymentSpec) {
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("fedop-sa"));
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    for arg in [
        "--admin-listen=0.0.0.0:9191",
        "--log-level=debug",
        "--leader-election-lease=fedop",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} not in {args:?}");
    }
    let key = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "XMPPFED_LICENCE_PUBLIC_KEY")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .expect("the licence key from the Secret");
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("operator-licence-key", "public-key")
    );
    let limits = container
        .resources
        .as_ref()
        .unwrap()
        .limits
        .as_ref()
        .unwrap();
    assert_eq!(limits["memory"].0, "128Mi");
}

/// `helm install` with values an administrator changes (more than one replica,
/// names, ports, a licence key from a Secret, labels, resources): the API
/// server accepts what the chart renders, and each value lands where its
/// comment in values.yaml says.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_with_non_default_values() {
    let Some((admin, helm)) = support::cluster_and_helm("the_chart_with_non_default_values").await
    else {
        return;
    };
    // The CRDs are the other chart test's (it decides whether helm installs
    // them, so nothing here may create them): this release leaves them be.
    let ns = support::namespace(&admin, "xmppfed-values").await;
    let chart = format!("{}/../charts/xmppfed-operator", env!("CARGO_MANIFEST_DIR"));
    let values = [
        "replicas=2",
        "fullnameOverride=fedop",
        "serviceAccount.name=fedop-sa",
        "adminPort=9191",
        "logLevel=debug",
        "licence.existingSecret.name=operator-licence-key",
        "crds.install=false",
        "commonLabels.team=im",
        "resources.limits.memory=128Mi",
    ]
    .join(",");
    support::helm_run(
        &helm,
        &[
            "install",
            "fedop-values",
            &chart,
            "--namespace",
            &ns,
            "--set",
            &values,
        ],
    );

    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let deployment = deployments.get("fedop").await.unwrap();
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate"),
        "with leader election an update never stops every replica"
    );
    assert_eq!(
        deployment
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("team")
            .map(String::as_str),
        Some("im")
    );
    pod_carries_the_values(spec);

    // The named ServiceAccount exists and may hold exactly its own Lease.
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    assert!(accounts.get_opt("fedop-sa").await.unwrap().is_some());
    let may = |verb: &'static str, lease: &'static str| {
        let (admin, ns) = (admin.clone(), ns.clone());
        async move {
            let user = format!("system:serviceaccount:{ns}:fedop-sa");
            let attributes = json!({"namespace": ns, "verb": verb,
                "group": "coordination.k8s.io", "resource": "leases", "name": lease});
            allowed(&admin, &user, attributes).await
        }
    };
    eventually(
        "the operator may renew its Lease",
        Duration::from_secs(30),
        || {
            let allowed = may("update", "fedop");
            async move { allowed.await.then_some(()) }
        },
    )
    .await;
    assert!(
        !may("update", "someone-elses-lease").await,
        "only its own Lease"
    );

    support::helm_run(
        &helm,
        &["uninstall", "fedop-values", "--namespace", &ns, "--wait"],
    );
    assert!(deployments.get_opt("fedop").await.unwrap().is_none());
    let _ = Api::<Namespace>::all(admin)
        .delete(&ns, &DeleteParams::default())
        .await;
}
