//! Reconcile against the in-memory API server of `xmppfed_e2e::kube_api`
//! (kube-rs controller-rs "fixtures" style): it holds the objects a test puts
//! there, records each request and can be told to fail; the tests assert on
//! what the operator asked of it. The real API server's behaviour (validation,
//! RBAC, watches, garbage collection) is operator/tests/cluster*.rs's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::sync::{Arc, OnceLock};

use http::Method;
use kube::Client;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use xmppfed_e2e::kube_api::{FakeKubeApi, Recorded};
use xmppfed_operator::crd::FederationGateway;
use xmppfed_operator::reconcile::{Context, FIELD_MANAGER, error_policy, reconcile};

/// The test's licence signing key: (private, public), base64.
fn signing_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(|| xmppfed_licence::generate_key().unwrap())
}

fn licence(id: &str, nodes: u32) -> String {
    let l = xmppfed_licence::Licence {
        id: id.into(),
        licensee: "Contoso".into(),
        nodes,
        issued: "2026-01-01T00:00:00Z".parse().unwrap(),
        expires: "2099-01-01T00:00:00Z".parse().unwrap(),
        features: vec![],
    };
    xmppfed_licence::issue(&l, &signing_key().0).unwrap()
}

fn context(client: Client) -> Arc<Context> {
    Arc::new(Context::new(client, Some(signing_key().1.clone())))
}

/// What the fake API server holds and how it behaves.
#[derive(Clone)]
struct World {
    /// The licence Secret's `licence` key; `None`: the Secret does not exist.
    licence: Option<String>,
    whitelists: Vec<Value>,
    throttles: Vec<Value>,
    keys_secret_exists: bool,
    ready_replicas: i64,
    /// Answer 500 to requests whose path contains this.
    fail_path: Option<&'static str>,
    /// The `xmppfed.io/tenant-sign-in` annotation on the leader's pod.
    tenant_sign_in: Option<&'static str>,
}

impl Default for World {
    fn default() -> Self {
        Self {
            licence: Some(licence("L-1", 3)),
            whitelists: Vec::new(),
            throttles: Vec::new(),
            keys_secret_exists: false,
            ready_replicas: 0,
            fail_path: None,
            tenant_sign_in: None,
        }
    }
}

const NS: &str = "/namespaces/xmpp";

/// The shared in-memory API server holding `world`.
fn start(world: World) -> (Client, FakeKubeApi) {
    use base64::Engine;
    let api = FakeKubeApi::new();
    let crds = format!("/apis/xmppfed.io/v1alpha1{NS}");
    api.insert(
        &format!("{crds}/federationgateways/contoso"),
        serde_json::to_value(gateway(Some("contoso-tls"), None)).unwrap(),
    );
    for w in &world.whitelists {
        let name = w["metadata"]["name"].as_str().unwrap();
        api.insert(&format!("{crds}/domainwhitelists/{name}"), w.clone());
    }
    for t in &world.throttles {
        let name = t["metadata"]["name"].as_str().unwrap();
        api.insert(&format!("{crds}/throttlepolicies/{name}"), t.clone());
    }
    if let Some(text) = &world.licence {
        let data = base64::engine::general_purpose::STANDARD.encode(text);
        api.insert(
            &format!("/api/v1{NS}/secrets/xmppfed-licence"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "xmppfed-licence"}, "data": {"licence": data}}),
        );
    }
    if world.keys_secret_exists {
        api.insert(
            &format!("/api/v1{NS}/secrets/contoso-keys"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "contoso-keys"}}),
        );
    }
    // The leader's pod, not scheduled yet, as the StatefulSet's selector finds it.
    let mut labels = serde_json::to_value(xmppfed_operator::render::labels("contoso")).unwrap();
    labels["xmppfed.io/role"] = json!("leader");
    let mut metadata = json!({"name": "contoso-0", "labels": labels});
    if let Some(annotation) = world.tenant_sign_in {
        metadata["annotations"] = json!({"xmppfed.io/tenant-sign-in": annotation});
    }
    api.insert(
        &format!("/api/v1{NS}/pods/contoso-0"),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": {"phase": "Pending"}}),
    );
    api.set_ready_replicas(world.ready_replicas);
    if let Some(path) = world.fail_path {
        api.fail_requests_to(path);
    }
    (api.client(), api)
}

