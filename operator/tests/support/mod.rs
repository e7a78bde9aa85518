//! What the cluster tests share: their own namespace, the examples, licences
//! signed with a test key, and applying documents of any kind.
// Each test binary uses its own part of it; a panic here fails the test that
// called it, with its reason.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde::Deserialize;
use serde_json::{Value, json};
use xmppfed_e2e::cluster;
use xmppfed_operator::crd::{DomainWhitelist, FederationGateway, ThrottlePolicy};

/// The documents of examples/`file`.
pub fn examples(file: &str) -> Vec<Value> {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// A new namespace `{prefix}-{pid}`.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", std::process::id());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
    name
}

/// A licence for `nodes` replicas, signed with `private`, valid until 2099.
pub fn licence_text(private: &str, id: &str, nodes: u32) -> String {
    xmppfed_licence::issue(
        &xmppfed_licence::Licence {
            id: id.into(),
            licensee: "cluster test".into(),
            nodes,
            issued: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires: "2099-01-01T00:00:00Z".parse().unwrap(),
            features: vec![],
        },
        private,
    )
    .unwrap()
}

/// Applies each document (Secrets and our custom resources) into `ns`,
/// server-side as `manager`.
pub async fn apply_all(client: &Client, ns: &str, manager: &str, docs: Vec<Value>) {
    let apply = PatchParams::apply(manager).force();
    for mut doc in docs {
        doc["metadata"]["namespace"] = json!(ns);
        let resource = match doc["kind"].as_str().unwrap() {
            "Secret" => ApiResource::erase::<Secret>(&()),
            "FederationGateway" => ApiResource::erase::<FederationGateway>(&()),
            "DomainWhitelist" => ApiResource::erase::<DomainWhitelist>(&()),
            "ThrottlePolicy" => ApiResource::erase::<ThrottlePolicy>(&()),
            other => panic!("unexpected {other}"),
        };
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
            .patch(&name, &apply, &Patch::Apply(&doc))
            .await
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", doc["kind"]));
    }
}

/// `docs` with the Secret `secret` given `key` = `value` (a real licence or
/// certificate in place of the example's placeholder).
pub fn with_secret(mut docs: Vec<Value>, secret: &str, key: &str, value: &str) -> Vec<Value> {
    for doc in &mut docs {
        if doc["kind"] == "Secret" && doc["metadata"]["name"] == secret {
            doc["stringData"][key] = json!(value);
        }
    }
    docs
}

/// Our three CRDs, applied and Established.
pub async fn install_crds(client: &Client) {
    xmppfed_e2e::cluster::install_crds(
        client,
        xmppfed_operator::crd::all().into_iter().map(|(_, c)| c),
    )
    .await;
}

/// The operator's controller, running in this process until `stop`.
pub struct Controller {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// Runs the controller as `client`, verifying licences with `public`.
    pub fn start(client: Client, public: String) -> Self {
        let role = xmppfed_operator::plan::DEFAULT_GATEWAY_CLUSTER_ROLE;
        Self::start_binding(client, public, role)
    }

    /// The same, binding gateway pods to the chart's ClusterRole `role`.
    pub fn start_binding(client: Client, public: String, role: &str) -> Self {
        Self::start_in(client, public, role, Vec::new())
    }

    /// The same, watching only `namespaces` (none: all).
    pub fn start_in(client: Client, public: String, role: &str, namespaces: Vec<String>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(xmppfed_operator::reconcile::run(
            xmppfed_operator::reconcile::Context::new(client, Some(public))
                .with_gateway_cluster_role(role.to_owned())
                .with_namespaces(namespaces),
            async {
                let _ = stopped.await;
            },
        ));
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Replaces the licence in Secret `secret`. Nothing else is touched: the
/// operator watches the Secrets its gateways read.
pub async fn relicense(client: &Client, ns: &str, secret: &str, licence: &str) {
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            secret,
            &PatchParams::apply("xmppfed-tests").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": secret},
                                 "stringData": {"licence": licence}})),
        )
        .await
        .unwrap();
}

