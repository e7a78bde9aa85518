//! The API server itself refuses what the CRDs promise to refuse (OpenAPI
//! schema and CEL rules), naming the field, against the cluster `KUBECONFIG`
//! names (skipped, saying so, when none; see e2e::cluster). Each bad resource
//! is created with a server-side dry run, so nothing is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod support;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use xmppfed_e2e::cluster;

fn example(file: &str, kind: &str) -> Value {
    support::examples(file)
        .into_iter()
        .find(|v| v["kind"] == kind)
        .unwrap()
}

/// Sets `pointer` (a JSON pointer) in a copy of `doc`; `None` removes it.
fn with(doc: &Value, pointer: &str, value: Option<Value>) -> Value {
    let mut doc = doc.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = doc.pointer_mut(parent).unwrap();
    match value {
        Some(v) => parent[key] = v,
        None => {
            parent.as_object_mut().unwrap().remove(key);
        }
    }
    doc
}

/// Applies `doc` as `kubectl apply --server-side --dry-run=server` does
/// (field validation Strict): Ok, or the API server's message.
async fn dry_run(client: &Client, doc: &Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().unwrap();
    let name = doc["metadata"]["name"].as_str().unwrap();
    let gvk = GroupVersionKind::gvk("xmppfed.io", "v1alpha1", kind);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));
    let params = PatchParams::apply("xmppfed-validation-test")
        .dry_run()
        .validation_strict();
    match api.patch(name, &params, &Patch::Apply(doc)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(e) => panic!("not an API refusal: {e}"),
    }
}

/// Each invalid resource: what is wrong, the resource, what the API
/// server's message must name.
type Case = (&'static str, Value, &'static str);

fn invalid_cases(gateway: &Value, whitelist: &Value, throttle: &Value) -> Vec<Case> {
    let mut cases = gateway_cases(gateway);
    cases.extend(gateway_value_cases(gateway));
    cases.extend(policy_cases(whitelist, throttle));
    cases
}

fn gateway_cases(gateway: &Value) -> Vec<Case> {
    vec![
        (
            "an upper-case domain",
            with(
                gateway,
                "/spec/domain",
                Some(json!("Teams.Contoso.Example")),
            ),
            "spec.domain",
        ),
        (
            "a domain with a space",
            with(gateway, "/spec/domain", Some(json!("teams contoso"))),
            "lower-case DNS name",
        ),
        (
            "65 replicas",
            with(gateway, "/spec/replicas", Some(json!(65))),
            "spec.replicas",
        ),
        (
            "-1 replicas",
            with(gateway, "/spec/replicas", Some(json!(-1))),
            "spec.replicas",
        ),
        (
            "two sqlite replicas",
            with(gateway, "/spec/replicas", Some(json!(2))),
            "sqlite engine supports one replica",
        ),
        (
            "engine postgres without its server",
            with(
                gateway,
                "/spec/database",
                Some(json!({"engine": "postgres"})),
            ),
            "database.postgres (host, database, user, passwordSecret) is required",
        ),
        (
            "a postgres sslMode libpq has but we refuse",
            with(
                gateway,
                "/spec/database",
                Some(
                    json!({"engine": "postgres", "postgres": {"host": "pg", "database": "x",
                    "user": "u", "passwordSecret": {"name": "pg", "key": "p"}, "sslMode": "require"}}),
                ),
            ),
            "spec.database.postgres.sslMode",
        ),
        (
            "an unknown field",
            with(gateway, "/spec/replica", Some(json!(1))),
            "spec.replica",
        ),
        (
            "a tenant id that is not a GUID",
            with(gateway, "/spec/tenant/tenantId", Some(json!("contoso"))),
            "spec.tenant.tenantId",
        ),
        (
            "both a client secret and a certificate",
            with(
                gateway,
                "/spec/tenant/clientCertificate",
                Some(json!("contoso-graph-cert")),
            ),
            "exactly one of tenant.clientSecret and tenant.clientCertificate",
        ),
        (
            "a webhook Ingress for another host than webhookUrl's",
            with(
                &with(
                    gateway,
                    "/spec/webhookUrl",
                    Some(json!("https://hooks.contoso.example")),
                ),
                "/spec/webhookIngress",
                Some(json!({"host": "other.contoso.example", "tlsSecret": "hooks-tls"})),
            ),
            "webhookIngress needs webhookUrl to be https://<webhookIngress.host>",
        ),
        (
            "a webhook Ingress without webhookUrl",
            with(
                gateway,
                "/spec/webhookIngress",
                Some(json!({"host": "hooks.contoso.example", "tlsSecret": "hooks-tls"})),
            ),
            "webhookIngress needs webhookUrl",
        ),
        (
            "a shadow tenant whose id is not a GUID",
            with(
                gateway,
                "/spec/shadowAccounts/tenant",
                Some(
                    json!({"tenantId": "fabrikam", "clientId": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                            "clientSecret": {"name": "shadow-app", "key": "client-secret"}}),
                ),
            ),
            "spec.shadowAccounts.tenant.tenantId",
        ),
        (
            "a shadow tenant without a credential",
            with(
                gateway,
                "/spec/shadowAccounts/tenant",
                Some(json!({"tenantId": "9e0d2a8e-1b2c-4d5e-9f00-112233445577",
                            "clientId": "0a1b2c3d-4e5f-6789-abcd-ef0123456789"})),
            ),
            "spec.shadowAccounts.tenant",
        ),
        (
            "a lower-case usage location",
            with(
                gateway,
                "/spec/shadowAccounts/usageLocation",
                Some(json!("gb")),
            ),
            "spec.shadowAccounts.usageLocation",
        ),
        ("no image", with(gateway, "/spec/image", None), "spec.image"),
        (
            "the Graph route without a tenant",
            with(gateway, "/spec/tenant", None),
            "tenant is required with teams.mode Graph",
        ),
        (
            "SIP federation without its edge",
            with(
                gateway,
                "/spec/teams",
                Some(json!({"mode": "SipFederation"})),
            ),
            "sip (edgeFqdn, partnerDomain, tlsSecret) is required",
        ),
        (
            "a SIP partner domain that is not a DNS name",
            with(
                &with(
                    gateway,
                    "/spec/teams",
                    Some(json!({"mode": "SipFederation"})),
                ),
                "/spec/sip",
                Some(
                    json!({"edgeFqdn": "sip.contoso.example", "partnerDomain": "Contoso Com", "tlsSecret": "t"}),
                ),
            ),
            "sip.partnerDomain must be a lower-case DNS name",
        ),
        (
            "sqlserver without a connection string",
            with(gateway, "/spec/database/engine", Some(json!("sqlserver"))),
            "database.connectionStringSecret",
        ),
    ]
}