fn gateway(tls_secret: Option<&str>, config_hash: Option<&str>) -> FederationGateway {
    let mut g: FederationGateway = serde_json::from_value(json!({
        "apiVersion": "xmppfed.io/v1alpha1",
        "kind": "FederationGateway",
        "metadata": {"name": "contoso", "namespace": "xmpp", "uid": "6f1c2b1e-0000-4000-8000-000000000001", "generation": 2},
        "spec": {
            "domain": "teams.contoso.example",
            "image": "ghcr.io/xmppfed/gateway:0.1.0",
            "tenant": {
                "tenantId": "8f0d2a8e-1b2c-4d5e-9f00-112233445566",
                "clientId": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                "clientSecret": {"name": "graph-app", "key": "client-secret"}
            },
            "shadowAccounts": {"upnDomain": "xmpp.contoso.example",
                "licenceSku": "3b555118-da6a-4418-894f-7df1e2096870", "usageLocation": "GB"},
            "s2s": {"tlsSecret": tls_secret},
            "database": {"engine": "sqlite"},
            "licenceSecret": {"name": "xmppfed-licence", "key": "licence"}
        }
    }))
    .unwrap();
    if let Some(hash) = config_hash {
        g.status = Some(xmppfed_operator::crd::FederationGatewayStatus {
            config_hash: Some(hash.to_owned()),
            ..Default::default()
        });
    }
    g
}

fn whitelist(domains: &[&str]) -> Value {
    json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "DomainWhitelist",
        "metadata": {"name": "partners", "namespace": "xmpp"},
        "spec": {"gateways": {"names": ["contoso"]}, "remoteDomains": domains}
    })
}

fn condition<'a>(status_patch: &'a Recorded, type_: &str) -> &'a Value {
    status_patch.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

/// The first status of a gateway whose pod is not scheduled and whose tenant
/// refuses the bridge's sign-in.
fn status_says_rolling_out_and_why(api: &FakeKubeApi) {
    // Status: applied, rolling out, not degraded.
    let status = api
        .find(Method::PATCH, "/federationgateways/contoso/status")
        .unwrap();
    assert!(
        status
            .query
            .contains(&format!("fieldManager={FIELD_MANAGER}"))
    );
    assert_eq!(status.body["status"]["observedGeneration"], 2);
    assert!(
        status.body["status"]["configHash"]
            .as_str()
            .is_some_and(|h| h.len() == 16)
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(
        condition(&status, "Ready")["message"],
        "0/1 gateway pods ready; waiting for contoso-0 (Pending: not scheduled to any node)"
    );
    // The pods are listed by the gateway's own selector, not all pods of the namespace.
    let pods = api.find(Method::GET, "/pods").unwrap();
    assert!(
        pods.query
            .contains("labelSelector=app.kubernetes.io%2Finstance%3Dcontoso"),
        "{}",
        pods.query
    );
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(condition(&status, "Licensed")["status"], "True");
    // The bridge's replica reported the tenant's refusal on its pod.
    let tenant = condition(&status, "TenantReady");
    assert_eq!(
        (&tenant["status"], &tenant["reason"]),
        (&json!("False"), &json!("MfaRequired"))
    );
    assert!(
        tenant["message"]
            .as_str()
            .is_some_and(|m| m.contains("bob.xmpp-test.d7aab9@shadow.contoso.com")
                && m.contains("exclude them")),
        "{tenant}"
    );
    assert_eq!(
        status.body["status"]["licenceAssignments"]["contoso-0"]["licenceId"],
        "L-1"
    );
}

#[tokio::test]
async fn create_applies_every_child_with_one_field_manager_and_reports_progress() {
    let (client, api) = start(World {
        whitelists: vec![whitelist(&["partner.example"])],
        ready_replicas: 0,
        tenant_sign_in: Some(
            "MfaRequired: sign-in refused for bob.xmpp-test.d7aab9@shadow.contoso.com: MfaRequired (exclude them from MFA)",
        ),
        ..World::default()
    });
    let ctx = context(client);
    let action = reconcile(Arc::new(gateway(Some("contoso-tls"), None)), ctx)
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(std::time::Duration::from_secs(15)),
        "not ready yet: look again soon"
    );

    // Every child is server-side applied, forced, under our field manager.
    for child in [
        "/api/v1/namespaces/xmpp/serviceaccounts/contoso-gateway",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/xmpp/rolebindings/contoso-pod-label",
        "/apis/networking.k8s.io/v1/namespaces/xmpp/networkpolicies/contoso",
        "/api/v1/namespaces/xmpp/configmaps/contoso-config",
        "/api/v1/namespaces/xmpp/services/contoso-s2s",
        "/api/v1/namespaces/xmpp/services/contoso-webhook",
        "/api/v1/namespaces/xmpp/services/contoso-headless",
        "/apis/apps/v1/namespaces/xmpp/statefulsets/contoso",
    ] {
        let patch = api
            .find(Method::PATCH, child)
            .unwrap_or_else(|| panic!("{child} not applied"));
        assert!(
            patch
                .query
                .contains(&format!("fieldManager={FIELD_MANAGER}")),
            "{}",
            patch.query
        );
        assert!(patch.query.contains("force=true"), "{}", patch.query);
        assert!(patch.body["kind"].is_string() && patch.body["apiVersion"].is_string());
    }
    let config = api
        .find(Method::PATCH, "/configmaps/contoso-config")
        .unwrap();
    let toml = config.body["data"]["gateway.toml"].as_str().unwrap();
    assert!(toml.contains("\"partner.example\""), "{toml}");
    // One replica: no PDB, and a stale one is removed.
    assert!(
        api.find(Method::PATCH, "/poddisruptionbudgets/contoso")
            .is_none()
    );
    assert!(
        api.find(Method::DELETE, "/poddisruptionbudgets/contoso")
            .is_some()
    );

    // The gateway's keys are generated once.
    let secret = api
        .find(Method::POST, "/api/v1/namespaces/xmpp/secrets")
        .unwrap();
    let data = secret.body["data"].as_object().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(
        secret.body["metadata"]["ownerReferences"][0]["uid"],
        "6f1c2b1e-0000-4000-8000-000000000001"
    );

    status_says_rolling_out_and_why(&api);

    let event = api.find(Method::POST, "/events").unwrap();
    assert_eq!(event.body["reason"], "Applied");
    assert_eq!(event.body["type"], "Normal");
}