/// The documents of each of `files`, with the real `licence` in Secret
/// `secret` (the examples carry a placeholder).
pub fn examples_licensed(files: &[&str], secret: &str, licence: &str) -> Vec<Value> {
    let docs = files.iter().flat_map(|f| examples(f)).collect();
    with_secret(docs, secret, "licence", licence)
}

/// Waits until gateway `name` has condition `type_` with `status` and
/// `reason`; gives its message.
pub async fn condition_becomes(
    gateways: &Api<FederationGateway>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    let wanted = (type_, status, reason);
    condition_within(gateways, name, wanted, std::time::Duration::from_secs(60)).await
}

/// Like [`condition_becomes`] for `(type, status, reason)`, within `timeout`.
pub async fn condition_within(
    gateways: &Api<FederationGateway>,
    name: &str,
    (type_, status, reason): (&str, &str, &str),
    timeout: std::time::Duration,
) -> String {
    xmppfed_e2e::cluster::eventually(
        &format!("{name} {type_}={status} {reason}"),
        timeout,
        || async {
            gateways
                .get(name)
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
                .map(|c| c.message)
        },
    )
    .await
}

pub fn helm() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("XMPPFED_TEST_HELM") {
        return Some(PathBuf::from(path));
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/helm3/helm");
    if tools.is_file() {
        return Some(tools);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("helm"))
            .find(|p| p.is_file())
    })
}

/// The cluster and a helm binary, or `None` (the test skips, saying why)
/// when either is missing and the cluster suite is not required.
pub async fn cluster_and_helm(test: &str) -> Option<(Client, PathBuf)> {
    let admin = cluster::client(test).await?;
    let Some(helm) = helm() else {
        // CI fetches helm (scripts/check-chart.sh) before the tests run.
        assert!(
            !cluster::required(),
            "XMPPFED_TEST_CLUSTER=required but there is no helm binary"
        );
        eprintln!("skipped: no helm binary (run scripts/check-chart.sh, or set XMPPFED_TEST_HELM)");
        return None;
    };
    Some((admin, helm))
}

/// Runs helm; fails the test with its output when it fails.
pub fn helm_run(helm: &PathBuf, args: &[&str]) {
    run_ok(Command::new(helm).args(args), &format!("helm {args:?}"));
}