/// Values the Rust types or Kubernetes cannot take: quantities, URLs.
fn gateway_value_cases(gateway: &Value) -> Vec<Case> {
    vec![
        (
            "a memory request that is no quantity",
            with(
                gateway,
                "/spec/resources",
                Some(json!({"requests": {"memory": "1 gigabyte"}})),
            ),
            "spec.resources.requests.memory",
        ),
        (
            "a CPU limit with a unit Kubernetes does not know",
            with(
                gateway,
                "/spec/resources",
                Some(json!({"limits": {"cpu": "2cores"}})),
            ),
            "spec.resources.limits.cpu",
        ),
        (
            "a storage size that is no quantity",
            with(gateway, "/spec/database/storageSize", Some(json!("1 GB"))),
            "spec.database.storageSize",
        ),
        (
            "an OTLP endpoint that is no URL",
            with(
                gateway,
                "/spec/telemetry",
                Some(json!({"otlpEndpoint": "collector:4318"})),
            ),
            "spec.telemetry.otlpEndpoint",
        ),
        (
            "a webhook URL without a host",
            with(gateway, "/spec/webhookUrl", Some(json!("https://"))),
            "spec.webhookUrl",
        ),
        (
            "a Graph endpoint over http",
            with(
                gateway,
                "/spec/tenant/endpoints",
                Some(
                    json!({"authorityUrl": "https://login.example", "graphUrl": "http://graph.example/v1.0"}),
                ),
            ),
            "spec.tenant.endpoints.graphUrl",
        ),
    ]
}