#[tokio::test]
async fn an_unchanged_ready_gateway_is_quiet_and_a_whitelist_change_rolls() {
    // First pass learns the hash of the current configuration.
    let world = World {
        whitelists: vec![whitelist(&["partner.example"])],
        keys_secret_exists: true,
        ready_replicas: 1,
        ..World::default()
    };
    let (client, api) = start(world.clone());
    reconcile(
        Arc::new(gateway(Some("contoso-tls"), None)),
        context(client),
    )
    .await
    .unwrap();
    let hash = api.find(Method::PATCH, "/status").unwrap().body["status"]["configHash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        api.find(Method::POST, "/secrets").is_none(),
        "existing keys are kept"
    );

    // Same inputs, hash already in status: ready, no event.
    let (client, api) = start(world.clone());
    let action = reconcile(
        Arc::new(gateway(Some("contoso-tls"), Some(&hash))),
        context(client),
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(300)));
    let status = api.find(Method::PATCH, "/status").unwrap();
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Progressing")["status"], "False");
    assert!(
        api.find(Method::POST, "/events").is_none(),
        "nothing changed: no event"
    );

    // The whitelist changes: new configuration, new hash on the pod template, an event.
    let (client, api) = start(World {
        whitelists: vec![whitelist(&["partner.example", "*.allies.example"])],
        ..world
    });
    reconcile(
        Arc::new(gateway(Some("contoso-tls"), Some(&hash))),
        context(client),
    )
    .await
    .unwrap();
    let sts = api.find(Method::PATCH, "/statefulsets/contoso").unwrap();
    let new_hash =
        sts.body["spec"]["template"]["metadata"]["annotations"]["xmppfed.io/config-hash"]
            .as_str()
            .unwrap();
    assert_ne!(new_hash, hash);
    let toml = api
        .find(Method::PATCH, "/configmaps/contoso-config")
        .unwrap()
        .body["data"]["gateway.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(toml.contains("*.allies.example"), "{toml}");
    assert_eq!(
        api.find(Method::POST, "/events").unwrap().body["reason"],
        "Applied"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_degraded_applies_nothing_and_waits() {
    let (client, api) = start(World::default());
    let action = reconcile(Arc::new(gateway(None, None)), context(client))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    let status = api.find(Method::PATCH, "/status").unwrap();
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.s2s.tlsSecret: required")
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    let applied: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PATCH && !r.path.ends_with("/status"))
        .map(|r| r.path)
        .collect();
    assert!(applied.is_empty(), "applied {applied:?}");
    let event = api.find(Method::POST, "/events").unwrap();
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "InvalidSpec");
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_back_off() {
    let (client, _api) = start(World {
        fail_path: Some("/statefulsets/"),
        ..World::default()
    });
    let ctx = context(client);
    let g = Arc::new(gateway(Some("contoso-tls"), None));
    let error = reconcile(g.clone(), ctx.clone()).await.unwrap_err();
    assert!(error.to_string().contains("Kubernetes API"), "{error}");
    // Counted as a failed reconcile in the operator's metrics.
    assert_eq!(ctx.metrics.count("FederationGateway", "error"), 1);
    assert_eq!(ctx.metrics.count("FederationGateway", "ok"), 0);

    // Each consecutive failure backs off further (backoff() is unit-tested for the delays).
    for attempt in 1..=4 {
        assert_ne!(
            error_policy(g.clone(), &error, ctx.clone()),
            Action::await_change()
        );
        assert_eq!(ctx.failures_of(&g), attempt);
    }
}

#[tokio::test]
async fn a_success_clears_the_backoff() {
    let (client, _api) = start(World {
        keys_secret_exists: true,
        ..World::default()
    });
    let ctx = context(client);
    let g = Arc::new(gateway(Some("contoso-tls"), None));
    let error = xmppfed_operator::reconcile::Error::NoNamespace;
    error_policy(g.clone(), &error, ctx.clone());
    assert_eq!(ctx.failures_of(&g), 1);
    reconcile(g.clone(), ctx.clone()).await.unwrap();
    assert_eq!(ctx.failures_of(&g), 0);
    assert_eq!(ctx.metrics.count("FederationGateway", "ok"), 1);
}

#[tokio::test]
async fn a_licence_shortage_runs_only_licensed_replicas_and_says_why() {
    let mut g = gateway(Some("contoso-tls"), None);
    g.spec.replicas = 3;
    g.spec.database = serde_json::from_value(
        json!({"engine": "sqlserver", "connectionStringSecret": {"name": "db", "key": "conn"}}),
    )
    .unwrap();
    let (client, api) = start(World {
        licence: Some(licence("L-2", 2)),
        keys_secret_exists: true,
        ..World::default()
    });
    reconcile(Arc::new(g.clone()), context(client))
        .await
        .unwrap();
    let sts = api.find(Method::PATCH, "/statefulsets/contoso").unwrap();
    assert_eq!(
        sts.body["spec"]["replicas"], 2,
        "never more nodes than seats"
    );
    let status = api.find(Method::PATCH, "/status").unwrap();
    let licensed = condition(&status, "Licensed");
    assert_eq!(licensed["status"], "False");
    assert_eq!(licensed["reason"], "InsufficientSeats");
    assert_eq!(
        licensed["message"],
        "2 of 3 replicas licensed; unscheduled: contoso-2"
    );
    // Ready counts the replicas asked for, and names the one without a seat.
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with("0/3 gateway pods ready")
            && message.contains("unlicensed: contoso-2 (no licence seat"),
        "{message}"
    );
    let seats = status.body["status"]["licenceAssignments"]
        .as_object()
        .unwrap();
    assert_eq!(seats.keys().collect::<Vec<_>>(), ["contoso-0", "contoso-1"]);
    assert!(
        api.requests().iter().any(|r| r.method == Method::POST
            && r.path.ends_with("/events")
            && r.body["reason"] == "InsufficientSeats"),
        "a Warning event says so"
    );

    // No licence Secret at all: nothing runs.
    let (client, api) = start(World {
        licence: None,
        keys_secret_exists: true,
        ..World::default()
    });
    reconcile(Arc::new(g), context(client)).await.unwrap();
    assert_eq!(
        api.find(Method::PATCH, "/statefulsets/contoso")
            .unwrap()
            .body["spec"]["replicas"],
        0
    );
    let status = api.find(Method::PATCH, "/status").unwrap();
    assert_eq!(
        condition(&status, "Licensed")["reason"],
        "LicenceSecretMissing"
    );
    assert_eq!(condition(&status, "Ready")["reason"], "Unlicensed");
}