/// Runs `command` to its end; fails the test with its output when it fails.
/// Gives its standard output.
pub fn run_ok(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `spec.webhookIngress` on gateway `gw` makes its webhook's Ingress (owned,
/// the host and TLS Secret asked for, the gateway's paths to its webhook
/// Service), and taking it away removes it.
pub async fn webhook_ingress_comes_and_goes(client: &Client, ns: &str, gw: &str, manager: &str) {
    use k8s_openapi::api::networking::v1::Ingress;
    let asked = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
        "metadata": {"name": gw},
        "spec": {"webhookUrl": "https://graph-hooks.contoso.example",
                 "webhookIngress": {"className": "nginx", "host": "graph-hooks.contoso.example",
                                    "tlsSecret": "graph-hooks-tls"}}
    });
    apply_all(client, ns, manager, vec![asked]).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let name = format!("{gw}-webhook");
    let made = cluster::eventually(
        "the webhook's Ingress",
        std::time::Duration::from_secs(30),
        || async { ingresses.get_opt(&name).await.ok()? },
    )
    .await;
    let spec = made.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let tls = &spec.tls.unwrap()[0];
    assert_eq!(tls.secret_name.as_deref(), Some("graph-hooks-tls"));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("graph-hooks.contoso.example"));
    let path = &rule.http.as_ref().unwrap().paths[0];
    assert_eq!(path.path.as_deref(), Some("/graph/"));
    assert_eq!(
        path.backend.service.as_ref().unwrap().name,
        format!("{gw}-webhook")
    );
    assert!(
        made.metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|r| r.kind == "FederationGateway" && r.name == gw)
    );
    // Withdrawn (this manager's fields removed): the Ingress goes.
    let withdrawn = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
        "metadata": {"name": gw}, "spec": {}
    });
    apply_all(client, ns, manager, vec![withdrawn]).await;
    cluster::eventually(
        "the webhook's Ingress removed",
        std::time::Duration::from_secs(30),
        || async { ingresses.get_opt(&name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// The gateway's NetworkPolicy, made by default on the real API server: s2s
/// from anywhere, the admin port from the monitoring namespace, egress to
/// DNS, HTTPS and s2s; turned off, it goes; turned on again, it is back.
pub async fn network_policy_comes_and_goes(client: &Client, ns: &str, gw: &str, manager: &str) {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let made = cluster::eventually(
        "the gateway's NetworkPolicy",
        std::time::Duration::from_secs(30),
        || async { policies.get_opt(gw).await.ok()? },
    )
    .await;
    let spec = made.spec.unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
        gw
    );
    let port = |p: &k8s_openapi::api::networking::v1::NetworkPolicyPort| match &p.port {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => *n,
        _ => 0,
    };
    let ingress = spec.ingress.unwrap();
    let s2s = ingress
        .iter()
        .find(|r| r.ports.iter().flatten().any(|p| port(p) == 5269));
    assert!(
        s2s.is_some_and(|r| r.from.is_none()),
        "s2s from anywhere: {ingress:?}"
    );
    let admin = ingress
        .iter()
        .find(|r| r.ports.iter().flatten().any(|p| port(p) == 9090));
    let from = admin.and_then(|r| r.from.clone()).unwrap_or_default();
    assert!(
        serde_json::to_string(&from)
            .unwrap()
            .contains("\"monitoring\""),
        "the admin port from the monitoring namespace: {from:?}"
    );
    let egress: Vec<i32> = spec
        .egress
        .unwrap()
        .iter()
        .flat_map(|r| r.ports.iter().flatten().map(port))
        .collect();
    for needed in [53, 443, 5269] {
        assert!(egress.contains(&needed), "egress to {needed}: {egress:?}");
    }
    let off = |enabled: bool| {
        json!({
            "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
            "metadata": {"name": gw}, "spec": {"networkPolicy": {"enabled": enabled}}
        })
    };
    apply_all(client, ns, manager, vec![off(false)]).await;
    cluster::eventually(
        "the NetworkPolicy removed when turned off",
        std::time::Duration::from_secs(30),
        || async { policies.get_opt(gw).await.ok()?.is_none().then_some(()) },
    )
    .await;
    apply_all(client, ns, manager, vec![off(true)]).await;
    cluster::eventually(
        "the NetworkPolicy back when turned on",
        std::time::Duration::from_secs(30),
        || async { policies.get_opt(gw).await.ok()? },
    )
    .await;
}

/// The chart's ClusterRole for gateway pods (patch on pods), made under
/// `name` (unique to the test) for tests that run the controller without
/// the chart. The chart's admission policy is not made: chart_cluster.rs
/// tests it.
pub struct GatewayClusterRole {
    client: Client,
    pub name: String,
}

impl GatewayClusterRole {
    pub async fn make(client: &Client, name: &str) -> Self {
        use k8s_openapi::api::rbac::v1::ClusterRole;
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
        });
        Api::<ClusterRole>::all(client.clone())
            .patch(
                name,
                &PatchParams::apply("xmppfed-tests").force(),
                &Patch::Apply(role),
            )
            .await
            .unwrap();
        Self {
            client: client.clone(),
            name: name.to_owned(),
        }
    }

    pub async fn remove(self) {
        use k8s_openapi::api::rbac::v1::ClusterRole;
        let api = Api::<ClusterRole>::all(self.client);
        let _ = api.delete(&self.name, &Default::default()).await;
    }
}