fn policy_cases(whitelist: &Value, throttle: &Value) -> Vec<Case> {
    vec![
        (
            "a remote domain pattern with a wildcard in the middle",
            with(
                whitelist,
                "/spec/remoteDomains",
                Some(json!(["xmpp.*.example"])),
            ),
            "spec.remoteDomains[0]",
        ),
        (
            "an internal user that is not an address",
            with(whitelist, "/spec/internalUsers", Some(json!(["alice"]))),
            "spec.internalUsers[0]",
        ),
        (
            "a group that is not a GUID",
            with(whitelist, "/spec/internalGroups", Some(json!(["sales"]))),
            "spec.internalGroups[0]",
        ),
        (
            "a whitelist allowing nothing",
            with(
                &with(
                    &with(whitelist, "/spec/remoteDomains", Some(json!([]))),
                    "/spec/internalUsers",
                    Some(json!([])),
                ),
                "/spec/internalGroups",
                Some(json!([])),
            ),
            "at least one domain, user or group",
        ),
        (
            "a zero message rate",
            with(throttle, "/spec/limits/messagesPerMinute", Some(json!(0))),
            "spec.limits.messagesPerMinute",
        ),
        (
            "a message rate past what 32 bits hold",
            with(
                throttle,
                "/spec/limits/messagesPerMinute",
                Some(json!(4_294_967_296u64)),
            ),
            "spec.limits.messagesPerMinute",
        ),
        (
            "a byte rate past what the API server holds",
            with(
                throttle,
                "/spec/limits/bytesPerMinute",
                Some(json!(18_446_744_073_709_551_615u64)),
            ),
            "spec.limits.bytesPerMinute",
        ),
        (
            "a zero burst in an override",
            with(throttle, "/spec/overrides/0/limits/burst", Some(json!(0))),
            "spec.overrides[0].limits.burst",
        ),
        (
            "two overrides for one user",
            with(
                throttle,
                "/spec/overrides",
                Some(json!([
                    {"user": "a@fabrikam.example", "limits": {"messagesPerMinute": 1, "bytesPerMinute": 1, "presenceUpdatesPerMinute": 1, "burst": 1}},
                    {"user": "a@fabrikam.example", "limits": {"messagesPerMinute": 2, "bytesPerMinute": 2, "presenceUpdatesPerMinute": 2, "burst": 2}}
                ])),
            ),
            "spec.overrides: duplicate entries for key [user=\"a@fabrikam.example\"]",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_refuses_invalid_resources_naming_the_field() {
    let Some(client) = cluster::client("the_api_server_refuses_invalid_resources").await else {
        return;
    };
    support::install_crds(&client).await;
    let gateway = example("minimal-sqlite.yaml", "FederationGateway");
    let whitelist = example("domain-whitelist.yaml", "DomainWhitelist");
    let throttle = example("throttle-policy.yaml", "ThrottlePolicy");

    // The examples as written are accepted.
    for doc in [&gateway, &whitelist, &throttle] {
        dry_run(&client, doc)
            .await
            .unwrap_or_else(|e| panic!("{} refused: {e}", doc["kind"]));
    }

    // So are the valid forms of what the bounds below refuse.
    let valid = with(
        &with(
            &with(
                &with(
                    &gateway,
                    "/spec/resources",
                    Some(
                        json!({"requests": {"memory": "256Mi", "cpu": "250m"}, "limits": {"memory": 1_073_741_824u64}}),
                    ),
                ),
                "/spec/database/storageSize",
                Some(json!("1.5Gi")),
            ),
            "/spec/telemetry",
            Some(json!({"otlpEndpoint": "http://otel-collector.monitoring:4318"})),
        ),
        "/spec/webhookUrl",
        Some(json!("https://gw.contoso.example/notifications")),
    );
    let big = with(
        &throttle,
        "/spec/limits/messagesPerMinute",
        Some(json!(4_294_967_295u64)),
    );
    let replicated = with(
        &with(&gateway, "/spec/replicas", Some(json!(2))),
        "/spec/database",
        Some(
            json!({"engine": "postgres", "postgres": {"host": "pg-rw.db.svc", "database": "xmppfed",
            "user": "xmppfed", "passwordSecret": {"name": "pg", "key": "password"}, "sslMode": "disable"}}),
        ),
    );
    for doc in [&valid, &big, &replicated] {
        dry_run(&client, doc)
            .await
            .unwrap_or_else(|e| panic!("a valid {} refused: {e}", doc["kind"]));
    }

    let cases = invalid_cases(&gateway, &whitelist, &throttle);
    let mut wrong = Vec::new();
    for (what, doc, names) in &cases {
        match dry_run(&client, doc).await {
            Ok(()) => wrong.push(format!("{what}: accepted")),
            Err(message) if !message.contains(names) => wrong.push(format!(
                "{what}: the message does not name {names:?}: {message}"
            )),
            Err(message) => eprintln!("{what}: {message}"),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    engine_is_chosen_once(&client, &gateway).await;
}

/// A gateway's store engine cannot change once it exists (its data would
/// not follow): the API server refuses the update and says what to do.
async fn engine_is_chosen_once(client: &Client, gateway: &Value) {
    let gvk = GroupVersionKind::gvk("xmppfed.io", "v1alpha1", "FederationGateway");
    let ns = format!("xmppfed-validation-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk(&gvk));
    let name = gateway["metadata"]["name"].as_str().unwrap();
    let params = PatchParams::apply("xmppfed-validation-test");
    api.patch(name, &params, &Patch::Apply(gateway))
        .await
        .unwrap();
    let moved = with(
        gateway,
        "/spec/database",
        Some(json!({"engine": "sqlserver", "connectionStringSecret": {"name": "db", "key": "c"}})),
    );
    let refused = api
        .patch(name, &params.clone().dry_run(), &Patch::Apply(&moved))
        .await;
    let _ = namespaces.delete(&ns, &Default::default()).await;
    match refused {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("database.engine cannot change"),
            "{}",
            status.message
        ),
        other => panic!("an engine change was not refused: {other:?}"),
    }
}