#[tokio::test]
async fn a_gateway_being_deleted_is_left_to_the_garbage_collector() {
    let mut g = gateway(Some("contoso-tls"), None);
    g.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (client, api) = start(World {
        licence: Some(licence("L-1", 1)),
        keys_secret_exists: true,
        ..World::default()
    });
    let action = reconcile(Arc::new(g), context(client)).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let writes: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.method != Method::GET)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        writes.is_empty(),
        "a deleted gateway's children were touched: {writes:?}"
    );
}

#[tokio::test]
async fn a_whitelist_that_stops_applying_is_named_in_status_and_an_event() {
    let mut g = gateway(Some("contoso-tls"), None);
    g.status = Some(xmppfed_operator::crd::FederationGatewayStatus {
        whitelists: vec!["retired".into(), "partners".into()],
        ..Default::default()
    });
    let (client, api) = start(World {
        whitelists: vec![whitelist(&["partner.example"])],
        keys_secret_exists: true,
        ..World::default()
    });
    reconcile(Arc::new(g), context(client)).await.unwrap();
    let status = api.find(Method::PATCH, "/status").unwrap();
    assert_eq!(status.body["status"]["whitelists"], json!(["partners"]));
    let removed = api
        .requests()
        .into_iter()
        .find(|r| {
            r.method == Method::POST
                && r.path.ends_with("/events")
                && r.body["reason"] == "WhitelistRemoved"
        })
        .expect("a WhitelistRemoved event");
    assert_eq!(removed.body["type"], "Warning");
    assert_eq!(
        removed.body["note"],
        "DomainWhitelist retired no longer applies (deleted, or it no longer selects this gateway); whitelists now: partners"
    );
}
